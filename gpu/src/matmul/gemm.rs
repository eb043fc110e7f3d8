//! Matrix products on the tensor cores, for prefill: Y = X W^T (+ bias).
//!
//! Math: Y[t, o] = sum_i X[t, i] W[o, i] (+ bias[o]), the products of 16-bit operands summed in
//! f32 (`mma.sync` m16n8k16). X is the engine's f32 activations, rounded once to f16 (bf16 for
//! bf16 weights) by `convert_f32_to_f16` into a workspace before the product: the product's main
//! loop then copies both operands with `cp.async` and no register staging, X's L2 traffic (it is
//! read once per column of blocks) halves, and the conversion costs one pass over X (~2-5% of the
//! product at prefill sizes). Quantized weights are dequantized tile by tile into shared memory
//! (dequant.rs: the CPU dequantizer's values rounded to f16), never to a copy in device memory.
//! Layout: X16 [T, n_in] 16-bit; W [n_out, n_in] as the host stores it (f32 / f16 / bf16 rows,
//! or the repacked blocks of host/src/matmul.rs); Y [T, n_out] f32; bias [n_out] f32 or null.
//! n_in a multiple of 8 (16-bit weights), 4 (f32) or of the block (32, 256); any T and n_out.
//! F32 weights take the quantized path (rounded to f16 as they are staged).
//! Launch: grid (ceil(T / 128), ceil(n_out / 128)), 256 threads, `gemm_shared_bytes` of dynamic
//! shared memory. Block (bm, bn) computes the 128 x 128 tile of Y at tokens 128 bm, outputs
//! 128 bn, in steps of 64 along n_in; the blocks of one weight tile run together (bm varies
//! fastest) so that the weights come from DRAM once. Warp w computes the 64 x 32 sub-tile at
//! (64 (w % 2), 32 (w / 2)): per step of 16 along n_in, 4 `ldmatrix.x4` of X, 2 of W, 16 mma.
//! Tiles in shared memory: 128 rows of 64 values (128 bytes), the 16-byte chunk c of row r stored
//! at chunk c ^ (r % 8), so that the 8 row addresses of an `ldmatrix` (and the copies' stores)
//! fall in distinct banks.
//! Pipeline: STAGES tiles of X (and of 16-bit W) in flight through `cp.async`, one barrier per
//! step. Quantized W: each thread loads one block of 32 weights (raw bits) two steps ahead into
//! registers and dequantizes it one step ahead into one of two f16 W tiles.
//! Cost: 2 T n_in n_out FLOPs; W read once per 128 tokens (from L2 for the other row tiles of a
//! wave), X once per 128 outputs (from L2).

use super::dequant::{
    RawQ4, RawQ4K, RawQ6K, RawQ8_0, dequantize_q4_0, dequantize_q4_1, dequantize_q4_k, dequantize_q6_k,
    dequantize_q8_0,
};
use crate::device::{
    block_idx, block_idx_y, copy_async_16, copy_async_commit, copy_async_wait, dynamic_shared_address,
    global_idx, grid_size, lane_idx, load_f32x4, load_matrix_x4, load_u16x8, mma_16x8x16, pack_bf16x2,
    pack_f16x2, shared_store_u32x4, store_u32x4, sync_threads, thread_idx, warp_idx,
};
use crate::unroll;

pub const TILE_M: usize = 128;
pub const TILE_N: usize = 128;
pub const TILE_K: usize = 64;
pub const THREADS: usize = 256;
/// Tiles of X (and of 16-bit W) in the copy ring.
pub const STAGES: usize = 4;
/// Bytes of one 128 x 64 tile of 16-bit values.
const TILE_BYTES: u32 = (TILE_M * TILE_K * 2) as u32;

/// Dynamic shared memory of a block: the ring of X tiles, then the ring of W tiles (16-bit W) or
/// two dequantized W tiles (quantized W).
pub const fn gemm_shared_bytes(quantized: bool) -> usize {
    let x = STAGES * TILE_BYTES as usize;
    if quantized { x + 2 * TILE_BYTES as usize } else { 2 * x }
}

/// Byte offset of 16-byte chunk `chunk` (values 8 chunk..8 chunk + 8) of row `row` of a tile.
#[inline(always)]
fn tile_offset(row: usize, chunk: usize) -> u32 {
    (row * 2 * TILE_K + 16 * (chunk ^ (row % 8))) as u32
}

