//! Rotary position embedding (RoPE), in both pair layouts, with YaRN frequency scaling.
//!
//! Math, for pair i in 0..rope_dim/2 of each head at position p:
//!   theta_extrap = p * base^(-2i / rope_dim),   theta_interp = freq_scale * theta_extrap
//!   without YaRN (ext_factor = 0): theta = theta_interp, m = attn_factor
//!   with YaRN: ramp = 1 - clamp((i - corr_low) / max(0.001, corr_high - corr_low), 0, 1),
//!              mix = ramp * ext_factor,  theta = theta_interp * (1 - mix) + theta_extrap * mix,
//!              m = attn_factor * (1 + 0.1 * ln(1 / freq_scale))
//!   (a, b) <- (a cos(theta) - b sin(theta), a sin(theta) + b cos(theta)) * m
//! The pair is (2i, 2i+1) in the interleaved layout (GGUF's llama q/k, `neox = 0`) and
//! (i, i + rope_dim/2) in the NeoX layout (`neox = 1`). Dims from rope_dim to head_dim pass through.
//! The angle p * base^(-2i/rope_dim) is formed and reduced modulo 2 pi in f64, so that positions
//! up to millions keep it exact to f32 rounding; sin and cos of the reduced angle are f32. Each
//! (token, pair) costs one f64 exp2 and one f32 sincos, shared by all heads.
//! Layout: x [n_tokens, n_heads, head_dim] f32, rotated in place; positions [n_tokens] u32.
//! Launch: grid = ceil(n_tokens / tokens_per_block), 256 threads, dynamic shared memory of
//! tokens_per_block * rope_dim * 4 bytes (a cos/sin table, filled by all threads, then used by all
//! heads). The host passes log2(base) and the magnitude (attn_factor, times 1 + 0.1 ln(1/freq_scale)
//! under YaRN) precomputed.
//! Cost: reads and writes the rotated part of x once: 8 bytes per element, memory-bound.

use crate::device::{block_dim, block_idx, dependent_launch_wait, dynamic_shared, sync_threads, thread_idx};

/// base^(-2i / rope_dim): pair i's angle per position before scaling.
#[inline(always)]
fn frequency(i: u32, rope_dim: u32, log2_base: f64) -> f64 {
    libm::exp2(-2.0 * i as f64 / rope_dim as f64 * log2_base)
}

/// cos and sin of pair i's angle at `position`, scaled by `magnitude`; `frequency` is
/// `frequency(i, ..)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rotation(
    position: u32,
    i: u32,
    frequency: f64,
    ext_factor: f32,
    freq_scale: f64,
    magnitude: f32,
    corr_low: f64,
    corr_high: f64,
) -> (f32, f32) {
    let theta_extrap = position as f64 * frequency;
    let theta_interp = freq_scale * theta_extrap;
    let theta = if ext_factor != 0.0 {
        let span = libm::fmax(0.001, corr_high - corr_low);
        let ramp = 1.0 - libm::fmin(1.0, libm::fmax(0.0, (i as f64 - corr_low) / span));
        let mix = ramp * ext_factor as f64;
        theta_interp * (1.0 - mix) + theta_extrap * mix
    } else {
        theta_interp
    };
    const TAU: f64 = core::f64::consts::TAU;
    let reduced = (theta - libm::rint(theta / TAU) * TAU) as f32;
    let (sin, cos) = libm::sincosf(reduced);
    (cos * magnitude, sin * magnitude)
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn rope_f32(
    x: *mut f32,
    positions: *const u32,
    n_tokens: u32,
    tokens_per_block: u32,
    n_heads: u32,
    head_dim: u32,
    rope_dim: u32,
    neox: u32,
    log2_base: f64,
    freq_scale: f64,
    ext_factor: f32,
    magnitude: f32,
    corr_low: f64,
    corr_high: f64,
) {
    let half = rope_dim / 2;
    let first_token = block_idx() as u32 * tokens_per_block;
    let tokens = tokens_per_block.min(n_tokens - first_token);
    let threads = block_dim() as u32;
    // cos table then sin table, [tokens, half] each.
    let table = dynamic_shared::<f32>();
    let entries = tokens * half;
    // The frequency of this thread's first entry depends on no earlier kernel: formed before the
    // wait (at decode, where there is one entry per thread, that is all of them).
    let first = thread_idx() as u32;
    let first_frequency = if half > 0 { frequency(first % half, rope_dim, log2_base) } else { 0.0 };
    dependent_launch_wait();
    let mut unit = first;
    while unit < entries {
        let (t, i) = (unit / half, unit % half);
        let position = unsafe { *positions.add((first_token + t) as usize) };
        let f = if unit == first { first_frequency } else { frequency(i, rope_dim, log2_base) };
        let (cos, sin) = rotation(position, i, f, ext_factor, freq_scale, magnitude, corr_low, corr_high);
        unsafe {
            *table.add(unit as usize) = cos;
            *table.add((entries + unit) as usize) = sin;
        }
        unit += threads;
    }
    sync_threads();
    // One unit is one (token, head, pair). Four units per thread per step, loaded before any is
    // stored, so that eight loads are in flight per thread (the stores to x would otherwise keep
    // each pair's loads waiting for the previous pair's stores).
    let units = entries * n_heads;
    let fetch = |unit: u32| -> Option<(*mut f32, *mut f32, f32, f32, f32, f32)> {
        if unit >= units {
            return None;
        }
        let (i, rest) = (unit % half, unit / half);
        let (head, t) = (rest % n_heads, rest / n_heads);
        let entry = (t * half + i) as usize;
        let (first, second) = if neox != 0 { (i, i + half) } else { (2 * i, 2 * i + 1) };
        unsafe {
            let h = x.add((((first_token + t) * n_heads + head) * head_dim) as usize);
            let (p, q) = (h.add(first as usize), h.add(second as usize));
            Some((p, q, *p, *q, *table.add(entry), *table.add(entries as usize + entry)))
        }
    };
    let apply = |fetched: Option<(*mut f32, *mut f32, f32, f32, f32, f32)>| {
        if let Some((p, q, a, b, cos, sin)) = fetched {
            unsafe {
                *p = a * cos - b * sin;
                *q = a * sin + b * cos;
            }
        }
    };
    let mut unit = thread_idx() as u32;
    while unit < units {
        let f0 = fetch(unit);
        let f1 = fetch(unit + threads);
        let f2 = fetch(unit + 2 * threads);
        let f3 = fetch(unit + 3 * threads);
        apply(f0);
        apply(f1);
        apply(f2);
        apply(f3);
        unit += 4 * threads;
    }
}
