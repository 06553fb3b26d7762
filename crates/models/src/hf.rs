//! Hugging Face interop: GPT-2 names, transposes and `config.json` both ways, and the export of a
//! LLaMA-family model (with a LoRA adapter merged in) as a `LlamaForCausalLM` directory.
//!
//! Our parameter names follow nanoGPT (`h.0.attn.c_attn.weight`); Hugging Face's
//! `GPT2LMHeadModel` prefixes them with `transformer.` and stores the four projection matrices
//! as `Conv1D` weights, `[in, out]` — the transpose of our `[out, in]` (a classic bug when
//! forgotten; the reference test catches it). The token embedding is unpadded there (`V` rows
//! instead of `Vp`), and the LM head is tied, so it is not stored.

use crate::gpt::GptConfig;
use serde_json::{json, Value};
use yuanli_nn::checkpoint::{NamedTensors, TensorMap};
use yuanli_nn::ParamStore;

/// Why a Hugging Face checkpoint cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {problem}")]
pub struct HfError {
    /// The file.
    pub origin: String,
    /// What is wrong.
    pub problem: String,
}

/// `(our name, HF name, transposed)` for every parameter of a config.
pub fn name_map(cfg: &GptConfig) -> Vec<(String, String, bool)> {
    let mut m = vec![
        ("wte.weight".to_string(), "transformer.wte.weight".to_string(), false),
        ("wpe.weight".into(), "transformer.wpe.weight".into(), false),
    ];
    for i in 0..cfg.n_layer {
        for (part, t) in [
            ("ln_1", false),
            ("attn.c_attn", true),
            ("attn.c_proj", true),
            ("ln_2", false),
            ("mlp.c_fc", true),
            ("mlp.c_proj", true),
        ] {
            m.push((format!("h.{i}.{part}.weight"), format!("transformer.h.{i}.{part}.weight"), t));
            if cfg.bias {
                m.push((format!("h.{i}.{part}.bias"), format!("transformer.h.{i}.{part}.bias"), false));
            }
        }
    }
    m.push(("ln_f.weight".into(), "transformer.ln_f.weight".into(), false));
    if cfg.bias {
        m.push(("ln_f.bias".into(), "transformer.ln_f.bias".into(), false));
    }
    m
}

fn transpose(shape: &[usize], v: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let (r, c) = (shape[0], shape[1]);
    let mut out = vec![0.0; v.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    (vec![c, r], out)
}

/// The model's weights in the Hugging Face layout, ready for `write_tensors`.
pub fn to_hf(store: &ParamStore, cfg: &GptConfig) -> NamedTensors {
    name_map(cfg)
        .into_iter()
        .filter_map(|(ours, hf, t)| {
            let p = store.get(&ours)?;
            let v = &store.value_of(p).to_vec::<f32>()[..];
            let (shape, data) = if t {
                transpose(&p.shape, v)
            } else if ours == "wte.weight" {
                (vec![cfg.vocab_size, cfg.n_embd], v[..cfg.vocab_size * cfg.n_embd].to_vec())
            } else {
                (p.shape.clone(), v.to_vec())
            };
            Some((hf, shape, data))
        })
        .collect()
}

/// `config.json` for `GPT2LMHeadModel`.
pub fn hf_config(cfg: &GptConfig) -> Value {
    json!({
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer,
        "n_head": cfg.n_head, "n_inner": null, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": true,
        "scale_attn_weights": true, "torch_dtype": "float32"
    })
}

/// Reads a GPT-2 `config.json` (only what our model supports; anything else is an error).
pub fn config_from_hf(v: &Value, origin: &str) -> Result<GptConfig, HfError> {
    let bad = |p: String| HfError { origin: origin.to_string(), problem: p };
    let get = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .ok_or_else(|| bad(format!("missing or non-integer \"{k}\"")))
    };
    if v.get("model_type").and_then(Value::as_str) != Some("gpt2") {
        return Err(bad("model_type is not \"gpt2\"".into()));
    }
    if let Some(act) = v.get("activation_function").and_then(Value::as_str) {
        if act != "gelu_new" && act != "gelu_pytorch_tanh" {
            return Err(bad(format!("activation_function {act:?} is not the tanh GELU GPT-2 uses")));
        }
    }
    if v.get("n_inner").is_some_and(|x| !x.is_null()) {
        return Err(bad("n_inner other than 4·n_embd is not supported".into()));
    }
    let cfg = GptConfig {
        vocab_size: get("vocab_size")?,
        block_size: get("n_positions")?,
        n_layer: get("n_layer")?,
        n_head: get("n_head")?,
        n_embd: get("n_embd")?,
        dropout: 0.0,
        bias: true,
        positions: Default::default(),
    };
    cfg.validate().map_err(|e| bad(e.to_string()))?;
    Ok(cfg)
}

