//! The [`Tokenizer`]: a vocabulary, its merge rules, special tokens and a pre-tokenizer, with
//! encoding and decoding.
//!
//! ## How a chunk is encoded
//!
//! After pre-tokenization each chunk is encoded on its own:
//!
//! 1. a one-byte chunk is that byte's token;
//! 2. a chunk that is itself a token is that token (tiktoken's rule, Hugging Face's
//!    `ignore_merges`; it is also what makes encoding fast: most chunks are whole words);
//! 3. otherwise start from one token per byte and repeatedly merge the adjacent pair with the
//!    lowest rank, the leftmost one if several share it, until no adjacent pair can merge.
//!
//! Step 3 keeps the chunk as a linked list of symbols and every mergeable adjacent pair in a
//! min-heap keyed by (rank, position). A merge changes only its two neighbours' pairs, so it
//! pushes at most two new entries; entries made stale by earlier merges are recognised and
//! dropped when popped ("lazy deletion"). That is O(n log n) per chunk instead of the
//! O(n²) of rescanning the chunk after every merge. Chunks that need step 3 are also cached
//! for the rest of the call, since the same word comes back again and again.
//!
//! ## Two kinds of merge rules
//!
//! * **listed merges** (yuanli, Hugging Face, GGUF): only the pairs in the merge list merge,
//!   and a pair's rank is its position in the list;
//! * **ranks** (tiktoken files): there is no merge list; any two adjacent tokens whose
//!   concatenation is a token merge, and the rank is that token's rank (its id).
//!
//! Both become one table `(left id, right id) → (rank, merged id)`, so the encoder is the same.

use crate::error::{Result, TokenizerError};
use crate::pretokenize::{cut_at_lines, Pattern, Splitter};
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub mod spm;

/// What to do with special-token strings (such as `<|endoftext|>`) found in the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecialMode {
    /// Encode them as their special ids.
    Allow,
    /// Fail with [`TokenizerError::SpecialNotAllowed`] naming the special found.
    Reject,
    /// Treat them as ordinary text (encode their characters like any other).
    AsText,
}

/// One rule of the merge table: the rank of a pair and the token it merges into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Merge {
    pub(crate) rank: u32,
    pub(crate) id: u32,
}

