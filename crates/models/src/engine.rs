//! The inference engine: one model, many sequences.
//!
//! A [`Session`] holds what one caller needs to run a model on any number of sequences at once:
//! the **paged KV cache** and the scratch buffers of a forward step. The model itself is shared
//! and immutable (`Send + Sync`); many threads may run it at once, each with its own session.
//!
//! **Paged KV cache** (vLLM's PagedAttention, on the CPU). Keys and values live in fixed-size
//! *blocks* of `block_size` positions, all in one pool allocated when the session is made.
//! Each sequence owns a *block table* — the blocks holding its positions `0..len` in order —
//! so memory is taken a block at a time as a sequence grows, and returned when it ends. Blocks
//! are reference-counted: [`Session::fork`] makes a second sequence with the same prefix that
//! shares every block; the first write into a shared, partly filled last block copies it
//! (copy on write). A block stores, for every layer and KV head, the keys and values of
//! `block_size` positions; a whole block is contiguous (a copy on write is one `memcpy`).
//! Values are stored position by position, keys *transposed* — component by component:
//!
//! ```text
//! K[block][layer][kv_head][d][slot]      V[block][layer][kv_head][slot][d]
//! slot = position % block_size
//! ```
//!
//! so that a decoding query's scores against a block of keys, `s[slot] = Σ_d q[d]·K[d][slot]`,
//! are `D` multiply-adds of whole rows of `block_size` lanes — no horizontal sum per key —
//! and its output, `o[d] = Σ_slot p[slot]·V[slot][d]`, the same with the roles swapped.
//!
//! **Batched, ragged steps.** A [`Batch`] lists tokens from any sequences — each with its
//! sequence and position, a prompt chunk for one, a single decoded token for another — and
//! which of them want logits. A forward step runs every matrix product once over all of the
//! batch's tokens (so a weight is read once per step however many sequences decode), writes
//! each token's key and value into its sequence's next slot, and lets each token attend over
//! its own sequence through the block table.
//!
//! **Errors, not panics**: a full pool is [`EngineError::KvFull`], reported before anything
//! changes, so a caller (a server) can queue or preempt and every other sequence stays intact;
//! an unknown sequence, a session made for another model, a position that does not continue
//! its sequence, a token outside the vocabulary are errors too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use yuanli_autograd::Var;
use yuanli_nn::Weight;
use yuanli_tensor::cpu::pool::{share, DisjointSlice};
use yuanli_tensor::cpu::qmatmul::{qmatmul_many, QOut};
use yuanli_tensor::cpu::{alloc_filled, gemm_into, qmatmul, simd, with_team, MatRef, QuantizedActs, SpinPool};
use yuanli_tensor::{QuantType, RopeFreqs};

/// Positions per KV block unless a session asks otherwise (vLLM's default).
pub const DEFAULT_BLOCK_SIZE: usize = 16;
/// The most tokens one pass of the network processes; a larger batch goes through in pieces
/// of this many (their keys and values are written before the next piece attends to them).
pub const MAX_STEP_TOKENS: usize = 256;
/// From this many consecutive queries of one sequence on, attention runs by blocks of
/// [`ATT_BLOCK`] queries as two small matrix products (`S = QKᵀ`, `O = PV`).
const BLOCKED_FROM: usize = 8;
/// Queries per block of the blocked attention.
const ATT_BLOCK: usize = 32;

/// Blocks a new sequence's table has room for before it must grow.
const TABLE_CAPACITY: usize = 256;

static NEXT_MODEL: AtomicU64 = AtomicU64::new(1);
static NEXT_SESSION: AtomicU32 = AtomicU32::new(1);

/// A fresh id for a model instance (sessions remember which model they were made for).
pub(crate) fn next_model_id() -> u64 {
    NEXT_MODEL.fetch_add(1, Ordering::Relaxed)
}

/// A sequence of a [`Session`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqId {
    session: u32,
    id: u32,
}

/// Why a step or a session operation was refused. Nothing changed when one is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The KV pool has too few free blocks for this step.
    #[error(
        "the KV cache is full: this step needs {needed} more blocks of {block_size} positions but {free} are free \
         (free blocks by ending or preempting sequences, or make the session larger)"
    )]
    KvFull {
        /// Blocks the step needs.
        needed: usize,
        /// Blocks free.
        free: usize,
        /// Positions per block.
        block_size: usize,
    },
    /// The sequence is not (or no longer) in this session.
    #[error("sequence {0:?} is not in this session (never added, already removed, or from another session)")]
    UnknownSequence(SeqId),
    /// The session was made by another model.
    #[error("this session was made for another model; make one with this model's new_session")]
    WrongModel,
    /// A block id that is not in use in this session.
    #[error("KV block {0} is not in use in this session")]
    UnknownBlock(u32),
    /// A token's position does not continue its sequence.
    #[error("a token of sequence {seq:?} has position {pos}, but the sequence continues at position {expected}")]
    BadPosition {
        /// The sequence.
        seq: SeqId,
        /// The position given.
        pos: usize,
        /// The position that would continue the sequence.
        expected: usize,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the model's vocabulary of {vocab}")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A sequence would grow past the model's context.
    #[error("sequence {seq:?} would reach position {pos}, past the model's context of {context}")]
    ContextFull {
        /// The sequence.
        seq: SeqId,
        /// The position.
        pos: usize,
        /// The model's context length.
        context: usize,
    },
}

