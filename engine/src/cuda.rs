//! The Llama family (Llama, SmolLM2, Qwen2, Phi-3) and gpt-oss on the GPU: weights uploaded in
//! their stored precision (F32/F16/BF16 rows, Q8_0/Q4_0/Q4_1/Q4_K/Q6_K blocks), one token per step through
//! the kernels of `gpu/` (embedding lookup, RMSNorm, GEMV, RoPE, KV write, decode attention over
//! a KV cache, SwiGLU, residual adds), logits copied back. The KV cache is paged f16 with
//! flash-decoding attention (host::attention) for head dims 64, 80, 96 and 128, and a contiguous
//! f32 cache with the simple decode kernel for other head dims (the tiny test fixtures). Every kernel of a step reads the
//! token and its position from device memory, so the step is captured once as a CUDA graph and
//! replayed for each token. A prompt of several tokens runs as one batched pass (`prefill`): GEMMs
//! on the tensor cores and causal flash attention over the paged cache.
//! Quantized matrices meet either f32 activations (`integer_activations` off: the exact numbers of
//! the CPU reference, `Numerics::Exact`) or activations quantized to 8 bits per block of 32 (on,
//! the default: llama.cpp's numbers, and faster); K-quants have only the integer form.
//! gpt-oss is the same decoder with an attention sink per head, sliding-window attention on
//! even layers, a bias on every attention projection, YaRN without truncation, and a mixture of
//! experts in place of the FFN: a router (GEMV with bias), the top k experts' softmax weights,
//! the selected experts' MXFP4 gate and up rows in one launch, gpt-oss's clamped SwiGLU, the
//! selected down rows, and their weighted sum (decode reads only the selected experts; a prompt
//! groups its tokens by expert so each expert's weights are read once per layer).
//! Checked against the CPU reference.

use crate::cpu::rope::RopeLayout;
use crate::gguf::{GgmlType, GgufFile};
use crate::model::gpt_oss::{SWIGLU_ALPHA, SWIGLU_LIMIT};
use crate::model::{Architecture, ModelConfig, ModelError};
use host::attention::{AttentionOptions, DecodeWorkspace, HEAD_DIMS, PAGE_SIZE, PagedKvCache, PagedKvShape};
use host::matmul::{GpuMatrix, Q8Activations, WeightFormat};
use host::moe::{ExpertRouting, stack_experts};
use host::rope::{Rope, RopeLayout as GpuRopeLayout, Yarn};
use host::{CudaSlice, Gpu};

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
        gib(ledger.total()),
        gib(*free)
    )]
    OutOfMemory { ledger: VramLedger, free: usize, advice: String },
    #[error("the {0} architecture has no GPU implementation yet")]
    Architecture(&'static str),
}

fn gib(bytes: usize) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// Device memory a loaded model holds, by category.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VramLedger {
    /// Weight matrices and vectors, as stored in the GGUF.
    pub weights: usize,
    /// Keys and values of every layer for the whole context.
    pub kv_cache: usize,
    /// Activations of one step.
    pub activations: usize,
    /// Quantized activations, positions and other scratch.
    pub workspace: usize,
}

impl VramLedger {
    pub fn total(&self) -> usize {
        self.weights + self.kv_cache + self.activations + self.workspace
    }
}

impl std::fmt::Display for VramLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "weights {}, KV cache {}, activations {}, workspace {}",
            gib(self.weights),
            gib(self.kv_cache),
            gib(self.activations),
            gib(self.workspace)
        )
    }
}

/// Memory the CUDA context, kernel module and graph take beyond our allocations (measured on the
/// H100: about 0.5 GiB is used before the first allocation; this is the margin kept free).
const CONTEXT_MARGIN: usize = 256 << 20;

/// Matrices that read the same input and write consecutive parts of one output (q, k, v; gate,
/// up): one matrix when they share a format, so that a single GEMV computes them all, else one
/// matrix per part.
struct Stacked {
    matrices: Vec<GpuMatrix>,
    /// Rows of each logical part (q, k, v or gate, up), in order.
    parts: Vec<usize>,
}

impl Stacked {
    fn matrices(&self) -> &[GpuMatrix] {
        &self.matrices
    }

    /// The matrix holding part `part` and the rows of it that do.
    fn part(&self, part: usize) -> (&GpuMatrix, std::ops::Range<usize>) {
        if let [one] = self.matrices.as_slice() {
            let start = self.parts[..part].iter().sum();
            (one, start..start + self.parts[part])
        } else {
            let m = &self.matrices[part];
            (m, 0..m.n_out)
        }
    }
}

/// Whether a matrix meets 8-bit activations: K-quants always (they have only the integer form),
/// other block formats when `integer_activations` is on.
fn uses_q8(w: &GpuMatrix, integer_activations: bool) -> bool {
    w.format().integer_only() || (integer_activations && w.is_blocks())
}

enum KvCache {
    /// f16 pages (one sequence, every page reserved at load), flash-decoding attention.
    Paged { cache: Box<PagedKvCache>, workspace: Box<DecodeWorkspace>, options: AttentionOptions },
    /// f32 [capacity, n_head_kv, head_dim] per layer, for head dims the paged kernels lack.
    Contiguous { keys: Vec<CudaSlice<f32>>, values: Vec<CudaSlice<f32>> },
}

