//! The fuzz harnesses, one function per target. The targets in `fuzz_targets/` call them, and the
//! engine's regression test (`engine/tests/fuzz_regressions.rs`) includes this file to replay the
//! seeds and every minimized finding without the fuzzer. Each returns normally on any input the
//! engine must survive; a panic, abort, hang or huge allocation is a finding.

use engine::chat::{Message, render};
use engine::gguf::GgufFile;
use engine::model::ModelConfig;
use engine::sampler::{Sampler, SamplerConfig};
use engine::server::protocol::{Endpoint, parse_request};
use engine::tokenizer::{GgufVocab, Tokenizer};

/// The GGUF reader on arbitrary bytes: header, metadata, tensor infos; then every tensor's data
/// range is touched and dequantized, and the model configuration is read from the metadata.
pub fn gguf_reader(data: &[u8]) {
    let Ok(file) = GgufFile::parse(data.to_vec()) else {
        return;
    };
    for (key, value) in file.metadata() {
        std::hint::black_box((key.len(), value.type_name()));
    }
    for info in file.tensors() {
        let bytes = file.tensor_data(info);
        std::hint::black_box(bytes.iter().fold(0u8, |a, &b| a ^ b));
        let _ = std::hint::black_box(file.tensor_f32(info));
    }
    let _ = ModelConfig::from_gguf(&file);
}

/// The tokenizer built from fuzzed GGUF metadata, then encoding and decoding fuzzed text.
///
/// Input: a little-endian u32 `n`, `n` bytes of a GGUF file (its `tokenizer.ggml.*` keys), one
/// byte of flags (bit 0: add special tokens, bit 1: parse special tokens), then the text.
pub fn tokenizer(data: &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<4>() else { return };
    let n = (u32::from_le_bytes(*head) as usize).min(rest.len());
    let (gguf, rest) = rest.split_at(n);
    let Some((&flags, text)) = rest.split_first() else { return };
    // Most mutations leave the vocabulary as it was: keep the last one built from the same bytes.
    LAST_TOKENIZER.with_borrow_mut(|last| {
        if last.as_ref().is_none_or(|(bytes, _)| bytes[..] != *gguf) {
            let tokenizer = GgufFile::parse(gguf.to_vec())
                .ok()
                .and_then(|file| GgufVocab::from_gguf(&file).ok())
                .and_then(|vocab| Tokenizer::from_gguf_vocab(&vocab).ok());
            *last = Some((gguf.to_vec(), tokenizer));
        }
        if let Some((_, Some(tokenizer))) = last {
            use_tokenizer(tokenizer, flags, text);
        }
    });
}

thread_local! {
    static LAST_TOKENIZER: std::cell::RefCell<Option<(Vec<u8>, Option<Tokenizer>)>> =
        const { std::cell::RefCell::new(None) };
}

fn use_tokenizer(tokenizer: &Tokenizer, flags: u8, text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    let (add_special, parse_special) = (flags & 1 != 0, flags & 2 != 0);
    if let Ok(ids) = tokenizer.encode(&text, add_special, parse_special) {
        std::hint::black_box(tokenizer.decode(&ids, false));
        std::hint::black_box(tokenizer.decode(&ids, true));
    }
    // Ids from the text's own bytes, in and out of the vocabulary.
    let ids: Vec<u32> =
        text.as_bytes().chunks(2).map(|c| c.iter().fold(0u32, |a, &b| a << 8 | b as u32)).collect();
    std::hint::black_box(tokenizer.decode(&ids, flags & 4 != 0));
    for &id in ids.iter().take(16) {
        std::hint::black_box((
            tokenizer.token_bytes(id),
            tokenizer.id_to_token(id),
            tokenizer.is_special(id),
        ));
    }
}

/// The chat template renderer on fuzzed templates and messages.
///
/// Input: one byte of flags (bit 0: add the generation prompt), then NUL-separated fields: the
/// template, the BOS text, the EOS text, then role and content of each message in turn.
pub fn chat_template(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let mut fields = text.split('\0');
    let template = fields.next().unwrap_or("");
    let bos = fields.next().unwrap_or("");
    let eos = fields.next().unwrap_or("");
    let rest: Vec<&str> = fields.collect();
    let messages: Vec<Message> =
        rest.chunks(2).map(|m| Message::new(m[0], m.get(1).copied().unwrap_or(""))).collect();
    let _ = std::hint::black_box(render(template, &messages, bos, eos, flags & 1 != 0));
}

/// The sampler on fuzzed logits (NaN, infinities, all equal) and fuzzed settings.
///
/// Input: 48 bytes of settings, then a penalty window of 8 token ids (u32 each), then logits as
/// little-endian f32s.
pub fn sampler(data: &[u8]) {
    let Some((settings, rest)) = data.split_first_chunk::<48>() else { return };
    let Some((window, logits)) = rest.split_first_chunk::<32>() else { return };
    let u64_at = |i: usize| u64::from_le_bytes(settings[i..i + 8].try_into().unwrap());
    let config = SamplerConfig {
        temperature: f32_at(settings, 0),
        top_p: f32_at(settings, 4),
        min_p: f32_at(settings, 8),
        repeat_penalty: f32_at(settings, 12),
        presence_penalty: f32_at(settings, 16),
        frequency_penalty: f32_at(settings, 20),
        top_k: u64_at(24) as usize,
        repeat_last_n: (u64_at(32) % 1024) as usize,
        seed: u64_at(40),
    };
    let logits: Vec<f32> = logits.chunks_exact(4).map(|c| f32_at(c, 0)).collect();
    let mut sampler = Sampler::new(config);
    for i in 0..8 {
        sampler.accept(u32::from_le_bytes(window[i * 4..i * 4 + 4].try_into().unwrap()) % 4096);
    }
    if let Ok(candidates) = sampler.candidates(&logits) {
        assert!(!candidates.is_empty());
        for &(id, _) in &candidates {
            assert!((id as usize) < logits.len());
        }
    }
    for _ in 0..2 {
        if let Ok(token) = sampler.sample(&logits) {
            assert!((token as usize) < logits.len(), "token {token} outside {} logits", logits.len());
            let v = logits[token as usize];
            assert!(!v.is_nan(), "a NaN logit was chosen");
            sampler.accept(token);
        }
    }
}

fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes(b[i..i + 4].try_into().unwrap())
}

/// The server's request parser (`engine serve`'s bodies of `/v1/chat/completions` and
/// `/v1/completions`) on arbitrary bytes, as both endpoints: it must return; a refusal must be a
/// 4xx whose body is OpenAI's error object with a message.
///
/// Input: the request body.
pub fn server_request(data: &[u8]) {
    for endpoint in [Endpoint::Chat, Endpoint::Completions] {
        match parse_request(data, endpoint) {
            Ok(request) => {
                assert!(request.n >= 1 && request.max_tokens != Some(0), "{request:?}");
                std::hint::black_box(request);
            }
            Err(error) => {
                assert!(error.status.is_client_error(), "{error:?}");
                let body = error.body();
                assert!(body["error"]["message"].is_string(), "{body}");
            }
        }
    }
}
