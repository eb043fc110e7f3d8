//! Typed model configuration read from GGUF metadata, with the keys llama.cpp's converter writes.

use crate::gguf::{GgufError, GgufFile};
use std::f64::consts::PI;

/// The architectures the engine runs (`general.architecture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    Gpt2,
    Llama,
    Qwen2,
    Phi3,
    GptOss,
}

impl Architecture {
    pub const SUPPORTED: &'static str = "gpt2, llama, qwen2, phi3, gpt-oss";

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "gpt2" => Architecture::Gpt2,
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            "phi3" => Architecture::Phi3,
            "gpt-oss" => Architecture::GptOss,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Architecture::Gpt2 => "gpt2",
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Phi3 => "phi3",
            Architecture::GptOss => "gpt-oss",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unsupported architecture {0:?} (supported: {supported})", supported = Architecture::SUPPORTED)]
    UnsupportedArchitecture(String),
    #[error("metadata key {key}: {message}")]
    Invalid { key: String, message: String },
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// Mixture-of-experts settings (gpt-oss).
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub n_ff_expert: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub n_vocab: usize,
    /// Context length the model was trained with.
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    /// LayerNorm (GPT-2) or RMSNorm epsilon.
    pub norm_eps: f32,
    /// None for learned absolute positions (GPT-2).
    pub rope: Option<RopeConfig>,
    /// Sliding-window size for the layers that use one (gpt-oss: every other layer).
    pub sliding_window: Option<usize>,
    pub moe: Option<MoeConfig>,
}

impl ModelConfig {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ConfigError> {
        let name = file.get_str("general.architecture")?;
        let architecture = Architecture::from_name(name)
            .ok_or_else(|| ConfigError::UnsupportedArchitecture(name.to_string()))?;
        let arch = architecture.name();
        let key = |suffix: &str| format!("{arch}.{suffix}");
        let required =
            |suffix: &str| -> Result<usize, ConfigError> { Ok(file.get_u32(&key(suffix))? as usize) };
        let optional = |suffix: &str| -> Result<Option<usize>, ConfigError> {
            Ok(file.get_u32_opt(&key(suffix))?.map(|v| v as usize))
        };
        let positive = |suffix: &str, value: usize| -> Result<usize, ConfigError> {
            if value == 0 {
                Err(ConfigError::Invalid { key: key(suffix), message: "must be positive".into() })
            } else {
                Ok(value)
            }
        };

        let n_embd = positive("embedding_length", required("embedding_length")?)?;
        let n_layer = positive("block_count", required("block_count")?)?;
        let n_head = positive("attention.head_count", required("attention.head_count")?)?;
        let n_head_kv =
            positive("attention.head_count_kv", optional("attention.head_count_kv")?.unwrap_or(n_head))?;
        if n_head % n_head_kv != 0 {
            return Err(ConfigError::Invalid {
                key: key("attention.head_count_kv"),
                message: format!("{n_head_kv} does not divide the {n_head} query heads"),
            });
        }
        let head_dim = match optional("attention.key_length")? {
            Some(d) => positive("attention.key_length", d)?,
            None if n_embd % n_head == 0 => n_embd / n_head,
            None => {
                return Err(ConfigError::Invalid {
                    key: key("embedding_length"),
                    message: format!("{n_embd} is not a multiple of the {n_head} heads"),
                });
            }
        };
        let n_ff = match architecture {
            Architecture::GptOss => optional("feed_forward_length")?.unwrap_or(0),
            _ => positive("feed_forward_length", required("feed_forward_length")?)?,
        };
        let norm_eps = match architecture {
            Architecture::Gpt2 => file.get_f32(&key("attention.layer_norm_epsilon"))?,
            _ => file.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
        };
        let n_vocab = match optional("vocab_size")? {
            Some(n) => n,
            None => file.get_array_len("tokenizer.ggml.tokens")?,
        };
        let n_ctx_train = positive("context_length", required("context_length")?)?;

