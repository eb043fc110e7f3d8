//! `engine serve` for harmony models (gpt-oss), end to end over HTTP on loopback. A random model
//! never writes harmony's channels, tool calls or reasoning, so the replies here are recorded
//! harmony token streams (o200k_harmony ids, as tiktoken-rs spells them) played back by a
//! scripted backend (`common::Scripted`) under the real batcher, engine loop and handlers: the
//! mapping to `content`, `reasoning_content` / `reasoning` and `tool_calls`, whole and streamed,
//! is the one the server uses for a real gpt-oss. The tiny gpt-oss fixture
//! (`tests/fixtures/gptoss.gguf`, a random GptOssForCausalLM with a small vocabulary of gpt-oss's
//! kind: byte-level BPE and harmony's special tokens) is served for real: greedy completions give
//! the tokens the model gives alone. (`server_process.rs` serves it with the real binary, chat
//! included.)

#[path = "server/common.rs"]
mod common;

use common::{CTX, MODEL_NAME, Scripted, TestServer, batcher, options};
use engine::batching::CpuBatch;
use engine::gguf::GgufFile;
use engine::harmony::SpecialTokens;
use engine::model::{Model, Numerics};
use engine::server::ModelInfo;
use engine::tokenizer::{GgufVocab, Tokenizer};
use serde_json::{Value, json};
use std::sync::{Arc, OnceLock};

/// o200k_harmony's size (ranks, then special and reserved tokens).
const N_VOCAB: usize = 201_088;

fn bpe() -> &'static tiktoken_rs::CoreBPE {
    static BPE: OnceLock<tiktoken_rs::CoreBPE> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::o200k_harmony().unwrap())
}

/// Byte-level spelling (GPT-2's table), as a GGUF vocabulary writes its tokens.
fn spell(bytes: &[u8]) -> String {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = [char::default(); 256];
    let mut next = 0x100;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            b as char
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap()
        };
    }
    bytes.iter().map(|&b| table[b as usize]).collect()
}

/// gpt-oss's vocabulary as a tokenizer: every o200k_harmony token with its bytes, the special
/// tokens as control tokens. No merges: a prompt encodes to single bytes (the scripted backend
/// does not read it), and generated ids decode as gpt-oss's do.
fn harmony_tokenizer() -> Arc<Tokenizer> {
    static TOKENIZER: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let bpe = bpe();
            let special = 199_998;
            let mut tokens = Vec::with_capacity(N_VOCAB);
            let mut types = Vec::with_capacity(N_VOCAB);
            for id in 0..N_VOCAB as u32 {
                let bytes = bpe.decode_bytes(&[id]).ok();
                match bytes {
                    Some(bytes) if (id as usize) < special => {
                        tokens.push(spell(&bytes));
                        types.push(1);
                    }
                    Some(bytes) => {
                        tokens.push(String::from_utf8(bytes).unwrap());
                        types.push(3);
                    }
                    None => {
                        tokens.push(format!("<|reserved_{id}|>"));
                        types.push(3);
                    }
                }
            }
            let vocab = GgufVocab {
                model: "gpt2".into(),
                pre: Some("gpt-4o".into()),
                tokens,
                token_types: Some(types),
                merges: Some(Vec::new()),
                bos: Some(special as u32),
                eos: Some(SpecialTokens::O200K_HARMONY.return_),
                ..GgufVocab::default()
            };
            Arc::new(Tokenizer::from_gguf_vocab(&vocab).unwrap())
        })
        .clone()
}

/// A server whose every reply is `reply` (token ids), with gpt-oss's chat template.
fn scripted_server(reply: Vec<u32>) -> TestServer {
    scripted_server_with(reply, Some(include_str!("data/chat/gpt-oss-20b.jinja").to_string()))
}

