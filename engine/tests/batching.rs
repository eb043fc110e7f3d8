//! Continuous batching on the CPU against the one-sequence path: a sequence run in a batch (its
//! prompt in chunks beside other sequences' decode steps, on pages scattered over a shared pool,
//! preempted and recomputed, its prefix shared with other prompts) gets the logits and the greedy
//! tokens it gets alone. With `exact` numerics every row's arithmetic is independent of the batch,
//! so the comparison is bit for bit.

use engine::batching::{BatchBackend, Batcher, CpuBatch, Event, FinishReason, Request};
use engine::gguf::GgufFile;
use engine::model::{LogitRows, Model, Numerics, SequenceChunk};
use engine::sampler::SamplerConfig;
use engine::scheduler::SchedulerConfig;
use std::collections::HashMap;
use std::path::PathBuf;

const FIXTURES: [&str; 6] = ["llama", "llama64", "qwen2", "phi3", "gptoss", "gpt2"];

fn fixture(name: &str) -> Model {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let file = GgufFile::open(dir.join(format!("{name}.gguf"))).unwrap();
    Model::load(&file, Numerics::Exact, &|_, _| {}).unwrap()
}

/// A deterministic prompt of `len` tokens below `n_vocab`, different for each `seed`.
fn prompt(seed: u32, len: usize, n_vocab: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed * 7919) >> 7) % n_vocab as u32)
        .collect()
}

/// Greedy tokens of `prompt` run alone through the one-sequence cache.
fn alone(model: &Model, prompt: &[u32], max_tokens: usize) -> Vec<u32> {
    let n_vocab = model.config().n_vocab;
    let mut cache = model.new_cache(64);
    let mut logits = model.forward(prompt, &mut cache).unwrap();
    let mut tokens = Vec::new();
    while tokens.len() < max_tokens {
        let token = engine::generate::argmax(&logits[logits.len() - n_vocab..]);
        tokens.push(token);
        if tokens.len() == max_tokens || cache.len + 1 > 64 {
            break;
        }
        logits = model.forward(&[token], &mut cache).unwrap();
    }
    tokens
}

#[test]
fn a_batch_of_chunks_on_scattered_pages_gives_each_sequence_its_own_logits() {
    for name in FIXTURES {
        let model = fixture(name);
        let n_vocab = model.config().n_vocab;
        let mut pool = model.new_pool(12);
        // Three sequences on pages out of order: a 20-token prompt whose first 13 tokens ran in
        // an earlier step, a 30-token prompt at once, and a sequence decoding its 18th token.
        let (a, b, c) = (prompt(1, 20, n_vocab), prompt(2, 30, n_vocab), prompt(3, 18, n_vocab));
        let (pages_a, pages_b, pages_c) = ([7u32, 2], [0u32, 9], [11u32, 4]);
        let first = [
            SequenceChunk { pages: &pages_a, start: 0, tokens: &a[..13] },
            SequenceChunk { pages: &pages_c, start: 0, tokens: &c[..17] },
        ];
        model.forward_batch(&first, &mut pool, LogitRows::LastOfEachChunk).unwrap();
        let second = [
            SequenceChunk { pages: &pages_c, start: 17, tokens: &c[17..] },
            SequenceChunk { pages: &pages_a, start: 13, tokens: &a[13..] },
            SequenceChunk { pages: &pages_b, start: 0, tokens: &b },
        ];
        let batched = model.forward_batch(&second, &mut pool, LogitRows::All).unwrap();
        let mut rows = batched.chunks_exact(n_vocab);
        for (sequence, from) in [(&c, 17), (&a, 13), (&b, 0)] {
            let mut cache = model.new_cache(64);
            let logits = model.forward(sequence, &mut cache).unwrap();
            for (position, expected) in logits.chunks_exact(n_vocab).enumerate().skip(from) {
                assert_eq!(rows.next().unwrap(), expected, "{name}: position {position}");
            }
        }
        // The last rows only, as a step asks for them.
        let mut pool = model.new_pool(12);
        model.forward_batch(&first, &mut pool, LogitRows::LastOfEachChunk).unwrap();
        let last = model.forward_batch(&second, &mut pool, LogitRows::LastOfEachChunk).unwrap();
        let rows: Vec<&[f32]> = batched.chunks_exact(n_vocab).collect();
        assert_eq!(last, [rows[0], rows[7], rows[37]].concat(), "{name}");
    }
}

#[test]
fn a_chunk_past_its_pages_or_the_pool_is_refused() {
    let model = fixture("llama");
    let mut pool = model.new_pool(4);
    let tokens = prompt(1, 20, model.config().n_vocab);
    let short = model.forward_batch(
        &[SequenceChunk { pages: &[0], start: 0, tokens: &tokens }],
        &mut pool,
        LogitRows::All,
    );
    assert!(short.unwrap_err().to_string().contains("needs 20 positions"));
    let outside = model.forward_batch(
        &[SequenceChunk { pages: &[0, 9], start: 0, tokens: &tokens }],
        &mut pool,
        LogitRows::All,
    );
    assert!(outside.unwrap_err().to_string().contains("page 9 is outside the KV pool of 4 pages"));
}

