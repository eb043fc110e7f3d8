//! gpu/src/attention/{paged,prefill,decode}.rs against engine::cpu::attention.
//!
//! Every test builds a paged cache of two layers whose pools start full of f16 NaNs (so a kernel
//! that reads a slot nobody wrote shows), gives its sequences pages in turns (so that a sequence's
//! pages are not consecutive in the pool), and writes the keys and values of every position with
//! kv_write_paged into layer 1, tokens of all sequences shuffled in one batch. The CPU reference
//! reads the same keys and values rounded to f16 from plain per-sequence arrays, and accumulates
//! in f64; the GPU's error is then its f32 arithmetic only: relative error bound 1e-5.

use crate::{assert_close, config, gpu, poisoned, random_values, relative_error};
use engine::cpu::attention::{AttentionOptions as CpuOptions, causal_attention_with, round_f16};
use host::attention::{
    AttentionOptions, DecodeWorkspace, PAGE_SIZE, PagedKvCache, PagedKvShape, window_splits,
};
use host::f16;
use proptest::prelude::*;

const LAYER: usize = 1;
const BOUND: f64 = 1e-5;

/// (n_head_kv, query heads per KV head): MHA, GQA of the target models, groups that the decode
/// blocks' 1, 2, 4 or 8 heads do not divide (3, 7), and groups of more than 8 (several blocks).
fn heads() -> impl Strategy<Value = (usize, usize)> {
    prop::sample::select(vec![
        (1, 1),
        (4, 1),
        (8, 1),
        (2, 2),
        (2, 3),
        (2, 4),
        (4, 4),
        (1, 7),
        (2, 8),
        (1, 9),
        (1, 12),
        (2, 16),
    ])
}

fn head_dim() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![64usize, 80, 96, 128])
}

/// 0 (the whole context) half of the time, else a window from 1 to past the longest context.
fn window() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), 1usize..40, 1usize..4000]
}

