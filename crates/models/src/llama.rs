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
//! so a safetensors checkpoint loads by name; the GGUF loader maps llama.cpp's names onto them
//! ([`crate::load`] has the one name table).
//!
//! **One definition, three uses.** Every weight matrix is a [`Weight`]: a trainable or frozen
//! f32 parameter, or a stored F16/BF16/block-quantized matrix read in place from a GGUF file.
//! The same model then
//! - trains under autograd ([`Llama::forward`]): gradients reach trainable parameters, and pass
//!   *through* frozen and quantized weights to the layers below (QLoRA);
//! - runs the exact f32 path (a model loaded with f32 weights) and the fast quantized path (a
//!   GGUF read in place) through the inference engine ([`CausalLm::forward_batch`]): one step
//!   for tokens of many sequences at different positions, a paged KV cache
//!   ([`crate::engine`]), every matrix product once per step on the quantized kernels, and no
//!   allocation per decoded token.
//!
//! Both paths call the same kernels for the same math: `rmsnorm_row` (in
//! `rmsnorm_forward`), the RoPE rotation and angle table (`rope_row_inplace`,
//! `rope_angles`), the linear map's weights in one of the [`Weight`] forms.
//!
//! Shapes: `B` batch, `T` time, `C` hidden size, `H`/`Hk` query/key-value heads, `D` head size,
//! `F` MLP width, `t` tokens of an inference step (from any sequences).

use crate::engine::{self, fit, next_model_id, AttnSpec, Batch, EngineError, KvShape, KvType, Session, SessionOpts};
use crate::load::LoadError;
use crate::rope_scaling::RopeScaling;
use crate::sample::CausalLm;
use serde::{Deserialize, Serialize};
use yuanli_autograd::{AttentionOpts, RopeOpts, Var};
use yuanli_nn::{join, Init, Linear, Lora, LoraConfig, Module, ParamKind, ParamStore, RmsNorm, Weight};
use yuanli_tensor::cpu::{rmsnorm_row, rope_angles, rope_row_inplace, simd, SpinPool};
use yuanli_tensor::{GeluKind, QMatrix, Rng, RopeFreqs, RopeLayout, Tensor};

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
    /// How the RoPE frequencies are stretched past the pretraining context (global layers;
    /// local sliding-window layers keep plain RoPE at `extras.rope_local_theta`).
    #[serde(default)]
    pub rope_scaling: RopeScaling,
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
    /// The extras of other families (all off for LLaMA itself).
    #[serde(default)]
    pub extras: Extras,
}

/// What some LLaMA-family models add (Gemma 3 uses all of them; Qwen3 the QK-norm).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Extras {
    /// Multiply the token embeddings by `√C` (Gemma).
    pub embed_scale: bool,
    /// RMSNorm over each query and key head (gain `(D,)`) before RoPE (Gemma 3, Qwen3).
    pub qk_norm: bool,
    /// "Sandwich" norms: the attention's and the MLP's outputs are RMS-normalised too before
    /// they join the residual stream (Gemma 2/3).
    pub sandwich_norm: bool,
    /// The MLP's gate non-linearity: SiLU (SwiGLU, LLaMA) or tanh-GELU (GeGLU, Gemma).
    pub gelu_gate: bool,
    /// Attention scores scaled by `1/√s` instead of `1/√D` (Gemma's `query_pre_attn_scalar`).
    pub query_pre_attn_scalar: Option<f64>,
    /// Local layers attend to the last this many positions (their own included).
    pub sliding_window: Option<usize>,
    /// With a sliding window: layer `l` is global when `l % pattern == pattern − 1`, local
    /// otherwise (Gemma 3: 6 — five local layers, then a global one); 0 = every layer local.
    pub sliding_window_pattern: usize,
    /// RoPE base θ of the local layers, when it differs from `rope_theta` (Gemma 3: 10 000).
    pub rope_local_theta: Option<f64>,
}

impl LlamaConfig {
    /// Whether layer `l` attends through a sliding window.
    pub fn is_local(&self, l: usize) -> bool {
        let p = self.extras.sliding_window_pattern;
        self.extras.sliding_window.is_some() && (p == 0 || l % p != p - 1)
    }

    /// The RoPE frequencies of layer `l` in a forward pass over a sequence `n` positions long
    /// (`n` matters only to dynamic scaling): a local layer with its own base runs plain RoPE
    /// (as transformers does for Gemma 3), every other layer the model's scaling.
    pub fn rope_freqs(&self, l: usize, n: usize) -> RopeFreqs {
        match self.extras.rope_local_theta {
            Some(local) if self.is_local(l) => RopeFreqs::new(self.head_dim, local),
            _ => self.rope_scaling.freqs(self.head_dim, self.rope_theta, n),
        }
    }

    /// Names of the block-`i` norms: (before attention, after attention, before the MLP, after
    /// the MLP) under Hugging Face's names — LLaMA calls the pre-MLP norm
    /// `post_attention_layernorm`, Gemma uses that name for the norm of the attention output.
    fn norm_names(&self) -> (&'static str, Option<&'static str>, &'static str, Option<&'static str>) {
        if self.extras.sandwich_norm {
            (
                "input_layernorm",
                Some("post_attention_layernorm"),
                "pre_feedforward_layernorm",
                Some("post_feedforward_layernorm"),
            )
        } else {
            ("input_layernorm", None, "post_attention_layernorm", None)
        }
    }
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
        c.rope_scaling.validate(c.head_dim, c.rope_theta)
    }

    /// The longest sequence the model runs: `max_seq_len`, except under dynamic NTK scaling,
    /// whose config states the original context and whose base grows with the sequence (for
    /// which it was made to reach about `factor ×` that; transformers sets no limit).
    pub fn context_len(&self) -> usize {
        match self.rope_scaling {
            RopeScaling::Dynamic { factor, .. } if factor > 1.0 => (self.max_seq_len as f64 * factor) as usize,
            _ => self.max_seq_len,
        }
    }

    /// Parameters in the model.
    pub fn num_params(&self) -> usize {
        let (c, d) = (self.hidden_size, self.head_dim);
        let (q, kv) = (self.n_head * d, self.n_kv_head * d);
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let sandwich = if self.extras.sandwich_norm { 2 } else { 0 };
        let norms = c * (2 + sandwich) + if self.extras.qk_norm { 2 * d } else { 0 };
        let per_layer = norms + c * (q + 2 * kv) + bias + q * c + 3 * c * self.intermediate_size;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * c };
        self.vocab_size * c + self.n_layer * per_layer + c + head
    }

    /// Bytes of KV cache per token at `bytes_per_value` (4 for f32): `2·L·Hk·D` values.
    pub fn kv_bytes_per_token(&self, bytes_per_value: usize) -> usize {
        2 * self.n_layer * self.n_kv_head * self.head_dim * bytes_per_value
    }
}

