//! Tests that need no GPU: the embedded PTX, and the shape checks every wrapper runs before it
//! touches the device.

use super::*;
use crate::embedding::gather_config;
use crate::norm::{MAX_NORM_DIM, norm_config};
use crate::rope::{Rope, RopeLayout, Yarn, rope_config};
use crate::softmax::softmax_config;

fn entry_points() -> Vec<&'static str> {
    PTX.lines()
        .filter_map(|line| line.trim().strip_prefix(".visible .entry "))
        .map(|rest| rest.split('(').next().unwrap().trim())
        .collect()
}

#[test]
fn ptx_defines_exactly_the_kernels_the_wrappers_launch() {
    let mut defined = entry_points();
    let mut expected: Vec<&str> = KERNELS.to_vec();
    defined.sort();
    expected.sort();
    assert_eq!(defined, expected);
}

#[test]
fn ptx_targets_the_baseline_architecture() {
    assert!(PTX.contains(".target sm_80"), "PTX header: {}", &PTX[..PTX.len().min(300)]);
    assert!(PTX.contains(".address_size 64"));
}

#[test]
fn no_driver_is_an_error_not_a_panic() {
    // On a machine without a GPU this must be Err(NoDriver) or Err(NoDevice); with one, Ok.
    match Gpu::new(0) {
        Ok(_) | Err(Error::NoDriver) | Err(Error::NoDevice(_)) => {}
        Err(other) => panic!("unexpected error opening GPU 0: {other}"),
    }
}

#[test]
fn norm_shapes_are_checked() {
    assert!(norm_config("rms_norm", 3, 4, [12, 4, 4, 12]).is_ok());
    let error = norm_config("rms_norm", 4, 4, [12, 4, 4, 16]).unwrap_err().to_string();
    assert_eq!(error, "rms_norm: x has 12 elements, expected 16");
    assert!(norm_config("rms_norm", 3, 4, [12, 5, 4, 12]).is_err());
    assert!(norm_config("layer_norm", 3, 4, [12, 4, 3, 12]).is_err());
    assert!(norm_config("rms_norm", 1, 0, [0, 0, 0, 0]).is_err());
    let big = MAX_NORM_DIM + 1;
    assert!(norm_config("rms_norm", 1, big, [big; 4]).is_err());
    // The row is staged in shared memory: dim f32.
    assert_eq!(norm_config("rms_norm", 2, 4096, [8192, 4096, 4096, 8192]).unwrap().shared_mem_bytes, 16384);
}

#[test]
fn gather_shapes_are_checked() {
    let (rows, config) = gather_config("embedding", 300, 7, 21, 3).unwrap();
    assert_eq!((rows, config.grid_dim.0), (100, 7));
    assert!(gather_config("embedding", 301, 7, 21, 3).is_err());
    assert!(gather_config("embedding", 300, 7, 20, 3).is_err());
    assert!(gather_config("embedding", 300, 7, 21, 0).is_err());
}

#[test]
fn softmax_shapes_are_checked() {
    assert!(softmax_config(2, 5, 10, 10).is_ok());
    assert!(softmax_config(2, 0, 0, 0).is_err());
    assert!(softmax_config(2, 5, 10, 9).is_err());
    assert!(softmax_config(1, 1 << 33, 1 << 33, 1 << 33).is_err());
}

fn llama_rope() -> Rope {
    Rope { head_dim: 128, rope_dim: 128, base: 10000.0, layout: RopeLayout::Interleaved, yarn: None }
}

#[test]
fn rope_shapes_are_checked() {
    assert!(rope_config(&llama_rope(), 3, 2, 3 * 2 * 128).is_ok());
    assert!(rope_config(&llama_rope(), 3, 2, 3 * 2 * 128 - 1).is_err());
    assert!(rope_config(&Rope { rope_dim: 130, ..llama_rope() }, 1, 1, 128).is_err());
    assert!(rope_config(&Rope { rope_dim: 63, ..llama_rope() }, 1, 1, 128).is_err());
    assert!(rope_config(&Rope { base: f32::NAN, ..llama_rope() }, 1, 1, 128).is_err());
    let yarn = Yarn {
        factor: 0.0,
        original_context: 4096,
        beta_fast: 32.0,
        beta_slow: 1.0,
        ext_factor: 1.0,
        attn_factor: 1.0,
    };
    assert!(rope_config(&Rope { yarn: Some(yarn), ..llama_rope() }, 1, 1, 128).is_err());
}