/// Which of a sequence's tokens in a batch want logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (a prompt chunk that is not the last).
    None,
    /// The last token only (a prompt before sampling, a decoded token).
    Last,
    /// Every token (scoring, perplexity).
    All,
}

/// The tokens of one forward step: each with its sequence and position, and whether its
/// logits are wanted. Reuse one batch across steps (`clear`) to avoid allocating.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    tokens: Vec<u32>,
    seqs: Vec<SeqId>,
    pos: Vec<usize>,
    logits: Vec<bool>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Removes every token (keeps the buffers).
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.seqs.clear();
        self.pos.clear();
        self.logits.clear();
    }

    /// Adds one token of `seq` at position `pos`.
    pub fn add(&mut self, seq: SeqId, pos: usize, token: u32, logits: bool) {
        self.tokens.push(token);
        self.seqs.push(seq);
        self.pos.push(pos);
        self.logits.push(logits);
    }

    /// Adds `tokens` of `seq` at positions `pos0, pos0 + 1, …`.
    pub fn add_seq(&mut self, seq: SeqId, pos0: usize, tokens: &[u32], logits: Logits) {
        let n = tokens.len();
        for (i, &t) in tokens.iter().enumerate() {
            let want = match logits {
                Logits::None => false,
                Logits::Last => i + 1 == n,
                Logits::All => true,
            };
            self.add(seq, pos0 + i, t, want);
        }
    }

    /// Tokens in the batch.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Rows of logits a step on this batch returns.
    pub fn logit_rows(&self) -> usize {
        self.logits.iter().filter(|&&l| l).count()
    }

    /// The token ids.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
}

/// The KV geometry of a model: what one position of one sequence stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    /// Layers.
    pub layers: usize,
    /// Key/value heads per layer.
    pub kv_heads: usize,
    /// Head size.
    pub head_dim: usize,
}

/// How the KV cache stores keys and values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    /// The model decides: f16 for a model whose matrices are stored quantized (the fast path,
    /// as llama.cpp does), f32 for one with f32 weights (the exact path).
    Auto,
    /// 32-bit floats.
    F32,
    /// IEEE half precision (11 significant bits): half the memory, and half the bytes each
    /// decoding step reads — at a batch of 8 sequences with a few hundred positions each, the
    /// cache is read about as much as the weights.
    F16,
}

/// The size of a session's KV pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionOpts {
    /// Positions the pool holds, over all sequences (rounded up to whole blocks).
    pub max_tokens: usize,
    /// Positions per block.
    pub block_size: usize,
    /// The storage type of keys and values.
    pub kv_type: KvType,
    /// Batch-invariant arithmetic: each token's logits are bitwise the same whichever other
    /// tokens share its step (a request decoded alone or among fifteen others, a prompt read in
    /// one piece or after a cached prefix). The matrix products then choose their route by
    /// the weights' format only, never by the token count (see
    /// [`QuantizedActs::batch_invariant`]); long prompts are read slower (no GEMM), and on
    /// AVX-512 BF16 batches decode a little slower (no bf16 tiles) — measured in
    /// `docs/benchmarks.md`.
    pub batch_invariant: bool,
    /// Round every activation as llama.cpp's CPU backend does before a matrix product (8-bit
    /// blocks for quantized weights, f16/bf16 for those; [`QuantizedActs::ggml_activations`]):
    /// reproduces llama.cpp's numbers, perplexity included. Off by default — our 16-bit
    /// activations are closer to the exact product.
    pub ggml_activations: bool,
}

impl SessionOpts {
    /// A pool for `max_tokens` positions in blocks of [`DEFAULT_BLOCK_SIZE`], the KV type the
    /// model prefers.
    pub fn tokens(max_tokens: usize) -> SessionOpts {
        SessionOpts {
            max_tokens,
            block_size: DEFAULT_BLOCK_SIZE,
            kv_type: KvType::Auto,
            batch_invariant: false,
            ggml_activations: false,
        }
    }
}

/// Keys or values of the whole pool, in the session's KV type.
enum KvBuf {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

impl KvBuf {
    fn new(ty: KvType, n: usize) -> KvBuf {
        match ty {
            KvType::F16 => KvBuf::F16(alloc_filled(n, 0)),
            KvType::F32 | KvType::Auto => KvBuf::F32(alloc_filled(n, 0.0)),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            KvBuf::F32(v) => 4 * v.len(),
            KvBuf::F16(v) => 2 * v.len(),
        }
    }

    fn copy_within(&mut self, src: std::ops::Range<usize>, dst: usize) {
        match self {
            KvBuf::F32(v) => v.copy_within(src, dst),
            KvBuf::F16(v) => v.copy_within(src, dst),
        }
    }

    /// Stores `x[i]` at `at + i·stride` (rounded to nearest for f16).
    fn write_strided(&mut self, at: usize, stride: usize, x: &[f32]) {
        for (i, &f) in x.iter().enumerate() {
            match self {
                KvBuf::F32(v) => v[at + i * stride] = f,
                KvBuf::F16(v) => v[at + i * stride] = half::f16::from_f32(f).to_bits(),
            }
        }
    }

    /// Stores `x` at `at` (rounded to nearest for f16).
    fn write(&mut self, at: usize, x: &[f32]) {
        match self {
            KvBuf::F32(v) => v[at..at + x.len()].copy_from_slice(x),
            KvBuf::F16(v) => {
                v[at..at + x.len()].iter_mut().zip(x).for_each(|(h, &f)| *h = half::f16::from_f32(f).to_bits())
            }
        }
    }