/// A server whose every reply is `reply`, with `chat_template` (None: the engine's harmony
/// renderer writes the prompts).
fn scripted_server_with(reply: Vec<u32>, chat_template: Option<String>) -> TestServer {
    TestServer::start_with(options(), move || {
        let tokenizer = harmony_tokenizer();
        let special = SpecialTokens::from_tokenizer(&tokenizer).expect("harmony's special tokens");
        assert_eq!(special, SpecialTokens::O200K_HARMONY);
        let n_pages = 4 * HARMONY_CTX / engine::model::PAGE_SIZE;
        let backend = Scripted::new(reply, SpecialTokens::O200K_HARMONY.return_, N_VOCAB, n_pages);
        let info = ModelInfo {
            tokenizer: tokenizer.clone(),
            chat_template,
            harmony: Some(special),
            ctx_size: HARMONY_CTX,
            n_vocab: N_VOCAB,
            max_seqs: 4,
        };
        (info, batcher(Box::new(backend), &tokenizer, 4, HARMONY_CTX))
    })
}

/// The scripted server's context: its prompts are spelled byte by byte (no merges).
const HARMONY_CTX: usize = 2048;

/// The token stream of the harmony docs' StreamableParser example: reasoning, then the answer.
const REASONING_THEN_ANSWER: [u32; 36] = [
    200005, 35644, 200008, 1844, 31064, 25, 392, 4827, 382, 220, 17, 659, 220, 17, 16842, 12295, 81645, 13,
    51441, 6052, 13, 200007, 200006, 173781, 200005, 17196, 200008, 17, 659, 220, 17, 314, 220, 19, 13,
    200002,
];
const REASONING: &str = "User asks: \"What is 2 + 2?\" Simple arithmetic. Provide answer.";
const ANSWER: &str = "2 + 2 = 4.";

/// The harmony docs' function-call reply, as o200k_harmony encodes it.
fn tool_call_reply() -> Vec<u32> {
    bpe().encode_with_special_tokens(
        "<|channel|>analysis<|message|>Need to use function get_current_weather.<|end|>\
         <|start|>assistant<|channel|>commentary to=functions.get_current_weather <|constrain|>json\
         <|message|>{\"location\":\"San Francisco\"}<|call|>",
    )
}

fn chat(stream: bool) -> Value {
    json!({
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "What is 2 + 2?"}],
        "temperature": 0,
        "max_tokens": 100,
        "stream": stream,
        "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
    })
}

/// A streamed chat's chunks: (content, reasoning, tool calls as (id, name, arguments), finish).
fn gather_stream(chunks: &[Value]) -> (String, String, Vec<(String, String, String)>, String) {
    let (mut content, mut reasoning, mut calls, mut finish) =
        (String::new(), String::new(), Vec::new(), String::new());
    for chunk in chunks {
        let Some(choice) = chunk["choices"].get(0) else { continue };
        let delta = &choice["delta"];
        content += delta["content"].as_str().unwrap_or("");
        let thought = delta["reasoning_content"].as_str().unwrap_or("");
        assert_eq!(delta["reasoning"].as_str().unwrap_or(""), thought, "reasoning under both names");
        reasoning += thought;
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap() as usize;
            if let Some(id) = call["id"].as_str() {
                assert_eq!(index, calls.len(), "a new call takes the next index");
                assert_eq!(call["type"], "function");
                calls.push((
                    id.to_string(),
                    call["function"]["name"].as_str().unwrap().to_string(),
                    String::new(),
                ));
            }
            calls[index].2 += call["function"]["arguments"].as_str().unwrap_or("");
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish = reason.to_string();
        }
    }
    (content, reasoning, calls, finish)
}