/// One thread's share of copying tiles of a [rows, n] 16-bit matrix: rows row0 + tid / 8 + 32 i
/// (i < 4), values 8 (tid % 8)..+8 of each step; out-of-range rows and columns are zero-filled.
#[derive(Clone, Copy)]
struct TileCopy {
    base: *const u16,
    src: *const u16,
    n: usize,
    column: usize,
    valid_rows: u32,
    offset: u32,
}

impl TileCopy {
    #[inline(always)]
    fn new(base: *const u16, rows: usize, n: usize, row0: usize) -> Self {
        let (r, c) = (thread_idx() / 8, thread_idx() % 8);
        let mut valid_rows = 0u32;
        unroll!([0, 1, 2, 3], |i| {
            if row0 + r + 32 * i < rows {
                valid_rows |= 1 << i;
            }
        });
        TileCopy {
            base,
            src: base.wrapping_add((row0 + r) * n + 8 * c),
            n,
            column: 8 * c,
            valid_rows,
            offset: tile_offset(r, c),
        }
    }

    /// Starts the copies of the tile at columns k0..k0 + 64 into the tile at shared address `tile`.
    #[inline(always)]
    unsafe fn copy(self, tile: u32, k0: usize) {
        let in_row = k0 + self.column < self.n;
        unroll!([0, 1, 2, 3], |i| {
            let valid = in_row && self.valid_rows & (1 << i) != 0;
            let src = if valid { self.src.wrapping_add(32 * i * self.n + k0) } else { self.base };
            // Row r + 32 i has the same swizzle as row r.
            unsafe {
                copy_async_16(tile + self.offset + (32 * i * 2 * TILE_K) as u32, src as *const u8, valid)
            };
        });
    }
}

/// This warp's accumulators: acc[i][j] is the m16n8 tile at rows 16 i, columns 8 j of its 64 x 32
/// sub-tile, in the mma's D layout.
type Accumulators = [[[f32; 4]; 4]; 4];

/// One thread's `ldmatrix` row addresses within a tile (byte offsets of rows; the chunk is added
/// per step).
#[derive(Clone, Copy)]
struct Fragments {
    /// X: the m16 tiles i = 0..4; lane l gives row l % 16 of the tile, chunk 2 kk + l / 16.
    x_rows: [u32; 4],
    x_high: usize,
    /// W: pairs of n8 tiles; lane l gives row (l % 8) + 8 (l / 16), chunk 2 kk + (l / 8) % 2, so
    /// that the four matrices are b0, b1 of the first n8 tile and b0, b1 of the second.
    w_rows: [u32; 2],
    w_high: usize,
    /// Every row this lane addresses is lane % 8 modulo 8: its chunk swizzle.
    swizzle: usize,
}

impl Fragments {
    #[inline(always)]
    fn new() -> Self {
        let (lane, warp) = (lane_idx(), warp_idx());
        let (row_m, row_n) = (64 * (warp % 2), 32 * (warp / 2));
        let x_row = |i: usize| ((row_m + 16 * i + lane % 16) * 2 * TILE_K) as u32;
        let w_row = |p: usize| ((row_n + 16 * p + lane % 8 + 8 * (lane / 16)) * 2 * TILE_K) as u32;
        Fragments {
            x_rows: [x_row(0), x_row(1), x_row(2), x_row(3)],
            x_high: lane / 16,
            w_rows: [w_row(0), w_row(1)],
            w_high: (lane / 8) % 2,
            swizzle: lane % 8,
        }
    }

    /// acc += the products of one step: X tile at `x`, W tile at `w` (shared addresses).
    #[inline(always)]
    unsafe fn multiply<const BF16: bool>(self, x: u32, w: u32, acc: &mut Accumulators) {
        unroll!([0, 1, 2, 3], |kk| {
            let x_chunk = (16 * ((2 * kk + self.x_high) ^ self.swizzle)) as u32;
            let w_chunk = (16 * ((2 * kk + self.w_high) ^ self.swizzle)) as u32;
            let a = unsafe {
                [
                    load_matrix_x4(x + self.x_rows[0] + x_chunk),
                    load_matrix_x4(x + self.x_rows[1] + x_chunk),
                    load_matrix_x4(x + self.x_rows[2] + x_chunk),
                    load_matrix_x4(x + self.x_rows[3] + x_chunk),
                ]
            };
            let [b0, b1, b2, b3] = unsafe { load_matrix_x4(w + self.w_rows[0] + w_chunk) };
            let [b4, b5, b6, b7] = unsafe { load_matrix_x4(w + self.w_rows[1] + w_chunk) };
            let b = [[b0, b1], [b2, b3], [b4, b5], [b6, b7]];
            unroll!([0, 1, 2, 3], |i| {
                unroll!([0, 1, 2, 3], |j| {
                    mma_16x8x16::<BF16>(&mut acc[i][j], a[i], b[j]);
                });
            });
        });
    }
}

