//! `engine bench`: prefill and decode speed of a model on the GPU, measured the way llama-bench
//! measures (pp: a prompt of N tokens in one forward pass from an empty context, logits of the
//! last token only, as llama-bench asks; tg: N tokens
//! generated one at a time from an empty context), with CUDA events around each run, one warm-up
//! run, then the median of the repeats. Beside the speed: the bytes of weights one decode step
//! reads and the decode floor they imply at the measured copy bandwidth.

use crate::cuda::{CudaError, GpuModel};
use host::sys::CUevent_flags;
use host::{CudaStream, Gpu};
use std::sync::Arc;

/// What `engine bench` measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Median tokens per second of each repeat.
    pub prefill_tps: f64,
    pub decode_tps: f64,
    /// Every repeat's figure, for the spread.
    pub prefill_runs: Vec<f64>,
    pub decode_runs: Vec<f64>,
    /// Bytes of weights one decode step reads.
    pub bytes_per_token: usize,
    /// Device-to-device copy bandwidth, bytes read plus written per second.
    pub copy_bandwidth: f64,
}

impl BenchReport {
    /// The decode speed if every step only read its weights at the copy bandwidth.
    pub fn decode_floor_tps(&self) -> f64 {
        self.copy_bandwidth / self.bytes_per_token as f64
    }
}

/// The middle value (the upper one of an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// The population standard deviation (0 for no values), the ± of the tables.
pub fn standard_deviation(values: &[f64]) -> f64 {
    let count = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / count;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / count).sqrt()
}

/// Prints llama-bench's table of the pp and tg tests (a test of 0 tokens is left out): each
/// test's median tokens/s, the spread of its repeats and their count.
pub fn print_table(prompt_tokens: usize, prefill: (f64, &[f64]), gen_tokens: usize, decode: (f64, &[f64])) {
    println!("| test | tok/s | ± | runs |");
    println!("|---|---|---|---|");
    for (name, tokens, (tps, runs)) in [("pp", prompt_tokens, prefill), ("tg", gen_tokens, decode)] {
        if tokens > 0 {
            println!("| {name}{tokens} | {tps:.1} | {:.1} | {} |", standard_deviation(runs), runs.len());
        }
    }
}

/// Seconds `f` takes on the GPU's stream, between two events.
fn timed(stream: &Arc<CudaStream>, f: impl FnOnce() -> Result<(), CudaError>) -> Result<f64, CudaError> {
    let event = || stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(host::Error::from);
    let start = event()?;
    f()?;
    let end = event()?;
    end.synchronize().map_err(host::Error::from)?;
    Ok(start.elapsed_ms(&end).map_err(host::Error::from)? as f64 / 1e3)
}

/// Device-to-device copy bandwidth over 1 GiB (read + write), median of 5.
pub fn copy_bandwidth(gpu: &Gpu) -> Result<f64, CudaError> {
    let n = 1 << 28;
    let source = gpu.alloc::<f32>(n)?;
    let mut destination = gpu.alloc::<f32>(n)?;
    let mut runs = Vec::new();
    for _ in 0..6 {
        let seconds = timed(gpu.stream(), || {
            gpu.stream().memcpy_dtod(&source, &mut destination).map_err(host::Error::from)?;
            Ok(())
        })?;
        runs.push(2.0 * 4.0 * n as f64 / seconds);
    }
    Ok(median(&runs[1..]))
}

/// Runs the benchmark: `repeats` timed runs of each test after one warm-up.
pub fn run(
    model: &mut GpuModel,
    prompt_tokens: usize,
    generated_tokens: usize,
    repeats: usize,
) -> Result<BenchReport, CudaError> {
    let copy_bandwidth = copy_bandwidth(model.gpu())?;
    let stream = model.gpu().stream().clone();
    let n_vocab = model.config().n_vocab as u32;
    // Fixed, varied token ids (the content does not change the work).
    let tokens: Vec<u32> = (0..prompt_tokens.max(generated_tokens) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % n_vocab)
        .collect();
    let mut prefill_runs = Vec::new();
    let mut decode_runs = Vec::new();
    for repeat in 0..=repeats {
        if prompt_tokens > 0 {
            model.clear();
            let seconds = timed(&stream, || model.forward_last(&tokens[..prompt_tokens]).map(|_| ()))?;
            if repeat > 0 {
                prefill_runs.push(prompt_tokens as f64 / seconds);
            }
        }
        if generated_tokens > 0 {
            model.clear();
            let seconds = timed(&stream, || {
                for &token in &tokens[..generated_tokens] {
                    model.forward(&[token])?;
                }
                Ok(())
            })?;
            if repeat > 0 {
                decode_runs.push(generated_tokens as f64 / seconds);
            }
        }
    }
    let or_zero = |runs: &[f64]| if runs.is_empty() { 0.0 } else { median(runs) };
    Ok(BenchReport {
        prompt_tokens,
        generated_tokens,
        prefill_tps: or_zero(&prefill_runs),
        decode_tps: or_zero(&decode_runs),
        prefill_runs,
        decode_runs,
        bytes_per_token: model.weight_bytes_per_token(),
        copy_bandwidth,
    })
}
