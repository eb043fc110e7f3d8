//! Matrix products on the tensor cores, for prefill: Y = X W^T (+ bias).
//!
//! Math: Y[t, o] = sum_i X[t, i] W[o, i] (+ bias[o]), the products of 16-bit operands summed in
//! f32 (`mma.sync` m16n8k16). X is the engine's f32 activations, rounded once to f16 (bf16 for
//! bf16 weights) by `convert_f32_to_f16` into a buffer before the product: the product's main
//! loop then copies both operands with `cp.async` and no register staging (registers are what the
//! accumulators need), and X's L2 traffic (it is read once per column of blocks) halves. The
//! conversion is one pass over X, a few percent of the product at prefill sizes; a producer of X
//! (RMSNorm, SwiGLU) could write the f16 copy itself. Quantized and f32 weights are dequantized
//! (rounded) to f16 tile by tile in shared memory (dequant.rs: the CPU dequantizer's values
//! rounded once), never to a copy in device memory.
//! Layout: X16 [T, n_in] 16-bit; W [n_out, n_in] as the host stores it (f32 / f16 / bf16 rows,
//! or the repacked blocks of host/src/matmul/mod.rs); Y [T, n_out] f32; bias [n_out] f32 or null.
//! n_in a multiple of 8 (the host checks it) and of the block (32, 256); any T and n_out.
//! Launch: grid (ceil(T / 128), ceil(n_out / 128)), 256 threads, 128 KiB of dynamic shared
//! memory (SHARED_BYTES). Block (bm, bn) computes the 128 x 128 tile of Y at tokens 128 bm,
//! outputs 128 bn, in steps of 64 along n_in; the blocks of one weight tile run together (bm
//! varies fastest) so that the weights come from DRAM once.
//! Tiles in shared memory: 128 rows of 64 values (128 bytes), the 16-byte chunk c of row r stored
//! at chunk c ^ (r % 8), so that the 8 row addresses of an `ldmatrix` (and the copies' and the
//! dequantization's stores) fall in distinct banks.
//! Warps: narrow layout (16-bit, f32, Q8_0, Q4_K weights): warp w computes the 64 x 32 sub-tile
//! at (64 (w % 2), 32 (w / 2)), per k16 slice 4 `ldmatrix.x4` of X, 2 of W, 16 mma; wide layout
//! (Q4_0, Q4_1, Q6_K): see `n8_tiles`. Which is faster was measured per format on the H100.
//! Pipeline: STAGES tiles of X (and of 16-bit W) in flight through `cp.async`, one barrier per
//! step; 16-bit W: the next copies sit between the k16 slices' products. Quantized W: each
//! thread loads one block of 32 weights (raw bits) two steps ahead into registers and dequantizes
//! it one step ahead into one of two f16 W tiles, interleaved with the products
//! (`gemm_quantized`) or after them (`gemm_quantized_phased`). A tile of at most 64 tokens (the
//! rows of a batched decode step) takes the phased loop on its first 64 rows in every quantized
//! format: each warp's sub-tile 32 x 32, half the tensor-core work of a full tile.
//! Split along K (grid z): two splits add into Y atomically (in either order the same sums),
//! more write partial sums that `gemm_sum_splits` adds in split order, so that products of few
//! tiles (the rows of a batched decode step against a 1,024- or 4,096-row matrix) fill the GPU.
//! Cost: 2 T n_in n_out FLOPs; W read once per 128 tokens (from L2 for the other row tiles of a
//! wave), X once per 128 outputs (from L2). Registers (ptxas, sm_90): 166 (16-bit), 167-168
//! (phased), 246-255 (wide, f32), no spills; one block of 8 warps per SM.

use super::dequant::{
    RawMxfp4, RawQ4, RawQ4K, RawQ6K, RawQ8_0, mxfp4_values, pack_chunk, q4_0_values, q4_1_values,
    q4_k_values, q6_k_values, q8_0_values,
};
use crate::device::{
    atomic_add_f32, block_idx, block_idx_y, block_idx_z, copy_async_16, copy_async_commit, copy_async_wait,
    dynamic_shared_address, global_idx, grid_dim_z, grid_size, lane_idx, load_f32x4, load_matrix_x4,
    load_u16x8, mma_16x8x16, pack_bf16x2, pack_f16x2, shared_load_f32, shared_store_f32, shared_store_u32x4,
    store_u32x4, sync_threads, thread_idx, two_blocks_per_sm, warp_idx,
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
/// two dequantized W tiles (quantized W); the wide layout's 8 warps x 128 x 32 f32 sums at the
/// end reuse it.
pub const SHARED_BYTES: usize = 2 * STAGES * TILE_BYTES as usize;
const _: () = assert!(SHARED_BYTES >= 8 * 128 * 32 * 4 && SHARED_BYTES >= (STAGES + 2) * TILE_BYTES as usize);

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

    /// Starts the copy of part i (< 4: rows r + 32 i) of the tile at columns k0..k0 + 64 into the
    /// tile at shared address `tile`; with `live` false (a step past the end) it zero-fills.
    #[inline(always)]
    unsafe fn copy_part(self, tile: u32, k0: usize, i: usize, live: bool) {
        let valid = live && k0 + self.column < self.n && self.valid_rows & (1 << i) != 0;
        let src = if valid { self.src.wrapping_add(32 * i * self.n + k0) } else { self.base };
        // Row r + 32 i has the same swizzle as row r.
        unsafe { copy_async_16(tile + self.offset + (32 * i * 2 * TILE_K) as u32, src as *const u8, valid) };
    }

    #[inline(always)]
    unsafe fn copy(self, tile: u32, k0: usize) {
        unroll!([0, 1, 2, 3], |i| { unsafe { self.copy_part(tile, k0, i, true) } });
    }
}

