//! OpenAI's harmony format, which gpt-oss was trained on (github.com/openai/harmony, docs/format.md).
//!
//! A message is `<|start|>{header}<|message|>{content}<|end|>`; the header is the role, then
//! optionally `<|channel|>{channel}`, a recipient `to={name}` (in the role or the channel part)
//! and a content type (`<|constrain|>json`). The prompt is a system message (model identity,
//! knowledge cutoff, current date, reasoning effort, valid channels), an optional developer
//! message (`# Instructions`, what other formats call the system prompt), then user and assistant
//! turns, and ends with `<|start|>assistant`. The model answers with messages of its own: its
//! reasoning on the `analysis` channel, the answer on `final`, preambles and tool calls on
//! `commentary`. It ends with `<|return|>` (done) or `<|call|>` (a tool call to run); `<|end|>`
//! only separates its messages. Earlier turns go back into the prompt as their final message
//! closed by `<|end|>`, the reasoning dropped.
//!
//! The engine renders gpt-oss prompts with the model's own chat template (`crate::chat`); the
//! renderer here writes the same text (the tests hold the two together) and serves when a file
//! has no template or one that minijinja cannot render.

use crate::chat::Message;
use crate::generate::Utf8Stream;
use crate::tokenizer::Tokenizer;
use std::io::Write;

pub mod tools;

pub const START: &str = "<|start|>";
pub const END: &str = "<|end|>";
pub const MESSAGE: &str = "<|message|>";
pub const CHANNEL: &str = "<|channel|>";
pub const CONSTRAIN: &str = "<|constrain|>";
pub const RETURN: &str = "<|return|>";
pub const CALL: &str = "<|call|>";

/// The identity the harmony docs say the system message should always carry (a different
/// persona belongs in the developer message).
pub const MODEL_IDENTITY: &str = "You are ChatGPT, a large language model trained by OpenAI.";
/// gpt-oss's knowledge cutoff as its chat template and the harmony docs write it.
pub const KNOWLEDGE_CUTOFF: &str = "2024-06";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReasoningEffort {
    Low,
    #[default]
    Medium,
    High,
}

impl ReasoningEffort {
    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningEffort::Low => "low",
            ReasoningEffort::Medium => "medium",
            ReasoningEffort::High => "high",
        }
    }
}

/// What the system message says.
#[derive(Debug, Clone)]
pub struct SystemContent {
    pub model_identity: String,
    pub knowledge_cutoff: String,
    /// `YYYY-MM-DD`.
    pub current_date: String,
    pub reasoning_effort: ReasoningEffort,
}

