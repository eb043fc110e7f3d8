//! Rotary position embeddings with YaRN scaling (`gpu/src/rope.rs`).

use crate::{Gpu, Result, expect_len, shape_error, to_u32};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

/// Which elements of a head form a rotated pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// (2i, 2i+1): llama.cpp's "normal" mode, how GGUF stores llama q/k.
    Interleaved,
    /// (i, i + rope_dim/2): GPT-NeoX halves (Qwen2, Phi-3, gpt-oss as llama.cpp converts them).
    Neox,
}

/// YaRN context extension: interpolated frequencies for long wavelengths, extrapolated for short,
/// a ramp between them, and a magnitude correction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Yarn {
    /// Context extension factor (freq_scale = 1 / factor).
    pub factor: f32,
    /// Context length the model was trained with before extension.
    pub original_context: u32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// How much of the extrapolated frequency the ramp mixes in (1 for YaRN).
    pub ext_factor: f32,
    /// Extra magnitude scale (1 unless the model says otherwise).
    pub attn_factor: f32,
    /// Round the ramp's ends out to whole pairs (llama.cpp always; transformers by default);
    /// gpt-oss's configuration says false.
    pub truncate: bool,
}

impl Yarn {
    /// The pair indices where the ramp starts and ends, from the wavelengths that complete
    /// `beta_fast` and `beta_slow` turns over the original context.
    pub fn correction_range(&self, rope_dim: usize, base: f32) -> (f64, f64) {
        let dim = rope_dim as f64;
        let corr = |turns: f32| {
            dim * (self.original_context as f64 / (turns as f64 * 2.0 * std::f64::consts::PI)).ln()
                / (2.0 * (base as f64).ln())
        };
        let (low, high) = (corr(self.beta_fast), corr(self.beta_slow));
        let (low, high) = if self.truncate { (low.floor(), high.ceil()) } else { (low, high) };
        (low.max(0.0), high.min(dim - 1.0))
    }
}

/// RoPE as a model configures it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    pub head_dim: usize,
    /// Leading dims of each head that are rotated (even, at most head_dim).
    pub rope_dim: usize,
    pub base: f32,
    pub layout: RopeLayout,
    pub yarn: Option<Yarn>,
}

impl Gpu {
    /// Rotates x [n_tokens, n_heads, head_dim] in place, token t at position positions[t].
    pub fn rope(
        &self,
        x: &mut impl DevicePtrMut<f32>,
        positions: &impl DevicePtr<u32>,
        n_heads: usize,
        rope: &Rope,
    ) -> Result<()> {
        let n_tokens = positions.len();
        let (config, params) = rope_config(rope, n_tokens, n_heads, x.len())?;
        if n_tokens == 0 || n_heads == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let (positions, _positions) = positions.device_ptr(stream);
        let (x, _x) = x.device_ptr_mut(stream);
        let RopeParams {
            n_tokens,
            tokens_per_block,
            n_heads,
            head_dim,
            rope_dim,
            neox,
            log2_base,
            freq_scale,
            ext_factor,
            magnitude,
            corr_low,
            corr_high,
        } = params;
        self.launch(
            KERNEL,
            config,
            &[
                &x,
                &positions,
                &n_tokens,
                &tokens_per_block,
                &n_heads,
                &head_dim,
                &rope_dim,
                &neox,
                &log2_base,
                &freq_scale,
                &ext_factor,
                &magnitude,
                &corr_low,
                &corr_high,
            ],
        )
    }
}

const KERNEL: &str = "rope_f32";

/// The kernel tabulates cos and sin of every pair in 48 KiB of shared memory.
pub const MAX_ROPE_DIM: usize = 12 * 1024;

/// The scalar arguments of `rope_f32`, in its order.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeParams {
    pub n_tokens: u32,
    pub tokens_per_block: u32,
    pub n_heads: u32,
    pub head_dim: u32,
    pub rope_dim: u32,
    pub neox: u32,
    pub log2_base: f64,
    pub freq_scale: f64,
    pub ext_factor: f32,
    pub magnitude: f32,
    /// The ramp's ends in f64: without truncation they are fractional, and an f32 end moves
    /// the angle of a pair in the ramp by ~1e-7 of itself, visible at positions of 100k.
    pub corr_low: f64,
    pub corr_high: f64,
}

/// Checks the shapes of a RoPE launch over x [n_tokens, n_heads, head_dim] and derives the kernel's
/// parameters.
pub fn rope_config(
    rope: &Rope,
    n_tokens: usize,
    n_heads: usize,
    x_len: usize,
) -> Result<(LaunchConfig, RopeParams)> {
    if rope.rope_dim == 0
        || !rope.rope_dim.is_multiple_of(2)
        || rope.rope_dim > rope.head_dim.min(MAX_ROPE_DIM)
    {
        return Err(shape_error(
            KERNEL,
            format!(
                "rope_dim = {} must be even, positive and at most head_dim = {} (and {MAX_ROPE_DIM})",
                rope.rope_dim, rope.head_dim
            ),
        ));
    }
    if !(rope.base > 1.0 && rope.base.is_finite()) {
        return Err(shape_error(KERNEL, format!("base = {} must be a finite number above 1", rope.base)));
    }
    expect_len(KERNEL, "x", x_len, n_tokens * n_heads * rope.head_dim)?;
    let (freq_scale, ext_factor, magnitude, (corr_low, corr_high)) = match rope.yarn {
        Some(yarn) if yarn.factor > 0.0 => {
            let freq_scale = 1.0 / yarn.factor as f64;
            let mut magnitude = yarn.attn_factor as f64;
            if yarn.ext_factor != 0.0 {
                magnitude *= 1.0 + 0.1 * (1.0 / freq_scale).ln();
            }
            (freq_scale, yarn.ext_factor, magnitude as f32, yarn.correction_range(rope.rope_dim, rope.base))
        }
        Some(yarn) => {
            return Err(shape_error(KERNEL, format!("YaRN factor {} must be positive", yarn.factor)));
        }
        None => (1.0f64, 0.0f32, 1.0f32, (0.0, 0.0)),
    };
    // Enough tokens per block that the 256 threads all help fill the cos/sin table.
    const THREADS: usize = 256;
    let pairs = rope.rope_dim / 2;
    // A batch of a few tokens (a decode step of several sequences) a block per token instead,
    // so that their tables are made in parallel (same values: each entry depends only on its
    // token's position and its pair).
    let tokens_per_block =
        if n_tokens <= 256 { 1 } else { (THREADS / pairs).clamp(1, 64).min(n_tokens.max(1)) };
    let config = LaunchConfig {
        grid_dim: (to_u32(KERNEL, "n_tokens", n_tokens.div_ceil(tokens_per_block))?, 1, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: (tokens_per_block * 2 * pairs * 4) as u32,
    };
    let params = RopeParams {
        n_tokens: to_u32(KERNEL, "n_tokens", n_tokens)?,
        tokens_per_block: tokens_per_block as u32,
        n_heads: to_u32(KERNEL, "n_heads", n_heads)?,
        head_dim: to_u32(KERNEL, "head_dim", rope.head_dim)?,
        rope_dim: rope.rope_dim as u32,
        neox: u32::from(rope.layout == RopeLayout::Neox),
        log2_base: (rope.base as f64).log2(),
        freq_scale,
        ext_factor,
        magnitude,
        corr_low,
        corr_high,
    };
    to_u32(KERNEL, "x elements", x_len)?;
    Ok((config, params))
}