/// Y = acc (+ bias) for this warp's sub-tile of the block's tile at (m0, n0), within (t, n_out).
#[inline(always)]
unsafe fn store_tile(
    acc: &Accumulators,
    bias: *const f32,
    y: *mut f32,
    (t, n_out): (usize, usize),
    (m0, n0): (usize, usize),
) {
    let (lane, warp) = (lane_idx(), warp_idx());
    let m = m0 + 64 * (warp % 2) + lane / 4;
    let n = n0 + 32 * (warp / 2) + 2 * (lane % 4);
    unroll!([0, 1, 2, 3], |j| {
        let column = n + 8 * j;
        let bias_at = |c: usize| if c < n_out && !bias.is_null() { unsafe { *bias.add(c) } } else { 0.0 };
        let (bias0, bias1) = (bias_at(column), bias_at(column + 1));
        unroll!([0, 1, 2, 3], |i| {
            unroll!([0, 1], |h| {
                let row = m + 16 * i + 8 * h;
                if row < t {
                    let out = unsafe { y.add(row * n_out + column) };
                    if column < n_out {
                        unsafe { *out = acc[i][j][2 * h] + bias0 };
                    }
                    if column + 1 < n_out {
                        unsafe { *out.add(1) = acc[i][j][2 * h + 1] + bias1 };
                    }
                }
            });
        });
    });
}

/// The product with 16-bit weights (f16, or bf16 with `BF16`), both operands through the ring.
#[inline(always)]
unsafe fn gemm_half<const BF16: bool>(
    x: *const u16,
    w: *const u16,
    bias: *const f32,
    y: *mut f32,
    t: u32,
    n_in: u32,
    n_out: u32,
) {
    let (t, n_in, n_out) = (t as usize, n_in as usize, n_out as usize);
    let (m0, n0) = (block_idx() * TILE_M, block_idx_y() * TILE_N);
    let x_ring = dynamic_shared_address();
    let w_ring = x_ring + STAGES as u32 * TILE_BYTES;
    let (x_copy, w_copy) = (TileCopy::new(x, t, n_in, m0), TileCopy::new(w, n_out, n_in, n0));
    let steps = n_in.div_ceil(TILE_K);
    let fragments = Fragments::new();
    let mut acc: Accumulators = [[[0.0; 4]; 4]; 4];
    for s in 0..STAGES - 1 {
        if s < steps {
            unsafe {
                x_copy.copy(x_ring + s as u32 * TILE_BYTES, s * TILE_K);
                w_copy.copy(w_ring + s as u32 * TILE_BYTES, s * TILE_K);
            }
        }
        copy_async_commit();
    }
    for k in 0..steps {
        // Step k's tiles have landed (this thread's copies), and after the barrier everyone's
        // have; every thread is also done with step k - 1, whose slot the copy below refills.
        copy_async_wait::<{ (STAGES - 2) as u32 }>();
        sync_threads();
        let ahead = k + STAGES - 1;
        if ahead < steps {
            let slot = (ahead % STAGES) as u32 * TILE_BYTES;
            unsafe {
                x_copy.copy(x_ring + slot, ahead * TILE_K);
                w_copy.copy(w_ring + slot, ahead * TILE_K);
            }
        }
        copy_async_commit();
        let slot = (k % STAGES) as u32 * TILE_BYTES;
        unsafe { fragments.multiply::<BF16>(x_ring + slot, w_ring + slot, &mut acc) };
    }
    copy_async_wait::<0>();
    unsafe { store_tile(&acc, bias, y, (t, n_out), (m0, n0)) };
}

