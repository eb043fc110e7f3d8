//! Matrix products with weights kept in their GGUF block format, computed the way llama.cpp's CPU
//! back end computes them: each activation row is quantized to 8-bit blocks of 32 (Q8_0 for Q8_0
//! and MXFP4 weights, Q8_1, which also carries d * sum(q), for Q4_0/Q4_1/Q5_0/Q5_1), and each block
//! pair is an integer dot product scaled by the two f16 scales:
//!   Q8_0 x Q8_0:  d_w d_x sum(q_w q_x)
//!   Q4_0 x Q8_1:  d_w d_x sum((q_w - 8) q_x)        Q5_0: (q_w - 16)
//!   Q4_1 x Q8_1:  d_w d_x sum(q_w q_x) + m_w s_x     Q5_1 likewise
//! Activation quantization: d = max|x| / 127 stored as f16, q = round-half-even(x * 127 / max|x|)
//! (llama.cpp's x86 path). This keeps the weights at their stored size (a quarter or less of f32)
//! and gives the same numbers llama.cpp gives, which is what makes greedy continuations comparable:
//! the alternative, f32 activations against dequantized weights, is more exact but differs from
//! llama.cpp by about the activation rounding, enough to flip near-ties between the top two tokens.
//! Other types (K-quants) are dequantized a row at a time and use f32 activations.

use super::matmul::dot;
use crate::gguf::{GgmlType, dequantize};
use half::f16;
use rayon::prelude::*;

/// A weight matrix [n_out, n_in], f32 or in its stored block format.
pub enum Matrix {
    F32(Vec<f32>),
    Blocks { ty: GgmlType, bytes: Vec<u8> },
}

impl Matrix {
    pub fn from_f32(values: Vec<f32>) -> Self {
        Matrix::F32(values)
    }

    /// Rows [start, end) of a matrix with rows of `n_in` elements.
    pub fn rows(&self, n_in: usize, start: usize, end: usize) -> Matrix {
        match self {
            Matrix::F32(v) => Matrix::F32(v[start * n_in..end * n_in].to_vec()),
            Matrix::Blocks { ty, bytes } => {
                let row = n_in / ty.block_size() * ty.block_bytes();
                Matrix::Blocks { ty: *ty, bytes: bytes[start * row..end * row].to_vec() }
            }
        }
    }

    /// Row `i` as f32 (an embedding lookup).
    pub fn row_f32(&self, n_in: usize, i: usize) -> Vec<f32> {
        match self {
            Matrix::F32(v) => v[i * n_in..(i + 1) * n_in].to_vec(),
            Matrix::Blocks { ty, bytes } => {
                let row = n_in / ty.block_size() * ty.block_bytes();
                dequantize(*ty, &bytes[i * row..(i + 1) * row], n_in).expect("row size checked at load")
            }
        }
    }

    /// Bytes held.
    pub fn size(&self) -> usize {
        match self {
            Matrix::F32(v) => v.len() * 4,
            Matrix::Blocks { bytes, .. } => bytes.len(),
        }
    }
}

/// Activation blocks: scale, sum term (d * sum(q), Q8_1 only) and 32 quantized values.
struct Q8Block {
    d: f32,
    s: f32,
    q: [i8; 32],
}

