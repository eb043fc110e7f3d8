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
        truncate: true,
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
        truncate: true,
    };
    assert_eq!(yarn.correction_range(128, 10000.0), (20.0, 46.0));
    // d = 64, base 150000 (gpt-oss): 8.09 and 17.40, kept as they are without truncation.
    assert_eq!(yarn.correction_range(64, 150000.0), (8.0, 18.0));
    let (low, high) = Yarn { truncate: false, ..yarn }.correction_range(64, 150000.0);
    assert!((low - 8.0928).abs() < 1e-3 && (high - 17.3980).abs() < 1e-3, "{low} {high}");
    let (_, params) = rope_config(&Rope { yarn: Some(yarn), ..llama_rope() }, 5, 1, 5 * 128).unwrap();
    assert!((params.magnitude - (1.0 + 0.1 * 32f32.ln())).abs() < 1e-6);
    assert_eq!(params.freq_scale, 1.0 / 32.0);
    // Without YaRN: no scaling at all.
    let (config, params) = rope_config(&llama_rope(), 5, 1, 5 * 128).unwrap();
    assert_eq!((params.magnitude, params.freq_scale, params.ext_factor), (1.0, 1.0, 0.0));
    // A few tokens (a batch of decode steps): a block each.
    assert_eq!((params.tokens_per_block, config.grid_dim.0), (1, 5));
    // A prompt: 64 pairs, so 4 tokens per block fill 256 threads; 1001 tokens need 251 blocks.
    let (config, params) = rope_config(&llama_rope(), 1001, 1, 1001 * 128).unwrap();
    assert_eq!((params.tokens_per_block, config.grid_dim.0), (4, 251));
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
fn repacking_mxfp4_splits_exponents_and_pairs_consecutive_values() {
    use crate::matmul::{WeightFormat, repack_blocks};
    // GGUF: exponent, then byte j holds value j (low nibble) and value j + 16 (high). Value v here
    // is v % 16, so byte j is j | j << 4. Regrouped: byte k holds values 2k (low) and 2k + 1.
    let mut bytes = vec![127u8];
    bytes.extend((0..16u8).map(|j| j | j << 4));
    bytes.push(120);
    bytes.extend([0u8; 16]);
    let r = repack_blocks(WeightFormat::Mxfp4, &bytes);
    assert_eq!(r.exponents, [127, 120]);
    let value = |v: usize| (v % 16) as u8;
    let expected: Vec<u8> = (0..16).map(|k| value(2 * k) | value(2 * k + 1) << 4).chain([0; 16]).collect();
    assert_eq!(r.quants, expected);
    assert!(r.scales.is_empty() && r.mins.is_empty() && r.sub.is_empty());
}

#[test]
fn repacking_k_quants_regroups_values_by_block_of_32() {
    use crate::matmul::{WeightFormat, repack_blocks};
    // Q4K: a 16-byte head (d, dmin, 12 bytes of 6-bit scales and mins), then 128 bytes: byte
    // 32g + t holds value t of sub-block 2g (low nibble) and of sub-block 2g + 1 (high). Value t
    // of sub-block j here: (t + j) % 16; scale j: 63 - 5j, min j: 7j + 3 (high bits exercised).
    let (scale, min) = (|j: usize| (63 - 5 * j) as u8, |j: usize| (7 * j + 3) as u8);
    let mut packed = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            packed[j] |= scale(j);
            packed[j + 4] |= min(j);
        } else {
            packed[j + 4] |= (scale(j) & 0xF) | ((min(j) & 0xF) << 4);
            packed[j - 4] |= (scale(j) >> 4) << 6;
            packed[j] |= (min(j) >> 4) << 6;
        }
    }
    let mut block: Vec<u8> = vec![1, 2, 3, 4];
    block.extend(packed);
    for g in 0..4 {
        block.extend((0..32).map(|t| (((t + 2 * g) % 16) | (((t + 2 * g + 1) % 16) << 4)) as u8));
    }
    let r = repack_blocks(WeightFormat::Q4K, &block);
    let mut head = vec![0x0201, 0x0403];
    head.extend((0..8).map(|j| u16::from_le_bytes([scale(j), min(j)])));
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

