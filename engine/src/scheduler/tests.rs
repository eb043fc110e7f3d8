//! The scheduler's rules one by one, then property tests under random arrivals, lengths,
//! cancellations and pools small enough to preempt, driven by a fake model that keeps a simulated
//! KV pool (which token sits at which page slot) and checks, for every work item, that what the
//! sequence reads before its chunk is its own tokens: page tables and prefix sharing are right.

use super::*;
use proptest::prelude::*;

fn config(n_pages: usize, max_seqs: usize, max_batch_tokens: usize) -> SchedulerConfig {
    SchedulerConfig {
        page_size: 4,
        n_pages,
        max_seqs,
        max_batch_tokens,
        max_context: 32,
        prefix_caching: true,
    }
}

#[test]
fn impossible_requests_are_refused_with_their_numbers() {
    let mut scheduler = Scheduler::new(config(8, 4, 16)).unwrap();
    assert_eq!(scheduler.add(vec![]), Err(AdmissionError::EmptyPrompt));
    let error = scheduler.add(vec![1; 32]).unwrap_err();
    assert_eq!(error, AdmissionError::LongerThanContext { prompt: 32, max_context: 32 });
    assert!(error.to_string().contains("32 tokens"));
    assert!(scheduler.add(vec![1; 31]).is_ok());
    let too_small = Scheduler::new(SchedulerConfig { n_pages: 7, ..config(7, 4, 16) });
    assert!(matches!(too_small, Err(SchedulerError::PoolSmallerThanContext { n_pages: 7, .. })));
    assert_eq!(Scheduler::new(config(8, 0, 16)).err(), Some(SchedulerError::Zero("max_seqs")));
}

#[test]
fn decodes_come_first_and_prompts_are_chunked_to_the_budget() {
    let mut scheduler = Scheduler::new(config(16, 4, 6)).unwrap();
    let a = scheduler.add(vec![1, 2, 3]).unwrap();
    let step = scheduler.schedule();
    assert_eq!(step.work.len(), 1);
    assert!(step.work[0].wants_logits && step.work[0].tokens == [1, 2, 3]);
    scheduler.append(a, 9);
    let b = scheduler.add((10..20).collect()).unwrap();
    let step = scheduler.schedule();
    // a's decode, then 5 of b's 10 prompt tokens (6 in all), without logits.
    assert_eq!((step.work[0].id, step.work[0].start, &step.work[0].tokens[..]), (a, 3, &[9][..]));
    assert_eq!((step.work[1].id, step.work[1].tokens.len(), step.work[1].wants_logits), (b, 5, false));
    scheduler.append(a, 8);
    let step = scheduler.schedule();
    assert_eq!(step.work[1].start, 5);
    assert_eq!(step.work[1].tokens, (15..20).collect::<Vec<_>>());
    assert!(step.work[1].wants_logits);
    // No token appended for b: it is not scheduled again until one is.
    scheduler.append(a, 7);
    assert!(scheduler.schedule().work.iter().all(|w| w.id == a));
}

#[test]
fn the_newest_sequence_is_preempted_and_recomputed_from_its_tokens() {
    // 8 pages of 4: a and b take 4 pages each once their prompts (15 tokens) are in.
    let mut scheduler =
        Scheduler::new(SchedulerConfig { prefix_caching: false, ..config(8, 4, 64) }).unwrap();
    let a = scheduler.add((0..15).collect()).unwrap();
    let b = scheduler.add((100..115).collect()).unwrap();
    let step = scheduler.schedule();
    assert_eq!(step.work.len(), 2);
    scheduler.append(a, 1);
    scheduler.append(b, 2);
    // Both decode at position 15, which fits their 4th page; the next needs a 5th.
    scheduler.schedule();
    scheduler.append(a, 3);
    scheduler.append(b, 4);
    let step = scheduler.schedule();
    assert_eq!(step.preempted, vec![b]);
    assert_eq!(step.work.len(), 1);
    assert_eq!((step.work[0].id, step.work[0].start), (a, 16));
    assert_eq!(scheduler.stats().preemptions, 1);
    // When a ends, b comes back with every token it had (prompt and both generated ones).
    scheduler.finish(a);
    let step = scheduler.schedule();
    let mut expected: Vec<u32> = (100..115).collect();
    expected.extend([2, 4]);
    assert_eq!((step.work[0].id, step.work[0].start, &step.work[0].tokens), (b, 0, &expected));
    assert!(step.work[0].wants_logits);
}

