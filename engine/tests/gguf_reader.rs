//! The GGUF reader on files built byte by byte: every value type round-trips, and truncated or
//! hostile files are errors that name the problem, never panics or huge allocations.

use engine::gguf::{GgmlType, GgufError, GgufFile, Value};
use proptest::prelude::*;

/// A test-only GGUF writer.
#[derive(Default)]
struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn string(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.bytes.extend_from_slice(s.as_bytes());
        self
    }
    fn header(&mut self, version: u32, tensors: u64, kvs: u64) -> &mut Self {
        self.bytes.extend_from_slice(b"GGUF");
        self.u32(version).u64(tensors).u64(kvs)
    }
    fn value(&mut self, v: &Value) -> &mut Self {
        match v {
            Value::U8(x) => self.bytes.push(*x),
            Value::I8(x) => self.bytes.push(*x as u8),
            Value::U16(x) => self.bytes.extend_from_slice(&x.to_le_bytes()),
            Value::I16(x) => self.bytes.extend_from_slice(&x.to_le_bytes()),
            Value::U32(x) => self.bytes.extend_from_slice(&x.to_le_bytes()),
            Value::I32(x) => self.bytes.extend_from_slice(&x.to_le_bytes()),
            Value::F32(x) => self.bytes.extend_from_slice(&x.to_le_bytes()),
            Value::Bool(x) => self.bytes.push(*x as u8),
            Value::String(s) => {
                self.string(s);
            }
            Value::Array(items) => {
                let ty = items.first().map_or(0, type_id);
                self.u32(ty).u64(items.len() as u64);
                for item in items {
                    self.value(item);
                }
            }
            Value::U64(x) => self.bytes.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) => self.bytes.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => self.bytes.extend_from_slice(&x.to_le_bytes()),
        }
        self
    }
    fn kv(&mut self, key: &str, v: &Value) -> &mut Self {
        self.string(key).u32(type_id(v)).value(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.string(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad(&mut self, alignment: usize) -> &mut Self {
        while !self.bytes.len().is_multiple_of(alignment) {
            self.bytes.push(0);
        }
        self
    }
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn every_value() -> Vec<(String, Value)> {
    vec![
        ("u8".into(), Value::U8(200)),
        ("i8".into(), Value::I8(-100)),
        ("u16".into(), Value::U16(60000)),
        ("i16".into(), Value::I16(-30000)),
        ("u32".into(), Value::U32(4_000_000_000)),
        ("i32".into(), Value::I32(-2_000_000_000)),
        ("f32".into(), Value::F32(1.5e-5)),
        ("bool".into(), Value::Bool(true)),
        ("string".into(), Value::String("héllo ✓".into())),
        ("array".into(), Value::Array(vec![Value::I32(1), Value::I32(-2), Value::I32(3)])),
        ("strings".into(), Value::Array(vec![Value::String("a".into()), Value::String("".into())])),
        (
            "nested".into(),
            Value::Array(vec![
                Value::Array(vec![Value::U8(1), Value::U8(2)]),
                Value::Array(vec![Value::U8(3), Value::U8(4)]),
            ]),
        ),
        ("u64".into(), Value::U64(u64::MAX)),
        ("i64".into(), Value::I64(i64::MIN)),
        ("f64".into(), Value::F64(-2.5)),
    ]
}

/// A small valid file: every value type, a non-default alignment, an F32 and a Q8_0 tensor.
fn valid_file() -> Vec<u8> {
    let metadata = every_value();
    let mut w = Writer::default();
    w.header(3, 2, metadata.len() as u64 + 1);
    for (k, v) in &metadata {
        w.kv(k, v);
    }
    w.kv("general.alignment", &Value::U32(64));
    w.tensor("a", &[3, 2], 0, 0).tensor("b", &[32], 8, 64);
    w.pad(64);
    for i in 0..6 {
        w.bytes.extend_from_slice(&(i as f32 * 0.5).to_le_bytes());
    }
    w.pad(64);
    w.bytes.extend_from_slice(&half::f16::from_f32(0.25).to_le_bytes());
    w.bytes.extend((0..32).map(|i| (i as i8 - 16) as u8));
    w.bytes
}

#[test]
fn every_value_type_round_trips() {
    let file = GgufFile::parse(valid_file()).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 64);
    for (key, value) in every_value() {
        assert_eq!(file.get(&key), Some(&value), "{key}");
    }
    assert_eq!(file.get_u32("u16").unwrap(), 60000);
    assert_eq!(file.get_str("string").unwrap(), "héllo ✓");
    assert!(file.get_u32("i8").is_err(), "a negative value is not a u32");
    assert!(matches!(file.get_str("missing"), Err(GgufError::MissingKey(_))));
    assert!(matches!(file.get_str("u8"), Err(GgufError::WrongType { .. })));

    let a = file.tensor("a").unwrap();
    assert_eq!((a.dims.clone(), a.ty, a.n_bytes), (vec![3, 2], GgmlType::F32, 24));
    assert_eq!(file.tensor_f32(a).unwrap(), vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
    assert_eq!(file.data_offset() % 64, 0);
    let b = file.tensor("b").unwrap();
    assert_eq!(b.ty, GgmlType::Q8_0);
    let values = file.tensor_f32(b).unwrap();
    assert_eq!(values[0], -4.0);
    assert_eq!(values[31], 3.75);
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = valid_file();
    for len in 0..bytes.len() {
        assert!(GgufFile::parse(bytes[..len].to_vec()).is_err(), "a file cut to {len} bytes parsed");
    }
    assert!(GgufFile::parse(bytes).is_ok());
}

fn error_of(w: &Writer) -> String {
    match GgufFile::parse(w.bytes.clone()) {
        Ok(_) => panic!("parsed a bad file"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn hostile_headers_are_named_errors() {
    let mut w = Writer::default();
    w.bytes.extend_from_slice(b"GGML");
    w.u32(3).u64(0).u64(0);
    assert!(error_of(&w).contains("not a GGUF file"));

    for version in [1, 4] {
        let mut w = Writer::default();
        w.header(version, 0, 0);
        assert!(error_of(&w).contains(&format!("version {version} is not supported")));
    }

    let mut w = Writer::default();
    w.header(3, u64::MAX, 0);
    assert!(error_of(&w).contains("tensor count"));

    let mut w = Writer::default();
    w.header(3, 0, 1 << 60);
    assert!(error_of(&w).contains("metadata count"));

    let mut w = Writer::default();
    w.header(3, 0, 1).string("k").u32(8).u64(u64::MAX - 3);
    assert!(error_of(&w).contains("truncated"), "{}", error_of(&w));

    let mut w = Writer::default();
    w.header(3, 0, 1).string("k").u32(9).u32(4).u64(1 << 61);
    assert!(error_of(&w).contains("do not fit"), "{}", error_of(&w));

    // Arrays nested nine deep.
    let mut w = Writer::default();
    w.header(3, 0, 1).string("deep");
    w.u32(9);
    for _ in 0..9 {
        w.u32(9).u64(1);
    }
    w.u32(0).u64(0);
    assert!(error_of(&w).contains("nested deeper"), "{}", error_of(&w));

    let mut w = Writer::default();
    w.header(3, 0, 1).string("k").u32(13).u32(0);
    assert!(error_of(&w).contains("unknown value type 13"));

    let mut w = Writer::default();
    w.header(3, 0, 1).string("flag").u32(7);
    w.bytes.push(2);
    assert!(error_of(&w).contains("bool byte 2"));

    let mut w = Writer::default();
    w.header(3, 0, 1);
    w.u64(2);
    w.bytes.extend_from_slice(&[0xff, 0xfe]);
    w.u32(4).u32(1);
    assert!(error_of(&w).contains("not UTF-8"));

    let mut w = Writer::default();
    w.header(3, 0, 2).kv("k", &Value::U8(1)).kv("k", &Value::U8(2));
    assert!(error_of(&w).contains("appears twice"));

    for alignment in [0u32, 48] {
        let mut w = Writer::default();
        w.header(3, 0, 1).kv("general.alignment", &Value::U32(alignment));
        assert!(error_of(&w).contains("power of two"), "{}", error_of(&w));
    }
}

#[test]
fn hostile_tensor_infos_are_named_errors() {
    let tensor_file = |dims: &[u64], ty: u32, offset: u64, data: usize| {
        let mut w = Writer::default();
        w.header(3, 1, 0).tensor("t", dims, ty, offset).pad(32);
        w.bytes.extend(std::iter::repeat_n(0u8, data));
        w
    };
    assert!(GgufFile::parse(tensor_file(&[4, 2], 0, 0, 32).bytes).is_ok());
    assert!(error_of(&tensor_file(&[1 << 32, 1 << 32, 1 << 32], 0, 0, 0)).contains("overflow"));
    assert!(error_of(&tensor_file(&[1, 1, 1, 1, 1], 0, 0, 4)).contains("5 dimensions"));
    assert!(error_of(&tensor_file(&[4, 2], 0, 64, 32)).contains("past the end of the file"));
    assert!(error_of(&tensor_file(&[4, 2], 0, 8, 64)).contains("not a multiple of the alignment"));
    assert!(error_of(&tensor_file(&[48], 8, 0, 64)).contains("not whole Q8_0 blocks"));
    let unknown = error_of(&tensor_file(&[4], 10, 0, 32));
    assert!(unknown.contains("type id 10") && unknown.contains("Q4_K, Q5_K, Q6_K, MXFP4"), "{unknown}");

    let mut w = Writer::default();
    w.header(3, 2, 0).tensor("t", &[1], 0, 0).tensor("t", &[1], 0, 32).pad(32);
    w.bytes.extend([0u8; 64]);
    assert!(error_of(&w).contains("appears twice"));
}

#[test]
fn real_files_parse() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let llama = GgufFile::open(root.join("../tests/fixtures/llama.gguf")).unwrap();
    assert_eq!(llama.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(llama.get_u32("llama.block_count").unwrap(), 2);
    let embd = llama.tensor("token_embd.weight").unwrap();
    assert_eq!((embd.dims.clone(), embd.ty), (vec![64, 300], GgmlType::F32));
    let gpt2 = GgufFile::open(root.join("tests/data/vocab/ggml-vocab-gpt-2.gguf")).unwrap();
    assert_eq!(gpt2.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(gpt2.get_array_len("tokenizer.ggml.tokens").unwrap(), 50257);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random byte changes never panic: a result or an error, and tensor data stays in bounds.
    #[test]
    fn mutated_files_never_panic(changes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = valid_file();
        for (index, byte) in changes {
            let i = index.index(bytes.len());
            bytes[i] = byte;
        }
        if let Ok(file) = GgufFile::parse(bytes) {
            for t in file.tensors() {
                let _ = file.tensor_f32(t);
            }
        }
    }
}