struct Layer {
    attn_norm: CudaSlice<f32>,
    /// [q; k; v] rows, and their biases (Qwen2, gpt-oss): one per matrix of `qkv`, or none.
    qkv: Stacked,
    qkv_bias: Vec<CudaSlice<f32>>,
    wo: GpuMatrix,
    wo_bias: Option<CudaSlice<f32>>,
    /// gpt-oss: a learned logit per query head that joins each softmax's denominator.
    sinks: Option<CudaSlice<f32>>,
    /// Sliding window of this layer's attention (0: the whole context).
    window: usize,
    /// The norm before the FFN (gpt-oss calls it post_attention_norm).
    ffn_norm: CudaSlice<f32>,
    ffn: Ffn,
}

/// (Layers live in a Vec: a variant's size costs nothing worth a Box.)
#[allow(clippy::large_enum_variant)]
enum Ffn {
    /// down (swiglu(gate x, up x)), [gate; up] stacked.
    Dense {
        gate_up: Stacked,
        down: GpuMatrix,
    },
    Experts(Experts),
}

/// A mixture of experts (gpt-oss): expert tensors uploaded as stored (MXFP4), gate and up
/// stacked per expert so that one launch computes both for the selected experts.
struct Experts {
    router: GpuMatrix,
    router_bias: CudaSlice<f32>,
    /// Per expert: its gate rows, then its up rows (2 n_ff), and their biases in the same order.
    gate_up: GpuMatrix,
    gate_up_bias: CudaSlice<f32>,
    down: GpuMatrix,
    down_bias: CudaSlice<f32>,
}

impl Layer {
    fn attention_options(&self, base: &AttentionOptions) -> AttentionOptions {
        AttentionOptions { window: self.window, ..*base }
    }

    /// Every matrix, for checks over all of them.
    fn matrices(&self) -> impl Iterator<Item = &GpuMatrix> {
        let ffn: Vec<&GpuMatrix> = match &self.ffn {
            Ffn::Dense { gate_up, down } => gate_up.matrices().iter().chain([down]).collect(),
            Ffn::Experts(e) => vec![&e.router, &e.gate_up, &e.down],
        };
        self.qkv.matrices().iter().chain([&self.wo]).chain(ffn)
    }
}

/// Scratch of the MoE part of one decode step.
struct MoeBuffers {
    /// Router logits [n_expert], the chosen experts [k] and their weights [k].
    logits: CudaSlice<f32>,
    ids: CudaSlice<u32>,
    weights: CudaSlice<f32>,
    /// [gate; up] of each chosen expert [k, 2 n_ff], their activations (8-bit) and outputs [k, d].
    gate_up: CudaSlice<f32>,
    act_q: Q8Activations,
    out: CudaSlice<f32>,
}

/// Scratch activations of one decode step.
struct Buffers {
    x: CudaSlice<f32>,
    h: CudaSlice<f32>,
    /// [q; k; v] of the token.
    qkv: CudaSlice<f32>,
    attn: CudaSlice<f32>,
    projected: CudaSlice<f32>,
    /// [gate; up].
    gate_up: CudaSlice<f32>,
    act: CudaSlice<f32>,
    logits: CudaSlice<f32>,
    /// [token, position, length (position + 1), sequence slot], read by the step's kernels.
    args: CudaSlice<u32>,
    /// 8-bit copies of h [n_embd], attn [q_dim] and act [n_ff] for the integer GEMVs.
    hq: Q8Activations,
    attn_q: Q8Activations,
    act_q: Q8Activations,
    moe: Option<MoeBuffers>,
}

pub struct GpuModel {
    gpu: Gpu,
    config: ModelConfig,
    rope: Rope,
    /// The embedding table when it is not also the output matrix (tied models use `output`).
    token_embd: Option<GpuMatrix>,
    layers: Vec<Layer>,
    output_norm: CudaSlice<f32>,
    output: GpuMatrix,
    kv: KvCache,
    capacity: usize,
    /// Positions filled so far.
    pub len: usize,
    buffers: Buffers,
    /// The captured decode step, made on first use.
    graph: Option<host::CudaGraph>,
    /// Capture and replay the step as a graph (default), or launch its kernels one by one.
    pub use_graph: bool,
    /// Quantized matrices meet 8-bit activations (see the module notes).
    integer_activations: bool,
    ledger: VramLedger,
}

fn format_of(name: &str, ty: GgmlType) -> Result<WeightFormat, CudaError> {
    Ok(match ty {
        GgmlType::F32 => WeightFormat::F32,
        GgmlType::F16 => WeightFormat::F16,
        GgmlType::Bf16 => WeightFormat::Bf16,
        GgmlType::Q8_0 => WeightFormat::Q8_0,
        GgmlType::Q4_0 => WeightFormat::Q4_0,
        GgmlType::Q4_1 => WeightFormat::Q4_1,
        GgmlType::Q4K => WeightFormat::Q4K,
        GgmlType::Q6K => WeightFormat::Q6K,
        GgmlType::Mxfp4 => WeightFormat::Mxfp4,
        ty => return Err(CudaError::UnsupportedType { name: name.to_string(), ty }),
    })
}

