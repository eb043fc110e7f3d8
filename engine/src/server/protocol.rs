//! The request side of the OpenAI API: the JSON bodies of `/v1/chat/completions` and
//! `/v1/completions` read into one [`GenerationRequest`], every field checked for its type and
//! range, and refused with a 400 that names it. It reads the body as a JSON value and takes the
//! fields one by one (rather than deriving a serde struct) so that each error can say which field
//! is wrong and why. Pure: no model, no engine; the fuzz target `server_request` runs it on
//! arbitrary bytes, and it must return, never panic.

use super::error::ApiError;
use crate::harmony::ReasoningEffort;
use crate::sampler::SamplerConfig;
use serde_json::{Map, Value};

/// Most choices per request (`n`).
pub const MAX_CHOICES: usize = 16;
/// Most alternatives per token (`top_logprobs`; OpenAI's own limit).
pub const MAX_TOP_LOGPROBS: usize = 20;
/// Most stop strings (OpenAI allows 4; vLLM more).
pub const MAX_STOP_STRINGS: usize = 16;

/// Which endpoint a body came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
}

/// One message of a chat.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// The reasoning an assistant message carries back (`reasoning_content` or `reasoning`).
    pub reasoning: Option<String>,
    /// An assistant message's `tool_calls`, as given (each checked for a function's name).
    pub tool_calls: Option<Vec<Value>>,
}

/// A completions prompt: text, or token ids.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    Messages(Vec<ChatMessage>),
    Prompt(Prompt),
}

/// What a client asked for, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationRequest {
    pub model: Option<String>,
    pub input: Input,
    pub max_tokens: Option<usize>,
    pub sampler: SamplerConfig,
    /// Whether the client gave a seed (else the server draws one per request).
    pub seeded: bool,
    pub stop: Vec<String>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// Some(k): the chosen token's log-probability and the k most likely alternatives.
    pub logprobs: Option<usize>,
    pub reasoning_effort: Option<ReasoningEffort>,
    /// `tools` as given (for templates that render them); None when absent or empty.
    pub tools: Option<Vec<Value>>,
    /// `tool_choice`: "none" turns tool calls off, "auto" (the default) leaves them to the
    /// model. Forcing a call ("required", a named function) is refused: nothing here can
    /// constrain what the model writes.
    pub tool_choice: Option<String>,
    /// Completions: the prompt's text comes back before the completion.
    pub echo: bool,
    /// vLLM's and llama-server's extension: generate past the end-of-sequence (and harmony's
    /// stop) tokens, to `max_tokens` (for benchmarks).
    pub ignore_eos: bool,
}

impl GenerationRequest {
    /// The tools the prompt offers the model: `tools`, unless `tool_choice` is "none".
    pub fn prompt_tools(&self) -> Option<&[Value]> {
        if self.tool_choice.as_deref() == Some("none") { None } else { self.tools.as_deref() }
    }
}

