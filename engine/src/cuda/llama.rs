//! The Llama family on the GPU: Llama (1-3, SmolLM2), Qwen2 (q/k/v biases) and Phi-3 (fused qkv
//! and gate_up), the twin of `model/llama.rs`.
//!
//! Per layer: h = x + Wo attn(rope(Wq n), rope(Wk n), Wv n) with n = rms_norm(x), then
//! x = h + Wdown (silu(Wgate m) * Wup m) with m = rms_norm(h). Logits = Wout rms_norm(x).
//! The decode step adds each residual inside the next norm's launch (`rms_norm_q8`: x += r, the
//! norm, and its 8-bit copy), so a layer is about ten launches. The attention half is shared with
//! gpt-oss (`gpt_oss.rs`), which has a mixture of experts in place of the FFN.

use super::attention::{Attention, KvCache};
use super::decode::StepBuffers;
use super::linear::{Activations, Linear};
use super::prefill::PromptBatch;
use super::weights::Weights;
use super::{Architecture, Context, CudaError};
use crate::model::{ModelConfig, RopeLayout};
use host::matmul::GpuMatrix;
use host::rope::{Rope, RopeLayout as GpuRopeLayout, Yarn};
use host::{CudaSlice, Gpu};

pub struct Llama {
    config: ModelConfig,
    rope: Rope,
    /// The embedding table when it is not also the output matrix (tied models use `output`).
    token_embd: Option<GpuMatrix>,
    layers: Vec<Layer>,
    output_norm: CudaSlice<f32>,
    output: Linear,
    scratch: AttentionScratch,
    ffn_scratch: FfnScratch,
}

struct Layer {
    attention: SelfAttention,
    ffn_norm: CudaSlice<f32>,
    /// [gate; up] stacked, then down.
    gate_up: Linear,
    down: Linear,
}

/// What the architecture asks of the configuration; the bytes of its decode scratch.
pub fn plan(config: &ModelConfig, _capacity: usize) -> Result<usize, CudaError> {
    if config.rope.is_none() {
        return Err(CudaError::Unsupported("a Llama-family model without RoPE"));
    }
    Ok(AttentionScratch::bytes(config) + FfnScratch::bytes(config.n_ff))
}

pub fn load(
    weights: Weights,
    config: &ModelConfig,
    progress: &dyn Fn(usize, usize),
) -> Result<Box<dyn Architecture>, CudaError> {
    let c = config;
    let (d, ff) = (c.n_embd, c.n_ff);
    let mut layers = Vec::with_capacity(c.n_layer);
    for i in 0..c.n_layer {
        progress(i, c.n_layer);
        let name = |suffix: &str| format!("blk.{i}.{suffix}");
        let gate_up = if weights.has(&name("ffn_gate.weight")) {
            let tensors = [(name("ffn_gate.weight"), ff), (name("ffn_up.weight"), ff)];
            Linear::stacked(weights, &tensors, None, &[ff, ff], d)?
        } else {
            Linear::stacked(weights, &[(name("ffn_up.weight"), 2 * ff)], None, &[ff, ff], d)?
        };
        layers.push(Layer {
            attention: SelfAttention::load(weights, c, i, 0, None)?,
            ffn_norm: weights.vector(&name("ffn_norm.weight"), d)?,
            gate_up,
            down: Linear::load(weights, &name("ffn_down.weight"), None, ff, d)?,
        });
    }
    progress(c.n_layer, c.n_layer);
    let (output, token_embd) = output_and_embedding(weights, c)?;
    Ok(Box::new(Llama {
        rope: rope(c),
        token_embd,
        layers,
        output_norm: weights.vector("output_norm.weight", d)?,
        output,
        scratch: AttentionScratch::new(weights.gpu, c)?,
        ffn_scratch: FfnScratch::new(weights.gpu, ff)?,
        config: c.clone(),
    }))
}

