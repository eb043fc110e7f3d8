//! Matrix products of a few rows of activations, for batched decode: the integer GEMVs of gemv.rs,
//! gemv_k.rs and gemv_mxfp4.rs with several activation rows per weight read.
//!
//! Why: a decode step of B sequences multiplies B activation rows by every weight matrix. The
//! tensor-core GEMM (gemm.rs) tiles 128 tokens by 128 outputs: at B = 8 a 4096-row matrix is 32
//! tiles on 132 SMs, and each tile dequantizes its weights for 128 token rows of which 8 exist.
//! The batch-1 GEMV streams the weights near the copy rate; these kernels keep its loop and make
//! each weight load serve up to GROUP rows, so that a step reads its weights once for the batch.
//! Math: Y[t, o] = sum_i W[o, i] X[t, i] (+ bias[o]), X as 8-bit activations (quantize.rs). For
//! each row t the sum is the batch-1 kernel's, term for term (the same per-lane order of units,
//! the same warp reduction): a row in a batch gets the bits it gets alone.
//! Layout: W as the batch-1 kernels take it; X [T, n_in]: xq i8, xd and xs [T, n_in / 32] f32;
//! Y [T, n_out] f32 (row stride n_out); bias [n_out] f32 or null.
//! Launch: a warp per weight row (grid-stride), 8 warps per block, no shared memory. The rows of
//! X go in groups of GROUP: for each group the warp walks its weight row again (from DRAM for the
//! first group, from L1/L2 after), keeping GROUP sums per lane in registers.
//! Cost: the weights once from DRAM. Per 16-byte unit of weights and row of X: 16 or 32 bytes of
//! activations from L1 and 4 to 16 `dp4a`; at GROUP = 8 those come to the SM's L1 and integer
//! rates at about the weight stream's, so T much past 8 is bound by them (benches/NOTES.md).
//! `gemv_rows_mxfp4_experts` is the same product for the assignments of a step grouped by
//! expert (moe.rs's `moe_route`): every expert's weights once, for however many tokens chose it.

use super::dequant::e8m0_half;
use super::gemv::{WARPS_PER_BLOCK, activation_block, nibble_dot};
use super::gemv_mxfp4::mxfp4_dot;
use crate::device::{
    WARP_SIZE, block_dim, block_idx, block_idx_y, block_sum, dp4a_signed, dp4a_unsigned_signed, f16_to_f32,
    grid_dim, lane_idx, load_f32x4, load_u16x8, thread_idx, warp_idx, warp_sum,
};
use crate::unroll;

/// Rows of X that share one walk over a weight row.
pub const GROUP: usize = 8;

/// One sum per row of a group.
type Sums = [f32; GROUP];

/// The rows of X in a group: `count` of them, row t at X row `x[t]`, written to Y row `y[t]`.
#[derive(Clone, Copy)]
struct Group {
    x: [usize; GROUP],
    y: [usize; GROUP],
    count: usize,
}

impl Group {
    /// Rows first..first + count of a dense product (X row = Y row).
    #[inline(always)]
    fn dense(first: usize, count: usize) -> Self {
        let mut rows = [0usize; GROUP];
        unroll!([0, 1, 2, 3, 4, 5, 6, 7], |t| { rows[t] = first + t });
        Group { x: rows, y: rows, count }
    }

    /// `f(t, x row)` for each row of the group, t ascending.
    #[inline(always)]
    fn each(self, mut f: impl FnMut(usize, usize)) {
        unroll!([0, 1, 2, 3, 4, 5, 6, 7], |t| {
            if t < self.count {
                f(t, self.x[t]);
            }
        });
    }

    /// Y[y[t], row] = warp sum of `sums[t]` + bias, for each row of the group (lane 0 writes).
    #[inline(always)]
    unsafe fn store(self, sums: Sums, bias: f32, y: *mut f32, stride: usize, row: usize) {
        unroll!([0, 1, 2, 3, 4, 5, 6, 7], |t| {
            if t < self.count {
                let total = warp_sum(sums[t]);
                if lane_idx() == 0 {
                    unsafe { *y.add(self.y[t] * stride + row) = total + bias };
                }
            }
        });
    }
}

