//! gpu/src/activation.rs against engine::cpu::activation.

use crate::{assert_close, config, gpu, poisoned, random_values, size};
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
        assert_close(&format!("{function:?} n={n} offset={offset}"), &gpu.download(&out).unwrap(), &expected, 2e-6);
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
}
