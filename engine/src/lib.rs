//! The engine: GGUF loading, tokenizers, model configuration and weights, the CPU backend that
//! every GPU path is checked against, sampling, generation, and the pieces of the command line.

pub mod batching;
pub mod bench;
pub mod bench_cpu;
pub mod chat;
pub mod cpu;
pub mod cuda;
pub mod default_model;
pub mod generate;
pub mod gguf;
pub mod harmony;
pub mod model;
pub mod perplexity;
pub mod provenance;
pub mod sampler;
pub mod scheduler;
pub mod server;
pub mod synth;
pub mod throughput;
pub mod tokenizer;
