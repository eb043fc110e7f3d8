//! The GPT-2 family on the GPU, the twin of `model/gpt2.rs`: learned absolute positions,
//! pre-LayerNorm blocks (weight and bias), multi-head attention (as many key/value heads as query
//! heads) through a fused qkv projection with bias, GELU (tanh form, GPT-2's `gelu_new`), the
//! output tied to the token embedding unless the file has its own.
//!
//! Per layer: h = x + Wo attn(Wqkv LN1(x) + b) + bo, x = h + Wdown gelu(Wup LN2(h) + bu) + bd.
//! Logits = Wout LN(x). The decode step adds each residual inside the next LayerNorm's launch
//! (`layer_norm_q8`: x += r, the norm, and its 8-bit copy) and quantizes GELU's output as it
//! writes it (`gelu_q8`): eight launches a layer besides attention's. Positions end where the
//! learned table ends: a context longer than the model's is refused at load.

use super::attention::{Attention, KvCache};
use super::decode::StepBuffers;
use super::linear::{Activations, Linear};
use super::llama::unread_embedding_bytes;
use super::prefill::PromptBatch;
use super::weights::Weights;
use super::{Architecture, Context, CudaError};
use crate::model::ModelConfig;
use host::activation::Activation;
use host::matmul::GpuMatrix;
use host::{CudaSlice, Gpu};

pub struct Gpt2 {
    config: ModelConfig,
    /// The embedding table when it is not also the output matrix (tied models use `output`).
    token_embd: Option<GpuMatrix>,
    /// Learned positions [n_ctx_train, n_embd], f32, and the bytes the file stores them in.
    position_embd: CudaSlice<f32>,
    position_embd_bytes: usize,
    layers: Vec<Layer>,
    output_norm: LayerNorm,
    output: Linear,
    scratch: Scratch,
}

struct Layer {
    attn_norm: LayerNorm,
    /// [q; k; v] in one matrix, with its bias.
    qkv: Linear,
    attention: Attention,
    attn_output: Linear,
    ffn_norm: LayerNorm,
    up: Linear,
    down: Linear,
}

struct LayerNorm {
    weight: CudaSlice<f32>,
    bias: CudaSlice<f32>,
}

impl LayerNorm {
    fn load(weights: Weights, prefix: &str, d: usize) -> Result<Self, CudaError> {
        Ok(LayerNorm {
            weight: weights.vector(&format!("{prefix}.weight"), d)?,
            bias: weights.vector(&format!("{prefix}.bias"), d)?,
        })
    }
}

/// Learned positions cannot extrapolate: the context must fit in the table.
pub fn plan(config: &ModelConfig, capacity: usize) -> Result<usize, CudaError> {
    if capacity > config.n_ctx_train {
        let (requested, trained) = (capacity, config.n_ctx_train);
        return Err(CudaError::LearnedPositions {
            architecture: config.architecture.name(),
            requested,
            trained,
        });
    }
    if config.n_head_kv != config.n_head {
        return Err(CudaError::Unsupported("a GPT-2 model with fewer key/value heads than query heads"));
    }
    Ok(Scratch::bytes(config))
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
        let qkv = [(name("attn_qkv.weight"), 3 * d)];
        layers.push(Layer {
            attn_norm: LayerNorm::load(weights, &name("attn_norm"), d)?,
            qkv: Linear::stacked(weights, &qkv, Some(&[name("attn_qkv.bias")]), &[d, d, d], d)?,
            attention: Attention::new(c, 0, None),
            attn_output: Linear::load(
                weights,
                &name("attn_output.weight"),
                Some(&name("attn_output.bias")),
                d,
                d,
            )?,
            ffn_norm: LayerNorm::load(weights, &name("ffn_norm"), d)?,
            up: Linear::load(weights, &name("ffn_up.weight"), Some(&name("ffn_up.bias")), d, ff)?,
            down: Linear::load(weights, &name("ffn_down.weight"), Some(&name("ffn_down.bias")), ff, d)?,
        });
    }
    progress(c.n_layer, c.n_layer);
    let (output, token_embd) = if weights.has("output.weight") {
        let output = Linear::load(weights, "output.weight", None, d, c.n_vocab)?;
        (output, Some(weights.matrix("token_embd.weight", d, c.n_vocab)?))
    } else {
        (Linear::load(weights, "token_embd.weight", None, d, c.n_vocab)?, None)
    };
    let positions = weights.host_vector("position_embd.weight", &[d, c.n_ctx_train])?;
    let position_info = weights.tensor("position_embd.weight", &[d, c.n_ctx_train])?;
    Ok(Box::new(Gpt2 {
        token_embd,
        position_embd: weights.gpu.upload(&positions)?,
        position_embd_bytes: weights.file.tensor_data(position_info).len(),
        layers,
        output_norm: LayerNorm::load(weights, "output_norm", d)?,
        output,
        scratch: Scratch::new(weights.gpu, c)?,
        config: c.clone(),
    }))
}

