//! Hugging Face GPT-2 interop: names, transposes and `config.json`.
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
