//! 8-bit quantization of activations, for integer dot products with quantized weights.
//!
//! Math, per block of 32 values: amax = max |x|, d = amax / 127, q = round-half-even(x * 127 / amax)
//! (0 when amax = 0), s = d * sum(q); d and s are rounded to f16 and stored as f32 (the Q8_1 format
//! as llama.cpp's x86 CPU path computes it, so that GPU and CPU see the same integers).
//! Layout: x [n] f32 -> q [n] i8, d [n / 32] f32, s [n / 32] f32. n a multiple of 32.
//! Launch: any grid of warps: warp w of the grid quantizes blocks w, w + warps, ...; 256 threads.
//! Cost: reads 4 n bytes, writes 1.25 n: negligible beside a matrix.
//! The fused forms below (RMSNorm and LayerNorm, each with the residual add before it, SwiGLU and
//! GELU, each followed by the quantization) save the decode step launches: at batch 1 a small
//! kernel costs its launch and ramp (a few microseconds), not its bytes.

use crate::activation::{gelu_tanh, silu};
use crate::device::{
    WARP_SIZE, block_dim, block_sum, dependent_launch_wait, f16_to_f32, f32_to_f16, global_idx, grid_size,
    lane_idx, round_to_i32, sqrt, thread_idx, warp_idx, warp_max, warp_sum,
};
use crate::unroll;

