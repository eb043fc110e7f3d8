//! Kernel conformance: every GPU kernel against its CPU twin in `engine::cpu`, over random shapes
//! and values (proptest). These need an NVIDIA GPU and are `#[ignore]`d elsewhere; run them with
//! `cargo test -- --include-ignored` (or `../shared/gpu/pack.sh` then `bash .gpu/run.sh`).
//!
//! Error measure: ||gpu - ref|| / ||ref|| over the whole output. The CPU references accumulate in
//! f64 and are fed exactly the values the GPU sees (16-bit weights are rounded before the
//! reference reads them, as are the f16 keys and values of the paged KV cache), so the bound only
//! has to cover the GPU's f32 arithmetic: 1e-5 for reductions over rows (norms, softmax,
//! attention), 2e-6 for element-wise functions and RoPE, exact for copies (embeddings, KV writes).
//! Outputs are poisoned with NaN before each launch, so an element the kernel failed to write
//! fails the check.

mod activation;
mod attention;
mod embedding;
mod gemm;
mod gemv;
mod gemv_rows;
mod mma_rows;
mod moe;
mod norm;
mod rope;
mod sampling;
mod softmax;

use host::Gpu;
use proptest::prelude::*;
use std::sync::OnceLock;

/// The GPU every test shares. A missing GPU fails the test: these tests never skip themselves.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new(0).unwrap_or_else(|e| panic!("these tests need an NVIDIA GPU: {e}")))
}

/// Deterministic pseudo-random values in [-scale, scale) from a seed (proptest picks the seed; a
/// vector strategy would make shrinking of 100k-element inputs slow for no gain).
pub fn random_values(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut state = seed | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

pub fn relative_error(actual: &[f32], expected: &[f32]) -> f64 {
    assert_eq!(actual.len(), expected.len());
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&a, &e) in actual.iter().zip(expected) {
        diff += (a as f64 - e as f64).powi(2);
        norm += (e as f64).powi(2);
    }
    if norm == 0.0 { diff.sqrt() } else { (diff / norm).sqrt() }
}

/// Asserts that every element is finite and the relative error is within `bound`.
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32], bound: f64) {
    if let Some(i) = actual.iter().zip(expected).position(|(a, e)| a.is_nan() != e.is_nan()) {
        panic!("{what}: element {i} is {} on the GPU and {} in the reference", actual[i], expected[i]);
    }
    let error = relative_error(actual, expected);
    assert!(error <= bound, "{what}: relative error {error:.3e} exceeds {bound:.0e}");
}

/// A device buffer of `n` NaNs, so that unwritten outputs show.
pub fn poisoned(n: usize) -> host::CudaSlice<f32> {
    gpu().upload(&vec![f32::NAN; n]).unwrap()
}

/// Sizes that are odd, below and above a warp or a block, and up to `max`.
pub fn size(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![1usize..=40, 41usize..=1100, 1100usize..=max]
}

/// Weight storage types, with the rounding each applies to an f32.
#[derive(Clone, Copy, Debug)]
pub enum Storage {
    F32,
    F16,
    Bf16,
}

pub fn storage() -> impl Strategy<Value = Storage> {
    prop_oneof![Just(Storage::F32), Just(Storage::F16), Just(Storage::Bf16)]
}

impl Storage {
    pub fn round(self, values: &[f32]) -> Vec<f32> {
        match self {
            Storage::F32 => values.to_vec(),
            Storage::F16 => values.iter().map(|&v| host::f16::from_f32(v).to_f32()).collect(),
            Storage::Bf16 => values.iter().map(|&v| host::bf16::from_f32(v).to_f32()).collect(),
        }
    }
}

