//! The `functions` namespace of a harmony developer message: OpenAI's `tools` (JSON Schema
//! parameters) written as TypeScript-like declarations, the way gpt-oss's chat template writes
//! them (`render_tool_namespace` and `render_typescript_type` in its revision of 2025-08-08).
//! Each tool is `// description` then `type NAME = (_: { ... }) => any;`, one parameter a line
//! with its description above it, `?` when it is not required and its default after it. Nested
//! objects and `oneOf` unions are written on one line (the template spreads them over lines
//! with stray indentation).

use serde_json::Value;

/// `## functions` and the namespace, for the developer message's `# Tools` section.
pub fn namespace(tools: &[Value]) -> String {
    let mut out = String::from("## functions\n\nnamespace functions {\n\n");
    for tool in tools {
        let function = tool.get("function").unwrap_or(tool);
        let name = function.get("name").and_then(Value::as_str).unwrap_or_default();
        if let Some(description) = function.get("description").and_then(Value::as_str) {
            out += "// ";
            out += description;
            out += "\n";
        }
        out += "type ";
        out += name;
        out += " = ";
        let parameters = function.get("parameters");
        let properties = parameters.and_then(|p| p.get("properties")).and_then(Value::as_object);
        match properties {
            Some(properties) if !properties.is_empty() => {
                let required = required_names(parameters);
                out += "(_: {\n";
                for (parameter, spec) in properties {
                    if let Some(description) = spec.get("description").and_then(Value::as_str) {
                        out += "// ";
                        out += description;
                        out += "\n";
                    }
                    out += parameter;
                    if !required.contains(&parameter.as_str()) {
                        out += "?";
                    }
                    out += ": ";
                    out += &typescript_type(spec);
                    if let Some(default) = spec.get("default") {
                        let text = match default {
                            // The template adds an enum's or a union's default as it is.
                            Value::String(s) if spec.get("enum").is_some() || spec.get("oneOf").is_some() => {
                                s.clone()
                            }
                            other => json(other),
                        };
                        out += if spec.get("oneOf").is_some() { "// default: " } else { ", // default: " };
                        out += &text;
                    }
                    out += ",\n";
                }
                out += "}) => any;\n\n";
            }
            _ => out += "() => any;\n\n",
        }
    }
    out += "} // namespace functions";
    out
}

fn required_names(schema: Option<&Value>) -> Vec<&str> {
    schema
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Python's `json.dumps`, as the template's `tojson` writes it.
fn json(value: &Value) -> String {
    let mut out = String::new();
    crate::chat::python_json(value, &mut out);
    out
}

/// A parameter's JSON Schema as a TypeScript type.
fn typescript_type(spec: &Value) -> String {
    let nullable = if spec.get("nullable").and_then(Value::as_bool) == Some(true) { " | null" } else { "" };
    let kind = spec.get("type");
    match kind {
        Some(Value::String(kind)) if kind == "array" => {
            let items = spec.get("items").filter(|i| !i.is_null());
            let inner = match items.and_then(|i| i.get("type")).and_then(Value::as_str) {
                None if items.is_none() => "any".to_string(),
                Some("string") => "string".to_string(),
                Some("number" | "integer") => "number".to_string(),
                Some("boolean") => "boolean".to_string(),
                _ => {
                    let inner = items.map(typescript_type).unwrap_or_default();
                    if inner == "object | object" || inner.len() > 50 { "any".to_string() } else { inner }
                }
            };
            format!("{inner}[]{nullable}")
        }
        Some(Value::Array(kinds)) if !kinds.is_empty() => {
            kinds.iter().map(|k| k.as_str().unwrap_or("any")).collect::<Vec<_>>().join(" | ")
        }
        _ if spec.get("oneOf").and_then(Value::as_array).is_some_and(|v| !v.is_empty()) => {
            let variants = spec["oneOf"].as_array().map(Vec::as_slice).unwrap_or_default();
            let objects = variants.iter().any(|v| v.get("type").and_then(Value::as_str) == Some("object"));
            if objects && variants.len() > 1 {
                "any".to_string()
            } else {
                variants.iter().map(typescript_type).collect::<Vec<_>>().join(" | ")
            }
        }
        Some(Value::String(kind)) => match kind.as_str() {
            "string" => match spec.get("enum").and_then(Value::as_array) {
                Some(values) if !values.is_empty() => {
                    let values: Vec<String> = values
                        .iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                        .collect();
                    format!("\"{}\"", values.join("\" | \""))
                }
                _ => format!("string{nullable}"),
            },
            "number" | "integer" => "number".to_string(),
            "boolean" => "boolean".to_string(),
            "object" => match spec.get("properties").and_then(Value::as_object) {
                Some(properties) if !properties.is_empty() => {
                    let required = required_names(Some(spec));
                    let fields: Vec<String> = properties
                        .iter()
                        .map(|(name, field)| {
                            let optional = if required.contains(&name.as_str()) { "" } else { "?" };
                            format!("{name}{optional}: {}", typescript_type(field))
                        })
                        .collect();
                    format!("{{\n{}}}", fields.join(", "))
                }
                _ => "object".to_string(),
            },
            _ => "any".to_string(),
        },
        _ => "any".to_string(),
    }
}
