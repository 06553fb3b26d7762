//! GPT-2: a decoder-only Transformer trained by next-token prediction.
//!
//! References: Radford et al. 2019 (GPT-2); Karpathy's nanoGPT `model.py` for the layout and
//! parameter names. Notable features:
//! - learned absolute position embeddings (or another scheme of [`Positions`]: sinusoidal,
//!   RoPE, ALiBi, none), pre-LayerNorm blocks, GELU (tanh) MLP of width 4C;
//! - causal self-attention on the fused FlashAttention-style op (no (T, T) matrix is kept);
//! - the LM head is tied to the token embedding (`logits = x · wteᵀ`);
//! - the vocabulary is padded to a multiple of 64 inside the model (`Vp`); targets stay `< V`;
//! - GPT-2 initialisation: N(0, 0.02²), residual projections scaled by `1/√(2·n_layer)`.
//!
//! Shapes: `B` batch, `T` time, `C = n_embd`, `H = n_head`, `hs = C/H`, `Vp` padded vocab.

use crate::engine::{self, fit, next_model_id, Batch, EngineError, KvShape, KvType, Session, SessionOpts};
use crate::positions::{alibi_bias, alibi_slopes, sinusoidal_row, sinusoidal_table, Positions};
use crate::sample::CausalLm;
use serde::{Deserialize, Serialize};
use yuanli_autograd::{AttentionOpts, GeluKind, RopeOpts, Var};
use yuanli_nn::{join, Embedding, Init, LayerNorm, Linear, Module, ParamStore};
use yuanli_tensor::cpu::{layernorm_row, rope_angles, rope_row_inplace, simd, SpinPool};
use yuanli_tensor::{DType, Rng, RopeFreqs, RopeLayout, Tensor};

/// Why a configuration cannot describe a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field is out of range.
    #[error("invalid GPT config: {0}")]
    Invalid(String),
    /// Registering parameters failed.
    #[error(transparent)]
    Params(#[from] yuanli_nn::Error),
}

/// Hyper-parameters of a GPT.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    /// Vocabulary size V (the tokenizer's; padded to `Vp` internally).
    pub vocab_size: usize,
    /// Maximum context length T.
    pub block_size: usize,
    /// Number of Transformer blocks L.
    pub n_layer: usize,
    /// Attention heads H.
    pub n_head: usize,
    /// Embedding width C (a multiple of H).
    pub n_embd: usize,
    /// Dropout probability in training.
    #[serde(default)]
    pub dropout: f64,
    /// Biases in Linear and LayerNorm layers (GPT-2 has them).
    #[serde(default = "default_true")]
    pub bias: bool,
    /// How positions enter the model (GPT-2: learned).
    #[serde(default)]
    pub positions: Positions,
}

fn default_true() -> bool {
    true
}

impl GptConfig {
    /// A named preset: `baby` (4/4/128, block 64, char vocab), `char-6x384` (6/6/384, block
    /// 256), `gpt2-124m` (12/12/768, block 1024, V 50257).
    pub fn preset(name: &str, vocab_size: usize) -> Option<GptConfig> {
        let (n_layer, n_head, n_embd, block_size) = match name {
            "baby" => (4, 4, 128, 64),
            "char-6x384" => (6, 6, 384, 256),
            "gpt2-124m" => (12, 12, 768, 1024),
            _ => return None,
        };
        Some(GptConfig {
            vocab_size,
            block_size,
            n_layer,
            n_head,
            n_embd,
            dropout: 0.0,
            bias: true,
            positions: Positions::Learned,
        })
    }

