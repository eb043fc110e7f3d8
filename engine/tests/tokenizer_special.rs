//! Special tokens, BOS/EOS, decoding options and `tokenizer.json` loading, on llama.cpp's vocab
//! files (`tests/data/vocab/`). Expected ids are those of the models' published tokenizers.

use std::path::PathBuf;

use engine::tokenizer::{TokenType, Tokenizer, read_gguf_vocab};

fn data_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/vocab").join(file)
}

fn load(name: &str) -> Tokenizer {
    let path = data_path(&format!("ggml-vocab-{name}.gguf"));
    Tokenizer::from_gguf_vocab(&read_gguf_vocab(path).unwrap()).unwrap()
}

#[test]
fn qwen2_chat_markers_only_when_parsing_special() {
    let tokenizer = load("qwen2");
    let text = "<|im_start|>user\nHi<|im_end|>";
    let parsed = tokenizer.encode(text, false, true).unwrap();
    let mut expected = vec![151644, 872, 198];
    expected.extend(tokenizer.encode("Hi", false, false).unwrap());
    expected.push(151645);
    assert_eq!(parsed, expected);
    assert_eq!(tokenizer.decode(&parsed, false), text);
    assert_eq!(tokenizer.decode(&parsed, true), "user\nHi");

    // As plain text the markers are spelled out of ordinary tokens.
    let plain = tokenizer.encode(text, false, false).unwrap();
    assert!(!plain.contains(&151644) && !plain.contains(&151645), "{plain:?}");
    assert_eq!(tokenizer.decode(&plain, false), text);
}

#[test]
fn qwen2_user_defined_tokens_always_match() {
    // Qwen2's `[PAD151646]`... are added, non-special tokens: matched even without parse_special.
    let tokenizer = load("qwen2");
    assert_eq!(tokenizer.token_type(151646), Some(TokenType::UserDefined));
    let ids = tokenizer.encode("a[PAD151646]b", false, false).unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[1], 151646);
    assert_eq!(tokenizer.decode(&ids, true), "a[PAD151646]b");
}

#[test]
fn llama3_bos_and_special_tokens() {
    let tokenizer = load("llama-bpe");
    assert_eq!(tokenizer.bos(), Some(128000));
    assert!(tokenizer.add_bos(), "Llama 3 adds BOS by default");
    assert!(!tokenizer.add_eos());
    assert_eq!(tokenizer.encode("Hello world", true, false).unwrap(), [128000, 9906, 1917]);
    assert_eq!(tokenizer.encode("Hello world", false, false).unwrap(), [9906, 1917]);
    let text = "<|start_header_id|>user<|end_header_id|>\n\nHello world<|eot_id|>";
    let ids = tokenizer.encode(text, true, true).unwrap();
    assert_eq!(ids, [128000, 128006, 882, 128007, 271, 9906, 1917, 128009]);
    assert_eq!(tokenizer.decode(&ids, false), format!("<|begin_of_text|>{text}"));
    assert_eq!(tokenizer.decode(&ids, true), "user\n\nHello world");
}

#[test]
fn llama_spm_bos_space_prefix_and_bytes() {
    let tokenizer = load("llama-spm");
    assert_eq!((tokenizer.bos(), tokenizer.eos(), tokenizer.unk()), (Some(1), Some(2), Some(0)));
    // "▁Hello" is 15043 and "▁world" 3186 in Llama 2's vocabulary.
    assert_eq!(tokenizer.encode("Hello world", true, false).unwrap(), [1, 15043, 3186]);
    // A control token is text unless asked for; after one, SentencePiece's "▁" is put in front
    // of the text again.
    assert_eq!(tokenizer.encode("<s>Hello", false, true).unwrap(), [1, 15043]);
    assert!(!tokenizer.encode("<s>Hello", false, false).unwrap().contains(&1));
    // Decoding after a BOS keeps the text's own first space.
    let ids = tokenizer.encode(" Hello", true, false).unwrap();
    assert_eq!(tokenizer.decode(&ids, true), " Hello");
    // A character outside the vocabulary falls back to its UTF-8 bytes as <0xNN> tokens
    // (byte b is token b + 3).
    let ids = tokenizer.encode("\u{1F999}", false, false).unwrap();
    assert_eq!(ids, [29871, 0xF0 + 3, 0x9F + 3, 0xA6 + 3, 0x99 + 3]);
    assert!(ids[1..].iter().all(|&id| tokenizer.token_type(id) == Some(TokenType::Byte)));
    assert_eq!(tokenizer.token_bytes(ids[1]), Some(&[0xF0][..]));
    assert_eq!(tokenizer.decode(&ids, false), "\u{1F999}");
}