impl SystemContent {
    pub fn new(current_date: impl Into<String>, reasoning_effort: ReasoningEffort) -> Self {
        SystemContent {
            model_identity: MODEL_IDENTITY.to_string(),
            knowledge_cutoff: KNOWLEDGE_CUTOFF.to_string(),
            current_date: current_date.into(),
            reasoning_effort,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HarmonyError {
    #[error("harmony: a tool message (messages[{0}]) must follow an assistant message with tool_calls")]
    ToolResultWithoutCall(usize),
    #[error("harmony: an assistant message's content holds channel tags; pass the final text only")]
    ChannelTagsInContent,
    #[error(
        "harmony: an assistant message with tool calls (messages[{0}]) has both content and reasoning; the analysis message is one or the other"
    )]
    ContentAndReasoningWithToolCalls(usize),
}

/// The prompt for the assistant's next turn, as gpt-oss's chat template (its revision of
/// 2025-08-08, `engine/tests/data/chat/`) writes it: the system message; a developer message
/// from a first `system` or `developer` message and the `tools` (the `functions` namespace,
/// [`tools`]); user turns; earlier assistant turns as their final message (reasoning dropped);
/// an assistant turn with tool calls as its reasoning on the analysis channel (unless a later
/// assistant turn answered) then each call as `commentary` to `functions.NAME`, ended by
/// `<|call|>`; and each tool result as a message from `functions.NAME` to the assistant.
/// Later `system`/`developer` messages are left out, as the template does. Where the template
/// writes only an assistant message's first tool call, this writes every one, and the tool
/// results after it take the calls' names in order.
pub fn render_prompt(
    messages: &[Message],
    system: &SystemContent,
    tools: Option<&[serde_json::Value]>,
) -> Result<String, HarmonyError> {
    let tools = tools.filter(|t| !t.is_empty());
    let mut out = String::new();
    out += START;
    out += "system";
    out += MESSAGE;
    out += &system.model_identity;
    out += "\nKnowledge cutoff: ";
    out += &system.knowledge_cutoff;
    out += "\nCurrent date: ";
    out += &system.current_date;
    out += "\n\nReasoning: ";
    out += system.reasoning_effort.as_str();
    out += "\n\n# Valid channels: analysis, commentary, final. Channel must be included for every message.";
    if tools.is_some() {
        out += "\nCalls to these tools must go to the commentary channel: 'functions'.";
    }
    out += END;
    let (instructions, turns) = match messages.first() {
        Some(m) if m.role == "system" || m.role == "developer" => (m.content.as_str(), &messages[1..]),
        _ => ("", messages),
    };
    let first_turn = messages.len() - turns.len();
    if !instructions.is_empty() || tools.is_some() {
        out += START;
        out += "developer";
        out += MESSAGE;
        if !instructions.is_empty() {
            out += "# Instructions\n\n";
            out += instructions;
            // The template's current revision ends the instructions with a blank line.
            out += "\n\n";
        }
        if let Some(tools) = tools {
            out += "# Tools\n\n";
            out += &tools::namespace(tools);
        }
        out += END;
    }
    let tagged = |text: &str| {
        [CHANNEL.to_string() + "analysis" + MESSAGE, CHANNEL.to_string() + "final" + MESSAGE]
            .iter()
            .any(|tag| text.contains(tag.as_str()))
    };
    // The names of the last assistant turn's calls, and how many results have answered them.
    let mut calls: Vec<String> = Vec::new();
    let mut answered = 0;
    for (i, m) in turns.iter().enumerate() {
        match m.role.as_str() {
            "user" => {
                out += START;
                out += "user";
                out += MESSAGE;
                out += &m.content;
                out += END;
            }
            "assistant" => {
                let thinking = m.thinking.as_deref().unwrap_or_default();
                if tagged(&m.content) || tagged(thinking) {
                    return Err(HarmonyError::ChannelTagsInContent);
                }
                let tool_calls = m.tool_calls.as_ref().and_then(|c| c.as_array()).filter(|c| !c.is_empty());
                let Some(tool_calls) = tool_calls else {
                    out += START;
                    out += "assistant";
                    out += CHANNEL;
                    out += "final";
                    out += MESSAGE;
                    out += &m.content;
                    out += END;
                    calls.clear();
                    continue;
                };
                if !m.content.is_empty() && !thinking.is_empty() {
                    return Err(HarmonyError::ContentAndReasoningWithToolCalls(first_turn + i));
                }
                // The reasoning that led to the calls stays unless a later turn answered.
                let answered_later = turns[i + 1..]
                    .iter()
                    .any(|later| later.role == "assistant" && later.tool_calls.is_none());
                let analysis = if m.content.is_empty() { thinking } else { &m.content };
                if !analysis.is_empty() && !answered_later {
                    out += START;
                    out += "assistant";
                    out += CHANNEL;
                    out += "analysis";
                    out += MESSAGE;
                    out += analysis;
                    out += END;
                }
                calls.clear();
                answered = 0;
                for call in tool_calls {
                    let function = call.get("function").unwrap_or(call);
                    let name = function.get("name").and_then(|n| n.as_str()).unwrap_or_default();
                    let content_type =
                        function.get("content_type").and_then(|t| t.as_str()).unwrap_or("json");
                    out += START;
                    out += "assistant to=functions.";
                    out += name;
                    out += CHANNEL;
                    out += "commentary ";
                    out += content_type;
                    out += MESSAGE;
                    crate::chat::python_json(
                        function.get("arguments").unwrap_or(&serde_json::Value::Null),
                        &mut out,
                    );
                    out += CALL;
                    calls.push(name.to_string());
                }
            }
            "tool" => {
                let Some(name) = calls.get(answered).or(calls.last()) else {
                    return Err(HarmonyError::ToolResultWithoutCall(first_turn + i));
                };
                out += START;
                out += "functions.";
                out += name;
                out += " to=assistant";
                out += CHANNEL;
                out += "commentary";
                out += MESSAGE;
                crate::chat::python_json(&serde_json::Value::String(m.content.clone()), &mut out);
                out += END;
                answered += 1;
            }
            _ => {}
        }
    }
    out += START;
    out += "assistant";
    Ok(out)
}

/// The ids of harmony's special tokens in a vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    pub start: u32,
    pub end: u32,
    pub message: u32,
    pub channel: u32,
    pub constrain: u32,
    pub return_: u32,
    pub call: u32,
}

