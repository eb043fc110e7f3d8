//! Tool calls written in the reply's text as Hermes-style tags, the way Qwen2.5's, Hermes' and
//! many other chat templates tell a model to call a function:
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! [`ToolTags`] reads the text as the batcher releases it (stop strings already applied) and
//! splits it into content and calls. Text that may be the start of `<tool_call>` is held until
//! it is clearly not; a call is given out whole when its closing tag arrives (name and
//! arguments, the arguments as JSON text, as OpenAI's API carries them). Whitespace between and
//! after calls is not content. A call whose body is not a JSON object with a string `name`, or
//! one the reply leaves open and unparsable, comes back as content, as written. vLLM's `hermes`
//! tool parser reads the same format.

use serde_json::Value;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// A piece of the reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Content(String),
    Call { name: String, arguments: String },
}

#[derive(Debug, Default)]
pub struct ToolTags {
    /// Text read but not given out: a possible start of `<tool_call>`, whitespace after a call,
    /// or the body of the open call.
    held: String,
    in_call: bool,
    /// A call has ended and no content came after it yet.
    after_call: bool,
}

impl ToolTags {
    /// Reads `text`, the next released text of the reply; what can be given out now.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.held.push_str(text);
        let mut pieces = Vec::new();
        loop {
            if self.in_call {
                let Some(end) = self.held.find(CLOSE) else { break };
                let body: String = self.held.drain(..end).collect();
                self.held.drain(..CLOSE.len());
                self.in_call = false;
                self.after_call = true;
                pieces.push(
                    parse_call(&body).unwrap_or_else(|| Piece::Content(format!("{OPEN}{body}{CLOSE}"))),
                );
                continue;
            }
            if let Some(start) = self.held.find(OPEN) {
                let before = self.held[..start].to_string();
                self.held.drain(..start + OPEN.len());
                self.content(before, &mut pieces);
                self.in_call = true;
                continue;
            }
            // Keep the longest end of the text that could still grow into `<tool_call>` (ASCII,
            // so it starts on a character boundary).
            let keep = (1..OPEN.len().min(self.held.len() + 1))
                .rev()
                .find(|&n| self.held.ends_with(&OPEN[..n]))
                .unwrap_or(0);
            let ready = self.held.len() - keep;
            if self.after_call && self.held[..ready].trim().is_empty() {
                break;
            }
            let text: String = self.held.drain(..ready).collect();
            self.content(text, &mut pieces);
            break;
        }
        pieces
    }

    /// The reply ended: what is left. An open call whose body parses is a call (the budget or a
    /// stop string cut its closing tag); else the text comes back as written.
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.held);
        let mut pieces = Vec::new();
        if self.in_call {
            self.in_call = false;
            pieces.push(parse_call(&rest).unwrap_or_else(|| Piece::Content(format!("{OPEN}{rest}"))));
        } else {
            self.content(rest, &mut pieces);
        }
        pieces
    }

    /// Gives out `text` as content, unless it is only the whitespace after a call.
    fn content(&mut self, text: String, pieces: &mut Vec<Piece>) {
        if self.after_call && text.trim().is_empty() {
            return;
        }
        if !text.is_empty() {
            self.after_call = false;
            pieces.push(Piece::Content(text));
        }
    }
}

/// `{"name": NAME, "arguments": ARGS}`: ARGS an object (written as JSON text) or a string
/// (taken as the JSON text itself); no arguments are `{}`.
fn parse_call(body: &str) -> Option<Piece> {
    let value: Value = serde_json::from_str(body).ok()?;
    let name = value.get("name")?.as_str()?.to_string();
    let arguments = match value.get("arguments").or_else(|| value.get("parameters")) {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    };
    Some(Piece::Call { name, arguments })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: &str) -> Piece {
        Piece::Call { name: name.into(), arguments: arguments.into() }
    }

    /// `text` cut into pieces of `size` bytes (on character boundaries), as a stream brings it.
    fn streamed(text: &str, size: usize) -> Vec<Piece> {
        let mut tags = ToolTags::default();
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let mut cut = size.min(rest.len());
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            pieces.extend(tags.push(&rest[..cut]));
            rest = &rest[cut..];
        }
        pieces.extend(tags.finish());
        merged(pieces)
    }

    /// Consecutive content pieces joined, so that a streamed reply compares with a whole one.
    fn merged(pieces: Vec<Piece>) -> Vec<Piece> {
        let mut out: Vec<Piece> = Vec::new();
        for piece in pieces {
            match (out.last_mut(), piece) {
                (Some(Piece::Content(text)), Piece::Content(more)) => text.push_str(&more),
                (_, piece) => out.push(piece),
            }
        }
        out
    }

    #[test]
    fn text_and_calls_come_apart_in_every_cut() {
        let reply = "Let me check. <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
        let expected = vec![
            Piece::Content("Let me check. ".into()),
            call("get_weather", "{\"city\":\"Paris\"}"),
            call("get_time", "{}"),
        ];
        for size in 1..reply.len() + 1 {
            assert_eq!(streamed(reply, size), expected, "pieces of {size} bytes");
        }
    }

    #[test]
    fn text_like_a_tag_but_not_one_is_content() {
        for reply in ["a <tool is < than b", "ends with <tool_", "<tool_cal>", "naïve <tööl_call>"] {
            for size in 1..5 {
                assert_eq!(streamed(reply, size), vec![Piece::Content(reply.into())], "{reply:?}");
            }
        }
    }

    #[test]
    fn a_body_that_is_not_a_call_comes_back_as_written() {
        for body in ["{\"arguments\": {}}", "not json", "{\"name\": 3}", "[1, 2]"] {
            let reply = format!("x<tool_call>{body}</tool_call>y");
            assert_eq!(streamed(&reply, 3), vec![Piece::Content(reply.clone())], "{reply}");
        }
    }

    #[test]
    fn an_open_call_at_the_end_is_a_call_if_its_body_parses() {
        let cut = "<tool_call>\n{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}\n";
        assert_eq!(streamed(cut, 4), vec![call("f", "{\"a\": 1}")]);
        let broken = "Sure <tool_call>\n{\"name\": \"f\", \"argu";
        assert_eq!(streamed(broken, 4), vec![Piece::Content(broken.into())]);
    }

    #[test]
    fn text_after_a_call_is_content_and_whitespace_is_not() {
        let reply = "<tool_call>{\"name\": \"f\"}</tool_call>\n\n";
        assert_eq!(streamed(reply, 2), vec![call("f", "{}")]);
        let reply = "<tool_call>{\"name\": \"f\"}</tool_call>\nDone.";
        assert_eq!(streamed(reply, 2), vec![call("f", "{}"), Piece::Content("\nDone.".into())]);
    }
}