/// For each of this warp's weight rows (grid-stride, as `gemv::for_rows`), each group of the
/// `n_rows` rows of X: `row_dot(row, group)` and the store of its sums (+ bias).
#[inline(always)]
unsafe fn for_rows_dense(
    n_out: usize,
    n_rows: usize,
    bias: *const f32,
    y: *mut f32,
    row_dot: impl Fn(usize, Group) -> Sums,
) {
    let mut row = block_idx() * WARPS_PER_BLOCK + warp_idx();
    while row < n_out {
        let b = if bias.is_null() { 0.0 } else { unsafe { *bias.add(row) } };
        let mut first = 0;
        while first < n_rows {
            let group = Group::dense(first, (n_rows - first).min(GROUP));
            unsafe { group.store(row_dot(row, group), b, y, n_out, row) };
            first += GROUP;
        }
        row += grid_dim() * WARPS_PER_BLOCK;
    }
}

/// sum over this lane's units u (lane, lane + 32, ...) of `compute(load(u), u, sums)`, the loads
/// of four units issued before any is used: gemv_k.rs's `over_units`, one sum per row.
#[inline(always)]
fn over_units<T: Copy + Default>(
    units: usize,
    load: impl Fn(usize) -> T,
    compute: impl Fn(T, usize, &mut Sums),
) -> Sums {
    let mut acc = [0.0f32; GROUP];
    let mut u0 = lane_idx();
    while u0 < units {
        let (u1, u2, u3) = (u0 + WARP_SIZE, u0 + 2 * WARP_SIZE, u0 + 3 * WARP_SIZE);
        let get = |u: usize| if u < units { load(u) } else { T::default() };
        let (w0, w1, w2, w3) = (get(u0), get(u1), get(u2), get(u3));
        compute(w0, u0, &mut acc);
        if u1 < units {
            compute(w1, u1, &mut acc);
        }
        if u2 < units {
            compute(w2, u2, &mut acc);
        }
        if u3 < units {
            compute(w3, u3, &mut acc);
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

/// Q8_0 (gemv.rs's `gemv_q8_0_q8`): chunk c of a row is half of block c / 2; two chunks in flight,
/// summed in pairs as `over_chunks` sums them.
#[inline(always)]
unsafe fn q8_0_row(
    q: *const u8,
    s: *const u16,
    xq: *const u8,
    xd: *const f32,
    n_in: usize,
    g: Group,
) -> Sums {
    let chunks = n_in / 16;
    let value = |[w0, w1, w2, w3]: [u32; 4], c: usize, x: usize| {
        let [a0, a1, a2, a3] = unsafe { load_u16x8(xq.add(x * n_in + 16 * c) as *const u16) };
        let sum = dp4a_signed(w3, a3, dp4a_signed(w2, a2, dp4a_signed(w1, a1, dp4a_signed(w0, a0, 0))));
        f16_to_f32(unsafe { *s.add(c / 2) }) * unsafe { *xd.add(x * n_in / 32 + c / 2) } * sum as f32
    };
    let load = |c: usize| unsafe { load_u16x8(q.add(16 * c) as *const u16) };
    let mut acc = [0.0f32; GROUP];
    let mut c = lane_idx();
    while c + WARP_SIZE < chunks {
        let (first, second) = (load(c), load(c + WARP_SIZE));
        g.each(|t, x| acc[t] += value(first, c, x) + value(second, c + WARP_SIZE, x));
        c += 2 * WARP_SIZE;
    }
    if c < chunks {
        let last = load(c);
        g.each(|t, x| acc[t] += value(last, c, x));
    }
    acc
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn gemv_rows_q8_0(
    quants: *const u8,
    scales: *const u16,
    bias: *const f32,
    xq: *const u8,
    xd: *const f32,
    y: *mut f32,
    n_in: u32,
    n_out: u32,
    n_rows: u32,
) {
    let n_in = n_in as usize;
    unsafe {
        for_rows_dense(
            n_out as usize,
            n_rows as usize,
            bias,
            y,
            #[inline(always)]
            |row, g| q8_0_row(quants.add(row * n_in), scales.add(row * n_in / 32), xq, xd, n_in, g),
        )
    };
}

/// Q4_K (gemv_k.rs's `gemv_q4_k_q8`): unit c of a row is its sub-block c.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn gemv_rows_q4_k(
    quants: *const u8,
    heads: *const u8,
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
    let blocks = n_in / 32;
    unsafe {
        for_rows_dense(
            n_out as usize,
            n_rows as usize,
            bias,
            y,
            #[inline(always)]
            |row, g| {
                let q = quants.add(row * n_in / 2);
                let head = heads.add(20 * (row * n_in / 256));
                let load = |c: usize| Words4(load_u16x8(q.add(16 * c) as *const u16));
                let compute = #[inline(always)]
                |Words4(w): Words4, c: usize, acc: &mut Sums| {
                    let sb = head.add(20 * (c / 8));
                    let dm = *(sb as *const u32);
                    let pair = *(sb.add(4 + 2 * (c % 8)) as *const u16) as u32;
                    let (scale, min) = (pair & 0xFF, pair >> 8);
                    let (d, dmin) = (f16_to_f32(dm as u16), f16_to_f32((dm >> 16) as u16));
                    g.each(|t, x| {
                        let (low, high) = activation_block(xq.add(x * n_in), c);
                        let dot = nibble_dot(w, low, high);
                        acc[t] += d * scale as f32 * *xd.add(x * blocks + c) * dot as f32
                            - dmin * min as f32 * *xs.add(x * blocks + c);
                    });
                };
                over_units(blocks, load, compute)
            },
        )
    };
}

/// The high 2-bit fields of word i of a Q6_K half block, moved under the low nibbles (gemv_k.rs).
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

/// Q6_K (gemv_k.rs's `gemv_q6_k_q8`): unit c of a row is its block of 32.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn gemv_rows_q6_k(
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
    n_rows: u32,
) {
    let n_in = n_in as usize;
    let blocks = n_in / 32;
    unsafe {
        for_rows_dense(
            n_out as usize,
            n_rows as usize,
            bias,
            y,
            #[inline(always)]
            |row, g| {
                let (l, h) = (low.add(row * n_in / 2), high.add(row * n_in / 4));
                let (d, s) = (scales.add(row * n_in / 256), sub.add(row * n_in / 16));
                let load = |c: usize| {
                    let [a, b, e, f] = load_u16x8(l.add(16 * c) as *const u16);
                    let Pair([g, k]) = *(h.add(8 * c) as *const Pair);
                    Words6([a, b, e, f, g, k])
                };
                let compute = #[inline(always)]
                |Words6(w): Words6, c: usize, acc: &mut Sums| {
                    let mut lows = [0u32; 4];
                    let mut highs = [0u32; 4];
                    unroll!([0, 1, 2, 3], |i| {
                        lows[i] = (w[i] & 0x0F0F_0F0F) | q6_k_high(w[4], i);
                        highs[i] = ((w[i] >> 4) & 0x0F0F_0F0F) | q6_k_high(w[5], i);
                    });
                    let pair = *(s.add(2 * c) as *const u16);
                    let (scale_a, scale_b) = ((pair as u8 as i8) as f32, ((pair >> 8) as u8 as i8) as f32);
                    let super_scale = f16_to_f32(*d.add(c / 8));
                    g.each(|t, x| {
                        let (x_low, x_high) = activation_block(xq.add(x * n_in), c);
                        let (mut dot_a, mut dot_b, mut sum_a, mut sum_b) = (0i32, 0i32, 0i32, 0i32);
                        unroll!([0, 1, 2, 3], |i| {
                            dot_a = dp4a_unsigned_signed(lows[i], x_low[i], dot_a);
                            dot_b = dp4a_unsigned_signed(highs[i], x_high[i], dot_b);
                            sum_a = dp4a_signed(0x0101_0101, x_low[i], sum_a);
                            sum_b = dp4a_signed(0x0101_0101, x_high[i], sum_b);
                        });
                        let total =
                            scale_a * (dot_a - 32 * sum_a) as f32 + scale_b * (dot_b - 32 * sum_b) as f32;
                        acc[t] += super_scale * *xd.add(x * blocks + c) * total;
                    });
                };
                over_units(blocks, load, compute)
            },
        )
    };
}

#[derive(Clone, Copy, Default)]
struct Mxfp4Block {
    words: [u32; 4],
    e: u32,
}

/// One MXFP4 row (gemv_mxfp4.rs's `mxfp4_row`) against a group: `quants`, `exponents` at the
/// row's first block, `xq`, `xd` at X's first row.
#[inline(always)]
unsafe fn mxfp4_row(
    quants: *const u8,
    exponents: *const u8,
    xq: *const u8,
    xd: *const f32,
    blocks: usize,
    g: Group,
) -> Sums {
    let load = |b: usize| unsafe {
        Mxfp4Block { words: load_u16x8(quants.add(16 * b) as *const u16), e: *exponents.add(b) as u32 }
    };
    // LLVM would leave a closure this large out of line (a call, its captures in local memory).
    let compute =
        #[inline(always)]
        |block: Mxfp4Block, b: usize, acc: &mut Sums| unsafe { mxfp4_unit(block, b, acc, g, xq, xd, blocks) };
    over_units(blocks, load, compute)
}

/// sums[t] += block b of the row against row t of the group.
#[inline(always)]
unsafe fn mxfp4_unit(
    block: Mxfp4Block,
    b: usize,
    acc: &mut Sums,
    g: Group,
    xq: *const u8,
    xd: *const f32,
    blocks: usize,
) {
    let scale = e8m0_half(block.e);
    g.each(|t, x| {
        let (low, high) = unsafe { activation_block(xq.add(32 * x * blocks), b) };
        acc[t] += scale * unsafe { *xd.add(x * blocks + b) } * mxfp4_dot(block.words, low, high) as f32;
    });
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn gemv_rows_mxfp4(
    quants: *const u8,
    exponents: *const u8,
    bias: *const f32,
    xq: *const u8,
    xd: *const f32,
    y: *mut f32,
    n_in: u32,
    n_out: u32,
    n_rows: u32,
) {
    let blocks = n_in as usize / 32;
    unsafe {
        for_rows_dense(
            n_out as usize,
            n_rows as usize,
            bias,
            y,
            #[inline(always)]
            |row, g| mxfp4_row(quants.add(16 * row * blocks), exponents.add(row * blocks), xq, xd, blocks, g),
        )
    };
}

/// Y[a, r] = W[e, r, :] . X[a / x_div, :] (+ bias[e, r]) for every assignment a of expert e, as
/// `moe_route` grouped them (expert e's assignments are order[offsets[e]..offsets[e + 1]]): a warp
/// per (expert, row), n_expert * rows of them, those of experts no token chose returning at once.
/// X [T, n_in] (x_div = k: gate and up) or [T k, n_in] (x_div = 1: down); Y [T k, rows].
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn gemv_rows_mxfp4_experts(
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
    n_expert: u32,
    x_div: u32,
) {
    let (blocks, rows, x_div) = (n_in as usize / 32, rows as usize, x_div as usize);
    let mut warp = block_idx() * WARPS_PER_BLOCK + warp_idx();
    while warp < n_expert as usize * rows {
        let (expert, r) = (warp / rows, warp % rows);
        let (start, end) = unsafe { (*offsets.add(expert) as usize, *offsets.add(expert + 1) as usize) };
        let row = expert * rows + r;
        let b = if bias.is_null() { 0.0 } else { unsafe { *bias.add(row) } };
        let mut first = start;
        while first < end {
            let mut g = Group { x: [0; GROUP], y: [0; GROUP], count: (end - first).min(GROUP) };
            unroll!([0, 1, 2, 3, 4, 5, 6, 7], |t| {
                if t < g.count {
                    let a = unsafe { *order.add(first + t) } as usize;
                    (g.x[t], g.y[t]) = (a / x_div, a);
                }
            });
            let sums = unsafe {
                mxfp4_row(quants.add(16 * row * blocks), exponents.add(row * blocks), xq, xd, blocks, g)
            };
            unsafe { g.store(sums, b, y, rows, r) };
            first += GROUP;
        }
        warp += grid_dim() * WARPS_PER_BLOCK;
    }
}

/// Y[t, r] = W[r] . X[t] (+ bias[r]) for f32 matrices of few rows (a MoE router: 32 rows of
/// 2880), gemv.rs's `gemv_f32_split` (a block per weight row) with each weight load serving a
/// group of rows of X: block (r, g) takes weight row r and rows GROUP g.. of X. n_in a multiple
/// of 4. Launch: grid (n_out, ceil(T / GROUP)), the block size `gemv_f32_split` is launched with
/// (the same per-thread order of products, the same block reduction).
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gemv_rows_f32_split(
    w: *const f32,
    bias: *const f32,
    x: *const f32,
    y: *mut f32,
    n_in: u32,
    n_rows: u32,
) {
    let (n_in, row, n_out) = (n_in as usize, block_idx(), grid_dim());
    let first = block_idx_y() * GROUP;
    let count = (n_rows as usize - first).min(GROUP);
    let w = unsafe { w.add(row * n_in) };
    let mut acc = [0.0f32; GROUP];
    let mut c = thread_idx();
    while c < n_in / 4 {
        let [a, b, cc, d] = unsafe { load_f32x4(w.add(4 * c)) };
        unroll!([0, 1, 2, 3, 4, 5, 6, 7], |t| {
            if t < count {
                let [p, q, r, s] = unsafe { load_f32x4(x.add((first + t) * n_in + 4 * c)) };
                acc[t] += a * p + b * q + cc * r + d * s;
            }
        });
        c += block_dim();
    }
    let b = if bias.is_null() { 0.0 } else { unsafe { *bias.add(row) } };
    unroll!([0, 1, 2, 3, 4, 5, 6, 7], |t| {
        if t < count {
            let total = block_sum(acc[t]);
            if thread_idx() == 0 {
                unsafe { *y.add((first + t) * n_out + row) = total + b };
            }
        }
    });
}