    /// Asks for `len` values from `at` to be brought into the cache.
    #[inline]
    fn prefetch(&self, at: usize, len: usize) {
        match self {
            KvBuf::F32(v) => simd::prefetch_slice(&v[at..at + len]),
            KvBuf::F16(v) => simd::prefetch_slice(&v[at..at + len]),
        }
    }

    /// `dst.len()` values from `at`, as f32, into `dst`.
    #[inline]
    fn read_into(&self, at: usize, dst: &mut [f32]) {
        match self {
            KvBuf::F32(v) => dst.copy_from_slice(&v[at..at + dst.len()]),
            KvBuf::F16(v) => simd::f16_to_f32(&v[at..at + dst.len()], dst),
        }
    }
}

#[derive(Clone, Debug)]
struct SeqEntry {
    /// The blocks holding positions `0..len`, in order.
    blocks: Vec<u32>,
    len: usize,
}

/// One sequence's part of a step.
#[derive(Clone, Copy, Debug)]
struct SeqStep {
    /// Positions before the step.
    len: usize,
    /// New tokens in the step.
    n: usize,
    /// Whether its blocks have been reserved.
    reserved: bool,
    /// Its block table, `plan.tables[start..start + count]`.
    table_start: usize,
    table_len: usize,
}

/// What a step computes where: filled by [`Session::plan`], read by the kernels.
#[derive(Default)]
pub(crate) struct StepPlan {
    /// The KV slot of each token (`block · block_size + position % block_size`).
    pub(crate) slot: Vec<usize>,
    /// The position of each token.
    pub(crate) pos: Vec<usize>,
    /// Each token's block table: `(start, len)` in `tables`.
    pub(crate) table: Vec<(usize, usize)>,
    /// The block tables of the step's sequences, one after another.
    pub(crate) tables: Vec<u32>,
    /// Tokens whose logits are wanted, in batch order.
    pub(crate) logit_rows: Vec<usize>,
    /// The length of each token's sequence after the step (the `n` of dynamic RoPE scaling).
    pub(crate) end: Vec<usize>,
    /// Longest sequence after the step.
    pub(crate) max_len: usize,
    seqs: HashMap<u32, SeqStep>,
    /// Attention work of the current piece: `(first token, queries, query head)` for a block
    /// of queries, `(token, 0, KV head)` for one decoding token and all its query heads.
    items: Vec<(usize, usize, usize)>,
}

/// Buffers of a forward step, reused across steps: after a warm-up a decoding step allocates
/// nothing. Each model uses them as it needs (the field docs say how LLaMA does).
#[derive(Default)]
pub(crate) struct Scratch {
    /// Residual stream `(t, C)`.
    pub(crate) x: Vec<f32>,
    /// Normalised input of a sub-layer, and sub-layer outputs `(t, max(C, H·D))`.
    pub(crate) h: Vec<f32>,
    /// Queries `(t, H·D)`.
    pub(crate) q: Vec<f32>,
    /// New keys `(t, Hk·D)`.
    pub(crate) k: Vec<f32>,
    /// New values `(t, Hk·D)`.
    pub(crate) v: Vec<f32>,
    /// Attention output `(t, H·D)`.
    pub(crate) att: Vec<f32>,
    /// MLP gate (or GPT's fused q|k|v and MLP hidden) `(t, F)`.
    pub(crate) g: Vec<f32>,
    /// MLP up projection `(t, F)`.
    pub(crate) u: Vec<f32>,
    /// RoPE angles of each token, `(t, D/2)` each.
    pub(crate) cos: Vec<f32>,
    pub(crate) sin: Vec<f32>,
    /// The angles of the local (sliding-window) layers when their RoPE base differs (Gemma 3).
    pub(crate) cos_local: Vec<f32>,
    pub(crate) sin_local: Vec<f32>,
    /// The RoPE frequencies the angles are made from (global and local layers).
    pub(crate) rope: RopeFreqs,
    pub(crate) rope_local: RopeFreqs,
    /// Quantized activations of the matrix products.
    pub(crate) acts: QuantizedActs,
}

/// Resizes `buf` to hold at least `n` values (allocating only when it grows).
pub(crate) fn fit(buf: &mut Vec<f32>, n: usize) {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
}

/// The paged KV cache of many sequences and the scratch of their forward steps; see the
/// module docs. Made by a model's `new_session`, fed to that model's `forward_batch`.
pub struct Session {
    id: u32,
    model_id: u64,
    shape: KvShape,
    block_size: usize,
    /// Keys of every block, laid out `[block][layer][kv_head][d][slot]`.
    k: KvBuf,
    /// Values, laid out `[block][layer][kv_head][slot][d]`.
    v: KvBuf,
    /// References to each block (0 = free).
    refs: Vec<u32>,
    /// Free blocks (a stack: the most recently freed is reused first).
    free: Vec<u32>,
    seqs: HashMap<u32, SeqEntry>,
    next_seq: u32,
    pub(crate) plan: StepPlan,
    pub(crate) scratch: Scratch,
    /// [`SessionOpts::batch_invariant`] (the scratch's copy is taken out during a step).
    batch_invariant: bool,
    /// Per-thread attention scratch.
    att_tls: Vec<f32>,
}

impl Session {
    /// A session for the model `model_id` with KV geometry `shape`; the pool is allocated now.
    /// `auto` is the KV type [`KvType::Auto`] means for this model.
    pub(crate) fn new(model_id: u64, shape: KvShape, opts: SessionOpts, auto: KvType) -> Session {
        let bs = opts.block_size.max(1);
        let n_blocks = opts.max_tokens.max(1).div_ceil(bs);
        let per_block = shape.layers * shape.kv_heads * bs * shape.head_dim;
        let ty = if opts.kv_type == KvType::Auto { auto } else { opts.kv_type };
        Session {
            id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
            model_id,
            shape,
            block_size: bs,
            k: KvBuf::new(ty, n_blocks * per_block),
            v: KvBuf::new(ty, n_blocks * per_block),
            refs: vec![0; n_blocks],
            free: (0..n_blocks as u32).rev().collect(),
            seqs: HashMap::new(),
            next_seq: 0,
            plan: StepPlan { tables: Vec::with_capacity(2 * n_blocks), ..StepPlan::default() },
            scratch: Scratch {
                acts: QuantizedActs::with_options(opts.batch_invariant, opts.ggml_activations),
                ..Scratch::default()
            },
            att_tls: Vec::new(),
            batch_invariant: opts.batch_invariant,
        }
    }

