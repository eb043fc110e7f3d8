//! The GPU models: one file per architecture over shared layer types, as the CPU side has one file
//! per architecture under `model/`.
//!
//! - `llama.rs`: the Llama family (Llama, SmolLM2, Qwen2, Phi-3): RMSNorm, RoPE, GQA, SwiGLU.
//! - `gpt_oss.rs`: gpt-oss: Llama's attention with sinks and sliding windows, and a mixture of
//!   MXFP4 experts in place of the FFN.
//! - `gpt2.rs`: the GPT-2 family: learned positions, LayerNorm with bias, multi-head attention with
//!   biases, GELU.
//!
//! The shared pieces beneath them: `memory.rs` (the VRAM ledger and the fit check before anything
//! is allocated), `weights.rs` (tensors checked and uploaded in their stored precision, parts
//! stacked into one matrix), `linear.rs` (a projection that hides its weight format, its bias and
//! whether it reads 8-bit activations), `attention.rs` (the KV cache, paged f16 or contiguous f32,
//! and attention over it), `prefill.rs` (the prompt as one batched pass: tensor-core GEMMs and
//! causal flash attention) and `decode.rs` (one token per step, captured once as a CUDA graph and
//! replayed). `model.rs` is the public face, [`GpuModel`]: it loads a file and drives an
//! [`Architecture`]; it knows no architecture beyond the one `match` that picks the file.
//!
//! Numerics: quantized matrices meet either f32 activations (`integer_activations` off: the exact
//! numbers of the CPU reference, `Numerics::Exact`) or activations quantized to 8 bits per block of
//! 32 (on, the default: llama.cpp's numbers, and faster); K-quants have only the integer form.
//! Everything is checked against the CPU reference (`engine/tests/gpu_models.rs`).

mod attention;
mod batch;
mod batch_graphs;
mod decode;
mod gpt2;
mod gpt_oss;
mod linear;
mod llama;
mod memory;
mod model;
mod prefill;
mod weights;

pub use batch::{BatchLimits, GpuBatch, KvMemory};
pub use memory::VramLedger;
pub use model::GpuModel;

use crate::gguf::GgmlType;
use crate::model::ModelError;
use attention::KvCache;
use decode::StepBuffers;
use host::Gpu;
use linear::Linear;
use prefill::PromptBatch;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error(transparent)]
    Gpu(#[from] host::Error),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(
        "tensor {name} is {ty}; the GPU backend takes F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K and MXFP4 (experts: MXFP4 only)"
    )]
    UnsupportedType { name: String, ty: GgmlType },
    #[error(
        "not enough GPU memory: the model needs {} ({ledger}) but {} is free; {advice}",
        memory::gib(ledger.total()),
        memory::gib(*free)
    )]
    OutOfMemory { ledger: VramLedger, free: usize, advice: String },
    /// A model of a known architecture in a form the GPU code does not take.
    #[error("{0} has no GPU implementation yet; --backend cpu runs it")]
    Unsupported(&'static str),
    #[error(
        "--ctx-size {requested} is longer than the {trained} positions this {architecture} model learned; its position embeddings cannot extrapolate: use --ctx-size {trained} or less"
    )]
    LearnedPositions { architecture: &'static str, requested: usize, trained: usize },
}

/// What every launch of a step needs besides its buffers: the GPU, and whether quantized matrices
/// meet 8-bit activations.
#[derive(Clone, Copy)]
pub(crate) struct Context<'a> {
    pub gpu: &'a Gpu,
    pub integer_activations: bool,
}

/// What a GPU architecture provides: its order of operations, over the shared layer types. The
/// prompt pass and the decode step around it (buffers, graph capture, logits) are shared.
pub(crate) trait Architecture {
    /// Queues one decode step from the token embedding to the final norm, whose output goes into
    /// `step.hidden` (the shared code applies the output matrix). The token, its position and the
    /// sequence's length are read on the device from `step.args`, so the queued work can be
    /// captured once as a graph and replayed for every token.
    fn decode(
        &mut self,
        context: Context,
        kv: &mut KvCache,
        step: &mut StepBuffers,
    ) -> Result<(), host::Error>;

    /// The prompt pass from the embeddings to the final norm: `hidden` [batch.n, n_embd].
    fn prefill(
        &self,
        context: Context,
        kv: &mut KvCache,
        batch: &PromptBatch,
        hidden: &mut host::CudaSlice<f32>,
    ) -> Result<(), host::Error>;

    /// The matrix that turns the final norm's output into logits.
    fn output(&self) -> &Linear;

    /// Every projection, for checks over all of them (prompt-pass support).
    fn linears(&self) -> Vec<&Linear>;

    /// Bytes of the uploaded weights that one decode step does not read: all but one row of a
    /// token embedding table that is not also the output matrix, the experts not chosen.
    fn unread_bytes_per_token(&self) -> usize;
}
