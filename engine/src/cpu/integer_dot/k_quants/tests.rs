//! The K-quant kernels against the scalar reference (integer sums and rows bit for bit, on random
//! block bytes with finite scales, so every nibble, high bit, scale and min occurs), the scalar
//! integer form against the dequantized weights in f32, and the Q8_K quantization's conventions.

use super::*;
use crate::gguf::dequantize;
use half::f16;
use proptest::prelude::*;

const TYPES: [GgmlType; 3] = [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K];

/// A row of `n_blocks` blocks of `ty` from random bytes, its f16 scales set to `scales` (finite).
fn weight_row(ty: GgmlType, n_blocks: usize, bytes: &[u8], scales: &[f32]) -> Vec<u8> {
    let size = ty.block_bytes();
    let mut row: Vec<u8> = bytes.iter().cycle().take(n_blocks * size).copied().collect();
    for (k, block) in row.chunks_exact_mut(size).enumerate() {
        let scale = f16::from_f32(scales[k % scales.len()]).to_le_bytes();
        if ty == GgmlType::Q6K {
            block[208..210].copy_from_slice(&scale);
        } else {
            block[0..2].copy_from_slice(&scale);
            let min = f16::from_f32(scales[(k + 1) % scales.len()] * 0.5).to_le_bytes();
            block[2..4].copy_from_slice(&min);
        }
    }
    row
}

/// Activation blocks straight from random bytes (any i8, -128 included: more than quantization
/// gives) with their sums, and random scales.
fn activation_blocks(bytes: &[u8], scales: &[f32], n_blocks: usize) -> Vec<Q8KBlock> {
    (0..n_blocks)
        .map(|k| {
            let mut block = Q8KBlock::ZERO;
            for (i, q) in block.q.iter_mut().enumerate() {
                *q = bytes[(k * 97 + i) % bytes.len()] as i8;
            }
            for (sum, group) in block.sums.iter_mut().zip(block.q.chunks_exact(16)) {
                *sum = group.iter().map(|&q| q as i16).sum();
            }
            block.d = scales[k % scales.len()];
            block
        })
        .collect()
}

fn simd_kernels() -> Vec<Kernel> {
    Kernel::available().into_iter().filter(|&k| k != Kernel::Scalar).collect()
}

fn quantized(x: &[f32]) -> Vec<Q8KBlock> {
    let mut blocks = vec![Q8KBlock::ZERO; x.len() / BLOCK];
    quantize(x, &mut blocks);
    blocks
}

