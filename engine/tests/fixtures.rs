//! The CPU forward pass against transformers' float32 logits on tiny random models of each
//! architecture, converted to GGUF by llama.cpp's converter (tests/fixtures/make_fixtures.py).

use engine::gguf::GgufFile;
use engine::model::Model;
use std::path::PathBuf;

fn fixture(name: &str) -> (Model, Vec<u32>, Vec<f32>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let file = GgufFile::open(dir.join(format!("{name}.gguf"))).unwrap();
    let model = Model::load(&file, engine::model::Numerics::Exact, &|_, _| {}).unwrap();
    let tokens: Vec<u32> = std::fs::read_to_string(dir.join(format!("{name}.tokens.json")))
        .unwrap()
        .trim()
        .trim_matches(['[', ']'])
        .split(',')
        .map(|t| t.trim().parse().unwrap())
        .collect();
    let logits: Vec<f32> = std::fs::read(dir.join(format!("{name}.logits.f32")))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (model, tokens, logits)
}

fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (diff / norm).sqrt()
}

/// Largest relative error over positions, each position's logits compared as a vector.
fn worst_position_error(actual: &[f32], expected: &[f32], n_vocab: usize) -> f64 {
    actual
        .chunks(n_vocab)
        .zip(expected.chunks(n_vocab))
        .map(|(a, e)| relative_error(a, e))
        .fold(0.0, f64::max)
}

fn check(name: &str) {
    let (model, tokens, expected) = fixture(name);
    let n_vocab = model.config().n_vocab;
    assert_eq!(expected.len(), tokens.len() * n_vocab);

    // One prefill of the whole sequence.
    let mut cache = model.new_cache(64);
    let logits = model.forward(&tokens, &mut cache).unwrap();
    let error = worst_position_error(&logits, &expected, n_vocab);
    println!("{name}: largest relative logit error over {} positions: {error:.2e}", tokens.len());
    assert!(error < 1e-4, "{name}: relative error {error:.2e} against transformers");

    // Prefill of a prefix, then one token at a time, must give the same logits.
    let split = tokens.len() / 3;
    let mut cache = model.new_cache(64);
    let mut stepped = model.forward(&tokens[..split], &mut cache).unwrap();
    for &t in &tokens[split..] {
        stepped.extend(model.forward(&[t], &mut cache).unwrap());
    }
    let drift = worst_position_error(&stepped, &logits, n_vocab);
    assert!(drift < 1e-5, "{name}: prefill-then-decode differs from one prefill by {drift:.2e}");
}

#[test]
fn gpt2_matches_transformers() {
    check("gpt2");
}

/// Head dim 64, three layers (the GPU's paged cache takes this fixture).
#[test]
fn gpt2_with_head_dim_64_matches_transformers() {
    check("gpt2-64");
}

#[test]
fn llama_matches_transformers() {
    check("llama");
}

#[test]
fn llama_with_head_dim_64_matches_transformers() {
    check("llama64");
}

#[test]
fn qwen2_matches_transformers() {
    check("qwen2");
}

#[test]
fn phi3_matches_transformers() {
    check("phi3");
}

/// gpt-oss: sinks, sliding-window layers (window 8, shorter than the 23 tokens), YaRN without
/// truncation, biases everywhere, 4 experts top-2 in MXFP4 with the clamped SwiGLU (some gate values
/// pass the clamp).
#[test]
fn gpt_oss_matches_transformers() {
    check("gptoss");
}

#[test]
fn a_sequence_longer_than_the_context_is_an_error() {
    let (model, tokens, _) = fixture("llama");
    let mut cache = model.new_cache(8);
    let error = model.forward(&tokens, &mut cache).unwrap_err().to_string();
    assert!(error.contains("needs 23 positions but the context holds 8"), "{error}");
    let mut cache = model.new_cache(64);
    assert!(
        model.forward(&[100_000], &mut cache).unwrap_err().to_string().contains("outside the vocabulary")
    );
}

/// How far the llama.cpp numerics (8-bit activations, f16 KV cache) move the Q8_0 fixture's logits
/// from the exact ones: the scale of the difference the GPU's integer path is allowed.
#[test]
fn quantized_fixture_numerics_differ_by_the_activation_rounding() {
    use engine::gguf::GgufFile;
    use engine::model::Numerics;
    let path =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/llama64-q8_0.gguf");
    let file = GgufFile::open(&path).unwrap();
    let tokens: Vec<u32> =
        serde_json::from_str(&std::fs::read_to_string(path.with_file_name("llama64.tokens.json")).unwrap())
            .unwrap();
    let run = |numerics| {
        let model = Model::load(&file, numerics, &|_, _| {}).unwrap();
        let mut cache = model.new_cache(64);
        model.forward(&tokens, &mut cache).unwrap()
    };
    let (exact, llamacpp) = (run(Numerics::Exact), run(Numerics::LlamaCpp));
    let error = worst_position_error(&llamacpp, &exact, 300);
    eprintln!("llama64-q8_0: llama.cpp numerics vs exact {error:.2e}");
    assert!(error > 1e-6 && error < 0.1, "{error:.2e}");
}

/// gpt-oss under the llama.cpp numerics: MXFP4 experts through the integer path against 8-bit
/// activations, an f16 KV cache. Close to the exact logits, not equal to them (the fixture's router
/// margins are at least 0.087, so no expert choice flips), and a prompt followed by single tokens
/// still equals one pass.
#[test]
fn gpt_oss_llamacpp_numerics_stay_near_the_exact_ones() {
    use engine::model::Numerics;
    let (exact_model, tokens, _) = fixture("gptoss");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let file = GgufFile::open(dir.join("gptoss.gguf")).unwrap();
    let model = Model::load(&file, Numerics::LlamaCpp, &|_, _| {}).unwrap();
    let mut cache = exact_model.new_cache(64);
    let exact = exact_model.forward(&tokens, &mut cache).unwrap();
    let mut cache = model.new_cache(64);
    let logits = model.forward(&tokens, &mut cache).unwrap();
    let error = worst_position_error(&logits, &exact, 300);
    eprintln!("gptoss: llama.cpp numerics vs exact {error:.2e}");
    assert!(error > 1e-6 && error < 0.1, "{error:.2e}");

    let mut cache = model.new_cache(64);
    let mut stepped = model.forward(&tokens[..7], &mut cache).unwrap();
    for &t in &tokens[7..] {
        stepped.extend(model.forward(&[t], &mut cache).unwrap());
    }
    let drift = worst_position_error(&stepped, &logits, 300);
    assert!(drift < 1e-5, "prefill-then-decode differs from one prefill by {drift:.2e}");
}