#[test]
fn phi3_user_defined_end_of_sequence() {
    // Phi-3 stores "</s>" as a user-defined token: matched in text whatever parse_special says.
    let tokenizer = load("phi-3");
    assert_eq!(tokenizer.token_type(2), Some(TokenType::UserDefined));
    let ids = tokenizer.encode("Hi</s>", false, false).unwrap();
    assert_eq!(ids.last(), Some(&2));
    assert_eq!(tokenizer.decode(&ids, true), "Hi</s>");
    assert_eq!(tokenizer.eos(), Some(32000));
    let chat = tokenizer.encode("<|user|>Hi<|end|>", false, true).unwrap();
    assert_eq!(chat.first(), tokenizer.token_to_id("<|user|>").as_ref());
    assert_eq!(chat.last(), Some(&32007));
}

#[test]
fn ids_outside_the_vocabulary_decode_to_nothing() {
    let tokenizer = load("gpt-2");
    assert_eq!(tokenizer.token_bytes(50257), None);
    assert_eq!(tokenizer.decode(&[15496, 50257, 11], false), "Hello,");
}

/// GPT-2's vocabulary written out as a Hugging Face `tokenizer.json` (the layout of GPT-2's
/// published one: byte-level pre-tokenizer with its built-in regex, BPE, byte-level decoder) with a
/// `tokenizer_config.json`, loaded back through `from_tokenizer_json`: it must reproduce the
/// gpt-2 test vectors and find `<|endoftext|>` only when parsing special tokens.
#[test]
fn tokenizer_json_gpt2_reproduces_the_vectors() {
    use serde_json::json;

    let vocab = read_gguf_vocab(data_path("ggml-vocab-gpt-2.gguf")).unwrap();
    let token_ids: serde_json::Map<String, serde_json::Value> =
        vocab.tokens.iter().enumerate().map(|(id, text)| (text.clone(), json!(id))).collect();
    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": 50256, "content": "<|endoftext|>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": true, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": {
            "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
        },
        "post_processor": {
            "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true
        },
        "decoder": {
            "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true
        },
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
            "vocab": token_ids, "merges": vocab.merges.as_ref().unwrap()
        }
    });
    let config = json!({
        "bos_token": "<|endoftext|>",
        "eos_token": {"content": "<|endoftext|>", "special": true},
        "add_bos_token": false
    });
    let dir = std::env::temp_dir().join(format!("engine-tokenizer-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let loaded = Tokenizer::from_tokenizer_json(dir.join("tokenizer.json"));
    std::fs::remove_dir_all(&dir).unwrap();
    let tokenizer = loaded.unwrap();

    assert_eq!(tokenizer.kind(), engine::tokenizer::TokenizerKind::ByteLevelBpe);
    assert_eq!((tokenizer.bos(), tokenizer.eos()), (Some(50256), Some(50256)));
    assert!(!tokenizer.add_bos());
    assert_eq!(tokenizer.token_type(50256), Some(TokenType::Control));

    let inputs = std::fs::read_to_string(data_path("ggml-vocab-gpt-2.gguf.inp")).unwrap();
    let outputs = std::fs::read_to_string(data_path("ggml-vocab-gpt-2.gguf.out")).unwrap();
    let separator = "\n__ggml_vocab_test__\n";
    let inputs: Vec<&str> = inputs.strip_suffix(separator).unwrap().split(separator).collect();
    assert_eq!(inputs.len(), outputs.lines().count());
    for (text, line) in inputs.iter().zip(outputs.lines()) {
        let expected: Vec<u32> = line.split_whitespace().map(|id| id.parse().unwrap()).collect();
        let ids = tokenizer.encode(text, false, false).unwrap();
        assert_eq!(ids, expected, "{text:?}");
        assert_eq!(tokenizer.decode(&ids, false), *text);
    }

    let text = "Hi<|endoftext|>";
    assert_eq!(tokenizer.encode(text, false, true).unwrap(), [17250, 50256]);
    let plain = tokenizer.encode(text, false, false).unwrap();
    assert!(!plain.contains(&50256), "{plain:?}");
    assert_eq!(tokenizer.decode(&plain, false), text);

    // With no tokenizer_config.json, BOS comes from a post-processor template (Llama 3's way).
    let mut with_template = tokenizer_json;
    with_template["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}}
        ],
        "pair": [],
        "special_tokens": {
            "<|endoftext|>": {"id": "<|endoftext|>", "ids": [50256], "tokens": ["<|endoftext|>"]}
        }
    });
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), with_template.to_string()).unwrap();
    let loaded = Tokenizer::from_tokenizer_json(dir.join("tokenizer.json"));
    std::fs::remove_dir_all(&dir).unwrap();
    let tokenizer = loaded.unwrap();
    assert!(tokenizer.add_bos() && !tokenizer.add_eos());
    assert_eq!(tokenizer.encode("Hi", true, false).unwrap(), [50256, 17250]);
}
