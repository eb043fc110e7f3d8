//! Each step against an independent reading of its definition, the whole chain against a plain
//! full-sort reference, and known values.

use super::*;
use proptest::prelude::*;

fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let w: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
    let total: f64 = w.iter().sum();
    w.iter().map(|x| x / total).collect()
}

/// Logits with repeats (ties), and now and then a few hundred of them.
fn logits_strategy() -> impl Strategy<Value = Vec<f32>> {
    let value = prop_oneof![4 => -8.0f32..8.0, 1 => (-4i32..4).prop_map(|v| v as f32)];
    prop_oneof![
        4 => prop::collection::vec(value.clone(), 1..60),
        1 => prop::collection::vec(value, 200..700),
    ]
}

fn config(top_k: usize, top_p: f32, min_p: f32, temperature: f32, seed: u64) -> SamplerConfig {
    SamplerConfig { top_k, top_p, min_p, temperature, seed, ..SamplerConfig::default() }
}

/// Steps 2 to 4 done the obvious way: a full sort, then each filter on the sorted list.
fn reference_candidates(logits: &[f32], c: &SamplerConfig) -> Vec<u32> {
    let mut sorted: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan() && **v > f32::NEG_INFINITY)
        .map(|(i, &v)| (i as u32, v))
        .collect();
    sorted.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
    if c.top_k > 0 {
        sorted.truncate(c.top_k);
    }
    let probs = softmax(&sorted.iter().map(|&(_, v)| v).collect::<Vec<_>>());
    if c.top_p < 1.0 {
        let mut mass = 0.0;
        let keep = probs.iter().position(|p| {
            mass += p;
            mass >= c.top_p as f64
        });
        sorted.truncate(keep.map_or(sorted.len(), |i| i + 1));
    }
    if c.min_p > 0.0 {
        let keep = probs.iter().take(sorted.len()).take_while(|&&p| p >= c.min_p as f64 * probs[0]).count();
        sorted.truncate(keep.max(1));
    }
    sorted.into_iter().map(|(i, _)| i).collect()
}

