//! Loading a Hugging Face `tokenizer.json` (and the BOS/EOS settings of the `tokenizer_config.json`
//! beside it). The `tokenizers` crate runs the pipeline the file describes; what is read here is
//! what this module's own decoding and special-token matching need: each token's type and which
//! family of spelling the vocabulary uses.

use std::path::Path;

use serde_json::Value;

use super::{SpecialIds, TokenType, Tokenizer, TokenizerError, TokenizerKind, sentencepiece};

pub(crate) fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
    let error = |message: String| TokenizerError::TokenizerJson { path: path.display().to_string(), message };
    let content = std::fs::read_to_string(path)
        .map_err(|source| TokenizerError::Io { path: path.display().to_string(), source })?;
    let json: Value = serde_json::from_str(&content).map_err(|e| error(e.to_string()))?;
    let mut model: tokenizers::Tokenizer =
        content.parse().map_err(|e: tokenizers::Error| error(e.to_string()))?;
    // Special added tokens are found by our own matcher, and only when asked to; the crate's added
    // vocabulary still finds the non-special (user-defined) ones, as they are always matched.
    model.set_encode_special_tokens(true);

    let vocab = model.get_vocab(true);
    let n = vocab.values().max().map_or(0, |&max| max as usize + 1);
    if n == 0 {
        return Err(error("the vocabulary is empty".into()));
    }
    let mut texts = vec![String::new(); n];
    for (text, &id) in &vocab {
        texts[id as usize] = text.clone();
    }

    let kind = if mentions(&json["decoder"], "ByteLevel") || mentions(&json["pre_tokenizer"], "ByteLevel") {
        TokenizerKind::ByteLevelBpe
    } else {
        TokenizerKind::SentencePiece
    };
    let byte_fallback = json["model"]["byte_fallback"].as_bool().unwrap_or(false);
    let mut token_types: Vec<TokenType> = texts
        .iter()
        .map(|text| {
            if text.is_empty() {
                TokenType::Undefined
            } else if kind == TokenizerKind::SentencePiece
                && byte_fallback
                && sentencepiece::byte_token_value(text).is_some()
            {
                TokenType::Byte
            } else {
                TokenType::Normal
            }
        })
        .collect();
    for (id, token) in model.get_added_tokens_decoder() {
        if let Some(token_type) = token_types.get_mut(id as usize) {
            *token_type = if token.special { TokenType::Control } else { TokenType::UserDefined };
        }
    }
    let unk = json["model"]["unk_token"].as_str().and_then(|text| model.token_to_id(text));
    if let Some(unk) = unk
        && token_types[unk as usize] == TokenType::Normal
    {
        token_types[unk as usize] = TokenType::Unknown;
    }

    // SentencePiece's leading space: a `Prepend("▁")` normalizer, or a Metaspace pre-tokenizer
    // that prepends.
    let add_space_prefix = kind == TokenizerKind::SentencePiece
        && (mentions(&json["normalizer"], "Prepend")
            || ["always", "first"]
                .iter()
                .any(|scheme| find_key(&json["pre_tokenizer"], "prepend_scheme") == Some(scheme)));

    let mut special_ids = SpecialIds { unk, ..SpecialIds::default() };
    // The post-processor's template for one sequence says which special tokens encoding adds:
    // `[<s>, A]` is a BOS, `[A, </s>]` an EOS. tokenizer_config.json, when present, overrides it.
    if let Some(single) = find_template(&json["post_processor"]) {
        let special_id = |item: Option<&Value>| {
            let text = item?.get("SpecialToken")?.get("id")?.as_str()?;
            model.token_to_id(text)
        };
        special_ids.bos = special_id(single.first());
        special_ids.eos = special_id(single.last()).filter(|_| single.len() > 1);
        special_ids.add_bos = special_ids.bos.is_some();
        special_ids.add_eos = special_ids.eos.is_some();
    }
    if let Some(config) = read_config(path) {
        let id_of = |key: &str| {
            let text = match &config[key] {
                Value::String(s) => Some(s.as_str()),
                Value::Object(o) => o.get("content").and_then(Value::as_str),
                _ => None,
            };
            text.and_then(|t| model.token_to_id(t))
        };
        special_ids.bos = id_of("bos_token").or(special_ids.bos);
        special_ids.eos = id_of("eos_token").or(special_ids.eos);
        special_ids.pad = id_of("pad_token");
        if let Some(add_bos) = config["add_bos_token"].as_bool() {
            special_ids.add_bos = add_bos;
        }
        if let Some(add_eos) = config["add_eos_token"].as_bool() {
            special_ids.add_eos = add_eos;
        }
    }
    Ok(Tokenizer::assemble(model, kind, &texts, token_types, special_ids, add_space_prefix))
}

/// `tokenizer_config.json` in the same folder, if it is there and parses.
fn read_config(tokenizer_json: &Path) -> Option<Value> {
    let path = tokenizer_json.with_file_name("tokenizer_config.json");
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// The `single` template of a `TemplateProcessing` post-processor, alone or in a sequence.
fn find_template(value: &Value) -> Option<&Vec<Value>> {
    match value {
        Value::Object(object) if object.get("type").and_then(Value::as_str) == Some("TemplateProcessing") => {
            object.get("single")?.as_array()
        }
        Value::Object(object) => object.values().find_map(find_template),
        Value::Array(items) => items.iter().find_map(find_template),
        _ => None,
    }
}

/// Whether a component (or any step of a sequence of them) has `"type": type_name`.
fn mentions(value: &Value, type_name: &str) -> bool {
    match value {
        Value::Object(object) => {
            object.get("type").and_then(Value::as_str) == Some(type_name)
                || object.values().any(|v| mentions(v, type_name))
        }
        Value::Array(items) => items.iter().any(|v| mentions(v, type_name)),
        _ => false,
    }
}

/// The first string value of `key` anywhere inside `value`.
fn find_key<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    match value {
        Value::Object(object) => {
            object.get(key).and_then(Value::as_str).or_else(|| object.values().find_map(|v| find_key(v, key)))
        }
        Value::Array(items) => items.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}
