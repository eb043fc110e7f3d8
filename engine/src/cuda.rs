//! The Llama family (Llama, SmolLM2, Qwen2, Phi-3) on the GPU, decode path: weights uploaded in
//! their stored precision (F32/F16/BF16 rows, Q8_0/Q4_0/Q4_1 blocks), one token per step through
//! the kernels of `gpu/` (embedding lookup, RMSNorm, GEMV, RoPE, KV write, decode attention over
//! an f32 KV cache, SwiGLU, residual adds), logits copied back. Every kernel of a step reads the
//! token and its position from device memory, so the step is captured once as a CUDA graph and
//! replayed for each token. A prompt runs as a sequence of steps for now (no GEMM prefill yet).
//! Checked against the CPU reference (`Numerics::Exact`).

use crate::cpu::rope::RopeLayout;
use crate::gguf::{GgmlType, GgufFile};
use crate::model::{Architecture, ModelConfig, ModelError};
use host::matmul::{GpuMatrix, WeightFormat};
use host::rope::{Rope, RopeLayout as GpuRopeLayout, Yarn};
use host::{CudaSlice, Gpu};

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error(transparent)]
    Gpu(#[from] host::Error),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("tensor {name} is {ty}; the GPU backend takes F32, F16, BF16, Q8_0, Q4_0 and Q4_1 for now")]
    UnsupportedType { name: String, ty: GgmlType },
    #[error("the {0} architecture has no GPU implementation yet")]
    Architecture(&'static str),
}

struct Layer {
    attn_norm: CudaSlice<f32>,
    wq: GpuMatrix,
    wk: GpuMatrix,
    wv: GpuMatrix,
    bq: Option<CudaSlice<f32>>,
    bk: Option<CudaSlice<f32>>,
    bv: Option<CudaSlice<f32>>,
    wo: GpuMatrix,
    ffn_norm: CudaSlice<f32>,
    w_gate: GpuMatrix,
    w_up: GpuMatrix,
    w_down: GpuMatrix,
}

/// Scratch activations of one decode step.
struct Buffers {
    x: CudaSlice<f32>,
    h: CudaSlice<f32>,
    q: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    attn: CudaSlice<f32>,
    projected: CudaSlice<f32>,
    gate: CudaSlice<f32>,
    up: CudaSlice<f32>,
    act: CudaSlice<f32>,
    logits: CudaSlice<f32>,
    token: CudaSlice<u32>,
    position: CudaSlice<u32>,
}

pub struct GpuLlama {
    gpu: Gpu,
    config: ModelConfig,
    rope: Rope,
    /// The embedding table when it is not also the output matrix (tied models use `output`).
    token_embd: Option<GpuMatrix>,
    layers: Vec<Layer>,
    output_norm: CudaSlice<f32>,
    output: GpuMatrix,
    keys: Vec<CudaSlice<f32>>,
    values: Vec<CudaSlice<f32>>,
    capacity: usize,
    /// Positions filled so far.
    pub len: usize,
    buffers: Buffers,
    /// The captured decode step, made on first use.
    graph: Option<host::CudaGraph>,
    /// Capture and replay the step as a graph (default), or launch its kernels one by one.
    pub use_graph: bool,
}

fn format_of(name: &str, ty: GgmlType) -> Result<WeightFormat, CudaError> {
    Ok(match ty {
        GgmlType::F32 => WeightFormat::F32,
        GgmlType::F16 => WeightFormat::F16,
        GgmlType::Bf16 => WeightFormat::Bf16,
        GgmlType::Q8_0 => WeightFormat::Q8_0,
        GgmlType::Q4_0 => WeightFormat::Q4_0,
        GgmlType::Q4_1 => WeightFormat::Q4_1,
        ty => return Err(CudaError::UnsupportedType { name: name.to_string(), ty }),
    })
}

impl GpuLlama {
    pub fn load(
        gpu: Gpu,
        file: &GgufFile,
        capacity: usize,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Self, CudaError> {
        let config = ModelConfig::from_gguf(file).map_err(ModelError::from)?;
        if !matches!(config.architecture, Architecture::Llama | Architecture::Qwen2 | Architecture::Phi3) {
            return Err(CudaError::Architecture(config.architecture.name()));
        }
        let c = config.clone();
        let (d, q_dim, kv_dim) = (c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        // Rows [start, end) of a stored matrix [n_out, n_in], uploaded as stored.
        let upload =
            |name: &str, n_in: usize, n_out: usize, rows: (usize, usize)| -> Result<GpuMatrix, CudaError> {
                let info = file.tensor(name).ok_or_else(|| {
                    ModelError::Weight(crate::model::weights::WeightError::Missing(name.into()))
                })?;
                let expected = vec![n_in as u64, n_out as u64];
                if info.dims != expected {
                    return Err(ModelError::Weight(crate::model::weights::WeightError::Shape {
                        name: name.into(),
                        actual: info.dims.clone(),
                        expected,
                    })
                    .into());
                }
                let format = format_of(name, info.ty)?;
                let (block, block_bytes) = format.block();
                let row = n_in / block * block_bytes;
                let bytes = &file.tensor_data(info)[rows.0 * row..rows.1 * row];
                Ok(gpu.upload_matrix(format, bytes, n_in, rows.1 - rows.0)?)
            };
        let vector = |name: &str, n: usize| -> Result<CudaSlice<f32>, CudaError> {
            Ok(gpu.upload(&crate::model::weights::load(file, name, &[n]).map_err(ModelError::from)?)?)
        };
        let optional_vector = |name: &str, n: usize| -> Result<Option<CudaSlice<f32>>, CudaError> {
            file.tensor(name).map(|_| vector(name, n)).transpose()
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            progress(i, c.n_layer);
            let name = |suffix: &str| format!("blk.{i}.{suffix}");
            let (wq, wk, wv) = if file.tensor(&name("attn_qkv.weight")).is_some() {
                let fused = name("attn_qkv.weight");
                let n_out = q_dim + 2 * kv_dim;
                (
                    upload(&fused, d, n_out, (0, q_dim))?,
                    upload(&fused, d, n_out, (q_dim, q_dim + kv_dim))?,
                    upload(&fused, d, n_out, (q_dim + kv_dim, n_out))?,
                )
            } else {
                (
                    upload(&name("attn_q.weight"), d, q_dim, (0, q_dim))?,
                    upload(&name("attn_k.weight"), d, kv_dim, (0, kv_dim))?,
                    upload(&name("attn_v.weight"), d, kv_dim, (0, kv_dim))?,
                )
            };
            let (w_gate, w_up) = if file.tensor(&name("ffn_gate.weight")).is_some() {
                (
                    upload(&name("ffn_gate.weight"), d, c.n_ff, (0, c.n_ff))?,
                    upload(&name("ffn_up.weight"), d, c.n_ff, (0, c.n_ff))?,
                )
            } else {
                let fused = name("ffn_up.weight");
                (
                    upload(&fused, d, 2 * c.n_ff, (0, c.n_ff))?,
                    upload(&fused, d, 2 * c.n_ff, (c.n_ff, 2 * c.n_ff))?,
                )
            };
            layers.push(Layer {
                attn_norm: vector(&name("attn_norm.weight"), d)?,
                wq,
                wk,
                wv,
                bq: optional_vector(&name("attn_q.bias"), q_dim)?,
                bk: optional_vector(&name("attn_k.bias"), kv_dim)?,
                bv: optional_vector(&name("attn_v.bias"), kv_dim)?,
                wo: upload(&name("attn_output.weight"), q_dim, d, (0, d))?,
                ffn_norm: vector(&name("ffn_norm.weight"), d)?,
                w_gate,
                w_up,
                w_down: upload(&name("ffn_down.weight"), c.n_ff, d, (0, d))?,
            });
        }
        progress(c.n_layer, c.n_layer);
        let (output, token_embd) = if file.tensor("output.weight").is_some() {
            (
                upload("output.weight", d, c.n_vocab, (0, c.n_vocab))?,
                Some(upload("token_embd.weight", d, c.n_vocab, (0, c.n_vocab))?),
            )
        } else {
            (upload("token_embd.weight", d, c.n_vocab, (0, c.n_vocab))?, None)
        };
        let rope_config = c.rope.expect("the Llama family uses RoPE");
        let rope = Rope {
            head_dim: rope_config.head_dim,
            rope_dim: rope_config.rope_dim,
            base: rope_config.base,
            layout: match rope_config.layout {
                RopeLayout::Interleaved => GpuRopeLayout::Interleaved,
                RopeLayout::Neox => GpuRopeLayout::Neox,
            },
            yarn: rope_config.yarn.map(|y| Yarn {
                factor: y.factor,
                original_context: y.original_context,
                beta_fast: y.beta_fast,
                beta_slow: y.beta_slow,
                ext_factor: y.ext_factor,
                attn_factor: y.attn_factor,
            }),
        };
        let zeros = |n: usize| gpu.upload(&vec![0.0f32; n]);
        let mut keys = Vec::with_capacity(c.n_layer);
        let mut values = Vec::with_capacity(c.n_layer);
        for _ in 0..c.n_layer {
            keys.push(zeros(capacity * kv_dim)?);
            values.push(zeros(capacity * kv_dim)?);
        }
        let buffers = Buffers {
            x: zeros(d)?,
            h: zeros(d)?,
            q: zeros(q_dim)?,
            k: zeros(kv_dim)?,
            v: zeros(kv_dim)?,
            attn: zeros(q_dim)?,
            projected: zeros(d)?,
            gate: zeros(c.n_ff)?,
            up: zeros(c.n_ff)?,
            act: zeros(c.n_ff)?,
            logits: zeros(c.n_vocab)?,
            token: gpu.upload(&[0u32])?,
            position: gpu.upload(&[0u32])?,
        };
        let output_norm = vector("output_norm.weight", d)?;
        Ok(GpuLlama {
            gpu,
            config,
            rope,
            token_embd,
            layers,
            output_norm,
            output,
            keys,
            values,
            capacity,
            len: 0,
            buffers,
            graph: None,
            use_graph: true,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Forgets the sequence.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Logits [tokens.len(), n_vocab] for `tokens` following what the cache holds.
    pub fn forward(&mut self, tokens: &[u32]) -> Result<Vec<f32>, CudaError> {
        let mut logits = Vec::with_capacity(tokens.len() * self.config.n_vocab);
        for &token in tokens {
            logits.extend(self.step(token)?);
        }
        Ok(logits)
    }

    /// One token at position `len`.
    fn step(&mut self, token: u32) -> Result<Vec<f32>, CudaError> {
        let c = &self.config;
        if token as usize >= c.n_vocab {
            return Err(ModelError::TokenOutOfRange { token, n_vocab: c.n_vocab }.into());
        }
        if self.len >= self.capacity {
            return Err(ModelError::ContextFull { needed: self.len + 1, capacity: self.capacity }.into());
        }
        let stream = self.gpu.stream().clone();
        stream.memcpy_htod(&[token], &mut self.buffers.token).map_err(host::Error::from)?;
        stream.memcpy_htod(&[self.len as u32], &mut self.buffers.position).map_err(host::Error::from)?;
        if self.use_graph {
            if self.graph.is_none() {
                stream
                    .begin_capture(host::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                    .map_err(host::Error::from)?;
                let enqueued = self.enqueue_step();
                let graph =
                    stream.end_capture(host::sys::CUgraphInstantiate_flags(0)).map_err(host::Error::from)?;
                enqueued?;
                self.graph = graph;
            }
            match &self.graph {
                Some(graph) => graph.launch().map_err(host::Error::from)?,
                None => self.enqueue_step()?,
            }
        } else {
            self.enqueue_step()?;
        }
        self.len += 1;
        Ok(self.gpu.download(&self.buffers.logits)?)
    }

    /// Queues every kernel of one decode step; the token and position are read on the device.
    fn enqueue_step(&mut self) -> Result<(), CudaError> {
        let c = &self.config;
        let (gpu, b) = (&self.gpu, &mut self.buffers);
        let d = c.n_embd;
        gpu.embed(self.token_embd.as_ref().unwrap_or(&self.output), &b.token, &mut b.x)?;
        for (i, layer) in self.layers.iter().enumerate() {
            gpu.rms_norm(&b.x, &layer.attn_norm, &mut b.h, 1, d, c.norm_eps)?;
            gpu.gemv(&layer.wq, &b.h, layer.bq.as_ref(), &mut b.q)?;
            gpu.gemv(&layer.wk, &b.h, layer.bk.as_ref(), &mut b.k)?;
            gpu.gemv(&layer.wv, &b.h, layer.bv.as_ref(), &mut b.v)?;
            gpu.rope(&mut b.q, &b.position, c.n_head, &self.rope)?;
            gpu.rope(&mut b.k, &b.position, c.n_head_kv, &self.rope)?;
            gpu.kv_write(&b.k, &mut self.keys[i], &b.position)?;
            gpu.kv_write(&b.v, &mut self.values[i], &b.position)?;
            gpu.attention_decode(
                &b.q,
                &self.keys[i],
                &self.values[i],
                &mut b.attn,
                &b.position,
                c.n_head,
                c.n_head_kv,
                c.head_dim,
            )?;
            gpu.gemv(&layer.wo, &b.attn, None, &mut b.projected)?;
            gpu.residual_add(&mut b.x, &b.projected)?;
            gpu.rms_norm(&b.x, &layer.ffn_norm, &mut b.h, 1, d, c.norm_eps)?;
            gpu.gemv(&layer.w_gate, &b.h, None, &mut b.gate)?;
            gpu.gemv(&layer.w_up, &b.h, None, &mut b.up)?;
            gpu.swiglu(&b.gate, &b.up, &mut b.act)?;
            gpu.gemv(&layer.w_down, &b.act, None, &mut b.projected)?;
            gpu.residual_add(&mut b.x, &b.projected)?;
        }
        gpu.rms_norm(&b.x, &self.output_norm, &mut b.h, 1, d, c.norm_eps)?;
        gpu.gemv(&self.output, &b.h, None, &mut b.logits)?;
        Ok(())
    }
}

impl crate::generate::Session for GpuLlama {
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
        Ok(GpuLlama::forward(self, tokens)?)
    }
    fn clear(&mut self) {
        GpuLlama::clear(self);
    }
}