#[inline]
fn pair_key(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

/// Marks a byte that has no token of its own in [`Tokenizer::byte_ids`].
pub const NO_TOKEN: u32 = u32::MAX;

/// A byte-level BPE tokenizer. Build one by training ([`crate::train`]) or by loading a file
/// ([`crate::formats`]); cheap to share across threads (`&Tokenizer` is all encoding needs).
#[derive(Clone, Debug)]
pub struct Tokenizer {
    splitter: Splitter,
    /// Bytes of every id (a special's bytes are its text).
    tokens: Vec<Vec<u8>>,
    /// Whether each id is a special token.
    special: Vec<bool>,
    /// Ordinary tokens: bytes → id.
    encoder: FxHashMap<Vec<u8>, u32>,
    /// The token of each single byte ([`NO_TOKEN`] for a byte the vocabulary lacks).
    byte_ids: [u32; 256],
    /// (left, right) → (rank, merged id).
    merges: FxHashMap<u64, Merge>,
    /// The merge list in rank order, when the rules are listed merges.
    merge_list: Option<Vec<(u32, u32)>>,
    /// Special tokens, longest first (so a special that is a prefix of another loses).
    specials: Vec<(String, u32)>,
    /// Step 2 of encoding: a chunk that is a token is encoded as that token.
    ignore_merges: bool,
    /// Set for a SentencePiece-style tokenizer ([`Tokenizer::from_spm`]), which encodes by
    /// piece scores instead of the merge table.
    spm: Option<Box<spm::Spm>>,
}

impl Tokenizer {
    // -----------------------------------------------------------------------------------------
    // Construction
    // -----------------------------------------------------------------------------------------

    /// The layout yuanli's trainer produces: ids 0..=255 are the bytes 0..=255, and merge `i`
    /// (a pair of earlier ids) creates id `256 + i`. Specials take the ids given with them.
    pub fn from_merges(merges: &[(u32, u32)], pattern: Pattern, specials: &[(String, u32)]) -> Result<Tokenizer> {
        let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for (i, &(a, b)) in merges.iter().enumerate() {
            let new_id = 256 + i;
            let (Some(left), Some(right)) = (tokens.get(a as usize), tokens.get(b as usize)) else {
                return Err(TokenizerError::Invalid(format!(
                    "merge {i} ({a}, {b}) uses an id that is not defined before it (< {new_id})"
                )));
            };
            let joined = [left.as_slice(), right.as_slice()].concat();
            tokens.push(joined);
        }
        let ordinary = tokens.into_iter().map(Some).collect();
        Tokenizer::from_vocab_merges(ordinary, merges.to_vec(), pattern, specials)
    }

    /// Listed merges over an arbitrary vocabulary (Hugging Face, GGUF): `vocab[id]` is the
    /// bytes of ordinary token `id` (`None` for ids that only specials use), `merges` are
    /// pairs of ids in rank order, each merging into the token of their concatenated bytes.
    pub fn from_vocab_merges(
        vocab: Vec<Option<Vec<u8>>>,
        merges: Vec<(u32, u32)>,
        pattern: Pattern,
        specials: &[(String, u32)],
    ) -> Result<Tokenizer> {
        let mut t = Tokenizer::assemble(vocab, pattern, specials)?;
        let mut table = FxHashMap::default();
        table.reserve(merges.len());
        for (rank, &(a, b)) in merges.iter().enumerate() {
            let joined = match (t.ordinary_bytes(a), t.ordinary_bytes(b)) {
                (Some(x), Some(y)) => [x, y].concat(),
                _ => {
                    return Err(TokenizerError::Invalid(format!(
                        "merge {rank} ({a}, {b}) names an id that is not an ordinary token"
                    )))
                }
            };
            let Some(&id) = t.encoder.get(&joined) else {
                return Err(TokenizerError::Invalid(format!(
                    "merge {rank} ({a}, {b}) gives {:?}, which is not in the vocabulary",
                    String::from_utf8_lossy(&joined)
                )));
            };
            // The first (lowest-rank) rule for a pair wins, as in Hugging Face.
            table.entry(pair_key(a, b)).or_insert(Merge { rank: rank as u32, id });
        }
        t.merges = table;
        t.merge_list = Some(merges);
        Ok(t)
    }

    /// tiktoken's semantics: `ranks[r]` is the bytes of the token with rank (and id) `r`; any
    /// two adjacent tokens whose concatenation is a token may merge, lowest rank first.
    pub fn from_ranks(ranks: Vec<Vec<u8>>, pattern: Pattern, specials: &[(String, u32)]) -> Result<Tokenizer> {
        let mut t = Tokenizer::assemble(ranks.into_iter().map(Some).collect(), pattern, specials)?;
        // Every way of cutting a token into two tokens is a merge rule to it.
        let mut table = FxHashMap::default();
        for (id, bytes) in t.tokens.iter().enumerate() {
            if t.special[id] || bytes.len() < 2 {
                continue;
            }
            for cut in 1..bytes.len() {
                if let (Some(&a), Some(&b)) = (t.encoder.get(&bytes[..cut]), t.encoder.get(&bytes[cut..])) {
                    let m = Merge { rank: id as u32, id: id as u32 };
                    table.insert(pair_key(a, b), m);
                }
            }
        }
        t.merges = table;
        t.merge_list = None;
        Ok(t)
    }

    /// Checks the vocabulary and specials and builds everything except the merge table.
    fn assemble(vocab: Vec<Option<Vec<u8>>>, pattern: Pattern, specials: &[(String, u32)]) -> Result<Tokenizer> {
        let splitter = Splitter::new(pattern)?;
        // ids are dense, so no id can exceed the number of tokens (this also guards the
        // allocation below against a huge id in a file)
        let limit = vocab.len() + specials.len();
        if let Some((name, id)) = specials.iter().find(|s| s.1 as usize >= limit) {
            return Err(TokenizerError::Invalid(format!(
                "special token {name:?} has id {id}, beyond the {limit} ids this vocabulary can have                  (ids must run from 0 without gaps)"
            )));
        }
        let max_special = specials.iter().map(|s| s.1 as usize + 1).max().unwrap_or(0);
        let n = vocab.len().max(max_special);
        let mut tokens: Vec<Option<Vec<u8>>> = vocab;
        tokens.resize(n, None);
        let mut special = vec![false; n];
        for (name, id) in specials {
            if name.is_empty() {
                return Err(TokenizerError::Invalid("a special token is empty".into()));
            }
            let slot = &mut tokens[*id as usize];
            if slot.is_some() && !special[*id as usize] {
                return Err(TokenizerError::Invalid(format!(
                    "special token {name:?} has id {id}, which an ordinary token already has"
                )));
            }
            if special[*id as usize] {
                return Err(TokenizerError::Invalid(format!("two special tokens have id {id}")));
            }
            *slot = Some(name.as_bytes().to_vec());
            special[*id as usize] = true;
        }
        let mut encoder = FxHashMap::default();
        encoder.reserve(n);
        let mut dense = Vec::with_capacity(n);
        for (id, tok) in tokens.into_iter().enumerate() {
            let Some(bytes) = tok else {
                return Err(TokenizerError::Invalid(format!(
                    "id {id} has no token (ids must run from 0 without gaps)"
                )));
            };
            if !special[id] && encoder.insert(bytes.clone(), id as u32).is_some() {
                return Err(TokenizerError::Invalid(format!(
                    "the bytes {:?} appear twice in the vocabulary (second time as id {id})",
                    String::from_utf8_lossy(&bytes)
                )));
            }
            dense.push(bytes);
        }
        // Some real vocabularies lack a few bytes (SmolLM2 has no token for 0x04 or for bytes
        // that never occur in UTF-8); such bytes cannot be encoded and are dropped, as
        // llama.cpp drops them.
        let mut byte_ids = [NO_TOKEN; 256];
        for b in 0..=255u8 {
            if let Some(&id) = encoder.get(&[b][..]) {
                byte_ids[b as usize] = id;
            }
        }
        let mut specials: Vec<(String, u32)> = specials.to_vec();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        Ok(Tokenizer {
            splitter,
            tokens: dense,
            special,
            encoder,
            byte_ids,
            merges: FxHashMap::default(),
            merge_list: None,
            specials,
            ignore_merges: true,
            spm: None,
        })
    }

    /// Registers more special tokens, each with an explicit id that must be the next free id
    /// (so `<|im_start|>` = 50257 and `<|im_end|>` = 50258 on top of GPT-2, say).
    pub fn add_specials(&mut self, specials: &[(String, u32)]) -> Result<()> {
        for (name, id) in specials {
            let next = self.tokens.len() as u32;
            if *id != next {
                return Err(TokenizerError::Invalid(format!(
                    "special token {name:?} asks for id {id}, but the next free id is {next}"
                )));
            }
            if name.is_empty() || self.special_id(name).is_some() {
                return Err(TokenizerError::Invalid(format!("special token {name:?} is empty or already registered")));
            }
            self.tokens.push(name.as_bytes().to_vec());
            self.special.push(true);
            self.specials.push((name.clone(), *id));
        }
        self.specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        Ok(())
    }

    /// Turns step 2 of encoding (a chunk that is a token is that token) on or off. On by
    /// default (tiktoken always does it); Hugging Face files say which in `ignore_merges`.
    pub fn set_ignore_merges(&mut self, on: bool) {
        self.ignore_merges = on;
    }

    // -----------------------------------------------------------------------------------------
    // Inspection
    // -----------------------------------------------------------------------------------------

    /// Number of ids (ordinary tokens and specials).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The pre-tokenization pattern.
    pub fn pattern(&self) -> &Pattern {
        self.splitter.pattern()
    }

    /// The pre-tokenizer.
    pub fn splitter(&self) -> &Splitter {
        &self.splitter
    }

    /// The special tokens and their ids (longest first).
    pub fn specials(&self) -> &[(String, u32)] {
        &self.specials
    }

    /// The id of a special token.
    pub fn special_id(&self, name: &str) -> Option<u32> {
        self.specials.iter().find(|s| s.0 == name).map(|s| s.1)
    }

    /// Whether `id` is a special token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The bytes of a token (a special's bytes are its text).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.tokens.get(id as usize).map(Vec::as_slice)
    }

    fn ordinary_bytes(&self, id: u32) -> Option<&[u8]> {
        if self.is_special(id) {
            None
        } else {
            self.token_bytes(id)
        }
    }

    /// The id of an ordinary token given its bytes.
    pub fn token_id(&self, bytes: &[u8]) -> Option<u32> {
        self.encoder.get(bytes).copied()
    }

    /// The id of each single byte.
    pub fn byte_ids(&self) -> &[u32; 256] {
        &self.byte_ids
    }

    /// The merge list in rank order, if this tokenizer has one (tiktoken files have ranks
    /// instead of merges).
    pub fn merge_list(&self) -> Option<&[(u32, u32)]> {
        self.merge_list.as_deref()
    }

    /// A merge list equivalent to this tokenizer's rules: the stored list if there is one;
    /// for a tiktoken (ranks) tokenizer, the merges recovered from the ranks: token `t` is
    /// the merge of the two tokens that encoding its bytes with only the ranks below `t`'s
    /// ends with. `None` if some token does not end as exactly two (then no merge list can
    /// reproduce the ranks). This is what lets GPT-2's `.tiktoken` file be saved as a
    /// `tokenizer.json`.
    pub fn recover_merges(&self) -> Option<Vec<(u32, u32)>> {
        if let Some(list) = &self.merge_list {
            return Some(list.clone());
        }
        // in a ranks tokenizer the rank of a token is its id, so ids are in rank order
        let ids: Vec<u32> = (0..self.tokens.len() as u32)
            .filter(|&id| !self.is_special(id) && self.tokens[id as usize].len() >= 2)
            .collect();
        let mut work = Work::default();
        let mut parts = Vec::new();
        let mut list = Vec::with_capacity(ids.len());
        for id in ids {
            parts.clear();
            self.bpe(&self.tokens[id as usize], id, &mut work, &mut parts);
            match parts[..] {
                [a, b] => list.push((a, b)),
                _ => return None,
            }
        }
        Some(list)
    }

    /// Whether step 2 of encoding (whole-chunk lookup) is on.
    pub fn ignore_merges(&self) -> bool {
        self.ignore_merges
    }

    /// Whether ids 0..=255 are the bytes 0..=255 and merge `i` makes id `256 + i` — the layout
    /// yuanli's own file format stores.
    pub fn has_yuanli_layout(&self) -> bool {
        let Some(list) = &self.merge_list else {
            return false;
        };
        let n_ordinary = self.special.iter().filter(|s| !**s).count();
        self.byte_ids.iter().enumerate().all(|(b, &id)| id as usize == b)
            && n_ordinary == 256 + list.len()
            && list
                .iter()
                .enumerate()
                .all(|(i, &(a, b))| self.merges.get(&pair_key(a, b)).map(|m| m.id as usize) == Some(256 + i))
    }

    // -----------------------------------------------------------------------------------------
    // Encoding
    // -----------------------------------------------------------------------------------------

    /// Encodes text, treating special-token strings as ordinary text.
    pub fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>> {
        if self.spm.is_some() {
            return self.encode(text, SpecialMode::AsText);
        }
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        ChunkEncoder::new(self).encode_text(text, &mut out)?;
        Ok(out)
    }

    /// Encodes text; `mode` says what to do with special-token strings in it.
    pub fn encode(&self, text: &str, mode: SpecialMode) -> Result<Vec<u32>> {
        self.encode_with(&mut ChunkEncoder::new(self), text, mode)
    }

    /// [`Tokenizer::encode`] with a given chunk encoder (and so its cache).
    fn encode_with<'a>(&self, enc: &mut ChunkEncoder<'_, 'a>, text: &'a str, mode: SpecialMode) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        if let Some(spm) = &self.spm {
            spm.encode(self, text, mode, &mut out)?;
            return Ok(out);
        }
        if mode == SpecialMode::AsText || self.specials.is_empty() {
            enc.encode_text(text, &mut out)?;
            return Ok(out);
        }
        let mut finder = SpecialFinder::new(&self.specials);
        let mut pos = 0;
        while let Some((start, k)) = finder.next(text, pos) {
            let (name, id) = &self.specials[k];
            if mode == SpecialMode::Reject {
                return Err(TokenizerError::SpecialNotAllowed { token: name.clone(), offset: start });
            }
            enc.encode_text(&text[pos..start], &mut out)?;
            out.push(*id);
            pos = start + name.len();
        }
        enc.encode_text(&text[pos..], &mut out)?;
        Ok(out)
    }

    /// Encodes many texts on the current rayon pool. Each worker keeps one chunk cache for
    /// all the texts it encodes, so words seen in one text are not merged again in the next.
    pub fn encode_batch(&self, texts: &[&str], mode: SpecialMode) -> Result<Vec<Vec<u32>>> {
        texts.par_iter().map_init(|| ChunkEncoder::new(self), |enc, t| self.encode_with(enc, t, mode)).collect()
    }

    /// Encodes one large text on the current rayon pool by cutting it at line starts where
    /// no chunk can cross (built-in patterns only; other patterns encode on one thread).
    /// Gives exactly [`Tokenizer::encode_ordinary`]'s ids.
    pub fn encode_ordinary_parallel(&self, text: &str) -> Result<Vec<u32>> {
        let threads = rayon::current_num_threads();
        if threads == 1 || self.spm.is_some() || !self.pattern().splits_after_newline() || text.len() < 1 << 16 {
            return self.encode_ordinary(text);
        }
        let pieces = cut_at_lines(text, threads * 4);
        let parts: Vec<Vec<u32>> = pieces.par_iter().map(|p| self.encode_ordinary(p)).collect::<Result<_>>()?;
        Ok(parts.concat())
    }

    // ANCHOR: bpe
    /// Applies the merge rules to one chunk that is not a token itself (step 3 above), using
    /// only rules of rank below `below` (`u32::MAX`: all of them).
    fn bpe(&self, chunk: &[u8], below: u32, work: &mut Work, out: &mut Vec<u32>) {
        const NONE: u32 = u32::MAX;
        let rule = |a: u32, b: u32| self.merges.get(&pair_key(a, b)).copied().filter(|m| m.rank < below);
        let n = chunk.len();
        let syms = &mut work.syms;
        let heap = &mut work.heap;
        syms.clear();
        heap.clear();
        for (i, &b) in chunk.iter().enumerate() {
            syms.push(Sym {
                id: self.byte_ids[b as usize],
                prev: if i == 0 { NONE } else { i as u32 - 1 },
                next: if i + 1 == n { NONE } else { i as u32 + 1 },
            });
        }
        for i in 0..n.saturating_sub(1) {
            if let Some(m) = rule(syms[i].id, syms[i + 1].id) {
                heap.push(Reverse(pair_key(m.rank, i as u32)));
            }
        }
        while let Some(Reverse(key)) = heap.pop() {
            let rank = (key >> 32) as u32;
            let pos = key as u32 as usize;
            let s = syms[pos];
            if s.id == NONE || s.next == NONE {
                continue; // this symbol was merged away, or has nothing on its right now
            }
            let right = s.next as usize;
            let Some(m) = rule(s.id, syms[right].id) else {
                continue;
            };
            if m.rank != rank {
                continue; // stale: the pair at `pos` has changed since this entry was pushed
            }
            // merge `pos` and `right` into `pos`
            let after = syms[right].next;
            syms[pos].id = m.id;
            syms[pos].next = after;
            syms[right].id = NONE;
            if after != NONE {
                syms[after as usize].prev = pos as u32;
                if let Some(m2) = rule(m.id, syms[after as usize].id) {
                    heap.push(Reverse(pair_key(m2.rank, pos as u32)));
                }
            }
            if s.prev != NONE {
                let p = s.prev as usize;
                if let Some(m2) = rule(syms[p].id, m.id) {
                    heap.push(Reverse(pair_key(m2.rank, p as u32)));
                }
            }
        }
        let mut i = 0u32;
        while i != NONE {
            out.push(syms[i as usize].id);
            i = syms[i as usize].next;
        }
    }

    // ANCHOR_END: bpe

    // -----------------------------------------------------------------------------------------
    // Decoding
    // -----------------------------------------------------------------------------------------

    /// The bytes of a sequence of ids (specials decode to their text).
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            match self.tokens.get(id as usize) {
                Some(b) => out.extend_from_slice(b),
                None => return Err(TokenizerError::UnknownId { id, vocab_size: self.tokens.len() }),
            }
        }
        Ok(out)
    }

    /// Decodes ids to text; bytes that are not valid UTF-8 are an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes = self.decode_bytes(ids)?;
        String::from_utf8(bytes).map_err(|e| TokenizerError::InvalidUtf8 { offset: e.utf8_error().valid_up_to() })
    }

    /// Decodes ids to text, replacing invalid UTF-8 with U+FFFD.
    pub fn decode_lossy(&self, ids: &[u32]) -> Result<String> {
        let bytes = self.decode_bytes(ids)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A decoder for generation: feed it one id at a time, get back text only when whole
    /// UTF-8 characters are complete.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder { tokenizer: self, pending: Vec::new() }
    }
}

