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

/// The tokens of one prompt pass and where they go, on the device.
pub struct PromptBatch {
    /// Tokens in the batch.
    pub n: usize,
    pub ids: CudaSlice<u32>,
    /// Position of each token (start, start + 1, ...).
    pub positions: CudaSlice<u32>,
    /// Block-table row (sequence) of each token.
    pub slots: CudaSlice<u32>,
    /// [start]: positions already cached before the batch.
    pub start: CudaSlice<u32>,
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
        let start = self.len as u32;
        let batch = PromptBatch {
            n,
            ids: gpu.upload(tokens)?,
            positions: gpu.upload(&(start..start + n as u32).collect::<Vec<_>>())?,
            slots: gpu.upload(&vec![0u32; n])?,
            start: gpu.upload(&[start])?,
        };
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