/// The keys and values of each sequence as the cache holds them: [len, n_head_kv, head_dim],
/// rounded to f16.
struct Written {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

/// A cache with sequences of lengths `lens`, every position written through kv_write_paged.
fn fill_cache(n_head_kv: usize, head_dim: usize, lens: &[usize], seed: u64) -> (PagedKvCache, Written) {
    let gpu = gpu();
    let pages: usize = lens.iter().map(|len| len.div_ceil(PAGE_SIZE)).sum();
    let max_pages = lens.iter().map(|len| len.div_ceil(PAGE_SIZE)).max().unwrap_or(0) + 1;
    let shape = PagedKvShape { n_pages: pages + 3, n_head_kv, head_dim };
    let mut cache = PagedKvCache::new(gpu, 2, shape, lens.len(), max_pages).unwrap();
    let nan = vec![f16::NAN; shape.pool_len()];
    for layer in 0..2 {
        let (keys, values) = cache.pools_mut(layer).unwrap();
        gpu.stream().memcpy_htod(&nan, keys).unwrap();
        gpu.stream().memcpy_htod(&nan, values).unwrap();
    }
    // Pages in turns: one page more for each sequence per round.
    for round in 1..max_pages {
        for (seq, &len) in lens.iter().enumerate() {
            cache.reserve(gpu, seq, len.min(round * PAGE_SIZE)).unwrap();
        }
    }

    let row = n_head_kv * head_dim;
    let keys: Vec<Vec<f32>> = lens
        .iter()
        .enumerate()
        .map(|(s, &len)| random_values(seed ^ (s as u64 * 77 + 1), len * row, 1.0))
        .collect();
    let values: Vec<Vec<f32>> = lens
        .iter()
        .enumerate()
        .map(|(s, &len)| random_values(seed ^ (s as u64 * 91 + 5), len * row, 1.0))
        .collect();
    // Every (sequence, position) once, in a scrambled order.
    let mut tokens: Vec<(u32, u32)> =
        lens.iter().enumerate().flat_map(|(s, &len)| (0..len as u32).map(move |p| (s as u32, p))).collect();
    let n = tokens.len();
    for i in 0..n {
        tokens.swap(i, (i * 7919 + seed as usize % 1009) % n);
    }
    let mut new_keys = Vec::with_capacity(n * row);
    let mut new_values = Vec::with_capacity(n * row);
    for &(s, p) in &tokens {
        new_keys.extend_from_slice(&keys[s as usize][p as usize * row..][..row]);
        new_values.extend_from_slice(&values[s as usize][p as usize * row..][..row]);
    }
    let seqs: Vec<u32> = tokens.iter().map(|t| t.0).collect();
    let positions: Vec<u32> = tokens.iter().map(|t| t.1).collect();
    let round = |v: Vec<Vec<f32>>| v.into_iter().map(|s| s.into_iter().map(round_f16).collect()).collect();
    if n == 0 {
        return (cache, Written { keys: round(keys), values: round(values) });
    }
    gpu.kv_write_paged(
        &mut cache,
        LAYER,
        &gpu.upload(&new_keys).unwrap(),
        &gpu.upload(&new_values).unwrap(),
        &gpu.upload(&seqs).unwrap(),
        &gpu.upload(&positions).unwrap(),
    )
    .unwrap();
    (cache, Written { keys: round(keys), values: round(values) })
}

/// assert_close at [`BOUND`], after printing the error (shown with `--nocapture`, so that a run
/// can report the worst case: `grep '^error-of'`).
fn check(kind: &str, what: &str, actual: &[f32], expected: &[f32]) {
    eprintln!("error-of {kind} {:.3e} {what}", relative_error(actual, expected));
    assert_close(what, actual, expected, BOUND);
}

fn sink_values(n_head: usize, seed: Option<u64>) -> Option<Vec<f32>> {
    // Sinks from -3 to 3: from nearly no weight to most of it.
    seed.map(|seed| random_values(seed, n_head, 3.0))
}

/// Shrinking bounded: every case moves up to ~100 MB to and from the GPU.
fn cases() -> ProptestConfig {
    ProptestConfig { max_shrink_iters: 32, max_shrink_time: 20_000, ..config(48) }
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn kv_write_paged_places_every_token(
        (n_head_kv, _) in heads(),
        head_dim in head_dim(),
        lens in prop::collection::vec(0usize..200, 1..5),
        seed: u64,
    ) {
        let (cache, written) = fill_cache(n_head_kv, head_dim, &lens, seed);
        // The expected pools: NaN except where the table puts each written position.
        let (table, max_pages) = (cache.allocator().table(), cache.allocator().max_pages());
        let shape = *cache.shape();
        let mut expected_keys = vec![f16::NAN.to_bits(); shape.pool_len()];
        let mut expected_values = expected_keys.clone();
        for (s, &len) in lens.iter().enumerate() {
            for p in 0..len {
                let page = table[s * max_pages + p / PAGE_SIZE] as usize;
                for h in 0..n_head_kv {
                    let at = ((page * n_head_kv + h) * PAGE_SIZE + p % PAGE_SIZE) * head_dim;
                    let from = (p * n_head_kv + h) * head_dim;
                    for d in 0..head_dim {
                        expected_keys[at + d] = f16::from_f32(written.keys[s][from + d]).to_bits();
                        expected_values[at + d] = f16::from_f32(written.values[s][from + d]).to_bits();
                    }
                }
            }
        }
        let gpu = gpu();
        let (keys, values) = cache.pools(LAYER).unwrap();
        let bits = |v: Vec<f16>| v.into_iter().map(|x| x.to_bits()).collect::<Vec<u16>>();
        prop_assert!(bits(gpu.download(keys).unwrap()) == expected_keys, "keys differ");
        prop_assert!(bits(gpu.download(values).unwrap()) == expected_values, "values differ");
        // The other layer is untouched.
        let (keys, _) = cache.pools(0).unwrap();
        prop_assert!(bits(gpu.download(keys).unwrap()).iter().all(|&b| b == f16::NAN.to_bits()));
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn attention_prefill_matches_cpu(
        (n_head_kv, group) in heads(),
        head_dim in head_dim(),
        n_tokens in prop_oneof![3 => 1usize..8, 6 => 8usize..=200, 1 => 200usize..=600],
        start in prop_oneof![Just(0usize), 1usize..=400],
        other_len in 0usize..100,
        window in window(),
        sinks in proptest::option::of(any::<u64>()),
        sharp: bool,
        seed: u64,
    ) {
        let n_head = n_head_kv * group;
        let len = start + n_tokens;
        // Sequence 1 is the one attended; sequence 0 only holds pages in between.
        let (cache, written) = fill_cache(n_head_kv, head_dim, &[other_len, len], seed);
        // Sharp: scores spread over tens, so that the running maximum changes often.
        let q = random_values(seed ^ 3, n_tokens * n_head * head_dim, if sharp { 16.0 } else { 1.5 });
        let sinks = sink_values(n_head, sinks);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut expected = vec![0.0; q.len()];
        let cpu = CpuOptions { n_head, n_head_kv, head_dim, scale, window, sinks: sinks.as_deref() };
        causal_attention_with(&q, &written.keys[1], &written.values[1], &mut expected, start, &cpu);

        let gpu = gpu();
        let sinks = sinks.map(|s| gpu.upload(&s).unwrap());
        let mut out = poisoned(q.len());
        let options = AttentionOptions { n_head, scale, window };
        gpu.attention_prefill(&cache, LAYER, 1, &gpu.upload(&q).unwrap(), &gpu.upload(&[start as u32]).unwrap(), sinks.as_ref(), &options, &mut out).unwrap();
        check(
            "prefill",
            &format!("prefill T={n_tokens} start={start} heads={n_head}/{n_head_kv} hd={head_dim} window={window} sinks={}", sinks.is_some()),
            &gpu.download(&out).unwrap(), &expected,
        );
    }

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn attention_decode_matches_cpu(
        (n_head_kv, group) in heads(),
        head_dim in head_dim(),
        lens in prop::collection::vec(prop_oneof![Just(0usize), Just(1usize), 2usize..=64, 65usize..=3000], 1..=5),
        window in window(),
        sinks in proptest::option::of(any::<u64>()),
        splits in prop_oneof![Just(None), prop::sample::select(vec![1usize, 2, 7, 64]).prop_map(Some)],
        sharp: bool,
        seed: u64,
    ) {
        let n_head = n_head_kv * group;
        let (cache, written) = fill_cache(n_head_kv, head_dim, &lens, seed);
        let row = n_head * head_dim;
        let q = random_values(seed ^ 3, lens.len() * row, if sharp { 16.0 } else { 1.5 });
        let sinks = sink_values(n_head, sinks);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let cpu = CpuOptions { n_head, n_head_kv, head_dim, scale, window, sinks: sinks.as_deref() };
        let mut expected = vec![0.0; q.len()];
        for (b, &len) in lens.iter().enumerate() {
            // The new token is at position len - 1; an idle slot (len 0) gives zeros.
            if len > 0 {
                let out = &mut expected[b * row..][..row];
                causal_attention_with(&q[b * row..][..row], &written.keys[b], &written.values[b], out, len - 1, &cpu);
            }
        }

        let gpu = gpu();
        let sinks = sinks.map(|s| gpu.upload(&s).unwrap());
        let mut workspace = match splits {
            Some(n) => DecodeWorkspace::new(gpu, lens.len(), n_head, head_dim, n).unwrap(),
            None => DecodeWorkspace::for_cache(gpu, &cache, lens.len(), n_head).unwrap(),
        };
        let mut out = poisoned(q.len());
        let options = AttentionOptions { n_head, scale, window };
        let lens_gpu = gpu.upload(&lens.iter().map(|&l| l as u32).collect::<Vec<_>>()).unwrap();
        gpu.attention_decode_paged(&cache, LAYER, &gpu.upload(&q).unwrap(), &lens_gpu, sinks.as_ref(), &options, &mut workspace, &mut out).unwrap();
        check(
            "decode",
            &format!("decode lens={lens:?} heads={n_head}/{n_head_kv} hd={head_dim} window={window} sinks={} splits={}", sinks.is_some(), window_splits(workspace.n_splits(), window)),
            &gpu.download(&out).unwrap(), &expected,
        );
    }
}

/// One long sequence through the split count the host picks for it (the bench's shape, smaller).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn attention_decode_long_context_matches_cpu() {
    let (n_head_kv, n_head, head_dim, len) = (2, 8, 128, 6000);
    let (cache, written) = fill_cache(n_head_kv, head_dim, &[len], 42);
    let q = random_values(7, n_head * head_dim, 4.0);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let cpu = CpuOptions { n_head, n_head_kv, head_dim, scale, window: 0, sinks: None };
    let mut expected = vec![0.0; q.len()];
    causal_attention_with(&q, &written.keys[0], &written.values[0], &mut expected, len - 1, &cpu);
    let gpu = gpu();
    let mut workspace = DecodeWorkspace::for_cache(gpu, &cache, 1, n_head).unwrap();
    assert!(workspace.n_splits() > 1, "one sequence should be split ({} splits)", workspace.n_splits());
    let mut out = poisoned(q.len());
    let options = AttentionOptions { n_head, scale, window: 0 };
    let lens = gpu.upload(&[len as u32]).unwrap();
    gpu.attention_decode_paged(
        &cache,
        LAYER,
        &gpu.upload(&q).unwrap(),
        &lens,
        None,
        &options,
        &mut workspace,
        &mut out,
    )
    .unwrap();
    check("long", "decode len=6000", &gpu.download(&out).unwrap(), &expected);
}

/// A workspace for a full batch of 64 used by a batch of 5 (a batched step with fewer sequences
/// than the pool's slots): it picks the splits that fill the GPU for 5, more than a full batch
/// takes, and the result matches the CPU.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn attention_decode_small_batch_of_a_large_workspace_matches_cpu() {
    let (n_head_kv, n_head, head_dim) = (8, 32, 128);
    let lens = [1000, 1, 333, 2047, 64];
    let (cache, written) = fill_cache(n_head_kv, head_dim, &lens, 77);
    let row = n_head * head_dim;
    let q = random_values(8, lens.len() * row, 4.0);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let cpu = CpuOptions { n_head, n_head_kv, head_dim, scale, window: 0, sinks: None };
    let mut expected = vec![0.0; q.len()];
    for (b, (&len, out)) in lens.iter().zip(expected.chunks_mut(row)).enumerate() {
        causal_attention_with(&q[b * row..][..row], &written.keys[b], &written.values[b], out, len - 1, &cpu);
    }
    let gpu = gpu();
    let mut workspace = DecodeWorkspace::for_cache(gpu, &cache, 64, n_head).unwrap();
    workspace.split_per_batch_size(true);
    let (full, small) = (workspace.n_splits(), workspace.splits_for(lens.len()));
    assert!(small > full, "a batch of 5 takes {small} splits, a batch of 64 {full}");
    let mut out = poisoned(q.len());
    let options = AttentionOptions { n_head, scale, window: 0 };
    let lens_gpu = gpu.upload(&lens.iter().map(|&l| l as u32).collect::<Vec<_>>()).unwrap();
    gpu.attention_decode_paged(
        &cache,
        LAYER,
        &gpu.upload(&q).unwrap(),
        &lens_gpu,
        None,
        &options,
        &mut workspace,
        &mut out,
    )
    .unwrap();
    check(
        "decode",
        &format!("a batch of 5 in a workspace of 64 ({small} splits)"),
        &gpu.download(&out).unwrap(),
        &expected,
    );
}

