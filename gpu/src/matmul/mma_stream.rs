//! Dense matrix products of a batched decode step of up to 64 rows (more in passes of 64) on the
//! integer tensor cores, with the weights streamed through shared memory once for all the rows.
//!
//! Why: mma_rows.rs takes 32 tokens a pass, so a step of 64 sequences reads every weight twice,
//! and its 16-row blocks load the whole of X from L2 for every 16 weight rows; past 32 rows the
//! f16 GEMM won, and it spends its time dequantizing 128-row tiles for 64 token rows (4096x4096
//! Q4_K: 49 us for 9.4 MB, benches/NOTES.md). Llama-3.1-8B's step at 64 sequences was 0.70x
//! llama.cpp's. Here a block of 64 weight rows keeps all 64 tokens' sums in registers (each warp
//! 16 rows x 64 tokens) and walks K with a ring of `cp.async` stages, as mma_experts.rs does for
//! the experts: weights once from DRAM, X once from L2 per 64 rows.
//! Math (as mma_rows.rs): Y[t, o] = sum_b scale(o, b) xd[t, b] dot_b(W[o], X[t]) (- dmin m(o, b)
//! xs[t, b] for Q4_K) (+ bias[o]) over the blocks b of 32 values; dot_b the exact integer sum, so
//! a row matches the batch-1 GEMV to f32 rounding (the sum over blocks runs in another order).
//! Layout: a block is 1 or 2 groups of 4 warps (block_dim 128 or 256, chosen by the host to fill
//! the GPU when a matrix has few 64-row blocks); group k takes a contiguous share of the stages
//! along K with its own ring and its own named barrier, and the groups' sums meet in shared memory
//! at the end, added in group order (the result does not depend on timing). Per stage of UNITS
//! blocks of 32: the block's 64 rows of quants (rows padded by 16 bytes so that the eight rows of
//! an A fragment hit 32 banks), their scale words, the pass's 64 tokens of X (144 bytes a token)
//! and their scales xd (and sums xs).
//! Launch: grid (ceil(rows / 64)), 128 x groups threads, groups x STAGES x stage bytes of dynamic
//! shared memory (Q4_K 51,456 per group, Q8_0 59,904).
//! Cost: per block of K per warp two shared loads of A and one or two of its scales, and per 8
//! tokens two of X, one or two of scales, one mma and 8 to 12 f32 operations (about 22
//! instructions per mma). Counted, that made it issue-bound at ~10 us for 4096x4096 at 64 rows;
//! measured (H100, 2026-12-06) it takes 93 us, 10-15 cycles an instruction at 8-14 warps an SM:
//! latency-bound, each mma waiting on its shared loads and feeding a chain of dependent FMAs. It
//! is slower than the f16 GEMM there, so the host does not take it by default
//! (host/src/matmul/mma_rows.rs `DEFAULT_STREAM_ROWS`); benches/NOTES.md has the figures.

use crate::device::{
    block_dim, block_idx, copy_async_4_prefix, copy_async_16, copy_async_commit, copy_async_wait,
    dynamic_shared_address, f16_to_f32, fma, lane_idx, mma_16x8x32_i8, shared_load_f32, shared_load_f32x2,
    shared_load_u32, shared_store_f32, sync_named, sync_threads, thread_idx, warp_idx,
};
use crate::unroll;

const GROUP_WARPS: usize = 4;
const GROUP_THREADS: usize = 32 * GROUP_WARPS;
/// Weight rows per block: 16 per warp (the mma's M).
pub const ROWS: usize = 16 * GROUP_WARPS;
/// Blocks of 32 along K per stage.
const UNITS: usize = 4;
/// Stages in a group's ring: STAGES - 1 in flight while one is multiplied.
const STAGES: usize = 3;
/// Tokens per pass: FRAGMENTS mma columns of 8, all of a 64-sequence step.
const FRAGMENTS: usize = 8;
pub const TOKENS: usize = 8 * FRAGMENTS;
/// One token's staged activations: UNITS blocks of 32 bytes and 16 of padding (36 words: token
/// g's word t of block u at bank 4 g + 8 u + t, so a B fragment's eight tokens hit 32 banks).
const X_STRIDE: usize = 32 * UNITS + 16;
const X_BYTES: usize = TOKENS * X_STRIDE;
/// The activations' scales (or sums) as [UNITS][TOKENS] f32.
const D_BYTES: usize = 4 * UNITS * TOKENS;

