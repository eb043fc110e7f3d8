//! Softmax over the rows of a matrix, numerically stable, for rows of any length.
//!
//! Math: out[r, i] = exp(x[r, i] - m) / sum_j exp(x[r, j] - m), m = max_j x[r, j].
//! A row that is entirely -inf (fully masked) gives zeros rather than NaN.
//! Layout: x and out [rows, n] row-major f32 (out may be x).
//! Launch: grid = rows, one block per row, 64 to 1024 threads. Each thread keeps a running
//! (max, sum) over its strided chunks of eight (online softmax), the block combines them, then a
//! second pass writes the output. 16-byte accesses when n % 8 == 0 and the rows are aligned.
//! Cost: reads each row twice (the second pass mostly from L2 for rows up to a few MB) and writes it
//! once: 8 to 12 bytes per element; two exps per element.

use crate::device::{block_dim, block_idx, block_max, block_sum, exp, is_aligned_16, max, thread_idx};
use crate::element::{load8_f32, map8, store8_f32};

/// e^(v - m), with e^(-inf) = 0 even when m is -inf too.
#[inline(always)]
fn shifted_exp(v: f32, m: f32) -> f32 {
    if v == f32::NEG_INFINITY { 0.0 } else { exp(v - m) }
}

/// Folds values into a running (max, sum of e^(v - max)).
#[inline(always)]
fn accumulate(state: (f32, f32), chunk_max: f32, chunk: impl Fn(f32) -> f32) -> (f32, f32) {
    let (running_max, running_sum) = state;
    let new_max = max(running_max, chunk_max);
    if new_max == f32::NEG_INFINITY {
        return state;
    }
    (new_max, running_sum * shifted_exp(running_max, new_max) + chunk(new_max))
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn softmax_f32(x: *const f32, out: *mut f32, n: u32) {
    let n = n as usize;
    let (x, out) = unsafe { (x.add(block_idx() * n), out.add(block_idx() * n)) };
    let vectorized = n % 8 == 0 && is_aligned_16(x) && is_aligned_16(out);
    let step = if vectorized { 8 } else { 1 };
    let mut state = (f32::NEG_INFINITY, 0.0f32);
    let mut i = thread_idx() * step;
    while i < n {
        if vectorized {
            let [a, b, c, d, e, f, g, h] = unsafe { load8_f32(x, i) };
            let chunk_max = max(max(max(a, b), max(c, d)), max(max(e, f), max(g, h)));
            state = accumulate(state, chunk_max, |m| {
                let s = |v| shifted_exp(v, m);
                ((s(a) + s(b)) + (s(c) + s(d))) + ((s(e) + s(f)) + (s(g) + s(h)))
            });
        } else {
            let v = unsafe { *x.add(i) };
            state = accumulate(state, v, |m| shifted_exp(v, m));
        }
        i += block_dim() * step;
    }
    let (running_max, running_sum) = state;
    let row_max = block_max(running_max);
    let total = block_sum(running_sum * shifted_exp(running_max, row_max));
    let inverse = if total > 0.0 { 1.0 / total } else { 0.0 };
    let mut i = thread_idx() * step;
    while i < n {
        if vectorized {
            let v = unsafe { load8_f32(x, i) };
            let p = map8(v, [0.0; 8], [0.0; 8], |v, _, _| shifted_exp(v, row_max) * inverse);
            unsafe { store8_f32(out, i, p) };
        } else {
            unsafe { *out.add(i) = shifted_exp(*x.add(i), row_max) * inverse };
        }
        i += block_dim() * step;
    }
}
