//! gpu/src/sampling.rs against the CPU sampler (engine/src/sampler/mod.rs).
//! - argmax_rows: `engine::generate::argmax` exactly, on rows with ties, -inf, NaN, +inf, signed
//!   zeros, up to 201,088 logits.
//! - sample_rows: the token the CPU's candidates (`Sampler::candidates`, most likely first) give
//!   for the same uniform, drawn as the CPU's `draw` does but in that order. The GPU sums in f32
//!   and in another order, so a disagreement is allowed only where a running probability (the
//!   top-p walk's, or the draw's) lies within 1e-5 of its target.
//! - The draw's distribution: 20,000 rows of the same 50 logits with seeded uniforms, chi-square
//!   against the CPU's candidate probabilities below its p = 0.001 critical value.
//!
//! The CPU sampler itself draws in its filter's order (no sort), so for one uniform it may pick
//! another token than the GPU; its distribution is the same, which
//! `cpu_order_does_not_change_the_distribution` checks without a GPU.

use crate::{config, gpu, random_values, size};
use engine::sampler::{Sampler, SamplerConfig};
use host::sampling::RowSampling;
use proptest::prelude::*;

/// Relative distance from a target within which the GPU may disagree with the CPU.
const BOUNDARY: f64 = 1e-5;

/// Logits with ties (values on a grid), and where `specials`, some -inf, NaN, +inf and zeros of
/// both signs.
fn logits(seed: u64, n: usize, scale: f32, specials: bool) -> Vec<f32> {
    let mut x: Vec<f32> = random_values(seed, n, scale).iter().map(|v| (v * 8.0).round() / 8.0).collect();
    if specials {
        let picks = random_values(seed ^ 0x5eed, n, 1.0);
        for (v, p) in x.iter_mut().zip(picks) {
            *v = match ((p + 1.0) * 500.0) as u32 {
                0..=9 => f32::NEG_INFINITY,
                10..=14 => f32::NAN,
                15 => -0.0,
                16 => 0.0,
                17 if seed.is_multiple_of(4) => f32::INFINITY,
                _ => *v,
            };
        }
    }
    x
}

/// Uniforms in [0, 1) from a seed, in f32 as the host should make them (24 bits).
fn uniforms(seed: u64, count: usize) -> Vec<f32> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

fn sampler(s: RowSampling) -> Sampler {
    Sampler::new(SamplerConfig {
        temperature: s.temperature,
        top_k: s.top_k as usize,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: 1.0,
        repeat_last_n: 0,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        seed: 0,
    })
}

/// The CPU's choice for one row: the token, and whether a running probability came within
/// [`BOUNDARY`] of its target (where f32 summation may decide otherwise).
#[derive(Debug)]
struct Choice {
    token: u32,
    near_boundary: bool,
}

/// Whether any running sum of `weights` lies within BOUNDARY (relative to the total) of `target`.
fn near(weights: &[f64], target: f64) -> bool {
    let total: f64 = weights.iter().sum();
    let mut running = 0.0;
    weights.iter().any(|w| {
        running += w;
        (running - target).abs() <= BOUNDARY * total
    })
}

fn cpu_choice(logits: &[f32], s: RowSampling) -> Choice {
    if s.temperature <= 0.0 {
        let clean: Vec<f32> = logits.iter().map(|&v| if v == f32::INFINITY { f32::MAX } else { v }).collect();
        return Choice { token: engine::generate::argmax(&clean), near_boundary: false };
    }
    let Ok(candidates) = sampler(s).candidates(logits) else {
        return Choice { token: 0, near_boundary: false }; // nothing above -inf
    };
    let mut near_boundary = false;
    if s.top_p < 1.0 {
        // The top-p walk, over what top-k left.
        let after_top_k = sampler(RowSampling { top_p: 1.0, min_p: 0.0, ..s }).candidates(logits).unwrap();
        let max = after_top_k[0].1 as f64;
        let weights: Vec<f64> = after_top_k.iter().map(|&(_, v)| (v as f64 - max).exp()).collect();
        near_boundary |= near(&weights, s.top_p as f64 * weights.iter().sum::<f64>());
    }
    // engine::sampler's draw, over the candidates most likely first.
    let max = candidates[0].1 as f64;
    let t = s.temperature as f64;
    let weights: Vec<f64> = candidates.iter().map(|&(_, v)| ((v as f64 - max) / t).exp()).collect();
    let target = s.uniform as f64 * weights.iter().sum::<f64>();
    near_boundary |= near(&weights, target);
    let mut mass = 0.0;
    for (&(token, _), w) in candidates.iter().zip(&weights) {
        mass += w;
        if mass > target {
            return Choice { token, near_boundary };
        }
    }
    Choice { token: candidates[0].0, near_boundary }
}

fn settings_strategy() -> impl Strategy<Value = RowSampling> {
    (
        prop_oneof![Just(0.0f32), Just(0.3), Just(0.8), Just(1.0), Just(1.7)],
        prop_oneof![Just(0u32), Just(1), Just(5), Just(40), Just(1000), Just(u32::MAX)],
        prop_oneof![Just(1.0f32), Just(0.95), Just(0.5), Just(0.0)],
        prop_oneof![Just(0.0f32), Just(0.05), Just(0.5), Just(1.5)],
    )
        .prop_map(|(temperature, top_k, top_p, min_p)| RowSampling {
            temperature,
            top_k,
            top_p,
            min_p,
            uniform: 0.0,
        })
}