/// The row map of a dense product of `t` tokens: tile row m is Y row m.
#[inline(always)]
fn tokens(t: usize) -> impl Fn(usize) -> Option<usize> {
    move |m| if m < t { Some(m) } else { None }
}

/// Copies of X tiles: part i (< 4: rows tid / 8 + 32 i) of the tile at columns k0..k0 + 64.
pub(crate) trait XTiles: Copy {
    unsafe fn copy_part(self, tile: u32, k0: usize, i: usize, live: bool);
    #[inline(always)]
    unsafe fn copy(self, tile: u32, k0: usize) {
        unroll!([0, 1, 2, 3], |i| { unsafe { self.copy_part(tile, k0, i, true) } });
    }
}

impl XTiles for TileCopy {
    #[inline(always)]
    unsafe fn copy_part(self, tile: u32, k0: usize, i: usize, live: bool) {
        unsafe { TileCopy::copy_part(self, tile, k0, i, live) }
    }
}

/// X tiles gathered from rows of a [rows, n] 16-bit matrix: tile row r + 32 i is matrix row
/// `sources[i]` (None: zero-filled).
#[derive(Clone, Copy)]
pub(crate) struct GatherCopy {
    base: *const u16,
    sources: [*const u16; 4],
    n: usize,
    column: usize,
    valid_rows: u32,
    offset: u32,
}

impl GatherCopy {
    /// `source(r)` is the matrix row of tile row r.
    #[inline(always)]
    pub(crate) fn new(base: *const u16, n: usize, source: impl Fn(usize) -> Option<usize>) -> Self {
        let (r, c) = (thread_idx() / 8, thread_idx() % 8);
        let mut valid_rows = 0u32;
        let mut sources = [base; 4];
        unroll!([0, 1, 2, 3], |i| {
            if let Some(row) = source(r + 32 * i) {
                valid_rows |= 1 << i;
                sources[i] = base.wrapping_add(row * n + 8 * c);
            }
        });
        GatherCopy { base, sources, n, column: 8 * c, valid_rows, offset: tile_offset(r, c) }
    }
}

impl XTiles for GatherCopy {
    #[inline(always)]
    unsafe fn copy_part(self, tile: u32, k0: usize, i: usize, live: bool) {
        let valid = live && k0 + self.column < self.n && self.valid_rows & (1 << i) != 0;
        let src = if valid { self.sources[i].wrapping_add(k0) } else { self.base };
        unsafe { copy_async_16(tile + self.offset + (32 * i * 2 * TILE_K) as u32, src as *const u8, valid) };
    }
}

/// This warp's accumulators: acc[i][j] is the m16n8 tile at rows 16 i, columns 8 j of its
/// sub-tile, in the mma's D layout (j < 4 in the narrow layout, < 8 in the wide one).
type Accumulators = [[[f32; 4]; 8]; 4];

/// The two warp layouts of a block's 128 x 128 tile (`WIDE` picks the second):
/// - narrow: 2 x 4 warps, each the 64 x 32 sub-tile at (64 (w % 2), 32 (w / 2)), over every k16
///   slice of a step (per slice: 4 `ldmatrix.x4` of X, 2 of W, 16 mma);
/// - wide: two groups of 2 x 2 warps, each warp the 64 x 64 sub-tile at (64 (w % 2),
///   64 (w / 2 % 2)), group w / 4 taking slices 2 g and 2 g + 1 of every step (per slice: 4 + 4
///   `ldmatrix.x4`, 32 mma: a third fewer shared-memory reads per mma); the groups' sums are
///   added through shared memory at the end.
const fn n8_tiles(wide: bool) -> usize {
    if wide { 8 } else { 4 }
}

/// One thread's `ldmatrix` row addresses within a tile (byte offsets of rows; the chunk is added
/// per step).
#[derive(Clone, Copy)]
struct Fragments {
    /// X: the m16 tiles i = 0..4; lane l gives row l % 16 of the tile, chunk 2 kk + l / 16.
    x_rows: [u32; 4],
    x_high: usize,
    /// W: pairs of n8 tiles; lane l gives row (l % 8) + 8 (l / 16), chunk 2 kk + (l / 8) % 2, so
    /// that the four matrices are b0, b1 of the first n8 tile and b0, b1 of the second.
    w_rows: [u32; 4],
    w_high: usize,
    /// Every row this lane addresses is lane % 8 modulo 8: its chunk swizzle.
    swizzle: usize,
    /// The first k16 slice of a step this warp multiplies.
    first_slice: usize,
}

