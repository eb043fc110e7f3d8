//! Integer dot products of the K-quant weight types (Q4_K, Q5_K, Q6_K) with Q8_K activations,
//! the way llama.cpp's CPU back end computes them in its default numerics.
//!
//! Block layouts (256 values each; f16 little-endian; "value v" counts from the block's start):
//! - Q4_K, 144 B: d f16 @0, dmin f16 @2, 12 B of 6-bit scales and mins @4, 128 B of nibbles @16.
//!   Sub-block j (values 32j..32j + 32) has scale sc_j and min m_j (`gguf::k_scale_min`); its
//!   values are the low nibbles (j even) or high nibbles (j odd) of bytes 32(j / 2).. of the
//!   nibbles. Weight = d sc_j q - dmin m_j, q in 0..16.
//! - Q5_K, 176 B: as Q4_K, with 32 B of fifth bits @16 and the nibbles @48: value 32j + l adds
//!   16 x bit j of byte l. q in 0..32.
//! - Q6_K, 210 B: 128 B of low nibbles @0, 64 B of two-bit highs @128, 16 i8 scales @192, d f16
//!   @208. In half h (values 128h..128h + 128) with low bytes L = 64h.., high bytes H = 32h..,
//!   value 128h + 32i + l (i < 4, l < 32) is the low (i < 2) or high (i >= 2) nibble of byte
//!   L + l + 32(i % 2), plus 16 x bits 2i, 2i + 1 of byte H + l. Sub-block j (16 values) has
//!   the signed scale sc_j. Weight = d sc_j (q - 32), q in 0..64.
//! - Q8_K (activations), [`Q8KBlock`]: f32 d, 256 i8 q and the 16 i16 sums of each 16 q. As
//!   llama.cpp's quantize_row_q8_K: the value of largest magnitude `max` (the first of equals)
//!   gives q = min(127, round-half-even(-127 / max x)) and d = 1 / (-127 / max), so the largest
//!   value maps to -127 and d takes the opposite sign of max; an all-zero block is all zeros.
//!
//! Per block pair, two exact integers and one f32 step:
//!   Q4_K, Q5_K:  S = sum_j sc_j sum_{l<32} q x,  M = sum_j m_j (sums_2j + sums_2j+1),
//!                row += (d d_x) S;  row -= (dmin d_x) M
//!   Q6_K:        S = sum_j sc_j sum_{l<16} (q - 32) x,  row += (d d_x) S
//! in block order, one f32 chain per (row, token). Every kernel computes S and M exactly (the
//! proptests check them bit for bit) and then the same f32 steps in the same order, so every
//! kernel gives the same bits for a row; llama.cpp keeps eight partial f32 sums instead, which
//! can differ from this in the last bits. S can pass 2^24 and rounds to f32 (the same way in
//! every kernel). The quantization is scalar in every kernel (a small part of a product: one
//! row of activations per token against the whole matrix).
//!
//! The kernels ([`super::kernel`]): the scalar reference here; on x86-64 (`k_quants/x86.rs`) AVX2
//! (`vpmaddubsw` u8 q x i8 x into i16 pairs, `vpmaddwd` by the sub-block's scale into i32) and
//! AVX-512 VNNI (the same products, then `vpdpwssd`: the scale product and the sum in one).
//! Q6_K's offset is taken back with the activation sums: sum (q - 32) x = sum q x - 32 sums_j.

#[cfg(target_arch = "x86_64")]
mod x86;

use super::{Kernel, TILE, f16_at};
use crate::gguf::{GgmlType, k_scale_min};

/// Values per K-quant block and per Q8_K block.
pub const BLOCK: usize = 256;

/// An activation block of 256 values: d, the quantized values and the sums of each 16 of them.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct Q8KBlock {
    pub d: f32,
    pub q: [i8; BLOCK],
    pub sums: [i16; BLOCK / 16],
}

impl Q8KBlock {
    pub const ZERO: Q8KBlock = Q8KBlock { d: 0.0, q: [0; BLOCK], sums: [0; BLOCK / 16] };
}

/// Whether `ty` has a K-quant integer kernel.
pub fn supported(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K)
}

/// Quantizes `x` (a multiple of 256 values) into `out` as llama.cpp's quantize_row_q8_K does.
pub fn quantize(x: &[f32], out: &mut [Q8KBlock]) {
    assert_eq!(x.len(), out.len() * BLOCK);
    for (block, values) in out.iter_mut().zip(x.chunks_exact(BLOCK)) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in values {
            if v.abs() > amax {
                (amax, max) = (v.abs(), v);
            }
        }
        if amax == 0.0 {
            *block = Q8KBlock::ZERO;
            continue;
        }
        let scale = -127.0 / max;
        for (q, &v) in block.q.iter_mut().zip(values) {
            *q = nearest(scale * v).min(127) as i8;
        }
        for (sum, group) in block.sums.iter_mut().zip(block.q.chunks_exact(16)) {
            *sum = group.iter().map(|&q| q as i16).sum();
        }
        block.d = 1.0 / scale;
    }
}

