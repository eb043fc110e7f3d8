//! gpu/src/norm.rs against engine::cpu::norm.

use crate::{
    Storage, assert_close, assert_q8_near, config, cpu_q8_1, gpu, poisoned, random_values, size, storage,
    with_weights,
};
use engine::cpu::norm;
use proptest::prelude::*;

proptest! {
    #![proptest_config(config(48))]

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn rms_norm_matches_cpu(rows in 1usize..=9, dim in size(8192), storage in storage(), seed: u64, eps in prop_oneof![Just(1e-5f32), Just(1e-6f32)]) {
        let x = random_values(seed, rows * dim, 3.0);
        let weight = storage.round(&random_values(seed ^ 1, dim, 2.0));
        let mut expected = vec![0.0; rows * dim];
        norm::rms_norm(&x, &weight, &mut expected, dim, eps);

        let gpu = gpu();
        let x_gpu = gpu.upload(&x).unwrap();
        let mut out = poisoned(rows * dim);
        with_weights!(storage, &weight, |w| gpu.rms_norm(&x_gpu, w, &mut out, rows, dim, eps)).unwrap();
        assert_close(&format!("rms_norm {rows}x{dim} {storage:?}"), &gpu.download(&out).unwrap(), &expected, 1e-5);
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn layer_norm_matches_cpu(rows in 1usize..=9, dim in size(8192), storage in storage(), seed: u64, offset in -50.0f32..50.0) {
        // An offset shifts the mean away from zero, which a one-pass variance would get wrong.
        let x: Vec<f32> = random_values(seed, rows * dim, 3.0).iter().map(|v| v + offset).collect();
        let weight = storage.round(&random_values(seed ^ 1, dim, 2.0));
        let bias = storage.round(&random_values(seed ^ 2, dim, 1.0));
        let mut expected = vec![0.0; rows * dim];
        norm::layer_norm(&x, &weight, &bias, &mut expected, dim, 1e-5);

        let gpu = gpu();
        let x_gpu = gpu.upload(&x).unwrap();
        let mut out = poisoned(rows * dim);
        match storage {
            Storage::F32 => {
                let (w, b) = (gpu.upload(&weight).unwrap(), gpu.upload(&bias).unwrap());
                gpu.layer_norm(&x_gpu, &w, &b, &mut out, rows, dim, 1e-5).unwrap();
            }
            Storage::F16 => {
                let half = |v: &[f32]| gpu.upload(&v.iter().map(|&x| host::f16::from_f32(x)).collect::<Vec<_>>()).unwrap();
                gpu.layer_norm(&x_gpu, &half(&weight), &half(&bias), &mut out, rows, dim, 1e-5).unwrap();
            }
            Storage::Bf16 => {
                let half = |v: &[f32]| gpu.upload(&v.iter().map(|&x| host::bf16::from_f32(x)).collect::<Vec<_>>()).unwrap();
                gpu.layer_norm(&x_gpu, &half(&weight), &half(&bias), &mut out, rows, dim, 1e-5).unwrap();
            }
        }
        // x - mean loses up to ulp(|offset|) of each centred value in f32, inherent to f32 inputs:
        // the bound grows with |offset| over the smallest row spread.
        let spread = x.chunks(dim).map(|row| {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
            (row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64).sqrt()
        }).fold(f64::INFINITY, f64::min);
        let bound = 1e-5 + 4.0 * offset.abs() as f64 * f32::EPSILON as f64 / spread.max(1e-3);
        assert_close(&format!("layer_norm {rows}x{dim} {storage:?}"), &gpu.download(&out).unwrap(), &expected, bound);
    }
}

proptest! {
    #![proptest_config(config(48))]

    /// The decode step's fused norm (x += residual, RMSNorm, 8-bit quantization) against the CPU
    /// norm, and its quantization against the separate quantize kernel (itself checked against the
    /// CPU integer path in gemv.rs) run on the fused kernel's own output: those must agree bit for
    /// bit. Rows up to 16384 take the kernel's register path (up to 4096) and its looped path.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn rms_norm_q8_matches_cpu(blocks in prop_oneof![1usize..=40, 41usize..=512], with_residual: bool, with_out: bool, seed: u64) {
        let dim = 32 * blocks;
        let x = random_values(seed, dim, 3.0);
        let residual = random_values(seed ^ 2, dim, 3.0);
        let weight = random_values(seed ^ 1, dim, 2.0);
        let summed: Vec<f32> = if with_residual { x.iter().zip(&residual).map(|(a, b)| a + b).collect() } else { x.clone() };
        let mut expected = vec![0.0; dim];
        norm::rms_norm(&summed, &weight, &mut expected, dim, 1e-5);

        let gpu = gpu();
        let mut x_gpu = gpu.upload(&x).unwrap();
        let residual_gpu = gpu.upload(&residual).unwrap();
        let w = gpu.upload(&weight).unwrap();
        let mut out = poisoned(dim);
        let mut q8 = gpu.q8_activations(dim).unwrap();
        gpu.rms_norm_q8(&mut x_gpu, with_residual.then_some(&residual_gpu), &w, 1e-5, with_out.then_some(&mut out), &mut q8).unwrap();
        assert_close(&format!("rms_norm_q8 x {dim}"), &gpu.download(&x_gpu).unwrap(), &summed, 1e-6);

        // A second run that always writes `out` gives the normalized row; leaving `out` out must
        // not change the quantization.
        let mut again = gpu.upload(&x).unwrap();
        let mut normalized = poisoned(dim);
        let mut q8_again = gpu.q8_activations(dim).unwrap();
        gpu.rms_norm_q8(&mut again, with_residual.then_some(&residual_gpu), &w, 1e-5, Some(&mut normalized), &mut q8_again).unwrap();
        let normalized = gpu.download(&normalized).unwrap();
        if with_out {
            prop_assert_eq!(gpu.download(&out).unwrap(), normalized.clone());
        }
        assert_close(&format!("rms_norm_q8 out {dim}"), &normalized, &expected, 1e-5);
        let mut separate = gpu.q8_activations(dim).unwrap();
        gpu.quantize_q8(&gpu.upload(&normalized).unwrap(), &mut separate).unwrap();
        let fused = q8.download(gpu).unwrap();
        prop_assert_eq!(&fused, &q8_again.download(gpu).unwrap());
        prop_assert_eq!(fused, separate.download(gpu).unwrap());
    }

    /// GPT-2's fused decode-step norm (x += residual, LayerNorm with bias, 8-bit quantization)
    /// against engine::cpu::norm::layer_norm followed by the CPU's Q8_1 quantizer
    /// (engine::cpu::quantized, read out by `cpu_q8_1`). As rms_norm_q8_matches_cpu tolerates:
    /// the float output within float rounding of the CPU's (the bound of layer_norm_matches_cpu),
    /// and the quantization bit for bit equal to quantizing the kernel's own float output, here
    /// by the CPU quantizer as well as by the separate quantize kernel. Against the CPU quantizer
    /// run on the CPU's own output the integers must agree except where a value sits within float
    /// rounding of a rounding boundary (`assert_q8_near`). Rows of 1 to 512 blocks (1600 = 50
    /// blocks and 6144 = 192 by name) take the kernel's register path (up to 4096) and its loops.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn layer_norm_q8_matches_cpu(blocks in prop_oneof![1usize..=40, 41usize..=512, Just(50usize), Just(192usize)], with_residual: bool, with_out: bool, seed: u64, offset in -50.0f32..50.0) {
        let dim = 32 * blocks;
        // An offset moves the mean away from zero, which a one-pass variance would get wrong.
        let x: Vec<f32> = random_values(seed, dim, 3.0).iter().map(|v| v + offset).collect();
        let residual = random_values(seed ^ 2, dim, 3.0);
        let weight = random_values(seed ^ 1, dim, 2.0);
        let bias = random_values(seed ^ 3, dim, 1.0);
        let summed: Vec<f32> = if with_residual { x.iter().zip(&residual).map(|(a, b)| a + b).collect() } else { x.clone() };
        let mut expected = vec![0.0; dim];
        norm::layer_norm(&summed, &weight, &bias, &mut expected, dim, 1e-5);

        let gpu = gpu();
        let mut x_gpu = gpu.upload(&x).unwrap();
        let residual_gpu = gpu.upload(&residual).unwrap();
        let (w, b) = (gpu.upload(&weight).unwrap(), gpu.upload(&bias).unwrap());
        let mut out = poisoned(dim);
        let mut q8 = gpu.q8_activations(dim).unwrap();
        gpu.layer_norm_q8(&mut x_gpu, with_residual.then_some(&residual_gpu), &w, &b, 1e-5, with_out.then_some(&mut out), &mut q8).unwrap();
        // One f32 addition per value, as on the CPU.
        prop_assert_eq!(gpu.download(&x_gpu).unwrap(), summed.clone());

        // A second run that always writes `out` gives the normalized row; leaving `out` out must
        // not change the quantization.
        let mut again = gpu.upload(&x).unwrap();
        let mut normalized = poisoned(dim);
        let mut q8_again = gpu.q8_activations(dim).unwrap();
        gpu.layer_norm_q8(&mut again, with_residual.then_some(&residual_gpu), &w, &b, 1e-5, Some(&mut normalized), &mut q8_again).unwrap();
        let normalized = gpu.download(&normalized).unwrap();
        if with_out {
            prop_assert_eq!(gpu.download(&out).unwrap(), normalized.clone());
        }
        // x - mean loses up to ulp(|offset|) of each centred value in f32 (layer_norm_matches_cpu).
        let mean = summed.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
        let spread = (summed.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64).sqrt();
        let bound = 1e-5 + 4.0 * offset.abs() as f64 * f32::EPSILON as f64 / spread.max(1e-3);
        assert_close(&format!("layer_norm_q8 out {dim}"), &normalized, &expected, bound);
        let fused = q8.download(gpu).unwrap();
        prop_assert_eq!(&fused, &q8_again.download(gpu).unwrap());
        prop_assert_eq!(&fused, &cpu_q8_1(&normalized));
        let mut separate = gpu.q8_activations(dim).unwrap();
        gpu.quantize_q8(&gpu.upload(&normalized).unwrap(), &mut separate).unwrap();
        prop_assert_eq!(&fused, &separate.download(gpu).unwrap());
        assert_q8_near(&format!("layer_norm_q8 q8 {dim}"), &fused, &normalized, &expected);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn norm_rejects_bad_shapes() {
    let gpu = gpu();
    let x = gpu.upload(&[1.0f32; 12]).unwrap();
    let w = gpu.upload(&[1.0f32; 4]).unwrap();
    let mut out = poisoned(12);
    assert!(gpu.rms_norm(&x, &w, &mut out, 3, 4, 1e-5).is_ok());
    let error = gpu.rms_norm(&x, &w, &mut out, 4, 4, 1e-5).unwrap_err().to_string();
    assert!(error.contains("x has 12 elements, expected 16"), "{error}");
    let mut short = poisoned(8);
    assert!(gpu.rms_norm(&x, &w, &mut short, 3, 4, 1e-5).is_err());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn layer_norm_q8_rejects_bad_shapes() {
    let gpu = gpu();
    let mut x = gpu.upload(&[1.0f32; 64]).unwrap();
    let (w, b) = (gpu.upload(&[1.0f32; 64]).unwrap(), gpu.upload(&[0.0f32; 32]).unwrap());
    let mut q8 = gpu.q8_activations(64).unwrap();
    let error = gpu.layer_norm_q8(&mut x, None, &w, &b, 1e-5, None, &mut q8).unwrap_err().to_string();
    assert!(error.contains("layer_norm_q8_1: bias has 32 elements, expected 64"), "{error}");
    let short = gpu.upload(&[1.0f32; 32]).unwrap();
    assert!(gpu.layer_norm_q8(&mut x, Some(&short), &w, &w, 1e-5, None, &mut q8).is_err());
    let mut short_out = poisoned(32);
    assert!(gpu.layer_norm_q8(&mut x, None, &w, &w, 1e-5, Some(&mut short_out), &mut q8).is_err());
    assert!(gpu.layer_norm_q8(&mut x, None, &w, &w, 1e-5, None, &mut q8).is_ok());
    let error = gpu.gelu_q8(&short, None, &mut q8).unwrap_err().to_string();
    assert!(error.contains("gelu_tanh_q8_1: x has 32 elements, expected 64"), "{error}");
}
