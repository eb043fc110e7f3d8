//! Every SIMD kernel this machine runs against the scalar reference: activation quantization and
//! per-block integer dots bit for bit, row tiles to f32 rounding; on random blocks (any bytes, so
//! every nibble, fifth bit and code point occurs) with finite scales.

use super::*;
use proptest::prelude::*;

const TYPES: [GgmlType; 6] =
    [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::Mxfp4];

/// A row of `n_blocks` blocks of `ty` from random bytes, with its scales made finite and small.
fn weight_row(ty: GgmlType, n_blocks: usize, bytes: &[u8], scales: &[f32]) -> Vec<u8> {
    let size = ty.block_bytes();
    let mut row: Vec<u8> = bytes.iter().cycle().take(n_blocks * size).copied().collect();
    for (k, block) in row.chunks_exact_mut(size).enumerate() {
        let scale = scales[k % scales.len()];
        if ty == GgmlType::Mxfp4 {
            block[0] = 120 + (scale.abs() * 10.0) as u8 % 16;
        } else {
            block[..2].copy_from_slice(&f16::from_f32(scale).to_le_bytes());
            if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                block[2..4].copy_from_slice(&f16::from_f32(-0.5 * scale).to_le_bytes());
            }
        }
    }
    row
}

fn quantized(x: &[f32]) -> Vec<Q8Block> {
    let mut blocks = vec![Q8Block::ZERO; x.len() / 32];
    quantize_scalar(x, &mut blocks);
    blocks
}

fn simd_kernels() -> Vec<Kernel> {
    Kernel::available().into_iter().filter(|&k| k != Kernel::Scalar).collect()
}

proptest! {
    #[test]
    fn quantization_is_bit_identical(
        x in proptest::collection::vec(-100.0f32..100.0, 32 * 5),
        zero_block in any::<bool>(),
        // Scales whose f16 roundings go subnormal (1e-6) or overflow d sum(q) (3000).
        scale in prop_oneof![Just(1.0f32), Just(1e-6f32), Just(3000.0f32)],
    ) {
        let mut x: Vec<f32> = x.iter().map(|v| v * scale).collect();
        if zero_block {
            x[32..64].fill(0.0);
        }
        let reference = quantized(&x);
        for kernel in simd_kernels() {
            let mut blocks = vec![Q8Block::ZERO; 5];
            quantize(kernel, &x, &mut blocks);
            prop_assert_eq!(&blocks, &reference, "{:?}", kernel);
        }
    }

    #[test]
    fn block_dots_are_bit_identical(
        bytes in proptest::collection::vec(any::<u8>(), 34 * 6),
        scales in proptest::collection::vec(0.001f32..2.0, 6),
        x in proptest::collection::vec(-4.0f32..4.0, 32 * 6),
    ) {
        let activations = quantized(&x);
        for ty in TYPES {
            let row = weight_row(ty, 6, &bytes, &scales);
            let reference = block_dots(Kernel::Scalar, ty, &row, &activations);
            for kernel in simd_kernels() {
                prop_assert_eq!(&block_dots(kernel, ty, &row, &activations), &reference, "{} {:?}", ty, kernel);
            }
        }
    }

    #[test]
    fn tiles_agree_to_f32_rounding(
        bytes in proptest::collection::vec(any::<u8>(), 64),
        scales in proptest::collection::vec(0.001f32..2.0, 5),
        x in proptest::collection::vec(-4.0f32..4.0, 4 * 32 * 9),
        n_tokens in 1usize..=TILE,
        n_rows in 1usize..=ROWS,
    ) {
        let rows: Vec<Vec<Q8Block>> = x.chunks_exact(32 * 9).map(quantized).collect();
        let activations: Vec<&[Q8Block]> = rows.iter().take(n_tokens).map(|r| r.as_slice()).collect();
        for ty in TYPES {
            let weights: Vec<Vec<u8>> =
                (0..n_rows).map(|r| weight_row(ty, 9, &bytes[r..], &scales[r % 2..])).collect();
            let rows: Vec<&[u8]> = weights.iter().map(|w| w.as_slice()).collect();
            let mut reference = [[0.0f32; TILE]; ROWS];
            for (r, row) in rows.iter().enumerate() {
                dot_tile_scalar(ty, row, &activations, &mut reference[r]);
            }
            // The size of the terms bounds what reordering their f32 sum can change.
            let magnitude = |row: &[u8]| -> f32 {
                let mut q = [0i32; 32];
                row.chunks_exact(ty.block_bytes()).enumerate().map(|(k, block)| {
                    let (d, m) = weight_block(ty, block, &mut q);
                    let w: f32 = q.iter().map(|v| v.unsigned_abs() as f32).sum();
                    let x = activations.iter().map(|a| a[k].d).fold(0.0, f32::max);
                    (d.abs() * w * 127.0 + m.abs() * 127.0 * 32.0) * x
                }).sum()
            };
            for kernel in simd_kernels() {
                let mut got = [[0.0f32; TILE]; ROWS];
                dot_tile(kernel, ty, &rows, &activations, &mut got);
                for r in 0..n_rows {
                    for t in 0..n_tokens {
                        prop_assert!((got[r][t] - reference[r][t]).abs() <= magnitude(rows[r]) * 1e-6 + 1e-30,
                            "{} {:?} row {} token {}: {} vs {}", ty, kernel, r, t, got[r][t], reference[r][t]);
                    }
                }
            }
        }
    }
}

