//! GPT-2's byte ↔ character table, used by byte-level BPE files that store tokens as text.
//!
//! Hugging Face `tokenizer.json` and GGUF store each token as a string. A token is a byte
//! sequence, not necessarily valid UTF-8, so GPT-2 maps every byte to a printable character:
//! the printable Latin-1 bytes `!`..`~`, `¡`..`¬`, `®`..`ÿ` stand for themselves, and the other
//! 68 bytes (control characters, space, …) become U+0100, U+0101, … in order. That is why a
//! space shows up as `Ġ` (U+0120) and a newline as `Ċ` (U+010A) in those files.

use std::sync::OnceLock;

/// Whether GPT-2 keeps byte `b` as the character with the same code.
fn keeps(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// The character standing for each byte.
pub fn byte_to_char() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = ['\0'; 256];
        let mut next = 256u32;
        for b in 0..=255u8 {
            table[b as usize] = if keeps(b) {
                char::from(b)
            } else {
                let c = char::from_u32(next).unwrap_or('\u{FFFD}');
                next += 1;
                c
            };
        }
        table
    })
}

/// The byte a character stands for, or `None` if it is not one of the 256.
pub fn char_to_byte(c: char) -> Option<u8> {
    static INVERSE: OnceLock<[Option<u8>; 324]> = OnceLock::new();
    let inverse = INVERSE.get_or_init(|| {
        let mut inv = [None; 324];
        for (b, &c) in byte_to_char().iter().enumerate() {
            inv[c as usize] = Some(b as u8);
        }
        inv
    });
    inverse.get(c as usize).copied().flatten()
}

/// Writes bytes as GPT-2 characters (`b" hi"` → `"Ġhi"`).
pub fn encode_bytes(bytes: &[u8]) -> String {
    let table = byte_to_char();
    bytes.iter().map(|&b| table[b as usize]).collect()
}

/// Reads GPT-2 characters back to bytes; `None` if a character is not in the table.
pub fn decode_str(s: &str) -> Option<Vec<u8>> {
    s.chars().map(char_to_byte).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_all_bytes() {
        let all: Vec<u8> = (0..=255).collect();
        let s = encode_bytes(&all);
        assert_eq!(decode_str(&s), Some(all));
        assert_eq!(encode_bytes(b" \n"), "\u{120}\u{10A}");
    }
}