/// One block: `x += attn(norm(x))`, then `x += mlp(norm(x))`, with grouped-query attention and
/// rotary positions, and the SwiGLU MLP `down(silu(gate(h)) ⊙ up(h))`.
struct Block {
    input_layernorm: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    /// Per-head norms of queries and keys (QK-norm).
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    o_proj: Linear,
    /// Norm of the attention output (sandwich norm).
    attn_out_norm: Option<RmsNorm>,
    /// Norm before the MLP.
    mlp_norm: RmsNorm,
    /// Norm of the MLP output (sandwich norm).
    mlp_out_norm: Option<RmsNorm>,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

/// Training mode of a forward pass: the random stream LoRA dropout draws from, or `None`
/// (no dropout); and whether the adapters are switched off (the base alone).
struct Train<'a>(Option<&'a std::cell::RefCell<Rng>>, bool);

impl Train<'_> {
    fn linear(&self, l: &Linear, x: &Var) -> Var {
        match self.0 {
            _ if self.1 => l.forward_base(x),
            Some(rng) => l.forward_train(x, true, &mut rng.borrow_mut()),
            None => l.forward(x),
        }
    }
}

/// How [`Llama::token_logps`] runs the model.
pub enum Pass<'a> {
    /// Adapters on, no dropout.
    Eval,
    /// Adapters on, their dropout drawn from the generator (a training step).
    Train(&'a mut Rng),
    /// Adapters switched off: the frozen base alone, the reference policy of DPO and GRPO
    /// when the policy is the base plus a LoRA adapter.
    Base,
}

/// The Hugging Face name of linear map `short` (`q_proj`, …) of block `i`.
fn module_name(i: usize, short: &str) -> String {
    let kind = if matches!(short, "gate_proj" | "up_proj" | "down_proj") { "mlp" } else { "self_attn" };
    format!("model.layers.{i}.{kind}.{short}")
}

/// The linear maps of a block, by PEFT's module names: what LoRA may target.
pub const LORA_TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// A LLaMA-family model.
pub struct Llama {
    /// The configuration it was built from.
    pub config: LlamaConfig,
    /// Which sessions belong to this model.
    id: u64,
    embed_tokens: Weight,
    layers: Vec<Block>,
    norm: RmsNorm,
    /// The LM head, or `None` when it is tied to the token embedding.
    lm_head: Option<Weight>,
}

/// The weight matrices of a LLaMA by Hugging Face name, with their `(rows, cols)`, in
/// registration order: what a loader must provide.
pub fn matrix_shapes(c: &LlamaConfig) -> Vec<(String, usize, usize)> {
    let (q, kv) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
    let mut m = vec![("model.embed_tokens.weight".to_string(), c.vocab_size, c.hidden_size)];
    for i in 0..c.n_layer {
        for (name, rows, cols) in [
            ("self_attn.q_proj", q, c.hidden_size),
            ("self_attn.k_proj", kv, c.hidden_size),
            ("self_attn.v_proj", kv, c.hidden_size),
            ("self_attn.o_proj", c.hidden_size, q),
            ("mlp.gate_proj", c.intermediate_size, c.hidden_size),
            ("mlp.up_proj", c.intermediate_size, c.hidden_size),
            ("mlp.down_proj", c.hidden_size, c.intermediate_size),
        ] {
            m.push((format!("model.layers.{i}.{name}.weight"), rows, cols));
        }
    }
    if !c.tie_word_embeddings {
        m.push(("lm_head.weight".to_string(), c.vocab_size, c.hidden_size));
    }
    m
}

impl Llama {
    /// Registers every parameter in `store` under Hugging Face's names, all f32 (trainable or
    /// frozen as the store's rule decides). Weights start at zero (norm gains at one): load a
    /// checkpoint into the store, or initialise it, next.
    pub fn new(config: LlamaConfig, store: &mut ParamStore) -> Result<Llama, LoadError> {
        Llama::build(config, store, &mut |_| Ok(None))
    }

