//! `engine synth PRESET OUT.gguf`: GGUF files with the real shapes, tensor types and metadata of
//! known models and random but valid weights, so that speed can be measured without downloading
//! the models. llama.cpp loads them too (that is how its side of the comparison runs).
//!
//! Weights: random quants with small positive scales, chosen so that dequantized values have a
//! spread of about 0.02 (the scale of trained weights), norm weights 1, biases 0. Deterministic
//! for a seed whatever the thread count: each 1 MiB chunk of a tensor has its own generator,
//! seeded by (seed, tensor, chunk). Tokenizer: a byte-level BPE vocabulary of the real size (the
//! 256 byte tokens, then every merge of two printable characters, then of those with a third),
//! the real model's special tokens at their real ids, and its pre-tokenizer name. What is not
//! reproduced: Llama 3.1's `rope_freqs` long-context factors (a 64-value tensor; no effect on
//! speed at the contexts measured). gpt-oss: every tensor of llama.cpp's gpt-oss GGUF (expert
//! matrices MXFP4 as [n_in, rows, n_expert], other matrices Q8_0, router, norms, biases and
//! attention sinks F32), biases and sinks 0, the harmony special tokens at their ids.

use crate::gguf::GgmlType;
use crate::gguf::writer::{MetaValue, TensorSpec, padding, write_head};
use half::f16;
use rayon::prelude::*;
use std::io::{BufWriter, Write};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("unknown preset {0:?}; presets: {list}", list = PRESETS.join(", "))]
    UnknownPreset(String),
    #[error("writing {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

pub const PRESETS: [&str; 8] = [
    "llama-3.1-8b",
    "qwen2.5-0.5b",
    "gpt2-124m",
    "gpt2-xl",
    "gpt2-xl-q8_0",
    "gpt-oss-20b",
    "tiny-llama",
    "tiny-gpt-oss",
];

/// Mixture-of-experts shape: experts, experts per token, rows of an expert's gate and up.
#[derive(Clone, Copy)]
struct Experts {
    n: usize,
    used: usize,
    ff: usize,
}

/// Shapes and types of a preset.
struct Preset {
    arch: &'static str,
    name: &'static str,
    vocab: usize,
    ctx: u32,
    d: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ff: usize,
    rope_base: f32,
    eps: f32,
    matrix: GgmlType,
    embedding: GgmlType,
    /// None: tied to the embedding.
    output: Option<GgmlType>,
    qkv_bias: bool,
    pre: &'static str,
    /// (id, text) of control tokens.
    specials: Vec<(usize, String)>,
    bos: u32,
    eos: u32,
    chat_template: Option<&'static str>,
    experts: Option<Experts>,
    sliding_window: u32,
}

/// A GPT-2 of width d (heads of 64, an FFN 4 d wide), its matrices and tied embedding in `ty`.
fn gpt2(name: &'static str, d: usize, layers: usize, heads: usize, ty: GgmlType) -> Preset {
    Preset {
        arch: "gpt2",
        name,
        vocab: 50257,
        ctx: 1024,
        d,
        layers,
        heads,
        kv_heads: heads,
        head_dim: d / heads,
        ff: 4 * d,
        rope_base: 0.0,
        eps: 1e-5,
        matrix: ty,
        embedding: ty,
        output: None,
        qkv_bias: true,
        pre: "gpt-2",
        specials: vec![(50256, "<|endoftext|>".into())],
        bos: 50256,
        eos: 50256,
        chat_template: None,
        experts: None,
        sliding_window: 0,
    }
}

