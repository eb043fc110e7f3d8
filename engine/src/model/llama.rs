//! The Llama family on the CPU: Llama (1-3, SmolLM2), Qwen2 (q/k/v biases) and Phi-3 (fused qkv and
//! gate_up, stored that way in GGUF and split here at load time).
//!
//! Per layer: h = x + Wo attn(rope(Wq n), rope(Wk n), Wv n) with n = rms_norm(x), then
//! x = h + Wdown (silu(Wgate m) * Wup m) with m = rms_norm(h). Logits = Wout rms_norm(x).

use super::batch::causal_attention;
use super::batch::{BatchLayout, LogitRows};
use super::kv_cache::KvPool;
use super::weights::{load, load_matrix, load_matrix_optional, load_optional};
use super::{ModelConfig, ModelError, Numerics};
use crate::cpu::quantized::{Matrix, matmul};
use crate::cpu::{activation, norm, rope};
use crate::gguf::GgufFile;

struct Layer {
    attn_norm: Vec<f32>,
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    wo: Matrix,
    ffn_norm: Vec<f32>,
    w_gate: Matrix,
    w_up: Matrix,
    w_down: Matrix,
}

pub struct Llama {
    config: ModelConfig,
    pub(super) numerics: Numerics,
    token_embd: Matrix,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    /// None when the output layer is the token embedding (tied).
    output: Option<Matrix>,
}

impl Llama {
    pub fn load(
        file: &GgufFile,
        config: ModelConfig,
        numerics: Numerics,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Self, ModelError> {
        let c = &config;
        let (d, kv_dim, q_dim) = (c.n_embd, c.n_head_kv * c.head_dim, c.n_head * c.head_dim);
        let token_embd = load_matrix(file, "token_embd.weight", d, c.n_vocab, numerics)?;
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            progress(i, c.n_layer);
            let name = |suffix: &str| format!("blk.{i}.{suffix}");
            let (wq, wk, wv) = match load_matrix_optional(
                file,
                &name("attn_qkv.weight"),
                d,
                q_dim + 2 * kv_dim,
                numerics,
            )? {
                // Rows are q, then k, then v.
                Some(qkv) => (
                    qkv.rows(d, 0, q_dim),
                    qkv.rows(d, q_dim, q_dim + kv_dim),
                    qkv.rows(d, q_dim + kv_dim, q_dim + 2 * kv_dim),
                ),
                None => (
                    load_matrix(file, &name("attn_q.weight"), d, q_dim, numerics)?,
                    load_matrix(file, &name("attn_k.weight"), d, kv_dim, numerics)?,
                    load_matrix(file, &name("attn_v.weight"), d, kv_dim, numerics)?,
                ),
            };
            let (w_gate, w_up) = match file.tensor(&name("ffn_gate.weight")) {
                Some(_) => (
                    load_matrix(file, &name("ffn_gate.weight"), d, c.n_ff, numerics)?,
                    load_matrix(file, &name("ffn_up.weight"), d, c.n_ff, numerics)?,
                ),
                None => {
                    // Phi-3: gate and up in one matrix, gate rows first.
                    let gate_up = load_matrix(file, &name("ffn_up.weight"), d, 2 * c.n_ff, numerics)?;
                    (gate_up.rows(d, 0, c.n_ff), gate_up.rows(d, c.n_ff, 2 * c.n_ff))
                }
            };
            layers.push(Layer {
                attn_norm: load(file, &name("attn_norm.weight"), &[d])?,
                wq,
                wk,
                wv,
                bq: load_optional(file, &name("attn_q.bias"), &[q_dim])?,
                bk: load_optional(file, &name("attn_k.bias"), &[kv_dim])?,
                bv: load_optional(file, &name("attn_v.bias"), &[kv_dim])?,
                wo: load_matrix(file, &name("attn_output.weight"), q_dim, d, numerics)?,
                ffn_norm: load(file, &name("ffn_norm.weight"), &[d])?,
                w_gate,
                w_up,
                w_down: load_matrix(file, &name("ffn_down.weight"), c.n_ff, d, numerics)?,
            });
        }
        progress(c.n_layer, c.n_layer);
        let output_norm = load(file, "output_norm.weight", &[d])?;
        let output = load_matrix_optional(file, "output.weight", d, c.n_vocab, numerics)?;
        Ok(Llama { config, numerics, token_embd, layers, output_norm, output })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Runs the batch's chunks (checked by [`BatchLayout::new`]) and returns the logits `rows`
    /// asks for.
    pub(super) fn forward(&self, layout: &BatchLayout, pool: &mut KvPool, rows: LogitRows) -> Vec<f32> {
        let c = &self.config;
        let rope_config = c.rope.as_ref().expect("the Llama family uses RoPE");
        let (d, n) = (c.n_embd, layout.n_rows());
        let (q_dim, kv_dim) = (c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        let rope_table = rope::RopeTable::new(&layout.positions, rope_config);

        let mut x: Vec<f32> =
            layout.tokens.iter().flat_map(|&t| self.token_embd.row_f32(d, t as usize)).collect();
        let (mut h, mut q, mut k, mut v) =
            (vec![0.0; n * d], vec![0.0; n * q_dim], vec![0.0; n * kv_dim], vec![0.0; n * kv_dim]);
        let mut attn = vec![0.0; n * q_dim];
        let mut projected = vec![0.0; n * d];
        let (mut gate, mut up) = (vec![0.0; n * c.n_ff], vec![0.0; n * c.n_ff]);
        for (i, layer) in self.layers.iter().enumerate() {
            norm::rms_norm(&x, &layer.attn_norm, &mut h, d, c.norm_eps);
            matmul(&h, &layer.wq, layer.bq.as_deref(), &mut q, d, q_dim);
            matmul(&h, &layer.wk, layer.bk.as_deref(), &mut k, d, kv_dim);
            matmul(&h, &layer.wv, layer.bv.as_deref(), &mut v, d, kv_dim);
            rope::rope_with(&mut q, &rope_table, c.n_head);
            rope::rope_with(&mut k, &rope_table, c.n_head_kv);
            layout.write(pool, i, &k, &v);
            let shape = (c.n_head, c.n_head_kv, c.head_dim);
            layout.attend(pool, i, &q, &mut attn, |q, keys, values, out, start| {
                causal_attention(self.numerics, q, keys, values, out, start, shape)
            });
            matmul(&attn, &layer.wo, None, &mut projected, q_dim, d);
            add(&mut x, &projected);

            norm::rms_norm(&x, &layer.ffn_norm, &mut h, d, c.norm_eps);
            matmul(&h, &layer.w_gate, None, &mut gate, d, c.n_ff);
            matmul(&h, &layer.w_up, None, &mut up, d, c.n_ff);
            match self.numerics {
                Numerics::Exact => activation::swiglu_in_place(&mut gate, &up, activation::swiglu),
                Numerics::LlamaCpp => activation::swiglu_in_place(&mut gate, &up, activation::swiglu_f32),
            }
            matmul(&gate, &layer.w_down, None, &mut projected, c.n_ff, d);
            add(&mut x, &projected);
        }
        norm::rms_norm(&x, &self.output_norm, &mut h, d, c.norm_eps);
        let h = layout.logit_rows(h, d, rows);
        let mut logits = vec![0.0; h.len() / d * c.n_vocab];
        matmul(&h, self.output.as_ref().unwrap_or(&self.token_embd), None, &mut logits, d, c.n_vocab);
        logits
    }
}

pub(super) fn add(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
