//! gpu/src/matmul/gemm.rs against the CPU: W dequantized by the engine's dequantizer (itself checked
//! against gguf-py), X rounded to f16 (bf16 for bf16 weights) as the GPU rounds it, products summed
//! in f64.
//!
//! Bounds (relative error over the checked outputs):
//! - 16-bit weights: W is exact on both sides and X is rounded identically, so only the GPU's f32
//!   summation differs: 1e-4 (f32 sums of up to ~4k products of mixed sign: a few 1e-6; the margin
//!   covers tensor-core adders that do not round to nearest).
//! - Quantized and f32 weights: the GPU rounds each dequantized weight to f16 (relative error at most
//!   2^-11, about 2^-11 / sqrt(3) = 2.8e-4 in root mean square, independent from weight to weight),
//!   so against the exact weights the output's relative error is about 2.8e-4: bound 1e-3. Against
//!   the same weights rounded to f16 on the CPU the GPU must agree to 1e-4 (summation only), which
//!   pins down that it dequantizes to exactly those values.
//!
//! Outputs are poisoned with NaN, and every output is checked to be written; for large shapes the
//! reference is computed for a sample of token rows (every tile's first and last rows among them).
//!
//! `dequantizer_matches_the_engine_bit_for_bit` needs no GPU: it compiles the kernels' dequantizer
//! (gpu/src/matmul/dequant.rs) for the CPU and checks its f16 values against the engine's.

use crate::gemv::{ggml_type, random_matrix};
use crate::{config, gpu, poisoned, random_values, relative_error};
use engine::gguf::dequantize;
use host::matmul::{Repacked, WeightFormat, repack_blocks};
use host::{bf16, f16};
use proptest::prelude::*;

#[path = "../../gpu/src/matmul/dequant.rs"]
#[allow(dead_code)]
mod dequant;