proptest! {
    #[test]
    fn greedy_returns_the_first_argmax(mut logits in logits_strategy(), nan_at in any::<prop::sample::Index>()) {
        let nan_at = nan_at.index(logits.len());
        logits[nan_at] = f32::NAN;
        let mut sampler = Sampler::new(SamplerConfig::greedy());
        match sampler.sample(&logits) {
            Ok(token) => {
                let token = token as usize;
                let max = logits.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max);
                prop_assert_eq!(logits[token], max);
                prop_assert!(logits[..token].iter().all(|&v| v.is_nan() || v < max));
            }
            Err(e) => {
                prop_assert_eq!(e, SamplerError::NoCandidates);
                prop_assert_eq!(logits.len(), 1);
            }
        }
    }

    #[test]
    fn top_k_stays_in_the_k_largest(logits in logits_strategy(), k in 1usize..10, seed: u64) {
        let mut sampler = Sampler::new(config(k, 1.0, 0.0, 1.5, seed));
        let mut sorted = logits.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = sorted[k.min(sorted.len()) - 1];
        let candidates = sampler.candidates(&logits).unwrap();
        prop_assert_eq!(candidates.len(), k.min(logits.len()));
        for _ in 0..20 {
            let token = sampler.sample(&logits).unwrap() as usize;
            prop_assert!(logits[token] >= kth);
        }
    }

    #[test]
    fn top_p_stays_in_the_nucleus(logits in logits_strategy(), p in 0.05f32..1.0, seed: u64) {
        let mut sampler = Sampler::new(config(0, p, 0.0, 1.0, seed));
        // The nucleus, computed independently: tokens by probability until the mass reaches p.
        let probs = softmax(&logits);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let mut mass = 0.0;
        let mut nucleus = Vec::new();
        for &i in &order {
            nucleus.push(i);
            mass += probs[i];
            if mass >= p as f64 { break; }
        }
        let smallest_kept = nucleus.iter().map(|&i| probs[i]).fold(f64::INFINITY, f64::min);
        for _ in 0..20 {
            let token = sampler.sample(&logits).unwrap() as usize;
            // Rounding may differ at the boundary, between tokens of the same probability.
            prop_assert!(probs[token] >= smallest_kept * (1.0 - 1e-9), "token {} outside the nucleus", token);
        }
    }

    #[test]
    fn min_p_drops_unlikely_tokens(logits in logits_strategy(), min_p in 0.01f32..1.5, seed: u64) {
        let mut sampler = Sampler::new(config(0, 1.0, min_p, 2.0, seed));
        let probs = softmax(&logits);
        let best = probs.iter().copied().fold(0.0, f64::max);
        for _ in 0..20 {
            let token = sampler.sample(&logits).unwrap() as usize;
            // min_p above 1 still leaves the most likely token.
            prop_assert!(probs[token] >= (min_p as f64).min(1.0) * best * (1.0 - 1e-6));
        }
    }

    #[test]
    fn the_chain_matches_a_full_sort_reference(
        logits in logits_strategy(),
        top_k in prop_oneof![Just(0usize), 1usize..300],
        top_p in prop_oneof![Just(1.0f32), 0.0f32..1.0],
        min_p in prop_oneof![Just(0.0f32), 0.0f32..0.5],
    ) {
        let c = config(top_k, top_p, min_p, 1.0, 0);
        let ours: Vec<u32> = Sampler::new(c.clone()).candidates(&logits).unwrap().into_iter().map(|(t, _)| t).collect();
        let reference = reference_candidates(&logits, &c);
        // Sums in another order may move a token at a probability boundary, never more than one.
        let n = ours.len().min(reference.len());
        prop_assert_eq!(&ours[..n], &reference[..n]);
        prop_assert!(ours.len().abs_diff(reference.len()) <= 1, "{} vs {} candidates", ours.len(), reference.len());
    }

    #[test]
    fn penalties_touch_exactly_the_window(
        logits in logits_strategy(),
        window in prop::collection::vec(0u32..80, 0..20),
        last_n in 0usize..12,
        r in 0.5f32..3.0,
        presence in -1.0f32..2.0,
        frequency in -1.0f32..1.0,
    ) {
        let c = SamplerConfig { repeat_penalty: r, repeat_last_n: last_n, presence_penalty: presence, frequency_penalty: frequency, ..SamplerConfig::default() };
        let mut sampler = Sampler::new(c);
        for &t in &window { sampler.accept(t); }
        let recent = &window[window.len().saturating_sub(last_n)..];
        prop_assert_eq!(sampler.window().collect::<Vec<_>>(), recent.to_vec());
        let out = sampler.penalised(&logits);
        prop_assert_eq!(out.len(), logits.len());
        for (i, (&before, &after)) in logits.iter().zip(&out).enumerate() {
            let count = recent.iter().filter(|&&t| t as usize == i).count();
            if count == 0 {
                prop_assert_eq!(before.to_bits(), after.to_bits(), "token {} is not in the window", i);
            } else {
                let scaled = if before > 0.0 { before / r } else { before * r };
                let expected = scaled - presence - frequency * count as f32;
                prop_assert!((after - expected).abs() <= 1e-5 * expected.abs().max(1.0), "token {}: {} -> {}, expected {}", i, before, after, expected);
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens(logits in logits_strategy(), seed: u64) {
        let c = config(0, 0.9, 0.01, 1.0, seed);
        let (mut a, mut b) = (Sampler::new(c.clone()), Sampler::new(c));
        let first: Vec<u32> = (0..10).map(|_| a.sample(&logits).unwrap()).collect();
        prop_assert_eq!(&first, &(0..10).map(|_| b.sample(&logits).unwrap()).collect::<Vec<_>>());
        a.reset();
        prop_assert_eq!(first, (0..10).map(|_| a.sample(&logits).unwrap()).collect::<Vec<_>>());
    }

    #[test]
    fn different_seeds_give_different_tokens(seed: u64, other: u64) {
        prop_assume!(seed != other);
        // 64 equally likely tokens, 16 draws: the same sequence by chance has probability 2^-96.
        let logits = [0.0f32; 64];
        let c = config(0, 1.0, 0.0, 1.0, seed);
        let mut a = Sampler::new(c.clone());
        let mut b = Sampler::new(SamplerConfig { seed: other, ..c });
        let draws = |s: &mut Sampler| (0..16).map(|_| s.sample(&logits).unwrap()).collect::<Vec<_>>();
        prop_assert_ne!(draws(&mut a), draws(&mut b));
    }
}

/// Pearson chi-square of `n` draws against softmax(logits / t); 3 degrees of freedom.
fn chi_square(logits: &[f32; 4], t: f32, seed: u64, n: usize) -> f64 {
    let mut sampler = Sampler::new(config(0, 1.0, 0.0, t, seed));
    let mut counts = [0usize; 4];
    for _ in 0..n {
        counts[sampler.sample(logits).unwrap() as usize] += 1;
    }
    let scaled: Vec<f32> = logits.iter().map(|v| v / t).collect();
    let expected = softmax(&scaled);
    counts.iter().zip(&expected).map(|(&c, &p)| (c as f64 - n as f64 * p).powi(2) / (n as f64 * p)).sum()
}

#[test]
fn temperature_samples_follow_the_softmax() {
    let logits = [1.0f32, 0.0, -1.0, 2.0];
    for (t, seed) in [(0.7, 7), (1.0, 8), (1.6, 9)] {
        let chi2 = chi_square(&logits, t, seed, 40_000);
        // 16.27 is the 0.1% critical value for 3 degrees of freedom.
        assert!(chi2 < 16.27, "temperature {t}: chi-square {chi2:.1}");
    }
    // And the test can fail: draws at T = 1.6 judged against the softmax at T = 0.7.
    let mut sampler = Sampler::new(config(0, 1.0, 0.0, 1.6, 7));
    let mut counts = [0usize; 4];
    for _ in 0..40_000 {
        counts[sampler.sample(&logits).unwrap() as usize] += 1;
    }
    let expected = softmax(&logits.map(|v| v / 0.7));
    let chi2: f64 =
        counts.iter().zip(&expected).map(|(&c, &p)| (c as f64 - 40_000.0 * p).powi(2) / (40_000.0 * p)).sum();
    assert!(chi2 > 100.0, "chi-square {chi2:.1} does not tell the temperatures apart");
}

#[test]
fn known_penalties() {
    let c = SamplerConfig {
        repeat_penalty: 2.0,
        frequency_penalty: 0.5,
        presence_penalty: 0.25,
        repeat_last_n: 3,
        ..SamplerConfig::default()
    };
    let mut sampler = Sampler::new(c);
    for t in [2, 0, 1, 0] {
        sampler.accept(t); // the first 2 slides out of the window of 3
    }
    let out = sampler.penalised(&[2.0, -2.0, 1.0, 0.0]);
    // 0: 2 / 2 - (2 * 0.5 + 0.25); 1: -2 * 2 - (0.5 + 0.25); 2 and 3 untouched.
    assert_eq!(out, vec![-0.25, -4.75, 1.0, 0.0]);
}

#[test]
fn known_filters() {
    // Probabilities 0.5, 0.25, 0.125, 0.125.
    let logits = [0.5f32.ln(), 0.25f32.ln(), 0.125f32.ln(), 0.125f32.ln()];
    let kept = |top_k, top_p, min_p| -> Vec<u32> {
        let sampler = Sampler::new(config(top_k, top_p, min_p, 1.0, 0));
        sampler.candidates(&logits).unwrap().into_iter().map(|(t, _)| t).collect()
    };
    assert_eq!(kept(0, 1.0, 0.0), [0, 1, 2, 3]);
    assert_eq!(kept(3, 1.0, 0.0), [0, 1, 2], "the tie at 2 and 3 goes to the lower id");
    assert_eq!(kept(0, 0.4, 0.0), [0]);
    assert_eq!(kept(0, 0.74, 0.0), [0, 1]);
    assert_eq!(kept(0, 0.76, 0.0), [0, 1, 2]);
    assert_eq!(kept(0, 0.0, 0.0), [0], "top-p keeps at least one");
    assert_eq!(kept(0, 1.0, 0.3), [0, 1]);
    assert_eq!(kept(0, 1.0, 0.2), [0, 1, 2, 3]);
    assert_eq!(kept(0, 1.0, 2.0), [0], "min-p keeps the most likely");
    // top-k first: within the top 2, probabilities are 2/3 and 1/3, so top-p 0.6 keeps one.
    assert_eq!(kept(2, 0.6, 0.0), [0]);
    assert_eq!(kept(0, 0.6, 0.0), [0, 1]);
}

#[test]
fn temperature_zero_is_greedy_after_penalties() {
    let c = SamplerConfig { repeat_penalty: 4.0, ..SamplerConfig::greedy() };
    let mut sampler = Sampler::new(c);
    assert_eq!(sampler.sample(&[1.0, 3.0, 2.0, 3.0]), Ok(1), "ties go to the lower id");
    sampler.accept(1);
    assert_eq!(sampler.sample(&[1.0, 3.0, 2.0, 3.0]), Ok(3));
    let mut sampler = Sampler::new(SamplerConfig { temperature: -1.0, ..SamplerConfig::default() });
    assert_eq!(sampler.sample(&[0.0, 5.0, 5.0]), Ok(1));
}

#[test]
fn infinite_and_nan_logits() {
    let mut sampler = Sampler::new(config(0, 1.0, 0.0, 1.0, 1));
    for _ in 0..100 {
        assert_eq!(sampler.sample(&[0.0, f32::INFINITY, f32::NAN, 100.0]), Ok(1));
        assert_eq!(sampler.sample(&[f32::NAN, f32::NEG_INFINITY, -1e30, f32::NAN]), Ok(2));
    }
    let mut draws = [0usize; 2];
    for _ in 0..200 {
        draws[sampler.sample(&[f32::INFINITY, f32::INFINITY]).unwrap() as usize] += 1;
    }
    assert!(draws[0] > 50 && draws[1] > 50, "two +inf logits are equally likely: {draws:?}");
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let mut sampler = Sampler::new(SamplerConfig::default());
    assert_eq!(sampler.sample(&[]), Err(SamplerError::Empty));
    assert_eq!(sampler.sample(&[f32::NAN, f32::NEG_INFINITY]), Err(SamplerError::NoCandidates));
    assert_eq!(sampler.sample(&[f32::NAN, 0.5]), Ok(1));
    let mut greedy = Sampler::new(SamplerConfig::greedy());
    assert_eq!(greedy.sample(&[]), Err(SamplerError::Empty));
    assert_eq!(greedy.sample(&[f32::NAN, f32::NAN]), Err(SamplerError::NoCandidates));

    let invalid = [
        SamplerConfig { temperature: f32::NAN, ..SamplerConfig::default() },
        SamplerConfig { repeat_penalty: 0.0, ..SamplerConfig::default() },
        SamplerConfig { repeat_penalty: f32::INFINITY, ..SamplerConfig::default() },
        SamplerConfig { frequency_penalty: f32::NAN, ..SamplerConfig::default() },
        SamplerConfig { top_p: f32::NAN, ..SamplerConfig::default() },
    ];
    for c in invalid {
        let err = Sampler::new(c.clone()).sample(&[1.0, 2.0]).unwrap_err();
        assert!(matches!(err, SamplerError::InvalidConfig { .. }), "{c:?}: {err}");
    }
    let message = Sampler::new(SamplerConfig { repeat_penalty: -1.0, ..SamplerConfig::default() })
        .sample(&[1.0])
        .unwrap_err()
        .to_string();
    assert!(message.contains("repeat_penalty = -1"), "{message}");
}

/// Found by the sampler fuzz target: a top-k past the vocabulary sized the heap by k, and
/// `usize::MAX` panicked with "capacity overflow" (a large k short of that aborted on the
/// allocation). It keeps every token, like a k of exactly the vocabulary's size.
#[test]
fn top_k_past_the_vocabulary_keeps_every_token() {
    let logits = [0.5, 2.0, -1.0, 2.0];
    for k in [4, 5, 1 << 40, usize::MAX] {
        let sampler = Sampler::new(config(k, 1.0, 0.0, 1.0, 7));
        let ids: Vec<u32> = sampler.candidates(&logits).unwrap().iter().map(|c| c.0).collect();
        assert_eq!(ids, [1, 3, 0, 2], "top_k = {k}");
        assert!(Sampler::new(config(k, 0.9, 0.05, 0.8, 7)).sample(&logits).is_ok());
    }
}

#[test]
fn large_vocabulary() {
    // 200k logits, a few thousand of them close to the top and spread over many of top-p's bins.
    let logits: Vec<f32> = (0..200_000u32)
        .map(|i| if i % 64 == 0 { 10.0 - (i as f32) * 1e-5 } else { -(i as f32) * 1e-4 })
        .collect();
    let mut sampler = Sampler::new(config(0, 0.95, 0.0, 1.0, 3));
    let candidates = sampler.candidates(&logits).unwrap();
    assert!(candidates.len() > 256 && candidates.len() < 3125, "{} candidates", candidates.len());
    assert!(candidates.windows(2).all(|w| most_likely_first(&w[0], &w[1]) == Ordering::Less));
    for _ in 0..10 {
        assert_eq!(sampler.sample(&logits).unwrap() % 64, 0);
    }
    let mut defaults = Sampler::new(SamplerConfig::default());
    // top-k 40 leaves 40 near-equal tokens, of which top-p 0.95 keeps all but one or two.
    assert!((35..=40).contains(&defaults.candidates(&logits).unwrap().len()));
    assert_eq!(defaults.sample(&logits).unwrap() % 64, 0);
}