#[test]
fn yarn_parameters_follow_the_formulas() {
    // corr(b) = d ln(L / (2 pi b)) / (2 ln base): for d = 128, L = 4096, base 10000 that is 20.94
    // for b = 32 and 45.03 for b = 1 (worked out by hand), floored and ceiled.
    let yarn = Yarn {
        factor: 32.0,
        original_context: 4096,
        beta_fast: 32.0,
        beta_slow: 1.0,
        ext_factor: 1.0,
        attn_factor: 1.0,
    };
    assert_eq!(yarn.correction_range(128, 10000.0), (20.0, 46.0));
    // d = 64, base 150000 (gpt-oss): 8.09 and 17.40.
    assert_eq!(yarn.correction_range(64, 150000.0), (8.0, 18.0));
    let (_, params) = rope_config(&Rope { yarn: Some(yarn), ..llama_rope() }, 5, 1, 5 * 128).unwrap();
    assert!((params.magnitude - (1.0 + 0.1 * 32f32.ln())).abs() < 1e-6);
    assert_eq!(params.freq_scale, 1.0 / 32.0);
    // Without YaRN: no scaling at all.
    let (config, params) = rope_config(&llama_rope(), 5, 1, 5 * 128).unwrap();
    assert_eq!((params.magnitude, params.freq_scale, params.ext_factor), (1.0, 1.0, 0.0));
    // 64 pairs: 4 tokens per block fill 256 threads; 5 tokens need 2 blocks.
    assert_eq!((params.tokens_per_block, config.grid_dim.0), (4, 2));
}

#[test]
fn repacking_splits_block_fields_in_order() {
    use crate::matmul::{WeightFormat, repack_blocks};
    // Two Q4_1 blocks: d, m, 16 quant bytes each.
    let mut bytes = Vec::new();
    for b in 0..2u8 {
        bytes.extend_from_slice(&[b, 0x10, b, 0x20]);
        bytes.extend((0..16).map(|i| b * 16 + i));
    }
    let r = repack_blocks(WeightFormat::Q4_1, &bytes);
    assert_eq!(r.scales, vec![0x1000, 0x1001]);
    assert_eq!(r.mins, vec![0x2000, 0x2001]);
    assert_eq!(r.quants, (0..32).collect::<Vec<u8>>());
    let r = repack_blocks(WeightFormat::Q8_0, &[1, 2, 3, 4].into_iter().chain([5; 30]).collect::<Vec<u8>>());
    assert_eq!((r.quants.len(), r.scales, r.mins.len(), r.sub.len()), (32, vec![0x0201], 0, 0));
}

#[test]
fn repacking_k_quants_regroups_values_by_block_of_32() {
    use crate::matmul::{WeightFormat, repack_blocks};
    // Q4K: a 16-byte head, then 128 bytes: byte 32g + t holds value t of sub-block 2g (low
    // nibble) and of sub-block 2g + 1 (high). Value t of sub-block j here: (t + j) % 16.
    let mut block: Vec<u8> = (0..16).collect();
    for g in 0..4 {
        block.extend((0..32).map(|t| (((t + 2 * g) % 16) | (((t + 2 * g + 1) % 16) << 4)) as u8));
    }
    let r = repack_blocks(WeightFormat::Q4K, &block);
    let head: Vec<u16> = (0..16).step_by(2).map(|i| u16::from_le_bytes([i, i + 1])).collect();
    assert_eq!((r.scales, r.mins.len(), r.sub.len(), r.high.len()), (head, 0, 0, 0));
    for j in 0..8 {
        for t in 0..32 {
            let byte = r.quants[16 * j + t % 16];
            let nibble = if t < 16 { byte & 0xF } else { byte >> 4 };
            assert_eq!(nibble as usize, (t + j) % 16, "Q4K sub-block {j} value {t}");
        }
    }

    // Q6K: value e = (7 e) % 64, encoded as GGUF stores it (ql 128, qh 64, 16 scales, d).
    let value = |e: usize| (7 * e % 64) as u8;
    let (mut ql, mut qh) = (vec![0u8; 128], vec![0u8; 64]);
    for e in 0..256 {
        let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
        let at = 64 * n + 32 * (k & 1) + l;
        ql[at] |= (value(e) & 0xF) << if k >= 2 { 4 } else { 0 };
        qh[32 * n + l] |= (value(e) >> 4) << (2 * k);
    }
    let block: Vec<u8> = ql.into_iter().chain(qh).chain(200..216).chain([1, 2]).collect();
    let r = repack_blocks(WeightFormat::Q6K, &block);
    assert_eq!((r.sub, r.scales), ((200..216).collect::<Vec<u8>>(), vec![0x0201]));
    assert_eq!((r.quants.len(), r.high.len()), (128, 64));
    for e in 0..256 {
        let (b, t) = (e / 32, e % 32);
        let low = r.quants[16 * b + t % 16];
        let low = if t < 16 { low & 0xF } else { low >> 4 };
        let (half, u) = (t / 16, t % 16);
        let high = (r.high[8 * b + 4 * half + u % 4] >> (2 * (u / 4))) & 3;
        assert_eq!(low | high << 4, value(e), "Q6K value {e}");
    }
}
