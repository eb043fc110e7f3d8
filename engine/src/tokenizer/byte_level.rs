//! GPT-2's byte-to-character table: byte-level BPE vocabularies spell every byte as one printable
//! character, so that a token's text never holds whitespace or control characters.
//!
//! The printable bytes `!`..=`~`, `¡`..=`¬` and `®`..=`ÿ` stand for themselves; the other 68 bytes
//! take the characters from U+0100 up, in byte order (so a space is `Ġ`, U+0120, and `\n` is `Ċ`).

fn stands_for_itself(byte: u8) -> bool {
    matches!(byte, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The byte a character of a byte-level token stands for; `None` for characters outside the table.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let code = c as u32;
    if code < 0x100 {
        let byte = code as u8;
        return stands_for_itself(byte).then_some(byte);
    }
    // The n-th byte (in order) that does not stand for itself is spelled U+0100 + n: those bytes
    // are 0x00..=0x20 (n = 0..=32), 0x7F..=0xA0 (n = 33..=66) and 0xAD (n = 67).
    match code - 0x100 {
        n @ 0..=32 => Some(n as u8),
        n @ 33..=66 => Some((0x7F + n - 33) as u8),
        67 => Some(0xAD),
        _ => None,
    }
}

/// The bytes a byte-level token's text stands for. Characters outside the table (which a
/// well-formed vocabulary does not have) are kept as their own UTF-8.
pub(crate) fn token_text_to_bytes(text: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(text.len());
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => bytes.push(b),
            None => {
                let mut buffer = [0u8; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
            }
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_characters() {
        assert_eq!(char_to_byte('Ġ'), Some(b' '));
        assert_eq!(char_to_byte('Ċ'), Some(b'\n'));
        assert_eq!(char_to_byte('ĉ'), Some(b'\t'));
        assert_eq!(char_to_byte('A'), Some(b'A'));
        assert_eq!(char_to_byte('Ā'), Some(0));
        assert_eq!(char_to_byte('\u{a0}'), None);
    }

    #[test]
    fn every_byte_has_exactly_one_character() {
        let mut seen = [false; 256];
        for code in 0..0x200u32 {
            if let Some(b) = char::from_u32(code).and_then(char_to_byte) {
                assert!(!seen[b as usize], "byte {b} spelled twice");
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
    }
}