#[test]
fn the_analysis_channel_is_reasoning_and_the_final_channel_is_content() {
    let server = scripted_server(REASONING_THEN_ANSWER.to_vec());
    let (status, response) = server.post("/v1/chat/completions", &chat(false));
    assert_eq!(status, 200, "{response}");
    let choice = &response["choices"][0];
    assert_eq!(choice["message"]["content"], ANSWER);
    assert_eq!(choice["message"]["reasoning_content"], REASONING);
    assert_eq!(choice["message"]["reasoning"], REASONING);
    assert!(choice["message"].get("tool_calls").is_none(), "{choice}");
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(response["usage"]["completion_tokens"], REASONING_THEN_ANSWER.len());

    let (status, events) = server.stream("/v1/chat/completions", &chat(true));
    assert_eq!(status, 200);
    let chunks = events.all();
    let (content, reasoning, calls, finish) = gather_stream(&chunks);
    assert_eq!(
        (content.as_str(), reasoning.as_str(), calls.len(), finish.as_str()),
        (ANSWER, REASONING, 0, "stop")
    );
    assert!(chunks.len() > 4, "the reply streams in pieces: {chunks:?}");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], REASONING_THEN_ANSWER.len());
    assert_eq!((server.finished("stop"), server.finished("tool_calls")), (2.0, 0.0));
    server.stop();
}

#[test]
fn commentary_to_a_function_is_a_tool_call_whole_and_streamed() {
    let reply = tool_call_reply();
    let server = scripted_server(reply.clone());
    let (status, response) = server.post("/v1/chat/completions", &chat(false));
    assert_eq!(status, 200, "{response}");
    let choice = &response["choices"][0];
    let message = &choice["message"];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(message["content"], Value::Null, "a reply of only a tool call has no content");
    assert_eq!(message["reasoning_content"], "Need to use function get_current_weather.");
    let calls = message["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{message}");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_current_weather");
    let arguments: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"location": "San Francisco"}));
    let id = calls[0]["id"].as_str().unwrap();
    assert!(id.starts_with("call_"), "{id}");

    let (_, events) = server.stream("/v1/chat/completions", &chat(true));
    let (content, reasoning, calls, finish) = gather_stream(&events.all());
    assert_eq!(content, "");
    assert_eq!(reasoning, "Need to use function get_current_weather.");
    assert_eq!(finish, "tool_calls");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1, "get_current_weather");
    assert_eq!(serde_json::from_str::<Value>(&calls[0].2).unwrap(), json!({"location": "San Francisco"}));
    // `/metrics` counts both under the finish reason the responses gave.
    assert_eq!(server.finished("tool_calls"), 2.0);
    assert_eq!(server.finished("stop"), 0.0);
    server.stop();
}

#[test]
fn a_stop_string_is_never_returned_in_content_or_reasoning() {
    let server = scripted_server(REASONING_THEN_ANSWER.to_vec());
    // (stop, content, reasoning): in the answer; in the reasoning; ending inside a token
    // (" Provide"); a stop that never comes.
    let cases = [
        ("= 4", "2 + 2 ", REASONING),
        ("Simple", "", "User asks: \"What is 2 + 2?\" "),
        ("arithmetic. Prov", "", "User asks: \"What is 2 + 2?\" Simple "),
        ("zzz", ANSWER, REASONING),
    ];
    for (stop, content, reasoning) in cases {
        let mut body = chat(false);
        body["stop"] = json!([stop]);
        let (status, response) = server.post("/v1/chat/completions", &body);
        assert_eq!(status, 200, "{response}");
        let choice = &response["choices"][0];
        assert_eq!(choice["message"]["content"], content, "stop {stop:?}: {choice}");
        assert_eq!(choice["message"]["reasoning_content"].as_str().unwrap_or(""), reasoning, "stop {stop:?}");
        assert_eq!(choice["finish_reason"], "stop");
        body["stream"] = json!(true);
        let (_, events) = server.stream("/v1/chat/completions", &body);
        let streamed = gather_stream(&events.all());
        assert_eq!(
            (streamed.0.as_str(), streamed.1.as_str(), streamed.3.as_str()),
            (content, reasoning, "stop"),
            "stop {stop:?}, streamed"
        );
    }
    // In a tool call's arguments.
    server.stop();
    let server = scripted_server(tool_call_reply());
    let mut body = chat(false);
    body["stop"] = json!(["Francisco"]);
    let (_, response) = server.post("/v1/chat/completions", &body);
    let message = &response["choices"][0]["message"];
    assert_eq!(message["tool_calls"][0]["function"]["arguments"], "{\"location\":\"San ", "{message}");
    server.stop();
}

