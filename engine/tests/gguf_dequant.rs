//! The CPU dequantizers against gguf-py's (llama.cpp's reference Python implementation) on random
//! blocks: tests/data/gguf/make_quant_vectors.py made the raw blocks and gguf-py's output.

use engine::gguf::{GgmlType, dequantize};
use std::path::PathBuf;

fn check(ty: GgmlType) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf");
    let raw = std::fs::read(dir.join(format!("{}.raw", ty.name()))).unwrap();
    let expected: Vec<f32> = std::fs::read(dir.join(format!("{}.f32", ty.name())))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let actual = dequantize(ty, &raw, expected.len()).unwrap();
    // gguf-py multiplies in float32 in the same order (scale times integer, then plus the min), so
    // the results must be equal bit for bit.
    for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
        assert_eq!(a.to_bits(), e.to_bits(), "{ty}: element {i} is {a}, gguf-py gives {e}");
    }
    assert_eq!(actual.len(), expected.len());
}

#[test]
fn f16_matches_gguf_py() {
    check(GgmlType::F16);
}
#[test]
fn bf16_matches_gguf_py() {
    check(GgmlType::Bf16);
}
#[test]
fn q8_0_matches_gguf_py() {
    check(GgmlType::Q8_0);
}
#[test]
fn q4_0_matches_gguf_py() {
    check(GgmlType::Q4_0);
}
#[test]
fn q4_1_matches_gguf_py() {
    check(GgmlType::Q4_1);
}
#[test]
fn q5_0_matches_gguf_py() {
    check(GgmlType::Q5_0);
}
#[test]
fn q5_1_matches_gguf_py() {
    check(GgmlType::Q5_1);
}
#[test]
fn q4_k_matches_gguf_py() {
    check(GgmlType::Q4K);
}
#[test]
fn q5_k_matches_gguf_py() {
    check(GgmlType::Q5K);
}
#[test]
fn q6_k_matches_gguf_py() {
    check(GgmlType::Q6K);
}
#[test]
fn mxfp4_matches_gguf_py() {
    check(GgmlType::Mxfp4);
}

#[test]
fn wrong_sizes_are_errors() {
    assert!(dequantize(GgmlType::Q8_0, &[0; 34], 31).is_err());
    assert!(dequantize(GgmlType::Q8_0, &[0; 33], 32).is_err());
    assert!(dequantize(GgmlType::Q4K, &[0; 144], 256).is_ok());
}
