//! Matrix-vector products for decode: y[o] = sum_i W[o, i] x[i] (+ bias[o]).
//!
//! Layout: x [n_in] f32, y [n_out] f32. W [n_out, n_in] row-major, in one of these forms:
//!   f32 / f16 / bf16: plain rows.
//!   Q8_0, Q4_0, Q4_1 (blocks of 32): repacked by the host from GGUF's interleaved blocks into
//!   separate arrays, so that quants can be read with aligned 16-byte loads:
//!     quants [n_out, n_in]       i8      (Q8_0)  or [n_out, n_in / 2] bytes of nibbles (Q4_*:
//!                                                 byte j of a block holds elements j and j + 16)
//!     scales [n_out, n_in / 32]  f16, mins likewise (Q4_1 only).
//!   Same bytes as the GGUF blocks, in another order; nothing is dequantized in memory.
//! Launch: grid = ceil(n_out / ROWS_PER_BLOCK), block = 32 * ROWS_PER_BLOCK threads (a warp per
//! row). n_in must be a multiple of 32 (and of 8 for the float forms) and rows 16-byte aligned; the
//! host checks both. Each lane takes 16-byte chunks of its row in turn (a warp covers 512
//! contiguous bytes per step), two chunks in flight, and reads x through the L1 cache.
//! Cost: the weight bytes once, plus 4 * n_in bytes of x per row from L1/L2 and 4 * n_out written:
//! memory-bound at batch 1 (2 flops per weight).

use crate::device::{
    bf16_to_f32, f16_to_f32, lane_idx, load_f32x4, load_u16x8, warp_idx, warp_sum, WARP_SIZE,
};

pub const ROWS_PER_BLOCK: usize = 4;

/// Four consecutive x values.
#[inline(always)]
unsafe fn x4(x: *const f32, i: usize) -> [f32; 4] {
    unsafe { load_f32x4(x.add(i)) }
}

/// sum_k q[k] * x[i + k] for the 16 signed bytes of four little-endian words.
#[inline(always)]
unsafe fn dot_i8x16(words: [u32; 4], x: *const f32, i: usize) -> f32 {
    let mut acc = 0.0f32;
    let mut k = 0;
    for w in words {
        let [a, b, c, d] = unsafe { x4(x, i + k) };
        acc += (w as i8) as f32 * a
            + ((w >> 8) as i8) as f32 * b
            + ((w >> 16) as i8) as f32 * c
            + ((w >> 24) as i8) as f32 * d;
        k += 4;
    }
    acc
}

/// (sum_j lo(q_j) x[i + j], sum_j hi(q_j) x[i + 16 + j]) over the 16 nibble bytes of a Q4 block.
#[inline(always)]
unsafe fn dot_nibbles(words: [u32; 4], x: *const f32, i: usize) -> (f32, f32) {
    let (mut low, mut high) = (0.0f32, 0.0f32);
    let mut k = 0;
    for w in words {
        let [a, b, c, d] = unsafe { x4(x, i + k) };
        low += (w & 0xF) as f32 * a
            + ((w >> 8) & 0xF) as f32 * b
            + ((w >> 16) & 0xF) as f32 * c
            + ((w >> 24) & 0xF) as f32 * d;
        let [a, b, c, d] = unsafe { x4(x, i + 16 + k) };
        high += ((w >> 4) & 0xF) as f32 * a
            + ((w >> 12) & 0xF) as f32 * b
            + ((w >> 20) & 0xF) as f32 * c
            + ((w >> 28) & 0xF) as f32 * d;
        k += 4;
    }
    (low, high)
}

/// Sum of x[i..i + 32].
#[inline(always)]
unsafe fn sum32(x: *const f32, i: usize) -> f32 {
    let mut acc = 0.0f32;
    let mut k = 0;
    while k < 32 {
        let [a, b, c, d] = unsafe { x4(x, i + k) };
        acc += (a + b) + (c + d);
        k += 4;
    }
    acc
}

/// Finishes a row: warp sum, bias, store.
#[inline(always)]
unsafe fn finish(acc: f32, row: usize, bias: *const f32, y: *mut f32) {
    let total = warp_sum(acc);
    if lane_idx() == 0 {
        let b = if bias.is_null() { 0.0 } else { unsafe { *bias.add(row) } };
        unsafe { *y.add(row) = total + b };
    }
}

#[inline(always)]
fn row_index() -> usize {
    crate::device::block_idx() * ROWS_PER_BLOCK + warp_idx()
}

