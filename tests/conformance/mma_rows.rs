//! gpu/src/matmul/mma_rows.rs and mma_stream.rs (activation rows on the integer tensor cores: 16
//! weight rows a block and 32 tokens a pass, or 64 rows a block and 64 tokens) against the
//! batch-1 integer GEMVs of gemv.rs, gemv_k.rs, gemv_mxfp4.rs and moe.rs, which
//! tests/conformance/gemv.rs and moe.rs hold to the CPU. The block sums are the same integers;
//! the sum over blocks runs in another order, so each row must match the batch-1 product of that
//! row alone to f32 rounding (2e-5 of the row's largest output), not bit for bit. A wrong
//! fragment layout, scale or token mapping is off by the size of the outputs. Outputs start
//! poisoned (NaN), so a row or column left unwritten fails.

use crate::gemv::random_matrix;
use crate::moe::random_ids;
use crate::{config, gpu, poisoned, random_values};
use host::matmul::WeightFormat;
use proptest::prelude::*;

/// Whether `actual` is `expected` to f32 rounding of a sum over blocks, relative to `scale`, the
/// product's largest output (a single output can be a near-cancelling sum of large block terms,
/// measured 4.6e-5 of itself for one 5376-long MXFP4 row).
fn near(actual: &[f32], expected: &[f32], scale: f32) -> Result<(), String> {
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        // NaN (an unwritten output) fails too.
        let within = (a - e).abs() <= 2e-5 * scale + 1e-6;
        if !within {
            return Err(format!("value {i}: {a} against {e} (largest {scale})"));
        }
    }
    Ok(())
}

/// x [n_rows, n_in] quantized to 8-bit activations on the device.
fn quantized(x: &[f32]) -> host::matmul::Q8Activations {
    let gpu = gpu();
    let mut q8 = gpu.q8_activations(x.len()).unwrap();
    gpu.quantize_q8(&gpu.upload(x).unwrap(), &mut q8).unwrap();
    q8
}