/// Quantizes block `block` of 32 values, value `lane` held by each lane of the warp.
#[inline(always)]
pub(crate) unsafe fn quantize_block(v: f32, block: usize, q: *mut i8, d: *mut f32, s: *mut f32) {
    let amax = warp_max(v.abs());
    let scale = amax / 127.0;
    let inverse = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let qi = round_to_i32(v * inverse);
    let sum = warp_sum(qi as f32);
    unsafe { *q.add(32 * block + lane_idx()) = qi as i8 };
    if lane_idx() == 0 {
        unsafe {
            *d.add(block) = f16_to_f32(f32_to_f16(scale));
            *s.add(block) = f16_to_f32(f32_to_f16(scale * sum));
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn quantize_q8_1(x: *const f32, q: *mut i8, d: *mut f32, s: *mut f32, n: u32) {
    let blocks = n as usize / 32;
    let warps = grid_size() / WARP_SIZE;
    let mut block = global_idx() / WARP_SIZE;
    while block < blocks {
        unsafe { quantize_block(*x.add(32 * block + lane_idx()), block, q, d, s) };
        block += warps;
    }
}

// ---- fused forms for the decode step: the op that makes x, then its quantization ---------------

/// One row: x += residual (when not null; x written back), out = x / sqrt(mean(x^2) + eps) *
/// weight (written when `out` is not null), then out quantized as by `quantize_q8_1`.
/// Launch: one block of up to 512 threads (a multiple of 32; 1024 would need more registers than
/// an SM has); dim a multiple of 32.
/// At batch 1 this kernel is a chain of latencies, not bytes: where the row fits in
/// [`PER_THREAD`] values per thread, every load is issued before any is used (the weights even
/// before the wait for the previous kernel), so the chain is one load of x, one block sum and one
/// store, instead of a round trip per loop step.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn rms_norm_q8_1(
    x: *mut f32,
    residual: *const f32,
    weight: *const f32,
    eps: f32,
    out: *mut f32,
    q: *mut i8,
    d: *mut f32,
    s: *mut f32,
    dim: u32,
) {
    let (dim, threads, tid) = (dim as usize, block_dim(), thread_idx());
    if dim > PER_THREAD * threads {
        dependent_launch_wait();
        unsafe { rms_norm_q8_1_looped(x, residual, weight, eps, out, q, d, s, dim) };
        return;
    }
    // Element k of this thread is tid + k * threads: for each k the warp holds one whole block of
    // 32 (threads is a multiple of 32), block k * threads / 32 + warp.
    let mut w = [0.0f32; PER_THREAD];
    unroll!([0, 1, 2, 3, 4, 5, 6, 7], |k| {
        let i = tid + k * threads;
        if i < dim {
            w[k] = unsafe { *weight.add(i) };
        }
    });
    dependent_launch_wait();
    let mut v = [0.0f32; PER_THREAD];
    let mut r = [0.0f32; PER_THREAD];
    unroll!([0, 1, 2, 3, 4, 5, 6, 7], |k| {
        let i = tid + k * threads;
        if i < dim {
            v[k] = unsafe { *x.add(i) };
            if !residual.is_null() {
                r[k] = unsafe { *residual.add(i) };
            }
        }
    });
    let mut acc = 0.0f32;
    unroll!([0, 1, 2, 3, 4, 5, 6, 7], |k| {
        let i = tid + k * threads;
        if i < dim {
            if !residual.is_null() {
                v[k] += r[k];
                unsafe { *x.add(i) = v[k] };
            }
            acc += v[k] * v[k];
        }
    });
    let inverse = 1.0 / sqrt(block_sum(acc) / dim as f32 + eps);
    unroll!([0, 1, 2, 3, 4, 5, 6, 7], |k| {
        let i = tid + k * threads;
        if i < dim {
            let value = v[k] * inverse * w[k];
            if !out.is_null() {
                unsafe { *out.add(i) = value };
            }
            unsafe { quantize_block(value, i / 32, q, d, s) };
        }
    });
}

/// Values per thread that `rms_norm_q8_1` and `layer_norm_q8_1` keep in registers (rows up to 4096
/// with 512 threads).
const PER_THREAD: usize = 8;

/// `rms_norm_q8_1` for rows longer than PER_THREAD values per thread: the same math in loops.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn rms_norm_q8_1_looped(
    x: *mut f32,
    residual: *const f32,
    weight: *const f32,
    eps: f32,
    out: *mut f32,
    q: *mut i8,
    d: *mut f32,
    s: *mut f32,
    dim: usize,
) {
    let mut acc = 0.0f32;
    let mut i = thread_idx();
    while i < dim {
        let mut v = unsafe { *x.add(i) };
        if !residual.is_null() {
            v += unsafe { *residual.add(i) };
            unsafe { *x.add(i) = v };
        }
        acc += v * v;
        i += block_dim();
    }
    // The barriers of the block sum also make the updated x visible to the whole block.
    let inverse = 1.0 / sqrt(block_sum(acc) / dim as f32 + eps);
    let warps = block_dim() / WARP_SIZE;
    let mut block = warp_idx();
    while block < dim / 32 {
        let i = 32 * block + lane_idx();
        let v = unsafe { *x.add(i) } * inverse * unsafe { *weight.add(i) };
        if !out.is_null() {
            unsafe { *out.add(i) = v };
        }
        unsafe { quantize_block(v, block, q, d, s) };
        block += warps;
    }
}

/// One row: x += residual (when not null; x written back), then
///   out = (x - mean) / sqrt(var + eps) * weight + bias,
/// mean and biased variance over the row, the variance from the centred row (a second pass over
/// x - mean, so that a large mean does not cancel it; as `norm.rs`'s `layer_norm`), written when
/// `out` is not null, then out quantized as by `quantize_q8_1`: GPT-2's norms at decode.
/// Layout: x, residual, out [dim] f32; weight, bias [dim] f32; q, d, s as `quantize_q8_1`.
/// Launch: as `rms_norm_q8_1`: one block of up to 512 threads (a multiple of 32); dim a multiple
/// of 32, any count of blocks of 32 (GPT-2 XL's 1600 is 50).
/// Cost: reads 16 dim bytes (x, residual, weight, bias), writes up to 9.25 dim; the chain of
/// latencies is one load of x, two block sums and the stores. In registers (rows up to
/// [`PER_THREAD`] values per thread) weight and bias are loaded before the wait for the previous
/// kernel and the centred values stay where the first pass left them; longer rows take the loops.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn layer_norm_q8_1(
    x: *mut f32,
    residual: *const f32,
    weight: *const f32,
    bias: *const f32,
    eps: f32,
    out: *mut f32,
    q: *mut i8,
    d: *mut f32,
    s: *mut f32,
    dim: u32,
) {
    let (dim, threads, tid) = (dim as usize, block_dim(), thread_idx());
    if dim > PER_THREAD * threads {
        dependent_launch_wait();
        unsafe { layer_norm_q8_1_looped(x, residual, weight, bias, eps, out, q, d, s, dim) };
        return;
    }
    // Element k of this thread is tid + k * threads, as in `rms_norm_q8_1`: for each k the warp
    // holds one whole block of 32.
    let mut w = [0.0f32; PER_THREAD];
    let mut b = [0.0f32; PER_THREAD];
    unroll!([0, 1, 2, 3, 4, 5, 6, 7], |k| {
        let i = tid + k * threads;
        if i < dim {
            w[k] = unsafe { *weight.add(i) };
            b[k] = unsafe { *bias.add(i) };
        }
    });
    dependent_launch_wait();
    let mut v = [0.0f32; PER_THREAD];
    let mut r = [0.0f32; PER_THREAD];
    unroll!([0, 1, 2, 3, 4, 5, 6, 7], |k| {
        let i = tid + k * threads;
        if i < dim {
            v[k] = unsafe { *x.add(i) };
            if !residual.is_null() {
                r[k] = unsafe { *residual.add(i) };
            }
        }
    });
    let mut acc = 0.0f32;
    unroll!([0, 1, 2, 3, 4, 5, 6, 7], |k| {
        let i = tid + k * threads;
        if i < dim {
            if !residual.is_null() {
                v[k] += r[k];
                unsafe { *x.add(i) = v[k] };
            }
            acc += v[k];
        }
    });
    let mean = block_sum(acc) / dim as f32;
    let mut acc = 0.0f32;
    unroll!([0, 1, 2, 3, 4, 5, 6, 7], |k| {
        if tid + k * threads < dim {
            v[k] -= mean;
            acc += v[k] * v[k];
        }
    });
    let inverse = 1.0 / sqrt(block_sum(acc) / dim as f32 + eps);
    unroll!([0, 1, 2, 3, 4, 5, 6, 7], |k| {
        let i = tid + k * threads;
        if i < dim {
            let value = v[k] * inverse * w[k] + b[k];
            if !out.is_null() {
                unsafe { *out.add(i) = value };
            }
            unsafe { quantize_block(value, i / 32, q, d, s) };
        }
    });
}

