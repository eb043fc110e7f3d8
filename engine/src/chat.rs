//! Chat prompts from the model's own template (`tokenizer.chat_template`, Jinja), rendered with
//! minijinja the way Hugging Face's `apply_chat_template` renders it.
//!
//! The template comes from the model file, so it is hostile input: it may loop for a very long
//! time, write without end, build huge strings or values that contain themselves. Rendering runs
//! on a fuel budget (minijinja counts one unit per instruction) and into a bounded buffer, and the
//! template's own size is capped. The minijinja we build is patched (`vendor/minijinja/PATCHES.md`)
//! to bound what fuel does not: a string made by `~`, `+`, `*`, `join`, `replace` or `format` and
//! the text of any one printed value are at most 16 MiB, lists made by `*`, `batch` and `slice`
//! at most 2^20 items, values print at most 100 levels deep, one comparison visits at most 2^20
//! values, and a namespace is a plain object (compared by identity), so that one that contains
//! itself cannot send a comparison into endless recursion. Each of those is an error of the
//! instruction that went past it. Fuel also counts the size of the strings and lists instructions
//! make and of the text they write (one unit per 64 bytes), so work and memory are bounded by it.

use minijinja::value::Value;
use minijinja::{Environment, ErrorKind, State, context};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// An assistant message's reasoning, as templates that render it read it (gpt-oss's:
    /// `message.thinking`, into the analysis channel); absent from the template's view when None.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking: Option<String>,
    /// An assistant message's tool calls (OpenAI's shape, arguments parsed to JSON where they
    /// are JSON); absent when None.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message { role: role.to_string(), content: content.into(), thinking: None, tool_calls: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the model has no chat template (tokenizer.chat_template); use `generate` instead")]
    NoTemplate,
    #[error("the chat template (tokenizer.chat_template): {0}")]
    Template(String),
    #[error(
        "the chat template (tokenizer.chat_template) is {0} bytes, over the limit of {MAX_TEMPLATE_BYTES}"
    )]
    TemplateTooLarge(usize),
    #[error(
        "the chat template (tokenizer.chat_template) ran out of fuel: {0} units (one per instruction, and one per 64 bytes of the text and lists it makes)"
    )]
    OutOfFuel(u64),
    #[error("the chat template (tokenizer.chat_template) wrote more than {0} bytes of prompt")]
    PromptTooLarge(usize),
}

/// Real templates take a few KiB to a few tens of KiB.
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;
/// Instructions a render may run: a fixed allowance plus some per message (real templates run a
/// few dozen to a few hundred per message). The patched minijinja also charges one unit per 64
/// bytes of the strings and lists an instruction makes and the text it writes; real templates
/// copy each message a few times (`'<|im_start|>' + role + '\n' + content + ...`), so the
/// messages' text brings one unit per 8 bytes.
const FUEL_BASE: u64 = 200_000;
const FUEL_PER_MESSAGE: u64 = 2_000;
const TEXT_BYTES_PER_FUEL: u64 = 8;
/// Whatever the number of messages: fuel also bounds how deeply a template can nest values.
const MAX_FUEL: u64 = 2_000_000;
/// The stack the render runs on. minijinja prints and drops nested values (`[[[...]]]` built
/// one level per loop pass) recursively: on a 2 MiB thread stack 10,000 levels overflowed it
/// (an abort). A pass costs at least a few instructions of fuel, so MAX_FUEL bounds the depth
/// to a few hundred thousand levels; the stack is reserved, not committed, until used.
const RENDER_STACK_BYTES: usize = 256 << 20;
/// Bytes a render may write: a fixed allowance plus four times the messages' own text.
const PROMPT_BASE_BYTES: usize = 1 << 20;

/// Renders `messages` with `template`, ending with the assistant's turn opened when
/// `add_generation_prompt`.
pub fn render(
    template: &str,
    messages: &[Message],
    bos_token: &str,
    eos_token: &str,
    add_generation_prompt: bool,
) -> Result<String, ChatError> {
    let options = TemplateOptions::default();
    render_with_options(template, messages, bos_token, eos_token, add_generation_prompt, &options)
}