/// One weight format's blocks as this kernel stages them.
trait Streamed: Copy {
    /// Bytes of one row's block of 32 values.
    const BLOCK_BYTES: usize;
    /// 4-byte words of one row's scales per stage.
    const HEAD_WORDS: usize;
    /// Whether the A bytes are unsigned.
    const UNSIGNED: bool;
    /// Whether the format has a min term (xs).
    const MINS: bool;
    /// The address of row `row`'s block `b` of quants.
    fn quants(&self, row: usize, b: usize) -> *const u8;
    /// The address of word `word` of row `row`'s scales for the stage at block `b0` of `units`
    /// blocks, and how many of its bytes to copy.
    fn head_word(&self, row: usize, b0: usize, units: usize, word: usize) -> (*const u8, u32);
    /// Lane t's A fragment for block u of the stage and its two rows' scale and min-scale, from
    /// the rows' staged quants `w` and scale words `h` (shared addresses).
    unsafe fn fragment(w: [u32; 2], h: [u32; 2], u: usize, t: usize) -> ([u32; 4], [f32; 2], [f32; 2]);
}

/// Q4_K as the host stores it (host/src/matmul/mod.rs): per row n_in / 2 bytes of nibbles (value
/// i of a block low in byte i, value 16 + i high), per super-block of 256 a 20-byte head (d, dmin
/// f16; then one (scale, min) byte pair per block). A stage of 4 blocks is half a super-block:
/// its head words are d/dmin and the two words of its four pairs.
#[derive(Clone, Copy)]
struct Q4K {
    quants: *const u8,
    heads: *const u8,
    n_in: usize,
}

impl Streamed for Q4K {
    const BLOCK_BYTES: usize = 16;
    const HEAD_WORDS: usize = 3;
    const UNSIGNED: bool = true;
    const MINS: bool = true;
    #[inline(always)]
    fn quants(&self, row: usize, b: usize) -> *const u8 {
        self.quants.wrapping_add(row * self.n_in / 2 + 16 * b)
    }
    #[inline(always)]
    fn head_word(&self, row: usize, b0: usize, _units: usize, word: usize) -> (*const u8, u32) {
        let head = self.heads.wrapping_add(20 * (row * self.n_in / 256 + b0 / 8));
        let at = if word == 0 { 0 } else { 4 * word + 2 * (b0 % 8) };
        (head.wrapping_add(at), 4)
    }
    #[inline(always)]
    unsafe fn fragment(w: [u32; 2], h: [u32; 2], u: usize, t: usize) -> ([u32; 4], [f32; 2], [f32; 2]) {
        let words = unsafe {
            [shared_load_u32(w[0] + (16 * u + 4 * t) as u32), shared_load_u32(w[1] + (16 * u + 4 * t) as u32)]
        };
        let a = [
            words[0] & 0x0F0F_0F0F,
            words[1] & 0x0F0F_0F0F,
            (words[0] >> 4) & 0x0F0F_0F0F,
            (words[1] >> 4) & 0x0F0F_0F0F,
        ];
        let (mut scale, mut min) = ([0.0f32; 2], [0.0f32; 2]);
        unroll!([0, 1], |i| {
            let (dm, pairs) =
                unsafe { (shared_load_u32(h[i]), shared_load_u32(h[i] + (4 + 4 * (u / 2)) as u32)) };
            let pair = pairs >> (16 * (u % 2));
            scale[i] = f16_to_f32(dm as u16) * (pair & 0xFF) as f32;
            min[i] = f16_to_f32((dm >> 16) as u16) * ((pair >> 8) & 0xFF) as f32;
        });
        (a, scale, min)
    }
}

/// Q8_0: per row n_in bytes of values, per block an f16 scale (a stage's four scales are two
/// words: the host takes this kernel only where a row has an even number of blocks, so that they
/// are aligned).
#[derive(Clone, Copy)]
struct Q8 {
    quants: *const u8,
    scales: *const u16,
    n_in: usize,
}