    /// Checks the fields, naming the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.vocab_size == 0 || self.block_size == 0 || self.n_layer == 0 || self.n_head == 0 || self.n_embd == 0 {
            return bad(format!("vocab_size, block_size, n_layer, n_head and n_embd must be positive: {self:?}"));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!("n_embd = {} is not divisible by n_head = {}", self.n_embd, self.n_head));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout = {} must be in [0, 1)", self.dropout));
        }
        if self.positions == Positions::Rope && !(self.n_embd / self.n_head).is_multiple_of(2) {
            return bad(format!(
                "positions = \"rope\" needs an even head size, n_embd / n_head = {}",
                self.n_embd / self.n_head
            ));
        }
        Ok(())
    }

    /// `Vp`: the vocabulary padded up to a multiple of 64.
    pub fn padded_vocab(&self) -> usize {
        self.vocab_size.next_multiple_of(64)
    }

    /// Parameters in the model (the tied head counted once).
    pub fn num_params(&self) -> usize {
        let (c, l, b) = (self.n_embd, self.n_layer, usize::from(self.bias));
        let per_block = 2 * (c + b * c) // two LayerNorms
            + (3 * c * c + b * 3 * c) + (c * c + b * c) // attention
            + (4 * c * c + b * 4 * c) + (4 * c * c + b * c); // MLP
        let wpe = if self.positions == Positions::Learned { self.block_size * c } else { 0 };
        self.padded_vocab() * c + wpe + l * per_block + (c + b * c)
    }

    /// Training FLOPs per token (PaLM appendix B): `6N + 12·L·C·T`, with N the non-embedding
    /// parameters plus the LM head, and the attention term for a full context `T`.
    pub fn flops_per_token(&self) -> f64 {
        let wpe = if self.positions == Positions::Learned { self.block_size * self.n_embd } else { 0 };
        let n = (self.num_params() - wpe) as f64;
        6.0 * n + 12.0 * (self.n_layer * self.n_embd * self.block_size) as f64
    }
}

/// Causal multi-head self-attention.
struct CausalSelfAttention {
    c_attn: Linear,
    c_proj: Linear,
    n_head: usize,
}

/// What attention needs to know about positions in one forward pass: RoPE's frequencies
/// (`positions = "rope"`), ALiBi's `(H, T, T)` scores (`"alibi"`).
#[derive(Default)]
struct PosOpts {
    rope: Option<RopeFreqs>,
    alibi: Option<Tensor>,
}

impl CausalSelfAttention {
    /// Queries, keys and values `(B, H, T, hs)` of `x (B, T, C)`: views only — slice the last
    /// axis of the fused projection, split it into heads, move heads before time; queries and
    /// keys rotated first under RoPE.
    fn qkv(&self, x: &Var, pos: &PosOpts) -> (Var, Var, Var) {
        let (b, t, c) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let (h, hs) = (self.n_head, c / self.n_head);
        let qkv = self.c_attn.forward(x); // (B, T, 3C)
        let heads = |i: usize| {
            let y = qkv.narrow(-1, i * c, c).reshape(&[b, t, h, hs]); // (B, T, H, hs)
            let y = match (&pos.rope, i) {
                (Some(freqs), 0 | 1) => y.rope(RopeOpts { seq_axis: 1, pos0: 0, freqs, layout: RopeLayout::HalfSplit }),
                _ => y,
            };
            y.permute(&[0, 2, 1, 3]) // (B, H, T, hs)
        };
        (heads(0), heads(1), heads(2))
    }

    /// Causal attention of the queries over `k`, `v` (plus ALiBi's scores), heads merged back
    /// and projected.
    fn attend(&self, q: &Var, k: &Var, v: &Var, pos: &PosOpts) -> Var {
        let (b, h, t, hs) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
        // With fewer queries than keys (decoding), the queries are the last positions.
        let opts = AttentionOpts { causal: true, mask: pos.alibi.clone(), ..Default::default() };
        let y = Var::attention(q, k, v, &opts); // (B, H, T, hs)
        self.c_proj.forward(&y.permute(&[0, 2, 1, 3]).reshape(&[b, t, h * hs])) // (B, T, C)
    }