/// CPU twins of the device functions dequant.rs uses.
mod dequant_ops {
    pub fn f16_to_f32(bits: u16) -> f32 {
        host::f16::from_bits(bits).to_f32()
    }
    pub fn fma(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
    pub fn pack_f16x2(low: f32, high: f32) -> u32 {
        host::f16::from_f32(low).to_bits() as u32 | (host::f16::from_f32(high).to_bits() as u32) << 16
    }
    macro_rules! unroll {
        ([$($k:literal),*], |$i:ident| $body:block) => { $( { let $i: usize = $k; $body } )* };
    }
    pub(crate) use unroll;
}

/// The 32 values of a block as the GPU stores them: four chunks of 8, f16 pairs.
fn pack_block(values: impl Fn(usize) -> f32) -> [u32; 16] {
    let chunks = [0, 1, 2, 3].map(|c| dequant::pack_chunk(&values, c));
    std::array::from_fn(|w| chunks[w / 4][w % 4])
}

/// Block `block` of row `row` as the GPU loads it from the repacked arrays, dequantized by dequant.rs.
fn dequantize_block(format: WeightFormat, r: &Repacked, n_in: usize, row: usize, block: usize) -> [u32; 16] {
    let at = row * (n_in / 32) + block;
    let words = |bytes: &[u8]| -> Vec<u32> {
        bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    let four = |v: Vec<u32>| [v[0], v[1], v[2], v[3]];
    match format {
        WeightFormat::Q8_0 => {
            let q = words(&r.quants[32 * at..32 * at + 32]);
            pack_block(dequant::q8_0_values(dequant::RawQ8_0 {
                quants: [q[0], q[1], q[2], q[3], q[4], q[5], q[6], q[7]],
                d: r.scales[at],
            }))
        }
        WeightFormat::Q4_0 | WeightFormat::Q4_1 => {
            let raw = dequant::RawQ4 {
                quants: four(words(&r.quants[16 * at..16 * at + 16])),
                d: r.scales[at],
                m: r.mins.get(at).copied().unwrap_or(0),
            };
            if format == WeightFormat::Q4_0 {
                pack_block(dequant::q4_0_values(raw))
            } else {
                pack_block(dequant::q4_1_values(raw))
            }
        }
        WeightFormat::Q4K => {
            // 10 words of head per super-block: d, dmin, then a (scale, min) pair per sub-block.
            let head = &r.scales[10 * (at / 8)..10 * (at / 8) + 10];
            pack_block(dequant::q4_k_values(dequant::RawQ4K {
                quants: four(words(&r.quants[16 * at..16 * at + 16])),
                dm: head[0] as u32 | (head[1] as u32) << 16,
                pair: head[2 + at % 8],
            }))
        }
        WeightFormat::Q6K => {
            let high = words(&r.high[8 * at..8 * at + 8]);
            pack_block(dequant::q6_k_values(dequant::RawQ6K {
                low: four(words(&r.quants[16 * at..16 * at + 16])),
                high: [high[0], high[1]],
                scales: u16::from_le_bytes([r.sub[2 * at], r.sub[2 * at + 1]]),
                d: r.scales[at / 8],
            }))
        }
        WeightFormat::Mxfp4 => pack_block(dequant::mxfp4_values(dequant::RawMxfp4 {
            quants: four(words(&r.quants[16 * at..16 * at + 16])),
            e: r.exponents[at] as u32,
        })),
        _ => unreachable!("16-bit formats are not dequantized"),
    }
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn dequantizer_matches_the_engine_bit_for_bit(format in quantized_formats(), blocks in 1usize..=6, n_out in 1usize..=5, seed: u64) {
        let n_in = format.block().0 * blocks;
        let bytes = random_matrix(format, n_in, n_out, seed);
        let exact = dequantize(ggml_type(format), &bytes, n_in * n_out).unwrap();
        let repacked = repack_blocks(format, &bytes);
        for row in 0..n_out {
            for block in 0..n_in / 32 {
                let words = dequantize_block(format, &repacked, n_in, row, block);
                for v in 0..32 {
                    let bits = (words[v / 2] >> (16 * (v % 2))) as u16;
                    let expected = exact[row * n_in + 32 * block + v];
                    let got = f16::from_bits(bits).to_f32();
                    prop_assert_eq!(got, f16::from_f32(expected).to_f32(), "{:?} row {} block {} value {}: {}", format, row, block, v, expected);
                }
            }
        }
    }
}

fn quantized_formats() -> impl Strategy<Value = WeightFormat> {
    prop::sample::select(vec![
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q4K,
        WeightFormat::Q6K,
        WeightFormat::Mxfp4,
    ])
}

/// Token counts: one, small odd, around a tile, the benchmark's 512, past a thousand.
fn tokens() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(1usize),
        (1usize..20).prop_map(|h| 2 * h + 1),
        17usize..=700,
        Just(512usize),
        1000usize..=1400
    ]
}

/// Odd multiples of the format's row multiple (8 values for 16-bit weights, else the block), up to
/// about `max` values.
fn inputs(format: WeightFormat, max: usize) -> impl Strategy<Value = usize> {
    let (block, _) = format.block();
    let unit = if block == 1 { 8 } else { block };
    (0..=max / unit / 2).prop_map(move |h| unit * (2 * h + 1))
}

fn outputs() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..=40, 41usize..=700]
}

/// sum_i w[o, i] x[t, i] (+ bias[o]) in f64 for the token rows `rows`, on all cores.
pub(crate) fn reference(
    w: &[f32],
    x: &[f32],
    bias: Option<&[f32]>,
    rows: &[usize],
    n_in: usize,
    n_out: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; rows.len() * n_out];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = rows.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (chunk, out) in rows.chunks(per).zip(out.chunks_mut(per * n_out)) {
            scope.spawn(move || {
                for (&t, out) in chunk.iter().zip(out.chunks_mut(n_out)) {
                    let x = &x[t * n_in..(t + 1) * n_in];
                    for (o, y) in out.iter_mut().enumerate() {
                        let row = &w[o * n_in..(o + 1) * n_in];
                        let dot: f64 = row.iter().zip(x).map(|(&w, &v)| w as f64 * v as f64).sum();
                        *y = (dot + bias.map_or(0.0, |b| b[o] as f64)) as f32;
                    }
                }
            });
        }
    });
    out
}

/// The token rows to check: all of them for small products, else each row tile's first, middle
/// and last rows, the last row, and a spread of others.
pub(crate) fn rows_to_check(t: usize, n_in: usize, n_out: usize) -> Vec<usize> {
    if t * n_in * n_out <= 40_000_000 {
        return (0..t).collect();
    }
    (0..t).filter(|&r| matches!(r % 128, 0 | 1 | 63 | 64 | 126 | 127) || r % 37 == 5 || r == t - 1).collect()
}

