//! Matrix-vector products for decode: y[o] = sum_i W[o, i] x[i] (+ bias[o]).
//!
//! Layout: x [n_in] f32, y [n_out] f32. W [n_out, n_in] row-major, in one of these forms:
//!   f32 / f16 / bf16: plain rows.
//!   Q8_0, Q4_0, Q4_1 (blocks of 32): repacked by the host from GGUF's interleaved blocks into
//!   separate arrays, so that quants can be read with aligned 16-byte loads:
//!     quants [n_out, n_in] i8 (Q8_0) or [n_out, n_in / 2] nibble bytes (Q4_*: byte j of a block
//!     holds elements j (low) and j + 16 (high)); scales [n_out, n_in / 32] f16; mins likewise (Q4_1).
//!   The same bytes as the GGUF blocks in another order; nothing is dequantized in memory.
//! Launch: a persistent grid (about two blocks per SM) of WARPS_PER_BLOCK warps; each block first
//! copies x into shared memory, then each warp takes rows in turn. A lane reads one 16-byte chunk
//! of its row per step (a warp reads 512 contiguous bytes), two steps in flight, and the x values
//! that chunk needs from shared memory. x is stored with 4 words of padding after every chunk's
//! worth of values, which makes those 16-byte shared reads free of bank conflicts (lanes read
//! chunks 64 to 128 bytes apart, which would otherwise land on the same banks).
//! Dynamic shared memory: 4 * (n_in + 4 * n_in / chunk) bytes; chunk = 16 (Q8_0), 32 (Q4_*),
//! 8 (f16, bf16); f32 needs no padding (chunk 4: lanes already read consecutive x).
//! Cost: the weight bytes once, x once per block from L2, 4 * n_out bytes written: memory-bound.

use crate::device::{
    WARP_SIZE, bf16_to_f32, block_dim, block_idx, block_sum, dependent_launch_wait, dp4a_signed,
    dp4a_unsigned_signed, dynamic_shared, f16_to_f32, grid_dim, lane_idx, load_f32x4, load_u16x8,
    prefetch_l2, sync_threads, thread_idx, warp_idx, warp_sum,
};

pub const WARPS_PER_BLOCK: usize = 8;

#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Aligned4([f32; 4]);

/// x in shared memory, CHUNK values then PAD words of padding, repeated.
#[derive(Clone, Copy)]
struct SharedX<const CHUNK: usize, const PAD: usize> {
    base: *mut f32,
}

impl<const CHUNK: usize, const PAD: usize> SharedX<CHUNK, PAD> {
    #[inline(always)]
    fn new() -> Self {
        SharedX { base: dynamic_shared() }
    }

    #[inline(always)]
    fn index(self, i: usize) -> usize {
        i + (i / CHUNK) * PAD
    }

    /// Copies x [n_in] in (all threads of the block; ends with a barrier).
    #[inline(always)]
    unsafe fn stage(self, x: *const f32, n_in: usize) {
        let mut i = thread_idx() * 4;
        while i < n_in {
            let v = unsafe { load_f32x4(x.add(i)) };
            unsafe { *(self.base.add(self.index(i)) as *mut Aligned4) = Aligned4(v) };
            i += block_dim() * 4;
        }
        sync_threads();
    }

    /// x[i..i + 4]; i a multiple of 4.
    #[inline(always)]
    unsafe fn get4(self, i: usize) -> [f32; 4] {
        unsafe { (*(self.base.add(self.index(i)) as *const Aligned4)).0 }
    }
}

/// Runs `row_dot(row)` for this warp's rows and stores warp-summed results (+ bias).
#[inline(always)]
pub(crate) unsafe fn for_rows(n_out: usize, bias: *const f32, y: *mut f32, row_dot: impl Fn(usize) -> f32) {
    let mut row = block_idx() * WARPS_PER_BLOCK + warp_idx();
    while row < n_out {
        let total = warp_sum(row_dot(row));
        if lane_idx() == 0 {
            let b = if bias.is_null() { 0.0 } else { unsafe { *bias.add(row) } };
            unsafe { *y.add(row) = total + b };
        }
        row += grid_dim() * WARPS_PER_BLOCK;
    }
}

