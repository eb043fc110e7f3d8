//! Token embedding lookup and learned absolute position embeddings.
//!
//! Math: embedding:        out[t, :] = table[ids[t], :]
//!       position_add:     x[t, :] += table[positions[t], :]
//! Layout: table [rows, dim] in f32, f16 or bf16; ids/positions [n_tokens] u32; out/x
//! [n_tokens, dim] f32. An index >= rows writes NaN over the token's row instead of reading out
//! of bounds (the host checks indices it knows; this keeps a bad one visible, never a stray read).
//! Launch: grid = n_tokens, one block per token, 128 or 256 threads; eight elements per thread
//! per step with 16-byte accesses when dim % 8 == 0 and the pointers are aligned.
//! Cost: reads the selected rows once and writes n_tokens * dim * 4 bytes.

use crate::device::{block_dim, block_idx, is_aligned_16, thread_idx};
use crate::element::{Weight, load8_f32, map8, store8_f32};

/// out[t, :] = table[index, :] + (accumulate ? out[t, :] : 0)
#[inline(always)]
unsafe fn gather_row<W: Weight>(
    table: *const W,
    indices: *const u32,
    rows: u32,
    out: *mut f32,
    dim: u32,
    accumulate: bool,
) {
    let (token, dim) = (block_idx(), dim as usize);
    let index = unsafe { *indices.add(token) };
    let out = unsafe { out.add(token * dim) };
    let valid = index < rows;
    let row = unsafe { table.add(index as usize * dim) };
    let vectorized = dim % 8 == 0 && is_aligned_16(table) && is_aligned_16(out);
    let mut i = thread_idx() * if vectorized { 8 } else { 1 };
    while i < dim {
        if vectorized {
            let add = if accumulate { unsafe { load8_f32(out, i) } } else { [0.0; 8] };
            let value = if valid { unsafe { W::load8(row, i) } } else { [f32::NAN; 8] };
            unsafe { store8_f32(out, i, map8(value, add, [0.0; 8], |v, a, _| v + a)) };
            i += block_dim() * 8;
        } else {
            let add = if accumulate { unsafe { *out.add(i) } } else { 0.0 };
            let value = if valid { unsafe { W::load(row, i) } } else { f32::NAN };
            unsafe { *out.add(i) = value + add };
            i += block_dim();
        }
    }
}

#[inline(always)]
unsafe fn embedding<W: Weight>(table: *const W, ids: *const u32, vocab: u32, out: *mut f32, dim: u32) {
    unsafe { gather_row(table, ids, vocab, out, dim, false) }
}

#[inline(always)]
unsafe fn position_add<W: Weight>(
    table: *const W,
    positions: *const u32,
    n_positions: u32,
    x: *mut f32,
    dim: u32,
) {
    unsafe { gather_row(table, positions, n_positions, x, dim, true) }
}

crate::kernel_per_weight_type!(embedding(table: *const W, ids: *const u32, vocab: u32, out: *mut f32, dim: u32)
    => embedding_f32, embedding_f16, embedding_bf16);
crate::kernel_per_weight_type!(position_add(table: *const W, positions: *const u32, n_positions: u32, x: *mut f32, dim: u32)
    => position_add_f32, position_add_f16, position_add_bf16);
