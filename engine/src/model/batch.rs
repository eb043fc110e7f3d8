//! A batch of sequences for one forward pass on the CPU: each contributes a chunk of tokens
//! (a decode step's one token, or a piece of its prompt) at its own positions, over its own pages
//! of the shared [`KvPool`]. The matrix products run over every row of the batch at once (each
//! weight read once per step); what is per sequence (writing keys and values, attention over what
//! the sequence has cached) goes through [`BatchLayout`].
//!
//! Rows are independent in every product here, so a sequence's numbers do not depend on what else
//! is in the batch: a token gets the logits it gets alone, bit for bit. The one exception is the
//! `llama-cpp` numerics' attention, which, like llama.cpp's, takes its tiled f32 path for chunks of
//! 64 or more tokens and its f16 path for fewer (`causal_attention_llamacpp`).

use super::kv_cache::{KvPool, KvRows, PAGE_SIZE};
use super::{Architecture, ModelConfig, ModelError, Numerics};

/// One sequence's part of a batch.
#[derive(Clone, Copy, Debug)]
pub struct SequenceChunk<'a> {
    /// The sequence's pages in order, covering positions 0..start + tokens.len().
    pub pages: &'a [u32],
    /// Positions already cached.
    pub start: usize,
    /// Tokens at positions start..start + tokens.len().
    pub tokens: &'a [u32],
}

/// Which rows' logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// Every token's, [n_tokens, n_vocab] in batch order.
    All,
    /// The last token's of each chunk, [n_chunks, n_vocab].
    LastOfEachChunk,
}

/// Where each row of a batch sits.
pub struct BatchLayout<'a> {
    pub chunks: &'a [SequenceChunk<'a>],
    /// Every token of the batch, chunk after chunk.
    pub tokens: Vec<u32>,
    /// Each row's position in its sequence.
    pub positions: Vec<u32>,
    /// Row range of each chunk.
    pub ranges: Vec<std::ops::Range<usize>>,
}

impl<'a> BatchLayout<'a> {
    /// Checks every chunk (tokens in the vocabulary, pages for its positions, positions within
    /// what the model can encode) and lays the rows out.
    pub fn new(
        chunks: &'a [SequenceChunk<'a>],
        config: &ModelConfig,
        pool: &KvPool,
    ) -> Result<Self, ModelError> {
        let (mut tokens, mut positions, mut ranges) = (Vec::new(), Vec::new(), Vec::new());
        for chunk in chunks {
            if chunk.tokens.is_empty() {
                return Err(ModelError::EmptyChunk);
            }
            if let Some(&token) = chunk.tokens.iter().find(|&&t| t as usize >= config.n_vocab) {
                return Err(ModelError::TokenOutOfRange { token, n_vocab: config.n_vocab });
            }
            let needed = chunk.start + chunk.tokens.len();
            let mut capacity = chunk.pages.len() * PAGE_SIZE;
            if config.architecture == Architecture::Gpt2 {
                // Learned positions end where the table ends.
                capacity = capacity.min(config.n_ctx_train);
            }
            if needed > capacity {
                return Err(ModelError::ContextFull { needed, capacity });
            }
            if let Some(&page) = chunk.pages.iter().find(|&&p| p as usize >= pool.n_pages()) {
                return Err(ModelError::PageOutOfRange { page, n_pages: pool.n_pages() });
            }
            ranges.push(tokens.len()..tokens.len() + chunk.tokens.len());
            tokens.extend_from_slice(chunk.tokens);
            positions.extend((chunk.start..needed).map(|p| p as u32));
        }
        Ok(BatchLayout { chunks, tokens, positions, ranges })
    }

    pub fn n_rows(&self) -> usize {
        self.tokens.len()
    }

    /// Stores the keys and values k, v [n_rows, row] of layer `layer` in each row's sequence.
    pub fn write(&self, pool: &mut KvPool, layer: usize, k: &[f32], v: &[f32]) {
        let row = k.len() / self.n_rows().max(1);
        for (chunk, range) in self.chunks.iter().zip(&self.ranges) {
            for (offset, r) in range.clone().enumerate() {
                let (k, v) = (&k[r * row..(r + 1) * row], &v[r * row..(r + 1) * row]);
                pool.write(layer, chunk.pages, chunk.start + offset, k, v);
            }
        }
    }

    /// For each chunk, `attend(q, keys, values, out, start)` with its rows of q and out
    /// ([rows, q_row]) and its sequence's cached keys and values of layer `layer` (the chunk's own
    /// included), as the single-sequence attention functions take them.
    pub fn attend(
        &self,
        pool: &KvPool,
        layer: usize,
        q: &[f32],
        out: &mut [f32],
        attend: impl Fn(&[f32], &KvRows, &KvRows, &mut [f32], usize),
    ) {
        let q_row = q.len() / self.n_rows().max(1);
        for (chunk, range) in self.chunks.iter().zip(&self.ranges) {
            let len = chunk.start + chunk.tokens.len();
            let (keys, values) = pool.sequence(layer, chunk.pages, len);
            let rows = range.start * q_row..range.end * q_row;
            attend(&q[rows.clone()], &keys, &values, &mut out[rows], chunk.start);
        }
    }

    /// The rows of `hidden` [n_rows, d] whose logits `rows` asks for.
    pub fn logit_rows(&self, hidden: Vec<f32>, d: usize, rows: LogitRows) -> Vec<f32> {
        match rows {
            LogitRows::All => hidden,
            LogitRows::LastOfEachChunk => self
                .ranges
                .iter()
                .flat_map(|range| hidden[(range.end - 1) * d..range.end * d].iter().copied())
                .collect(),
        }
    }
}

/// Causal attention of the rows q at positions start.. over a sequence's cached keys and values,
/// in the form the numerics take: `exact` in f64 on f32 rows, `llama-cpp` as llama.cpp computes it
/// (`causal_attention_llamacpp`), on the f16 pool's own elements. shape = (n_head, n_head_kv,
/// head_dim).
pub fn causal_attention(
    numerics: Numerics,
    q: &[f32],
    keys: &KvRows,
    values: &KvRows,
    out: &mut [f32],
    start: usize,
    (n_head, n_head_kv, head_dim): (usize, usize, usize),
) {
    use crate::cpu::attention;
    match (numerics, keys, values) {
        (Numerics::LlamaCpp, KvRows::F16(k), KvRows::F16(v)) => {
            attention::causal_attention_llamacpp(q, k, v, out, start, n_head, n_head_kv, head_dim)
        }
        (Numerics::LlamaCpp, k, v) => attention::causal_attention_llamacpp(
            q,
            &k.f32(),
            &v.f32(),
            out,
            start,
            n_head,
            n_head_kv,
            head_dim,
        ),
        (Numerics::Exact, k, v) => {
            attention::causal_attention(q, &k.f32(), &v.f32(), out, start, n_head, n_head_kv, head_dim)
        }
    }
}