impl Streamed for Q8 {
    const BLOCK_BYTES: usize = 32;
    const HEAD_WORDS: usize = 2;
    const UNSIGNED: bool = false;
    const MINS: bool = false;
    #[inline(always)]
    fn quants(&self, row: usize, b: usize) -> *const u8 {
        self.quants.wrapping_add(row * self.n_in + 32 * b)
    }
    #[inline(always)]
    fn head_word(&self, row: usize, b0: usize, units: usize, word: usize) -> (*const u8, u32) {
        let at = self.scales.wrapping_add(row * (self.n_in / 32) + b0 + 2 * word) as *const u8;
        (at, (2 * units).saturating_sub(4 * word).min(4) as u32)
    }
    #[inline(always)]
    unsafe fn fragment(w: [u32; 2], h: [u32; 2], u: usize, t: usize) -> ([u32; 4], [f32; 2], [f32; 2]) {
        let at = |i: usize, half: usize| w[i] + (32 * u + 16 * half + 4 * t) as u32;
        let a = unsafe {
            [
                shared_load_u32(at(0, 0)),
                shared_load_u32(at(1, 0)),
                shared_load_u32(at(0, 1)),
                shared_load_u32(at(1, 1)),
            ]
        };
        let mut scale = [0.0f32; 2];
        unroll!([0, 1], |i| {
            let word = unsafe { shared_load_u32(h[i] + (4 * (u / 2)) as u32) };
            scale[i] = f16_to_f32((word >> (16 * (u % 2))) as u16);
        });
        (a, scale, [0.0; 2])
    }
}

/// Where a stage's parts start, from the stage's address.
const fn w_stride<F: Streamed>() -> usize {
    UNITS * F::BLOCK_BYTES + 16
}
const fn h_offset<F: Streamed>() -> usize {
    ROWS * w_stride::<F>()
}
const fn x_offset<F: Streamed>() -> usize {
    h_offset::<F>() + ROWS * 4 * F::HEAD_WORDS
}
const fn d_offset<F: Streamed>() -> usize {
    x_offset::<F>() + X_BYTES
}
const fn s_offset<F: Streamed>() -> usize {
    d_offset::<F>() + D_BYTES
}
const fn stage_bytes<F: Streamed>() -> usize {
    s_offset::<F>() + if F::MINS { D_BYTES } else { 0 }
}
/// One group's ring (the host's shared size is groups times this: Q4_K 51,456, Q8_0 59,904).
const fn group_bytes<F: Streamed>() -> usize {
    STAGES * stage_bytes::<F>()
}
const _: () = assert!(stage_bytes::<Q4K>() % 16 == 0 && stage_bytes::<Q8>() % 16 == 0);
const _: () = assert!(group_bytes::<Q4K>() == 51_456 && group_bytes::<Q8>() == 59_904);
// The sums of a pass ([TOKENS][ROWS] f32) fit in a group's ring.
const _: () = assert!(4 * TOKENS * ROWS <= group_bytes::<Q4K>());

/// What one thread of a group copies into each stage.
struct Copies<F> {
    format: F,
    n_out: usize,
    row0: usize,
    blocks: usize,
    n_in: usize,
    /// The pass's first token's X, scales and sums, and its token count.
    xq: *const u8,
    xd: *const f32,
    xs: *const f32,
    n: usize,
    /// This thread's index in its group.
    tid: usize,
}

