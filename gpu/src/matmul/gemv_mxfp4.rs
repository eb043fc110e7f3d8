//! MXFP4 matrix-vector products for decode, against 8-bit activations.
//!
//! Math: y[o] = sum over the row's blocks of 32 of 2^(e - 128) * xd * sum(v xq) (+ bias[o]), v the
//! block's E2M1 values doubled (the integers 0, ±1, ±2, ±3, ±4, ±6, ±8, ±12), x quantized per
//! block of 32 as for the other integer GEMVs (quantize.rs). The integers are llama.cpp's
//! (`vec_dot_mxfp4_q8_1`) and engine::cpu::quantized's: the GPU differs from the CPU only in the
//! order of its float sums.
//! Layout: as the host regroups GGUF's 17-byte blocks (dequant.rs, `RawMxfp4`): quants
//! [rows, n_in / 2], 16 bytes per block, byte k holding values 2k (low nibble) and 2k + 1 (high);
//! exponents [rows, n_in / 32] E8M0 bytes. The same bytes as the file, nothing dequantized.
//! Per 8 nibbles (a word) the lookup is two `prmt` on an 8-byte table of the doubled magnitudes:
//! with the nibbles as selectors (sign bit set: the byte's sign, i.e. 0) it gives the positive
//! values P, with the sign bits cleared the magnitudes M; v = 2P - M, so sum(v x) =
//! 2 dp4a(P, x) - dp4a(M, x): per 16 weight bytes 16 `prmt`, 16 `dp4a` and a few shifts.
//! Launch: a warp per row (grid-stride), 8 warps per block, no shared memory; each lane takes
//! blocks lane, lane + 32, ... (a warp reads 512 contiguous bytes of quants per step), the loads
//! of four blocks in flight.
//! Cost: 4.25 bits per weight read once (17 bytes per 32), x from L1/L2.
//! `gemv_mxfp4_q8_experts` is the same product for the experts a token selected (moe.rs).

use super::dequant::e8m0_half;
use super::gemv::{activation_block, for_rows};
use crate::device::{WARP_SIZE, byte_permute, dp4a_unsigned_signed, lane_idx, load_u16x8};

/// The doubled E2M1 magnitudes 0, 1, 2, 3, 4, 6, 8, 12 as the bytes of two words.
pub(crate) const TABLE_LOW: u32 = 0x0302_0100;
pub(crate) const TABLE_HIGH: u32 = 0x0C08_0604;

/// sum(v x) for a block: its 16 nibble bytes `words` (value 8 i + n at nibble n of word i)
/// against its 32 activation bytes in two halves (values 0..16, 16..32).
#[inline(always)]
pub(crate) fn mxfp4_dot(words: [u32; 4], low: [u32; 4], high: [u32; 4]) -> i32 {
    let x = [low[0], low[1], low[2], low[3], high[0], high[1], high[2], high[3]];
    let (mut positive, mut magnitude) = (0i32, 0i32);
    crate::unroll!([0, 1, 2, 3], |i| {
        let (w, unsigned) = (words[i], words[i] & 0x7777_7777);
        let lookup = |selector: u32| byte_permute(TABLE_LOW, TABLE_HIGH, selector);
        positive = dp4a_unsigned_signed(lookup(w), x[2 * i], positive);
        positive = dp4a_unsigned_signed(lookup(w >> 16), x[2 * i + 1], positive);
        magnitude = dp4a_unsigned_signed(lookup(unsigned), x[2 * i], magnitude);
        magnitude = dp4a_unsigned_signed(lookup(unsigned >> 16), x[2 * i + 1], magnitude);
    });
    2 * positive - magnitude
}

#[derive(Clone, Copy, Default)]
struct Block {
    words: [u32; 4],
    e: u32,
}

/// One row's dot product: `quants`, `exponents` at the row's first block; `xq`, `xd` at the
/// activations of its first block.
#[inline(always)]
pub(crate) unsafe fn mxfp4_row(
    quants: *const u8,
    exponents: *const u8,
    xq: *const u8,
    xd: *const f32,
    blocks: usize,
) -> f32 {
    let load = |b: usize| unsafe {
        Block { words: load_u16x8(quants.add(16 * b) as *const u16), e: *exponents.add(b) as u32 }
    };
    let compute = |block: Block, b: usize| {
        let (low, high) = unsafe { activation_block(xq, b) };
        e8m0_half(block.e) * unsafe { *xd.add(b) } * mxfp4_dot(block.words, low, high) as f32
    };
    // The loads of four blocks in flight before any is used: a row of up to 128 blocks (gpt-oss's
    // 2880 values are 90) is then one round trip to memory per lane.
    let mut acc = 0.0f32;
    let mut b0 = lane_idx();
    while b0 < blocks {
        let (b1, b2, b3) = (b0 + WARP_SIZE, b0 + 2 * WARP_SIZE, b0 + 3 * WARP_SIZE);
        let get = |b: usize| if b < blocks { load(b) } else { Block::default() };
        let (w0, w1, w2, w3) = (get(b0), get(b1), get(b2), get(b3));
        acc += compute(w0, b0);
        if b1 < blocks {
            acc += compute(w1, b1);
        }
        if b2 < blocks {
            acc += compute(w2, b2);
        }
        if b3 < blocks {
            acc += compute(w3, b3);
        }
        b0 += 4 * WARP_SIZE;
    }
    acc
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn gemv_mxfp4_q8(
    quants: *const u8,
    exponents: *const u8,
    bias: *const f32,
    xq: *const u8,
    xd: *const f32,
    y: *mut f32,
    n_in: u32,
    n_out: u32,
) {
    let blocks = n_in as usize / 32;
    unsafe {
        for_rows(n_out as usize, bias, y, |row| {
            mxfp4_row(quants.add(16 * row * blocks), exponents.add(row * blocks), xq, xd, blocks)
        })
    };
}