impl SpecialTokens {
    /// The ids o200k_harmony (gpt-oss's vocabulary) gives them.
    pub const O200K_HARMONY: SpecialTokens = SpecialTokens {
        start: 200006,
        end: 200007,
        message: 200008,
        channel: 200005,
        constrain: 200003,
        return_: 200002,
        call: 200012,
    };

    /// The ids in `tokenizer`'s vocabulary; `None` when it lacks any of them (not a harmony model).
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Option<Self> {
        let id = |text: &str| tokenizer.token_to_id(text);
        Some(SpecialTokens {
            start: id(START)?,
            end: id(END)?,
            message: id(MESSAGE)?,
            channel: id(CHANNEL)?,
            constrain: id(CONSTRAIN)?,
            return_: id(RETURN)?,
            call: id(CALL)?,
        })
    }

    /// The tokens that end the assistant's turn: `<|return|>` (done) and `<|call|>` (a tool call).
    /// `<|end|>` is not one: it closes one message and the model goes on with the next.
    pub fn stop_tokens(&self) -> [u32; 2] {
        [self.return_, self.call]
    }
}

/// What the parser sees in the assistant's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message's header is complete and its content begins.
    Message { channel: String, recipient: Option<String>, content_type: Option<String> },
    /// Content of the current message (complete UTF-8; a character split across tokens waits
    /// for its last byte).
    Text(String),
    /// The current message ended (`<|end|>`, `<|return|>` or `<|call|>`).
    End,
    /// The turn is over: `<|return|>` or `<|call|>`.
    Stop(Stop),
    /// The reply ended inside a header: `bytes` of header text and no `<|message|>` (a model that
    /// does not speak harmony, such as a synthetic one, writes this).
    Unframed { bytes: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Return,
    Call,
}

/// The header as it arrives: the role part (after `<|start|>`), then the parts after
/// `<|channel|>` and `<|constrain|>`.
#[derive(Debug, Default)]
struct Header {
    role: Vec<u8>,
    channel: Vec<u8>,
    constrain: Vec<u8>,
    part: HeaderPart,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum HeaderPart {
    #[default]
    Role,
    Channel,
    Constrain,
}

#[derive(Debug)]
enum State {
    Header(Header),
    Content(Utf8Stream),
    /// Between messages: waiting for `<|start|>`.
    Between,
    Done,
}

/// A streaming parser of the assistant's output into messages and channels, fed one token at
/// a time. It starts after the prompt's `<|start|>assistant`, in the first message's header.
pub struct Parser {
    tokens: SpecialTokens,
    state: State,
    /// Header text the model wrote since the last `<|message|>` (or the start).
    header_bytes: usize,
    channel: Option<String>,
    recipient: Option<String>,
    /// The recipient of the last message read (kept after it ends).
    last_recipient: Option<String>,
    final_text: String,
}

impl Parser {
    pub fn new(tokens: SpecialTokens) -> Self {
        let header = Header { role: b"assistant".to_vec(), ..Header::default() };
        Parser {
            tokens,
            state: State::Header(header),
            header_bytes: 0,
            channel: None,
            recipient: None,
            last_recipient: None,
            final_text: String::new(),
        }
    }

