//! gpt-oss on the GPU, the twin of `model/gpt_oss.rs`: the Llama family's attention half
//! (`llama::SelfAttention`) with a bias on every projection, a learned sink per query head and a
//! sliding window on even layers, YaRN without truncation; and a mixture of experts in place of
//! the FFN: a router (with bias), the top k experts' softmax weights, the chosen experts' MXFP4
//! gate and up rows in one launch, gpt-oss's clamped SwiGLU, the chosen down rows, and their
//! weighted sum. A decode step reads only the chosen experts' rows (their ids stay on the
//! device); a prompt groups its tokens by expert so that each expert's weights are read once per
//! layer.

use super::attention::KvCache;
use super::decode::StepBuffers;
use super::linear::Linear;
use super::llama::{self, AttentionScratch, PromptScratch, SelfAttention};
use super::prefill::PromptBatch;
use super::weights::Weights;
use super::{Architecture, Context, CudaError};
use crate::model::gpt_oss::{Config, SWIGLU_ALPHA, SWIGLU_LIMIT};
use crate::model::{ModelConfig, ModelError};
use host::attention::HEAD_DIMS;
use host::matmul::gemv_rows::gemv_rows_expert_limit;
use host::matmul::mma_rows::takes_mma_rows_experts;
use host::matmul::{GpuMatrix, Q8Activations, WeightFormat};
use host::moe::stack_experts;
use host::rope::Rope;
use host::{CudaSlice, Gpu};

pub struct GptOss {
    config: ModelConfig,
    experts_config: Config,
    rope: Rope,
    token_embd: Option<GpuMatrix>,
    layers: Vec<Layer>,
    output_norm: CudaSlice<f32>,
    output: Linear,
    scratch: AttentionScratch,
    moe_scratch: MoeScratch,
}

struct Layer {
    attention: SelfAttention,
    /// The norm before the experts (gpt-oss calls it post_attention_norm).
    ffn_norm: CudaSlice<f32>,
    experts: Experts,
}

/// A mixture of experts: expert tensors uploaded as stored (MXFP4), gate and up stacked per
/// expert so that one launch computes both for the chosen experts.
struct Experts {
    router: Linear,
    /// Per expert: its gate rows, then its up rows (2 n_ff), and their biases in the same order.
    gate_up: GpuMatrix,
    gate_up_bias: CudaSlice<f32>,
    down: GpuMatrix,
    down_bias: CudaSlice<f32>,
}

/// gpt-oss's checked configuration; its attention needs the paged kernels (sinks and windows).
pub fn plan(config: &ModelConfig, _capacity: usize) -> Result<usize, CudaError> {
    let g = Config::new(config).map_err(ModelError::from)?;
    if !HEAD_DIMS.contains(&config.head_dim) {
        return Err(CudaError::Unsupported("a gpt-oss model with a head dim other than 64, 80, 96 or 128"));
    }
    Ok(AttentionScratch::bytes(config) + MoeScratch::bytes(&g, config.n_embd))
}

pub fn load(
    weights: Weights,
    config: &ModelConfig,
    progress: &dyn Fn(usize, usize),
) -> Result<Box<dyn Architecture>, CudaError> {
    let (c, g) = (config, Config::new(config).map_err(ModelError::from)?);
    let d = c.n_embd;
    let mut layers = Vec::with_capacity(c.n_layer);
    for i in 0..c.n_layer {
        progress(i, c.n_layer);
        let name = |suffix: &str| format!("blk.{i}.{suffix}");
        let sinks = weights.vector(&name("attn_sinks.weight"), c.n_head)?;
        layers.push(Layer {
            attention: SelfAttention::load(weights, c, i, g.window(i), Some(sinks))?,
            ffn_norm: weights.vector(&name("post_attention_norm.weight"), d)?,
            experts: Experts::load(weights, &g, i)?,
        });
    }
    progress(c.n_layer, c.n_layer);
    let (output, token_embd) = llama::output_and_embedding(weights, c)?;
    Ok(Box::new(GptOss {
        rope: llama::rope(c),
        token_embd,
        layers,
        output_norm: weights.vector("output_norm.weight", d)?,
        output,
        scratch: AttentionScratch::new(weights.gpu, c)?,
        moe_scratch: MoeScratch::new(weights.gpu, &g, d)?,
        experts_config: g,
        config: c.clone(),
    }))
}

