//! The GGUF parser. Layout: magic "GGUF", version u32, tensor count u64, metadata count u64,
//! metadata (key string, type u32, value), tensor infos (name string, n_dims u32, dims u64 each,
//! type u32, offset u64), padding to `general.alignment` (default 32), then tensor data, each
//! tensor at its offset from the start of the data section. Strings are u64 length + UTF-8 bytes.

use super::{GgmlType, GgufError, dequantize};
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays may nest (arrays of arrays); hostile files must not recurse without bound.
const MAX_NESTING: usize = 8;
/// The most items reserved up front for a count the file claims. A count is only checked against
/// the bytes left, which in a weights file can be gigabytes; reserving all of it before the items
/// are read would let a few bad bytes cost many times the file's size. Past this, vectors grow as
/// items actually parse (real files' largest arrays, vocabularies, take a few doublings).
const MAX_RESERVE: u64 = 1 << 14;

// Hard limits, far above what real files hold, that make a hostile file cheap to reject: without
// them a file of u8 arrays costs 32 bytes of memory per byte of file (one `Value` per byte).
/// Entries in one metadata array. Real vocabularies hold up to a few hundred thousand tokens and
/// merges (o200k: 201,088 tokens, 446,189 merges).
pub const MAX_ARRAY_LEN: u64 = 1 << 22;
/// Array elements in all of the metadata together (at most 256 MiB of `Value`s).
pub const MAX_METADATA_VALUES: u64 = 1 << 23;
/// Bytes in one metadata string value (the largest real ones, chat templates, take tens of KiB).
pub const MAX_STRING_BYTES: u64 = 1 << 24;
/// Bytes in a metadata key or a tensor name (ggml's own limit on names is 64).
pub const MAX_NAME_BYTES: u64 = 1 << 12;
/// Tensors in one file (the largest real models have a few thousand).
pub const MAX_TENSORS: u64 = 1 << 16;
/// Metadata entries in one file (real files have tens).
pub const MAX_METADATA_ENTRIES: u64 = 1 << 16;
/// Elements in one tensor, as ggml's own int64 element counts allow.
pub const MAX_TENSOR_ELEMENTS: u64 = i64::MAX as u64;

fn reserve(count: u64) -> usize {
    count.min(MAX_RESERVE) as usize
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }

    /// Any integer type that fits in u64 without loss.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Where a tensor is and what it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: dims[0] is the fastest-varying (a row's length).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

pub struct GgufFile {
    bytes: Bytes,
    version: u32,
    metadata: Vec<(String, Value)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_offset: u64,
    alignment: u64,
}