#[test]
fn full_pages_of_a_shared_prefix_are_shared_then_cached_then_evicted() {
    let mut scheduler = Scheduler::new(config(8, 4, 64)).unwrap();
    let prefix: Vec<u32> = (0..8).collect();
    let a = scheduler.add([prefix.clone(), vec![50, 51]].concat()).unwrap();
    let first = scheduler.schedule().work.remove(0);
    scheduler.append(a, 1);
    let b = scheduler.add([prefix.clone(), vec![60]].concat()).unwrap();
    let step = scheduler.schedule();
    let second = step.work.iter().find(|w| w.id == b).unwrap();
    assert_eq!(second.start, 8);
    assert_eq!(second.cached_tokens, 8);
    assert_eq!(second.pages[..2], first.pages[..2]);
    assert_eq!(scheduler.stats().cached_tokens, 8);
    // Both end: the two full prefix pages stay cached (a's third page, partly filled, is free).
    scheduler.finish(a);
    scheduler.finish(b);
    let stats = scheduler.stats();
    assert_eq!((stats.pages_used, stats.pages_cached), (0, 2));
    // A prompt that is exactly the prefix reuses its first page only: the last token is computed.
    let c = scheduler.add(prefix.clone()).unwrap();
    let work = scheduler.schedule().work.remove(0);
    assert_eq!((work.id, work.start, work.cached_tokens), (c, 4, 4));
    scheduler.finish(c);
    // Filling the pool evicts the cached pages, least recently freed first.
    let d = scheduler.add((100..131).collect()).unwrap();
    scheduler.schedule();
    assert_eq!(scheduler.stats().pages_cached, 0);
    scheduler.finish(d);
    assert_eq!(scheduler.stats().pages_used, 0);
}

#[test]
fn finishing_a_waiting_sequence_frees_it_and_unknown_ids_are_ignored() {
    let mut scheduler = Scheduler::new(config(8, 1, 64)).unwrap();
    let a = scheduler.add(vec![1, 2]).unwrap();
    let b = scheduler.add(vec![3, 4]).unwrap();
    assert_eq!(scheduler.schedule().work.len(), 1, "max_seqs 1");
    scheduler.finish(b);
    scheduler.finish(12345);
    assert!(!scheduler.append(b, 1));
    assert_eq!(scheduler.stats().waiting, 0);
    scheduler.finish(a);
    assert!(scheduler.is_idle());
}

/// The fake model's next token: a function of the whole sequence so far; 0 is end-of-sequence.
fn next_token(tokens: &[u32]) -> u32 {
    let hash = tokens.iter().fold(17u64, |h, &t| h.wrapping_mul(31).wrapping_add(t as u64 + 1));
    (hash >> 5) as u32 % 23
}

/// A request: its prompt, its token budget, and the step at which it is cancelled (if any).
#[derive(Clone, Debug)]
struct Case {
    prompt: Vec<u32>,
    max_tokens: usize,
    cancel_at: Option<usize>,
    arrives_at: usize,
}

/// What the request generates alone (the fake model, its budget, EOS, the context).
fn alone(case: &Case, max_context: usize) -> Vec<u32> {
    let mut tokens = case.prompt.clone();
    let mut out = Vec::new();
    loop {
        let t = next_token(&tokens);
        out.push(t);
        if t == 0 || out.len() >= case.max_tokens || tokens.len() >= max_context {
            return out;
        }
        tokens.push(t);
    }
}