#[test]
fn a_reply_that_breaks_the_framing_comes_back_as_text() {
    // No channel, no message marker: what a confused model might write.
    let mut reply = bpe().encode_with_special_tokens("Hello there, no framing at all.");
    reply.push(SpecialTokens::O200K_HARMONY.return_);
    let server = scripted_server(reply);
    let (status, response) = server.post("/v1/chat/completions", &chat(false));
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["choices"][0]["message"]["content"], "Hello there, no framing at all.");
    let (status, events) = server.stream("/v1/chat/completions", &chat(true));
    assert_eq!(status, 200);
    let (content, _, calls, finish) = gather_stream(&events.all());
    assert_eq!(
        (content.as_str(), calls.len(), finish.as_str()),
        ("Hello there, no framing at all.", 0, "stop")
    );
    // Cut off by the token budget before any stop token: still the text, never a 5xx.
    let mut cut = chat(false);
    cut["max_tokens"] = json!(3);
    let (status, response) = server.post("/v1/chat/completions", &cut);
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["choices"][0]["finish_reason"], "length");
    let first_three = String::from_utf8(bpe().decode_bytes(&reply_head(3)).unwrap()).unwrap();
    assert_eq!(response["choices"][0]["message"]["content"], first_three);
    server.stop();
}

fn reply_head(n: usize) -> Vec<u32> {
    bpe().encode_with_special_tokens("Hello there, no framing at all.")[..n].to_vec()
}

#[test]
fn a_framed_reply_cut_in_its_next_header_shows_no_header_text() {
    // The docs' reply stopped by the budget right after "<|start|>assistant" of its second
    // message: the reasoning, and no stray "assistant" in the content.
    let server = scripted_server(REASONING_THEN_ANSWER.to_vec());
    let mut body = chat(false);
    body["max_tokens"] = json!(24);
    let (status, response) = server.post("/v1/chat/completions", &body);
    assert_eq!(status, 200, "{response}");
    let message = &response["choices"][0]["message"];
    assert_eq!(message["content"], "", "{message}");
    assert_eq!(message["reasoning_content"], REASONING);
    assert_eq!(response["choices"][0]["finish_reason"], "length");
    server.stop();
}

#[test]
fn a_harmony_prompt_is_gpt_oss_s_template_with_the_reasoning_effort() {
    let server = scripted_server(Vec::new());
    let (status, tokens) = server.post(
        "/tokenize",
        &json!({"messages": [{"role": "user", "content": "What is 2 + 2?"}], "reasoning_effort": "high"}),
    );
    assert_eq!(status, 200, "{tokens}");
    let ids: Vec<u32> = serde_json::from_value(tokens["tokens"].clone()).unwrap();
    let text =
        String::from_utf8(ids.iter().flat_map(|&t| bpe().decode_bytes(&[t]).unwrap()).collect()).unwrap();
    assert!(text.starts_with("<|start|>system<|message|>"), "{text}");
    assert!(text.contains("Reasoning: high"), "{text}");
    assert!(text.ends_with("<|start|>user<|message|>What is 2 + 2?<|end|><|start|>assistant"), "{text}");
    server.stop();
}

