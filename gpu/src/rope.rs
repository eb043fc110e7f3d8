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
//! Angles are computed in f64 so that long positions keep their precision; that costs one pow and
//! one sincos per (token, pair), shared by all heads.
//! Layout: x [n_tokens, n_heads, head_dim] f32, rotated in place; positions [n_tokens] u32.
//! Launch: grid = n_tokens, 256 threads, dynamic shared memory of rope_dim * 4 bytes.
//! Cost: reads and writes the rotated part of x once: 8 bytes per element, memory-bound.

use crate::device::{block_dim, block_idx, dynamic_shared, sync_threads, thread_idx};

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn rope_f32(
    x: *mut f32,
    positions: *const u32,
    n_heads: u32,
    head_dim: u32,
    rope_dim: u32,
    neox: u32,
    base: f32,
    freq_scale: f64,
    ext_factor: f32,
    attn_factor: f32,
    corr_low: f32,
    corr_high: f32,
) {
    let token = block_idx();
    let (head_dim, half) = (head_dim as usize, rope_dim as usize / 2);
    let position = unsafe { *positions.add(token) } as f64;
    let x = unsafe { x.add(token * n_heads as usize * head_dim) };
    // The block first tabulates cos and sin of every pair's angle in shared memory (2 * half f32),
    // then rotates all heads' pairs with one thread per (head, pair).
    let table = dynamic_shared::<f32>();
    let mut i = thread_idx();
    while i < half {
        let theta_extrap = position * libm::pow(base as f64, -2.0 * i as f64 / rope_dim as f64);
        let theta_interp = freq_scale * theta_extrap;
        let (theta, magnitude) = if ext_factor != 0.0 {
            let span = libm::fmax(0.001, (corr_high - corr_low) as f64);
            let ramp = 1.0 - libm::fmin(1.0, libm::fmax(0.0, (i as f64 - corr_low as f64) / span));
            let mix = ramp * ext_factor as f64;
            let m = attn_factor as f64 * (1.0 + 0.1 * libm::log(1.0 / freq_scale));
            (theta_interp * (1.0 - mix) + theta_extrap * mix, m)
        } else {
            (theta_interp, attn_factor as f64)
        };
        let (sin, cos) = libm::sincos(theta);
        unsafe {
            *table.add(i) = (cos * magnitude) as f32;
            *table.add(half + i) = (sin * magnitude) as f32;
        }
        i += block_dim();
    }
    sync_threads();
    let mut unit = thread_idx();
    while unit < n_heads as usize * half {
        let (head, i) = (unit / half, unit % half);
        let (cos, sin) = unsafe { (*table.add(i), *table.add(half + i)) };
        let (first, second) = if neox != 0 { (i, i + half) } else { (2 * i, 2 * i + 1) };
        let h = unsafe { x.add(head * head_dim) };
        let (a, b) = unsafe { (*h.add(first), *h.add(second)) };
        unsafe {
            *h.add(first) = a * cos - b * sin;
            *h.add(second) = a * sin + b * cos;
        }
        unit += block_dim();
    }
}