impl Experts {
    /// Layer `i`'s experts: each expert tensor [n_expert, rows, n_in] checked (MXFP4, that shape),
    /// gate and up stacked per expert.
    fn load(weights: Weights, g: &Config, i: usize) -> Result<Self, CudaError> {
        let name = |suffix: &str| format!("blk.{i}.{suffix}");
        let (n_expert, ff, d) = (g.n_expert, g.n_ff_expert, g.n_embd);
        let gate = weights.experts(&name("ffn_gate_exps.weight"), d, ff, n_expert)?;
        let up = weights.experts(&name("ffn_up_exps.weight"), d, ff, n_expert)?;
        let bias = |suffix: &str, rows: usize| weights.host_vector(&name(suffix), &[rows, n_expert]);
        let (gate_bias, up_bias) = (bias("ffn_gate_exps.bias", ff)?, bias("ffn_up_exps.bias", ff)?);
        let gate_up_bias: Vec<f32> = (0..n_expert)
            .flat_map(|e| gate_bias[e * ff..(e + 1) * ff].iter().chain(&up_bias[e * ff..(e + 1) * ff]))
            .copied()
            .collect();
        let down = weights.experts(&name("ffn_down_exps.weight"), ff, d, n_expert)?;
        let gpu = weights.gpu;
        Ok(Experts {
            router: Linear::load(
                weights,
                &name("ffn_gate_inp.weight"),
                Some(&name("ffn_gate_inp.bias")),
                d,
                n_expert,
            )?,
            gate_up: gpu.upload_matrix(
                WeightFormat::Mxfp4,
                &stack_experts(&[gate, up], n_expert),
                d,
                n_expert * 2 * ff,
            )?,
            gate_up_bias: gpu.upload(&gate_up_bias)?,
            down: gpu.upload_matrix(WeightFormat::Mxfp4, down, ff, n_expert * d)?,
            down_bias: gpu.upload(&bias("ffn_down_exps.bias", d)?)?,
        })
    }
}

impl Architecture for GptOss {
    fn decode(
        &mut self,
        context: Context,
        kv: &mut KvCache,
        step: &mut StepBuffers,
    ) -> Result<(), host::Error> {
        let GptOss {
            config: c,
            experts_config: g,
            rope,
            token_embd,
            layers,
            output_norm,
            output,
            scratch: s,
            moe_scratch: m,
        } = self;
        let gpu = context.gpu;
        let (n_expert, k) = (g.n_expert, g.n_expert_used);
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
            // Only the chosen experts' rows are read: their ids stay on the device.
            let e = &layer.experts;
            e.router.decode(context, &s.h, &mut m.logits)?;
            gpu.top_k_experts(&m.logits, n_expert, k, &mut m.ids, &mut m.weights)?;
            gpu.gemv_q8_experts(
                &e.gate_up,
                n_expert,
                &m.ids,
                &s.h.q8,
                Some(&e.gate_up_bias),
                &mut m.gate_up,
            )?;
            gpu.swiglu_oai(&m.gate_up, g.n_ff_expert, SWIGLU_ALPHA, SWIGLU_LIMIT, None, Some(&mut m.act_q))?;
            gpu.gemv_q8_experts(&e.down, n_expert, &m.ids, &m.act_q, Some(&e.down_bias), &mut m.out)?;
            gpu.moe_weighted_sum(&m.out, &m.weights, k, &mut s.projected)?;
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
        let (c, g, gpu, n) = (&self.config, &self.experts_config, context.gpu, batch.n);
        let (n_expert, k, ff, d) = (g.n_expert, g.n_expert_used, g.n_ff_expert, c.n_embd);
        let mut s = PromptScratch::new(gpu, c, n)?;
        // Router logits [n, n_expert], choices and weights [n, k], their grouping by expert, and
        // per assignment [gate; up] [n k, 2 n_ff], activations [n k, n_ff] and outputs [n k, d].
        let mut logits = gpu.alloc::<f32>(n * n_expert)?;
        let (mut ids, mut weights) = (gpu.alloc::<u32>(n * k)?, gpu.alloc::<f32>(n * k)?);
        let mut routing = gpu.expert_routing(n_expert, n * k)?;
        let mut gate_up = gpu.alloc::<f32>(n * k * 2 * ff)?;
        let mut act = gpu.alloc::<f32>(n * k * ff)?;
        let mut out = gpu.alloc::<f32>(n * k * d)?;
        // A decode step of a few sequences: every chosen expert read once for its tokens, with
        // the decode step's 8-bit activations, on the integer tensor cores or (fewer tokens)
        // by the multi-row GEMV. Off with f32 activations (the GEMMs round them to f16).
        let mma = takes_mma_rows_experts(n);
        let mut few_rows = if context.integer_activations && (mma || n <= gemv_rows_expert_limit()) {
            Some((gpu.q8_activations(n * d)?, gpu.q8_activations(n * k * ff)?))
        } else {
            None
        };
        gpu.embed(self.token_embd.as_ref().unwrap_or(self.output.matrix()), &batch.ids, &mut s.x)?;
        for (i, layer) in self.layers.iter().enumerate() {
            layer.attention.prefill(context, kv, i, &self.rope, batch, &mut s)?;
            gpu.rms_norm(&s.x, &layer.ffn_norm, &mut s.h, n, d, c.norm_eps)?;
            let e = &layer.experts;
            e.router.prefill(context, &s.h, n, &mut logits)?;
            gpu.top_k_experts(&logits, n_expert, k, &mut ids, &mut weights)?;
            gpu.route_experts(&ids, k, &mut routing)?;
            if let Some((h_q8, act_q8)) = &mut few_rows {
                gpu.quantize_q8(&s.h, h_q8)?;
                let experts = |w, x, per_assignment, bias, y: &mut CudaSlice<f32>| {
                    if mma {
                        gpu.mma_rows_experts(w, &routing, x, per_assignment, bias, y)
                    } else {
                        gpu.gemv_rows_experts(w, &routing, x, per_assignment, bias, y)
                    }
                };
                experts(&e.gate_up, h_q8, false, Some(&e.gate_up_bias), &mut gate_up)?;
                gpu.swiglu_oai(&gate_up, ff, SWIGLU_ALPHA, SWIGLU_LIMIT, None, Some(act_q8))?;
                experts(&e.down, act_q8, true, Some(&e.down_bias), &mut out)?;
            } else {
                gpu.gemm_experts(&e.gate_up, &routing, &s.h, false, Some(&e.gate_up_bias), &mut gate_up)?;
                gpu.swiglu_oai(&gate_up, ff, SWIGLU_ALPHA, SWIGLU_LIMIT, Some(&mut act), None)?;
                gpu.gemm_experts(&e.down, &routing, &act, true, Some(&e.down_bias), &mut out)?;
            }
            gpu.moe_weighted_sum(&out, &weights, k, &mut s.projected)?;
            gpu.residual_add(&mut s.x, &s.projected)?;
        }
        gpu.rms_norm(&s.x, &self.output_norm, hidden, n, d, c.norm_eps)
    }