/// Finds special tokens in a text, remembering where each one occurs next so that a text
/// with many specials is still scanned about once per special.
struct SpecialFinder<'s> {
    specials: &'s [(String, u32)],
    /// Next occurrence of each special at or after the last search start (`usize::MAX`: none).
    next_at: Vec<Option<usize>>,
}

impl<'s> SpecialFinder<'s> {
    fn new(specials: &'s [(String, u32)]) -> Self {
        SpecialFinder { specials, next_at: vec![None; specials.len()] }
    }

    /// The first special at or after byte `from`: (its start, its index). Specials are sorted
    /// longest first, so when two start at the same byte the longer one wins.
    fn next(&mut self, text: &str, from: usize) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize)> = None;
        for (k, (name, _)) in self.specials.iter().enumerate() {
            let at = match self.next_at[k] {
                Some(at) if at >= from => at,
                _ => {
                    let found = text[from..].find(name.as_str()).map_or(usize::MAX, |i| from + i);
                    self.next_at[k] = Some(found);
                    found
                }
            };
            if at != usize::MAX && best.is_none_or(|b| at < b.0) {
                best = Some((at, k));
            }
        }
        best
    }
}

/// One symbol of a chunk being merged: a token id in a doubly linked list.
#[derive(Clone, Copy, Debug)]
struct Sym {
    id: u32,
    prev: u32,
    next: u32,
}