    fn forward(&self, x: &Var, pos: &PosOpts) -> Var {
        let (q, k, v) = self.qkv(x, pos);
        self.attend(&q, &k, &v, pos)
    }
}

/// One pre-LayerNorm Transformer block.
struct Block {
    ln_1: LayerNorm,
    attn: CausalSelfAttention,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
}

impl Block {
    /// The MLP half of the block: `c_proj(gelu(c_fc(ln_2(x))))`, width 4C inside.
    fn mlp(&self, x: &Var) -> Var {
        self.c_proj.forward(&self.c_fc.forward(&self.ln_2.forward(x)).gelu(GeluKind::Tanh))
    }
}

/// A GPT-2 model.
pub struct Gpt {
    /// The configuration it was built from.
    pub config: GptConfig,
    /// Which inference sessions belong to this model.
    id: u64,
    wte: Embedding,
    /// Learned positions (`positions = "learned"` only).
    wpe: Option<Embedding>,
    /// ALiBi's slope per head (`"alibi"` only), for the engine.
    alibi: Vec<f32>,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
}

impl Gpt {
    /// Builds the model, registering every parameter in `store` with GPT-2 initialisation.
    pub fn new(config: GptConfig, store: &mut ParamStore, rng: &mut Rng) -> Result<Gpt, ConfigError> {
        config.validate()?;
        let c = config.n_embd;
        let std = Init::Normal { std: 0.02 };
        let proj_std = Init::Normal { std: 0.02 / (2.0 * config.n_layer as f64).sqrt() };
        let eps = 1e-5;
        let wte = Embedding::new(store, "wte", config.padded_vocab(), c, std, rng)?;
        let wpe = match config.positions {
            Positions::Learned => Some(Embedding::new(store, "wpe", config.block_size, c, std, rng)?),
            _ => None,
        };
        let alibi = match config.positions {
            Positions::Alibi => alibi_slopes(config.n_head).into_iter().map(|m| m as f32).collect(),
            _ => vec![],
        };
        let mut blocks = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("h.{i}");
            blocks.push(Block {
                ln_1: LayerNorm::new(store, &join(&p, "ln_1"), c, config.bias, eps)?,
                attn: CausalSelfAttention {
                    c_attn: Linear::new(store, &join(&p, "attn.c_attn"), c, 3 * c, config.bias, std, rng)?,
                    c_proj: Linear::new(store, &join(&p, "attn.c_proj"), c, c, config.bias, proj_std, rng)?,
                    n_head: config.n_head,
                },
                ln_2: LayerNorm::new(store, &join(&p, "ln_2"), c, config.bias, eps)?,
                c_fc: Linear::new(store, &join(&p, "mlp.c_fc"), c, 4 * c, config.bias, std, rng)?,
                c_proj: Linear::new(store, &join(&p, "mlp.c_proj"), 4 * c, c, config.bias, proj_std, rng)?,
            });
        }
        let ln_f = LayerNorm::new(store, "ln_f", c, config.bias, eps)?;
        Ok(Gpt { config, id: next_model_id(), wte, wpe, alibi, blocks, ln_f })
    }

    /// The token embeddings of `idx (B, T)` with the positions added (learned or sinusoidal),
    /// and what attention needs for RoPE or ALiBi.
    fn embed(&self, idx: &Tensor) -> (Var, PosOpts) {
        let (t, c) = (idx.dim(1), self.config.n_embd);
        let x = self.wte.forward(idx); // (B, T, C)
        let dt = x.value().dtype();
        let mut pos = PosOpts::default();
        let x = match (self.config.positions, &self.wpe) {
            (Positions::Learned, Some(wpe)) => x.add(&wpe.forward(&Tensor::arange(t, DType::U32))),
            // As Vaswani et al. (§3.4): the embedding × √C, so that tokens are not drowned by a
            // position vector of norm √(C/2) while the embeddings are small.
            (Positions::Sinusoidal, _) => {
                x.scale((c as f64).sqrt()).add(&Var::constant(sinusoidal_table(t, c).to_dtype(dt)))
            }
            (Positions::Rope, _) => {
                pos.rope = Some(RopeFreqs::new(c / self.config.n_head, 10_000.0));
                x
            }
            (Positions::Alibi, _) => {
                pos.alibi = Some(alibi_bias(self.config.n_head, t, t, dt));
                x
            }
            _ => x,
        };
        (x, pos)
    }

    /// Logits `(B, T, Vp)` for token ids `(B, T)` (u32; `T ≤ block_size` with learned
    /// positions, any `T` with the others). Dropout is active only when `train`.
    #[track_caller]
    pub fn forward(&self, idx: &Tensor, train: bool, rng: &mut Rng) -> Var {
        let t = idx.dim(1);
        assert!(
            t <= self.config.block_size || self.config.positions != Positions::Learned,
            "gpt: sequence of {t} tokens exceeds block_size {} (learned positions)",
            self.config.block_size
        );
        let p = self.config.dropout;
        let (x, pos) = self.embed(idx);
        let mut x = x.dropout(p, train, rng); // (B, T, C)
        for blk in &self.blocks {
            x = x.add(&blk.attn.forward(&blk.ln_1.forward(&x), &pos).dropout(p, train, rng));
            x = x.add(&blk.mlp(&x).dropout(p, train, rng));
        }
        self.wte.weight.linear(&self.ln_f.forward(&x), None) // (B, T, Vp) = x·wteᵀ: the head is tied to wte
    }

    /// The attention probabilities of every head of block `layer` for `idx (B, T)`:
    /// `softmax(QKᵀ/√hs + causal mask)` as a `(B, H, T, T)` tensor. The fused kernel never
    /// stores this matrix; this is the explicit composite path, for looking at what a head does.
    #[track_caller]
    pub fn attention_probs(&self, idx: &Tensor, layer: usize) -> Tensor {
        assert!(layer < self.blocks.len(), "attention_probs: layer {layer} of {}", self.blocks.len());
        let _g = yuanli_autograd::no_grad();
        let t = idx.dim(1);
        let (mut x, pos) = self.embed(idx);
        for (i, blk) in self.blocks.iter().enumerate() {
            if i == layer {
                let (q, k, _) = blk.attn.qkv(&blk.ln_1.forward(&x), &pos); // (B, H, T, hs)
                let hs = q.shape()[3];
                let mut s = q.matmul(&k.t()).scale(1.0 / (hs as f64).sqrt()); // (B, H, T, T)
                if let Some(b) = &pos.alibi {
                    s = s.add(&Var::constant(b.clone()));
                }
                let allowed: Vec<f64> = (0..t * t).map(|ij| if ij % t <= ij / t { 1.0 } else { 0.0 }).collect();
                let masked = Tensor::where_cond(
                    &Tensor::new(allowed, &[t, t]),
                    s.value(),
                    &Tensor::full(f64::NEG_INFINITY, &[], s.value().dtype()),
                );
                return masked.softmax();
            }
            x = x.add(&blk.attn.forward(&blk.ln_1.forward(&x), &pos));
            x = x.add(&blk.mlp(&x));
        }
        unreachable!("layer index checked above")
    }

    /// Mean next-token cross-entropy of `idx (B, T)` against `targets (B, T)`. Only the `V`
    /// real vocabulary columns take part in the softmax: the padding exists for speed, and
    /// must hold no probability mass.
    pub fn loss(&self, idx: &Tensor, targets: &Tensor, train: bool, rng: &mut Rng) -> Var {
        let logits = self.forward(idx, train, rng);
        let v = self.config.vocab_size;
        let logits = if v == self.config.padded_vocab() { logits } else { logits.narrow(-1, 0, v) };
        logits.cross_entropy(targets, None)
    }
}