    /// Errors unless this session was made by the model `model_id`.
    pub(crate) fn check_model(&self, model_id: u64) -> Result<(), EngineError> {
        if self.model_id == model_id {
            Ok(())
        } else {
            Err(EngineError::WrongModel)
        }
    }

    /// Starts an empty sequence (it takes no blocks until it gets tokens).
    pub fn add_sequence(&mut self) -> SeqId {
        let id = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        // Room for a table of 4,096 positions (or the whole pool): growing into a new block does
        // not allocate before that.
        let cap = self.refs.len().min(TABLE_CAPACITY);
        self.seqs.insert(id, SeqEntry { blocks: Vec::with_capacity(cap), len: 0 });
        SeqId { session: self.id, id }
    }

    fn entry(&self, seq: SeqId) -> Result<&SeqEntry, EngineError> {
        if seq.session != self.id {
            return Err(EngineError::UnknownSequence(seq));
        }
        self.seqs.get(&seq.id).ok_or(EngineError::UnknownSequence(seq))
    }

    fn entry_mut(&mut self, seq: SeqId) -> Result<&mut SeqEntry, EngineError> {
        if seq.session != self.id {
            return Err(EngineError::UnknownSequence(seq));
        }
        self.seqs.get_mut(&seq.id).ok_or(EngineError::UnknownSequence(seq))
    }

    /// A new sequence with the same positions as `seq`, sharing its blocks (no copy; the first
    /// write into a shared, partly filled block copies that block).
    pub fn fork(&mut self, seq: SeqId) -> Result<SeqId, EngineError> {
        let mut e = self.entry(seq)?.clone();
        e.blocks.reserve(self.refs.len().min(TABLE_CAPACITY));
        for &b in &e.blocks {
            self.refs[b as usize] += 1;
        }
        let new = self.add_sequence();
        self.seqs.insert(new.id, e);
        Ok(new)
    }

    /// A new sequence whose first positions are the full blocks `blocks` (another sequence's
    /// or a prefix cache's, see [`Session::retain_block`]): it shares them (no copy) and goes on
    /// at position `blocks.len() · block_size`. Unknown or free block ids are an error.
    pub fn add_sequence_on_blocks(&mut self, blocks: &[u32]) -> Result<SeqId, EngineError> {
        if let Some(&b) = blocks.iter().find(|&&b| self.refs.get(b as usize).is_none_or(|&r| r == 0)) {
            return Err(EngineError::UnknownBlock(b));
        }
        let seq = self.add_sequence();
        for &b in blocks {
            self.refs[b as usize] += 1;
        }
        let e = self.seqs.get_mut(&seq.id).expect("just added");
        e.blocks.extend_from_slice(blocks);
        e.len = blocks.len() * self.block_size;
        Ok(seq)
    }

    /// The blocks holding `seq`'s positions, in order (the last may be partly filled).
    pub fn blocks(&self, seq: SeqId) -> Result<&[u32], EngineError> {
        Ok(&self.entry(seq)?.blocks)
    }

    /// Takes a reference to block `b` (which some sequence holds): it stays out of the free pool
    /// until [`Session::release_block`], after every sequence using it has ended — how a prefix
    /// cache keeps blocks for later requests.
    pub fn retain_block(&mut self, b: u32) -> Result<(), EngineError> {
        match self.refs.get_mut(b as usize) {
            Some(r) if *r > 0 => {
                *r += 1;
                Ok(())
            }
            _ => Err(EngineError::UnknownBlock(b)),
        }
    }

    /// Drops a reference taken by [`Session::retain_block`]; the block is free when none is left.
    pub fn release_block(&mut self, b: u32) -> Result<(), EngineError> {
        match self.refs.get(b as usize) {
            Some(&r) if r > 0 => {
                self.release(b);
                Ok(())
            }
            _ => Err(EngineError::UnknownBlock(b)),
        }
    }

    /// References to block `b` (sequences and retains; 0 when free).
    pub fn block_refs(&self, b: u32) -> usize {
        self.refs.get(b as usize).map_or(0, |&r| r as usize)
    }

    /// Ends `seq`: its blocks go back to the pool (those no other sequence shares).
    pub fn remove(&mut self, seq: SeqId) -> Result<(), EngineError> {
        self.entry(seq)?;
        let blocks = self.seqs.remove(&seq.id).map(|e| e.blocks).unwrap_or_default();
        for b in blocks {
            self.release(b);
        }
        Ok(())
    }

