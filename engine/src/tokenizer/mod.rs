//! Text to token ids and back, for the two vocabulary families GGUF files carry:
//!
//! - `gpt2`: byte-level BPE. Text is cut into words by a split regex chosen by `tokenizer.ggml.pre`
//!   ([`pre_tokenizer`]), each byte is spelled as one printable character, and the ranked
//!   `tokenizer.ggml.merges` join characters into tokens.
//! - `llama`: SentencePiece-style BPE. Spaces become `▁` (and one is put in front of the text),
//!   pieces are joined best score first (`tokenizer.ggml.scores`), and characters outside the
//!   vocabulary fall back to their UTF-8 bytes as `<0xNN>` tokens.
//!
//! Both run on the `tokenizers` crate's BPE model; this module turns GGUF metadata into its
//! configuration, finds special tokens in the text itself ([`special`]) and decodes ids to bytes
//! itself, a token at a time, so that a stream of generated tokens can be turned into text as it
//! comes.

mod byte_level;
mod gguf_vocab;
mod pre_tokenizer;
mod sentencepiece;
mod special;
mod tokenizer_json;
mod vocab;

use std::path::Path;

use tokenizers::models::bpe::{BPE, Vocab};

pub use gguf_vocab::read_gguf_vocab;
pub use vocab::{GgufVocab, TokenType};

use special::{Fragment, SpecialTokens};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Gguf { path: String, message: String },
    #[error("{path}: {message}")]
    TokenizerJson { path: String, message: String },
    #[error("unknown tokenizer model {0:?} (tokenizer.ggml.model); supported: gpt2, llama")]
    UnknownModel(String),
    #[error(
        "unknown pre-tokenizer {0:?} (tokenizer.ggml.pre); supported: default, gpt-2, llama-bpe, qwen2, smollm, gpt-4o"
    )]
    UnknownPreTokenizer(String),
    #[error("invalid vocabulary: {0}")]
    InvalidVocab(String),
    #[error("building the tokenizer: {0}")]
    Build(String),
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// Which family the vocabulary is: it decides how a token's text turns back into bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// GGUF `gpt2`: each character of a token's text stands for one byte.
    ByteLevelBpe,
    /// GGUF `llama`: `▁` stands for a space, `<0xNN>` tokens for single bytes.
    SentencePiece,
}

/// Special token ids and whether encoding adds BOS/EOS.
#[derive(Debug, Clone, Copy, Default)]
struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

pub struct Tokenizer {
    model: tokenizers::Tokenizer,
    kind: TokenizerKind,
    token_types: Vec<TokenType>,
    /// The bytes each token decodes to (control tokens: their text).
    pieces: Vec<Box<[u8]>>,
    specials: SpecialTokens,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    /// SentencePiece's leading `▁`, taken off again when decoding from the start of a text.
    add_space_prefix: bool,
}

