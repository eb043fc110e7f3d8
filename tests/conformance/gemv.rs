//! gpu/src/matmul/gemv.rs against the CPU: engine's dequantizer (itself checked against gguf-py)
//! and an f64 dot product. Bound: relative error 1e-5 over the output vector (f32 accumulation of
//! up to 8192 products against an f64 reference).

use crate::{assert_close, config, gpu, poisoned, random_values};
use engine::gguf::{GgmlType, dequantize};
use host::matmul::WeightFormat;
use proptest::prelude::*;

fn formats() -> impl Strategy<Value = WeightFormat> {
    prop::sample::select(vec![
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::Bf16,
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
    ])
}

pub fn ggml_type(format: WeightFormat) -> GgmlType {
    match format {
        WeightFormat::F32 => GgmlType::F32,
        WeightFormat::F16 => GgmlType::F16,
        WeightFormat::Bf16 => GgmlType::Bf16,
        WeightFormat::Q8_0 => GgmlType::Q8_0,
        WeightFormat::Q4_0 => GgmlType::Q4_0,
        WeightFormat::Q4_1 => GgmlType::Q4_1,
        WeightFormat::Q4K => GgmlType::Q4K,
        WeightFormat::Q6K => GgmlType::Q6K,
        WeightFormat::Mxfp4 => GgmlType::Mxfp4,
    }
}