mod paged_attention {
    use crate::attention::{
        AttentionOptions, MAX_SPLITS, NO_PAGE, PAGE_SIZE, PageAllocator, PagedKvShape, decode_config,
        decode_splits, heads_per_block, prefill_config, window_splits,
    };

    fn shape(head_dim: usize) -> PagedKvShape {
        PagedKvShape { n_pages: 64, n_head_kv: 8, head_dim }
    }

    #[test]
    fn pages_are_handed_out_in_order_and_returned() {
        let mut pages = PageAllocator::new(5, 2, 3).unwrap();
        assert!(pages.reserve(0, 1).unwrap());
        assert!(!pages.reserve(0, PAGE_SIZE).unwrap(), "16 positions fit in the page it has");
        assert!(pages.reserve(1, PAGE_SIZE + 1).unwrap());
        assert!(pages.reserve(0, 2 * PAGE_SIZE + 1).unwrap());
        assert_eq!(pages.table(), &[0, 3, 4, 1, 2, NO_PAGE]);
        assert_eq!((pages.capacity(0), pages.capacity(1), pages.free_pages()), (48, 32, 0));
        // The pool is empty: a request fails and takes nothing.
        let error = pages.reserve(1, 3 * PAGE_SIZE).unwrap_err().to_string();
        assert_eq!(error, "PageAllocator::reserve: sequence 1 needs 1 more pages and 0 are free");
        assert_eq!(pages.table(), &[0, 3, 4, 1, 2, NO_PAGE]);
        pages.release(0);
        assert_eq!(pages.table(), &[NO_PAGE, NO_PAGE, NO_PAGE, 1, 2, NO_PAGE]);
        assert_eq!(pages.free_pages(), 3);
        assert!(pages.reserve(1, 3 * PAGE_SIZE).unwrap());
        assert_eq!(pages.table()[3..], [1, 2, 0]);
        // Beyond a row, beyond the slots.
        assert!(pages.reserve(0, 3 * PAGE_SIZE + 1).is_err());
        assert!(pages.reserve(2, 1).is_err());
        assert!(PageAllocator::new(5, 0, 3).is_err());
        assert!(PageAllocator::new(NO_PAGE as usize, 1, 1).is_err());
    }

    #[test]
    fn paged_shapes_are_checked() {
        let options = AttentionOptions::new(32, 128);
        let config = prefill_config(&shape(128), &options, 130).unwrap();
        assert_eq!((config.grid_dim, config.block_dim.0), ((3, 32, 1), 128));
        // Q [64][132], K and V [32][132], weights [32][68], f32.
        assert_eq!(config.shared_mem_bytes, 4 * (128 * 132 + 32 * 68));
        assert!(prefill_config(&shape(128), &options, 0).is_err());
        let error = prefill_config(&shape(112), &options, 1).unwrap_err().to_string();
        assert_eq!(error, "attention_prefill: head_dim 112 is not one of [64, 80, 96, 128]");
        assert!(prefill_config(&shape(128), &AttentionOptions::new(12, 128), 1).is_err(), "12 heads over 8");
        assert!(prefill_config(&shape(128), &AttentionOptions { scale: f32::NAN, ..options }, 1).is_err());
        assert!(prefill_config(&PagedKvShape { n_pages: 0, ..shape(64) }, &options, 1).is_err());

        // Decode: 2 blocks of heads per KV head for a group of 9 (8 heads per block), 1 for 4.
        let (decode, combine) = decode_config(&shape(80), &AttentionOptions::new(72, 80), 3, 5).unwrap();
        assert_eq!((decode.grid_dim, combine.grid_dim), ((5, 16, 3), (72, 3, 1)));
        assert_eq!(combine.shared_mem_bytes, 4 * 5);
        let (decode, _) = decode_config(&shape(80), &options, 1, 5).unwrap();
        assert_eq!(decode.grid_dim, (5, 8, 1));
        let heads: Vec<usize> = (1..=17).map(heads_per_block).collect();
        assert_eq!(heads, [1, 2, 4, 4, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8]);
        assert!(decode_config(&shape(80), &options, 0, 5).is_err());
        assert!(decode_config(&shape(80), &options, 1, MAX_SPLITS + 1).is_err());
        assert!(decode_config(&shape(80), &options, 1, 0).is_err());
    }

