//! The MXFP4 experts' product of a batched decode step (gpt-oss) on the integer tensor cores,
//! with the weights streamed through shared memory in a ring of stages.
//!
//! Why: the dense row kernel of mma_rows.rs splits K across its four warps and gives each block
//! 16 rows, so that a small matrix still fills the GPU. An expert step is big (gpt-oss-20b's
//! gate and up are 32 experts x 5760 rows) but that layout made its blocks short-lived: three
//! steps of 8 blocks of K per warp, each a load, a wait and a few mma, then a reduction across
//! the warps. ncu measured 327 us for gate+up at 64 tokens, 282 MB of weights at 0.86 TB/s, and
//! the experts were 62% of the step (benches/NOTES.md, 2026-12-04). Here every warp walks the
//! whole of K for its own 16 rows, and the block keeps STAGES - 1 steps of weights in flight with
//! `cp.async` (no registers held) while it multiplies the step that landed.
//! Math (as mma_rows.rs): Y[a, o] = sum_b scale(o, b) xd[t, b] dot_b(W_e[o], X[t]) (+ bias[o])
//! over the blocks b of 32 values, for each assignment a (token t) of expert e; dot_b is the exact
//! integer sum of the doubled E2M1 values against the 8-bit activations, the scale the E8M0
//! exponent's half. The f32 sums over blocks run in K order per lane, as in mma_rows.rs's warps,
//! so a row matches the batch-1 expert GEMV to f32 rounding, not bit for bit.
//! Layout (shared memory, per stage): the block's 64 rows x UNITS blocks of nibbles (16 bytes
//! each, rows padded to 144 bytes so that the A fragment's loads hit 32 banks), per row the
//! 4-byte words that hold its UNITS exponent bytes (the row's bytes start anywhere in a word),
//! the pass's tokens' UNITS blocks of X (272 bytes per token, as mma_rows.rs) and their scales.
//! Launch: grid (ceil(rows / 64), experts), 128 threads (4 warps, warp w rows 16 w.. of the
//! block's 64), SHARED_BYTES of dynamic shared memory (~44 KiB: four blocks per SM).
//! Cost: weights once from DRAM per pass of 16 tokens, X once from L2 per 64 rows; per block of
//! K per warp two shared loads of A, two of exponents, per 8 tokens two of X, one of scales and
//! one mma. One barrier per step.

use super::dequant::e8m0_half;
use super::mma_rows::e2m1_bytes;
use crate::device::{
    block_idx, block_idx_y, copy_async_4, copy_async_4_prefix, copy_async_16, copy_async_commit,
    copy_async_wait, dynamic_shared_address, fma, lane_idx, mma_16x8x32_i8, shared_load_f32x2,
    shared_load_u8, shared_load_u32, shared_store_u32, sync_threads, thread_idx, warp_idx,
};
use crate::unroll;

const WARPS: usize = 4;
pub const THREADS: usize = 32 * WARPS;
/// Weight rows per block: 16 per warp (the mma's M).
pub const ROWS: usize = 16 * WARPS;
/// Blocks of 32 along K per stage.
const UNITS: usize = 8;
/// Stages in the ring: STAGES - 1 in flight while one is multiplied.
const STAGES: usize = 3;
/// Tokens per pass over the weights: FRAGMENTS mma columns of 8 (at 64 tokens of 4 experts of 32
/// an expert has 8 on average; 16 leaves the shared memory for four blocks per SM).
const FRAGMENTS: usize = 2;
const TOKENS: usize = 8 * FRAGMENTS;

