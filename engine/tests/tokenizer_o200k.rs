//! The `gpt-4o` pre-tokenizer checked against an independent implementation: OpenAI's o200k_base
//! encoding as `tiktoken-rs` ships it. Its ranks are turned into a GGUF-style vocabulary (tokens
//! spelled byte-level, merges derived from the ranks the way Hugging Face's and llama.cpp's
//! converters do it) and our tokenizer built from that must encode like tiktoken.

use std::collections::HashMap;

use engine::tokenizer::{GgufVocab, Tokenizer};

/// Byte-level spelling (GPT-2's table): printable bytes stand for themselves, the others are
/// U+0100 onwards in byte order. Written out here rather than taken from the engine.
fn spell(bytes: &[u8]) -> String {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = [char::default(); 256];
    let mut next = 0x100;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            b as char
        } else {
            next += 1;
            char::from_u32(next - 1).unwrap()
        };
    }
    bytes.iter().map(|&b| table[b as usize]).collect()
}

/// The two parts a token of rank `rank` is merged from: byte-pair merging of its bytes with only
/// lower ranks stops at exactly two parts.
fn merge_parts<'a>(bytes: &'a [u8], rank: u32, ranks: &HashMap<Vec<u8>, u32>) -> (&'a [u8], &'a [u8]) {
    let mut bounds: Vec<usize> = (0..=bytes.len()).collect();
    loop {
        let best = (0..bounds.len() - 2)
            .filter_map(|i| {
                let r = *ranks.get(&bytes[bounds[i]..bounds[i + 2]])?;
                (r < rank).then_some((r, i))
            })
            .min();
        let Some((_, i)) = best else { break };
        bounds.remove(i + 1);
    }
    assert_eq!(bounds.len(), 3, "rank {rank} is not reachable by merges");
    (&bytes[..bounds[1]], &bytes[bounds[1]..])
}

fn o200k_vocab(bpe: &tiktoken_rs::CoreBPE) -> GgufVocab {
    let mut token_bytes = Vec::new();
    while let Ok(bytes) = bpe.decode_bytes(&[token_bytes.len() as u32]) {
        token_bytes.push(bytes);
    }
    assert!(token_bytes.len() > 199_000, "o200k_base has 199,998 ranks");
    let ranks: HashMap<Vec<u8>, u32> =
        token_bytes.iter().enumerate().map(|(rank, bytes)| (bytes.clone(), rank as u32)).collect();
    let mut merges = Vec::new();
    for (rank, bytes) in token_bytes.iter().enumerate() {
        if bytes.len() >= 2 {
            let (left, right) = merge_parts(bytes, rank as u32, &ranks);
            merges.push(format!("{} {}", spell(left), spell(right)));
        }
    }
    GgufVocab {
        model: "gpt2".into(),
        pre: Some("gpt-4o".into()),
        tokens: token_bytes.iter().map(|b| spell(b)).collect(),
        merges: Some(merges),
        ..GgufVocab::default()
    }
}

#[test]
fn gpt4o_pre_tokenizer_matches_tiktoken_o200k() {
    let bpe = tiktoken_rs::o200k_base().unwrap();
    let tokenizer = Tokenizer::from_gguf_vocab(&o200k_vocab(&bpe)).unwrap();

    let vectors = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/vocab/ggml-vocab-llama-bpe.gguf.inp"
    ))
    .unwrap();
    let mut texts: Vec<&str> = vectors.split("\n__ggml_vocab_test__\n").collect();
    texts.extend([
        "HelloWorld's HTTPServer fooBAR I'LL DON'T we'Re",
        "path/to/file.rs // comment\r\n\r\n\tindented",
        "1234567890 3.14159 1,000,000 -42",
        "fn main() {\n    println!(\"{}\", x);\n}\n",
        "日本語のテキスト、中文文本。 한국어 텍스트",
        "Ünïcödé àçcénts naïve café  Ωμέγα",
        "emoji 👩‍👩‍👧‍👦 flags 🇫🇷🇩🇪 and e\u{301} combining",
        "   leading and trailing   ",
        "\n\n\n",
    ]);
    let mut failures = Vec::new();
    for text in &texts {
        let expected = bpe.encode_ordinary(text);
        let ids = tokenizer.encode(text, false, false).unwrap();
        if ids != expected {
            failures.push(format!("{text:?}\n  tiktoken {expected:?}\n  ours     {ids:?}"));
        }
        assert_eq!(tokenizer.decode(&ids, false), *text);
    }
    println!("o200k: {}/{} encodings match tiktoken", texts.len() - failures.len(), texts.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