/// Scratch of the prompt pass's FFN (one per pass, on the stack: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum PrefillFfn {
    Dense {
        gate: CudaSlice<f32>,
        up: CudaSlice<f32>,
        act: CudaSlice<f32>,
    },
    /// Router logits [T, n_expert], choices and weights [T, k], their grouping by expert, and per
    /// assignment [gate; up] [T k, 2 n_ff], activations [T k, n_ff] and outputs [T k, d].
    Experts {
        logits: CudaSlice<f32>,
        ids: CudaSlice<u32>,
        weights: CudaSlice<f32>,
        routing: ExpertRouting,
        gate_up: CudaSlice<f32>,
        act: CudaSlice<f32>,
        out: CudaSlice<f32>,
    },
}

impl GpuModel {
    pub fn load(
        gpu: Gpu,
        file: &GgufFile,
        capacity: usize,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Self, CudaError> {
        let config = ModelConfig::from_gguf(file).map_err(ModelError::from)?;
        if !matches!(
            config.architecture,
            Architecture::Llama | Architecture::Qwen2 | Architecture::Phi3 | Architecture::GptOss
        ) {
            return Err(CudaError::Architecture(config.architecture.name()));
        }
        let c = config.clone();
        let (d, q_dim, kv_dim) = (c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        // gpt-oss: its checked configuration (experts, window); its attention needs the paged
        // kernels (sinks and windows).
        let gpt_oss = match c.architecture {
            Architecture::GptOss => Some(crate::model::gpt_oss::Config::new(&c).map_err(ModelError::from)?),
            _ => None,
        };
        let paged = HEAD_DIMS.contains(&c.head_dim);
        if gpt_oss.is_some() && !paged {
            return Err(CudaError::Architecture("gpt-oss with a head dim other than 64, 80, 96 or 128"));
        }
        // The dense FFN's width (none with experts: its buffers are then a block of 32).
        let dense_ff = if gpt_oss.is_some() { 32 } else { c.n_ff };
        let moe_activations = gpt_oss.as_ref().map_or(0, |g| {
            let k = g.n_expert_used;
            4 * (g.n_expert + 2 * k + 2 * k * g.n_ff_expert + k * d) + k * g.n_ff_expert * 9 / 8
        });
        // What this will allocate, checked against free memory before anything is uploaded.
        let kv_per_position = 2 * c.n_layer * kv_dim * if paged { 2 } else { 4 };
        let ledger = VramLedger {
            weights: file.tensors().iter().map(|t| file.tensor_data(t).len()).sum(),
            kv_cache: capacity.next_multiple_of(PAGE_SIZE) * kv_per_position,
            activations: 4 * (4 * d + 3 * q_dim + 2 * kv_dim + 3 * dense_ff + c.n_vocab) + moe_activations,
            workspace: (d + q_dim + dense_ff) * 9 / 8 + 64,
        };
        let (free, _) = gpu.memory()?;
        if ledger.total() + CONTEXT_MARGIN > free {
            let rest = ledger.total() - ledger.kv_cache + CONTEXT_MARGIN;
            let advice = if rest < free {
                format!(
                    "lower --ctx-size from {capacity} to at most {} (KV cache {} per position)",
                    (free - rest) / kv_per_position,
                    gib(kv_per_position)
                )
            } else {
                "the weights alone do not fit: use a smaller or more quantized model".to_string()
            };
            return Err(CudaError::OutOfMemory { ledger, free, advice });
        }
        // A matrix tensor [n_out, n_in], checked to be there with that shape.
        let matrix_info = |name: &str, n_in: usize, n_out: usize| -> Result<_, CudaError> {
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
            Ok(info)
        };
        // A matrix uploaded as stored.
        let upload = |name: &str, n_in: usize, n_out: usize| -> Result<GpuMatrix, CudaError> {
            let info = matrix_info(name, n_in, n_out)?;
            Ok(gpu.upload_matrix(format_of(name, info.ty)?, file.tensor_data(info), n_in, n_out)?)
        };
        let vector = |name: &str, n: usize| -> Result<Vec<f32>, CudaError> {
            crate::model::weights::load(file, name, &[n]).map_err(|e| ModelError::from(e).into())
        };
        let device_vector = |name: &str, n: usize| -> Result<CudaSlice<f32>, CudaError> {
            Ok(gpu.upload(&vector(name, n)?)?)
        };
        // Tensors (name, n_out) that read the same input of n_in values and hold the logical
        // parts of `parts` rows each, as one matrix when they share a format (their bytes
        // concatenated), else one matrix per tensor (then a tensor per part).
        let stacked = |tensors: &[(String, usize)],
                       parts: &[usize],
                       n_in: usize|
         -> Result<Stacked, CudaError> {
            let infos = tensors
                .iter()
                .map(|(name, n_out)| matrix_info(name, n_in, *n_out))
                .collect::<Result<Vec<_>, _>>()?;
            let matrices = if infos.iter().all(|i| i.ty == infos[0].ty) {
                let bytes: std::borrow::Cow<[u8]> = match infos.as_slice() {
                    [one] => file.tensor_data(one).into(),
                    several => {
                        several.iter().map(|info| file.tensor_data(info)).collect::<Vec<_>>().concat().into()
                    }
                };
                let rows = tensors.iter().map(|(_, n_out)| n_out).sum();
                vec![gpu.upload_matrix(format_of(&tensors[0].0, infos[0].ty)?, &bytes, n_in, rows)?]
            } else {
                tensors.iter().map(|(name, n_out)| upload(name, n_in, *n_out)).collect::<Result<_, _>>()?
            };
            Ok(Stacked { matrices, parts: parts.to_vec() })
        };
        // Layer i's experts: each expert tensor [n_expert, rows, n_in] checked (MXFP4, that shape),
        // gate and up stacked per expert.
        let experts = |i: usize, g: &crate::model::gpt_oss::Config| -> Result<Experts, CudaError> {
            let name = |suffix: &str| format!("blk.{i}.{suffix}");
            let (n_expert, ff) = (g.n_expert, g.n_ff_expert);
            let tensor = |suffix: &str, n_in: usize, rows: usize| -> Result<&[u8], CudaError> {
                let name = name(suffix);
                let info = file.tensor(&name).ok_or_else(|| {
                    ModelError::Weight(crate::model::weights::WeightError::Missing(name.clone()))
                })?;
                let expected = vec![n_in as u64, rows as u64, n_expert as u64];
                if info.dims != expected {
                    return Err(ModelError::Weight(crate::model::weights::WeightError::Shape {
                        name,
                        actual: info.dims.clone(),
                        expected,
                    })
                    .into());
                }
                if info.ty != GgmlType::Mxfp4 {
                    return Err(CudaError::UnsupportedType { name, ty: info.ty });
                }
                Ok(file.tensor_data(info))
            };
            let bias = |suffix: &str, rows: usize| -> Result<Vec<f32>, CudaError> {
                crate::model::weights::load(file, &name(suffix), &[rows, n_expert])
                    .map_err(|e| ModelError::from(e).into())
            };
            let (gate, up) = (tensor("ffn_gate_exps.weight", d, ff)?, tensor("ffn_up_exps.weight", d, ff)?);
            let gate_up = stack_experts(&[gate, up], n_expert);
            let (gate_bias, up_bias) = (bias("ffn_gate_exps.bias", ff)?, bias("ffn_up_exps.bias", ff)?);
            let gate_up_bias: Vec<f32> = (0..n_expert)
                .flat_map(|e| gate_bias[e * ff..(e + 1) * ff].iter().chain(&up_bias[e * ff..(e + 1) * ff]))
                .copied()
                .collect();
            Ok(Experts {
                router: upload(&name("ffn_gate_inp.weight"), d, n_expert)?,
                router_bias: device_vector(&name("ffn_gate_inp.bias"), n_expert)?,
                gate_up: gpu.upload_matrix(WeightFormat::Mxfp4, &gate_up, d, n_expert * 2 * ff)?,
                gate_up_bias: gpu.upload(&gate_up_bias)?,
                down: gpu.upload_matrix(
                    WeightFormat::Mxfp4,
                    tensor("ffn_down_exps.weight", ff, d)?,
                    ff,
                    n_expert * d,
                )?,
                down_bias: gpu.upload(&bias("ffn_down_exps.bias", d)?)?,
            })
        };
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            progress(i, c.n_layer);
            let name = |suffix: &str| format!("blk.{i}.{suffix}");
            let qkv_parts = [q_dim, kv_dim, kv_dim];
            let qkv = if file.tensor(&name("attn_qkv.weight")).is_some() {
                stacked(&[(name("attn_qkv.weight"), q_dim + 2 * kv_dim)], &qkv_parts, d)?
            } else {
                let tensors = [
                    (name("attn_q.weight"), q_dim),
                    (name("attn_k.weight"), kv_dim),
                    (name("attn_v.weight"), kv_dim),
                ];
                stacked(&tensors, &qkv_parts, d)?
            };
            let qkv_bias = if file.tensor(&name("attn_q.bias")).is_some() {
                let parts = [
                    vector(&name("attn_q.bias"), q_dim)?,
                    vector(&name("attn_k.bias"), kv_dim)?,
                    vector(&name("attn_v.bias"), kv_dim)?,
                ];
                if qkv.matrices().len() == 1 {
                    vec![gpu.upload(&parts.concat())?]
                } else {
                    parts.iter().map(|p| gpu.upload(p)).collect::<Result<_, _>>()?
                }
            } else {
                Vec::new()
            };
            let optional_vector = |suffix: &str, n: usize| -> Result<Option<CudaSlice<f32>>, CudaError> {
                let name = name(suffix);
                if file.tensor(&name).is_some() { Ok(Some(device_vector(&name, n)?)) } else { Ok(None) }
            };
            let ffn = match &gpt_oss {
                Some(g) => Ffn::Experts(experts(i, g)?),
                None => {
                    let gate_up = if file.tensor(&name("ffn_gate.weight")).is_some() {
                        stacked(
                            &[(name("ffn_gate.weight"), c.n_ff), (name("ffn_up.weight"), c.n_ff)],
                            &[c.n_ff, c.n_ff],
                            d,
                        )?
                    } else {
                        stacked(&[(name("ffn_up.weight"), 2 * c.n_ff)], &[c.n_ff, c.n_ff], d)?
                    };
                    Ffn::Dense { gate_up, down: upload(&name("ffn_down.weight"), c.n_ff, d)? }
                }
            };
            let ffn_norm = if gpt_oss.is_some() { "post_attention_norm.weight" } else { "ffn_norm.weight" };
            layers.push(Layer {
                attn_norm: device_vector(&name("attn_norm.weight"), d)?,
                qkv,
                qkv_bias,
                wo: upload(&name("attn_output.weight"), q_dim, d)?,
                wo_bias: optional_vector("attn_output.bias", d)?,
                sinks: optional_vector("attn_sinks.weight", c.n_head)?,
                window: gpt_oss.as_ref().map_or(0, |g| g.window(i)),
                ffn_norm: device_vector(&name(ffn_norm), d)?,
                ffn,
            });
        }
        progress(c.n_layer, c.n_layer);
        let (output, token_embd) = if file.tensor("output.weight").is_some() {
            (upload("output.weight", d, c.n_vocab)?, Some(upload("token_embd.weight", d, c.n_vocab)?))
        } else {
            (upload("token_embd.weight", d, c.n_vocab)?, None)
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
                truncate: y.truncate,
            }),
        };
        let zeros = |n: usize| gpu.upload(&vec![0.0f32; n]);
        let kv = if paged {
            let pages = capacity.div_ceil(PAGE_SIZE);
            let shape = PagedKvShape { n_pages: pages, n_head_kv: c.n_head_kv, head_dim: c.head_dim };
            let mut cache = PagedKvCache::new(&gpu, c.n_layer, shape, 1, pages)?;
            cache.reserve(&gpu, 0, capacity)?;
            let workspace = DecodeWorkspace::for_cache(&gpu, &cache, 1, c.n_head)?;
            KvCache::Paged {
                cache: Box::new(cache),
                workspace: Box::new(workspace),
                options: AttentionOptions::new(c.n_head, c.head_dim),
            }
        } else {
            let mut keys = Vec::with_capacity(c.n_layer);
            let mut values = Vec::with_capacity(c.n_layer);
            for _ in 0..c.n_layer {
                keys.push(zeros(capacity * kv_dim)?);
                values.push(zeros(capacity * kv_dim)?);
            }
            KvCache::Contiguous { keys, values }
        };
        let buffers = Buffers {
            x: zeros(d)?,
            h: zeros(d)?,
            qkv: zeros(q_dim + 2 * kv_dim)?,
            attn: zeros(q_dim)?,
            projected: zeros(d)?,
            gate_up: zeros(2 * dense_ff)?,
            act: zeros(dense_ff)?,
            logits: zeros(c.n_vocab)?,
            args: gpu.upload(&[0u32; 4])?,
            hq: gpu.q8_activations(d)?,
            attn_q: gpu.q8_activations(q_dim)?,
            act_q: gpu.q8_activations(dense_ff)?,
            moe: match &gpt_oss {
                Some(g) => {
                    let k = g.n_expert_used;
                    Some(MoeBuffers {
                        logits: zeros(g.n_expert)?,
                        ids: gpu.upload(&vec![0u32; k])?,
                        weights: zeros(k)?,
                        gate_up: zeros(k * 2 * g.n_ff_expert)?,
                        act_q: gpu.q8_activations(k * g.n_ff_expert)?,
                        out: zeros(k * d)?,
                    })
                }
                None => None,
            },
        };
        let output_norm = device_vector("output_norm.weight", d)?;
        Ok(GpuModel {
            gpu,
            config,
            rope,
            token_embd,
            layers,
            output_norm,
            output,
            kv,
            capacity,
            len: 0,
            buffers,
            graph: None,
            use_graph: true,
            integer_activations: true,
            ledger,
        })
    }

    /// Bytes of weights one decode step reads: every matrix and vector once, except the token
    /// embedding table, of which it reads one row.
    /// With experts, of each expert tensor it reads the k chosen experts' share (their biases are
    /// counted whole: a few KiB).
    pub fn weight_bytes_per_token(&self) -> usize {
        let embedding = self.token_embd.as_ref().map_or(0, |t| t.size() - t.size() / t.n_out);
        let unread_experts: usize = match &self.config.moe {
            Some(moe) => self
                .layers
                .iter()
                .map(|l| match &l.ffn {
                    Ffn::Experts(e) => {
                        let bytes = e.gate_up.size() + e.down.size();
                        bytes - bytes / moe.n_expert * moe.n_expert_used
                    }
                    Ffn::Dense { .. } => 0,
                })
                .sum(),
            None => 0,
        };
        self.ledger.weights - embedding - unread_experts
    }

    /// The GPU the model runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Device memory held, by category (weights counted as stored in the file).
    pub fn ledger(&self) -> VramLedger {
        self.ledger
    }

    /// Quantized matrices meet 8-bit activations (on, the default) or f32 ones (off: the exact
    /// numbers of the CPU reference; K-quants stay integer).
    pub fn set_integer_activations(&mut self, on: bool) {
        if on != self.integer_activations {
            self.integer_activations = on;
            self.graph = None;
        }
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
        if tokens.len() > 1 && self.can_prefill() {
            return self.prefill(tokens, true);
        }
        let mut logits = Vec::with_capacity(tokens.len() * self.config.n_vocab);
        for &token in tokens {
            logits.extend(self.step(token)?);
        }
        Ok(logits)
    }

    /// Logits [n_vocab] of the last of `tokens` (the prompt of a generation).
    pub fn forward_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>, CudaError> {
        if tokens.len() > 1 && self.can_prefill() {
            return self.prefill(tokens, false);
        }
        let mut last = Vec::new();
        for &token in tokens {
            last = self.step(token)?;
        }
        Ok(last)
    }

    /// Whether several tokens can go through one batched pass (GEMMs and flash attention): the
    /// paged cache and GEMM forms of every matrix (not BF16).
    fn can_prefill(&self) -> bool {
        let matrices = self.layers.iter().flat_map(|l| l.matrices());
        matches!(self.kv, KvCache::Paged { .. })
            && matrices.chain([&self.output]).all(|m| m.format() != WeightFormat::Bf16)
    }

    /// All `tokens` in one pass: embeddings, then per layer RMSNorm, the projections as GEMMs on
    /// the tensor cores, RoPE, the keys and values into the paged cache, causal flash attention
    /// over the cache, and the FFN; then the logits of every token (`all`) or of the last one
    /// (through the decode step's GEMV).
    fn prefill(&mut self, tokens: &[u32], all: bool) -> Result<Vec<f32>, CudaError> {
        let c = self.config.clone();
        let n = tokens.len();
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= c.n_vocab) {
            return Err(ModelError::TokenOutOfRange { token, n_vocab: c.n_vocab }.into());
        }
        if self.len + n > self.capacity {
            return Err(ModelError::ContextFull { needed: self.len + n, capacity: self.capacity }.into());
        }
        let (d, q_dim, kv_dim, ff) = (c.n_embd, c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_ff);
        let gpu = &self.gpu;
        let start = self.len as u32;
        let ids = gpu.upload(tokens)?;
        let positions = gpu.upload(&(start..start + n as u32).collect::<Vec<_>>())?;
        let slots = gpu.upload(&vec![0u32; n])?;
        let start_dev = gpu.upload(&[start])?;
        let mut x = gpu.alloc::<f32>(n * d)?;
        let mut h = gpu.alloc::<f32>(n * d)?;
        let (mut q, mut k, mut v) =
            (gpu.alloc::<f32>(n * q_dim)?, gpu.alloc::<f32>(n * kv_dim)?, gpu.alloc::<f32>(n * kv_dim)?);
        let mut attn = gpu.alloc::<f32>(n * q_dim)?;
        let mut projected = gpu.alloc::<f32>(n * d)?;
        let mut ffn = match &self.buffers.moe {
            None => PrefillFfn::Dense {
                gate: gpu.alloc::<f32>(n * ff)?,
                up: gpu.alloc::<f32>(n * ff)?,
                act: gpu.alloc::<f32>(n * ff)?,
            },
            Some(_) => {
                let moe = c.moe.as_ref().expect("gpt-oss has experts");
                let (n_expert, k, ff) = (moe.n_expert, moe.n_expert_used, moe.n_ff_expert);
                PrefillFfn::Experts {
                    logits: gpu.alloc::<f32>(n * n_expert)?,
                    ids: gpu.alloc::<u32>(n * k)?,
                    weights: gpu.alloc::<f32>(n * k)?,
                    routing: gpu.expert_routing(n_expert, n * k)?,
                    gate_up: gpu.alloc::<f32>(n * k * 2 * ff)?,
                    act: gpu.alloc::<f32>(n * k * ff)?,
                    out: gpu.alloc::<f32>(n * k * d)?,
                }
            }
        };
        let KvCache::Paged { cache, options, .. } = &mut self.kv else {
            unreachable!("can_prefill checked the cache");
        };
        // y = part `part` of a stacked matrix times x; a single matrix's bias covers all parts.
        let project = |w: &Stacked,
                       biases: &[CudaSlice<f32>],
                       part: usize,
                       x: &CudaSlice<f32>,
                       y: &mut CudaSlice<f32>|
         -> Result<(), host::Error> {
            let (m, rows) = w.part(part);
            let bias = if w.matrices().len() == 1 { biases.first() } else { biases.get(part) };
            gpu.gemm(m, rows, x, n, bias, y)
        };
        gpu.embed(self.token_embd.as_ref().unwrap_or(&self.output), &ids, &mut x)?;
        for (i, layer) in self.layers.iter().enumerate() {
            gpu.rms_norm(&x, &layer.attn_norm, &mut h, n, d, c.norm_eps)?;
            project(&layer.qkv, &layer.qkv_bias, 0, &h, &mut q)?;
            project(&layer.qkv, &layer.qkv_bias, 1, &h, &mut k)?;
            project(&layer.qkv, &layer.qkv_bias, 2, &h, &mut v)?;
            gpu.rope(&mut q, &positions, c.n_head, &self.rope)?;
            gpu.rope(&mut k, &positions, c.n_head_kv, &self.rope)?;
            gpu.kv_write_paged(cache, i, &k, &v, &slots, &positions)?;
            let layer_options = layer.attention_options(options);
            gpu.attention_prefill(
                cache,
                i,
                0,
                &q,
                &start_dev,
                layer.sinks.as_ref(),
                &layer_options,
                &mut attn,
            )?;
            gpu.gemm(&layer.wo, 0..d, &attn, n, layer.wo_bias.as_ref(), &mut projected)?;
            gpu.residual_add(&mut x, &projected)?;
            gpu.rms_norm(&x, &layer.ffn_norm, &mut h, n, d, c.norm_eps)?;
            match (&layer.ffn, &mut ffn) {
                (Ffn::Dense { gate_up, down }, PrefillFfn::Dense { gate, up, act }) => {
                    project(gate_up, &[], 0, &h, gate)?;
                    project(gate_up, &[], 1, &h, up)?;
                    gpu.swiglu(gate, up, act)?;
                    gpu.gemm(down, 0..d, act, n, None, &mut projected)?;
                }
                (
                    Ffn::Experts(e),
                    PrefillFfn::Experts { logits, ids, weights, routing, gate_up, act, out },
                ) => {
                    let moe = c.moe.as_ref().expect("gpt-oss has experts");
                    let (n_expert, k) = (moe.n_expert, moe.n_expert_used);
                    gpu.gemm(&e.router, 0..n_expert, &h, n, Some(&e.router_bias), logits)?;
                    gpu.top_k_experts(logits, n_expert, k, ids, weights)?;
                    gpu.route_experts(ids, k, routing)?;
                    gpu.gemm_experts(&e.gate_up, routing, &h, false, Some(&e.gate_up_bias), gate_up)?;
                    gpu.swiglu_oai(gate_up, moe.n_ff_expert, SWIGLU_ALPHA, SWIGLU_LIMIT, Some(act), None)?;
                    gpu.gemm_experts(&e.down, routing, act, true, Some(&e.down_bias), out)?;
                    gpu.moe_weighted_sum(out, weights, k, &mut projected)?;
                }
                _ => unreachable!("the prompt's FFN buffers follow the model's"),
            }
            gpu.residual_add(&mut x, &projected)?;
        }
        gpu.rms_norm(&x, &self.output_norm, &mut h, n, d, c.norm_eps)?;
        self.len += n;
        if all {
            let mut logits = gpu.alloc::<f32>(n * c.n_vocab)?;
            gpu.gemm(&self.output, 0..c.n_vocab, &h, n, None, &mut logits)?;
            return Ok(gpu.download(&logits)?);
        }
        // The last token's logits through the decode step's GEMV (the same numbers as a step).
        let b = &mut self.buffers;
        let last = h.slice((n - 1) * d..n * d);
        gpu.stream().memcpy_dtod(&last, &mut b.h).map_err(host::Error::from)?;
        if uses_q8(&self.output, self.integer_activations) {
            gpu.quantize_q8(&b.h, &mut b.hq)?;
            gpu.gemv_q8(&self.output, &b.hq, None, &mut b.logits)?;
        } else {
            gpu.gemv(&self.output, &b.h, None, &mut b.logits)?;
        }
        Ok(gpu.download(&b.logits)?)
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
        let args = [token, self.len as u32, self.len as u32 + 1, 0];
        stream.memcpy_htod(&args, &mut self.buffers.args).map_err(host::Error::from)?;
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
    /// The step is a chain of ~12 kernels per layer, most of them short: they are launched with
    /// programmatic dependent launch where the GPU has it, so that each one's blocks are scheduled
    /// (and the GEMVs' first weights requested) while the previous kernel runs.
    fn enqueue_step(&mut self) -> Result<(), CudaError> {
        self.gpu.set_dependent_launch(true);
        let enqueued = self.enqueue_step_kernels();
        self.gpu.set_dependent_launch(false);
        enqueued
    }

    fn enqueue_step_kernels(&mut self) -> Result<(), CudaError> {
        let c = &self.config;
        let (gpu, b) = (&self.gpu, &mut self.buffers);
        let (q_dim, kv_dim) = (c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        let integer = self.integer_activations;
        let uses_q8 = |w: &GpuMatrix| uses_q8(w, integer);
        let matvec = |w: &GpuMatrix,
                      x: &CudaSlice<f32>,
                      xq: &Q8Activations,
                      bias: Option<&CudaSlice<f32>>,
                      y: &mut host::CudaViewMut<f32>|
         -> Result<(), host::Error> {
            if uses_q8(w) { gpu.gemv_q8(w, xq, bias, y) } else { gpu.gemv(w, x, bias, y) }
        };
        // y = [W_1; W_2; ...] x, part by part when the parts could not be stacked; x given in
        // f32 and quantized.
        let stacked = |w: &Stacked,
                       x: &CudaSlice<f32>,
                       xq: &Q8Activations,
                       biases: &[CudaSlice<f32>],
                       y: &mut CudaSlice<f32>|
         -> Result<(), host::Error> {
            let mut start = 0;
            for (k, m) in w.matrices().iter().enumerate() {
                matvec(m, x, xq, biases.get(k), &mut y.slice_mut(start..start + m.n_out))?;
                start += m.n_out;
            }
            Ok(())
        };
        let (token, position, len, slot) =
            (b.args.slice(0..1), b.args.slice(1..2), b.args.slice(2..3), b.args.slice(3..4));
        let eps = c.norm_eps;
        gpu.embed(self.token_embd.as_ref().unwrap_or(&self.output), &token, &mut b.x)?;
        for (i, layer) in self.layers.iter().enumerate() {
            // x += the previous layer's output (none before the first layer), then the norm and
            // its 8-bit copy, in one launch.
            let residual = if i > 0 { Some(&b.projected) } else { None };
            gpu.rms_norm_q8(&mut b.x, residual, &layer.attn_norm, eps, Some(&mut b.h), &mut b.hq)?;
            stacked(&layer.qkv, &b.h, &b.hq, &layer.qkv_bias, &mut b.qkv)?;
            // q and k are adjacent in qkv: one RoPE launch over both sets of heads.
            gpu.rope(&mut b.qkv.slice_mut(..q_dim + kv_dim), &position, c.n_head + c.n_head_kv, &self.rope)?;
            let (q, k, v) =
                (b.qkv.slice(..q_dim), b.qkv.slice(q_dim..q_dim + kv_dim), b.qkv.slice(q_dim + kv_dim..));
            match &mut self.kv {
                KvCache::Paged { cache, workspace, options } => {
                    gpu.kv_write_paged(cache, i, &k, &v, &slot, &position)?;
                    let (options, sinks) = (layer.attention_options(options), layer.sinks.as_ref());
                    if uses_q8(&layer.wo) {
                        gpu.attention_decode_paged_q8(
                            cache,
                            i,
                            &q,
                            &len,
                            sinks,
                            &options,
                            workspace,
                            &mut b.attn,
                            &mut b.attn_q,
                        )?;
                    } else {
                        gpu.attention_decode_paged(
                            cache,
                            i,
                            &q,
                            &len,
                            sinks,
                            &options,
                            workspace,
                            &mut b.attn,
                        )?;
                    }
                }
                KvCache::Contiguous { keys, values } => {
                    gpu.kv_write(&k, &mut keys[i], &position)?;
                    gpu.kv_write(&v, &mut values[i], &position)?;
                    gpu.attention_decode(
                        &q,
                        &keys[i],
                        &values[i],
                        &mut b.attn,
                        &position,
                        c.n_head,
                        c.n_head_kv,
                        c.head_dim,
                    )?;
                    if uses_q8(&layer.wo) {
                        gpu.quantize_q8(&b.attn, &mut b.attn_q)?;
                    }
                }
            }
            matvec(&layer.wo, &b.attn, &b.attn_q, layer.wo_bias.as_ref(), &mut b.projected.slice_mut(..))?;
            gpu.rms_norm_q8(&mut b.x, Some(&b.projected), &layer.ffn_norm, eps, Some(&mut b.h), &mut b.hq)?;
            match &layer.ffn {
                Ffn::Dense { gate_up, down } => {
                    stacked(gate_up, &b.h, &b.hq, &[], &mut b.gate_up)?;
                    gpu.swiglu_q8(&b.gate_up, Some(&mut b.act), &mut b.act_q)?;
                    matvec(down, &b.act, &b.act_q, None, &mut b.projected.slice_mut(..))?;
                }
                Ffn::Experts(e) => {
                    // Only the chosen experts' rows are read: their ids stay on the device.
                    let moe = c.moe.as_ref().expect("gpt-oss has experts");
                    let (n_expert, k) = (moe.n_expert, moe.n_expert_used);
                    let m = b.moe.as_mut().expect("allocated for a model with experts");
                    matvec(&e.router, &b.h, &b.hq, Some(&e.router_bias), &mut m.logits.slice_mut(..))?;
                    gpu.top_k_experts(&m.logits, n_expert, k, &mut m.ids, &mut m.weights)?;
                    gpu.gemv_q8_experts(
                        &e.gate_up,
                        n_expert,
                        &m.ids,
                        &b.hq,
                        Some(&e.gate_up_bias),
                        &mut m.gate_up,
                    )?;
                    gpu.swiglu_oai(
                        &m.gate_up,
                        moe.n_ff_expert,
                        SWIGLU_ALPHA,
                        SWIGLU_LIMIT,
                        None,
                        Some(&mut m.act_q),
                    )?;
                    gpu.gemv_q8_experts(&e.down, n_expert, &m.ids, &m.act_q, Some(&e.down_bias), &mut m.out)?;
                    gpu.moe_weighted_sum(&m.out, &m.weights, k, &mut b.projected)?;
                }
            }
        }
        gpu.rms_norm_q8(&mut b.x, Some(&b.projected), &self.output_norm, eps, Some(&mut b.h), &mut b.hq)?;
        matvec(&self.output, &b.h, &b.hq, None, &mut b.logits.slice_mut(..))?;
        Ok(())
    }
}

impl crate::generate::Session for GpuModel {
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
        Ok(GpuModel::forward(self, tokens)?)
    }
    fn forward_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>, crate::generate::BackendError> {
        Ok(GpuModel::forward_last(self, tokens)?)
    }
    fn clear(&mut self) {
        GpuModel::clear(self);
    }
}
