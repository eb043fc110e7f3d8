//! The tokenizer's input as GGUF stores it (`tokenizer.ggml.*`), independent of how it was read.

/// Everything a tokenizer needs from a GGUF file's `tokenizer.ggml.*` metadata.
///
/// Field by field: `model` is `tokenizer.ggml.model`, `pre` is `tokenizer.ggml.pre`, `tokens`,
/// `scores`, `token_types` and `merges` are the arrays of the same names (`token_type` in GGUF),
/// `bos`/`eos`/`unk`/`pad` are `tokenizer.ggml.{bos,eos,unknown,padding}_token_id`, and the flags
/// are `tokenizer.ggml.add_bos_token`, `add_eos_token` and `add_space_prefix`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufVocab {
    pub model: String,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub scores: Option<Vec<f32>>,
    pub token_types: Option<Vec<i32>>,
    pub merges: Option<Vec<String>>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// `None`: the model's default (true for `llama`, false for `gpt2`).
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    /// `None`: the model's default (true for `llama`, false for `gpt2`).
    pub add_space_prefix: Option<bool>,
}

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Undefined,
    Normal,
    Unknown,
    /// Special tokens such as `<s>` or `<|im_start|>`: matched in text only when asked to,
    /// and left out of decoded text when asked to.
    Control,
    /// Added tokens that are always matched in text as whole tokens.
    UserDefined,
    Unused,
    /// `<0xNN>`: one raw byte, SentencePiece's fallback for text outside the vocabulary.
    Byte,
}

impl TokenType {
    /// Values outside the known range read as `Undefined`, as llama.cpp reads them.
    pub fn from_gguf(value: i32) -> Self {
        match value {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Undefined,
        }
    }
}
