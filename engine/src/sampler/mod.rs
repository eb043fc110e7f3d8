//! Choosing the next token from logits, and deciding when generation stops ([`stop`]).
//!
//! The chain runs in llama.cpp's default order (`common_params_sampling::samplers`, leaving out the
//! samplers we do not have: DRY, top-n-sigma, typical-p, XTC), each step on what the last one left:
//!
//! 1. penalties, for each token t among the last `repeat_last_n` accepted tokens, seen `count(t)`
//!    times there: the repetition penalty r divides a positive logit by r and multiplies a logit
//!    <= 0 by r (CTRL, with llama.cpp's fix for negative logits); then presence p and frequency f
//!    subtract `p + f * count(t)` (OpenAI). Tokens outside the window are untouched.
//! 2. top-k: the k largest logits (k = 0 keeps all).
//! 3. top-p: the most likely tokens, in order, up to and including the first whose running
//!    probability reaches p (so at least one; p >= 1 keeps all).
//! 4. min-p: the tokens whose probability is at least `min_p` times the largest (min_p <= 0 keeps
//!    all, and the most likely token always stays).
//! 5. temperature T: logits divided by T. T <= 0 is greedy: the first index of the largest
//!    penalised logit, and no random number is drawn.
//! 6. a draw from softmax of what is left, with one uniform number from a ChaCha8 stream seeded by
//!    `seed` (ChaCha streams are stable across `rand_chacha` versions; `StdRng`'s are not).
//!
//! Probabilities in steps 3 and 4 are softmax of the penalised logits at temperature 1 over the
//! tokens that survived the steps before (as in llama.cpp). NaN logits count as -inf and are never
//! chosen; +inf counts as `f32::MAX`. Ties are broken towards the lower token id throughout.
//!
//! Cost on a 200k vocabulary: one pass to penalise (a copy), then top-k in one pass through a heap
//! of k, top-p by binning the mass by logit and sorting only the bin where it reaches p, min-p by
//! comparing logits with `max + ln(min_p)`. Nothing sorts the vocabulary.

pub mod stop;
#[cfg(test)]
mod tests;

pub use stop::{StepOutput, StopCondition, StopOutput, StopReason, StopStrings};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// <= 0 is greedy.
    pub temperature: f32,
    /// 0 keeps every token.
    pub top_k: usize,
    /// >= 1 keeps every token.
    pub top_p: f32,
    /// <= 0 keeps every token.
    pub min_p: f32,
    /// 1.0 is off; must be positive.
    pub repeat_penalty: f32,
    /// How many of the most recently accepted tokens the penalties look at (0: none).
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

    /// Rejects settings that would make the arithmetic meaningless (NaN, a penalty <= 0).
    pub fn validate(&self) -> Result<(), SamplerError> {
        let invalid = |setting: &'static str, value: f32, expected: &'static str| {
            Err(SamplerError::InvalidConfig { setting, value, expected })
        };
        let not_nan = [("temperature", self.temperature), ("top_p", self.top_p), ("min_p", self.min_p)];
        for (setting, value) in not_nan {
            if value.is_nan() {
                return invalid(setting, value, "a number");
            }
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return invalid("repeat_penalty", self.repeat_penalty, "a finite number above 0 (1 is off)");
        }
        let finite =
            [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)];
        for (setting, value) in finite {
            if !value.is_finite() {
                return invalid(setting, value, "a finite number (0 is off)");
            }
        }
        Ok(())
    }

    fn penalties_off(&self) -> bool {
        self.repeat_last_n == 0
            || (self.repeat_penalty == 1.0 && self.presence_penalty == 0.0 && self.frequency_penalty == 0.0)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplerError {
    #[error("no logits to sample from")]
    Empty,
    #[error("every logit is -inf or NaN: no token can be chosen")]
    NoCandidates,
    #[error("sampler setting {setting} = {value} is invalid: expected {expected}")]
    InvalidConfig { setting: &'static str, value: f32, expected: &'static str },
}

/// What a device sampler needs for one row: the filters and this token's uniform draw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceSampling {
    /// <= 0: greedy.
    pub temperature: f32,
    /// 0: off.
    pub top_k: u32,
    /// >= 1: off.
    pub top_p: f32,
    /// <= 0: off.
    pub min_p: f32,
    pub uniform: f32,
}

