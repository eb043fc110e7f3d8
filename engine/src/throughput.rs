//! `engine bench --concurrency`: serving throughput, measured as `trtllm-bench throughput` and
//! `vllm bench throughput` measure it. `num_requests` requests of `input_len` random prompt tokens
//! each generate exactly `output_len` tokens (end-of-sequence ignored); all are queued at once and
//! at most `concurrency` are in flight (a finished one lets the next in), so the engine's batch
//! holds up to `concurrency` sequences. Reported per concurrency: output and total tokens per
//! second over the whole run, time to first token (queue time included) at the median and the
//! 99th percentile, mean time per output token after the first, the speed of the steps that held
//! only decode tokens, the most KV pages held at once, and preemptions. llama-batched-bench runs
//! one wave of `-npl` sequences: its S_TG (decode only) compares with `decode_step_tok_per_s`,
//! its S (prompt and decode over the whole run) with `total_tok_per_s`.

use crate::batching::{BatchBackend, BatchError, Batcher, Event, Request};
use crate::sampler::SamplerConfig;
use crate::scheduler::SchedulerConfig;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One concurrency's figures.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ThroughputReport {
    pub concurrency: usize,
    pub num_requests: usize,
    pub input_len: usize,
    pub output_len: usize,
    pub seconds: f64,
    pub output_tok_per_s: f64,
    pub total_tok_per_s: f64,
    pub mean_tpot_ms: f64,
    /// Tokens per second of the steps that held decode tokens only (no prompt chunk): the
    /// figure llama-batched-bench reports as S_TG, where every sequence decodes at once.
    pub decode_step_tok_per_s: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub kv_pages_peak: usize,
    pub kv_pages_total: usize,
    pub preemptions: u64,
    pub steps: u64,
    /// Steps that held decode tokens only.
    pub decode_steps: u64,
}

/// What to run: `concurrency` None means every request in flight at once (the pool and
/// `max_seqs` the only limits).
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub concurrency: Option<usize>,
    pub num_requests: usize,
    pub input_len: usize,
    pub output_len: usize,
    pub seed: u64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs `workload` on `backend` with the scheduler `config` (its `n_pages` is the backend's).
/// `progress(done, total)` after each finished request.
pub fn run(
    backend: &mut dyn BatchBackend,
    config: SchedulerConfig,
    workload: Workload,
    progress: &dyn Fn(usize, usize),
) -> Result<ThroughputReport, BatchError> {
    let Workload { concurrency, num_requests, input_len, output_len, seed } = workload;
    let n_vocab = backend.n_vocab() as u32;
    let mut random = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let prompts: Vec<Vec<u32>> = (0..num_requests)
        .map(|_| (0..input_len).map(|_| random.random_range(0..n_vocab)).collect())
        .collect();
    let mut batcher = Batcher::new(config, Box::new(backend), Box::new(|_| Vec::new()))
        .map_err(|e| BatchError::Backend(e.to_string().into()))?;
    let in_flight = concurrency.unwrap_or(num_requests).max(1);
    let start = Instant::now();
    let mut next = 0;
    // Per request: when it was queued (the run's start), its first token, its last.
    let mut first_token: HashMap<u64, Duration> = HashMap::new();
    let (mut ttft, mut tpot) = (Vec::new(), Vec::new());
    let (mut running, mut done, mut generated) = (0usize, 0usize, 0usize);
    // Tokens and time of the steps of decode tokens only.
    let mut decode_only = (0usize, Duration::ZERO);
    let mut decode_steps = 0u64;
    while done < num_requests {
        while running < in_flight && next < num_requests {
            batcher.submit(Request::new(prompts[next].clone(), SamplerConfig::greedy(), output_len))?;
            next += 1;
            running += 1;
        }
        let step_start = Instant::now();
        let events = batcher.step()?;
        if let (tokens, true) = batcher.last_step {
            decode_only.0 += tokens;
            decode_only.1 += step_start.elapsed();
            decode_steps += 1;
        }
        let decode_step = batcher.last_step.1;
        batcher.backend_mut().profile_step(decode_step).map_err(BatchError::Backend)?;
        let now = start.elapsed();
        for event in events {
            match event {
                Event::Token { id, .. } => {
                    generated += 1;
                    first_token.entry(id).or_insert(now);
                }
                Event::Finished { id, usage, .. } => {
                    let first = first_token.remove(&id).unwrap_or(now);
                    ttft.push(first.as_secs_f64() * 1e3);
                    if usage.completion_tokens > 1 {
                        tpot.push((now - first).as_secs_f64() * 1e3 / (usage.completion_tokens - 1) as f64);
                    }
                    running -= 1;
                    done += 1;
                    progress(done, num_requests);
                }
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    ttft.sort_by(f64::total_cmp);
    let stats = batcher.scheduler().stats();
    Ok(ThroughputReport {
        concurrency: in_flight,
        num_requests,
        input_len,
        output_len,
        seconds,
        output_tok_per_s: generated as f64 / seconds,
        total_tok_per_s: (generated + num_requests * input_len) as f64 / seconds,
        mean_tpot_ms: tpot.iter().sum::<f64>() / tpot.len().max(1) as f64,
        decode_step_tok_per_s: decode_only.0 as f64 / decode_only.1.as_secs_f64().max(1e-9),
        ttft_p50_ms: percentile(&ttft, 0.5),
        ttft_p99_ms: percentile(&ttft, 0.99),
        kv_pages_peak: stats.pages_peak,
        kv_pages_total: stats.pages_total,
        preemptions: stats.preemptions,
        steps: batcher.steps,
        decode_steps,
    })
}