impl Architecture for Llama {
    fn decode(
        &mut self,
        context: Context,
        kv: &mut KvCache,
        step: &mut StepBuffers,
    ) -> Result<(), host::Error> {
        let Llama { config: c, rope, token_embd, layers, output_norm, output, scratch: s, ffn_scratch: f } =
            self;
        let gpu = context.gpu;
        gpu.embed(token_embd.as_ref().unwrap_or(output.matrix()), &step.token(), &mut s.x)?;
        for (i, layer) in layers.iter().enumerate() {
            layer.attention.decode(context, kv, i, rope, step, s)?;
            gpu.rms_norm_q8(
                &mut s.x,
                Some(&s.projected),
                &layer.ffn_norm,
                c.norm_eps,
                Some(&mut s.h.values),
                &mut s.h.q8,
            )?;
            layer.gate_up.decode(context, &s.h, &mut f.gate_up)?;
            gpu.swiglu_q8(&f.gate_up, Some(&mut f.act.values), &mut f.act.q8)?;
            layer.down.decode(context, &f.act, &mut s.projected)?;
        }
        let hidden = &mut step.hidden;
        gpu.rms_norm_q8(
            &mut s.x,
            Some(&s.projected),
            output_norm,
            c.norm_eps,
            Some(&mut hidden.values),
            &mut hidden.q8,
        )
    }

    fn prefill(
        &self,
        context: Context,
        kv: &mut KvCache,
        batch: &PromptBatch,
        hidden: &mut CudaSlice<f32>,
    ) -> Result<(), host::Error> {
        let (c, gpu, n) = (&self.config, context.gpu, batch.n);
        let mut s = PromptScratch::new(gpu, c, n)?;
        let (mut gate, mut up, mut act) =
            (gpu.alloc(n * c.n_ff)?, gpu.alloc(n * c.n_ff)?, gpu.alloc(n * c.n_ff)?);
        gpu.embed(self.token_embd.as_ref().unwrap_or(self.output.matrix()), &batch.ids, &mut s.x)?;
        for (i, layer) in self.layers.iter().enumerate() {
            layer.attention.prefill(context, kv, i, &self.rope, batch, &mut s)?;
            gpu.rms_norm(&s.x, &layer.ffn_norm, &mut s.h, n, c.n_embd, c.norm_eps)?;
            layer.gate_up.prefill_parts(context, &s.h, n, [&mut gate, &mut up])?;
            gpu.swiglu(&gate, &up, &mut act)?;
            layer.down.prefill(context, &act, n, &mut s.projected)?;
            gpu.residual_add(&mut s.x, &s.projected)?;
        }
        gpu.rms_norm(&s.x, &self.output_norm, hidden, n, c.n_embd, c.norm_eps)
    }

    fn output(&self) -> &Linear {
        &self.output
    }

    fn linears(&self) -> Vec<&Linear> {
        let layers = self.layers.iter();
        layers.flat_map(|l| l.attention.linears().into_iter().chain([&l.gate_up, &l.down])).collect()
    }

    fn unread_bytes_per_token(&self) -> usize {
        unread_embedding_bytes(self.token_embd.as_ref())
    }
}

// ---- pieces gpt-oss shares ----------------------------------------------------------------------

/// The output matrix, and the token embedding table when the file has a separate output matrix
/// (else the embedding table is the output matrix: tied).
pub(super) fn output_and_embedding(
    weights: Weights,
    c: &ModelConfig,
) -> Result<(Linear, Option<GpuMatrix>), CudaError> {
    let (d, n_vocab) = (c.n_embd, c.n_vocab);
    if weights.has("output.weight") {
        let output = Linear::load(weights, "output.weight", None, d, n_vocab)?;
        Ok((output, Some(weights.matrix("token_embd.weight", d, n_vocab)?)))
    } else {
        Ok((Linear::load(weights, "token_embd.weight", None, d, n_vocab)?, None))
    }
}

/// Of a token embedding table, what a step does not read: all rows but one.
pub(super) fn unread_embedding_bytes(table: Option<&GpuMatrix>) -> usize {
    table.map_or(0, |t| t.size() - t.size() / t.n_out)
}

