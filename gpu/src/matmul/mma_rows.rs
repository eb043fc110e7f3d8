//! Matrix products of up to 64 activation rows on the integer tensor cores, for batched decode:
//! the weights' own 4- and 8-bit integers against the 8-bit activations, `mma.sync` m16n8k32.
//!
//! Why: at 8 to 64 rows the multi-row GEMV (gemv_rows.rs) is bound by its `dp4a` and L1 rates
//! (each weight word meets every row in scalar code), and the f16 GEMM (gemm.rs) by dequantizing
//! 128 x 64 tiles for 128 token rows of which a few exist, on too few blocks to fill the GPU. Here
//! a weight word becomes an mma operand in two or four integer operations (no f16 at all) and one
//! m16n8k32 serves 8 rows; the GPU is filled by splitting K across the warps of a block.
//! Math: Y[t, o] = sum_b scale(o, b) xd[t, b] dot_b(W[o], X[t]) (+ bias[o]) over the blocks b of
//! 32 values, dot_b the exact integer sum of the block (Q4_K also subtracts dmin m(o, b) xs[t, b],
//! the block's minimum against the activations' sum). The integer sums are the GEMVs'; the f32
//! sums over blocks run in another order than gemv.rs's lanes, so a row's result differs from the
//! batch-1 GEMV's in the last bits (about 1e-6 relative).
//! Fragments (device.rs `mma_16x8x32_i8`): A = 16 weight rows x one block of 32 (rows g, g + 8 of
//! lane g * 4 + t), B = the block's 32 activations of 8 rows. The order of the 32 values inside
//! the mma is free as long as A and B agree: lane t takes the values its format stores together
//! (Q4_K, Q8_0: values 4t..4t+4 and 16 + 4t..; MXFP4: 8t..8t+8, one word of nibbles).
//! Launch: grid (ceil(rows / 16), experts), 128 threads (4 warps), SHARED_BYTES (42.25 KiB) of
//! dynamic shared memory. Block r takes weight rows 16 r..16 r + 16; warp w a contiguous quarter
//! of the blocks of K, 8 blocks at a time: per step it copies its tokens' 8 blocks of X and their
//! scales into its own area of shared memory (`cp.async`) while its weights load into registers,
//! then multiplies from shared memory; each warp keeps f32 sums for 16 rows x 32 tokens (4 per
//! lane per 8 tokens); the warps' sums meet in shared memory and are added in warp order (the
//! result does not depend on timing). More tokens go in passes of 32.
//! Cost: weights once from DRAM per pass (16 rows x 16 or 32 bytes per warp and block of K);
//! activations 32 bytes per token per block from L2 for every 16 weight rows, one round trip per
//! step of 8 blocks; per mma two shared loads of X, one or two of scales and about 12 f32
//! operations of scaling.

use super::dequant::e8m0_half;
use super::gemv_mxfp4::{TABLE_HIGH, TABLE_LOW};
use crate::device::{
    block_idx, byte_permute, copy_async_4, copy_async_16, copy_async_commit, copy_async_wait,
    dynamic_shared_address, f16_to_f32, lane_idx, mma_16x8x32_i8, shared_load_f32, shared_load_f32x2,
    shared_load_u32, shared_store_f32, shared_store_u32, sync_threads, sync_warp, thread_idx, warp_idx,
};
use crate::unroll;

/// Weight rows per block (the mma's M).
pub const ROWS: usize = 16;
/// Tokens per pass over the weights: FRAGMENTS mma columns of 8 (64 tokens in one pass measured
/// no faster on the H200 and needs more than 255 registers).
const FRAGMENTS: usize = 4;
pub const TOKENS: usize = 8 * FRAGMENTS;
/// Warps per block, each taking a contiguous share of the blocks of 32 along K (at ~170
/// registers, three blocks of four warps fit an SM where one of eight would).
pub const WARPS: usize = 4;
/// Blocks of K whose weights a warp loads before multiplying them.
const UNITS: usize = 8;
pub const THREADS: usize = 32 * WARPS;

