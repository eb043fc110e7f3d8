//! GPT-2 on the CPU: learned absolute positions, pre-LayerNorm blocks, multi-head attention with a
//! fused qkv projection, GELU (tanh form, GPT-2's `gelu_new`), output tied to the token embedding
//! unless the file has its own.
//!
//! Per layer: h = x + Wo attn(Wqkv LN1(x) + b) + bo, x = h + Wdown gelu(Wup LN2(h) + bu) + bd.

use super::batch::causal_attention;
use super::batch::{BatchLayout, LogitRows};
use super::kv_cache::KvPool;
use super::llama::add;
use super::weights::{load, load_matrix, load_matrix_optional};
use super::{ModelConfig, ModelError, Numerics};
use crate::cpu::quantized::{Matrix, matmul};
use crate::cpu::{activation, embedding, norm};
use crate::gguf::GgufFile;

struct Layer {
    ln1: (Vec<f32>, Vec<f32>),
    w_qkv: Matrix,
    b_qkv: Vec<f32>,
    w_o: Matrix,
    b_o: Vec<f32>,
    ln2: (Vec<f32>, Vec<f32>),
    w_up: Matrix,
    b_up: Vec<f32>,
    w_down: Matrix,
    b_down: Vec<f32>,
}

pub struct Gpt2 {
    config: ModelConfig,
    pub(super) numerics: Numerics,
    token_embd: Matrix,
    position_embd: Vec<f32>,
    layers: Vec<Layer>,
    output_norm: (Vec<f32>, Vec<f32>),
    output: Option<Matrix>,
}

impl Gpt2 {
    pub fn load(
        file: &GgufFile,
        config: ModelConfig,
        numerics: Numerics,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Self, ModelError> {
        let c = &config;
        let (d, f) = (c.n_embd, c.n_ff);
        let norm = |prefix: &str| -> Result<(Vec<f32>, Vec<f32>), ModelError> {
            Ok((load(file, &format!("{prefix}.weight"), &[d])?, load(file, &format!("{prefix}.bias"), &[d])?))
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            progress(i, c.n_layer);
            let name = |suffix: &str| format!("blk.{i}.{suffix}");
            layers.push(Layer {
                ln1: norm(&name("attn_norm"))?,
                w_qkv: load_matrix(file, &name("attn_qkv.weight"), d, 3 * d, numerics)?,
                b_qkv: load(file, &name("attn_qkv.bias"), &[3 * d])?,
                w_o: load_matrix(file, &name("attn_output.weight"), d, d, numerics)?,
                b_o: load(file, &name("attn_output.bias"), &[d])?,
                ln2: norm(&name("ffn_norm"))?,
                w_up: load_matrix(file, &name("ffn_up.weight"), d, f, numerics)?,
                b_up: load(file, &name("ffn_up.bias"), &[f])?,
                w_down: load_matrix(file, &name("ffn_down.weight"), f, d, numerics)?,
                b_down: load(file, &name("ffn_down.bias"), &[d])?,
            });
        }
        progress(c.n_layer, c.n_layer);
        Ok(Gpt2 {
            token_embd: load_matrix(file, "token_embd.weight", d, c.n_vocab, numerics)?,
            position_embd: load(file, "position_embd.weight", &[d, c.n_ctx_train])?,
            output_norm: norm("output_norm")?,
            output: load_matrix_optional(file, "output.weight", d, c.n_vocab, numerics)?,
            numerics,
            layers,
            config,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Runs the batch's chunks (checked by [`BatchLayout::new`]) and returns the logits `rows`
    /// asks for.
    pub(super) fn forward(&self, layout: &BatchLayout, pool: &mut KvPool, rows: LogitRows) -> Vec<f32> {
        let c = &self.config;
        let (d, n) = (c.n_embd, layout.n_rows());

        let mut x: Vec<f32> =
            layout.tokens.iter().flat_map(|&t| self.token_embd.row_f32(d, t as usize)).collect();
        embedding::position_add(&self.position_embd, &layout.positions, &mut x, d);
        let mut h = vec![0.0; n * d];
        let mut qkv = vec![0.0; n * 3 * d];
        let (mut q, mut k, mut v) = (vec![0.0; n * d], vec![0.0; n * d], vec![0.0; n * d]);
        let mut attn = vec![0.0; n * d];
        let mut projected = vec![0.0; n * d];
        let mut up = vec![0.0; n * c.n_ff];
        for (i, layer) in self.layers.iter().enumerate() {
            norm::layer_norm(&x, &layer.ln1.0, &layer.ln1.1, &mut h, d, c.norm_eps);
            matmul(&h, &layer.w_qkv, Some(&layer.b_qkv), &mut qkv, d, 3 * d);
            for t in 0..n {
                let row = &qkv[t * 3 * d..(t + 1) * 3 * d];
                q[t * d..(t + 1) * d].copy_from_slice(&row[..d]);
                k[t * d..(t + 1) * d].copy_from_slice(&row[d..2 * d]);
                v[t * d..(t + 1) * d].copy_from_slice(&row[2 * d..]);
            }
            layout.write(pool, i, &k, &v);
            let shape = (c.n_head, c.n_head, c.head_dim);
            layout.attend(pool, i, &q, &mut attn, |q, keys, values, out, start| {
                causal_attention(self.numerics, q, keys, values, out, start, shape)
            });
            matmul(&attn, &layer.w_o, Some(&layer.b_o), &mut projected, d, d);
            add(&mut x, &projected);

            norm::layer_norm(&x, &layer.ln2.0, &layer.ln2.1, &mut h, d, c.norm_eps);
            matmul(&h, &layer.w_up, Some(&layer.b_up), &mut up, d, c.n_ff);
            for u in up.iter_mut() {
                *u = activation::gelu_tanh(*u);
            }
            matmul(&up, &layer.w_down, Some(&layer.b_down), &mut projected, c.n_ff, d);
            add(&mut x, &projected);
        }
        norm::layer_norm(&x, &self.output_norm.0, &self.output_norm.1, &mut h, d, c.norm_eps);
        let h = layout.logit_rows(h, d, rows);
        let mut logits = vec![0.0; h.len() / d * c.n_vocab];
        matmul(&h, self.output.as_ref().unwrap_or(&self.token_embd), None, &mut logits, d, c.n_vocab);
        logits
    }
}