fn preset(name: &str) -> Result<Preset, SynthError> {
    let llama3_specials = || {
        let mut s: Vec<(usize, String)> =
            (0..256).map(|i| (128000 + i, format!("<|reserved_special_token_{i}|>"))).collect();
        for (id, text) in [
            (128000, "<|begin_of_text|>"),
            (128001, "<|end_of_text|>"),
            (128006, "<|start_header_id|>"),
            (128007, "<|end_header_id|>"),
            (128009, "<|eot_id|>"),
        ] {
            s[id - 128000].1 = text.to_string();
        }
        s
    };
    Ok(match name {
        "llama-3.1-8b" => Preset {
            arch: "llama",
            name: "synthetic Llama-3.1-8B (Q4_K, Q6_K output)",
            vocab: 128256,
            ctx: 131072,
            d: 4096,
            layers: 32,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            ff: 14336,
            rope_base: 500000.0,
            eps: 1e-5,
            matrix: GgmlType::Q4K,
            embedding: GgmlType::Q4K,
            output: Some(GgmlType::Q6K),
            qkv_bias: false,
            pre: "llama-bpe",
            specials: llama3_specials(),
            bos: 128000,
            eos: 128009,
            chat_template: Some(LLAMA3_TEMPLATE),
            experts: None,
            sliding_window: 0,
        },
        "tiny-llama" => Preset {
            arch: "llama",
            name: "synthetic tiny Llama (Q4_K, Q6_K output; head dim 64)",
            vocab: 1024,
            ctx: 4096,
            d: 256,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 64,
            ff: 512,
            rope_base: 10000.0,
            eps: 1e-5,
            matrix: GgmlType::Q4K,
            embedding: GgmlType::Q4K,
            output: Some(GgmlType::Q6K),
            qkv_bias: false,
            pre: "llama-bpe",
            specials: vec![(1000, "<|begin_of_text|>".into()), (1001, "<|end_of_text|>".into())],
            bos: 1000,
            eos: 1001,
            chat_template: None,
            experts: None,
            sliding_window: 0,
        },
        "qwen2.5-0.5b" => {
            let mut specials: Vec<(usize, String)> = [
                "<|endoftext|>",
                "<|im_start|>",
                "<|im_end|>",
                "<|object_ref_start|>",
                "<|object_ref_end|>",
                "<|box_start|>",
                "<|box_end|>",
                "<|quad_start|>",
                "<|quad_end|>",
                "<|vision_start|>",
                "<|vision_end|>",
                "<|vision_pad|>",
                "<|image_pad|>",
                "<|video_pad|>",
            ]
            .iter()
            .enumerate()
            .map(|(i, t)| (151643 + i, t.to_string()))
            .collect();
            specials.extend((151665..151936).map(|i| (i, format!("<|pad_{i}|>"))));
            Preset {
                arch: "qwen2",
                name: "synthetic Qwen2.5-0.5B (Q8_0)",
                vocab: 151936,
                ctx: 32768,
                d: 896,
                layers: 24,
                heads: 14,
                kv_heads: 2,
                head_dim: 64,
                ff: 4864,
                rope_base: 1_000_000.0,
                eps: 1e-6,
                matrix: GgmlType::Q8_0,
                embedding: GgmlType::Q8_0,
                output: None,
                qkv_bias: true,
                pre: "qwen2",
                specials,
                bos: 151643,
                eos: 151645,
                chat_template: Some(CHATML_TEMPLATE),
                experts: None,
                sliding_window: 0,
            }
        }
        "gpt2-124m" => gpt2("synthetic GPT-2 124M (F16)", 768, 12, 12, GgmlType::F16),
        // GPT-2 XL's shapes (1.5B parameters, 48 layers, 1600 wide, 25 heads of 64).
        "gpt2-xl" => gpt2("synthetic GPT-2 XL 1.5B (F16)", 1600, 48, 25, GgmlType::F16),
        "gpt2-xl-q8_0" => gpt2("synthetic GPT-2 XL 1.5B (Q8_0)", 1600, 48, 25, GgmlType::Q8_0),
        // gpt-oss-20b as llama.cpp's converter writes it (the published GGUF): 12.1 GB.
        "gpt-oss-20b" => Preset {
            arch: "gpt-oss",
            name: "synthetic gpt-oss-20b (MXFP4 experts, Q8_0)",
            vocab: 201088,
            ctx: 131072,
            d: 2880,
            layers: 24,
            heads: 64,
            kv_heads: 8,
            head_dim: 64,
            ff: 2880,
            rope_base: 150000.0,
            eps: 1e-5,
            matrix: GgmlType::Q8_0,
            embedding: GgmlType::Q8_0,
            output: Some(GgmlType::Q8_0),
            qkv_bias: true,
            pre: "gpt-4o",
            specials: gpt_oss_specials(199998, 201088),
            bos: 199998,
            eos: 200002,
            chat_template: Some(HARMONY_TEMPLATE),
            experts: Some(Experts { n: 32, used: 4, ff: 2880 }),
            sliding_window: 128,
        },
        "tiny-gpt-oss" => Preset {
            arch: "gpt-oss",
            name: "synthetic tiny gpt-oss (MXFP4 experts, Q8_0; 4 experts, 2 used)",
            vocab: 1088,
            ctx: 4096,
            d: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            // The GPU's gpt-oss attention (sinks, windows) takes head dims 64, 80, 96 and 128.
            head_dim: 64,
            ff: 64,
            rope_base: 150000.0,
            eps: 1e-5,
            matrix: GgmlType::Q8_0,
            embedding: GgmlType::Q8_0,
            output: Some(GgmlType::Q8_0),
            qkv_bias: true,
            pre: "gpt-4o",
            specials: gpt_oss_specials(1024, 1088),
            bos: 1024,
            eos: 1028,
            chat_template: Some(HARMONY_TEMPLATE),
            experts: Some(Experts { n: 4, used: 2, ff: 64 }),
            sliding_window: 8,
        },
        other => return Err(SynthError::UnknownPreset(other.to_string())),
    })
}