/// The GPU's RoPE from the model's description.
pub(super) fn rope(c: &ModelConfig) -> Rope {
    let r = c.rope.expect("plan checked that the model uses RoPE");
    Rope {
        head_dim: r.head_dim,
        rope_dim: r.rope_dim,
        base: r.base,
        layout: match r.layout {
            RopeLayout::Interleaved => GpuRopeLayout::Interleaved,
            RopeLayout::Neox => GpuRopeLayout::Neox,
        },
        yarn: r.yarn.map(|y| Yarn {
            factor: y.factor,
            original_context: y.original_context,
            beta_fast: y.beta_fast,
            beta_slow: y.beta_slow,
            ext_factor: y.ext_factor,
            attn_factor: y.attn_factor,
            truncate: y.truncate,
        }),
    }
}

/// The attention half of a layer: n = rms_norm(x); q, k, v = W n (+ b); RoPE on q and k;
/// attention over the cache; x + Wo attn (+ bo) is left for the next norm to add.
pub(super) struct SelfAttention {
    norm: CudaSlice<f32>,
    /// [q; k; v] rows, with their biases where the file has them (Qwen2, gpt-oss).
    qkv: Linear,
    output: Linear,
    attention: Attention,
}

impl SelfAttention {
    /// Layer `i`'s attention; `window` (0: none) and `sinks` are gpt-oss's.
    pub fn load(
        weights: Weights,
        c: &ModelConfig,
        i: usize,
        window: usize,
        sinks: Option<CudaSlice<f32>>,
    ) -> Result<Self, CudaError> {
        let (d, q_dim, kv_dim) = (c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        let name = |suffix: &str| format!("blk.{i}.{suffix}");
        let parts = [q_dim, kv_dim, kv_dim];
        let qkv = if weights.has(&name("attn_qkv.weight")) {
            Linear::stacked(weights, &[(name("attn_qkv.weight"), q_dim + 2 * kv_dim)], None, &parts, d)?
        } else {
            let tensors = [
                (name("attn_q.weight"), q_dim),
                (name("attn_k.weight"), kv_dim),
                (name("attn_v.weight"), kv_dim),
            ];
            let biases = [name("attn_q.bias"), name("attn_k.bias"), name("attn_v.bias")];
            Linear::stacked(weights, &tensors, Some(&biases), &parts, d)?
        };
        Ok(SelfAttention {
            norm: weights.vector(&name("attn_norm.weight"), d)?,
            qkv,
            output: Linear::load(
                weights,
                &name("attn_output.weight"),
                Some(&name("attn_output.bias")),
                q_dim,
                d,
            )?,
            attention: Attention::new(c, window, sinks),
        })
    }

    pub fn linears(&self) -> [&Linear; 2] {
        [&self.qkv, &self.output]
    }

    /// One token: x += the previous layer's output (`s.projected`; none before the first layer),
    /// then this attention's output into `s.projected`.
    pub fn decode(
        &self,
        context: Context,
        kv: &mut KvCache,
        layer: usize,
        rope: &Rope,
        step: &StepBuffers,
        s: &mut AttentionScratch,
    ) -> Result<(), host::Error> {
        let gpu = context.gpu;
        let (n_head, n_head_kv, head_dim) = (s.n_head, s.n_head_kv, s.head_dim);
        let residual = if layer > 0 { Some(&s.projected) } else { None };
        gpu.rms_norm_q8(&mut s.x, residual, &self.norm, s.norm_eps, Some(&mut s.h.values), &mut s.h.q8)?;
        self.qkv.decode(context, &s.h, &mut s.qkv)?;
        // q and k are adjacent in qkv: one RoPE launch over both sets of heads.
        let rotated = (n_head + n_head_kv) * head_dim;
        gpu.rope(&mut s.qkv.slice_mut(..rotated), &step.position(), n_head + n_head_kv, rope)?;
        let quantize = self.output.reads_q8(context.integer_activations);
        self.attention.decode(context, kv, layer, &s.qkv, step, &mut s.attn, quantize)?;
        self.output.decode(context, &s.attn, &mut s.projected)
    }

    /// The prompt's tokens: x += this attention's output, for x [n, d] in `s.x`.
    pub fn prefill(
        &self,
        context: Context,
        kv: &mut KvCache,
        layer: usize,
        rope: &Rope,
        batch: &PromptBatch,
        s: &mut PromptScratch,
    ) -> Result<(), host::Error> {
        let gpu = context.gpu;
        let n = batch.n;
        gpu.rms_norm(&s.x, &self.norm, &mut s.h, n, s.n_embd, s.norm_eps)?;
        self.qkv.prefill_parts(context, &s.h, n, [&mut s.q, &mut s.k, &mut s.v])?;
        gpu.rope(&mut s.q, &batch.positions, s.n_head, rope)?;
        gpu.rope(&mut s.k, &batch.positions, s.n_head_kv, rope)?;
        self.attention.prefill(context, kv, layer, &s.q, &s.k, &s.v, batch, &mut s.attn)?;
        self.output.prefill(context, &s.attn, n, &mut s.projected)?;
        gpu.residual_add(&mut s.x, &s.projected)
    }
}

/// The decode step's residual stream and attention buffers.
pub(super) struct AttentionScratch {
    /// The residual stream [n_embd].
    pub x: CudaSlice<f32>,
    /// A norm's output, the input of the projections.
    pub h: Activations,
    /// [q; k; v] of the token.
    qkv: CudaSlice<f32>,
    attn: Activations,
    /// The last sublayer's output, added to x by the next norm.
    pub projected: CudaSlice<f32>,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    norm_eps: f32,
}

impl AttentionScratch {
    pub fn new(gpu: &Gpu, c: &ModelConfig) -> Result<Self, host::Error> {
        let (d, q_dim, kv_dim) = (c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        let zeros = |n: usize| gpu.upload(&vec![0.0f32; n]);
        Ok(AttentionScratch {
            x: zeros(d)?,
            h: Activations::new(gpu, d)?,
            qkv: zeros(q_dim + 2 * kv_dim)?,
            attn: Activations::new(gpu, q_dim)?,
            projected: zeros(d)?,
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
            norm_eps: c.norm_eps,
        })
    }

    pub fn bytes(c: &ModelConfig) -> usize {
        let (d, q_dim, kv_dim) = (c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        4 * (2 * d + q_dim + 2 * kv_dim) + Activations::bytes(d) + Activations::bytes(q_dim)
    }
}

/// The dense FFN's decode buffers: [gate; up] and the activation between them and down.
struct FfnScratch {
    gate_up: CudaSlice<f32>,
    act: Activations,
}

impl FfnScratch {
    fn new(gpu: &Gpu, ff: usize) -> Result<Self, host::Error> {
        Ok(FfnScratch { gate_up: gpu.upload(&vec![0.0f32; 2 * ff])?, act: Activations::new(gpu, ff)? })
    }

    fn bytes(ff: usize) -> usize {
        8 * ff + Activations::bytes(ff)
    }
}

/// The prompt pass's residual stream and attention buffers, for n tokens.
pub(super) struct PromptScratch {
    pub x: CudaSlice<f32>,
    pub h: CudaSlice<f32>,
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    attn: CudaSlice<f32>,
    pub projected: CudaSlice<f32>,
    n_embd: usize,
    n_head: usize,
    n_head_kv: usize,
    norm_eps: f32,
}

impl PromptScratch {
    pub fn new(gpu: &Gpu, c: &ModelConfig, n: usize) -> Result<Self, host::Error> {
        let (d, q_dim, kv_dim) = (c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        Ok(PromptScratch {
            x: gpu.alloc(n * d)?,
            h: gpu.alloc(n * d)?,
            q: gpu.alloc(n * q_dim)?,
            k: gpu.alloc(n * kv_dim)?,
            v: gpu.alloc(n * kv_dim)?,
            attn: gpu.alloc(n * q_dim)?,
            projected: gpu.alloc(n * d)?,
            n_embd: d,
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            norm_eps: c.norm_eps,
        })
    }
}