impl Fragments {
    /// `M16`: m16 tiles per warp, 4 (the layouts above) or 2 (narrow layout over the first 64
    /// rows of the tile only: warp w takes the 32 x 32 sub-tile at (32 (w % 2), 32 (w / 2))).
    #[inline(always)]
    fn new<const WIDE: bool, const M16: usize>() -> Self {
        let (lane, warp) = (lane_idx(), warp_idx());
        let (row_m, row_n, first_slice) = if WIDE {
            (64 * (warp % 2), 64 * (warp / 2 % 2), 2 * (warp / 4))
        } else {
            (16 * M16 * (warp % 2), 32 * (warp / 2), 0)
        };
        let x_row = |i: usize| ((row_m + 16 * i + lane % 16) * 2 * TILE_K) as u32;
        let w_row = |p: usize| ((row_n + 16 * p + lane % 8 + 8 * (lane / 16)) * 2 * TILE_K) as u32;
        Fragments {
            x_rows: [x_row(0), x_row(1), x_row(2), x_row(3)],
            x_high: lane / 16,
            w_rows: [w_row(0), w_row(1), w_row(2), w_row(3)],
            w_high: (lane / 8) % 2,
            swizzle: lane % 8,
            first_slice,
        }
    }

    /// acc += the products of one step: X tile at `x`, W tile at `w` (shared addresses), calling
    /// `between(part)` for parts 0..4 in turn between the products: work placed there shares the
    /// instruction stream with the tensor-core work (the loop body is one basic block).
    #[inline(always)]
    unsafe fn multiply<const BF16: bool, const WIDE: bool, const W_FIRST: bool, const M16: usize>(
        self,
        x: u32,
        w: u32,
        acc: &mut Accumulators,
        mut between: impl FnMut(usize),
    ) {
        let n8 = n8_tiles(WIDE);
        unroll!([0, 1, 2, 3], |s| {
            if !WIDE || s < 2 {
                let kk = self.first_slice + s;
                let x_chunk = (16 * ((2 * kk + self.x_high) ^ self.swizzle)) as u32;
                let w_chunk = (16 * ((2 * kk + self.w_high) ^ self.swizzle)) as u32;
                let a = unsafe {
                    let load = |i: usize| load_matrix_x4(x + self.x_rows[i] + x_chunk);
                    if M16 == 4 {
                        [load(0), load(1), load(2), load(3)]
                    } else {
                        [load(0), load(1), [0; 4], [0; 4]]
                    }
                };
                if W_FIRST && !WIDE {
                    // All of the slice's W fragments, then the products.
                    let [b0, b1, b2, b3] = unsafe { load_matrix_x4(w + self.w_rows[0] + w_chunk) };
                    let [b4, b5, b6, b7] = unsafe { load_matrix_x4(w + self.w_rows[1] + w_chunk) };
                    let b = [[b0, b1], [b2, b3], [b4, b5], [b6, b7]];
                    unroll!([0, 1, 2, 3], |i| {
                        if i < M16 {
                            unroll!([0, 1, 2, 3], |j| {
                                mma_16x8x16::<BF16>(&mut acc[i][j], a[i], b[j]);
                            });
                        }
                    });
                } else {
                    // W a pair of n8 tiles at a time, each used at once (4 live registers, not 16).
                    unroll!([0, 1, 2, 3], |p| {
                        if 2 * p < n8 {
                            let [b0, b1, b2, b3] = unsafe { load_matrix_x4(w + self.w_rows[p] + w_chunk) };
                            unroll!([0, 1, 2, 3], |i| {
                                if i < M16 {
                                    mma_16x8x16::<BF16>(&mut acc[i][2 * p], a[i], [b0, b1]);
                                    mma_16x8x16::<BF16>(&mut acc[i][2 * p + 1], a[i], [b2, b3]);
                                }
                            });
                        }
                    });
                }
                if WIDE {
                    between(2 * s);
                    between(2 * s + 1);
                } else {
                    between(s);
                }
            }
        });
    }
}

/// Y[rows(row), column..column + 2] = the pair (+ bias), within n_out; nothing where `rows` gives
/// None (a tile row past the tokens).
#[inline(always)]
unsafe fn store_pair(
    y: *mut f32,
    bias: *const f32,
    n_out: usize,
    rows: &impl Fn(usize) -> Option<usize>,
    (row, column): (usize, usize),
    pair: [f32; 2],
) {
    if let Some(row) = rows(row) {
        let out = unsafe { y.add(row * n_out + column) };
        // Split in two along K (`gemm_half`, `gemm_phased_tile` with a grid of two in z): each
        // half adds its sums into Y, which the host zeroed; a + b = b + a, so two halves give
        // the same Y in either order. More splits write their own slices (`split_output`).
        let accumulate = grid_dim_z() == 2;
        unroll!([0, 1], |e| {
            if column + e < n_out {
                let b = if bias.is_null() { 0.0 } else { unsafe { *bias.add(column + e) } };
                if accumulate {
                    unsafe { atomic_add_f32(out.add(e), pair[e] + b) };
                } else {
                    unsafe { *out.add(e) = pair[e] + b };
                }
            }
        });
    }
}

