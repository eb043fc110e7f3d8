//! What the server tests share: the default model (SmolLM2-135M-Instruct, fetched once) loaded
//! once with exact numerics, servers started in this process on loopback ports (over that model,
//! or over any model and backend a test builds: `TestServer::start_with`; `Scripted` plays back
//! recorded replies), a small HTTP client,
//! a reader of server-sent events, and the reference: greedy tokens of a prompt run alone through
//! the one-sequence cache, with no server and no batcher.

// Shared by several test binaries; each uses a part of it.
#![allow(dead_code)]

use engine::batching::{BatchBackend, Batcher, CpuBatch, Pick, Picked};
use engine::generate::BackendError;
use engine::gguf::GgufFile;
use engine::model::{Model, Numerics};
use engine::scheduler::{SchedulerConfig, SequenceId, Work};
use engine::server::{ModelInfo, ServerOptions, ShutdownHandle};
use engine::tokenizer::Tokenizer;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub struct Loaded {
    pub model: Model,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Option<String>,
}

pub fn loaded() -> &'static Loaded {
    static LOADED: OnceLock<Loaded> = OnceLock::new();
    LOADED.get_or_init(|| {
        let path = engine::default_model::ensure_default_model(&|_, _, _| {}).expect("fetching SmolLM2");
        let file = GgufFile::open(&path).unwrap();
        let model = Model::load(&file, Numerics::Exact, &|_, _| {}).unwrap();
        let tokenizer = Arc::new(Tokenizer::from_gguf(&file).unwrap());
        let chat_template = file.get_str_opt("tokenizer.chat_template").unwrap().map(str::to_string);
        Loaded { model, tokenizer, chat_template }
    })
}

pub const CTX: usize = 512;
pub const MODEL_NAME: &str = "smollm2";

pub fn options() -> ServerOptions {
    ServerOptions {
        host: "127.0.0.1".to_string(),
        port: 0,
        api_keys: Vec::new(),
        model_name: MODEL_NAME.to_string(),
        max_queue: 256,
        max_body_bytes: 64 << 10,
        shutdown_grace: Duration::from_secs(2),
        keep_alive: Duration::from_millis(200),
    }
}

/// A server on a free loopback port, with `max_seqs` and `n_pages` for its batcher.
pub struct TestServer {
    pub url: String,
    pub shutdown: ShutdownHandle,
    pub key: Option<String>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(options: ServerOptions, max_seqs: usize, n_pages: usize) -> TestServer {
        let loaded = loaded();
        TestServer::start_with(options, move || {
            let backend = CpuBatch::new(&loaded.model, n_pages);
            let info = ModelInfo {
                tokenizer: loaded.tokenizer.clone(),
                chat_template: loaded.chat_template.clone(),
                harmony: None,
                ctx_size: CTX,
                n_vocab: loaded.model.config().n_vocab,
                max_seqs,
            };
            (info, batcher(Box::new(backend), &loaded.tokenizer, max_seqs, CTX))
        })
    }

