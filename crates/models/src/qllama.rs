//! Fast LLaMA inference straight from a GGUF file: the quantized weights are read in place
//! from the memory map by the integer kernels of [`yuanli_tensor::cpu::qmatmul`], never
//! dequantized as a whole.
//!
//! This is the same network as [`crate::llama`] — RMSNorm, RoPE, grouped-query attention,
//! SwiGLU — written as an inference loop over plain `f32` slices instead of autograd ops, so
//! that a decoding step allocates nothing:
//! - the KV cache is preallocated for the context (`f32`, `(L, Hk, n_ctx, D)`; f32 rather
//!   than f16 because it keeps the fast path within float rounding of the exact one, and at
//!   SmolLM2's 46 KB per token a 2,048-token context is still under 100 MB);
//! - every intermediate buffer lives in the state and is reused;
//! - the threads are a [`SpinPool`] started once with the model, so a token pays no thread
//!   start-up and (while tokens keep coming) no wake-ups.
//!
//! Activations are quantized to 16 bits per block of 32 inside the Q8_0/Q4_0/Q4_1 matmuls
//! (llama.cpp uses 8; see [`yuanli_tensor::cpu::qmatmul`] for why we do not): the one
//! approximation beyond the weights' own quantization.

use crate::llama::LlamaConfig;
use crate::load::{gguf_description, llama_config_from_gguf, GgufChatParts, LoadError};
use crate::sample::CausalLm;
use std::any::Any;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use yuanli_gguf::GgufFile;
use yuanli_tensor::cpu::pool::share;
use yuanli_tensor::cpu::{gemm_into, qmatmul, simd, MatRef, QuantizedActs, SpinPool};
use yuanli_tensor::quant::dequantize_row;
use yuanli_tensor::{QuantType, RopeLayout};

/// A weight matrix `(rows, cols)` stored in the file in format `ty`.
#[derive(Clone, Debug)]
struct QWeight {
    ty: QuantType,
    rows: usize,
    cols: usize,
    bytes: Range<usize>,
}

struct QLayer {
    attn_norm: Vec<f32>,
    wq: QWeight,
    wk: QWeight,
    wv: QWeight,
    bias: Option<[Vec<f32>; 3]>,
    wo: QWeight,
    ffn_norm: Vec<f32>,
    gate: QWeight,
    up: QWeight,
    down: QWeight,
}

/// A LLaMA-family model that runs on its quantized GGUF weights.
pub struct QLlama {
    /// The model's configuration.
    pub config: LlamaConfig,
    file: GgufFile,
    embed: QWeight,
    layers: Vec<QLayer>,
    norm: Vec<f32>,
    output: QWeight,
    pool: SpinPool,
}

/// A quantized model with its tokenizer and chat template.
pub struct QuantModel {
    /// The network.
    pub model: QLlama,
    /// Tokenizer, chat template, special ids.
    pub chat: GgufChatParts,
    /// A one-line description.
    pub description: String,
}

impl QuantModel {
    /// Opens a GGUF file of a LLaMA-family model for fast inference on `threads` threads.
    pub fn open(path: &Path, threads: usize) -> Result<QuantModel, LoadError> {
        let file = GgufFile::open(path)?;
        let chat = GgufChatParts::read(&file)?;
        let model = QLlama::new(file, threads)?;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for t in model.file.tensors() {
            *counts.entry(t.ty.name().to_string()).or_default() += 1;
        }
        let types: Vec<(String, usize)> = counts.into_iter().collect();
        let description = gguf_description(&model.file, &types, model.config.num_params())?;
        Ok(QuantModel { model, chat, description })
    }
}