/// Random stored bytes of a [n_out, n_in] matrix: random quants, finite scales of either sign.
pub fn random_matrix(format: WeightFormat, n_in: usize, n_out: usize, seed: u64) -> Vec<u8> {
    let (block, block_bytes) = format.block();
    let n_blocks = n_in / block * n_out;
    let noise = random_values(seed, n_blocks * block_bytes, 1.0);
    let mut bytes: Vec<u8> = noise.iter().map(|v| ((v + 1.0) * 127.5) as u8).collect();
    let f16 = |v: f32| host::f16::from_f32(v).to_le_bytes();
    for (b, chunk) in bytes.chunks_exact_mut(block_bytes).enumerate() {
        let scale = noise[b] * 0.05;
        match format {
            WeightFormat::F32 => chunk.copy_from_slice(&(noise[b] * 2.0).to_le_bytes()),
            WeightFormat::F16 => chunk.copy_from_slice(&f16(noise[b] * 2.0)),
            WeightFormat::Bf16 => chunk.copy_from_slice(&host::bf16::from_f32(noise[b] * 2.0).to_le_bytes()),
            WeightFormat::Q8_0 | WeightFormat::Q4_0 => chunk[..2].copy_from_slice(&f16(scale)),
            WeightFormat::Q4_1 => {
                chunk[..2].copy_from_slice(&f16(scale));
                chunk[2..4].copy_from_slice(&f16(noise[(b + 1) % n_blocks] * 0.3));
            }
            WeightFormat::Q4K => {
                chunk[..2].copy_from_slice(&f16(scale * 0.1));
                chunk[2..4].copy_from_slice(&f16(noise[(b + 1) % n_blocks] * 0.01));
            }
            WeightFormat::Q6K => chunk[208..].copy_from_slice(&f16(scale * 0.1)),
            // Exponents 2^-12..2^8 around 2^-2: every nibble (random bytes) stays finite.
            WeightFormat::Mxfp4 => chunk[0] = (125.0 + noise[b] * 10.0) as u8,
        }
    }
    bytes
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn gemv_matches_cpu(format in formats(), n_in_blocks in prop_oneof![1usize..=8, 9usize..=256], n_out in prop_oneof![1usize..=40, 41usize..=3000], with_bias: bool, seed: u64) {
        let n_in = 32 * n_in_blocks;
        let bytes = random_matrix(format, n_in, n_out, seed);
        let weights = dequantize(ggml_type(format), &bytes, n_in * n_out).unwrap();
        let x = random_values(seed ^ 9, n_in, 2.0);
        let bias = with_bias.then(|| random_values(seed ^ 10, n_out, 1.0));
        let expected: Vec<f32> = weights
            .chunks_exact(n_in)
            .enumerate()
            .map(|(o, row)| {
                let dot: f64 = row.iter().zip(&x).map(|(&w, &v)| w as f64 * v as f64).sum();
                (dot + bias.as_ref().map_or(0.0, |b| b[o] as f64)) as f32
            })
            .collect();

        let gpu = gpu();
        let matrix = gpu.upload_matrix(format, &bytes, n_in, n_out).unwrap();
        let x_gpu = gpu.upload(&x).unwrap();
        let bias_gpu = bias.as_ref().map(|b| gpu.upload(b).unwrap());
        let mut y = poisoned(n_out);
        gpu.gemv(&matrix, &x_gpu, bias_gpu.as_ref(), &mut y).unwrap();
        assert_close(&format!("gemv {format:?} {n_out}x{n_in}"), &gpu.download(&y).unwrap(), &expected, 1e-5);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gemv_rejects_bad_shapes() {
    let gpu = gpu();
    assert!(gpu.upload_matrix(WeightFormat::Q8_0, &[0; 34], 16, 2).is_err());
    let matrix = gpu.upload_matrix(WeightFormat::F32, &[0; 4 * 8 * 3], 8, 3).unwrap();
    let x = gpu.upload(&[1.0f32; 7]).unwrap();
    let mut y = poisoned(3);
    let error = gpu.gemv(&matrix, &x, None, &mut y).unwrap_err().to_string();
    assert!(error.contains("x has 7 elements, expected 8"), "{error}");
}

proptest! {
    #![proptest_config(config(48))]

    /// The integer form against the CPU's llama.cpp-style product (engine::cpu::quantized), which
    /// quantizes x the same way: the integers agree exactly, so only float summation order differs.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn gemv_q8_matches_the_cpu_integer_path(format in prop::sample::select(vec![WeightFormat::Q8_0, WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Mxfp4]), n_in_blocks in prop_oneof![1usize..=8, 9usize..=256], n_out in prop_oneof![1usize..=40, 41usize..=3000], with_bias: bool, seed: u64) {
        use engine::cpu::quantized::{Matrix, matmul};
        let n_in = 32 * n_in_blocks;
        let bytes = random_matrix(format, n_in, n_out, seed);
        let x = random_values(seed ^ 9, n_in, 2.0);
        let bias = with_bias.then(|| random_values(seed ^ 10, n_out, 1.0));
        let mut expected = vec![0.0f32; n_out];
        matmul(&x, &Matrix::Blocks { ty: ggml_type(format), bytes: bytes.clone() }, bias.as_deref(), &mut expected, n_in, n_out);

        let gpu = gpu();
        let matrix = gpu.upload_matrix(format, &bytes, n_in, n_out).unwrap();
        let mut activations = gpu.q8_activations(n_in).unwrap();
        gpu.quantize_q8(&gpu.upload(&x).unwrap(), &mut activations).unwrap();
        let bias_gpu = bias.as_ref().map(|b| gpu.upload(b).unwrap());
        let mut y = poisoned(n_out);
        gpu.gemv_q8(&matrix, &activations, bias_gpu.as_ref(), &mut y).unwrap();
        assert_close(&format!("gemv_q8 {format:?} {n_out}x{n_in}"), &gpu.download(&y).unwrap(), &expected, 1e-5);
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// K-quant GEMVs (integer form only) against engine::cpu::quantized::matvec_k_q8_1, an f64
    /// sum of the same integer products: only float summation order differs.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn gemv_k_quants_match_the_cpu_integer_form(format in prop::sample::select(vec![WeightFormat::Q4K, WeightFormat::Q6K]), super_blocks in prop_oneof![1usize..=4, 5usize..=64], n_out in prop_oneof![1usize..=40, 41usize..=3000], with_bias: bool, seed: u64) {
        use engine::cpu::quantized::matvec_k_q8_1;
        let n_in = 256 * super_blocks;
        let bytes = random_matrix(format, n_in, n_out, seed);
        let x = random_values(seed ^ 9, n_in, 2.0);
        let bias = with_bias.then(|| random_values(seed ^ 10, n_out, 1.0));
        let expected = matvec_k_q8_1(&x, ggml_type(format), &bytes, bias.as_deref(), n_in, n_out);

        let gpu = gpu();
        let matrix = gpu.upload_matrix(format, &bytes, n_in, n_out).unwrap();
        let mut activations = gpu.q8_activations(n_in).unwrap();
        gpu.quantize_q8(&gpu.upload(&x).unwrap(), &mut activations).unwrap();
        let bias_gpu = bias.as_ref().map(|b| gpu.upload(b).unwrap());
        let mut y = poisoned(n_out);
        gpu.gemv_q8(&matrix, &activations, bias_gpu.as_ref(), &mut y).unwrap();
        assert_close(&format!("gemv_q8 {format:?} {n_out}x{n_in}"), &gpu.download(&y).unwrap(), &expected, 1e-5);
        // The float form refuses K-quants rather than computing something else.
        let mut y = poisoned(n_out);
        prop_assert!(gpu.gemv(&matrix, &gpu.upload(&x).unwrap(), None, &mut y).is_err());
    }

    /// Embedding rows of every block format against the CPU dequantizer (checked against gguf-py).
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn embedding_rows_of_block_formats_match_the_dequantizer(format in prop::sample::select(vec![WeightFormat::Q8_0, WeightFormat::Q4_0, WeightFormat::Q4_1, WeightFormat::Q4K, WeightFormat::Q6K, WeightFormat::Mxfp4]), blocks in 1usize..=12, rows in 1usize..=50, seed: u64) {
        let (block, _) = format.block();
        let dim = block * blocks;
        let bytes = random_matrix(format, dim, rows, seed);
        let table = dequantize(ggml_type(format), &bytes, dim * rows).unwrap();
        let gpu = gpu();
        let matrix = gpu.upload_matrix(format, &bytes, dim, rows).unwrap();
        for row in [0, rows / 2, rows - 1] {
            let ids = gpu.upload(&[row as u32]).unwrap();
            let mut out = poisoned(dim);
            gpu.embed(&matrix, &ids, &mut out).unwrap();
            assert_close(&format!("embed {format:?} row {row}"), &gpu.download(&out).unwrap(), &table[row * dim..(row + 1) * dim], 1e-6);
        }
    }
}