impl Tokenizer {
    /// Build the tokenizer a GGUF file describes.
    /// The tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(file: &crate::gguf::GgufFile) -> Result<Self, TokenizerError> {
        Self::from_gguf_vocab(&GgufVocab::from_gguf(file)?)
    }

    pub fn from_gguf_vocab(vocab: &GgufVocab) -> Result<Self, TokenizerError> {
        let n = vocab.tokens.len();
        if n == 0 {
            return Err(TokenizerError::InvalidVocab("no tokens".into()));
        }
        let check_len = |name: &str, len: usize| {
            if len < n {
                return Err(TokenizerError::InvalidVocab(format!(
                    "tokenizer.ggml.{name} has {len} entries for {n} tokens"
                )));
            }
            Ok(())
        };
        let token_types: Vec<TokenType> = match &vocab.token_types {
            Some(types) => {
                check_len("token_type", types.len())?;
                types[..n].iter().map(|&t| TokenType::from_gguf(t)).collect()
            }
            None => vec![TokenType::Normal; n],
        };
        if let Some(scores) = &vocab.scores {
            check_len("scores", scores.len())?;
        }
        for (name, id) in
            [("bos", vocab.bos), ("eos", vocab.eos), ("unknown", vocab.unk), ("padding", vocab.pad)]
        {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return Err(TokenizerError::InvalidVocab(format!(
                    "{name} token id {id} is outside the vocabulary of {n} tokens"
                )));
            }
        }
        // As llama.cpp does: an empty token text gets a placeholder so that it cannot match.
        let texts: Vec<String> = vocab
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| if t.is_empty() { format!("[EMPTY_{i}]") } else { t.clone() })
            .collect();
        // A later duplicate wins, as in llama.cpp's text-to-id map.
        let ids: Vocab = texts.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();

        let (kind, model, add_bos_default, add_space_prefix) = match vocab.model.as_str() {
            "gpt2" => {
                let spec = pre_tokenizer::spec_for(vocab.pre.as_deref())?;
                let merges = vocab.merges.as_deref().ok_or_else(|| {
                    TokenizerError::InvalidVocab("a gpt2 vocabulary needs tokenizer.ggml.merges".into())
                })?;
                let merges = parse_merges(merges, &ids);
                let bpe = BPE::builder()
                    .vocab_and_merges(ids, merges)
                    .ignore_merges(spec.ignore_merges)
                    .build()
                    .map_err(|e| TokenizerError::Build(e.to_string()))?;
                let mut model = tokenizers::Tokenizer::new(bpe);
                model.with_pre_tokenizer(Some(pre_tokenizer::build(&spec)?));
                (TokenizerKind::ByteLevelBpe, model, spec.add_bos, false)
            }
            "llama" => {
                let add_space_prefix = vocab.add_space_prefix.unwrap_or(true);
                let model = sentencepiece::build(
                    &texts,
                    ids,
                    vocab.scores.as_deref(),
                    &token_types,
                    vocab.unk,
                    add_space_prefix,
                )?;
                (TokenizerKind::SentencePiece, model, true, add_space_prefix)
            }
            other => return Err(TokenizerError::UnknownModel(other.to_string())),
        };

        Ok(Self::assemble(
            model,
            kind,
            &texts,
            token_types,
            SpecialIds {
                bos: vocab.bos,
                eos: vocab.eos,
                unk: vocab.unk,
                pad: vocab.pad,
                add_bos: vocab.add_bos.unwrap_or(add_bos_default),
                add_eos: vocab.add_eos.unwrap_or(false),
            },
            add_space_prefix,
        ))
    }

    /// Load a Hugging Face `tokenizer.json`. BOS/EOS and whether to add them come from its
    /// `TemplateProcessing` post-processor, overridden by a `tokenizer_config.json` beside it.
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        tokenizer_json::load(path.as_ref())
    }

    /// The parts both constructors share: per-token decoding and the special-token matcher.
    fn assemble(
        model: tokenizers::Tokenizer,
        kind: TokenizerKind,
        texts: &[String],
        token_types: Vec<TokenType>,
        special_ids: SpecialIds,
        add_space_prefix: bool,
    ) -> Self {
        let pieces = texts
            .iter()
            .zip(&token_types)
            .map(|(text, &token_type)| piece_bytes(kind, text, token_type))
            .collect();
        let specials = SpecialTokens::new(texts.iter().zip(&token_types).enumerate().filter_map(
            |(id, (text, token_type))| match token_type {
                TokenType::UserDefined => Some((text.clone(), id as u32, false)),
                TokenType::Control | TokenType::Unknown => Some((text.clone(), id as u32, true)),
                _ => None,
            },
        ));
        let SpecialIds { bos, eos, unk, pad, add_bos, add_eos } = special_ids;
        Self {
            model,
            kind,
            token_types,
            pieces,
            specials,
            bos,
            eos,
            unk,
            pad,
            add_bos,
            add_eos,
            add_space_prefix,
        }
    }

    /// Token ids for `text`. `add_special` puts BOS/EOS around them as the vocabulary asks
    /// (`tokenizer.ggml.add_bos_token`/`add_eos_token`); `parse_special` matches control tokens
    /// written in the text (`<|im_start|>`) as those tokens instead of as plain text.
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = Vec::new();
        if add_special && self.add_bos {
            ids.extend(self.bos);
        }
        // Each stretch of plain text is encoded on its own: none continues a word across a
        // special token, and SentencePiece puts its `▁` in front of each (as llama.cpp does after
        // every special token).
        for fragment in self.specials.partition(text, parse_special) {
            match fragment {
                Fragment::Token(id) => ids.push(id),
                Fragment::Text("") => {}
                Fragment::Text(text) => {
                    let encoding = self
                        .model
                        .encode_fast(text, false)
                        .map_err(|e| TokenizerError::Encode(e.to_string()))?;
                    ids.extend_from_slice(encoding.get_ids());
                }
            }
        }
        if add_special && self.add_eos {
            ids.extend(self.eos);
        }
        Ok(ids)
    }

    /// The bytes token `id` stands for, on its own: no leading space is removed. `None` for an id
    /// outside the vocabulary. Concatenate these to stream generated text; a character can be
    /// split across tokens, so turn bytes into text only where they form whole characters.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.pieces.get(id as usize).map(|p| &p[..])
    }

    /// The bytes `ids` decode to. `skip_special` leaves out control and unknown tokens.
    /// SentencePiece's leading space, which encoding puts in front of the text, is taken off the
    /// first token that is not left out, so that `decode(encode(text, true, false), true)` gives
    /// `text` back. (llama.cpp keeps that space when the ids start with a BOS.) Ids outside the
    /// vocabulary are skipped.
    pub fn decode_bytes(&self, ids: &[u32], skip_special: bool) -> Vec<u8> {
        let mut remove_space = self.add_space_prefix;
        let mut bytes = Vec::new();
        for &id in ids {
            let Some(piece) = self.token_bytes(id) else {
                continue;
            };
            if skip_special && self.is_special(id) {
                continue;
            }
            let piece = match piece {
                [b' ', rest @ ..] if remove_space => rest,
                _ => piece,
            };
            remove_space = false;
            bytes.extend_from_slice(piece);
        }
        bytes
    }

    /// [`Self::decode_bytes`] as text; bytes that are not valid UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, skip_special)).into_owned()
    }

    /// Control and unknown tokens: the ones `skip_special` leaves out of decoded text.
    pub fn is_special(&self, id: u32) -> bool {
        matches!(self.token_type(id), Some(TokenType::Control | TokenType::Unknown))
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.token_types.get(id as usize).copied()
    }

    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.model.token_to_id(text)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.model.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.token_types.len()
    }

    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    pub fn unk(&self) -> Option<u32> {
        self.unk
    }

    pub fn pad(&self) -> Option<u32> {
        self.pad
    }

    /// Whether `encode(.., add_special = true, ..)` puts BOS first.
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// Whether `encode(.., add_special = true, ..)` puts EOS last.
    pub fn add_eos(&self) -> bool {
        self.add_eos && self.eos.is_some()
    }
}

