//! Chat prompts from the model's own template (`tokenizer.chat_template`, Jinja), rendered with
//! minijinja the way Hugging Face's `apply_chat_template` renders it.
//!
//! The template comes from the model file, so it is hostile input: it may loop for a very long
//! time or write without end. Rendering runs on a fuel budget (minijinja counts one unit per
//! instruction) and into a bounded buffer, and the template's own size is capped.

use minijinja::{Environment, context};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message { role: role.to_string(), content: content.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the model has no chat template (tokenizer.chat_template); use `generate` instead")]
    NoTemplate,
    #[error("the chat template: {0}")]
    Template(String),
    #[error(
        "the chat template (tokenizer.chat_template) is {0} bytes, over the limit of {MAX_TEMPLATE_BYTES}"
    )]
    TemplateTooLarge(usize),
    #[error("the chat template (tokenizer.chat_template) ran out of fuel after {0} instructions")]
    OutOfFuel(u64),
    #[error("the chat template (tokenizer.chat_template) wrote more than {0} bytes of prompt")]
    PromptTooLarge(usize),
}

/// Real templates take a few KiB to a few tens of KiB.
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;
/// Instructions a render may run: a fixed allowance plus some per message (real templates run a
/// few dozen to a few hundred per message).
const FUEL_BASE: u64 = 200_000;
const FUEL_PER_MESSAGE: u64 = 2_000;
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
    if template.len() > MAX_TEMPLATE_BYTES {
        return Err(ChatError::TemplateTooLarge(template.len()));
    }
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("chat template".into())
            .stack_size(RENDER_STACK_BYTES)
            .spawn_scoped(scope, || {
                render_here(template, messages, bos_token, eos_token, add_generation_prompt)
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
) -> Result<String, ChatError> {
    let fuel = (FUEL_BASE + FUEL_PER_MESSAGE * messages.len() as u64).min(MAX_FUEL);
    let text_bytes: usize = messages.iter().map(|m| m.role.len() + m.content.len()).sum::<usize>()
        + bos_token.len()
        + eos_token.len();
    let limit = PROMPT_BASE_BYTES.saturating_add(text_bytes.saturating_mul(4));

    let mut env = Environment::new();
    env.set_fuel(Some(fuel));
    // Templates written for Python's Jinja call str methods such as .strip() and .startswith().
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
    });
    env.add_template("chat", template).map_err(|e| ChatError::Template(e.to_string()))?;
    let mut out = Bounded { bytes: Vec::new(), limit, full: false };
    let rendered = env.get_template("chat").and_then(|t| {
        t.render_captured_to(
            context! {
                messages => messages,
                bos_token => bos_token,
                eos_token => eos_token,
                add_generation_prompt => add_generation_prompt,
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
    let mut env = Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
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
    env.add_template("chat", template).map_err(|e| ChatError::Template(e.to_string()))?;
    let extra = match &options.reasoning_effort {
        Some(effort) => context! { reasoning_effort => effort },
        None => context! {},
    };
    env.get_template("chat")
        .and_then(|t| {
            t.render(context! {
                messages => messages,
                bos_token => bos_token,
                eos_token => eos_token,
                add_generation_prompt => add_generation_prompt,
                ..extra
            })
        })
        .map_err(|e| ChatError::Template(e.to_string()))
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
        // Values nested one level per pass, as deep as the most fuel allows, printed, then dropped
        // when the fuel runs out (found by the chat_template fuzz target: a stack overflow).
        let messages = vec![Message::new("user", "hi"); 1000];
        let nest = "{% set ns = namespace(x=1) %}{% for i in range(1000) %}{% for j in range(150) %}{% set ns.x = [ns.x] %}{% endfor %}{% endfor %}{{ ns.x|length }}{{ ns.x }}";
        let text = render(nest, &messages, "", "", false).unwrap();
        assert!(text.starts_with("1[[[[") && text.ends_with("]]]]"), "{}", &text[..20]);
        let forever = "{% set ns = namespace(x=1) %}{% for i in range(100000) %}{% for j in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}{% endfor %}";
        let error = render(forever, &messages, "", "", false).unwrap_err();
        assert!(matches!(error, ChatError::OutOfFuel(MAX_FUEL)), "{error}");
        let big = "x".repeat(MAX_TEMPLATE_BYTES + 1);
        let error = render(&big, &[], "", "", false).unwrap_err();
        assert!(error.to_string().contains("over the limit of 1048576"), "{error}");
    }
}
