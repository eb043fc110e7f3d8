//! gpu/src/matmul/gemv_rows.rs (several activation rows per weight read) against the batch-1
//! integer GEMVs of gemv.rs, gemv_k.rs, gemv_mxfp4.rs and moe.rs, which tests/conformance/gemv.rs
//! and moe.rs hold to the CPU: each row of a multi-row product must equal, bit for bit, the
//! batch-1 product of that row alone (the kernels promise the same sums term for term). Outputs
//! start poisoned (NaN), so a row or column left unwritten fails.

use crate::gemv::random_matrix;
use crate::moe::random_ids;
use crate::{config, gpu, poisoned, random_values};
use host::matmul::WeightFormat;
use proptest::prelude::*;

/// x [n, n_in] as 8-bit activations, whole and one row at a time.
fn quantized_rows(
    x: &[f32],
    n: usize,
    n_in: usize,
) -> (host::matmul::Q8Activations, Vec<host::matmul::Q8Activations>) {
    let gpu = gpu();
    let mut all = gpu.q8_activations(n * n_in).unwrap();
    gpu.quantize_q8(&gpu.upload(x).unwrap(), &mut all).unwrap();
    let rows = (0..n)
        .map(|t| {
            let mut row = gpu.q8_activations(n_in).unwrap();
            gpu.quantize_q8(&gpu.upload(&x[t * n_in..(t + 1) * n_in]).unwrap(), &mut row).unwrap();
            row
        })
        .collect();
    (all, rows)
}

/// Bit patterns, so that NaN == NaN would not hide and -0 != 0 shows.
fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

proptest! {
    #![proptest_config(config(40))]

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn multi_row_gemv_equals_the_batch_1_gemv_row_by_row(format in prop::sample::select(vec![WeightFormat::Q8_0, WeightFormat::Q4K, WeightFormat::Q6K, WeightFormat::Mxfp4]), n in 1usize..=20, units in prop_oneof![1usize..=3, 4usize..=24], n_out in prop_oneof![1usize..=40, 41usize..=700], part in 0usize..3, with_bias: bool, seed: u64) {
        let n_in = 256 * units;
        let bytes = random_matrix(format, n_in, n_out, seed);
        let x = random_values(seed ^ 9, n * n_in, 2.0);
        let bias = with_bias.then(|| random_values(seed ^ 10, n_out, 1.0));
        // A range of rows, as a stacked q/k/v matrix's parts are multiplied: all, a tail, a middle.
        let rows = match part {
            0 => 0..n_out,
            1 => n_out / 2..n_out,
            _ => n_out / 3..(n_out / 3 + n_out.div_ceil(3)).min(n_out),
        };
        let gpu = gpu();
        let matrix = gpu.upload_matrix(format, &bytes, n_in, n_out).unwrap();
        let bias_gpu = bias.as_ref().map(|b| gpu.upload(b).unwrap());
        let (all, each) = quantized_rows(&x, n, n_in);
        let mut y = poisoned(n * rows.len());
        gpu.gemv_rows(&matrix, rows.clone(), &all, n, bias_gpu.as_ref(), &mut y).unwrap();
        let y = gpu.download(&y).unwrap();
        for (t, row) in each.iter().enumerate() {
            let mut alone = poisoned(n_out);
            gpu.gemv_q8(&matrix, row, bias_gpu.as_ref(), &mut alone).unwrap();
            let alone = gpu.download(&alone).unwrap();
            prop_assert_eq!(bits(&y[t * rows.len()..(t + 1) * rows.len()]), bits(&alone[rows.clone()]), "{:?} {}x{} rows {:?}, row {} of {}", format, n_out, n_in, rows, t, n);
        }
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn multi_row_expert_gemv_equals_the_batch_1_expert_gemv(t in prop_oneof![1usize..=12, 13usize..=70], k in 1usize..=4, n_expert in prop_oneof![1usize..=8, Just(32usize)], rows in prop_oneof![1usize..=40, 41usize..=300], blocks in 1usize..=40, x_per_assignment: bool, with_bias: bool, seed: u64) {
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
        let (all, _) = quantized_rows(&x, x_rows, n_in);
        let mut y = poisoned(t * k * rows);
        gpu.gemv_rows_experts(&matrix, &routing, &all, x_per_assignment, bias_gpu.as_ref(), &mut y).unwrap();
        let y = gpu.download(&y).unwrap();
        for token in 0..t {
            // The token alone: its k experts, its x (one row, or its k rows).
            let x_token = if x_per_assignment { &x[token * k * n_in..(token + 1) * k * n_in] } else { &x[token * n_in..(token + 1) * n_in] };
            let mut q8 = gpu.q8_activations(x_token.len()).unwrap();
            gpu.quantize_q8(&gpu.upload(x_token).unwrap(), &mut q8).unwrap();
            let mut alone = poisoned(k * rows);
            let token_ids = gpu.upload(&ids[token * k..(token + 1) * k]).unwrap();
            gpu.gemv_q8_experts(&matrix, n_expert, &token_ids, &q8, bias_gpu.as_ref(), &mut alone).unwrap();
            let alone = gpu.download(&alone).unwrap();
            prop_assert_eq!(bits(&y[token * k * rows..(token + 1) * k * rows]), bits(&alone), "token {} of {}, ids {:?}", token, t, &ids[token * k..(token + 1) * k]);
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn multi_row_gemv_rejects_bad_shapes() {
    let gpu = gpu();
    let (n_in, n_out) = (256, 64);
    let matrix = gpu
        .upload_matrix(WeightFormat::Q4K, &random_matrix(WeightFormat::Q4K, n_in, n_out, 1), n_in, n_out)
        .unwrap();
    let x = gpu.q8_activations(3 * n_in).unwrap();
    let mut y = poisoned(3 * n_out);
    // x holds 3 rows, not 2; rows past the matrix; y of the wrong size.
    assert!(gpu.gemv_rows(&matrix, 0..n_out, &x, 2, None, &mut y).is_err());
    assert!(gpu.gemv_rows(&matrix, 10..n_out + 1, &x, 3, None, &mut y).is_err());
    assert!(gpu.gemv_rows(&matrix, 0..n_out - 1, &x, 3, None, &mut y).is_err());
    // A format without the multi-row form says so.
    let f16 = gpu.upload_matrix(WeightFormat::F16, &vec![0u8; 2 * n_in * n_out], n_in, n_out).unwrap();
    let error = gpu.gemv_rows(&f16, 0..n_out, &x, 3, None, &mut y).unwrap_err().to_string();
    assert!(error.contains("no multi-row GEMV"), "{error}");
}