const LLAMA3_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";
const HARMONY_TEMPLATE: &str = "{% for m in messages %}{% if m['role'] == 'assistant' %}<|start|>assistant<|channel|>final<|message|>{{ m['content'] }}<|end|>{% else %}<|start|>{{ m['role'] }}<|message|>{{ m['content'] }}<|end|>{% endif %}{% endfor %}{% if add_generation_prompt %}<|start|>assistant{% endif %}";

/// gpt-oss's (o200k_harmony's) named special tokens, as offsets from the first special id; the
/// others are reserved.
const GPT_OSS_SPECIALS: [(usize, &str); 10] = [
    (0, "<|startoftext|>"),
    (1, "<|endoftext|>"),
    (4, "<|return|>"),
    (5, "<|constrain|>"),
    (7, "<|channel|>"),
    (8, "<|start|>"),
    (9, "<|end|>"),
    (10, "<|message|>"),
    (14, "<|call|>"),
    (20, "<|endofprompt|>"),
];

/// Ids first..end as gpt-oss's special tokens.
fn gpt_oss_specials(first: usize, end: usize) -> Vec<(usize, String)> {
    (first..end)
        .map(|id| match GPT_OSS_SPECIALS.iter().find(|s| s.0 == id - first) {
            Some(&(_, text)) => (id, text.to_string()),
            None => (id, format!("<|reserved_{id}|>")),
        })
        .collect()
}

const CHATML_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// GPT-2's byte-to-character map (printable bytes map to themselves).
fn byte_char(b: u8) -> char {
    let printable =
        |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(b) {
        return b as char;
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).expect("in range")
}

/// (tokens, token types, merges) of a synthetic byte-level BPE vocabulary of `preset.vocab`.
fn vocabulary(p: &Preset) -> (Vec<String>, Vec<i32>, Vec<String>) {
    let (mut tokens, mut merges) = (Vec::with_capacity(p.vocab), Vec::new());
    tokens.extend((0..=255u8).map(|b| byte_char(b).to_string()));
    let alphabet: Vec<String> = (b'!'..=b'~').map(|b| (b as char).to_string()).collect();
    let pairs: Vec<String> =
        alphabet.iter().flat_map(|a| alphabet.iter().map(move |b| format!("{a}{b}"))).collect();
    'fill: for level in 0..2 {
        let lefts = if level == 0 { &alphabet } else { &pairs };
        for left in lefts {
            for right in &alphabet {
                if tokens.len() >= p.vocab {
                    break 'fill;
                }
                merges.push(format!("{left} {right}"));
                tokens.push(format!("{left}{right}"));
            }
        }
    }
    let mut types = vec![1i32; p.vocab];
    for (id, text) in &p.specials {
        tokens[*id] = text.clone();
        types[*id] = 3;
    }
    // Merges whose result was replaced by a special token would not be in the vocabulary.
    let present: std::collections::HashSet<&str> = tokens.iter().map(String::as_str).collect();
    merges.retain(|m| present.contains(m.replace(' ', "").as_str()));
    (tokens, types, merges)
}

