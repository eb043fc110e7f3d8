//! The GGUF reader on files built byte by byte: every value type round-trips, and truncated or
//! hostile files are errors that name the problem, never panics or huge allocations. (The real
//! files are checked against gguf-py's reader in gguf_real_files.rs.)

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

/// Where the tensor infos of `valid_file` end: 24 header bytes, the metadata, the two tensor infos.
const VALID_FILE_INFOS_END: usize = 521;

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
    assert_eq!(w.bytes.len(), VALID_FILE_INFOS_END);
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
    let bytes = valid_file();
    let file = GgufFile::parse(bytes.clone()).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.len(), bytes.len() as u64);
    let mut expected = every_value();
    expected.push(("general.alignment".into(), Value::U32(64)));
    assert_eq!(file.metadata(), &expected[..], "all metadata, in file order");
    for (key, value) in every_value() {
        assert_eq!(file.get(&key), Some(&value), "{key}");
    }
    assert_eq!(file.get_u32("u16").unwrap(), 60000);
    assert_eq!(file.get_u32("u32").unwrap(), 4_000_000_000);
    assert_eq!(file.get_str("string").unwrap(), "héllo ✓");
    assert_eq!(file.get_str_opt("missing").unwrap(), None);
    assert_eq!(file.get_f32("f64").unwrap(), -2.5);
    assert_eq!(file.get_f32("f32").unwrap(), 1.5e-5);
    assert_eq!(file.get_bool_opt("bool").unwrap(), Some(true));
    assert_eq!(file.get_array_len("strings").unwrap(), 2);
    assert!(file.get_u32("i8").is_err(), "a negative value is not a u32");
    assert!(file.get_u32("u64").is_err(), "u64::MAX is not a u32");
    assert!(matches!(file.get_str("missing"), Err(GgufError::MissingKey(k)) if k == "missing"));
    assert!(matches!(
        file.get_str("u8"),
        Err(GgufError::WrongType { key, expected: "a string", actual: "u8" }) if key == "u8"
    ));
    assert!(matches!(file.get_bool_opt("u8"), Err(GgufError::WrongType { .. })));
    assert!(matches!(file.get_array("string"), Err(GgufError::WrongType { .. })));

    // The data section starts at the first multiple of 64 after the tensor infos; a takes its
    // first 24 bytes, then padding to 64, then b's 34 bytes end the file.
    assert_eq!(file.data_offset(), (VALID_FILE_INFOS_END as u64).div_ceil(64) * 64);
    assert_eq!(file.data_offset() as usize + 64 + 34, bytes.len());
    assert_eq!(file.tensors().len(), 2);
    assert_eq!(file.tensors()[0].name, "a", "tensors in file order");

    let a = file.tensor("a").unwrap();
    assert_eq!(
        (a.dims.clone(), a.ty, a.offset, a.n_elements, a.n_bytes),
        (vec![3, 2], GgmlType::F32, 0, 6, 24)
    );
    let start = file.data_offset() as usize;
    assert_eq!(file.tensor_data(a), &bytes[start..start + 24]);
    assert_eq!(file.tensor_f32(a).unwrap(), vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
    let b = file.tensor("b").unwrap();
    assert_eq!((b.ty, b.offset, b.n_elements, b.n_bytes), (GgmlType::Q8_0, 64, 32, 34));
    assert_eq!(file.tensor_data(b), &bytes[start + 64..start + 98]);
    assert_eq!(start + 98, bytes.len(), "b ends the file");
    let values = file.tensor_f32(b).unwrap();
    let expected: Vec<f32> = (0..32).map(|i| 0.25 * (i - 16) as f32).collect();
    assert_eq!(values, expected);
    assert!(file.tensor("c").is_none());
}