/// A quantized weight format, as the GEMM reads it: one block of 32 weights at a time.
trait BlockWeights: Copy {
    type Raw: Copy + Default;
    /// The raw bits of block `block` (along n_in) of row `row`.
    unsafe fn load(self, row: usize, block: usize) -> Self::Raw;
    /// Its 32 values as f16 pairs.
    fn dequantize(raw: Self::Raw, block: usize) -> [u32; 16];
}

/// The product with quantized weights.
#[inline(always)]
unsafe fn gemm_quantized<F: BlockWeights>(
    x: *const u16,
    w: F,
    bias: *const f32,
    y: *mut f32,
    t: u32,
    n_in: u32,
    n_out: u32,
) {
    let (t, n_in, n_out) = (t as usize, n_in as usize, n_out as usize);
    let (m0, n0) = (block_idx() * TILE_M, block_idx_y() * TILE_N);
    let x_ring = dynamic_shared_address();
    let w_tiles = x_ring + STAGES as u32 * TILE_BYTES;
    let x_copy = TileCopy::new(x, t, n_in, m0);
    let steps = n_in.div_ceil(TILE_K);
    let fragments = Fragments::new();
    let mut acc: Accumulators = [[[0.0; 4]; 4]; 4];

    // Thread (r, half) dequantizes block `half` of each step's two blocks of row n0 + r.
    let (r, half) = (thread_idx() / 2, thread_idx() % 2);
    let (row, blocks) = (n0 + r, n_in.div_ceil(32));
    let load = |k: usize| {
        let block = 2 * k + half;
        if row < n_out && block < blocks { unsafe { w.load(row, block) } } else { F::Raw::default() }
    };
    let store = |raw: F::Raw, k: usize, tile: u32| {
        let v = F::dequantize(raw, 2 * k + half);
        unroll!([0, 1, 2, 3], |i| {
            let words = [v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]];
            unsafe { shared_store_u32x4(tile + tile_offset(r, 4 * half + i), words) };
        });
    };

    for s in 0..STAGES - 1 {
        if s < steps {
            unsafe { x_copy.copy(x_ring + s as u32 * TILE_BYTES, s * TILE_K) };
        }
        copy_async_commit();
    }
    store(load(0), 0, w_tiles);
    let mut raw = load(1);
    for k in 0..steps {
        copy_async_wait::<{ (STAGES - 2) as u32 }>();
        // After this barrier: step k's X tile and W tile (dequantized during step k - 1) are
        // visible, and every thread is done with step k - 1's tiles, which are refilled below.
        sync_threads();
        let ahead_x = k + STAGES - 1;
        if ahead_x < steps {
            unsafe { x_copy.copy(x_ring + (ahead_x % STAGES) as u32 * TILE_BYTES, ahead_x * TILE_K) };
        }
        copy_async_commit();
        let ahead = load(k + 2);
        let slot = (k % STAGES) as u32 * TILE_BYTES;
        unsafe {
            fragments.multiply::<false>(x_ring + slot, w_tiles + (k % 2) as u32 * TILE_BYTES, &mut acc)
        };
        if k + 1 < steps {
            store(raw, k + 1, w_tiles + ((k + 1) % 2) as u32 * TILE_BYTES);
        }
        raw = ahead;
    }
    copy_async_wait::<0>();
    unsafe { store_tile(&acc, bias, y, (t, n_out), (m0, n0)) };
}

/// F32 rows (n_in a multiple of 4), rounded to f16: blocks of 32 as 8 x 16 bytes, the last block
/// of a row cut at n_in.
#[derive(Clone, Copy)]
struct F32Rows {
    w: *const f32,
    n_in: usize,
}

impl BlockWeights for F32Rows {
    type Raw = [u32; 32];
    #[inline(always)]
    unsafe fn load(self, row: usize, block: usize) -> [u32; 32] {
        let p = unsafe { self.w.add(row * self.n_in + 32 * block) };
        let mut v = [0u32; 32];
        unroll!([0, 1, 2, 3, 4, 5, 6, 7], |i| {
            if 32 * block + 4 * i < self.n_in {
                let [a, b, c, d] = unsafe { load_f32x4(p.add(4 * i)) };
                (v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]) =
                    (a.to_bits(), b.to_bits(), c.to_bits(), d.to_bits());
            }
        });
        v
    }
    #[inline(always)]
    fn dequantize(raw: [u32; 32], _block: usize) -> [u32; 16] {
        let mut out = [0u32; 16];
        unroll!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], |p| {
            out[p] = pack_f16x2(f32::from_bits(raw[2 * p]), f32::from_bits(raw[2 * p + 1]));
        });
        out
    }
}