/// Runs the GPU product for rows `first..first + n_out` of a matrix of `format` with a few rows
/// more, and checks it against the references.
fn check(
    format: WeightFormat,
    t: usize,
    n_in: usize,
    (first, n_out): (usize, usize),
    with_bias: bool,
    seed: u64,
) {
    check_on(Kernels::Default, format, t, n_in, (first, n_out), with_bias, seed);
}

/// Which entry point a check calls: `Gpu::gemm` (whatever kernel it picks), or `Gpu::gemm_rows64`
/// (the 64-row kernels, at most 64 tokens of quantized weights).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernels {
    Default,
    Rows64,
}

fn check_on(
    kernels: Kernels,
    format: WeightFormat,
    t: usize,
    n_in: usize,
    (first, n_out): (usize, usize),
    with_bias: bool,
    seed: u64,
) {
    let total = first + n_out + 3;
    let bytes = random_matrix(format, n_in, total, seed);
    let all = dequantize(ggml_type(format), &bytes, n_in * total).unwrap();
    let weights = &all[first * n_in..(first + n_out) * n_in];
    let x = random_values(seed ^ 9, t * n_in, 2.0);
    let bias = with_bias.then(|| random_values(seed ^ 10, total, 1.0));

    let gpu = gpu();
    let matrix = gpu.upload_matrix(format, &bytes, n_in, total).unwrap();
    let x_gpu = gpu.upload(&x).unwrap();
    let bias_gpu = bias.as_ref().map(|b| gpu.upload(b).unwrap());
    let mut y = poisoned(t * n_out);
    match kernels {
        Kernels::Default => gpu.gemm(&matrix, first..first + n_out, &x_gpu, t, bias_gpu.as_ref(), &mut y),
        Kernels::Rows64 => {
            gpu.gemm_rows64(&matrix, first..first + n_out, &x_gpu, t, bias_gpu.as_ref(), &mut y)
        }
    }
    .unwrap();
    let y = gpu.download(&y).unwrap();
    let what =
        format!("gemm ({kernels:?}) {format:?} T={t} rows {first}..{} of {total}x{n_in}", first + n_out);
    if let Some(i) = y.iter().position(|v| v.is_nan()) {
        panic!("{what}: output {} (token {}, output {}) was not written", i, i / n_out, i % n_out);
    }

    let x: Vec<f32> = if format == WeightFormat::Bf16 {
        x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
    } else {
        x.iter().map(|&v| f16::from_f32(v).to_f32()).collect()
    };
    let bias = bias.as_ref().map(|b| &b[first..first + n_out]);
    let rows = rows_to_check(t, n_in, n_out);
    let actual: Vec<f32> = rows.iter().flat_map(|&r| y[r * n_out..(r + 1) * n_out].iter().copied()).collect();
    let exact = reference(weights, &x, bias, &rows, n_in, n_out);
    let error = relative_error(&actual, &exact);
    if matches!(format, WeightFormat::F16 | WeightFormat::Bf16) {
        assert!(error <= 1e-4, "{what}: relative error {error:.3e} exceeds 1e-4");
        return;
    }
    assert!(error <= 1e-3, "{what}: relative error {error:.3e} against the exact weights exceeds 1e-3");
    let rounded: Vec<f32> = weights.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    let error = relative_error(&actual, &reference(&rounded, &x, bias, &rows, n_in, n_out));
    assert!(error <= 1e-4, "{what}: relative error {error:.3e} against the f16-rounded weights exceeds 1e-4");
}

macro_rules! gemm_matches_cpu {
    ($($name:ident: $format:expr, $max_in:expr;)*) => {$(
        proptest! {
            #![proptest_config(config(10))]

            #[test]
            #[ignore = "needs an NVIDIA GPU"]
            fn $name(t in tokens(), n_in in inputs($format, $max_in), n_out in outputs(), first in prop_oneof![Just(0usize), 1usize..=200], with_bias: bool, seed: u64) {
                check($format, t, n_in, (first, n_out), with_bias, seed);
            }
        }
    )*};
}

