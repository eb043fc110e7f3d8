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