impl Architecture for Gpt2 {
    fn decode(
        &mut self,
        context: Context,
        kv: &mut KvCache,
        step: &mut StepBuffers,
    ) -> Result<(), host::Error> {
        let Gpt2 { config: c, token_embd, position_embd, layers, output_norm, output, scratch: s, .. } = self;
        let (gpu, d, eps) = (context.gpu, c.n_embd, c.norm_eps);
        gpu.embed(token_embd.as_ref().unwrap_or(output.matrix()), &step.token(), &mut s.x)?;
        gpu.position_add(position_embd, &step.position(), &mut s.x, d)?;
        for (i, layer) in layers.iter().enumerate() {
            // x += the previous layer's output (none before the first layer), then LN1.
            let residual = if i > 0 { Some(&s.projected) } else { None };
            let norm = &layer.attn_norm;
            gpu.layer_norm_q8(
                &mut s.x,
                residual,
                &norm.weight,
                &norm.bias,
                eps,
                Some(&mut s.h.values),
                &mut s.h.q8,
            )?;
            layer.qkv.decode(context, &s.h, &mut s.qkv)?;
            let quantize = layer.attn_output.reads_q8(context.integer_activations);
            layer.attention.decode(context, kv, i, &s.qkv, step, &mut s.attn, quantize)?;
            layer.attn_output.decode(context, &s.attn, &mut s.projected)?;
            let norm = &layer.ffn_norm;
            let residual = Some(&s.projected);
            gpu.layer_norm_q8(
                &mut s.x,
                residual,
                &norm.weight,
                &norm.bias,
                eps,
                Some(&mut s.h.values),
                &mut s.h.q8,
            )?;
            layer.up.decode(context, &s.h, &mut s.up)?;
            gpu.gelu_q8(&s.up, Some(&mut s.act.values), &mut s.act.q8)?;
            layer.down.decode(context, &s.act, &mut s.projected)?;
        }
        let (norm, hidden) = (output_norm, &mut step.hidden);
        gpu.layer_norm_q8(
            &mut s.x,
            Some(&s.projected),
            &norm.weight,
            &norm.bias,
            eps,
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
        let (d, ff, eps) = (c.n_embd, c.n_ff, c.norm_eps);
        let alloc = |len: usize| gpu.alloc::<f32>(len);
        let (mut x, mut h, mut projected) = (alloc(n * d)?, alloc(n * d)?, alloc(n * d)?);
        let (mut q, mut k, mut v, mut attn) = (alloc(n * d)?, alloc(n * d)?, alloc(n * d)?, alloc(n * d)?);
        let (mut up, mut act) = (alloc(n * ff)?, alloc(n * ff)?);
        gpu.embed(self.token_embd.as_ref().unwrap_or(self.output.matrix()), &batch.ids, &mut x)?;
        gpu.position_add(&self.position_embd, &batch.positions, &mut x, d)?;
        for (i, layer) in self.layers.iter().enumerate() {
            gpu.layer_norm(&x, &layer.attn_norm.weight, &layer.attn_norm.bias, &mut h, n, d, eps)?;
            layer.qkv.prefill_parts(context, &h, n, [&mut q, &mut k, &mut v])?;
            layer.attention.prefill(context, kv, i, &q, &k, &v, batch, &mut attn)?;
            layer.attn_output.prefill(context, &attn, n, &mut projected)?;
            gpu.residual_add(&mut x, &projected)?;
            gpu.layer_norm(&x, &layer.ffn_norm.weight, &layer.ffn_norm.bias, &mut h, n, d, eps)?;
            layer.up.prefill(context, &h, n, &mut up)?;
            gpu.activation(Activation::GeluTanh, &up, &mut act)?;
            layer.down.prefill(context, &act, n, &mut projected)?;
            gpu.residual_add(&mut x, &projected)?;
        }
        gpu.layer_norm(&x, &self.output_norm.weight, &self.output_norm.bias, hidden, n, d, eps)
    }

    fn output(&self) -> &Linear {
        &self.output
    }

    fn linears(&self) -> Vec<&Linear> {
        self.layers.iter().flat_map(|l| [&l.qkv, &l.attn_output, &l.up, &l.down]).collect()
    }

    /// The token embedding's unread rows, and all rows but one of the position table.
    fn unread_bytes_per_token(&self) -> usize {
        let positions = self.position_embd_bytes - self.position_embd_bytes / self.config.n_ctx_train;
        unread_embedding_bytes(self.token_embd.as_ref()) + positions
    }
}

/// The decode step's buffers.
struct Scratch {
    /// The residual stream [n_embd].
    x: CudaSlice<f32>,
    /// A LayerNorm's output, the input of qkv and up.
    h: Activations,
    qkv: CudaSlice<f32>,
    attn: Activations,
    /// The last sublayer's output, added to x by the next norm.
    projected: CudaSlice<f32>,
    up: CudaSlice<f32>,
    act: Activations,
}

impl Scratch {
    fn new(gpu: &Gpu, c: &ModelConfig) -> Result<Self, host::Error> {
        let (d, ff) = (c.n_embd, c.n_ff);
        let zeros = |n: usize| gpu.upload(&vec![0.0f32; n]);
        Ok(Scratch {
            x: zeros(d)?,
            h: Activations::new(gpu, d)?,
            qkv: zeros(3 * d)?,
            attn: Activations::new(gpu, d)?,
            projected: zeros(d)?,
            up: zeros(ff)?,
            act: Activations::new(gpu, ff)?,
        })
    }

    fn bytes(c: &ModelConfig) -> usize {
        let (d, ff) = (c.n_embd, c.n_ff);
        4 * (5 * d + ff) + 2 * Activations::bytes(d) + Activations::bytes(ff)
    }
}
