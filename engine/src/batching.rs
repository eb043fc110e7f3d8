//! Continuous batching: requests in, tokens out, many sequences per step. The [`Batcher`] owns
//! the scheduler (which sequences run this step and on which KV pages), a backend that runs a
//! step over the shared KV pool ([`BatchBackend`]: the CPU's here, the GPU's in `cuda::batch`),
//! and each request's own sampler and stop condition. It knows nothing of HTTP: the server feeds
//! it requests and forwards its events; the benchmark and the tests drive it directly.
//!
//! One step: cancelled requests end (their pages free at once); the scheduler plans decode tokens
//! first, then prompt chunks; the backend returns the logits of every chunk that reaches its
//! sequence's end; each of those requests samples its next token, checks its stop conditions, and
//! either ends or appends the token for the next step.

use crate::generate::{BackendError, Utf8Stream};
use crate::model::{KvPool, LogitRows, Model, ModelError, SequenceChunk};
use crate::sampler::{DeviceSampling, Sampler, SamplerConfig, StopCondition, StopReason};
use crate::scheduler::{AdmissionError, Scheduler, SchedulerConfig, SequenceId, Work};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// How the next token of a row is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pick {
    /// The logits come back and the request's sampler chooses on the host (penalties and
    /// log-probabilities need them).
    Logits,
    /// The backend chooses on the device, with the filters and the uniform draw given.
    Device(DeviceSampling),
}

/// What came back for a row.
#[derive(Clone, Debug, PartialEq)]
pub enum Picked {
    Logits(Vec<f32>),
    Token(u32),
}

/// A model with a KV pool of pages that runs one scheduler step at a time.
pub trait BatchBackend {
    fn n_vocab(&self) -> usize;
    /// Pages in the KV pool (the scheduler's `n_pages`).
    fn n_pages(&self) -> usize;
    /// Whether [`Pick::Device`] is worth asking for (the GPU: a step then copies back token
    /// ids, not rows of logits). A backend without it answers every pick with logits.
    fn samples_on_device(&self) -> bool {
        false
    }
    /// Runs every work item of a step in one pass; for each item with `wants_logits`, in order,
    /// its last token's logits or its chosen token, as `picks` (one per such item) asks.
    fn step(&mut self, work: &[Work], picks: &[Pick]) -> Result<Vec<Picked>, BackendError>;
    /// Kernel profiling (`ENGINE_PROFILE=1` on the GPU): the last step's kernel times are kept
    /// for [`BatchBackend::kernel_profile`] with `keep`, dropped without.
    fn profile_step(&mut self, _keep: bool) -> Result<(), BackendError> {
        Ok(())
    }
    /// The kernel times kept since the last call, as markdown tables; None without profiling.
    fn kernel_profile(&mut self) -> Result<Option<String>, BackendError> {
        Ok(None)
    }
}

/// The CPU backend's batched step: one pass of the model over every chunk.
pub struct CpuBatch<'a> {
    model: &'a Model,
    pool: KvPool,
}

impl<'a> CpuBatch<'a> {
    pub fn new(model: &'a Model, n_pages: usize) -> Self {
        CpuBatch { model, pool: model.new_pool(n_pages) }
    }

    /// Pages that fit in `bytes` of memory.
    pub fn pages_in(model: &Model, bytes: usize) -> usize {
        let c = model.config();
        let f16 = model.numerics() == crate::model::Numerics::LlamaCpp;
        bytes / KvPool::page_bytes(c.n_layer, c.n_head_kv, c.head_dim, f16)
    }
}

impl BatchBackend for CpuBatch<'_> {
    fn n_vocab(&self) -> usize {
        self.model.config().n_vocab
    }

    fn n_pages(&self) -> usize {
        self.pool.n_pages()
    }

    fn step(&mut self, work: &[Work], _picks: &[Pick]) -> Result<Vec<Picked>, BackendError> {
        let chunks: Vec<SequenceChunk> = work
            .iter()
            .map(|w| SequenceChunk { pages: &w.pages, start: w.start, tokens: &w.tokens })
            .collect();
        let logits = self.model.forward_batch(&chunks, &mut self.pool, LogitRows::LastOfEachChunk)?;
        let n_vocab = self.n_vocab();
        Ok(work
            .iter()
            .zip(logits.chunks_exact(n_vocab))
            .filter(|(w, _)| w.wants_logits)
            .map(|(_, row)| Picked::Logits(row.to_vec()))
            .collect())
    }
}