/// One weight format's block of 32 for the two rows (g, g + 8) a lane holds.
trait Format: Copy {
    /// What a lane loads of one block for its two rows (raw words and scale bits).
    type Raw: Copy + Default;
    /// Whether the A bytes are unsigned.
    const UNSIGNED: bool;
    /// Loads lane t's share of block b of rows `row` and `row + 8` (a row past n_out reads row 0's
    /// bits; its sums are never stored).
    unsafe fn load(&self, row: [usize; 2], b: usize, t: usize) -> Self::Raw;
    /// The A fragment and the two rows' scale and min-scale for the block.
    fn fragment(raw: Self::Raw) -> ([u32; 4], [f32; 2], [f32; 2]);
    /// Byte offsets in the block's 32 activation bytes of lane t's two words (b[0], b[1]).
    fn x_offsets(t: usize) -> [usize; 2];
    /// Whether the format has a min term (xs).
    const MINS: bool;
}

/// Q4_K as the host stores it: per row n_in / 2 bytes of nibbles (value i of a block low in byte
/// i, value 16 + i high), per super-block of 256 a 20-byte head (d, dmin f16; 8 (scale, min)
/// byte pairs, one per block).
#[derive(Clone, Copy)]
struct Q4K {
    quants: *const u8,
    heads: *const u8,
    n_in: usize,
}

impl Format for Q4K {
    type Raw = ([u32; 2], [u32; 2], [u32; 2]);
    const UNSIGNED: bool = true;
    const MINS: bool = true;
    #[inline(always)]
    unsafe fn load(&self, row: [usize; 2], b: usize, t: usize) -> Self::Raw {
        let mut raw = ([0u32; 2], [0u32; 2], [0u32; 2]);
        unroll!([0, 1], |i| {
            let q = unsafe { self.quants.add(row[i] * self.n_in / 2 + 16 * b + 4 * t) };
            raw.0[i] = unsafe { *(q as *const u32) };
            let head = unsafe { self.heads.add(20 * ((row[i] * self.n_in + 32 * b) / 256)) };
            raw.1[i] = unsafe { *(head as *const u32) };
            raw.2[i] = unsafe { *(head.add(4 + 2 * (b % 8)) as *const u16) } as u32;
        });
        raw
    }
    #[inline(always)]
    fn fragment((words, dm, pair): Self::Raw) -> ([u32; 4], [f32; 2], [f32; 2]) {
        let a = [
            words[0] & 0x0F0F_0F0F,
            words[1] & 0x0F0F_0F0F,
            (words[0] >> 4) & 0x0F0F_0F0F,
            (words[1] >> 4) & 0x0F0F_0F0F,
        ];
        let mut scale = [0.0f32; 2];
        let mut min = [0.0f32; 2];
        unroll!([0, 1], |i| {
            let (d, dmin) = (f16_to_f32(dm[i] as u16), f16_to_f32((dm[i] >> 16) as u16));
            scale[i] = d * (pair[i] & 0xFF) as f32;
            min[i] = dmin * (pair[i] >> 8) as f32;
        });
        (a, scale, min)
    }
    #[inline(always)]
    fn x_offsets(t: usize) -> [usize; 2] {
        [4 * t, 16 + 4 * t]
    }
}

/// Q8_0: per row n_in bytes of values, per block an f16 scale.
#[derive(Clone, Copy)]
struct Q8 {
    quants: *const u8,
    scales: *const u16,
    n_in: usize,
}

impl Format for Q8 {
    type Raw = ([u32; 4], [u16; 2]);
    const UNSIGNED: bool = false;
    const MINS: bool = false;
    #[inline(always)]
    unsafe fn load(&self, row: [usize; 2], b: usize, t: usize) -> Self::Raw {
        let mut raw = ([0u32; 4], [0u16; 2]);
        unroll!([0, 1], |i| {
            let q = unsafe { self.quants.add(row[i] * self.n_in + 32 * b + 4 * t) };
            raw.0[i] = unsafe { *(q as *const u32) };
            raw.0[2 + i] = unsafe { *(q.add(16) as *const u32) };
            raw.1[i] = unsafe { *self.scales.add(row[i] * self.n_in / 32 + b) };
        });
        raw
    }
    #[inline(always)]
    fn fragment((words, scales): Self::Raw) -> ([u32; 4], [f32; 2], [f32; 2]) {
        (words, [f16_to_f32(scales[0]), f16_to_f32(scales[1])], [0.0; 2])
    }
    #[inline(always)]
    fn x_offsets(t: usize) -> [usize; 2] {
        [4 * t, 16 + 4 * t]
    }
}