/// [`render`] with `options`, and the `strftime_now(format)` function that Hugging Face's
/// `apply_chat_template` provides (gpt-oss and Llama 3.1 templates write today's date with it).
pub fn render_with_options(
    template: &str,
    messages: &[Message],
    bos_token: &str,
    eos_token: &str,
    add_generation_prompt: bool,
    options: &TemplateOptions,
) -> Result<String, ChatError> {
    if template.len() > MAX_TEMPLATE_BYTES {
        return Err(ChatError::TemplateTooLarge(template.len()));
    }
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("chat template".into())
            .stack_size(RENDER_STACK_BYTES)
            .spawn_scoped(scope, || {
                render_here(template, messages, bos_token, eos_token, add_generation_prompt, options)
            })
            .map_err(|e| ChatError::Template(format!("could not start the render thread: {e}")))?;
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn render_here(
    template: &str,
    messages: &[Message],
    bos_token: &str,
    eos_token: &str,
    add_generation_prompt: bool,
    options: &TemplateOptions,
) -> Result<String, ChatError> {
    let text_bytes: usize = messages
        .iter()
        .map(|m| m.role.len() + m.content.len() + m.thinking.as_ref().map_or(0, String::len))
        .sum::<usize>()
        + bos_token.len()
        + eos_token.len();
    let fuel = (FUEL_BASE
        + FUEL_PER_MESSAGE.saturating_mul(messages.len() as u64)
        + text_bytes as u64 / TEXT_BYTES_PER_FUEL)
        .min(MAX_FUEL);
    let limit = PROMPT_BASE_BYTES.saturating_add(text_bytes.saturating_mul(4));

    let mut env = Environment::new();
    env.set_fuel(Some(fuel));
    // Templates written for Python's Jinja call str methods such as .strip() and .startswith().
    env.set_unknown_method_callback(python_methods);
    env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
    });
    let now = options.now;
    env.add_function("strftime_now", move |format: String| {
        let seconds = now.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
        strftime(&format, seconds)
    });
    env.add_filter("tojson", tojson);
    env.add_template("chat", template).map_err(|e| ChatError::Template(e.to_string()))?;
    let effort = match &options.reasoning_effort {
        Some(effort) => context! { reasoning_effort => effort },
        None => context! {},
    };
    let extra = match &options.tools {
        Some(tools) => context! { tools => Value::from_serialize(tools), ..effort },
        None => effort,
    };
    let mut out = Bounded { bytes: Vec::new(), limit, full: false };
    let rendered = env.get_template("chat").and_then(|t| {
        t.render_captured_to(
            context! {
                messages => messages,
                bos_token => bos_token,
                eos_token => eos_token,
                add_generation_prompt => add_generation_prompt,
                ..extra
            },
            &mut out,
        )
        .map(|_captured| ())
    });
    match rendered {
        Ok(_) => String::from_utf8(out.bytes).map_err(|e| ChatError::Template(e.to_string())),
        Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => Err(ChatError::OutOfFuel(fuel)),
        Err(_) if out.full => Err(ChatError::PromptTooLarge(limit)),
        Err(e) => Err(ChatError::Template(e.to_string())),
    }
}

/// Jinja's `tojson` as Hugging Face's chat templates get it: Python's `json.dumps(value,
/// ensure_ascii=False)`, with its ", " and ": " separators (gpt-oss's template writes tool-call
/// arguments and tool results through it). minijinja has its own only with a feature this build
/// leaves off, and that one writes compact, HTML-escaped JSON.
fn tojson(value: Value) -> Result<String, minijinja::Error> {
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    python_json(&json, &mut out);
    Ok(out)
}