    /// The channel of the message being read (`None` before its header is complete).
    pub fn channel(&self) -> Option<&str> {
        matches!(self.state, State::Content(_)).then_some(self.channel.as_deref()).flatten()
    }

    /// The recipient of the message being read, if it is addressed (a tool call).
    pub fn recipient(&self) -> Option<&str> {
        matches!(self.state, State::Content(_)).then_some(self.recipient.as_deref()).flatten()
    }

    /// The text of the `final` messages so far: what goes back into the prompt next turn.
    pub fn final_text(&self) -> &str {
        &self.final_text
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Takes token `id`, whose text is `bytes` (ignored for harmony's special tokens).
    pub fn push(&mut self, id: u32, bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        let t = self.tokens;
        match &mut self.state {
            State::Done => {}
            State::Header(header) => {
                if id == t.channel {
                    header.part = HeaderPart::Channel;
                } else if id == t.constrain {
                    header.part = HeaderPart::Constrain;
                } else if id == t.message {
                    self.header_bytes = 0;
                    let header = std::mem::take(header);
                    let event = self.begin(header);
                    events.push(event);
                } else if id == t.start {
                    // A header abandoned before its content: start over.
                    *header = Header::default();
                } else if id == t.end || id == t.return_ || id == t.call {
                    // A message with a header and no content.
                    self.close(id, &mut events);
                } else {
                    self.header_bytes += bytes.len();
                    match header.part {
                        HeaderPart::Role => header.role.extend_from_slice(bytes),
                        HeaderPart::Channel => header.channel.extend_from_slice(bytes),
                        HeaderPart::Constrain => header.constrain.extend_from_slice(bytes),
                    }
                }
            }
            State::Content(stream) => {
                if id == t.end || id == t.return_ || id == t.call {
                    let rest = stream.finish();
                    self.text(rest, &mut events);
                    self.close(id, &mut events);
                } else if id == t.start {
                    // The model began a new message without closing this one.
                    let rest = stream.finish();
                    self.text(rest, &mut events);
                    events.push(Event::End);
                    self.state = State::Header(Header::default());
                } else if id == t.message || id == t.channel || id == t.constrain {
                    // Header tokens inside content carry no text; leave them out.
                } else {
                    let text = stream.push(bytes);
                    self.text(text, &mut events);
                }
            }
            State::Between => {
                if id == t.start {
                    self.state = State::Header(Header::default());
                } else if id == t.return_ || id == t.call {
                    self.close(id, &mut events);
                } else if id == t.channel {
                    // `<|start|>` left out: read a header whose role is unsaid.
                    self.state = State::Header(Header { part: HeaderPart::Channel, ..Header::default() });
                }
                // Any other text between messages belongs to no message.
            }
        }
        events
    }

    /// Ends the stream (the token limit or the context ran out): flushes an unfinished character.
    pub fn finish(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        match &mut self.state {
            State::Content(stream) => {
                let rest = stream.finish();
                self.text(rest, &mut events);
                events.push(Event::End);
            }
            State::Header(_) if self.header_bytes > 0 => {
                events.push(Event::Unframed { bytes: self.header_bytes });
            }
            State::Header(_) | State::Between | State::Done => {}
        }
        self.state = State::Done;
        events
    }

    fn begin(&mut self, header: Header) -> Event {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let (role, channel, constrain) = (text(&header.role), text(&header.channel), text(&header.constrain));
        let mut recipient = None;
        let mut name = None;
        let mut content_type = None;
        for word in role.split_whitespace().skip(1).chain(channel.split_whitespace()) {
            if let Some(to) = word.strip_prefix("to=") {
                recipient = Some(to.to_string());
            } else if name.is_none() {
                name = Some(word.to_string());
            } else {
                content_type = Some(word.to_string());
            }
        }
        if let Some(c) = constrain.split_whitespace().next() {
            content_type = Some(c.to_string());
        }
        // No channel named: harmony requires one, so this is the model going off format; its
        // text is the answer as far as anyone can tell.
        let channel = name.unwrap_or_else(|| "final".to_string());
        self.channel = Some(channel.clone());
        self.recipient = recipient.clone();
        self.last_recipient = recipient.clone();
        self.state = State::Content(Utf8Stream::default());
        Event::Message { channel, recipient, content_type }
    }

    fn text(&mut self, text: String, events: &mut Vec<Event>) {
        if text.is_empty() {
            return;
        }
        if self.channel.as_deref() == Some("final") && self.recipient.is_none() {
            self.final_text.push_str(&text);
        }
        events.push(Event::Text(text));
    }

    fn close(&mut self, id: u32, events: &mut Vec<Event>) {
        events.push(Event::End);
        self.state = if id == self.tokens.return_ {
            events.push(Event::Stop(Stop::Return));
            State::Done
        } else if id == self.tokens.call {
            events.push(Event::Stop(Stop::Call));
            State::Done
        } else {
            State::Between
        };
    }
}

/// A harmony reply on its way to the reader: the answer (`final`, and preambles, which are
/// `commentary` with no recipient) to `answer_out` through the `--stop` strings, the reasoning
/// (`analysis`) to `reasoning_out` when `show_reasoning`, tool calls nowhere. Write errors are
/// ignored (a reader that went away stops nothing).
pub struct Reply<A: Write, R: Write> {
    parser: Parser,
    stops: crate::sampler::StopStrings,
    show_reasoning: bool,
    answer_out: A,
    reasoning_out: R,
    /// (channel, recipient) of the message being read.
    current: Option<(String, Option<String>)>,
    answer: String,
    stopped: bool,
    called: Option<String>,
}

impl<A: Write, R: Write> Reply<A, R> {
    pub fn new(
        tokens: SpecialTokens,
        stop_strings: Vec<String>,
        show_reasoning: bool,
        answer_out: A,
        reasoning_out: R,
    ) -> Self {
        Reply {
            parser: Parser::new(tokens),
            stops: crate::sampler::StopStrings::new(stop_strings),
            show_reasoning,
            answer_out,
            reasoning_out,
            current: None,
            answer: String::new(),
            stopped: false,
            called: None,
        }
    }

    /// Takes a generated token; false once a stop string ended the answer.
    pub fn push(&mut self, id: u32, bytes: &[u8]) -> bool {
        let events = self.parser.push(id, bytes);
        self.show(events);
        !self.stopped
    }

    /// Ends the reply; `last` is the last generated token (the stop token, when one ended it;
    /// the generation loop does not pass those to [`Self::push`]). Returns the recipient when
    /// the model ended on a tool call.
    pub fn finish(&mut self, last: Option<u32>) -> Option<String> {
        if let Some(last) = last.filter(|t| self.parser.tokens.stop_tokens().contains(t)) {
            let events = self.parser.push(last, b"");
            self.show(events);
        }
        let events = self.parser.finish();
        self.show(events);
        if !self.stopped {
            let rest = self.stops.finish();
            self.answer.push_str(&rest);
            let _ = write!(self.answer_out, "{rest}");
        }
        let _ = self.answer_out.flush();
        self.called.take()
    }

    /// The answer shown so far.
    pub fn answer(&self) -> &str {
        &self.answer
    }

    fn show(&mut self, events: Vec<Event>) {
        for event in events {
            match event {
                Event::Message { channel, recipient, .. } => {
                    if channel == "analysis" && recipient.is_none() && self.show_reasoning {
                        let _ = write!(self.reasoning_out, "[reasoning] ");
                    }
                    self.current = Some((channel, recipient));
                }
                Event::Text(text) => match &self.current {
                    Some((channel, None))
                        if (channel == "final" || channel == "commentary") && !self.stopped =>
                    {
                        let out = self.stops.push(&text);
                        self.answer.push_str(&out.emit);
                        let _ = write!(self.answer_out, "{}", out.emit);
                        let _ = self.answer_out.flush();
                        self.stopped = out.stopped;
                    }
                    Some((channel, None)) if channel == "analysis" && self.show_reasoning => {
                        let _ = write!(self.reasoning_out, "{text}");
                        let _ = self.reasoning_out.flush();
                    }
                    _ => {}
                },
                Event::End => {
                    if let Some((channel, None)) = &self.current
                        && channel == "analysis"
                        && self.show_reasoning
                    {
                        let _ = writeln!(self.reasoning_out);
                    }
                    self.current = None;
                }
                Event::Stop(Stop::Call) => {
                    self.called = Some(self.parser.last_recipient.clone().unwrap_or_default());
                }
                Event::Stop(Stop::Return) => {}
                Event::Unframed { bytes } => {
                    let _ = writeln!(
                        self.reasoning_out,
                        "[the reply is not harmony: {bytes} bytes of header text and no <|message|>, so nothing to show]"
                    );
                }
            }
        }
    }
}

/// Today's date (UTC) as `YYYY-MM-DD`.
pub fn today() -> String {
    let (y, m, d, ..) = civil_now();
    format!("{y:04}-{m:02}-{d:02}")
}

/// (year, month, day, hour, minute, second) of now, UTC.
pub fn civil_now() -> (i64, u32, u32, u32, u32, u32) {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    civil_from_unix(seconds)
}

/// (year, month, day, hour, minute, second) of a Unix time, UTC (Howard Hinnant's
/// days-to-civil algorithm).
pub fn civil_from_unix(seconds: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: SpecialTokens = SpecialTokens::O200K_HARMONY;

    /// Splits text into tokens: harmony's special tokens by their ids, other text in pieces of
    /// at most `piece` bytes (cutting through UTF-8 characters), with id 0.
    fn tokens(text: &str, piece: usize) -> Vec<(u32, Vec<u8>)> {
        let specials = [
            (START, T.start),
            (END, T.end),
            (MESSAGE, T.message),
            (CHANNEL, T.channel),
            (CONSTRAIN, T.constrain),
            (RETURN, T.return_),
            (CALL, T.call),
        ];
        let mut out = Vec::new();
        let mut rest = text.as_bytes();
        let mut plain = Vec::new();
        while !rest.is_empty() {
            if let Some(&(s, id)) = specials.iter().find(|(s, _)| rest.starts_with(s.as_bytes())) {
                out.extend(plain.chunks(piece).map(|c: &[u8]| (0, c.to_vec())));
                plain.clear();
                out.push((id, s.as_bytes().to_vec()));
                rest = &rest[s.len()..];
            } else {
                plain.push(rest[0]);
                rest = &rest[1..];
            }
        }
        out.extend(plain.chunks(piece).map(|c: &[u8]| (0, c.to_vec())));
        out
    }

    /// (channel, recipient, text) of a message.
    type Parsed = (String, Option<String>, String);

    /// Each message, how the turn ended, and the final text.
    fn parse(text: &str, piece: usize) -> (Vec<Parsed>, Option<Stop>, String) {
        let mut parser = Parser::new(T);
        let mut messages: Vec<Parsed> = Vec::new();
        let mut stop = None;
        let mut events = Vec::new();
        for (id, bytes) in tokens(text, piece) {
            events.extend(parser.push(id, &bytes));
        }
        events.extend(parser.finish());
        for e in events {
            match e {
                Event::Message { channel, recipient, .. } => {
                    messages.push((channel, recipient, String::new()))
                }
                Event::Text(t) => messages.last_mut().unwrap().2.push_str(&t),
                Event::End => {}
                Event::Stop(s) => stop = Some(s),
                Event::Unframed { .. } => {}
            }
        }
        (messages, stop, parser.final_text().to_string())
    }

    fn m(channel: &str, text: &str) -> Parsed {
        (channel.to_string(), None, text.to_string())
    }

    #[test]
    fn reasoning_then_answer_in_any_split() {
        // The harmony docs' example output.
        let output = "<|channel|>analysis<|message|>User asks: \"What is 2 + 2?\" Simple arithmetic. \
                      Provide answer.<|end|><|start|>assistant<|channel|>final<|message|>2 + 2 = 4 ☃ é.<|return|>";
        for piece in [1, 2, 3, 5, 1000] {
            let (messages, stop, final_text) = parse(output, piece);
            assert_eq!(
                messages,
                [
                    m("analysis", "User asks: \"What is 2 + 2?\" Simple arithmetic. Provide answer."),
                    m("final", "2 + 2 = 4 ☃ é.")
                ],
                "pieces of {piece} bytes"
            );
            assert_eq!(stop, Some(Stop::Return));
            assert_eq!(final_text, "2 + 2 = 4 ☃ é.");
        }
    }

    #[test]
    fn tool_calls_name_their_recipient_and_end_with_call() {
        for output in [
            "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"x\":1}<|call|>",
            " to=functions.get_weather<|channel|>commentary json<|message|>{\"x\":1}<|call|>",
        ] {
            let mut parser = Parser::new(T);
            let mut events = Vec::new();
            for (id, bytes) in tokens(output, 2) {
                events.extend(parser.push(id, &bytes));
            }
            assert_eq!(
                events[0],
                Event::Message {
                    channel: "commentary".into(),
                    recipient: Some("functions.get_weather".into()),
                    content_type: Some("json".into())
                }
            );
            assert_eq!(events.last(), Some(&Event::Stop(Stop::Call)));
            assert!(parser.is_done());
            assert_eq!(parser.final_text(), "");
        }
    }

    #[test]
    fn a_reply_without_a_message_is_reported_as_unframed() {
        // Noise from a model that does not speak harmony: header text, never <|message|>.
        let mut parser = Parser::new(T);
        let mut events = Vec::new();
        for (id, bytes) in tokens("random words<|channel|>more", 3) {
            events.extend(parser.push(id, &bytes));
        }
        events.extend(parser.finish());
        assert_eq!(events, [Event::Unframed { bytes: 16 }]);
        // A reply that framed its message, or wrote nothing, is not.
        let (messages, ..) = parse("<|channel|>final<|message|>hi", 2);
        assert_eq!(messages, [m("final", "hi")]);
        let mut parser = Parser::new(T);
        assert!(parser.finish().is_empty());
        // Reply shows the note on the reasoning stream, the answer stream stays empty.
        let (mut answer, mut reasoning) = (Vec::new(), Vec::new());
        {
            let mut reply = Reply::new(T, Vec::new(), false, &mut answer, &mut reasoning);
            for (id, bytes) in tokens("noise", 2) {
                reply.push(id, &bytes);
            }
            reply.finish(None);
        }
        assert!(answer.is_empty());
        assert!(String::from_utf8(reasoning).unwrap().contains("5 bytes of header text and no <|message|>"));
    }

    #[test]
    fn a_partial_stream_ends_cleanly() {
        // Cut off mid-reasoning, with a character's first byte pending.
        let mut parser = Parser::new(T);
        let mut text = String::new();
        for (id, bytes) in tokens("<|channel|>analysis<|message|>thinking ", 1) {
            for e in parser.push(id, &bytes) {
                if let Event::Text(t) = e {
                    text += &t;
                }
            }
        }
        assert!(parser.push(0, &"☃".as_bytes()[..1]).is_empty());
        assert_eq!(parser.channel(), Some("analysis"));
        assert_eq!(text, "thinking ");
        assert_eq!(parser.finish(), [Event::Text("\u{fffd}".into()), Event::End]);
        // Nothing after the end counts.
        assert!(parser.push(T.start, b"").is_empty());
        // Cut off inside a header: no message at all.
        let (messages, stop, _) = parse("<|channel|>anal", 1);
        assert!(messages.is_empty() && stop.is_none());
    }

    #[test]
    fn off_format_output_is_still_read() {
        // No channel at all: the text is taken as the answer.
        let (messages, stop, final_text) = parse("<|message|>hi<|return|>", 1);
        assert_eq!(messages, [m("final", "hi")]);
        assert_eq!((stop, final_text.as_str()), (Some(Stop::Return), "hi"));
        // A message never closed before the next one, and a new message without <|start|>.
        let (messages, ..) = parse(
            "<|channel|>analysis<|message|>a<|start|>assistant<|channel|>final<|message|>b<|end|><|channel|>final<|message|>c<|return|>",
            1,
        );
        assert_eq!(messages, [m("analysis", "a"), m("final", "b"), m("final", "c")]);
    }

    #[test]
    fn the_prompt_has_the_docs_system_message() {
        // docs/format.md's "Example system message" and "Developer message format", less the line
        // about function calls (no functions here) and with the template's blank line after the
        // instructions.
        let system = SystemContent::new("2025-06-28", ReasoningEffort::High);
        let prompt = render_prompt(
            &[Message::new("system", "Use a friendly tone."), Message::new("user", "What is 2 + 2?")],
            &system,
            None,
        )
        .unwrap();
        assert_eq!(
            prompt,
            "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n\
             Knowledge cutoff: 2024-06\nCurrent date: 2025-06-28\n\nReasoning: high\n\n\
             # Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>\
             <|start|>developer<|message|># Instructions\n\nUse a friendly tone.\n\n<|end|>\
             <|start|>user<|message|>What is 2 + 2?<|end|><|start|>assistant"
        );
        let error = render_prompt(
            &[Message::new("assistant", "<|channel|>analysis<|message|>x")],
            &SystemContent::new("2025-06-28", ReasoningEffort::Low),
            None,
        );
        assert!(matches!(error, Err(HarmonyError::ChannelTagsInContent)));
    }

    #[test]
    fn the_reply_shows_the_answer_and_hides_or_shows_the_reasoning() {
        let output = "<|channel|>analysis<|message|>Think ☃.<|end|><|start|>assistant<|channel|>commentary<|message|>Plan.<|end|>\
                      <|start|>assistant<|channel|>final<|message|>Answer: 4. STOP more<|return|>";
        for (show, stop) in [(false, vec![]), (true, vec![]), (true, vec!["STOP".to_string()])] {
            let (mut answer_out, mut reasoning_out) = (Vec::new(), Vec::new());
            let mut reply = Reply::new(T, stop.clone(), show, &mut answer_out, &mut reasoning_out);
            let mut last = None;
            for (id, bytes) in tokens(output, 2) {
                if T.stop_tokens().contains(&id) {
                    last = Some(id);
                    break;
                }
                if !reply.push(id, &bytes) {
                    break;
                }
            }
            assert_eq!(reply.finish(last), None);
            let answer = reply.answer().to_string();
            let expected = if stop.is_empty() { "Plan.Answer: 4. STOP more" } else { "Plan.Answer: 4. " };
            assert_eq!(answer, expected);
            assert_eq!(String::from_utf8(answer_out).unwrap(), expected);
            let reasoning = String::from_utf8(reasoning_out).unwrap();
            assert_eq!(reasoning, if show { "[reasoning] Think ☃.\n" } else { "" });
        }
        // A tool call is not shown, and its recipient is reported.
        let mut out = Vec::new();
        let mut reply = Reply::new(T, vec![], true, &mut out, std::io::sink());
        for (id, bytes) in tokens("<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}", 3) {
            reply.push(id, &bytes);
        }
        assert_eq!(reply.finish(Some(T.call)).as_deref(), Some("functions.f"));
        assert_eq!(reply.answer(), "");
        assert!(out.is_empty());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_unix(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil_from_unix(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil_from_unix(1_751_112_000 + 3_723), (2025, 6, 28, 13, 2, 3));
        assert_eq!(civil_from_unix(-1), (1969, 12, 31, 23, 59, 59));
    }
}