/// [`for_rows`] for a kernel launched with programmatic dependent launch: before waiting for the
/// previous kernel (which writes x), `prefetch(row)` asks L2 for the weights of this warp's first
/// row (they depend on no kernel), so that the weight stream starts during the previous kernel.
#[inline(always)]
pub(crate) unsafe fn for_rows_prefetched(
    n_out: usize,
    bias: *const f32,
    y: *mut f32,
    prefetch: impl Fn(usize),
    row_dot: impl Fn(usize) -> f32,
) {
    let first = block_idx() * WARPS_PER_BLOCK + warp_idx();
    if first < n_out {
        prefetch(first);
    }
    dependent_launch_wait();
    unsafe { for_rows(n_out, bias, y, row_dot) }
}

/// sum over this lane's chunks c (lane, lane + 32, ...) of `compute(load(c), c)`, with the loads of
/// two chunks issued before either is used.
#[inline(always)]
fn over_chunks(
    chunks: usize,
    load: impl Fn(usize) -> [u32; 4],
    compute: impl Fn([u32; 4], usize) -> f32,
) -> f32 {
    over_chunks_from(lane_idx(), chunks, load, compute)
}

/// [`over_chunks`] with the loads of four chunks issued before any is used: for the 16-bit and f32
/// rows, whose chunks hold 8 or 4 weights (against 16 or 32 for the block formats), so that a row
/// of a few thousand weights is many dependent round trips at two chunks in flight (GPT-2 XL's
/// 6400-wide down projection: 13 of them per lane, 7 at four).
#[inline(always)]
fn over_chunks_deep(
    chunks: usize,
    load: impl Fn(usize) -> [u32; 4],
    compute: impl Fn([u32; 4], usize) -> f32,
) -> f32 {
    let mut acc = 0.0f32;
    let mut c = lane_idx();
    while c + 3 * WARP_SIZE < chunks {
        let loaded = [load(c), load(c + WARP_SIZE), load(c + 2 * WARP_SIZE), load(c + 3 * WARP_SIZE)];
        acc += (compute(loaded[0], c) + compute(loaded[1], c + WARP_SIZE))
            + (compute(loaded[2], c + 2 * WARP_SIZE) + compute(loaded[3], c + 3 * WARP_SIZE));
        c += 4 * WARP_SIZE;
    }
    acc + over_chunks_from(c, chunks, load, compute)
}

/// The rest of [`over_chunks`] from chunk `c` (this lane's next) on.
#[inline(always)]
fn over_chunks_from(
    mut c: usize,
    chunks: usize,
    load: impl Fn(usize) -> [u32; 4],
    compute: impl Fn([u32; 4], usize) -> f32,
) -> f32 {
    let mut acc = 0.0f32;
    while c + WARP_SIZE < chunks {
        let (first, second) = (load(c), load(c + WARP_SIZE));
        acc += compute(first, c) + compute(second, c + WARP_SIZE);
        c += 2 * WARP_SIZE;
    }
    if c < chunks {
        acc += compute(load(c), c);
    }
    acc
}

/// sum_k q[k] * x[i + k] for the 16 signed bytes of four little-endian words.
#[inline(always)]
fn dot_i8x16(words: [u32; 4], x: SharedX<16, 4>, i: usize) -> f32 {
    let word = |w: u32, k: usize| {
        let [a, b, c, d] = unsafe { x.get4(i + k) };
        (w as i8) as f32 * a
            + ((w >> 8) as i8) as f32 * b
            + ((w >> 16) as i8) as f32 * c
            + ((w >> 24) as i8) as f32 * d
    };
    let [w0, w1, w2, w3] = words;
    (word(w0, 0) + word(w1, 4)) + (word(w2, 8) + word(w3, 12))
}

