//! gpu/src/moe.rs against engine::cpu::moe and an f64 reference.
//! - Routing: offsets exactly; each expert's group as a set (the GPU's order within a group is
//!   not fixed).
//! - Expert GEMV (integer form): engine::cpu::moe::experts_matmul, which multiplies each expert
//!   with llama.cpp's integers, as the GPU does: only float summation order differs, 1e-5.
//! - Expert GEMM: as tests/conformance/gemm.rs bounds a quantized product (X and W rounded to
//!   f16 on the GPU): 1e-3 against the exact weights, 1e-4 against the weights rounded to f16.

use crate::gemm::reference;
use crate::gemv::random_matrix;
use crate::{assert_close, config, gpu, poisoned, random_values, relative_error};
use engine::cpu::moe::{ExpertShape, experts_matmul, group_by_expert};
use engine::cpu::quantized::Matrix;
use engine::gguf::{GgmlType, dequantize};
use host::f16;
use host::matmul::WeightFormat;
use proptest::prelude::*;

/// Random expert ids [T, k] below n_expert (repeats allowed, some experts unused).
pub fn random_ids(seed: u64, t: usize, k: usize, n_expert: usize) -> Vec<u32> {
    random_values(seed, t * k, 1.0)
        .iter()
        .map(|v| ((v + 1.0) / 2.0 * n_expert as f32) as u32 % n_expert as u32)
        .collect()
}

