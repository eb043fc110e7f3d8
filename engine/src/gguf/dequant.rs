//! CPU dequantizers: GGUF blocks to f32, one function per storage type. Layouts (bytes, in order):
//!   Q8_0  d:f16 q:i8[32]                      x = d q
//!   Q4_0  d:f16 q:u8[16]                      x[j] = d (lo(q[j]) - 8), x[j+16] = d (hi(q[j]) - 8)
//!   Q4_1  d:f16 m:f16 q:u8[16]                x = d nibble + m
//!   Q5_0  d:f16 qh:u32 q:u8[16]               fifth bit of element i is bit i of qh; x = d (q - 16)
//!   Q5_1  d:f16 m:f16 qh:u32 q:u8[16]         x = d q + m
//!   Q4_K  d:f16 dmin:f16 scales:u8[12] q:u8[128]   8 sub-blocks of 32 with 6-bit scale and min;
//!         sub-block s takes nibble s % 2 of bytes 32 (s / 2)..; x = d sc[s] q - dmin m[s]
//!   Q5_K  as Q4_K with qh:u8[32] before q: bit s of qh[l] is the fifth bit of element l of sub-block s
//!   Q6_K  ql:u8[128] qh:u8[64] scales:i8[16] d:f16   x = d scales[i / 16] (q - 32), 6-bit q
//!   MXFP4 e:u8 q:u8[16]                       x = 2^(e - 127) * E2M1(nibble), low nibbles first
//! (The layouts are llama.cpp's; gguf-py's quants.py is the reference the tests compare against.)

use super::GgufError;
use super::types::GgmlType;
use half::f16;

/// Dequantizes `n` elements of type `ty` from `bytes` (exactly n / block_size blocks).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, GgufError> {
    if !n.is_multiple_of(ty.block_size()) {
        return Err(GgufError::PartialBlock { ty, n_elements: n });
    }
    let expected = (n / ty.block_size()).checked_mul(ty.block_bytes());
    if expected != Some(bytes.len()) {
        let expected = expected.unwrap_or(usize::MAX);
        return Err(GgufError::DataSize { ty, n_elements: n, expected, actual: bytes.len() });
    }
    let mut out = Vec::with_capacity(n);
    let blocks = bytes.chunks_exact(ty.block_bytes());
    match ty {
        GgmlType::F32 => {
            out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        }
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|b| f16_at(b, 0))),
        // bf16 is the top half of an f32: a shift, as ggml and gguf-py do it. (half's conversion
        // sets the quiet bit of a signalling NaN, so it would not keep every bit pattern.)
        GgmlType::Bf16 => out.extend(
            bytes.chunks_exact(2).map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)),
        ),
        GgmlType::Q8_0 => blocks.for_each(|b| q8_0(b, &mut out)),
        GgmlType::Q4_0 => blocks.for_each(|b| q4(b, &mut out, false)),
        GgmlType::Q4_1 => blocks.for_each(|b| q4(b, &mut out, true)),
        GgmlType::Q5_0 => blocks.for_each(|b| q5(b, &mut out, false)),
        GgmlType::Q5_1 => blocks.for_each(|b| q5(b, &mut out, true)),
        GgmlType::Q4K => blocks.for_each(|b| q45_k(b, &mut out, false)),
        GgmlType::Q5K => blocks.for_each(|b| q45_k(b, &mut out, true)),
        GgmlType::Q6K => blocks.for_each(|b| q6_k(b, &mut out)),
        GgmlType::Mxfp4 => blocks.for_each(|b| mxfp4(b, &mut out)),
    }
    Ok(out)
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

fn q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    out.extend(b[2..34].iter().map(|&q| d * (q as i8) as f32));
}

/// Q4_0 (x = d (q - 8)) and Q4_1 (x = d q + m).
fn q4(b: &[u8], out: &mut Vec<f32>, has_min: bool) {
    let d = f16_at(b, 0);
    let (m, qs) = if has_min { (f16_at(b, 2), &b[4..20]) } else { (0.0, &b[2..18]) };
    // Without a min, no "+ 0.0": d * 0 with a negative d is -0, as gguf-py gives.
    let value = |nibble: u8| if has_min { d * nibble as f32 + m } else { d * (nibble as f32 - 8.0) };
    out.extend(qs.iter().map(|&q| value(q & 0x0F)));
    out.extend(qs.iter().map(|&q| value(q >> 4)));
}

/// Q5_0 (x = d (q - 16)) and Q5_1 (x = d q + m).
fn q5(b: &[u8], out: &mut Vec<f32>, has_min: bool) {
    let d = f16_at(b, 0);
    let (m, rest) = if has_min { (f16_at(b, 2), &b[4..]) } else { (0.0, &b[2..]) };
    let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let qs = &rest[4..20];
    for i in 0..32 {
        let low = if i < 16 { qs[i] & 0x0F } else { qs[i - 16] >> 4 };
        let q = (low as u32 | (((qh >> i) & 1) << 4)) as f32;
        out.push(if has_min { d * q + m } else { d * (q - 16.0) });
    }
}

/// The 6-bit scale and min of sub-block `s` (0..8) of a Q4_K/Q5_K block.
pub(crate) fn k_scale_min(scales: &[u8], s: usize) -> (u8, u8) {
    if s < 4 {
        (scales[s] & 63, scales[s + 4] & 63)
    } else {
        ((scales[s + 4] & 0x0F) | ((scales[s - 4] >> 6) << 4), (scales[s + 4] >> 4) | ((scales[s] >> 6) << 4))
    }
}

fn q45_k(b: &[u8], out: &mut Vec<f32>, fifth_bit: bool) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let (qh, qs) = if fifth_bit { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
    for s in 0..8 {
        let (sc, m) = k_scale_min(scales, s);
        let (scale, min) = (d * sc as f32, dmin * m as f32);
        let chunk = &qs[32 * (s / 2)..32 * (s / 2 + 1)];
        for (l, &byte) in chunk.iter().enumerate() {
            let mut q = (byte >> (4 * (s % 2))) & 0x0F;
            if fifth_bit {
                q |= ((qh[l] >> s) & 1) << 4;
            }
            out.push(scale * q as f32 - min);
        }
    }
}

fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for i in 0..256 {
        let (half, r) = (i / 128, i % 128);
        let low = (ql[half * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
        let high = (qh[half * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
        let q = (low | (high << 4)) as i32 - 32;
        out.push(d * (scales[i / 16] as i8) as f32 * q as f32);
    }
}

/// E2M1 values, doubled (so that the shared scale is 2^(e - 128)).
const E2M1_DOUBLED: [f32; 16] =
    [0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 0.0, -1.0, -2.0, -3.0, -4.0, -6.0, -8.0, -12.0];

/// The E8M0 scale 2^(e - 127), halved to go with the doubled E2M1 values: 2^(e - 128).
pub fn e8m0_half(e: u8) -> f32 {
    if e < 2 { f32::from_bits(0x0020_0000 << e) } else { f32::from_bits(((e - 1) as u32) << 23) }
}

fn mxfp4(b: &[u8], out: &mut Vec<f32>) {
    let d = e8m0_half(b[0]);
    let qs = &b[1..17];
    out.extend(qs.iter().map(|&q| d * E2M1_DOUBLED[(q & 0x0F) as usize]));
    out.extend(qs.iter().map(|&q| d * E2M1_DOUBLED[(q >> 4) as usize]));
}