impl<F: Streamed> Copies<F> {
    /// Starts the copies of step `step` (blocks UNITS step..) into stage `step % STAGES` of the
    /// ring at `ring`. Not inlined, so that the copies' addresses are not live through the
    /// multiply loop (mma_experts.rs measured 196 registers inlined, 56 called).
    #[inline(never)]
    unsafe fn issue(&self, ring: u32, step: usize) {
        let (tid, b0) = (self.tid, step * UNITS);
        let units = (self.blocks - b0).min(UNITS);
        let stage = ring + (step % STAGES * stage_bytes::<F>()) as u32;
        // Quants: 64 rows x UNITS blocks in 16-byte pieces (rows past n_out and blocks past K
        // zero-filled; their sums are never stored).
        let pieces = F::BLOCK_BYTES / 16;
        unroll!([0, 1, 2, 3], |i| {
            if i < ROWS * UNITS * pieces / GROUP_THREADS {
                let c = tid + GROUP_THREADS * i;
                let (row, piece) = (c / (UNITS * pieces), c % (UNITS * pieces));
                let valid = self.row0 + row < self.n_out && piece / pieces < units;
                let from = if valid {
                    self.format.quants(self.row0 + row, b0).wrapping_add(16 * piece)
                } else {
                    self.xq
                };
                unsafe { copy_async_16(stage + (row * w_stride::<F>() + 16 * piece) as u32, from, valid) };
            }
        });
        // The rows' scale words.
        unroll!([0, 1], |i| {
            let c = tid + GROUP_THREADS * i;
            if c < ROWS * F::HEAD_WORDS {
                let (row, word) = (c / F::HEAD_WORDS, c % F::HEAD_WORDS);
                let (from, bytes) = if self.row0 + row < self.n_out {
                    self.format.head_word(self.row0 + row, b0, units, word)
                } else {
                    (self.xq, 0)
                };
                let to = stage + (h_offset::<F>() + 4 * (F::HEAD_WORDS * row + word)) as u32;
                unsafe { copy_async_4_prefix(to, from, bytes) };
            }
        });
        // X: the pass's tokens' UNITS blocks of 32 bytes, 8 pieces of 16 a token.
        unroll!([0, 1, 2, 3], |i| {
            let c = tid + GROUP_THREADS * i;
            let (j, piece) = (c / (2 * UNITS), c % (2 * UNITS));
            if j < self.n {
                let valid = piece / 2 < units;
                let from = self.xq.wrapping_add(if valid { j * self.n_in + 32 * b0 + 16 * piece } else { 0 });
                unsafe {
                    copy_async_16(stage + (x_offset::<F>() + j * X_STRIDE + 16 * piece) as u32, from, valid)
                };
            }
        });
        // The scales xd (and sums xs) of token c % TOKENS, block c / TOKENS.
        unroll!([0, 1], |i| {
            let c = tid + GROUP_THREADS * i;
            let (j, unit) = (c % TOKENS, c / TOKENS);
            if j < self.n {
                let valid = unit < units;
                let at = if valid { j * self.blocks + b0 + unit } else { 0 };
                let bytes = if valid { 4 } else { 0 };
                let to = 4 * (unit * TOKENS + j);
                unsafe {
                    copy_async_4_prefix(
                        stage + (d_offset::<F>() + to) as u32,
                        self.xd.wrapping_add(at) as *const u8,
                        bytes,
                    );
                    if F::MINS {
                        copy_async_4_prefix(
                            stage + (s_offset::<F>() + to) as u32,
                            self.xs.wrapping_add(at) as *const u8,
                            bytes,
                        );
                    }
                }
            }
        });
    }
}