proptest! {
    #![proptest_config(config(40))]

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn tensor_core_rows_match_the_batch_1_gemv_row_by_row(format in prop::sample::select(vec![WeightFormat::Q8_0, WeightFormat::Q4K, WeightFormat::Mxfp4]), n in prop_oneof![1usize..=16, 17usize..=32, 33usize..=64, 65usize..=140], units in prop_oneof![1usize..=3, 4usize..=24], short_q8_rows: bool, n_out in prop_oneof![1usize..=40, 41usize..=700], part in 0usize..3, with_bias: bool, seed: u64) {
        // Q8_0 rows of 2 to 18 blocks of 64 too: the streamed kernel's last stage then holds 2
        // blocks of 4, and a matrix of 2 blocks leaves its second group no stage.
        let n_in = if format == WeightFormat::Q8_0 && short_q8_rows { 64 * units.min(9) } else { 256 * units };
        let bytes = random_matrix(format, n_in, n_out, seed);
        let x = random_values(seed ^ 9, n * n_in, 2.0);
        let bias = with_bias.then(|| random_values(seed ^ 10, n_out, 1.0));
        let rows = match part {
            0 => 0..n_out,
            1 => n_out / 2..n_out,
            _ => n_out / 3..(n_out / 3 + n_out.div_ceil(3)).min(n_out),
        };
        let gpu = gpu();
        let matrix = gpu.upload_matrix(format, &bytes, n_in, n_out).unwrap();
        let bias_gpu = bias.as_ref().map(|b| gpu.upload(b).unwrap());
        let mut y = poisoned(n * rows.len());
        gpu.mma_rows(&matrix, rows.clone(), &quantized(&x), n, bias_gpu.as_ref(), &mut y).unwrap();
        let y = gpu.download(&y).unwrap();
        // The streamed kernel too, where it takes the format (whatever the default dispatch).
        let streamed = matrix.has_mma_stream().then(|| {
            let mut y = poisoned(n * rows.len());
            gpu.mma_rows_streamed(&matrix, rows.clone(), &quantized(&x), n, bias_gpu.as_ref(), &mut y).unwrap();
            gpu.download(&y).unwrap()
        });
        let alone: Vec<Vec<f32>> = (0..n)
            .map(|t| {
                let mut alone = poisoned(n_out);
                gpu.gemv_q8(&matrix, &quantized(&x[t * n_in..(t + 1) * n_in]), bias_gpu.as_ref(), &mut alone).unwrap();
                gpu.download(&alone).unwrap()
            })
            .collect();
        let scale = alone.iter().flatten().fold(0.0f32, |m, v| m.max(v.abs()));
        for (t, alone) in alone.iter().enumerate() {
            let check = near(&y[t * rows.len()..(t + 1) * rows.len()], &alone[rows.clone()], scale);
            prop_assert!(check.is_ok(), "{:?} {}x{} rows {:?}, row {} of {}: {}", format, n_out, n_in, rows, t, n, check.unwrap_err());
            if let Some(streamed) = &streamed {
                let check = near(&streamed[t * rows.len()..(t + 1) * rows.len()], &alone[rows.clone()], scale);
                prop_assert!(check.is_ok(), "streamed {:?} {}x{} rows {:?}, row {} of {}: {}", format, n_out, n_in, rows, t, n, check.unwrap_err());
            }
        }
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn tensor_core_expert_rows_match_the_batch_1_expert_gemv(t in prop_oneof![1usize..=12, 13usize..=80], k in 1usize..=4, n_expert in prop_oneof![1usize..=8, Just(32usize)], rows in prop_oneof![1usize..=40, 41usize..=300], blocks in 1usize..=40, x_per_assignment: bool, with_bias: bool, seed: u64) {
        let n_in = 32 * blocks;
        let bytes = random_matrix(WeightFormat::Mxfp4, n_in, n_expert * rows, seed);
        let ids = random_ids(seed ^ 3, t, k, n_expert);
        let x_rows = if x_per_assignment { t * k } else { t };
        let x = random_values(seed ^ 9, x_rows * n_in, 2.0);
        let bias = with_bias.then(|| random_values(seed ^ 10, n_expert * rows, 1.0));
        let gpu = gpu();
        let matrix = gpu.upload_matrix(WeightFormat::Mxfp4, &bytes, n_in, n_expert * rows).unwrap();
        let bias_gpu = bias.as_ref().map(|b| gpu.upload(b).unwrap());
        let mut routing = gpu.expert_routing(n_expert, t * k).unwrap();
        gpu.route_experts(&gpu.upload(&ids).unwrap(), k, &mut routing).unwrap();
        let mut y = poisoned(t * k * rows);
        gpu.mma_rows_experts(&matrix, &routing, &quantized(&x), x_per_assignment, bias_gpu.as_ref(), &mut y).unwrap();
        let y = gpu.download(&y).unwrap();
        for token in 0..t {
            let x_token = if x_per_assignment { &x[token * k * n_in..(token + 1) * k * n_in] } else { &x[token * n_in..(token + 1) * n_in] };
            let mut alone = poisoned(k * rows);
            let token_ids = gpu.upload(&ids[token * k..(token + 1) * k]).unwrap();
            gpu.gemv_q8_experts(&matrix, n_expert, &token_ids, &quantized(x_token), bias_gpu.as_ref(), &mut alone).unwrap();
            let alone = gpu.download(&alone).unwrap();
            let scale = alone.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for a in 0..k {
                let check = near(&y[(token * k + a) * rows..(token * k + a + 1) * rows], &alone[a * rows..(a + 1) * rows], scale);
                prop_assert!(check.is_ok(), "token {} of {}, ids {:?}: {}", token, t, &ids[token * k..(token + 1) * k], check.unwrap_err());
            }
        }
    }
}

/// The streamed kernel (gpu/src/matmul/mma_stream.rs) on a matrix of more 64-row blocks than two
/// groups a block fit in one wave, so that it runs one group of warps a block (the property test's
/// matrices take two), against the batch-1 GEMV.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn streamed_rows_of_a_tall_matrix_match_the_batch_1_gemv() {
    let gpu = gpu();
    for (format, n_in, n_out, n) in
        [(WeightFormat::Q4K, 512, 40_000, 48), (WeightFormat::Q8_0, 320, 40_000, 64)]
    {
        let matrix = gpu.upload_matrix(format, &random_matrix(format, n_in, n_out, 5), n_in, n_out).unwrap();
        let x = random_values(6, n * n_in, 2.0);
        let mut y = poisoned(n * n_out);
        gpu.mma_rows_streamed(&matrix, 0..n_out, &quantized(&x), n, None, &mut y).unwrap();
        let y = gpu.download(&y).unwrap();
        for t in [0, n / 2, n - 1] {
            let mut alone = poisoned(n_out);
            gpu.gemv_q8(&matrix, &quantized(&x[t * n_in..(t + 1) * n_in]), None, &mut alone).unwrap();
            let alone = gpu.download(&alone).unwrap();
            let scale = alone.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let check = near(&y[t * n_out..(t + 1) * n_out], &alone, scale);
            assert!(check.is_ok(), "{format:?} {n_out}x{n_in}, row {t} of {n}: {}", check.unwrap_err());
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn tensor_core_rows_reject_bad_shapes() {
    let gpu = gpu();
    let (n_in, n_out) = (256, 64);
    let matrix = gpu
        .upload_matrix(WeightFormat::Q4K, &random_matrix(WeightFormat::Q4K, n_in, n_out, 1), n_in, n_out)
        .unwrap();
    let x = gpu.q8_activations(3 * n_in).unwrap();
    let mut y = poisoned(3 * n_out);
    assert!(gpu.mma_rows(&matrix, 0..n_out, &x, 2, None, &mut y).is_err());
    assert!(gpu.mma_rows(&matrix, 10..n_out + 1, &x, 3, None, &mut y).is_err());
    assert!(gpu.mma_rows(&matrix, 0..n_out - 1, &x, 3, None, &mut y).is_err());
    let q6 = gpu
        .upload_matrix(WeightFormat::Q6K, &random_matrix(WeightFormat::Q6K, n_in, n_out, 2), n_in, n_out)
        .unwrap();
    let error = gpu.mma_rows(&q6, 0..n_out, &x, 3, None, &mut y).unwrap_err().to_string();
    assert!(error.contains("no tensor-core row product"), "{error}");
    let error = gpu.mma_rows_streamed(&q6, 0..n_out, &x, 3, None, &mut y).unwrap_err().to_string();
    assert!(error.contains("no streamed row product"), "{error}");
}