pub struct Sampler {
    config: SamplerConfig,
    rng: ChaCha8Rng,
    window: VecDeque<u32>,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Sampler { config, rng, window: VecDeque::new() }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Records a token (prompt or generated) in the penalty window.
    pub fn accept(&mut self, token: u32) {
        if self.config.repeat_last_n == 0 {
            return;
        }
        if self.window.len() == self.config.repeat_last_n {
            self.window.pop_front();
        }
        self.window.push_back(token);
    }

    /// The tokens the penalties look at, oldest first.
    pub fn window(&self) -> impl Iterator<Item = u32> + '_ {
        self.window.iter().copied()
    }

    /// Forgets the window and restarts the random sequence from the seed.
    pub fn reset(&mut self) {
        self.window.clear();
        self.rng = ChaCha8Rng::seed_from_u64(self.config.seed);
    }

    /// Step 1: the logits after the penalties, with NaN as -inf and +inf as `f32::MAX`.
    pub fn penalised(&self, logits: &[f32]) -> Vec<f32> {
        let mut out: Vec<f32> = logits.iter().map(|&v| clean(v)).collect();
        let c = &self.config;
        if c.penalties_off() {
            return out;
        }
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &t in &self.window {
            *counts.entry(t).or_default() += 1;
        }
        for (&token, &count) in &counts {
            // A token id past the vocabulary (a prompt from another model) has nothing to penalise.
            let Some(v) = out.get_mut(token as usize) else { continue };
            let scaled = if *v <= 0.0 { *v * c.repeat_penalty } else { *v / c.repeat_penalty };
            *v = clean(scaled - (c.presence_penalty + c.frequency_penalty * count as f32));
        }
        out
    }

    /// Steps 1 to 4: the tokens that may be drawn, most likely first, with their penalised logits.
    pub fn candidates(&self, logits: &[f32]) -> Result<Vec<(u32, f32)>, SamplerError> {
        self.config.validate()?;
        if logits.is_empty() {
            return Err(SamplerError::Empty);
        }
        let mut candidates = self.filter(&self.penalised(logits))?;
        candidates.sort_unstable_by(most_likely_first);
        Ok(candidates)
    }

    /// Chooses the next token. It is not added to the window: call [`Sampler::accept`] for that.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, SamplerError> {
        self.config.validate()?;
        if logits.is_empty() {
            return Err(SamplerError::Empty);
        }
        let penalised = self.penalised(logits);
        if self.config.temperature <= 0.0 {
            // top-k, top-p and min-p all keep the most likely token, so greedy can skip them.
            return argmax(&penalised).ok_or(SamplerError::NoCandidates);
        }
        let candidates = self.filter(&penalised)?;
        let uniform = self.uniform();
        Ok(draw(&candidates, self.config.temperature, uniform))
    }

    /// The settings for a backend that samples on the device, with this token's uniform drawn
    /// from the seeded stream (one draw per token, as [`Sampler::sample`] makes): None when the
    /// penalties are on (they need the token window, which stays on the host). The uniform is
    /// made of 24 bits, so that it stays below 1 in f32.
    pub fn device_settings(&mut self) -> Option<DeviceSampling> {
        if !self.config.penalties_off() {
            return None;
        }
        let uniform = if self.config.temperature > 0.0 {
            (self.rng.next_u64() >> 40) as f32 / (1u32 << 24) as f32
        } else {
            0.0
        };
        let c = &self.config;
        let top_k = u32::try_from(c.top_k).unwrap_or(u32::MAX);
        Some(DeviceSampling { temperature: c.temperature, top_k, top_p: c.top_p, min_p: c.min_p, uniform })
    }

    /// A uniform number in [0, 1) from the top 53 bits of one 64-bit word.
    fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Steps 2 to 4 on penalised logits; the survivors in no particular (but a deterministic) order.
    fn filter(&self, penalised: &[f32]) -> Result<Vec<(u32, f32)>, SamplerError> {
        let c = &self.config;
        let finite = penalised
            .iter()
            .enumerate()
            .filter(|&(_, &v)| v > f32::NEG_INFINITY)
            .map(|(i, &v)| (i as u32, v));
        // top_k sizes a heap: a k past the vocabulary (usize::MAX from a command line) keeps all.
        let k = c.top_k.min(penalised.len());
        let mut candidates = if k > 0 { top_k(finite, k) } else { finite.collect() };
        let Some(&best) = candidates.iter().min_by(|a, b| most_likely_first(a, b)) else {
            return Err(SamplerError::NoCandidates);
        };
        let max = best.1;
        if c.top_p < 1.0 {
            top_p(&mut candidates, max, c.top_p as f64);
        }
        if c.min_p > 0.0 {
            // p_i >= min_p * p_max  <=>  logit_i >= max + ln(min_p); no exponentials needed.
            let floor = max as f64 + (c.min_p as f64).ln();
            if floor > max as f64 {
                candidates = vec![best]; // min_p > 1: only the most likely token stays.
            } else {
                candidates.retain(|&(_, v)| v as f64 >= floor);
            }
        }
        Ok(candidates)
    }
}

