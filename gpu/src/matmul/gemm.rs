//! Matrix-matrix products for prefill on the tensor cores: Y[T, n_out] = X[T, n_in] W^T (+ bias),
//! W [n_out, n_in] in its stored format.
//!
//! Math: f16 operands, f32 accumulation (mma.sync m16n8k16): X is rounded to f16 as it is staged,
//! W is dequantized to f16 tile by tile in shared memory (never as a whole in VRAM).
//! Layout: X [T, n_in] f32, Y [T, n_out] f32 (row stride n_out), bias [n_out] f32 or null. W as
//! the host stores it (host/src/matmul.rs), given as up to four arrays w0..w3:
//!   f32, f16: w0 rows.          Q8_0, Q4_0: w0 quants, w1 f16 scales.   Q4_1: + w2 f16 mins.
//!   Q4_K: w0 quants, w1 20-byte heads.   Q6_K: w0 low nibbles, w1 high bits, w2 d, w3 i8 scales.
//! n_in a multiple of 32 (256 for K-quants); any T and n_out.
//! Launch: grid (ceil(n_out / 128), ceil(T / BM)), 256 threads (8 warps, each a BM / 2 x 32 tile
//! of Y: BM / 32 x 4 mma tiles), dynamic shared memory GEMM_SHARED bytes; BM = 64 (`gemm_*`) or
//! 128 (`gemm_*_wide`, when that still gives two blocks per SM). Per step of 32 inputs the block
//! stages X [BM][32] and W [128][32] as f16 rows padded to 40 values (80 bytes: the fragment
//! loads of a warp then hit 32 distinct banks), then runs two k16 steps of mma while the next
//! step's values are loaded into registers.
//! Cost: W is read once per BM tokens (from L2 after the first block row), X once per 128
//! outputs; 2 T n_in n_out FLOPs on the tensor cores.

use crate::device::{
    block_idx, block_idx_y, dynamic_shared, f16_to_f32, lane_idx, sync_threads, thread_idx, warp_idx,
};
use crate::unroll;

const BN: usize = 128;
const BK: usize = 32;
/// f16 values per shared row (32 + 8 of padding).
const LD: usize = BK + 8;
/// Shared bytes (for the wide form; the narrow one uses less): X tile then W tile.
pub const GEMM_SHARED: usize = (128 + BN) * LD * 2;

/// Two f32 as an f16 pair (lo in the low half).
#[inline(always)]
fn pack(lo: f32, hi: f32) -> u32 {
    let out: u32;
    unsafe {
        core::arch::asm!("cvt.rn.f16x2.f32 {o}, {h}, {l};", o = out(reg32) out, h = in(reg32) hi, l = in(reg32) lo)
    };
    out
}

/// D = A B + D for one m16n8k16 tile (f16 operands, f32 accumulators).
#[inline(always)]
fn mma(d: &mut [f32; 4], a: [u32; 4], b: [u32; 2]) {
    unsafe {
        core::arch::asm!(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {{{d0}, {d1}, {d2}, {d3}}}, {{{a0}, {a1}, {a2}, {a3}}}, {{{b0}, {b1}}}, {{{d0}, {d1}, {d2}, {d3}}};",
            d0 = inout(reg32) d[0], d1 = inout(reg32) d[1], d2 = inout(reg32) d[2], d3 = inout(reg32) d[3],
            a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
            b0 = in(reg32) b[0], b1 = in(reg32) b[1],
        );
    }
}

/// How a stored format yields 16 consecutive values of a row as 8 f16 pairs.
trait Tile {
    /// Values 32 c + 16 h .. + 16 of row `row` (row-relative block c, half h).
    unsafe fn load16(w: [*const u8; 4], n_in: usize, row: usize, c: usize, h: usize) -> [u32; 8];
}

#[inline(always)]
fn pack16(v: impl Fn(usize) -> f32) -> [u32; 8] {
    [
        pack(v(0), v(1)),
        pack(v(2), v(3)),
        pack(v(4), v(5)),
        pack(v(6), v(7)),
        pack(v(8), v(9)),
        pack(v(10), v(11)),
        pack(v(12), v(13)),
        pack(v(14), v(15)),
    ]
}

