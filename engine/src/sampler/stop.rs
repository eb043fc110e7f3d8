//! When generation ends: stop strings in the streamed text, a token budget, end-of-sequence ids.
//!
//! Stop strings are matched in the text, not in tokens, so one may span several tokens. Text that
//! could still become a stop string is held back until the next pieces settle it: the stream shows
//! it once it cannot, and never shows a stop string or anything after it. Generation ends at the
//! first moment any stop string is complete; the text is cut where that one starts (when several
//! complete with the same piece, the one that completes first in the text, and of those that end at
//! the same place the longest). The result does not depend on how the text was split into pieces.

/// Stop strings over streamed text.
pub struct StopStrings {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct StopOutput {
    /// Text safe to show now.
    pub emit: String,
    /// A stop string was found; nothing more will be emitted.
    pub stopped: bool,
}

impl StopStrings {
    /// Empty stop strings are ignored.
    pub fn new(stops: Vec<String>) -> Self {
        StopStrings {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            stopped: false,
        }
    }

    pub fn push(&mut self, text: &str) -> StopOutput {
        if self.stopped {
            return StopOutput { emit: String::new(), stopped: true };
        }
        self.held.push_str(text);
        // Held text never contains a complete stop string, so the first occurrence of each is new;
        // the one that ends first is where generation would have stopped.
        let first =
            self.stops.iter().filter_map(|s| self.held.find(s.as_str()).map(|at| (at + s.len(), at))).min();
        if let Some((_, at)) = first {
            self.stopped = true;
            let emit = self.held[..at].to_string();
            self.held.clear();
            return StopOutput { emit, stopped: true };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string: any stop
        // string still to complete must start inside it.
        let mut keep = 0;
        for stop in &self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if i > keep && self.held.ends_with(&stop[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.held.len() - keep;
        let emit = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopOutput { emit, stopped: false }
    }

    /// The held-back text, when generation ends without a stop string.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// The text held back now (at most the longest stop string less one character).
    pub fn held(&self) -> &str {
        &self.held
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndOfSequence,
    MaxTokens,
    StopString,
}

#[derive(Debug, PartialEq, Eq)]
pub struct StepOutput {
    /// Text safe to show now.
    pub emit: String,
    /// Set once generation should end; nothing more will be emitted.
    pub stop: Option<StopReason>,
}

/// Stop strings, a token budget and end-of-sequence ids in one place. Feed it every generated
/// token with its text; it says what to show and when to stop. An end-of-sequence token counts
/// against the budget (it was generated) but its text is not shown.
pub struct StopCondition {
    strings: StopStrings,
    max_tokens: usize,
    eos: Vec<u32>,
    generated: usize,
    reason: Option<StopReason>,
}

impl StopCondition {
    pub fn new(stop_strings: Vec<String>, max_tokens: usize, eos: Vec<u32>) -> Self {
        let reason = (max_tokens == 0).then_some(StopReason::MaxTokens);
        StopCondition { strings: StopStrings::new(stop_strings), max_tokens, eos, generated: 0, reason }
    }

    /// Why generation has ended, if it has: check before generating (a budget of 0 ends at once).
    pub fn stopped(&self) -> Option<StopReason> {
        self.reason
    }

    /// Tokens seen so far, end-of-sequence included.
    pub fn generated(&self) -> usize {
        self.generated
    }

    pub fn push(&mut self, token: u32, text: &str) -> StepOutput {
        if let Some(reason) = self.reason {
            return StepOutput { emit: String::new(), stop: Some(reason) };
        }
        self.generated += 1;
        let (emit, reason) = if self.eos.contains(&token) {
            // Nothing follows, so what was held back was not the start of a stop string.
            (self.strings.finish(), Some(StopReason::EndOfSequence))
        } else {
            let out = self.strings.push(text);
            if out.stopped {
                (out.emit, Some(StopReason::StopString))
            } else if self.generated >= self.max_tokens {
                (out.emit + &self.strings.finish(), Some(StopReason::MaxTokens))
            } else {
                (out.emit, None)
            }
        };
        self.reason = reason;
        StepOutput { emit, stop: reason }
    }

    /// The held-back text, when generation ends for a reason of the caller's (a full context).
    pub fn finish(&mut self) -> String {
        if self.reason == Some(StopReason::StopString) {
            return String::new();
        }
        self.strings.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The independent reading of the rule: the first prefix of the text that ends with a stop
    /// string is where generation stops; cut before the longest stop string it ends with.
    fn expected(text: &str, stops: &[&str]) -> (String, bool) {
        for end in (1..=text.len()).filter(|&e| text.is_char_boundary(e)) {
            let ending = stops.iter().filter(|s| !s.is_empty() && text[..end].ends_with(*s));
            if let Some(longest) = ending.map(|s| s.len()).max() {
                return (text[..end - longest].to_string(), true);
            }
        }
        (text.to_string(), false)
    }

    /// Pieces of text that often make, nearly make, or overlap stop strings.
    const CHUNKS: &[&str] = &["a", "b", "c", "|", "<", ">", "é", "<|a|>", "abcab", "bb>", "é>", "ab", "<|"];

    fn stream(stops: &[&str], pieces: &[&str]) -> (String, bool, usize) {
        let mut strings = StopStrings::new(stops.iter().map(|s| s.to_string()).collect());
        let (mut emitted, mut most_held) = (String::new(), 0);
        for piece in pieces {
            let out = strings.push(piece);
            emitted += &out.emit;
            if out.stopped {
                return (emitted, true, most_held);
            }
            most_held = most_held.max(strings.held().len());
        }
        (emitted + &strings.finish(), false, most_held)
    }

    proptest! {
        #[test]
        fn stop_strings_cut_where_the_first_one_completes(
            chunks in prop::collection::vec(prop::sample::select(CHUNKS), 0..16),
            cuts in prop::collection::vec(0usize..80, 0..12),
        ) {
            // Overlapping on purpose: "|a" completes inside "<|a|>", "ca" inside "abcab", "b>" at
            // the end of "bb>".
            let stops = ["<|a|>", "|a", "abcab", "ca", "bb>", "b>", "é>", ""];
            let text = chunks.concat();
            let mut cuts: Vec<usize> =
                cuts.into_iter().filter(|&c| c <= text.len() && text.is_char_boundary(c)).collect();
            cuts.sort();
            cuts.push(text.len());
            let mut last = 0;
            let pieces: Vec<&str> = cuts.iter().map(|&c| { let p = &text[last..c]; last = c; p }).collect();
            let (emitted, stopped, most_held) = stream(&stops, &pieces);
            prop_assert_eq!((emitted, stopped), expected(&text, &stops));
            prop_assert!(most_held <= 4, "held {} bytes, more than the longest stop string less one", most_held);
        }
    }

    #[test]
    fn a_stop_string_across_tokens_is_held_back_then_cut() {
        let mut stops = StopStrings::new(vec!["\nUser:".into()]);
        assert_eq!(stops.push("Hello"), StopOutput { emit: "Hello".into(), stopped: false });
        assert_eq!(stops.push(" there\nUs"), StopOutput { emit: " there".into(), stopped: false });
        assert_eq!(stops.held(), "\nUs");
        assert_eq!(stops.push("er: hi"), StopOutput { emit: "".into(), stopped: true });
        assert_eq!(stops.push("more"), StopOutput { emit: "".into(), stopped: true });

        // A false start is released as soon as it cannot be a stop string any more.
        let mut stops = StopStrings::new(vec!["\nUser:".into()]);
        assert_eq!(stops.push("a\nUs").emit, "a");
        assert_eq!(stops.push("ed").emit, "\nUsed");
        stops.push("b\nU");
        assert_eq!(stops.finish(), "\nU");
    }

    #[test]
    fn the_stop_string_that_completes_first_wins() {
        assert_eq!(stream(&["abc", "b"], &["a", "bc"]), ("a".into(), true, 1));
        assert_eq!(stream(&["abc", "b"], &["abc"]), ("a".into(), true, 0));
        // Same end: the longer one, which starts earlier.
        assert_eq!(stream(&["xab", "ab"], &["zxab"]), ("z".into(), true, 0));
    }

    #[test]
    fn stop_condition_reasons() {
        let mut stop = StopCondition::new(vec!["END".into()], 4, vec![2, 7]);
        assert_eq!(stop.stopped(), None);
        assert_eq!(stop.push(10, "one E"), StepOutput { emit: "one ".into(), stop: None });
        assert_eq!(stop.push(11, "N"), StepOutput { emit: "".into(), stop: None });
        // End of sequence: the held "EN" is shown, the end token's own text is not.
        assert_eq!(
            stop.push(7, "</s>"),
            StepOutput { emit: "EN".into(), stop: Some(StopReason::EndOfSequence) }
        );
        assert_eq!(stop.push(12, "x"), StepOutput { emit: "".into(), stop: Some(StopReason::EndOfSequence) });
        assert_eq!(stop.generated(), 3);

        let mut stop = StopCondition::new(vec!["END".into()], 2, vec![2]);
        assert_eq!(stop.push(10, "a").stop, None);
        assert_eq!(stop.push(11, "bE"), StepOutput { emit: "bE".into(), stop: Some(StopReason::MaxTokens) });

        let mut stop = StopCondition::new(vec!["END".into()], 10, vec![2]);
        assert_eq!(stop.push(10, "xE").emit, "x");
        assert_eq!(
            stop.push(11, "ND tail"),
            StepOutput { emit: "".into(), stop: Some(StopReason::StopString) }
        );
        assert_eq!(stop.finish(), "");

        let mut stop = StopCondition::new(vec!["END".into()], 10, vec![2]);
        stop.push(10, "xEN");
        assert_eq!(stop.finish(), "EN", "a caller's own stop (context full) releases the held text");

        assert_eq!(StopCondition::new(vec![], 0, vec![]).stopped(), Some(StopReason::MaxTokens));
    }
}
