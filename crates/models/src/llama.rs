//! LLaMA: the decoder-only Transformer most open models share (Llama 1–3, SmolLM2, Qwen2,
//! Mistral without sliding windows).
//!
//! What changes from GPT-2 ([`crate::gpt`]), block by block:
//! - **RMSNorm** instead of LayerNorm: `x / √(mean(x²) + ε) · g` — no mean subtraction, no bias;
//! - **RoPE** instead of learned positions: queries and keys are rotated by an angle that grows
//!   with the position, so `q·k` depends only on the *distance* between the two tokens;
//! - **SwiGLU** MLP: `down(silu(gate(x)) ⊙ up(x))`, three matrices instead of two;
//! - **grouped-query attention**: `n_kv_head < n_head`, each key/value head serves
//!   `n_head / n_kv_head` query heads, shrinking the KV cache by that factor;
//! - no biases (Qwen2 keeps them on q, k, v), and optionally an untied LM head.
//!
//! Parameters are registered under Hugging Face's names (`model.layers.0.self_attn.q_proj.weight`)
//! so a safetensors checkpoint loads by name; the GGUF loader maps llama.cpp's names onto them.
//!
//! Shapes: `B` batch, `T` time, `C` hidden size, `H`/`Hk` query/key-value heads, `D` head size.

use crate::cache::{KvCache, LayerCache};
use serde::{Deserialize, Serialize};
use yuanli_autograd::{AttentionOpts, RopeOpts, Var};
use yuanli_nn::{join, Embedding, Init, Linear, Module, ParamStore, RmsNorm};
use yuanli_tensor::{Rng, RopeLayout, Tensor};

/// Hyper-parameters of a LLaMA-family model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size V.
    pub vocab_size: usize,
    /// Hidden size C.
    pub hidden_size: usize,
    /// Inner width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of blocks L.
    pub n_layer: usize,
    /// Query heads H.
    pub n_head: usize,
    /// Key/value heads Hk (`H % Hk == 0`; `Hk == H` is plain multi-head attention).
    pub n_kv_head: usize,
    /// Head size D (usually `C / H`).
    pub head_dim: usize,
    /// RoPE frequency base θ.
    pub rope_theta: f64,
    /// Which channels RoPE rotates together: half-split for Hugging Face weights, interleaved
    /// for GGUF files (llama.cpp's converter permutes the q/k rows to that order).
    #[serde(with = "layout_name")]
    pub rope_layout: RopeLayout,
    /// ε of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Longest context the model was trained for.
    pub max_seq_len: usize,
    /// Whether the LM head reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// Biases on the q, k, v projections (Qwen2).
    #[serde(default)]
    pub attention_bias: bool,
}

mod layout_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use yuanli_tensor::RopeLayout;

    pub(super) fn serialize<S: Serializer>(l: &RopeLayout, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match l {
            RopeLayout::HalfSplit => "half-split",
            RopeLayout::Interleaved => "interleaved",
        })
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RopeLayout, D::Error> {
        match String::deserialize(d)?.as_str() {
            "half-split" => Ok(RopeLayout::HalfSplit),
            "interleaved" => Ok(RopeLayout::Interleaved),
            other => Err(serde::de::Error::custom(format!("unknown rope layout {other:?}"))),
        }
    }
}

impl LlamaConfig {
    /// Checks the fields, naming the first problem.
    pub fn validate(&self) -> Result<(), String> {
        let c = self;
        if [c.vocab_size, c.hidden_size, c.intermediate_size, c.n_layer, c.n_head, c.n_kv_head, c.head_dim].contains(&0)
        {
            return Err(format!("every size must be positive: {c:?}"));
        }
        if !c.n_head.is_multiple_of(c.n_kv_head) {
            return Err(format!("n_head = {} is not a multiple of n_kv_head = {}", c.n_head, c.n_kv_head));
        }
        if !c.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim = {} must be even for RoPE", c.head_dim));
        }
        if !(c.rope_theta > 0.0 && c.rms_norm_eps > 0.0) {
            return Err(format!(
                "rope_theta = {} and rms_norm_eps = {} must be positive",
                c.rope_theta, c.rms_norm_eps
            ));
        }
        Ok(())
    }

    /// Parameters in the model.
    pub fn num_params(&self) -> usize {
        let (c, d) = (self.hidden_size, self.head_dim);
        let (q, kv) = (self.n_head * d, self.n_kv_head * d);
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let per_layer = 2 * c + c * (q + 2 * kv) + bias + q * c + 3 * c * self.intermediate_size;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * c };
        self.vocab_size * c + self.n_layer * per_layer + c + head
    }

    /// Bytes of KV cache per token at `bytes_per_value` (4 for f32): `2·L·Hk·D` values.
    pub fn kv_bytes_per_token(&self, bytes_per_value: usize) -> usize {
        2 * self.n_layer * self.n_kv_head * self.head_dim * bytes_per_value
    }
}

