//! Row normalisations: RMSNorm and LayerNorm.
//!
//! Math, for each row r of x (dim elements):
//!   rms_norm:   out[r,i] = x[r,i] / sqrt(mean_i(x[r,i]^2) + eps) * weight[i]
//!   layer_norm: out[r,i] = (x[r,i] - mean) / sqrt(var + eps) * weight[i] + bias[i]
//!               (mean and biased variance over the row, variance computed from the centred row)
//! Layout: x and out are [rows, dim] row-major f32 (out may be x); weight and bias are [dim] in
//! f32, f16 or bf16.
//! Launch: grid = rows, one block per row, a multiple of 32 threads (256 suits dims up to 8192);
//! dynamic shared memory of dim * 4 bytes keeps the row so that x is read from memory once.
//! Cost: 8 * rows * dim bytes of activations plus the weights (read once per row, from L2 after
//! the first rows); a few flops per element, so memory-bound.

use crate::device::{
    block_dim, block_idx, block_sum, dynamic_shared, is_aligned_16, load8_generic, sqrt, store8_generic,
    thread_idx,
};
use crate::element::{Weight, load8_f32, map8, store8_f32, sum8};

/// Copies row `x` into shared memory and returns the sum over the row of `f(x)`, for every thread.
#[inline(always)]
unsafe fn stage_row(
    x: *const f32,
    row: *mut f32,
    dim: usize,
    vectorized: bool,
    f: impl Fn(f32) -> f32,
) -> f32 {
    let mut acc = 0.0f32;
    if vectorized {
        let mut i = thread_idx() * 8;
        while i < dim {
            let v = unsafe { load8_f32(x, i) };
            unsafe { store8_generic(row.add(i), v) };
            acc += sum8(v, &f);
            i += block_dim() * 8;
        }
    } else {
        let mut i = thread_idx();
        while i < dim {
            let value = unsafe { *x.add(i) };
            unsafe { *row.add(i) = value };
            acc += f(value);
            i += block_dim();
        }
    }
    block_sum(acc)
}

/// Writes out[i] = g(row[i], i) over the row, eight at a time where aligned. Each thread visits the
/// same elements `stage_row` gave it, but the block sum in between is a barrier anyway.
#[inline(always)]
unsafe fn write_row<W: Weight>(
    row: *const f32,
    out: *mut f32,
    dim: usize,
    vectorized: bool,
    weight: *const W,
    bias: *const W,
    g: impl Fn(f32, f32, f32) -> f32,
) {
    let has_bias = !bias.is_null();
    if vectorized {
        let mut i = thread_idx() * 8;
        while i < dim {
            let w = unsafe { W::load8(weight, i) };
            let b = if has_bias { unsafe { W::load8(bias, i) } } else { [0.0; 8] };
            let v = unsafe { load8_generic(row.add(i)) };
            unsafe { store8_f32(out, i, map8(v, w, b, &g)) };
            i += block_dim() * 8;
        }
    } else {
        let mut i = thread_idx();
        while i < dim {
            let w = unsafe { W::load(weight, i) };
            let b = if has_bias { unsafe { W::load(bias, i) } } else { 0.0 };
            unsafe { *out.add(i) = g(*row.add(i), w, b) };
            i += block_dim();
        }
    }
}

#[inline(always)]
fn vectorizable<W>(dim: usize, x: *const f32, out: *const f32, weight: *const W, bias: *const W) -> bool {
    dim % 8 == 0
        && is_aligned_16(x)
        && is_aligned_16(out)
        && is_aligned_16(weight)
        && (bias.is_null() || is_aligned_16(bias))
}

#[inline(always)]
unsafe fn rms_norm<W: Weight>(x: *const f32, weight: *const W, out: *mut f32, dim: u32, eps: f32) {
    let dim = dim as usize;
    let offset = block_idx() * dim;
    let (x, out) = unsafe { (x.add(offset), out.add(offset)) };
    let vectorized = vectorizable(dim, x, out, weight, core::ptr::null());
    let row = dynamic_shared::<f32>();
    let sum_squares = unsafe { stage_row(x, row, dim, vectorized, |v| v * v) };
    let scale = 1.0 / sqrt(sum_squares / dim as f32 + eps);
    unsafe { write_row(row, out, dim, vectorized, weight, core::ptr::null(), |v, w, _| v * scale * w) };
}

#[inline(always)]
unsafe fn layer_norm<W: Weight>(
    x: *const f32,
    weight: *const W,
    bias: *const W,
    out: *mut f32,
    dim: u32,
    eps: f32,
) {
    let dim = dim as usize;
    let offset = block_idx() * dim;
    let (x, out) = unsafe { (x.add(offset), out.add(offset)) };
    let vectorized = vectorizable(dim, x, out, weight, bias);
    let row = dynamic_shared::<f32>();
    let mean = unsafe { stage_row(x, row, dim, vectorized, |v| v) } / dim as f32;
    // Second pass over the staged row, centred, so that a large mean does not cancel the variance.
    let mut acc = 0.0f32;
    let mut i = thread_idx();
    while i < dim {
        let d = unsafe { *row.add(i) } - mean;
        acc += d * d;
        i += block_dim();
    }
    let variance = block_sum(acc) / dim as f32;
    let scale = 1.0 / sqrt(variance + eps);
    unsafe { write_row(row, out, dim, vectorized, weight, bias, |v, w, b| (v - mean) * scale * w + b) };
}

crate::kernel_per_weight_type!(rms_norm(x: *const f32, weight: *const W, out: *mut f32, dim: u32, eps: f32)
    => rms_norm_f32, rms_norm_f16, rms_norm_bf16);
crate::kernel_per_weight_type!(layer_norm(x: *const f32, weight: *const W, bias: *const W, out: *mut f32, dim: u32, eps: f32)
    => layer_norm_f32, layer_norm_f16, layer_norm_bf16);