/// MXFP4: per row 16 bytes of nibbles per block (value 8 i + n at nibble n of word i) and an
/// E8M0 exponent byte; the values are the doubled E2M1 magnitudes (gemv_mxfp4.rs's table) with
/// their signs, so the scale is the exponent's half.
#[derive(Clone, Copy)]
struct Mxfp4 {
    quants: *const u8,
    exponents: *const u8,
    n_in: usize,
}

/// Four nibbles (the low 16 bits of `w`) as signed bytes of the doubled E2M1 values.
#[inline(always)]
pub(super) fn e2m1_bytes(w: u32) -> u32 {
    // The magnitudes, and the magnitudes of the non-negative values (prmt's sign mode turns a
    // selector with bit 3 set into the selected byte's sign, 0: the table's bytes are positive);
    // v = 2 positive - magnitude byte by byte, offset by 128 so that no byte borrows.
    let magnitude = byte_permute(TABLE_LOW, TABLE_HIGH, w & 0x7777);
    let positive = byte_permute(TABLE_LOW, TABLE_HIGH, w & 0xFFFF);
    (((positive << 1) | 0x8080_8080) - magnitude) ^ 0x8080_8080
}

impl Format for Mxfp4 {
    type Raw = ([u32; 2], [u32; 2]);
    const UNSIGNED: bool = false;
    const MINS: bool = false;
    #[inline(always)]
    unsafe fn load(&self, row: [usize; 2], b: usize, t: usize) -> Self::Raw {
        let mut raw = ([0u32; 2], [0u32; 2]);
        let blocks = self.n_in / 32;
        unroll!([0, 1], |i| {
            let q = unsafe { self.quants.add(16 * (row[i] * blocks + b) + 4 * t) };
            raw.0[i] = unsafe { *(q as *const u32) };
            raw.1[i] = unsafe { *self.exponents.add(row[i] * blocks + b) } as u32;
        });
        raw
    }
    #[inline(always)]
    fn fragment((words, e): Self::Raw) -> ([u32; 4], [f32; 2], [f32; 2]) {
        let a = [
            e2m1_bytes(words[0]),
            e2m1_bytes(words[1]),
            e2m1_bytes(words[0] >> 16),
            e2m1_bytes(words[1] >> 16),
        ];
        (a, [e8m0_half(e[0]), e8m0_half(e[1])], [0.0; 2])
    }
    #[inline(always)]
    fn x_offsets(t: usize) -> [usize; 2] {
        [8 * t, 8 * t + 4]
    }
}

/// Bytes of one token's staged activations in a warp's area: UNITS blocks of 32, padded by 16
/// so that the eight tokens of a B fragment fall in different banks (272 bytes = 68 words: token
/// g's word t at bank 4 g + t).
const X_STRIDE: usize = 32 * UNITS + 16;
/// A warp's staging area: TOKENS rows of X (X_STRIDE bytes each), then the activations' scales
/// xd and sums xs, each as [UNITS][TOKENS] f32.
const WARP_BYTES: usize = TOKENS * X_STRIDE + 2 * 4 * UNITS * TOKENS;
/// The pass's X and Y row tables ([TOKENS] u32 each) follow the warps' areas.
const TABLES: usize = WARPS * WARP_BYTES;
/// Dynamic shared memory of every kernel here; the warps' partial sums ([WARPS][TOKENS][ROWS]
/// f32, 8 KiB) reuse the staging areas once the K loop is done.
pub const SHARED_BYTES: usize = TABLES + 2 * 4 * TOKENS;
const _: () = assert!(4 * WARPS * TOKENS * ROWS <= TABLES);

