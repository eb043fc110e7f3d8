//! Chat prompts from the model's own template (`tokenizer.chat_template`, Jinja), rendered with
//! minijinja the way Hugging Face's `apply_chat_template` renders it.

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
}

/// Renders `messages` with `template`, ending with the assistant's turn opened when
/// `add_generation_prompt`.
pub fn render(
    template: &str,
    messages: &[Message],
    bos_token: &str,
    eos_token: &str,
    add_generation_prompt: bool,
) -> Result<String, ChatError> {
    let mut env = Environment::new();
    // Templates written for Python's Jinja call str methods such as .strip() and .startswith().
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
    });
    env.add_template("chat", template).map_err(|e| ChatError::Template(e.to_string()))?;
    env.get_template("chat")
        .and_then(|t| {
            t.render(context! {
                messages => messages,
                bos_token => bos_token,
                eos_token => eos_token,
                add_generation_prompt => add_generation_prompt,
            })
        })
        .map_err(|e| ChatError::Template(e.to_string()))
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
}
