//! Choosing the next token from logits.
//!
//! Order, as llama.cpp's default chain: penalties (repetition over the last `repeat_last_n`
//! accepted tokens, then presence and frequency) -> top-k -> top-p -> min-p -> temperature ->
//! draw. Temperature <= 0 is greedy: the first index of the largest penalised logit. NaN logits
//! count as -inf and are never chosen.
//!
//! Penalties: for each token t in the window, a repetition penalty r divides a positive logit by r
//! and multiplies a negative one by r (CTRL); presence p and frequency f subtract p + f * count(t).
//! top-k keeps the k largest logits (0 keeps all); top-p keeps the most likely tokens until their
//! probability reaches p (at least one); min-p keeps tokens whose probability is at least min_p times
//! the largest. Probabilities for top-p and min-p are softmax of the logits before temperature.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, VecDeque};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 42,
        }
    }
}

impl SamplerConfig {
    pub fn greedy() -> Self {
        SamplerConfig { temperature: 0.0, ..SamplerConfig::default() }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplerError {
    #[error("no logits to sample from")]
    Empty,
    #[error("every logit is -inf or NaN: no token can be chosen")]
    NoCandidates,
}

pub struct Sampler {
    config: SamplerConfig,
    rng: StdRng,
    window: VecDeque<u32>,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        Sampler { config, rng, window: VecDeque::new() }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Records a token (prompt or generated) in the penalty window.
    pub fn accept(&mut self, token: u32) {
        self.window.push_back(token);
        while self.window.len() > self.config.repeat_last_n {
            self.window.pop_front();
        }
    }

    /// Forgets the window and restarts the random sequence from the seed.
    pub fn reset(&mut self) {
        self.window.clear();
        self.rng = StdRng::seed_from_u64(self.config.seed);
    }

    /// The logits after the penalties (NaN as -inf).
    pub fn penalised(&self, logits: &[f32]) -> Vec<f32> {
        let mut out: Vec<f32> =
            logits.iter().map(|&v| if v.is_nan() { f32::NEG_INFINITY } else { v }).collect();
        let c = &self.config;
        if c.repeat_last_n == 0
            || (c.repeat_penalty == 1.0 && c.presence_penalty == 0.0 && c.frequency_penalty == 0.0)
        {
            return out;
        }
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &t in &self.window {
            *counts.entry(t).or_default() += 1;
        }
        for (&token, &count) in &counts {
            let Some(v) = out.get_mut(token as usize) else { continue };
            if *v > 0.0 {
                *v /= c.repeat_penalty;
            } else {
                *v *= c.repeat_penalty;
            }
            *v -= c.presence_penalty + c.frequency_penalty * count as f32;
        }
        out
    }

    /// The candidate tokens after top-k, top-p and min-p, most likely first, with their logits.
    pub fn candidates(&self, logits: &[f32]) -> Result<Vec<(u32, f32)>, SamplerError> {
        if logits.is_empty() {
            return Err(SamplerError::Empty);
        }
        let mut candidates: Vec<(u32, f32)> = self
            .penalised(logits)
            .into_iter()
            .enumerate()
            .filter(|(_, v)| *v > f32::NEG_INFINITY)
            .map(|(i, v)| (i as u32, v))
            .collect();
        if candidates.is_empty() {
            return Err(SamplerError::NoCandidates);
        }
        // Stable sort: ties keep index order, so the lowest index comes first.
        candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
        let c = &self.config;
        if c.top_k > 0 {
            candidates.truncate(c.top_k);
        }
        let max = candidates[0].1;
        let weights: Vec<f64> = candidates.iter().map(|&(_, v)| ((v - max) as f64).exp()).collect();
        let total: f64 = weights.iter().sum();
        if c.top_p < 1.0 {
            let mut mass = 0.0;
            let mut keep = candidates.len();
            for (i, w) in weights.iter().enumerate() {
                mass += w / total;
                if mass >= c.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            candidates.truncate(keep);
        }
        if c.min_p > 0.0 {
            // weights[0] is the largest probability's numerator (1.0).
            let floor = c.min_p as f64;
            let keep = weights.iter().take(candidates.len()).take_while(|&&w| w >= floor).count().max(1);
            candidates.truncate(keep);
        }
        Ok(candidates)
    }

    /// Chooses the next token.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, SamplerError> {
        if self.config.temperature <= 0.0 {
            let penalised = self.penalised(logits);
            if penalised.is_empty() {
                return Err(SamplerError::Empty);
            }
            let mut best: Option<(usize, f32)> = None;
            for (i, &v) in penalised.iter().enumerate() {
                if v > f32::NEG_INFINITY && best.is_none_or(|(_, b)| v > b) {
                    best = Some((i, v));
                }
            }
            return best.map(|(i, _)| i as u32).ok_or(SamplerError::NoCandidates);
        }
        let candidates = self.candidates(logits)?;
        let t = self.config.temperature as f64;
        let max = candidates[0].1 as f64;
        let weights: Vec<f64> = candidates.iter().map(|&(_, v)| ((v as f64 - max) / t).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut draw = self.rng.random::<f64>() * total;
        for (&(token, _), w) in candidates.iter().zip(&weights) {
            if draw < *w {
                return Ok(token);
            }
            draw -= w;
        }
        Ok(candidates[candidates.len() - 1].0)
    }
}

/// Stop strings over streamed text: text that might be the start of a stop string is held back
/// until it is known not to be one; when a stop string appears, the text before it is emitted and
/// generation should end.
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
        // The earliest complete stop string ends the text.
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            let emit = self.held[..at].to_string();
            self.held.clear();
            return StopOutput { emit, stopped: true };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for stop in &self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if self.held.ends_with(&stop[..i]) {
                    keep = keep.max(i);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn softmax(logits: &[f32]) -> Vec<f64> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let w: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
        let total: f64 = w.iter().sum();
        w.iter().map(|x| x / total).collect()
    }

    fn logits_strategy() -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec(-8.0f32..8.0, 1..60)
    }

    proptest! {
        #[test]
        fn greedy_returns_the_first_argmax(logits in logits_strategy()) {
            let mut sampler = Sampler::new(SamplerConfig::greedy());
            let token = sampler.sample(&logits).unwrap() as usize;
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            prop_assert_eq!(logits[token], max);
            prop_assert!(logits[..token].iter().all(|&v| v < max));
        }

        #[test]
        fn top_k_stays_in_the_k_largest(logits in logits_strategy(), k in 1usize..10, seed: u64) {
            let config = SamplerConfig { top_k: k, top_p: 1.0, min_p: 0.0, temperature: 1.5, seed, ..SamplerConfig::default() };
            let mut sampler = Sampler::new(config);
            let mut sorted = logits.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[k.min(sorted.len()) - 1];
            for _ in 0..20 {
                let token = sampler.sample(&logits).unwrap() as usize;
                prop_assert!(logits[token] >= kth);
            }
        }

        #[test]
        fn top_p_stays_in_the_nucleus(logits in logits_strategy(), p in 0.05f32..1.0, seed: u64) {
            let config = SamplerConfig { top_k: 0, top_p: p, min_p: 0.0, temperature: 1.0, seed, ..SamplerConfig::default() };
            let mut sampler = Sampler::new(config);
            // The nucleus, computed independently: tokens by probability until the mass reaches p.
            let probs = softmax(&logits);
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            let mut mass = 0.0;
            let mut nucleus = Vec::new();
            for &i in &order {
                nucleus.push(i);
                mass += probs[i];
                if mass >= p as f64 { break; }
            }
            let smallest_kept = nucleus.iter().map(|&i| probs[i]).fold(f64::INFINITY, f64::min);
            for _ in 0..20 {
                let token = sampler.sample(&logits).unwrap() as usize;
                // Ties at the boundary may swap members of equal probability.
                prop_assert!(probs[token] >= smallest_kept * (1.0 - 1e-9), "token {} outside the nucleus", token);
            }
        }

        #[test]
        fn min_p_drops_unlikely_tokens(logits in logits_strategy(), min_p in 0.01f32..0.9, seed: u64) {
            let config = SamplerConfig { top_k: 0, top_p: 1.0, min_p, temperature: 2.0, seed, ..SamplerConfig::default() };
            let mut sampler = Sampler::new(config);
            let probs = softmax(&logits);
            let best = probs.iter().copied().fold(0.0, f64::max);
            for _ in 0..20 {
                let token = sampler.sample(&logits).unwrap() as usize;
                prop_assert!(probs[token] >= min_p as f64 * best * (1.0 - 1e-6));
            }
        }

        #[test]
        fn penalties_touch_exactly_the_window(logits in logits_strategy(), window in prop::collection::vec(0u32..80, 0..20), r in 1.0f32..3.0, presence in 0.0f32..2.0, frequency in 0.0f32..1.0) {
            let config = SamplerConfig { repeat_penalty: r, repeat_last_n: 8, presence_penalty: presence, frequency_penalty: frequency, ..SamplerConfig::default() };
            let mut sampler = Sampler::new(config);
            for &t in &window { sampler.accept(t); }
            let recent = &window[window.len().saturating_sub(8)..];
            let out = sampler.penalised(&logits);
            for (i, (&before, &after)) in logits.iter().zip(&out).enumerate() {
                let count = recent.iter().filter(|&&t| t as usize == i).count();
                if count == 0 {
                    prop_assert_eq!(before, after);
                } else {
                    let scaled = if before > 0.0 { before / r } else { before * r };
                    let expected = scaled - presence - frequency * count as f32;
                    prop_assert!((after - expected).abs() <= 1e-5 * expected.abs().max(1.0));
                }
            }
        }

        #[test]
        fn the_same_seed_gives_the_same_tokens(logits in logits_strategy(), seed: u64) {
            let config = SamplerConfig { top_k: 0, top_p: 1.0, min_p: 0.0, temperature: 1.0, seed, ..SamplerConfig::default() };
            let (mut a, mut b) = (Sampler::new(config.clone()), Sampler::new(config));
            for _ in 0..10 {
                prop_assert_eq!(a.sample(&logits).unwrap(), b.sample(&logits).unwrap());
            }
        }

        #[test]
        fn stop_strings_do_not_depend_on_how_text_is_split(text in "[ab<>|]{0,40}", cuts in prop::collection::vec(0usize..40, 0..8)) {
            let stops = vec!["<|a|>".to_string(), "bb>".to_string()];
            let mut whole = StopStrings::new(stops.clone());
            let first = whole.push(&text);
            let expected = if first.stopped { first.emit } else { first.emit + &whole.finish() };
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= text.len()).collect();
            cuts.sort();
            let mut pieces = StopStrings::new(stops);
            let (mut emitted, mut last, mut stopped) = (String::new(), 0, false);
            for &c in cuts.iter().chain(std::iter::once(&text.len())) {
                let out = pieces.push(&text[last..c]);
                emitted += &out.emit;
                last = c;
                if out.stopped { stopped = true; break; }
            }
            if !stopped { emitted += &pieces.finish(); }
            prop_assert_eq!(emitted, expected);
        }
    }

