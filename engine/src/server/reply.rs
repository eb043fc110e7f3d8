//! A choice's generated tokens turned into what the API returns: plain text for most models;
//! for harmony models (gpt-oss) the `analysis` channel as reasoning, `final` (and preambles,
//! `commentary` with no recipient) as content, and `commentary` addressed to `functions.NAME`
//! as a tool call whose arguments are the message's text. The same [`ReplyMapper`] serves the
//! streamed and the whole responses, and the tests feed it recorded token streams. A reply that
//! breaks the harmony framing (text with no `<|message|>`, ended by the token budget or by a
//! stop token) comes back as content, as written.

use crate::harmony::{self, SpecialTokens};

/// A piece of a reply, in the order it was generated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delta {
    Content(String),
    Reasoning(String),
    /// A tool call begins: its index among this reply's calls, its id and the function's name.
    ToolCall {
        index: usize,
        id: String,
        name: String,
    },
    /// More of the arguments of call `index`.
    ToolArguments {
        index: usize,
        text: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Content,
    Reasoning,
    Tool(usize),
    /// A message to a recipient that is not a function (a built-in tool): not shown.
    Nowhere,
}

enum Kind {
    Plain,
    Harmony {
        parser: Box<harmony::Parser>,
        target: Target,
        /// The raw text of the tokens since the last message began, for a reply that never
        /// opens one.
        unframed: Vec<u8>,
        /// Whether a message has begun (a header ended with `<|message|>`).
        framed: bool,
    },
}

pub struct ReplyMapper {
    kind: Kind,
    tool_calls: usize,
    /// The request id, to name the tool calls.
    call_prefix: String,
}

impl ReplyMapper {
    pub fn plain() -> Self {
        ReplyMapper { kind: Kind::Plain, tool_calls: 0, call_prefix: String::new() }
    }

    pub fn harmony(tokens: SpecialTokens, call_prefix: &str) -> Self {
        let kind = Kind::Harmony {
            parser: Box::new(harmony::Parser::new(tokens)),
            target: Target::Content,
            unframed: Vec::new(),
            framed: false,
        };
        ReplyMapper { kind, tool_calls: 0, call_prefix: call_prefix.to_string() }
    }

    /// How many tool calls the reply made.
    pub fn tool_calls(&self) -> usize {
        self.tool_calls
    }

    /// Takes token `token` whose text is `bytes` (the vocabulary's); `text` is the batcher's
    /// text for it (stop strings applied), which plain replies return as it is.
    pub fn push(&mut self, token: u32, bytes: &[u8], text: &str) -> Vec<Delta> {
        match &mut self.kind {
            Kind::Plain => Self::content(text),
            Kind::Harmony { parser, unframed, .. } => {
                unframed.extend_from_slice(bytes);
                let events = parser.push(token, bytes);
                self.harmony_events(events)
            }
        }
    }

    /// The reply ended; `held` is the batcher's held-back text.
    pub fn finish(&mut self, held: &str) -> Vec<Delta> {
        match &mut self.kind {
            Kind::Plain => Self::content(held),
            Kind::Harmony { parser, .. } => {
                let events = parser.finish();
                self.harmony_events(events)
            }
        }
    }

    fn content(text: &str) -> Vec<Delta> {
        if text.is_empty() { Vec::new() } else { vec![Delta::Content(text.to_string())] }
    }

    fn harmony_events(&mut self, events: Vec<harmony::Event>) -> Vec<Delta> {
        let mut deltas = Vec::new();
        for event in events {
            let Kind::Harmony { target, unframed, framed, .. } = &mut self.kind else { unreachable!() };
            match event {
                harmony::Event::Message { channel, recipient, .. } => {
                    *framed = true;
                    unframed.clear();
                    *target = match (channel.as_str(), recipient.as_deref()) {
                        (_, Some(to)) => match to.strip_prefix("functions.") {
                            Some(name) => {
                                let index = self.tool_calls;
                                self.tool_calls += 1;
                                let id = format!("call_{}_{index}", self.call_prefix);
                                deltas.push(Delta::ToolCall { index, id, name: name.to_string() });
                                Target::Tool(index)
                            }
                            None => Target::Nowhere,
                        },
                        ("analysis", None) => Target::Reasoning,
                        _ => Target::Content,
                    };
                }
                harmony::Event::Text(text) => match *target {
                    Target::Content => deltas.push(Delta::Content(text)),
                    Target::Reasoning => deltas.push(Delta::Reasoning(text)),
                    Target::Tool(index) => deltas.push(Delta::ToolArguments { index, text }),
                    Target::Nowhere => {}
                },
                harmony::Event::End => {
                    // A reply that ends its first "header" with a stop token never opened a
                    // message: its text is the answer, as written.
                    if !*framed && !unframed.is_empty() {
                        deltas.push(Delta::Content(String::from_utf8_lossy(unframed).into_owned()));
                    }
                    unframed.clear();
                    *target = Target::Content;
                }
                harmony::Event::Stop(_) => {}
                harmony::Event::Unframed { .. } => {
                    let text = String::from_utf8_lossy(unframed).into_owned();
                    unframed.clear();
                    // After a framed message, a header cut off by the budget is not text.
                    if !*framed && !text.is_empty() {
                        deltas.push(Delta::Content(text));
                    }
                }
            }
        }
        deltas
    }
}

/// A whole reply gathered from its deltas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gathered {
    pub content: String,
    pub reasoning: String,
    /// (id, name, arguments)
    pub tool_calls: Vec<(String, String, String)>,
}

impl Gathered {
    pub fn add(&mut self, delta: Delta) {
        match delta {
            Delta::Content(text) => self.content.push_str(&text),
            Delta::Reasoning(text) => self.reasoning.push_str(&text),
            Delta::ToolCall { id, name, .. } => self.tool_calls.push((id, name, String::new())),
            Delta::ToolArguments { index, text } => {
                if let Some(call) = self.tool_calls.get_mut(index) {
                    call.2.push_str(&text);
                }
            }
        }
    }
}
