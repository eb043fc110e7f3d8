//! The prompt pass: every token of a prompt through each layer at once, so that each weight is
//! read once per layer for the whole prompt: projections as GEMMs on the tensor cores, keys and
//! values written into the paged cache, causal flash attention over it. The architecture queues
//! the layers; this file makes the batch (ids, positions, cache slots on the device) and turns the
//! final norm's output into logits: of every token, by a GEMM, or of the last one only (a
//! generation's prompt), through the decode step's GEMV, so that it gets the same numbers a step
//! would.

use super::model::GpuModel;
use super::{Context, CudaError};
use crate::model::ModelError;
use host::CudaSlice;

/// The tokens of one batched pass and where they go, on the device: first `decode_lens.len()`
/// sequences of one token each (a decode step; block-table rows 0, 1, ...), then chunks of
/// prompts, each one sequence's.
pub struct PromptBatch {
    /// Tokens in the batch.
    pub n: usize,
    pub ids: CudaSlice<u32>,
    /// Position of each token in its sequence.
    pub positions: CudaSlice<u32>,
    /// Block-table row (sequence) of each token.
    pub slots: CudaSlice<u32>,
    /// Positions each leading one-token sequence holds once its token is written.
    pub decode_lens: Option<CudaSlice<u32>>,
    /// The prompt chunks after them.
    pub chunks: Vec<PromptChunk>,
    /// Positions already cached before each chunk, [chunks.len()].
    pub starts: CudaSlice<u32>,
}

/// One sequence's chunk of a prompt in a batch.
pub struct PromptChunk {
    /// Its block-table row.
    pub row: usize,
    /// Its rows of the batch.
    pub tokens: std::ops::Range<usize>,
}

impl PromptBatch {
    /// The tokens of one sequence (block-table row 0) at positions start..start + tokens.len().
    pub fn one_sequence(gpu: &host::Gpu, tokens: &[u32], start: usize) -> Result<Self, host::Error> {
        let (n, start) = (tokens.len(), start as u32);
        Ok(PromptBatch {
            n,
            ids: gpu.upload(tokens)?,
            positions: gpu.upload(&(start..start + n as u32).collect::<Vec<_>>())?,
            slots: gpu.upload(&vec![0u32; n])?,
            decode_lens: None,
            chunks: vec![PromptChunk { row: 0, tokens: 0..n }],
            starts: gpu.upload(&[start])?,
        })
    }
}

impl GpuModel {
    /// Whether several tokens can go through one batched pass: the paged cache and a GEMM form of
    /// every matrix (not BF16).
    pub(super) fn can_prefill(&self) -> bool {
        self.kv.is_paged()
            && self.architecture.linears().iter().chain([&self.architecture.output()]).all(|l| l.has_gemm())
    }

    /// All `tokens` in one pass following what the cache holds: the logits of every token (`all`)
    /// or of the last one.
    pub(super) fn prefill(&mut self, tokens: &[u32], all: bool) -> Result<Vec<f32>, CudaError> {
        let (n, n_vocab, d) = (tokens.len(), self.config.n_vocab, self.config.n_embd);
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(ModelError::TokenOutOfRange { token, n_vocab }.into());
        }
        if self.len + n > self.capacity {
            return Err(ModelError::ContextFull { needed: self.len + n, capacity: self.capacity }.into());
        }
        let gpu = &self.gpu;
        let batch = PromptBatch::one_sequence(gpu, tokens, self.len)?;
        let context = Context { gpu, integer_activations: self.integer_activations };
        let mut hidden = gpu.alloc::<f32>(n * d)?;
        self.architecture.prefill(context, &mut self.kv, &batch, &mut hidden)?;
        self.len += n;
        let output = self.architecture.output();
        if all {
            let mut logits = gpu.alloc::<f32>(n * n_vocab)?;
            output.prefill(context, &hidden, n, &mut logits)?;
            return Ok(gpu.download(&logits)?);
        }
        let last = &mut self.step.hidden;
        gpu.stream()
            .memcpy_dtod(&hidden.slice((n - 1) * d..n * d), &mut last.values)
            .map_err(host::Error::from)?;
        if output.reads_q8(self.integer_activations) {
            gpu.quantize_q8(&last.values, &mut last.q8)?;
        }
        output.decode(context, last, &mut self.step.logits)?;
        Ok(gpu.download(&self.step.logits)?)
    }
}
