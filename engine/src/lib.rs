//! The engine: GGUF loading, model configuration and weights, and the CPU backend that every GPU
//! path is checked against.

pub mod cpu;
pub mod gguf;
pub mod model;
pub mod tokenizer;