/// Descending logit, then ascending token id: a total order, so unstable sorts and selections are
/// deterministic and ties go to the lower id.
fn most_likely_first(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

fn clean(v: f32) -> f32 {
    if v.is_nan() {
        f32::NEG_INFINITY
    } else if v == f32::INFINITY {
        f32::MAX
    } else {
        v
    }
}

/// The first index of the largest logit above -inf.
fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if v > f32::NEG_INFINITY && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32)
}

/// The k most likely tokens, through a heap of k whose top is the least likely kept: one pass
/// over the vocabulary, and no copy of it.
fn top_k(tokens: impl Iterator<Item = (u32, f32)>, k: usize) -> Vec<(u32, f32)> {
    let mut heap: BinaryHeap<Ranked> = BinaryHeap::with_capacity(k);
    for token in tokens {
        if heap.len() < k {
            heap.push(Ranked(token));
        } else if let Some(mut least) = heap.peek_mut()
            && most_likely_first(&token, &least.0) == Ordering::Less
        {
            *least = Ranked(token);
        }
    }
    heap.into_vec().into_iter().map(|r| r.0).collect()
}

/// A token ordered by [`most_likely_first`]: the greatest is the least likely.
struct Ranked((u32, f32));

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        most_likely_first(&self.0, &other.0)
    }
}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ranked {}

/// Buckets for top-p, by distance below the largest logit; the last takes everything further.
const TOP_P_BUCKETS: usize = 1024;
const TOP_P_SPAN: f64 = 32.0;

/// Keeps the most likely tokens, in order, up to the first whose running probability reaches `p`.
/// Without a full sort: the probability mass is binned by logit, the bin where the running mass
/// reaches p is found, the bins before it are kept whole, and only that bin is sorted and walked.
fn top_p(candidates: &mut Vec<(u32, f32)>, max: f32, p: f64) {
    let weight = |v: f32| (v as f64 - max as f64).exp();
    let bucket = |v: f32| {
        (((max as f64 - v as f64) * (TOP_P_BUCKETS as f64 / TOP_P_SPAN)) as usize).min(TOP_P_BUCKETS - 1)
    };
    let mut mass = vec![0.0f64; TOP_P_BUCKETS];
    for &(_, v) in candidates.iter() {
        mass[bucket(v)] += weight(v);
    }
    let target = p * mass.iter().sum::<f64>();
    let mut before = 0.0;
    let mut cut = TOP_P_BUCKETS - 1;
    for (b, &m) in mass.iter().enumerate() {
        if before + m >= target {
            cut = b;
            break;
        }
        before += m;
    }
    let mut boundary: Vec<(u32, f32)> =
        candidates.iter().copied().filter(|&(_, v)| bucket(v) == cut).collect();
    candidates.retain(|&(_, v)| bucket(v) < cut);
    boundary.sort_unstable_by(most_likely_first);
    let mut running = before;
    // Rounding may leave the walk just short of the target: then the whole bin stays.
    let mut keep = boundary.len();
    for (i, &(_, v)) in boundary.iter().enumerate() {
        running += weight(v);
        if running >= target {
            keep = i + 1;
            break;
        }
    }
    candidates.extend_from_slice(&boundary[..keep]);
}

/// Step 5 and 6: picks from softmax(logit / temperature) with `uniform` in [0, 1).
fn draw(candidates: &[(u32, f32)], temperature: f32, uniform: f64) -> u32 {
    let max = candidates.iter().map(|&(_, v)| v).fold(f32::NEG_INFINITY, f32::max) as f64;
    let t = temperature as f64;
    let weights: Vec<f64> = candidates.iter().map(|&(_, v)| ((v as f64 - max) / t).exp()).collect();
    let target = uniform * weights.iter().sum::<f64>();
    let mut mass = 0.0;
    for (&(token, _), w) in candidates.iter().zip(&weights) {
        mass += w;
        // Strictly above: a token of weight 0 is never drawn.
        if mass > target {
            return token;
        }
    }
    // Rounding left the running sum short of the target: take the most likely token.
    candidates.iter().min_by(|a, b| most_likely_first(a, b)).expect("not empty").0
}
