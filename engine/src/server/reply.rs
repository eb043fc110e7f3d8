//! A choice's generated tokens turned into what the API returns: plain text for most models;
//! for a chat with tools on a model whose template asks for `<tool_call>` tags (Qwen2.5,
//! Hermes), the tagged calls as tool calls (`tool_tags.rs`);
//! for harmony models (gpt-oss) the `analysis` channel as reasoning, `final` (and preambles,
//! `commentary` with no recipient) as content, and `commentary` addressed to `functions.NAME`
//! as a tool call whose arguments are the message's text. The same [`ReplyMapper`] serves the
//! streamed and the whole responses, and the tests feed it recorded token streams. A reply that
//! breaks the harmony framing (text with no `<|message|>`, ended by the token budget or by a
//! stop token) comes back as content, as written.
//!
//! Stop strings are the batcher's: it matches them on the reply's whole text (headers included)
//! and releases text only once it cannot begin a stop string. The harmony parser reads exactly
//! the text the batcher released, so the stop text, and what follows it, is never returned, in
//! content, reasoning or a tool call's arguments alike.

use super::tool_tags::{Piece, ToolTags};
use crate::generate::Utf8Stream;
use crate::harmony::{self, SpecialTokens};
use std::collections::VecDeque;

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
    /// Text with tool calls in `<tool_call>` tags.
    Tagged(ToolTags),
    Harmony {
        parser: Box<harmony::Parser>,
        /// The reply's text decoded as the batcher decodes it (control tokens have none), so
        /// that what it released can be counted off against it.
        decoded: Utf8Stream,
        /// Tokens not yet given to the parser, each with its decoded text: they wait until the
        /// batcher has released that text.
        pending: VecDeque<(u32, String)>,
        /// Bytes of text the batcher released that the parser has not read yet.
        released: usize,
        /// The last token with text, to give the parser the decoder's last bytes at the end.
        last_text_token: Option<u32>,
        target: Target,
        /// The text the parser read since the last message began, for a reply that never opens
        /// one.
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

    /// Tool calls in `<tool_call>` tags, named after the request id `call_prefix`.
    pub fn tool_tags(call_prefix: &str) -> Self {
        ReplyMapper {
            kind: Kind::Tagged(ToolTags::default()),
            tool_calls: 0,
            call_prefix: call_prefix.to_string(),
        }
    }

    pub fn harmony(tokens: SpecialTokens, call_prefix: &str) -> Self {
        let kind = Kind::Harmony {
            parser: Box::new(harmony::Parser::new(tokens)),
            decoded: Utf8Stream::default(),
            pending: VecDeque::new(),
            released: 0,
            last_text_token: None,
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

    /// Takes token `token` whose text is `bytes` (the vocabulary's; none for a control token);
    /// `text` is what the batcher released with it (stop strings applied), which plain replies
    /// return as it is, tagged ones read for `<tool_call>` tags and harmony replies read through
    /// the parser.
    pub fn push(&mut self, token: u32, bytes: &[u8], text: &str) -> Vec<Delta> {
        let Kind::Harmony { decoded, pending, released, last_text_token, .. } = &mut self.kind else {
            return self.text(text, false);
        };
        pending.push_back((token, decoded.push(bytes)));
        if !bytes.is_empty() {
            *last_text_token = Some(token);
        }
        *released += text.len();
        let events = self.read_released();
        self.harmony_events(events)
    }

    /// The reply ended; `held` is the batcher's held-back text (none after a stop string). What
    /// the batcher never released (a stop string and what came with it) is dropped.
    pub fn finish(&mut self, held: &str) -> Vec<Delta> {
        let Kind::Harmony { decoded, pending, released, last_text_token, .. } = &mut self.kind else {
            return self.text(held, true);
        };
        let rest = decoded.finish();
        if let Some(token) = *last_text_token
            && !rest.is_empty()
        {
            pending.push_back((token, rest));
        }
        *released += held.len();
        let mut events = self.read_released();
        if let Kind::Harmony { parser, pending, .. } = &mut self.kind {
            pending.clear();
            events.extend(parser.finish());
        }
        self.harmony_events(events)
    }

    /// Gives the parser the pending tokens whose text the batcher has released (a token cut by
    /// a stop string: the released part of its text); its events.
    fn read_released(&mut self) -> Vec<harmony::Event> {
        let Kind::Harmony { parser, pending, released, unframed, .. } = &mut self.kind else {
            return Vec::new();
        };
        let mut events = Vec::new();
        let mut read = |token: u32, text: &str| {
            unframed.extend_from_slice(text.as_bytes());
            events.extend(parser.push(token, text.as_bytes()));
        };
        while let Some((token, text)) = pending.front_mut() {
            if text.len() > *released {
                if *released > 0 {
                    // The batcher's text is a prefix of the decoded text, so this is a character
                    // boundary; the rest waits (and is dropped if a stop string ended the reply).
                    let head: String = text.drain(..*released).collect();
                    *released = 0;
                    read(*token, &head);
                }
                break;
            }
            *released -= text.len();
            read(*token, text);
            pending.pop_front();
        }
        events
    }

    /// Released text of a plain or tagged reply (`last`: the reply's end).
    fn text(&mut self, text: &str, last: bool) -> Vec<Delta> {
        let Kind::Tagged(tags) = &mut self.kind else {
            return if text.is_empty() { Vec::new() } else { vec![Delta::Content(text.to_string())] };
        };
        let mut pieces = tags.push(text);
        if last {
            pieces.extend(tags.finish());
        }
        let mut deltas = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Content(text) => deltas.push(Delta::Content(text)),
                Piece::Call { name, arguments } => {
                    let index = self.tool_calls;
                    self.tool_calls += 1;
                    let id = format!("call_{}_{index}", self.call_prefix);
                    deltas.push(Delta::ToolCall { index, id, name });
                    deltas.push(Delta::ToolArguments { index, text: arguments });
                }
            }
        }
        deltas
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