/// Reads and checks a body sent to `endpoint`.
pub fn parse_request(body: &[u8], endpoint: Endpoint) -> Result<GenerationRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::malformed(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(ApiError::malformed("the request body must be a JSON object"));
    };
    let fields = Fields(&object);
    let input = match endpoint {
        Endpoint::Chat => Input::Messages(messages(fields.required("messages")?)?),
        Endpoint::Completions => Input::Prompt(prompt(fields.required("prompt")?)?),
    };
    let mut sampler = SamplerConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        seed: 0,
    };
    if let Some(t) = fields.number("temperature", 0.0, 2.0)? {
        sampler.temperature = t;
    }
    if let Some(p) = fields.number("top_p", 0.0, 1.0)? {
        if p == 0.0 {
            return Err(ApiError::invalid("top_p", "top_p must be above 0 and at most 1"));
        }
        sampler.top_p = p;
    }
    if let Some(k) = fields.integer("top_k", -1, i64::from(u32::MAX))? {
        // -1 (vLLM) and 0 (llama.cpp) both mean every token.
        sampler.top_k = k.max(0) as usize;
    }
    if let Some(p) = fields.number("min_p", 0.0, 1.0)? {
        sampler.min_p = p;
    }
    if let Some(p) = fields.number("presence_penalty", -2.0, 2.0)? {
        sampler.presence_penalty = p;
    }
    if let Some(p) = fields.number("frequency_penalty", -2.0, 2.0)? {
        sampler.frequency_penalty = p;
    }
    if let Some(p) = fields.number("repetition_penalty", 0.0, 10.0)? {
        if p == 0.0 {
            return Err(ApiError::invalid(
                "repetition_penalty",
                "repetition_penalty must be above 0 (1 is off)",
            ));
        }
        sampler.repeat_penalty = p;
    }
    let seed = fields.integer("seed", i64::MIN, i64::MAX)?;
    if let Some(seed) = seed {
        sampler.seed = seed as u64;
    }
    // max_completion_tokens is the newer name; it wins when both are given.
    let max_tokens = match fields.integer("max_completion_tokens", 1, i64::from(u32::MAX))? {
        Some(n) => Some(n as usize),
        None => fields.integer("max_tokens", 1, i64::from(u32::MAX))?.map(|n| n as usize),
    };
    let n = fields.integer("n", 1, MAX_CHOICES as i64)?.unwrap_or(1) as usize;
    let stream = fields.boolean("stream")?.unwrap_or(false);
    let include_usage = match fields.get("stream_options") {
        None => false,
        Some(Value::Object(options)) => match options.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::invalid(
                    "stream_options.include_usage",
                    "stream_options.include_usage must be a boolean",
                ));
            }
        },
        Some(_) => return Err(ApiError::invalid("stream_options", "stream_options must be an object")),
    };
    let logprobs = match endpoint {
        Endpoint::Chat => {
            let wanted = fields.boolean("logprobs")?.unwrap_or(false);
            let top = fields.integer("top_logprobs", 0, MAX_TOP_LOGPROBS as i64)?;
            if top.is_some() && !wanted {
                return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs set to true"));
            }
            wanted.then_some(top.unwrap_or(0) as usize)
        }
        Endpoint::Completions => fields.integer("logprobs", 0, MAX_TOP_LOGPROBS as i64)?.map(|k| k as usize),
    };
    let reasoning_effort = match fields.string("reasoning_effort")? {
        None => None,
        Some("low") => Some(ReasoningEffort::Low),
        Some("medium") => Some(ReasoningEffort::Medium),
        Some("high") => Some(ReasoningEffort::High),
        Some(other) => {
            return Err(ApiError::invalid(
                "reasoning_effort",
                format!("reasoning_effort {other:?} is not one of low, medium, high"),
            ));
        }
    };
    let tools = match fields.get("tools") {
        None => None,
        Some(Value::Array(tools)) => {
            for (i, tool) in tools.iter().enumerate() {
                let name = tool.get("function").and_then(|f| f.get("name")).and_then(Value::as_str);
                if tool.get("type").and_then(Value::as_str) != Some("function") || name.is_none() {
                    return Err(ApiError::invalid(
                        &format!("tools[{i}]"),
                        "each tool must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    ));
                }
            }
            (!tools.is_empty()).then(|| tools.clone())
        }
        Some(_) => return Err(ApiError::invalid("tools", "tools must be an array")),
    };
    let tool_choice = match fields.get("tool_choice") {
        None => None,
        Some(Value::String(s)) if ["none", "auto"].contains(&s.as_str()) => Some(s.clone()),
        Some(Value::String(s)) if s == "required" => {
            return Err(ApiError::invalid(
                "tool_choice",
                "tool_choice \"required\" is not supported (the engine cannot force a tool call); use \"auto\" or \"none\"",
            ));
        }
        Some(Value::Object(choice)) if choice.get("function").and_then(|f| f.get("name")).is_some() => {
            return Err(ApiError::invalid(
                "tool_choice",
                "tool_choice naming a function is not supported (the engine cannot force a tool call); use \"auto\" or \"none\"",
            ));
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "tool_choice",
                "tool_choice must be \"none\", \"auto\", \"required\" or a named function",
            ));
        }
    };
    let model = fields.string("model")?.map(str::to_string);
    let echo = match endpoint {
        Endpoint::Completions => fields.boolean("echo")?.unwrap_or(false),
        Endpoint::Chat => false,
    };
    Ok(GenerationRequest {
        model,
        input,
        max_tokens,
        sampler,
        seeded: seed.is_some(),
        stop: stop(fields.get("stop"))?,
        n,
        stream,
        include_usage,
        logprobs,
        reasoning_effort,
        tools,
        tool_choice,
        echo,
        ignore_eos: fields.boolean("ignore_eos")?.unwrap_or(false),
    })
}

/// The fields of the body, each read with its name for the error.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    /// A field that is present and not null.
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn required(&self, name: &str) -> Result<&'a Value, ApiError> {
        self.get(name).ok_or_else(|| ApiError::invalid(name, format!("the field {name} is required")))
    }

    fn number(&self, name: &str, low: f64, high: f64) -> Result<Option<f32>, ApiError> {
        let Some(value) = self.get(name) else { return Ok(None) };
        match value.as_f64() {
            Some(v) if (low..=high).contains(&v) => Ok(Some(v as f32)),
            Some(v) => Err(ApiError::invalid(
                name,
                format!("{name} = {v} is out of range: expected {low} to {high}"),
            )),
            None => Err(ApiError::invalid(name, format!("{name} must be a number"))),
        }
    }

    fn integer(&self, name: &str, low: i64, high: i64) -> Result<Option<i64>, ApiError> {
        let Some(value) = self.get(name) else { return Ok(None) };
        // A seed may be any 64-bit integer, signed or not.
        let integer =
            value.as_i64().or_else(|| value.as_u64().map(|u| u as i64).filter(|_| high == i64::MAX));
        match integer {
            Some(v) if (low..=high).contains(&v) => Ok(Some(v)),
            Some(v) => Err(ApiError::invalid(
                name,
                format!("{name} = {v} is out of range: expected {low} to {high}"),
            )),
            None => Err(ApiError::invalid(name, format!("{name} must be an integer"))),
        }
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::invalid(name, format!("{name} must be a boolean"))),
        }
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::invalid(name, format!("{name} must be a string"))),
        }
    }
}