/// The block's product: weight rows `row0..row0 + 16` (of `n_out`, row r stored at Y column
/// r), the `count` tokens whose X row and Y row `token(j)` gives, `y_stride`
/// floats per Y row; xq [.., n_in] i8, xd and xs [.., n_in / 32] f32 (xs read only for formats
/// with mins); bias per weight row or null.
/// Per step of UNITS blocks of K a warp starts the asynchronous copies of its tokens' 32-byte
/// blocks and their scales into its own staging area, loads its weights into registers, waits
/// for the copies, then runs the mma of every (block, fragment) pair from shared memory: one
/// round trip to memory per step instead of one per mma.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn product<F: Format>(
    format: F,
    (row0, n_out): (usize, usize),
    n_in: usize,
    (count, token): (usize, impl Fn(usize) -> (usize, usize)),
    xq: *const u8,
    (xd, xs): (*const f32, *const f32),
    bias: *const f32,
    (y, y_stride): (*mut f32, usize),
) {
    let (lane, warp) = (lane_idx(), warp_idx());
    let (g, t) = (lane / 4, lane % 4);
    let blocks = n_in / 32;
    let clamp = |r: usize| if r < n_out { r } else { row0 };
    let rows = [clamp(row0 + g), clamp(row0 + g + 8)];
    let base = dynamic_shared_address();
    let x_area = base + (warp * WARP_BYTES) as u32;
    let d_area = x_area + (TOKENS * X_STRIDE) as u32;
    let s_area = d_area + (4 * UNITS * TOKENS) as u32;
    let (x_table, y_table) = (base + TABLES as u32, base + (TABLES + 4 * TOKENS) as u32);
    // This warp's blocks of K: a contiguous share, UNITS at a time.
    let share = blocks.div_ceil(WARPS);
    let (start, end) = ((warp * share).min(blocks), ((warp + 1) * share).min(blocks));
    let offsets = F::x_offsets(t);
    // What this lane copies per step: 16 bytes (`piece`) of tokens lane / 16 + 2 i, and the
    // scales of block lane % 8 of tokens lane / 8 + 4 i.
    let piece = lane % 16;
    let scale_unit = lane % 8;
    let mut first = 0;
    while first < count {
        let n = (count - first).min(TOKENS);
        if first > 0 {
            sync_threads(); // the previous pass's partial sums and tables are read
        }
        if thread_idx() < n {
            let (x_row, y_row) = token(first + thread_idx());
            unsafe {
                shared_store_u32(x_table + 4 * thread_idx() as u32, x_row as u32);
                shared_store_u32(y_table + 4 * thread_idx() as u32, y_row as u32);
            }
        }
        sync_threads();
        let mut acc = [[0.0f32; 4]; FRAGMENTS];
        let mut b0 = start;
        while b0 < end {
            let units = (end - b0).min(UNITS);
            unroll!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], |i| {
                let j = lane / 16 + 2 * i;
                if j < n && piece / 2 < units {
                    unsafe {
                        let r = shared_load_u32(x_table + 4 * j as u32) as usize;
                        let source = xq.add(r * n_in + 32 * b0 + 16 * piece);
                        copy_async_16(x_area + (j * X_STRIDE + 16 * piece) as u32, source, true);
                    }
                }
            });
            unroll!([0, 1, 2, 3, 4, 5, 6, 7], |i| {
                let j = lane / 8 + 4 * i;
                if j < n && scale_unit < units {
                    unsafe {
                        let r = shared_load_u32(x_table + 4 * j as u32) as usize;
                        let at = r * blocks + b0 + scale_unit;
                        let to = 4 * (scale_unit * TOKENS + j) as u32;
                        copy_async_4(d_area + to, xd.add(at) as *const u8, true);
                        if F::MINS {
                            copy_async_4(s_area + to, xs.add(at) as *const u8, true);
                        }
                    }
                }
            });
            copy_async_commit();
            let mut raw = [F::Raw::default(); UNITS];
            unroll!([0, 1, 2, 3, 4, 5, 6, 7], |u| {
                if u < UNITS && u < units {
                    raw[u] = unsafe { format.load(rows, b0 + u, t) };
                }
            });
            copy_async_wait::<0>();
            sync_warp();
            unroll!([0, 1, 2, 3, 4, 5, 6, 7], |u| {
                if u < UNITS && u < units {
                    let (a, scale, min) = F::fragment(raw[u]);
                    unroll!([0, 1, 2, 3, 4, 5, 6, 7], |f| {
                        if f < FRAGMENTS && 8 * f < n {
                            let at = x_area + ((8 * f + g) * X_STRIDE + 32 * u) as u32;
                            let x = unsafe {
                                [
                                    shared_load_u32(at + offsets[0] as u32),
                                    shared_load_u32(at + offsets[1] as u32),
                                ]
                            };
                            let dot = if F::UNSIGNED {
                                mma_16x8x32_i8::<true>(a, x)
                            } else {
                                mma_16x8x32_i8::<false>(a, x)
                            };
                            // Columns past the pass's tokens sum stale bytes; they are never stored.
                            let scales = 4 * (u * TOKENS + 8 * f + 2 * t) as u32;
                            let d = unsafe { shared_load_f32x2(d_area + scales) };
                            let sums = if F::MINS {
                                unsafe { shared_load_f32x2(s_area + scales) }
                            } else {
                                [0.0; 2]
                            };
                            unroll!([0, 1], |e| {
                                unroll!([0, 1], |h| {
                                    let value = scale[h] * d[e] * dot[2 * h + e] as f32;
                                    acc[f][2 * h + e] +=
                                        if F::MINS { value - min[h] * sums[e] } else { value };
                                });
                            });
                        }
                    });
                }
            });
            sync_warp(); // every lane has read the step's staged bytes before the next copies land
            b0 += UNITS;
        }
        // The warps' sums in shared memory as [warp][token][row] (over the staging areas, once
        // every warp is done with them), then added in warp order.
        sync_threads();
        unroll!([0, 1, 2, 3, 4, 5, 6, 7], |f| {
            if f < FRAGMENTS {
                unroll!([0, 1, 2, 3], |i| {
                    let (r, j) = (g + 8 * (i / 2), 8 * f + 2 * t + i % 2);
                    let at = base + 4 * ((warp * TOKENS + j) * ROWS + r) as u32;
                    unsafe { shared_store_f32(at, acc[f][i]) };
                });
            }
        });
        sync_threads();
        let mut o = thread_idx();
        while o < n * ROWS {
            let (j, r) = (o / ROWS, o % ROWS);
            if row0 + r < n_out {
                let mut sum = 0.0f32;
                for w in 0..WARPS {
                    sum += unsafe { shared_load_f32(base + 4 * ((w * TOKENS + j) * ROWS + r) as u32) };
                }
                let b = if bias.is_null() { 0.0 } else { unsafe { *bias.add(row0 + r) } };
                let y_row = unsafe { shared_load_u32(y_table + 4 * j as u32) } as usize;
                unsafe { *y.add(y_row * y_stride + row0 + r) = sum + b };
            }
            o += THREADS;
        }
        first += TOKENS;
    }
}

