//! SentencePiece-style BPE (GGUF `llama`) on the `tokenizers` crate's BPE model.
//!
//! SentencePiece's BPE keeps no merge list: it joins the adjacent pair whose joined piece has the
//! highest score, leftmost first among equals. A BPE merge list ranked by that score does the same,
//! so one is derived from the scores: every split of every piece into two pieces of the vocabulary
//! is a merge, ranked by the joined piece's score (ties: lower joined id, then lower left id).

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence};

use super::{TokenType, TokenizerError};

/// SentencePiece's visible space.
const SPACE_MARKER: &str = "\u{2581}";

pub(crate) fn build(
    texts: &[String],
    ids: Vocab,
    scores: Option<&[f32]>,
    token_types: &[TokenType],
    unk: Option<u32>,
    add_space_prefix: bool,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let merges = merges_from_scores(texts, &ids, scores, token_types);
    let mut builder = BPE::builder().vocab_and_merges(ids, merges).byte_fallback(true).fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(texts[unk as usize].clone());
    }
    let bpe = builder.build().map_err(|e| TokenizerError::Build(e.to_string()))?;

    let replace = Replace::new(" ", SPACE_MARKER).map_err(|e| TokenizerError::Build(e.to_string()))?;
    let mut steps = Vec::new();
    if add_space_prefix {
        steps.push(NormalizerWrapper::Prepend(Prepend::new(SPACE_MARKER.into())));
    }
    steps.push(NormalizerWrapper::Replace(replace));
    let mut model = tokenizers::Tokenizer::new(bpe);
    model.with_normalizer(Some(NormalizerWrapper::Sequence(Sequence::new(steps))));
    Ok(model)
}

fn merges_from_scores(
    texts: &[String],
    ids: &Vocab,
    scores: Option<&[f32]>,
    token_types: &[TokenType],
) -> Vec<(String, String)> {
    let score = |id: usize| scores.map_or(0.0, |s| s[id]);
    // (joined score, joined id, left id, right id)
    let mut ranked: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (joined, text) in texts.iter().enumerate() {
        // Only pieces that text can be made of: not control, unknown, byte or unused tokens.
        if !matches!(token_types[joined], TokenType::Normal | TokenType::UserDefined | TokenType::Undefined) {
            continue;
        }
        for (at, _) in text.char_indices().skip(1) {
            let (Some(&left), Some(&right)) = (ids.get(&text[..at]), ids.get(&text[at..])) else {
                continue;
            };
            ranked.push((score(joined), joined as u32, left, right));
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    ranked
        .into_iter()
        .map(|(_, _, left, right)| (texts[left as usize].clone(), texts[right as usize].clone()))
        .collect()
}

/// The byte a `<0xNN>` token stands for.
pub(crate) fn byte_token_value(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