/// (sum_j lo(q_j) x[i + j] + hi(q_j) x[i + 16 + j], sum of the 32 x) for a Q4 block.
#[inline(always)]
fn dot_nibbles(words: [u32; 4], x: SharedX<32, 4>, i: usize) -> (f32, f32) {
    let word = |w: u32, k: usize| {
        let [a, b, c, d] = unsafe { x.get4(i + k) };
        let [e, f, g, h] = unsafe { x.get4(i + 16 + k) };
        let low = (w & 0xF) as f32 * a
            + ((w >> 8) & 0xF) as f32 * b
            + ((w >> 16) & 0xF) as f32 * c
            + ((w >> 24) & 0xF) as f32 * d;
        let high = ((w >> 4) & 0xF) as f32 * e
            + ((w >> 12) & 0xF) as f32 * f
            + ((w >> 20) & 0xF) as f32 * g
            + ((w >> 28) & 0xF) as f32 * h;
        (low + high, (a + b + c + d) + (e + f + g + h))
    };
    let [w0, w1, w2, w3] = words;
    let ((d0, s0), (d1, s1), (d2, s2), (d3, s3)) = (word(w0, 0), word(w1, 4), word(w2, 8), word(w3, 12));
    ((d0 + d1) + (d2 + d3), (s0 + s1) + (s2 + s3))
}

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
    let n_in = n_in as usize;
    let sx = SharedX::<16, 4>::new();
    // The first row's weights are asked for before the wait for the previous kernel; x, which that
    // kernel writes, is staged only after it (staging first read a stale x under dependent launch:
    // a decode step of `exact` numerics on Q8_0 weights differed between graph and eager launches).
    let first = block_idx() * WARPS_PER_BLOCK + warp_idx();
    if first < n_out as usize {
        unsafe { prefetch_l2(quants.add(first * n_in), n_in) };
    }
    dependent_launch_wait();
    unsafe { sx.stage(x, n_in) };
    unsafe {
        for_rows(n_out as usize, bias, y, |row| {
            let (q, s) = (quants.add(row * n_in), scales.add(row * n_in / 32));
            over_chunks(
                n_in / 16,
                |c| load_u16x8(q.add(16 * c) as *const u16),
                |words, c| f16_to_f32(*s.add(c / 2)) * dot_i8x16(words, sx, 16 * c),
            )
        })
    };
}

