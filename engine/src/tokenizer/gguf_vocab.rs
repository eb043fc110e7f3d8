//! A minimal reader of a GGUF v2/v3 file's metadata section, just enough to fill a [`GgufVocab`].
//!
//! Interim: the engine's real GGUF loader (`crate::gguf`) will build `GgufVocab` itself and this
//! module will go. It reads the header and the key/value pairs in order, streaming, and stops before
//! the tensor infos, so it costs the size of the metadata whatever the size of the file.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::{GgufVocab, TokenizerError};

const MAGIC: &[u8; 4] = b"GGUF";

/// No real metadata string or array comes close to this; a larger length means a corrupt file.
const MAX_LENGTH: u64 = 1 << 30;

/// Read the `tokenizer.ggml.*` keys of the GGUF file at `path`.
pub fn read_gguf_vocab(path: impl AsRef<Path>) -> Result<GgufVocab, TokenizerError> {
    let path = path.as_ref();
    let file =
        File::open(path).map_err(|source| TokenizerError::Io { path: path.display().to_string(), source })?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    let mut reader =
        MetadataReader { input: BufReader::new(file), remaining: file_len, path: path.display().to_string() };
    reader.read_vocab()
}

/// One metadata value; only the shapes the tokenizer keys use are kept, others are skipped.
enum Value {
    Unsigned(u64),
    Signed(i64),
    Bool(bool),
    String(String),
    Strings(Vec<String>),
    Floats(Vec<f32>),
    Integers(Vec<i32>),
    Other,
}

struct MetadataReader<R> {
    input: R,
    /// Bytes left in the file: every length read is checked against it before allocating.
    remaining: u64,
    path: String,
}