/// Bytes of one weight row's UNITS blocks of nibbles in a stage, padded by 16 (36 words: row r's
/// word t of block u at bank 4 r + 4 u + t, so the eight rows g of a fragment load hit 32 banks).
const W_STRIDE: usize = 16 * UNITS + 16;
/// One row's exponent words: the UNITS bytes start at an offset 0..3 of the first word.
const E_STRIDE: usize = 16;
/// Exponent words copied per row (3 hold any 8 bytes at any offset).
const E_WORDS: usize = 3;
/// Bytes of one token's staged activations (as mma_rows.rs: 8 tokens of a B fragment fall in
/// different banks).
const X_STRIDE: usize = 32 * UNITS + 16;
const W_BYTES: usize = ROWS * W_STRIDE;
const E_BYTES: usize = ROWS * E_STRIDE;
const X_BYTES: usize = TOKENS * X_STRIDE;
/// The activations' scales as [UNITS][TOKENS] f32.
const D_BYTES: usize = 4 * UNITS * TOKENS;
const STAGE_BYTES: usize = W_BYTES + E_BYTES + X_BYTES + D_BYTES;
/// The pass's X and Y row tables ([TOKENS] u32 each) follow the stages.
const TABLES: usize = STAGES * STAGE_BYTES;
pub const SHARED_BYTES: usize = TABLES + 2 * 4 * TOKENS;
const _: () = assert!(STAGE_BYTES % 16 == 0 && W_STRIDE % 16 == 0 && X_STRIDE % 16 == 0);
/// Copies per thread and stage of X's 16-byte pieces and of its scales.
const X_COPIES: usize = TOKENS * 16 / THREADS;
const D_COPIES: usize = TOKENS * UNITS / THREADS;
const _: () = assert!(ROWS * UNITS == 4 * THREADS && X_COPIES * THREADS == TOKENS * 16 && X_COPIES <= 4);
const _: () = assert!(D_COPIES * THREADS == TOKENS * UNITS && D_COPIES <= 2 && ROWS * E_WORDS <= 2 * THREADS);

/// What one thread copies into each stage: its rows and tokens are fixed for a pass.
struct Copies {
    /// Expert e's nibbles and exponents, and its row count.
    quants: *const u8,
    exponents: *const u8,
    rows: usize,
    row0: usize,
    blocks: usize,
    n_in: usize,
    xq: *const u8,
    xd: *const f32,
    /// The pass's token count and the X rows of the tokens this thread copies: tokens
    /// thread / 16 + 8 i of X and token thread % TOKENS of the scales.
    n: usize,
    x_rows: [usize; 4],
    d_row: usize,
}

impl Copies {
    /// Starts the copies of step `step` (blocks of K UNITS step..) into stage `step % STAGES`.
    /// Not inlined: inlined, the copies' addresses stay live through the multiply loop (196
    /// registers, two blocks per SM; called, 56).
    #[inline(never)]
    unsafe fn issue(&self, base: u32, step: usize) {
        let tid = thread_idx();
        let b0 = step * UNITS;
        let units = (self.blocks - b0).min(UNITS);
        let stage = base + ((step % STAGES) * STAGE_BYTES) as u32;
        let (w_area, e_area) = (stage, stage + W_BYTES as u32);
        let (x_area, d_area) = (e_area + E_BYTES as u32, e_area + (E_BYTES + X_BYTES) as u32);
        // Weights: 64 rows x UNITS blocks of 16 bytes, 4 per thread (rows past the expert's and
        // blocks past K are zero-filled and never stored).
        let unit = tid % UNITS;
        unroll!([0, 1, 2, 3], |i| {
            let row = tid / UNITS + (THREADS / UNITS) * i;
            let valid = self.row0 + row < self.rows && unit < units;
            let at = if valid { 16 * ((self.row0 + row) * self.blocks + b0 + unit) } else { 0 };
            unsafe {
                copy_async_16(w_area + (row * W_STRIDE + 16 * unit) as u32, self.quants.add(at), valid)
            };
        });
        // Exponents: per row the words that hold bytes row * blocks + b0.. (units of them), only
        // their needed bytes read (the rest of a word is zero-filled).
        unroll!([0, 1], |i| {
            let c = tid + THREADS * i;
            if c < ROWS * E_WORDS {
                let (row, word) = (c / E_WORDS, c % E_WORDS);
                let first = unsafe { self.exponents.add((self.row0 + row) * self.blocks + b0) } as usize;
                let (start, end) = ((first & !3) + 4 * word, first + units);
                let bytes = if self.row0 + row < self.rows && start < end { (end - start).min(4) } else { 0 };
                unsafe {
                    copy_async_4_prefix(
                        e_area + (row * E_STRIDE + 4 * word) as u32,
                        start as *const u8,
                        bytes as u32,
                    )
                };
            }
        });
        // X: the pass's tokens' UNITS blocks of 32 bytes, in 16-byte pieces.
        let piece = tid % 16;
        unroll!([0, 1, 2, 3], |i| {
            let j = tid / 16 + (THREADS / 16) * i;
            if i < X_COPIES && j < self.n {
                let valid = piece / 2 < units;
                let at = if valid { self.x_rows[i] * self.n_in + 32 * b0 + 16 * piece } else { 0 };
                unsafe { copy_async_16(x_area + (j * X_STRIDE + 16 * piece) as u32, self.xq.add(at), valid) };
            }
        });
        // The scales xd of token thread % TOKENS, blocks thread / TOKENS + THREADS / TOKENS i.
        let j = tid % TOKENS;
        unroll!([0, 1], |i| {
            let unit = tid / TOKENS + (THREADS / TOKENS) * i;
            if i < D_COPIES && j < self.n {
                let valid = unit < units;
                let at = if valid { self.d_row * self.blocks + b0 + unit } else { 0 };
                let to = d_area + 4 * (unit * TOKENS + j) as u32;
                unsafe { copy_async_4(to, self.xd.add(at) as *const u8, valid) };
            }
        });
    }
}

