//! gpt-oss (GGUF architecture `gpt-oss`, llama.cpp's openai-moe) on the CPU.
//!
//! Per layer, with n = rms_norm(x):
//!   attention: q, k, v = Wq n + bq, Wk n + bk, Wv n + bv (GQA), YaRN RoPE (NeoX halves) on q and k,
//!              softmax over q.k / sqrt(head_dim) with one learned logit per head (the sink) joining
//!              the denominator; even layers see only the last `sliding_window` positions
//!              (p - window < j <= p), odd layers every earlier position; h = x + Wo attn + bo.
//!   MoE:       m = rms_norm(h); router logits Wr m + br; the top k experts, weighted by the softmax
//!              of their k logits; each expert e gives Wdown_e swiglu_oai(Wgate_e m + bg, Wup_e m + bu) + bd
//!              with swiglu_oai(g, u) = min(g, 7) sigmoid(1.702 min(g, 7)) (clamp(u, -7, 7) + 1);
//!              x = h + sum of the weighted experts.
//! Logits = Wout rms_norm(x). Experts are 3-D tensors (ffn_{gate,up,down}_exps, MXFP4 in released
//! files) loaded as one matrix per expert.
//! Under `Numerics::LlamaCpp` matrices stay in their blocks (MXFP4 experts meet 8-bit activations)
//! and the KV cache is f16, but attention itself is the exact f64 one: the f16-accumulating form
//! that mimics llama.cpp has no sinks or window. `Numerics::Exact` dequantizes every expert to f32,
//! about 76 GB for gpt-oss-20b: the reference for small files, not a way to run the real one.

use super::batch::{BatchLayout, LogitRows};
use super::kv_cache::KvPool;
use super::llama::add;
use super::weights::{load, load_experts, load_matrix};
use super::{ConfigError, ModelConfig, ModelError, Numerics};
use crate::cpu::attention::{AttentionOptions, causal_attention_with};
use crate::cpu::moe::top_k_softmax;
use crate::cpu::quantized::{Matrix, matmul};
use crate::cpu::rope;
use crate::cpu::{activation, norm};
use crate::gguf::GgufFile;
use crate::model::RopeConfig;

/// gpt-oss's clamped SwiGLU constants (fixed in the model, not in the GGUF).
pub const SWIGLU_ALPHA: f32 = 1.702;
pub const SWIGLU_LIMIT: f32 = 7.0;

/// What the forward pass needs, taken from the GGUF configuration and checked once.
#[derive(Clone, Debug)]
pub struct Config {
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub n_ff_expert: usize,
    pub norm_eps: f32,
    /// Window of the sliding-window layers.
    pub sliding_window: usize,
    pub rope: RopeConfig,
}

impl Config {
    pub fn new(c: &ModelConfig) -> Result<Self, ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: format!("gpt-oss.{key}"),
            message: message.to_string(),
        };
        let moe = c.moe.as_ref().ok_or_else(|| invalid("expert_count", "gpt-oss needs experts"))?;
        if moe.n_expert_used > moe.n_expert {
            return Err(invalid("expert_used_count", "more experts used than there are"));
        }
        Ok(Config {
            n_vocab: c.n_vocab,
            n_embd: c.n_embd,
            n_layer: c.n_layer,
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
            n_expert: moe.n_expert,
            n_expert_used: moe.n_expert_used,
            n_ff_expert: moe.n_ff_expert,
            norm_eps: c.norm_eps,
            sliding_window: c
                .sliding_window
                .ok_or_else(|| invalid("attention.sliding_window", "missing or zero"))?,
            rope: c.rope.ok_or_else(|| invalid("rope.freq_base", "gpt-oss uses RoPE"))?,
        })
    }

    /// The attention window of layer `i` (0: none). Sliding-window layers come first and
    /// alternate with full-attention ones: llama.cpp's pattern 2 for gpt-oss, and transformers'
    /// default `layer_types` (layer i slides when i + 1 is odd).
    pub fn window(&self, layer: usize) -> usize {
        if layer.is_multiple_of(2) { self.sliding_window } else { 0 }
    }
}

