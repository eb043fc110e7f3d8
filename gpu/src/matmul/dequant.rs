//! Blocks of 32 quantized weights to f16, for the GEMM (gemm.rs): one function per format from the
//! raw bits of one block (as the host repacks them, see kquant.rs and host/src/matmul/mod.rs) to the
//! function v -> value v (< 32) of the block, which `pack_chunk` turns into f16 pairs 8 values at
//! a time (the scales are decoded once per block, the values where they are stored).
//!
//! Each value is computed in f32 exactly as engine::gguf::dequantize computes it (the products of
//! f16 scales and small integers are exact in f32; Q4_1 and Q4_K round once, in the final add), then
//! rounded to the nearest f16: the GPU's weights are the CPU's, rounded once. Integers become f32
//! through the bits of 2^23 + q (an integer op and a subtraction, no conversion instruction).
//!
//! Plain Rust with no device code: tests/conformance/gemm.rs compiles this file on the CPU (with
//! host twins of `dequant_ops`) and check it against the dequantizer bit for bit.

use super::dequant_ops::{f16_to_f32, fma, pack_f16x2, unroll};

/// 2^23: the f32 whose low mantissa bits hold an integer below 2^23 exactly.
const MAGIC: f32 = 8_388_608.0;
const MAGIC_BITS: u32 = 0x4B00_0000;

/// The integer q < 2^23 as f32, less `offset` (exact for the small integers here).
#[inline(always)]
fn int_to_f32(q: u32, offset: f32) -> f32 {
    f32::from_bits(MAGIC_BITS | q) - (MAGIC + offset)
}

/// The 4-bit field of value v (< 32) of a block whose 16 nibble bytes are `words`: byte v % 16,
/// low nibble for v < 16, high for the rest.
#[inline(always)]
fn nibble(words: [u32; 4], v: usize) -> u32 {
    (words[(v % 16) / 4] >> (8 * (v % 4) + 4 * (v / 16))) & 0xF
}

/// Values `chunk` * 8.. + 8 of a block, `value(v)`, packed in pairs (value 8 chunk + 2 p in the
/// low half of word p): 16 bytes of a row of a dequantized tile.
#[inline(always)]
pub fn pack_chunk(value: &impl Fn(usize) -> f32, chunk: usize) -> [u32; 4] {
    let mut out = [0u32; 4];
    unroll!([0, 1, 2, 3], |p| {
        out[p] = pack_f16x2(value(8 * chunk + 2 * p), value(8 * chunk + 2 * p + 1));
    });
    out
}

/// Q8_0: 32 i8 (as 8 little-endian words) and the f16 scale d. Value d q.
#[derive(Clone, Copy, Default)]
pub struct RawQ8_0 {
    pub quants: [u32; 8],
    pub d: u16,
}

#[inline(always)]
pub fn q8_0_values(raw: RawQ8_0) -> impl Fn(usize) -> f32 {
    let d = f16_to_f32(raw.d);
    // The byte with its sign bit flipped is q + 128 as an unsigned byte.
    move |v| int_to_f32(((raw.quants[v / 4] >> (8 * (v % 4))) & 0xFF) ^ 0x80, 128.0) * d
}

/// Q4_0 and Q4_1: 16 nibble bytes (value i low, i + 16 high), d, and Q4_1's min m.
#[derive(Clone, Copy, Default)]
pub struct RawQ4 {
    pub quants: [u32; 4],
    pub d: u16,
    pub m: u16,
}

/// Q4_0: d (q - 8).
#[inline(always)]
pub fn q4_0_values(raw: RawQ4) -> impl Fn(usize) -> f32 {
    let d = f16_to_f32(raw.d);
    move |v| d * int_to_f32(nibble(raw.quants, v), 8.0)
}

/// Q4_1: d q + m, rounded once.
#[inline(always)]
pub fn q4_1_values(raw: RawQ4) -> impl Fn(usize) -> f32 {
    let (d, m) = (f16_to_f32(raw.d), f16_to_f32(raw.m));
    move |v| fma(int_to_f32(nibble(raw.quants, v), 0.0), d, m)
}

