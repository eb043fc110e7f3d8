//! The continuous-batching scheduler: host code that decides, step by step, which sequences run
//! and on which KV pages, knowing nothing of the model, the GPU or HTTP. Requests become
//! sequences (their tokens so far and how many of them have keys and values in the cache). A
//! step takes at most `max_seqs` sequences and `max_batch_tokens` tokens: first the decode token
//! of every running sequence, then chunks of prompts (chunked prefill: a long prompt takes what
//! budget is left each step and never stalls the decodes). A waiting sequence is admitted only
//! when the pages of its whole prompt are free. When a decode finds no free page, the newest
//! running sequence is preempted: its pages go back to the pool and it waits at the head of the
//! queue to be recomputed from its tokens, so it resumes with exactly the tokens it would have
//! made. Full pages of identical prefixes are shared (`pages.rs`).
//!
//! The shapes follow vLLM's v1 scheduler and KV cache manager and mistral.rs's block pool; the
//! code is ours.

mod pages;
#[cfg(test)]
mod tests;

use pages::{PageKey, PagePool};
use std::collections::{HashMap, VecDeque};

pub type SequenceId = u64;

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Positions per KV page (16 on the GPU).
    pub page_size: usize,
    /// Pages in the one KV pool.
    pub n_pages: usize,
    /// Most sequences in one step (running sequences).
    pub max_seqs: usize,
    /// Most tokens in one step (decode tokens + prompt chunk tokens).
    pub max_batch_tokens: usize,
    /// Most positions one sequence may hold (the context size).
    pub max_context: usize,
    /// Share full pages of identical prefixes between sequences.
    pub prefix_caching: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchedulerError {
    #[error("scheduler setting {0} must be at least 1")]
    Zero(&'static str),
    #[error(
        "a KV pool of {n_pages} pages of {page_size} positions cannot hold one sequence of the context's {max_context} positions; give the pool more memory or lower the context size"
    )]
    PoolSmallerThanContext { n_pages: usize, page_size: usize, max_context: usize },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdmissionError {
    #[error("the prompt is empty (no tokens)")]
    EmptyPrompt,
    #[error(
        "the prompt has {prompt} tokens but the context holds {max_context} positions, prompt and at least one generated token; shorten the prompt or raise the context size"
    )]
    LongerThanContext { prompt: usize, max_context: usize },
    #[error(
        "the prompt needs {needed} KV pages but the whole pool has {pool}; it could never run: shorten it or give the KV pool more memory"
    )]
    LargerThanPool { needed: usize, pool: usize },
}

/// Counts for the ledger, metrics and the benchmark.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub running: usize,
    pub waiting: usize,
    /// Pages owned by at least one sequence now; the most ever owned at once.
    pub pages_used: usize,
    pub pages_peak: usize,
    /// Free pages holding a cached prefix (reusable by a matching prompt, evicted LRU-first).
    pub pages_cached: usize,
    pub pages_total: usize,
    pub preemptions: u64,
    /// Prompt tokens served from the prefix cache instead of computed, in all.
    pub cached_tokens: u64,
}

/// The plan of one step, for the model: decode work first, then prompt chunks.
#[derive(Clone, Debug, Default)]
pub struct Step {
    pub work: Vec<Work>,
    /// Sequences preempted while planning this step (their pages were freed; they will be
    /// recomputed).
    pub preempted: Vec<SequenceId>,
}

/// One sequence's part of a step.
#[derive(Clone, Debug)]
pub struct Work {
    pub id: SequenceId,
    /// The sequence's pages in order: page i holds positions i * page_size ..
    /// (i + 1) * page_size; they cover start + tokens.len().
    pub pages: Vec<u32>,
    /// Positions already in the cache (computed earlier or served by the prefix cache).
    pub start: usize,
    /// This step's tokens, at positions start..start + tokens.len().
    pub tokens: Vec<u32>,
    /// Whether the model must return the logits of the last of `tokens` (true iff this chunk
    /// reaches the sequence's end).
    pub wants_logits: bool,
    /// Prompt tokens of this sequence served from the prefix cache (on its first chunk).
    pub cached_tokens: usize,
}

struct Sequence {
    tokens: Vec<u32>,
    /// Tokens whose keys and values are in the cache (or scheduled to be by the last step).
    computed: usize,
    pages: Vec<u32>,
    /// Key of each of the sequence's full pages registered or shared so far (a prefix of pages).
    keys: Vec<PageKey>,
    /// Its last chunk asked for logits and no token has been appended since.
    awaiting_token: bool,
    /// Prompt tokens the prefix cache served at its (last) admission, not yet reported.
    cached_unreported: usize,
    /// Admission order among running sequences (larger: newer).
    admitted: u64,
}

