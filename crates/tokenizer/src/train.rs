//! Training a byte-level BPE vocabulary.
//!
//! The algorithm, in words:
//!
//! 1. **Pre-tokenize** every text with the pattern and **count each distinct chunk once**
//!    with its frequency (Shakespeare's 5 MB: 1.36 million chunks, 36 351 distinct). This runs
//!    on all threads.
//! 2. Every chunk starts as its bytes: token ids 0..=255.
//! 3. **Count adjacent pairs** over all chunks, each weighted by its chunk's frequency.
//! 4. **Merge the most frequent pair** `(a, b)` into a new token `256 + i` everywhere
//!    (left to right inside a chunk, so `a a a` with `(a, a)` becomes `ab a`), record the
//!    merge, and go back to 3 until the vocabulary has the requested size.
//!
//! **Tie-break rule**: among pairs with the same count, the pair `(a, b)` with the smallest
//! `a`, then the smallest `b` (token ids) wins. Training is deterministic: the same texts and
//! options give the same merges on any number of threads.
//!
//! [`train_merges_reference`] is that loop written as plainly as possible: it recounts every
//! pair after every merge. [`train_merges`] gives the same merges (a test checks it) much
//! faster:
//!
//! * it remembers, for each pair, which chunks contain it, and a merge rewrites only those;
//! * rewriting a chunk updates the pair counts by the few pairs that change around each merge
//!   site (`x a b y` loses `x a`, `a b`, `b y` and gains `x ab`, `ab y`) instead of recounting;
//! * the next pair comes from a max-heap of (count, pair). Counts only ever *fall* for
//!   existing pairs (only pairs with the new token can rise, and those are pushed fresh), so a
//!   heap entry may be stale but never too low: pop the top, and if its count is out of date
//!   push it back with the current count ("lazy refresh"); the first up-to-date top is the
//!   true maximum.

use crate::error::{Result, TokenizerError};
use crate::pretokenize::{cut_at_lines, Pattern, Splitter};
use crate::tokenizer::Tokenizer;
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// What to train.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Size of the final vocabulary: 256 byte tokens + merges + special tokens.
    pub vocab_size: usize,
    /// Pre-tokenization pattern.
    pub pattern: Pattern,
    /// Special tokens, given ids after the last merge, in this order.
    pub specials: Vec<String>,
}

/// Progress of the merge loop, reported to a callback after every merge.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// Merges done so far.
    pub done: usize,
    /// Merges wanted in total.
    pub total: usize,
}

/// A distinct chunk and how often it occurs.
pub type ChunkCount = (Vec<u8>, u64);

/// Step 1: pre-tokenizes `texts` (in parallel) and counts every distinct chunk. The result is
/// sorted by chunk bytes, so it does not depend on the number of threads.
pub fn count_chunks(texts: &[&str], splitter: &Splitter) -> Result<Vec<ChunkCount>> {
    let threads = rayon::current_num_threads();
    let mut pieces: Vec<&str> = Vec::new();
    for text in texts {
        if splitter.pattern().splits_after_newline() && text.len() > 1 << 16 {
            pieces.extend(cut_at_lines(text, threads * 4));
        } else {
            pieces.push(text);
        }
    }
    let counts = pieces
        .par_iter()
        .map(|piece| {
            let mut counts: FxHashMap<&str, u64> = FxHashMap::default();
            splitter.for_each_chunk(piece, |c| *counts.entry(c).or_insert(0) += 1)?;
            Ok(counts)
        })
        .try_reduce(FxHashMap::default, |mut a, b| {
            let (mut big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
            for (k, v) in small {
                *big.entry(k).or_insert(0) += v;
            }
            a = big;
            Ok(a)
        })?;
    let mut out: Vec<ChunkCount> = counts.into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v)).collect();
    out.sort_unstable();
    Ok(out)
}

/// Trains a tokenizer on `texts`; `progress` is called after every merge.
pub fn train(texts: &[&str], opts: &TrainOptions, progress: &mut dyn FnMut(Progress)) -> Result<Tokenizer> {
    let needed = 256 + opts.specials.len();
    if opts.vocab_size < needed {
        return Err(TokenizerError::Invalid(format!(
            "vocab size {} is too small: 256 byte tokens and {} special tokens need {needed}",
            opts.vocab_size,
            opts.specials.len()
        )));
    }
    let splitter = Splitter::new(opts.pattern.clone())?;
    let chunks = count_chunks(texts, &splitter)?;
    let merges = train_merges(&chunks, opts.vocab_size - needed, progress);
    let first_special = 256 + merges.len() as u32;
    let specials: Vec<(String, u32)> =
        opts.specials.iter().enumerate().map(|(i, s)| (s.clone(), first_special + i as u32)).collect();
    Tokenizer::from_merges(&merges, opts.pattern.clone(), &specials)
}

