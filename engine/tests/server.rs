//! `engine serve` end to end on the CPU: servers started in this process on loopback ports over
//! the default model, driven over HTTP. Generated text is compared with the model run alone
//! through the one-sequence cache (no server, no batcher); streams are checked event by event;
//! every refusal is checked for its status and the field it names; a client that goes away
//! must leave no sequence running and no KV page held.

#[path = "server/common.rs"]
mod common;

use common::{CTX, MODEL_NAME, TestServer, alone, chat_prompt, options, text_of, text_prompt};
use serde_json::{Value, json};
use std::sync::OnceLock;

const KEY: &str = "test-key";

/// The server most tests share (with an API key).
fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        TestServer::start(engine::server::ServerOptions { api_keys: vec![KEY.into()], ..options() }, 16, 256)
    })
}

const QUESTION: &str = "What is the capital of France?";

fn chat_body(extra: Value) -> Value {
    let mut body = json!({"model": MODEL_NAME, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 12, "temperature": 0});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[test]
fn chat_greedy_gives_the_text_the_model_gives_alone() {
    let expected = alone(&chat_prompt(&[("user", QUESTION)]), 12);
    let (status, response) = server().post("/v1/chat/completions", &chat_body(json!({})));
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["object"], "chat.completion");
    assert!(response["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(response["model"], MODEL_NAME);
    let choice = &response["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], text_of(&expected));
    let eos = expected.last() == common::loaded().tokenizer.eos().as_ref();
    assert_eq!(choice["finish_reason"], if eos { "stop" } else { "length" });
    let usage = &response["usage"];
    assert_eq!(usage["prompt_tokens"], chat_prompt(&[("user", QUESTION)]).len());
    assert_eq!(usage["completion_tokens"], expected.len());
    assert_eq!(usage["total_tokens"], usage["prompt_tokens"].as_u64().unwrap() + expected.len() as u64);
    assert!(usage["prompt_tokens_details"]["cached_tokens"].is_u64());
}

#[test]
fn a_streamed_chat_sends_role_deltas_finish_usage_and_done() {
    let tokens = alone(&chat_prompt(&[("user", QUESTION)]), 12);
    let expected = text_of(&tokens);
    let eos = tokens.last() == common::loaded().tokenizer.eos().as_ref();
    let body = chat_body(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let (status, events) = server().stream("/v1/chat/completions", &body);
    assert_eq!(status, 200);
    let chunks = events.all();
    let id = chunks[0]["id"].clone();
    assert!(
        chunks.iter().all(|c| c["id"] == id && c["object"] == "chat.completion.chunk"),
        "one id per response"
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let (last, rest) = chunks.split_last().unwrap();
    assert_eq!(last["choices"], json!([]), "the usage chunk has no choices");
    assert_eq!(last["usage"]["completion_tokens"], tokens.len());
    let finish = rest.last().unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], if eos { "stop" } else { "length" });
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    let text: String = rest.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, expected);
    assert!(rest[1..rest.len() - 1].iter().all(|c| c["choices"][0]["finish_reason"].is_null()));
}

#[test]
fn ignore_eos_generates_to_max_tokens() {
    let tokens = alone(&chat_prompt(&[("user", QUESTION)]), 12);
    assert_eq!(
        tokens.last(),
        common::loaded().tokenizer.eos().as_ref(),
        "this prompt ends early: {tokens:?}"
    );
    let (status, response) = server().post("/v1/chat/completions", &chat_body(json!({"ignore_eos": true})));
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["usage"]["completion_tokens"], 12);
    assert_eq!(response["choices"][0]["finish_reason"], "length");
    let content = response["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.starts_with(&text_of(&tokens)), "{content:?}");
}

#[test]
fn completions_whole_and_streamed_give_the_text_alone() {
    let prompt = "The capital of France is";
    let expected = text_of(&alone(&text_prompt(prompt), 10));
    let body = json!({"prompt": prompt, "max_tokens": 10, "temperature": 0});
    let (status, response) = server().post("/v1/completions", &body);
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["object"], "text_completion");
    assert_eq!(response["choices"][0]["text"], expected);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (_, events) = server().stream("/v1/completions", &streamed);
    let chunks = events.all();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, expected);
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "length");
    // Token ids as the prompt.
    let tokens = text_prompt(prompt);
    let (_, by_ids) =
        server().post("/v1/completions", &json!({"prompt": tokens, "max_tokens": 10, "temperature": 0}));
    assert_eq!(by_ids["choices"][0]["text"], expected);
}