impl QLlama {
    /// Maps the tensors of an open GGUF file (nothing is copied but the norm gains).
    pub fn new(file: GgufFile, threads: usize) -> Result<QLlama, LoadError> {
        let config = llama_config_from_gguf(&file)?;
        let c = &config;
        let weight = |name: &str, rows: usize, cols: usize| -> Result<QWeight, LoadError> {
            let info = file.tensor_info(name)?;
            if info.shape() != [rows, cols] {
                return Err(LoadError::Config(format!(
                    "{}: tensor {name} has shape {:?}, the config implies [{rows}, {cols}]",
                    file.origin(),
                    info.shape()
                )));
            }
            Ok(QWeight { ty: info.ty, rows, cols, bytes: file.tensor_range(info) })
        };
        let vector = |name: &str, n: usize| -> Result<Vec<f32>, LoadError> {
            let (shape, v) = file.tensor_f32(name)?;
            if shape != [n] {
                return Err(LoadError::Config(format!(
                    "{}: tensor {name} has shape {shape:?}, expected [{n}]",
                    file.origin()
                )));
            }
            Ok(v)
        };
        let (q, kv) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            let bias = if c.attention_bias {
                Some([vector(&n("attn_q.bias"), q)?, vector(&n("attn_k.bias"), kv)?, vector(&n("attn_v.bias"), kv)?])
            } else {
                None
            };
            layers.push(QLayer {
                attn_norm: vector(&n("attn_norm.weight"), c.hidden_size)?,
                wq: weight(&n("attn_q.weight"), q, c.hidden_size)?,
                wk: weight(&n("attn_k.weight"), kv, c.hidden_size)?,
                wv: weight(&n("attn_v.weight"), kv, c.hidden_size)?,
                bias,
                wo: weight(&n("attn_output.weight"), c.hidden_size, q)?,
                ffn_norm: vector(&n("ffn_norm.weight"), c.hidden_size)?,
                gate: weight(&n("ffn_gate.weight"), c.intermediate_size, c.hidden_size)?,
                up: weight(&n("ffn_up.weight"), c.intermediate_size, c.hidden_size)?,
                down: weight(&n("ffn_down.weight"), c.hidden_size, c.intermediate_size)?,
            });
        }
        let embed = weight("token_embd.weight", c.vocab_size, c.hidden_size)?;
        let output =
            if c.tie_word_embeddings { embed.clone() } else { weight("output.weight", c.vocab_size, c.hidden_size)? };
        let norm = vector("output_norm.weight", c.hidden_size)?;
        Ok(QLlama { config, file, embed, layers, norm, output, pool: SpinPool::new(threads) })
    }

    fn w(&self, w: &QWeight) -> &[u8] {
        &self.file.bytes()[w.bytes.clone()]
    }

    /// `y (t, w.rows) = x (t, w.cols) · Wᵀ`.
    fn matmul(&self, w: &QWeight, x: &[f32], t: usize, acts: &mut QuantizedActs, y: &mut [f32]) {
        qmatmul(w.ty, self.w(w), w.rows, w.cols, &x[..t * w.cols], t, acts, &mut y[..t * w.rows], &self.pool);
    }

    /// Runs `tokens` through the network after the `st.len` positions in the cache; leaves the
    /// final hidden states of the tokens in `st.x`.
    fn forward(&self, st: &mut QState, tokens: &[u32]) {
        let c = &self.config;
        let t = tokens.len();
        let (dim, hd, nh, nkv, ffn) = (c.hidden_size, c.head_dim, c.n_head, c.n_kv_head, c.intermediate_size);
        let (q_dim, kv_dim) = (nh * hd, nkv * hd);
        let pos0 = st.len;
        assert!(pos0 + t <= st.n_ctx, "qllama: {pos0} cached + {t} new positions exceed n_ctx {}", st.n_ctx);
        st.reserve(t, c);
        let embed = self.w(&self.embed);
        let erb = self.embed.ty.bytes_for(dim).unwrap_or(0);
        for (i, &tok) in tokens.iter().enumerate() {
            let tok = (tok as usize).min(c.vocab_size - 1);
            dequantize_row(self.embed.ty, &embed[tok * erb..(tok + 1) * erb], &mut st.x[i * dim..(i + 1) * dim]);
        }
        for (l, layer) in self.layers.iter().enumerate() {
            // attention half: x += Wo · attn(rope(Wq h), rope(Wk h), Wv h), h = rmsnorm(x)
            rms_norm(&st.x[..t * dim], &layer.attn_norm, c.rms_norm_eps as f32, &mut st.h[..t * dim]);
            self.matmul(&layer.wq, &st.h, t, &mut st.acts, &mut st.q);
            self.matmul(&layer.wk, &st.h, t, &mut st.acts, &mut st.k);
            self.matmul(&layer.wv, &st.h, t, &mut st.acts, &mut st.v);
            if let Some([bq, bk, bv]) = &layer.bias {
                add_rows(&mut st.q[..t * q_dim], bq);
                add_rows(&mut st.k[..t * kv_dim], bk);
                add_rows(&mut st.v[..t * kv_dim], bv);
            }
            for i in 0..t {
                let (cos, sin) = st.rope.at(pos0 + i);
                for h in 0..nh {
                    rope_head(&mut st.q[i * q_dim + h * hd..i * q_dim + (h + 1) * hd], cos, sin, c.rope_layout);
                }
                for h in 0..nkv {
                    let k = &mut st.k[i * kv_dim + h * hd..i * kv_dim + (h + 1) * hd];
                    rope_head(k, cos, sin, c.rope_layout);
                    let at = ((l * nkv + h) * st.n_ctx + pos0 + i) * hd;
                    st.cache_k[at..at + hd].copy_from_slice(k);
                    st.cache_v[at..at + hd].copy_from_slice(&st.v[i * kv_dim + h * hd..i * kv_dim + (h + 1) * hd]);
                }
            }
            self.attention(st, l, t, pos0);
            self.matmul(&layer.wo, &st.att, t, &mut st.acts, &mut st.h);
            add(&mut st.x[..t * dim], &st.h[..t * dim]);
            // MLP half: x += down(silu(gate h) ⊙ up h), h = rmsnorm(x)
            rms_norm(&st.x[..t * dim], &layer.ffn_norm, c.rms_norm_eps as f32, &mut st.h[..t * dim]);
            self.matmul(&layer.gate, &st.h, t, &mut st.acts, &mut st.g);
            self.matmul(&layer.up, &st.h, t, &mut st.acts, &mut st.u);
            for (g, &u) in st.g[..t * ffn].iter_mut().zip(&st.u[..t * ffn]) {
                *g = *g / (1.0 + simd::exp_f32(-*g)) * u;
            }
            self.matmul(&layer.down, &st.g, t, &mut st.acts, &mut st.h);
            add(&mut st.x[..t * dim], &st.h[..t * dim]);
        }
        st.len += t;
    }

    /// Causal attention of the `t` new queries over the cached keys and values, split over the
    /// pool by (token, head); prefill goes by blocks of queries ([`QLlama::attention_blocked`]).
    fn attention(&self, st: &mut QState, layer: usize, t: usize, pos0: usize) {
        if t >= ATT_BLOCK {
            return self.attention_blocked(st, layer, t, pos0);
        }
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.n_head, c.n_kv_head);
        let group = nh / nkv;
        let scale = 1.0 / (hd as f32).sqrt();
        let n_ctx = st.n_ctx;
        let (q, ck, cv) = (&st.q, &st.cache_k, &st.cache_v);
        let base = layer * nkv * n_ctx * hd;
        let att = SyncSlice(st.att.as_mut_ptr());
        let scores = SyncSlice(st.scores.as_mut_ptr());
        let threads = self.pool.threads();
        self.pool.run(&|tid| {
            let (w0, w1) = share(t * nh, tid, threads, 1);
            // SAFETY: each thread uses its own row of `scores` (n_ctx floats, tid-th) and
            // writes the output vectors of its own (token, head) items.
            let s = unsafe { std::slice::from_raw_parts_mut(scores.get().add(tid * n_ctx), n_ctx) };
            for item in w0..w1 {
                let (i, h) = (item / nh, item % nh);
                let kvh = h / group;
                let qv = &q[i * nh * hd + h * hd..i * nh * hd + (h + 1) * hd];
                let n = pos0 + i + 1; // positions this query may see
                let kbase = base + kvh * n_ctx * hd;
                let mut m = f32::NEG_INFINITY;
                for (j, sj) in s[..n].iter_mut().enumerate() {
                    *sj = simd::dot(qv, &ck[kbase + j * hd..kbase + (j + 1) * hd]) * scale;
                    m = m.max(*sj);
                }
                let mut z = 0.0;
                for sj in &mut s[..n] {
                    *sj = simd::exp_f32(*sj - m);
                    z += *sj;
                }
                // SAFETY: item (i, h) is this thread's; its output is a disjoint slice.
                let out = unsafe { std::slice::from_raw_parts_mut(att.get().add(i * nh * hd + h * hd), hd) };
                out.fill(0.0);
                for (j, &p) in s[..n].iter().enumerate() {
                    simd::axpy(out, p / z, &cv[kbase + j * hd..kbase + (j + 1) * hd]);
                }
            }
        });
    }

    /// Prefill attention as matrix products, per (head, block of [`ATT_BLOCK`] queries):
    /// `S = Q·Kᵀ/√d` over every key the block's last query sees, the causal softmax row by row
    /// (row `r` sees `pos0 + i0 + r + 1` keys; the rest of the row is set to 0), then
    /// `O = P·V`. Two small GEMMs replace one dot product and one axpy per (query, key) pair,
    /// and the wasted upper triangle of each block is at most `ATT_BLOCK²/2` products.
    fn attention_blocked(&self, st: &mut QState, layer: usize, t: usize, pos0: usize) {
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.n_head, c.n_kv_head);
        let (group, q_dim) = (nh / nkv, nh * hd);
        let scale = 1.0 / (hd as f32).sqrt();
        let n_ctx = st.n_ctx;
        let blocks = t.div_ceil(ATT_BLOCK);
        let (q, ck, cv) = (&st.q, &st.cache_k, &st.cache_v);
        let base = layer * nkv * n_ctx * hd;
        let att = SyncSlice(st.att.as_mut_ptr());
        let scratch = SyncSlice(st.block_scratch.as_mut_ptr());
        let per_thread = ATT_BLOCK * (n_ctx + hd);
        let threads = self.pool.threads();
        assert!(st.block_scratch.len() >= threads * per_thread, "qllama: block scratch not reserved");
        self.pool.run(&|tid| {
            let (w0, w1) = share(nh * blocks, tid, threads, 1);
            // SAFETY: thread tid uses only its own slice of the scratch buffer.
            let mine = unsafe { std::slice::from_raw_parts_mut(scratch.get().add(tid * per_thread), per_thread) };
            let (s, o) = mine.split_at_mut(ATT_BLOCK * n_ctx);
            for item in w0..w1 {
                let (h, b) = (item / blocks, item % blocks);
                let (i0, i1) = (b * ATT_BLOCK, ((b + 1) * ATT_BLOCK).min(t));
                let (m, n) = (i1 - i0, pos0 + i1);
                let kbase = base + (h / group) * n_ctx * hd;
                let q_blk = MatRef { off: i0 * q_dim + h * hd, rs: q_dim, cs: 1 };
                let k_t = MatRef { off: kbase, rs: 1, cs: hd };
                gemm_into(m, hd, n, &mut s[..m * n], n, false, q, q_blk, ck, k_t, scale, 1);
                for r in 0..m {
                    let row = &mut s[r * n..(r + 1) * n];
                    let seen = pos0 + i0 + r + 1;
                    let mx = simd::max(&row[..seen]);
                    let z = simd::exp_sub_sum(&mut row[..seen], mx);
                    simd::scale(&mut row[..seen], 1.0 / z);
                    row[seen..].fill(0.0);
                }
                let p = MatRef { off: 0, rs: n, cs: 1 };
                let v = MatRef { off: kbase, rs: hd, cs: 1 };
                gemm_into(m, n, hd, &mut o[..m * hd], hd, false, &s[..m * n], p, cv, v, 1.0, 1);
                for r in 0..m {
                    // SAFETY: item (h, b) is this thread's; rows i0..i1 of head h's columns
                    // of `att` are written by no other item.
                    let dst = unsafe { std::slice::from_raw_parts_mut(att.get().add((i0 + r) * q_dim + h * hd), hd) };
                    dst.copy_from_slice(&o[r * hd..(r + 1) * hd]);
                }
            }
        });
    }

    /// Logits `(rows, V)` of the final hidden states `st.x[from..t]`, into `out`.
    fn logits(&self, st: &mut QState, from: usize, t: usize, out: &mut [f32]) {
        let c = &self.config;
        let dim = c.hidden_size;
        let rows = t - from;
        rms_norm(&st.x[from * dim..t * dim], &self.norm, c.rms_norm_eps as f32, &mut st.h[..rows * dim]);
        self.matmul(&self.output, &st.h, rows, &mut st.acts, out);
    }

    /// Bytes of weights a decoding step reads (every matrix once).
    pub fn weight_bytes(&self) -> usize {
        let l: usize = self
            .layers
            .iter()
            .map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down].iter().map(|w| w.bytes.len()).sum::<usize>())
            .sum();
        l + self.output.bytes.len()
    }
}