    fn output(&self) -> &Linear {
        &self.output
    }

    fn linears(&self) -> Vec<&Linear> {
        self.layers
            .iter()
            .flat_map(|l| l.attention.linears().into_iter().chain([&l.experts.router]))
            .collect()
    }

    /// The token embedding's unread rows, and of each expert tensor all but the k chosen experts'.
    fn unread_bytes_per_token(&self) -> usize {
        let g = &self.experts_config;
        let experts: usize = self
            .layers
            .iter()
            .map(|l| {
                let bytes = l.experts.gate_up.size() + l.experts.down.size();
                bytes - bytes / g.n_expert * g.n_expert_used
            })
            .sum();
        llama::unread_embedding_bytes(self.token_embd.as_ref()) + experts
    }
}

/// The MoE part of one decode step.
struct MoeScratch {
    /// Router logits [n_expert], the chosen experts [k] and their weights [k].
    logits: CudaSlice<f32>,
    ids: CudaSlice<u32>,
    weights: CudaSlice<f32>,
    /// [gate; up] of each chosen expert [k, 2 n_ff], their activations (8-bit) and outputs [k, d].
    gate_up: CudaSlice<f32>,
    act_q: Q8Activations,
    out: CudaSlice<f32>,
}

impl MoeScratch {
    fn new(gpu: &Gpu, g: &Config, d: usize) -> Result<Self, host::Error> {
        let (k, ff) = (g.n_expert_used, g.n_ff_expert);
        let zeros = |n: usize| gpu.upload(&vec![0.0f32; n]);
        Ok(MoeScratch {
            logits: zeros(g.n_expert)?,
            ids: gpu.upload(&vec![0u32; k])?,
            weights: zeros(k)?,
            gate_up: zeros(k * 2 * ff)?,
            act_q: gpu.q8_activations(k * ff)?,
            out: zeros(k * d)?,
        })
    }

    fn bytes(g: &Config, d: usize) -> usize {
        let (k, ff) = (g.n_expert_used, g.n_ff_expert);
        4 * (g.n_expert + 2 * k + 2 * k * ff + k * d) + k * ff * 9 / 8
    }
}
