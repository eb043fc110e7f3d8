pub mod cpu;
pub mod tokenizer;