/// GPU picks for `rows` rows of `x` [rows, n] with `settings`.
fn gpu_sample(x: &[f32], rows: usize, n: usize, settings: &[RowSampling]) -> Vec<u32> {
    let gpu = gpu();
    let x_gpu = gpu.upload(x).unwrap();
    let settings_gpu = gpu.upload(settings).unwrap();
    let mut out = gpu.upload(&vec![u32::MAX; rows]).unwrap();
    gpu.sample_rows(&x_gpu, rows, n, &settings_gpu, &mut out).unwrap();
    gpu.download(&out).unwrap()
}

fn gpu_argmax(x: &[f32], rows: usize, n: usize) -> Vec<u32> {
    let gpu = gpu();
    let x_gpu = gpu.upload(x).unwrap();
    let mut out = gpu.upload(&vec![u32::MAX; rows]).unwrap();
    gpu.argmax_rows(&x_gpu, rows, n, &mut out).unwrap();
    gpu.download(&out).unwrap()
}

proptest! {
    #![proptest_config(config(40))]

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn argmax_rows_matches_cpu(rows in 1usize..=6, n in prop_oneof![size(210_000), Just(201_088)], seed: u64, scale in prop_oneof![Just(1.0f32), Just(30.0f32)], masked in 0usize..4) {
        let mut x = logits(seed, rows * n, scale, true);
        if masked == 0 {
            // A row of nothing but -inf and NaN gives 0.
            for (i, v) in x[(rows - 1) * n..].iter_mut().enumerate() {
                *v = if i % 3 == 0 { f32::NAN } else { f32::NEG_INFINITY };
            }
        }
        let expected: Vec<u32> = x.chunks(n).map(engine::generate::argmax).collect();
        prop_assert_eq!(gpu_argmax(&x, rows, n), expected);
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn sample_rows_matches_cpu(rows in 1usize..=8, n in prop_oneof![size(210_000), Just(201_088)], seed: u64, scale in prop_oneof![Just(1.0f32), Just(4.0f32), Just(30.0f32)], specials: bool, settings in proptest::collection::vec(settings_strategy(), 8)) {
        let x = logits(seed, rows * n, scale, specials);
        let draws = uniforms(seed ^ 0xd4a7, rows);
        let settings: Vec<RowSampling> =
            settings[..rows].iter().zip(&draws).map(|(&s, &uniform)| RowSampling { uniform, ..s }).collect();
        let picks = gpu_sample(&x, rows, n, &settings);
        for (r, (row, &s)) in x.chunks(n).zip(&settings).enumerate() {
            let cpu = cpu_choice(row, s);
            prop_assert!(
                picks[r] == cpu.token || cpu.near_boundary,
                "row {} of {}x{}, {:?}: GPU {} CPU {:?}", r, rows, n, s, picks[r], cpu
            );
        }
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn greedy_sampling_is_argmax(rows in 1usize..=6, n in size(210_000), seed: u64) {
        let x = logits(seed, rows * n, 5.0, true);
        let settings: Vec<RowSampling> = (0..rows)
            .map(|r| RowSampling { temperature: -(r as f32 % 2.0), top_k: 3, top_p: 0.5, min_p: 0.2, uniform: 0.7 })
            .collect();
        prop_assert_eq!(gpu_sample(&x, rows, n, &settings), gpu_argmax(&x, rows, n));
    }
}

/// Rows where the top-k boundary falls inside a run of ties, uniforms at 0 and just below 1, and
/// the settings' edges (top_p 0, min_p above 1, a tiny temperature).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn sample_rows_edges() {
    let n = 3000;
    let mut x = vec![-5.0f32; n];
    for (i, v) in x.iter_mut().enumerate().step_by(7) {
        *v = 1.0 + (i % 3) as f32; // runs of ties at 1, 2 and 3
    }
    let cases = [
        RowSampling { temperature: 1.0, top_k: 10, top_p: 1.0, min_p: 0.0, uniform: 0.999_999_94 },
        RowSampling { temperature: 1.0, top_k: 10, top_p: 1.0, min_p: 0.0, uniform: 0.0 },
        RowSampling { temperature: 1.0, top_k: 200, top_p: 0.3, min_p: 0.0, uniform: 0.5 },
        RowSampling { temperature: 1.0, top_k: 0, top_p: 0.0, min_p: 0.0, uniform: 0.9 },
        RowSampling { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 1.5, uniform: 0.9 },
        RowSampling { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.4, uniform: 0.9 },
        RowSampling { temperature: 1e-30, top_k: 0, top_p: 1.0, min_p: 0.0, uniform: 0.9 },
        RowSampling { temperature: 2.0, top_k: 1, top_p: 1.0, min_p: 0.0, uniform: 0.9 },
        RowSampling { temperature: 2.0, top_k: 0, top_p: 1.0, min_p: 0.0, uniform: 0.25 },
    ];
    let rows = cases.len();
    let all: Vec<f32> = (0..rows).flat_map(|_| x.iter().copied()).collect();
    let picks = gpu_sample(&all, rows, n, &cases);
    for (r, &s) in cases.iter().enumerate() {
        let cpu = cpu_choice(&x, s);
        assert!(picks[r] == cpu.token || cpu.near_boundary, "{s:?}: GPU {} CPU {cpu:?}", picks[r]);
    }
}

/// Shapes that do not match the buffers are errors, not launches.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn sampling_shapes_are_checked() {
    let gpu = gpu();
    let x = gpu.upload(&[0.0f32; 12]).unwrap();
    let settings = gpu.upload(&[RowSampling::default(); 3]).unwrap();
    let mut out = gpu.upload(&[0u32; 3]).unwrap();
    assert!(gpu.sample_rows(&x, 3, 5, &settings, &mut out).is_err());
    assert!(gpu.sample_rows(&x, 4, 3, &settings, &mut out).is_err());
    assert!(gpu.sample_rows(&x, 3, 0, &settings, &mut out).is_err());
    assert!(gpu.argmax_rows(&x, 2, 6, &mut out).is_err());
    gpu.sample_rows(&x, 3, 4, &settings, &mut out).unwrap();
    gpu.argmax_rows(&x, 3, 4, &mut out).unwrap();
}