/// Q8_0: quants [n_out, n_in] i8, scales [n_out, n_in / 32] f16.
#[derive(Clone, Copy)]
struct Q8_0 {
    quants: *const u8,
    scales: *const u16,
    n_in: usize,
}

impl BlockWeights for Q8_0 {
    type Raw = RawQ8_0;
    #[inline(always)]
    unsafe fn load(self, row: usize, block: usize) -> RawQ8_0 {
        let q = unsafe { self.quants.add(row * self.n_in + 32 * block) };
        let ([a, b, c, d], [e, f, g, h]) =
            unsafe { (load_u16x8(q as *const u16), load_u16x8(q.add(16) as *const u16)) };
        RawQ8_0 {
            quants: [a, b, c, d, e, f, g, h],
            d: unsafe { *self.scales.add(row * (self.n_in / 32) + block) },
        }
    }
    #[inline(always)]
    fn dequantize(raw: RawQ8_0, _block: usize) -> [u32; 16] {
        dequantize_q8_0(raw)
    }
}

/// Q4_0 and Q4_1 (with `mins`): quants [n_out, n_in / 2] nibble bytes, scales and mins
/// [n_out, n_in / 32] f16.
#[derive(Clone, Copy)]
struct Q4<const MIN: bool> {
    quants: *const u8,
    scales: *const u16,
    mins: *const u16,
    n_in: usize,
}

impl<const MIN: bool> BlockWeights for Q4<MIN> {
    type Raw = RawQ4;
    #[inline(always)]
    unsafe fn load(self, row: usize, block: usize) -> RawQ4 {
        let at = row * (self.n_in / 32) + block;
        unsafe {
            RawQ4 {
                quants: load_u16x8(self.quants.add(16 * at) as *const u16),
                d: *self.scales.add(at),
                m: if MIN { *self.mins.add(at) } else { 0 },
            }
        }
    }
    #[inline(always)]
    fn dequantize(raw: RawQ4, _block: usize) -> [u32; 16] {
        if MIN { dequantize_q4_1(raw) } else { dequantize_q4_0(raw) }
    }
}

/// Q4_K: quants [n_out, n_in / 2] (16 nibble bytes per sub-block), heads [n_out, n_in / 256]
/// x 16 bytes.
#[derive(Clone, Copy)]
struct Q4K {
    quants: *const u8,
    heads: *const u8,
    n_in: usize,
}

impl BlockWeights for Q4K {
    type Raw = RawQ4K;
    #[inline(always)]
    unsafe fn load(self, row: usize, block: usize) -> RawQ4K {
        let at = row * (self.n_in / 32) + block;
        unsafe {
            RawQ4K {
                quants: load_u16x8(self.quants.add(16 * at) as *const u16),
                head: load_u16x8(self.heads.add(16 * (at / 8)) as *const u16),
            }
        }
    }
    #[inline(always)]
    fn dequantize(raw: RawQ4K, block: usize) -> [u32; 16] {
        dequantize_q4_k(raw, block % 8)
    }
}

#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Pair([u32; 2]);

/// Q6_K: low [n_out, n_in / 2] nibble bytes, high [n_out, n_in / 4] (8 bytes per block of 32),
/// scales (d) [n_out, n_in / 256] f16, sub [n_out, n_in / 256] x 16 i8.
#[derive(Clone, Copy)]
struct Q6K {
    low: *const u8,
    high: *const u8,
    scales: *const u16,
    sub: *const u8,
    n_in: usize,
}