/// Copies Hugging Face tensors into a store built for `cfg` (transposing the `Conv1D`
/// weights, zero-padding `wte` to `Vp`); every missing or mis-shaped tensor is reported.
pub fn load_hf(store: &ParamStore, cfg: &GptConfig, tensors: &TensorMap, origin: &str) -> Result<(), HfError> {
    let mut problems = Vec::new();
    let mut loads = Vec::new();
    for (ours, hf, t) in name_map(cfg) {
        let (Some(p), Some((shape, data))) = (store.get(&ours), tensors.get(&hf)) else {
            problems.push(format!("missing tensor {hf}"));
            continue;
        };
        let (shape, data) = if t { transpose(shape, data) } else { (shape.clone(), data.clone()) };
        if ours == "wte.weight" {
            if shape != [cfg.vocab_size, cfg.n_embd] {
                problems
                    .push(format!("tensor {hf} has shape {shape:?}, expected [{}, {}]", cfg.vocab_size, cfg.n_embd));
                continue;
            }
            let mut padded = data;
            padded.resize(p.numel(), 0.0);
            loads.push((p.name.clone(), padded));
        } else if shape != p.shape {
            problems.push(format!(
                "tensor {hf} has shape {shape:?}, expected {:?}",
                if t { vec![p.shape[1], p.shape[0]] } else { p.shape.clone() }
            ));
        } else {
            loads.push((p.name.clone(), data));
        }
    }
    if !problems.is_empty() {
        return Err(HfError { origin: origin.to_string(), problem: problems.join("; ") });
    }
    for (name, v) in loads {
        let p = store.get(&name).expect("looked up above");
        store.set_values(p, &v);
    }
    Ok(())
}

