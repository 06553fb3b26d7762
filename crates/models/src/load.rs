//! Loading pretrained LLaMA-family models: a GGUF file (llama.cpp's format) or a Hugging Face
//! model directory (`config.json`, `model.safetensors` or sharded with
//! `model.safetensors.index.json`, `tokenizer.json`, `tokenizer_config.json`).
//!
//! Either way the result is the same [`Llama`] on the same engine, a [`Tokenizer`] and the
//! chat template. A GGUF file's weight matrices are either read in place in their own formats
//! ([`Weights::InPlace`]: the fast quantized path) or dequantized to f32 parameters
//! ([`Weights::F32`]: the exact path, and what full fine-tuning needs); norms and biases are
//! always f32. Parameters are frozen unless [`LoadOptions::trainable`].
//!
//! GPT-2 GGUF files (`general.architecture = "gpt2"`, as `yuanli quantize` writes them) load
//! into a [`Gpt`] with [`gpt_from_gguf`] and [`gpt_vocab_from_gguf`].

use crate::chat::ChatTemplate;
use crate::gpt::{Gpt, GptConfig};
use crate::llama::{Extras, Llama, LlamaConfig};
use crate::rope_scaling::{yarn_mscale, RopeScaling};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use yuanli_gguf::GgufFile;
use yuanli_nn::ParamStore;
use yuanli_tensor::{QMatrix, Rng, RopeLayout};
use yuanli_tokenizer::{Pattern, Tokenizer};

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The GGUF file is malformed.
    #[error(transparent)]
    Gguf(#[from] yuanli_gguf::GgufError),
    /// The configuration describes no model we can build.
    #[error("invalid model config: {0}")]
    Config(String),
    /// Registering parameters failed.
    #[error(transparent)]
    Params(#[from] yuanli_nn::Error),
    /// A file of the model is missing, unreadable or inconsistent.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The tokenizer could not be built.
    #[error("{origin}: tokenizer: {source}")]
    Tokenizer {
        /// Where it came from.
        origin: String,
        /// Why.
        source: yuanli_tokenizer::TokenizerError,
    },
}

/// How a loader makes a model's weight matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weights {
    /// Every tensor dequantized to an f32 parameter: the exact path.
    F32,
    /// A GGUF file's matrices read in place in their stored formats (the fast quantized path);
    /// a Hugging Face directory still loads in f32.
    InPlace,
}

/// What [`load_pretrained_with`] builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// How the weight matrices are held.
    pub weights: Weights,
    /// Whether the f32 parameters are trainable (else frozen: no gradient arena).
    pub trainable: bool,
}

impl LoadOptions {
    /// The exact path: f32 weights, frozen.
    pub fn exact() -> LoadOptions {
        LoadOptions { weights: Weights::F32, trainable: false }
    }

    /// The fast path: a GGUF file's weights in place, frozen.
    pub fn fast() -> LoadOptions {
        LoadOptions { weights: Weights::InPlace, trainable: false }
    }
}

/// A pretrained model with everything needed to talk to it.
pub struct Pretrained {
    /// The network.
    pub model: Llama,
    /// Its f32 parameters (all of them, or the norms and biases of a model read in place).
    pub store: ParamStore,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template, if the model has one.
    pub chat_template: Option<ChatTemplate>,
    /// Token that begins a sequence, if any.
    pub bos: Option<u32>,
    /// Tokens that end generation.
    pub eos: Vec<u32>,
    /// Whether a BOS token is put before every prompt.
    pub add_bos: bool,
    /// A one-line description (architecture, name, weight types).
    pub description: String,
    /// Tensor storage types in the file and how many tensors of each.
    pub weight_types: Vec<(String, usize)>,
}

/// Loads a `.gguf` file or a Hugging Face model directory with f32 frozen weights (the exact
/// path); see [`load_pretrained_with`].
pub fn load_pretrained(path: &Path) -> Result<Pretrained, LoadError> {
    load_pretrained_with(path, LoadOptions::exact())
}

/// Loads a `.gguf` file or a Hugging Face model directory.
pub fn load_pretrained_with(path: &Path, opts: LoadOptions) -> Result<Pretrained, LoadError> {
    if path.is_dir() {
        load_hf_dir(path, opts)
    } else if path.exists() {
        load_gguf(path, opts)
    } else {
        Err(LoadError::File { path: path.to_path_buf(), message: "no such file or directory".into() })
    }
}

