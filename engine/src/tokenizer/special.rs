//! Finding special and added tokens in text, so that they become one token each instead of being
//! cut up by the pre-tokenizer.
//!
//! As llama.cpp does it: the tokens are tried longest first, and each one cuts every stretch of
//! plain text still left around all of its occurrences. User-defined (added) tokens are always
//! matched; control and unknown tokens (`<s>`, `<|im_start|>`) only when the caller asks.

/// A piece of input text: plain text for the BPE model, or a token found whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

#[derive(Debug, Clone, Default)]
pub(crate) struct SpecialTokens {
    /// (text, id, matched only when asked), longest text first.
    tokens: Vec<(String, u32, bool)>,
}

impl SpecialTokens {
    /// `tokens`: (text, id, is control or unknown). Empty texts are ignored.
    pub(crate) fn new(tokens: impl IntoIterator<Item = (String, u32, bool)>) -> Self {
        let mut tokens: Vec<_> = tokens.into_iter().filter(|t| !t.0.is_empty()).collect();
        tokens.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Self { tokens }
    }

    pub(crate) fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let mut fragments = vec![Fragment::Text(text)];
        for (content, id, on_request) in &self.tokens {
            if *on_request && !parse_special {
                continue;
            }
            let found =
                fragments.iter().any(|f| matches!(f, Fragment::Text(t) if t.contains(content.as_str())));
            if !found {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    next.push(fragment);
                    continue;
                };
                while let Some(at) = rest.find(content.as_str()) {
                    if at > 0 {
                        next.push(Fragment::Text(&rest[..at]));
                    }
                    next.push(Fragment::Token(*id));
                    rest = &rest[at + content.len()..];
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            fragments = next;
        }
        fragments
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_first_and_control_only_on_request() {
        let specials = SpecialTokens::new([
            ("<|im_start|>".to_string(), 1, true),
            ("<|im".to_string(), 2, false),
            ("<x>".to_string(), 3, false),
        ]);
        let text = "a<|im_start|>b<x>";
        assert_eq!(
            specials.partition(text, true),
            [Fragment::Text("a"), Fragment::Token(1), Fragment::Text("b"), Fragment::Token(3)]
        );
        assert_eq!(
            specials.partition(text, false),
            [Fragment::Text("a"), Fragment::Token(2), Fragment::Text("_start|>b"), Fragment::Token(3)]
        );
        assert_eq!(specials.partition("", true), [Fragment::Text("")]);
    }
}
