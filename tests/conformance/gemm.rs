//! gpu/src/matmul/gemm.rs against the CPU: engine's dequantizer (checked against gguf-py), every
//! weight and activation rounded to f16 as the GPU rounds them, f64 sums. Bound: 1e-4 relative
//! (f16 x f16 products are exact in f32; what is left is the f32 summation over up to 4096
//! terms, and the rare weight whose f32 dequantization rounds to the neighbouring f16).

use crate::gemv::{ggml_type, random_matrix};
use crate::{assert_close, config, gpu, poisoned, random_values};
use engine::gguf::dequantize;
use host::f16;
use host::matmul::WeightFormat;
use proptest::prelude::*;

fn round(v: f32) -> f64 {
    f16::from_f32(v).to_f32() as f64
}

proptest! {
    #![proptest_config(config(40))]

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn gemm_matches_cpu(
        format in prop::sample::select(vec![WeightFormat::F32, WeightFormat::F16, WeightFormat::Q8_0, WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q4K, WeightFormat::Q6K]),
        super_blocks in 1usize..=8,
        n_out in prop_oneof![1usize..=40, 41usize..=700],
        tokens in prop_oneof![1usize..=3, 4usize..=200],
        row_start in 0usize..=5,
        with_bias: bool,
        seed: u64,
    ) {
        let n_in = 256 * super_blocks;
        let total_rows = n_out + row_start + 3;
        let bytes = random_matrix(format, n_in, total_rows, seed);
        let weights = dequantize(ggml_type(format), &bytes, n_in * total_rows).unwrap();
        let x = random_values(seed ^ 3, tokens * n_in, 2.0);
        let bias = with_bias.then(|| random_values(seed ^ 4, total_rows, 1.0));
        let rows = row_start..row_start + n_out;
        let mut expected = vec![0.0f32; tokens * n_out];
        for t in 0..tokens {
            for (o, row) in rows.clone().enumerate() {
                let w = &weights[row * n_in..(row + 1) * n_in];
                let dot: f64 = w.iter().zip(&x[t * n_in..(t + 1) * n_in]).map(|(&a, &b)| round(a) * round(b)).sum();
                expected[t * n_out + o] = (dot + bias.as_ref().map_or(0.0, |b| b[row] as f64)) as f32;
            }
        }
        let gpu = gpu();
        let matrix = gpu.upload_matrix(format, &bytes, n_in, total_rows).unwrap();
        let bias_gpu = bias.as_ref().map(|b| gpu.upload(b).unwrap());
        let mut y = poisoned(tokens * n_out);
        gpu.gemm(&matrix, rows, &gpu.upload(&x).unwrap(), tokens, bias_gpu.as_ref(), &mut y).unwrap();
        assert_close(&format!("gemm {format:?} {tokens}x{n_out}x{n_in}"), &gpu.download(&y).unwrap(), &expected, 1e-4);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gemm_rejects_bad_shapes() {
    let gpu = gpu();
    let matrix = gpu.upload_matrix(WeightFormat::F32, &[0; 4 * 32 * 3], 32, 3).unwrap();
    let x = gpu.upload(&[1.0f32; 64]).unwrap();
    let mut y = poisoned(6);
    assert!(gpu.gemm(&matrix, 0..4, &x, 2, None, &mut y).unwrap_err().to_string().contains("rows"));
    let error = gpu.gemm(&matrix, 0..3, &x, 3, None, &mut y).unwrap_err().to_string();
    assert!(error.contains("x has 64 elements"), "{error}");
}

/// Grids large enough for the 128-token blocks (`gemm_*_wide`: at least two blocks per SM), which
/// the proptest sizes above do not reach.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gemm_wide_blocks_match_cpu() {
    let (n_in, n_out, tokens) = (256usize, 11_300usize, 300usize);
    for format in [WeightFormat::F16, WeightFormat::Q4K] {
        let bytes = random_matrix(format, n_in, n_out, 77);
        let weights = dequantize(ggml_type(format), &bytes, n_in * n_out).unwrap();
        let x = random_values(78, tokens * n_in, 2.0);
        let mut expected = vec![0.0f32; tokens * n_out];
        for t in 0..tokens {
            let xt: Vec<f64> = x[t * n_in..(t + 1) * n_in].iter().map(|&v| round(v)).collect();
            for o in 0..n_out {
                let w = &weights[o * n_in..(o + 1) * n_in];
                expected[t * n_out + o] = w.iter().zip(&xt).map(|(&a, b)| round(a) * b).sum::<f64>() as f32;
            }
        }
        let gpu = gpu();
        let matrix = gpu.upload_matrix(format, &bytes, n_in, n_out).unwrap();
        let mut y = poisoned(tokens * n_out);
        gpu.gemm(&matrix, 0..n_out, &gpu.upload(&x).unwrap(), tokens, None, &mut y).unwrap();
        assert_close(&format!("gemm wide {format:?}"), &gpu.download(&y).unwrap(), &expected, 1e-4);
    }
}
