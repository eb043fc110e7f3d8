//! gpt-oss prompts: the model's own chat template (`data/chat/gpt-oss-20b.jinja`, see
//! `data/chat/README.md` for where it comes from) rendered by minijinja must give what the
//! harmony docs write and what our renderer (`engine::harmony`) writes; and the streaming parser
//! must read token ids as OpenAI's o200k_harmony encoding (tiktoken-rs) spells them.

use engine::chat::{self, Message, TemplateOptions};
use engine::harmony::{self, Event, ReasoningEffort, SpecialTokens, Stop, SystemContent};

const TEMPLATE: &str = include_str!("data/chat/gpt-oss-20b.jinja");
/// 2025-06-28 13:02:03 UTC, the date of the harmony docs' examples.
const NOW: i64 = 1_751_115_723;

fn template(messages: &[Message], effort: Option<ReasoningEffort>) -> String {
    let options = TemplateOptions {
        reasoning_effort: effort.map(|e| e.as_str().to_string()),
        now: Some(NOW),
        tools: None,
    };
    chat::render_with_options(TEMPLATE, messages, "<|startoftext|>", "<|return|>", true, &options).unwrap()
}

fn ours(messages: &[Message], effort: Option<ReasoningEffort>) -> String {
    let system = SystemContent::new("2025-06-28", effort.unwrap_or_default());
    harmony::render_prompt(messages, &system, None).unwrap()
}

#[test]
fn the_template_renders_the_docs_prompt() {
    // docs/format.md's system message example and a developer message of instructions, as the
    // template's current revision writes them with no tools: the line "Calls to these tools must
    // go to the commentary channel: 'functions'." only comes with tools, and the instructions end
    // with a blank line.
    let messages = [
        Message::new("developer", "Use a friendly tone."),
        Message::new("user", "What is the weather like in SF?"),
    ];
    assert_eq!(
        template(&messages, Some(ReasoningEffort::High)),
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n\
         Knowledge cutoff: 2024-06\n\
         Current date: 2025-06-28\n\
         \n\
         Reasoning: high\n\
         \n\
         # Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>\
         <|start|>developer<|message|># Instructions\n\nUse a friendly tone.\n\n<|end|>\
         <|start|>user<|message|>What is the weather like in SF?<|end|><|start|>assistant"
    );
}

#[test]
fn the_first_published_template_renders_the_docs_text_exactly() {
    // That revision writes the function-call line and no blank line after the instructions:
    // docs/format.md's system and developer messages character for character.
    let first = include_str!("data/chat/gpt-oss-20b-first.jinja");
    let options = TemplateOptions { reasoning_effort: Some("high".into()), now: Some(NOW), tools: None };
    let messages = [
        Message::new("system", "Use a friendly tone."),
        Message::new("user", "What is the weather like in SF?"),
    ];
    let text = chat::render_with_options(first, &messages, "", "", true, &options).unwrap();
    assert_eq!(
        text,
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n\
         Knowledge cutoff: 2024-06\n\
         Current date: 2025-06-28\n\
         \n\
         Reasoning: high\n\
         \n\
         # Valid channels: analysis, commentary, final. Channel must be included for every message.\n\
         Calls to these tools must go to the commentary channel: 'functions'.<|end|>\
         <|start|>developer<|message|># Instructions\n\nUse a friendly tone.<|end|>\
         <|start|>user<|message|>What is the weather like in SF?<|end|><|start|>assistant"
    );
}

#[test]
fn our_renderer_writes_what_the_template_writes() {
    let conversations: Vec<Vec<Message>> = vec![
        vec![Message::new("user", "Hi")],
        vec![Message::new("system", "Be brief."), Message::new("user", "Hi")],
        vec![Message::new("system", ""), Message::new("user", "Hi")],
        vec![
            Message::new("system", "Answer in French.\nAlways."),
            Message::new("user", "What is 2 + 2?"),
            Message::new("assistant", "2 + 2 = 4."),
            Message::new("user", "And 9 / 2?"),
        ],
        vec![
            Message::new("user", "First"),
            Message::new("assistant", "One"),
            Message::new("user", "Second ☃"),
            Message::new("assistant", "Two"),
            Message::new("user", "Third"),
        ],
    ];
    for messages in &conversations {
        for effort in
            [None, Some(ReasoningEffort::Low), Some(ReasoningEffort::Medium), Some(ReasoningEffort::High)]
        {
            assert_eq!(ours(messages, effort), template(messages, effort), "{messages:?}, {effort:?}");
        }
    }
    // Earlier assistant turns go back as their final message, closed by <|end|>.
    let text = template(&conversations[3], None);
    assert!(text.contains("<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|end|><|start|>user"));
    assert!(text.contains("Reasoning: medium\n"), "the template's default effort");
}