/// What a request asks for.
pub struct Request {
    pub prompt: Vec<u32>,
    pub sampler: SamplerConfig,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Tokens that end the generation (the model's end-of-sequence ids; empty to ignore them).
    pub stop_tokens: Vec<u32>,
    /// Texts that end the generation (not included in the output).
    pub stop_strings: Vec<String>,
    /// Set from anywhere to end the request at the next step.
    pub cancel: Arc<AtomicBool>,
    /// Log-probabilities of the chosen token and of this many most likely ones, if Some.
    pub logprobs: Option<usize>,
}

impl Request {
    /// `max_tokens` tokens after `prompt`, chosen by `sampler`: no stop tokens or strings, not
    /// cancelled, no log-probabilities (set the fields to change that).
    pub fn new(prompt: Vec<u32>, sampler: SamplerConfig, max_tokens: usize) -> Self {
        Request {
            prompt,
            sampler,
            max_tokens,
            stop_tokens: Vec::new(),
            stop_strings: Vec::new(),
            cancel: Default::default(),
            logprobs: None,
        }
    }
}

/// Why a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token.
    EndOfSequence,
    /// A stop string.
    Stop,
    /// `max_tokens` generated.
    Length,
    /// The context is full.
    ContextFull,
    Cancelled,
}

/// A generated token's log-probability and the most likely alternatives'.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprobs {
    pub logprob: f32,
    /// (token, log-probability), most likely first.
    pub top: Vec<(u32, f32)>,
}

/// What a step produced for one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A new token and the text that became safe to show with it (possibly empty).
    Token { id: SequenceId, token: u32, text: String, logprobs: Option<TokenLogprobs> },
    /// The request ended; `text` is what was held back until now (a partial stop string that
    /// never completed).
    Finished { id: SequenceId, reason: FinishReason, text: String, usage: Usage },
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

struct Running {
    sampler: Sampler,
    stop: StopCondition,
    text: Utf8Stream,
    cancel: Arc<AtomicBool>,
    logprobs: Option<usize>,
    usage: Usage,
}

/// Requests, the scheduler and a backend: see the file's opening comment.
pub struct Batcher<'a> {
    scheduler: Scheduler,
    backend: Box<dyn BatchBackend + 'a>,
    /// Bytes of a token's text.
    detokenize: Box<dyn Fn(u32) -> Vec<u8> + 'a>,
    requests: HashMap<SequenceId, Running>,
    /// Steps run.
    pub steps: u64,
    /// The last step's tokens, and whether all were decode tokens (one per sequence).
    pub last_step: (usize, bool),
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    #[error(transparent)]
    Sampler(#[from] crate::sampler::SamplerError),
    #[error("the model's step failed: {0}")]
    Backend(BackendError),
}

impl<'a> Batcher<'a> {
    /// `config.n_pages` is taken from the backend.
    pub fn new(
        mut config: SchedulerConfig,
        backend: Box<dyn BatchBackend + 'a>,
        detokenize: Box<dyn Fn(u32) -> Vec<u8> + 'a>,
    ) -> Result<Self, crate::scheduler::SchedulerError> {
        config.n_pages = backend.n_pages();
        let scheduler = Scheduler::new(config)?;
        Ok(Batcher {
            scheduler,
            backend,
            detokenize,
            requests: HashMap::new(),
            steps: 0,
            last_step: (0, false),
        })
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    pub fn backend_mut(&mut self) -> &mut (dyn BatchBackend + 'a) {
        &mut *self.backend
    }

    /// Queues a request; refused at once when it could never run (too long for the context or
    /// the pool, empty, or with invalid sampler settings).
    pub fn submit(&mut self, request: Request) -> Result<SequenceId, BatchError> {
        request.sampler.validate()?;
        let n_vocab = self.backend.n_vocab();
        if let Some(&token) = request.prompt.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(BatchError::Backend(Box::new(ModelError::TokenOutOfRange { token, n_vocab })));
        }
        let mut sampler = Sampler::new(request.sampler);
        for &token in &request.prompt {
            sampler.accept(token);
        }
        let usage = Usage { prompt_tokens: request.prompt.len(), ..Usage::default() };
        let id = self.scheduler.add(request.prompt)?;
        let stop = StopCondition::new(request.stop_strings, request.max_tokens, request.stop_tokens);
        let running = Running {
            sampler,
            stop,
            text: Utf8Stream::default(),
            cancel: request.cancel,
            logprobs: request.logprobs,
            usage,
        };
        self.requests.insert(id, running);
        Ok(id)
    }

    /// Nothing queued or running.
    pub fn is_idle(&self) -> bool {
        self.requests.is_empty()
    }