    #[test]
    fn a_window_takes_the_splits_its_pages_need() {
        // No window: the workspace's. A window of w positions spans up to w / 16 + 1 pages
        // (rounded up), 16 to a split: gpt-oss's 128 is one split (no combine).
        assert_eq!(window_splits(64, 0), 64);
        assert_eq!(window_splits(64, 1), 1);
        assert_eq!(window_splits(64, 128), 1);
        assert_eq!(window_splits(64, 240), 1);
        assert_eq!(window_splits(64, 241), 2);
        assert_eq!(window_splits(64, 4096), 17);
        assert_eq!(window_splits(5, 4096), 5);
        assert_eq!(window_splits(1, 100_000), 1);
    }

    #[test]
    fn one_long_sequence_is_split_to_fill_the_gpu() {
        // 32 heads over 8 KV heads: 8 blocks per split. An H100 holding 3 blocks on each of its
        // 132 SMs: 396 slots, 49 splits (392 blocks: one wave), fewer where the capacity is short.
        let slots = 3 * 132;
        assert_eq!(decode_splits(1, 32, &shape(128), 2048, slots), 49);
        assert_eq!(decode_splits(1, 32, &shape(128), 100, slots), 25);
        assert_eq!(decode_splits(1, 32, &shape(128), 1, slots), 1);
        // 16 sequences: 3 splits (384 blocks); a batch that fills the GPU on its own: none.
        assert_eq!(decode_splits(16, 32, &shape(128), 256, slots), 3);
        // 64 sequences: 512 blocks unsplit, 1.3 waves; split in 3, 4 waves of a third:
        // waves(s) (1/s + 0.1) = 2.2, 1.8, 1.73, 2.1 for s = 1..4.
        assert_eq!(decode_splits(64, 32, &shape(128), 2048, slots), 3);
        // Exactly a wave unsplit stays unsplit; short capacity caps the multi-wave splits.
        assert_eq!(decode_splits(64, 32, &shape(128), 2048, 512), 1);
        assert_eq!(decode_splits(64, 32, &shape(128), 8, slots), 2);
        assert_eq!(decode_splits(64, 32, &shape(128), 4, slots), 1);
        assert_eq!(
            decode_splits(1, 1, &PagedKvShape { n_head_kv: 1, ..shape(64) }, 1 << 20, 10_000),
            MAX_SPLITS
        );
    }
}

#[test]
fn repacking_on_several_threads_joins_the_parts_in_order() {
    use crate::matmul::{WeightFormat, repack_blocks};
    for format in [WeightFormat::Q4K, WeightFormat::Q6K, WeightFormat::Q4_1] {
        let (_, block_bytes) = format.block();
        let blocks = (5 << 20) / block_bytes + 7; // over the 4 MiB threshold, uneven
        let mut state = 0x1234_5678u32;
        let bytes: Vec<u8> = (0..blocks * block_bytes)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        let whole = repack_blocks(format, &bytes);
        // Pieces under the threshold are repacked on one thread; joined they must be the same.
        let mut joined = crate::matmul::Repacked::default();
        for piece in bytes.chunks(1000 * block_bytes) {
            let mut part = repack_blocks(format, piece);
            joined.quants.append(&mut part.quants);
            joined.scales.append(&mut part.scales);
            joined.mins.append(&mut part.mins);
            joined.sub.append(&mut part.sub);
            joined.high.append(&mut part.high);
        }
        assert!(whole == joined, "{format:?}");
    }
}
