//! The small endpoints: `/health` (503 while the model loads, then 200; no key needed),
//! `/v1/models`, `/metrics`, `/tokenize` and `/detokenize` (vLLM's shapes), the API key check
//! that guards all but `/health`, and the JSON 404 for unknown paths.

use super::Shared;
use super::error::ApiError;
use super::generation::body_bytes;
use super::protocol::{Endpoint, Input, parse_request};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

pub async fn health(State(shared): State<Arc<Shared>>) -> Response {
    match shared.model() {
        Ok(_) => (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response(),
        Err(error) => error.into_response(),
    }
}

pub async fn models(State(shared): State<Arc<Shared>>) -> Response {
    let ctx = shared.model().map(|m| m.ctx_size).ok();
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": shared.options.model_name,
            "object": "model",
            "created": shared.started,
            "owned_by": "engine",
            "max_model_len": ctx,
        }],
    }))
    .into_response()
}

pub async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared.metrics.render()).into_response()
}

/// `{"prompt": "..."}` (a completions prompt, `add_special_tokens` default true) or
/// `{"messages": [...]}` (rendered by the chat template) to `{"tokens", "count", "max_model_len"}`.
pub async fn tokenize(State(shared): State<Arc<Shared>>, body: Result<Bytes, BytesRejection>) -> Response {
    tokenize_body(&shared, body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn tokenize_body(
    shared: &Arc<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let model = shared.model()?;
    let body = body_bytes(shared, body)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::malformed(format!("the request body is not valid JSON: {e}")))?;
    let endpoint = if value.get("messages").is_some() { Endpoint::Chat } else { Endpoint::Completions };
    let request = parse_request(&body, endpoint)?;
    let add_special = match value.get("add_special_tokens") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid("add_special_tokens", "add_special_tokens must be a boolean"));
        }
    };
    let tokens = match &request.input {
        Input::Prompt(super::protocol::Prompt::Text(text)) => {
            let tokenizer = &model.tokenizer;
            tokenizer
                .encode(text, add_special && tokenizer.add_bos(), false)
                .map_err(|e| ApiError::invalid("prompt", format!("the prompt could not be tokenized: {e}")))?
        }
        input => {
            let (model, input, effort) = (model.clone(), input.clone(), request.reasoning_effort);
            let tools = request.prompt_tools().map(<[Value]>::to_vec);
            let tokens = tokio::task::spawn_blocking(move || {
                super::prompt::prompt_tokens(&model, &input, effort, tools.as_deref())
            });
            match tokens.await.map_err(|e| ApiError::internal(e.to_string()))? {
                Ok(tokens) => tokens,
                // Counting tokens is the point: a prompt too long to run still gets its count.
                Err(error) if error.code == Some("context_length_exceeded") => Vec::new(),
                Err(error) => return Err(error),
            }
        }
    };
    Ok(axum::Json(json!({"tokens": tokens, "count": tokens.len(), "max_model_len": model.ctx_size}))
        .into_response())
}

/// `{"tokens": [...]}` to `{"prompt": "..."}`.
pub async fn detokenize(State(shared): State<Arc<Shared>>, body: Result<Bytes, BytesRejection>) -> Response {
    let result = (|| {
        let model = shared.model()?;
        let body = body_bytes(&shared, body)?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::malformed(format!("the request body is not valid JSON: {e}")))?;
        let Some(Value::Array(items)) = value.get("tokens") else {
            return Err(ApiError::invalid("tokens", "tokens must be an array of token ids"));
        };
        let mut tokens = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.as_u64() {
                Some(t) if (t as usize) < model.n_vocab => tokens.push(t as u32),
                _ => {
                    return Err(ApiError::invalid(
                        &format!("tokens[{i}]"),
                        format!("token ids must be integers below the vocabulary size {}", model.n_vocab),
                    ));
                }
            }
        }
        Ok(axum::Json(json!({"prompt": model.tokenizer.decode(&tokens, false)})).into_response())
    })();
    result.unwrap_or_else(IntoResponse::into_response)
}

pub async fn not_found(uri: Uri) -> Response {
    ApiError::not_found(uri.path()).into_response()
}

/// Refuses a request without `Authorization: Bearer <one of the keys>` (when keys are set).
pub async fn require_key(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    if shared.options.api_keys.is_empty() {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(key)
            if shared.options.api_keys.iter().any(|k| constant_time_equal(k.as_bytes(), key.as_bytes())) =>
        {
            next.run(request).await
        }
        _ => ApiError::unauthorized().into_response(),
    }
}

/// Equality that takes as long whatever the first differing byte (a key is a secret).
fn constant_time_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}