/// 50 fixed logits and the settings of the statistical test.
fn fixed_row() -> (Vec<f32>, RowSampling) {
    let x: Vec<f32> = random_values(2024, 50, 3.0);
    (x, RowSampling { temperature: 0.9, top_k: 30, top_p: 0.97, min_p: 0.01, uniform: 0.0 })
}

/// Chi-square of `counts` against the probabilities of `candidates` (merging the unlikeliest
/// candidates until every bin expects at least 5), with its p = 0.001 critical value
/// (Wilson-Hilferty). Panics on a pick outside the candidates.
fn chi_square(picks: &[u32], logits: &[f32], s: RowSampling) -> (f64, f64) {
    let candidates = sampler(s).candidates(logits).unwrap();
    let max = candidates[0].1 as f64;
    let weights: Vec<f64> =
        candidates.iter().map(|&(_, v)| ((v as f64 - max) / s.temperature as f64).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut counts = vec![0usize; candidates.len()];
    for &p in picks {
        let i = candidates.iter().position(|&(t, _)| t == p).unwrap_or_else(|| panic!("{p} is no candidate"));
        counts[i] += 1;
    }
    let draws = picks.len() as f64;
    let (mut bins, mut pending) = (Vec::new(), (0.0, 0usize));
    for (w, c) in weights.iter().zip(&counts) {
        pending = (pending.0 + w / total * draws, pending.1 + c);
        if pending.0 >= 5.0 {
            bins.push(pending);
            pending = (0.0, 0);
        }
    }
    if let Some(last) = bins.last_mut() {
        *last = (last.0 + pending.0, last.1 + pending.1);
    }
    let statistic: f64 = bins.iter().map(|&(e, o)| (o as f64 - e).powi(2) / e).sum();
    let df = (bins.len() - 1).max(1) as f64;
    let z = 3.090_232; // the standard normal's 0.999 quantile
    let critical = df * (1.0 - 2.0 / (9.0 * df) + z * (2.0 / (9.0 * df)).sqrt()).powi(3);
    (statistic, critical)
}

const DRAWS: usize = 20_000;

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn draws_follow_the_cpu_probabilities() {
    let (x, s) = fixed_row();
    let settings: Vec<RowSampling> =
        uniforms(77, DRAWS).into_iter().map(|uniform| RowSampling { uniform, ..s }).collect();
    let all: Vec<f32> = (0..DRAWS).flat_map(|_| x.iter().copied()).collect();
    let picks = gpu_sample(&all, DRAWS, x.len(), &settings);
    let (statistic, critical) = chi_square(&picks, &x, s);
    assert!(
        statistic < critical,
        "chi-square {statistic:.1} above the p = 0.001 critical value {critical:.1}"
    );
}

/// Without a GPU: the CPU twin above (candidates most likely first) draws with the distribution
/// of the CPU sampler's own `sample` (its filter's order), so matching the twin token for token is
/// matching the sampler in distribution.
#[test]
fn cpu_order_does_not_change_the_distribution() {
    let (x, s) = fixed_row();
    let twin: Vec<u32> = uniforms(77, DRAWS)
        .into_iter()
        .map(|uniform| cpu_choice(&x, RowSampling { uniform, ..s }).token)
        .collect();
    let (statistic, critical) = chi_square(&twin, &x, s);
    assert!(statistic < critical, "twin: chi-square {statistic:.1} above {critical:.1}");
    let mut sampler = sampler(s);
    let own: Vec<u32> = (0..DRAWS).map(|_| sampler.sample(&x).unwrap()).collect();
    let (statistic, critical) = chi_square(&own, &x, s);
    assert!(statistic < critical, "sampler: chi-square {statistic:.1} above {critical:.1}");
}