/// 16 bytes at p as four words.
#[inline(always)]
unsafe fn words(p: *const u8) -> [u32; 4] {
    unsafe { crate::device::load_u16x8(p as *const u16) }
}

/// Nibble i (0..16) of 16 bytes given as words: byte i's low (h = 0) or high (h = 1) nibble.
#[inline(always)]
fn nibble(q: [u32; 4], i: usize, h: usize) -> u32 {
    (q[i / 4] >> (8 * (i % 4) + 4 * h)) & 0xF
}

struct F32;
impl Tile for F32 {
    #[inline(always)]
    unsafe fn load16(w: [*const u8; 4], n_in: usize, row: usize, c: usize, h: usize) -> [u32; 8] {
        let p = unsafe { (w[0] as *const f32).add(row * n_in + 32 * c + 16 * h) };
        let v = |k: usize| unsafe { crate::device::load_f32x4(p.add(4 * k)) };
        let (a, b, e, f) = (v(0), v(1), v(2), v(3));
        let all =
            [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], e[0], e[1], e[2], e[3], f[0], f[1], f[2], f[3]];
        pack16(|i| all[i])
    }
}

struct F16;
impl Tile for F16 {
    #[inline(always)]
    unsafe fn load16(w: [*const u8; 4], n_in: usize, row: usize, c: usize, h: usize) -> [u32; 8] {
        let p = unsafe { w[0].add(2 * (row * n_in + 32 * c + 16 * h)) };
        let ([a, b, e, f], [g, k, l, m]) = unsafe { (words(p), words(p.add(16))) };
        [a, b, e, f, g, k, l, m]
    }
}

struct Q8_0;
impl Tile for Q8_0 {
    #[inline(always)]
    unsafe fn load16(w: [*const u8; 4], n_in: usize, row: usize, c: usize, h: usize) -> [u32; 8] {
        let q = unsafe { words(w[0].add(row * n_in + 32 * c + 16 * h)) };
        let d = f16_to_f32(unsafe { *(w[1] as *const u16).add(row * n_in / 32 + c) });
        pack16(|i| d * ((q[i / 4] >> (8 * (i % 4))) as u8 as i8) as f32)
    }
}

struct Q4_0;
impl Tile for Q4_0 {
    #[inline(always)]
    unsafe fn load16(w: [*const u8; 4], n_in: usize, row: usize, c: usize, h: usize) -> [u32; 8] {
        let q = unsafe { words(w[0].add(row * n_in / 2 + 16 * c)) };
        let d = f16_to_f32(unsafe { *(w[1] as *const u16).add(row * n_in / 32 + c) });
        pack16(|i| d * (nibble(q, i, h) as f32 - 8.0))
    }
}

struct Q4_1;
impl Tile for Q4_1 {
    #[inline(always)]
    unsafe fn load16(w: [*const u8; 4], n_in: usize, row: usize, c: usize, h: usize) -> [u32; 8] {
        let q = unsafe { words(w[0].add(row * n_in / 2 + 16 * c)) };
        let d = f16_to_f32(unsafe { *(w[1] as *const u16).add(row * n_in / 32 + c) });
        let m = f16_to_f32(unsafe { *(w[2] as *const u16).add(row * n_in / 32 + c) });
        pack16(|i| d * nibble(q, i, h) as f32 + m)
    }
}

struct Q4K;
impl Tile for Q4K {
    #[inline(always)]
    unsafe fn load16(w: [*const u8; 4], n_in: usize, row: usize, c: usize, h: usize) -> [u32; 8] {
        let q = unsafe { words(w[0].add(row * n_in / 2 + 16 * c)) };
        let head = unsafe { w[1].add(20 * (row * n_in / 256 + c / 8)) };
        let dm = unsafe { *(head as *const u32) };
        let pair = unsafe { *(head.add(4 + 2 * (c % 8)) as *const u16) };
        let (scale, min) = (pair & 0xFF, pair >> 8);
        let d = f16_to_f32(dm as u16) * scale as f32;
        let m = f16_to_f32((dm >> 16) as u16) * min as f32;
        pack16(|i| d * nibble(q, i, h) as f32 - m)
    }
}