    #[test]
    fn temperature_samples_follow_the_softmax() {
        let logits = [1.0f32, 0.0, -1.0, 2.0];
        let t = 0.7;
        let config = SamplerConfig {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            temperature: t,
            seed: 7,
            ..SamplerConfig::default()
        };
        let mut sampler = Sampler::new(config);
        let n = 40_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[sampler.sample(&logits).unwrap() as usize] += 1;
        }
        let scaled: Vec<f32> = logits.iter().map(|v| v / t).collect();
        let expected = softmax(&scaled);
        // Pearson chi-square with 3 degrees of freedom; 16.3 is the 0.1% critical value.
        let chi2: f64 = counts
            .iter()
            .zip(&expected)
            .map(|(&c, &p)| (c as f64 - n as f64 * p).powi(2) / (n as f64 * p))
            .sum();
        assert!(chi2 < 16.3, "chi-square {chi2:.1} for counts {counts:?}, expected {expected:?}");
    }

    #[test]
    fn bad_logits_are_errors_not_panics() {
        let mut sampler = Sampler::new(SamplerConfig::default());
        assert_eq!(sampler.sample(&[]), Err(SamplerError::Empty));
        assert_eq!(sampler.sample(&[f32::NAN, f32::NEG_INFINITY]), Err(SamplerError::NoCandidates));
        assert_eq!(sampler.sample(&[f32::NAN, 0.5]), Ok(1));
        let mut greedy = Sampler::new(SamplerConfig::greedy());
        assert_eq!(greedy.sample(&[f32::NAN, f32::NAN]), Err(SamplerError::NoCandidates));
    }

    #[test]
    fn stop_string_example() {
        let mut stops = StopStrings::new(vec!["\nUser:".into()]);
        assert_eq!(stops.push("Hello"), StopOutput { emit: "Hello".into(), stopped: false });
        assert_eq!(stops.push(" there\nUs"), StopOutput { emit: " there".into(), stopped: false });
        assert_eq!(stops.push("er: hi"), StopOutput { emit: "".into(), stopped: true });
        let mut stops = StopStrings::new(vec!["\nUser:".into()]);
        stops.push("a\nUs");
        assert_eq!(stops.finish(), "\nUs");
    }
}