/// Where this block's split of a product along K writes: with a grid of more than two splits in
/// z, split z writes its own [t, n_out] slice of Y, which is then a buffer of partial sums that
/// `gemm_sum_splits` adds up in split order (deterministic, where atomic adds of three or more
/// splits would not be); otherwise Y itself.
#[inline(always)]
fn split_output(y: *mut f32, t: usize, n_out: usize) -> *mut f32 {
    if grid_dim_z() > 2 { y.wrapping_add(block_idx_z() * t * n_out) } else { y }
}

/// Y = acc (+ bias) for the block's tile at (m0, n0), within n_out, tile row m stored at Y row
/// `rows(m)` (dense products: m itself while m < T).
/// Narrow layout: each warp stores its sub-tile. Wide layout: every warp leaves its sums in shared
/// memory (the ring, free once every copy has landed: [warp][value][lane] words, so that a warp's
/// accesses are 32 consecutive words), then warp w adds the two groups' sums for the m16 rows
/// 2 (w / 4), 2 (w / 4) + 1 of sub-tile w % 4 and stores them.
#[inline(always)]
unsafe fn store_tile<const WIDE: bool, const M16: usize>(
    acc: &Accumulators,
    bias: *const f32,
    y: *mut f32,
    n_out: usize,
    rows: impl Fn(usize) -> Option<usize>,
    (m0, n0): (usize, usize),
) {
    let (lane, warp) = (lane_idx(), warp_idx());
    let (row, column) = (lane / 4, 2 * (lane % 4));
    if !WIDE {
        let (m, n) = (m0 + 16 * M16 * (warp % 2) + row, n0 + 32 * (warp / 2) + column);
        unroll!([0, 1, 2, 3], |j| {
            unroll!([0, 1, 2, 3], |i| {
                if i < M16 {
                    unroll!([0, 1], |h| {
                        let pair = [acc[i][j][2 * h], acc[i][j][2 * h + 1]];
                        unsafe { store_pair(y, bias, n_out, &rows, (m + 16 * i + 8 * h, n + 8 * j), pair) };
                    });
                }
            });
        });
        return;
    }
    let word = |warp: usize, value: usize| {
        dynamic_shared_address() + (4 * ((warp * 128 + value) * 32 + lane)) as u32
    };
    copy_async_wait::<0>();
    sync_threads();
    unroll!([0, 1, 2, 3], |i| {
        unroll!([0, 1, 2, 3, 4, 5, 6, 7], |j| {
            unroll!([0, 1, 2, 3], |e| {
                unsafe { shared_store_f32(word(warp, 32 * i + 4 * j + e), acc[i][j][e]) };
            });
        });
    });
    sync_threads();
    let position = warp % 4;
    let (m, n) = (m0 + 64 * (position % 2) + row, n0 + 64 * (position / 2) + column);
    unroll!([0, 1], |ii| {
        let i = 2 * (warp / 4) + ii;
        unroll!([0, 1, 2, 3, 4, 5, 6, 7], |j| {
            unroll!([0, 1], |h| {
                let sum = |e: usize| {
                    let v = 32 * i + 4 * j + 2 * h + e;
                    unsafe { shared_load_f32(word(position, v)) + shared_load_f32(word(position + 4, v)) }
                };
                unsafe {
                    store_pair(y, bias, n_out, &rows, (m + 16 * i + 8 * h, n + 8 * j), [sum(0), sum(1)])
                };
            });
        });
    });
}

/// The product with 16-bit weights (f16, or bf16 with `BF16`), both operands through the ring.
#[inline(always)]
unsafe fn gemm_half<const BF16: bool, const WIDE: bool>(
    x: *const u16,
    w: *const u16,
    bias: *const f32,
    y: *mut f32,
    t: u32,
    n_in: u32,
    n_out: u32,
) {
    let (t, n_in, n_out) = (t as usize, n_in as usize, n_out as usize);
    let y = split_output(y, t, n_out);
    let (m0, n0) = (block_idx() * TILE_M, block_idx_y() * TILE_N);
    let x_ring = dynamic_shared_address();
    let w_ring = x_ring + STAGES as u32 * TILE_BYTES;
    let (x_copy, w_copy) = (TileCopy::new(x, t, n_in, m0), TileCopy::new(w, n_out, n_in, n0));
    // With a grid of z splits, this block takes its share of the K steps (from step `first`) and
    // only the first split adds the bias.
    let (all_steps, splits) = (n_in.div_ceil(TILE_K), grid_dim_z());
    let share = all_steps.div_ceil(splits);
    let first = (block_idx_z() * share).min(all_steps);
    let steps = share.min(all_steps - first);
    let bias = if block_idx_z() == 0 { bias } else { core::ptr::null() };
    let fragments = Fragments::new::<WIDE, 4>();
    let mut acc: Accumulators = [[[0.0; 4]; 8]; 4];
    for s in 0..STAGES - 1 {
        if s < steps {
            unsafe {
                x_copy.copy(x_ring + s as u32 * TILE_BYTES, (first + s) * TILE_K);
                w_copy.copy(w_ring + s as u32 * TILE_BYTES, (first + s) * TILE_K);
            }
        }
        copy_async_commit();
    }
    for k in 0..steps {
        // Step k's tiles have landed (this thread's copies), and after the barrier everyone's
        // have; every thread is also done with step k - 1, whose slot the copies below refill
        // (interleaved with the products; past the last step they only zero-fill).
        copy_async_wait::<{ (STAGES - 2) as u32 }>();
        sync_threads();
        let ahead = k + STAGES - 1;
        let (live, next) = (ahead < steps, (ahead % STAGES) as u32 * TILE_BYTES);
        let slot = (k % STAGES) as u32 * TILE_BYTES;
        unsafe {
            fragments.multiply::<BF16, WIDE, false, 4>(x_ring + slot, w_ring + slot, &mut acc, |part| {
                x_copy.copy_part(x_ring + next, (first + ahead) * TILE_K, part, live);
                w_copy.copy_part(w_ring + next, (first + ahead) * TILE_K, part, live);
            })
        };
        copy_async_commit();
    }
    copy_async_wait::<0>();
    unsafe { store_tile::<WIDE, 4>(&acc, bias, y, n_out, tokens(t), (m0, n0)) };
}