/// From this many new tokens on, attention runs by blocks of this many queries as matrix
/// products ([`QLlama::attention_blocked`]).
const ATT_BLOCK: usize = 32;

/// Largest number of tokens one forward pass processes; longer inputs go in pieces.
const MAX_BATCH: usize = 256;

/// The per-sequence state: KV cache and every scratch buffer.
pub struct QState {
    n_ctx: usize,
    len: usize,
    /// Keys, `(L, Hk, n_ctx, D)`: position `p` of kv head `h` in layer `l` at `((l·Hk + h)·n_ctx + p)·D`.
    cache_k: Vec<f32>,
    /// Values, laid out as the keys.
    cache_v: Vec<f32>,
    rope: RopeTable,
    cap: usize,
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    scores: Vec<f32>,
    /// Per thread, the scores of a block of queries and its output (prefill attention);
    /// allocated by the first prefill.
    block_scratch: Vec<f32>,
    threads: usize,
    acts: QuantizedActs,
}

impl QState {
    fn new(c: &LlamaConfig, n_ctx: usize, threads: usize) -> QState {
        let kv = c.n_layer * c.n_kv_head * n_ctx * c.head_dim;
        QState {
            n_ctx,
            len: 0,
            cache_k: vec![0.0; kv],
            cache_v: vec![0.0; kv],
            rope: RopeTable::new(n_ctx, c.head_dim, c.rope_theta),
            cap: 0,
            x: Vec::new(),
            h: Vec::new(),
            q: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            att: Vec::new(),
            g: Vec::new(),
            u: Vec::new(),
            scores: vec![0.0; threads * n_ctx],
            block_scratch: Vec::new(),
            threads,
            acts: QuantizedActs::default(),
        }
    }