    /// Keeps the first `len` positions of `seq` (no-op when it is not longer): the blocks past
    /// them go back to the pool. The next token continues at position `len`.
    pub fn truncate(&mut self, seq: SeqId, len: usize) -> Result<(), EngineError> {
        let keep = len.div_ceil(self.block_size);
        let e = self.entry_mut(seq)?;
        if len >= e.len {
            return Ok(());
        }
        e.len = len;
        let dropped = e.blocks.split_off(keep.min(e.blocks.len()));
        for b in dropped {
            self.release(b);
        }
        Ok(())
    }

    fn release(&mut self, b: u32) {
        let r = &mut self.refs[b as usize];
        *r -= 1;
        if *r == 0 {
            self.free.push(b);
        }
    }

    /// Positions held by `seq`.
    pub fn len(&self, seq: SeqId) -> Result<usize, EngineError> {
        Ok(self.entry(seq)?.len)
    }

    /// Live sequences.
    pub fn num_sequences(&self) -> usize {
        self.seqs.len()
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn total_blocks(&self) -> usize {
        self.refs.len()
    }

    /// Blocks not in use.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Bytes of the KV pool (keys and values).
    pub fn kv_bytes(&self) -> usize {
        self.k.bytes() + self.v.bytes()
    }

    /// The KV geometry.
    pub fn shape(&self) -> KvShape {
        self.shape
    }

    /// Checks `batch` and reserves KV slots for its tokens: blocks for sequences that grow into
    /// new ones, and a private copy of a shared, partly filled last block. On error nothing has
    /// changed. Fills [`StepPlan`] and moves each sequence's length past its new tokens.
    pub(crate) fn plan(&mut self, batch: &Batch, vocab: usize, context: usize) -> Result<(), EngineError> {
        let bs = self.block_size;
        let plan = &mut self.plan;
        plan.seqs.clear();
        for i in 0..batch.len() {
            let (seq, pos, tok) = (batch.seqs[i], batch.pos[i], batch.tokens[i]);
            if seq.session != self.id {
                return Err(EngineError::UnknownSequence(seq));
            }
            let e = self.seqs.get(&seq.id).ok_or(EngineError::UnknownSequence(seq))?;
            if tok as usize >= vocab {
                return Err(EngineError::TokenOutOfRange { id: tok, vocab });
            }
            let s = plan.seqs.entry(seq.id).or_insert(SeqStep {
                len: e.len,
                n: 0,
                reserved: false,
                table_start: 0,
                table_len: 0,
            });
            if pos != s.len + s.n {
                return Err(EngineError::BadPosition { seq, pos, expected: s.len + s.n });
            }
            if pos >= context {
                return Err(EngineError::ContextFull { seq, pos, context });
            }
            s.n += 1;
        }
        let mut needed = 0;
        for (id, s) in &plan.seqs {
            let e = &self.seqs[id];
            needed += (s.len + s.n).div_ceil(bs) - e.blocks.len();
            if !s.len.is_multiple_of(bs) && self.refs[e.blocks[s.len / bs] as usize] > 1 {
                needed += 1; // copy on write
            }
        }
        if needed > self.free.len() {
            return Err(EngineError::KvFull { needed, free: self.free.len(), block_size: bs });
        }
        // Reserve, in batch order (so block numbers do not depend on hash order).
        let per_block = self.shape.layers * self.shape.kv_heads * bs * self.shape.head_dim;
        plan.tables.clear();
        plan.slot.clear();
        plan.pos.clear();
        plan.end.clear();
        plan.table.clear();
        plan.logit_rows.clear();
        plan.max_len = 0;
        for i in 0..batch.len() {
            let (seq, pos) = (batch.seqs[i], batch.pos[i]);
            let s = plan.seqs.get_mut(&seq.id).expect("planned above");
            if !s.reserved {
                s.reserved = true;
                let e = self.seqs.get_mut(&seq.id).expect("checked above");
                if !s.len.is_multiple_of(bs) {
                    let last = e.blocks[s.len / bs];
                    if self.refs[last as usize] > 1 {
                        let copy = self.free.pop().expect("counted above");
                        let (src, dst) = (last as usize * per_block, copy as usize * per_block);
                        self.k.copy_within(src..src + per_block, dst);
                        self.v.copy_within(src..src + per_block, dst);
                        self.refs[last as usize] -= 1;
                        self.refs[copy as usize] = 1;
                        e.blocks[s.len / bs] = copy;
                    }
                }
                while e.blocks.len() < (s.len + s.n).div_ceil(bs) {
                    let b = self.free.pop().expect("counted above");
                    self.refs[b as usize] = 1;
                    e.blocks.push(b);
                }
                e.len = s.len + s.n;
                s.table_start = plan.tables.len();
                s.table_len = e.blocks.len();
                plan.tables.extend_from_slice(&e.blocks);
                plan.max_len = plan.max_len.max(e.len);
            }
            let block = plan.tables[s.table_start + pos / bs] as usize;
            plan.slot.push(block * bs + pos % bs);
            plan.pos.push(pos);
            plan.end.push(s.len + s.n);
            plan.table.push((s.table_start, s.table_len));
            if batch.logits[i] {
                plan.logit_rows.push(i);
            }
        }
        Ok(())
    }

    /// Where `(layer, kv head)`'s part of the block holding `slot` starts in `k` / `v`.
    #[inline]
    fn block_at(&self, slot: usize, layer: usize, head: usize) -> usize {
        let (bs, s) = (self.block_size, self.shape);
        (((slot / bs) * s.layers + layer) * s.kv_heads + head) * bs * s.head_dim
    }

    /// Stores the new keys and values `(t, Hk·D)` of tokens `t0..t0 + t` of the step in their
    /// slots of `layer`.
    pub(crate) fn write_kv(&mut self, layer: usize, t0: usize, k: &[f32], v: &[f32]) {
        let (hk, d) = (self.shape.kv_heads, self.shape.head_dim);
        for (i, (kr, vr)) in k.chunks_exact(hk * d).zip(v.chunks_exact(hk * d)).enumerate() {
            let slot = self.plan.slot[t0 + i];
            let (bs, off) = (self.block_size, slot % self.block_size);
            for h in 0..hk {
                let at = self.block_at(slot, layer, h);
                self.k.write_strided(at + off, bs, &kr[h * d..(h + 1) * d]); // column `off` of K[d][slot]
                self.v.write(at + off * d, &vr[h * d..(h + 1) * d]); // row `off` of V[slot][d]
            }
        }
    }

    /// Causal attention of the step's tokens `t0..t1` over their own sequences in `layer`:
    /// `q (t, H·D)` (already rotated) → `out (t, H·D)`, on the threads of `pool`.
    ///
    /// A sequence with at least [`BLOCKED_FROM`] consecutive new tokens (a prompt chunk) goes
    /// by items of (block of up to [`ATT_BLOCK`] queries, query head): its keys and values up to
    /// the block's last position are gathered from the blocks into per-thread scratch, then
    /// `S = Q·Kᵀ/√D` and `O = P·V` are two small GEMMs with the causal softmax between them.
    /// Any other token (decoding) is one item per KV head, covering the query heads that share
    /// it (grouped-query attention): its keys and values are gathered once for all of them;
    /// the scores of a block are `D` row updates of the block's transposed keys
    /// ([`simd::axpy_rows`], no horizontal sums), then softmax, then the weighted sum of the
    /// values the same way.
    pub(crate) fn attention(
        &mut self,
        layer: usize,
        n_head: usize,
        (t0, t1): (usize, usize),
        q: &[f32],
        out: &mut [f32],
        spec: AttnSpec<'_>,
        pool: &SpinPool,
    ) {
        let (hk, d, bs) = (self.shape.kv_heads, self.shape.head_dim, self.block_size);
        let group = n_head / hk;
        let qd = n_head * d;
        let t = t1 - t0;
        // Items of this piece: runs of consecutive tokens of one sequence.
        // Batch-invariant sessions take the per-token route for every token: a query's
        // result then depends on its position and the cache only, not on how many of its
        // sequence's tokens share the step.
        let blocked_from = if self.batch_invariant { usize::MAX } else { BLOCKED_FROM };
        let plan = &mut self.plan;
        plan.items.clear();
        let mut i = t0;
        while i < t1 {
            let mut j = i + 1;
            while j < t1 && plan.table[j] == plan.table[i] && plan.pos[j] == plan.pos[j - 1] + 1 {
                j += 1;
            }
            if j - i >= blocked_from {
                for b0 in (i..j).step_by(ATT_BLOCK) {
                    let m = ATT_BLOCK.min(j - b0);
                    plan.items.extend((0..n_head).map(|h| (b0, m, h)));
                }
            } else {
                // One item per (token, KV head): the group of query heads sharing it, marked by
                // a query count of 0 (a block item may hold a single query too).
                for tok in i..j {
                    plan.items.extend((0..hk).map(|h| (tok, 0, h)));
                }
            }
            i = j;
        }
        let threads = pool.threads();
        let n_max = plan.max_len.next_multiple_of(bs); // keys are gathered by whole blocks
        let rows = ATT_BLOCK.max(group); // score rows: a block of queries, or a query group
        let per_thread = rows * n_max + ATT_BLOCK * d + 2 * n_max * d;
        let Session { k: keys, v: values, plan, att_tls, .. } = self;
        let (keys, values, plan) = (&*keys, &*values, &*plan);
        fit(att_tls, threads * per_thread.next_power_of_two().max(1 << 14));
        let stride = att_tls.len() / threads;
        let tls = DisjointSlice::new(att_tls);
        let dst = DisjointSlice::new(&mut out[..t * qd]);
        let AttnSpec { scale, window, alibi } = spec;
        // ALiBi: row `scores[lo..=i]` of a query at position `i`, head `qh`, += −m·(i − j).
        let add_alibi = move |row: &mut [f32], lo: usize, i: usize, qh: usize| {
            if let Some(m) = alibi {
                for (j, x) in (lo..=i).zip(row.iter_mut()) {
                    *x -= m[qh] * (i - j) as f32;
                }
            }
        };
        let scale = scale.unwrap_or(1.0 / (d as f32).sqrt());
        // The first key a query at position `p` sees: all of them, or the last `window`.
        let first_key = move |p: usize| window.map_or(0, |w| (p + 1).saturating_sub(w));
        // Where block `b`'s keys (or values) of kv head `h` in this layer start.
        let layers = self.shape.layers;
        let block_at = move |b: u32, h: usize| ((b as usize * layers + layer) * hk + h) * bs * d;
        pool.run(&|tid| {
            let (w0, w1) = share(plan.items.len(), tid, threads, 1);
            // SAFETY: thread `tid` alone uses the `tid`-th stretch of the per-thread scratch.
            let mine = unsafe { tls.piece(tid * stride, stride) };
            let (scores, rest) = mine.split_at_mut(rows * n_max);
            let (o, rest) = rest.split_at_mut(ATT_BLOCK * d);
            let (kg, rest) = rest.split_at_mut(n_max * d);
            let vg = &mut rest[..n_max * d];
            // The keys (or values) of KV head `h` at positions 0..n, gathered from the blocks
            // of the table into `dst` as f32 (n·D values).
            // Each block is a separate stretch of memory the hardware prefetcher cannot
            // foresee, so the next block is asked for while this one is converted.
            //
            // The values of KV head `h` at positions 0..n, gathered from the blocks of the
            // table into `dst` as f32 (`V (n, D)`, row-major).
            let gather_v = |table: &[u32], h: usize, n: usize, dst: &mut [f32]| {
                let blocks = n.div_ceil(bs);
                for (bi, blk) in table.iter().enumerate().take(blocks) {
                    let (j, len) = (bi * bs, bs.min(n - bi * bs) * d);
                    if bi + 1 < blocks {
                        values.prefetch(block_at(table[bi + 1], h), bs.min(n - j - bs) * d);
                    }
                    values.read_into(block_at(*blk, h), &mut dst[j * d..j * d + len]);
                }
            };
            // The keys of the first `blocks` blocks, each whole (`K (D, block_size)`), one
            // after another.
            let gather_k = |table: &[u32], h: usize, blocks: usize, dst: &mut [f32]| {
                for (bi, blk) in table.iter().enumerate().take(blocks) {
                    if bi + 1 < blocks {
                        keys.prefetch(block_at(table[bi + 1], h), bs * d);
                    }
                    keys.read_into(block_at(*blk, h), &mut dst[bi * bs * d..(bi + 1) * bs * d]);
                }
            };
            for &(tok, m, h) in &plan.items[w0..w1] {
                let (ts, tl) = plan.table[tok];
                let table = &plan.tables[ts..ts + tl];
                if m == 0 {
                    // Decoding: `h` is a KV head; its `group` query heads are rows
                    // h·group .. (h+1)·group of the token's query. Its keys and values are
                    // gathered once for all of them.
                    let row = (tok - t0) * qd + h * group * d;
                    let qg = &q[row..row + group * d];
                    let n = plan.pos[tok] + 1; // positions this query sees
                    let blocks = n.div_ceil(bs);
                    let nr = blocks * bs; // scores for whole blocks; the tail is ignored
                    gather_k(table, h, blocks, kg);
                    let s = &mut scores[..group * nr];
                    for (gi, (qv, sg)) in qg.chunks_exact(d).zip(s.chunks_exact_mut(nr)).enumerate() {
                        sg.fill(0.0);
                        for (sb, kb) in sg.chunks_exact_mut(bs).zip(kg.chunks_exact(bs * d)) {
                            simd::axpy_rows(sb, qv, kb); // sb[slot] = Σ_d q[d]·K[d][slot]
                        }
                        let lo = first_key(n - 1);
                        sg[..lo].fill(0.0);
                        let sg = &mut sg[lo..n];
                        simd::scale(sg, scale);
                        add_alibi(sg, lo, n - 1, h * group + gi);
                        let mx = simd::max(sg);
                        let z = simd::exp_sub_sum(sg, mx);
                        simd::scale(sg, 1.0 / z);
                    }
                    gather_v(table, h, n, vg);
                    // SAFETY: item (token, KV head) is this thread's; the output of its query
                    // heads is written by no other item.
                    let out = unsafe { dst.piece(row, group * d) };
                    out.fill(0.0);
                    for (og, sg) in out.chunks_exact_mut(d).zip(s.chunks_exact(nr)) {
                        simd::axpy_rows(og, &sg[..n], &vg[..n * d]);
                    }
                } else {
                    let kvh = h / group;
                    let p0 = plan.pos[tok];
                    let n = p0 + m; // keys the block's last query sees
                    let blocks = n.div_ceil(bs);
                    let nr = blocks * bs;
                    // Kᵀ (D, nr) row-major for the GEMM: the blocks' rows placed side by side
                    // (gathered into `vg` first, which the values overwrite afterwards).
                    gather_k(table, kvh, blocks, vg);
                    for bi in 0..blocks {
                        for c in 0..d {
                            let src = &vg[bi * bs * d + c * bs..bi * bs * d + (c + 1) * bs];
                            kg[c * nr + bi * bs..c * nr + (bi + 1) * bs].copy_from_slice(src);
                        }
                    }
                    gather_v(table, kvh, n, vg);
                    let s = &mut scores[..m * n];
                    let q_blk = MatRef { off: (tok - t0) * qd + h * d, rs: qd, cs: 1 };
                    let k_t = MatRef { off: 0, rs: nr, cs: 1 };
                    gemm_into(m, d, n, s, n, false, q, q_blk, &kg[..d * nr], k_t, scale, 1);
                    for r in 0..m {
                        let row = &mut s[r * n..(r + 1) * n];
                        let seen = p0 + r + 1;
                        let lo = first_key(seen - 1);
                        row[..lo].fill(0.0);
                        add_alibi(&mut row[lo..seen], lo, seen - 1, h);
                        let mx = simd::max(&row[lo..seen]);
                        let z = simd::exp_sub_sum(&mut row[lo..seen], mx);
                        simd::scale(&mut row[lo..seen], 1.0 / z);
                        row[seen..].fill(0.0);
                    }
                    let p = MatRef { off: 0, rs: n, cs: 1 };
                    let v = MatRef { off: 0, rs: d, cs: 1 };
                    gemm_into(m, n, d, &mut o[..m * d], d, false, s, p, &vg[..n * d], v, 1.0, 1);
                    for r in 0..m {
                        // SAFETY: rows tok..tok + m of head h's columns belong to this item.
                        let out = unsafe { dst.piece((tok - t0 + r) * qd + h * d, d) };
                        out.copy_from_slice(&o[r * d..(r + 1) * d]);
                    }
                }
            }
        });
    }
}

/// How a layer's queries see the keys: the score scale (`None`: `1/√D`), for a
/// sliding-window layer how many positions back (the query's own included) it looks, and for
/// ALiBi each query head's slope `m_h` (the score of key `j` for the query at `i` gets
/// `−m_h·(i − j)` after scaling).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AttnSpec<'a> {
    pub(crate) scale: Option<f32>,
    pub(crate) window: Option<usize>,
    pub(crate) alibi: Option<&'a [f32]>,
}

/// The network's part of a step: tokens `t0..t1` of the planned batch through every layer,
/// leaving their final hidden states in the session's scratch.
pub(crate) type Body<'a> = dyn Fn(&mut Session, &Batch, (usize, usize), &SpinPool) + 'a;
/// The LM head's part: the logits of the tokens `plan.logit_rows[rows]` (all inside the piece
/// that starts at token `t0`) into `out`, `V` per row.
pub(crate) type Head<'a> = dyn Fn(&mut Session, usize, std::ops::Range<usize>, &mut [f32], &SpinPool) + 'a;

/// One step of any model, the shape every `forward_batch` shares: check the session, plan the
/// batch (nothing changes on error), then, holding the team, run the batch through `body` in
/// pieces of at most [`MAX_STEP_TOKENS`] tokens and `head` for the rows that want logits.
pub(crate) fn run_step(
    s: &mut Session,
    model_id: u64,
    batch: &Batch,
    (vocab, context): (usize, usize),
    logits: &mut Vec<f32>,
    body: &Body<'_>,
    head: &Head<'_>,
) -> Result<(), EngineError> {
    s.check_model(model_id)?;
    s.plan(batch, vocab, context)?;
    logits.resize(s.plan.logit_rows.len() * vocab, 0.0); // no allocation once it has held this many
    with_team(|pool| {
        for t0 in (0..batch.len()).step_by(MAX_STEP_TOKENS) {
            let t1 = (t0 + MAX_STEP_TOKENS).min(batch.len());
            body(s, batch, (t0, t1), pool);
            let rows = &s.plan.logit_rows;
            let (a, b) = (rows.partition_point(|&r| r < t0), rows.partition_point(|&r| r < t1));
            if a < b {
                head(s, t0, a..b, &mut logits[a * vocab..b * vocab], pool);
            }
        }
    });
    Ok(())
}

/// `y (t, w.rows) = x (t, w.cols) · Wᵀ` with the quantized kernels, whatever form the weight
/// takes (an f32 parameter is read as F32 bytes).
pub(crate) fn matmul(w: &Weight, x: &[f32], t: usize, acts: &mut QuantizedActs, y: &mut [f32], pool: &SpinPool) {
    matmul_rows(w, w.rows(), x, t, acts, y, pool)
}

/// [`matmul`] with the first `rows` rows of `W` only: `y (t, rows)`.
pub(crate) fn matmul_rows(
    w: &Weight,
    rows: usize,
    x: &[f32],
    t: usize,
    acts: &mut QuantizedActs,
    y: &mut [f32],
    pool: &SpinPool,
) {
    let cols = w.cols();
    w.with_bytes(|ty, bytes| {
        let rb = bytes.len() / w.rows().max(1);
        qmatmul(ty, &bytes[..rows * rb], rows, cols, &x[..t * cols], t, acts, &mut y[..t * rows], pool)
    });
}

/// Several products of the same input `x (t, cols)` (a layer's q, k, v, or gate and up): one
/// parallel job over all their rows when the weights are stored matrices ([`qmatmul_many`]),
/// else one [`matmul`] each.
pub(crate) fn matmul_many(
    ws: &[&Weight],
    x: &[f32],
    t: usize,
    acts: &mut QuantizedActs,
    ys: &mut [&mut [f32]],
    pool: &SpinPool,
) {
    let cols = ws[0].cols();
    if ws.len() <= 4 && ws.iter().all(|w| matches!(w, Weight::Stored(_))) {
        let mut outs: [Option<QOut<'_>>; 4] = [None, None, None, None];
        for ((slot, w), y) in outs.iter_mut().zip(ws).zip(ys.iter_mut()) {
            if let Weight::Stored(q) = w {
                *slot = Some(QOut { ty: q.ty(), w: q.bytes(), rows: q.rows(), y: &mut y[..t * q.rows()] });
            }
        }
        let n = ws.len();
        let mut outs: [QOut<'_>; 4] =
            outs.map(|o| o.unwrap_or(QOut { ty: QuantType::F32, w: &[], rows: 0, y: &mut [] }));
        qmatmul_many(&x[..t * cols], t, cols, &mut outs[..n], acts, pool);
    } else {
        for (w, y) in ws.iter().zip(ys.iter_mut()) {
            matmul(w, x, t, acts, y, pool);
        }
    }
}

/// Adds the bias vector `b` to every row of `y`.
pub(crate) fn add_bias(y: &mut [f32], b: &Var) {
    b.value().with_slice(|b: &[f32]| y.chunks_exact_mut(b.len()).for_each(|r| add(r, b)));
}

/// `x += y`.
pub(crate) fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}