impl<R: Read> MetadataReader<R> {
    fn read_vocab(&mut self) -> Result<GgufVocab, TokenizerError> {
        let mut magic = [0u8; 4];
        self.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(self.error("not a GGUF file (bad magic)".into()));
        }
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(self.error(format!("unsupported GGUF version {version}")));
        }
        let _tensor_count = self.u64()?;
        let kv_count = self.u64()?;

        let mut vocab = GgufVocab::default();
        let mut model = None;
        for _ in 0..kv_count {
            let key = self.string()?;
            let value_type = self.u32()?;
            let value = self.value(value_type)?;
            let Some(name) = key.strip_prefix("tokenizer.ggml.") else {
                continue;
            };
            let wrong_type = || self.error(format!("key {key} has an unexpected type"));
            match (name, value) {
                ("model", Value::String(s)) => model = Some(s),
                ("pre", Value::String(s)) => vocab.pre = Some(s),
                ("tokens", Value::Strings(v)) => vocab.tokens = v,
                ("merges", Value::Strings(v)) => vocab.merges = Some(v),
                ("scores", Value::Floats(v)) => vocab.scores = Some(v),
                ("token_type", Value::Integers(v)) => vocab.token_types = Some(v),
                ("bos_token_id", v) => vocab.bos = Some(token_id(v).ok_or_else(wrong_type)?),
                ("eos_token_id", v) => vocab.eos = Some(token_id(v).ok_or_else(wrong_type)?),
                ("unknown_token_id", v) => vocab.unk = Some(token_id(v).ok_or_else(wrong_type)?),
                ("padding_token_id", v) => vocab.pad = Some(token_id(v).ok_or_else(wrong_type)?),
                ("add_bos_token", Value::Bool(b)) => vocab.add_bos = Some(b),
                ("add_eos_token", Value::Bool(b)) => vocab.add_eos = Some(b),
                ("add_space_prefix", Value::Bool(b)) => vocab.add_space_prefix = Some(b),
                (
                    "model" | "pre" | "tokens" | "merges" | "scores" | "token_type" | "add_bos_token"
                    | "add_eos_token" | "add_space_prefix",
                    _,
                ) => return Err(wrong_type()),
                _ => {}
            }
        }
        vocab.model = model.ok_or_else(|| self.error("no tokenizer.ggml.model key".into()))?;
        Ok(vocab)
    }

    fn value(&mut self, value_type: u32) -> Result<Value, TokenizerError> {
        Ok(match value_type {
            0 => Value::Unsigned(self.bytes::<1>()?[0].into()),
            1 => Value::Signed((self.bytes::<1>()?[0] as i8).into()),
            2 => Value::Unsigned(u16::from_le_bytes(self.bytes()?).into()),
            3 => Value::Signed(i16::from_le_bytes(self.bytes()?).into()),
            4 => Value::Unsigned(self.u32()?.into()),
            5 => Value::Signed(i32::from_le_bytes(self.bytes()?).into()),
            6 | 10..=12 => {
                let width = if value_type == 6 { 4 } else { 8 };
                self.skip(width)?;
                Value::Other
            }
            7 => Value::Bool(self.bytes::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => self.array()?,
            other => return Err(self.error(format!("unknown metadata value type {other}"))),
        })
    }

    fn array(&mut self) -> Result<Value, TokenizerError> {
        let element_type = self.u32()?;
        let count = self.u64()?;
        // Each element takes at least one byte, so a count past the end of the file is corrupt.
        self.check_length(count)?;
        let count = count as usize;
        Ok(match element_type {
            8 => Value::Strings((0..count).map(|_| self.string()).collect::<Result<_, _>>()?),
            6 => Value::Floats(
                (0..count).map(|_| self.bytes().map(f32::from_le_bytes)).collect::<Result<_, _>>()?,
            ),
            5 => Value::Integers(
                (0..count).map(|_| self.bytes().map(i32::from_le_bytes)).collect::<Result<_, _>>()?,
            ),
            _ => {
                for _ in 0..count {
                    self.value(element_type)?;
                }
                Value::Other
            }
        })
    }

    fn string(&mut self) -> Result<String, TokenizerError> {
        let len = self.u64()?;
        self.check_length(len)?;
        let mut bytes = vec![0u8; len as usize];
        self.read_exact(&mut bytes)?;
        String::from_utf8(bytes).map_err(|_| self.error("a metadata string is not UTF-8".into()))
    }

    fn u32(&mut self) -> Result<u32, TokenizerError> {
        self.bytes().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, TokenizerError> {
        self.bytes().map(u64::from_le_bytes)
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], TokenizerError> {
        let mut buffer = [0u8; N];
        self.read_exact(&mut buffer)?;
        Ok(buffer)
    }

    fn skip(&mut self, len: u64) -> Result<(), TokenizerError> {
        self.check_length(len)?;
        let copied = std::io::copy(&mut (&mut self.input).take(len), &mut std::io::sink())
            .map_err(|e| self.error(format!("read failed: {e}")))?;
        if copied != len {
            return Err(self.error("truncated metadata".into()));
        }
        self.remaining -= len;
        Ok(())
    }

    fn check_length(&self, len: u64) -> Result<(), TokenizerError> {
        if len > self.remaining || len > MAX_LENGTH {
            return Err(self.error(format!("length {len} runs past the end of the file")));
        }
        Ok(())
    }

    fn read_exact(&mut self, buffer: &mut [u8]) -> Result<(), TokenizerError> {
        self.check_length(buffer.len() as u64)?;
        self.input.read_exact(buffer).map_err(|e| self.error(format!("truncated metadata: {e}")))?;
        self.remaining -= buffer.len() as u64;
        Ok(())
    }

    fn error(&self, message: String) -> TokenizerError {
        TokenizerError::Gguf { path: self.path.clone(), message }
    }
}

/// Token ids are stored as u32 by llama.cpp's converter, but any non-negative integer type is valid.
fn token_id(value: Value) -> Option<u32> {
    match value {
        Value::Unsigned(v) => u32::try_from(v).ok(),
        Value::Signed(v) => u32::try_from(v).ok(),
        _ => None,
    }
}