/// The inference engine's step for GPT-2: the same blocks as [`Gpt::forward`] on slices —
/// LayerNorm rows, the fused q|k|v projection, paged causal attention (every head its own KV
/// head), the GELU MLP, biases where the config has them — for tokens of many sequences at
/// once (see [`crate::engine`]).
impl Gpt {
    /// The KV geometry of one position.
    pub fn kv_shape(&self) -> KvShape {
        let c = &self.config;
        KvShape { layers: c.n_layer, kv_heads: c.n_head, head_dim: c.n_embd / c.n_head }
    }

    fn piece(&self, s: &mut Session, batch: &Batch, (t0, t1): (usize, usize), pool: &SpinPool) {
        let c = self.config.n_embd;
        let t = t1 - t0;
        let mut sc = std::mem::take(&mut s.scratch);
        for (buf, w) in [(&mut sc.x, c), (&mut sc.h, c), (&mut sc.q, c), (&mut sc.k, c), (&mut sc.v, c)] {
            fit(buf, t * w);
        }
        for (buf, w) in [(&mut sc.att, c), (&mut sc.g, 4 * c), (&mut sc.u, 4 * c)] {
            fit(buf, t * w);
        }
        let (h, hs) = (self.config.n_head, c / self.config.n_head);
        let rope = self.config.positions == Positions::Rope;
        if rope {
            fit(&mut sc.cos, t * hs / 2);
            fit(&mut sc.sin, t * hs / 2);
            crate::RopeScaling::None.freqs_into(hs, 10_000.0, 0, &mut sc.rope);
        }
        for (i, &tok) in batch.tokens()[t0..t1].iter().enumerate() {
            let (x, p) = (&mut sc.x[i * c..(i + 1) * c], &mut sc.h[i * c..(i + 1) * c]);
            self.wte.weight.row_into(tok as usize, x);
            let at = s.plan.pos[t0 + i];
            match (self.config.positions, &self.wpe) {
                (Positions::Learned, Some(wpe)) => {
                    wpe.weight.row_into(at, p);
                    engine::add(x, p);
                }
                (Positions::Sinusoidal, _) => {
                    simd::scale(x, (c as f32).sqrt());
                    sinusoidal_row(at, p);
                    engine::add(x, p);
                }
                (Positions::Rope, _) => {
                    let r = i * hs / 2..(i + 1) * hs / 2;
                    rope_angles(at, &sc.rope, &mut sc.cos[r.clone()], &mut sc.sin[r]);
                }
                _ => {}
            }
        }
        let spec =
            engine::AttnSpec { alibi: (!self.alibi.is_empty()).then_some(&self.alibi[..]), ..Default::default() };
        let norm_rows = |ln: &LayerNorm, x: &[f32], y: &mut [f32]| {
            x[..t * c].chunks_exact(c).zip(y.chunks_exact_mut(c)).for_each(|(xr, yr)| norm_row(ln, xr, yr))
        };
        let linear = |l: &Linear, x: &[f32], acts: &mut _, y: &mut [f32]| {
            engine::matmul(&l.weight, x, t, acts, y, pool);
            if let Some(b) = &l.bias {
                engine::add_bias(&mut y[..t * l.weight.rows()], b);
            }
        };
        for (l, blk) in self.blocks.iter().enumerate() {
            norm_rows(&blk.ln_1, &sc.x, &mut sc.h);
            linear(&blk.attn.c_attn, &sc.h, &mut sc.acts, &mut sc.g); // (t, 3C) = q | k | v
            for (i, qkv) in sc.g[..t * 3 * c].chunks_exact(3 * c).enumerate() {
                sc.q[i * c..(i + 1) * c].copy_from_slice(&qkv[..c]);
                sc.k[i * c..(i + 1) * c].copy_from_slice(&qkv[c..2 * c]);
                sc.v[i * c..(i + 1) * c].copy_from_slice(&qkv[2 * c..]);
                if rope {
                    let (cr, sr) = (&sc.cos[i * hs / 2..(i + 1) * hs / 2], &sc.sin[i * hs / 2..(i + 1) * hs / 2]);
                    for head in sc.q[i * c..(i + 1) * c]
                        .chunks_exact_mut(hs)
                        .chain(sc.k[i * c..(i + 1) * c].chunks_exact_mut(hs))
                    {
                        rope_row_inplace(head, cr, sr, RopeLayout::HalfSplit);
                    }
                }
            }
            s.write_kv(l, t0, &sc.k[..t * c], &sc.v[..t * c]);
            s.attention(l, h, (t0, t1), &sc.q, &mut sc.att, spec, pool);
            linear(&blk.attn.c_proj, &sc.att, &mut sc.acts, &mut sc.h);
            engine::add(&mut sc.x[..t * c], &sc.h[..t * c]);
            norm_rows(&blk.ln_2, &sc.x, &mut sc.h);
            linear(&blk.c_fc, &sc.h, &mut sc.acts, &mut sc.g);
            simd::gelu_tanh_forward(&mut sc.u[..t * 4 * c], &sc.g[..t * 4 * c]);
            linear(&blk.c_proj, &sc.u, &mut sc.acts, &mut sc.h);
            engine::add(&mut sc.x[..t * c], &sc.h[..t * c]);
        }
        s.scratch = sc;
    }
}

