//! Pre-tokenization: cutting text into chunks before BPE sees it.
//!
//! BPE never merges across chunk boundaries, so the pattern decides what a token *can* be:
//! with GPT-2's pattern a token never holds both a letter and a digit, and a space only ever
//! starts a token. The patterns:
//!
//! | name   | regex |
//! | ------ | ----- |
//! | `gpt2` | `'s\|'t\|'re\|'ve\|'m\|'ll\|'d\| ?\p{L}+\| ?\p{N}+\| ?[^\s\p{L}\p{N}]+\|\s+(?!\S)\|\s+` |
//! | `gpt4` | cl100k's pattern (case-insensitive contractions, digits in groups of at most three) |
//! | `smollm` | every digit (`\p{N}`) alone, then GPT-2's regex inside the pieces between (SmolLM2, StarCoder; llama.cpp's `smollm`) |
//! | `none` | no split: the whole text is one chunk |
//! | other  | any regex `fancy-regex` accepts (lookaround and possessive quantifiers included) |
//!
//! The `\s+(?!\S)` alternative needs a lookahead, which the `regex` crate cannot do, so regexes
//! run on `fancy-regex`. GPT-2's pattern is used so much that it also has a hand-written
//! splitter ([`split_gpt2`]), a few times faster than the regex; a test checks that both give
//! the same chunks on every test corpus.

use crate::error::{Result, TokenizerError};
use std::sync::OnceLock;

/// GPT-2's pre-tokenization regex (also r50k/p50k's, and Hugging Face's `ByteLevel`).
pub const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// GPT-4's (cl100k_base) pre-tokenization regex.
pub const GPT4_PATTERN: &str =
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

/// Which pre-tokenization a tokenizer uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// GPT-2's regex ([`GPT2_PATTERN`]), run by the hand-written splitter.
    Gpt2,
    /// GPT-4's regex ([`GPT4_PATTERN`]).
    Gpt4,
    /// Each digit is a chunk of its own; the text between digits is split by GPT-2's regex
    /// (SmolLM2's and StarCoder's pre-tokenizer: Hugging Face `Digits(individual_digits)` then
    /// `ByteLevel`; llama.cpp's `smollm`). Lookaheads stop at the digit: `"a  1"` gives `"a"`,
    /// `"  "`, `"1"`, not `"a"`, `" "`, `" 1"`.
    Smollm,
    /// No split: each text is one chunk.
    None,
    /// A user regex (`fancy-regex` syntax).
    Regex(String),
}

impl Pattern {
    /// Parses a pattern name as the CLI and the yuanli file format write it: `gpt2`, `gpt4`,
    /// `none`, or else a regex. A regex equal to a built-in one becomes that built-in.
    pub fn parse(s: &str) -> Pattern {
        match s {
            "gpt2" => Pattern::Gpt2,
            "gpt4" | "cl100k" => Pattern::Gpt4,
            "smollm" => Pattern::Smollm,
            "none" => Pattern::None,
            _ if s == GPT2_PATTERN => Pattern::Gpt2,
            _ if s == GPT4_PATTERN => Pattern::Gpt4,
            _ => Pattern::Regex(s.to_string()),
        }
    }

    /// The name written to files: `gpt2`, `gpt4`, `none`, or the regex itself.
    pub fn name(&self) -> &str {
        match self {
            Pattern::Gpt2 => "gpt2",
            Pattern::Gpt4 => "gpt4",
            Pattern::Smollm => "smollm",
            Pattern::None => "none",
            Pattern::Regex(r) => r,
        }
    }

    /// The regex source, or `None` for the no-split pattern. For `smollm` this is the second
    /// stage (GPT-2's regex, run between digits).
    pub fn regex(&self) -> Option<&str> {
        match self {
            Pattern::Gpt2 | Pattern::Smollm => Some(GPT2_PATTERN),
            Pattern::Gpt4 => Some(GPT4_PATTERN),
            Pattern::None => None,
            Pattern::Regex(r) => Some(r),
        }
    }