/// Q8_0: chunk c of a row is quants [16c, 16c + 16), half of block c / 2.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gemv_q8_0(
    quants: *const u8,
    scales: *const u16,
    bias: *const f32,
    x: *const f32,
    y: *mut f32,
    n_in: u32,
    n_out: u32,
) {
    let (row, n_in) = (row_index(), n_in as usize);
    if row >= n_out as usize {
        return;
    }
    let (quants, scales) = unsafe { (quants.add(row * n_in), scales.add(row * n_in / 32)) };
    let chunks = n_in / 16;
    let mut acc = 0.0f32;
    let mut c = lane_idx();
    while c < chunks {
        let words = unsafe { load_u16x8(quants.add(16 * c) as *const u16) };
        let d = f16_to_f32(unsafe { *scales.add(c / 2) });
        acc += d * unsafe { dot_i8x16(words, x, 16 * c) };
        c += WARP_SIZE;
    }
    unsafe { finish(acc, row, bias, y) };
}

/// Q4_0 (x = d (q - 8)) and Q4_1 (x = d q + m): chunk c of a row is block c, all 16 bytes.
#[inline(always)]
unsafe fn gemv_q4(
    quants: *const u8,
    scales: *const u16,
    mins: *const u16,
    bias: *const f32,
    x: *const f32,
    y: *mut f32,
    n_in: u32,
    n_out: u32,
) {
    let (row, n_in) = (row_index(), n_in as usize);
    if row >= n_out as usize {
        return;
    }
    let blocks = n_in / 32;
    let (quants, scales) = unsafe { (quants.add(row * n_in / 2), scales.add(row * blocks)) };
    let mut acc = 0.0f32;
    let mut b = lane_idx();
    while b < blocks {
        let words = unsafe { load_u16x8(quants.add(16 * b) as *const u16) };
        let d = f16_to_f32(unsafe { *scales.add(b) });
        let (low, high) = unsafe { dot_nibbles(words, x, 32 * b) };
        let sum_x = unsafe { sum32(x, 32 * b) };
        acc += if mins.is_null() {
            d * (low + high - 8.0 * sum_x)
        } else {
            d * (low + high) + f16_to_f32(unsafe { *mins.add(row * blocks + b) }) * sum_x
        };
        b += WARP_SIZE;
    }
    unsafe { finish(acc, row, bias, y) };
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gemv_q4_0(
    quants: *const u8,
    scales: *const u16,
    bias: *const f32,
    x: *const f32,
    y: *mut f32,
    n_in: u32,
    n_out: u32,
) {
    unsafe { gemv_q4(quants, scales, core::ptr::null(), bias, x, y, n_in, n_out) }
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gemv_q4_1(
    quants: *const u8,
    scales: *const u16,
    mins: *const u16,
    bias: *const f32,
    x: *const f32,
    y: *mut f32,
    n_in: u32,
    n_out: u32,
) {
    unsafe { gemv_q4(quants, scales, mins, bias, x, y, n_in, n_out) }
}

/// Float rows: f32 (4 per 16 bytes), f16 and bf16 (8 per 16 bytes).
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gemv_f32(w: *const f32, bias: *const f32, x: *const f32, y: *mut f32, n_in: u32, n_out: u32) {
    let (row, n_in) = (row_index(), n_in as usize);
    if row >= n_out as usize {
        return;
    }
    let w = unsafe { w.add(row * n_in) };
    let mut acc = 0.0f32;
    let mut c = lane_idx();
    while c < n_in / 4 {
        let [a, b, cc, d] = unsafe { load_f32x4(w.add(4 * c)) };
        let [p, q, r, s] = unsafe { x4(x, 4 * c) };
        acc += a * p + b * q + cc * r + d * s;
        c += WARP_SIZE;
    }
    unsafe { finish(acc, row, bias, y) };
}

#[inline(always)]
unsafe fn gemv_half(w: *const u16, bias: *const f32, x: *const f32, y: *mut f32, n_in: u32, n_out: u32, convert: fn(u16) -> f32) {
    let (row, n_in) = (row_index(), n_in as usize);
    if row >= n_out as usize {
        return;
    }
    let w = unsafe { w.add(row * n_in) };
    let mut acc = 0.0f32;
    let mut c = lane_idx();
    while c < n_in / 8 {
        let words = unsafe { load_u16x8(w.add(8 * c)) };
        let mut k = 0;
        for word in words {
            acc += convert(word as u16) * unsafe { *x.add(8 * c + k) }
                + convert((word >> 16) as u16) * unsafe { *x.add(8 * c + k + 1) };
            k += 2;
        }
        c += WARP_SIZE;
    }
    unsafe { finish(acc, row, bias, y) };
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gemv_f16(w: *const u16, bias: *const f32, x: *const f32, y: *mut f32, n_in: u32, n_out: u32) {
    unsafe { gemv_half(w, bias, x, y, n_in, n_out, f16_to_f32) }
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gemv_bf16(w: *const u16, bias: *const f32, x: *const f32, y: *mut f32, n_in: u32, n_out: u32) {
    unsafe { gemv_half(w, bias, x, y, n_in, n_out, bf16_to_f32) }
}