    /// Makes the scratch buffers hold `t` tokens (allocates only when `t` grows).
    fn reserve(&mut self, t: usize, c: &LlamaConfig) {
        if t >= ATT_BLOCK && self.block_scratch.is_empty() {
            self.block_scratch = vec![0.0; self.threads * ATT_BLOCK * (self.n_ctx + c.head_dim)];
        }
        if t <= self.cap {
            return;
        }
        let (dim, q, kv, f) = (c.hidden_size, c.n_head * c.head_dim, c.n_kv_head * c.head_dim, c.intermediate_size);
        for (buf, w) in [
            (&mut self.x, dim),
            (&mut self.h, dim.max(q)),
            (&mut self.q, q),
            (&mut self.k, kv),
            (&mut self.v, kv),
            (&mut self.att, q),
            (&mut self.g, f),
            (&mut self.u, f),
        ] {
            buf.resize(t * w, 0.0);
        }
        self.cap = t;
    }

    /// Bytes held by the KV cache.
    pub fn cache_bytes(&self) -> usize {
        4 * (self.cache_k.len() + self.cache_v.len())
    }
}

impl CausalLm for QLlama {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn context_len(&self) -> usize {
        self.config.max_seq_len
    }
    fn new_state(&self, n_ctx: usize) -> Box<dyn Any> {
        Box::new(QState::new(&self.config, n_ctx.clamp(1, self.config.max_seq_len), self.pool.threads()))
    }
    fn feed(&self, state: &mut dyn Any, tokens: &[u32], logits_from: usize, out: &mut Vec<f32>) {
        let st = state.downcast_mut::<QState>().expect("feed: a state made by QLlama::new_state");
        let v = self.config.vocab_size;
        let wanted = tokens.len().saturating_sub(logits_from);
        out.resize(wanted * v, 0.0); // no allocation once `out` has held this many rows
        for (piece, chunk) in tokens.chunks(MAX_BATCH).enumerate() {
            let start = piece * MAX_BATCH;
            self.forward(st, chunk);
            let from = logits_from.max(start);
            if from < start + chunk.len() {
                let dst = &mut out[(from - logits_from) * v..(start + chunk.len() - logits_from) * v];
                self.logits(st, from - start, chunk.len(), dst);
            }
        }
    }
}