fn metadata(p: &Preset) -> Vec<(String, MetaValue)> {
    let a = p.arch;
    let mut m: Vec<(String, MetaValue)> = vec![
        ("general.architecture".into(), MetaValue::Str(a.into())),
        ("general.name".into(), MetaValue::Str(p.name.into())),
        ("general.alignment".into(), MetaValue::U32(32)),
        (format!("{a}.context_length"), MetaValue::U32(p.ctx)),
        (format!("{a}.embedding_length"), MetaValue::U32(p.d as u32)),
        (format!("{a}.block_count"), MetaValue::U32(p.layers as u32)),
        (format!("{a}.feed_forward_length"), MetaValue::U32(p.ff as u32)),
        (format!("{a}.attention.head_count"), MetaValue::U32(p.heads as u32)),
    ];
    if a == "gpt2" {
        m.push((format!("{a}.attention.layer_norm_epsilon"), MetaValue::F32(p.eps)));
    } else {
        m.push((format!("{a}.attention.head_count_kv"), MetaValue::U32(p.kv_heads as u32)));
        m.push((format!("{a}.attention.layer_norm_rms_epsilon"), MetaValue::F32(p.eps)));
        m.push((format!("{a}.rope.freq_base"), MetaValue::F32(p.rope_base)));
        if p.experts.is_none() {
            m.push((format!("{a}.rope.dimension_count"), MetaValue::U32(p.head_dim as u32)));
        }
    }
    if let Some(e) = p.experts {
        m.extend([
            (format!("{a}.rope.scaling.type"), MetaValue::Str("yarn".into())),
            (format!("{a}.rope.scaling.factor"), MetaValue::F32(32.0)),
            (format!("{a}.rope.scaling.original_context_length"), MetaValue::U32(4096)),
            (format!("{a}.expert_count"), MetaValue::U32(e.n as u32)),
            (format!("{a}.expert_used_count"), MetaValue::U32(e.used as u32)),
            (format!("{a}.attention.key_length"), MetaValue::U32(p.head_dim as u32)),
            (format!("{a}.attention.value_length"), MetaValue::U32(p.head_dim as u32)),
            (format!("{a}.attention.sliding_window"), MetaValue::U32(p.sliding_window)),
            (format!("{a}.expert_feed_forward_length"), MetaValue::U32(e.ff as u32)),
        ]);
    }
    if a == "llama" {
        m.push((format!("{a}.vocab_size"), MetaValue::U32(p.vocab as u32)));
    }
    let (tokens, types, merges) = vocabulary(p);
    m.extend([
        ("tokenizer.ggml.model".into(), MetaValue::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), MetaValue::Str(p.pre.into())),
        ("tokenizer.ggml.tokens".into(), MetaValue::Strings(tokens)),
        ("tokenizer.ggml.token_type".into(), MetaValue::I32s(types)),
        ("tokenizer.ggml.merges".into(), MetaValue::Strings(merges)),
        ("tokenizer.ggml.bos_token_id".into(), MetaValue::U32(p.bos)),
        ("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(p.eos)),
        ("tokenizer.ggml.add_bos_token".into(), MetaValue::Bool(a == "llama")),
    ]);
    if let Some(t) = p.chat_template {
        m.push(("tokenizer.chat_template".into(), MetaValue::Str(t.into())));
    }
    m
}

/// What a tensor holds: a matrix (random), ones (norm weights) or zeros (biases).
#[derive(Clone, Copy, PartialEq)]
enum Fill {
    Random,
    Ones,
    Zeros,
}