/// Runs `requests` (prompt, max tokens) through a batcher and returns each one's tokens and why
/// it ended, with the scheduler's final counts.
fn run_batched(
    model: &Model,
    config: SchedulerConfig,
    n_pages: usize,
    requests: &[(Vec<u32>, usize)],
) -> (Vec<(Vec<u32>, FinishReason)>, engine::scheduler::SchedulerStats) {
    let backend = CpuBatch::new(model, n_pages);
    assert_eq!(backend.n_pages(), n_pages);
    let mut batcher = Batcher::new(config, Box::new(backend), Box::new(|_| Vec::new())).unwrap();
    let mut ids = Vec::new();
    for (prompt, max_tokens) in requests {
        ids.push(batcher.submit(Request::new(prompt.clone(), SamplerConfig::greedy(), *max_tokens)).unwrap());
    }
    let mut outputs: HashMap<u64, (Vec<u32>, Option<FinishReason>)> = HashMap::new();
    let mut steps = 0;
    while !batcher.is_idle() {
        steps += 1;
        assert!(steps < 10_000, "the batcher did not finish");
        for event in batcher.step().unwrap() {
            match event {
                Event::Token { id, token, .. } => outputs.entry(id).or_default().0.push(token),
                Event::Finished { id, reason, .. } => outputs.entry(id).or_default().1 = Some(reason),
            }
        }
    }
    let stats = batcher.scheduler().stats();
    let results = ids.iter().map(|id| {
        let (tokens, reason) = outputs.remove(id).unwrap();
        (tokens, reason.expect("every request ends"))
    });
    (results.collect(), stats)
}

#[test]
fn sequences_decoded_in_a_batch_give_the_tokens_they_give_alone() {
    for name in FIXTURES {
        let model = fixture(name);
        let n_vocab = model.config().n_vocab;
        // Ten requests whose prompts share a 20-token prefix (so whole pages are shared), with
        // lengths and budgets that differ; a pool of 6 pages cannot hold them all, so some are
        // preempted and recomputed; steps of at most 24 tokens split the prompts into chunks.
        let shared = prompt(0, 20, n_vocab);
        let requests: Vec<(Vec<u32>, usize)> = (0..10u32)
            .map(|i| {
                let mut p = if i % 3 == 0 { prompt(i + 10, 5 + i as usize, n_vocab) } else { shared.clone() };
                p.extend(prompt(i + 1, 2 + 3 * i as usize % 17, n_vocab));
                (p, 4 + (7 * i as usize) % 13)
            })
            .collect();
        let config = SchedulerConfig {
            page_size: engine::model::PAGE_SIZE,
            n_pages: 0,
            max_seqs: 6,
            max_batch_tokens: 24,
            max_context: 64,
            prefix_caching: true,
        };
        let (results, stats) = run_batched(&model, config, 6, &requests);
        for (i, ((prompt, max_tokens), (tokens, reason))) in requests.iter().zip(&results).enumerate() {
            let expected = alone(&model, prompt, *max_tokens);
            assert_eq!(tokens, &expected, "{name}: request {i} (prompt of {})", prompt.len());
            let full = prompt.len() + tokens.len() >= 64;
            assert!(*reason == FinishReason::Length || full, "{name}: request {i} ended with {reason:?}");
        }
        println!("{name}: {stats:?}");
        assert!(stats.preemptions > 0, "{name}: the pool was meant to force preemptions: {stats:?}");
        assert!(stats.cached_tokens > 0, "{name}: the shared prefix was meant to hit the cache: {stats:?}");
        assert_eq!(stats.pages_used, 0, "{name}: pages left owned at the end: {stats:?}");
    }
}

#[test]
fn a_request_that_can_never_fit_is_refused_at_once() {
    let model = fixture("llama");
    let config = SchedulerConfig {
        page_size: engine::model::PAGE_SIZE,
        n_pages: 0,
        max_seqs: 4,
        max_batch_tokens: 32,
        max_context: 64,
        prefix_caching: true,
    };
    let backend = CpuBatch::new(&model, 8);
    let mut batcher = Batcher::new(config, Box::new(backend), Box::new(|_| Vec::new())).unwrap();
    let request =
        |len: usize| Request::new(prompt(1, len, model.config().n_vocab), SamplerConfig::greedy(), 4);
    let error = batcher.submit(request(64)).unwrap_err().to_string();
    assert!(error.contains("64"), "{error}");
    assert!(batcher.submit(request(0)).is_err());
    assert!(batcher.submit(request(10)).is_ok());
}

#[test]
fn a_cancelled_request_ends_at_the_next_step_and_frees_its_pages() {
    let model = fixture("llama");
    let config = SchedulerConfig {
        page_size: engine::model::PAGE_SIZE,
        n_pages: 0,
        max_seqs: 4,
        max_batch_tokens: 32,
        max_context: 64,
        prefix_caching: false,
    };
    let mut batcher =
        Batcher::new(config, Box::new(CpuBatch::new(&model, 16)), Box::new(|_| Vec::new())).unwrap();
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let request = Request {
        cancel: cancel.clone(),
        logprobs: Some(3),
        ..Request::new(prompt(1, 20, model.config().n_vocab), SamplerConfig::greedy(), 40)
    };
    let id = batcher.submit(request).unwrap();
    let events = batcher.step().unwrap();
    let Event::Token { logprobs: Some(logprobs), token, .. } = &events[0] else { panic!("{events:?}") };
    assert_eq!(logprobs.top.len(), 3);
    assert_eq!(logprobs.top[0].0, *token, "greedy picks the most likely token");
    assert!(logprobs.logprob <= 0.0 && (logprobs.logprob - logprobs.top[0].1).abs() < 1e-6);
    assert!(batcher.scheduler().stats().pages_used > 0);
    cancel.store(true, std::sync::atomic::Ordering::Relaxed);
    let events = batcher.step().unwrap();
    assert!(
        matches!(events[..], [Event::Finished { id: i, reason: FinishReason::Cancelled, .. }] if i == id)
    );
    assert_eq!(batcher.scheduler().stats().pages_used, 0);
    assert!(batcher.is_idle());
}