/// Writes a LLaMA-family model as a Hugging Face directory that `transformers` loads with
/// `AutoModelForCausalLM.from_pretrained`: `config.json` (`LlamaForCausalLM`, or
/// `Qwen2ForCausalLM` with q/k/v biases), `model.safetensors` (f32, Hugging Face's names) and,
/// where the tokenizer can be written, `tokenizer.json` with the chat template in
/// `tokenizer_config.json`.
///
/// `deltas` (from [`crate::peft::adapter_deltas`], Hugging Face's row order) are added to their
/// weights: a merged LoRA adapter. A model read from a `llama` GGUF keeps its query/key rows in
/// llama.cpp's interleaved order; they are put back in Hugging Face's half-split order first.
/// Qwen3's QK-norm is written as a `Qwen3ForCausalLM`; Gemma 3's and other families' extras
/// have no `LlamaConfig` form and are refused.
/// Returns the files written.
pub fn export_llama(
    p: &crate::Pretrained,
    deltas: &[(String, Vec<f32>)],
    dir: &std::path::Path,
) -> Result<Vec<std::path::PathBuf>, crate::LoadError> {
    use crate::LoadError;
    let c = &p.model.config;
    let bad = |m: String| LoadError::File { path: dir.to_path_buf(), message: m };
    let qwen3 = c.extras == crate::llama::Extras { qk_norm: true, ..Default::default() };
    if c.extras != crate::llama::Extras::default() && !qwen3 {
        return Err(LoadError::Config(format!(
            "{}: this model's extras ({:?}) have no Hugging Face LlamaConfig form; only LLaMA, Mistral-without-window and Qwen2 models export",
            p.description, c.extras
        )));
    }
    let interleaved = c.rope_layout == yuanli_tensor::RopeLayout::Interleaved;
    let mut deltas: std::collections::HashMap<&str, &Vec<f32>> = deltas.iter().map(|(n, d)| (n.as_str(), d)).collect();
    let mut tensors: NamedTensors = Vec::new();
    for info in p.store.params() {
        let name = info.name.clone();
        let shape = info.shape.clone();
        let mut v = p.store.value_of(info).to_dtype(yuanli_tensor::DType::F32).to_vec::<f32>();
        if let (true, Some(h)) = (interleaved, crate::load::rope_row_heads(c, &name)) {
            let cols = if shape.len() == 2 { shape[1] } else { 1 };
            v = crate::load::interleave_rope_rows(&v, h, c.head_dim, cols, true);
        }
        if let Some(d) = deltas.remove(name.as_str()) {
            if d.len() != v.len() {
                return Err(bad(format!("the update for {name} holds {} values, the weight {shape:?}", d.len())));
            }
            v.iter_mut().zip(d.iter()).for_each(|(w, u)| *w += u);
        }
        tensors.push((name, shape, v));
    }
    if let Some(name) = deltas.keys().next() {
        return Err(bad(format!("the adapter updates {name}, which this model does not have")));
    }
    for (name, ..) in crate::llama::matrix_shapes(c) {
        if !tensors.iter().any(|t| t.0 == name) {
            return Err(bad(format!("{name} is not an f32 parameter (load the model with the exact path)")));
        }
    }
    let qwen2 = c.attention_bias && !qwen3;
    let (arch, model_type) = match (qwen3, qwen2) {
        (true, _) => ("Qwen3ForCausalLM", "qwen3"),
        (_, true) => ("Qwen2ForCausalLM", "qwen2"),
        _ => ("LlamaForCausalLM", "llama"),
    };
    let rope_scaling = c.rope_scaling.to_hf().map_err(|e| LoadError::Config(format!("{}: {e}", p.description)))?;
    let config = json!({
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.n_layer,
        "num_attention_heads": c.n_head,
        "num_key_value_heads": c.n_kv_head,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rope_theta": c.rope_theta,
        "rope_scaling": rope_scaling,
        "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.max_seq_len,
        "tie_word_embeddings": c.tie_word_embeddings,
        "attention_bias": c.attention_bias,
        "mlp_bias": false,
        "bos_token_id": p.bos,
        "eos_token_id": p.eos.first(),
        "torch_dtype": "float32",
    });
    std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
    let mut written = Vec::new();
    let st = dir.join("model.safetensors");
    yuanli_nn::checkpoint::write_tensors(&st, &tensors).map_err(|e| bad(e.to_string()))?;
    written.push(st);
    let cfg = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config).map_err(|e| bad(e.to_string()))?;
    yuanli_nn::checkpoint::write_atomic(&cfg, text.as_bytes()).map_err(|e| bad(e.to_string()))?;
    written.push(cfg);
    // The tokenizer, where our writer knows its kind (byte-level BPE); the weights stand alone.
    let tok = dir.join("tokenizer.json");
    if yuanli_tokenizer::formats::save_hf(&p.tokenizer, &tok).is_ok() {
        written.push(tok);
        let mut tc = json!({"tokenizer_class": "PreTrainedTokenizerFast"});
        if let Some(t) = &p.chat_template {
            tc["chat_template"] = json!(t.source());
        }
        let token = |id: Option<u32>| id.and_then(|i| p.tokenizer.decode(&[i]).ok());
        if let Some(b) = token(p.bos) {
            tc["bos_token"] = json!(b);
        }
        if let Some(e) = token(p.eos.first().copied()) {
            tc["eos_token"] = json!(e);
        }
        let path = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&tc).map_err(|e| bad(e.to_string()))?;
        yuanli_nn::checkpoint::write_atomic(&path, text.as_bytes()).map_err(|e| bad(e.to_string()))?;
        written.push(path);
    }
    Ok(written)
}