#[test]
fn this_machine_runs_a_simd_kernel_where_it_can() {
    // The proptests above only compare something if a SIMD kernel runs here.
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        assert!(Kernel::available().contains(&Kernel::Avx2));
        assert_ne!(kernel(), Kernel::Scalar);
    }
}

#[test]
fn a_known_block_dot() {
    // Q4_0: nibble i = i % 16, so w = i % 16 - 8; x = 1 everywhere (scale 1/127 of max 1).
    let mut block = f16::from_f32(1.0).to_le_bytes().to_vec();
    block.extend((0..16).map(|j| (j as u8) | ((j as u8) << 4)));
    let activations = quantized(&[1.0; 32]);
    let expected: i32 = (0..32).map(|i| ((i % 16) - 8) * 127).sum();
    for kernel in Kernel::available() {
        assert_eq!(block_dots(kernel, GgmlType::Q4_0, &block, &activations), vec![expected], "{kernel:?}");
    }
}

const GROUPED_TYPES: [GgmlType; 3] = [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1];

proptest! {
    /// The repacked products against the scalar tile on the rows as stored: equal (the same
    /// integer dots, the same f32 steps in the same order); any bytes, so Q8_0 weights of -128
    /// and 127 and every nibble occur. Every kernel: those without the fast form unpack the rows.
    #[test]
    fn groups_equal_the_scalar_tiles(
        bytes in proptest::collection::vec(any::<u8>(), 64),
        scales in proptest::collection::vec(0.001f32..2.0, 5),
        x in proptest::collection::vec(-4.0f32..4.0, 4 * 32 * 9),
        n_tokens in 1usize..=TILE,
    ) {
        let tokens: Vec<Vec<Q8Block>> = x.chunks_exact(32 * 9).map(quantized).collect();
        let activations: Vec<&[Q8Block]> = tokens.iter().take(n_tokens).map(|r| r.as_slice()).collect();
        for ty in GROUPED_TYPES {
            let starts: Vec<Vec<i32>> = activations
                .iter()
                .map(|a| {
                    let mut values = vec![0i32; a.len()];
                    corrections(ty, a, &mut values);
                    values
                })
                .collect();
            let starts: Vec<&[i32]> = starts.iter().map(|v| v.as_slice()).collect();
            let weights: Vec<Vec<u8>> =
                (0..GROUP_ROWS).map(|r| weight_row(ty, 9, &bytes[r..], &scales[r % 2..])).collect();
            let rows: Vec<&[u8]> = weights.iter().map(|w| w.as_slice()).collect();
            let mut group = Vec::new();
            repack(ty, &rows, &mut group);
            prop_assert_eq!(group.len(), 8 * rows[0].len(), "a group is the size of its rows");
            for kernel in Kernel::available() {
                let mut got = [[0.0f32; GROUP_ROWS]; TILE];
                dot_group(kernel, ty, &group, &starts, &activations, &mut got);
                for (r, row) in rows.iter().enumerate() {
                    let mut reference = [0.0f32; TILE];
                    dot_tile_scalar(ty, row, &activations, &mut reference);
                    for t in 0..n_tokens {
                        prop_assert_eq!(got[t][r].to_bits(), reference[t].to_bits(), "{} {:?} row {} token {}", ty, kernel, r, t);
                    }
                }
            }
        }
    }

    /// Unpacking a row of a group gives the row as stored, byte for byte.
    #[test]
    fn group_rows_unpack_to_the_stored_rows(bytes in proptest::collection::vec(any::<u8>(), 8 * 34 * 3)) {
        for ty in GROUPED_TYPES {
            let rows: Vec<&[u8]> = bytes.chunks_exact(ty.block_bytes() * 3).take(GROUP_ROWS).collect();
            let mut group = Vec::new();
            repack(ty, &rows, &mut group);
            for (lane, row) in rows.iter().enumerate() {
                let mut unpacked = Vec::new();
                group_row(ty, &group, lane, &mut unpacked);
                prop_assert_eq!(&unpacked[..], *row, "{} lane {}", ty, lane);
            }
        }
    }
}

#[test]
fn this_machine_runs_the_groups_where_it_can() {
    // The proptests above compare the fast forms only where they run: AVX2's for Q4, AVX-512
    // VNNI's for all three (whichever kernel ENGINE_CPU_KERNEL picks for the engine).
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") {
            assert!(Kernel::available().contains(&Kernel::Avx2));
            assert!(has_groups(Kernel::Avx2, GgmlType::Q4_0) && has_groups(Kernel::Avx2, GgmlType::Q4_1));
        }
        if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
            assert!(Kernel::available().contains(&Kernel::Avx512Vnni));
            assert!(GROUPED_TYPES.iter().all(|&ty| has_groups(Kernel::Avx512Vnni, ty)));
        }
    }
}