gemm_matches_cpu! {
    gemm_f32_matches_cpu: WeightFormat::F32, 1000;
    gemm_f16_matches_cpu: WeightFormat::F16, 2000;
    gemm_bf16_matches_cpu: WeightFormat::Bf16, 2000;
    gemm_q8_0_matches_cpu: WeightFormat::Q8_0, 2000;
    gemm_q4_0_matches_cpu: WeightFormat::Q4_0, 2000;
    gemm_q4_1_matches_cpu: WeightFormat::Q4_1, 2000;
    gemm_q4_k_matches_cpu: WeightFormat::Q4K, 4000;
    gemm_q6_k_matches_cpu: WeightFormat::Q6K, 4000;
    gemm_mxfp4_matches_cpu: WeightFormat::Mxfp4, 3000;
}

/// Llama-3.1-8B's shapes at 512 tokens (sampled rows), and a long row: many blocks of both grid
/// dimensions, 64 to 224 steps along n_in.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gemm_at_model_shapes() {
    check(WeightFormat::Q4K, 512, 4096, (0, 4096), false, 1);
    check(WeightFormat::Q4K, 512, 14336, (1000, 1000), true, 2);
    check(WeightFormat::F16, 512, 4096, (0, 1500), false, 3);
    check(WeightFormat::Q6K, 77, 4096, (0, 3000), false, 4);
    check(WeightFormat::Q8_0, 300, 896, (100, 4864), true, 5);
    // gpt-oss-20b: hidden 2880, an expert's gate and up stacked (5760 rows).
    check(WeightFormat::Mxfp4, 512, 2880, (0, 5760), true, 6);
    check(WeightFormat::Mxfp4, 333, 2880, (2000, 2880), false, 7);
    // GPT-2 XL (hidden 1600, F16): 52 tiles, so the product is split in two along K; also a
    // row whose K steps do not halve evenly (1000 = 15.6 steps) and a bf16 one.
    check(WeightFormat::F16, 512, 1600, (0, 1600), true, 8);
    check(WeightFormat::F16, 300, 1000, (7, 900), true, 9);
    check(WeightFormat::Bf16, 512, 1600, (1600, 1600), true, 10);
    // The phased quantized loop split along K: GPT-2 XL in Q8_0, Llama-3.1-8B's k (1024 rows).
    check(WeightFormat::Q8_0, 512, 1600, (0, 1600), true, 11);
    check(WeightFormat::Q4K, 512, 4096, (4096, 1024), true, 12);
    // Rows of a batched decode step against few tiles: split along K in more than two, the
    // partial sums added in split order (gemm_sum_splits): 4, 8 and 5 splits (45 K steps of 64,
    // the last cut short at 2,880), 16-bit weights in 8 over a row range.
    check(WeightFormat::Q4K, 64, 4096, (0, 4096), true, 13);
    check(WeightFormat::Q4K, 48, 4096, (0, 1024), false, 14);
    check(WeightFormat::Q8_0, 64, 2880, (0, 512), true, 15);
    check(WeightFormat::F16, 37, 4096, (5, 500), true, 16);
}

/// The 64-row kernels (`Gpu::gemm_rows64`, two blocks an SM) in every quantized format at model
/// shapes: 14,336 rows are 112 tiles, split in two (atomic adds); the others split in 3 to 8.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gemm_rows64_at_model_shapes() {
    let check = |format, t, n_in, range, with_bias, seed| {
        check_on(Kernels::Rows64, format, t, n_in, range, with_bias, seed)
    };
    check(WeightFormat::Q4K, 64, 4096, (0, 14336), false, 17);
    check(WeightFormat::Q4K, 64, 4096, (0, 4096), true, 13);
    check(WeightFormat::Q6K, 61, 4096, (0, 3000), true, 18);
    check(WeightFormat::Q4_0, 40, 2048, (3, 700), true, 19);
    check(WeightFormat::Q4_1, 33, 2048, (0, 1000), false, 20);
    check(WeightFormat::Mxfp4, 64, 2880, (0, 2880), true, 21);
    check(WeightFormat::Q8_0, 50, 896, (0, 4864), true, 22);
    check(WeightFormat::Q8_0, 1, 2880, (0, 512), false, 23);
}