/// A quantized weight format, as the GEMM reads it: one block of 32 weights at a time.
pub(crate) trait BlockWeights: Copy {
    type Raw: Copy + Default;
    /// The raw bits of block `block` (along n_in) of row `row`.
    unsafe fn load(self, row: usize, block: usize) -> Self::Raw;
    /// Its values as a function of their index in the block (< 32).
    fn values(self, raw: Self::Raw, block: usize) -> impl Fn(usize) -> f32;
}

/// The product with quantized weights, interleaved: a branch-free loop body in which the X copies
/// and the dequantization of the next W tile (a chunk of 8 values at a time) sit between the k16
/// slices' products, raw blocks loaded two steps ahead.
#[inline(always)]
unsafe fn gemm_quantized<F: BlockWeights, const WIDE: bool>(
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
    let x_copy = TileCopy::new(x, t, n_in, m0);
    // A tile of at most 64 tokens (a batched decode step's rows: the lm head of 33-64
    // sequences) takes the phased loop on its first 64 rows, half the tensor-core work.
    if t - m0 <= TILE_M / 2 {
        unsafe { gemm_phased_tile::<_, 2, false>(x_copy, w, bias, y, (n_in, n_out), tokens(t), (m0, n0)) };
        return;
    }
    let x_ring = dynamic_shared_address();
    let w_tiles = x_ring + STAGES as u32 * TILE_BYTES;
    let steps = n_in.div_ceil(TILE_K);
    let fragments = Fragments::new::<WIDE, 4>();
    let mut acc: Accumulators = [[[0.0; 4]; 8]; 4];

    // Thread (r, half) dequantizes block `half` of each step's two blocks of row n0 + r. Loads
    // are unconditional (a block past the matrix reads block 0 of row 0, which exists) and the
    // block's validity travels with it, so that the loop body has no branches.
    let (r, half) = (thread_idx() / 2, thread_idx() % 2);
    let (row, blocks) = (n0 + r, n_in.div_ceil(32));
    let load = |k: usize| {
        let block = 2 * k + half;
        let valid = row < n_out && block < blocks;
        let raw = unsafe { w.load(if valid { row } else { 0 }, if valid { block } else { 0 }) };
        (raw, valid)
    };
    // Chunk `chunk` (8 values) of this thread's block into the W tile at `tile`.
    let store = |values: &dyn Fn(usize) -> f32, tile: u32, chunk: usize| {
        unsafe { shared_store_u32x4(tile + tile_offset(r, 4 * half + chunk), pack_chunk(&values, chunk)) };
    };
    // A block past the matrix dequantizes zeros (all-zero raw bits are zeros in every format).
    let valid_raw = |(raw, valid): (F::Raw, bool)| if valid { raw } else { F::Raw::default() };

    for s in 0..STAGES - 1 {
        if s < steps {
            unsafe { x_copy.copy(x_ring + s as u32 * TILE_BYTES, s * TILE_K) };
        }
        copy_async_commit();
    }
    let values = w.values(valid_raw(load(0)), half);
    unroll!([0, 1, 2, 3], |chunk| { store(&values, w_tiles, chunk) });
    let mut raw = load(1);
    for k in 0..steps {
        copy_async_wait::<{ (STAGES - 2) as u32 }>();
        // After this barrier: step k's X tile and W tile (dequantized during step k - 1) are
        // visible, and every thread is done with step k - 1's tiles, which are refilled below.
        sync_threads();
        let ahead_x = k + STAGES - 1;
        let (live, next_x) = (ahead_x < steps, (ahead_x % STAGES) as u32 * TILE_BYTES);
        let ahead = load(k + 2);
        let slot = (k % STAGES) as u32 * TILE_BYTES;
        // Step k + 1's W tile (past the last step: the unused buffer, from zeros).
        let next_w = w_tiles + ((k + 1) % 2) as u32 * TILE_BYTES;
        let values = w.values(valid_raw(raw), 2 * (k + 1) + half);
        unsafe {
            fragments.multiply::<false, WIDE, false, 4>(
                x_ring + slot,
                w_tiles + (k % 2) as u32 * TILE_BYTES,
                &mut acc,
                |part| {
                    x_copy.copy_part(x_ring + next_x, ahead_x * TILE_K, part, live);
                    store(&values, next_w, part);
                },
            )
        };
        copy_async_commit();
        raw = ahead;
    }
    copy_async_wait::<0>();
    unsafe { store_tile::<WIDE, 4>(&acc, bias, y, n_out, tokens(t), (m0, n0)) };
}