#[test]
fn our_renderer_writes_tools_calls_and_results_as_the_template_does() {
    let tools = serde_json::json!([
        {"type": "function", "function": {
            "name": "get_current_weather",
            "description": "Gets the current weather in the provided location.",
            "parameters": {"type": "object", "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "format": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
                "days": {"type": "integer", "default": 3},
                "tags": {"type": "array", "items": {"type": "string"}, "nullable": true},
                "exact": {"type": "boolean"},
            }, "required": ["location"]},
        }},
        {"type": "function", "function": {"name": "get_time", "description": "Gets the time."}},
    ]);
    let tools = tools.as_array().unwrap();
    let mut call = Message::new("assistant", "");
    call.thinking = Some("Need to use function get_current_weather.".into());
    call.tool_calls = Some(serde_json::json!([{"id": "call_1", "type": "function",
        "function": {"name": "get_current_weather", "arguments": {"location": "San Francisco"}}}]));
    let result = Message::new("tool", "{\"sunny\": true, \"temperature\": 20}");
    let conversations: Vec<Vec<Message>> = vec![
        vec![Message::new("user", "What is the weather like in SF?")],
        vec![Message::new("user", "What is the weather like in SF?"), call.clone(), result.clone()],
        // The reasoning before a call is dropped once a later turn has answered.
        vec![
            Message::new("system", "Be brief."),
            Message::new("user", "What is the weather like in SF?"),
            call.clone(),
            result.clone(),
            Message::new("assistant", "Sunny, 20 degrees."),
            Message::new("user", "Thanks"),
        ],
    ];
    for messages in &conversations {
        let options = TemplateOptions {
            reasoning_effort: None,
            now: Some(NOW),
            tools: Some(serde_json::Value::Array(tools.clone())),
        };
        let theirs = chat::render_with_options(TEMPLATE, messages, "", "", true, &options).unwrap();
        let system = SystemContent::new("2025-06-28", ReasoningEffort::Medium);
        let ours = harmony::render_prompt(messages, &system, Some(tools)).unwrap();
        assert_eq!(ours, theirs, "{messages:?}");
    }
    let text = harmony::render_prompt(
        &conversations[1],
        &SystemContent::new("2025-06-28", ReasoningEffort::Medium),
        Some(tools),
    )
    .unwrap();
    assert!(text.contains("type get_time = () => any;"), "{text}");
    assert!(text.contains("<|channel|>analysis<|message|>Need to use function get_current_weather.<|end|>"));
    assert!(
        text.contains("<|start|>functions.get_current_weather to=assistant<|channel|>commentary<|message|>")
    );
    // A tool result with no call before it is refused, not dropped.
    let orphan = [Message::new("user", "Hi"), result];
    let error =
        harmony::render_prompt(&orphan, &SystemContent::new("2025-06-28", ReasoningEffort::Medium), None);
    assert!(matches!(error, Err(harmony::HarmonyError::ToolResultWithoutCall(1))), "{error:?}");
}

#[test]
fn the_template_refuses_channel_tags_in_content() {
    let messages = [
        Message::new("user", "Hi"),
        Message::new("assistant", "<|channel|>final<|message|>x"),
        Message::new("user", "?"),
    ];
    let options = TemplateOptions { now: Some(NOW), ..TemplateOptions::default() };
    let error = chat::render_with_options(TEMPLATE, &messages, "", "", true, &options).unwrap_err();
    assert!(error.to_string().contains("thinking"), "{error}");
    assert!(
        harmony::render_prompt(&messages, &SystemContent::new("2025-06-28", ReasoningEffort::Medium), None)
            .is_err()
    );
}

#[test]
fn strftime_now_formats_the_given_time() {
    assert_eq!(chat::strftime("%Y-%m-%d %H:%M:%S", NOW), "2025-06-28 13:02:03");
    assert_eq!(chat::strftime("%d %b %Y, %A %j %%", NOW), "28 Jun 2025, Saturday 179 %");
}

#[test]
fn the_parser_reads_o200k_harmony_tokens() {
    let bpe = tiktoken_rs::o200k_harmony().unwrap();
    // The special tokens' ids in tiktoken's encoding are the ones the parser is given.
    let t = SpecialTokens::O200K_HARMONY;
    for (text, id) in [
        ("<|start|>", t.start),
        ("<|end|>", t.end),
        ("<|message|>", t.message),
        ("<|channel|>", t.channel),
        ("<|constrain|>", t.constrain),
        ("<|return|>", t.return_),
        ("<|call|>", t.call),
    ] {
        assert_eq!(bpe.encode_with_special_tokens(text), [id], "{text}");
    }
    // The token stream of the harmony docs' StreamableParser example.
    let ids: [u32; 36] = [
        200005, 35644, 200008, 1844, 31064, 25, 392, 4827, 382, 220, 17, 659, 220, 17, 16842, 12295, 81645,
        13, 51441, 6052, 13, 200007, 200006, 173781, 200005, 17196, 200008, 17, 659, 220, 17, 314, 220, 19,
        13, 200002,
    ];
    let mut parser = harmony::Parser::new(t);
    let mut messages: Vec<(String, String)> = Vec::new();
    let mut stop = None;
    for id in ids {
        let bytes = bpe.decode_bytes(&[id]).unwrap();
        for event in parser.push(id, &bytes) {
            match event {
                Event::Message { channel, .. } => messages.push((channel, String::new())),
                Event::Text(text) => messages.last_mut().unwrap().1 += &text,
                Event::Stop(s) => stop = Some(s),
                Event::End => {}
                Event::Unframed { bytes } => panic!("a framed reply reported {bytes} unframed bytes"),
            }
        }
    }
    assert_eq!(
        messages,
        [
            (
                "analysis".to_string(),
                "User asks: \"What is 2 + 2?\" Simple arithmetic. Provide answer.".to_string()
            ),
            ("final".to_string(), "2 + 2 = 4.".to_string()),
        ]
    );
    assert_eq!(stop, Some(Stop::Return));
    assert_eq!(parser.final_text(), "2 + 2 = 4.");
    // And the rendered prompt tokenizes with each special token as one token.
    let prompt = template(&[Message::new("user", "What is 2 + 2?")], None);
    let tokens = bpe.encode_with_special_tokens(&prompt);
    assert_eq!(tokens.iter().filter(|&&id| id == t.start).count(), 3);
    assert_eq!(tokens.last(), Some(&173781), "ends with <|start|>assistant");
}