#[test]
fn health_is_503_while_the_model_loads_then_200() {
    let (server, engine_side) = engine::server::start(options()).unwrap();
    let url = format!("http://{}", server.local_addr().unwrap());
    let shutdown = server.shutdown_handle();
    let http = std::thread::spawn(move || server.run().unwrap());
    let get = |path: &str| {
        let mut response = TestServer::agent().get(format!("{url}{path}")).call().unwrap();
        (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
    };
    let (status, body) = get("/health");
    assert_eq!(status, 503, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("loading"), "{error}");
    let (status, _) = common::post_to(&url, None, "/v1/completions", &json!({"prompt": "hi"}));
    assert_eq!(status, 503, "generation waits for the model too");
    // The model is ready: the engine thread starts serving.
    let engine = std::thread::spawn(move || {
        let tokenizer = harmony_tokenizer();
        let n_pages = HARMONY_CTX / engine::model::PAGE_SIZE;
        let backend = Scripted::new(Vec::new(), SpecialTokens::O200K_HARMONY.return_, N_VOCAB, n_pages);
        let info = ModelInfo {
            tokenizer: tokenizer.clone(),
            chat_template: None,
            harmony: SpecialTokens::from_tokenizer(&tokenizer),
            ctx_size: HARMONY_CTX,
            n_vocab: N_VOCAB,
            max_seqs: 4,
        };
        engine_side.run(info, batcher(Box::new(backend), &tokenizer, 4, HARMONY_CTX)).unwrap();
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while get("/health").0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    shutdown.shutdown();
    assert_eq!(http.join().unwrap(), engine::server::Stopped::AfterServing);
    engine.join().unwrap();

    // Shut down before the model is ready: the server says so, and nothing waits for the engine.
    let (server, engine_side) = engine::server::start(options()).unwrap();
    let shutdown = server.shutdown_handle();
    let http = std::thread::spawn(move || server.run().unwrap());
    shutdown.shutdown();
    assert_eq!(http.join().unwrap(), engine::server::Stopped::WhileLoading);
    drop(engine_side);
}

/// The text of a `/tokenize` answer (o200k_harmony ids).
fn tokenized_text(server: &TestServer, body: &Value) -> String {
    let (status, tokens) = server.post("/tokenize", body);
    assert_eq!(status, 200, "{tokens}");
    let ids: Vec<u32> = serde_json::from_value(tokens["tokens"].clone()).unwrap();
    String::from_utf8(ids.iter().flat_map(|&t| bpe().decode_bytes(&[t]).unwrap()).collect()).unwrap()
}

#[test]
fn tools_and_reasoning_sent_back_are_rendered_into_the_prompt() {
    let server = scripted_server(Vec::new());
    let tools = json!([{"type": "function", "function": {
        "name": "get_current_weather",
        "description": "Gets the current weather in the provided location.",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    }}]);
    let messages = json!([
        {"role": "user", "content": "What is the weather like in SF?"},
        {"role": "assistant", "content": null, "reasoning_content": "Need to use function get_current_weather.",
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_current_weather", "arguments": "{\"location\":\"San Francisco\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"sunny\": true, \"temperature\": 20}"},
    ]);
    let text = tokenized_text(&server, &json!({"messages": messages, "tools": tools}));
    assert!(text.contains("Calls to these tools must go to the commentary channel: 'functions'."), "{text}");
    assert!(text.contains("namespace functions {"), "{text}");
    assert!(text.contains("type get_current_weather = (_: {"), "{text}");
    // The reasoning the client sent back, in the analysis channel before the call it led to.
    assert!(
        text.contains(
            "<|start|>assistant<|channel|>analysis<|message|>Need to use function get_current_weather.<|end|>\
             <|start|>assistant to=functions.get_current_weather<|channel|>commentary json<|message|>\
             {\"location\": \"San Francisco\"}<|call|>"
        ),
        "{text}"
    );
    assert!(
        // The template writes a tool's result through tojson: a JSON string.
        text.contains(
            "<|start|>functions.get_current_weather to=assistant<|channel|>commentary<|message|>\
             \"{\\\"sunny\\\": true, \\\"temperature\\\": 20}\"<|end|>"
        ),
        "{text}"
    );
    assert!(text.ends_with("<|start|>assistant"), "{text}");
    // A file without the template: the engine's renderer writes the same prompt, nothing
    // dropped (apart from the current date, which the template takes from the clock too).
    let no_template = scripted_server_with(Vec::new(), None);
    let ours = tokenized_text(&no_template, &json!({"messages": messages, "tools": tools}));
    assert_eq!(ours, text);
    no_template.stop();
    // tool_choice "none": the tools are not offered.
    let none = tokenized_text(
        &server,
        &json!({"messages": [messages[0].clone()], "tools": tools, "tool_choice": "none"}),
    );
    assert!(!none.contains("namespace functions"), "{none}");
    // A tool call with no function name is refused, naming it.
    let (status, error) = server.post(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "assistant", "tool_calls": [{"type": "function", "function": {}}]}]}),
    );
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["param"], "messages[0].tool_calls[0].function.name");
    server.stop();
}