/// Uploads `values` in the given storage type and calls `f` with the device buffer; used as
/// `with_weights!(storage, values, |w| gpu.rms_norm(&x, w, ...))`.
#[macro_export]
macro_rules! with_weights {
    ($storage:expr, $values:expr, |$w:ident| $body:expr) => {
        match $storage {
            $crate::Storage::F32 => {
                let $w = &$crate::gpu().upload::<f32>($values).unwrap();
                $body
            }
            $crate::Storage::F16 => {
                let v: Vec<host::f16> = $values.iter().map(|&x| host::f16::from_f32(x)).collect();
                let $w = &$crate::gpu().upload(&v).unwrap();
                $body
            }
            $crate::Storage::Bf16 => {
                let v: Vec<host::bf16> = $values.iter().map(|&x| host::bf16::from_f32(x)).collect();
                let $w = &$crate::gpu().upload(&v).unwrap();
                $body
            }
        }
    };
}

pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// 8-bit activations as [`host::matmul::Q8Activations::download`] gives them: q (i8 as bytes),
/// then d and s per block of 32.
pub type Q8 = (Vec<u8>, Vec<f32>, Vec<f32>);

/// engine::cpu::quantized's Q8_1 activation quantizer (llama.cpp's x86 rounding) applied to x, in
/// the layout of [`Q8`]. The quantizer is private to the engine; its public integer product reads
/// it out exactly. Each block of 32 goes in as a token of its own (the quantizer works block by
/// block anyway) against a Q8_0 identity [32, 32] of scale 1, which gives d q for every value
/// (exact in f32: an f16 scale times a 7-bit integer), and against a Q4_1 row of scale 0 and
/// min 1, which gives s. d is then the block's largest |d q| / 127 (its largest value quantizes to
/// +-127) and q = d q / d.
pub fn cpu_q8_1(x: &[f32]) -> Q8 {
    use engine::cpu::quantized::{Matrix, matmul};
    use engine::gguf::GgmlType;
    assert!(x.len().is_multiple_of(32), "Q8_1 blocks are 32 values");
    let one = host::f16::from_f32(1.0).to_le_bytes();
    let identity: Vec<u8> =
        (0..32).flat_map(|row| one.into_iter().chain((0..32).map(move |j| u8::from(j == row)))).collect();
    let mut dq = vec![0.0f32; x.len()];
    matmul(x, &Matrix::Blocks { ty: GgmlType::Q8_0, bytes: identity }, None, &mut dq, 32, 32);
    let mut sums = [0u8; 20];
    sums[2..4].copy_from_slice(&one);
    let mut s = vec![0.0f32; x.len() / 32];
    matmul(x, &Matrix::Blocks { ty: GgmlType::Q4_1, bytes: sums.to_vec() }, None, &mut s, 32, 1);
    let d: Vec<f32> = dq.chunks(32).map(|b| b.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0).collect();
    let q =
        dq.iter().enumerate().map(|(i, &v)| if d[i / 32] == 0.0 { 0 } else { (v / d[i / 32]) as i8 as u8 });
    (q.collect(), d, s)
}

