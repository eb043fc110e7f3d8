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
mod moe;
mod norm;
mod rope;
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