/// The tiny gpt-oss fixture.
struct Fixture {
    model: Model,
    tokenizer: Arc<Tokenizer>,
    tokens: Vec<u32>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let file = GgufFile::open(dir.join("gptoss.gguf")).unwrap();
        let model = Model::load(&file, Numerics::Exact, &|_, _| {}).unwrap();
        let tokenizer = Arc::new(Tokenizer::from_gguf(&file).unwrap());
        let tokens =
            serde_json::from_str(&std::fs::read_to_string(dir.join("gptoss.tokens.json")).unwrap()).unwrap();
        Fixture { model, tokenizer, tokens }
    })
}

fn fixture_alone(prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let model = &fixture().model;
    let n_vocab = model.config().n_vocab;
    let mut cache = model.new_cache(CTX);
    let mut logits = model.forward(prompt, &mut cache).unwrap();
    let mut tokens = Vec::new();
    loop {
        let token = engine::generate::argmax(&logits[logits.len() - n_vocab..]);
        tokens.push(token);
        // The server stops a harmony model at `<|return|>` (its EOS) and at `<|call|>`.
        let harmony = SpecialTokens::from_tokenizer(&fixture().tokenizer).unwrap();
        if harmony.stop_tokens().contains(&token) || tokens.len() == max_tokens {
            return tokens;
        }
        logits = model.forward(&[token], &mut cache).unwrap();
    }
}

#[test]
fn the_tiny_gpt_oss_fixture_is_served_end_to_end() {
    let fixture = fixture();
    let server = TestServer::start_with(options(), move || {
        let backend = CpuBatch::new(&fixture.model, 64);
        let info = ModelInfo {
            tokenizer: fixture.tokenizer.clone(),
            chat_template: None,
            harmony: SpecialTokens::from_tokenizer(&fixture.tokenizer),
            ctx_size: CTX,
            n_vocab: fixture.model.config().n_vocab,
            max_seqs: 4,
        };
        (info, batcher(Box::new(backend), &fixture.tokenizer, 4, CTX))
    });
    let prompts: Vec<&[u32]> = vec![&fixture.tokens[..], &fixture.tokens[..5], &fixture.tokens[3..17]];
    // Three at once (batched), each with the tokens the model gives alone.
    let threads: Vec<_> = prompts
        .iter()
        .map(|prompt| {
            let body = json!({"prompt": prompt, "max_tokens": 16, "temperature": 0, "logprobs": 1});
            let (url, key) = (server.url.clone(), server.key.clone());
            std::thread::spawn(move || common::post_to(&url, key.as_deref(), "/v1/completions", &body))
        })
        .collect();
    for (prompt, thread) in prompts.iter().zip(threads) {
        let (status, response) = thread.join().unwrap();
        assert_eq!(status, 200, "{response}");
        let expected = fixture_alone(prompt, 16);
        // Its tokens are bytes (and merges of bytes): a character may take several of them.
        let bytes: Vec<u8> = expected
            .iter()
            .filter(|&&t| !fixture.tokenizer.is_special(t))
            .flat_map(|&t| fixture.tokenizer.token_bytes(t).unwrap().to_vec())
            .collect();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert_eq!(response["choices"][0]["text"], text, "prompt {prompt:?}");
        assert_eq!(response["usage"]["completion_tokens"], expected.len());
        assert_eq!(response["choices"][0]["logprobs"]["tokens"].as_array().unwrap().len(), expected.len());
    }
    server.wait_until_idle();
    server.stop();
}