/// The experts' product (moe.rs's routing): block (r, e) takes rows 64 r.. of expert e's `rows`
/// and the assignments `order[offsets[e]..offsets[e + 1]]`; assignment a reads X row a / x_div
/// (x_div = k: one X row per token; 1: one per assignment) and writes Y row a [rows].
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn mma_rows_mxfp4_experts(
    quants: *const u8,
    exponents: *const u8,
    bias: *const f32,
    offsets: *const u32,
    order: *const u32,
    xq: *const u8,
    xd: *const f32,
    y: *mut f32,
    n_in: u32,
    rows: u32,
    x_div: u32,
) {
    let (n_in, rows, x_div, expert) = (n_in as usize, rows as usize, x_div as usize, block_idx_y());
    let (start, end) = unsafe { (*offsets.add(expert) as usize, *offsets.add(expert + 1) as usize) };
    if start == end {
        return;
    }
    let blocks = n_in / 32;
    let steps = blocks.div_ceil(UNITS);
    let (tid, lane, warp) = (thread_idx(), lane_idx(), warp_idx());
    let (g, t) = (lane / 4, lane % 4);
    let row0 = ROWS * block_idx();
    let base = dynamic_shared_address();
    let (x_table, y_table) = (base + TABLES as u32, base + (TABLES + 4 * TOKENS) as u32);
    let bias = if bias.is_null() { bias } else { unsafe { bias.add(expert * rows) } };
    let mut copies = Copies {
        quants: unsafe { quants.add(16 * expert * rows * blocks) },
        exponents: unsafe { exponents.add(expert * rows * blocks) },
        rows,
        row0,
        blocks,
        n_in,
        xq,
        xd,
        n: 0,
        x_rows: [0; 4],
        d_row: 0,
    };
    // This lane's two rows of the block (A fragment rows g and g + 8 of warp w's 16).
    let local = [16 * warp + g, 16 * warp + g + 8];
    let count = end - start;
    let mut first = 0;
    while first < count {
        let n = (count - first).min(TOKENS);
        if first > 0 {
            sync_threads(); // the previous pass's stages and tables are read
        }
        if tid < n {
            let a = unsafe { *order.add(start + first + tid) } as usize;
            unsafe {
                shared_store_u32(x_table + 4 * tid as u32, (a / x_div) as u32);
                shared_store_u32(y_table + 4 * tid as u32, a as u32);
            }
        }
        sync_threads();
        copies.n = n;
        unroll!([0, 1, 2, 3], |i| {
            let j = tid / 16 + (THREADS / 16) * i;
            copies.x_rows[i] = if i < X_COPIES && j < n {
                unsafe { shared_load_u32(x_table + 4 * j as u32) as usize }
            } else {
                0
            };
        });
        copies.d_row = if tid % TOKENS < n {
            unsafe { shared_load_u32(x_table + 4 * (tid % TOKENS) as u32) as usize }
        } else {
            0
        };
        unroll!([0, 1], |s| {
            if s < STAGES - 1 && s < steps {
                unsafe { copies.issue(base, s) };
            }
            copy_async_commit();
        });
        let mut acc = [[0.0f32; 4]; FRAGMENTS];
        for step in 0..steps {
            copy_async_wait::<{ STAGES as u32 - 2 }>();
            sync_threads(); // every thread's copies of this step have landed
            if step + STAGES - 1 < steps {
                unsafe { copies.issue(base, step + STAGES - 1) };
            }
            copy_async_commit();
            let b0 = step * UNITS;
            let units = (blocks - b0).min(UNITS);
            let stage = base + ((step % STAGES) * STAGE_BYTES) as u32;
            let (w_area, e_area) = (stage, stage + W_BYTES as u32);
            let (x_area, d_area) = (e_area + E_BYTES as u32, e_area + (E_BYTES + X_BYTES) as u32);
            // Where each of this lane's rows' exponent bytes start in its first word.
            let mut e_at = [0u32; 2];
            unroll!([0, 1], |i| {
                let first = copies.exponents as usize + (row0 + local[i]) * blocks + b0;
                e_at[i] = e_area + (local[i] * E_STRIDE + first % 4) as u32;
            });
            // A loop, not unrolled: unrolled, the compiler hoists every unit's shared loads (226
            // registers).
            for u in 0..units {
                {
                    let (words, e) = unsafe {
                        let w = |i: usize| {
                            shared_load_u32(w_area + (local[i] * W_STRIDE + 16 * u + 4 * t) as u32)
                        };
                        (
                            [w(0), w(1)],
                            [shared_load_u8(e_at[0] + u as u32), shared_load_u8(e_at[1] + u as u32)],
                        )
                    };
                    let a = [
                        e2m1_bytes(words[0]),
                        e2m1_bytes(words[1]),
                        e2m1_bytes(words[0] >> 16),
                        e2m1_bytes(words[1] >> 16),
                    ];
                    let scale = [e8m0_half(e[0]), e8m0_half(e[1])];
                    unroll!([0, 1, 2, 3], |f| {
                        if f < FRAGMENTS && 8 * f < n {
                            let at = x_area + ((8 * f + g) * X_STRIDE + 32 * u + 8 * t) as u32;
                            let x = unsafe { [shared_load_u32(at), shared_load_u32(at + 4)] };
                            let dot = mma_16x8x32_i8::<false>(a, x);
                            // Columns past the pass's tokens sum stale bytes; they are never stored.
                            let d = unsafe {
                                shared_load_f32x2(d_area + 4 * (u * TOKENS + 8 * f + 2 * t) as u32)
                            };
                            unroll!([0, 1], |e| {
                                unroll!([0, 1], |h| {
                                    acc[f][2 * h + e] =
                                        fma(scale[h] * d[e], dot[2 * h + e] as f32, acc[f][2 * h + e]);
                                });
                            });
                        }
                    });
                }
            }
        }
        // Each lane holds whole sums: rows local[h], tokens 8 f + 2 t + e.
        unroll!([0, 1, 2, 3], |f| {
            if f < FRAGMENTS {
                unroll!([0, 1, 2, 3], |i| {
                    let (row, j) = (row0 + local[i / 2], 8 * f + 2 * t + i % 2);
                    if j < n && row < rows {
                        let b = if bias.is_null() { 0.0 } else { unsafe { *bias.add(row) } };
                        let y_row = unsafe { shared_load_u32(y_table + 4 * j as u32) } as usize;
                        unsafe { *y.add(y_row * rows + row) = acc[f][i] + b };
                    }
                });
            }
        });
        first += TOKENS;
    }
}
