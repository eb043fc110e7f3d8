//! Our tokenizers against llama.cpp's tokenizer test vectors (`tests/data/vocab/`, see its README):
//! every input must encode to exactly the expected ids, with no BOS/EOS and special tokens not
//! looked for (llama.cpp's `test-tokenizer-0` settings), and decode back to the input. The tiny
//! gpt-oss fixture's vocabulary is checked against ids recorded from llama.cpp's `llama-tokenize`.

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

/// The tiny gpt-oss fixture's vocabulary (`tests/fixtures/gptoss_vocab.py`: byte tokens, a few
/// merges, harmony's special tokens; pre-tokenizer gpt-4o) encodes as llama.cpp does. The ids are
/// llama.cpp's (0c1e570, CPU build): `llama-tokenize -m tests/fixtures/gptoss.gguf -p TEXT --ids`,
/// which adds no BOS for this vocabulary and reads special tokens in the text.
#[test]
fn gpt_oss_fixture_vectors() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gptoss.gguf");
    let vocab = read_gguf_vocab(&path).unwrap();
    let tokenizer = Tokenizer::from_gguf_vocab(&vocab).unwrap();
    let cases: [(&str, &[u32]); 3] = [
        (
            "Hello world, the analysis is final.",
            &[
                72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 44, 258, 32, 270, 32, 105, 115, 32, 272,
                46,
            ],
        ),
        (
            " the user asked: naïve ☃?",
            &[
                258, 32, 281, 263, 115, 107, 101, 100, 58, 32, 110, 97, 195, 175, 118, 101, 32, 226, 152,
                131, 63,
            ],
        ),
        (
            "<|start|>user<|message|>What is 2 + 2?<|end|><|start|>assistant",
            &[296, 281, 298, 87, 104, 97, 116, 32, 105, 115, 32, 50, 32, 43, 32, 50, 63, 297, 296, 279],
        ),
    ];
    for (text, expected) in cases {
        let ids = tokenizer.encode(text, tokenizer.add_bos(), true).unwrap();
        assert_eq!(ids, expected, "{text:?}");
        assert_eq!(tokenizer.decode(&ids, false), text, "{text:?} decodes back");
    }
}
