//! Perplexity over a text, by llama.cpp's `llama-perplexity` method so that the figures compare:
//! tokenize the whole text (with BOS if the vocabulary adds one), cut it into chunks of n_ctx
//! tokens, evaluate each chunk from an empty cache with its first token replaced by BOS (when the
//! vocabulary adds one), and score only the second half of each chunk: the negative log-likelihood
//! of token j+1 given tokens ..=j for j in n_ctx/2 .. n_ctx-1. PPL = exp(mean NLL).

use crate::generate::{BackendError, Session};

#[derive(Debug, Clone)]
pub struct Perplexity {
    pub chunks: usize,
    pub scored_tokens: usize,
    pub ppl: f64,
    /// Running PPL after each chunk, like llama-perplexity's `[i]x.xxxx` output.
    pub running: Vec<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum PerplexityError {
    #[error("the text has {tokens} tokens; a context of {n_ctx} needs at least {needed}")]
    TooShort { tokens: usize, n_ctx: usize, needed: usize },
    #[error("the context size must be at least 4, got {0}")]
    ContextTooSmall(usize),
    #[error(transparent)]
    Backend(BackendError),
}

/// `tokens` is the whole text tokenized; `bos` is the token to start each chunk with, if any.
/// `on_chunk(i, running_ppl)` is called after each chunk.
pub fn perplexity(
    session: &mut dyn Session,
    tokens: &[u32],
    n_ctx: usize,
    max_chunks: Option<usize>,
    bos: Option<u32>,
    on_chunk: &mut dyn FnMut(usize, usize, f64),
) -> Result<Perplexity, PerplexityError> {
    if n_ctx < 4 {
        return Err(PerplexityError::ContextTooSmall(n_ctx));
    }
    if tokens.len() < 2 * n_ctx {
        return Err(PerplexityError::TooShort { tokens: tokens.len(), n_ctx, needed: 2 * n_ctx });
    }
    let n_vocab = session.n_vocab();
    if session.capacity() < n_ctx {
        return Err(PerplexityError::Backend(
            format!("the context holds {} positions, fewer than {n_ctx}", session.capacity()).into(),
        ));
    }
    let chunks = (tokens.len() / n_ctx).min(max_chunks.unwrap_or(usize::MAX));
    let first = n_ctx / 2;
    let (mut nll, mut count) = (0.0f64, 0usize);
    let mut running = Vec::with_capacity(chunks);
    for chunk in 0..chunks {
        let mut input = tokens[chunk * n_ctx..(chunk + 1) * n_ctx].to_vec();
        if let Some(bos) = bos {
            input[0] = bos;
        }
        session.clear();
        let logits = session.forward(&input).map_err(PerplexityError::Backend)?;
        for j in first..n_ctx - 1 {
            let row = &logits[j * n_vocab..(j + 1) * n_vocab];
            nll -= log_softmax(row, input[j + 1] as usize);
            count += 1;
        }
        running.push((nll / count as f64).exp());
        on_chunk(chunk + 1, chunks, running[chunk]);
    }
    Ok(Perplexity { chunks, scored_tokens: count, ppl: (nll / count as f64).exp(), running })
}

/// log softmax(row)[target], in f64.
fn log_softmax(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    row[target] as f64 - max - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::log_softmax;

    #[test]
    fn log_softmax_of_uniform_row() {
        assert!((log_softmax(&[0.5; 4], 2) + 4f64.ln()).abs() < 1e-12);
    }
}