struct Q6K;
impl Tile for Q6K {
    #[inline(always)]
    unsafe fn load16(w: [*const u8; 4], n_in: usize, row: usize, c: usize, h: usize) -> [u32; 8] {
        let q = unsafe { words(w[0].add(row * n_in / 2 + 16 * c)) };
        let high = unsafe { *(w[1].add(row * n_in / 4 + 8 * c + 4 * h) as *const u32) };
        let sb = row * n_in / 256 + c / 8;
        let d = f16_to_f32(unsafe { *(w[2] as *const u16).add(sb) });
        let scale = unsafe { *(w[3].add(16 * sb + 2 * (c % 8) + h) as *const i8) } as f32;
        let ds = d * scale;
        pack16(|i| {
            let bits = (high >> (8 * (i % 4) + 2 * (i / 4))) & 3;
            ds * ((nibble(q, i, h) | bits << 4) as i32 - 32) as f32
        })
    }
}

/// 16 f32 of X row `row` from column `col` (zeros past the last token) as 8 f16 pairs.
#[inline(always)]
unsafe fn x16(x: *const f32, t: usize, n_in: usize, row: usize, col: usize) -> [u32; 8] {
    if row >= t {
        return [0; 8];
    }
    let p = unsafe { x.add(row * n_in + col) };
    let v = |k: usize| unsafe { crate::device::load_f32x4(p.add(4 * k)) };
    let (a, b, e, f) = (v(0), v(1), v(2), v(3));
    let all =
        [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], e[0], e[1], e[2], e[3], f[0], f[1], f[2], f[3]];
    pack16(|i| all[i])
}

/// Stores 8 words (16 f16) at shared f16 index `at` (16-byte aligned).
#[inline(always)]
unsafe fn store8(base: *mut u16, at: usize, v: [u32; 8]) {
    let p = unsafe { base.add(at) as *mut [u32; 4] };
    unsafe {
        *p = [v[0], v[1], v[2], v[3]];
        *p.add(1) = [v[4], v[5], v[6], v[7]];
    }
}

