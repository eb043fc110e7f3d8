//! The CPU backend: a plain f32 implementation of every kernel, written for clarity, not speed.
//! Each module is the twin of the GPU kernel family of the same name in `gpu/src/`, and the
//! reference the conformance tests hold the GPU to. Accumulations are done in f64 so that the
//! reference is more exact than what it checks.

pub mod activation;
pub mod attention;
pub mod embedding;
pub mod integer_dot;
pub mod matmul;
pub mod moe;
pub mod norm;
pub mod quantized;
pub mod rope;
pub mod softmax;
pub mod threads;
