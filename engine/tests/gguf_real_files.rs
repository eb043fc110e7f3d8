//! The reader on real GGUF files written by llama.cpp's tools, against what gguf-py's reader sees in
//! them: every metadata key with its type and value, every tensor's dims, type, offset and size, and
//! the first and last value of every F32 tensor, for a tiny Llama model and two vocab-only files.
//! tests/data/gguf/make_file_manifests.py wrote the manifests (<file>.json) from gguf-py.

use engine::gguf::{GgmlType, GgufFile, Value};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

fn engine_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn manifest(name: &str) -> Json {
    let path = engine_dir().join("tests/data/gguf").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Whether a metadata value equals a manifest value (floats are stored as f64 bit patterns).
fn same(value: &Value, expected: &Json) -> bool {
    match (value, expected) {
        (Value::String(s), Json::String(e)) => s == e,
        (Value::Bool(b), Json::Bool(e)) => b == e,
        (Value::F32(_) | Value::F64(_), Json::Object(o)) => {
            let bits = u64::from_str_radix(o["f64_bits"].as_str().unwrap(), 16).unwrap();
            value.as_f64().unwrap().to_bits() == bits
        }
        (_, Json::Number(n)) => match (value.as_i64(), n.as_i64(), value.as_u64(), n.as_u64()) {
            (Some(a), Some(b), _, _) => a == b,
            (_, _, Some(a), Some(b)) => a == b,
            _ => false,
        },
        _ => false,
    }
}

fn check_against_gguf_py(file: &GgufFile, name: &str) {
    let m = manifest(name);
    assert_eq!(file.version() as u64, m["version"].as_u64().unwrap());
    assert_eq!(file.alignment(), m["alignment"].as_u64().unwrap());
    assert_eq!(file.data_offset(), m["data_offset"].as_u64().unwrap());

    let metadata = m["metadata"].as_array().unwrap();
    assert_eq!(file.metadata().len(), metadata.len());
    for ((key, value), e) in file.metadata().iter().zip(metadata) {
        assert_eq!(key, e["key"].as_str().unwrap(), "metadata in file order");
        assert_eq!(value.type_name(), e["type"].as_str().unwrap(), "{key}");
        match value {
            Value::Array(items) => {
                assert_eq!(items.len() as u64, e["len"].as_u64().unwrap(), "{key}");
                if let (Some(first), Some(last)) = (items.first(), items.last()) {
                    assert_eq!(first.type_name(), e["element"].as_str().unwrap(), "{key}");
                    assert!(items.iter().all(|v| v.type_name() == first.type_name()), "{key}");
                    assert!(same(first, &e["first"]), "{key}: first is {first:?}, gguf-py: {}", e["first"]);
                    assert!(same(last, &e["last"]), "{key}: last is {last:?}, gguf-py: {}", e["last"]);
                }
            }
            _ => assert!(same(value, &e["value"]), "{key} is {value:?}, gguf-py: {}", e["value"]),
        }
    }

    let tensors = m["tensors"].as_array().unwrap();
    assert_eq!(file.tensors().len(), tensors.len());
    for (t, e) in file.tensors().iter().zip(tensors) {
        assert_eq!(t.name, e["name"].as_str().unwrap(), "tensors in file order");
        let dims: Vec<u64> = e["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(t.dims, dims, "{}", t.name);
        assert_eq!(t.ty.name(), e["type"].as_str().unwrap(), "{}", t.name);
        assert_eq!(t.offset, e["offset"].as_u64().unwrap(), "{}", t.name);
        assert_eq!(t.n_bytes, e["n_bytes"].as_u64().unwrap(), "{}", t.name);
        assert_eq!(t.n_elements, dims.iter().product::<u64>(), "{}", t.name);
        if t.ty == GgmlType::F32 {
            let values = file.tensor_f32(t).unwrap();
            let first = Value::F32(values[0]);
            let last = Value::F32(*values.last().unwrap());
            assert!(same(&first, &e["first"]) && same(&last, &e["last"]), "{}", t.name);
        }
    }
}

fn open(path: &Path) -> GgufFile {
    GgufFile::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn llama_fixture_matches_gguf_py() {
    let file = open(&engine_dir().join("../tests/fixtures/llama.gguf"));
    check_against_gguf_py(&file, "llama.gguf");
    // A few values by hand, as the converter wrote them.
    assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(file.get_u32("llama.block_count").unwrap(), 2);
    assert_eq!(file.get_u32("llama.embedding_length").unwrap(), 64);
    assert_eq!(file.get_u32("llama.attention.head_count_kv").unwrap(), 2);
    assert_eq!(file.get_f32("llama.rope.freq_base").unwrap(), 10000.0);
    assert_eq!(file.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(), 1e-5);
    assert_eq!(file.get_array_len("tokenizer.ggml.tokens").unwrap(), 300);
    assert_eq!(file.tensors().len(), 21);
    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!((embd.dims.clone(), embd.ty, embd.n_bytes), (vec![64, 300], GgmlType::F32, 64 * 300 * 4));
    let down = file.tensor("blk.0.ffn_down.weight").unwrap();
    assert_eq!(down.dims, vec![160, 64]);
    assert_eq!(file.tensor("blk.1.attn_k.weight").unwrap().dims, vec![64, 32]);
    // Every tensor lies inside the file at an aligned offset.
    for t in file.tensors() {
        assert_eq!(t.offset % 32, 0, "{}", t.name);
        assert!(file.data_offset() + t.offset + t.n_bytes <= file.len(), "{}", t.name);
    }
}

#[test]
fn gpt2_vocab_matches_gguf_py() {
    let file = open(&engine_dir().join("tests/data/vocab/ggml-vocab-gpt-2.gguf"));
    check_against_gguf_py(&file, "ggml-vocab-gpt-2.gguf");
    assert_eq!(file.get_str("general.architecture").unwrap(), "gpt2");
    assert_eq!(file.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(file.get_u32("gpt2.block_count").unwrap(), 12);
    assert_eq!(file.get_u32("tokenizer.ggml.eos_token_id").unwrap(), 50256);
    let tokens = file.get_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 50257);
    assert_eq!(tokens[0].as_str(), Some("!"));
    assert_eq!(tokens[50256].as_str(), Some("<|endoftext|>"));
    assert_eq!(file.get_array_len("tokenizer.ggml.merges").unwrap(), 50000);
    assert!(file.tensors().is_empty());
}

#[test]
fn llama_spm_vocab_matches_gguf_py() {
    let file = open(&engine_dir().join("tests/data/vocab/ggml-vocab-llama-spm.gguf"));
    check_against_gguf_py(&file, "ggml-vocab-llama-spm.gguf");
    assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(file.get_str("tokenizer.ggml.model").unwrap(), "llama");
    assert_eq!(file.get_u32("llama.vocab_size").unwrap(), 32000);
    assert_eq!(file.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(), 1e-5);
    assert_eq!(file.get_bool_opt("tokenizer.ggml.add_bos_token").unwrap(), Some(true));
    assert_eq!(file.get_bool_opt("tokenizer.ggml.add_eos_token").unwrap(), Some(false));
    let tokens = file.get_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 32000);
    assert_eq!(
        tokens[..3],
        [Value::String("<unk>".into()), Value::String("<s>".into()), Value::String("</s>".into())]
    );
    let scores = file.get_array("tokenizer.ggml.scores").unwrap();
    assert_eq!((scores.len(), scores.last()), (32000, Some(&Value::F32(-31740.0))));
    let types = file.get_array("tokenizer.ggml.token_type").unwrap();
    assert_eq!(types[..3], [Value::I32(2), Value::I32(3), Value::I32(3)]);
    assert!(file.tensors().is_empty());
}
