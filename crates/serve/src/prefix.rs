//! The prefix cache: full KV blocks kept after their sequence ends, found again by the tokens
//! they hold.
//!
//! A block's key hashes its tokens together with its parent's key, so a key names a whole
//! prefix (block 3's key covers the tokens of blocks 0–3). A new request walks its prompt block
//! by block and starts on the longest chain of cached blocks (sharing them, no copy), then
//! computes only the rest: a system prompt shared by many requests is read once. Each entry
//! also keeps its tokens and its parent block, compared on every hit, so a hash collision can
//! cost a miss but never a wrong answer.
//!
//! The cache holds one reference to each of its blocks ([`Session::retain_block`]). Blocks no
//! sequence uses are evicted least recently used first, when the pool needs room.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use yuanli_models::Session;

struct Entry {
    block: u32,
    parent: Option<u32>,
    tokens: Box<[u32]>,
    used: u64,
}

/// Cached blocks by prefix key.
pub(crate) struct PrefixCache {
    entries: HashMap<u64, Entry>,
    block_size: usize,
    clock: u64,
}

fn key(parent: u64, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: the same prefix gets the same key in every run.
    let mut h = std::hash::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

const ROOT: u64 = 0x9e37_79b9_7f4a_7c15;

impl PrefixCache {
    pub(crate) fn new(block_size: usize) -> Self {
        PrefixCache { entries: HashMap::new(), block_size: block_size.max(1), clock: 0 }
    }

    /// Blocks cached.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The cached blocks holding the longest prefix of `ids[..limit]` made of full blocks.
    pub(crate) fn lookup(&mut self, ids: &[u32], limit: usize) -> Vec<u32> {
        self.clock += 1;
        let mut out = Vec::new();
        let (mut k, mut parent) = (ROOT, None);
        for chunk in ids[..limit.min(ids.len())].chunks_exact(self.block_size) {
            k = key(k, chunk);
            match self.entries.get_mut(&k) {
                Some(e) if e.parent == parent && *e.tokens == *chunk => {
                    e.used = self.clock;
                    out.push(e.block);
                    parent = Some(e.block);
                }
                _ => break,
            }
        }
        out
    }

    /// Caches the full blocks of a sequence whose first `ids.len()` positions are in `blocks`
    /// (blocks already cached under the same prefix are kept, not replaced).
    pub(crate) fn insert(&mut self, session: &mut Session, ids: &[u32], blocks: &[u32]) {
        self.clock += 1;
        let (mut k, mut parent) = (ROOT, None);
        for (chunk, &b) in ids.chunks_exact(self.block_size).zip(blocks) {
            k = key(k, chunk);
            match self.entries.get_mut(&k) {
                Some(e) if e.parent == parent && *e.tokens == *chunk => {
                    e.used = self.clock;
                    parent = Some(e.block);
                }
                Some(_) => return, // a collision: leave that prefix uncached
                None => {
                    if session.retain_block(b).is_err() {
                        return;
                    }
                    self.entries.insert(k, Entry { block: b, parent, tokens: chunk.into(), used: self.clock });
                    parent = Some(b);
                }
            }
        }
    }

    /// Blocks eviction could free now (cached, used by no sequence).
    pub(crate) fn evictable(&self, session: &Session) -> usize {
        self.entries.values().filter(|e| session.block_refs(e.block) == 1).count()
    }

    /// Frees the least recently used block no sequence uses; false when there is none.
    pub(crate) fn evict_one(&mut self, session: &mut Session) -> bool {
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| session.block_refs(e.block) == 1)
            .min_by_key(|(_, e)| e.used)
            .map(|(&k, _)| k);
        match victim.and_then(|k| self.entries.remove(&k)) {
            Some(e) => session.release_block(e.block).is_ok(),
            None => false,
        }
    }
}
