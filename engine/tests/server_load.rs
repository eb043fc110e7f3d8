//! `engine serve` under load, on loopback: 32 client threads stream a few hundred short requests
//! (random prompts, random lengths, chat and completions, some sampled with a seed) into one
//! server over the default model that runs at most 8 sequences on a KV pool too small for them
//! all, so requests queue and running sequences are preempted and recomputed. About one stream
//! in five is closed after a few events, and about one whole (not streamed) request in ten is
//! closed while it waits or runs. Every request that was not closed must come back 200 with
//! well-formed events (one id, the first chunk, deltas, one finish chunk, `[DONE]`, nothing
//! after), greedy ones with the text the model gives alone, preempted or not; no request may get
//! a 5xx (or a 429: the queue holds them all); and when the clients are done, no sequence runs
//! or waits and no KV page is held. Bounded: 256 requests of at most 8 tokens, and the whole run
//! must end within a time limit.

#[path = "server/common.rs"]
mod common;

use common::{MODEL_NAME, TestServer, alone, chat_prompt, options, text_of, text_prompt};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 32;
/// Sequences the server runs at once: the other clients' requests wait.
const MAX_SEQS: usize = 8;
/// The context: the pool must hold one sequence of it, and these prompts are short.
const CONTEXT: usize = 128;
/// KV pages (16 positions each): one context's worth, fewer than 8 sequences' prompts and
/// tokens need, so decodes run out of pages and preempt.
const N_PAGES: usize = CONTEXT / engine::model::PAGE_SIZE;
const REQUESTS_PER_CLIENT: usize = 8;
const MAX_TOKENS: usize = 8;
const TIME_LIMIT: Duration = Duration::from_secs(600);

/// Even ones go to completions, odd ones to chat. The longer ones end a few positions before a
/// page boundary (13 and 12 tokens; 43 and 41 in SmolLM2's chat template), so that their
/// decodes need a new page.
const PROMPTS: [&str; 6] = [
    "The quick brown fox jumps over the lazy dog, and then it",
    "Tell me a short story about a brave little robot and its dog",
    "Once upon a time in a land far away there lived a",
    "Write a haiku about the sea at night, please",
    "The capital of France is",
    "Water boils at",
];

/// One request's prompt and what the model gives for it alone (MAX_TOKENS greedy tokens).
struct Reference {
    chat: bool,
    prompt: &'static str,
    tokens: Vec<u32>,
}

impl Reference {
    /// The text and finish reason of a greedy request for `max_tokens`.
    fn expected(&self, max_tokens: usize) -> (String, &'static str) {
        let eos = common::loaded().tokenizer.eos();
        let head = &self.tokens[..max_tokens.min(self.tokens.len())];
        let finish = if head.last() == eos.as_ref() { "stop" } else { "length" };
        (text_of(head), finish)
    }

    fn body(&self, max_tokens: usize, sampled: Option<u64>) -> (&'static str, Value) {
        let mut body = if self.chat {
            json!({"model": MODEL_NAME, "messages": [{"role": "user", "content": self.prompt}]})
        } else {
            json!({"model": MODEL_NAME, "prompt": self.prompt})
        };
        body["max_tokens"] = json!(max_tokens);
        body["stream"] = json!(true);
        match sampled {
            Some(seed) => {
                body["temperature"] = json!(0.8);
                body["seed"] = json!(seed);
            }
            None => body["temperature"] = json!(0),
        }
        (if self.chat { "/v1/chat/completions" } else { "/v1/completions" }, body)
    }
}

/// What one client saw of one request.
enum Outcome {
    Completed,
    Cancelled,
    /// A whole request whose client closed the connection before the answer.
    Abandoned,
}

