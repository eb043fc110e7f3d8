//! K-quant matrix-vector products for decode (Q4_K, Q6_K) against 8-bit activations.
//!
//! Math: y[o] = sum over the row's blocks of 32 of (weight scale) * xd * sum(q * xq) (Q4_K: minus
//! dmin * min * xs), with x quantized per block of 32 (xq i8, xd its scale, xs = xd * sum(xq);
//! quantize.rs); Q6_K's q - 32 becomes sum(q xq) - 32 sum(xq), all in integers.
//! Layout: the repacked super-blocks of kquant.rs, in which 16 bytes of quants cover one block of
//! 32 activations; xq [n_in] i8, xd, xs [n_in / 32] f32; y, bias [n_out] f32. n_in a multiple of
//! 256.
//! Launch: a warp per row (grid-stride), 8 warps per block, no shared memory. Each lane issues the
//! weight loads of four work units before using any: a batch-1 GEMV is limited by loads in
//! flight. The activations (a few KiB, the same for every row) come from L1/L2; what decides the
//! speed after the loads in flight is how many L1 accesses those activation reads take (see
//! benches/NOTES.md), so lanes read them as contiguous 512-byte warp accesses where the format
//! allows.
//! Cost: the weight bytes once (Q4_K 4.5 bits per value, Q6_K 6.56), x once per SM from L2.

use super::gemv::{activation_block, for_rows_prefetched, nibble_dot};
use crate::device::{
    WARP_SIZE, dp4a_signed, dp4a_unsigned_signed, f16_to_f32, lane_idx, load_u16x8, prefetch_l2,
};

/// sum over this lane's units u (lane, lane + 32, ...) of `compute(load(u), u)`, the loads of four
/// units issued before any is used. (Written out rather than as an array over a loop, which LLVM
/// leaves in local memory.)
#[inline(always)]
fn over_units<T: Copy + Default>(
    units: usize,
    load: impl Fn(usize) -> T,
    compute: impl Fn(T, usize) -> f32,
) -> f32 {
    let mut acc = 0.0f32;
    let mut u0 = lane_idx();
    while u0 < units {
        let (u1, u2, u3) = (u0 + WARP_SIZE, u0 + 2 * WARP_SIZE, u0 + 3 * WARP_SIZE);
        let get = |u: usize| if u < units { load(u) } else { T::default() };
        let (w0, w1, w2, w3) = (get(u0), get(u1), get(u2), get(u3));
        acc += compute(w0, u0);
        if u1 < units {
            acc += compute(w1, u1);
        }
        if u2 < units {
            acc += compute(w2, u2);
        }
        if u3 < units {
            acc += compute(w3, u3);
        }
        u0 += 4 * WARP_SIZE;
    }
    acc
}

#[derive(Clone, Copy, Default)]
struct Words4([u32; 4]);

#[derive(Clone, Copy, Default)]
struct Words6([u32; 6]);

#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Pair([u32; 2]);

/// Q4_K: chunk c of a row is its sub-block c (16 nibble bytes, like a Q4_0 block); the lane's
/// sub-block index within a super-block, c % 8 = lane % 8, is the same for all its chunks.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn gemv_q4_k_q8(
    quants: *const u8,
    heads: *const u8,
    bias: *const f32,
    xq: *const u8,
    xd: *const f32,
    xs: *const f32,
    y: *mut f32,
    n_in: u32,
    n_out: u32,
) {
    let n_in = n_in as usize;
    unsafe {
        let prefetch = |row: usize| prefetch_l2(quants.add(row * n_in / 2), n_in / 2);
        for_rows_prefetched(n_out as usize, bias, y, prefetch, |row| {
            let q = quants.add(row * n_in / 2);
            let head = heads.add(20 * (row * n_in / 256));
            let load = |c: usize| Words4(load_u16x8(q.add(16 * c) as *const u16));
            let compute = |Words4(w): Words4, c: usize| {
                let (low, high) = activation_block(xq, c);
                let dot = nibble_dot(w, low, high);
                let sb = head.add(20 * (c / 8));
                let dm = *(sb as *const u32);
                let pair = *(sb.add(4 + 2 * (c % 8)) as *const u16) as u32;
                let (scale, min) = (pair & 0xFF, pair >> 8);
                f16_to_f32(dm as u16) * scale as f32 * *xd.add(c) * dot as f32
                    - f16_to_f32((dm >> 16) as u16) * min as f32 * *xs.add(c)
            };
            over_units(n_in / 32, load, compute)
        })
    };
}

/// The high 2-bit fields of word i of a Q6_K half block, moved under the low nibbles.
#[inline(always)]
fn q6_k_high(h: u32, i: usize) -> u32 {
    let moved = match i {
        0 => h << 4,
        1 => h << 2,
        2 => h,
        _ => h >> 2,
    };
    moved & 0x3030_3030
}

/// Q6_K: chunk c of a row is its block of 32 (16 low-nibble bytes and 8 high bytes), two scales.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn gemv_q6_k_q8(
    low: *const u8,
    high: *const u8,
    scales: *const u16,
    sub: *const u8,
    bias: *const f32,
    xq: *const u8,
    xd: *const f32,
    y: *mut f32,
    n_in: u32,
    n_out: u32,
) {
    let n_in = n_in as usize;
    unsafe {
        let prefetch = |row: usize| {
            prefetch_l2(low.add(row * n_in / 2), n_in / 2);
            prefetch_l2(high.add(row * n_in / 4), n_in / 4);
        };
        for_rows_prefetched(n_out as usize, bias, y, prefetch, |row| {
            let (l, h) = (low.add(row * n_in / 2), high.add(row * n_in / 4));
            let (d, s) = (scales.add(row * n_in / 256), sub.add(row * n_in / 16));
            over_units(
                n_in / 32,
                |c| {
                    let [a, b, e, f] = load_u16x8(l.add(16 * c) as *const u16);
                    let Pair([g, k]) = *(h.add(8 * c) as *const Pair);
                    Words6([a, b, e, f, g, k])
                },
                |Words6(w), c| {
                    let (x_low, x_high) = activation_block(xq, c);
                    let (mut dot_a, mut dot_b, mut sum_a, mut sum_b) = (0i32, 0i32, 0i32, 0i32);
                    for i in 0..4 {
                        let a = (w[i] & 0x0F0F_0F0F) | q6_k_high(w[4], i);
                        let b = ((w[i] >> 4) & 0x0F0F_0F0F) | q6_k_high(w[5], i);
                        dot_a = dp4a_unsigned_signed(a, x_low[i], dot_a);
                        dot_b = dp4a_unsigned_signed(b, x_high[i], dot_b);
                        sum_a = dp4a_signed(0x0101_0101, x_low[i], sum_a);
                        sum_b = dp4a_signed(0x0101_0101, x_high[i], sum_b);
                    }
                    let pair = *(s.add(2 * c) as *const u16);
                    let (scale_a, scale_b) = ((pair as u8 as i8) as f32, ((pair >> 8) as u8 as i8) as f32);
                    let total = scale_a * (dot_a - 32 * sum_a) as f32 + scale_b * (dot_b - 32 * sum_b) as f32;
                    f16_to_f32(*d.add(c / 8)) * *xd.add(c) * total
                },
            )
        })
    };
}
