//! GGUF files (versions 2 and 3): metadata, tensor infos and tensor data over a memory map.
//!
//! Every length, count, offset, shape and type is checked against the file before it is used, so
//! that a truncated or hostile file gives an error naming the field and its byte offset; nothing
//! is allocated in proportion to a count the file claims until the bytes it implies are known to
//! be there.

mod dequant;
mod reader;
mod types;
pub mod writer;

pub(crate) use dequant::k_scale_min;
pub use dequant::{dequantize, e8m0_half};
pub use reader::{
    GgufFile, MAX_ARRAY_LEN, MAX_METADATA_ENTRIES, MAX_METADATA_VALUES, MAX_NAME_BYTES, MAX_STRING_BYTES,
    MAX_TENSOR_ELEMENTS, MAX_TENSORS, TensorInfo, Value,
};
pub use types::GgmlType;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("not a GGUF file (the first four bytes are {0:?}, not \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("GGUF version {0} is not supported (2 and 3 are)")]
    UnsupportedVersion(u32),
    #[error("truncated file: {field} at byte {offset} needs {needed} bytes, {available} remain")]
    Truncated { field: String, offset: u64, needed: u64, available: u64 },
    #[error("{field} at byte {offset} is {value}, over the limit of {limit}")]
    TooLarge { field: String, offset: u64, value: String, limit: String },
    #[error("invalid {field} at byte {offset}: {message}")]
    Invalid { field: String, offset: u64, message: String },
    #[error("tensor {name}: type id {id} at byte {offset} is not supported (supported: {supported})", supported = GgmlType::supported_list())]
    UnsupportedType { name: String, id: u32, offset: u64 },
    #[error("metadata key {0} is missing")]
    MissingKey(String),
    #[error("metadata key {key} is {actual}, expected {expected}")]
    WrongType { key: String, expected: &'static str, actual: &'static str },
    #[error("tensor {name}: {message}")]
    Tensor { name: String, message: String },
    #[error(
        "{n_elements} {ty} elements take {expected} bytes (blocks of {} in {} bytes), got {actual}",
        ty.block_size(),
        ty.block_bytes()
    )]
    DataSize { ty: GgmlType, n_elements: usize, expected: usize, actual: usize },
    #[error("{n_elements} elements are not a whole number of {ty} blocks of {}", ty.block_size())]
    PartialBlock { ty: GgmlType, n_elements: usize },
}