#[test]
fn a_stop_string_ends_the_text_before_it() {
    let full = text_of(&alone(&text_prompt("The capital of France is"), 10));
    // A stop taken from the middle of the reference text.
    let words: Vec<&str> = full.split_inclusive(' ').collect();
    let stop = words[words.len() / 2].trim().to_string();
    assert!(!stop.is_empty(), "{full:?}");
    let body = json!({"prompt": "The capital of France is", "max_tokens": 10, "temperature": 0, "stop": [stop, "zzzz"]});
    let (_, response) = server().post("/v1/completions", &body);
    let choice = &response["choices"][0];
    assert_eq!(choice["text"], full[..full.find(&stop).unwrap()], "stop {stop:?} in {full:?}");
    assert_eq!(choice["finish_reason"], "stop");
}

#[test]
fn the_same_seed_gives_the_same_text_and_n_gives_several_choices() {
    let body =
        json!({"prompt": "Once upon a time", "max_tokens": 12, "temperature": 1.0, "seed": 1234, "n": 3});
    let (status, first) = server().post("/v1/completions", &body);
    assert_eq!(status, 200, "{first}");
    let (_, second) = server().post("/v1/completions", &body);
    let texts = |r: &Value| -> Vec<String> {
        r["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(texts(&first).len(), 3);
    assert_eq!(texts(&first), texts(&second), "same seed, same texts");
    assert!(
        texts(&first).iter().collect::<std::collections::HashSet<_>>().len() > 1,
        "choices differ: {first}"
    );
    let indices: Vec<u64> =
        first["choices"].as_array().unwrap().iter().map(|c| c["index"].as_u64().unwrap()).collect();
    assert_eq!(indices, [0, 1, 2]);
    let completion: u64 = first["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(completion, 36);
    assert_eq!(first["usage"]["prompt_tokens"], text_prompt("Once upon a time").len());
}

#[test]
fn n_choices_share_the_prompt_s_pages() {
    // A prompt of several KV pages: choices 1 and 2 find choice 0's full pages in the prefix
    // cache. Greedy, all three give the text of the prompt alone.
    let prompt = "The history of the city begins in the third century before our era, when a small \
                  tribe of fishermen settled on an island in the river and built the first bridge.";
    let expected = text_of(&alone(&text_prompt(prompt), 6));
    let body = json!({"prompt": prompt, "max_tokens": 6, "temperature": 0, "n": 3});
    let (status, response) = server().post("/v1/completions", &body);
    assert_eq!(status, 200, "{response}");
    let texts: Vec<&str> =
        response["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap()).collect();
    assert_eq!(texts, [expected.as_str(); 3]);
    let page = engine::model::PAGE_SIZE;
    let full_pages = (text_prompt(prompt).len() - 1) / page * page;
    assert!(full_pages >= 2 * page);
    assert_eq!(response["usage"]["prompt_tokens_details"]["cached_tokens"], full_pages, "{response}");
}

#[test]
fn logprobs_come_with_the_chosen_token_and_its_alternatives() {
    let body = chat_body(json!({"logprobs": true, "top_logprobs": 3, "max_tokens": 5}));
    let (_, response) = server().post("/v1/chat/completions", &body);
    let content = response["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 5);
    for entry in content {
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(entry["token"], top[0]["token"]);
        let logprob = entry["logprob"].as_f64().unwrap();
        assert!(logprob <= 0.0 && (logprob - top[0]["logprob"].as_f64().unwrap()).abs() < 1e-6);
        assert!(top.windows(2).all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
    }
    let (_, completion) = server().post(
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 4, "temperature": 0, "logprobs": 2}),
    );
    let lp = &completion["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 4);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 4);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
}

fn error_of(status: u16, body: &str) -> (u16, Value) {
    let value: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let error = &value["error"];
    assert!(error["message"].is_string() && error["type"].is_string(), "{value}");
    assert!(error.get("param").is_some() && error.get("code").is_some(), "{value}");
    (status, error.clone())
}

#[test]
fn bad_requests_are_refused_with_the_field_named() {
    let s = server();
    let post = |path: &str, body: &str| {
        let (status, _, text) = s.post_raw(path, body, Some(KEY));
        error_of(status, &text)
    };
    let (status, error) = post("/v1/chat/completions", "{\"messages\": [");
    assert_eq!((status, error["code"].as_str()), (400, Some("invalid_json")));
    let (status, _) = post("/v1/chat/completions", "[1, 2]");
    assert_eq!(status, 400);
    let cases = [
        (json!({"messages": "hi"}), "messages"),
        (json!({"messages": []}), "messages"),
        (json!({"messages": [{"content": "hi"}]}), "messages[0].role"),
        (json!({"messages": [{"role": "robot", "content": "hi"}]}), "messages[0].role"),
        (json!({"messages": [{"role": "user", "content": 5}]}), "messages[0].content"),
        (chat_body(json!({"temperature": "hot"})), "temperature"),
        (chat_body(json!({"temperature": 3.5})), "temperature"),
        (chat_body(json!({"top_p": 0})), "top_p"),
        (chat_body(json!({"top_k": -5})), "top_k"),
        (chat_body(json!({"max_tokens": 0})), "max_tokens"),
        (chat_body(json!({"max_completion_tokens": -1})), "max_completion_tokens"),
        (chat_body(json!({"n": 100})), "n"),
        (chat_body(json!({"stop": 7})), "stop"),
        (chat_body(json!({"stop": ["a", 1]})), "stop[1]"),
        (chat_body(json!({"presence_penalty": 9})), "presence_penalty"),
        (chat_body(json!({"seed": "x"})), "seed"),
        (chat_body(json!({"logprobs": true, "top_logprobs": 50})), "top_logprobs"),
        (chat_body(json!({"stream": "yes"})), "stream"),
        (chat_body(json!({"reasoning_effort": "max"})), "reasoning_effort"),
        (chat_body(json!({"ignore_eos": "yes"})), "ignore_eos"),
        // A forced tool call cannot be enforced, so it is refused rather than ignored.
        (chat_body(json!({"tool_choice": "required"})), "tool_choice"),
        (chat_body(json!({"tool_choice": {"type": "function", "function": {"name": "f"}}})), "tool_choice"),
        (chat_body(json!({"tool_choice": 7})), "tool_choice"),
    ];
    for (body, param) in cases {
        let (status, error) = post("/v1/chat/completions", &body.to_string());
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["param"], param, "{body}: {error}");
        assert_eq!(error["type"], "invalid_request_error");
    }
    let (status, error) = post("/v1/completions", &json!({"prompt": {"a": 1}}).to_string());
    assert_eq!((status, error["param"].as_str()), (400, Some("prompt")));
    let (status, error) = post("/v1/completions", &json!({"prompt": [999999999]}).to_string());
    assert_eq!((status, error["param"].as_str()), (400, Some("prompt")));
}

#[test]
fn an_unknown_model_is_404_and_a_prompt_longer_than_the_context_is_400() {
    let s = server();
    let (status, _, text) =
        s.post_raw("/v1/chat/completions", &chat_body(json!({"model": "gpt-9"})).to_string(), Some(KEY));
    let (_, error) = error_of(status, &text);
    assert_eq!(
        (status, error["code"].as_str(), error["param"].as_str()),
        (404, Some("model_not_found"), Some("model"))
    );
    let long = "word ".repeat(CTX + 10);
    let (status, _, text) = s.post_raw("/v1/completions", &json!({"prompt": long}).to_string(), Some(KEY));
    let (_, error) = error_of(status, &text);
    assert_eq!((status, error["code"].as_str()), (400, Some("context_length_exceeded")), "{error}");
    // Exactly full (no room for one generated token) is refused too.
    let ids = vec![100u32; CTX];
    let (status, _, _) = s.post_raw("/v1/completions", &json!({"prompt": ids}).to_string(), Some(KEY));
    assert_eq!(status, 400);
    let ids = vec![100u32; CTX - 1];
    let (status, _, text) =
        s.post_raw("/v1/completions", &json!({"prompt": ids, "max_tokens": 3}).to_string(), Some(KEY));
    assert_eq!(status, 200, "{text}");
    let response: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(response["choices"][0]["finish_reason"], "length");
    assert_eq!(response["usage"]["completion_tokens"], 1, "the context holds one more token");
}

#[test]
fn the_api_key_is_required_everywhere_but_health() {
    let s = server();
    for key in [None, Some("wrong")] {
        let (status, _, text) = s.post_raw("/v1/chat/completions", &chat_body(json!({})).to_string(), key);
        let (_, error) = error_of(status, &text);
        assert_eq!((status, error["type"].as_str()), (401, Some("authentication_error")));
        let (status, _, _) = s.post_raw("/tokenize", "{\"prompt\": \"hi\"}", key);
        assert_eq!(status, 401);
    }
    assert_eq!(s.get_as("/health", None).0, 200);
    assert_eq!(s.get_as("/v1/models", None).0, 401);
    assert_eq!(s.get_as("/metrics", Some("wrong")).0, 401);
    let (status, models) = s.get("/v1/models");
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], MODEL_NAME);
}

#[test]
fn a_body_over_the_limit_is_413() {
    let body = json!({"prompt": "a ".repeat(100_000)}).to_string();
    let (status, _, text) = server().post_raw("/v1/completions", &body, Some(KEY));
    let (_, error) = error_of(status, &text);
    assert_eq!(status, 413, "{error}");
}

#[test]
fn tokenize_and_detokenize_round_trip() {
    let (status, tokens) = server().post("/tokenize", &json!({"prompt": "Hello world"}));
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["tokens"], json!(text_prompt("Hello world")));
    assert_eq!(tokens["count"], text_prompt("Hello world").len());
    assert_eq!(tokens["max_model_len"], CTX);
    let (_, chat) = server().post("/tokenize", &json!({"messages": [{"role": "user", "content": QUESTION}]}));
    assert_eq!(chat["tokens"], json!(chat_prompt(&[("user", QUESTION)])));
    let (_, text) = server().post("/detokenize", &json!({"tokens": tokens["tokens"]}));
    assert_eq!(text["prompt"], "Hello world");
    let (status, _, _) = server().post_raw("/detokenize", "{\"tokens\": [-1]}", Some(KEY));
    assert_eq!(status, 400);
}

#[test]
fn metrics_carry_every_series_with_the_model_name() {
    server().post("/v1/completions", &json!({"prompt": "Hi", "max_tokens": 2}));
    let (status, text) = server().get("/metrics");
    assert_eq!(status, 200);
    for name in [
        "engine_requests_running",
        "engine_requests_waiting",
        "engine_kv_cache_usage_ratio",
        "engine_prompt_tokens_total",
        "engine_generation_tokens_total",
        "engine_preemptions_total",
        "engine_request_success_total",
        "engine_time_to_first_token_seconds_bucket",
        "engine_inter_token_latency_seconds_sum",
        "engine_e2e_request_latency_seconds_count",
        "engine_request_queue_time_seconds_bucket",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name) && l.contains(&format!("model_name=\"{MODEL_NAME}\""))),
            "{name} missing:\n{text}"
        );
    }
    assert!(server().metric("engine_generation_tokens_total") >= 2.0);
}