pub struct Scheduler {
    config: SchedulerConfig,
    pool: PagePool,
    sequences: HashMap<SequenceId, Sequence>,
    /// Running, oldest admission first.
    running: Vec<SequenceId>,
    waiting: VecDeque<SequenceId>,
    next_id: SequenceId,
    admissions: u64,
    pages_peak: usize,
    preemptions: u64,
    cached_tokens: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Result<Scheduler, SchedulerError> {
        let sizes = [
            ("page_size", config.page_size),
            ("n_pages", config.n_pages),
            ("max_seqs", config.max_seqs),
            ("max_batch_tokens", config.max_batch_tokens),
            ("max_context", config.max_context),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(SchedulerError::Zero(name));
        }
        if config.n_pages * config.page_size < config.max_context {
            let (n_pages, page_size, max_context) = (config.n_pages, config.page_size, config.max_context);
            return Err(SchedulerError::PoolSmallerThanContext { n_pages, page_size, max_context });
        }
        Ok(Scheduler {
            pool: PagePool::new(config.n_pages),
            config,
            sequences: HashMap::new(),
            running: Vec::new(),
            waiting: VecDeque::new(),
            next_id: 0,
            admissions: 0,
            pages_peak: 0,
            preemptions: 0,
            cached_tokens: 0,
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Queues a sequence whose first tokens are `prompt`; refused when it could never run.
    pub fn add(&mut self, prompt: Vec<u32>) -> Result<SequenceId, AdmissionError> {
        let c = &self.config;
        if prompt.is_empty() {
            return Err(AdmissionError::EmptyPrompt);
        }
        if prompt.len() + 1 > c.max_context {
            return Err(AdmissionError::LongerThanContext {
                prompt: prompt.len(),
                max_context: c.max_context,
            });
        }
        let needed = (prompt.len() + 1).div_ceil(c.page_size);
        if needed > c.n_pages {
            return Err(AdmissionError::LargerThanPool { needed, pool: c.n_pages });
        }
        let id = self.next_id;
        self.next_id += 1;
        let sequence = Sequence {
            tokens: prompt,
            computed: 0,
            pages: Vec::new(),
            keys: Vec::new(),
            awaiting_token: false,
            cached_unreported: 0,
            admitted: 0,
        };
        self.sequences.insert(id, sequence);
        self.waiting.push_back(id);
        Ok(id)
    }

    /// The sampled `token` joins sequence `id` (the input of its next decode); false for an
    /// unknown or finished id.
    pub fn append(&mut self, id: SequenceId, token: u32) -> bool {
        let Some(sequence) = self.sequences.get_mut(&id) else { return false };
        sequence.tokens.push(token);
        sequence.awaiting_token = false;
        true
    }

    /// Sequence `id` ends: its pages go back to the pool at once.
    pub fn finish(&mut self, id: SequenceId) {
        let Some(sequence) = self.sequences.remove(&id) else { return };
        for &page in &sequence.pages {
            self.pool.release(page);
        }
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
    }

    pub fn tokens(&self, id: SequenceId) -> Option<&[u32]> {
        self.sequences.get(&id).map(|s| &s.tokens[..])
    }

    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            pages_used: self.pool.used(),
            pages_peak: self.pages_peak,
            pages_cached: self.pool.cached(),
            pages_total: self.pool.n_pages(),
            preemptions: self.preemptions,
            cached_tokens: self.cached_tokens,
        }
    }

    pub fn is_idle(&self) -> bool {
        self.sequences.is_empty()
    }

    /// Plans the next step; see the file's opening comment.
    pub fn schedule(&mut self) -> Step {
        let mut step = Step::default();
        let mut budget = self.config.max_batch_tokens;
        // Decode tokens of running sequences, oldest first.
        let mut index = 0;
        while index < self.running.len() && budget > 0 && step.work.len() < self.config.max_seqs {
            let id = self.running[index];
            let sequence = &self.sequences[&id];
            if sequence.awaiting_token || sequence.tokens.len() - sequence.computed != 1 {
                index += 1;
                continue;
            }
            // A page for the new position, preempting the newest sequences until one is free.
            let mut preempted_self = false;
            while self.needs_page(id) && self.pool.available() == 0 {
                let newest = self.newest_running();
                self.preempt(newest, &mut step);
                if newest == id {
                    preempted_self = true;
                    break;
                }
            }
            if preempted_self {
                continue; // running[index] now holds the next sequence
            }
            step.work.push(self.plan(id, 1));
            budget -= 1;
            index += 1;
        }
        // Prompt chunks of running sequences admitted earlier, then of waiting ones.
        for index in 0..self.running.len() {
            if budget == 0 || step.work.len() >= self.config.max_seqs {
                break;
            }
            let id = self.running[index];
            let sequence = &self.sequences[&id];
            let remaining = sequence.tokens.len() - sequence.computed;
            // One remaining token is a decode (planned above, or waiting for budget).
            if sequence.awaiting_token || remaining <= 1 {
                continue;
            }
            let chunk = remaining.min(budget);
            step.work.push(self.plan(id, chunk));
            budget -= chunk;
        }
        while let Some(&id) = self.waiting.front() {
            if budget == 0
                || step.work.len() >= self.config.max_seqs
                || self.running.len() >= self.config.max_seqs
            {
                break;
            }
            if !self.admit(id) {
                break;
            }
            self.waiting.pop_front();
            self.running.push(id);
            let sequence = &self.sequences[&id];
            let chunk = (sequence.tokens.len() - sequence.computed).min(budget);
            step.work.push(self.plan(id, chunk));
            budget -= chunk;
        }
        self.pages_peak = self.pages_peak.max(self.pool.used());
        step
    }

    /// Whether sequence `id` needs another page for its next position.
    fn needs_page(&self, id: SequenceId) -> bool {
        let sequence = &self.sequences[&id];
        sequence.pages.len() * self.config.page_size < sequence.computed + 1
    }

    fn newest_running(&self) -> SequenceId {
        *self.running.iter().max_by_key(|id| self.sequences[id].admitted).expect("a running sequence")
    }

    /// Frees `id`'s pages and puts it at the head of the queue, to be recomputed.
    fn preempt(&mut self, id: SequenceId, step: &mut Step) {
        let sequence = self.sequences.get_mut(&id).expect("a running sequence");
        for &page in &sequence.pages {
            self.pool.release(page);
        }
        sequence.pages.clear();
        sequence.keys.clear();
        sequence.computed = 0;
        self.running.retain(|&r| r != id);
        self.waiting.push_front(id);
        step.preempted.push(id);
        self.preemptions += 1;
    }

    /// Gives waiting sequence `id` its cached prefix and the pages of the rest of its tokens, if
    /// they are free now; false (taking nothing) otherwise.
    fn admit(&mut self, id: SequenceId) -> bool {
        let page_size = self.config.page_size;
        let tokens = self.sequences[&id].tokens.clone();
        // Shared full pages of tokens[..len - 1]: the last token is always computed.
        let mut shared: Vec<(u32, PageKey)> = Vec::new();
        if self.config.prefix_caching {
            let mut parent = None;
            for page_tokens in tokens[..tokens.len() - 1].chunks_exact(page_size) {
                match self.pool.share(parent, page_tokens) {
                    Some((page, key)) => {
                        shared.push((page, key));
                        parent = Some(key);
                    }
                    None => break,
                }
            }
        }
        let needed = tokens.len().div_ceil(page_size) - shared.len();
        if needed > self.pool.available() {
            for &(page, _) in &shared {
                self.pool.release(page);
            }
            return false;
        }
        let mut pages: Vec<u32> = shared.iter().map(|&(page, _)| page).collect();
        pages.extend((0..needed).map(|_| self.pool.take().expect("counted as available")));
        self.admissions += 1;
        let sequence = self.sequences.get_mut(&id).expect("a waiting sequence");
        sequence.computed = shared.len() * page_size;
        sequence.cached_unreported = sequence.computed;
        sequence.keys = shared.iter().map(|&(_, key)| key).collect();
        sequence.pages = pages;
        sequence.admitted = self.admissions;
        self.cached_tokens += sequence.computed as u64;
        true
    }

    /// The work of `chunk` tokens of `id` from its first uncomputed one; takes a page where the
    /// chunk needs one (the caller made sure one is free or the sequence holds enough) and
    /// registers the pages the chunk fills.
    fn plan(&mut self, id: SequenceId, chunk: usize) -> Work {
        let page_size = self.config.page_size;
        let sequence = self.sequences.get_mut(&id).expect("a running sequence");
        let start = sequence.computed;
        let end = start + chunk;
        while sequence.pages.len() * page_size < end {
            sequence.pages.push(self.pool.take().expect("a free page was checked for"));
        }
        sequence.computed = end;
        sequence.awaiting_token = end == sequence.tokens.len();
        if self.config.prefix_caching {
            for index in sequence.keys.len()..end / page_size {
                let parent = sequence.keys.last().copied();
                let page_tokens = &sequence.tokens[index * page_size..(index + 1) * page_size];
                let key = self.pool.register(sequence.pages[index], parent, page_tokens);
                sequence.keys.push(key);
            }
        }
        Work {
            id,
            pages: sequence.pages.clone(),
            start,
            tokens: sequence.tokens[start..end].to_vec(),
            wants_logits: sequence.awaiting_token,
            cached_tokens: std::mem::take(&mut sequence.cached_unreported),
        }
    }
}
