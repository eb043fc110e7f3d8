//! The CPU dequantizers against gguf-py's (llama.cpp's reference Python implementation) on random
//! blocks: tests/data/gguf/make_quant_vectors.py made the raw blocks and gguf-py's output (F16 and
//! BF16 include zeros of both signs, subnormals, the largest finite values, infinities and a NaN).

use engine::gguf::{GgmlType, GgufError, dequantize, e8m0_half};
use std::path::PathBuf;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf")
}

fn check(ty: GgmlType) {
    let dir = data_dir();
    let raw = std::fs::read(dir.join(format!("{}.raw", ty.name()))).unwrap();
    let expected: Vec<f32> = std::fs::read(dir.join(format!("{}.f32", ty.name())))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let actual = dequantize(ty, &raw, expected.len()).unwrap();
    // gguf-py multiplies in float32 in the same order (scale times integer, then plus the min), so
    // the results must be equal bit for bit, signs of zeros and NaN bits included.
    for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
        let (a_bits, e_bits) = (a.to_bits(), e.to_bits());
        assert_eq!(
            a_bits, e_bits,
            "{ty}: element {i} is {a} ({a_bits:#010x}), gguf-py gives {e} ({e_bits:#010x})"
        );
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
    let e = dequantize(GgmlType::Q8_0, &[0; 34], 31).unwrap_err();
    assert!(matches!(e, GgufError::PartialBlock { ty: GgmlType::Q8_0, n_elements: 31 }));
    assert_eq!(e.to_string(), "31 elements are not a whole number of Q8_0 blocks of 32");
    let e = dequantize(GgmlType::Q8_0, &[0; 33], 32).unwrap_err();
    assert!(matches!(e, GgufError::DataSize { expected: 34, actual: 33, .. }));
    assert_eq!(e.to_string(), "32 Q8_0 elements take 34 bytes (blocks of 32 in 34 bytes), got 33");
    // An element count whose byte size overflows is a wrong size, not a panic.
    assert!(matches!(dequantize(GgmlType::F32, &[0; 4], usize::MAX), Err(GgufError::DataSize { .. })));
    assert!(dequantize(GgmlType::Q4K, &[0; 144], 256).is_ok());
}

/// Type ids, block sizes and block bytes as gguf-py has them (types.txt, written by the same script).
#[test]
fn type_table_matches_gguf_py() {
    let table = std::fs::read_to_string(data_dir().join("types.txt")).unwrap();
    let mut seen = 0;
    for line in table.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, id, block_size, block_bytes] = fields[..] else { panic!("bad line {line:?}") };
        let ty = GgmlType::from_id(id.parse().unwrap()).unwrap_or_else(|| panic!("{name}: id {id} unknown"));
        assert_eq!(ty.name(), name);
        assert_eq!(ty.id().to_string(), id, "{name}");
        assert_eq!(ty.block_size().to_string(), block_size, "{name}");
        assert_eq!(ty.block_bytes().to_string(), block_bytes, "{name}");
        seen += 1;
    }
    assert_eq!(seen, GgmlType::ALL.len(), "every supported type is in the table");
    for id in 0..=255 {
        if let Some(ty) = GgmlType::from_id(id) {
            assert_eq!(ty.id(), id);
        }
    }
}

/// The E8M0 half scale for every exponent byte, subnormal results (e = 0, 1) included, against
/// 2^(e - 128) computed in f64 (exact there, and exactly representable in f32).
#[test]
fn e8m0_half_is_two_to_the_e_minus_128() {
    for e in 0..=255u8 {
        let expected = 2f64.powi(e as i32 - 128) as f32;
        assert_eq!(e8m0_half(e).to_bits(), expected.to_bits(), "e = {e}");
    }
}

/// The extremes of MXFP4's shared exponent, which the random vectors keep away from: e = 0 and 1
/// give subnormal results, e = 255 (2^128) overflows to infinity for |x| >= 1 as it does in ggml.
/// Nibble 8 is +0, as in ggml's table of int8 values (there is no -0 there).
#[test]
fn mxfp4_extreme_exponents() {
    let nibbles: Vec<u8> = (0..16).map(|i| (i as u8) | ((15 - i as u8) << 4)).collect();
    let e2m1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];
    for e in [0u8, 1, 2, 127, 254, 255] {
        let mut block = vec![e];
        block.extend(&nibbles);
        let out = dequantize(GgmlType::Mxfp4, &block, 32).unwrap();
        let scale = 2f64.powi(e as i32 - 127);
        for j in 0..16 {
            for (k, nibble) in [(j, j), (j + 16, 15 - j)] {
                let expected = (e2m1[nibble] * scale) as f32;
                assert_eq!(out[k].to_bits(), expected.to_bits(), "e = {e}, element {k}");
            }
        }
    }
}