    /// One step (see the file's opening comment); the events of every request it touched.
    pub fn step(&mut self) -> Result<Vec<Event>, BatchError> {
        let mut events = Vec::new();
        let cancelled: Vec<SequenceId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.cancel.load(Ordering::Relaxed))
            .map(|(&id, _)| id)
            .collect();
        for id in cancelled {
            self.end(id, FinishReason::Cancelled, &mut events);
        }
        // A zero budget ends before any work.
        let unstarted: Vec<SequenceId> =
            self.requests.iter().filter(|(_, r)| r.stop.stopped().is_some()).map(|(&id, _)| id).collect();
        for id in unstarted {
            self.end(id, FinishReason::Length, &mut events);
        }
        let step = self.scheduler.schedule();
        let tokens = step.work.iter().map(|w| w.tokens.len()).sum();
        self.last_step = (tokens, step.work.iter().all(|w| w.tokens.len() == 1));
        if step.work.is_empty() {
            return Ok(events);
        }
        let on_device = self.backend.samples_on_device();
        let mut picks = Vec::new();
        for work in step.work.iter().filter(|w| w.wants_logits) {
            let pick = match self.requests.get_mut(&work.id) {
                Some(request) if on_device && request.logprobs.is_none() => {
                    request.sampler.device_settings().map_or(Pick::Logits, Pick::Device)
                }
                _ => Pick::Logits,
            };
            picks.push(pick);
        }
        let picked = self.backend.step(&step.work, &picks).map_err(BatchError::Backend)?;
        self.steps += 1;
        for work in &step.work {
            if let Some(request) = self.requests.get_mut(&work.id) {
                // Reported once, at the (first) admission; a recomputed sequence does not add to it.
                let cached = work.cached_tokens.min(request.usage.prompt_tokens);
                request.usage.cached_tokens = request.usage.cached_tokens.max(cached);
            }
        }
        let finished = step.work.iter().filter(|w| w.wants_logits);
        for (work, picked) in finished.zip(picked) {
            let Some(request) = self.requests.get_mut(&work.id) else { continue };
            let (token, logprobs) = match picked {
                Picked::Token(token) => (token, None),
                Picked::Logits(logits) => {
                    let token = request.sampler.sample(&logits)?;
                    (token, request.logprobs.map(|n| token_logprobs(&logits, token, n)))
                }
            };
            request.sampler.accept(token);
            let text = request.text.push(&(self.detokenize)(token));
            let output = request.stop.push(token, &text);
            request.usage.completion_tokens += 1;
            events.push(Event::Token { id: work.id, token, text: output.emit, logprobs });
            // Positions cached after this step; the new token needs one more.
            let cached = work.start + work.tokens.len();
            let reason = match output.stop {
                Some(StopReason::EndOfSequence) => Some(FinishReason::EndOfSequence),
                Some(StopReason::StopString) => Some(FinishReason::Stop),
                Some(StopReason::MaxTokens) => Some(FinishReason::Length),
                None if cached >= self.scheduler.config().max_context => Some(FinishReason::ContextFull),
                None => None,
            };
            match reason {
                Some(reason) => self.end(work.id, reason, &mut events),
                None => {
                    self.scheduler.append(work.id, token);
                }
            }
        }
        Ok(events)
    }

    fn end(&mut self, id: SequenceId, reason: FinishReason, events: &mut Vec<Event>) {
        self.scheduler.finish(id);
        if let Some(mut request) = self.requests.remove(&id) {
            // What the stop strings held back, then an unfinished character (none after a stop).
            let mut text = request.stop.finish();
            if reason != FinishReason::Stop {
                text += &request.text.finish();
            }
            events.push(Event::Finished { id, reason, text, usage: request.usage });
        }
    }
}

/// log softmax of `logits` at `token`, and the `n` largest, most likely first.
pub fn token_logprobs(logits: &[f32], token: u32, n: usize) -> TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let total: f64 = logits.iter().map(|&v| ((v - max) as f64).exp()).sum();
    let log_total = total.ln() as f32 + max;
    let logprob = |t: u32| logits[t as usize] - log_total;
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    let n = n.min(order.len());
    if n > 0 {
        order.select_nth_unstable_by(n - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    }
    order.truncate(n);
    order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    TokenLogprobs { logprob: logprob(token), top: order.into_iter().map(|t| (t, logprob(t))).collect() }
}

/// A backend lent to a batcher (the benchmark runs several batchers over one loaded model).
impl<T: BatchBackend + ?Sized> BatchBackend for &mut T {
    fn n_vocab(&self) -> usize {
        (**self).n_vocab()
    }

    fn n_pages(&self) -> usize {
        (**self).n_pages()
    }

    fn samples_on_device(&self) -> bool {
        (**self).samples_on_device()
    }

    fn step(&mut self, work: &[Work], picks: &[Pick]) -> Result<Vec<Picked>, BackendError> {
        (**self).step(work, picks)
    }

    fn profile_step(&mut self, keep: bool) -> Result<(), BackendError> {
        (**self).profile_step(keep)
    }

    fn kernel_profile(&mut self) -> Result<Option<String>, BackendError> {
        (**self).kernel_profile()
    }
}