/// Q4_K: one sub-block's 16 nibble bytes, its super-block's d and dmin (f16, low half first) and
/// the sub-block's 6-bit (scale, min) as a byte pair (the host unpacks them, see kquant.rs).
#[derive(Clone, Copy, Default)]
pub struct RawQ4K {
    pub quants: [u32; 4],
    pub dm: u32,
    pub pair: u16,
}

/// Q4_K: (d scale) q - dmin min, rounded once.
#[inline(always)]
pub fn q4_k_values(raw: RawQ4K) -> impl Fn(usize) -> f32 {
    let scale = f16_to_f32(raw.dm as u16) * (raw.pair & 0xFF) as f32;
    let min = f16_to_f32((raw.dm >> 16) as u16) * (raw.pair >> 8) as f32;
    move |v| fma(int_to_f32(nibble(raw.quants, v), 0.0), scale, -min)
}

/// Q6_K: a block's 16 low-nibble bytes, its 8 bytes of high bits (a word per half of 16 values,
/// see kquant.rs), its two i8 scales (one per half, low byte first) and the super-block's d.
#[derive(Clone, Copy, Default)]
pub struct RawQ6K {
    pub low: [u32; 4],
    pub high: [u32; 2],
    pub scales: u16,
    pub d: u16,
}

/// Q6_K: d scale_half (q - 32), exact in f32 (11 + 7 + 6 significant bits).
#[inline(always)]
pub fn q6_k_values(raw: RawQ6K) -> impl Fn(usize) -> f32 {
    let d = f16_to_f32(raw.d);
    let scale = [d * (raw.scales as u8 as i8) as f32, d * ((raw.scales >> 8) as u8 as i8) as f32];
    move |v| {
        let (half, u) = (v / 16, v % 16);
        let high = (raw.high[half] >> (8 * (u % 4) + 2 * (u / 4))) & 3;
        int_to_f32(nibble(raw.low, v) | high << 4, 32.0) * scale[half]
    }
}

/// MXFP4 (OCP MX: E2M1 values sharing an E8M0 scale), as the host regroups it (host/src/matmul/mod.rs):
/// 16 nibble bytes per block of 32, byte k holding value 2k (low nibble) and 2k + 1 (high), so
/// that nibble n of word i is value 8 i + n; and the block's exponent byte e.
#[derive(Clone, Copy, Default)]
pub struct RawMxfp4 {
    pub quants: [u32; 4],
    pub e: u32,
}

/// The E8M0 scale 2^(e - 127), halved: 2^(e - 128), to go with doubled E2M1 values (which are
/// then the integers 0, 1, 2, 3, 4, 6, 8, 12 with a sign). As engine::gguf::e8m0_half: e < 2 gives
/// an f32 subnormal.
#[inline(always)]
pub fn e8m0_half(e: u32) -> f32 {
    if e < 2 { f32::from_bits(0x0020_0000 << e) } else { f32::from_bits((e - 1) << 23) }
}

/// An E2M1 nibble (sign, 2-bit exponent, 1-bit mantissa) doubled, as f32 bits built directly:
/// magnitudes 0 and 1 are 0 and 1.0; from 2 on, magnitude m is 2^((m >> 1) - 1) (1 + (m & 1) / 2)
/// doubled, whose f32 exponent and top mantissa bit are (m + 254) << 22.
#[inline(always)]
pub fn e2m1_doubled(nibble: u32) -> f32 {
    let magnitude = nibble & 7;
    let bits = if magnitude < 2 { magnitude * 0x3F80_0000 } else { (magnitude + 254) << 22 };
    f32::from_bits(bits | (nibble >> 3) << 31)
}

/// MXFP4: 2^(e - 128) * doubled E2M1, the same product in f32 as the CPU dequantizer (exact
/// unless it overflows, as the CPU's does).
#[inline(always)]
pub fn mxfp4_values(raw: RawMxfp4) -> impl Fn(usize) -> f32 {
    let d = e8m0_half(raw.e);
    move |v| e2m1_doubled((raw.quants[v / 8] >> (4 * (v % 8))) & 0xF) * d
}
