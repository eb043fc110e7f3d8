//! Our tokenizers against llama.cpp's tokenizer test vectors (`tests/data/vocab/`, see its README):
//! every input must encode to exactly the expected ids, with no BOS/EOS and special tokens not
//! looked for (llama.cpp's `test-tokenizer-0` settings), and decode back to the input.

use std::path::PathBuf;

use engine::tokenizer::{Tokenizer, TokenizerKind, read_gguf_vocab};

fn data_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/vocab").join(file)
}

fn load(name: &str) -> Tokenizer {
    let path = data_path(&format!("ggml-vocab-{name}.gguf"));
    let vocab = read_gguf_vocab(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf_vocab(&vocab).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The test cases as `test-tokenizer-0` reads them: inputs are separated by
/// "\n__ggml_vocab_test__\n" (the last one is followed by it too); the expected ids are one line
/// per input, space separated, with a leading space and nothing at all for an empty result.
fn cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(data_path(&format!("ggml-vocab-{name}.gguf.inp"))).unwrap();
    let out = std::fs::read_to_string(data_path(&format!("ggml-vocab-{name}.gguf.out"))).unwrap();
    let separator = "\n__ggml_vocab_test__\n";
    let body = inp.strip_suffix(separator).expect("inputs end with the separator");
    let inputs: Vec<&str> = body.split(separator).collect();
    let expected: Vec<Vec<u32>> =
        out.lines().map(|line| line.split_whitespace().map(|id| id.parse().unwrap()).collect()).collect();
    assert_eq!(inputs.len(), expected.len(), "{name}: .inp and .out disagree on the number of tests");
    inputs.into_iter().map(String::from).zip(expected).collect()
}

/// Encode and decode every case; report each mismatch, then fail if there was any.
fn check_vocab(name: &str, expected_kind: TokenizerKind) {
    let tokenizer = load(name);
    assert_eq!(tokenizer.kind(), expected_kind);
    let cases = cases(name);
    let mut failures = Vec::new();
    let mut round_trip_failures = Vec::new();
    for (text, expected) in &cases {
        let ids = tokenizer.encode(text, false, false).unwrap();
        if &ids != expected {
            failures.push(format!("{text:?}\n  expected {expected:?}\n  got      {ids:?}"));
        }
        let decoded = tokenizer.decode(&ids, false);
        if &decoded != text {
            round_trip_failures.push(format!("{text:?} decoded to {decoded:?}"));
        }
    }
    println!(
        "{name}: {}/{} encodings match, {}/{} decode back to the input",
        cases.len() - failures.len(),
        cases.len(),
        cases.len() - round_trip_failures.len(),
        cases.len()
    );
    assert!(
        failures.is_empty() && round_trip_failures.is_empty(),
        "{name}: {} encoding mismatches:\n{}\n{} round-trip failures:\n{}",
        failures.len(),
        failures.join("\n"),
        round_trip_failures.len(),
        round_trip_failures.join("\n")
    );
}

#[test]
fn gpt2_vectors() {
    check_vocab("gpt-2", TokenizerKind::ByteLevelBpe);
}

#[test]
fn llama_bpe_vectors() {
    check_vocab("llama-bpe", TokenizerKind::ByteLevelBpe);
}

#[test]
fn qwen2_vectors() {
    check_vocab("qwen2", TokenizerKind::ByteLevelBpe);
}

#[test]
fn llama_spm_vectors() {
    check_vocab("llama-spm", TokenizerKind::SentencePiece);
}

#[test]
fn phi3_vectors() {
    check_vocab("phi-3", TokenizerKind::SentencePiece);
}
