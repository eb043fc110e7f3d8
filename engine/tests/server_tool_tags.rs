//! `engine serve` for models that write tool calls as `<tool_call>` tags (Qwen2.5, Hermes), end
//! to end over HTTP on loopback. A recorded reply of that kind, spelled in SmolLM2's vocabulary,
//! is played back by a scripted backend (`common::Scripted`) under the real batcher, engine loop
//! and handlers, with a ChatML template that offers the tools and asks for the tags (written for
//! this test; Qwen2.5's asks the same way). The calls must come back as `tool_calls` with
//! finish_reason "tool_calls", whole and streamed, and counted so in `/metrics`; without tools
//! (or with tool_choice "none") the same text is content, as written.

#[path = "server/common.rs"]
mod common;

use common::{MODEL_NAME, Scripted, TestServer, batcher, options};
use engine::gguf::GgufFile;
use engine::server::ModelInfo;
use engine::tokenizer::Tokenizer;
use serde_json::{Value, json};
use std::sync::{Arc, OnceLock};

/// SmolLM2's tokenizer (the default model's file, fetched once).
fn tokenizer() -> Arc<Tokenizer> {
    static TOKENIZER: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let path = engine::default_model::ensure_default_model(&|_, _, _| {}).expect("fetching SmolLM2");
            Arc::new(Tokenizer::from_gguf(&GgufFile::open(path).unwrap()).unwrap())
        })
        .clone()
}

/// ChatML with a tools section that asks for `<tool_call>` tags.
const TEMPLATE: &str = r#"{%- if tools %}<|im_start|>system
You can call these functions:
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
Write each call as <tool_call>{"name": NAME, "arguments": ARGUMENTS}</tool_call>.<|im_end|>
{% endif %}
{%- for message in messages %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"#;

/// A Qwen2.5-style reply: a sentence, then two calls.
const REPLY: &str = "I will look it up.\n<tool_call>\n{\"name\": \"get_current_weather\", \"arguments\": \
    {\"location\": \"San Francisco\", \"unit\": \"celsius\"}}\n</tool_call>\n<tool_call>\n\
    {\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
const CONTENT: &str = "I will look it up.\n";

/// A server whose every reply is `REPLY`, then SmolLM2's end of turn.
fn server() -> TestServer {
    TestServer::start_with(options(), || {
        let tokenizer = tokenizer();
        let reply = tokenizer.encode(REPLY, false, false).unwrap();
        let eos = tokenizer.eos().unwrap();
        let n_vocab = tokenizer.vocab_size();
        let ctx = 1024;
        let backend = Scripted::new(reply, eos, n_vocab, 4 * ctx / engine::model::PAGE_SIZE);
        let info = ModelInfo {
            tokenizer: tokenizer.clone(),
            chat_template: Some(TEMPLATE.to_string()),
            harmony: None,
            ctx_size: ctx,
            n_vocab,
            max_seqs: 4,
        };
        (info, batcher(Box::new(backend), &tokenizer, 4, ctx))
    })
}

fn chat(tools: bool, stream: bool) -> Value {
    let mut body = json!({
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "What is the weather in San Francisco, and the time?"}],
        "max_tokens": 200,
        "stream": stream,
    });
    if tools {
        body["tools"] = json!([
            {"type": "function", "function": {"name": "get_current_weather", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
        ]);
    }
    body
}

/// The calls expected, as (name, arguments parsed).
fn expected_calls() -> Vec<(String, Value)> {
    vec![
        ("get_current_weather".into(), json!({"location": "San Francisco", "unit": "celsius"})),
        ("get_time".into(), json!({})),
    ]
}

#[test]
fn tagged_calls_are_tool_calls_whole_and_streamed() {
    let server = server();
    let (status, response) = server.post("/v1/chat/completions", &chat(true, false));
    assert_eq!(status, 200, "{response}");
    let choice = &response["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{response}");
    let message = &choice["message"];
    assert_eq!(message["content"], CONTENT, "the text before the calls");
    let calls = message["tool_calls"].as_array().unwrap();
    let got: Vec<(String, Value)> = calls
        .iter()
        .map(|call| {
            assert_eq!(call["type"], "function");
            let arguments = call["function"]["arguments"].as_str().unwrap();
            (call["function"]["name"].as_str().unwrap().to_string(), serde_json::from_str(arguments).unwrap())
        })
        .collect();
    assert_eq!(got, expected_calls());
    assert_ne!(calls[0]["id"], calls[1]["id"], "each call has its own id");

    let (status, events) = server.stream("/v1/chat/completions", &chat(true, true));
    assert_eq!(status, 200);
    let (mut content, mut streamed, mut finish) = (String::new(), Vec::<(String, String)>::new(), None);
    for chunk in events.all() {
        let choice = &chunk["choices"][0];
        content += choice["delta"]["content"].as_str().unwrap_or("");
        for call in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap() as usize;
            if let Some(name) = call["function"]["name"].as_str() {
                assert_eq!(index, streamed.len(), "a new call takes the next index");
                streamed.push((name.to_string(), String::new()));
            }
            streamed[index].1 += call["function"]["arguments"].as_str().unwrap_or("");
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish = Some(reason.to_string());
        }
    }
    assert_eq!(content, CONTENT);
    let streamed: Vec<(String, Value)> = streamed
        .into_iter()
        .map(|(name, arguments)| (name, serde_json::from_str(&arguments).unwrap()))
        .collect();
    assert_eq!(streamed, expected_calls());
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    assert_eq!((server.finished("tool_calls"), server.finished("stop")), (2.0, 0.0));
    server.stop();
}

#[test]
fn without_tools_the_tags_are_content() {
    let server = server();
    let mut none = chat(true, false);
    none["tool_choice"] = json!("none");
    for body in [chat(false, false), none] {
        let (status, response) = server.post("/v1/chat/completions", &body);
        assert_eq!(status, 200, "{response}");
        let choice = &response["choices"][0];
        assert_eq!(choice["message"]["content"], REPLY, "{body}");
        assert!(choice["message"].get("tool_calls").is_none(), "{response}");
        assert_eq!(choice["finish_reason"], "stop");
    }
    server.stop();
}