fn quantize_q8(x: &[f32]) -> Vec<Q8Block> {
    x.chunks_exact(32)
        .map(|block| {
            let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut q = [0i8; 32];
            let mut sum = 0i32;
            for (qi, &v) in q.iter_mut().zip(block) {
                *qi = (v * id).round_ties_even() as i8;
                sum += *qi as i32;
            }
            let d16 = f16::from_f32(d).to_f32();
            Q8Block { d: d16, s: f16::from_f32(d * sum as f32).to_f32(), q }
        })
        .collect()
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// The 32 weight values of a block as small integers (before scaling) and its (d, m) scales.
fn weight_block(ty: GgmlType, b: &[u8], q: &mut [i32; 32]) -> (f32, f32) {
    match ty {
        GgmlType::Q8_0 => {
            for (qi, &v) in q.iter_mut().zip(&b[2..34]) {
                *qi = v as i8 as i32;
            }
            (f16_at(b, 0), 0.0)
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let has_min = ty == GgmlType::Q4_1;
            let qs = if has_min { &b[4..20] } else { &b[2..18] };
            let offset = if has_min { 0 } else { 8 };
            for j in 0..16 {
                q[j] = (qs[j] & 0x0F) as i32 - offset;
                q[j + 16] = (qs[j] >> 4) as i32 - offset;
            }
            (f16_at(b, 0), if has_min { f16_at(b, 2) } else { 0.0 })
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let has_min = ty == GgmlType::Q5_1;
            let rest = if has_min { &b[4..] } else { &b[2..] };
            let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let offset = if has_min { 0 } else { 16 };
            for (i, qi) in q.iter_mut().enumerate() {
                let low = if i < 16 { rest[4 + i] & 0x0F } else { rest[4 + i - 16] >> 4 };
                *qi = (low as u32 | (((qh >> i) & 1) << 4)) as i32 - offset;
            }
            (f16_at(b, 0), if has_min { f16_at(b, 2) } else { 0.0 })
        }
        GgmlType::Mxfp4 => {
            // E2M1 doubled as integers, scale 2^(e - 128).
            const VALUES: [i32; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];
            for j in 0..16 {
                q[j] = VALUES[(b[1 + j] & 0x0F) as usize];
                q[j + 16] = VALUES[(b[1 + j] >> 4) as usize];
            }
            (crate::gguf::e8m0_half(b[0]), 0.0)
        }
        _ => unreachable!("weight_block is only called for the Q8 family"),
    }
}

/// Whether `ty` goes through the integer path.
fn integer_path(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Mxfp4
    )
}

/// out[t, :] = W x[t, :] (+ bias), W [n_out, n_in] as `weight`.
pub fn matmul(x: &[f32], weight: &Matrix, bias: Option<&[f32]>, out: &mut [f32], n_in: usize, n_out: usize) {
    let (ty, bytes) = match weight {
        Matrix::F32(w) => return super::matmul::matmul(x, w, bias, out, n_in, n_out),
        Matrix::Blocks { ty, bytes } => (*ty, bytes),
    };
    let n_tokens = x.len() / n_in;
    assert_eq!(out.len(), n_tokens * n_out);
    let row_bytes = n_in / ty.block_size() * ty.block_bytes();
    assert_eq!(bytes.len(), row_bytes * n_out, "weight is not [{n_out}, {n_in}] of {ty}");
    let mut transposed = vec![0.0f32; n_out * n_tokens];
    if integer_path(ty) {
        let activations: Vec<Vec<Q8Block>> = x.chunks_exact(n_in).map(quantize_q8).collect();
        transposed.par_chunks_mut(n_tokens).with_min_len(64).enumerate().for_each(|(o, column)| {
            let row = &bytes[o * row_bytes..(o + 1) * row_bytes];
            let mut q = [0i32; 32];
            let b = bias.map_or(0.0, |b| b[o]);
            // Decode each weight block once, then use it for every token.
            let mut sums = vec![0.0f32; n_tokens];
            for (k, block) in row.chunks_exact(ty.block_bytes()).enumerate() {
                let (d_w, m_w) = weight_block(ty, block, &mut q);
                for (sum, act) in sums.iter_mut().zip(&activations) {
                    let a = &act[k];
                    let dot: i32 = q.iter().zip(&a.q).map(|(&w, &x)| w * x as i32).sum();
                    *sum += d_w * a.d * dot as f32 + m_w * a.s;
                }
            }
            for (value, sum) in column.iter_mut().zip(sums) {
                *value = sum + b;
            }
        });
    } else {
        transposed.par_chunks_mut(n_tokens).with_min_len(64).enumerate().for_each(|(o, column)| {
            let row =
                dequantize(ty, &bytes[o * row_bytes..(o + 1) * row_bytes], n_in).expect("row size checked");
            let b = bias.map_or(0.0, |b| b[o]);
            for (t, value) in column.iter_mut().enumerate() {
                *value = dot(&row, &x[t * n_in..(t + 1) * n_in]) + b;
            }
        });
    }
    for (o, column) in transposed.chunks(n_tokens).enumerate() {
        for (t, &value) in column.iter().enumerate() {
            out[t * n_out + o] = value;
        }
    }
}