/// Grouped-query self-attention with rotary positions.
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    rope: RopeOpts,
}

impl Attention {
    /// `(B, t, C)` → heads `(B, heads, t, D)` of the projection `p`, rotated when `rope`.
    fn heads(&self, p: &Linear, x: &Var, n: usize, pos0: usize, rope: bool) -> Var {
        let (b, t) = (x.shape()[0], x.shape()[1]);
        let y = p.forward(x).reshape(&[b, t, n, self.head_dim]); // (B, t, n, D)
        let y = if rope { y.rope(RopeOpts { seq_axis: 1, pos0, ..self.rope }) } else { y };
        y.permute(&[0, 2, 1, 3])
    }

    /// Attention for `t` new positions after the `pos0` in `cache` (which it extends), or over
    /// the whole sequence when there is no cache.
    fn forward(&self, x: &Var, pos0: usize, cache: Option<&mut LayerCache>) -> Var {
        let (b, t) = (x.shape()[0], x.shape()[1]);
        let q = self.heads(&self.q_proj, x, self.n_head, pos0, true); // (B, H, t, D)
        let k = self.heads(&self.k_proj, x, self.n_kv_head, pos0, true); // (B, Hk, t, D)
        let v = self.heads(&self.v_proj, x, self.n_kv_head, pos0, false);
        let (k, v) = match cache {
            None => (k, v),
            Some(c) => {
                let (k, v) = c.append(k.value(), v.value()); // (B, Hk, pos0 + t, D)
                (Var::constant(k), Var::constant(v))
            }
        };
        let y = Var::attention(&q, &k, &v, &AttentionOpts { causal: true, ..Default::default() });
        self.o_proj.forward(&y.permute(&[0, 2, 1, 3]).reshape(&[b, t, self.n_head * self.head_dim]))
    }
}

/// One block: `x += attn(norm(x))`, then `x += mlp(norm(x))`.
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Block {
    fn forward(&self, x: &Var, pos0: usize, cache: Option<&mut LayerCache>) -> Var {
        let x = x.add(&self.self_attn.forward(&self.input_layernorm.forward(x), pos0, cache));
        let h = self.post_attention_layernorm.forward(&x);
        x.add(&self.down_proj.forward(&self.gate_proj.forward(&h).swiglu(&self.up_proj.forward(&h))))
    }
}

/// A LLaMA-family model.
pub struct Llama {
    /// The configuration it was built from.
    pub config: LlamaConfig,
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
}