#[test]
fn a_full_queue_is_429_with_retry_after() {
    // One running sequence and no waiting room.
    let s = TestServer::start(engine::server::ServerOptions { max_queue: 0, ..options() }, 1, 64);
    let (_, mut events) =
        s.stream("/v1/completions", &json!({"prompt": "Once", "max_tokens": 200, "stream": true}));
    assert!(events.next_data().is_some(), "the first request runs");
    let (status, retry, text) =
        s.post_raw("/v1/completions", "{\"prompt\": \"Hi\", \"max_tokens\": 1}", None);
    let (_, error) = error_of(status, &text);
    assert_eq!(status, 429, "{error}");
    assert_eq!(retry.as_deref(), Some("1"));
    drop(events);
    s.wait_until_idle();
    // The engine is idle; the first request's handler lets go of its place when it reads its
    // sequence's end, a moment later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (status, text) = loop {
        let (status, _, text) =
            s.post_raw("/v1/completions", "{\"prompt\": \"Hi\", \"max_tokens\": 1}", None);
        if status != 429 || std::time::Instant::now() > deadline {
            break (status, text);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status, 200, "after the first went away: {text}");
    s.stop();
}

#[test]
fn the_queue_counts_sequences_so_a_request_with_n_choices_takes_n_places() {
    // Room for two sequences: one running, one waiting.
    let s = TestServer::start(engine::server::ServerOptions { max_queue: 1, ..options() }, 1, 64);
    let two = json!({"prompt": "Once", "max_tokens": 200, "n": 2, "stream": true});
    let (status, mut events) = s.stream("/v1/completions", &two);
    assert_eq!(status, 200);
    assert!(events.next_data().is_some(), "the two choices are in");
    // One request, but no place is left for its sequence.
    let (status, retry, text) =
        s.post_raw("/v1/completions", "{\"prompt\": \"Hi\", \"max_tokens\": 1}", None);
    let (_, error) = error_of(status, &text);
    assert_eq!(status, 429, "{error}");
    assert_eq!(retry.as_deref(), Some("1"));
    // More choices than the server ever holds can never be admitted: a 400, not a 429.
    let (status, _, text) =
        s.post_raw("/v1/completions", "{\"prompt\": \"Hi\", \"max_tokens\": 1, \"n\": 3}", None);
    let (_, error) = error_of(status, &text);
    assert_eq!((status, error["param"].as_str()), (400, Some("n")), "{error}");
    drop(events);
    s.wait_until_idle();
    // Both places come back: a request with two choices fits again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let (status, text) = loop {
        let (status, _, text) =
            s.post_raw("/v1/completions", "{\"prompt\": \"Hi\", \"max_tokens\": 1, \"n\": 2}", None);
        if status != 429 || std::time::Instant::now() > deadline {
            break (status, text);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status, 200, "after the first went away: {text}");
    s.stop();
}