/// `layer_norm_q8_1` for rows longer than PER_THREAD values per thread: the same math in loops.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn layer_norm_q8_1_looped(
    x: *mut f32,
    residual: *const f32,
    weight: *const f32,
    bias: *const f32,
    eps: f32,
    out: *mut f32,
    q: *mut i8,
    d: *mut f32,
    s: *mut f32,
    dim: usize,
) {
    let mut acc = 0.0f32;
    let mut i = thread_idx();
    while i < dim {
        let mut v = unsafe { *x.add(i) };
        if !residual.is_null() {
            v += unsafe { *residual.add(i) };
            unsafe { *x.add(i) = v };
        }
        acc += v;
        i += block_dim();
    }
    let mean = block_sum(acc) / dim as f32;
    // The same elements as the first pass: each thread reads back only what it wrote.
    let mut acc = 0.0f32;
    let mut i = thread_idx();
    while i < dim {
        let centred = unsafe { *x.add(i) } - mean;
        acc += centred * centred;
        i += block_dim();
    }
    // The barriers of the block sums also make the updated x visible to the whole block.
    let inverse = 1.0 / sqrt(block_sum(acc) / dim as f32 + eps);
    let warps = block_dim() / WARP_SIZE;
    let mut block = warp_idx();
    while block < dim / 32 {
        let i = 32 * block + lane_idx();
        let v = (unsafe { *x.add(i) } - mean) * inverse * unsafe { *weight.add(i) } + unsafe { *bias.add(i) };
        if !out.is_null() {
            unsafe { *out.add(i) = v };
        }
        unsafe { quantize_block(v, block, q, d, s) };
        block += warps;
    }
}

/// act = silu(gate) * up for gate_up = [gate (n); up (n)] (written when `out` is not null), then
/// act quantized as by `quantize_q8_1`. Launch: any grid of warps, as `quantize_q8_1`.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn swiglu_q8_1(
    gate_up: *const f32,
    out: *mut f32,
    q: *mut i8,
    d: *mut f32,
    s: *mut f32,
    n: u32,
) {
    let n = n as usize;
    let warps = grid_size() / WARP_SIZE;
    let mut block = global_idx() / WARP_SIZE;
    while block < n / 32 {
        let i = 32 * block + lane_idx();
        let v = silu(unsafe { *gate_up.add(i) }) * unsafe { *gate_up.add(n + i) };
        if !out.is_null() {
            unsafe { *out.add(i) = v };
        }
        unsafe { quantize_block(v, block, q, d, s) };
        block += warps;
    }
}

/// act = gelu_tanh(x) (GPT-2's `gelu_new`, as `activation.rs`'s `gelu_tanh`) for x [n] (written to
/// `out` [n] when not null), then act quantized as by `quantize_q8_1`: the FFN activation of the
/// GPT-2 decode step. Launch: any grid of warps, as `quantize_q8_1`; n a multiple of 32.
/// Cost: reads 4 n bytes, writes up to 5.25 n, and a tanh (one exp) per value.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gelu_tanh_q8_1(
    x: *const f32,
    out: *mut f32,
    q: *mut i8,
    d: *mut f32,
    s: *mut f32,
    n: u32,
) {
    let n = n as usize;
    let warps = grid_size() / WARP_SIZE;
    let mut block = global_idx() / WARP_SIZE;
    while block < n / 32 {
        let i = 32 * block + lane_idx();
        let v = gelu_tanh(unsafe { *x.add(i) });
        if !out.is_null() {
            unsafe { *out.add(i) = v };
        }
        unsafe { quantize_block(v, block, q, d, s) };
        block += warps;
    }
}