#[test]
fn version_2_and_the_default_alignment() {
    let mut w = Writer::default();
    w.header(2, 1, 1).kv("general.name", &Value::String("v2".into())).tensor("t", &[2], 1, 0);
    let infos_end = w.bytes.len();
    w.pad(32);
    w.bytes.extend(half::f16::from_f32(-1.5).to_le_bytes());
    w.bytes.extend(half::f16::from_f32(0.125).to_le_bytes());
    let file = GgufFile::parse(w.bytes).unwrap();
    assert_eq!((file.version(), file.alignment()), (2, 32));
    assert_eq!(file.data_offset(), (infos_end as u64).div_ceil(32) * 32);
    assert_eq!(file.tensor_f32(&file.tensors()[0]).unwrap(), vec![-1.5, 0.125]);
}

#[test]
fn open_reads_the_same_as_parse() {
    let bytes = valid_file();
    let path = std::env::temp_dir().join(format!("gguf_reader_test_{}.gguf", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let opened = GgufFile::open(&path);
    std::fs::remove_file(&path).unwrap();
    let opened = opened.unwrap();
    let parsed = GgufFile::parse(bytes).unwrap();
    assert_eq!(opened.metadata(), parsed.metadata());
    assert_eq!(opened.tensors(), parsed.tensors());
    for t in parsed.tensors() {
        assert_eq!(opened.tensor_data(t), parsed.tensor_data(t));
    }
    let missing = std::env::temp_dir().join("gguf_reader_test_no_such_file.gguf");
    match GgufFile::open(&missing) {
        Err(e @ GgufError::Io { .. }) => assert!(e.to_string().contains("no_such_file"), "{e}"),
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = valid_file();
    for len in 0..bytes.len() {
        match GgufFile::parse(bytes[..len].to_vec()) {
            Ok(_) => panic!("a file cut to {len} bytes parsed"),
            // A cut in the metadata or tensor infos is Truncated, or Invalid where a count no
            // longer fits the bytes left; a cut in the data section is the tensor running past the end.
            Err(GgufError::Truncated { offset, available, .. }) => {
                assert!(offset as usize <= len && available as usize == len - offset as usize, "{len}")
            }
            Err(GgufError::Invalid { field, message, .. }) if field.starts_with("data offset of") => {
                assert!(message.contains("past the end"), "{len}: {message}")
            }
            Err(GgufError::Invalid { message, .. }) => {
                assert!(message.contains("do not fit"), "{len}: {message}")
            }
            Err(e) => panic!("a file cut to {len} bytes: unexpected {e}"),
        }
    }
    assert!(GgufFile::parse(bytes).is_ok());
}

fn parse_error(w: &Writer) -> GgufError {
    match GgufFile::parse(w.bytes.clone()) {
        Ok(_) => panic!("parsed a bad file"),
        Err(e) => e,
    }
}

/// The message of an error of the Invalid variant, checking its field name.
fn invalid(w: &Writer, field: &str) -> String {
    invalid_at(w, field).1
}

/// The byte offset and message of an error of the Invalid variant, checking its field name, and
/// that its text names the field and the offset.
fn invalid_at(w: &Writer, field: &str) -> (u64, String) {
    match parse_error(w) {
        e @ GgufError::Invalid { .. } => {
            let text = e.to_string();
            let GgufError::Invalid { field: f, offset, message } = e else { unreachable!() };
            assert_eq!(f, field, "{text}");
            assert!(text.contains(&format!("{field} at byte {offset}")), "{text}");
            (offset, message)
        }
        e => panic!("expected Invalid {{ field: {field} }}, got {e:?}"),
    }
}

#[test]
fn hostile_headers_are_named_errors() {
    let mut w = Writer::default();
    w.bytes.extend_from_slice(b"GGML");
    w.u32(3).u64(0).u64(0);
    let e = parse_error(&w);
    assert!(matches!(e, GgufError::BadMagic(m) if &m == b"GGML"));
    assert!(e.to_string().contains("not a GGUF file"));

    for version in [0, 1, 4, u32::MAX] {
        let mut w = Writer::default();
        w.header(version, 0, 0);
        let e = parse_error(&w);
        assert!(matches!(e, GgufError::UnsupportedVersion(v) if v == version));
        assert!(e.to_string().contains(&format!("version {version} is not supported")));
    }

    for count in [u64::MAX, 1 << 60, 1000] {
        let mut w = Writer::default();
        w.header(3, count, 0);
        let (offset, message) = invalid_at(&w, "tensor count");
        assert!(offset == 8 && message.contains("do not fit"), "{offset}: {message}");
        let mut w = Writer::default();
        w.header(3, 0, count);
        let (offset, message) = invalid_at(&w, "metadata count");
        assert!(offset == 16 && message.contains("do not fit"), "{offset}: {message}");
    }

    // A string longer than the file.
    for len in [u64::MAX, u64::MAX - 3, 1 << 40, 2] {
        let mut w = Writer::default();
        w.header(3, 0, 1).string("k").u32(8).u64(len);
        w.bytes.push(b'x');
        match parse_error(&w) {
            GgufError::Truncated { field, needed, available: 1, .. } => {
                assert_eq!((field.as_str(), needed), ("k", len))
            }
            e => panic!("{e:?}"),
        }
    }
    let mut w = Writer::default();
    w.header(3, 0, 1).u64(u64::MAX).u64(0);
    assert!(matches!(parse_error(&w), GgufError::Truncated { field, .. } if field == "metadata key"));

    // Arrays longer than the file, for elements of each minimum size.
    for (element_type, min_bytes) in [(0, 1), (3, 2), (6, 4), (8, 8), (9, 12), (12, 8)] {
        let mut w = Writer::default();
        w.header(3, 0, 1).string("k").u32(9).u32(element_type).u64(1 << 61);
        // The length follows 24 header bytes, the key (8 + 1), the value type and element type (4 + 4).
        let (offset, message) = invalid_at(&w, "k");
        assert_eq!(offset, 24 + 9 + 8, "the offset of the array's length");
        assert!(message.contains(&format!("at least {min_bytes} bytes do not fit")), "{message}");
    }
    let mut w = Writer::default();
    w.header(3, 0, 1).string("k").u32(9).u32(13).u64(0);
    assert!(invalid(&w, "k").contains("unknown element type 13"));

    let mut w = Writer::default();
    w.header(3, 0, 1).string("k").u32(13).u32(0);
    assert!(invalid(&w, "k").contains("unknown value type 13"));

    let mut w = Writer::default();
    w.header(3, 0, 1).string("flag").u32(7);
    w.bytes.push(2);
    assert!(invalid(&w, "flag").contains("bool byte 2 is neither 0 nor 1"));

    // A key that is not UTF-8.
    let mut w = Writer::default();
    w.header(3, 0, 1);
    w.u64(2);
    w.bytes.extend_from_slice(&[0xff, 0xfe]);
    w.u32(4).u32(1);
    assert!(invalid(&w, "metadata key").contains("not UTF-8"));
    // A string value that is not UTF-8.
    let mut w = Writer::default();
    w.header(3, 0, 1).string("s").u32(8).u64(1);
    w.bytes.push(0x80);
    assert!(invalid(&w, "s").contains("not UTF-8"));

    let mut w = Writer::default();
    w.header(3, 0, 2).kv("k", &Value::U8(1)).kv("k", &Value::U8(2));
    assert!(invalid(&w, "metadata key").contains("k appears twice"));

    for alignment in [0u32, 48, 3, u32::MAX] {
        let mut w = Writer::default();
        w.header(3, 0, 2).kv("general.name", &Value::String("x".into()));
        let value_at = w.bytes.len() as u64 + 8 + 17 + 4;
        w.kv("general.alignment", &Value::U32(alignment));
        let (offset, message) = invalid_at(&w, "general.alignment");
        assert!(message.contains("not a positive power of two"), "{message}");
        assert_eq!(offset, value_at, "the offset of the alignment's value");
    }
    // The alignment must be a u32, as llama.cpp requires.
    let mut w = Writer::default();
    w.header(3, 0, 1).kv("general.alignment", &Value::U64(64));
    assert!(invalid(&w, "general.alignment").contains("U64(64)"));
}

/// `levels` arrays nested one inside another, the innermost holding one u8.
fn nested(levels: usize) -> Value {
    (1..levels).fold(Value::Array(vec![Value::U8(7)]), |inner, _| Value::Array(vec![inner]))
}

#[test]
fn arrays_nest_eight_deep_and_no_deeper() {
    for levels in 1..=8 {
        let mut w = Writer::default();
        w.header(3, 0, 1).kv("deep", &nested(levels));
        let file = GgufFile::parse(w.bytes).unwrap_or_else(|e| panic!("{levels} levels: {e}"));
        assert_eq!(file.get("deep"), Some(&nested(levels)));
    }
    for levels in [9, 10, 1000] {
        let mut w = Writer::default();
        w.header(3, 0, 1).kv("deep", &nested(levels));
        assert!(invalid(&w, "deep").contains("arrays nested deeper than 8"), "{levels} levels");
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
    let info = |w: &Writer| invalid(w, "tensor info");
    assert!(GgufFile::parse(tensor_file(&[4, 2], 0, 0, 32).bytes).is_ok());
    assert!(GgufFile::parse(tensor_file(&[4, 2, 1, 1], 0, 0, 32).bytes).is_ok());
    assert!(info(&tensor_file(&[1 << 32, 1 << 32, 1 << 32], 0, 0, 0)).contains("overflow"));
    assert!(info(&tensor_file(&[u64::MAX, 2], 0, 0, 0)).contains("overflow"));
    // The element count fits in u64 but the byte count does not.
    assert!(info(&tensor_file(&[1 << 62], 0, 0, 0)).contains("byte size overflows"));
    assert!(info(&tensor_file(&[1, 1, 1, 1, 1], 0, 0, 4)).contains("t has 5 dimensions (1 to 4)"));
    assert!(info(&tensor_file(&[], 0, 0, 4)).contains("t has 0 dimensions"));
    let mut w = Writer::default();
    w.header(3, 1, 0).string("t").u32(u32::MAX).u64(0).u64(0);
    assert!(info(&w).contains("4294967295 dimensions"));
    assert!(
        info(&tensor_file(&[4, 2], 0, 8, 64)).contains("data offset 8 is not a multiple of the alignment 32")
    );
    assert!(info(&tensor_file(&[48], 8, 0, 64)).contains("not whole Q8_0 blocks"));

    for (dims, offset, data) in [(&[4u64, 2][..], 64, 32), (&[4, 3], 0, 32), (&[4, 2], u64::MAX - 31, 32)] {
        let (at, message) = invalid_at(&tensor_file(dims, 0, offset, data), "data offset of t");
        assert!(message.contains("past the end of the file"), "{message}");
        // After the header, the name (8 + 1), the dimension count, the dims and the type.
        assert_eq!(at, 24 + 9 + 4 + 8 * dims.len() as u64 + 4);
    }

    for id in [4, 5, 10, 40, u32::MAX] {
        let e = parse_error(&tensor_file(&[256], id, 0, 1024));
        let type_at = 24 + 9 + 4 + 8;
        assert!(
            matches!(&e, GgufError::UnsupportedType { name, id: i, offset } if name == "t" && *i == id && *offset == type_at)
        );
        let message = e.to_string();
        assert!(message.contains(&format!("type id {id} at byte {type_at}")), "{message}");
        assert!(
            message.contains("F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, MXFP4"),
            "{message}"
        );
    }

    let mut w = Writer::default();
    w.header(3, 2, 0).tensor("t", &[1], 0, 0).tensor("t", &[1], 0, 32).pad(32);
    w.bytes.extend([0u8; 64]);
    assert!(invalid(&w, "tensor name").contains("t appears twice"));

    // With general.alignment = 64, an offset that is a multiple of 32 only is rejected.
    let mut w = Writer::default();
    w.header(3, 1, 1).kv("general.alignment", &Value::U32(64)).tensor("t", &[8], 0, 32).pad(64);
    w.bytes.extend([0u8; 64]);
    assert!(info(&w).contains("data offset 32 is not a multiple of the alignment 64"));
}

/// Metadata values of every type, arrays of every element type, and arrays of arrays.
fn any_value() -> impl Strategy<Value = Value> {
    let finite_f32 =
        prop::num::f32::NORMAL | prop::num::f32::SUBNORMAL | prop::num::f32::ZERO | prop::num::f32::INFINITE;
    let finite_f64 =
        prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO | prop::num::f64::INFINITE;
    let scalar = prop_oneof![
        any::<u8>().prop_map(Value::U8),
        any::<i8>().prop_map(Value::I8),
        any::<u16>().prop_map(Value::U16),
        any::<i16>().prop_map(Value::I16),
        any::<u32>().prop_map(Value::U32),
        any::<i32>().prop_map(Value::I32),
        finite_f32.prop_map(Value::F32),
        any::<bool>().prop_map(Value::Bool),
        ".{0,12}".prop_map(Value::String),
        any::<u64>().prop_map(Value::U64),
        any::<i64>().prop_map(Value::I64),
        finite_f64.prop_map(Value::F64),
    ];
    // One element type per array: a vector of one scalar type.
    let list = |s: BoxedStrategy<Value>| prop::collection::vec(s, 1..5).prop_map(Value::Array).boxed();
    let arrays = prop_oneof![
        list(any::<u8>().prop_map(Value::U8).boxed()),
        list(any::<i16>().prop_map(Value::I16).boxed()),
        list(any::<i32>().prop_map(Value::I32).boxed()),
        list(any::<bool>().prop_map(Value::Bool).boxed()),
        list(".{0,6}".prop_map(Value::String).boxed()),
        list(any::<u64>().prop_map(Value::U64).boxed()),
        list(finite_f32.prop_map(Value::F32).boxed()),
        Just(Value::Array(vec![])),
    ];
    let arrays =
        arrays.prop_recursive(3, 24, 4, |inner| prop::collection::vec(inner, 1..4).prop_map(Value::Array));
    prop_oneof![scalar, arrays]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever metadata is written is read back, in order, with tensors after it.
    #[test]
    fn random_metadata_round_trips(values in prop::collection::vec((".{0,10}", any_value()), 0..12), rows in 1u64..4) {
        let metadata: Vec<(String, Value)> =
            values.into_iter().enumerate().map(|(i, (key, v))| (format!("{i}.{key}"), v)).collect();
        let mut w = Writer::default();
        w.header(3, 1, metadata.len() as u64);
        for (k, v) in &metadata {
            w.kv(k, v);
        }
        w.tensor("t", &[32, rows], 8, 0).pad(32);
        let start = w.bytes.len();
        w.bytes.extend((0..rows * 34).map(|i| i as u8));
        let file = GgufFile::parse(w.bytes.clone()).unwrap();
        prop_assert_eq!(file.metadata(), &metadata[..]);
        prop_assert_eq!(file.data_offset() as usize, start);
        prop_assert_eq!(file.tensor_data(&file.tensors()[0]), &w.bytes[start..]);
    }
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

    /// Same, for changes confined to the 24-byte header and the first metadata entry, where the
    /// counts and lengths are, and for a cut made as well.
    #[test]
    fn mutated_headers_never_panic(
        changes in prop::collection::vec((0usize..48, any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = valid_file();
        for (i, byte) in changes {
            bytes[i] = byte;
        }
        let len = cut.index(bytes.len() + 1);
        for image in [bytes[..len].to_vec(), bytes] {
            if let Ok(file) = GgufFile::parse(image) {
                for t in file.tensors() {
                    let _ = file.tensor_f32(t);
                }
            }
        }
    }
}

/// The field and limit of a TooLarge error, checking that its text names the field and offset.
fn too_large(w: &Writer) -> (String, u64, String) {
    match parse_error(w) {
        e @ GgufError::TooLarge { .. } => {
            let text = e.to_string();
            let GgufError::TooLarge { field, offset, value, limit } = e else { unreachable!() };
            assert!(
                text.starts_with(&format!("{field} at byte {offset} is {value}, over the limit of")),
                "{text}"
            );
            (field, offset, limit)
        }
        e => panic!("expected TooLarge, got {e:?}"),
    }
}

#[test]
fn hard_limits_reject_hostile_sizes_and_name_the_field() {
    use engine::gguf::{MAX_ARRAY_LEN, MAX_METADATA_VALUES, MAX_NAME_BYTES, MAX_STRING_BYTES, MAX_TENSORS};

    // A string value, a key and a tensor name one byte longer than their limits, their bytes there.
    let mut w = Writer::default();
    w.header(3, 0, 1).string("general.name").u32(8).u64(MAX_STRING_BYTES + 1);
    w.bytes.resize(w.bytes.len() + MAX_STRING_BYTES as usize + 1, b'x');
    assert_eq!(
        too_large(&w),
        ("length of general.name".into(), 24 + 8 + 12 + 4, MAX_STRING_BYTES.to_string())
    );
    let mut w = Writer::default();
    w.header(3, 0, 1).u64(MAX_NAME_BYTES + 1);
    w.bytes.resize(w.bytes.len() + MAX_NAME_BYTES as usize + 16, b'k');
    assert_eq!(too_large(&w), ("length of metadata key".into(), 24, MAX_NAME_BYTES.to_string()));
    let mut w = Writer::default();
    w.header(3, 1, 0).u64(MAX_NAME_BYTES + 1);
    w.bytes.resize(w.bytes.len() + MAX_NAME_BYTES as usize + 32, b't');
    assert_eq!(too_large(&w).0, "length of tensor name");

    // An array one longer than the limit, its bytes all there.
    let array = |w: &mut Writer, key: &str, n: u64| {
        w.string(key).u32(9).u32(0).u64(n);
        w.bytes.resize(w.bytes.len() + n as usize, 0);
    };
    let mut w = Writer::default();
    w.header(3, 0, 1);
    array(&mut w, "a", MAX_ARRAY_LEN + 1);
    let (field, offset, _) = too_large(&w);
    assert_eq!((field.as_str(), offset), ("length of a", 24 + 9 + 4 + 4));
    // Arrays within the limit each, more than the limit together.
    let mut w = Writer::default();
    w.header(3, 0, 3);
    array(&mut w, "a", MAX_ARRAY_LEN);
    array(&mut w, "b", MAX_ARRAY_LEN);
    array(&mut w, "c", MAX_METADATA_VALUES - 2 * MAX_ARRAY_LEN + 1);
    assert_eq!(too_large(&w).0, "array elements in the metadata (at c)");

    // More tensors than the limit, each info's minimum size there.
    let mut w = Writer::default();
    w.header(3, MAX_TENSORS + 1, 0);
    w.bytes.resize(24 + 24 * (MAX_TENSORS as usize + 1), 0);
    assert_eq!(too_large(&w), ("tensor count".into(), 8, MAX_TENSORS.to_string()));

    // Dimensions whose product passes ggml's int64 element count.
    let mut w = Writer::default();
    w.header(3, 1, 0).tensor("t", &[1 << 32, 1 << 31], 0, 0).pad(32);
    assert!(invalid(&w, "tensor info").contains("overflow (more than 9223372036854775807 elements)"));

    // Two tensors, each inside the file, that together claim more than its data section.
    let mut w = Writer::default();
    w.header(3, 2, 0).tensor("a", &[8], 0, 0).tensor("b", &[8], 0, 0).pad(32);
    w.bytes.extend([0u8; 32]);
    let (field, _, limit) = too_large(&w);
    assert_eq!(
        (field.as_str(), limit.as_str()),
        ("tensor data (all tensors together)", "32 bytes (the data section)")
    );
}