/// The block's product: weight rows 64 block_idx.. of `n_out` (row r at Y column r) for the
/// `n_rows` tokens of X (xq [n_rows, n_in] i8, xd and xs [n_rows, n_in / 32]), Y [n_rows, n_out].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn product<F: Streamed>(
    format: F,
    n_out: usize,
    n_in: usize,
    n_rows: usize,
    xq: *const u8,
    (xd, xs): (*const f32, *const f32),
    bias: *const f32,
    y: *mut f32,
) {
    let groups = (block_dim() / GROUP_THREADS).max(1);
    let (tid, lane) = (thread_idx(), lane_idx());
    let (group, warp) = (tid / GROUP_THREADS, warp_idx() % GROUP_WARPS);
    let (g, t) = (lane / 4, lane % 4);
    let row0 = ROWS * block_idx();
    let blocks = n_in / 32;
    let steps = blocks.div_ceil(UNITS);
    // This group's steps along K.
    let share = steps.div_ceil(groups);
    let (first_step, end_step) = ((group * share).min(steps), ((group + 1) * share).min(steps));
    let base = dynamic_shared_address();
    let ring = base + (group * group_bytes::<F>()) as u32;
    // This lane's two rows of the block (A fragment rows g and g + 8 of its warp's 16).
    let local = [16 * warp + g, 16 * warp + g + 8];
    let mut first = 0;
    while first < n_rows {
        let n = (n_rows - first).min(TOKENS);
        if first > 0 {
            sync_threads(); // the previous pass's sums are read
        }
        let copies = Copies {
            format,
            n_out,
            row0,
            blocks,
            n_in,
            xq: xq.wrapping_add(first * n_in),
            xd: xd.wrapping_add(first * blocks),
            xs: xs.wrapping_add(first * blocks),
            n,
            tid: tid % GROUP_THREADS,
        };
        unroll!([0, 1], |s| {
            if s < STAGES - 1 && first_step + s < end_step {
                unsafe { copies.issue(ring, first_step + s) };
            }
            copy_async_commit();
        });
        let mut acc = [[0.0f32; 4]; FRAGMENTS];
        for step in first_step..end_step {
            copy_async_wait::<{ STAGES as u32 - 2 }>();
            // The group's copies of this step have landed.
            if group == 0 {
                sync_named::<1>(GROUP_THREADS as u32);
            } else {
                sync_named::<2>(GROUP_THREADS as u32);
            }
            if step + STAGES - 1 < end_step {
                unsafe { copies.issue(ring, step + STAGES - 1) };
            }
            copy_async_commit();
            let units = (blocks - step * UNITS).min(UNITS);
            let stage = ring + (step % STAGES * stage_bytes::<F>()) as u32;
            let w = [0, 1].map(|i| stage + (local[i] * w_stride::<F>()) as u32);
            let h = [0, 1].map(|i| stage + (h_offset::<F>() + 4 * F::HEAD_WORDS * local[i]) as u32);
            let (x_area, d_area, s_area) = (
                stage + x_offset::<F>() as u32,
                stage + d_offset::<F>() as u32,
                stage + s_offset::<F>() as u32,
            );
            for u in 0..units {
                let (a, scale, min) = unsafe { F::fragment(w, h, u, t) };
                unroll!([0, 1, 2, 3, 4, 5, 6, 7], |f| {
                    if f < FRAGMENTS && 8 * f < n {
                        let at = x_area + ((8 * f + g) * X_STRIDE + 32 * u + 4 * t) as u32;
                        let x = unsafe { [shared_load_u32(at), shared_load_u32(at + 16)] };
                        let dot = if F::UNSIGNED {
                            mma_16x8x32_i8::<true>(a, x)
                        } else {
                            mma_16x8x32_i8::<false>(a, x)
                        };
                        // Columns past the pass's tokens sum stale bytes; they are never stored.
                        let scales = 4 * (u * TOKENS + 8 * f + 2 * t) as u32;
                        let d = unsafe { shared_load_f32x2(d_area + scales) };
                        let sums =
                            if F::MINS { unsafe { shared_load_f32x2(s_area + scales) } } else { [0.0; 2] };
                        unroll!([0, 1], |e| {
                            unroll!([0, 1], |hh| {
                                let i = 2 * hh + e;
                                acc[f][i] = fma(scale[hh] * d[e], dot[i] as f32, acc[f][i]);
                                if F::MINS {
                                    acc[f][i] = fma(-min[hh], sums[e], acc[f][i]);
                                }
                            });
                        });
                    }
                });
            }
        }
        // Each group's sums into its own ring as [token][row] (once every group is done with its
        // stages), then added in group order and written a token's 64 outputs at a time.
        sync_threads();
        unroll!([0, 1, 2, 3, 4, 5, 6, 7], |f| {
            unroll!([0, 1, 2, 3], |i| {
                let (r, j) = (local[i / 2], 8 * f + 2 * t + i % 2);
                unsafe { shared_store_f32(ring + 4 * (j * ROWS + r) as u32, acc[f][i]) };
            });
        });
        sync_threads();
        let mut o = tid;
        while o < n * ROWS {
            let (j, r) = (o / ROWS, o % ROWS);
            if row0 + r < n_out {
                let mut sum = 0.0f32;
                for k in 0..groups {
                    sum += unsafe { shared_load_f32(base + (k * group_bytes::<F>() + 4 * o) as u32) };
                }
                let b = if bias.is_null() { 0.0 } else { unsafe { *bias.add(row0 + r) } };
                unsafe { *y.add((first + j) * n_out + row0 + r) = sum + b };
            }
            o += block_dim();
        }
        first += TOKENS;
    }
}

/// Dense products: Y[t, r] = W[r] . X[t] (+ bias[r]) for the n_rows rows of X (in passes of
/// 64); W's rows 64 block_idx.. of n_out; Y [n_rows, n_out].
macro_rules! stream_kernel {
    ($name:ident, $format:ident { $($field:ident: $ty:ty),* }) => {
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $name(
            $($field: $ty,)*
            bias: *const f32,
            xq: *const u8,
            xd: *const f32,
            xs: *const f32,
            y: *mut f32,
            n_in: u32,
            n_out: u32,
            n_rows: u32,
        ) {
            let n_in = n_in as usize;
            let format = $format { $($field,)* n_in };
            unsafe { product(format, n_out as usize, n_in, n_rows as usize, xq, (xd, xs), bias, y) };
        }
    };
}

stream_kernel!(mma_stream_q4_k, Q4K { quants: *const u8, heads: *const u8 });
stream_kernel!(mma_stream_q8_0, Q8 { quants: *const u8, scales: *const u16 });