/// The product with quantized weights, phased (narrow layout): per step, the X copies, then the
/// products, then the dequantization of the next W tile, raw blocks loaded two steps ahead.
/// Measured faster than the interleaved loop for Q4_K and Q8_0 (benches/NOTES.md), slower for
/// Q4_0, Q4_1 and Q6_K.
#[inline(always)]
unsafe fn gemm_quantized_phased<F: BlockWeights>(
    x: *const u16,
    w: F,
    bias: *const f32,
    y: *mut f32,
    t: u32,
    n_in: u32,
    n_out: u32,
) {
    let (t, n_in, n_out) = (t as usize, n_in as usize, n_out as usize);
    let y = split_output(y, t, n_out);
    let (m0, n0) = (block_idx() * TILE_M, block_idx_y() * TILE_N);
    let x_copy = TileCopy::new(x, t, n_in, m0);
    // A tile of at most 64 tokens (a batched decode step of 33-64 sequences, or the last tile of
    // a prompt) multiplies only its first 64 rows: half the tensor-core work.
    if t - m0 <= TILE_M / 2 {
        unsafe { gemm_phased_tile::<_, 2, false>(x_copy, w, bias, y, (n_in, n_out), tokens(t), (m0, n0)) };
    } else {
        unsafe { gemm_phased_tile::<_, 4, false>(x_copy, w, bias, y, (n_in, n_out), tokens(t), (m0, n0)) };
    }
}

