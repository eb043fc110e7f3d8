//! `POST /v1/chat/completions` and `POST /v1/completions`: a checked request becomes `n`
//! sequences sent to the engine thread (sharing the prompt's KV pages through the prefix cache),
//! and what comes back is answered whole or streamed as server-sent events the way OpenAI's
//! clients read them: a first chunk with the role, content deltas, a finish chunk per choice, a
//! usage chunk (`choices: []`) when asked, then `data: [DONE]`. A client that goes away, from a
//! stream or a whole response, cancels its sequences: their pages are freed at the next step.

use super::engine_loop::{SequenceEvent, Submission};
use super::error::ApiError;
use super::metrics::finish_reason;
use super::protocol::{Endpoint, GenerationRequest, parse_request};
use super::reply::{Delta, Gathered, ReplyMapper};
use super::{ModelInfo, Shared, prompt};
use crate::batching::{Request, TokenLogprobs, Usage};
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::sync::mpsc;

pub async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(shared, body, Endpoint::Chat).await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn completions(State(shared): State<Arc<Shared>>, body: Result<Bytes, BytesRejection>) -> Response {
    generate(shared, body, Endpoint::Completions).await.unwrap_or_else(IntoResponse::into_response)
}

/// The body, or the error for one that did not arrive whole (over the limit: 413).
pub fn body_bytes(shared: &Shared, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(shared.options.max_body_bytes)
        } else {
            ApiError::malformed(format!("the request body could not be read: {rejection}"))
        }
    })
}

/// Sets the cancel flag of a request's sequences when dropped: when the response is done, or
/// when the client went away and the handler or the stream was dropped with it.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Holds a request's places in the admission count (one per sequence) while it is in the server.
struct Admitted {
    shared: Arc<Shared>,
    sequences: usize,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(self.sequences, Ordering::Relaxed);
    }
}

/// The choices after the first, held back until the first has computed the prompt.
struct Later {
    shared: Arc<Shared>,
    submissions: Vec<Submission>,
}

impl Later {
    /// Sends what is held back (at the first event of choice 0; after that, nothing is left).
    fn submit(&mut self) -> Result<(), ApiError> {
        while let Some(submission) = self.submissions.pop() {
            self.shared.submit(submission)?;
        }
        Ok(())
    }
}

/// A request's state while its choices come back.
struct Choice {
    mapper: ReplyMapper,
    gathered: Gathered,
    /// Token and log-probabilities of each generated token, when asked.
    logprobs: Vec<(u32, TokenLogprobs)>,
    finish: Option<&'static str>,
    usage: Usage,
}

struct Context {
    model: Arc<ModelInfo>,
    endpoint: Endpoint,
    id: String,
    created: u64,
    model_name: String,
    request: GenerationRequest,
    prompt_text: String,
}