    /// Whether text may be cut after a `\n` between two non-whitespace characters (to count or
    /// encode pieces in parallel) without changing the chunks; see [`cut_at_lines`]. True for
    /// the built-in regexes; unknown (false) for user regexes.
    pub fn splits_after_newline(&self) -> bool {
        matches!(self, Pattern::Gpt2 | Pattern::Gpt4 | Pattern::Smollm)
    }
}

/// A compiled pattern: cuts text into chunks.
#[derive(Clone, Debug)]
pub struct Splitter {
    pattern: Pattern,
    regex: Option<fancy_regex::Regex>,
}

impl Splitter {
    /// Compiles a pattern.
    pub fn new(pattern: Pattern) -> Result<Splitter> {
        let regex = match &pattern {
            Pattern::Gpt2 | Pattern::Smollm | Pattern::None => None,
            p => {
                let src = p.regex().unwrap_or_default();
                Some(compile(src)?)
            }
        };
        Ok(Splitter { pattern, regex })
    }

    /// The pattern this splitter runs.
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }

    /// Calls `f` on each chunk of `text`, in order. The chunks cover the text exactly.
    pub fn for_each_chunk<'a>(&self, text: &'a str, mut f: impl FnMut(&'a str)) -> Result<()> {
        match (&self.pattern, &self.regex) {
            (Pattern::Gpt2, _) => {
                split_gpt2(text, f);
                Ok(())
            }
            (Pattern::Smollm, _) => {
                split_digits_then_gpt2(text, f);
                Ok(())
            }
            (_, Some(re)) => split_regex(re, text, f),
            _ => {
                if !text.is_empty() {
                    f(text);
                }
                Ok(())
            }
        }
    }

    /// The chunks of `text` as a vector (convenient in tests and lessons).
    pub fn chunks<'a>(&self, text: &'a str) -> Result<Vec<&'a str>> {
        let mut out = Vec::new();
        self.for_each_chunk(text, |c| out.push(c))?;
        Ok(out)
    }
}

/// SmolLM2's pre-tokenization: every `\p{N}` character alone; GPT-2's split in between.
pub fn split_digits_then_gpt2<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if c.is_numeric() {
            if i > start {
                split_gpt2(&text[start..i], &mut f);
            }
            let end = i + c.len_utf8();
            f(&text[i..end]);
            start = end;
        }
    }
    if start < text.len() {
        split_gpt2(&text[start..], &mut f);
    }
}

/// Compiles a regex with `fancy-regex`, turning its error into ours.
pub fn compile(src: &str) -> Result<fancy_regex::Regex> {
    fancy_regex::Regex::new(src)
        .map_err(|e| TokenizerError::Pattern { pattern: src.to_string(), problem: e.to_string() })
}

/// Splits with a regex: each match is a chunk. Text between matches (a regex that does not
/// match everything) becomes a chunk of its own, so no byte is ever dropped.
pub fn split_regex<'a>(re: &fancy_regex::Regex, text: &'a str, mut f: impl FnMut(&'a str)) -> Result<()> {
    let mut last = 0;
    for m in re.find_iter(text) {
        let m = m.map_err(|e| TokenizerError::Pattern { pattern: re.as_str().to_string(), problem: e.to_string() })?;
        if m.start() > last {
            f(&text[last..m.start()]);
        }
        if m.end() > m.start() {
            f(m.as_str());
        }
        last = m.end();
    }
    if last < text.len() {
        f(&text[last..]);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The hand-written GPT-2 splitter
// ---------------------------------------------------------------------------------------------

/// Character classes the GPT-2 regex distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// `\p{L}`
    Letter,
    /// `\p{N}`
    Number,
    /// `\s` (Unicode White_Space)
    Space,
    /// everything else: `[^\s\p{L}\p{N}]`
    Other,
}

/// Unicode ranges of `\p{L}`, `\p{N}` and `\s`, taken from `regex-syntax` (the tables
/// `fancy-regex` itself uses, so the hand-written splitter and the regex agree), plus an
/// ASCII lookup table for speed.
struct ClassTables {
    letter: Vec<(u32, u32)>,
    number: Vec<(u32, u32)>,
    space: Vec<(u32, u32)>,
    ascii: [Class; 128],
}

fn unicode_ranges(class: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class as HirClass, HirKind};
    // These three fixed classes always parse; an empty table would only make every
    // character "Other", which the equality test against the regex would catch.
    match regex_syntax::parse(class).map(|h| h.kind().clone()) {
        Ok(HirKind::Class(HirClass::Unicode(c))) => {
            c.ranges().iter().map(|r| (r.start() as u32, r.end() as u32)).collect()
        }
        _ => Vec::new(),
    }
}

