//! [`GpuModel`]: a GGUF model on the GPU. It reads the configuration, picks the architecture's
//! file (the one place that names architectures), checks that weights, KV cache and scratch fit
//! before anything is allocated, uploads the weights and drives the architecture through the
//! shared prompt pass (`prefill.rs`) and decode step (`decode.rs`) over one sequence.

use super::attention::KvCache;
use super::decode::StepBuffers;
use super::memory::VramLedger;
use super::weights::Weights;
use super::{Architecture, CudaError, gpt_oss, gpt2, llama};
use crate::gguf::GgufFile;
use crate::model::{Architecture as Family, ModelConfig, ModelError};
use host::Gpu;

/// An architecture's loader: its weights uploaded and its scratch allocated.
type Load = fn(Weights, &ModelConfig, &dyn Fn(usize, usize)) -> Result<Box<dyn Architecture>, CudaError>;

/// What KV cache a model is loaded with.
pub(super) enum KvPlan {
    /// One sequence, every page reserved (generate, chat, perplexity).
    OneSequence { capacity: usize },
    /// A pool of pages for up to `n_seq` sequences (batching), and the bytes of one step's
    /// scratch at the largest batch.
    Pool { n_pages: usize, n_seq: usize, max_context: usize, step_bytes: usize },
}

impl KvPlan {
    fn max_context(&self) -> usize {
        match *self {
            KvPlan::OneSequence { capacity } => capacity,
            KvPlan::Pool { max_context, .. } => max_context,
        }
    }
}

pub struct GpuModel {
    pub(super) gpu: Gpu,
    pub(super) config: ModelConfig,
    pub(super) architecture: Box<dyn Architecture>,
    pub(super) kv: KvCache,
    pub(super) step: StepBuffers,
    pub(super) capacity: usize,
    /// Positions filled so far.
    pub len: usize,
    /// The captured decode step, made on first use.
    pub(super) graph: Option<host::CudaGraph>,
    /// Capture and replay the step as a graph (default), or launch its kernels one by one.
    pub use_graph: bool,
    /// Quantized matrices meet 8-bit activations (see the module notes).
    pub(super) integer_activations: bool,
    ledger: VramLedger,
}

impl GpuModel {
    /// Loads `file` for one sequence of up to `capacity` positions; `progress(done, total)` per
    /// layer.
    pub fn load(
        gpu: Gpu,
        file: &GgufFile,
        capacity: usize,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Self, CudaError> {
        Self::load_with(gpu, file, KvPlan::OneSequence { capacity }, progress)
    }

    /// Loads `file` with the KV cache `plan` asks for.
    pub(super) fn load_with(
        gpu: Gpu,
        file: &GgufFile,
        plan: KvPlan,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Self, CudaError> {
        let config = ModelConfig::from_gguf(file).map_err(ModelError::from)?;
        let capacity = plan.max_context();
        // What the architecture asks of the configuration, and the scratch its step needs.
        let (scratch, load): (usize, Load) = match config.architecture {
            Family::Llama | Family::Qwen2 | Family::Phi3 => (llama::plan(&config, capacity)?, llama::load),
            Family::GptOss => (gpt_oss::plan(&config, capacity)?, gpt_oss::load),
            Family::Gpt2 => (gpt2::plan(&config, capacity)?, gpt2::load),
        };
        let mut ledger = VramLedger {
            weights: super::memory::weight_bytes(file),
            kv_cache: KvCache::bytes(&config, capacity),
            activations: scratch,
            workspace: StepBuffers::bytes(config.n_embd, config.n_vocab),
        };
        if let KvPlan::Pool { n_pages, step_bytes, .. } = &plan {
            ledger.kv_cache = n_pages * KvCache::page_bytes(&config);
            ledger.activations += step_bytes;
        }
        ledger.check_fits(&gpu, capacity, KvCache::bytes_per_position(&config))?;
        let architecture = load(Weights { gpu: &gpu, file }, &config, progress)?;
        let kv = match plan {
            KvPlan::OneSequence { capacity } => KvCache::new(&gpu, &config, capacity)?,
            KvPlan::Pool { n_pages, n_seq, max_context, .. } => {
                KvCache::pool(&gpu, &config, n_pages, n_seq, max_context)?
            }
        };
        let step = StepBuffers::new(&gpu, config.n_embd, config.n_vocab)?;
        Ok(GpuModel {
            gpu,
            config,
            architecture,
            kv,
            step,
            capacity,
            len: 0,
            graph: None,
            use_graph: true,
            integer_activations: true,
            ledger,
        })
    }

    /// Bytes of weights one decode step reads: every matrix and vector once, except the token
    /// embedding table, of which it reads one row, and the experts not chosen (their biases are
    /// counted whole: a few KiB).
    pub fn weight_bytes_per_token(&self) -> usize {
        self.ledger.weights - self.architecture.unread_bytes_per_token()
    }

    /// The GPU the model runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Device memory held, by category (weights counted as stored in the file).
    pub fn ledger(&self) -> VramLedger {
        self.ledger
    }

    /// Quantized matrices meet 8-bit activations (on, the default) or f32 ones (off: the exact
    /// numbers of the CPU reference; K-quants stay integer).
    pub fn set_integer_activations(&mut self, on: bool) {
        if on != self.integer_activations {
            self.integer_activations = on;
            self.graph = None;
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Positions the context holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets the sequence.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Logits [tokens.len(), n_vocab] for `tokens` following what the cache holds.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, CudaError> {
        if tokens.len() > 1 && self.can_prefill() {
            return self.prefill(tokens, true);
        }
        let mut logits = Vec::with_capacity(tokens.len() * self.config.n_vocab);
        for &token in tokens {
            logits.extend(self.step(token)?);
        }
        Ok(logits)
    }

    /// Logits [n_vocab] of the last of `tokens` (the prompt of a generation).
    pub fn forward_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>, CudaError> {
        if tokens.len() > 1 && self.can_prefill() {
            return self.prefill(tokens, false);
        }
        let mut last = Vec::new();
        for &token in tokens {
            last = self.step(token)?;
        }
        Ok(last)
    }
}

impl crate::generate::Session for GpuModel {
    fn n_vocab(&self) -> usize {
        self.config.n_vocab
    }
    fn position(&self) -> usize {
        self.len
    }
    fn capacity(&self) -> usize {
        self.capacity
    }
    fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, crate::generate::BackendError> {
        Ok(GpuModel::forward(self, tokens)?)
    }
    fn forward_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>, crate::generate::BackendError> {
        Ok(GpuModel::forward_last(self, tokens)?)
    }
    fn clear(&mut self) {
        GpuModel::clear(self);
    }
}