#[test]
fn a_client_that_goes_away_mid_stream_frees_its_sequence_and_pages() {
    let s = TestServer::start(options(), 4, 64);
    let (_, mut events) = s.stream(
        "/v1/chat/completions",
        &chat_body(json!({"stream": true, "max_tokens": 400, "model": null})),
    );
    for _ in 0..3 {
        assert!(events.next_data().is_some());
    }
    assert_eq!(s.metric("engine_requests_running"), 1.0);
    assert!(s.metric("engine_kv_cache_usage_ratio") > 0.0);
    drop(events);
    s.wait_until_idle();
    assert!(s.metric("engine_generation_tokens_total") < 400.0, "cancelled before its budget");
    // A whole (not streamed) request whose client closes the connection while it waits.
    let address = s.url.trim_start_matches("http://").to_string();
    let mut socket = std::net::TcpStream::connect(&address).unwrap();
    let body = json!({"prompt": "Once upon a time", "max_tokens": 400}).to_string();
    use std::io::Write;
    write!(socket, "POST /v1/completions HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    while s.metric("engine_requests_running") == 0.0 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(socket);
    s.wait_until_idle();
    assert!(s.metric("engine_generation_tokens_total") < 800.0, "cancelled before its budget");
    s.stop();
}

#[test]
fn a_stream_that_waits_gets_keep_alive_comments_then_its_tokens() {
    // One running sequence; the second request waits in the queue behind it.
    let s = TestServer::start(options(), 1, 64);
    let long = json!({"prompt": "Once upon a time", "max_tokens": 60, "temperature": 0, "stream": true});
    let (_, mut first) = s.stream("/v1/completions", &long);
    assert!(first.next_data().is_some());
    let short =
        json!({"prompt": "The capital of France is", "max_tokens": 3, "temperature": 0, "stream": true});
    let (status, mut second) = s.stream("/v1/completions", &short);
    assert_eq!(status, 200);
    assert!(second.next_data().is_some(), "the first chunk comes at once");
    assert!(s.metric("engine_requests_waiting") >= 1.0 || s.metric("engine_requests_running") == 1.0);
    // Its first token comes only when the first request is done (60 tokens: seconds here).
    let data = second.next_data().expect("a token");
    assert!(second.comments > 0, "keep-alive comments while it waited (before {data})");
    let expected = text_of(&alone(&text_prompt("The capital of France is"), 3));
    let mut chunks = vec![serde_json::from_str::<Value>(&data).unwrap()];
    chunks.extend(second.all());
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, expected);
    drop(first);
    s.wait_until_idle();
    s.stop();
}