struct Expert {
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    wo: Matrix,
    bq: Vec<f32>,
    bk: Vec<f32>,
    bv: Vec<f32>,
    bo: Vec<f32>,
    sinks: Vec<f32>,
    post_attention_norm: Vec<f32>,
    router: Matrix,
    router_bias: Vec<f32>,
    experts: Vec<Expert>,
    /// [n_expert, n_ff_expert], [n_expert, n_ff_expert], [n_expert, n_embd].
    gate_bias: Vec<f32>,
    up_bias: Vec<f32>,
    down_bias: Vec<f32>,
}

pub struct GptOss {
    model_config: ModelConfig,
    config: Config,
    pub(super) numerics: Numerics,
    token_embd: Matrix,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    output: Matrix,
}

impl GptOss {
    pub fn load(
        file: &GgufFile,
        model_config: ModelConfig,
        numerics: Numerics,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Self, ModelError> {
        let c = Config::new(&model_config)?;
        let (d, q_dim, kv_dim) = (c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        let (n_expert, n_ff) = (c.n_expert, c.n_ff_expert);
        let token_embd = load_matrix(file, "token_embd.weight", d, c.n_vocab, numerics)?;
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            progress(i, c.n_layer);
            let name = |suffix: &str| format!("blk.{i}.{suffix}");
            let gate = load_experts(file, &name("ffn_gate_exps.weight"), d, n_ff, n_expert, numerics)?;
            let up = load_experts(file, &name("ffn_up_exps.weight"), d, n_ff, n_expert, numerics)?;
            let down = load_experts(file, &name("ffn_down_exps.weight"), n_ff, d, n_expert, numerics)?;
            let experts = gate
                .into_iter()
                .zip(up)
                .zip(down)
                .map(|((gate, up), down)| Expert { gate, up, down })
                .collect();
            layers.push(Layer {
                attn_norm: load(file, &name("attn_norm.weight"), &[d])?,
                wq: load_matrix(file, &name("attn_q.weight"), d, q_dim, numerics)?,
                wk: load_matrix(file, &name("attn_k.weight"), d, kv_dim, numerics)?,
                wv: load_matrix(file, &name("attn_v.weight"), d, kv_dim, numerics)?,
                wo: load_matrix(file, &name("attn_output.weight"), q_dim, d, numerics)?,
                bq: load(file, &name("attn_q.bias"), &[q_dim])?,
                bk: load(file, &name("attn_k.bias"), &[kv_dim])?,
                bv: load(file, &name("attn_v.bias"), &[kv_dim])?,
                bo: load(file, &name("attn_output.bias"), &[d])?,
                sinks: load(file, &name("attn_sinks.weight"), &[c.n_head])?,
                post_attention_norm: load(file, &name("post_attention_norm.weight"), &[d])?,
                router: load_matrix(file, &name("ffn_gate_inp.weight"), d, n_expert, numerics)?,
                router_bias: load(file, &name("ffn_gate_inp.bias"), &[n_expert])?,
                experts,
                gate_bias: load(file, &name("ffn_gate_exps.bias"), &[n_ff, n_expert])?,
                up_bias: load(file, &name("ffn_up_exps.bias"), &[n_ff, n_expert])?,
                down_bias: load(file, &name("ffn_down_exps.bias"), &[d, n_expert])?,
            });
        }
        progress(c.n_layer, c.n_layer);
        let output_norm = load(file, "output_norm.weight", &[d])?;
        let output = load_matrix(file, "output.weight", d, c.n_vocab, numerics)?;
        Ok(GptOss { model_config, config: c, numerics, token_embd, layers, output_norm, output })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.model_config
    }

    /// Runs the batch's chunks (checked by [`BatchLayout::new`]) and returns the logits `rows`
    /// asks for.
    pub(super) fn forward(&self, layout: &BatchLayout, pool: &mut KvPool, rows: LogitRows) -> Vec<f32> {
        let c = &self.config;
        let (d, n) = (c.n_embd, layout.n_rows());
        let (q_dim, kv_dim) = (c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        let positions = &layout.positions;
        let rope_table = rope::RopeTable::new(positions, &c.rope);

        let mut x: Vec<f32> =
            layout.tokens.iter().flat_map(|&t| self.token_embd.row_f32(d, t as usize)).collect();
        let (mut h, mut q, mut k, mut v) =
            (vec![0.0; n * d], vec![0.0; n * q_dim], vec![0.0; n * kv_dim], vec![0.0; n * kv_dim]);
        let mut attn = vec![0.0; n * q_dim];
        let mut projected = vec![0.0; n * d];
        for (i, layer) in self.layers.iter().enumerate() {
            norm::rms_norm(&x, &layer.attn_norm, &mut h, d, c.norm_eps);
            matmul(&h, &layer.wq, Some(&layer.bq), &mut q, d, q_dim);
            matmul(&h, &layer.wk, Some(&layer.bk), &mut k, d, kv_dim);
            matmul(&h, &layer.wv, Some(&layer.bv), &mut v, d, kv_dim);
            rope::rope_with(&mut q, &rope_table, c.n_head);
            rope::rope_with(&mut k, &rope_table, c.n_head_kv);
            layout.write(pool, i, &k, &v);
            let options = AttentionOptions {
                n_head: c.n_head,
                n_head_kv: c.n_head_kv,
                head_dim: c.head_dim,
                scale: 1.0 / (c.head_dim as f32).sqrt(),
                window: c.window(i),
                sinks: Some(&layer.sinks),
            };
            layout.attend(pool, i, &q, &mut attn, |q, keys, values, out, start| {
                causal_attention_with(q, &keys.f32(), &values.f32(), out, start, &options)
            });
            matmul(&attn, &layer.wo, Some(&layer.bo), &mut projected, q_dim, d);
            add(&mut x, &projected);

            norm::rms_norm(&x, &layer.post_attention_norm, &mut h, d, c.norm_eps);
            self.mixture_of_experts(layer, &h, &mut projected);
            add(&mut x, &projected);
        }
        norm::rms_norm(&x, &self.output_norm, &mut h, d, c.norm_eps);
        let h = layout.logit_rows(h, d, rows);
        let mut logits = vec![0.0; h.len() / d * c.n_vocab];
        matmul(&h, &self.output, None, &mut logits, d, c.n_vocab);
        logits
    }

    /// out [n_tokens, n_embd] = the routed experts' weighted sum for each row of `m`.
    fn mixture_of_experts(&self, layer: &Layer, m: &[f32], out: &mut [f32]) {
        let c = &self.config;
        let (d, n_ff) = (c.n_embd, c.n_ff_expert);
        let n = m.len() / d;
        let mut logits = vec![0.0; n * c.n_expert];
        matmul(m, &layer.router, Some(&layer.router_bias), &mut logits, d, c.n_expert);
        // For each expert, the tokens routed to it and their weights.
        let mut routed: Vec<Vec<(usize, f64)>> = vec![Vec::new(); c.n_expert];
        for (t, row) in logits.chunks_exact(c.n_expert).enumerate() {
            for (e, weight) in top_k_softmax(row, c.n_expert_used) {
                routed[e].push((t, weight));
            }
        }
        let mut sum = vec![0.0f64; n * d];
        for (e, (expert, tokens)) in layer.experts.iter().zip(&routed).enumerate() {
            if tokens.is_empty() {
                continue;
            }
            let rows: Vec<f32> =
                tokens.iter().flat_map(|&(t, _)| m[t * d..(t + 1) * d].iter().copied()).collect();
            let (mut gate, mut up) = (vec![0.0; tokens.len() * n_ff], vec![0.0; tokens.len() * n_ff]);
            matmul(&rows, &expert.gate, Some(&layer.gate_bias[e * n_ff..(e + 1) * n_ff]), &mut gate, d, n_ff);
            matmul(&rows, &expert.up, Some(&layer.up_bias[e * n_ff..(e + 1) * n_ff]), &mut up, d, n_ff);
            for (g, &u) in gate.iter_mut().zip(&up) {
                *g = activation::swiglu_oai(*g, u, SWIGLU_ALPHA, SWIGLU_LIMIT);
            }
            let mut y = vec![0.0; tokens.len() * d];
            matmul(&gate, &expert.down, Some(&layer.down_bias[e * d..(e + 1) * d]), &mut y, n_ff, d);
            for (&(t, weight), y) in tokens.iter().zip(y.chunks_exact(d)) {
                for (s, &value) in sum[t * d..(t + 1) * d].iter_mut().zip(y) {
                    *s += weight * value as f64;
                }
            }
        }
        for (o, s) in out.iter_mut().zip(sum) {
            *o = s as f32;
        }
    }
}
