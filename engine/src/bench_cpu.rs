//! `engine bench --backend cpu`: the pp and tg tests of `bench.rs` on the CPU backend, timed with
//! the wall clock (pp: a prompt of N tokens in one forward pass from an empty cache, the last
//! token's logits only, as llama-bench asks; tg: N tokens one at a time from an empty cache), one
//! warm-up run, then the median of the repeats. The KV cache is allocated before the timing.

use crate::bench::median;
use crate::model::{LogitRows, Model, ModelError, SequenceChunk};
use std::time::Instant;

/// What the CPU bench measured: every repeat's tokens per second of each test.
#[derive(Clone, Debug)]
pub struct CpuBenchReport {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_runs: Vec<f64>,
    pub decode_runs: Vec<f64>,
}

impl CpuBenchReport {
    pub fn prefill_tps(&self) -> f64 {
        if self.prefill_runs.is_empty() { 0.0 } else { median(&self.prefill_runs) }
    }

    pub fn decode_tps(&self) -> f64 {
        if self.decode_runs.is_empty() { 0.0 } else { median(&self.decode_runs) }
    }
}

/// Runs the benchmark: `repeats` timed runs of each test after one warm-up.
pub fn run(
    model: &Model,
    prompt_tokens: usize,
    generated_tokens: usize,
    repeats: usize,
) -> Result<CpuBenchReport, ModelError> {
    let n_vocab = model.config().n_vocab as u32;
    // Fixed, varied token ids (the content does not change the work), as the GPU bench uses.
    let tokens: Vec<u32> = (0..prompt_tokens.max(generated_tokens) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % n_vocab)
        .collect();
    let mut cache = model.new_cache(prompt_tokens.max(generated_tokens).max(1));
    let (mut prefill_runs, mut decode_runs) = (Vec::new(), Vec::new());
    for repeat in 0..=repeats {
        if prompt_tokens > 0 {
            cache.len = 0;
            let start = Instant::now();
            let chunk = SequenceChunk { pages: &cache.pages, start: 0, tokens: &tokens[..prompt_tokens] };
            model.forward_batch(&[chunk], &mut cache.pool, LogitRows::LastOfEachChunk)?;
            if repeat > 0 {
                prefill_runs.push(prompt_tokens as f64 / start.elapsed().as_secs_f64());
            }
        }
        if generated_tokens > 0 {
            cache.len = 0;
            let start = Instant::now();
            for &token in &tokens[..generated_tokens] {
                model.forward(&[token], &mut cache)?;
            }
            if repeat > 0 {
                decode_runs.push(generated_tokens as f64 / start.elapsed().as_secs_f64());
            }
        }
    }
    Ok(CpuBenchReport { prompt_tokens, generated_tokens, prefill_runs, decode_runs })
}