proptest! {
    #![proptest_config(config(24))]

    /// The 64-row kernels against the f64 reference at random shapes of 1 to 64 tokens.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn gemm_rows64_matches_cpu(format in quantized_formats(), t in 1usize..=64, n_in in inputs(WeightFormat::Q4K, 4000), n_out in outputs(), first in prop_oneof![Just(0usize), 1usize..=200], with_bias: bool, seed: u64) {
        check_on(Kernels::Rows64, format, t, n_in, (first, n_out), with_bias, seed);
    }
}

/// The 64-row kernels refuse what they cannot take: more than 64 tokens, 16-bit weights.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gemm_rows64_rejects_what_it_cannot_take() {
    let gpu = gpu();
    let (n_in, n_out) = (256, 16);
    for (format, t) in [(WeightFormat::Q4K, 65), (WeightFormat::F16, 8)] {
        let matrix = gpu.upload_matrix(format, &random_matrix(format, n_in, n_out, 3), n_in, n_out).unwrap();
        let x = gpu.upload(&random_values(4, t * n_in, 1.0)).unwrap();
        let mut y = poisoned(t * n_out);
        let error = gpu.gemm_rows64(&matrix, 0..n_out, &x, t, None, &mut y).unwrap_err().to_string();
        assert!(error.contains("64-row kernels"), "{format:?} T={t}: {error}");
    }
}

/// The product split along K adds two halves into Y (a + b = b + a) or sums more splits in
/// order: the same Y every time, as the
/// graph-against-eager and prompt-against-steps tests of the models expect.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gemm_split_along_k_is_deterministic() {
    let gpu = gpu();
    // In two (GPT-2 XL at 512 tokens: atomic adds) and in eight (64 rows against 1,024: partial
    // sums added in order).
    for (format, (t, n_in, n_out)) in [
        (WeightFormat::F16, (512, 1600, 1600)),
        (WeightFormat::Q8_0, (512, 1600, 1600)),
        (WeightFormat::Q4K, (64, 4096, 1024)),
    ] {
        let bytes = random_matrix(format, n_in, n_out, 11);
        let matrix = gpu.upload_matrix(format, &bytes, n_in, n_out).unwrap();
        let x = gpu.upload(&random_values(12, t * n_in, 2.0)).unwrap();
        let bias = gpu.upload(&random_values(13, n_out, 1.0)).unwrap();
        let run = || {
            let mut y = poisoned(t * n_out);
            gpu.gemm(&matrix, 0..n_out, &x, t, Some(&bias), &mut y).unwrap();
            gpu.download(&y).unwrap()
        };
        let first = run();
        for _ in 0..5 {
            assert!(run() == first, "two runs of a K-split {format:?} product differ");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gemm_rejects_bad_shapes() {
    let gpu = gpu();
    let matrix = gpu.upload_matrix(WeightFormat::F16, &[0; 2 * 16 * 3], 16, 3).unwrap();
    let x = gpu.upload(&[1.0f32; 31]).unwrap();
    let mut y = poisoned(6);
    let error = gpu.gemm(&matrix, 0..3, &x, 2, None, &mut y).unwrap_err().to_string();
    assert!(error.contains("x has 31 elements, expected 32"), "{error}");
    let x = gpu.upload(&[1.0f32; 32]).unwrap();
    assert!(gpu.gemm(&matrix, 0..4, &x, 2, None, &mut y).unwrap_err().to_string().contains("rows"));
    let error = gpu.gemm(&matrix, 1..3, &x, 2, None, &mut y).unwrap_err().to_string();
    assert!(error.contains("y has 6 elements, expected 4"), "{error}");
    let f32_matrix = gpu.upload_matrix(WeightFormat::F32, &[0; 4 * 12 * 3], 12, 3).unwrap();
    let x = gpu.upload(&[1.0f32; 24]).unwrap();
    assert!(
        gpu.gemm(&f32_matrix, 0..3, &x, 2, None, &mut y).unwrap_err().to_string().contains("multiple of 8")
    );
}

/// A grid of many column tiles with few tokens (main's test of its wide blocks, kept).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn gemm_wide_blocks_match_cpu() {
    for format in [WeightFormat::F16, WeightFormat::Q4K] {
        check(format, 300, 256, (0, 11_300), false, 77);
    }
}