    /// Like [`Llama::new`], but each weight matrix for which `stored(name)` returns a matrix is
    /// that stored matrix (frozen, read in place) instead of a parameter; norms and biases are
    /// always parameters. A matrix of the wrong shape is an error naming it.
    pub fn build(
        config: LlamaConfig,
        store: &mut ParamStore,
        stored: &mut dyn FnMut(&str) -> Result<Option<QMatrix>, LoadError>,
    ) -> Result<Llama, LoadError> {
        config.validate().map_err(LoadError::Config)?;
        let c = config.clone();
        let mut rng = Rng::new(0); // zeros draw nothing
        let mut weight = |store: &mut ParamStore, name: &str, rows: usize, cols: usize, kind: ParamKind| {
            let full = format!("{name}.weight");
            match stored(&full)? {
                Some(q) if q.rows() != rows || q.cols() != cols => Err(LoadError::Config(format!(
                    "tensor for {full} is {}×{}, the config implies {rows}×{cols}",
                    q.rows(),
                    q.cols()
                ))),
                Some(q) => Ok(Weight::Stored(q)),
                None => Ok(Weight::Param(store.param(&full, Init::Zeros.tensor(&[rows, cols], &mut rng), kind)?)),
            }
        };
        let (q, kv) = (c.n_head * c.head_dim, c.n_kv_head * c.head_dim);
        let embed_tokens = weight(store, "model.embed_tokens", c.vocab_size, c.hidden_size, ParamKind::Embedding)?;
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let p = format!("model.layers.{i}");
            let mut lin = |store: &mut ParamStore, name: &str, rows, cols, bias: bool| -> Result<Linear, LoadError> {
                let full = join(&p, name);
                let w = weight(store, &full, rows, cols, ParamKind::Weight)?;
                let bias = if bias {
                    let zeros = Init::Zeros.tensor(&[rows], &mut Rng::new(0));
                    Some(store.param(&join(&full, "bias"), zeros, ParamKind::Bias)?)
                } else {
                    None
                };
                Ok(Linear { weight: w, bias, lora: None })
            };
            let (pre_attn, post_attn, pre_mlp, post_mlp) = c.norm_names();
            let norm = |store: &mut ParamStore, name: Option<&str>, dim: usize| {
                name.map(|n| RmsNorm::new(store, &join(&p, n), dim, c.rms_norm_eps)).transpose()
            };
            let input_layernorm = RmsNorm::new(store, &join(&p, pre_attn), c.hidden_size, c.rms_norm_eps)?;
            let q_proj = lin(store, "self_attn.q_proj", q, c.hidden_size, c.attention_bias)?;
            let k_proj = lin(store, "self_attn.k_proj", kv, c.hidden_size, c.attention_bias)?;
            let v_proj = lin(store, "self_attn.v_proj", kv, c.hidden_size, c.attention_bias)?;
            let qk = |n: &'static str| c.extras.qk_norm.then_some(n);
            let q_norm = norm(store, qk("self_attn.q_norm"), c.head_dim)?;
            let k_norm = norm(store, qk("self_attn.k_norm"), c.head_dim)?;
            let o_proj = lin(store, "self_attn.o_proj", c.hidden_size, q, false)?;
            let attn_out_norm = norm(store, post_attn, c.hidden_size)?;
            let mlp_norm = RmsNorm::new(store, &join(&p, pre_mlp), c.hidden_size, c.rms_norm_eps)?;
            let mlp_out_norm = norm(store, post_mlp, c.hidden_size)?;
            layers.push(Block {
                input_layernorm,
                q_proj,
                k_proj,
                v_proj,
                q_norm,
                k_norm,
                o_proj,
                attn_out_norm,
                mlp_norm,
                mlp_out_norm,
                gate_proj: lin(store, "mlp.gate_proj", c.intermediate_size, c.hidden_size, false)?,
                up_proj: lin(store, "mlp.up_proj", c.intermediate_size, c.hidden_size, false)?,
                down_proj: lin(store, "mlp.down_proj", c.hidden_size, c.intermediate_size, false)?,
            });
        }
        let norm = RmsNorm::new(store, "model.norm", c.hidden_size, c.rms_norm_eps)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(weight(store, "lm_head", c.vocab_size, c.hidden_size, ParamKind::Weight)?)
        };
        Ok(Llama { config, id: next_model_id(), embed_tokens, layers, norm, lm_head })
    }

    fn head(&self) -> &Weight {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// `(B, t, C)` → heads `(B, n, t, D)` of projection `p`, each normalised by `norm` (QK-norm)
    /// and then rotated by RoPE with frequencies `rope` when given.
    fn heads(
        &self,
        p: &Linear,
        x: &Var,
        n: usize,
        norm: Option<&RmsNorm>,
        rope: Option<&RopeFreqs>,
        tr: &Train,
    ) -> Var {
        let c = &self.config;
        let (b, t) = (x.shape()[0], x.shape()[1]);
        let mut y = tr.linear(p, x).reshape(&[b, t, n, c.head_dim]); // (B, t, n, D)
        if let Some(g) = norm {
            y = g.forward(&y);
        }
        if let Some(freqs) = rope {
            y = y.rope(RopeOpts { seq_axis: 1, pos0: 0, freqs, layout: c.rope_layout });
        }
        y.permute(&[0, 2, 1, 3])
    }

    /// The MLP's `down(act(gate h) ⊙ up h)` with SiLU (SwiGLU) or tanh-GELU (GeGLU).
    fn mlp(&self, blk: &Block, h: &Var, tr: &Train) -> Var {
        let (g, u) = (tr.linear(&blk.gate_proj, h), tr.linear(&blk.up_proj, h));
        let a = if self.config.extras.gelu_gate { g.gelu(GeluKind::Tanh).mul(&u) } else { g.swiglu(&u) };
        tr.linear(&blk.down_proj, &a)
    }

    /// The additive mask of a sliding-window layer over `t` positions: `−∞` where key `j` is
    /// `window` or more positions before query `i` (the causal part is the attention's own).
    fn window_mask(t: usize, window: usize) -> Tensor {
        let m: Vec<f32> =
            (0..t * t).map(|k| if (k / t).saturating_sub(k % t) >= window { f32::NEG_INFINITY } else { 0.0 }).collect();
        Tensor::new(m, &[t, t])
    }

    /// Logits `(B, T, V)` for token ids `(B, T)`, positions from 0, under autograd: the
    /// training path (and the reference the engine is tested against). No dropout.
    pub fn forward(&self, idx: &Tensor) -> Var {
        self.forward_with(idx, &Train(None, false))
    }

    /// [`Llama::forward`] in training mode: LoRA adapters drop their inputs with their
    /// dropout probability, drawing from `rng`.
    pub fn forward_train(&self, idx: &Tensor, rng: &mut Rng) -> Var {
        let cell = std::cell::RefCell::new(Rng::from_state(rng.state()));
        let y = self.forward_with(idx, &Train(Some(&cell), false));
        *rng = cell.into_inner();
        y
    }

    /// The final normalised hidden states `(B, T, C)`: everything before the LM head.
    fn hidden_with(&self, idx: &Tensor, tr: &Train) -> Var {
        let c = &self.config;
        let (b, t) = (idx.dim(0), idx.dim(1));
        let mut x = self.embed_tokens.embedding(idx); // (B, T, C)
        if c.extras.embed_scale {
            x = x.scale((c.hidden_size as f64).sqrt());
        }
        let scale = c.extras.query_pre_attn_scalar.map(|s| 1.0 / s.sqrt());
        for (l, blk) in self.layers.iter().enumerate() {
            let h = blk.input_layernorm.forward(&x);
            let freqs = c.rope_freqs(l, t);
            let q = self.heads(&blk.q_proj, &h, c.n_head, blk.q_norm.as_ref(), Some(&freqs), tr); // (B, H, T, D)
            let k = self.heads(&blk.k_proj, &h, c.n_kv_head, blk.k_norm.as_ref(), Some(&freqs), tr); // (B, Hk, T, D)
            let v = self.heads(&blk.v_proj, &h, c.n_kv_head, None, None, tr);
            let mask = match c.extras.sliding_window {
                Some(w) if c.is_local(l) && t > w => Some(Self::window_mask(t, w)),
                _ => None,
            };
            let y = Var::attention(&q, &k, &v, &AttentionOpts { causal: true, mask, scale });
            let y = y.permute(&[0, 2, 1, 3]).reshape(&[b, t, c.n_head * c.head_dim]);
            let mut a = tr.linear(&blk.o_proj, &y);
            if let Some(g) = &blk.attn_out_norm {
                a = g.forward(&a);
            }
            x = x.add(&a);
            let mut m = self.mlp(blk, &blk.mlp_norm.forward(&x), tr);
            if let Some(g) = &blk.mlp_out_norm {
                m = g.forward(&m);
            }
            x = x.add(&m);
        }
        self.norm.forward(&x)
    }

    fn forward_with(&self, idx: &Tensor, tr: &Train) -> Var {
        self.head().linear(&self.hidden_with(idx, tr), None) // (B, T, V); tied: x·Eᵀ
    }

    /// The mean next-token loss over the positions whose target in `targets (B, T)` is not
    /// `ignore` (fine-tuning's assistant tokens), under autograd, without dropout. Equal to
    /// `cross_entropy(forward(idx), targets, ignore)`, but only the counted positions reach the
    /// LM head, and the head and the loss are one fused op
    /// ([`Var::linear_cross_entropy`]) that never holds the `(B·T, V)` logits. 0 when nothing
    /// counts.
    pub fn loss(&self, idx: &Tensor, targets: &Tensor, ignore: u32) -> Var {
        self.loss_with(idx, targets, ignore, &Train(None, false))
    }

    /// [`Llama::loss`] in training mode (LoRA dropout drawn from `rng`).
    pub fn loss_train(&self, idx: &Tensor, targets: &Tensor, ignore: u32, rng: &mut Rng) -> Var {
        let cell = std::cell::RefCell::new(Rng::from_state(rng.state()));
        let y = self.loss_with(idx, targets, ignore, &Train(Some(&cell), false));
        *rng = cell.into_inner();
        y
    }

    #[track_caller]
    fn loss_with(&self, idx: &Tensor, targets: &Tensor, ignore: u32, tr: &Train) -> Var {
        assert_eq!(idx.shape(), targets.shape(), "Llama::loss: ids {:?} vs targets {:?}", idx.shape(), targets.shape());
        let ys = targets.to_vec::<u32>();
        let (rows, ys): (Vec<u32>, Vec<u32>) =
            ys.iter().enumerate().filter(|(_, &y)| y != ignore).map(|(i, &y)| (i as u32, y)).unzip();
        let h = self.hidden_with(idx, tr);
        if rows.is_empty() {
            return Var::constant(Tensor::zeros(&[], h.value().dtype()));
        }
        let c = self.config.hidden_size;
        let n = rows.len();
        let picked = h.reshape(&[idx.numel(), c]).embedding(&Tensor::new(rows, &[n])); // (n, C)
        let ys = Tensor::new(ys, &[n]);
        self.head().linear_cross_entropy(&picked, &ys)
    }

    /// `log p(targets[b, t] | idx[b, ..=t])` at every position whose target is not `ignore`,
    /// in row-major order `(n,)`, under autograd: the per-token log-probabilities that DPO
    /// sums over a completion and GRPO and PPO weigh one by one. As in [`Llama::loss`], only
    /// those positions reach the head ([`Weight::token_logps`], fused).
    #[track_caller]
    pub fn token_logps(&self, idx: &Tensor, targets: &Tensor, ignore: u32, pass: Pass<'_>) -> Var {
        assert_eq!(
            idx.shape(),
            targets.shape(),
            "Llama::token_logps: ids {:?} vs targets {:?}",
            idx.shape(),
            targets.shape()
        );
        let ys = targets.to_vec::<u32>();
        let (rows, ys): (Vec<u32>, Vec<u32>) =
            ys.iter().enumerate().filter(|(_, &y)| y != ignore).map(|(i, &y)| (i as u32, y)).unzip();
        let (n, c) = (rows.len(), self.config.hidden_size);
        let h = self.hidden(idx, pass);
        if n == 0 {
            return Var::constant(Tensor::zeros(&[0], h.value().dtype()));
        }
        let picked = h.reshape(&[idx.numel(), c]).embedding(&Tensor::new(rows, &[n])); // (n, C)
        self.head_logps(&picked, &Tensor::new(ys, &[n]))
    }

    /// `log softmax(h W_headᵀ)[target]` for hidden states `h (n, C)` picked from
    /// [`Llama::hidden`] and `targets (n,)`, fused ([`Weight::token_logps`]): for a caller
    /// that reads other things off the same hidden states (PPO's value head).
    pub fn head_logps(&self, h: &Var, targets: &Tensor) -> Var {
        self.head().token_logps(h, targets)
    }

    /// The final normalised hidden states `(B, T, C)` under autograd (everything before the
    /// LM head): what a reward model's scalar head reads.
    pub fn hidden(&self, idx: &Tensor, pass: Pass<'_>) -> Var {
        match pass {
            Pass::Train(rng) => {
                let cell = std::cell::RefCell::new(Rng::from_state(rng.state()));
                let y = self.hidden_with(idx, &Train(Some(&cell), false));
                *rng = cell.into_inner();
                y
            }
            Pass::Eval => self.hidden_with(idx, &Train(None, false)),
            Pass::Base => self.hidden_with(idx, &Train(None, true)),
        }
    }

    /// Every linear map of the blocks with its Hugging Face module name
    /// (`model.layers.3.self_attn.q_proj`).
    pub fn linears(&self) -> Vec<(String, &Linear)> {
        let mut out = Vec::new();
        for (i, b) in self.layers.iter().enumerate() {
            for (short, lin) in LORA_TARGETS.iter().zip([
                &b.q_proj,
                &b.k_proj,
                &b.v_proj,
                &b.o_proj,
                &b.gate_proj,
                &b.up_proj,
                &b.down_proj,
            ]) {
                out.push((module_name(i, short), lin));
            }
        }
        out
    }

    /// The linear map `short` (`q_proj`, …) of block `i`.
    fn linear_mut(&mut self, i: usize, short: &str) -> &mut Linear {
        let b = &mut self.layers[i];
        match short {
            "q_proj" => &mut b.q_proj,
            "k_proj" => &mut b.k_proj,
            "v_proj" => &mut b.v_proj,
            "o_proj" => &mut b.o_proj,
            "gate_proj" => &mut b.gate_proj,
            "up_proj" => &mut b.up_proj,
            "down_proj" => &mut b.down_proj,
            other => unreachable!("not a linear map of a block: {other}"),
        }
    }

    /// Adds a LoRA adapter ([`Lora`]) to every linear map whose PEFT name is in `targets`
    /// (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`, or
    /// `all-linear` for all seven; the LM head is never adapted, as in PEFT), in every layer.
    /// Its parameters go into `store` under `{module}.lora_A.weight` / `lora_B.weight`; the
    /// store's rule decides whether they train (set one that lets `.lora_` names train).
    /// Returns the adapted modules' names.
    pub fn attach_lora(
        &mut self,
        store: &mut ParamStore,
        cfg: &LoraConfig,
        targets: &[String],
        rng: &mut Rng,
    ) -> Result<Vec<String>, LoadError> {
        let all = targets.iter().any(|t| t == "all-linear");
        if let Some(bad) = targets.iter().find(|t| *t != "all-linear" && !LORA_TARGETS.contains(&t.as_str())) {
            return Err(LoadError::Config(format!(
                "LoRA target module {bad:?} does not exist in a LLaMA-family model; the modules are {} (or all-linear)",
                LORA_TARGETS.join(", ")
            )));
        }
        if targets.is_empty() {
            return Err(LoadError::Config(format!(
                "no LoRA target modules; choose from {} or all-linear",
                LORA_TARGETS.join(", ")
            )));
        }
        let mut names = Vec::new();
        for i in 0..self.layers.len() {
            for short in LORA_TARGETS.iter().filter(|&&t| all || targets.iter().any(|w| w == t)) {
                let name = module_name(i, short);
                let lin = self.linear_mut(i, short);
                let (rows, cols) = (lin.weight.rows(), lin.weight.cols());
                lin.lora = Some(Lora::new(store, &name, cols, rows, cfg, rng)?);
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Bytes of weights a decoding step reads (every matrix once; the embedding only when it is
    /// also the LM head).
    pub fn weight_bytes(&self) -> usize {
        let l: usize = self
            .layers
            .iter()
            .map(|b| {
                [&b.q_proj, &b.k_proj, &b.v_proj, &b.o_proj, &b.gate_proj, &b.up_proj, &b.down_proj]
                    .iter()
                    .map(|l| l.weight.bytes())
                    .sum::<usize>()
            })
            .sum();
        l + self.head().bytes()
    }

    /// The KV geometry of one position.
    pub fn kv_shape(&self) -> KvShape {
        KvShape { layers: self.config.n_layer, kv_heads: self.config.n_kv_head, head_dim: self.config.head_dim }
    }

    /// One piece (tokens `t0..t1` of the step planned in `s`) through the network: leaves the
    /// final hidden states in `s.scratch.x`.
    fn piece(&self, s: &mut Session, batch: &Batch, (t0, t1): (usize, usize), pool: &SpinPool) {
        let c = &self.config;
        let x = &c.extras;
        let t = t1 - t0;
        let (dim, hd, nh, nkv, ffn) = (c.hidden_size, c.head_dim, c.n_head, c.n_kv_head, c.intermediate_size);
        let (qd, kvd, half) = (nh * hd, nkv * hd, hd / 2);
        let eps = c.rms_norm_eps as f32;
        let local_angles = x.rope_local_theta.is_some();
        let mut sc = std::mem::take(&mut s.scratch);
        for (buf, w) in [
            (&mut sc.x, dim),
            (&mut sc.h, dim.max(qd)),
            (&mut sc.q, qd),
            (&mut sc.k, kvd),
            (&mut sc.v, kvd),
            (&mut sc.att, qd.max(dim)),
            (&mut sc.g, ffn),
            (&mut sc.u, ffn),
            (&mut sc.cos, half),
            (&mut sc.sin, half),
            (&mut sc.cos_local, if local_angles { half } else { 0 }),
            (&mut sc.sin_local, if local_angles { half } else { 0 }),
        ] {
            fit(buf, t * w);
        }
        let embed_scale = (dim as f32).sqrt();
        // The frequencies, as `LlamaConfig::rope_freqs` has them: local layers with their own
        // base plain, the others scaled; a dynamic scaling per sequence length (recomputed when
        // the next token belongs to a sequence of another length).
        let mut freqs_for = usize::MAX;
        if let Some(theta) = x.rope_local_theta {
            RopeScaling::None.freqs_into(hd, theta, 0, &mut sc.rope_local);
        }
        for (i, &tok) in batch.tokens()[t0..t1].iter().enumerate() {
            let row = &mut sc.x[i * dim..(i + 1) * dim];
            self.embed_tokens.row_into(tok as usize, row);
            if x.embed_scale {
                simd::scale(row, embed_scale);
            }
            let p = s.plan.pos[t0 + i];
            let n = if c.rope_scaling.is_dynamic() { s.plan.end[t0 + i] } else { 0 };
            if n != freqs_for {
                c.rope_scaling.freqs_into(hd, c.rope_theta, n, &mut sc.rope);
                freqs_for = n;
            }
            let r = i * half..(i + 1) * half;
            rope_angles(p, &sc.rope, &mut sc.cos[r.clone()], &mut sc.sin[r.clone()]);
            if local_angles {
                rope_angles(p, &sc.rope_local, &mut sc.cos_local[r.clone()], &mut sc.sin_local[r]);
            }
        }
        // QK-norm (when `g`), then RoPE, over each head of `heads` per token; `tmp` holds a head.
        let rotate =
            |buf: &mut [f32], heads: usize, g: Option<&RmsNorm>, (cos, sin): (&[f32], &[f32]), tmp: &mut [f32]| {
                let mut each = |w: Option<&[f32]>| {
                    for (i, row) in buf[..t * heads * hd].chunks_exact_mut(heads * hd).enumerate() {
                        let (cr, sr) = (&cos[i * half..(i + 1) * half], &sin[i * half..(i + 1) * half]);
                        for head in row.chunks_exact_mut(hd) {
                            if let Some(w) = w {
                                tmp[..hd].copy_from_slice(head);
                                rmsnorm_row(head, &tmp[..hd], w, eps);
                            }
                            rope_row_inplace(head, cr, sr, c.rope_layout);
                        }
                    }
                };
                match g {
                    Some(g) => g.weight.value().with_slice(|w: &[f32]| each(Some(w))),
                    None => each(None),
                }
            };
        let norm_rows = |g: &RmsNorm, x: &[f32], y: &mut [f32]| {
            g.weight.value().with_slice(|w: &[f32]| {
                for (xr, yr) in x[..t * dim].chunks_exact(dim).zip(y.chunks_exact_mut(dim)) {
                    rmsnorm_row(yr, xr, w, eps);
                }
            });
        };
        // x += a sub-layer's output `h`, RMS-normalised first (into `tmp`) by a sandwich norm `g`
        let residual = |g: Option<&RmsNorm>, x: &mut [f32], h: &[f32], tmp: &mut [f32]| match g {
            Some(g) => {
                norm_rows(g, h, tmp);
                engine::add(&mut x[..t * dim], &tmp[..t * dim]);
            }
            None => engine::add(&mut x[..t * dim], &h[..t * dim]),
        };
        let scale = x.query_pre_attn_scalar.map(|q| 1.0 / (q as f32).sqrt());
        // A LoRA adapter's update, added to the product its map just wrote.
        let adapt = |lin: &Linear, input: &[f32], out: &mut [f32]| {
            if let Some(l) = &lin.lora {
                l.add_to(input, t, out);
            }
        };
        for (l, blk) in self.layers.iter().enumerate() {
            // attention half: x += Wo · attn(rope(Wq h), rope(Wk h), Wv h), h = rmsnorm(x)
            norm_rows(&blk.input_layernorm, &sc.x, &mut sc.h);
            let qkv = [&blk.q_proj.weight, &blk.k_proj.weight, &blk.v_proj.weight];
            engine::matmul_many(&qkv, &sc.h, t, &mut sc.acts, &mut [&mut sc.q, &mut sc.k, &mut sc.v], pool);
            for (p, out) in [(&blk.q_proj, &mut sc.q), (&blk.k_proj, &mut sc.k), (&blk.v_proj, &mut sc.v)] {
                if let Some(b) = &p.bias {
                    engine::add_bias(&mut out[..t * p.weight.rows()], b);
                }
                adapt(p, &sc.h, out);
            }
            let local = c.is_local(l);
            let angles =
                if local && local_angles { (&sc.cos_local[..], &sc.sin_local[..]) } else { (&sc.cos[..], &sc.sin[..]) };
            rotate(&mut sc.q, nh, blk.q_norm.as_ref(), angles, &mut sc.h);
            rotate(&mut sc.k, nkv, blk.k_norm.as_ref(), angles, &mut sc.h);
            s.write_kv(l, t0, &sc.k[..t * kvd], &sc.v[..t * kvd]);
            let spec = AttnSpec { scale, window: if local { x.sliding_window } else { None }, alibi: None };
            s.attention(l, nh, (t0, t1), &sc.q, &mut sc.att, spec, pool);
            engine::matmul(&blk.o_proj.weight, &sc.att, t, &mut sc.acts, &mut sc.h, pool);
            adapt(&blk.o_proj, &sc.att, &mut sc.h);
            residual(blk.attn_out_norm.as_ref(), &mut sc.x, &sc.h, &mut sc.att);
            // MLP half: x += down(act(gate h) ⊙ up h), h = rmsnorm(x)
            norm_rows(&blk.mlp_norm, &sc.x, &mut sc.h);
            let gate_up = [&blk.gate_proj.weight, &blk.up_proj.weight];
            engine::matmul_many(&gate_up, &sc.h, t, &mut sc.acts, &mut [&mut sc.g, &mut sc.u], pool);
            adapt(&blk.gate_proj, &sc.h, &mut sc.g);
            adapt(&blk.up_proj, &sc.h, &mut sc.u);
            if x.gelu_gate {
                simd::geglu_tanh_inplace(&mut sc.g[..t * ffn], &sc.u[..t * ffn]);
            } else {
                simd::swiglu_inplace(&mut sc.g[..t * ffn], &sc.u[..t * ffn]);
            }
            engine::matmul(&blk.down_proj.weight, &sc.g, t, &mut sc.acts, &mut sc.h, pool);
            adapt(&blk.down_proj, &sc.g, &mut sc.h);
            residual(blk.mlp_out_norm.as_ref(), &mut sc.x, &sc.h, &mut sc.att);
        }
        s.scratch = sc;
    }

    /// Logits of the tokens `plan.logit_rows[rows]` of the piece starting at `t0` (final norm,
    /// then the LM head) into `out`, from the hidden states the piece left in `s.scratch.x`.
    fn piece_logits(&self, s: &mut Session, t0: usize, rows: std::ops::Range<usize>, out: &mut [f32], pool: &SpinPool) {
        let c = &self.config;
        let dim = c.hidden_size;
        let sc = &mut s.scratch;
        let wanted = &s.plan.logit_rows[rows];
        self.norm.weight.value().with_slice(|w: &[f32]| {
            for (j, &r) in wanted.iter().enumerate() {
                let x = &sc.x[(r - t0) * dim..(r - t0 + 1) * dim];
                rmsnorm_row(&mut sc.h[j * dim..(j + 1) * dim], x, w, c.rms_norm_eps as f32);
            }
        });
        engine::matmul(self.head(), &sc.h, wanted.len(), &mut sc.acts, out, pool);
    }
}

impl CausalLm for Llama {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn context_len(&self) -> usize {
        self.config.context_len()
    }

    fn new_session(&self, opts: SessionOpts) -> Session {
        // The fast path (matrices read in place) keeps f16 keys and values, as llama.cpp does;
        // the exact path (f32 parameters) keeps f32.
        let stored = self.layers.first().is_some_and(|b| matches!(b.q_proj.weight, Weight::Stored(_)));
        Session::new(self.id, self.kv_shape(), opts, if stored { KvType::F16 } else { KvType::F32 })
    }

    fn forward_batch(&self, s: &mut Session, batch: &Batch, logits: &mut Vec<f32>) -> Result<(), EngineError> {
        let sizes = (self.config.vocab_size, self.config.context_len());
        engine::run_step(
            s,
            self.id,
            batch,
            sizes,
            logits,
            &|s, b, r, p| self.piece(s, b, r, p),
            &|s, t0, rows, out, p| self.piece_logits(s, t0, rows, out, p),
        )
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
            rope_scaling: Default::default(),
            rope_layout: layout,
            rms_norm_eps: 1e-5,
            max_seq_len: 32,
            tie_word_embeddings: tie,
            attention_bias: bias,
            extras: Extras::default(),
        }
    }

    fn randomise(store: &ParamStore, seed: u64) {
        let mut rng = Rng::new(seed);
        for p in store.params() {
            let v: Vec<f32> = (0..p.numel()).map(|_| 0.3 * rng.normal() as f32).collect();
            store.set_values(p, &v);
        }
    }

    #[test]
    fn parameter_count_matches_the_store() {
        for (bias, tie, gemma) in [(false, true, false), (true, false, false), (false, true, true)] {
            let mut cfg = tiny(RopeLayout::HalfSplit, bias, tie);
            cfg.extras.qk_norm = gemma;
            cfg.extras.sandwich_norm = gemma;
            let mut store = ParamStore::new();
            Llama::new(cfg.clone(), &mut store).unwrap();
            assert_eq!(store.num_params(), cfg.num_params());
        }
        let bad = LlamaConfig { n_kv_head: 3, ..tiny(RopeLayout::HalfSplit, false, true) };
        assert_eq!(bad.validate().unwrap_err(), "n_head = 4 is not a multiple of n_kv_head = 3");
    }

    /// The fused, masked loss equals cross-entropy over the full forward's logits — value and
    /// every parameter's gradient — for a tied and an untied (trainable) head.
    #[test]
    fn masked_loss_equals_cross_entropy_of_the_forward() {
        for tie in [true, false] {
            let mut store = ParamStore::new();
            let m = Llama::new(tiny(RopeLayout::HalfSplit, false, tie), &mut store).unwrap();
            randomise(&store, 5);
            let ids: Vec<u32> = (0..14).map(|i| (i * 7 % 17) as u32).collect();
            let tg: Vec<u32> = (0..14).map(|i| if i % 3 == 0 { u32::MAX } else { (i * 5 % 17) as u32 }).collect();
            let (x, y) = (Tensor::new(ids, &[2, 7]), Tensor::new(tg, &[2, 7]));
            let run = |fused: bool| {
                store.zero_grad();
                let l = if fused { m.loss(&x, &y, u32::MAX) } else { m.forward(&x).cross_entropy(&y, Some(u32::MAX)) };
                l.backward();
                let grads: Vec<f32> = store.grad_arena().to_vec::<f32>();
                (l.value().item(), grads)
            };
            let ((a, ga), (b, gb)) = (run(true), run(false));
            assert!((a - b).abs() < 1e-5, "tie {tie}: loss {a} vs {b}");
            assert_eq!(ga.len(), gb.len());
            let worst = ga.iter().zip(&gb).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "tie {tie}: gradients differ by {worst}");
            assert!(gb.iter().any(|&g| g != 0.0));
        }
    }

    /// Per-token log-probabilities through the fused head equal the full forward's
    /// log-softmax at the counted positions — value and every adapter gradient —, and
    /// `Pass::Base` is the model without its adapters.
    #[test]
    fn token_logps_equal_the_forwards_log_softmax_and_base_drops_the_adapter() {
        // The base frozen (so the head takes the fused path), the adapters trainable.
        let mut store = ParamStore::new();
        store.set_trainable(|name, _| name.contains(".lora_"));
        let mut m = Llama::new(tiny(RopeLayout::HalfSplit, false, true), &mut store).unwrap();
        randomise(&store, 7);
        let ids: Vec<u32> = (0..14).map(|i| (i * 7 % 17) as u32).collect();
        let tg: Vec<u32> = (0..14).map(|i| if i % 3 == 0 { u32::MAX } else { (i * 5 % 17) as u32 }).collect();
        let (x, y) = (Tensor::new(ids, &[2, 7]), Tensor::new(tg.clone(), &[2, 7]));
        let counted: Vec<(usize, u32)> =
            tg.iter().enumerate().filter(|(_, &t)| t != u32::MAX).map(|(i, &t)| (i, t)).collect();
        let base = m.token_logps(&x, &y, u32::MAX, Pass::Eval).value().to_vec::<f32>();
        let cfg = yuanli_nn::LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, rslora: false };
        m.attach_lora(&mut store, &cfg, &["all-linear".to_string()], &mut Rng::new(1)).unwrap();
        for p in store.params().iter().filter(|p| p.name.contains("lora_B")) {
            let v: Vec<f32> = (0..p.numel()).map(|i| 0.05 * ((i % 7) as f32 - 3.0)).collect();
            store.set_values(p, &v);
        }
        let seed =
            Tensor::new((0..counted.len()).map(|i| 1.0 + i as f32 * 0.1).collect::<Vec<f32>>(), &[counted.len()]);
        let run = |fused: bool| {
            store.zero_grad();
            let l = if fused {
                m.token_logps(&x, &y, u32::MAX, Pass::Eval)
            } else {
                let lp = m.forward(&x).log_softmax().reshape(&[14, 17]);
                let rows = Tensor::new(counted.iter().map(|&(i, _)| i as u32).collect::<Vec<u32>>(), &[counted.len()]);
                let tgt = Tensor::new(counted.iter().map(|&(_, t)| t).collect::<Vec<u32>>(), &[counted.len(), 1]);
                lp.embedding(&rows).gather(-1, &tgt).reshape(&[counted.len()])
            };
            l.backward_with(seed.clone());
            (l.value().to_vec::<f32>(), store.grad_arena().to_vec::<f32>())
        };
        let ((a, ga), (b, gb)) = (run(true), run(false));
        let worst = |p: &[f32], q: &[f32]| p.iter().zip(q).map(|(u, v)| (u - v).abs()).fold(0.0f32, f32::max);
        assert!(
            worst(&a, &b) < 1e-5 && worst(&ga, &gb) < 1e-5,
            "values differ by {}, gradients by {}",
            worst(&a, &b),
            worst(&ga, &gb)
        );
        assert!(gb.iter().any(|&g| g != 0.0));
        let with_adapter = m.token_logps(&x, &y, u32::MAX, Pass::Eval).value().to_vec::<f32>();
        let without = m.token_logps(&x, &y, u32::MAX, Pass::Base).value().to_vec::<f32>();
        assert!(worst(&without, &base) < 1e-6, "Pass::Base is not the model without adapters");
        assert!(worst(&with_adapter, &base) > 1e-4, "the adapter changes nothing");
    }

    /// The engine (paged KV cache, blocks of 4, a prefill of 5 with every row's logits, then
    /// one token at a time) gives the training forward's logits at every position — with f32
    /// parameters, with Gemma 3's extras (sliding window included), with the matrices stored
    /// as Q8_0, and with LoRA adapters on them (the forward then uses the same
    /// dequantized values; the engine's 16-bit activations differ by rounding).
    #[test]
    fn engine_decoding_matches_the_training_forward_at_every_step() {
        use crate::engine::{Batch, Logits, SessionOpts};
        for (layout, bias, tie, quantized, gemma, lora) in [
            (RopeLayout::HalfSplit, true, false, false, false, false),
            (RopeLayout::Interleaved, false, true, false, false, false),
            (RopeLayout::HalfSplit, true, false, true, false, false),
            (RopeLayout::HalfSplit, false, true, false, true, false),
            (RopeLayout::Interleaved, false, true, true, false, true),
        ] {
            let mut cfg = tiny(layout, bias, tie);
            if gemma {
                // every Gemma 3 extra, with a 3-position window on every other layer (the
                // 11-token sequence outgrows it) and a different RoPE base there
                cfg.extras = Extras {
                    embed_scale: true,
                    qk_norm: true,
                    sandwich_norm: true,
                    gelu_gate: true,
                    query_pre_attn_scalar: Some(2.0),
                    sliding_window: Some(3),
                    sliding_window_pattern: 2,
                    rope_local_theta: Some(100.0),
                };
            }
            if quantized {
                cfg.hidden_size = 32; // whole blocks of 32 for Q8_0
                cfg.intermediate_size = 64;
                cfg.head_dim = 8;
            }
            let mut store = ParamStore::new();
            let mut rng = Rng::new(7);
            let mut stored = |name: &str| -> Result<Option<QMatrix>, LoadError> {
                if !quantized {
                    return Ok(None);
                }
                let (_, rows, cols) = matrix_shapes(&cfg).into_iter().find(|m| m.0 == name).unwrap();
                let w: Vec<f32> = (0..rows * cols).map(|_| 0.3 * rng.normal() as f32).collect();
                Ok(QMatrix::quantize(yuanli_tensor::QuantType::Q8_0, rows, cols, &w))
            };
            let mut m = Llama::build(cfg.clone(), &mut store, &mut stored).unwrap();
            if lora {
                // adapters on every map over a Q8_0 base (QLoRA's shape); B made non-zero below
                let lc = LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, rslora: false };
                let n = m.attach_lora(&mut store, &lc, &["all-linear".to_string()], &mut Rng::new(2)).unwrap();
                assert_eq!(n.len(), 7 * cfg.n_layer);
            }
            randomise(&store, 5);
            let ids: Vec<u32> = vec![3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5];
            // Q8_0: 16-bit activations for one token; a 5-token prefill takes the bf16 route
            // where the CPU has it (both operands rounded to 8 significant bits).
            use yuanli_tensor::cpu::qmatmul::{best_qkernel, uses_bf16_route};
            let bf16 = uses_bf16_route(best_qkernel(), yuanli_tensor::QuantType::Q8_0, 5);
            let tol = match (quantized, bf16) {
                (false, _) => 1e-4,
                (true, false) => 2e-3,
                (true, true) => 3e-2,
            };
            let mut s = m.new_session(SessionOpts { block_size: 4, ..SessionOpts::tokens(32) });
            let seq = s.add_sequence();
            let (mut batch, mut logits) = (Batch::new(), Vec::new());
            batch.add_seq(seq, 0, &ids[..5], Logits::All);
            m.forward_batch(&mut s, &batch, &mut logits).unwrap();
            let full = m.forward(&Tensor::new(ids[..5].to_vec(), &[1, 5])).value().to_vec::<f32>();
            assert_close(&logits, &full, tol);
            for n in 6..=ids.len() {
                batch.clear();
                batch.add(seq, n - 1, ids[n - 1], true);
                m.forward_batch(&mut s, &batch, &mut logits).unwrap();
                let full = m.forward(&Tensor::new(ids[..n].to_vec(), &[1, n])).value().narrow(1, n - 1, 1);
                assert_close(&logits, &full.contiguous().to_vec::<f32>(), tol);
            }
        }
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(worst < tol, "engine vs training forward logits differ by {worst}");
    }
}
