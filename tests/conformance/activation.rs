//! gpu/src/activation.rs against engine::cpu::activation.

use crate::{assert_close, assert_q8_near, config, cpu_q8_1, gpu, poisoned, random_values, size};
use engine::cpu::activation as cpu;
use host::activation::Activation;
use proptest::prelude::*;

fn function() -> impl Strategy<Value = Activation> {
    prop_oneof![Just(Activation::GeluErf), Just(Activation::GeluTanh), Just(Activation::Silu)]
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn activation_matches_cpu(n in size(1 << 20), function in function(), seed: u64, offset in 0usize..8) {
        // A view that starts `offset` elements in exercises the unaligned path.
        let x = random_values(seed, n + offset, 8.0);
        let reference = match function {
            Activation::GeluErf => cpu::gelu_erf,
            Activation::GeluTanh => cpu::gelu_tanh,
            Activation::Silu => cpu::silu,
        };
        let expected: Vec<f32> = x[offset..].iter().map(|&v| reference(v)).collect();
        let gpu = gpu();
        let x_gpu = gpu.upload(&x).unwrap();
        let mut out = poisoned(n);
        gpu.activation(function, &x_gpu.slice(offset..), &mut out).unwrap();
        let actual = gpu.download(&out).unwrap();
        // Relative 2e-6 plus an absolute floor of 1e-6 per element (in the rms): GELU's far
        // negative tail is x (1 + erf) with 1 + erf cancelling to ~1e-7, where a few f32 ulps of
        // erf are a large relative error of a tiny output; a row made only of such values (small
        // n) failed the purely relative bound once on the H100.
        let what = format!("{function:?} n={n} offset={offset}");
        assert_close(&what, &actual, &expected, f64::INFINITY);
        let diff: f64 = actual.iter().zip(&expected).map(|(a, e)| (*a as f64 - *e as f64).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = expected.iter().map(|e| (*e as f64).powi(2)).sum::<f64>().sqrt();
        prop_assert!(diff <= 2e-6 * norm + 1e-6 * (n as f64).sqrt(), "{what}: error {diff:.3e} against norm {norm:.3e}");
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn swiglu_and_residual_add_match_cpu(n in size(1 << 20), seed: u64) {
        let (gate, up) = (random_values(seed, n, 8.0), random_values(seed ^ 7, n, 4.0));
        let expected: Vec<f32> = gate.iter().zip(&up).map(|(&g, &u)| cpu::swiglu(g, u)).collect();
        let gpu = gpu();
        let (gate_gpu, up_gpu) = (gpu.upload(&gate).unwrap(), gpu.upload(&up).unwrap());
        let mut out = poisoned(n);
        gpu.swiglu(&gate_gpu, &up_gpu, &mut out).unwrap();
        assert_close("swiglu", &gpu.download(&out).unwrap(), &expected, 2e-6);

        let expected: Vec<f32> = gate.iter().zip(&up).map(|(&g, &u)| g + u).collect();
        let mut x = gpu.upload(&gate).unwrap();
        gpu.residual_add(&mut x, &up_gpu).unwrap();
        assert_eq!(gpu.download(&x).unwrap(), expected, "residual_add must be exact");
    }

    /// GPT-2's fused decode-step activation (gelu_tanh, 8-bit quantization) against
    /// engine::cpu::activation::gelu_tanh followed by the CPU's Q8_1 quantizer, held to what
    /// norm.rs's rms_norm_q8_matches_cpu tolerates: the float output within the bound of
    /// activation_matches_cpu, the quantization bit for bit equal to quantizing the kernel's own
    /// float output (by the CPU quantizer and by the quantize kernel), and against the CPU
    /// quantizer of the CPU's output, equal integers except where a value sits within float
    /// rounding of a rounding boundary (`assert_q8_near`). 6400 = 200 blocks is GPT-2 XL's FFN.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn gelu_q8_matches_cpu(blocks in prop_oneof![1usize..=40, 41usize..=512, Just(50usize), Just(200usize)], with_out: bool, seed: u64) {
        let n = 32 * blocks;
        let x = random_values(seed, n, 8.0);
        let expected: Vec<f32> = x.iter().map(|&v| cpu::gelu_tanh(v)).collect();
        let gpu = gpu();
        let x_gpu = gpu.upload(&x).unwrap();
        let mut out = poisoned(n);
        let mut q8 = gpu.q8_activations(n).unwrap();
        gpu.gelu_q8(&x_gpu, with_out.then_some(&mut out), &mut q8).unwrap();
        let mut activated = poisoned(n);
        let mut q8_again = gpu.q8_activations(n).unwrap();
        gpu.gelu_q8(&x_gpu, Some(&mut activated), &mut q8_again).unwrap();
        let activated = gpu.download(&activated).unwrap();
        if with_out {
            prop_assert_eq!(gpu.download(&out).unwrap(), activated.clone());
        }
        // activation_matches_cpu's bound: relative 2e-6 plus an absolute floor for the far tail.
        let what = format!("gelu_q8 n={n}");
        assert_close(&what, &activated, &expected, f64::INFINITY);
        let diff: f64 = activated.iter().zip(&expected).map(|(a, e)| (*a as f64 - *e as f64).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = expected.iter().map(|e| (*e as f64).powi(2)).sum::<f64>().sqrt();
        prop_assert!(diff <= 2e-6 * norm + 1e-6 * (n as f64).sqrt(), "{what}: error {diff:.3e} against norm {norm:.3e}");
        let fused = q8.download(gpu).unwrap();
        prop_assert_eq!(&fused, &q8_again.download(gpu).unwrap());
        prop_assert_eq!(&fused, &cpu_q8_1(&activated));
        let mut separate = gpu.q8_activations(n).unwrap();
        gpu.quantize_q8(&gpu.upload(&activated).unwrap(), &mut separate).unwrap();
        prop_assert_eq!(&fused, &separate.download(gpu).unwrap());
        assert_q8_near(&format!("gelu_q8 q8 n={n}"), &fused, &activated, &expected);
    }
}