proptest! {
    #![proptest_config(config(24))]

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn routing_groups_assignments_by_expert(t in prop_oneof![1usize..=40, 41usize..=3000], k in 1usize..=4, n_expert in prop_oneof![1usize..=8, Just(32usize), Just(128usize)], seed: u64) {
        let ids = random_ids(seed, t, k, n_expert);
        let (offsets, order) = group_by_expert(&ids, n_expert);
        let gpu = gpu();
        let mut routing = gpu.expert_routing(n_expert, t * k + 5).unwrap();
        gpu.route_experts(&gpu.upload(&ids).unwrap(), k, &mut routing).unwrap();
        let gpu_offsets = gpu.download(routing.offsets()).unwrap();
        prop_assert_eq!(&gpu_offsets, &offsets);
        let gpu_order = gpu.download(routing.order()).unwrap();
        for e in 0..n_expert {
            let range = offsets[e] as usize..offsets[e + 1] as usize;
            let mut group = gpu_order[range.clone()].to_vec();
            group.sort_unstable();
            prop_assert_eq!(&group[..], &order[range], "expert {}", e);
        }
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn expert_gemv_matches_the_cpu_integer_path(n_expert in 1usize..=8, rows in prop_oneof![1usize..=40, 41usize..=700], blocks in prop_oneof![1usize..=8, 9usize..=100], k in 1usize..=4, x_per_assignment: bool, with_bias: bool, seed: u64) {
        let n_in = 32 * blocks;
        let bytes = random_matrix(WeightFormat::Mxfp4, n_in, n_expert * rows, seed);
        let ids = random_ids(seed ^ 3, 1, k, n_expert);
        let x = random_values(seed ^ 9, if x_per_assignment { k * n_in } else { n_in }, 2.0);
        let bias = with_bias.then(|| random_values(seed ^ 10, n_expert * rows, 1.0));
        let shape = ExpertShape { n_expert, rows, n_in, k, x_per_assignment };
        let weights = Matrix::Blocks { ty: GgmlType::Mxfp4, bytes: bytes.clone() };
        let expected = experts_matmul(&x, &weights, bias.as_deref(), &ids, shape);

        let gpu = gpu();
        let matrix = gpu.upload_matrix(WeightFormat::Mxfp4, &bytes, n_in, n_expert * rows).unwrap();
        let mut activations = gpu.q8_activations(x.len()).unwrap();
        gpu.quantize_q8(&gpu.upload(&x).unwrap(), &mut activations).unwrap();
        let bias_gpu = bias.as_ref().map(|b| gpu.upload(b).unwrap());
        let mut y = poisoned(k * rows);
        gpu.gemv_q8_experts(&matrix, n_expert, &gpu.upload(&ids).unwrap(), &activations, bias_gpu.as_ref(), &mut y).unwrap();
        let what = format!("gemv_q8_experts {shape:?} ids {ids:?}");
        assert_close(&what, &gpu.download(&y).unwrap(), &expected, 1e-5);
    }
}

/// Runs the expert GEMM for ids [t, k] and checks every assignment's row against f64 products.
fn check_experts(t: usize, shape: ExpertShape, with_bias: bool, seed: u64) {
    let ExpertShape { n_expert, rows, n_in, k, x_per_assignment } = shape;
    let bytes = random_matrix(WeightFormat::Mxfp4, n_in, n_expert * rows, seed);
    let weights = dequantize(GgmlType::Mxfp4, &bytes, n_in * n_expert * rows).unwrap();
    let ids = random_ids(seed ^ 3, t, k, n_expert);
    let x_rows = if x_per_assignment { t * k } else { t };
    let x = random_values(seed ^ 9, x_rows * n_in, 2.0);
    let bias = with_bias.then(|| random_values(seed ^ 10, n_expert * rows, 1.0));

    let gpu = gpu();
    let matrix = gpu.upload_matrix(WeightFormat::Mxfp4, &bytes, n_in, n_expert * rows).unwrap();
    let mut routing = gpu.expert_routing(n_expert, t * k).unwrap();
    gpu.route_experts(&gpu.upload(&ids).unwrap(), k, &mut routing).unwrap();
    let bias_gpu = bias.as_ref().map(|b| gpu.upload(b).unwrap());
    let mut y = poisoned(t * k * rows);
    gpu.gemm_experts(
        &matrix,
        &routing,
        &gpu.upload(&x).unwrap(),
        x_per_assignment,
        bias_gpu.as_ref(),
        &mut y,
    )
    .unwrap();
    let y = gpu.download(&y).unwrap();
    let what = format!("gemm_experts T={t} {shape:?}");
    if let Some(i) = y.iter().position(|v| v.is_nan()) {
        panic!("{what}: output {i} (assignment {}, row {}) was not written", i / rows, i % rows);
    }

    // Per expert: the f64 product of its rows with the f16-rounded x rows of its assignments.
    let x: Vec<f32> = x.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    let rounded: Vec<f32> = weights.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    let (offsets, order) = group_by_expert(&ids, n_expert);
    let (mut actual, mut exact, mut against_rounded) = (vec![], vec![], vec![]);
    for e in 0..n_expert {
        let group = &order[offsets[e] as usize..offsets[e + 1] as usize];
        if group.is_empty() {
            continue;
        }
        let gathered: Vec<f32> = group
            .iter()
            .flat_map(|&a| {
                let row = if x_per_assignment { a as usize } else { a as usize / k };
                x[row * n_in..(row + 1) * n_in].iter().copied()
            })
            .collect();
        let all: Vec<usize> = (0..group.len()).collect();
        let expert = e * rows * n_in..(e + 1) * rows * n_in;
        let b = bias.as_ref().map(|b| &b[e * rows..(e + 1) * rows]);
        exact.extend(reference(&weights[expert.clone()], &gathered, b, &all, n_in, rows));
        against_rounded.extend(reference(&rounded[expert], &gathered, b, &all, n_in, rows));
        for &a in group {
            actual.extend_from_slice(&y[a as usize * rows..(a as usize + 1) * rows]);
        }
    }
    let error = relative_error(&actual, &exact);
    assert!(error <= 1e-3, "{what}: relative error {error:.3e} against the exact weights exceeds 1e-3");
    let error = relative_error(&actual, &against_rounded);
    assert!(error <= 1e-4, "{what}: relative error {error:.3e} against the f16-rounded weights exceeds 1e-4");
}

proptest! {
    #![proptest_config(config(16))]

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn expert_gemm_matches_cpu(t in prop_oneof![1usize..=20, 21usize..=400], k in 1usize..=4, n_expert in prop_oneof![1usize..=8, Just(32usize)], rows in prop_oneof![1usize..=40, 41usize..=400], blocks in 1usize..=40, x_per_assignment: bool, with_bias: bool, seed: u64) {
        let shape = ExpertShape { n_expert, rows, n_in: 32 * blocks, k, x_per_assignment };
        check_experts(t, shape, with_bias, seed);
    }
}

/// gpt-oss-20b's expert shapes (32 experts, 4 per token, hidden 2880; rows cut to 640 to keep the
/// CPU reference short): many tiles per expert, 45 steps along n_in.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn expert_gemm_at_gpt_oss_shapes() {
    let shape = ExpertShape { n_expert: 32, rows: 640, n_in: 2880, k: 4, x_per_assignment: false };
    check_experts(300, shape, true, 1);
    check_experts(77, ExpertShape { x_per_assignment: true, ..shape }, false, 2);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn expert_products_reject_bad_shapes() {
    let gpu = gpu();
    let bytes = random_matrix(WeightFormat::Mxfp4, 64, 6, 1);
    let matrix = gpu.upload_matrix(WeightFormat::Mxfp4, &bytes, 64, 6).unwrap();
    let ids = gpu.upload(&[0u32, 1]).unwrap();
    let activations = gpu.q8_activations(96).unwrap();
    let mut y = poisoned(4);
    let error = gpu.gemv_q8_experts(&matrix, 3, &ids, &activations, None, &mut y).unwrap_err().to_string();
    assert!(error.contains("x has 96 values"), "{error}");
    let error = gpu.gemv_q8_experts(&matrix, 4, &ids, &activations, None, &mut y).unwrap_err().to_string();
    assert!(error.contains("not n_expert = 4 experts"), "{error}");
    let q8 =
        gpu.upload_matrix(WeightFormat::Q8_0, &random_matrix(WeightFormat::Q8_0, 64, 6, 1), 64, 6).unwrap();
    let activations = gpu.q8_activations(64).unwrap();
    assert!(
        gpu.gemv_q8_experts(&q8, 3, &ids, &activations, None, &mut y)
            .unwrap_err()
            .to_string()
            .contains("MXFP4")
    );
    let mut routing = gpu.expert_routing(3, 2).unwrap();
    assert!(gpu.route_experts(&gpu.upload(&[0u32, 1, 2]).unwrap(), 1, &mut routing).is_err());
    assert!(gpu.route_experts(&ids, 3, &mut routing).is_err());
}

proptest! {
    #![proptest_config(config(48))]

    /// The router's top k against engine::cpu::moe::top_k_softmax: the same experts in the same
    /// order (ties broken towards the lower expert: some rows repeat logits on purpose), weights
    /// to 1e-6.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn top_k_experts_match_the_cpu(n_tokens in 1usize..=70, n_expert in prop_oneof![1usize..=40, 41usize..=256], k_pick in 1usize..=32, ties: bool, seed: u64) {
        use engine::cpu::moe::top_k_softmax;
        let k = k_pick.min(n_expert);
        let mut logits = random_values(seed, n_tokens * n_expert, 4.0);
        if ties {
            // Coarse values: many equal logits in every row (+ 0.0 turns -0.0 into 0.0: the CPU's
            // total order ranks -0.0 below 0.0, the kernel's comparison does not).
            logits.iter_mut().for_each(|v| *v = (*v * 2.0).round() + 0.0);
        }
        let gpu = gpu();
        let mut ids = gpu.upload(&vec![u32::MAX; n_tokens * k]).unwrap();
        let mut weights = poisoned(n_tokens * k);
        gpu.top_k_experts(&gpu.upload(&logits).unwrap(), n_expert, k, &mut ids, &mut weights).unwrap();
        let (ids, weights) = (gpu.download(&ids).unwrap(), gpu.download(&weights).unwrap());
        for t in 0..n_tokens {
            let expected = top_k_softmax(&logits[t * n_expert..(t + 1) * n_expert], k);
            let expected_ids: Vec<u32> = expected.iter().map(|&(e, _)| e as u32).collect();
            prop_assert_eq!(&ids[t * k..(t + 1) * k], &expected_ids[..], "token {}", t);
            for (j, &(_, w)) in expected.iter().enumerate() {
                prop_assert!((weights[t * k + j] as f64 - w).abs() <= 1e-6, "token {} slot {}: {} vs {}", t, j, weights[t * k + j], w);
            }
        }
    }

    /// gpt-oss's clamped SwiGLU over rows [gate; up] against engine::cpu::activation::swiglu_oai
    /// (f64), values spread past the clamp limit; the 8-bit copy against quantize_q8 of the
    /// kernel's own f32 output, bit for bit.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn swiglu_oai_matches_the_cpu(slots in 1usize..=6, blocks in 1usize..=100, seed: u64) {
        use engine::cpu::activation::swiglu_oai;
        let n = 32 * blocks;
        let gate_up = random_values(seed, slots * 2 * n, 12.0);
        let expected: Vec<f32> = (0..slots)
            .flat_map(|s| {
                let row = &gate_up[s * 2 * n..(s + 1) * 2 * n];
                (0..n).map(move |i| swiglu_oai(row[i], row[n + i], 1.702, 7.0))
            })
            .collect();
        let gpu = gpu();
        let input = gpu.upload(&gate_up).unwrap();
        let mut out = poisoned(slots * n);
        let mut q8 = gpu.q8_activations(slots * n).unwrap();
        gpu.swiglu_oai(&input, n, 1.702, 7.0, Some(&mut out), Some(&mut q8)).unwrap();
        let out = gpu.download(&out).unwrap();
        assert_close(&format!("swiglu_oai {slots}x{n}"), &out, &expected, 1e-6);
        let mut separate = gpu.q8_activations(slots * n).unwrap();
        gpu.quantize_q8(&gpu.upload(&out).unwrap(), &mut separate).unwrap();
        prop_assert_eq!(q8.download(gpu).unwrap(), separate.download(gpu).unwrap());
    }

    /// The weighted sum of each token's expert outputs against an f64 sum.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn moe_weighted_sum_matches_the_cpu(n_tokens in 1usize..=20, k in 1usize..=8, dim in 1usize..=3000, seed: u64) {
        let y = random_values(seed, n_tokens * k * dim, 3.0);
        let weights = random_values(seed ^ 3, n_tokens * k, 1.0);
        let expected: Vec<f32> = (0..n_tokens * dim)
            .map(|g| {
                let (t, i) = (g / dim, g % dim);
                (0..k).map(|j| weights[t * k + j] as f64 * y[(t * k + j) * dim + i] as f64).sum::<f64>() as f32
            })
            .collect();
        let gpu = gpu();
        let mut out = poisoned(n_tokens * dim);
        gpu.moe_weighted_sum(&gpu.upload(&y).unwrap(), &gpu.upload(&weights).unwrap(), k, &mut out).unwrap();
        assert_close(&format!("moe_weighted_sum {n_tokens}x{k}x{dim}"), &gpu.download(&out).unwrap(), &expected, 1e-6);
    }
}
