//! The batched step on the GPU: one pass over the tokens of many sequences (a decode token of
//! some, a prompt chunk of others), each with its own positions and pages of one shared KV pool,
//! so that every weight matrix is read once per step for the whole batch. It is the prompt pass
//! of `prefill.rs` over a batch of sequences: projections as GEMMs over every row, keys and
//! values written to each row's sequence, flash-decoding for the one-token sequences (block-table
//! rows 0, 1, ...), causal flash attention for each prompt chunk after its cached prefix; gpt-oss's
//! experts take the step's tokens grouped by expert as they take a prompt's. A step of a single
//! decode token replays the one-sequence decode graph instead (the batch-1 speed of `generate`).
//!
//! The scheduler (`crate::scheduler`) decides which pages a sequence has; this file writes them
//! into the block table, in batch order, before each step.

use super::attention::KvCache;
use super::batch_graphs::{self, DecodeGraphs};
use super::model::{GpuModel, KvPlan};
use super::prefill::{PromptBatch, PromptChunk};
use super::{Context, CudaError};
use crate::batching::{BatchBackend, Pick, Picked};
use crate::generate::BackendError;
use crate::gguf::GgufFile;
use crate::model::{ModelConfig, ModelError};
use crate::scheduler::Work;
use host::attention::{NO_PAGE, PAGE_SIZE};
use host::sampling::RowSampling;
use host::{DevicePtr, Gpu};

/// How much memory the KV pool takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KvMemory {
    /// A fraction (0, 1] of the memory free once weights and scratch are counted.
    Fraction(f64),
    /// A size in bytes.
    Bytes(usize),
}

impl std::str::FromStr for KvMemory {
    type Err = String;

    /// `0.9` or `90%`: a fraction of free memory; `24` or `24GiB`: GiB.
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let invalid = || {
            format!("--kv-memory {text:?}: expected GiB (24, 24GiB) or a fraction of free memory (0.9, 90%)")
        };
        if let Some(percent) = text.strip_suffix('%') {
            let p: f64 = percent.trim().parse().map_err(|_| invalid())?;
            return if p > 0.0 && p <= 100.0 { Ok(KvMemory::Fraction(p / 100.0)) } else { Err(invalid()) };
        }
        let number = text.trim_end_matches("GiB").trim_end_matches('G').trim();
        let value: f64 = number.parse().map_err(|_| invalid())?;
        if !(value.is_finite() && value > 0.0) {
            return Err(invalid());
        }
        if value <= 1.0 && number == text {
            Ok(KvMemory::Fraction(value))
        } else {
            Ok(KvMemory::Bytes((value * (1u64 << 30) as f64) as usize))
        }
    }
}

/// What a batching model is loaded for.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Most positions of one sequence.
    pub max_context: usize,
    /// Most sequences in one step.
    pub max_seqs: usize,
    /// Most tokens in one step.
    pub max_batch_tokens: usize,
    pub kv_memory: KvMemory,
}

/// A model on the GPU with a KV pool that runs the scheduler's steps.
pub struct GpuBatch {
    model: GpuModel,
    limits: BatchLimits,
    n_pages: usize,
    /// Block-table width: pages of the longest sequence.
    max_pages: usize,
    /// The captured decode steps (batch_graphs.rs), unless turned off.
    graphs: Option<DecodeGraphs>,
}

