//! `engine serve` as a process: the real binary on a free loopback port, driven over HTTP and
//! stopped with SIGTERM, as a service manager runs it. The tiny gpt-oss fixture served end to end
//! from its own GGUF (its tokenizer, harmony's special tokens and gpt-oss's chat template): chat
//! on random weights must come back well-formed, with the token counts of the model run alone
//! here; and a shut-down while the model is still loading (a model path that never finishes
//! opening: a FIFO with no writer) must exit at once with status 0.

#![cfg(unix)]

use engine::gguf::GgufFile;
use engine::harmony::SpecialTokens;
use engine::model::{Model, Numerics};
use engine::tokenizer::Tokenizer;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `engine serve`; killed if a test ends without stopping it.
struct Process {
    child: Child,
    url: String,
    /// Its stderr so far, and the thread that reads it (to the end once the process exits).
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Process {
    /// Starts `engine serve --port 0 ARGS` and waits until it listens.
    fn start(args: &[&str]) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(["serve", "--port", "0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let log = Arc::new(Mutex::new(String::new()));
        let mut line = String::new();
        let url = loop {
            line.clear();
            if stderr.read_line(&mut line).unwrap() == 0 {
                let _ = child.wait();
                panic!("engine serve exited before listening:\n{}", log.lock().unwrap());
            }
            log.lock().unwrap().push_str(&line);
            if let Some(address) = line.trim().strip_prefix("listening on ") {
                break address.to_string();
            }
        };
        // Keep reading stderr so that the process never blocks on a full pipe.
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Process { child, url, log, reader: Some(reader) }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into()
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut response = Self::agent().get(format!("{}{path}", self.url)).call().unwrap();
        (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
    }

    /// POSTs `body`; the status and the whole body as text.
    fn post(&self, path: &str, body: &Value) -> (u16, String) {
        let mut response = Self::agent()
            .post(format!("{}{path}", self.url))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap();
        (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
    }

    /// Waits for `/health` to say 200; fails at once if the process exits (the model did not
    /// load).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                panic!("engine serve exited ({status}) before it was ready:\n{}", self.log());
            }
            // A refused connection: it is exiting (seen on the next turn).
            let health = Self::agent().get(format!("{}/health", self.url)).call();
            if health.is_ok_and(|response| response.status() == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("engine serve did not become ready:\n{}", self.log());
    }

    /// Sends SIGTERM; its exit status, which must come `within` (else it is killed and the test
    /// fails).
    fn terminate(mut self, within: Duration) -> ExitStatus {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("engine serve did not exit within {within:?} of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gptoss.gguf")
}

const CTX: usize = 1024;
const MAX_TOKENS: usize = 24;
const QUESTION: &str = "What is 2 + 2?";

/// The fixture run alone here (no server): the prompt the server must build (the GGUF's chat
/// template, reasoning effort "medium"), and the greedy tokens after it, to `<|return|>` or
/// `<|call|>` or `MAX_TOKENS`.
fn alone() -> (Vec<u32>, Vec<u32>, SpecialTokens) {
    let file = GgufFile::open(fixture_path()).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let special = SpecialTokens::from_tokenizer(&tokenizer).expect("harmony's special tokens");
    let template = file.get_str("tokenizer.chat_template").unwrap();
    let options = engine::chat::TemplateOptions {
        reasoning_effort: Some("medium".into()),
        ..engine::chat::TemplateOptions::default()
    };
    let name = |id: Option<u32>| id.and_then(|t| tokenizer.id_to_token(t)).unwrap_or_default();
    let text = engine::chat::render_with_options(
        template,
        &[engine::chat::Message::new("user", QUESTION)],
        &name(tokenizer.bos()),
        &name(tokenizer.eos()),
        true,
        &options,
    )
    .unwrap();
    let prompt = tokenizer.encode(&text, false, true).unwrap();
    let model = Model::load(&file, Numerics::Exact, &|_, _| {}).unwrap();
    let n_vocab = model.config().n_vocab;
    let mut cache = model.new_cache(CTX);
    let mut logits = model.forward(&prompt, &mut cache).unwrap();
    let mut generated = Vec::new();
    loop {
        let token = engine::generate::argmax(&logits[logits.len() - n_vocab..]);
        generated.push(token);
        if special.stop_tokens().contains(&token) || generated.len() == MAX_TOKENS {
            return (prompt, generated, special);
        }
        logits = model.forward(&[token], &mut cache).unwrap();
    }
}

/// Checks one choice's message (or a stream's gathered delta) against the reply's finish.
fn check_message(content: &Value, tool_calls: &[Value], finish: &str) {
    assert!(content.is_string() || content.is_null(), "content {content}");
    for call in tool_calls {
        assert_eq!(call["type"], "function", "{call}");
        assert!(call["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{call}");
        assert!(call["function"]["name"].is_string(), "{call}");
    }
    assert_eq!(finish == "tool_calls", !tool_calls.is_empty(), "finish {finish}, calls {tool_calls:?}");
}

#[test]
fn the_binary_serves_chat_on_the_tiny_gpt_oss_fixture() {
    let fixture = fixture_path().display().to_string();
    let mut server = Process::start(&["-m", &fixture, "--backend", "cpu", "--ctx-size", &CTX.to_string()]);
    assert!(server.log().contains("listening on"), "{}", server.log());
    server.wait_ready();
    let (status, models) = server.get("/v1/models");
    assert_eq!(status, 200, "{models}");
    assert!(models.contains("\"gptoss\""), "the file's name is the model's: {models}");

    let (prompt, generated, special) = alone();
    let ended = special.stop_tokens().contains(generated.last().unwrap());
    let body = json!({
        "model": "gptoss",
        "messages": [{"role": "user", "content": QUESTION}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    });
    let (status, text) = server.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{text}\n{}", server.log());
    let response: Value = serde_json::from_str(&text).unwrap();
    eprintln!("{response}");
    assert_eq!(response["object"], "chat.completion");
    let choice = &response["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let finish = choice["finish_reason"].as_str().unwrap();
    assert!(if ended { ["stop", "tool_calls"].contains(&finish) } else { finish == "length" }, "{finish}");
    let calls = choice["message"]["tool_calls"].as_array().cloned().unwrap_or_default();
    check_message(&choice["message"]["content"], &calls, finish);
    let usage = &response["usage"];
    assert_eq!(usage["prompt_tokens"], prompt.len(), "the GGUF's template, rendered and tokenized");
    assert_eq!(usage["completion_tokens"], generated.len(), "the tokens the model gives alone");
    assert_eq!(usage["total_tokens"], prompt.len() + generated.len());

    // Streamed: the same reply in chunks, a finish chunk, the usage chunk, then [DONE].
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (status, text) = server.post("/v1/chat/completions", &streamed);
    assert_eq!(status, 200, "{text}");
    let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(chunks.iter().all(|c| c.get("error").is_none()), "{text}");
    let (mut content, mut reasoning, mut stream_finish) = (String::new(), String::new(), None);
    for chunk in &chunks {
        let Some(choice) = chunk["choices"].get(0) else { continue };
        content += choice["delta"]["content"].as_str().unwrap_or("");
        reasoning += choice["delta"]["reasoning_content"].as_str().unwrap_or("");
        if let Some(reason) = choice["finish_reason"].as_str() {
            stream_finish = Some(reason.to_string());
        }
    }
    assert_eq!(stream_finish.as_deref(), Some(finish), "greedy: the same finish as the whole reply");
    let message = &choice["message"];
    assert_eq!(content, message["content"].as_str().unwrap_or(""), "the same content as the whole reply");
    assert_eq!(reasoning, message["reasoning_content"].as_str().unwrap_or(""));
    let stream_usage = &chunks.last().unwrap()["usage"];
    for count in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(stream_usage[count], usage[count], "the usage chunk's {count}");
    }
    // The second request found the first one's prompt pages in the prefix cache.
    assert!(stream_usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() > 0, "{stream_usage}");

    let status = server.terminate(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigterm_while_the_model_loads_exits_at_once_with_status_0() {
    let dir = std::env::temp_dir().join(format!("engine-serve-loading-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("never-written.gguf");
    let _ = std::fs::remove_file(&fifo);
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success(), "mkfifo");
    // Opening a FIFO for reading waits for a writer: the model loads for as long as we like.
    let server = Process::start(&["-m", &fifo.display().to_string(), "--backend", "cpu"]);
    let (status, body) = server.get("/health");
    assert_eq!(status, 503, "still loading: {body}");
    let log = server.log.clone();
    let status = server.terminate(Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status.code(), Some(0), "{}", log.lock().unwrap());
    assert!(log.lock().unwrap().contains("while the model was loading"), "{}", log.lock().unwrap());
}