/// The block's tile of the phased product: X tiles from `x_copy`, tile row m (from m0) stored at
/// Y row `rows(m)`, outputs n0.. of W's n_out rows. `M16` = 2 computes only the tile's first 64
/// rows (half the tensor-core work, for tiles known to hold no more; see `Fragments::new`).
#[inline(always)]
pub(crate) unsafe fn gemm_phased_tile<F: BlockWeights, const M16: usize, const COMPACT_X: bool>(
    x_copy: impl XTiles,
    w: F,
    bias: *const f32,
    y: *mut f32,
    (n_in, n_out): (usize, usize),
    rows: impl Fn(usize) -> Option<usize>,
    (m0, n0): (usize, usize),
) {
    // X stages of 128 rows (16 KiB), all four parts copied (rows past the tile's tokens
    // zero-filled); or, with COMPACT_X (the 64-row kernels, which fit 64 KiB of shared memory),
    // stages of 32 M16 rows holding only the parts i < M16 that the tile multiplies. The general
    // kernels keep the first form: it is the one measured and tested on a GPU, and COMPACT_X for
    // them waits for a run of the conformance suite.
    let x_stage = if COMPACT_X { TILE_BYTES * M16 as u32 / 4 } else { TILE_BYTES };
    let x_ring = dynamic_shared_address();
    let w_tiles = x_ring + STAGES as u32 * x_stage;
    let copy_x = |tile: u32, k0: usize| {
        if COMPACT_X {
            unroll!([0, 1, 2, 3], |i| {
                if i < M16 {
                    unsafe { x_copy.copy_part(tile, k0, i, true) }
                }
            });
        } else {
            unsafe { x_copy.copy(tile, k0) }
        }
    };
    // Split along K as in `gemm_half` (grid z = 2 for dense products of few tiles; the expert
    // products launch z = 1): this block's steps are first.., absolute step k = first + local.
    let (all_steps, splits) = (n_in.div_ceil(TILE_K), grid_dim_z());
    let share = all_steps.div_ceil(splits);
    let first = (block_idx_z() * share).min(all_steps);
    let steps = share.min(all_steps - first);
    let bias = if block_idx_z() == 0 { bias } else { core::ptr::null() };
    let fragments = Fragments::new::<false, M16>();
    let mut acc: Accumulators = [[[0.0; 4]; 8]; 4];

    let (r, half) = (thread_idx() / 2, thread_idx() % 2);
    let (row, blocks) = (n0 + r, n_in.div_ceil(32));
    let load = |k: usize| {
        let block = 2 * k + half;
        if row < n_out && block < blocks { unsafe { w.load(row, block) } } else { F::Raw::default() }
    };
    let store = |raw: F::Raw, k: usize, tile: u32| {
        let values = w.values(raw, 2 * k + half);
        unroll!([0, 1, 2, 3], |chunk| {
            unsafe {
                shared_store_u32x4(tile + tile_offset(r, 4 * half + chunk), pack_chunk(&values, chunk))
            };
        });
    };

    for s in 0..STAGES - 1 {
        if s < steps {
            copy_x(x_ring + s as u32 * x_stage, (first + s) * TILE_K);
        }
        copy_async_commit();
    }
    store(load(first), first, w_tiles);
    let mut raw = load(first + 1);
    for k in 0..steps {
        copy_async_wait::<{ (STAGES - 2) as u32 }>();
        sync_threads();
        let ahead_x = k + STAGES - 1;
        if ahead_x < steps {
            copy_x(x_ring + (ahead_x % STAGES) as u32 * x_stage, (first + ahead_x) * TILE_K);
        }
        copy_async_commit();
        let ahead = load(first + k + 2);
        let slot = (k % STAGES) as u32 * x_stage;
        unsafe {
            fragments.multiply::<false, false, true, M16>(
                x_ring + slot,
                w_tiles + (k % 2) as u32 * TILE_BYTES,
                &mut acc,
                |_| {},
            )
        };
        if k + 1 < steps {
            store(raw, first + k + 1, w_tiles + ((k + 1) % 2) as u32 * TILE_BYTES);
        }
        raw = ahead;
    }
    copy_async_wait::<0>();
    unsafe { store_tile::<false, M16>(&acc, bias, y, n_out, rows, (m0, n0)) };
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
    fn values(self, raw: [u32; 32], block: usize) -> impl Fn(usize) -> f32 {
        let valid = self.n_in - 32 * block.min(self.n_in / 32);
        move |v| if v < valid { f32::from_bits(raw[v]) } else { 0.0 }
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
    fn values(self, raw: RawQ8_0, _block: usize) -> impl Fn(usize) -> f32 {
        q8_0_values(raw)
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

impl<const MIN: bool> Q4<MIN> {
    #[inline(always)]
    unsafe fn load_block(self, row: usize, block: usize) -> RawQ4 {
        let at = row * (self.n_in / 32) + block;
        unsafe {
            RawQ4 {
                quants: load_u16x8(self.quants.add(16 * at) as *const u16),
                d: *self.scales.add(at),
                m: if MIN { *self.mins.add(at) } else { 0 },
            }
        }
    }
}

impl BlockWeights for Q4<false> {
    type Raw = RawQ4;
    #[inline(always)]
    unsafe fn load(self, row: usize, block: usize) -> RawQ4 {
        unsafe { self.load_block(row, block) }
    }
    #[inline(always)]
    fn values(self, raw: RawQ4, _block: usize) -> impl Fn(usize) -> f32 {
        q4_0_values(raw)
    }
}

impl BlockWeights for Q4<true> {
    type Raw = RawQ4;
    #[inline(always)]
    unsafe fn load(self, row: usize, block: usize) -> RawQ4 {
        unsafe { self.load_block(row, block) }
    }
    #[inline(always)]
    fn values(self, raw: RawQ4, _block: usize) -> impl Fn(usize) -> f32 {
        q4_1_values(raw)
    }
}

/// Q4_K: quants [n_out, n_in / 2] (16 nibble bytes per sub-block), heads [n_out, n_in / 256]
/// x 20 bytes (d, dmin, then a (scale, min) byte pair per sub-block).
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
        let head = unsafe { self.heads.add(20 * (at / 8)) };
        unsafe {
            RawQ4K {
                quants: load_u16x8(self.quants.add(16 * at) as *const u16),
                dm: *(head as *const u32),
                pair: *(head.add(4 + 2 * (at % 8)) as *const u16),
            }
        }
    }
    #[inline(always)]
    fn values(self, raw: RawQ4K, _block: usize) -> impl Fn(usize) -> f32 {
        q4_k_values(raw)
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
    fn values(self, raw: RawQ6K, _block: usize) -> impl Fn(usize) -> f32 {
        q6_k_values(raw)
    }
}

/// MXFP4: quants [n_out, n_in / 2] (16 nibble bytes per block, value 2k low and 2k + 1 high in
/// byte k), exponents [n_out, n_in / 32] E8M0 bytes.
#[derive(Clone, Copy)]
pub(crate) struct Mxfp4 {
    pub(crate) quants: *const u8,
    pub(crate) exponents: *const u8,
    pub(crate) n_in: usize,
}

impl BlockWeights for Mxfp4 {
    type Raw = RawMxfp4;
    #[inline(always)]
    unsafe fn load(self, row: usize, block: usize) -> RawMxfp4 {
        let at = row * (self.n_in / 32) + block;
        unsafe {
            RawMxfp4 {
                quants: load_u16x8(self.quants.add(16 * at) as *const u16),
                e: *self.exponents.add(at) as u32,
            }
        }
    }
    #[inline(always)]
    fn values(self, raw: RawMxfp4, _block: usize) -> impl Fn(usize) -> f32 {
        mxfp4_values(raw)
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
    // f32 rows take the narrow layout: their raw blocks (32 words, two in flight) leave no room
    // in the registers for the wide layout's accumulators.
    unsafe { gemm_quantized::<_, false>(x, F32Rows { w, n_in: n_in as usize }, bias, y, t, n_in, n_out) };
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
    unsafe { gemm_half::<false, false>(x, w, bias, y, t, n_in, n_out) };
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
    unsafe { gemm_half::<true, false>(x, w, bias, y, t, n_in, n_out) };
}

/// The 64-row kernels: products of at most 64 tokens (the rows of a batched decode step of 33-64
/// sequences) with quantized weights, on kernels of their own rather than the 64-row branch of
/// the general kernels, so that they are compiled for that tile alone: the phased loop over the
/// first 64 rows (warp sub-tiles 32 x 32), X stages of 64 rows, SHARED_BYTES_64 of shared memory
/// and at most 128 registers (`.maxntid 256` + `.minnctapersm 2`, set by host/build.rs from
/// the marker below), so that two blocks (16 warps) share an SM where the general kernels fit
/// one. Launch: grid (1, ceil(n_out / 128), splits along K), 256 threads, T <= 64.
#[inline(always)]
unsafe fn gemm_quantized_rows64<F: BlockWeights>(
    x: *const u16,
    w: F,
    bias: *const f32,
    y: *mut f32,
    t: u32,
    n_in: u32,
    n_out: u32,
) {
    two_blocks_per_sm();
    let (t, n_in, n_out) = (t as usize, n_in as usize, n_out as usize);
    let y = split_output(y, t, n_out);
    let (x_copy, tile) = (TileCopy::new(x, t, n_in, 0), (0, block_idx_y() * TILE_N));
    unsafe { gemm_phased_tile::<_, 2, true>(x_copy, w, bias, y, (n_in, n_out), tokens(t), tile) };
}

/// Shared memory of a 64-row kernel: four X stages of 64 x 64 and two W tiles of 128 x 64.
pub const SHARED_BYTES_64: usize = STAGES * TILE_BYTES as usize / 2 + 2 * TILE_BYTES as usize;

/// The quantized formats' entry points, two per format: `gemm_<format>` (the general kernel, on
/// the loop measured fastest for the format: the phased one, or the interleaved one in the
/// narrow or wide layout) and `gemm_rows64_<format>` (the 64-row kernel). Arguments: X16, the
/// format's arrays (as host/src/matmul/gemm.rs passes them, from the first row of the range),
/// bias, Y, T, n_in, n_out.
macro_rules! quantized_kernels {
    ($($general:ident, $rows64:ident: ($($field:ident: $ty:ty),*) => |$n_in:ident| $weights:expr, $loop:expr;)*) => {$(
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $general(
            x: *const u16,
            $($field: $ty,)*
            bias: *const f32,
            y: *mut f32,
            t: u32,
            $n_in: u32,
            n_out: u32,
        ) {
            unsafe { $loop(x, $weights, bias, y, t, $n_in, n_out) };
        }

        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $rows64(
            x: *const u16,
            $($field: $ty,)*
            bias: *const f32,
            y: *mut f32,
            t: u32,
            $n_in: u32,
            n_out: u32,
        ) {
            unsafe { gemm_quantized_rows64(x, $weights, bias, y, t, $n_in, n_out) };
        }
    )*};
}

quantized_kernels! {
    gemm_q8_0, gemm_rows64_q8_0: (quants: *const u8, scales: *const u16)
        => |n_in| Q8_0 { quants, scales, n_in: n_in as usize }, gemm_quantized_phased;
    gemm_q4_0, gemm_rows64_q4_0: (quants: *const u8, scales: *const u16)
        => |n_in| Q4::<false> { quants, scales, mins: scales, n_in: n_in as usize }, gemm_quantized::<_, true>;
    gemm_q4_1, gemm_rows64_q4_1: (quants: *const u8, scales: *const u16, mins: *const u16)
        => |n_in| Q4::<true> { quants, scales, mins, n_in: n_in as usize }, gemm_quantized::<_, true>;
    // Q4_K: `heads` is the matrix's `scales` array (20 bytes per super-block).
    gemm_q4_k, gemm_rows64_q4_k: (quants: *const u8, heads: *const u8)
        => |n_in| Q4K { quants, heads, n_in: n_in as usize }, gemm_quantized_phased;
    gemm_q6_k, gemm_rows64_q6_k: (low: *const u8, high: *const u8, scales: *const u16, sub: *const u8)
        => |n_in| Q6K { low, high, scales, sub, n_in: n_in as usize }, gemm_quantized::<_, true>;
    gemm_mxfp4, gemm_rows64_mxfp4: (quants: *const u8, exponents: *const u8)
        => |n_in| Mxfp4 { quants, exponents, n_in: n_in as usize }, gemm_quantized::<_, true>;
}

/// y[i] = the sum over s < splits of partials[s n + i], in split order: the splits of a product
/// along K (`split_output`) added up. One thread per element and grid stride (coalesced).
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gemm_sum_splits(partials: *const f32, y: *mut f32, splits: u32, n: u32) {
    let (splits, n) = (splits as usize, n as usize);
    let mut i = global_idx();
    while i < n {
        let mut sum = 0.0;
        for s in 0..splits {
            sum += unsafe { *partials.add(s * n + i) };
        }
        unsafe { *y.add(i) = sum };
        i += grid_size();
    }
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