/// Sends a whole (not streamed) request on a raw connection and closes it after `after`,
/// without reading the answer.
fn abandon(server: &TestServer, path: &str, body: &Value, after: Duration) {
    use std::io::Write;
    let address = server.url.trim_start_matches("http://");
    let mut socket = std::net::TcpStream::connect(address).unwrap();
    let mut body = body.clone();
    body["stream"] = json!(false);
    let body = body.to_string();
    write!(
        socket,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(after);
}

/// Reads a whole stream and checks its shape; the text and the finish reason.
fn read_stream(chat: bool, events: common::Events) -> (String, String) {
    let chunks = events.all();
    assert!(chunks.len() >= 2, "a first chunk and a finish chunk at least: {chunks:?}");
    let id = &chunks[0]["id"];
    let object = if chat { "chat.completion.chunk" } else { "text_completion" };
    assert!(chunks.iter().all(|c| &c["id"] == id && c["object"] == object), "{chunks:?}");
    if chat {
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    }
    let finishes: Vec<&Value> =
        chunks.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
    assert_eq!(finishes.len(), 1, "one finish chunk: {chunks:?}");
    assert!(!chunks.last().unwrap()["choices"][0]["finish_reason"].is_null(), "the finish chunk is last");
    let text: String = chunks
        .iter()
        .filter_map(|c| {
            let choice = &c["choices"][0];
            if chat { choice["delta"]["content"].as_str() } else { choice["text"].as_str() }
        })
        .collect();
    (text, finishes[0].as_str().unwrap().to_string())
}

#[test]
fn thirty_two_streaming_clients_with_random_lengths_and_cancellations() {
    let references: Arc<Vec<Reference>> = Arc::new(
        PROMPTS
            .iter()
            .enumerate()
            .map(|(i, &prompt)| {
                let chat = i % 2 == 1;
                let tokens = if chat { chat_prompt(&[("user", prompt)]) } else { text_prompt(prompt) };
                Reference { chat, prompt, tokens: alone(&tokens, MAX_TOKENS) }
            })
            .collect(),
    );
    let server = Arc::new(TestServer::start_with(options(), || {
        let loaded = common::loaded();
        let backend = engine::batching::CpuBatch::new(&loaded.model, N_PAGES);
        let info = engine::server::ModelInfo {
            tokenizer: loaded.tokenizer.clone(),
            chat_template: loaded.chat_template.clone(),
            harmony: None,
            ctx_size: CONTEXT,
            n_vocab: loaded.model.config().n_vocab,
            max_seqs: MAX_SEQS,
        };
        (info, common::batcher(Box::new(backend), &loaded.tokenizer, MAX_SEQS, CONTEXT))
    }));
    let start = Instant::now();
    // The most requests seen waiting at once, sampled while the clients run.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (server, done) = (server.clone(), done.clone());
        std::thread::spawn(move || {
            let mut most_waiting: f64 = 0.0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most_waiting = most_waiting.max(server.metric("engine_requests_waiting"));
                std::thread::sleep(Duration::from_millis(20));
            }
            most_waiting
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (server, references) = (server.clone(), references.clone());
            std::thread::spawn(move || {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(client as u64);
                let mut outcomes = Vec::new();
                for _ in 0..REQUESTS_PER_CLIENT {
                    let reference = &references[rng.random_range(0..references.len())];
                    let max_tokens = rng.random_range(1..=MAX_TOKENS);
                    let sampled = rng.random_bool(0.25).then(|| rng.random::<u64>());
                    let cancel_after = rng.random_bool(0.2).then(|| rng.random_range(1..=3));
                    let abandon_after = rng.random_bool(0.1).then(|| rng.random_range(0..100));
                    let (path, body) = reference.body(max_tokens, sampled);
                    if let Some(milliseconds) = abandon_after {
                        abandon(&server, path, &body, Duration::from_millis(milliseconds));
                        outcomes.push(Outcome::Abandoned);
                        continue;
                    }
                    let (status, mut events) = server.stream(path, &body);
                    assert_eq!(status, 200, "{body}");
                    if let Some(after) = cancel_after {
                        for _ in 0..after {
                            events.next_data();
                        }
                        drop(events);
                        outcomes.push(Outcome::Cancelled);
                        continue;
                    }
                    let (text, finish) = read_stream(reference.chat, events);
                    if sampled.is_none() {
                        let (expected, expected_finish) = reference.expected(max_tokens);
                        assert_eq!(
                            (text.as_str(), finish.as_str()),
                            (expected.as_str(), expected_finish),
                            "{body}"
                        );
                    } else {
                        assert!(finish == "stop" || finish == "length", "{finish}");
                    }
                    outcomes.push(Outcome::Completed);
                }
                outcomes
            })
        })
        .collect();
    let (mut completed, mut cancelled, mut abandoned) = (0, 0, 0);
    for client in clients {
        for outcome in client.join().expect("a client failed (see its panic above)") {
            match outcome {
                Outcome::Completed => completed += 1,
                Outcome::Cancelled => cancelled += 1,
                Outcome::Abandoned => abandoned += 1,
            }
        }
    }
    let took = start.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most_waiting = watcher.join().unwrap();
    let preemptions = server.metric("engine_preemptions_total");
    eprintln!(
        "load: {completed} completed, {cancelled} streams and {abandoned} whole requests closed by their clients, \
         at most {most_waiting} waiting, {preemptions} preemptions, in {took:.1?}"
    );
    assert_eq!(completed + cancelled + abandoned, CLIENTS * REQUESTS_PER_CLIENT);
    assert!(cancelled > 0 && abandoned > 0 && completed > cancelled, "random cancellations happened");
    assert!(most_waiting > 0.0, "requests queued behind the running ones");
    assert!(preemptions > 0.0, "the KV pool ran out and sequences were preempted");
    assert!(took < TIME_LIMIT, "the run took {took:?}");
    server.wait_until_idle();
    assert_eq!(server.metric("engine_requests_running"), 0.0);
    assert_eq!(server.metric("engine_requests_waiting"), 0.0);
    assert_eq!(server.metric("engine_kv_cache_usage_ratio"), 0.0, "no KV page is held");
    // Every completed request ended in the engine (a stream closed before its sequence was
    // admitted never reaches it).
    let (_, metrics) = server.get("/metrics");
    let finished: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("engine_request_success_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!((completed..=completed + cancelled + abandoned).contains(&(finished as usize)), "{metrics}");
    // And the server still answers.
    let (status, _) = server.post("/v1/completions", &json!({"prompt": "Hi", "max_tokens": 1}));
    assert_eq!(status, 200);
}