/// Scratch space reused from chunk to chunk.
#[derive(Default)]
struct Work {
    syms: Vec<Sym>,
    heap: BinaryHeap<Reverse<u64>>,
}

/// Encodes the chunks of texts, with a cache of the chunks that needed merging.
struct ChunkEncoder<'t, 'a> {
    tok: &'t Tokenizer,
    work: Work,
    /// chunk → (start, len) in `store`
    cache: FxHashMap<&'a [u8], (u32, u32)>,
    store: Vec<u32>,
}

impl<'t, 'a> ChunkEncoder<'t, 'a> {
    fn new(tok: &'t Tokenizer) -> Self {
        ChunkEncoder { tok, work: Work::default(), cache: FxHashMap::default(), store: Vec::new() }
    }

    fn encode_text(&mut self, text: &'a str, out: &mut Vec<u32>) -> Result<()> {
        let tok = self.tok;
        tok.splitter.for_each_chunk(text, |chunk| self.encode_chunk(chunk.as_bytes(), out))
    }

    #[inline]
    fn encode_chunk(&mut self, chunk: &'a [u8], out: &mut Vec<u32>) {
        let tok = self.tok;
        if chunk.iter().any(|&b| tok.byte_ids[b as usize] == NO_TOKEN) {
            // Bytes the vocabulary lacks are dropped; the runs between them encode as usual.
            for run in chunk.split(|&b| tok.byte_ids[b as usize] == NO_TOKEN).filter(|r| !r.is_empty()) {
                self.encode_chunk(run, out);
            }
            return;
        }
        if chunk.len() == 1 {
            out.push(tok.byte_ids[chunk[0] as usize]);
            return;
        }
        if tok.ignore_merges {
            if let Some(&id) = tok.encoder.get(chunk) {
                out.push(id);
                return;
            }
        }
        if let Some(&(start, len)) = self.cache.get(chunk) {
            out.extend_from_slice(&self.store[start as usize..(start + len) as usize]);
            return;
        }
        let before = out.len();
        tok.bpe(chunk, u32::MAX, &mut self.work, out);
        let start = self.store.len() as u32;
        self.store.extend_from_slice(&out[before..]);
        self.cache.insert(chunk, (start, (out.len() - before) as u32));
    }
}