/// `cos(p·θ_i)`, `sin(p·θ_i)` for every position, `θ_i = base^(−2i/D)`, computed in f64.
struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    fn new(n_ctx: usize, d: usize, base: f64) -> RopeTable {
        let half = d / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(n_ctx * half), Vec::with_capacity(n_ctx * half));
        for p in 0..n_ctx {
            for i in 0..half {
                let a = p as f64 * base.powf(-2.0 * i as f64 / d as f64);
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        RopeTable { half, cos, sin }
    }

    fn at(&self, pos: usize) -> (&[f32], &[f32]) {
        (&self.cos[pos * self.half..(pos + 1) * self.half], &self.sin[pos * self.half..(pos + 1) * self.half])
    }
}

/// Rotates each channel pair of one head by its angle.
fn rope_head(x: &mut [f32], cos: &[f32], sin: &[f32], layout: RopeLayout) {
    let half = x.len() / 2;
    for i in 0..half {
        let (a, b) = match layout {
            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
            RopeLayout::HalfSplit => (i, i + half),
        };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * cos[i] - x1 * sin[i];
        x[b] = x0 * sin[i] + x1 * cos[i];
    }
}

/// `y = x / √(mean(x²) + ε) · g`, row by row (the sum of squares in f64, as llama.cpp).
fn rms_norm(x: &[f32], g: &[f32], eps: f32, y: &mut [f32]) {
    let n = g.len();
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        let ss: f64 = xr.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let r = 1.0 / ((ss / n as f64) as f32 + eps).sqrt();
        for ((yi, &xi), &gi) in yr.iter_mut().zip(xr).zip(g) {
            *yi = xi * r * gi;
        }
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

fn add_rows(x: &mut [f32], b: &[f32]) {
    x.chunks_exact_mut(b.len()).for_each(|r| add(r, b));
}

#[derive(Clone, Copy)]
struct SyncSlice(*mut f32);
// SAFETY: shared only within one `SpinPool::run`, where each thread touches disjoint elements.
unsafe impl Send for SyncSlice {}
// SAFETY: as above.
unsafe impl Sync for SyncSlice {}

impl SyncSlice {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper, not the field).
    fn get(self) -> *mut f32 {
        self.0
    }
}