impl GgufFile {
    /// Maps and parses the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io = |error| GgufError::Io { path: path.display().to_string(), error };
        let file = File::open(path).map_err(io)?;
        // Safety: the map is read-only; a file changed underneath by another process is the
        // documented hazard of mmap, as for every engine that maps weights.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse_bytes(Bytes::Mapped(map))
    }

    /// Parses a GGUF image held in memory.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse_bytes(Bytes::Owned(bytes))
    }

    fn parse_bytes(bytes: Bytes) -> Result<Self, GgufError> {
        let data = bytes.as_slice();
        let mut r = Reader { bytes: data, pos: 0, array_values: 0 };
        let magic = r.take(4, "magic")?;
        if magic != b"GGUF" {
            return Err(GgufError::BadMagic([magic[0], magic[1], magic[2], magic[3]]));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let tensor_count_at = r.pos as u64;
        let tensor_count = r.u64("tensor count")?;
        let kv_count_at = r.pos as u64;
        let kv_count = r.u64("metadata count")?;
        // Each metadata entry takes at least 13 bytes (empty key, type, smallest value) and each
        // tensor info at least 24: counts beyond what the file can hold are rejected up front.
        r.check_count(kv_count, 13, kv_count_at, "metadata count")?;
        r.check_count(tensor_count, 24, tensor_count_at, "tensor count")?;
        check_limit("metadata count", kv_count_at, kv_count, MAX_METADATA_ENTRIES)?;
        check_limit("tensor count", tensor_count_at, tensor_count, MAX_TENSORS)?;

        let mut metadata = Vec::with_capacity(reserve(kv_count));
        let mut metadata_index = HashMap::with_capacity(reserve(kv_count));
        // Where the value of general.alignment is, for an error about it.
        let mut alignment_at = 0;
        for _ in 0..kv_count {
            let at = r.pos as u64;
            let key = r.string("metadata key", MAX_NAME_BYTES)?;
            let ty = r.u32(&format!("type of metadata {key}"))?;
            if key == "general.alignment" {
                alignment_at = r.pos as u64;
            }
            let value = r.value(ty, &key, 0)?;
            if metadata_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(r.invalid_at(at, "metadata key", format!("{key} appears twice")));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => 32,
            Some(Value::U32(a)) if *a > 0 && a.is_power_of_two() => *a as u64,
            Some(other) => {
                return Err(r.invalid_at(
                    alignment_at,
                    "general.alignment",
                    format!("{other:?} is not a positive power of two (u32)"),
                ));
            }
        };

        let mut tensors = Vec::with_capacity(reserve(tensor_count));
        let mut tensor_index = HashMap::with_capacity(reserve(tensor_count));
        // Where each tensor's data offset is written, for an error about its data range.
        let mut offsets_at = Vec::with_capacity(reserve(tensor_count));
        for _ in 0..tensor_count {
            let at = r.pos as u64;
            let name = r.string("tensor name", MAX_NAME_BYTES)?;
            let n_dims = r.u32(&format!("dimension count of {name}"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(r.invalid_at(
                    at,
                    "tensor info",
                    format!("{name} has {n_dims} dimensions (1 to 4)"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(r.u64(&format!("dimension {d} of {name}"))?);
            }
            let type_at = r.pos as u64;
            let type_id = r.u32(&format!("type of {name}"))?;
            let ty = GgmlType::from_id(type_id).ok_or(GgufError::UnsupportedType {
                name: name.clone(),
                id: type_id,
                offset: type_at,
            })?;
            offsets_at.push(r.pos as u64);
            let offset = r.u64(&format!("data offset of {name}"))?;
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
                .ok_or_else(|| {
                    r.invalid_at(
                        at,
                        "tensor info",
                        format!(
                            "{name}: dimensions {dims:?} overflow (more than {MAX_TENSOR_ELEMENTS} elements)"
                        ),
                    )
                })?;
            if dims[0] % ty.block_size() as u64 != 0 {
                return Err(r.invalid_at(
                    type_at,
                    "tensor info",
                    format!(
                        "{name}: rows of {} elements are not whole {ty} blocks of {}",
                        dims[0],
                        ty.block_size()
                    ),
                ));
            }
            let n_bytes = (n_elements / ty.block_size() as u64)
                .checked_mul(ty.block_bytes() as u64)
                .ok_or_else(|| r.invalid_at(at, "tensor info", format!("{name}: byte size overflows")))?;
            if offset % alignment != 0 {
                return Err(r.invalid_at(
                    at,
                    "tensor info",
                    format!("{name}: data offset {offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(r.invalid_at(at, "tensor name", format!("{name} appears twice")));
            }
            tensors.push(TensorInfo { name, dims, ty, offset, n_elements, n_bytes });
        }

        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_len = data.len() as u64;
        for (t, &at) in tensors.iter().zip(&offsets_at) {
            let end = data_offset.checked_add(t.offset).and_then(|s| s.checked_add(t.n_bytes));
            if end.is_none_or(|end| end > file_len) {
                return Err(r.invalid_at(
                    at,
                    &format!("data offset of {}", t.name),
                    format!(
                        "its {} bytes at data offset {} run past the end of the file ({file_len} bytes, data from {data_offset})",
                        t.n_bytes, t.offset
                    ),
                ));
            }
        }
        // Each tensor lies inside the file; tensors could share bytes, but no writer does that:
        // together they claim no more than the data section holds.
        let data_len = file_len.saturating_sub(data_offset);
        let claimed = tensors.iter().try_fold(0u64, |sum, t| sum.checked_add(t.n_bytes));
        if claimed.is_none_or(|claimed| claimed > data_len) {
            return Err(GgufError::TooLarge {
                field: "tensor data (all tensors together)".into(),
                offset: data_offset,
                value: claimed.map_or_else(|| "more than 2^64 bytes".into(), |c| format!("{c} bytes")),
                limit: format!("{data_len} bytes (the data section)"),
            });
        }
        Ok(GgufFile {
            bytes,
            version,
            metadata,
            metadata_index,
            tensors,
            tensor_index,
            data_offset,
            alignment,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Size of the whole file in bytes.
    pub fn len(&self) -> u64 {
        self.bytes.as_slice().len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    fn wrong(key: &str, expected: &'static str, value: &Value) -> GgufError {
        GgufError::WrongType { key: key.to_string(), expected, actual: value.type_name() }
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| Self::wrong(key, "a string", v))
    }

    pub fn get_str_opt(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.get(key).map(|_| self.get_str(key)).transpose()
    }

    /// An unsigned integer of any width that fits in u32.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        let v = self.require(key)?;
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| Self::wrong(key, "an integer in u32 range", v))
    }

    pub fn get_u32_opt(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.get(key).map(|_| self.get_u32(key)).transpose()
    }

    /// A float (f32 or f64).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.require(key)?;
        v.as_f64().map(|x| x as f32).ok_or_else(|| Self::wrong(key, "a float", v))
    }

    pub fn get_f32_opt(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.get(key).map(|_| self.get_f32(key)).transpose()
    }

    pub fn get_bool_opt(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(Self::wrong(key, "a bool", v)),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value], GgufError> {
        match self.require(key)? {
            Value::Array(items) => Ok(items),
            v => Err(Self::wrong(key, "an array", v)),
        }
    }

    pub fn get_array_len(&self, key: &str) -> Result<usize, GgufError> {
        Ok(self.get_array(key)?.len())
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor (bounds were checked when the file was parsed). `info` must be
    /// one of this file's `tensors()`: an info made by hand or taken from another file may lie
    /// outside this one, and then this panics.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset) as usize;
        &self.bytes.as_slice()[start..start + info.n_bytes as usize]
    }

    /// Drops the mapped pages wholly inside `info`'s bytes from this process's memory, for a
    /// caller that has copied (or converted) the tensor, so that its weights are not resident
    /// twice. Reading the bytes again faults them back in from the file, so every slice stays
    /// valid. A file held in memory ([`GgufFile::parse`]) keeps its bytes.
    pub fn release_tensor_pages(&self, info: &TensorInfo) {
        #[cfg(unix)]
        if let Bytes::Mapped(map) = &self.bytes {
            // Whole 4 KiB pages only; where pages are larger the call fails and nothing changes.
            const PAGE: usize = 4096;
            let start = (self.data_offset + info.offset) as usize;
            let end = start + info.n_bytes as usize;
            let (first, last) = (start.div_ceil(PAGE) * PAGE, end / PAGE * PAGE);
            if last > first {
                // SAFETY: DONTNEED on a read-only file mapping only drops pages; later reads see
                // the file's bytes again, which are the same bytes.
                let _ = unsafe {
                    map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first)
                };
            }
        }
    }

    /// A tensor dequantized to f32.
    pub fn tensor_f32(&self, info: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        dequantize(info.ty, self.tensor_data(info), info.n_elements as usize)
            .map_err(|e| GgufError::Tensor { name: info.name.clone(), message: e.to_string() })
    }
}

/// Rejects `value` (read at `offset`) above `limit`.
fn check_limit(field: &str, offset: u64, value: u64, limit: u64) -> Result<(), GgufError> {
    if value > limit {
        return Err(GgufError::TooLarge {
            field: field.to_string(),
            offset,
            value: value.to_string(),
            limit: limit.to_string(),
        });
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Array elements read so far, against [`MAX_METADATA_VALUES`].
    array_values: u64,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, field: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                field: field.to_string(),
                offset: self.pos as u64,
                needed: n,
                available: self.remaining(),
            });
        }
        let slice = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(slice)
    }

    fn invalid_at(&self, offset: u64, field: &str, message: String) -> GgufError {
        GgufError::Invalid { field: field.to_string(), offset, message }
    }

    /// Rejects a count (written at `at`) of items of at least `min_bytes` each that the rest of
    /// the file cannot hold.
    fn check_count(&self, count: u64, min_bytes: u64, at: u64, field: &str) -> Result<(), GgufError> {
        if count.checked_mul(min_bytes).is_none_or(|b| b > self.remaining()) {
            return Err(self.invalid_at(
                at,
                field,
                format!(
                    "{count} items of at least {min_bytes} bytes do not fit in the {} bytes left",
                    self.remaining()
                ),
            ));
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], GgufError> {
        Ok(self.take(N as u64, field)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, field: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A string of at most `limit` bytes.
    fn string(&mut self, field: &str, limit: u64) -> Result<String, GgufError> {
        let at = self.pos as u64;
        let len = self.u64(&format!("length of {field}"))?;
        let bytes = self.take(len, field)?;
        check_limit(&format!("length of {field}"), at, len, limit)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| self.invalid_at(at, field, format!("not UTF-8: {e}")))
    }

    /// Smallest encoding of a value of type `ty`, for bounding array counts.
    fn min_size(ty: u32) -> u64 {
        match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 => 8,
            9 => 12,
            _ => 8,
        }
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value, GgufError> {
        let at = self.pos as u64;
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.invalid_at(at, key, format!("bool byte {b} is neither 0 nor 1"))),
            },
            8 => Value::String(self.string(key, MAX_STRING_BYTES)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(self.invalid_at(at, key, format!("arrays nested deeper than {MAX_NESTING}")));
                }
                let element_type = self.u32(&format!("element type of {key}"))?;
                if element_type > 12 {
                    return Err(self.invalid_at(at, key, format!("unknown element type {element_type}")));
                }
                let count_at = self.pos as u64;
                let count = self.u64(&format!("length of {key}"))?;
                self.check_count(count, Self::min_size(element_type), count_at, key)?;
                check_limit(&format!("length of {key}"), count_at, count, MAX_ARRAY_LEN)?;
                self.array_values += count;
                check_limit(
                    &format!("array elements in the metadata (at {key})"),
                    count_at,
                    self.array_values,
                    MAX_METADATA_VALUES,
                )?;
                let mut items = Vec::with_capacity(reserve(count));
                for _ in 0..count {
                    items.push(self.value(element_type, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => return Err(self.invalid_at(at, key, format!("unknown value type {other}"))),
        })
    }
}