/// Incremental decoder (see [`Tokenizer::stream_decoder`]). A token may end in the middle
/// of a multi-byte character (GPT-2 splits many CJK characters and emoji over two or three
/// tokens); the decoder holds such bytes back until the character is complete.
#[derive(Debug)]
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    pending: Vec<u8>,
}

impl StreamDecoder<'_> {
    /// Adds one token; returns the text that became complete (possibly empty). Bytes that can
    /// never become valid UTF-8 come out as U+FFFD.
    pub fn push(&mut self, id: u32) -> Result<String> {
        let bytes = self
            .tokenizer
            .token_bytes(id)
            .ok_or(TokenizerError::UnknownId { id, vocab_size: self.tokenizer.vocab_size() })?;
        self.pending.extend_from_slice(bytes);
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    text.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    // the prefix is valid UTF-8 by the error's own account
                    text.push_str(&String::from_utf8_lossy(&self.pending[..good]));
                    match e.error_len() {
                        // incomplete character at the end: wait for more bytes
                        None => {
                            self.pending.drain(..good);
                            break;
                        }
                        // invalid bytes: replace them and go on
                        Some(bad) => {
                            text.push('\u{FFFD}');
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
        Ok(text)
    }

    /// Ends the stream: any bytes still held (an unfinished character) come out as U+FFFD.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
