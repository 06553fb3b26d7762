//! SentencePiece-style BPE ("SPM", llama.cpp's `tokenizer.ggml.model = "llama"`): the
//! tokenizer of LLaMA 1/2, Mistral and Gemma.
//!
//! It differs from byte-level BPE in three ways:
//! 1. **No pre-tokenizer regex.** Spaces become `▁` (U+2581) and are part of the pieces
//!    (`▁the`); an optional `▁` goes in front of the text (`add_space_prefix`).
//! 2. **Merges by score.** The text starts as one symbol per character; any two adjacent
//!    symbols whose concatenation is a piece of the vocabulary may merge, and the pair whose
//!    piece has the highest *score* merges first (leftmost on a tie) — there is no merge list.
//! 3. **Byte fallback.** A character that is no piece becomes its UTF-8 bytes as `<0xXX>`
//!    tokens, so any text still encodes.
//!
//! User-defined tokens (Gemma's runs of newlines, spaces and tabs, HTML tags) are cut out of
//! the text first, always; control tokens (`<bos>`, `<start_of_turn>`) only when specials are
//! allowed. This follows llama.cpp's `llm_tokenizer_spm` (checked against it in
//! `crates/models/tests/gemma3.rs`).

use super::{SpecialFinder, Tokenizer, NO_TOKEN};
use crate::error::{Result, TokenizerError};
use rustc_hash::FxHashMap;
use std::collections::BinaryHeap;

/// GGUF's token types (`tokenizer.ggml.token_type`).
pub mod token_type {
    /// An ordinary piece.
    pub const NORMAL: i32 = 1;
    /// The unknown token.
    pub const UNKNOWN: i32 = 2;
    /// A control token (`<bos>`, `<eos>`, chat markers): matched in text only when allowed.
    pub const CONTROL: i32 = 3;
    /// A user-defined token: always matched whole in text.
    pub const USER_DEFINED: i32 = 4;
    /// An unused slot.
    pub const UNUSED: i32 = 5;
    /// A byte `<0xXX>`.
    pub const BYTE: i32 = 6;
}

/// What SentencePiece encoding needs beyond the ids' bytes.
#[derive(Clone, Debug)]
pub(crate) struct Spm {
    /// Piece text as stored (`▁` for a space) → id; every token type, the last id winning.
    pieces: FxHashMap<Vec<u8>, u32>,
    /// Merge priority of each id.
    scores: Vec<f32>,
    /// The `<0xXX>` token of each byte.
    byte_tokens: [u32; 256],
    /// The unknown token, for a byte without a `<0xXX>` token.
    unk: Option<u32>,
    /// Whether a `▁` goes in front of text that starts the input or follows a special.
    add_space_prefix: bool,
    /// The user-defined tokens, longest first: cut out even when specials are not allowed.
    user_defined: Vec<(String, u32)>,
}

const SPACE: &str = "\u{2581}";

