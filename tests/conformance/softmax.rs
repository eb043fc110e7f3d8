//! gpu/src/softmax.rs against engine::cpu::softmax.

use crate::{assert_close, config, gpu, poisoned, random_values, size};
use engine::cpu::softmax::softmax;
use proptest::prelude::*;

proptest! {
    #![proptest_config(config(40))]

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn softmax_matches_cpu(rows in 1usize..=5, n in size(210_000), seed: u64, scale in prop_oneof![Just(1.0f32), Just(30.0f32)], masked in 0usize..4) {
        let mut x = random_values(seed, rows * n, scale);
        // Mask a stretch of the first row, and all of the last row when asked.
        for v in x.iter_mut().take(n / 3) { *v = f32::NEG_INFINITY; }
        if masked == 0 {
            for v in x[(rows - 1) * n..].iter_mut() { *v = f32::NEG_INFINITY; }
        }
        let mut expected = vec![0.0; rows * n];
        softmax(&x, &mut expected, n);
        let gpu = gpu();
        let x_gpu = gpu.upload(&x).unwrap();
        let mut out = poisoned(rows * n);
        gpu.softmax(&x_gpu, &mut out, rows, n).unwrap();
        assert_close(&format!("softmax {rows}x{n}"), &gpu.download(&out).unwrap(), &expected, 1e-5);
    }
}