/// Polls `/metrics` until `name` reads `value`; false if it did not within `seconds`.
fn reaches(s: &TestServer, name: &str, value: f64, seconds: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if s.metric(name) == value {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

#[test]
fn a_client_that_goes_away_while_its_request_waits_is_cancelled_before_it_runs() {
    // One running sequence, generating to the end of the context; the requests after it wait.
    let s = TestServer::start(options(), 1, 64);
    let long = json!({"prompt": "Once upon a time", "max_tokens": CTX, "ignore_eos": true, "stream": true});
    let (_, mut running) = s.stream("/v1/completions", &long);
    for _ in 0..3 {
        assert!(running.next_data().is_some());
    }
    let first_tokens = s.metric("engine_time_to_first_token_seconds_count");
    // A streamed request that waits: its role chunk comes at once, then nothing until it runs.
    let queued = json!({"prompt": "The capital of France is", "max_tokens": 50, "stream": true});
    let (status, mut waiting) = s.stream("/v1/completions", &queued);
    assert_eq!(status, 200);
    assert!(waiting.next_data().is_some(), "the first chunk comes at once");
    assert!(reaches(&s, "engine_requests_waiting", 1.0, 10), "the second request waits");
    drop(waiting);
    assert!(reaches(&s, "engine_requests_waiting", 0.0, 10), "the stream that went away still waits");
    assert_eq!(s.metric("engine_requests_running"), 1.0, "the first request still runs");
    // A whole (not streamed) request whose client closes the connection while it waits.
    let address = s.url.trim_start_matches("http://").to_string();
    let mut socket = std::net::TcpStream::connect(&address).unwrap();
    let body = json!({"prompt": "The capital of France is", "max_tokens": 50}).to_string();
    use std::io::Write;
    write!(socket, "POST /v1/completions HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    assert!(reaches(&s, "engine_requests_waiting", 1.0, 10), "the third request waits");
    drop(socket);
    assert!(reaches(&s, "engine_requests_waiting", 0.0, 10), "the request that went away still waits");
    assert_eq!(s.metric("engine_requests_running"), 1.0, "the first request still runs");
    assert_eq!(
        s.metric("engine_time_to_first_token_seconds_count"),
        first_tokens,
        "neither request that went away computed its prompt"
    );
    drop(running);
    s.wait_until_idle();
    s.stop();
}
