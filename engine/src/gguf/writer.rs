//! A GGUF v3 writer: metadata of every value type, tensor infos, aligned tensor data. Used by
//! `engine synth`; checked by reading its files back (tests below, and llama.cpp loading them).

use super::GgmlType;
use std::io::{self, Write};

/// A metadata value to write.
#[derive(Clone, Debug)]
pub enum MetaValue {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strings(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
}

/// A tensor to write: its data comes later, in the order the tensors were given.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    /// GGUF order: dims[0] is the row length (values per row).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorSpec {
    /// Bytes of data: rows of dims[0] values in blocks of the type.
    pub fn bytes(&self) -> usize {
        let n: u64 = self.dims.iter().product();
        n as usize / self.ty.block_size() * self.ty.block_bytes()
    }
}

pub const ALIGNMENT: usize = 32;

fn string(out: &mut impl Write, s: &str) -> io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s.as_bytes())
}

fn value(out: &mut impl Write, v: &MetaValue) -> io::Result<()> {
    // Type ids of the GGUF spec.
    const U32: u32 = 4;
    const I32: u32 = 5;
    const F32: u32 = 6;
    const BOOL: u32 = 7;
    const STRING: u32 = 8;
    const ARRAY: u32 = 9;
    let array_head = |out: &mut dyn Write, ty: u32, n: usize| -> io::Result<()> {
        out.write_all(&ARRAY.to_le_bytes())?;
        out.write_all(&ty.to_le_bytes())?;
        out.write_all(&(n as u64).to_le_bytes())
    };
    match v {
        MetaValue::U32(x) => {
            out.write_all(&U32.to_le_bytes())?;
            out.write_all(&x.to_le_bytes())
        }
        MetaValue::I32(x) => {
            out.write_all(&I32.to_le_bytes())?;
            out.write_all(&x.to_le_bytes())
        }
        MetaValue::F32(x) => {
            out.write_all(&F32.to_le_bytes())?;
            out.write_all(&x.to_le_bytes())
        }
        MetaValue::Bool(x) => {
            out.write_all(&BOOL.to_le_bytes())?;
            out.write_all(&[*x as u8])
        }
        MetaValue::Str(s) => {
            out.write_all(&STRING.to_le_bytes())?;
            string(out, s)
        }
        MetaValue::Strings(items) => {
            array_head(out, STRING, items.len())?;
            items.iter().try_for_each(|s| string(out, s))
        }
        MetaValue::I32s(items) => {
            array_head(out, I32, items.len())?;
            items.iter().try_for_each(|x| out.write_all(&x.to_le_bytes()))
        }
        MetaValue::F32s(items) => {
            array_head(out, F32, items.len())?;
            items.iter().try_for_each(|x| out.write_all(&x.to_le_bytes()))
        }
    }
}

/// Writes the header, metadata and tensor infos, padded so that the tensor data can follow;
/// returns the bytes written. Tensor data must then be written in order, each tensor padded to
/// ALIGNMENT (see [`padding`]).
pub fn write_head(
    out: &mut impl Write,
    metadata: &[(String, MetaValue)],
    tensors: &[TensorSpec],
) -> io::Result<usize> {
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, v) in metadata {
        string(&mut head, key)?;
        value(&mut head, v)?;
    }
    let mut offset = 0usize;
    for t in tensors {
        string(&mut head, &t.name)?;
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&t.ty.id().to_le_bytes());
        head.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += t.bytes().next_multiple_of(ALIGNMENT);
    }
    head.resize(head.len().next_multiple_of(ALIGNMENT), 0);
    out.write_all(&head)?;
    Ok(head.len())
}

/// Zero bytes after a tensor of `len` bytes, up to the alignment.
pub fn padding(len: usize) -> Vec<u8> {
    vec![0; len.next_multiple_of(ALIGNMENT) - len]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    #[test]
    fn written_files_read_back() {
        let metadata = vec![
            ("general.architecture".to_string(), MetaValue::Str("llama".into())),
            ("a.u32".to_string(), MetaValue::U32(7)),
            ("a.i32".to_string(), MetaValue::I32(-3)),
            ("a.f32".to_string(), MetaValue::F32(0.5)),
            ("a.bool".to_string(), MetaValue::Bool(true)),
            ("a.strings".to_string(), MetaValue::Strings(vec!["x".into(), "yz".into()])),
            ("a.i32s".to_string(), MetaValue::I32s(vec![1, -2])),
            ("a.f32s".to_string(), MetaValue::F32s(vec![1.5])),
        ];
        let tensors = vec![
            TensorSpec { name: "t0".into(), dims: vec![3, 2], ty: GgmlType::F32 },
            TensorSpec { name: "t1".into(), dims: vec![32], ty: GgmlType::Q8_0 },
        ];
        let mut bytes = Vec::new();
        write_head(&mut bytes, &metadata, &tensors).unwrap();
        let data0: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        bytes.extend_from_slice(&data0);
        bytes.extend(padding(data0.len()));
        bytes.extend((0..34).map(|i| i as u8));
        bytes.extend(padding(34));
        let file = GgufFile::parse(bytes).unwrap();
        assert_eq!(file.version(), 3);
        assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(file.get_u32("a.u32").unwrap(), 7);
        assert_eq!(file.get("a.i32").and_then(|v| v.as_i64()), Some(-3));
        assert_eq!(file.get_f32("a.f32").unwrap(), 0.5);
        assert_eq!(file.get_bool_opt("a.bool").unwrap(), Some(true));
        let strings: Vec<_> =
            file.get_array("a.strings").unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(strings, ["x", "yz"]);
        assert_eq!(file.get_array_len("a.i32s").unwrap(), 2);
        let t0 = file.tensor("t0").unwrap();
        assert_eq!(file.tensor_f32(t0).unwrap(), (0..6).map(|i| i as f32).collect::<Vec<_>>());
        let t1 = file.tensor("t1").unwrap();
        assert_eq!(file.tensor_data(t1), (0..34).map(|i| i as u8).collect::<Vec<_>>());
    }
}