#[inline]
fn key(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

#[inline]
fn unkey(k: u64) -> (u32, u32) {
    ((k >> 32) as u32, k as u32)
}

/// The fast merge loop (steps 2–4) over counted chunks: up to `n_merges` merges, fewer if
/// the chunks run out of pairs. Merge `i` creates token `256 + i`.
pub fn train_merges(chunks: &[ChunkCount], n_merges: usize, progress: &mut dyn FnMut(Progress)) -> Vec<(u32, u32)> {
    let mut words: Vec<Vec<u32>> =
        chunks.iter().map(|(bytes, _)| bytes.iter().map(|&b| u32::from(b)).collect()).collect();
    let freq: Vec<i64> = chunks.iter().map(|c| c.1 as i64).collect();

    // step 3 once: pair → count, and pair → chunks that contain it
    let mut count: FxHashMap<u64, i64> = FxHashMap::default();
    let mut where_: FxHashMap<u64, Vec<u32>> = FxHashMap::default();
    for (w, word) in words.iter().enumerate() {
        for p in word.windows(2) {
            let k = key(p[0], p[1]);
            *count.entry(k).or_insert(0) += freq[w];
            where_.entry(k).or_default().push(w as u32);
        }
    }
    let mut heap: BinaryHeap<(i64, Reverse<u64>)> = count.iter().map(|(&k, &c)| (c, Reverse(k))).collect();

    let mut merges = Vec::with_capacity(n_merges);
    let mut touched: Vec<u64> = Vec::new();
    while merges.len() < n_merges {
        let Some((c, Reverse(k))) = heap.pop() else {
            break;
        };
        let now = count.get(&k).copied().unwrap_or(0);
        if now != c {
            if now > 0 {
                heap.push((now, Reverse(k))); // lazy refresh
            }
            continue;
        }
        let (a, b) = unkey(k);
        let new = 256 + merges.len() as u32;
        merges.push((a, b));

        let mut ws = where_.remove(&k).unwrap_or_default();
        ws.sort_unstable();
        ws.dedup();
        touched.clear();
        for &w in &ws {
            let f = freq[w as usize];
            let word = &mut words[w as usize];
            // Rewrite the chunk in place (read index r, write index o), adjusting counts.
            let n = word.len();
            let (mut r, mut o) = (0, 0);
            while r < n {
                if r + 1 < n && word[r] == a && word[r + 1] == b {
                    if o > 0 {
                        let x = word[o - 1];
                        *count.entry(key(x, a)).or_insert(0) -= f;
                        *count.entry(key(x, new)).or_insert(0) += f;
                        where_.entry(key(x, new)).or_default().push(w);
                        touched.push(key(x, new));
                    }
                    *count.entry(k).or_insert(0) -= f;
                    if r + 2 < n {
                        let y = word[r + 2];
                        *count.entry(key(b, y)).or_insert(0) -= f;
                        *count.entry(key(new, y)).or_insert(0) += f;
                        where_.entry(key(new, y)).or_default().push(w);
                        touched.push(key(new, y));
                    }
                    word[o] = new;
                    r += 2;
                } else {
                    word[o] = word[r];
                    r += 1;
                }
                o += 1;
            }
            word.truncate(o);
        }
        count.remove(&k);
        touched.sort_unstable();
        touched.dedup();
        for &t in &touched {
            if let Some(&c) = count.get(&t) {
                if c > 0 {
                    heap.push((c, Reverse(t)));
                }
            }
        }
        progress(Progress { done: merges.len(), total: n_merges });
    }
    merges
}

// ANCHOR: reference
/// The textbook merge loop: count all pairs, merge the most frequent, repeat. Slow (it
/// recounts everything after every merge) and kept as the reference for [`train_merges`].
pub fn train_merges_reference(chunks: &[ChunkCount], n_merges: usize) -> Vec<(u32, u32)> {
    let mut words: Vec<(Vec<u32>, u64)> =
        chunks.iter().map(|(bytes, f)| (bytes.iter().map(|&b| u32::from(b)).collect(), *f)).collect();
    let mut merges = Vec::new();
    for i in 0..n_merges {
        // count every adjacent pair, weighted by chunk frequency
        let mut stats: HashMap<(u32, u32), u64> = HashMap::new();
        for (ids, f) in &words {
            for p in ids.windows(2) {
                *stats.entry((p[0], p[1])).or_insert(0) += f;
            }
        }
        // the most frequent pair; on a tie, the smallest pair
        let Some((&pair, _)) = stats.iter().max_by(|x, y| x.1.cmp(y.1).then(y.0.cmp(x.0))) else {
            break;
        };
        let new = 256 + i as u32;
        for (ids, _) in &mut words {
            *ids = merge_pair(ids, pair, new);
        }
        merges.push(pair);
    }
    merges
}

// ANCHOR_END: reference

/// Replaces every occurrence of `pair` in `ids` by `new`, left to right.
pub fn merge_pair(ids: &[u32], pair: (u32, u32), new: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(ids.len());
    let mut i = 0;
    while i < ids.len() {
        if i + 1 < ids.len() && (ids[i], ids[i + 1]) == pair {
            out.push(new);
            i += 2;
        } else {
            out.push(ids[i]);
            i += 1;
        }
    }
    out
}
