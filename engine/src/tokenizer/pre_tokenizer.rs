//! How text is cut into words before byte-level BPE, by the name GGUF gives it in
//! `tokenizer.ggml.pre`.
//!
//! Each pre-tokenizer is a chain of split regexes. Every regex in turn cuts each piece left by the
//! previous one into the parts it matches and the parts between them, all kept (the `Isolated`
//! behaviour of the `tokenizers` crate's `Split`); the pieces are then byte-level encoded. The
//! regexes are the ones the models' own `tokenizer.json` files use (as catalogued by llama.cpp in
//! `src/llama-vocab.cpp`), since the reference token ids come from those tokenizers.

use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::tokenizer::SplitDelimiterBehavior;

use super::TokenizerError;

/// GPT-2's word regex: contractions, letters, digits and other symbols each with one optional
/// leading space, and runs of whitespace not followed by a word.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama 3 (cl100k-like): case-insensitive contractions, numbers of at most three digits, a
/// leading non-letter glued to a word, newlines kept together.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2: as Llama 3 but every digit on its own.
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// o200k (GPT-4o): words split at lower-to-upper case changes, contractions attached.
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A pre-tokenizer: its split regexes in order, whether a word found whole in the vocabulary is
/// taken as one token without running the merges (`ignore_merges`), and whether BOS is added when
/// the file does not say (both Llama 3's behaviour).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PreTokenizerSpec {
    pub regexes: &'static [&'static str],
    pub ignore_merges: bool,
    pub add_bos: bool,
}

/// The spec for a `tokenizer.ggml.pre` value; `None` (the key absent) reads as `default`.
pub(crate) fn spec_for(pre: Option<&str>) -> Result<PreTokenizerSpec, TokenizerError> {
    let spec = |regexes, llama3| PreTokenizerSpec { regexes, ignore_merges: llama3, add_bos: llama3 };
    Ok(match pre.unwrap_or("default") {
        // llama.cpp's fallback for unrecognised BPE vocabularies: punctuation runs first, then
        // GPT-2's words, then numbers cut into groups of three digits.
        "default" => spec(&[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"], false),
        "gpt-2" | "phi-2" => spec(&[GPT2], false),
        "llama3" | "llama-v3" | "llama-bpe" => spec(&[LLAMA3], true),
        "qwen2" | "deepseek-r1-qwen" => spec(&[QWEN2], false),
        // SmolLM: every digit on its own, then GPT-2's words.
        "smollm" => spec(&[r"\p{N}", GPT2], false),
        "gpt-4o" | "llama4" => spec(&[GPT4O], false),
        other => return Err(TokenizerError::UnknownPreTokenizer(other.to_string())),
    })
}

/// The `tokenizers` pre-tokenizer for `spec`: the split regexes, then GPT-2's byte-to-character
/// mapping (with no regex of its own and no added prefix space).
pub(crate) fn build(spec: &PreTokenizerSpec) -> Result<PreTokenizerWrapper, TokenizerError> {
    let mut steps = Vec::with_capacity(spec.regexes.len() + 1);
    for regex in spec.regexes {
        let split =
            Split::new(SplitPattern::Regex((*regex).to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| TokenizerError::Build(format!("split regex {regex:?}: {e}")))?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)));
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(steps)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    /// The words `pre` cuts `text` into, byte-level spelled (a space is `Ġ`).
    fn words(pre: &str, text: &str) -> Vec<String> {
        let pre_tokenizer = build(&spec_for(Some(pre)).unwrap()).unwrap();
        let mut pretokenized = PreTokenizedString::from(text);
        pre_tokenizer.pre_tokenize(&mut pretokenized).unwrap();
        pretokenized
            .get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(word, _, _)| word.to_string())
            .collect()
    }

    // The vocab test vectors cover gpt-2, llama-bpe and qwen2; these pin the splits of the
    // pre-tokenizers that have no vectors (smollm, gpt-4o, default) and the digit rules.

    #[test]
    fn smollm_splits_every_digit() {
        assert_eq!(words("smollm", "abc 12345 x's"), ["abc", "Ġ", "1", "2", "3", "4", "5", "Ġx", "'s"]);
    }

    #[test]
    fn gpt4o_splits_at_case_changes_and_keeps_contractions() {
        assert_eq!(
            words("gpt-4o", "HelloWorld's 12345 a/b\n\n"),
            ["Hello", "World's", "Ġ", "123", "45", "Ġa", "/b", "ĊĊ"]
        );
        assert_eq!(words("gpt-4o", "HTTPServer"), ["HTTPServer"]);
        assert_eq!(words("gpt-4o", "fooBAR"), ["foo", "BAR"]);
    }

    #[test]
    fn digits_in_groups_of_three_or_one() {
        assert_eq!(words("llama-bpe", "12345"), ["123", "45"]);
        assert_eq!(words("qwen2", "123"), ["1", "2", "3"]);
        assert_eq!(words("gpt-2", "12345"), ["12345"]);
        assert_eq!(words("default", "12345"), ["123", "45"]);
    }

    #[test]
    fn default_isolates_punctuation_runs() {
        assert_eq!(words("default", "a+=b, c"), ["a", "+=", "b", ",", "Ġc"]);
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(matches!(spec_for(Some("no-such-pre")), Err(TokenizerError::UnknownPreTokenizer(_))));
        assert_eq!(spec_for(None).unwrap(), spec_for(Some("default")).unwrap());
    }
}