/// The f16 pair at shared index `at` (even).
#[inline(always)]
unsafe fn pair(base: *const u16, at: usize) -> u32 {
    unsafe { *(base.add(at) as *const u32) }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm<T: Tile, const BM: usize>(
    w: [*const u8; 4],
    bias: *const f32,
    x: *const f32,
    y: *mut f32,
    t: usize,
    n_in: usize,
    n_out: usize,
) {
    let xs = dynamic_shared::<u16>();
    let ws = unsafe { xs.add(BM * LD) };
    let (m0, n0) = (block_idx_y() * BM, block_idx() * BN);
    let (warp, lane) = (warp_idx(), lane_idx());
    // Warps 2 (tokens) x 4 (outputs); each BM / 2 tokens x 32 outputs, MT m16 tiles by 4 n8.
    let (wm, wn) = (BM / 2 * (warp % 2), 32 * (warp / 2));
    let (g, q) = (lane / 4, lane % 4);
    let mut acc = [[[0.0f32; 4]; 4]; 4];
    let tid = thread_idx();
    // Staging, 16 values a thread: X row tid / 2 (threads below 2 BM), W row tid / 2.
    let (w_row, w_half) = (tid / 2, tid % 2);
    let (x_row, x_half) = (tid / 2, tid % 2);
    // The next tile is loaded into registers while the tensor cores work on the current one.
    let load = |k0: usize| {
        let xv = if x_row < BM { unsafe { x16(x, t, n_in, m0 + x_row, k0 + 16 * x_half) } } else { [0; 8] };
        let wv = if n0 + w_row < n_out {
            unsafe { T::load16(w, n_in, n0 + w_row, k0 / 32, w_half) }
        } else {
            [0; 8]
        };
        (xv, wv)
    };
    let (mut xv, mut wv) = load(0);
    let mut k0 = 0;
    while k0 < n_in {
        if x_row < BM {
            unsafe { store8(xs, x_row * LD + 16 * x_half, xv) };
        }
        unsafe { store8(ws, w_row * LD + 16 * w_half, wv) };
        sync_threads();
        if k0 + BK < n_in {
            (xv, wv) = load(k0 + BK);
        }
        unroll!([0, 16], |kk| {
            let k = kk + 2 * q;
            let mut a = [[0u32; 4]; 4];
            unroll!([0, 1, 2, 3], |mt| {
                if mt < BM / 32 {
                    let r = wm + 16 * mt + g;
                    a[mt] = unsafe {
                        [
                            pair(xs, r * LD + k),
                            pair(xs, (r + 8) * LD + k),
                            pair(xs, r * LD + k + 8),
                            pair(xs, (r + 8) * LD + k + 8),
                        ]
                    };
                }
            });
            unroll!([0, 1, 2, 3], |nt| {
                let col = wn + 8 * nt + g;
                let b = unsafe { [pair(ws, col * LD + k), pair(ws, col * LD + k + 8)] };
                unroll!([0, 1, 2, 3], |mt| {
                    if mt < BM / 32 {
                        mma(&mut acc[mt][nt], a[mt], b);
                    }
                });
            });
        });
        sync_threads();
        k0 += BK;
    }
    unroll!([0, 1, 2, 3], |mt| {
        if mt < BM / 32 {
            unroll!([0, 1, 2, 3], |nt| {
                let d = acc[mt][nt];
                let col = n0 + wn + 8 * nt + 2 * q;
                unroll!([0, 1], |half| {
                    let row = m0 + wm + 16 * mt + g + 8 * half;
                    unroll!([0, 1], |e| {
                        if row < t && col + e < n_out {
                            let b = if bias.is_null() { 0.0 } else { unsafe { *bias.add(col + e) } };
                            unsafe { *y.add(row * n_out + col + e) = d[2 * half + e] + b };
                        }
                    });
                });
            });
        }
    });
}

macro_rules! gemm_kernel {
    ($name:ident, $wide:ident, $tile:ty) => {
        /// Blocks of 64 tokens (for grids that would not fill the GPU with 128).
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $name(
            w0: *const u8,
            w1: *const u8,
            w2: *const u8,
            w3: *const u8,
            bias: *const f32,
            x: *const f32,
            y: *mut f32,
            t: u32,
            n_in: u32,
            n_out: u32,
        ) {
            unsafe {
                gemm::<$tile, 64>([w0, w1, w2, w3], bias, x, y, t as usize, n_in as usize, n_out as usize)
            }
        }

        /// Blocks of 128 tokens: each W tile dequantized half as often, twice the mma per fragment.
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $wide(
            w0: *const u8,
            w1: *const u8,
            w2: *const u8,
            w3: *const u8,
            bias: *const f32,
            x: *const f32,
            y: *mut f32,
            t: u32,
            n_in: u32,
            n_out: u32,
        ) {
            unsafe {
                gemm::<$tile, 128>([w0, w1, w2, w3], bias, x, y, t as usize, n_in as usize, n_out as usize)
            }
        }
    };
}

gemm_kernel!(gemm_f32, gemm_f32_wide, F32);
gemm_kernel!(gemm_f16, gemm_f16_wide, F16);
gemm_kernel!(gemm_q8_0, gemm_q8_0_wide, Q8_0);
gemm_kernel!(gemm_q4_0, gemm_q4_0_wide, Q4_0);
gemm_kernel!(gemm_q4_1, gemm_q4_1_wide, Q4_1);
gemm_kernel!(gemm_q4_k, gemm_q4_k_wide, Q4K);
gemm_kernel!(gemm_q6_k, gemm_q6_k_wide, Q6K);