impl BlockWeights for Q6K {
    type Raw = RawQ6K;
    #[inline(always)]
    unsafe fn load(self, row: usize, block: usize) -> RawQ6K {
        let at = row * (self.n_in / 32) + block;
        unsafe {
            RawQ6K {
                low: load_u16x8(self.low.add(16 * at) as *const u16),
                high: (*(self.high.add(8 * at) as *const Pair)).0,
                scales: *(self.sub.add(2 * at) as *const u16),
                d: *self.scales.add(at / 8),
            }
        }
    }
    #[inline(always)]
    fn dequantize(raw: RawQ6K, _block: usize) -> [u32; 16] {
        dequantize_q6_k(raw)
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gemm_f32(
    x: *const u16,
    w: *const f32,
    bias: *const f32,
    y: *mut f32,
    t: u32,
    n_in: u32,
    n_out: u32,
) {
    unsafe { gemm_quantized(x, F32Rows { w, n_in: n_in as usize }, bias, y, t, n_in, n_out) };
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gemm_f16(
    x: *const u16,
    w: *const u16,
    bias: *const f32,
    y: *mut f32,
    t: u32,
    n_in: u32,
    n_out: u32,
) {
    unsafe { gemm_half::<false>(x, w, bias, y, t, n_in, n_out) };
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gemm_bf16(
    x: *const u16,
    w: *const u16,
    bias: *const f32,
    y: *mut f32,
    t: u32,
    n_in: u32,
    n_out: u32,
) {
    unsafe { gemm_half::<true>(x, w, bias, y, t, n_in, n_out) };
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn gemm_q8_0(
    x: *const u16,
    quants: *const u8,
    scales: *const u16,
    bias: *const f32,
    y: *mut f32,
    t: u32,
    n_in: u32,
    n_out: u32,
) {
    let w = Q8_0 { quants, scales, n_in: n_in as usize };
    unsafe { gemm_quantized(x, w, bias, y, t, n_in, n_out) };
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn gemm_q4_0(
    x: *const u16,
    quants: *const u8,
    scales: *const u16,
    bias: *const f32,
    y: *mut f32,
    t: u32,
    n_in: u32,
    n_out: u32,
) {
    let w = Q4::<false> { quants, scales, mins: scales, n_in: n_in as usize };
    unsafe { gemm_quantized(x, w, bias, y, t, n_in, n_out) };
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn gemm_q4_1(
    x: *const u16,
    quants: *const u8,
    scales: *const u16,
    mins: *const u16,
    bias: *const f32,
    y: *mut f32,
    t: u32,
    n_in: u32,
    n_out: u32,
) {
    let w = Q4::<true> { quants, scales, mins, n_in: n_in as usize };
    unsafe { gemm_quantized(x, w, bias, y, t, n_in, n_out) };
}

/// Q4_K: `heads` is the matrix's `scales` array (16 bytes per super-block).
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn gemm_q4_k(
    x: *const u16,
    quants: *const u8,
    heads: *const u8,
    bias: *const f32,
    y: *mut f32,
    t: u32,
    n_in: u32,
    n_out: u32,
) {
    let w = Q4K { quants, heads, n_in: n_in as usize };
    unsafe { gemm_quantized(x, w, bias, y, t, n_in, n_out) };
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn gemm_q6_k(
    x: *const u16,
    low: *const u8,
    high: *const u8,
    scales: *const u16,
    sub: *const u8,
    bias: *const f32,
    y: *mut f32,
    t: u32,
    n_in: u32,
    n_out: u32,
) {
    let w = Q6K { low, high, scales, sub, n_in: n_in as usize };
    unsafe { gemm_quantized(x, w, bias, y, t, n_in, n_out) };
}

/// out[i] = x[i] rounded to nearest-even f16 (`BF16`: bf16), eight values per thread and step
/// (n a multiple of 8, x 16-byte aligned): the GEMM's X operand.
#[inline(always)]
unsafe fn convert<const BF16: bool>(x: *const f32, out: *mut u32, n: u32) {
    let pack = if BF16 { pack_bf16x2 } else { pack_f16x2 };
    let n = n as usize;
    let mut i = 8 * global_idx();
    while i < n {
        let ([a, b, c, d], [e, f, g, h]) = unsafe { (load_f32x4(x.add(i)), load_f32x4(x.add(i + 4))) };
        unsafe { store_u32x4(out.add(i / 2), [pack(a, b), pack(c, d), pack(e, f), pack(g, h)]) };
        i += 8 * grid_size();
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn convert_f32_to_f16(x: *const f32, out: *mut u32, n: u32) {
    unsafe { convert::<false>(x, out, n) };
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn convert_f32_to_bf16(x: *const f32, out: *mut u32, n: u32) {
    unsafe { convert::<true>(x, out, n) };
}