async fn generate(
    shared: Arc<Shared>,
    body: Result<Bytes, BytesRejection>,
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let model = shared.model()?;
    let body = body_bytes(&shared, body)?;
    let request = parse_request(&body, endpoint)?;
    if let Some(name) = &request.model
        && *name != shared.options.model_name
    {
        return Err(ApiError::model_not_found(name, &shared.options.model_name));
    }
    // Admission counts sequences, not requests: a request with n choices takes n places.
    let capacity = model.max_seqs + shared.options.max_queue;
    if request.n > capacity {
        return Err(ApiError::invalid(
            "n",
            format!(
                "n is {}, more than the {capacity} sequences the server holds at once (--max-seqs plus --max-queue)",
                request.n
            ),
        ));
    }
    if shared.in_flight.fetch_add(request.n, Ordering::Relaxed) + request.n > capacity {
        shared.in_flight.fetch_sub(request.n, Ordering::Relaxed);
        return Err(ApiError::overloaded(capacity));
    }
    let admitted = Admitted { shared: shared.clone(), sequences: request.n };
    let arrived = Instant::now();
    let tokens = {
        let (model, input, effort) = (model.clone(), request.input.clone(), request.reasoning_effort);
        let tools = request.prompt_tools().map(<[Value]>::to_vec);
        tokio::task::spawn_blocking(move || prompt::prompt_tokens(&model, &input, effort, tools.as_deref()))
            .await
            .map_err(|e| ApiError::internal(format!("the prompt task failed: {e}")))??
    };
    let prefix = if endpoint == Endpoint::Chat { "chatcmpl" } else { "cmpl" };
    let id = format!("{prefix}-{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
    let cancel = Arc::new(AtomicBool::new(false));
    let guard = CancelOnDrop(cancel.clone());
    let (sender, receiver) = mpsc::unbounded_channel();
    let base_seed = if request.seeded { request.sampler.seed } else { rand::random() };
    let mut stop_tokens: Vec<u32> = model.tokenizer.eos().into_iter().collect();
    if let Some(special) = model.harmony {
        stop_tokens.extend(special.stop_tokens());
    }
    if request.ignore_eos {
        stop_tokens.clear();
    }
    // Prompt and completion together fit the context (vLLM's max_model_len): a larger
    // max_tokens is cut to the room left, and the choice ends with finish_reason "length".
    let room = model.ctx_size - tokens.len();
    let max_tokens = request.max_tokens.map_or(room, |asked| asked.min(room));
    let mut later = Vec::with_capacity(request.n);
    for choice in 0..request.n {
        let mut sampler = request.sampler.clone();
        sampler.seed = base_seed.wrapping_add(choice as u64);
        let engine_request = Request {
            prompt: tokens.clone(),
            sampler,
            max_tokens,
            stop_tokens: stop_tokens.clone(),
            stop_strings: request.stop.clone(),
            cancel: cancel.clone(),
            logprobs: request.logprobs,
        };
        later.push(Submission { request: engine_request, choice, events: sender.clone(), arrived });
    }
    drop(sender);
    // Choice 0 first; the others once it has computed the prompt (its first event), so that
    // they find its full pages in the prefix cache instead of computing the prompt again.
    later.reverse();
    let first = later.pop().expect("n is at least 1");
    shared.submit(first)?;
    let mut later = Later { shared: shared.clone(), submissions: later };
    let prompt_text = if request.echo { model.tokenizer.decode(&tokens, true) } else { String::new() };
    let created =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let choices = (0..request.n)
        .map(|_| Choice {
            mapper: reply_mapper(&model, endpoint, &request, &id),
            gathered: Gathered::default(),
            logprobs: Vec::new(),
            finish: None,
            usage: Usage::default(),
        })
        .collect();
    let context = Context {
        model,
        endpoint,
        id,
        created,
        model_name: shared.options.model_name.clone(),
        request,
        prompt_text,
    };
    if context.request.stream {
        let (out, body) = mpsc::channel::<Event>(64);
        tokio::spawn(stream(context, choices, receiver, later, out, (guard, admitted)));
        let body = tokio_stream::wrappers::ReceiverStream::new(body);
        let events = tokio_stream::StreamExt::map(body, Ok::<Event, Infallible>);
        let keep_alive = KeepAlive::new().interval(shared.options.keep_alive);
        Ok(Sse::new(events).keep_alive(keep_alive).into_response())
    } else {
        let response = whole(&context, choices, receiver, &mut later).await;
        drop((guard, admitted));
        response
    }
}

/// How a choice's tokens become the reply: harmony's channels for gpt-oss's chats; `<tool_call>`
/// tags read as tool calls when the chat offers tools and the model's template is one that asks
/// for those tags (Qwen2.5's, Hermes'); else plain text.
fn reply_mapper(model: &ModelInfo, endpoint: Endpoint, request: &GenerationRequest, id: &str) -> ReplyMapper {
    if endpoint != Endpoint::Chat {
        return ReplyMapper::plain();
    }
    let tagged = model.chat_template.as_deref().is_some_and(|t| t.contains("<tool_call>"));
    match model.harmony {
        Some(special) => ReplyMapper::harmony(special, id),
        None if tagged && request.prompt_tools().is_some() => ReplyMapper::tool_tags(id),
        None => ReplyMapper::plain(),
    }
}

/// Applies one engine event to its choice; the deltas it made, for a stream.
fn apply(context: &Context, choice: &mut Choice, event: SequenceEvent) -> Result<Vec<Delta>, ApiError> {
    match event {
        SequenceEvent::Token { token, text, logprobs } => {
            // Control tokens (harmony's framing, an end of turn) have no text in a reply.
            let tokenizer = &context.model.tokenizer;
            let bytes =
                if tokenizer.is_special(token) { b"" } else { tokenizer.token_bytes(token).unwrap_or(b"") };
            if let Some(logprobs) = logprobs {
                choice.logprobs.push((token, logprobs));
            }
            Ok(choice.mapper.push(token, bytes, &text))
        }
        SequenceEvent::Finished { reason, text, usage, count } => {
            let deltas = choice.mapper.finish(&text);
            choice.usage = usage;
            let finish = finish_reason(reason, choice.mapper.tool_calls());
            count.record(finish);
            choice.finish = Some(finish);
            Ok(deltas)
        }
        SequenceEvent::Failed { message, client_error: true } => Err(ApiError::invalid("messages", message)),
        SequenceEvent::Failed { message, client_error: false } => Err(ApiError::internal(message)),
    }
}

fn usage_json(choices: &[Choice]) -> Value {
    let prompt = choices.first().map_or(0, |c| c.usage.prompt_tokens);
    let completion: usize = choices.iter().map(|c| c.usage.completion_tokens).sum();
    let cached = choices.iter().map(|c| c.usage.cached_tokens).max().unwrap_or(0);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

fn token_text(context: &Context, token: u32) -> (String, Vec<u8>) {
    let bytes = context.model.tokenizer.token_bytes(token).unwrap_or(b"").to_vec();
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// Log-probabilities in the endpoint's shape: chat's `content` list, or completions' parallel
/// arrays.
fn logprobs_json(context: &Context, entries: &[(u32, TokenLogprobs)], text_offset: usize) -> Value {
    if context.request.logprobs.is_none() {
        return Value::Null;
    }
    match context.endpoint {
        Endpoint::Chat => {
            let content: Vec<Value> = entries
                .iter()
                .map(|(token, lp)| {
                    let (text, bytes) = token_text(context, *token);
                    let top: Vec<Value> = lp
                        .top
                        .iter()
                        .map(|&(t, logprob)| {
                            let (text, bytes) = token_text(context, t);
                            json!({"token": text, "logprob": logprob, "bytes": bytes})
                        })
                        .collect();
                    json!({"token": text, "logprob": lp.logprob, "bytes": bytes, "top_logprobs": top})
                })
                .collect();
            json!({"content": content})
        }
        Endpoint::Completions => {
            let mut offset = text_offset;
            let (mut tokens, mut logprobs, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
            for (token, lp) in entries {
                let (text, _) = token_text(context, *token);
                offsets.push(offset);
                offset += text.len();
                tokens.push(text);
                logprobs.push(lp.logprob);
                let top: serde_json::Map<String, Value> =
                    lp.top.iter().map(|&(t, logprob)| (token_text(context, t).0, json!(logprob))).collect();
                tops.push(Value::Object(top));
            }
            json!({"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets})
        }
    }
}

async fn whole(
    context: &Context,
    mut choices: Vec<Choice>,
    mut receiver: mpsc::UnboundedReceiver<(usize, SequenceEvent)>,
    later: &mut Later,
) -> Result<Response, ApiError> {
    while let Some((index, event)) = receiver.recv().await {
        later.submit()?;
        let choice = &mut choices[index];
        for delta in apply(context, choice, event)? {
            choice.gathered.add(delta);
        }
        if choices.iter().all(|c| c.finish.is_some()) {
            break;
        }
    }
    if choices.iter().any(|c| c.finish.is_none()) {
        return Err(ApiError::unavailable("the engine stopped before the request finished"));
    }
    let items: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let logprobs = logprobs_json(context, &c.logprobs, context.prompt_text.len());
            match context.endpoint {
                Endpoint::Chat => {
                    let mut message = json!({"role": "assistant", "content": c.gathered.content});
                    if !c.gathered.reasoning.is_empty() {
                        message["reasoning_content"] = json!(c.gathered.reasoning);
                        message["reasoning"] = json!(c.gathered.reasoning);
                    }
                    if !c.gathered.tool_calls.is_empty() {
                        let calls: Vec<Value> = c
                            .gathered
                            .tool_calls
                            .iter()
                            .map(|(id, name, arguments)| {
                                json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
                            })
                            .collect();
                        message["tool_calls"] = json!(calls);
                        if c.gathered.content.is_empty() {
                            message["content"] = Value::Null;
                        }
                    }
                    json!({"index": index, "message": message, "logprobs": logprobs, "finish_reason": c.finish})
                }
                Endpoint::Completions => json!({
                    "index": index,
                    "text": format!("{}{}", context.prompt_text, c.gathered.content),
                    "logprobs": logprobs,
                    "finish_reason": c.finish,
                }),
            }
        })
        .collect();
    let object = if context.endpoint == Endpoint::Chat { "chat.completion" } else { "text_completion" };
    Ok(axum::Json(json!({
        "id": context.id,
        "object": object,
        "created": context.created,
        "model": context.model_name,
        "choices": items,
        "usage": usage_json(&choices),
    }))
    .into_response())
}

impl Context {
    fn chunk(&self, choices: Vec<Value>) -> Event {
        let object =
            if self.endpoint == Endpoint::Chat { "chat.completion.chunk" } else { "text_completion" };
        let mut chunk = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model_name,
            "choices": choices,
        });
        if self.request.include_usage {
            chunk["usage"] = Value::Null;
        }
        Event::default().data(chunk.to_string())
    }

    /// One choice's chunk: a chat delta or a completion's text.
    fn choice_chunk(&self, index: usize, delta: Value, logprobs: Value, finish: Option<&str>) -> Event {
        let choice = match self.endpoint {
            Endpoint::Chat => {
                json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
            }
            Endpoint::Completions => json!({
                "index": index,
                "text": delta.get("content").cloned().unwrap_or(json!("")),
                "logprobs": logprobs,
                "finish_reason": finish,
            }),
        };
        self.chunk(vec![choice])
    }
}

fn delta_json(delta: Delta) -> Value {
    match delta {
        Delta::Content(text) => json!({"content": text}),
        Delta::Reasoning(text) => json!({"reasoning_content": text, "reasoning": text}),
        Delta::ToolCall { index, id, name } => json!({"tool_calls": [{
            "index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}
        }]}),
        Delta::ToolArguments { index, text } => {
            json!({"tool_calls": [{"index": index, "function": {"arguments": text}}]})
        }
    }
}

/// Forwards a streamed request's events to its body until every choice has finished, or the
/// client has gone: then `_held` drops, which cancels the sequences. A client that goes away
/// while its request waits in the queue or computes its prompt sends nothing to fail on, so the
/// wait for the next event also watches the body: hyper drops it when the connection closes.
async fn stream(
    context: Context,
    mut choices: Vec<Choice>,
    mut receiver: mpsc::UnboundedReceiver<(usize, SequenceEvent)>,
    mut later: Later,
    out: mpsc::Sender<Event>,
    _held: (CancelOnDrop, Admitted),
) {
    let send = |event: Event| {
        let out = out.clone();
        async move { out.send(event).await.is_ok() }
    };
    for index in 0..choices.len() {
        let first = match context.endpoint {
            Endpoint::Chat => json!({"role": "assistant", "content": ""}),
            Endpoint::Completions => json!({"content": context.prompt_text}),
        };
        if !send(context.choice_chunk(index, first, Value::Null, None)).await {
            return;
        }
    }
    loop {
        let next = tokio::select! {
            next = receiver.recv() => next,
            () = out.closed() => return,
        };
        let Some((index, event)) = next else { break };
        if let Err(error) = later.submit() {
            let _ = send(Event::default().data(error.body().to_string())).await;
            return;
        }
        let choice = &mut choices[index];
        let seen = choice.logprobs.len();
        let deltas = match apply(&context, choice, event) {
            Ok(deltas) => deltas,
            Err(error) => {
                let _ = send(Event::default().data(error.body().to_string())).await;
                return;
            }
        };
        let mut logprobs = logprobs_json(&context, &choice.logprobs[seen..], 0);
        for delta in deltas {
            let event = context.choice_chunk(index, delta_json(delta), std::mem::take(&mut logprobs), None);
            if !send(event).await {
                return;
            }
        }
        if choice.finish.is_none() && !logprobs.is_null() {
            // A token whose text is held back (a possible stop string) still has its logprob.
            let event =
                context.choice_chunk(index, json!({"content": ""}), std::mem::take(&mut logprobs), None);
            if !send(event).await {
                return;
            }
        }
        if let Some(finish) = choice.finish {
            let event = context.choice_chunk(index, json!({}), logprobs, Some(finish));
            if !send(event).await {
                return;
            }
        }
        if choices.iter().all(|c| c.finish.is_some()) {
            break;
        }
    }
    if choices.iter().any(|c| c.finish.is_none()) {
        let error = ApiError::unavailable("the engine stopped before the request finished");
        let _ = send(Event::default().data(error.body().to_string())).await;
        return;
    }
    if context.request.include_usage {
        let chunk = json!({
            "id": context.id,
            "object": if context.endpoint == Endpoint::Chat { "chat.completion.chunk" } else { "text_completion" },
            "created": context.created,
            "model": context.model_name,
            "choices": [],
            "usage": usage_json(&choices),
        });
        if !send(Event::default().data(chunk.to_string())).await {
            return;
        }
    }
    let _ = send(Event::default().data("[DONE]")).await;
}