fn tables() -> &'static ClassTables {
    static TABLES: OnceLock<ClassTables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let letter = unicode_ranges(r"\p{L}");
        let number = unicode_ranges(r"\p{N}");
        let space = unicode_ranges(r"\s");
        let mut ascii = [Class::Other; 128];
        for (b, slot) in ascii.iter_mut().enumerate() {
            *slot = classify_slow(b as u32, &letter, &number, &space);
        }
        ClassTables { letter, number, space, ascii }
    })
}

fn in_ranges(cp: u32, ranges: &[(u32, u32)]) -> bool {
    ranges
        .binary_search_by(|&(lo, hi)| {
            if hi < cp {
                std::cmp::Ordering::Less
            } else if lo > cp {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

fn classify_slow(cp: u32, l: &[(u32, u32)], n: &[(u32, u32)], s: &[(u32, u32)]) -> Class {
    if in_ranges(cp, l) {
        Class::Letter
    } else if in_ranges(cp, n) {
        Class::Number
    } else if in_ranges(cp, s) {
        Class::Space
    } else {
        Class::Other
    }
}

/// The class of the character starting at byte `i`, and its length in bytes.
#[inline]
fn class_at(t: &ClassTables, s: &str, i: usize) -> (Class, usize) {
    let b = s.as_bytes()[i];
    if b < 128 {
        return (t.ascii[b as usize], 1);
    }
    let c = s[i..].chars().next().unwrap_or('\u{FFFD}');
    (classify_slow(c as u32, &t.letter, &t.number, &t.space), c.len_utf8())
}

/// End of the run of characters of class `class` starting at byte `i`.
#[inline]
fn run_end(t: &ClassTables, s: &str, mut i: usize, class: Class) -> usize {
    while i < s.len() {
        let (c, len) = class_at(t, s, i);
        if c != class {
            break;
        }
        i += len;
    }
    i
}

/// Where the GPT-2 chunk starting at byte `i` ends. This is the regex
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
/// read alternative by alternative, the first that matches wins:
fn gpt2_chunk_end(t: &ClassTables, s: &str, i: usize) -> usize {
    let b = s.as_bytes();
    // 1. the contractions 's 't 're 've 'm 'll 'd (lower case only)
    if b[i] == b'\'' && i + 1 < b.len() {
        match b[i + 1] {
            b's' | b't' | b'm' | b'd' => return i + 2,
            b'r' | b'v' | b'l' if i + 2 < b.len() => {
                let pair = [b[i + 1], b[i + 2]];
                if &pair == b"re" || &pair == b"ve" || &pair == b"ll" {
                    return i + 3;
                }
            }
            _ => {}
        }
    }
    let (class, len) = class_at(t, s, i);
    // 2.–4. an optional space, then a run of letters, of digits, or of "other" characters
    if b[i] == b' ' && i + 1 < b.len() {
        let (next, next_len) = class_at(t, s, i + 1);
        if next != Class::Space {
            return run_end(t, s, i + 1 + next_len, next);
        }
    }
    if class != Class::Space {
        return run_end(t, s, i + len, class);
    }
    // 5. `\s+(?!\S)`: a whitespace run that is not followed by a non-space character; if the
    //    run is followed by one, back off by one character (which leaves a space to start
    //    the next word) — unless that leaves nothing, and then
    // 6. `\s+` takes the single whitespace character.
    let end = run_end(t, s, i + len, Class::Space);
    if end == s.len() {
        return end;
    }
    let last = s[..end].char_indices().next_back().map_or(i, |(k, _)| k);
    if last > i {
        last
    } else {
        end
    }
}

/// Splits `text` with GPT-2's pre-tokenization rules, without a regex engine. Gives exactly
/// the chunks of [`GPT2_PATTERN`] (tested on every test corpus).
pub fn split_gpt2<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    let t = tables();
    let mut i = 0;
    while i < text.len() {
        let end = gpt2_chunk_end(t, text, i);
        f(&text[i..end]);
        i = end;
    }
}

/// Cuts `text` into about `n` pieces at places where no chunk of a pattern with
/// [`Pattern::splits_after_newline`] crosses: right after a `\n` that has a non-whitespace
/// character on both sides. (Not after a run of whitespace such as `\n\n`: at the end of a
/// piece `\s+(?!\S)` would take the whole run, while inside the text it leaves the last
/// `\n` to stand alone.) Used to pre-tokenize one large text on many threads.
pub fn cut_at_lines(text: &str, n: usize) -> Vec<&str> {
    let n = n.max(1);
    let target = text.len() / n + 1;
    let bytes = text.as_bytes();
    let mut pieces = Vec::with_capacity(n + 1);
    let mut start = 0;
    while start < text.len() {
        let mut cut = (start + target).min(text.len());
        // advance to just after a '\n' with a non-whitespace character on either side
        while cut < text.len() {
            if bytes[cut - 1] == b'\n'
                && !text[cut..].starts_with(char::is_whitespace)
                && text[..cut - 1].chars().next_back().is_some_and(|c| !c.is_whitespace())
            {
                break;
            }
            cut += 1;
        }
        pieces.push(&text[start..cut]);
        start = cut;
    }
    pieces
}

#[cfg(test)]
mod tests {

    #[test]
    fn smollm_splits_every_digit_and_stops_lookaheads_at_it() {
        let sp = Splitter::new(Pattern::Smollm).unwrap();
        assert_eq!(sp.chunks("a  1").unwrap(), ["a", "  ", "1"]);
        assert_eq!(sp.chunks("]\n\n1 Clown").unwrap(), ["]", "\n\n", "1", " Clown"]);
        assert_eq!(sp.chunks("year 2024!").unwrap(), ["year", " ", "2", "0", "2", "4", "!"]);
        assert_eq!(sp.chunks("第3章").unwrap(), ["第", "3", "章"]);
        assert_eq!(Pattern::parse("smollm"), Pattern::Smollm);
    }

    use super::*;

    fn both(text: &str) {
        let re = compile(GPT2_PATTERN).expect("GPT-2 pattern compiles");
        let mut want = Vec::new();
        split_regex(&re, text, |c| want.push(c)).expect("regex runs");
        let mut got = Vec::new();
        split_gpt2(text, |c| got.push(c));
        assert_eq!(got, want, "text {text:?}");
    }

    #[test]
    fn hand_written_gpt2_matches_regex_on_tricky_text() {
        for t in [
            "",
            " ",
            "  ",
            "hello world",
            "  hello   world  ",
            "a\n\nb",
            "a \n b",
            "\t\tx",
            "it's we're they've I'm you'll he'd 'S 'sa ''s",
            " 's ?'s",
            "123 4567 x1y2",
            "!!! ?? ...",
            "日本語のテキスト 中文 한국어",
            "👩‍👩‍👧 emoji 🎉!",
            "e\u{301}t\u{301}e\u{301}",
            "שלום עולם مرحبا",
            "\u{a0}\u{a0}x\u{3000}y",
            "end with space ",
            "end with newline\n",
            "<|endoftext|>",
        ] {
            both(t);
        }
    }

    #[test]
    fn cuts_preserve_text() {
        let text = "a b\n c\nd\n\ne\n";
        for n in 1..6 {
            assert_eq!(cut_at_lines(text, n).concat(), text);
        }
    }
}