/// One row's dot product for Q4_0 (x = d (q - 8), `mins` null) and Q4_1 (x = d q + m): chunk b of
/// a row is block b.
#[inline(always)]
unsafe fn q4_row(
    quants: *const u8,
    scales: *const u16,
    mins: *const u16,
    sx: SharedX<32, 4>,
    row: usize,
    n_in: usize,
) -> f32 {
    let blocks = n_in / 32;
    let (q, s) = unsafe { (quants.add(row * n_in / 2), scales.add(row * blocks)) };
    over_chunks(
        blocks,
        |b| unsafe { load_u16x8(q.add(16 * b) as *const u16) },
        |words, b| {
            let (dot, sum) = dot_nibbles(words, sx, 32 * b);
            let d = f16_to_f32(unsafe { *s.add(b) });
            if mins.is_null() {
                d * (dot - 8.0 * sum)
            } else {
                d * dot + f16_to_f32(unsafe { *mins.add(row * blocks + b) }) * sum
            }
        },
    )
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
    let n_in = n_in as usize;
    let sx = SharedX::<32, 4>::new();
    unsafe {
        sx.stage(x, n_in);
        for_rows(n_out as usize, bias, y, |row| q4_row(quants, scales, core::ptr::null(), sx, row, n_in));
    }
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
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
    let n_in = n_in as usize;
    let sx = SharedX::<32, 4>::new();
    unsafe {
        sx.stage(x, n_in);
        for_rows(n_out as usize, bias, y, |row| q4_row(quants, scales, mins, sx, row, n_in));
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gemv_f32(
    w: *const f32,
    bias: *const f32,
    x: *const f32,
    y: *mut f32,
    n_in: u32,
    n_out: u32,
) {
    let n_in = n_in as usize;
    let sx = SharedX::<4, 0>::new();
    unsafe { sx.stage(x, n_in) };
    unsafe {
        for_rows(n_out as usize, bias, y, |row| {
            let w = w.add(row * n_in);
            over_chunks_deep(
                n_in / 4,
                |c| load_f32x4(w.add(4 * c)).map(f32::to_bits),
                |words, c| {
                    let [p, q, r, s] = sx.get4(4 * c);
                    let [a, b, cc, d] = words.map(f32::from_bits);
                    a * p + b * q + cc * r + d * s
                },
            )
        })
    };
}

/// y[r] = W[r] . x (+ bias[r]) with a whole block per row, for f32 matrices of few rows (a MoE
/// router: 32 rows of 2880), where a warp per row leaves the GPU nearly idle and makes each row
/// a long chain of dependent loads. n_in a multiple of 4. Launch: one block per row, a multiple
/// of 32 threads.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gemv_f32_split(
    w: *const f32,
    bias: *const f32,
    x: *const f32,
    y: *mut f32,
    n_in: u32,
) {
    let (n_in, row) = (n_in as usize, block_idx());
    let w = unsafe { w.add(row * n_in) };
    let mut acc = 0.0f32;
    let mut c = thread_idx();
    while c < n_in / 4 {
        let ([a, b, cc, d], [p, q, r, s]) = unsafe { (load_f32x4(w.add(4 * c)), load_f32x4(x.add(4 * c))) };
        acc += a * p + b * q + cc * r + d * s;
        c += block_dim();
    }
    let total = block_sum(acc);
    if thread_idx() == 0 {
        let b = if bias.is_null() { 0.0 } else { unsafe { *bias.add(row) } };
        unsafe { *y.add(row) = total + b };
    }
}

#[inline(always)]
unsafe fn gemv_half(
    w: *const u16,
    bias: *const f32,
    x: *const f32,
    y: *mut f32,
    n_in: u32,
    n_out: u32,
    convert: fn(u16) -> f32,
) {
    let n_in = n_in as usize;
    let sx = SharedX::<8, 4>::new();
    unsafe { sx.stage(x, n_in) };
    unsafe {
        for_rows(n_out as usize, bias, y, |row| {
            let w = w.add(row * n_in);
            over_chunks_deep(
                n_in / 8,
                |c| load_u16x8(w.add(8 * c)),
                |[w0, w1, w2, w3], c| {
                    let [a, b, cc, d] = sx.get4(8 * c);
                    let [e, f, g, h] = sx.get4(8 * c + 4);
                    let half =
                        |word: u32, high: bool| convert(if high { (word >> 16) as u16 } else { word as u16 });
                    (half(w0, false) * a + half(w0, true) * b + half(w1, false) * cc + half(w1, true) * d)
                        + (half(w2, false) * e
                            + half(w2, true) * f
                            + half(w3, false) * g
                            + half(w3, true) * h)
                },
            )
        })
    };
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gemv_f16(
    w: *const u16,
    bias: *const f32,
    x: *const f32,
    y: *mut f32,
    n_in: u32,
    n_out: u32,
) {
    unsafe { gemv_half(w, bias, x, y, n_in, n_out, f16_to_f32) }
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gemv_bf16(
    w: *const u16,
    bias: *const f32,
    x: *const f32,
    y: *mut f32,
    n_in: u32,
    n_out: u32,
) {
    unsafe { gemv_half(w, bias, x, y, n_in, n_out, bf16_to_f32) }
}

// ---- integer forms: weights against 8-bit activations (see quantize.rs) -------------------------
// The activations come quantized per block of 32: xq i8, xd its scale, xs = xd * sum(xq). Each lane
// takes a 16-byte chunk of quants and the 16 or 32 activation bytes that go with it (consecutive
// lanes read consecutive activation bytes, so these loads coalesce without shared memory), and
// multiplies them four at a time with dp4a: about one instruction per weight byte fewer than
// four, against four to six for the float forms above.

/// Q8_0 weights: chunk c is half of block c / 2.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn gemv_q8_0_q8(
    quants: *const u8,
    scales: *const u16,
    bias: *const f32,
    xq: *const u8,
    xd: *const f32,
    y: *mut f32,
    n_in: u32,
    n_out: u32,
) {
    let n_in = n_in as usize;
    unsafe {
        let prefetch = |row: usize| prefetch_l2(quants.add(row * n_in), n_in);
        for_rows_prefetched(n_out as usize, bias, y, prefetch, |row| {
            let (q, s) = (quants.add(row * n_in), scales.add(row * n_in / 32));
            over_chunks(
                n_in / 16,
                |c| load_u16x8(q.add(16 * c) as *const u16),
                |[w0, w1, w2, w3], c| {
                    let [a0, a1, a2, a3] = load_u16x8(xq.add(16 * c) as *const u16);
                    let sum =
                        dp4a_signed(w3, a3, dp4a_signed(w2, a2, dp4a_signed(w1, a1, dp4a_signed(w0, a0, 0))));
                    f16_to_f32(*s.add(c / 2)) * *xd.add(c / 2) * sum as f32
                },
            )
        })
    };
}

/// The 32 activation bytes of block b as two halves of four words (values 0..16, 16..32).
#[inline(always)]
pub(crate) unsafe fn activation_block(xq: *const u8, b: usize) -> ([u32; 4], [u32; 4]) {
    unsafe { (load_u16x8(xq.add(32 * b) as *const u16), load_u16x8(xq.add(32 * b + 16) as *const u16)) }
}

/// sum(q x) over a block of 32 whose 16 bytes of nibbles (value i low, i + 16 high) are `words`,
/// against its activations in two halves.
#[inline(always)]
pub(crate) fn nibble_dot(words: [u32; 4], low: [u32; 4], high: [u32; 4]) -> i32 {
    let mut dot = 0;
    for i in 0..4 {
        dot = dp4a_unsigned_signed(words[i] & 0x0F0F_0F0F, low[i], dot);
        dot = dp4a_unsigned_signed((words[i] >> 4) & 0x0F0F_0F0F, high[i], dot);
    }
    dot
}

/// One row of Q4_0 (x = d (q - 8), `mins` null) or Q4_1 (x = d q + m) against 8-bit activations.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn q4_row_q8(
    quants: *const u8,
    scales: *const u16,
    mins: *const u16,
    xq: *const u8,
    xd: *const f32,
    xs: *const f32,
    row: usize,
    n_in: usize,
) -> f32 {
    let blocks = n_in / 32;
    let (q, s) = unsafe { (quants.add(row * n_in / 2), scales.add(row * blocks)) };
    over_chunks(
        blocks,
        |b| unsafe { load_u16x8(q.add(16 * b) as *const u16) },
        |words, b| {
            let (low, high) = unsafe { activation_block(xq, b) };
            let ([l0, l1, l2, l3], [h0, h1, h2, h3]) = (low, high);
            let sum = nibble_dot(words, low, high);
            let d = f16_to_f32(unsafe { *s.add(b) }) * unsafe { *xd.add(b) };
            if mins.is_null() {
                // sum((q - 8) xq) = sum(q xq) - 8 sum(xq), all in integers.
                let ones = 0x0101_0101;
                let sum_x =
                    [l0, l1, l2, l3, h0, h1, h2, h3].into_iter().fold(0, |acc, a| dp4a_signed(ones, a, acc));
                d * (sum - 8 * sum_x) as f32
            } else {
                d * sum as f32 + f16_to_f32(unsafe { *mins.add(row * blocks + b) }) * unsafe { *xs.add(b) }
            }
        },
    )
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn gemv_q4_0_q8(
    quants: *const u8,
    scales: *const u16,
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
            q4_row_q8(quants, scales, core::ptr::null(), xq, xd, xs, row, n_in)
        })
    };
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn gemv_q4_1_q8(
    quants: *const u8,
    scales: *const u16,
    mins: *const u16,
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
            q4_row_q8(quants, scales, mins, xq, xd, xs, row, n_in)
        })
    };
}
