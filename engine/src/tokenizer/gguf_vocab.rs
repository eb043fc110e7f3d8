//! Fills a [`GgufVocab`] from a parsed GGUF file's `tokenizer.ggml.*` metadata.

use std::path::Path;

use super::{GgufVocab, TokenizerError};
use crate::gguf::{GgufFile, Value};

impl GgufVocab {
    /// The tokenizer keys of `file`; every present key must have the type llama.cpp writes.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let wrong = |key: &str, expected: &str| {
            TokenizerError::InvalidVocab(format!("tokenizer.ggml.{key} is not {expected}"))
        };
        let meta = |e: crate::gguf::GgufError| TokenizerError::InvalidVocab(e.to_string());
        let strings = |key: &str| -> Result<Option<Vec<String>>, TokenizerError> {
            match file.get(&format!("tokenizer.ggml.{key}")) {
                None => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string).ok_or_else(|| wrong(key, "an array of strings")))
                    .collect::<Result<_, _>>()
                    .map(Some),
                Some(_) => Err(wrong(key, "an array of strings")),
            }
        };
        let id = |key: &str| -> Result<Option<u32>, TokenizerError> {
            file.get_u32_opt(&format!("tokenizer.ggml.{key}")).map_err(meta)
        };
        let flag = |key: &str| file.get_bool_opt(&format!("tokenizer.ggml.{key}")).map_err(meta);
        let scores = match file.get("tokenizer.ggml.scores") {
            None => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| {
                        v.as_f64().map(|x| x as f32).ok_or_else(|| wrong("scores", "an array of floats"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => return Err(wrong("scores", "an array of floats")),
        };
        let token_types = match file.get("tokenizer.ggml.token_type") {
            None => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| {
                        v.as_i64()
                            .and_then(|x| i32::try_from(x).ok())
                            .ok_or_else(|| wrong("token_type", "an array of integers"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(_) => return Err(wrong("token_type", "an array of integers")),
        };
        Ok(GgufVocab {
            model: file.get_str("tokenizer.ggml.model").map_err(meta)?.to_string(),
            pre: file.get_str_opt("tokenizer.ggml.pre").map_err(meta)?.map(str::to_string),
            tokens: strings("tokens")?.ok_or_else(|| wrong("tokens", "present"))?,
            scores,
            token_types,
            merges: strings("merges")?,
            bos: id("bos_token_id")?,
            eos: id("eos_token_id")?,
            unk: id("unknown_token_id")?,
            pad: id("padding_token_id")?,
            add_bos: flag("add_bos_token")?,
            add_eos: flag("add_eos_token")?,
            add_space_prefix: flag("add_space_prefix")?,
        })
    }
}

/// Opens the GGUF file at `path` and reads its tokenizer keys.
pub fn read_gguf_vocab(path: impl AsRef<Path>) -> Result<GgufVocab, TokenizerError> {
    let path = path.as_ref();
    let file = GgufFile::open(path)
        .map_err(|e| TokenizerError::Gguf { path: path.display().to_string(), message: e.to_string() })?;
    GgufVocab::from_gguf(&file)
}
