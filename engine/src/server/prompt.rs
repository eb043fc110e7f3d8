//! A request's prompt as tokens: chat messages through the model's own chat template (gpt-oss's
//! with its `reasoning_effort`, or the engine's harmony renderer when the template is missing or
//! fails), a completions prompt through the tokenizer, token ids as given. The template sees the
//! request's `tools` and each assistant message's reasoning (as `thinking`) and `tool_calls`
//! (arguments parsed from their JSON text, as templates index them); the engine's own harmony
//! renderer writes them too (tools, reasoning, tool calls and results). The prompt must fit
//! the context with room for one generated token: a longer one is refused, never cut.

use super::ModelInfo;
use super::error::ApiError;
use super::protocol::{ChatMessage, Input, Prompt};
use crate::chat::{self, Message, TemplateOptions};
use crate::harmony::{self, ReasoningEffort};
use serde_json::Value;

/// The tokens of `input`, checked against the vocabulary and the context.
pub fn prompt_tokens(
    model: &ModelInfo,
    input: &Input,
    effort: Option<ReasoningEffort>,
    tools: Option<&[Value]>,
) -> Result<Vec<u32>, ApiError> {
    let (tokens, param) = match input {
        Input::Messages(messages) => (chat_tokens(model, messages, effort, tools)?, "messages"),
        Input::Prompt(Prompt::Text(text)) => {
            let tokenizer = &model.tokenizer;
            let tokens = tokenizer.encode(text, tokenizer.add_bos(), false).map_err(|e| {
                ApiError::invalid("prompt", format!("the prompt could not be tokenized: {e}"))
            })?;
            (tokens, "prompt")
        }
        Input::Prompt(Prompt::Tokens(tokens)) => {
            let n_vocab = model.n_vocab;
            if let Some(&token) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
                return Err(ApiError::invalid(
                    "prompt",
                    format!("token id {token} is outside the vocabulary of {n_vocab}"),
                ));
            }
            (tokens.clone(), "prompt")
        }
    };
    if tokens.is_empty() {
        return Err(ApiError::invalid(param, "the prompt is empty (no tokens)"));
    }
    if tokens.len() + 1 > model.ctx_size {
        return Err(ApiError::context_length(param, tokens.len(), model.ctx_size));
    }
    Ok(tokens)
}

/// A message as templates read it.
fn template_message(message: &ChatMessage) -> Message {
    let mut plain = Message::new(&message.role, message.content.clone());
    plain.thinking = message.reasoning.clone();
    plain.tool_calls = message.tool_calls.as_ref().map(|calls| {
        let calls = calls.iter().map(|call| {
            let mut call = call.clone();
            if let Some(arguments) = call.pointer_mut("/function/arguments")
                && let Some(parsed) =
                    arguments.as_str().and_then(|text| serde_json::from_str::<Value>(text).ok())
            {
                *arguments = parsed;
            }
            call
        });
        Value::Array(calls.collect())
    });
    plain
}

fn chat_tokens(
    model: &ModelInfo,
    messages: &[ChatMessage],
    effort: Option<ReasoningEffort>,
    tools: Option<&[Value]>,
) -> Result<Vec<u32>, ApiError> {
    let tokenizer = &model.tokenizer;
    let token_text = |id: Option<u32>| id.and_then(|t| tokenizer.id_to_token(t)).unwrap_or_default();
    let (bos, eos) = (token_text(tokenizer.bos()), token_text(tokenizer.eos()));
    let plain: Vec<Message> = messages.iter().map(template_message).collect();
    let template_tools = tools.map(|tools| Value::Array(tools.to_vec()));
    let text = match (&model.chat_template, model.harmony) {
        (Some(template), None) => {
            let options = TemplateOptions { tools: template_tools, ..TemplateOptions::default() };
            chat::render_with_options(template, &plain, &bos, &eos, true, &options).map_err(template_error)?
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "messages",
                "the model has no chat template (tokenizer.chat_template); use /v1/completions",
            ));
        }
        (template, Some(_)) => {
            let effort = effort.unwrap_or(ReasoningEffort::Medium);
            let options = TemplateOptions {
                reasoning_effort: Some(effort.as_str().to_string()),
                now: None,
                tools: template_tools,
            };
            let from_template =
                template.as_deref().map(|t| chat::render_with_options(t, &plain, &bos, &eos, true, &options));
            match from_template {
                Some(Ok(text)) => text,
                _ => {
                    let system = harmony::SystemContent::new(harmony::today(), effort);
                    harmony::render_prompt(&plain, &system, tools)
                        .map_err(|e| ApiError::invalid("messages", e.to_string()))?
                }
            }
        }
    };
    tokenizer
        .encode(&text, false, true)
        .map_err(|e| ApiError::invalid("messages", format!("the prompt could not be tokenized: {e}")))
}

fn template_error(error: chat::ChatError) -> ApiError {
    ApiError::invalid("messages", format!("the chat template could not render these messages: {error}"))
}