impl Llama {
    /// Registers every parameter in `store` under Hugging Face's names. Weights start at zero
    /// (norm gains at one): load a checkpoint into the store, or initialise it, next.
    pub fn new(config: LlamaConfig, store: &mut ParamStore) -> Result<Llama, crate::LoadError> {
        config.validate().map_err(crate::LoadError::Config)?;
        let c = &config;
        let mut rng = Rng::new(0); // zeros draw nothing
        let z = Init::Zeros;
        let (q, kv) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
        let embed_tokens = Embedding::new(store, "model.embed_tokens", c.vocab_size, c.hidden_size, z, &mut rng)?;
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let p = format!("model.layers.{i}");
            let lin = |store: &mut ParamStore, name: &str, d_in, d_out, bias, rng: &mut Rng| {
                Linear::new(store, &join(&p, name), d_in, d_out, bias, z, rng)
            };
            let input_layernorm = RmsNorm::new(store, &join(&p, "input_layernorm"), c.hidden_size, c.rms_norm_eps)?;
            let self_attn = Attention {
                q_proj: lin(store, "self_attn.q_proj", c.hidden_size, q, c.attention_bias, &mut rng)?,
                k_proj: lin(store, "self_attn.k_proj", c.hidden_size, kv, c.attention_bias, &mut rng)?,
                v_proj: lin(store, "self_attn.v_proj", c.hidden_size, kv, c.attention_bias, &mut rng)?,
                o_proj: lin(store, "self_attn.o_proj", q, c.hidden_size, false, &mut rng)?,
                n_head: c.n_head,
                n_kv_head: c.n_kv_head,
                head_dim: c.head_dim,
                rope: RopeOpts { seq_axis: 1, pos0: 0, base: c.rope_theta, layout: c.rope_layout },
            };
            let post_attention_layernorm =
                RmsNorm::new(store, &join(&p, "post_attention_layernorm"), c.hidden_size, c.rms_norm_eps)?;
            layers.push(Block {
                input_layernorm,
                self_attn,
                post_attention_layernorm,
                gate_proj: lin(store, "mlp.gate_proj", c.hidden_size, c.intermediate_size, false, &mut rng)?,
                up_proj: lin(store, "mlp.up_proj", c.hidden_size, c.intermediate_size, false, &mut rng)?,
                down_proj: lin(store, "mlp.down_proj", c.intermediate_size, c.hidden_size, false, &mut rng)?,
            });
        }
        let norm = RmsNorm::new(store, "model.norm", c.hidden_size, c.rms_norm_eps)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(Linear::new(store, "lm_head", c.hidden_size, c.vocab_size, false, z, &mut rng)?)
        };
        Ok(Llama { config, embed_tokens, layers, norm, lm_head })
    }

    fn run(&self, idx: &Tensor, pos0: usize, mut cache: Option<&mut KvCache>) -> Var {
        let mut x = self.embed_tokens.forward(idx); // (B, t, C)
        for (i, blk) in self.layers.iter().enumerate() {
            x = blk.forward(&x, pos0, cache.as_deref_mut().map(|c| c.layer(i, self.layers.len())));
        }
        let x = self.norm.forward(&x);
        match &self.lm_head {
            Some(head) => head.forward(&x),
            None => x.matmul(&self.embed_tokens.weight.t()), // tied: logits = x · Eᵀ
        } // (B, t, V)
    }

    /// Logits `(B, T, V)` for token ids `(B, T)`, positions starting at 0.
    pub fn forward(&self, idx: &Tensor) -> Var {
        self.run(idx, 0, None)
    }

    /// Logits `(B, t, V)` for `t` new tokens after the `cache.len()` positions in `cache`,
    /// which it extends (inference: call under `no_grad`).
    pub fn forward_cached(&self, idx: &Tensor, cache: &mut KvCache) -> Var {
        let pos0 = cache.len();
        let t = idx.dim(1);
        let y = self.run(idx, pos0, Some(cache));
        cache.advance(t);
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(layout: RopeLayout, bias: bool, tie: bool) -> LlamaConfig {
        LlamaConfig {
            vocab_size: 17,
            hidden_size: 16,
            intermediate_size: 24,
            n_layer: 2,
            n_head: 4,
            n_kv_head: 2,
            head_dim: 4,
            rope_theta: 10_000.0,
            rope_layout: layout,
            rms_norm_eps: 1e-5,
            max_seq_len: 32,
            tie_word_embeddings: tie,
            attention_bias: bias,
        }
    }

    fn randomise(store: &ParamStore, seed: u64) {
        let mut rng = Rng::new(seed);
        store.value_arena().with_slice_mut(|v: &mut [f32]| v.iter_mut().for_each(|x| *x = 0.3 * rng.normal() as f32));
    }

    #[test]
    fn parameter_count_matches_the_store() {
        for (bias, tie) in [(false, true), (true, false)] {
            let cfg = tiny(RopeLayout::HalfSplit, bias, tie);
            let mut store = ParamStore::new();
            Llama::new(cfg.clone(), &mut store).unwrap();
            assert_eq!(store.num_params(), cfg.num_params());
        }
        let bad = LlamaConfig { n_kv_head: 3, ..tiny(RopeLayout::HalfSplit, false, true) };
        assert_eq!(bad.validate().unwrap_err(), "n_head = 4 is not a multiple of n_kv_head = 3");
    }

    #[test]
    fn cached_decoding_matches_the_full_forward_at_every_step() {
        for layout in [RopeLayout::HalfSplit, RopeLayout::Interleaved] {
            let mut store = ParamStore::new();
            let m = Llama::new(tiny(layout, true, false), &mut store).unwrap();
            randomise(&store, 5);
            let ids: Vec<u32> = vec![3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5];
            let _g = yuanli_autograd::no_grad();
            let mut cache = KvCache::default();
            let pre = m.forward_cached(&Tensor::new(ids[..5].to_vec(), &[1, 5]), &mut cache).value().clone();
            let full = m.forward(&Tensor::new(ids[..5].to_vec(), &[1, 5])).value().clone();
            assert_close(&pre, &full);
            for n in 6..=ids.len() {
                let step = m.forward_cached(&Tensor::new(vec![ids[n - 1]], &[1, 1]), &mut cache).value().clone();
                let full = m.forward(&Tensor::new(ids[..n].to_vec(), &[1, n])).value().narrow(1, n - 1, 1);
                assert_close(&step, &full);
            }
        }
    }

    fn assert_close(a: &Tensor, b: &Tensor) {
        let (a, b) = (a.to_vec_f64(), b.to_vec_f64());
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-4, "cached vs full logits differ by {worst}");
    }
}