impl GpuBatch {
    /// Loads `file`, then gives the KV pool what `limits.kv_memory` says.
    pub fn load(
        gpu: Gpu,
        file: &GgufFile,
        limits: BatchLimits,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Self, CudaError> {
        let config = ModelConfig::from_gguf(file).map_err(ModelError::from)?;
        if !KvCache::paged_for(&config) {
            return Err(CudaError::Unsupported("batching a model whose head dim is not 64, 80, 96 or 128"));
        }
        let graphs = batch_graphs::wanted() && limits.max_seqs >= 2;
        let mut step_bytes = step_bytes(&config, &limits);
        if graphs {
            step_bytes += DecodeGraphs::bytes(limits.max_seqs, config.n_vocab);
        }
        let page_bytes = KvCache::page_bytes(&config);
        let weights = super::memory::weight_bytes(file);
        let n_pages = match limits.kv_memory {
            KvMemory::Bytes(bytes) => bytes / page_bytes,
            KvMemory::Fraction(fraction) => {
                let (free, _) = gpu.memory()?;
                let rest = free.saturating_sub(weights + step_bytes + (1 << 30));
                (rest as f64 * fraction) as usize / page_bytes
            }
        };
        let max_pages = limits.max_context.div_ceil(PAGE_SIZE);
        // The pool's last page is kept from the scheduler for the padding rows of the graphs.
        if n_pages < max_pages + 1 {
            return Err(CudaError::Model(ModelError::ContextFull {
                needed: limits.max_context,
                capacity: n_pages.saturating_sub(1) * PAGE_SIZE,
            }));
        }
        let plan =
            KvPlan::Pool { n_pages, n_seq: limits.max_seqs, max_context: limits.max_context, step_bytes };
        let model = GpuModel::load_with(gpu, file, plan, progress)?;
        if !model.can_prefill() {
            return Err(CudaError::Unsupported("batching a model with BF16 matrices (no GEMM form)"));
        }
        let mut batch = GpuBatch { model, limits, n_pages: n_pages - 1, max_pages, graphs: None };
        batch.set_decode_graphs(graphs)?;
        Ok(batch)
    }

    /// Turns the CUDA graphs of batched decode steps (batch_graphs.rs) on or off (on by default
    /// unless `ENGINE_BATCH_GRAPHS=0` or `ENGINE_PROFILE=1`).
    pub fn set_decode_graphs(&mut self, on: bool) -> Result<(), CudaError> {
        if !on {
            self.graphs = None;
        } else if self.graphs.is_none() && self.limits.max_seqs >= 2 {
            let (gpu, n_vocab) = (&self.model.gpu, self.model.config.n_vocab);
            self.graphs = Some(DecodeGraphs::new(gpu, self.limits.max_seqs, n_vocab, self.n_pages as u32)?);
        }
        Ok(())
    }

    pub fn model(&self) -> &GpuModel {
        &self.model
    }

    pub fn model_mut(&mut self) -> &mut GpuModel {
        &mut self.model
    }

    fn run(&mut self, work: &[Work], picks: &[Pick]) -> Result<Vec<Picked>, CudaError> {
        let (d, n_vocab) = (self.model.config.n_embd, self.model.config.n_vocab);
        if work.len() > self.limits.max_seqs {
            let message = format!("{} sequences in a step of at most {}", work.len(), self.limits.max_seqs);
            return Err(host::Error::Shape { kernel: "batch step", message }.into());
        }
        // One-token sequences first (the decode kernel takes rows 0, 1, ...), then chunks.
        let mut order: Vec<usize> = (0..work.len()).collect();
        order.sort_by_key(|&i| work[i].tokens.len() > 1);
        let mut table = vec![NO_PAGE; work.len() * self.max_pages];
        for (row, &i) in order.iter().enumerate() {
            let w = &work[i];
            let end = w.start + w.tokens.len();
            if end > self.limits.max_context
                || w.pages.len() * PAGE_SIZE < end
                || w.pages.len() > self.max_pages
            {
                return Err(ModelError::ContextFull { needed: end, capacity: self.limits.max_context }.into());
            }
            if let Some(&token) = w.tokens.iter().find(|&&t| t as usize >= n_vocab) {
                return Err(ModelError::TokenOutOfRange { token, n_vocab }.into());
            }
            table[row * self.max_pages..][..w.pages.len()].copy_from_slice(&w.pages);
        }
        // A step of one token for each of several sequences replays the graph of its padded size.
        let decode_only = work.iter().all(|w| w.tokens.len() == 1 && w.wants_logits);
        if decode_only
            && work.len() >= 2
            && let Some(graphs) = &mut self.graphs
            && let Some(size) = graphs.size_for(work.len())
        {
            let steps: Vec<(u32, u32)> =
                order.iter().map(|&i| (work[i].tokens[0], work[i].start as u32)).collect();
            graphs.run(&mut self.model, size, &steps, table, self.max_pages)?;
            // Rows in work order: every item is one token, so `order` is the identity.
            return pick(&self.model.gpu, &graphs.logits(work.len(), n_vocab), work.len(), n_vocab, picks);
        }
        let model = &mut self.model;
        let KvCache::Paged { cache, .. } = &mut model.kv else { unreachable!("GpuBatch::load makes a pool") };
        cache.set_table(&model.gpu, &table)?;

        if let [one] = work
            && one.tokens.len() == 1
            && model.use_graph
        {
            model.queue_step(one.tokens[0], one.start)?;
            if !one.wants_logits {
                return Ok(Vec::new());
            }
            return pick(&model.gpu, &model.step.logits, 1, n_vocab, picks);
        }

        let (mut ids, mut positions, mut slots, mut lens, mut chunks, mut starts) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Batch row of each work item's last token.
        let mut last_row = vec![0usize; work.len()];
        for (row, &i) in order.iter().enumerate() {
            let w = &work[i];
            let first = ids.len();
            ids.extend_from_slice(&w.tokens);
            positions.extend((w.start..w.start + w.tokens.len()).map(|p| p as u32));
            slots.extend(std::iter::repeat_n(row as u32, w.tokens.len()));
            if w.tokens.len() == 1 {
                lens.push(w.start as u32 + 1);
            } else {
                chunks.push(PromptChunk { row, tokens: first..ids.len() });
                starts.push(w.start as u32);
            }
            last_row[i] = ids.len() - 1;
        }
        let n = ids.len();
        let gpu = &model.gpu;
        let batch = PromptBatch {
            n,
            ids: gpu.upload(&ids)?,
            positions: gpu.upload(&positions)?,
            slots: gpu.upload(&slots)?,
            decode_lens: if lens.is_empty() { None } else { Some(gpu.upload(&lens)?) },
            chunks,
            starts: gpu.upload(if starts.is_empty() { &[0u32][..] } else { &starts })?,
        };
        let context = Context { gpu, integer_activations: model.integer_activations };
        // A step of a few rows is a chain of short kernels, as a decode step is: launched with
        // dependent launch (each kernel's blocks scheduled while its predecessor runs; every
        // kernel of the sm_90 module waits for it first, host/src/pdl.rs). Prompt-sized steps
        // keep it off (the prompt pass's GEMMs ran 4% slower with it).
        let _dependent = gpu.dependent_launch(n <= DEPENDENT_LAUNCH_ROWS);
        let mut hidden = gpu.alloc::<f32>(n * d)?;
        model.architecture.prefill(context, &mut model.kv, &batch, &mut hidden)?;

        let wanted: Vec<usize> =
            (0..work.len()).filter(|&i| work[i].wants_logits).map(|i| last_row[i]).collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let m = wanted.len();
        let rows = if wanted.iter().enumerate().all(|(k, &r)| k == r) {
            hidden
        } else {
            let mut gathered = gpu.alloc::<f32>(m * d)?;
            for (k, &r) in wanted.iter().enumerate() {
                gpu.stream()
                    .memcpy_dtod(
                        &hidden.slice(r * d..(r + 1) * d),
                        &mut gathered.slice_mut(k * d..(k + 1) * d),
                    )
                    .map_err(host::Error::from)?;
            }
            gathered
        };
        let mut logits = gpu.alloc::<f32>(m * n_vocab)?;
        model.architecture.output().prefill(context, &rows, m, &mut logits)?;
        pick(gpu, &logits, m, n_vocab, picks)
    }
}

/// Most rows of a step launched with dependent launch.
pub(super) const DEPENDENT_LAUNCH_ROWS: usize = 64;

/// Each row's token chosen on the device where `picks` asks (one id copied back per row), and
/// the logits copied back for the rest.
fn pick(
    gpu: &Gpu,
    logits: &impl DevicePtr<f32>,
    rows: usize,
    n_vocab: usize,
    picks: &[Pick],
) -> Result<Vec<Picked>, CudaError> {
    if picks.len() != rows {
        let message = format!("{} picks for {rows} rows of logits", picks.len());
        return Err(host::Error::Shape { kernel: "batch step", message }.into());
    }
    let mut tokens = Vec::new();
    if picks.iter().any(|p| matches!(p, Pick::Device(_))) {
        let mut ids = gpu.alloc::<u32>(rows)?;
        let settings: Vec<RowSampling> = picks
            .iter()
            .map(|p| match *p {
                Pick::Device(d) => RowSampling {
                    temperature: d.temperature,
                    top_k: d.top_k,
                    top_p: d.top_p,
                    min_p: d.min_p,
                    uniform: d.uniform,
                },
                Pick::Logits => RowSampling::default(),
            })
            .collect();
        if settings.iter().all(|s| s.temperature <= 0.0) {
            gpu.argmax_rows(logits, rows, n_vocab, &mut ids)?;
        } else {
            gpu.sample_rows(logits, rows, n_vocab, &gpu.upload(&settings)?, &mut ids)?;
        }
        tokens = gpu.download(&ids)?;
    }
    let all = if picks.contains(&Pick::Logits) { gpu.download(logits)? } else { Vec::new() };
    Ok(picks
        .iter()
        .enumerate()
        .map(|(row, p)| match p {
            Pick::Device(_) => Picked::Token(tokens[row]),
            Pick::Logits => Picked::Logits(all[row * n_vocab..(row + 1) * n_vocab].to_vec()),
        })
        .collect())
}

/// Device bytes of one step's scratch at the largest batch: the prompt pass's activations for
/// `max_batch_tokens` tokens and the logits of `max_seqs` rows (an estimate that counts each
/// buffer of the pass once).
fn step_bytes(c: &ModelConfig, limits: &BatchLimits) -> usize {
    let (d, q_dim, kv_dim) = (c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
    let ff = match &c.moe {
        Some(moe) => moe.n_expert_used * moe.n_ff_expert,
        None => c.n_ff,
    };
    let per_token = 4 * (4 * d + 2 * q_dim + 2 * kv_dim + 3 * ff);
    limits.max_batch_tokens * per_token + 4 * limits.max_seqs * (c.n_vocab + d)
}

impl BatchBackend for GpuBatch {
    fn n_vocab(&self) -> usize {
        self.model.config.n_vocab
    }

    fn n_pages(&self) -> usize {
        self.n_pages
    }

    fn samples_on_device(&self) -> bool {
        true
    }

    fn step(&mut self, work: &[Work], picks: &[Pick]) -> Result<Vec<Picked>, BackendError> {
        Ok(self.run(work, picks)?)
    }

    fn profile_step(&mut self, keep: bool) -> Result<(), BackendError> {
        Ok(self.model.gpu.kernel_profile_span(keep).map_err(CudaError::from)?)
    }

    fn kernel_profile(&mut self) -> Result<Option<String>, BackendError> {
        Ok(self.model.gpu.kernel_profile(40).map_err(CudaError::from)?)
    }
}