        let rope = match architecture {
            Architecture::Gpt2 => None,
            _ => {
                let rope_dim = optional("rope.dimension_count")?.unwrap_or(head_dim);
                if rope_dim == 0 || rope_dim % 2 != 0 || rope_dim > head_dim {
                    return Err(ConfigError::Invalid {
                        key: key("rope.dimension_count"),
                        message: format!(
                            "{rope_dim} must be even, positive and at most the head size {head_dim}"
                        ),
                    });
                }
                let base = file.get_f32_opt(&key("rope.freq_base"))?.unwrap_or(10000.0);
                let layout = match architecture {
                    // llama.cpp's converter permutes llama's q/k so that pairs are adjacent.
                    Architecture::Llama => RopeLayout::Interleaved,
                    _ => RopeLayout::Neox,
                };
                let yarn = match file.get_str_opt(&key("rope.scaling.type"))? {
                    Some("yarn") => Some(YarnConfig {
                        factor: file.get_f32(&key("rope.scaling.factor"))?,
                        original_context: required("rope.scaling.original_context_length")? as u32,
                        beta_fast: file.get_f32_opt(&key("rope.scaling.yarn_beta_fast"))?.unwrap_or(32.0),
                        beta_slow: file.get_f32_opt(&key("rope.scaling.yarn_beta_slow"))?.unwrap_or(1.0),
                        ext_factor: 1.0,
                        attn_factor: 1.0,
                        // gpt-oss's configuration has `truncate: false`; the others use
                        // transformers' default (true), which is also what llama.cpp always does.
                        truncate: architecture != Architecture::GptOss,
                    }),
                    None | Some("none") => None,
                    Some(other) => {
                        return Err(ConfigError::Invalid {
                            key: key("rope.scaling.type"),
                            message: format!("{other:?} is not supported (yarn or none)"),
                        });
                    }
                };
                Some(RopeConfig { head_dim, rope_dim, base, layout, yarn })
            }
        };
        let sliding_window = optional("attention.sliding_window")?.filter(|&w| w > 0);
        let moe = match optional("expert_count")? {
            Some(n_expert) if n_expert > 0 => Some(MoeConfig {
                n_expert,
                n_expert_used: positive("expert_used_count", required("expert_used_count")?)?,
                n_ff_expert: positive("expert_feed_forward_length", required("expert_feed_forward_length")?)?,
            }),
            _ => None,
        };
        Ok(ModelConfig {
            architecture,
            n_vocab,
            n_ctx_train,
            n_embd,
            n_layer,
            n_head,
            n_head_kv,
            head_dim,
            n_ff,
            norm_eps,
            rope,
            sliding_window,
            moe,
        })
    }
}

// ---- rotary position embeddings: which pairs rotate, and by what angle -------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs (2i, 2i+1).
    Interleaved,
    /// Pairs (i, i + rope_dim/2).
    Neox,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct YarnConfig {
    pub factor: f32,
    pub original_context: u32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    pub ext_factor: f32,
    pub attn_factor: f32,
    /// Round the ramp's ends out to whole pairs (floor the start, ceil the end), as llama.cpp always
    /// does and transformers does by default. gpt-oss's own configuration says `truncate: false`
    /// (its reference implementation and transformers use the exact ends); GGUF has no key for it.
    pub truncate: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeConfig {
    pub head_dim: usize,
    pub rope_dim: usize,
    pub base: f32,
    pub layout: RopeLayout,
    pub yarn: Option<YarnConfig>,
}

impl RopeConfig {
    /// The rotation angle of pair `i` at `position`, and the magnitude applied with it.
    pub fn angle(&self, position: u32, i: usize) -> (f64, f64) {
        let d = self.rope_dim as f64;
        let base = self.base as f64;
        let extrapolated = position as f64 * base.powf(-2.0 * i as f64 / d);
        let Some(yarn) = self.yarn else {
            return (extrapolated, 1.0);
        };
        let freq_scale = 1.0 / yarn.factor as f64;
        let interpolated = extrapolated * freq_scale;
        // The pair index at which a wavelength makes `turns` full turns over the original context.
        let pair_at = |turns: f32| {
            d * (yarn.original_context as f64 / (turns as f64 * 2.0 * PI)).ln() / (2.0 * base.ln())
        };
        let (low, high) = (pair_at(yarn.beta_fast), pair_at(yarn.beta_slow));
        let (low, high) = if yarn.truncate { (low.floor(), high.ceil()) } else { (low, high) };
        let (low, high) = (low.max(0.0), high.min(d - 1.0));
        let ramp = 1.0 - ((i as f64 - low) / (high - low).max(0.001)).clamp(0.0, 1.0);
        let mix = ramp * yarn.ext_factor as f64;
        let angle = interpolated * (1.0 - mix) + extrapolated * mix;
        let mut magnitude = yarn.attn_factor as f64;
        if yarn.ext_factor != 0.0 {
            magnitude *= 1.0 + 0.1 * (1.0 / freq_scale).ln();
        }
        (angle, magnitude)
    }
}