fn cases() -> impl Strategy<Value = Vec<Case>> {
    // Prompts from a small alphabet with a common start, so that full pages repeat.
    let case = (
        0usize..3,
        prop::collection::vec(1u32..4, 1..20),
        1usize..12,
        prop::option::weighted(0.2, 0usize..30),
        0usize..20,
    )
        .prop_map(|(shared, rest, max_tokens, cancel_at, arrives_at)| {
            let mut prompt = vec![7u32; shared * 4];
            prompt.extend(rest);
            Case { prompt, max_tokens, cancel_at, arrives_at }
        });
    prop::collection::vec(case, 1..14)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn no_page_leaks_every_request_ends_and_outputs_match_running_alone(
        cases in cases(),
        n_pages in 8usize..20,
        max_seqs in 1usize..6,
        max_batch_tokens in 1usize..24,
        prefix_caching in any::<bool>(),
    ) {
        let page_size = 4;
        let max_context = 32;
        let config = SchedulerConfig { page_size, n_pages, max_seqs, max_batch_tokens, max_context, prefix_caching };
        let mut scheduler = Scheduler::new(config).unwrap();
        // The simulated KV pool: which (token, position) each slot holds.
        let mut kv: Vec<Option<(u32, usize)>> = vec![None; n_pages * page_size];
        let mut ids: Vec<Option<SequenceId>> = vec![None; cases.len()];
        let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); cases.len()];
        let mut ended = vec![false; cases.len()];
        let mut cancelled = vec![false; cases.len()];
        for step_number in 0..2_000 {
            for (i, case) in cases.iter().enumerate() {
                if case.arrives_at == step_number {
                    ids[i] = Some(scheduler.add(case.prompt.clone()).unwrap());
                }
                if case.cancel_at == Some(step_number) && !ended[i] && let Some(id) = ids[i] {
                    scheduler.finish(id);
                    ended[i] = true;
                    cancelled[i] = true;
                }
            }
            if ended.iter().all(|&e| e) {
                break;
            }
            let step = scheduler.schedule();
            prop_assert!(step.work.len() <= max_seqs);
            prop_assert!(step.work.iter().map(|w| w.tokens.len()).sum::<usize>() <= max_batch_tokens);
            // The model writes every chunk's keys and values before any attention reads them.
            for work in &step.work {
                for (offset, &token) in work.tokens.iter().enumerate() {
                    let p = work.start + offset;
                    kv[work.pages[p / page_size] as usize * page_size + p % page_size] = Some((token, p));
                }
            }
            for work in &step.work {
                let i = ids.iter().position(|&id| id == Some(work.id)).unwrap();
                let all = scheduler.tokens(work.id).unwrap().to_vec();
                prop_assert!(work.pages.len() * page_size >= work.start + work.tokens.len());
                for (p, &token) in all.iter().enumerate().take(work.start) {
                    let slot = work.pages[p / page_size] as usize * page_size + p % page_size;
                    prop_assert_eq!(kv[slot], Some((token, p)), "request {} position {}", i, p);
                }
                prop_assert_eq!(&all[work.start..work.start + work.tokens.len()], &work.tokens[..]);
            }
            for work in step.work.iter().filter(|w| w.wants_logits) {
                let i = ids.iter().position(|&id| id == Some(work.id)).unwrap();
                let all = scheduler.tokens(work.id).unwrap();
                let token = next_token(all);
                outputs[i].push(token);
                let full = work.start + work.tokens.len() >= max_context;
                if token == 0 || outputs[i].len() >= cases[i].max_tokens || full {
                    scheduler.finish(work.id);
                    ended[i] = true;
                } else {
                    scheduler.append(work.id, token);
                }
            }
            // Every page is free, cached or owned, and owned as often as sequences list it.
            let mut listed = vec![0usize; n_pages];
            for sequence in scheduler.sequences.values() {
                for &page in &sequence.pages {
                    listed[page as usize] += 1;
                }
            }
            for page in 0..n_pages as u32 {
                let owners = scheduler.pool.owners(page);
                prop_assert_eq!(owners, listed[page as usize], "page {}", page);
                prop_assert_eq!(owners == 0, scheduler.pool.is_available(page), "page {}", page);
            }
        }
        prop_assert!(ended.iter().all(|&e| e), "requests left unfinished: {:?}", ended);
        for (i, case) in cases.iter().enumerate() {
            if !cancelled[i] {
                prop_assert_eq!(&outputs[i], &alone(case, max_context), "request {}", i);
            }
        }
        let stats = scheduler.stats();
        prop_assert_eq!(stats.pages_used, 0);
        prop_assert_eq!(stats.running + stats.waiting, 0);
        prop_assert!(scheduler.is_idle());
    }
}