/// The model configuration a GGUF file describes (`{arch}.*` keys, llama.cpp's names).
pub fn llama_config_from_gguf(f: &GgufFile) -> Result<LlamaConfig, LoadError> {
    let arch = f.get_str("general.architecture")?;
    if !matches!(arch, "llama" | "qwen2" | "qwen3" | "mistral" | "gemma3") {
        return Err(LoadError::Config(format!(
            "{}: architecture {arch:?} is not LLaMA-family (llama, qwen2, qwen3, mistral, gemma3 are supported)",
            f.origin()
        )));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let n_head = f.get_usize(&key("attention.head_count"))?;
    let hidden_size = f.get_usize(&key("embedding_length"))?;
    let n_kv_head = if f.get(&key("attention.head_count_kv")).is_some() {
        f.get_usize(&key("attention.head_count_kv"))?
    } else {
        n_head
    };
    let head_dim = match f.get(&key("attention.key_length")) {
        Some(_) => f.get_usize(&key("attention.key_length"))?,
        None => hidden_size / n_head.max(1),
    };
    let vocab_size = match f.get(&key("vocab_size")) {
        Some(_) => f.get_usize(&key("vocab_size"))?,
        None => f.tensor_info("token_embd.weight")?.shape()[0],
    };
    let rope_theta =
        if f.get(&key("rope.freq_base")).is_some() { f.get_f64(&key("rope.freq_base"))? } else { 10_000.0 };
    let max_seq_len = f.get_usize(&key("context_length"))?;
    let rope_scaling = gguf_rope_scaling(f, arch, head_dim, max_seq_len)?;
    let n_layer = f.get_usize(&key("block_count"))?;
    let extras = match arch {
        "gemma3" => gemma3_extras(f, n_layer, hidden_size, n_head)?,
        "qwen3" => Extras { qk_norm: true, ..Extras::default() },
        _ => Extras::default(),
    };
    let cfg = LlamaConfig {
        vocab_size,
        hidden_size,
        intermediate_size: f.get_usize(&key("feed_forward_length"))?,
        n_layer,
        n_head,
        n_kv_head,
        head_dim,
        rope_theta,
        rope_scaling,
        // llama.cpp's converter permutes LLaMA's and Mistral's q/k rows so that RoPE rotates
        // adjacent pairs; Qwen2, Qwen3 and Gemma files keep the Hugging Face order, which llama.cpp
        // runs in "NeoX" (half-split) mode.
        rope_layout: if matches!(arch, "qwen2" | "qwen3" | "gemma3") {
            RopeLayout::HalfSplit
        } else {
            RopeLayout::Interleaved
        },
        rms_norm_eps: f.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
        max_seq_len,
        tie_word_embeddings: f.tensor_info("output.weight").is_err(),
        attention_bias: f.tensor_info("blk.0.attn_q.bias").is_ok(),
        extras,
    };
    cfg.validate().map_err(|e| LoadError::Config(format!("{}: {e}", f.origin())))?;
    Ok(cfg)
}

/// The RoPE scaling of a GGUF file, read as llama.cpp reads it (`llama-model.cpp`): the type
/// `{arch}.rope.scaling.type` (llama.cpp assumes `linear` when only a factor is given), the
/// factor `{arch}.rope.scaling.factor` (or the older `rope.scale_linear`); for YaRN the original
/// context (`…original_context_length`, else the file's context length) and the optional
/// `yarn_beta_fast`/`yarn_beta_slow`/`yarn_attn_factor`/`yarn_log_multiplier`/`attn_factor`
/// keys; LLaMA 3's scaling arrives as the `rope_freqs.weight` tensor (one divisor per pair,
/// what llama.cpp's converter computes from the `rope_scaling` of `config.json`).
///
/// YaRN's attention temperature is transformers' rule — an explicit `yarn_attn_factor` (the
/// converter copies `attention_factor` into it), else `m(s)` — where llama.cpp recomputes
/// `m(s)` and ignores the key; they differ only for files that set it. Types we do not
/// implement (longrope, …), an extrapolation factor other than 1, and RoPE on part of each
/// head are refused by name instead of run with plain RoPE.
fn gguf_rope_scaling(f: &GgufFile, arch: &str, head_dim: usize, context: usize) -> Result<RopeScaling, LoadError> {
    let refuse = |m: String| Err(LoadError::Config(format!("{}: {m}", f.origin())));
    let key = |k: &str| format!("{arch}.{k}");
    let opt_f64 = |k: &str| -> Result<Option<f64>, LoadError> {
        Ok(if f.get(&key(k)).is_some() { Some(f.get_f64(&key(k))?) } else { None })
    };
    let dims = key("rope.dimension_count");
    if f.get(&dims).is_some() && f.get_usize(&dims)? != head_dim {
        return refuse(format!(
            "{dims} = {}: RoPE on part of each head (of {head_dim}) is not implemented",
            f.get_usize(&dims)?
        ));
    }
    let kind =
        if f.get(&key("rope.scaling.type")).is_some() { f.get_str(&key("rope.scaling.type"))? } else { "linear" };
    let factor = opt_f64("rope.scaling.factor")?.or(opt_f64("rope.scale_linear")?).filter(|&x| x != 0.0).unwrap_or(1.0);
    let scaling = match kind {
        "none" => RopeScaling::None,
        "linear" if factor == 1.0 => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor },
        "yarn" => {
            if let Some(e) = opt_f64("rope.scaling.yarn_ext_factor")?.filter(|&e| e != 1.0) {
                return refuse(format!("{} = {e}: YaRN with an extrapolation factor other than 1 is not implemented", key("rope.scaling.yarn_ext_factor")));
            }
            let original = match f.get(&key("rope.scaling.original_context_length")) {
                Some(_) => f.get_usize(&key("rope.scaling.original_context_length"))?,
                None => context,
            };
            let temperature = match (opt_f64("rope.scaling.yarn_attn_factor")?, opt_f64("rope.scaling.yarn_log_multiplier")?) {
                (Some(a), _) => a,
                (None, Some(mu)) if mu != 0.0 => yarn_mscale(factor, 1.0) / yarn_mscale(factor, mu),
                _ => yarn_mscale(factor, 1.0),
            };
            RopeScaling::Yarn {
                factor,
                original,
                beta_fast: opt_f64("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
                beta_slow: opt_f64("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
                attention_factor: temperature * opt_f64("rope.scaling.attn_factor")?.unwrap_or(1.0),
                truncate: true,
            }
        }
        other => {
            return refuse(format!(
                "{} = {other:?}: this RoPE scaling is not implemented (none, linear, yarn and rope_freqs are); refusing rather than running with unscaled positions",
                key("rope.scaling.type")
            ))
        }
    };
    if f.tensor_info("rope_freqs.weight").is_ok() {
        if scaling != RopeScaling::None {
            return refuse(format!(
                "both {} = {kind:?} and a rope_freqs.weight tensor; one scaling at a time is implemented",
                key("rope.scaling.type")
            ));
        }
        let (_, factors) = f.tensor_f32("rope_freqs.weight")?;
        return Ok(RopeScaling::FreqFactors { factors: factors.into_iter().map(f64::from).collect() });
    }
    Ok(scaling)
}

/// RoPE metadata keys with their values, and the `rope_freqs.weight` tensor when there is one.
pub type GgufRopeForm = (Vec<(String, yuanli_gguf::Value)>, Option<Vec<f32>>);

/// The GGUF form of `c`'s RoPE scaling, as llama.cpp's converter writes it (the inverse of
/// [`gguf_rope_scaling`]): `{arch}.rope.scaling.*` keys for linear and YaRN (YaRN's betas and
/// temperature only where they differ from the defaults the reader fills in), and for LLaMA 3
/// no keys but the `rope_freqs.weight` tensor — one divisor `θ_i / θ'_i` per pair, returned
/// here. Dynamic NTK has no GGUF form (llama.cpp does not implement it, and its converter drops
/// it without a word), nor has YaRN without truncation: both are refused.
pub fn gguf_rope_form(c: &LlamaConfig, arch: &str) -> Result<GgufRopeForm, String> {
    use yuanli_gguf::Value;
    let key = |k: &str| format!("{arch}.rope.scaling.{k}");
    let kind = |k: &str| (key("type"), Value::String(k.into()));
    let f32v = |x: f64| Value::F32(x as f32);
    Ok(match &c.rope_scaling {
        RopeScaling::None => (vec![], None),
        RopeScaling::Linear { factor } => (vec![kind("linear"), (key("factor"), f32v(*factor))], None),
        RopeScaling::Yarn { factor, original, beta_fast, beta_slow, attention_factor, truncate } => {
            if !truncate {
                return Err(
                    "YaRN with truncate = false has no GGUF form (llama.cpp always rounds the ramp's ends)".into()
                );
            }
            let mut m = vec![
                kind("yarn"),
                (key("factor"), f32v(*factor)),
                (key("original_context_length"), Value::U32(*original as u32)),
            ];
            if *attention_factor != yarn_mscale(*factor, 1.0) {
                m.push((key("yarn_attn_factor"), f32v(*attention_factor)));
            }
            if *beta_fast != 32.0 {
                m.push((key("yarn_beta_fast"), f32v(*beta_fast)));
            }
            if *beta_slow != 1.0 {
                m.push((key("yarn_beta_slow"), f32v(*beta_slow)));
            }
            (m, None)
        }
        RopeScaling::Llama3 { .. } | RopeScaling::FreqFactors { .. } => {
            let plain = RopeScaling::None.freqs(c.head_dim, c.rope_theta, 0);
            let scaled = c.rope_scaling.freqs(c.head_dim, c.rope_theta, 0);
            (vec![], Some(plain.inv_freq.iter().zip(&scaled.inv_freq).map(|(a, b)| (a / b) as f32).collect()))
        }
        RopeScaling::Dynamic { .. } => {
            return Err("dynamic NTK RoPE scaling has no GGUF form: llama.cpp does not implement it".into())
        }
    })
}

/// The head count of a query or key projection tensor or module of `c` (its name contains
/// `self_attn.q_proj`: query heads; `self_attn.k_proj`: key-value heads), else `None`: the
/// tensors whose rows RoPE rotates in pairs, which llama.cpp's converter interleaves
/// ([`interleave_rope_rows`]).
pub fn rope_row_heads(c: &LlamaConfig, name: &str) -> Option<usize> {
    if name.contains("self_attn.q_proj") {
        Some(c.n_head)
    } else if name.contains("self_attn.k_proj") {
        Some(c.n_kv_head)
    } else {
        None
    }
}

/// The query/key row order of a `llama` GGUF file: within each head of `hd` rows of a
/// `(heads·hd, cols)` matrix, row `j·hd/2 + i` (Hugging Face's half-split RoPE order: half `j`
/// of rotation pair `i`) moves to row `2i + j` (llama.cpp's interleaved order, pairs adjacent),
/// as llama.cpp's converter permutes them; `inverse` moves them back. Works for a bias too
/// (`cols = 1`).
pub fn interleave_rope_rows(w: &[f32], heads: usize, hd: usize, cols: usize, inverse: bool) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let (hf, cpp) = (h * hd + j * (hd / 2) + i, h * hd + 2 * i + j);
                let (src, dst) = if inverse { (cpp, hf) } else { (hf, cpp) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Gemma 3's additions, as llama.cpp reads them: `√C` embedding scale, QK-norm, sandwich
/// norms, GeGLU, and local layers (five of every six) with a sliding window and RoPE base
/// 10 000 — the pattern and the local base are fixed by the architecture, not stored in the
/// file. The attention scale is `1/√D`, except for the 27B model (62 layers: `1/√(C/H)`).
/// Gemma 3 has no logit soft-capping; a file that asks for it is refused.
fn gemma3_extras(f: &GgufFile, n_layer: usize, hidden: usize, n_head: usize) -> Result<Extras, LoadError> {
    for k in ["gemma3.final_logit_softcapping", "gemma3.attn_logit_softcapping"] {
        if f.get(k).is_some() && f.get_f64(k)? != 0.0 {
            return Err(LoadError::Config(format!("{}: {k} is set; logit soft-capping is not supported", f.origin())));
        }
    }
    let window = match f.get("gemma3.attention.sliding_window") {
        Some(_) => Some(f.get_usize("gemma3.attention.sliding_window")?).filter(|&w| w > 0),
        None => None,
    };
    Ok(Extras {
        embed_scale: true,
        qk_norm: true,
        sandwich_norm: true,
        gelu_gate: true,
        query_pre_attn_scalar: (n_layer == 62).then(|| (hidden / n_head.max(1)) as f64),
        sliding_window: window,
        sliding_window_pattern: 6,
        rope_local_theta: window.map(|_| 10_000.0),
    })
}

/// The one name table: llama.cpp's GGUF tensor name for each of ours (Hugging Face's).
pub fn gguf_name_map(cfg: &LlamaConfig) -> Vec<(String, String)> {
    let mut m = vec![("model.embed_tokens.weight".to_string(), "token_embd.weight".to_string())];
    for i in 0..cfg.n_layer {
        let (ours, theirs) = (format!("model.layers.{i}."), format!("blk.{i}."));
        let mut pairs = vec![
            ("input_layernorm.weight", "attn_norm.weight"),
            ("self_attn.q_proj.weight", "attn_q.weight"),
            ("self_attn.k_proj.weight", "attn_k.weight"),
            ("self_attn.v_proj.weight", "attn_v.weight"),
            ("self_attn.o_proj.weight", "attn_output.weight"),
            ("mlp.gate_proj.weight", "ffn_gate.weight"),
            ("mlp.up_proj.weight", "ffn_up.weight"),
            ("mlp.down_proj.weight", "ffn_down.weight"),
        ];
        if cfg.extras.sandwich_norm {
            pairs.extend([
                ("post_attention_layernorm.weight", "post_attention_norm.weight"),
                ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
                ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
            ]);
        } else {
            pairs.push(("post_attention_layernorm.weight", "ffn_norm.weight"));
        }
        if cfg.extras.qk_norm {
            pairs.extend([
                ("self_attn.q_norm.weight", "attn_q_norm.weight"),
                ("self_attn.k_norm.weight", "attn_k_norm.weight"),
            ]);
        }
        if cfg.attention_bias {
            pairs.extend([
                ("self_attn.q_proj.bias", "attn_q.bias"),
                ("self_attn.k_proj.bias", "attn_k.bias"),
                ("self_attn.v_proj.bias", "attn_v.bias"),
            ]);
        }
        m.extend(pairs.into_iter().map(|(a, b)| (format!("{ours}{a}"), format!("{theirs}{b}"))));
    }
    m.push(("model.norm.weight".into(), "output_norm.weight".into()));
    if !cfg.tie_word_embeddings {
        m.push(("lm_head.weight".into(), "output.weight".into()));
    }
    m
}

/// Copies `(shape, values)` into the store's parameter `ours`, checking the shape.
fn put(store: &ParamStore, ours: &str, shape: &[usize], values: &[f32], origin: &str) -> Result<(), LoadError> {
    let p = store.get(ours).ok_or_else(|| LoadError::Config(format!("no parameter {ours}")))?;
    if p.shape != shape {
        return Err(LoadError::File {
            path: origin.into(),
            message: format!("tensor for {ours} has shape {shape:?}, the config implies {:?}", p.shape),
        });
    }
    store.set_values(p, values);
    Ok(())
}

/// Loads a GGUF file: config, weights (in place or dequantized to f32), tokenizer and chat
/// template.
pub fn load_gguf(path: &Path, opts: LoadOptions) -> Result<Pretrained, LoadError> {
    load_gguf_file(Arc::new(GgufFile::open(path)?), opts)
}

/// [`load_gguf`] for a file already open (a caller that looked at its metadata first).
pub fn load_gguf_file(f: Arc<GgufFile>, opts: LoadOptions) -> Result<Pretrained, LoadError> {
    let cfg = llama_config_from_gguf(&f)?;
    let names: HashMap<String, String> = gguf_name_map(&cfg).into_iter().collect();
    let mut store = if opts.trainable { ParamStore::new() } else { ParamStore::frozen() };
    let in_place = opts.weights == Weights::InPlace;
    let model = Llama::build(cfg.clone(), &mut store, &mut |ours| {
        if !in_place {
            return Ok(None);
        }
        let theirs = names.get(ours).ok_or_else(|| LoadError::Config(format!("no GGUF name for {ours}")))?;
        let info = f.tensor_info(theirs)?;
        let shape = info.shape();
        let [rows, cols] = shape[..] else {
            return Err(LoadError::Config(format!(
                "{}: tensor {theirs} has shape {shape:?}, not a matrix",
                f.origin()
            )));
        };
        let bytes: yuanli_tensor::quant::ByteSource = f.clone();
        QMatrix::new(info.ty, rows, cols, bytes, f.tensor_range(info))
            .map(Some)
            .map_err(|e| LoadError::Config(format!("{}: tensor {theirs}: {e}", f.origin())))
    })?;
    for p in store.params() {
        let theirs = names.get(&p.name).ok_or_else(|| LoadError::Config(format!("no GGUF name for {}", p.name)))?;
        let (shape, values) = f.tensor_f32(theirs)?;
        put(&store, &p.name, &shape, &values, f.origin())?;
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for theirs in names.values() {
        *counts.entry(f.tensor_info(theirs)?.ty.name().to_string()).or_default() += 1;
    }
    let weight_types: Vec<(String, usize)> = counts.into_iter().collect();
    let parts = GgufChatParts::read(&f)?;
    let description = with_rope(gguf_description(&f, &weight_types, cfg.num_params())?, &cfg);
    let GgufChatParts { tokenizer, chat_template, bos, eos, add_bos } = parts;
    Ok(Pretrained { model, store, tokenizer, chat_template, bos, eos, add_bos, description, weight_types })
}

/// What a GGUF file says about talking to its model: tokenizer, chat template, special ids.
pub struct GgufChatParts {
    /// The tokenizer of `tokenizer.ggml.*`.
    pub tokenizer: Tokenizer,
    /// `tokenizer.chat_template`, if present.
    pub chat_template: Option<ChatTemplate>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id` and `eot_token_id`.
    pub eos: Vec<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
}

impl GgufChatParts {
    /// Reads them from the metadata.
    pub fn read(f: &GgufFile) -> Result<GgufChatParts, LoadError> {
        let tokenizer = tokenizer_from_gguf(f)?;
        let opt_id = |k: &str| f.get(k).map(|_| f.get_usize(k).map(|x| x as u32)).transpose();
        let bos = opt_id("tokenizer.ggml.bos_token_id")?;
        let mut eos: Vec<u32> = opt_id("tokenizer.ggml.eos_token_id")?.into_iter().collect();
        eos.extend(opt_id("tokenizer.ggml.eot_token_id")?.filter(|e| !eos.contains(e)));
        // llama.cpp also ends generation at any token whose text says so (Gemma's <end_of_turn>).
        for &(ref text, id) in tokenizer.specials() {
            if EOG_TEXTS.contains(&text.as_str()) && !eos.contains(&id) {
                eos.push(id);
            }
        }
        let add_bos = matches!(f.get("tokenizer.ggml.add_bos_token"), Some(yuanli_gguf::Value::Bool(true)));
        let token_text = |id: Option<u32>| id.map(|i| token_text(&tokenizer, i)).unwrap_or_default();
        let chat_template = match f.get("tokenizer.chat_template") {
            Some(v) => Some(ChatTemplate::new(
                v.as_str().ok_or_else(|| LoadError::Config("tokenizer.chat_template is not a string".into()))?,
                &token_text(bos),
                &token_text(eos.first().copied()),
            )),
            None => None,
        };
        Ok(GgufChatParts { tokenizer, chat_template, bos, eos, add_bos })
    }
}

/// `description`, then the RoPE scaling when there is one ("…, RoPE yarn ×4 from 32768
/// positions"): a user sees what stretches the context.
fn with_rope(description: String, cfg: &LlamaConfig) -> String {
    match cfg.rope_scaling.summary() {
        s if s.is_empty() => description,
        s => format!("{description}, {s}"),
    }
}

/// "name (arch, GGUF v3, 210×Q4_1 …), 134.5 M parameters".
pub fn gguf_description(f: &GgufFile, weight_types: &[(String, usize)], params: usize) -> Result<String, LoadError> {
    let name = f.get("general.name").and_then(|v| v.as_str()).unwrap_or("unnamed");
    Ok(format!(
        "{} ({}, GGUF v{}, {}), {:.1} M parameters",
        name,
        f.get_str("general.architecture")?,
        f.version(),
        weight_types.iter().map(|(t, n)| format!("{n}×{t}")).collect::<Vec<_>>().join(" "),
        params as f64 / 1e6
    ))
}

/// The text of a token: a special's name, or an ordinary token's bytes (lossy UTF-8).
fn token_text(t: &Tokenizer, id: u32) -> String {
    match t.specials().iter().find(|s| s.1 == id) {
        Some(s) => s.0.clone(),
        None => String::from_utf8_lossy(t.token_bytes(id).unwrap_or_default()).into_owned(),
    }
}

/// Token texts llama.cpp treats as ending generation wherever they appear in a vocabulary,
/// and as control tokens even when the file types them otherwise (Gemma's `</s>` is
/// "user-defined" in the file).
pub const EOG_TEXTS: [&str; 11] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "</s>",
];

/// GGUF token types with llama.cpp's override: an end-of-generation text is a control token (3).
fn token_types(f: &GgufFile, tokens: &[String]) -> Result<Vec<i64>, LoadError> {
    let mut types = match f.get("tokenizer.ggml.token_type") {
        Some(_) => f.get_ints("tokenizer.ggml.token_type")?,
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(LoadError::Config(format!(
            "{}: {} token types for {} tokens",
            f.origin(),
            types.len(),
            tokens.len()
        )));
    }
    for (t, ty) in tokens.iter().zip(types.iter_mut()) {
        if EOG_TEXTS.contains(&t.as_str()) {
            *ty = 3;
        }
    }
    Ok(types)
}

/// The tokenizer stored in a GGUF file's `tokenizer.ggml.*` keys: byte-level BPE (`gpt2`) or
/// SentencePiece-style BPE by scores (`llama`: LLaMA 1/2, Mistral, Gemma).
pub fn tokenizer_from_gguf(f: &GgufFile) -> Result<Tokenizer, LoadError> {
    let origin = f.origin().to_string();
    let model = f.get_str("tokenizer.ggml.model")?;
    if model == "llama" {
        return spm_tokenizer_from_gguf(f);
    }
    if model != "gpt2" {
        return Err(LoadError::Config(format!(
            "{origin}: tokenizer.ggml.model = {model:?}; byte-level BPE (\"gpt2\") and SentencePiece (\"llama\") are supported"
        )));
    }
    let pre = f.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("default");
    let pattern = match pre {
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => Pattern::Smollm,
        "gpt-2" | "gpt2" | "default" | "mpt" | "olmo" | "jais" => Pattern::Gpt2,
        other => {
            return Err(LoadError::Config(format!(
                "{origin}: pre-tokenizer tokenizer.ggml.pre = {other:?} is not supported (smollm, gpt-2 are)"
            )))
        }
    };
    let tokens = f.get_strings("tokenizer.ggml.tokens")?;
    let merges = f.get_strings("tokenizer.ggml.merges")?;
    let types = token_types(f, &tokens)?;
    // Control (3) and user-defined (4) tokens are specials: matched whole in text, never merged.
    let specials: Vec<(String, u32)> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &ty))| ty == 3 || ty == 4)
        .map(|(id, (tok, _))| (tok.clone(), id as u32))
        .collect();
    yuanli_tokenizer::formats::from_byte_level_strings(&tokens, &merges, pattern, &specials)
        .map_err(|source| LoadError::Tokenizer { origin, source })
}

/// A SentencePiece-style tokenizer from `tokenizer.ggml.tokens`, `scores` and `token_type`;
/// `add_space_prefix` as the file says (llama.cpp's default for this model: true).
fn spm_tokenizer_from_gguf(f: &GgufFile) -> Result<Tokenizer, LoadError> {
    let origin = f.origin().to_string();
    let tokens = f.get_strings("tokenizer.ggml.tokens")?;
    let scores: Vec<f32> = f.get_floats("tokenizer.ggml.scores")?.into_iter().map(|x| x as f32).collect();
    let types: Vec<i32> = token_types(f, &tokens)?.into_iter().map(|t| t.clamp(0, 255) as i32).collect();
    let add_space_prefix = !matches!(f.get("tokenizer.ggml.add_space_prefix"), Some(yuanli_gguf::Value::Bool(false)));
    Tokenizer::from_spm(&tokens, &scores, &types, add_space_prefix)
        .map_err(|source| LoadError::Tokenizer { origin, source })
}

fn read_json(path: &Path) -> Result<Json, LoadError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LoadError::File { path: path.to_path_buf(), message: format!("cannot read: {e}") })?;
    serde_json::from_str(&text)
        .map_err(|e| LoadError::File { path: path.to_path_buf(), message: format!("not valid JSON: {e}") })
}

/// The model configuration of a Hugging Face `config.json` (LlamaForCausalLM and kin).
pub fn llama_config_from_hf(v: &Json, path: &Path) -> Result<LlamaConfig, LoadError> {
    let bad = |m: String| LoadError::File { path: path.to_path_buf(), message: m };
    let model_type = v.get("model_type").and_then(Json::as_str).unwrap_or("");
    if !matches!(model_type, "llama" | "qwen2" | "qwen3" | "mistral") {
        return Err(bad(format!("model_type {model_type:?} is not LLaMA-family (llama, qwen2, qwen3, mistral)")));
    }
    let get = |k: &str| {
        v.get(k).and_then(Json::as_u64).map(|x| x as usize).ok_or_else(|| bad(format!("missing or non-integer {k:?}")))
    };
    refuse_unsupported_hf_fields(v, model_type).map_err(bad)?;
    let n_head = get("num_attention_heads")?;
    let hidden_size = get("hidden_size")?;
    let max_seq_len = get("max_position_embeddings")?;
    let (rope_theta, rope_scaling) = hf_rope(v, max_seq_len).map_err(bad)?;
    // Mistral's sliding window (every layer local); Qwen2's is off unless use_sliding_window,
    // which is refused above. A window at least as long as the context changes nothing.
    let window = match v.get("sliding_window").and_then(Json::as_u64) {
        Some(w) if model_type == "mistral" && (w as usize) < max_seq_len => Some(w as usize),
        _ => None,
    };
    let cfg = LlamaConfig {
        vocab_size: get("vocab_size")?,
        hidden_size,
        intermediate_size: get("intermediate_size")?,
        n_layer: get("num_hidden_layers")?,
        n_head,
        n_kv_head: get("num_key_value_heads").unwrap_or(n_head),
        head_dim: get("head_dim").unwrap_or(hidden_size / n_head.max(1)),
        rope_theta,
        rope_scaling,
        rope_layout: RopeLayout::HalfSplit,
        // transformers' own defaults where a field is absent
        rms_norm_eps: v.get("rms_norm_eps").and_then(Json::as_f64).unwrap_or(1e-6),
        max_seq_len,
        tie_word_embeddings: v.get("tie_word_embeddings").and_then(Json::as_bool).unwrap_or(false),
        attention_bias: model_type == "qwen2" || v.get("attention_bias").and_then(Json::as_bool).unwrap_or(false),
        // Qwen3: an RMSNorm over each query and key head before RoPE
        extras: Extras { sliding_window: window, qk_norm: model_type == "qwen3", ..Extras::default() },
    };
    cfg.validate().map_err(bad)?;
    Ok(cfg)
}

/// RoPE's base θ and scaling from a `config.json`, in either form: transformers 4 writes the
/// base at the top level (`rope_theta`) and the scaling in `rope_scaling`; transformers 5
/// writes both into `rope_parameters` (`rope_type`, `rope_theta`, `factor`, …). Absent, the
/// base is transformers' default 10 000 and there is no scaling. Each scaling's numbers are
/// resolved as transformers resolves them (`modeling_rope_utils.py`): the original context of
/// YaRN and LLaMA 3 from the parameters, else a top-level `original_max_position_embeddings`,
/// else `max_position_embeddings`; dynamic NTK always from `max_position_embeddings`; YaRN's
/// `beta_fast`/`beta_slow` 32/1, its temperature `attention_factor`, else
/// `m(s, mscale)/m(s, mscale_all_dim)` when both are given, else `m(s)`. A scaling we do not
/// implement (longrope, …), per-layer-type parameters, and values given twice that disagree
/// are refused by name — running with unscaled positions would give wrong text without a word.
fn hf_rope(v: &Json, max_seq_len: usize) -> Result<(f64, RopeScaling), String> {
    let present = |k: &str| v.get(k).filter(|x| !x.is_null());
    let top = v.get("rope_theta").and_then(Json::as_f64);
    let nested = present("rope_parameters").and_then(|o| o.get("rope_theta")).and_then(Json::as_f64);
    let theta = match (top, nested) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!("rope_theta = {a} and rope_parameters.rope_theta = {b} disagree"))
        }
        (a, b) => a.or(b).unwrap_or(10_000.0),
    };
    let kind_of =
        |o: &Json| o.get("rope_type").or_else(|| o.get("type")).and_then(Json::as_str).unwrap_or("default").to_string();
    let (field, p) = match (present("rope_scaling"), present("rope_parameters")) {
        (Some(a), Some(b))
            if kind_of(a) != "default"
                && kind_of(b) != "default"
                && (kind_of(a) != kind_of(b) || a.get("factor") != b.get("factor")) =>
        {
            return Err(format!("rope_scaling ({}) and rope_parameters ({}) disagree", kind_of(a), kind_of(b)))
        }
        (Some(a), Some(b)) => {
            if kind_of(b) != "default" {
                ("rope_parameters", b)
            } else {
                ("rope_scaling", a)
            }
        }
        (Some(a), None) => ("rope_scaling", a),
        (None, Some(b)) => ("rope_parameters", b),
        (None, None) => return Ok((theta, RopeScaling::None)),
    };
    for layer_type in ["full_attention", "sliding_attention"] {
        if p.get(layer_type).is_some() {
            return Err(format!(
                "{field}.{layer_type}: RoPE parameters per layer type are not implemented for this family"
            ));
        }
    }
    let number = |k: &str| p.get(k).and_then(Json::as_f64);
    let need = |k: &str| number(k).ok_or_else(|| format!("{field}: rope_type {:?} needs a number {k:?}", kind_of(p)));
    let original = || -> Result<usize, String> {
        let inner = p.get("original_max_position_embeddings").and_then(Json::as_u64);
        let outer = v.get("original_max_position_embeddings").and_then(Json::as_u64);
        match (inner, outer) {
            (Some(a), Some(b)) if a != b => Err(format!(
                "{field}.original_max_position_embeddings = {a} and original_max_position_embeddings = {b} disagree"
            )),
            (a, b) => Ok(a.or(b).map(|x| x as usize).unwrap_or(max_seq_len)),
        }
    };
    let scaling = match kind_of(p).as_str() {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: need("factor")? },
        "dynamic" => RopeScaling::Dynamic { factor: need("factor")?, original: max_seq_len },
        "yarn" => {
            let original = original()?;
            let factor = number("factor").unwrap_or(max_seq_len as f64 / original as f64);
            let nonzero = |k: &str| number(k).filter(|&x| x != 0.0);
            let attention_factor = match (number("attention_factor"), nonzero("mscale"), nonzero("mscale_all_dim")) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(all)) => yarn_mscale(factor, m) / yarn_mscale(factor, all),
                _ => yarn_mscale(factor, 1.0),
            };
            RopeScaling::Yarn {
                factor,
                original,
                beta_fast: nonzero("beta_fast").unwrap_or(32.0),
                beta_slow: nonzero("beta_slow").unwrap_or(1.0),
                attention_factor,
                truncate: p.get("truncate").and_then(Json::as_bool).unwrap_or(true),
            }
        }
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original: original()?,
        },
        other => {
            return Err(format!(
                "{field}: rope_type {other:?} is not implemented (default, linear, dynamic, yarn and llama3 are); refusing rather than running with unscaled positions"
            ))
        }
    };
    Ok((theta, scaling))
}

/// The `config.json` fields that would change the arithmetic of a LLaMA-family model and that
/// [`LlamaConfig`] has no form for: each is refused by name rather than ignored.
fn refuse_unsupported_hf_fields(v: &Json, model_type: &str) -> Result<(), String> {
    let act = v.get("hidden_act").or_else(|| v.get("hidden_activation")).and_then(Json::as_str).unwrap_or("silu");
    if act != "silu" {
        return Err(format!("hidden_act {act:?}: only SiLU (SwiGLU) is implemented for {model_type}"));
    }
    if v.get("mlp_bias").and_then(Json::as_bool) == Some(true) {
        return Err("mlp_bias = true: biases on the MLP's projections are not implemented".into());
    }
    if let Some(f) = v.get("partial_rotary_factor").and_then(Json::as_f64).filter(|&f| f != 1.0) {
        return Err(format!("partial_rotary_factor = {f}: RoPE on part of each head is not implemented"));
    }
    if v.get("use_sliding_window").and_then(Json::as_bool) == Some(true) {
        return Err("use_sliding_window = true: Qwen2's per-layer sliding window is not implemented".into());
    }
    if let Some(kinds) = v.get("layer_types").and_then(Json::as_array) {
        if let Some(k) = kinds.iter().find(|k| k.as_str() != Some("full_attention")) {
            return Err(format!(
                "layer_types contains {k}: only full-attention layers are implemented for {model_type}"
            ));
        }
    }
    Ok(())
}

/// Loads a Hugging Face model directory (f32 weights, whatever `opts.weights` says).
pub fn load_hf_dir(dir: &Path, opts: LoadOptions) -> Result<Pretrained, LoadError> {
    let cfg_path = dir.join("config.json");
    let v = read_json(&cfg_path)?;
    let cfg = llama_config_from_hf(&v, &cfg_path)?;
    let mut store = if opts.trainable { ParamStore::new() } else { ParamStore::frozen() };
    let model = Llama::new(cfg.clone(), &mut store)?;
    // Weight files: one, or the shards an index names.
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index.exists() {
        let idx = read_json(&index)?;
        let map = idx
            .get("weight_map")
            .and_then(Json::as_object)
            .ok_or_else(|| LoadError::File { path: index.clone(), message: "no \"weight_map\" object".into() })?;
        let mut f: Vec<PathBuf> = map.values().filter_map(Json::as_str).map(|s| dir.join(s)).collect();
        f.sort();
        f.dedup();
        f
    } else {
        vec![dir.join("model.safetensors")]
    };
    let mut missing: Vec<String> = store.params().iter().map(|p| p.name.clone()).collect();
    for file in &files {
        let tensors = yuanli_nn::checkpoint::read_tensors(file)
            .map_err(|e| LoadError::File { path: file.clone(), message: e.to_string() })?;
        for (name, (shape, values)) in &tensors {
            if store.get(name).is_some() {
                put(&store, name, shape, values, &file.display().to_string())?;
                missing.retain(|m| m != name);
            }
        }
    }
    if !missing.is_empty() {
        return Err(LoadError::File {
            path: dir.to_path_buf(),
            message: format!("{} weights missing from the safetensors files, e.g. {}", missing.len(), missing[0]),
        });
    }
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = yuanli_tokenizer::formats::load(&tok_path, None)
        .map_err(|source| LoadError::Tokenizer { origin: tok_path.display().to_string(), source })?;
    let tc = dir.join("tokenizer_config.json");
    let tc = if tc.exists() { read_json(&tc)? } else { Json::Null };
    let special = |k: &str| {
        let s = tc.get(k).and_then(|x| x.as_str().or_else(|| x.get("content").and_then(Json::as_str)));
        s.map(str::to_string)
    };
    let (bos_s, eos_s) = (special("bos_token"), special("eos_token"));
    let bos = bos_s.as_deref().and_then(|s| tokenizer.special_id(s));
    let eos: Vec<u32> = eos_s.as_deref().and_then(|s| tokenizer.special_id(s)).into_iter().collect();
    let chat_template = tc
        .get("chat_template")
        .and_then(Json::as_str)
        .map(|t| ChatTemplate::new(t, bos_s.as_deref().unwrap_or_default(), eos_s.as_deref().unwrap_or_default()));
    let model_type = v.get("model_type").and_then(Json::as_str).unwrap_or_default();
    let description = with_rope(
        format!("{} ({model_type}, safetensors), {:.1} M parameters", dir.display(), cfg.num_params() as f64 / 1e6),
        &cfg,
    );
    Ok(Pretrained {
        model,
        store,
        tokenizer,
        chat_template,
        bos,
        eos,
        add_bos: tc.get("add_bos_token").and_then(Json::as_bool).unwrap_or(false),
        description,
        weight_types: vec![("F32".into(), files.len())],
    })
}

// ---------------------------------------------------------------------------------------------
// GPT-2 in GGUF (llama.cpp's `gpt2` architecture)
// ---------------------------------------------------------------------------------------------

/// The `general.architecture` of a GPT-2 GGUF file.
pub const GPT2_ARCH: &str = "gpt2";

/// The `tokenizer.ggml.model` of a character-level vocabulary written by `yuanli quantize`:
/// `tokenizer.ggml.tokens[i]` is the one-character string of id `i`.
pub const CHAR_TOKENIZER_MODEL: &str = "yuanli-char";

/// llama.cpp's GPT-2 tensor name for each of our (nanoGPT) parameter names, in file order.
///
/// Linear weights keep their `[out, in]` row-major shape (GGUF `ne = [in, out]`); the head
/// is tied to `token_embd.weight`, so there is no `output.weight`. Biases are listed only
/// when `cfg.bias`.
pub fn gpt_gguf_name_map(cfg: &GptConfig) -> Vec<(String, String)> {
    let mut m = vec![
        ("wte.weight".to_string(), "token_embd.weight".to_string()),
        ("wpe.weight".to_string(), "position_embd.weight".to_string()),
    ];
    let suffixes: &[&str] = if cfg.bias { &["weight", "bias"] } else { &["weight"] };
    for i in 0..cfg.n_layer {
        for (ours, theirs) in [
            ("ln_1", "attn_norm"),
            ("attn.c_attn", "attn_qkv"),
            ("attn.c_proj", "attn_output"),
            ("ln_2", "ffn_norm"),
            ("mlp.c_fc", "ffn_up"),
            ("mlp.c_proj", "ffn_down"),
        ] {
            m.extend(suffixes.iter().map(|s| (format!("h.{i}.{ours}.{s}"), format!("blk.{i}.{theirs}.{s}"))));
        }
    }
    m.extend(suffixes.iter().map(|s| (format!("ln_f.{s}"), format!("output_norm.{s}"))));
    m
}

/// The GPT configuration a `gpt2` GGUF file describes: `gpt2.context_length` (T),
/// `gpt2.embedding_length` (C), `gpt2.block_count` (L), `gpt2.attention.head_count` (H); V is
/// the row count of `token_embd.weight`; biases are present iff `blk.0.attn_qkv.bias` is.
/// Our GPT has a 4C-wide MLP and LayerNorm ε = 1e-5, so the file must say the same.
pub fn gpt_config_from_gguf(f: &GgufFile) -> Result<GptConfig, LoadError> {
    let origin = f.origin();
    let arch = f.get_str("general.architecture")?;
    if arch != GPT2_ARCH {
        return Err(LoadError::Config(format!("{origin}: architecture {arch:?} is not {GPT2_ARCH:?}")));
    }
    let n_embd = f.get_usize("gpt2.embedding_length")?;
    let cfg = GptConfig {
        vocab_size: f.tensor_info("token_embd.weight")?.shape()[0],
        block_size: f.get_usize("gpt2.context_length")?,
        n_layer: f.get_usize("gpt2.block_count")?,
        n_head: f.get_usize("gpt2.attention.head_count")?,
        n_embd,
        dropout: 0.0,
        bias: f.tensor_info("blk.0.attn_qkv.bias").is_ok(),
        positions: Default::default(),
    };
    if f.get("gpt2.feed_forward_length").is_some() {
        let ff = f.get_usize("gpt2.feed_forward_length")?;
        if ff != 4 * n_embd {
            return Err(LoadError::Config(format!(
                "{origin}: gpt2.feed_forward_length = {ff}, but this GPT's MLP is 4·C = {} wide",
                4 * n_embd
            )));
        }
    }
    if f.get("gpt2.attention.layer_norm_epsilon").is_some() {
        let eps = f.get_f64("gpt2.attention.layer_norm_epsilon")?;
        if (eps - 1e-5).abs() > 1e-9 {
            return Err(LoadError::Config(format!("{origin}: layer_norm_epsilon = {eps}; this GPT uses 1e-5")));
        }
    }
    cfg.validate().map_err(|e| LoadError::Config(format!("{origin}: {e}")))?;
    Ok(cfg)
}

/// Builds a [`Gpt`] from a `gpt2` GGUF file, every tensor dequantized to f32.
///
/// `token_embd.weight` holds the V real rows; our embedding has `Vp = ⌈V/64⌉·64` rows, and
/// the padding rows are zero (no token ever selects them; their logits are masked by
/// `vocab_size`). A tied `output.weight`, as llama.cpp's converter writes, must equal the
/// embedding.
pub fn gpt_from_gguf(f: &GgufFile) -> Result<(Gpt, ParamStore), LoadError> {
    let cfg = gpt_config_from_gguf(f)?;
    let mut store = ParamStore::new();
    let model = Gpt::new(cfg.clone(), &mut store, &mut Rng::new(0))
        .map_err(|e| LoadError::Config(format!("{}: {e}", f.origin())))?;
    for (ours, theirs) in gpt_gguf_name_map(&cfg) {
        let (mut shape, mut values) = f.tensor_f32(&theirs)?;
        if ours == "wte.weight" {
            if let Ok(out) = f.tensor_info("output.weight") {
                let (_, head) = f.tensor_f32(&out.name)?;
                if head != values {
                    return Err(LoadError::Config(format!(
                        "{}: output.weight differs from token_embd.weight; this GPT ties them",
                        f.origin()
                    )));
                }
            }
            shape[0] = cfg.padded_vocab();
            values.resize(shape.iter().product(), 0.0);
        }
        put(&store, &ours, &shape, &values, f.origin())?;
    }
    Ok((model, store))
}

/// A GPT's vocabulary as a GGUF file stores it.
pub enum GptVocab {
    /// Characters, id → char (`tokenizer.ggml.model = "yuanli-char"`).
    Chars(Vec<char>),
    /// A byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`).
    Bpe(Box<Tokenizer>),
}

/// Reads the vocabulary of a GPT GGUF file: byte-level BPE via [`tokenizer_from_gguf`], or
/// the character list of [`CHAR_TOKENIZER_MODEL`] (each token exactly one character).
pub fn gpt_vocab_from_gguf(f: &GgufFile) -> Result<GptVocab, LoadError> {
    let origin = f.origin();
    match f.get_str("tokenizer.ggml.model")? {
        CHAR_TOKENIZER_MODEL => {
            let tokens = f.get_strings("tokenizer.ggml.tokens")?;
            tokens
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let mut chars = t.chars();
                    match (chars.next(), chars.next()) {
                        (Some(c), None) => Ok(c),
                        _ => Err(LoadError::Config(format!(
                            "{origin}: token {i} = {t:?} of a {CHAR_TOKENIZER_MODEL} vocabulary is not one character"
                        ))),
                    }
                })
                .collect::<Result<Vec<char>, _>>()
                .map(GptVocab::Chars)
        }
        _ => Ok(GptVocab::Bpe(Box::new(tokenizer_from_gguf(f)?))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiny LLaMA's config.json with `edit` applied.
    fn config(edit: impl FnOnce(&mut serde_json::Map<String, Json>)) -> Result<LlamaConfig, String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tiny_hf/llama/config.json");
        let mut v: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(v.as_object_mut().unwrap());
        llama_config_from_hf(&v, &path).map_err(|e| e.to_string())
    }

    /// RoPE's base is read in both of transformers' forms: at the top level (4.x) and inside
    /// `rope_parameters` (5.x); never replaced by the default in silence.
    #[test]
    fn the_rope_base_is_read_in_both_config_forms() {
        assert_eq!(config(|_| {}).unwrap().rope_theta, 10_000.0);
        let v5 = config(|o| {
            o.remove("rope_theta");
            o.remove("rope_scaling");
            o.insert("rope_parameters".into(), serde_json::json!({"rope_theta": 500000.0, "rope_type": "default"}));
        });
        assert_eq!(v5.unwrap().rope_theta, 500_000.0);
        let both = config(|o| {
            o.insert("rope_parameters".into(), serde_json::json!({"rope_theta": 500000.0, "rope_type": "default"}));
        });
        assert!(both.unwrap_err().contains("disagree"));
    }

    /// Every field that changes the arithmetic and that we do not implement is refused by
    /// name; Mistral's sliding window is read.
    #[test]
    fn fields_that_change_the_arithmetic_are_read_or_refused_by_name() {
        let cases: [(&str, Json, &str); 7] = [
            (
                "rope_scaling",
                serde_json::json!({"rope_type": "longrope", "factor": 8.0}),
                "rope_scaling: rope_type \"longrope\" is not implemented",
            ),
            (
                "rope_scaling",
                serde_json::json!({"type": "llama3", "factor": 2.0}),
                "needs a number \"low_freq_factor\"",
            ),
            (
                "rope_parameters",
                serde_json::json!({"rope_type": "linear", "rope_theta": 1e4}),
                "rope_parameters: rope_type \"linear\" needs a number \"factor\"",
            ),
            ("hidden_act", serde_json::json!("gelu"), "hidden_act \"gelu\""),
            ("mlp_bias", serde_json::json!(true), "mlp_bias"),
            ("partial_rotary_factor", serde_json::json!(0.5), "partial_rotary_factor"),
            ("use_sliding_window", serde_json::json!(true), "use_sliding_window"),
        ];
        for (field, value, says) in cases {
            let e = config(|o| {
                o.insert(field.into(), value.clone());
            })
            .unwrap_err();
            assert!(e.contains(says) && e.contains("config.json"), "{field} = {value}: {e}");
        }
        let mistral = config(|o| {
            o.insert("model_type".into(), "mistral".into());
            o.insert("sliding_window".into(), 16.into());
        });
        assert_eq!(mistral.unwrap().extras.sliding_window, Some(16));
        // a window as long as the context changes nothing
        let long = config(|o| {
            o.insert("model_type".into(), "mistral".into());
            o.insert("sliding_window".into(), 64.into());
        });
        assert_eq!(long.unwrap().extras.sliding_window, None);
    }

    /// A GGUF file's RoPE scaling is read as llama.cpp reads it (linear when only a factor is
    /// given, YaRN's defaults, frequency factors from `rope_freqs.weight`); what we do not
    /// implement is refused by name; the plain file reads.
    #[test]
    fn gguf_rope_variants_are_read_or_refused_by_name() {
        use yuanli_gguf::{GgufWriter, Value};
        use yuanli_tensor::quant::QuantType;
        let file = |edit: &dyn Fn(&mut GgufWriter)| {
            let mut w = GgufWriter::new();
            w.set("general.architecture", Value::String("llama".into()));
            for (k, v) in [
                ("attention.head_count", 4u32),
                ("embedding_length", 32),
                ("block_count", 1),
                ("feed_forward_length", 48),
                ("context_length", 64),
                ("vocab_size", 300),
            ] {
                w.set(&format!("llama.{k}"), Value::U32(v));
            }
            w.set("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-6));
            edit(&mut w);
            let f = GgufFile::from_bytes(w.to_bytes(), "test.gguf").unwrap();
            llama_config_from_gguf(&f).map_err(|e| e.to_string())
        };
        assert_eq!(file(&|_| {}).unwrap().head_dim, 8);
        assert_eq!(file(&|_| {}).unwrap().rope_scaling, RopeScaling::None);
        let scaling = |edit: &dyn Fn(&mut GgufWriter)| file(edit).map(|c| c.rope_scaling);
        // a factor without a type is linear (llama.cpp's default type)
        let s = scaling(&|w| w.set("llama.rope.scaling.factor", Value::F32(4.0)));
        assert_eq!(s.unwrap(), RopeScaling::Linear { factor: 4.0 });
        // YaRN: the original context defaults to the file's, betas 32/1, temperature m(s)
        let s = scaling(&|w| {
            w.set("llama.rope.scaling.type", Value::String("yarn".into()));
            w.set("llama.rope.scaling.factor", Value::F32(4.0));
        });
        let want = RopeScaling::Yarn {
            factor: 4.0,
            original: 64,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: yarn_mscale(4.0, 1.0),
            truncate: true,
        };
        assert_eq!(s.unwrap(), want);
        let e = scaling(&|w| {
            w.set("llama.rope.scaling.type", Value::String("yarn".into()));
            w.set("llama.rope.scaling.yarn_ext_factor", Value::F32(0.5));
        })
        .unwrap_err();
        assert!(e.contains("test.gguf") && e.contains("yarn_ext_factor = 0.5"), "{e}");
        let e = scaling(&|w| w.set("llama.rope.scaling.type", Value::String("longrope".into()))).unwrap_err();
        assert!(e.contains("test.gguf") && e.contains("llama.rope.scaling.type = \"longrope\""), "{e}");
        assert_eq!(
            scaling(&|w| w.set("llama.rope.scaling.type", Value::String("none".into()))).unwrap(),
            RopeScaling::None
        );
        // rope_freqs: one positive divisor per pair, read as such
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let s = scaling(&|w| w.add_tensor("rope_freqs.weight", &[4], QuantType::F32, bytes(&[1.0, 2.0, 4.0, 4.0])));
        assert_eq!(s.unwrap(), RopeScaling::FreqFactors { factors: vec![1.0, 2.0, 4.0, 4.0] });
        let e = scaling(&|w| w.add_tensor("rope_freqs.weight", &[4], QuantType::F32, vec![0; 16])).unwrap_err();
        assert!(e.contains("test.gguf") && e.contains("frequency factor = 0"), "{e}");
        let e = scaling(&|w| w.add_tensor("rope_freqs.weight", &[3], QuantType::F32, bytes(&[1.0; 3]))).unwrap_err();
        assert!(e.contains("3 values"), "{e}");
        let e = file(&|w| w.set("llama.rope.dimension_count", Value::U32(4))).unwrap_err();
        assert!(e.contains("llama.rope.dimension_count = 4"), "{e}");
    }
}