/// y = W x (+ bias) for K-quant weights (Q4_K, Q6_K) in the GPU's integer form
/// (gpu/src/matmul/gemv_k.rs): x quantized to Q8_1 blocks of 32 as above, then per sub-block
///   Q4_K:  d sc xd sum(q xq) - dmin m xs          (sc, m: the sub-block's 6-bit scale and min)
///   Q6_K:  d sc xd sum((q - 32) xq) per 16 values  (sc: i8 scale)
/// summed in f64. The reference the GPU kernels are checked against; llama.cpp's CPU back end
/// quantizes x differently for these types (per 256), so this is not the CPU engine's path.
pub fn matvec_k_q8_1(
    x: &[f32],
    ty: GgmlType,
    bytes: &[u8],
    bias: Option<&[f32]>,
    n_in: usize,
    n_out: usize,
) -> Vec<f32> {
    assert!(matches!(ty, GgmlType::Q4K | GgmlType::Q6K), "{ty} is not a K-quant");
    assert_eq!(n_in % 256, 0);
    let block_bytes = ty.block_bytes();
    let row_bytes = n_in / 256 * block_bytes;
    assert_eq!(bytes.len(), row_bytes * n_out);
    let act = quantize_q8(x);
    (0..n_out)
        .map(|o| {
            let mut total = 0.0f64;
            for (sb, b) in bytes[o * row_bytes..(o + 1) * row_bytes].chunks_exact(block_bytes).enumerate() {
                if ty == GgmlType::Q4K {
                    let (d, dmin, s, qs) = (f16_at(b, 0) as f64, f16_at(b, 2) as f64, &b[4..16], &b[16..144]);
                    for j in 0..8 {
                        let (sc, m) = crate::gguf::k_scale_min(s, j);
                        let a = &act[8 * sb + j];
                        let dot: i32 = (0..32)
                            .map(|k| {
                                let byte = qs[32 * (j / 2) + k];
                                let q = if j % 2 == 1 { byte >> 4 } else { byte & 0xF };
                                q as i32 * a.q[k] as i32
                            })
                            .sum();
                        total += d * sc as f64 * a.d as f64 * dot as f64 - dmin * m as f64 * a.s as f64;
                    }
                } else {
                    let (ql, qh, sc, d) = (&b[..128], &b[128..192], &b[192..208], f16_at(b, 208) as f64);
                    for t in 0..16 {
                        let a = &act[8 * sb + t / 2];
                        let dot: i32 = (16 * t..16 * t + 16)
                            .map(|e| {
                                let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
                                let low = ql[64 * n + 32 * (k & 1) + l];
                                let low = if k >= 2 { low >> 4 } else { low & 0xF } as i32;
                                let high = ((qh[32 * n + l] >> (2 * k)) & 3) as i32;
                                ((low | (high << 4)) - 32) * a.q[e % 32] as i32
                            })
                            .sum();
                        total += d * (sc[t] as i8) as f64 * a.d as f64 * dot as f64;
                    }
                }
            }
            (total + bias.map_or(0.0, |b| b[o] as f64)) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Q4_1 block with scale d, min m and the given nibbles.
    fn q4_1_block(d: f32, m: f32, nibbles: &[u8; 32]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        b.extend_from_slice(&f16::from_f32(m).to_le_bytes());
        for j in 0..16 {
            b.push(nibbles[j] | (nibbles[j + 16] << 4));
        }
        b
    }

    #[test]
    fn q8_0_product_is_exact_on_representable_inputs() {
        // Weights 0.5 * (i - 16); activations multiples of 0.25 with max 127 * 0.25, so the
        // activation scale is exactly 0.25 and nothing rounds.
        let mut block = f16::from_f32(0.5).to_le_bytes().to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let weight = Matrix::Blocks { ty: GgmlType::Q8_0, bytes: block };
        let mut x: Vec<f32> = (0..32).map(|i| (i % 5) as f32 * 0.25).collect();
        x[0] = 127.0 * 0.25;
        let expected: f32 = (0..32).map(|i| 0.5 * (i as f32 - 16.0) * x[i]).sum();
        let mut out = [0.0f32];
        matmul(&x, &weight, None, &mut out, 32, 1);
        assert_eq!(out[0], expected);
    }

    #[test]
    fn q4_1_product_is_within_the_activation_rounding() {
        let nibbles: [u8; 32] = std::array::from_fn(|i| (i * 7 % 16) as u8);
        let block = q4_1_block(0.5, -2.0, &nibbles);
        let exact_w = dequantize(GgmlType::Q4_1, &block, 32).unwrap();
        let weight = Matrix::Blocks { ty: GgmlType::Q4_1, bytes: block };
        let x: Vec<f32> = (0..32).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.173).collect();
        let mut out = [0.0f32];
        matmul(&x, &weight, None, &mut out, 32, 1);
        let expected: f32 = exact_w.iter().zip(&x).map(|(w, x)| w * x).sum();
        // Each activation moves by at most half a step (max|x| / 254); s rounds to f16.
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let bound = exact_w.iter().map(|w| w.abs()).sum::<f32>() * amax / 254.0 + 2.0 * 2e-3 * 3.0;
        assert!((out[0] - expected).abs() <= bound, "{} vs {expected} (bound {bound})", out[0]);
        assert_ne!(
            out[0], expected,
            "the integer path rounds activations; equality would mean it did not run"
        );
    }

    #[test]
    fn activation_quantization_rounds_half_to_even() {
        // max 127 makes the scale exactly 1: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2.
        let mut x = vec![0.0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = 3.5;
        x[3] = -2.5;
        let blocks = quantize_q8(&x);
        assert_eq!(&blocks[0].q[..4], &[127, 2, 4, -2]);
        assert_eq!(blocks[0].d, 1.0);
        assert_eq!(blocks[0].s, 131.0);
    }

    /// The K-quant integer form against dequantized weights times exact activations: equal up
    /// to the activation rounding, and not equal (the rounding happened).
    #[test]
    fn k_quant_integer_form_is_within_the_activation_rounding() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for ty in [GgmlType::Q4K, GgmlType::Q6K] {
            let (n_in, n_out) = (512, 3);
            let mut bytes: Vec<u8> =
                (0..n_in / 256 * ty.block_bytes() * n_out).map(|_| next() as u8).collect();
            for block in bytes.chunks_exact_mut(ty.block_bytes()) {
                let at = if ty == GgmlType::Q4K { 0 } else { 208 };
                block[at..at + 2].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
                if ty == GgmlType::Q4K {
                    block[2..4].copy_from_slice(&f16::from_f32(0.02).to_le_bytes());
                }
            }
            let x: Vec<f32> = (0..n_in).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.1).collect();
            let w = dequantize(ty, &bytes, n_in * n_out).unwrap();
            let got = matvec_k_q8_1(&x, ty, &bytes, None, n_in, n_out);
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for o in 0..n_out {
                let row = &w[o * n_in..(o + 1) * n_in];
                let exact: f64 = row.iter().zip(&x).map(|(&w, &x)| w as f64 * x as f64).sum();
                let bound =
                    row.iter().map(|w| w.abs() as f64).sum::<f64>() * amax as f64 / 254.0 * 1.01 + 1e-3;
                assert!(
                    (got[o] as f64 - exact).abs() <= bound,
                    "{ty} row {o}: {} vs {exact} (bound {bound})",
                    got[o]
                );
                assert_ne!(got[o] as f64, exact, "{ty}: no rounding means the integer form did not run");
            }
        }
    }
}