fn messages(value: &Value) -> Result<Vec<ChatMessage>, ApiError> {
    let Value::Array(items) = value else {
        return Err(ApiError::invalid("messages", "messages must be an array of messages"));
    };
    if items.is_empty() {
        return Err(ApiError::invalid("messages", "messages must hold at least one message"));
    }
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = |name: &str| format!("messages[{i}].{name}");
        let Value::Object(message) = item else {
            return Err(ApiError::invalid(&format!("messages[{i}]"), "each message must be an object"));
        };
        let role = match message.get("role") {
            Some(Value::String(role))
                if ["system", "developer", "user", "assistant", "tool"].contains(&role.as_str()) =>
            {
                role.clone()
            }
            Some(Value::String(role)) => {
                return Err(ApiError::invalid(
                    &field("role"),
                    format!("role {role:?} is not one of system, developer, user, assistant, tool"),
                ));
            }
            _ => return Err(ApiError::invalid(&field("role"), "each message needs a role (a string)")),
        };
        let content = content(message.get("content"), &field("content"))?;
        let reasoning = match message.get("reasoning_content").or_else(|| message.get("reasoning")) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(ApiError::invalid(&field("reasoning_content"), "reasoning must be a string"));
            }
        };
        let tool_calls = match message.get("tool_calls") {
            None | Some(Value::Null) => None,
            Some(Value::Array(calls)) => {
                for (j, call) in calls.iter().enumerate() {
                    if call.get("function").and_then(|f| f.get("name")).and_then(Value::as_str).is_none() {
                        return Err(ApiError::invalid(
                            &format!("messages[{i}].tool_calls[{j}].function.name"),
                            "each tool call needs its function's name",
                        ));
                    }
                }
                (!calls.is_empty()).then(|| calls.clone())
            }
            Some(_) => return Err(ApiError::invalid(&field("tool_calls"), "tool_calls must be an array")),
        };
        messages.push(ChatMessage { role, content, reasoning, tool_calls });
    }
    Ok(messages)
}

/// A message's content: a string, null (an assistant's tool call), or an array of text parts.
fn content(value: Option<&Value>, field: &str) -> Result<String, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (Some("text"), None) => {
                        return Err(ApiError::invalid(
                            &format!("{field}[{j}].text"),
                            "a text part needs its text",
                        ));
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            &format!("{field}[{j}].type"),
                            "only text content parts are supported",
                        ));
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(ApiError::invalid(field, "content must be a string or an array of text parts")),
    }
}

fn prompt(value: &Value) -> Result<Prompt, ApiError> {
    let token = |v: &Value| v.as_u64().filter(|&t| t <= u64::from(u32::MAX)).map(|t| t as u32);
    match value {
        Value::String(s) => Ok(Prompt::Text(s.clone())),
        Value::Array(items) if items.is_empty() => Err(ApiError::invalid("prompt", "the prompt is empty")),
        Value::Array(items) => {
            if let [Value::String(s)] = &items[..] {
                return Ok(Prompt::Text(s.clone()));
            }
            if let [Value::Array(ids)] = &items[..] {
                return prompt(&Value::Array(ids.clone()));
            }
            let ids: Option<Vec<u32>> = items.iter().map(token).collect();
            ids.map(Prompt::Tokens).ok_or_else(|| {
                ApiError::invalid(
                    "prompt",
                    "prompt must be a string, an array of token ids, or an array of one of those (one prompt per request)",
                )
            })
        }
        _ => Err(ApiError::invalid("prompt", "prompt must be a string or an array of token ids")),
    }
}

fn stop(value: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let stops = match value {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            let mut stops = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => stops.push(s.clone()),
                    _ => return Err(ApiError::invalid(&format!("stop[{i}]"), "each stop must be a string")),
                }
            }
            stops
        }
        Some(_) => return Err(ApiError::invalid("stop", "stop must be a string or an array of strings")),
    };
    if stops.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid("stop", format!("at most {MAX_STOP_STRINGS} stop strings")));
    }
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "a stop string must not be empty"));
    }
    Ok(stops.into_iter().collect())
}