fn tensors(p: &Preset) -> Vec<(TensorSpec, Fill)> {
    let (d, ff) = (p.d as u64, p.ff as u64);
    let (q, kv) = ((p.head_dim * p.heads) as u64, (p.head_dim * p.kv_heads) as u64);
    let t = |name: String, dims: Vec<u64>, ty: GgmlType, fill: Fill| (TensorSpec { name, dims, ty }, fill);
    let vector = |name: String, n: u64, fill: Fill| t(name, vec![n], GgmlType::F32, fill);
    let mut list = vec![t("token_embd.weight".into(), vec![d, p.vocab as u64], p.embedding, Fill::Random)];
    if p.arch == "gpt2" {
        // llama.cpp's converter keeps the position table F32 when it writes Q8_0 matrices.
        let ty = if p.matrix == GgmlType::Q8_0 { GgmlType::F32 } else { p.matrix };
        list.push(t("position_embd.weight".into(), vec![d, p.ctx as u64], ty, Fill::Random));
    }
    for i in 0..p.layers {
        let n = |s: &str| format!("blk.{i}.{s}");
        list.push(vector(n("attn_norm.weight"), d, Fill::Ones));
        if p.arch == "gpt2" {
            list.push(vector(n("attn_norm.bias"), d, Fill::Zeros));
            list.push(t(n("attn_qkv.weight"), vec![d, 3 * d], p.matrix, Fill::Random));
            list.push(vector(n("attn_qkv.bias"), 3 * d, Fill::Zeros));
            list.push(t(n("attn_output.weight"), vec![d, d], p.matrix, Fill::Random));
            list.push(vector(n("attn_output.bias"), d, Fill::Zeros));
            list.push(vector(n("ffn_norm.weight"), d, Fill::Ones));
            list.push(vector(n("ffn_norm.bias"), d, Fill::Zeros));
            list.push(t(n("ffn_up.weight"), vec![d, ff], p.matrix, Fill::Random));
            list.push(vector(n("ffn_up.bias"), ff, Fill::Zeros));
            list.push(t(n("ffn_down.weight"), vec![ff, d], p.matrix, Fill::Random));
            list.push(vector(n("ffn_down.bias"), d, Fill::Zeros));
            continue;
        }
        if let Some(e) = p.experts {
            let (experts, eff, mx) = (e.n as u64, e.ff as u64, GgmlType::Mxfp4);
            list.push(t(n("attn_q.weight"), vec![d, q], p.matrix, Fill::Random));
            list.push(vector(n("attn_q.bias"), q, Fill::Zeros));
            list.push(t(n("attn_k.weight"), vec![d, kv], p.matrix, Fill::Random));
            list.push(vector(n("attn_k.bias"), kv, Fill::Zeros));
            list.push(t(n("attn_v.weight"), vec![d, kv], p.matrix, Fill::Random));
            list.push(vector(n("attn_v.bias"), kv, Fill::Zeros));
            list.push(t(n("attn_output.weight"), vec![q, d], p.matrix, Fill::Random));
            list.push(vector(n("attn_output.bias"), d, Fill::Zeros));
            list.push(vector(n("attn_sinks.weight"), p.heads as u64, Fill::Zeros));
            list.push(vector(n("post_attention_norm.weight"), d, Fill::Ones));
            // The router stays F32, as the converter keeps it.
            list.push(t(n("ffn_gate_inp.weight"), vec![d, experts], GgmlType::F32, Fill::Random));
            list.push(vector(n("ffn_gate_inp.bias"), experts, Fill::Zeros));
            for (part, dims) in [("gate", [d, eff]), ("up", [d, eff]), ("down", [eff, d])] {
                list.push(t(
                    n(&format!("ffn_{part}_exps.weight")),
                    vec![dims[0], dims[1], experts],
                    mx,
                    Fill::Random,
                ));
                let bias = vec![dims[1], experts];
                list.push(t(n(&format!("ffn_{part}_exps.bias")), bias, GgmlType::F32, Fill::Zeros));
            }
            continue;
        }
        list.push(t(n("attn_q.weight"), vec![d, q], p.matrix, Fill::Random));
        list.push(t(n("attn_k.weight"), vec![d, kv], p.matrix, Fill::Random));
        list.push(t(n("attn_v.weight"), vec![d, kv], p.matrix, Fill::Random));
        if p.qkv_bias {
            list.push(vector(n("attn_q.bias"), q, Fill::Zeros));
            list.push(vector(n("attn_k.bias"), kv, Fill::Zeros));
            list.push(vector(n("attn_v.bias"), kv, Fill::Zeros));
        }
        list.push(t(n("attn_output.weight"), vec![q, d], p.matrix, Fill::Random));
        list.push(vector(n("ffn_norm.weight"), d, Fill::Ones));
        list.push(t(n("ffn_gate.weight"), vec![d, ff], p.matrix, Fill::Random));
        list.push(t(n("ffn_up.weight"), vec![d, ff], p.matrix, Fill::Random));
        list.push(t(n("ffn_down.weight"), vec![ff, d], p.matrix, Fill::Random));
    }
    list.push(vector("output_norm.weight".into(), d, Fill::Ones));
    if p.arch == "gpt2" {
        list.push(vector("output_norm.bias".into(), d, Fill::Zeros));
    }
    if let Some(ty) = p.output {
        list.push(t("output.weight".into(), vec![d, p.vocab as u64], ty, Fill::Random));
    }
    list
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Random blocks of `ty` filling `out` (a whole number of blocks), valid scale fields.
fn random_blocks(ty: GgmlType, out: &mut [u8], rng: &mut Rng) {
    for chunk in out.chunks_mut(8) {
        let bytes = rng.next().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    let half = |v: f32| f16::from_f32(v).to_le_bytes();
    match ty {
        GgmlType::F32 => {
            for v in out.chunks_exact_mut(4) {
                let r = (rng.next() >> 40) as f32 / (1u64 << 24) as f32;
                v.copy_from_slice(&((r * 2.0 - 1.0) * 0.035).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for v in out.chunks_exact_mut(2) {
                let r = (u16::from_le_bytes([v[0], v[1]]) as f32 / 65535.0) * 2.0 - 1.0;
                v.copy_from_slice(&half(r * 0.035));
            }
        }
        // d (x q of spread ~73) ~ 0.02.
        GgmlType::Q8_0 => out.chunks_exact_mut(34).for_each(|b| b[..2].copy_from_slice(&half(3e-4))),
        // d * scale * q - dmin * min with scale, min < 64 and q < 16: centred near 0, spread ~0.02.
        GgmlType::Q4K => out.chunks_exact_mut(144).for_each(|b| {
            b[..2].copy_from_slice(&half(1e-4));
            b[2..4].copy_from_slice(&half(7.5e-4));
        }),
        // d * scale * (q - 32), scale an i8.
        GgmlType::Q6K => out.chunks_exact_mut(210).for_each(|b| b[208..].copy_from_slice(&half(1e-5))),
        // 2^(e - 127) times E2M1 values of mean square 8.56: e = 120 gives a spread of 0.023.
        GgmlType::Mxfp4 => out.chunks_exact_mut(17).for_each(|b| b[0] = 120),
        other => unreachable!("synth writes no {other} tensors"),
    }
}

/// Writes preset `name` to `out` (through `out.tmp`, renamed at the end), calling `progress(done,
/// total)` in bytes.
pub fn write(name: &str, out: &Path, seed: u64, progress: &dyn Fn(u64, u64)) -> Result<u64, SynthError> {
    let p = preset(name)?;
    let io = |source| SynthError::Io { path: out.display().to_string(), source };
    let list = tensors(&p);
    let specs: Vec<TensorSpec> = list.iter().map(|(s, _)| s.clone()).collect();
    let total: u64 = specs.iter().map(|s| s.bytes().next_multiple_of(32) as u64).sum();
    let tmp = out.with_extension("gguf.tmp");
    let file = std::fs::File::create(&tmp).map_err(io)?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    let mut written = write_head(&mut w, &metadata(&p), &specs).map_err(io)? as u64;
    let mut done = 0u64;
    const CHUNK_BLOCKS: usize = 4096;
    for (index, (spec, fill)) in list.iter().enumerate() {
        let mut data = vec![0u8; spec.bytes()];
        match fill {
            Fill::Zeros => {}
            Fill::Ones => data.chunks_exact_mut(4).for_each(|v| v.copy_from_slice(&1.0f32.to_le_bytes())),
            Fill::Random => {
                let chunk = spec.ty.block_bytes() * CHUNK_BLOCKS;
                data.par_chunks_mut(chunk).enumerate().for_each(|(c, part)| {
                    let mut rng =
                        Rng(seed ^ ((index as u64) << 40) ^ (c as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
                    random_blocks(spec.ty, part, &mut rng);
                });
            }
        }
        w.write_all(&data).map_err(io)?;
        w.write_all(&padding(data.len())).map_err(io)?;
        written += data.len().next_multiple_of(32) as u64;
        done += data.len().next_multiple_of(32) as u64;
        progress(done, total);
    }
    w.flush().map_err(io)?;
    drop(w);
    std::fs::rename(&tmp, out).map_err(io)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufFile, dequantize};

    fn tiny(seed: u64) -> (tempfile_path::Path, GgufFile) {
        let path = tempfile_path::Path::new(&format!("synth-{seed}.gguf"));
        write("tiny-llama", &path.0, seed, &|_, _| {}).unwrap();
        let file = GgufFile::open(&path.0).unwrap();
        (path, file)
    }

    mod tempfile_path {
        /// A file under the system temp dir, removed on drop.
        pub struct Path(pub std::path::PathBuf);
        impl Path {
            pub fn new(name: &str) -> Self {
                Path(std::env::temp_dir().join(format!("{}-{name}", std::process::id())))
            }
        }
        impl Drop for Path {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn the_tiny_preset_loads_as_a_model_with_its_tokenizer() {
        let (_path, file) = tiny(1);
        let config = crate::model::ModelConfig::from_gguf(&file).unwrap();
        assert_eq!((config.n_embd, config.n_layer, config.head_dim, config.n_vocab), (256, 2, 64, 1024));
        let tokenizer = crate::tokenizer::Tokenizer::from_gguf(&file).unwrap();
        let ids = tokenizer.encode("Hello, world!", false, false).unwrap();
        assert_eq!(tokenizer.decode(&ids, false), "Hello, world!");
        // Weights dequantize to finite values of the intended spread.
        for name in ["blk.0.attn_q.weight", "output.weight", "token_embd.weight"] {
            let info = file.tensor(name).unwrap();
            let n = info.dims.iter().product::<u64>() as usize;
            let w = dequantize(info.ty, file.tensor_data(info), n).unwrap();
            let rms = (w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / n as f64).sqrt();
            assert!(w.iter().all(|v| v.is_finite()), "{name}");
            assert!((0.005..0.1).contains(&rms), "{name}: rms {rms}");
        }
        // The CPU engine runs it to finite logits.
        let model = crate::model::Model::load(&file, crate::model::Numerics::Exact, &|_, _| {}).unwrap();
        let mut cache = model.new_cache(8);
        let logits = model.forward(&ids[..3], &mut cache).unwrap();
        assert!(logits.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn a_seed_gives_the_same_file_and_another_seed_another() {
        let read = |seed| std::fs::read(&tiny(seed).0.0).unwrap();
        let (a, b, c) = (read(5), read(5), read(6));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), c.len());
    }

    #[test]
    fn bad_presets_and_paths_are_errors() {
        let dir = std::env::temp_dir();
        let error = write("llama-9000", &dir.join("x.gguf"), 0, &|_, _| {}).unwrap_err().to_string();
        assert!(error.contains("unknown preset") && error.contains("llama-3.1-8b"), "{error}");
        let error = write("tiny-llama", Path::new("/nonexistent-dir/x.gguf"), 0, &|_, _| {}).unwrap_err();
        assert!(error.to_string().contains("/nonexistent-dir/x.gguf"), "{error}");
    }

    #[test]
    fn full_size_presets_have_the_published_sizes() {
        // Llama-3.1-8B Q4_K with Q6_K output: 4.66 GB (llama.cpp's synthetic file); the decode
        // step reads 4.36 GB of it.
        let size = |name| tensors(&preset(name).unwrap()).iter().map(|(s, _)| s.bytes() as u64).sum::<u64>();
        let llama = size("llama-3.1-8b");
        assert!((4.60e9..4.70e9).contains(&(llama as f64)), "{llama}");
        let qwen = size("qwen2.5-0.5b");
        assert!((0.50e9..0.54e9).contains(&(qwen as f64)), "{qwen}");
        let gpt2 = size("gpt2-124m");
        assert!((0.24e9..0.27e9).contains(&(gpt2 as f64)), "{gpt2}");
        // GPT-2 XL: 1.56 billion parameters, 3.1 GB in F16, 1.66 GB in Q8_0.
        let (xl, xl_q8) = (size("gpt2-xl"), size("gpt2-xl-q8_0"));
        assert!((3.08e9..3.16e9).contains(&(xl as f64)), "{xl}");
        assert!((1.63e9..1.70e9).contains(&(xl_q8 as f64)), "{xl_q8}");
        // gpt-oss-20b, MXFP4 experts and Q8_0 elsewhere: 12.1 GB, as the published GGUF.
        let gpt_oss = size("gpt-oss-20b");
        assert!((12.05e9..12.15e9).contains(&(gpt_oss as f64)), "{gpt_oss}");
        let experts = tensors(&preset("gpt-oss-20b").unwrap())
            .iter()
            .filter(|(s, _)| s.name == "blk.23.ffn_down_exps.weight")
            .map(|(s, _)| (s.dims.clone(), s.ty))
            .collect::<Vec<_>>();
        assert_eq!(experts, [(vec![2880, 2880, 32], GgmlType::Mxfp4)]);
    }

    #[test]
    fn the_gpt_oss_preset_reads_back_with_its_tensor_types_and_shapes() {
        let path = tempfile_path::Path::new("synth-gpt-oss.gguf");
        write("tiny-gpt-oss", &path.0, 3, &|_, _| {}).unwrap();
        let file = GgufFile::open(&path.0).unwrap();
        let plan = tensors(&preset("tiny-gpt-oss").unwrap());
        assert_eq!(file.tensors().len(), plan.len());
        for (spec, _) in &plan {
            let info = file.tensor(&spec.name).unwrap_or_else(|| panic!("{} is missing", spec.name));
            assert_eq!((&info.dims, info.ty), (&spec.dims, spec.ty), "{}", spec.name);
        }
        let info = file.tensor("blk.1.ffn_gate_exps.weight").unwrap();
        assert_eq!((info.dims.as_slice(), info.ty), (&[64u64, 64, 4][..], GgmlType::Mxfp4));
        let n = info.dims.iter().product::<u64>() as usize;
        let w = dequantize(info.ty, file.tensor_data(info), n).unwrap();
        let rms = (w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / n as f64).sqrt();
        assert!(w.iter().all(|v| v.is_finite()) && (0.01..0.05).contains(&rms), "rms {rms}");
        for (name, dims, ty) in [
            // 4 query heads and 2 KV heads of 64.
            ("blk.0.attn_q.weight", vec![64u64, 256], GgmlType::Q8_0),
            ("blk.0.attn_k.weight", vec![64, 128], GgmlType::Q8_0),
            ("blk.0.attn_sinks.weight", vec![4], GgmlType::F32),
            ("blk.0.ffn_gate_inp.weight", vec![64, 4], GgmlType::F32),
            ("blk.0.ffn_down_exps.bias", vec![64, 4], GgmlType::F32),
            ("output.weight", vec![64, 1088], GgmlType::Q8_0),
        ] {
            let info = file.tensor(name).unwrap();
            assert_eq!((&info.dims, info.ty), (&dims, ty), "{name}");
        }
        let config = crate::model::ModelConfig::from_gguf(&file).unwrap();
        assert_eq!((config.n_embd, config.n_layer, config.head_dim, config.n_vocab), (64, 2, 64, 1088));
        let moe = config.moe.expect("gpt-oss has experts");
        assert_eq!((moe.n_expert, moe.n_expert_used, moe.n_ff_expert), (4, 2, 64));
        assert_eq!(config.sliding_window, Some(8));
        let tokenizer = crate::tokenizer::Tokenizer::from_gguf(&file).unwrap();
        let ids = tokenizer.encode("Hello, world!", false, false).unwrap();
        assert_eq!(tokenizer.decode(&ids, false), "Hello, world!");
    }
}