proptest! {
    #[test]
    fn block_sums_are_bit_identical(
        bytes in proptest::collection::vec(any::<u8>(), 3 * 210),
        x in proptest::collection::vec(any::<u8>(), 701),
        scales in proptest::collection::vec(-2.0f32..2.0, 3),
    ) {
        let activations = activation_blocks(&x, &scales, 3);
        for ty in TYPES {
            let row = weight_row(ty, 3, &bytes, &scales);
            let reference = block_sums(Kernel::Scalar, ty, &row, &activations);
            for kernel in simd_kernels() {
                prop_assert_eq!(&block_sums(kernel, ty, &row, &activations), &reference, "{} {:?}", ty, kernel);
            }
        }
    }

    /// Rows too: the SIMD kernels take the scalar reference's f32 steps in its order.
    #[test]
    fn tiles_are_bit_identical(
        bytes in proptest::collection::vec(any::<u8>(), 4 * 210),
        x in proptest::collection::vec(-4.0f32..4.0, 4 * 5 * BLOCK),
        scales in proptest::collection::vec(0.001f32..2.0, 4),
        n_tokens in 1usize..=TILE,
    ) {
        let tokens: Vec<Vec<Q8KBlock>> = x.chunks_exact(5 * BLOCK).map(quantized).collect();
        let activations: Vec<&[Q8KBlock]> = tokens.iter().take(n_tokens).map(|t| t.as_slice()).collect();
        for ty in TYPES {
            let row = weight_row(ty, 5, &bytes, &scales);
            let mut reference = [0.0f32; TILE];
            dot_tile(Kernel::Scalar, ty, &row, &activations, &mut reference);
            for kernel in simd_kernels() {
                let mut got = [0.0f32; TILE];
                dot_tile(kernel, ty, &row, &activations, &mut got);
                for t in 0..n_tokens {
                    prop_assert_eq!(got[t].to_bits(), reference[t].to_bits(), "{} {:?} token {}", ty, kernel, t);
                }
            }
        }
    }

    /// The scalar integer form against the dequantized row times the exact activations: apart
    /// by at most the activation rounding (half a step, |d| / 2, a value) plus f32 rounding.
    #[test]
    fn integer_form_is_within_the_activation_rounding(
        bytes in proptest::collection::vec(any::<u8>(), 4 * 210),
        x in proptest::collection::vec(-4.0f32..4.0, 4 * BLOCK),
        scales in proptest::collection::vec(0.001f32..0.1, 4),
    ) {
        let activations = quantized(&x);
        for ty in TYPES {
            let row = weight_row(ty, 4, &bytes, &scales);
            let w = dequantize(ty, &row, 4 * BLOCK).unwrap();
            let mut got = [0.0f32];
            dot_tile_scalar(ty, &row, &[&activations], &mut got);
            let exact: f64 = w.iter().zip(&x).map(|(&w, &x)| w as f64 * x as f64).sum();
            let bound: f64 = w
                .chunks_exact(BLOCK)
                .zip(&activations)
                .map(|(w, a)| w.iter().map(|w| w.abs() as f64).sum::<f64>() * (a.d.abs() as f64 / 2.0) * 1.001)
                .sum::<f64>()
                + 1e-6 * row.chunks_exact(ty.block_bytes()).zip(x.chunks_exact(BLOCK)).map(|(b, x)| {
                    // The largest terms the f32 steps round: d sc q and dmin m against each x.
                    let (d, dmin) = if ty == GgmlType::Q6K { (f16_at(b, 208), 0.0) } else { (f16_at(b, 0), f16_at(b, 2)) };
                    (d.abs() as f64 * 127.0 * 63.0 + dmin.abs() as f64 * 63.0) * x.iter().map(|v| v.abs() as f64).sum::<f64>()
                }).sum::<f64>();
            prop_assert!((got[0] as f64 - exact).abs() <= bound, "{}: {} vs {} (bound {})", ty, got[0], exact, bound);
        }
    }

    /// The addition trick rounds as `round_ties_even` does over the range quantization uses.
    #[test]
    fn nearest_rounds_half_to_even(v in -200.0f32..200.0, half in -200i32..200) {
        prop_assert_eq!(nearest(v), v.round_ties_even() as i32);
        let tie = half as f32 + 0.5;
        prop_assert_eq!(nearest(tie), tie.round_ties_even() as i32);
    }
}

#[test]
fn quantization_follows_llama_cpp_conventions() {
    // The largest magnitude -127 gives -127 / max = 1: q = round-half-even(x), d = 1.
    let mut x = vec![0.0f32; BLOCK];
    (x[0], x[1], x[2], x[3], x[16]) = (2.5, 3.5, -127.0, -2.5, 127.0);
    let block = quantized(&x)[0];
    assert_eq!(&block.q[..4], &[2, 4, -127, -2]);
    assert_eq!(block.q[16], 127, "the second of equal magnitudes does not set the sign");
    assert_eq!(block.d, 1.0);
    assert_eq!(block.sums[0], 2 + 4 - 127 - 2);
    assert_eq!(block.sums[1], 127);
    // A positive largest value: the values' signs flip, and d's.
    x[2] = 127.0;
    let block = quantized(&x)[0];
    assert_eq!(&block.q[..4], &[-2, -4, -127, 2]);
    assert_eq!(block.d, -1.0);
    // All zeros: d = 0, q = 0, sums = 0.
    assert_eq!(quantized(&[0.0; BLOCK])[0], Q8KBlock::ZERO);
}

#[test]
fn a_known_q6_k_block() {
    // Every low nibble 5 and high pair 2: q = 37, weight sc_j (37 - 32) = 5 sc_j; x = 1.
    let mut block = vec![0x55u8; 128];
    block.extend([0xAA; 64]);
    block.extend((0..16).map(|j| (j as i8 - 8) as u8));
    block.extend(f16::from_f32(1.0).to_le_bytes());
    let activations = activation_blocks(&[1], &[1.0], 1);
    let expected: i32 = (0..16).map(|j| (j - 8) * 5 * 16).sum();
    for kernel in Kernel::available() {
        assert_eq!(
            block_sums(kernel, GgmlType::Q6K, &block, &activations),
            vec![(expected, 0)],
            "{kernel:?}"
        );
    }
}
