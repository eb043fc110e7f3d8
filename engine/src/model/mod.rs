//! Models: configuration from GGUF metadata, weights, and the forward pass of each architecture on
//! the CPU backend (the reference the GPU backend is held to).

mod batch;
mod config;
mod gpt2;
pub mod gpt_oss;
mod kv_cache;
mod llama;
pub mod weights;

pub use batch::{LogitRows, SequenceChunk};
pub use config::{Architecture, ConfigError, ModelConfig, MoeConfig, RopeConfig, RopeLayout, YarnConfig};
pub use gpt_oss::GptOss;
pub use gpt2::Gpt2;
pub use kv_cache::{KvCache, KvPool, PAGE_SIZE};
pub use llama::Llama;

use crate::gguf::GgufFile;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weight(#[from] weights::WeightError),
    #[error(
        "the sequence needs {needed} positions but the context holds {capacity}; use a shorter prompt or a larger context (--ctx-size)"
    )]
    ContextFull { needed: usize, capacity: usize },
    #[error("token id {token} is outside the vocabulary of {n_vocab} tokens")]
    TokenOutOfRange { token: u32, n_vocab: usize },
    #[error("page {page} is outside the KV pool of {n_pages} pages")]
    PageOutOfRange { page: u32, n_pages: usize },
    #[error("a sequence's chunk of a batch holds no tokens")]
    EmptyChunk,
    #[error("the {0} architecture is recognised but has no CPU implementation yet")]
    NotImplemented(&'static str),
}

/// How the CPU backend does its arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Numerics {
    /// f32 throughout: weights dequantized to f32, f32 activations, f32 attention and KV cache.
    /// The reference the GPU backend and the transformers fixtures are held to.
    Exact,
    /// As llama.cpp's CPU back end: quantized weights stay in their blocks and meet 8-bit
    /// quantized activations, the KV cache is f16 and attention runs as llama.cpp's f16 flash
    /// attention. A quarter of the memory for Q4 weights, and the same greedy choices as llama.cpp.
    #[default]
    LlamaCpp,
}

/// A loaded model on the CPU backend.
pub enum Model {
    Gpt2(Gpt2),
    Llama(Llama),
    GptOss(GptOss),
}

impl Model {
    /// Reads the configuration and every weight; `progress(done, total)` is called per layer.
    pub fn load(
        file: &GgufFile,
        numerics: Numerics,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Self, ModelError> {
        let config = ModelConfig::from_gguf(file)?;
        match config.architecture {
            Architecture::Gpt2 => Ok(Model::Gpt2(Gpt2::load(file, config, numerics, progress)?)),
            Architecture::Llama | Architecture::Qwen2 | Architecture::Phi3 => {
                Ok(Model::Llama(Llama::load(file, config, numerics, progress)?))
            }
            Architecture::GptOss => Ok(Model::GptOss(GptOss::load(file, config, numerics, progress)?)),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        match self {
            Model::Gpt2(m) => m.config(),
            Model::Llama(m) => m.config(),
            Model::GptOss(m) => m.config(),
        }
    }

    /// A KV cache for `capacity` positions (at most the trained context for GPT-2).
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        let c = self.config();
        KvCache::new(c.n_layer, capacity, c.n_head_kv, c.head_dim, self.numerics() == Numerics::LlamaCpp)
    }

    /// A KV pool of `n_pages` pages for many sequences (the scheduler hands the pages out).
    pub fn new_pool(&self, n_pages: usize) -> KvPool {
        let c = self.config();
        KvPool::new(c.n_layer, n_pages, c.n_head_kv, c.head_dim, self.numerics() == Numerics::LlamaCpp)
    }

    pub fn numerics(&self) -> Numerics {
        match self {
            Model::Gpt2(m) => m.numerics,
            Model::Llama(m) => m.numerics,
            Model::GptOss(m) => m.numerics,
        }
    }

    /// Logits [tokens.len(), n_vocab] for `tokens` following what the cache holds.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, ModelError> {
        let (needed, capacity) = (cache.len + tokens.len(), cache.capacity);
        if needed > capacity {
            return Err(ModelError::ContextFull { needed, capacity });
        }
        let chunk = SequenceChunk { pages: &cache.pages, start: cache.len, tokens };
        let logits = self.forward_batch(&[chunk], &mut cache.pool, LogitRows::All)?;
        cache.len = needed;
        Ok(logits)
    }

    /// One pass over the chunks of many sequences at once (their pages in `pool`): the logits
    /// `rows` asks for. Each chunk's keys and values join its pages.
    pub fn forward_batch(
        &self,
        chunks: &[SequenceChunk],
        pool: &mut KvPool,
        rows: LogitRows,
    ) -> Result<Vec<f32>, ModelError> {
        let layout = batch::BatchLayout::new(chunks, self.config(), pool)?;
        match self {
            Model::Gpt2(m) => Ok(m.forward(&layout, pool, rows)),
            Model::Llama(m) => Ok(m.forward(&layout, pool, rows)),
            Model::GptOss(m) => Ok(m.forward(&layout, pool, rows)),
        }
    }
}