/// round-half-even(v) for |v| < 2^22: adding 1.5 x 2^23 leaves v's integer part in the low
/// mantissa bits, rounded by the addition (to nearest even). A plain loop the compiler
/// vectorizes, where `round_ties_even` is a library call without SSE4.1.
fn nearest(v: f32) -> i32 {
    ((v + 12_582_912.0).to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

/// A weight block's values and scales as small integers.
struct Decoded {
    /// q (Q4_K, Q5_K) or q - 32 (Q6_K), in value order.
    values: [i32; BLOCK],
    /// Per sub-block: 8 of 32 values (Q4_K, Q5_K) or 16 of 16 (Q6_K).
    scales: [i32; 16],
    minimums: [i32; 8],
    d: f32,
    dmin: f32,
}

fn decode(ty: GgmlType, b: &[u8]) -> Decoded {
    let mut out = Decoded { values: [0; BLOCK], scales: [0; 16], minimums: [0; 8], d: 0.0, dmin: 0.0 };
    match ty {
        GgmlType::Q4K | GgmlType::Q5K => {
            let fifth_bits = ty == GgmlType::Q5K;
            let nibbles = if fifth_bits { &b[48..176] } else { &b[16..144] };
            for j in 0..8 {
                let (sc, m) = k_scale_min(&b[4..16], j);
                (out.scales[j], out.minimums[j]) = (sc as i32, m as i32);
                for l in 0..32 {
                    let byte = nibbles[32 * (j / 2) + l];
                    let low = if j % 2 == 0 { byte & 0x0F } else { byte >> 4 } as i32;
                    let high = if fifth_bits { ((b[16 + l] >> j) & 1) as i32 } else { 0 };
                    out.values[32 * j + l] = low | (high << 4);
                }
            }
            (out.d, out.dmin) = (f16_at(b, 0), f16_at(b, 2));
        }
        GgmlType::Q6K => {
            for (v, value) in out.values.iter_mut().enumerate() {
                let (h, i, l) = (v / 128, (v % 128) / 32, v % 32);
                let byte = b[64 * h + 32 * (i % 2) + l];
                let low = if i < 2 { byte & 0x0F } else { byte >> 4 } as i32;
                let high = ((b[128 + 32 * h + l] >> (2 * i)) & 3) as i32;
                *value = (low | (high << 4)) - 32;
            }
            for (scale, &byte) in out.scales.iter_mut().zip(&b[192..208]) {
                *scale = byte as i8 as i32;
            }
            out.d = f16_at(b, 208);
        }
        _ => unreachable!("{ty} is not a K-quant with an integer kernel"),
    }
    out
}

/// The block pair's exact (S, M) from a decoded weight block.
fn sums_of(ty: GgmlType, w: &Decoded, a: &Q8KBlock) -> (i32, i32) {
    let group = if ty == GgmlType::Q6K { 16 } else { 32 };
    let s = (0..BLOCK / group)
        .map(|j| {
            let range = group * j..group * (j + 1);
            let dot: i32 = w.values[range.clone()].iter().zip(&a.q[range]).map(|(&q, &x)| q * x as i32).sum();
            w.scales[j] * dot
        })
        .sum();
    let m = if ty == GgmlType::Q6K {
        0
    } else {
        (0..8).map(|j| w.minimums[j] * (a.sums[2 * j] as i32 + a.sums[2 * j + 1] as i32)).sum()
    };
    (s, m)
}

/// The (S, M) of every block of `row` with `activations`, as `kernel` computes them: what the
/// proptests compare bit for bit.
pub fn block_sums(kernel: Kernel, ty: GgmlType, row: &[u8], activations: &[Q8KBlock]) -> Vec<(i32, i32)> {
    assert!(supported(ty) && activations.len() >= row.len() / ty.block_bytes());
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => x86::avx2::block_sums(ty, row, activations),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => x86::avx512_vnni::block_sums(ty, row, activations),
        _ => row
            .chunks_exact(ty.block_bytes())
            .zip(activations)
            .map(|(b, a)| sums_of(ty, &decode(ty, b), a))
            .collect(),
    }
}

/// out[t] = weight row `row` (blocks of `ty`) . activations[t], for up to [`TILE`] tokens; each
/// activation row holds at least the weight row's number of blocks.
pub fn dot_tile(kernel: Kernel, ty: GgmlType, row: &[u8], activations: &[&[Q8KBlock]], out: &mut [f32]) {
    assert!(supported(ty), "{ty} has no K-quant kernel");
    assert!(!activations.is_empty() && activations.len() <= TILE && out.len() >= activations.len());
    let n_blocks = row.len() / ty.block_bytes();
    assert_eq!(row.len(), n_blocks * ty.block_bytes(), "a {ty} row of whole blocks");
    assert!(activations.iter().all(|a| a.len() >= n_blocks), "activation rows shorter than the weight row");
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => x86::avx2::dot_tile(ty, row, activations, out),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => x86::avx512_vnni::dot_tile(ty, row, activations, out),
        _ => dot_tile_scalar(ty, row, activations, out),
    }
}

/// The scalar reference of [`dot_tile`].
pub fn dot_tile_scalar(ty: GgmlType, row: &[u8], activations: &[&[Q8KBlock]], out: &mut [f32]) {
    let mut totals = [0.0f32; TILE];
    for (k, block) in row.chunks_exact(ty.block_bytes()).enumerate() {
        let w = decode(ty, block);
        for (total, tokens) in totals.iter_mut().zip(activations) {
            let a = &tokens[k];
            let (s, m) = sums_of(ty, &w, a);
            *total += w.d * a.d * s as f32;
            if ty != GgmlType::Q6K {
                *total -= w.dmin * a.d * m as f32;
            }
        }
    }
    out[..activations.len()].copy_from_slice(&totals[..activations.len()]);
}

#[cfg(test)]
mod tests;