/// `tokenizer.ggml.merges` entries are "left right". The first space after the first character
/// separates them (a token may itself be a space in some vocabularies). Merges naming a token that
/// is not in the vocabulary, or producing one that is not, can never apply and are dropped.
fn parse_merges(merges: &[String], ids: &Vocab) -> Vec<(String, String)> {
    merges
        .iter()
        .filter_map(|merge| {
            let first_len = merge.chars().next()?.len_utf8();
            let at = first_len + merge[first_len..].find(' ')?;
            let (left, right) = (&merge[..at], &merge[at + 1..]);
            let known = ids.contains_key(left)
                && ids.contains_key(right)
                && ids.contains_key(&format!("{left}{right}"));
            known.then(|| (left.to_string(), right.to_string()))
        })
        .collect()
}

/// The bytes one token decodes to, by its type (llama.cpp's rules): normal tokens through the
/// family's spelling, bytes as themselves, control, unknown and user-defined tokens as their text,
/// unused and undefined ones as nothing.
fn piece_bytes(kind: TokenizerKind, text: &str, token_type: TokenType) -> Box<[u8]> {
    match token_type {
        TokenType::Control | TokenType::Unknown | TokenType::UserDefined => text.as_bytes().into(),
        TokenType::Normal => match kind {
            TokenizerKind::ByteLevelBpe => byte_level::token_text_to_bytes(text).into(),
            TokenizerKind::SentencePiece => text.replace('\u{2581}', " ").into_bytes().into(),
        },
        TokenType::Byte => sentencepiece::byte_token_value(text).map(|b| Box::from([b])).unwrap_or_default(),
        TokenType::Unused | TokenType::Undefined => Box::default(),
    }
}
