//! gpu/src/rope.rs against engine::cpu::rope.

use crate::{assert_close, config, gpu, random_values};
use engine::cpu::rope::{self as cpu, RopeConfig, YarnConfig};
use host::rope::{Rope, RopeLayout, Yarn};
use proptest::prelude::*;

fn head_dims() -> impl Strategy<Value = (usize, usize)> {
    // (head_dim, rope_dim): the model sizes, and partial rotation (Phi-2 style) of odd sizes.
    prop_oneof![
        prop::sample::select(vec![64usize, 80, 96, 128]).prop_map(|d| (d, d)),
        (1usize..=70).prop_flat_map(|half| (Just(2 * half + 6), 1usize..=half)).prop_map(|(d, r)| (d, 2 * r)),
    ]
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn rope_matches_cpu(
        n_tokens in 1usize..24,
        n_heads in 1usize..10,
        (head_dim, rope_dim) in head_dims(),
        neox: bool,
        base in prop::sample::select(vec![10000.0f32, 500000.0, 150000.0, 1e6]),
        yarn in proptest::option::of((prop::sample::select(vec![4.0f32, 8.0, 32.0, 2.5]), prop::sample::select(vec![4096u32, 8192]), 0.5f32..1.5, any::<bool>())),
        max_position in prop::sample::select(vec![16u32, 4096, 131072]),
        seed: u64,
    ) {
        let x = random_values(seed, n_tokens * n_heads * head_dim, 2.0);
        let positions: Vec<u32> = random_values(seed ^ 5, n_tokens, 1.0).iter().map(|v| ((v + 1.0) * 0.5 * max_position as f32) as u32).collect();
        let yarn = yarn.map(|(factor, original_context, attn_factor, truncate)| YarnConfig { factor, original_context, beta_fast: 32.0, beta_slow: 1.0, ext_factor: 1.0, attn_factor, truncate });
        let layout = if neox { cpu::RopeLayout::Neox } else { cpu::RopeLayout::Interleaved };
        let reference = RopeConfig { head_dim, rope_dim, base, layout, yarn };
        let mut expected = x.clone();
        cpu::rope(&mut expected, &positions, n_heads, &reference);

        let rope = Rope {
            head_dim,
            rope_dim,
            base,
            layout: if neox { RopeLayout::Neox } else { RopeLayout::Interleaved },
            yarn: yarn.map(|y| Yarn { factor: y.factor, original_context: y.original_context, beta_fast: y.beta_fast, beta_slow: y.beta_slow, ext_factor: y.ext_factor, attn_factor: y.attn_factor, truncate: y.truncate }),
        };
        let gpu = gpu();
        let mut x_gpu = gpu.upload(&x).unwrap();
        gpu.rope(&mut x_gpu, &gpu.upload(&positions).unwrap(), n_heads, &rope).unwrap();
        assert_close(&format!("rope {rope:?} tokens={n_tokens} heads={n_heads}"), &gpu.download(&x_gpu).unwrap(), &expected, 2e-6);
    }
}
