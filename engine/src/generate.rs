//! The generation loop: prefill the prompt, then sample one token at a time, streaming text.

use crate::model::{KvCache, Model};
use std::time::{Duration, Instant};

/// Turns token bytes into text as soon as it is valid UTF-8: a character split across tokens is
/// held back until its last byte arrives.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes and returns the text that is now complete. An invalid sequence (not merely an
    /// unfinished one) is emitted as one U+FFFD, and decoding goes on at the byte after it, as
    /// `String::from_utf8_lossy` does over the whole text: the bytes after it may begin a
    /// character that the next token finishes.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut text = String::new();
        loop {
            let (valid, invalid) = match std::str::from_utf8(&self.pending) {
                Ok(_) => (self.pending.len(), None),
                Err(e) => (e.valid_up_to(), e.error_len()),
            };
            text.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
            match invalid {
                Some(length) => {
                    text.push(char::REPLACEMENT_CHARACTER);
                    self.pending.drain(..valid + length);
                }
                None => {
                    self.pending.drain(..valid);
                    return text;
                }
            }
        }
    }

    /// Whatever is left at the end (an unfinished character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// A model with the state of one sequence (its KV cache): what generation and perplexity drive,
/// on whichever backend holds the model.
pub trait Session {
    fn n_vocab(&self) -> usize;
    /// Positions filled so far.
    fn position(&self) -> usize;
    /// Positions the cache holds.
    fn capacity(&self) -> usize;
    /// Logits [tokens.len(), n_vocab] of `tokens` following what the cache holds.
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, BackendError>;
    /// Forgets the sequence.
    fn clear(&mut self);
    /// Logits [n_vocab] of the last of `tokens` only (a backend may skip the other rows).
    fn forward_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        let n_vocab = self.n_vocab();
        let logits = self.forward(tokens)?;
        Ok(logits[logits.len() - n_vocab..].to_vec())
    }
}

pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

impl<T: Session + ?Sized> Session for &mut T {
    fn n_vocab(&self) -> usize {
        (**self).n_vocab()
    }
    fn position(&self) -> usize {
        (**self).position()
    }
    fn capacity(&self) -> usize {
        (**self).capacity()
    }
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        (**self).forward(tokens)
    }
    fn forward_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        (**self).forward_last(tokens)
    }
    fn clear(&mut self) {
        (**self).clear()
    }
}

/// The CPU backend's session: a model and a KV cache.
pub struct CpuSession<'a> {
    pub model: &'a Model,
    pub cache: KvCache,
}

impl<'a> CpuSession<'a> {
    pub fn new(model: &'a Model, capacity: usize) -> Self {
        CpuSession { model, cache: model.new_cache(capacity) }
    }
}

impl Session for CpuSession<'_> {
    fn n_vocab(&self) -> usize {
        self.model.config().n_vocab
    }
    fn position(&self) -> usize {
        self.cache.len
    }
    fn capacity(&self) -> usize {
        self.cache.capacity
    }
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        Ok(self.model.forward(tokens, &mut self.cache)?)
    }
    fn clear(&mut self) {
        self.cache.clear();
    }
}

/// Timings of one generation.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill: Duration,
    pub decode: Duration,
}

impl Stats {
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }

    /// Decode rate over the tokens after the first (the first comes from the prefill's logits).
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    EndOfSequence,
    MaxTokens,
    Stopped,
    ContextFull,
}

/// Generates after `prompt`: `choose(logits)` picks each next token (a sampler), `on_token(id)`
/// sees each one and returns false to stop (stop strings). Returns the new tokens, why it ended,
/// and timings.
pub fn generate(
    session: &mut dyn Session,
    prompt: &[u32],
    max_tokens: usize,
    eos: &[u32],
    choose: &mut dyn FnMut(&[f32]) -> Result<u32, String>,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<(Vec<u32>, Finish, Stats), GenerateError> {
    let mut stats = Stats { prompt_tokens: prompt.len(), ..Stats::default() };
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let start = Instant::now();
    let mut last = session.forward_last(prompt).map_err(GenerateError::Backend)?;
    stats.prefill = start.elapsed();
    let mut generated = Vec::new();
    let decode_start = Instant::now();
    let finish = loop {
        if generated.len() >= max_tokens {
            break Finish::MaxTokens;
        }
        let token = choose(&last).map_err(GenerateError::Sampling)?;
        generated.push(token);
        if eos.contains(&token) {
            break Finish::EndOfSequence;
        }
        if !on_token(token) {
            break Finish::Stopped;
        }
        if generated.len() >= max_tokens {
            break Finish::MaxTokens;
        }
        if session.position() >= session.capacity() {
            break Finish::ContextFull;
        }
        last = session.forward(&[token]).map_err(GenerateError::Backend)?;
    };
    stats.generated_tokens = generated.len();
    stats.decode = decode_start.elapsed();
    Ok((generated, finish, stats))
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt is empty (no tokens)")]
    EmptyPrompt,
    #[error(transparent)]
    Backend(BackendError),
    #[error("sampling: {0}")]
    Sampling(String),
}

/// Greedy choice: the first index of the largest logit (NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &v) in logits.iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0 as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_tokens_wait_for_their_last_byte() {
        let mut stream = Utf8Stream::default();
        let snowman = "☃".as_bytes(); // three bytes
        assert_eq!(stream.push(b"a"), "a");
        assert_eq!(stream.push(&snowman[..1]), "");
        assert_eq!(stream.push(&snowman[1..2]), "");
        assert_eq!(stream.push(&snowman[2..]), "☃");
        assert_eq!(stream.push(&[0xff, b'b']), "\u{fffd}b");
        assert_eq!(stream.push(&snowman[..2]), "");
        assert_eq!(stream.finish(), "\u{fffd}");
    }

    #[test]
    fn streamed_text_is_the_whole_text_decoded_however_it_is_cut() {
        // Invalid bytes before, between and inside characters: a lead byte cut off by another
        // lead byte, a stray continuation byte, an unfinished character at the end.
        let texts: [&[u8]; 4] = [
            &[0xe4, 0xc8, 0xac, b'x'],
            &[b'a', 0x80, 0xe2, 0x98, 0x83, 0xff, 0xf0, 0x9f, 0x98],
            &[0xe2, 0x98, 0xc8, 0xac, 0xe2, 0x98, 0x83],
            "naïve ☃".as_bytes(),
        ];
        for bytes in texts {
            let expected = String::from_utf8_lossy(bytes);
            for cut in 1..=bytes.len() {
                let mut stream = Utf8Stream::default();
                let mut text: String = bytes.chunks(cut).map(|piece| stream.push(piece)).collect();
                text += &stream.finish();
                assert_eq!(text, expected, "{bytes:x?} in pieces of {cut}");
            }
        }
    }

    #[test]
    fn argmax_takes_the_first_maximum_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN]), 1);
        assert_eq!(argmax(&[f32::NAN, -1.0]), 1);
    }
}