/// `<0xXX>` → the byte.
fn byte_of(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Tokenizer {
    /// A SentencePiece-style tokenizer from GGUF's `tokenizer.ggml.tokens`, `scores` and
    /// `token_type` arrays. An id decodes to its piece with `▁` as a space, a byte token to
    /// its byte, a control or user-defined token to its text. Control, user-defined and
    /// unknown tokens are the specials.
    pub fn from_spm(pieces: &[String], scores: &[f32], types: &[i32], add_space_prefix: bool) -> Result<Tokenizer> {
        let n = pieces.len();
        if scores.len() != n || types.len() != n {
            return Err(TokenizerError::Invalid(format!(
                "{n} pieces but {} scores and {} token types",
                scores.len(),
                types.len()
            )));
        }
        if n >= u32::MAX as usize {
            return Err(TokenizerError::Invalid(format!("{n} pieces is too many")));
        }
        let mut tokens = Vec::with_capacity(n);
        let mut special = vec![false; n];
        let mut specials = Vec::new();
        let mut user_defined = Vec::new();
        let mut map = FxHashMap::default();
        map.reserve(n);
        let mut encoder = FxHashMap::default();
        let mut byte_tokens = [NO_TOKEN; 256];
        let mut unk = None;
        for (id, (piece, &ty)) in pieces.iter().zip(types).enumerate() {
            let id32 = id as u32;
            map.insert(piece.as_bytes().to_vec(), id32);
            let bytes = match ty {
                token_type::BYTE => match byte_of(piece) {
                    Some(b) => {
                        byte_tokens[b as usize] = id32;
                        vec![b]
                    }
                    None => return Err(TokenizerError::Invalid(format!("byte token {id} is {piece:?}, not <0xXX>"))),
                },
                token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN if !piece.is_empty() => {
                    special[id] = true;
                    specials.push((piece.clone(), id32));
                    if ty == token_type::USER_DEFINED {
                        user_defined.push((piece.clone(), id32));
                    }
                    if ty == token_type::UNKNOWN || (unk.is_none() && piece == "<unk>") {
                        unk = Some(id32);
                    }
                    piece.as_bytes().to_vec()
                }
                _ => piece.replace(SPACE, " ").into_bytes(),
            };
            if !special[id] {
                encoder.entry(bytes.clone()).or_insert(id32);
            }
            tokens.push(bytes);
        }
        let longest_first =
            |v: &mut Vec<(String, u32)>| v.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        longest_first(&mut specials);
        longest_first(&mut user_defined);
        let spm = Spm { pieces: map, scores: scores.to_vec(), byte_tokens, unk, add_space_prefix, user_defined };
        let mut byte_ids = [NO_TOKEN; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = encoder.get(&[b as u8][..]).copied().unwrap_or(byte_tokens[b]);
        }
        Ok(Tokenizer {
            splitter: crate::Splitter::new(crate::Pattern::Gpt2)?,
            tokens,
            special,
            encoder,
            byte_ids,
            merges: FxHashMap::default(),
            merge_list: None,
            specials,
            ignore_merges: true,
            spm: Some(Box::new(spm)),
        })
    }

    /// Whether this is a SentencePiece-style tokenizer ([`Tokenizer::from_spm`]).
    pub fn is_spm(&self) -> bool {
        self.spm.is_some()
    }
}

/// One pair that may merge: the piece's score, the two symbols, the piece's length.
#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    /// Highest score first; on a tie, the leftmost pair.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// A symbol: a span of the escaped text, in a doubly linked list (`usize::MAX`: none).
#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}

const NONE: usize = usize::MAX;

impl Spm {
    /// Encodes `text` into `out`: specials (all, or only the user-defined ones for
    /// [`crate::SpecialMode::AsText`]) cut out, the text between them merged by score.
    pub(crate) fn encode(
        &self,
        tok: &Tokenizer,
        text: &str,
        mode: crate::SpecialMode,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        let list = if mode == crate::SpecialMode::AsText { &self.user_defined } else { &tok.specials };
        let mut finder = SpecialFinder::new(list);
        let (mut pos, mut after_special) = (0, true);
        while let Some((start, k)) = finder.next(text, pos) {
            let (name, id) = &list[k];
            if mode == crate::SpecialMode::Reject && !self.user_defined.iter().any(|u| u.1 == *id) {
                return Err(TokenizerError::SpecialNotAllowed { token: name.clone(), offset: start });
            }
            if start > pos {
                self.encode_raw(&text[pos..start], after_special, out);
            }
            out.push(*id);
            after_special = true;
            pos = start + name.len();
        }
        if pos < text.len() {
            self.encode_raw(&text[pos..], after_special, out);
        }
        Ok(())
    }

    /// One stretch of text without specials: escape spaces, start from characters, merge the
    /// best-scoring adjacent pair until none is a piece, then emit each symbol's piece (or
    /// its bytes).
    fn encode_raw(&self, text: &str, after_special: bool, out: &mut Vec<u32>) {
        let mut s = String::with_capacity(text.len() + 3 * text.len() / 4 + 3);
        if self.add_space_prefix && after_special {
            s.push_str(SPACE);
        }
        for c in text.chars() {
            if c == ' ' {
                s.push_str(SPACE);
            } else {
                s.push(c);
            }
        }
        let mut syms: Vec<Sym> = Vec::with_capacity(s.len());
        for (i, (start, c)) in s.char_indices().enumerate() {
            syms.push(Sym { start, len: c.len_utf8(), prev: i.wrapping_sub(1), next: i + 1 });
        }
        if let Some(last) = syms.last_mut() {
            last.next = NONE;
        }
        let bytes = s.as_bytes();
        let mut heap = BinaryHeap::new();
        let try_add = |heap: &mut BinaryHeap<Bigram>, syms: &[Sym], left: usize, right: usize| {
            if left == NONE || right == NONE {
                return;
            }
            let size = syms[left].len + syms[right].len;
            let start = syms[left].start;
            if let Some(&id) = self.pieces.get(&bytes[start..start + size]) {
                heap.push(Bigram { score: self.scores[id as usize], left, right, size });
            }
        };
        for i in 1..syms.len() {
            try_add(&mut heap, &syms, i - 1, i);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (syms[b.left], syms[b.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue; // one side was merged away since this pair was pushed
            }
            syms[b.left].len += r.len;
            syms[b.right].len = 0;
            syms[b.left].next = r.next;
            if r.next != NONE {
                syms[r.next].prev = b.left;
            }
            try_add(&mut heap, &syms, l.prev, b.left);
            try_add(&mut heap, &syms, b.left, r.next);
        }
        let mut i = if syms.is_empty() { NONE } else { 0 };
        while i != NONE {
            let sym = syms[i];
            let piece = &bytes[sym.start..sym.start + sym.len];
            match self.pieces.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for &b in piece {
                        match (self.byte_tokens[b as usize], self.unk) {
                            (NO_TOKEN, Some(unk)) => out.push(unk),
                            (NO_TOKEN, None) => {}
                            (id, _) => out.push(id),
                        }
                    }
                }
            }
            i = sym.next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SpecialMode;

    /// A vocabulary where the scores decide: "▁ab" can only form if "ab" merges before "▁a".
    fn tiny(add_space_prefix: bool) -> Tokenizer {
        let pieces: Vec<String> =
            ["<unk>", "<s>", "\n\n", "<0x41>", "<0xC3>", "<0xA9>", "▁", "a", "b", "ab", "▁a", "▁ab", "c"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let scores = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -0.5, -0.7, -0.2, -4.0];
        let types = [2, 3, 4, 6, 6, 6, 1, 1, 1, 1, 1, 1, 1];
        Tokenizer::from_spm(&pieces, &scores, &types, add_space_prefix).unwrap()
    }

    #[test]
    fn merges_by_score_with_byte_fallback_and_specials() {
        let t = tiny(false);
        // "ab" (-0.5) merges before "▁a" (-0.7), then "▁" + "ab" = "▁ab".
        assert_eq!(t.encode(" ab", SpecialMode::Allow).unwrap(), vec![11]);
        // "é" is no piece: its two UTF-8 bytes; "A" has only a byte token.
        assert_eq!(t.encode("cé", SpecialMode::Allow).unwrap(), vec![12, 4, 5]);
        assert_eq!(t.encode("A", SpecialMode::Allow).unwrap(), vec![3]);
        // a character with neither a piece nor byte tokens becomes <unk>, once per byte
        assert_eq!(t.encode("\u{1}", SpecialMode::Allow).unwrap(), vec![0]);
        // user-defined "\n\n" is cut out always; control "<s>" only when allowed
        assert_eq!(t.encode("a\n\n<s>", SpecialMode::Allow).unwrap(), vec![7, 2, 1]);
        let as_text = t.encode("a\n\n<s>", SpecialMode::AsText).unwrap();
        assert_eq!(&as_text[..2], &[7, 2]);
        assert!(!as_text.contains(&1));
        assert!(t.encode("<s>", SpecialMode::Reject).is_err());
        // decoding: ▁ is a space, byte tokens are bytes
        assert_eq!(t.decode(&[11, 12, 4, 5]).unwrap(), " abcé");
    }

    #[test]
    fn space_prefix_goes_before_text_that_starts_or_follows_a_special() {
        let t = tiny(true);
        assert_eq!(t.encode("ab", SpecialMode::Allow).unwrap(), vec![11]);
        assert_eq!(t.encode("<s>ab", SpecialMode::Allow).unwrap(), vec![1, 11]);
    }
}