/// Checks 8-bit activations made on the GPU from its values `actual` against the CPU quantizer
/// applied to the reference values `expected` (which differ from `actual` by float rounding). The
/// integers must agree, except that one may be the other's neighbour where the rounding boundary
/// (k + 1/2) lies between the two scaled values 127 v / max|v| of the block, the GPU's and the
/// reference's: a value within float rounding of a boundary. d must agree up to one f16 step
/// (max|v| differs by float rounding too). s is not compared: it follows from q and d, which the
/// callers check bit for bit against the CPU quantizer of `actual`.
pub fn assert_q8_near(what: &str, gpu: &Q8, actual: &[f32], expected: &[f32]) {
    let (q_cpu, d_cpu, _) = cpu_q8_1(expected);
    let (q_gpu, d_gpu, _) = gpu;
    assert_eq!((q_gpu.len(), d_gpu.len()), (q_cpu.len(), d_cpu.len()), "{what}: sizes");
    let amax = |v: &[f32]| v.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()));
    for (b, (a, e)) in actual.chunks(32).zip(expected.chunks(32)).enumerate() {
        let step = d_cpu[b] as f64 * (1.0 / 1024.0) + 2f64.powi(-24);
        assert!(
            (d_gpu[b] as f64 - d_cpu[b] as f64).abs() <= step,
            "{what}: block {b} has scale {} on the GPU, {} on the CPU",
            d_gpu[b],
            d_cpu[b]
        );
        let (amax_a, amax_e) = (amax(a), amax(e));
        for j in 0..32 {
            let i = 32 * b + j;
            let (g, c) = (q_gpu[i] as i8 as i32, q_cpu[i] as i8 as i32);
            if g == c {
                continue;
            }
            // The GPU's and the CPU's scaled values, in f64; f32 puts each within 2e-5 of this.
            let (t_a, t_e) = (127.0 * a[j] as f64 / amax_a, 127.0 * e[j] as f64 / amax_e);
            let boundary = (g + c) as f64 / 2.0;
            assert!(
                (g - c).abs() == 1 && t_a.min(t_e) - 1e-4 <= boundary && boundary <= t_a.max(t_e) + 1e-4,
                "{what}: value {i} quantizes to {g} on the GPU and {c} on the CPU (scaled {t_a} and {t_e})"
            );
        }
    }
}

/// [`cpu_q8_1`] reads the engine's quantizer out correctly: checked against the format's
/// definition on values that include a block of zeros, ties and each block's extremes.
#[test]
fn cpu_q8_1_reads_out_the_engine_quantizer() {
    let mut x = random_values(7, 32 * 9, 5.0);
    x[32..64].fill(0.0);
    // amax 127 makes the scale 1 and each value its own scaled value: ties round to even.
    x[64..96].copy_from_slice(&(0..32).map(|j| j as f32 - 15.5).collect::<Vec<_>>());
    x[64] = 127.0;
    let (q, d, s) = cpu_q8_1(&x);
    for (b, block) in x.chunks(32).enumerate() {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let inverse = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let expected: Vec<i8> = block.iter().map(|&v| (v * inverse).round_ties_even() as i8).collect();
        let got: Vec<i8> = q[32 * b..32 * (b + 1)].iter().map(|&v| v as i8).collect();
        assert_eq!(got, expected, "block {b}");
        assert_eq!(d[b], host::f16::from_f32(amax / 127.0).to_f32(), "block {b}");
        let sum: i32 = expected.iter().map(|&v| v as i32).sum();
        assert_eq!(s[b], host::f16::from_f32(amax / 127.0 * sum as f32).to_f32(), "block {b}");
    }
    assert_eq!(&q[64 + 1..64 + 5], &[(-14i8) as u8, (-14i8) as u8, (-12i8) as u8, (-12i8) as u8]);
}

/// [`assert_q8_near`] accepts the quantization of values one f32 step off the reference, which
/// moves some integers across a rounding boundary, and rejects values 2% off.
#[test]
fn assert_q8_near_tells_rounding_from_error() {
    let expected = random_values(11, 32 * 64, 3.0);
    // Scaled values that sit on a boundary move with a one-step nudge: make sure some do.
    let mut expected = expected;
    expected[..32].copy_from_slice(&(0..32).map(|j| (j as f32 - 15.5) * (3.0 / 127.0)).collect::<Vec<_>>());
    expected[0] = 3.0;
    let nudged: Vec<f32> = expected.iter().map(|&v| f32::from_bits(v.to_bits() + 1)).collect();
    let quantized = cpu_q8_1(&nudged);
    assert_ne!(quantized.0, cpu_q8_1(&expected).0, "the nudge should move some integers");
    assert_q8_near("nudged", &quantized, &nudged, &expected);
    let off: Vec<f32> =
        expected.iter().enumerate().map(|(i, &v)| if i % 32 == 5 { v * 1.02 } else { v }).collect();
    let result = std::panic::catch_unwind(|| assert_q8_near("off", &cpu_q8_1(&off), &off, &expected));
    assert!(result.is_err(), "a 2% error must fail");
}