/// gpt-oss-20b's attention: 64 query heads over 8 KV heads of 64, a learned sink per head on
/// every layer, a 128-position window on every other layer (0: the full layers). Prefill with
/// query tiles that straddle the window's edge and starts before and past it; decode at lengths
/// around the window (0, 1, 127, 128, 129, a page past, far past) in one batch, through the split
/// count the host picks (under the window: one, which skips the combine kernel) and through one
/// split.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn attention_gpt_oss_shape_matches_cpu() {
    let (n_head_kv, n_head, head_dim) = (8, 64, 64);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let sinks = random_values(5, n_head, 3.0);
    let gpu = gpu();
    let sinks_gpu = gpu.upload(&sinks).unwrap();
    let row = n_head * head_dim;
    for window in [128, 0] {
        let cpu = CpuOptions { n_head, n_head_kv, head_dim, scale, window, sinks: Some(&sinks) };
        let options = AttentionOptions { n_head, scale, window };
        for (start, n_tokens) in [(0usize, 300usize), (0, 128), (0, 129), (100, 77), (1000, 129), (127, 1)] {
            let len = start + n_tokens;
            let (cache, written) = fill_cache(n_head_kv, head_dim, &[5, len], len as u64);
            let q = random_values(len as u64 ^ 9, n_tokens * row, 4.0);
            let mut expected = vec![0.0; q.len()];
            causal_attention_with(&q, &written.keys[1], &written.values[1], &mut expected, start, &cpu);
            let mut out = poisoned(q.len());
            let start_gpu = gpu.upload(&[start as u32]).unwrap();
            let q_gpu = gpu.upload(&q).unwrap();
            gpu.attention_prefill(&cache, LAYER, 1, &q_gpu, &start_gpu, Some(&sinks_gpu), &options, &mut out)
                .unwrap();
            let what = format!("gpt-oss prefill T={n_tokens} start={start} window={window}");
            check("gpt-oss", &what, &gpu.download(&out).unwrap(), &expected);
        }
        let lens = [0usize, 1, 127, 128, 129, 145, 2000];
        let (cache, written) = fill_cache(n_head_kv, head_dim, &lens, 77);
        let q = random_values(78, lens.len() * row, 4.0);
        let mut expected = vec![0.0; q.len()];
        for (b, &len) in lens.iter().enumerate() {
            if len > 0 {
                let out = &mut expected[b * row..][..row];
                causal_attention_with(
                    &q[b * row..][..row],
                    &written.keys[b],
                    &written.values[b],
                    out,
                    len - 1,
                    &cpu,
                );
            }
        }
        let lens_gpu = gpu.upload(&lens.iter().map(|&l| l as u32).collect::<Vec<_>>()).unwrap();
        let q_gpu = gpu.upload(&q).unwrap();
        for mut workspace in [
            DecodeWorkspace::for_cache(gpu, &cache, lens.len(), n_head).unwrap(),
            DecodeWorkspace::new(gpu, lens.len(), n_head, head_dim, 1).unwrap(),
        ] {
            let mut out = poisoned(q.len());
            gpu.attention_decode_paged(
                &cache,
                LAYER,
                &q_gpu,
                &lens_gpu,
                Some(&sinks_gpu),
                &options,
                &mut workspace,
                &mut out,
            )
            .unwrap();
            let splits = window_splits(workspace.n_splits(), window);
            let what = format!("gpt-oss decode lens={lens:?} window={window} splits={splits}");
            check("gpt-oss", &what, &gpu.download(&out).unwrap(), &expected);
        }
    }
}