    /// A server over the model and batcher `build` makes (on the engine thread).
    pub fn start_with(
        options: ServerOptions,
        build: impl FnOnce() -> (ModelInfo, Batcher<'static>) + Send + 'static,
    ) -> TestServer {
        let key = options.api_keys.first().cloned();
        let (server, engine_side) = engine::server::start(options).unwrap();
        let url = format!("http://{}", server.local_addr().unwrap());
        let shutdown = server.shutdown_handle();
        let engine = std::thread::spawn(move || {
            let (info, batcher) = build();
            engine_side.run(info, batcher).unwrap();
        });
        let http = std::thread::spawn(move || {
            server.run().unwrap();
        });
        let test = TestServer { url, shutdown, key, threads: vec![engine, http] };
        // The engine thread builds its KV pool first (hundreds of MB for many pages).
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while std::time::Instant::now() < deadline {
            if test.get("/health").0 == 200 {
                return test;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the server did not become ready");
    }

    /// Shuts down and waits for both threads.
    pub fn stop(mut self) {
        self.shutdown.shutdown();
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
    }

    pub fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.get_as(path, self.key.as_deref())
    }

    pub fn get_as(&self, path: &str, key: Option<&str>) -> (u16, String) {
        let mut request = Self::agent().get(format!("{}{path}", self.url));
        if let Some(key) = key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = request.call().unwrap();
        (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
    }

    /// POSTs `body` (any text) with `key` as the bearer key; (status, Retry-After, body).
    pub fn post_raw(&self, path: &str, body: &str, key: Option<&str>) -> (u16, Option<String>, String) {
        let mut request =
            Self::agent().post(format!("{}{path}", self.url)).header("Content-Type", "application/json");
        if let Some(key) = key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = request.send(body).unwrap();
        let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
        (response.status().as_u16(), retry, response.body_mut().read_to_string().unwrap())
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, _, text) = self.post_raw(path, &body.to_string(), self.key.as_deref());
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
    }

    /// A streamed request: the status and a reader of its events.
    pub fn stream(&self, path: &str, body: &Value) -> (u16, Events) {
        let mut request =
            Self::agent().post(format!("{}{path}", self.url)).header("Content-Type", "application/json");
        if let Some(key) = &self.key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let response = request.send(body.to_string()).unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        if status == 200 {
            assert_eq!(content_type, "text/event-stream", "a stream's content type");
        }
        (status, Events { reader: BufReader::new(Box::new(response.into_body().into_reader())), comments: 0 })
    }

    /// A value of `/metrics` (the first series of that name).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    }

    /// `engine_request_success_total` for one finish reason.
    pub fn finished(&self, finish_reason: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        let label = format!(",finish_reason=\"{finish_reason}\"}} ");
        text.lines()
            .find(|l| l.starts_with("engine_request_success_total{") && l.contains(&label))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no finish_reason {finish_reason} in /metrics:\n{text}"))
    }

    /// Waits until no sequence runs or waits and no KV page is held.
    pub fn wait_until_idle(&self) {
        for _ in 0..500 {
            let busy = self.metric("engine_requests_running")
                + self.metric("engine_requests_waiting")
                + self.metric("engine_kv_cache_usage_ratio");
            if busy == 0.0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the engine did not return to idle:\n{}", self.get("/metrics").1);
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}

/// POSTs JSON to a server at `url` from any thread; (status, parsed body).
pub fn post_to(url: &str, key: Option<&str>, path: &str, body: &Value) -> (u16, Value) {
    let mut request =
        TestServer::agent().post(format!("{url}{path}")).header("Content-Type", "application/json");
    if let Some(key) = key {
        request = request.header("Authorization", format!("Bearer {key}"));
    }
    let mut response = request.send(body.to_string()).unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    (response.status().as_u16(), serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

/// The `data:` events of a stream; comments (keep-alives) are counted.
pub struct Events {
    reader: BufReader<Box<dyn std::io::Read + Send>>,
    /// Comment lines (`: ...`, the keep-alives) read so far.
    pub comments: usize,
}

impl Events {
    /// The next event's data, None at the end of the stream.
    pub fn next_data(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(data) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                return Some(data.trim_end_matches(['\r', '\n']).to_string());
            }
            if line.starts_with(':') {
                self.comments += 1;
            }
        }
    }

    /// Every event until `[DONE]`, parsed; panics on a stream that ends without it.
    pub fn all(mut self) -> Vec<Value> {
        let mut chunks = Vec::new();
        loop {
            let data = self.next_data().expect("the stream ended before data: [DONE]");
            if data == "[DONE]" {
                assert!(self.next_data().is_none(), "events after [DONE]");
                return chunks;
            }
            chunks.push(serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data}")));
        }
    }
}

/// A backend that answers every sequence's k-th step with the k-th token of `reply` (a one-hot
/// row of logits), then `end`: recorded replies played back under the real batcher, engine loop
/// and handlers.
pub struct Scripted {
    reply: Vec<u32>,
    end: u32,
    n_vocab: usize,
    n_pages: usize,
    progress: HashMap<SequenceId, usize>,
}

impl Scripted {
    pub fn new(reply: Vec<u32>, end: u32, n_vocab: usize, n_pages: usize) -> Self {
        Scripted { reply, end, n_vocab, n_pages, progress: HashMap::new() }
    }
}

impl BatchBackend for Scripted {
    fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    fn n_pages(&self) -> usize {
        self.n_pages
    }

    fn step(&mut self, work: &[Work], _picks: &[Pick]) -> Result<Vec<Picked>, BackendError> {
        let mut picked = Vec::new();
        for item in work.iter().filter(|w| w.wants_logits) {
            let k = self.progress.entry(item.id).or_default();
            let token = self.reply.get(*k).copied().unwrap_or(self.end);
            *k += 1;
            let mut logits = vec![-30.0f32; self.n_vocab];
            logits[token as usize] = 30.0;
            picked.push(Picked::Logits(logits));
        }
        Ok(picked)
    }
}

/// A batcher over `backend` (and its pages) with the tests' scheduler settings.
pub fn batcher(
    backend: Box<dyn BatchBackend + 'static>,
    tokenizer: &Arc<Tokenizer>,
    max_seqs: usize,
    max_context: usize,
) -> Batcher<'static> {
    let config = SchedulerConfig {
        page_size: engine::model::PAGE_SIZE,
        n_pages: 0,
        max_seqs,
        max_batch_tokens: 512,
        max_context,
        prefix_caching: true,
    };
    Batcher::new(config, backend, engine::server::token_text(tokenizer.clone())).unwrap()
}

/// Greedy tokens of `prompt` alone (no server, no batcher): the reference, stopping at the
/// end-of-sequence token (included) or after `max_tokens`.
pub fn alone(prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let loaded = loaded();
    let model = &loaded.model;
    let n_vocab = model.config().n_vocab;
    let mut cache = model.new_cache(CTX);
    let mut logits = model.forward(prompt, &mut cache).unwrap();
    let mut tokens = Vec::new();
    while tokens.len() < max_tokens {
        let token = engine::generate::argmax(&logits[logits.len() - n_vocab..]);
        tokens.push(token);
        if Some(token) == loaded.tokenizer.eos() || tokens.len() == max_tokens {
            break;
        }
        logits = model.forward(&[token], &mut cache).unwrap();
    }
    tokens
}

/// The text of generated tokens as the server returns it (the end-of-sequence token has none).
pub fn text_of(tokens: &[u32]) -> String {
    let tokenizer = &loaded().tokenizer;
    let bytes: Vec<u8> = tokens
        .iter()
        .filter(|&&t| !tokenizer.is_special(t))
        .flat_map(|&t| tokenizer.token_bytes(t).unwrap().to_vec())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The prompt tokens of a chat, rendered with the model's template here (not by the server).
pub fn chat_prompt(messages: &[(&str, &str)]) -> Vec<u32> {
    let loaded = loaded();
    let messages: Vec<engine::chat::Message> =
        messages.iter().map(|(role, content)| engine::chat::Message::new(role, *content)).collect();
    let tokenizer = &loaded.tokenizer;
    let name = |id: Option<u32>| id.and_then(|t| tokenizer.id_to_token(t)).unwrap_or_default();
    let text = engine::chat::render(
        loaded.chat_template.as_deref().unwrap(),
        &messages,
        &name(tokenizer.bos()),
        &name(tokenizer.eos()),
        true,
    )
    .unwrap();
    tokenizer.encode(&text, false, true).unwrap()
}

/// A completions prompt's tokens, as the server encodes text.
pub fn text_prompt(text: &str) -> Vec<u32> {
    let tokenizer = &loaded().tokenizer;
    tokenizer.encode(text, tokenizer.add_bos(), false).unwrap()
}