pub(crate) fn python_json(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value as Json;
    match value {
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                python_json(item, out);
            }
            out.push(']');
        }
        Json::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Json::String(key.clone()).to_string());
                out.push_str(": ");
                python_json(item, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The longest string the patched minijinja makes (`MAX_STRING_LEN` in
/// `vendor/minijinja/src/value/limits.rs`).
const MAX_STRING_BYTES: usize = 16 << 20;

/// minijinja-contrib's Python methods (`pycompat`), with the two that multiply a string's size,
/// `str.replace` and `str.join`, held to the patched minijinja's string limit: contrib is not
/// patched, and `'a' * 100000` replaced by itself would be 10 GB.
fn python_methods(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, minijinja::Error> {
    let too_long = || {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("the result of str.{method} would be longer than {MAX_STRING_BYTES} bytes"),
        )
    };
    if let Some(s) = value.as_str() {
        match (method, args) {
            ("replace", [old, new, ..]) => {
                if let (Some(old), Some(new)) = (old.as_str(), new.as_str()) {
                    let mut n = if old.is_empty() { s.chars().count() + 1 } else { s.matches(old).count() };
                    if let Some(count) = args.get(2).and_then(|c| c.as_usize()) {
                        n = n.min(count);
                    }
                    if n.saturating_mul(new.len()).saturating_add(s.len()) > MAX_STRING_BYTES {
                        return Err(too_long());
                    }
                }
            }
            ("join", [items]) => {
                use std::fmt::Write;
                let mut out = String::new();
                for (i, item) in items.try_iter()?.enumerate() {
                    if i > 0 {
                        out.push_str(s);
                    }
                    let _ = write!(out, "{item}");
                    if out.len() > MAX_STRING_BYTES {
                        return Err(too_long());
                    }
                }
                return Ok(Value::from(out));
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// A writer that refuses to grow past `limit` bytes, and remembers that it did.
struct Bounded {
    bytes: Vec<u8>,
    limit: usize,
    full: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            self.full = true;
            return Err(std::io::Error::other("prompt too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Inputs some templates take beside the messages.
#[derive(Debug, Clone, Default)]
pub struct TemplateOptions {
    /// `reasoning_effort` (gpt-oss: "low", "medium" or "high"; left undefined when `None`, and
    /// the template picks its default).
    pub reasoning_effort: Option<String>,
    /// The Unix time `strftime_now` formats (UTC); `None`: now.
    pub now: Option<i64>,
    /// The functions the model may call (OpenAI's `tools`), as templates read `tools`; left
    /// undefined when `None`.
    pub tools: Option<serde_json::Value>,
}

/// C's strftime for a Unix time in UTC, for the conversions chat templates use: %Y %y %m %d %e
/// %H %M %S %b %B %a %A %j %%; any other is written as it stands.
pub fn strftime(format: &str, seconds: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
    let (y, mo, d, h, mi, s) = crate::harmony::civil_from_unix(seconds);
    let weekday = (seconds.div_euclid(86_400) + 4).rem_euclid(7) as usize; // 1970-01-01: Thursday
    let day_of_year = {
        let mut doy = d;
        for m in 1..mo {
            doy += match m {
                2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
        }
        doy
    };
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out += &format!("{y:04}"),
            Some('y') => out += &format!("{:02}", y.rem_euclid(100)),
            Some('m') => out += &format!("{mo:02}"),
            Some('d') => out += &format!("{d:02}"),
            Some('e') => out += &format!("{d:2}"),
            Some('H') => out += &format!("{h:02}"),
            Some('M') => out += &format!("{mi:02}"),
            Some('S') => out += &format!("{s:02}"),
            Some('j') => out += &format!("{day_of_year:03}"),
            Some('B') => out += MONTHS[mo as usize - 1],
            Some('b') => out += &MONTHS[mo as usize - 1][..3],
            Some('A') => out += DAYS[weekday],
            Some('a') => out += &DAYS[weekday][..3],
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_writes_what_pythons_json_dumps_writes() {
        // json.dumps(x, ensure_ascii=False) for the same values, as Hugging Face's templates get it.
        let template =
            "{{ messages[0].tool_calls|tojson }} {{ messages[0].content|tojson }} {{ tools|tojson }}";
        let mut message = Message::new("assistant", "caf\u{e9} \"quoted\"\n");
        message.tool_calls = Some(serde_json::json!([{"a": [1, 2.5, null, true]}]));
        let options =
            TemplateOptions { tools: Some(serde_json::json!({"k": "<&>"})), ..TemplateOptions::default() };
        let text = render_with_options(template, &[message], "", "", false, &options).unwrap();
        assert_eq!(text, r#"[{"a": [1, 2.5, null, true]}] "café \"quoted\"\n" {"k": "<&>"}"#);
        // Tools and reasoning are absent from a template's view unless given.
        let probe =
            "{{ tools is defined }} {{ 'thinking' in messages[0] }} {{ 'tool_calls' in messages[0] }}";
        assert_eq!(render(probe, &[Message::new("user", "hi")], "", "", false).unwrap(), "False False False");
    }

    #[test]
    fn chatml_renders_as_written() {
        // The ChatML template shape SmolLM2 and Qwen2 use.
        let template = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let text = render(
            template,
            &[Message::new("system", "Be brief."), Message::new("user", "Hi")],
            "",
            "",
            true,
        )
        .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let text =
            render("{{ messages[0].content.strip() }}", &[Message::new("user", "  x  ")], "", "", false)
                .unwrap();
        assert_eq!(text, "x");
        let error = render("{{ raise_exception('no system role') }}", &[], "", "", false).unwrap_err();
        assert!(error.to_string().contains("no system role"));
    }

    /// Found by the chat_template fuzz target (and a few shapes like it): loops nested deep
    /// enough to run for minutes now stop on the fuel budget, and endless output on the size cap.
    #[test]
    fn runaway_templates_are_errors() {
        let loops = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";
        assert!(matches!(render(loops, &[], "", "", false), Err(ChatError::OutOfFuel(200_000))));
        let output = "{% for a in range(100000) %}{{ 'x' * 100000 }}{% endfor %}";
        let error = render(output, &[], "", "", false).unwrap_err();
        assert!(matches!(error, ChatError::PromptTooLarge(n) if n == 1 << 20), "{error}");
        // Values nested one level per pass, as deep as the most fuel allows, then dropped (found
        // by the chat_template fuzz target: a stack overflow). Printing them stops at 100 levels
        // (vendor/minijinja/PATCHES.md), and the drop is deep.
        let messages = vec![Message::new("user", "hi"); 1000];
        let nest = "{% set ns = namespace(x=1) %}{% for i in range(1000) %}{% for j in range(150) %}{% set ns.x = [ns.x] %}{% endfor %}{% endfor %}{{ ns.x|length }}";
        assert_eq!(render(nest, &messages, "", "", false).unwrap(), "1");
        let error = render(&format!("{nest}{{{{ ns.x }}}}"), &messages, "", "", false).unwrap_err();
        assert!(error.to_string().contains("nested more than 100 levels deep"), "{error}");
        let forever = "{% set ns = namespace(x=1) %}{% for i in range(100000) %}{% for j in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}{% endfor %}";
        let error = render(forever, &messages, "", "", false).unwrap_err();
        assert!(matches!(error, ChatError::OutOfFuel(MAX_FUEL)), "{error}");
        let big = "x".repeat(MAX_TEMPLATE_BYTES + 1);
        let error = render(&big, &[], "", "", false).unwrap_err();
        assert!(error.to_string().contains("over the limit of 1048576"), "{error}");
    }

    fn template_error(template: &str) -> String {
        template_error_with(template, &[Message::new("user", "Hi")])
    }

    fn template_error_with(template: &str, messages: &[Message]) -> String {
        match render(template, messages, "<s>", "</s>", true) {
            Err(error @ ChatError::Template(_)) => error.to_string(),
            other => panic!("{template}: expected a template error, got {other:?}"),
        }
    }

    /// Finding 3 of the chat_template fuzz target (fuzz/README.md): a string that doubles on
    /// every pass of a loop or of a macro's recursion took GiBs within seconds, in a few dozen
    /// instructions (fuel could not stop it). So does the text of a value that holds the text of
    /// the value before, where every quote and backslash is escaped again. Strings made by `~`,
    /// `+` and `*`, and the text of a printed value, now stop at 16 MiB with an error; and fuel
    /// counts the bytes made, so with the fuel of a short chat they run out of fuel before that.
    #[test]
    fn finding_3_strings_that_double_are_errors() {
        // The most fuel there is, so that the length limit is what stops them.
        let many = vec![Message::new("user", "Hi"); 1000];
        for template in [
            "{% set ns = namespace(x='a') %}{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x|length }}",
            "{% set ns = namespace(x='a') %}{% for i in range(40) %}{% set ns.x = ns.x + ns.x %}{% endfor %}{{ ns.x|length }}",
            "{% set ns = namespace(x='a') %}{% for i in range(40) %}{% set ns.x = ns.x * 2 %}{% endfor %}{{ ns.x|length }}",
            "{% macro f(s, n) %}{% if n > 0 %}{{ f(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ f('a', 40) }}",
            // A tuple by mistake (`ns.x ~ m.content, ...`): its text is escaped again each pass.
            r"{% set ns = namespace(x='') %}{% for i in range(40) %}{% set ns.x = ns.x ~ 'a', '\\' %}{% endfor %}{{ ns.x|length }}",
            // Lists that hold the list before twice: 2^40 items' worth of text, from 40 values.
            "{% set ns = namespace(x='a') %}{% for i in range(40) %}{% set ns.x = [ns.x, ns.x] %}{% endfor %}{{ ns.x|string|length }}",
        ] {
            let error = template_error_with(template, &many);
            assert!(error.contains("tokenizer.chat_template"), "{error}");
            assert!(error.contains("longer than 16777216 bytes"), "{template}: {error}");
            // With the fuel of a short chat: out of fuel first (or the print limit, which one
            // instruction reaches).
            let error = render(template, &[], "", "", false).unwrap_err();
            assert!(
                matches!(error, ChatError::OutOfFuel(200_000))
                    || error.to_string().contains("longer than 16777216 bytes"),
                "{template}: {error}"
            );
        }
        // Up to the limit they work: 2^23 bytes.
        let ok = "{% set ns = namespace(x='a') %}{% for i in range(23) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x|length }}";
        assert_eq!(render(ok, &many, "", "", false).unwrap(), "8388608");
    }

    /// Finding 4 of the chat_template fuzz target: a namespace that holds itself (`{% set ns.x =
    /// [ns] %}`, or a tuple `ns, x` by mistake) printed without end: a stack overflow on any
    /// stack. Printing stops at 100 levels with an error; comparisons, which walked maps the same
    /// way, compare namespaces by identity (as Jinja2 does).
    #[test]
    fn finding_4_a_namespace_that_holds_itself_is_an_error() {
        for print in ["{{ ns.x|string }}", "{{ ns.x }}", "{{ ns.x ~ '' }}", "{{ ns|pprint }}", "{{ ns }}"] {
            for holds in ["[ns]", "ns, 1", "{'a': [ns]}"] {
                let template = format!("{{% set ns = namespace(x=1) %}}{{% set ns.x = {holds} %}}{print}");
                let error = template_error(&template);
                assert!(error.contains("tokenizer.chat_template"), "{error}");
                assert!(
                    error.contains("nested more than 100 levels deep (or a value that contains itself)"),
                    "{template}: {error}"
                );
            }
        }
        let compare = "{% set a = namespace(x=1) %}{% set a.x = [a] %}{% set b = namespace(x=1) %}{% set b.x = [b] %}\
            {{ a.x == b.x }} {{ a.x == a.x }} {{ a in b.x }} {{ [a, b, a]|sort|length }} {{ [a, b, a]|unique|length }} {{ a.x|length }}";
        assert_eq!(render(compare, &[], "", "", false).unwrap(), "False True False 3 2 1");
    }

    /// Finding 5 of the chat_template fuzz target (the 16-core run after the limits): a format
    /// key holding a non-ASCII character made minijinja's format parser slice inside the
    /// character and panic (`parse_till` steps byte by byte). Input:
    /// engine/tests/data/fuzz/chat_template/format-key-non-ascii.
    #[test]
    fn finding_5_format_keys_may_hold_any_character() {
        let template = "{{ '%(é)s and %(ab)s'|format({'é': 1, 'ab': 2}) }}";
        assert_eq!(render(template, &[], "", "", false).unwrap(), "1 and 2");
        let input = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/fuzz/chat_template/format-key-non-ascii"
        ))
        .unwrap();
        let template = std::str::from_utf8(&input[1..]).unwrap();
        // Whatever the template yields, it is a result, not a panic.
        let _ = render(template, &[], "", "", false);
    }

    /// Finding 6 of the chat_template fuzz target (a local run after finding 5): an empty list
    /// repeated two billion times has no items, so no limit stopped it, and listing it made two
    /// billion passes over nothing (a timeout). Input:
    /// engine/tests/data/fuzz/chat_template/empty-seq-repeat.
    #[test]
    fn finding_6_an_empty_list_repeated_is_empty_at_once() {
        let template =
            "{{ (([1, 2] * 0) * 2000000400)|list|length }} {{ ([] * 3000000000)|length }} {{ [1, 2] * 2 }}";
        assert_eq!(render(template, &[], "", "", false).unwrap(), "0 0 [1, 2, 1, 2]");
    }

    /// Finding 7 of the chat_template fuzz target (the 16-core run on finding 6's fix): a slice
    /// with a negative step whose stop lies past its start (`'abc'[0:2:-1]`) made minijinja
    /// subtract past zero and panic; `range` with a negative step could overflow the same way.
    /// The expected text is Python's (`'abcdef'[slice(a, b, step)]`, computed by CPython 3.11),
    /// which Jinja2 uses. Input: engine/tests/data/fuzz/chat_template/slice-negative-step, written
    /// by hand (the machine did not return the fuzzer's crash input, only its log).
    #[test]
    fn finding_7_slices_with_a_negative_step_are_python_slices() {
        for (slice, python) in [
            ("0:2:-1", ""),
            ("2:0:-1", "cb"),
            ("::-1", "fedcba"),
            ("-9223372036854775808:-9223372036854775808:-1", ""),
            ("9223372036854775807:-9223372036854775808:-1", "fedcba"),
            ("-9223372036854775808:9223372036854775807:-2", ""),
            ("0::-1", "a"),
            ("5::-2", "fdb"),
            ("-10:0:-1", ""),
            ("5:0:-1", "fedcb"),
            ("-1:-10:-9223372036854775808", "f"),
            (":5:-9223372036854775808", ""),
            ("1:-6:-2", "b"),
            ("0:10:-4", ""),
            (":-1:-2", ""),
            ("10:1:-1", "fedc"),
            ("-6:1:-2", ""),
            ("6:5:-9223372036854775808", ""),
            ("-10:-6:-1", ""),
            ("5:-10:-9223372036854775808", "f"),
            (":0:-1", "fedcb"),
            ("2:0:-2", "c"),
        ] {
            let template =
                format!("{{% set s = 'abcdef' %}}{{{{ s[{slice}] }}}}/{{{{ (s|list)[{slice}]|join('') }}}}");
            let rendered = render(&template, &[], "", "", false).unwrap();
            assert_eq!(rendered, format!("{python}/{python}"), "{template}");
        }
        // range() with a negative step, against Python's range().
        let ranges = "{{ range(5, -5, -2)|join(',') }}|{{ range(5, -4, -2)|join(',') }}|\
            {{ range(5, 0, -9223372036854775808)|join(',') }}|{{ range(0, 5, -9223372036854775808)|join(',') }}";
        assert_eq!(render(ranges, &[], "", "", false).unwrap(), "5,3,1,-1,-3|5,3,1,-1,-3|5|");
        for template in [
            "{{ range(3, -9223372036854775808, -1)|length }}",
            "{{ range(9223372036854775807, -9223372036854775808, -1)|length }}",
        ] {
            let error = template_error(template);
            assert!(error.contains("range has too many elements"), "{template}: {error}");
        }
        let input = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/fuzz/chat_template/slice-negative-step"
        ))
        .unwrap();
        let template = std::str::from_utf8(&input[1..]).unwrap();
        assert!(render(template, &[], "", "", false).is_ok(), "{template}");
    }

    /// Finding 8 of the chat_template fuzz target (a local run on finding 7's fix): a tuple whose
    /// text is longer than 16 MiB (a string just under it, every character escaped when printed)
    /// printed 515 times by one `format`. Each print stopped at the cap and wrote nothing, so
    /// `format` never reached its own limit and went on to the next: minutes. Now every print after
    /// the first that went past a limit writes nothing at once, and the instruction fails. Input
    /// (the fuzzer's): engine/tests/data/fuzz/chat_template/format-tuple-too-long, which the
    /// regression replay runs within its 10 s.
    #[test]
    fn finding_8_one_print_past_the_limit_ends_the_instruction() {
        for template in [
            "{% set t = '\"' * 8500000, 0 %}{{ ('%s' * 515)|format(*([t] * 515))|length }}",
            "{% set t = '\"' * 8500000, 0 %}{{ ([t] * 515)|join|length }}",
        ] {
            let error = template_error(template);
            assert!(error.contains("longer than 16777216 bytes"), "{template}: {error}");
        }
    }

    /// Finding 9 of the chat_template fuzz target (a local run on finding 8's fix): a filter that
    /// walks a list (`join`) was one instruction of fuel whatever the list's length, and joining
    /// 300,000 empty strings writes nothing, so a macro that did it in a loop ran for minutes.
    /// Every item taken from an iteration now costs fuel (the size of a value, 24 bytes). Input
    /// (the fuzzer's): engine/tests/data/fuzz/chat_template/join-long-empty-list-in-loop.
    #[test]
    fn finding_9_walking_a_list_costs_fuel_by_its_items() {
        for template in [
            "{% set l = [''] * 300000 %}{% for i in range(20) %}{{ l|join }}{% endfor %}",
            "{% set l = [0] * 300000 %}{% for i in range(20) %}{{ l|sum }}{% endfor %}",
            "{% macro m() %}{{ ([''] * 300000)|join }}{% endmacro %}{% for i in range(20) %}{{ m() }}{% endfor %}",
        ] {
            let error = render(template, &[], "", "", false).unwrap_err();
            assert!(matches!(error, ChatError::OutOfFuel(200_000)), "{template}: {error}");
        }
        // Loops over a real chat's messages are far from it.
        let chatml = "{% for message in messages %}{{ message['role'] ~ ': ' ~ message['content'] ~ '\\n' }}{% endfor %}";
        let messages = vec![Message::new("user", "Hi"); 2000];
        assert_eq!(render(chatml, &messages, "", "", false).unwrap().len(), 2000 * 9);
    }

    /// Found by hand while fixing findings 3 and 4 (fuzz/README.md, "found on the way"): single
    /// filters and operators that made a huge value in one instruction, which fuel could not stop.
    /// Before the patches in vendor/minijinja/PATCHES.md each of these aborted the process (an
    /// allocation of terabytes, or `len * n` overflowing), ran out of memory, or ran for minutes.
    #[test]
    fn one_instruction_cannot_make_a_huge_value() {
        let items = "would have more than 1048576 items";
        let bytes = "would be longer than 16777216 bytes";
        for (template, expected) in [
            ("{{ range(10)|batch(99999999999, 'x')|list|length }}", items),
            ("{{ [1]|slice(99999999999)|list|length }}", items),
            ("{{ ([1, 2] * 9999999999999999999)|length }}", items),
            ("{{ ([1, 2] * 999999999)|list|length }}", items),
            ("{% set s = 'a' * 1000000 %}{{ range(100000)|join(s)|length }}", bytes),
            ("{% set s = 'a' * 1000000 %}{{ ([s] * 100000)|join|length }}", bytes),
            ("{% set s = 'a' * 100000 %}{{ s|replace('a', s)|length }}", bytes),
            ("{% set s = 'a' * 100000 %}{{ s.replace('a', s)|length }}", bytes),
            ("{% set s = 'a' * 1000000 %}{{ s.join(range(100000))|length }}", bytes),
            ("{% set s = 'a' * 1000000 %}{{ ('%s' * 100)|format(*([s] * 100))|length }}", bytes),
            ("{{ '%99999999999s'|format('a') }}", "is over 65536"),
            ("{{ '{:99999999999}'.format('a') }}", "is over 65536"),
        ] {
            let error = template_error(template);
            assert!(error.contains(expected), "{template}: {error}");
        }
        // The same filters and methods as real templates use them.
        let ok = "{{ ['a', 'b']|join(', ') }}|{{ 'a-b'|replace('-', '+') }}|{{ '-'.join(['x', 'y']) }}|{{ 'xx'.replace('x', 'yz', 1) }}|{{ '%5s|%.2f'|format('a', 1.5) }}|{{ [1, 2, 3]|batch(2)|list }}|{{ [0] * 3 }}";
        assert_eq!(
            render(ok, &[], "", "", false).unwrap(),
            "a, b|a+b|x-y|yzx|    a|1.50|[[1, 2], [3]]|[0, 0, 0]"
        );
    }

    /// Found by hand with findings 3 and 4: output captured by a macro (or `{% set %}` block) was
    /// not bounded like the prompt, and fuel counted an instruction the same whatever the size of
    /// the text it wrote: a macro that writes a 1 MB string in a loop ran out of memory. Fuel now
    /// counts one unit per 64 bytes made or written.
    #[test]
    fn fuel_counts_the_bytes_instructions_make() {
        for template in [
            "{% set s = 'x' * 1000000 %}{% macro m() %}{% for i in range(99999) %}{{ s }}{% endfor %}{% endmacro %}{{ m()|length }}",
            "{% for i in range(100000) %}{% set x = 'x' * (1000000 + i) %}{% endfor %}",
        ] {
            let error = render(template, &[], "", "", false).unwrap_err();
            assert!(matches!(error, ChatError::OutOfFuel(200_000)), "{template}: {error}");
        }
        // A real prompt of a few MB of messages fits: the messages' text brings its own fuel.
        let chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
        let messages = vec![Message::new("user", "word ".repeat(200_000)); 4];
        assert_eq!(render(chatml, &messages, "", "", false).unwrap().len(), 4 * (1_000_000 + 28));
    }

    /// Found by hand with findings 3 and 4: values that share their parts (`[x, x]` forty times
    /// over) are small, but comparing two of them (`==`, `in`, `sort`, `unique`) visited 2^40
    /// values: a timeout. One instruction's comparisons now stop after 2^20 values.
    #[test]
    fn comparing_shared_values_is_bounded() {
        let build = "{% set ns = namespace(x='a', y='a') %}{% for i in range(40) %}{% set ns.x = [ns.x, ns.x] %}{% set ns.y = [ns.y, ns.y] %}{% endfor %}";
        for compare in [
            "{{ ns.x == ns.y }}",
            "{{ ns.x in [ns.y] }}",
            "{{ [ns.x, ns.y, 1, ns.y, 'b', ns.x]|sort|length }}",
            "{{ [ns.x, ns.y]|unique|length }}",
        ] {
            let error = template_error(&format!("{build}{compare}"));
            assert!(error.contains("cannot compare values this large"), "{compare}: {error}");
        }
        // Smaller ones compare, and sort, as before (the sort is now a merge sort of our own).
        let small = "{% set ns = namespace(x='a', y='a') %}{% for i in range(10) %}{% set ns.x = [ns.x, ns.x] %}{% set ns.y = [ns.y, ns.y] %}{% endfor %}{{ ns.x == ns.y }} {{ [3, 1, 2, 1]|sort }} {{ ['b', 'A', 'a']|sort }} {{ [[2], [1, 2], [1]]|sort }}";
        assert_eq!(
            render(small, &[], "", "", false).unwrap(),
            "True [1, 1, 2, 3] [\"A\", \"a\", \"b\"] [[1], [1, 2], [2]]"
        );
    }
}