/// Dense products: Y[t, r] = W[r] . X[t] (+ bias[r]) for the n_rows rows of X (in passes of
/// 32); W's rows 16 block_idx.. of n_out; Y [n_rows, n_out].
macro_rules! dense_kernel {
    ($name:ident, $format:ident { $($field:ident: $ty:ty),* }, $xs:ident) => {
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $name(
            $($field: $ty,)*
            bias: *const f32,
            xq: *const u8,
            xd: *const f32,
            $xs: *const f32,
            y: *mut f32,
            n_in: u32,
            n_out: u32,
            n_rows: u32,
        ) {
            let (n_in, n_out) = (n_in as usize, n_out as usize);
            let format = $format { $($field,)* n_in };
            unsafe {
                product(
                    format,
                    (ROWS * block_idx(), n_out),
                    n_in,
                    (n_rows as usize, |j: usize| (j, j)),
                    xq,
                    (xd, $xs),
                    bias,
                    (y, n_out),
                )
            };
        }
    };
}

dense_kernel!(mma_rows_q4_k, Q4K { quants: *const u8, heads: *const u8 }, xs);
dense_kernel!(mma_rows_q8_0, Q8 { quants: *const u8, scales: *const u16 }, _xs);
dense_kernel!(mma_rows_mxfp4, Mxfp4 { quants: *const u8, exponents: *const u8 }, _xs);