/// LayerNorm of one row with the layer's gain and shift.
fn norm_row(ln: &LayerNorm, x: &[f32], y: &mut [f32]) {
    ln.weight.value().with_slice(|w: &[f32]| match &ln.bias {
        Some(b) => b.value().with_slice(|b: &[f32]| layernorm_row(y, x, w, Some(b), ln.eps as f32)),
        None => layernorm_row(y, x, w, None, ln.eps as f32),
    })
}

impl CausalLm for Gpt {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn context_len(&self) -> usize {
        self.config.block_size
    }

    fn new_session(&self, opts: SessionOpts) -> Session {
        Session::new(self.id, self.kv_shape(), opts, KvType::F32)
    }

    fn forward_batch(&self, s: &mut Session, batch: &Batch, logits: &mut Vec<f32>) -> Result<(), EngineError> {
        let (v, c) = (self.config.vocab_size, self.config.n_embd);
        let head = |s: &mut Session, t0: usize, rows: std::ops::Range<usize>, out: &mut [f32], pool: &SpinPool| {
            let sc = &mut s.scratch;
            let wanted = &s.plan.logit_rows[rows];
            for (j, &r) in wanted.iter().enumerate() {
                norm_row(&self.ln_f, &sc.x[(r - t0) * c..(r - t0 + 1) * c], &mut sc.h[j * c..(j + 1) * c]);
            }
            // The head is tied to the embedding; only its first V rows (the real vocabulary).
            engine::matmul_rows(&self.wte.weight, v, &sc.h, wanted.len(), &mut sc.acts, out, pool);
        };
        let sizes = (v, self.config.block_size);
        engine::run_step(s, self.id, batch, sizes, logits, &|s, b, r, p| self.piece(s, b, r, p), &head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_count_and_validation() {
        let cfg = GptConfig::preset("gpt2-124m", 50257).unwrap();
        let mut store = ParamStore::new();
        let _m = Gpt::new(cfg.clone(), &mut store, &mut Rng::new(0)).unwrap();
        assert_eq!(store.num_params(), cfg.num_params());
        // GPT-2 small: 124,475,904 parameters with the vocabulary padded to 50,304.
        assert_eq!(cfg.num_params(), 124_475_904);
        let bad = GptConfig { n_head: 5, ..cfg };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "invalid GPT config: n_embd = 768 is not divisible by n_head = 5"
        );
    }

    #[test]
    fn engine_decoding_matches_the_full_forward_at_every_step() {
        // every position scheme: the engine's own sinusoid, rotation and ALiBi scores against
        // the training path's
        for positions in Positions::ALL {
            engine_matches_forward(positions);
        }
    }

    fn engine_matches_forward(positions: Positions) {
        use crate::engine::{Batch, Logits, SessionOpts};
        let cfg = GptConfig {
            vocab_size: 13,
            block_size: 16,
            n_layer: 2,
            n_head: 2,
            n_embd: 16,
            dropout: 0.0,
            bias: true,
            positions,
        };
        let mut store = ParamStore::new();
        let mut rng = Rng::new(3);
        let m = Gpt::new(cfg, &mut store, &mut rng).unwrap();
        let ids: Vec<u32> = vec![3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7];
        let mut s = m.new_session(SessionOpts { block_size: 4, ..SessionOpts::tokens(16) });
        let seq = s.add_sequence();
        let (mut batch, mut logits) = (Batch::new(), Vec::new());
        // A 10-token prefill (every row's logits; the blocked attention route), then one token
        // at a time (the per-token route).
        batch.add_seq(seq, 0, &ids[..10], Logits::All);
        m.forward_batch(&mut s, &batch, &mut logits).unwrap();
        let full = m.forward(&Tensor::new(ids[..10].to_vec(), &[1, 10]), false, &mut rng).value().clone();
        assert_close(&logits, &full.narrow(2, 0, 13).contiguous().to_vec::<f32>());
        for n in 11..=ids.len() {
            batch.clear();
            batch.add_seq(seq, n - 1, &ids[n - 1..n], Logits::Last);
            m.forward_batch(&mut s, &batch, &mut logits).unwrap();
            let full = m.forward(&Tensor::new(ids[..n].to_vec(), &[1, n]), false, &mut rng).value().narrow(1, n - 1, 1);
            assert_close(&logits, &full.narrow(2, 0, 13).contiguous().to_vec::<f32>());
        }
        assert_eq!(s.len(seq).unwrap(), ids.len());
    }

    fn assert_close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-5, "engine vs full logits differ by {worst}");
    }

    #[test]
    fn a_tiny_gpt_overfits_one_batch() {
        let cfg = GptConfig {
            vocab_size: 11,
            block_size: 8,
            n_layer: 2,
            n_head: 2,
            n_embd: 16,
            dropout: 0.0,
            bias: true,
            positions: Default::default(),
        };
        let mut store = ParamStore::new();
        let mut rng = Rng::new(1);
        let m = Gpt::new(cfg, &mut store, &mut rng).unwrap();
        let idx = Tensor::new((0..16u32).map(|i| i % 11).collect::<Vec<_>>(), &[2, 8]);
        let tgt = Tensor::new((1..17u32).map(|i| i % 11).collect::<Vec<_>>(), &[2, 8]);
        let mut opt = yuanli_nn_test_adam(&store);
        let mut last = f64::INFINITY;
        for _ in 0..150 {
            store.zero_grad();
            let l = m.loss(&idx, &tgt, true, &mut rng);
            last = l.value().item();
            l.backward();
            opt(&store);
        }
        assert!(last < 0.05, "loss after overfitting one batch: {last}");
    }

    /// A minimal Adam for the test (the real optimizers live in yuanli-train, above us).
    fn yuanli_nn_test_adam(store: &ParamStore) -> impl FnMut(&ParamStore) {
        let n = store.num_trainable();
        let (mut m, mut v, mut t) = (vec![0f32; n], vec![0f32; n], 0u64);
        move |s: &ParamStore| {
            t += 1;
            let step = yuanli_tensor::cpu::AdamStep {
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-8,
                weight_decay: 0.0,
                decoupled: true,
                t,
            };
            s.grad_arena().with_slice(|g: &[f32]| {
                s.value_arena()
                    .with_slice_mut(|p: &mut [f32]| yuanli_tensor::cpu::adam_update(p, g, &mut m, &mut v, step))
            });
        }
    }
}
