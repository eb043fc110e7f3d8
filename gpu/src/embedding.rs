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

/// out[:] = row ids[0] of a matrix stored as Q8_0 / Q4_0 / Q4_1 blocks in the GEMV's repacked
/// layout (quants, f16 scales, f16 mins): the token embedding of a model whose embedding table is
/// quantized, looked up without a dequantized copy. Launch: a block of 256 threads per token
/// (block b looks up ids[b] into out[b * dim..]).
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn embedding_blocks(
    quants: *const u8,
    scales: *const u16,
    mins: *const u16,
    ids: *const u32,
    out: *mut f32,
    dim: u32,
    bits: u32,
) {
    let token = crate::device::block_idx();
    let (dim, row) = (dim as usize, unsafe { *ids.add(token) } as usize);
    let out = unsafe { out.add(token * dim) };
    let blocks = dim / 32;
    let mut i = crate::device::thread_idx();
    while i < dim {
        let (b, j) = (row * blocks + i / 32, i % 32);
        let d = crate::device::f16_to_f32(unsafe { *scales.add(b) });
        let value = if bits == 8 {
            d * unsafe { *(quants.add(row * dim + i) as *const i8) } as f32
        } else {
            let byte = unsafe { *quants.add(row * dim / 2 + (i / 32) * 16 + j % 16) };
            let q = if j < 16 { byte & 0x0F } else { byte >> 4 } as f32;
            if mins.is_null() {
                d * (q - 8.0)
            } else {
                d * q + crate::device::f16_to_f32(unsafe { *mins.add(b) })
            }
        };
        unsafe { *out.add(i) = value };
        i += crate::device::block_dim();
    }
}

/// out[b] = row ids[b] of an MXFP4 table in the GEMV's layout (per block of 32: 16 bytes, value
/// 2k in the low nibble of byte k and 2k + 1 in the high one; one E8M0 exponent byte per block):
/// the GPU's MXFP4 dequantizer, with the arithmetic of the GEMM's (`mxfp4_values`).
/// Launch: a block of 256 threads per token.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn embedding_mxfp4(
    quants: *const u8,
    exponents: *const u8,
    ids: *const u32,
    out: *mut f32,
    dim: u32,
) {
    use crate::matmul::dequant::{e2m1_doubled, e8m0_half};
    let token = crate::device::block_idx();
    let (dim, row) = (dim as usize, unsafe { *ids.add(token) } as usize);
    let out = unsafe { out.add(token * dim) };
    let mut i = crate::device::thread_idx();
    while i < dim {
        let (b, v) = (row * (dim / 32) + i / 32, i % 32);
        let byte = unsafe { *quants.add(16 * b + v / 2) } as u32;
        let nibble = if v % 2 == 0 { byte & 0xF } else { byte >> 4 };
        let scale = e8m0_half(unsafe { *exponents.add(b) } as u32);
        unsafe { *out.add(i) = e2m1_doubled(nibble) * scale };
        i += crate::device::block_dim();
    }
}

/// out[b] = row ids[b] of a Q4_K table (see matmul/kquant.rs); dim a multiple of 256.
/// Launch: a block of 256 threads per token.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn embedding_q4_k(
    quants: *const u8,
    heads: *const u8,
    ids: *const u32,
    out: *mut f32,
    dim: u32,
) {
    let token = crate::device::block_idx();
    let (dim, row) = (dim as usize, unsafe { *ids.add(token) } as usize);
    let out = unsafe { out.add(token * dim) };
    let mut i = crate::device::thread_idx();
    while i < dim {
        unsafe { *out.add(i) = crate::matmul::kquant::q4_k_value(quants, heads, row, dim, i) };
        i += crate::device::block_dim();
    }
}

/// out[b] = row ids[b] of a Q6_K table (see matmul/kquant.rs); dim a multiple of 256.
/// Launch: a block of 256 threads per token.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn embedding_q6_k(
    low: *const u8,
    high: *const u8,
    scales: *const u16,
    sub: *const u8,
    ids: *const u32,
    out: *mut f32,
    dim: u32,
) {
    let token = crate::device::block_idx();
    let (dim, row) = (dim as usize, unsafe { *ids.add(token) } as usize);
    let out = unsafe { out.add(token * dim) };
    let mut i = crate::device::thread_idx();
    while i < dim {
        unsafe { *out.add(i) = crate::matmul::kquant::q6_k_value(low, high, scales, sub, row, dim, i) };
        i += crate::device::block_dim();
    }
}
