//! LoRA adapters in PEFT's format, both ways: a directory with `adapter_config.json` (`r`,
//! `lora_alpha`, `lora_dropout`, `use_rslora`, `target_modules`, …) and
//! `adapter_model.safetensors`, whose tensors are named
//! `base_model.model.{module}.lora_A.weight (r, in)` and `….lora_B.weight (out, r)` with
//! `{module}` the Hugging Face name (`model.layers.0.self_attn.q_proj`).
//!
//! One subtlety: a model read from a `llama` GGUF file holds its query and key rows in
//! llama.cpp's order (interleaved RoPE pairs, [`interleave_rope_rows`]), so the rows of
//! `lora_B` of `q_proj` and `k_proj` are reordered on the way in and back on the way out; PEFT
//! always sees Hugging Face's order. [`adapter_deltas`] gives an adapter in merged form
//! (`s·B·A` per matrix), which `yuanli quantize --lora` adds to the weights it writes.

use crate::llama::{matrix_shapes, Llama, LlamaConfig, LORA_TARGETS};
use crate::load::{interleave_rope_rows, LoadError};
use serde_json::{json, Value as Json};
use std::path::{Path, PathBuf};
use yuanli_nn::{LoraConfig, ParamStore};
use yuanli_tensor::{Rng, RopeLayout};

/// PEFT's prefix of every adapter tensor name.
const PREFIX: &str = "base_model.model.";

/// An adapter as its `adapter_config.json` describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    /// Rank, α, dropout, rsLoRA.
    pub lora: LoraConfig,
    /// `target_modules` (short names, or `all-linear`).
    pub targets: Vec<String>,
    /// `base_model_name_or_path`.
    pub base: String,
}

/// The head count whose rows `lora_B` of `module` reorders, when the model keeps llama.cpp's
/// order (q: query heads, k: key-value heads), else `None`.
fn reordered_heads(model: &Llama, module: &str) -> Option<usize> {
    let c = &model.config;
    if c.rope_layout != RopeLayout::Interleaved {
        return None;
    }
    crate::load::rope_row_heads(c, module)
}

fn bad(path: &Path, message: impl Into<String>) -> LoadError {
    LoadError::File { path: path.to_path_buf(), message: message.into() }
}

/// Writes the LoRA adapters attached to `model` as a PEFT directory
/// `dir` (created if needed; files written atomically).
pub fn save_adapter(dir: &Path, model: &Llama, adapter: &Adapter) -> Result<(), LoadError> {
    std::fs::create_dir_all(dir).map_err(|e| bad(dir, e.to_string()))?;
    let mut tensors = Vec::new();
    for (module, lin) in model.linears() {
        let Some(l) = &lin.lora else { continue };
        let (a, b) = (l.a.value().contiguous(), l.b.value().contiguous());
        let (r, d_in, d_out) = (a.dim(0), a.dim(1), b.dim(0));
        let mut bv = b.to_vec::<f32>();
        if let Some(heads) = reordered_heads(model, &module) {
            bv = interleave_rope_rows(&bv, heads, d_out / heads, r, true);
        }
        tensors.push((format!("{PREFIX}{module}.lora_A.weight"), vec![r, d_in], a.to_vec::<f32>()));
        tensors.push((format!("{PREFIX}{module}.lora_B.weight"), vec![d_out, r], bv));
    }
    if tensors.is_empty() {
        return Err(bad(dir, "the model has no LoRA adapters to save"));
    }
    let st = dir.join("adapter_model.safetensors");
    yuanli_nn::checkpoint::write_tensors(&st, &tensors).map_err(|e| bad(&st, e.to_string()))?;
    let l = &adapter.lora;
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": adapter.base,
        "r": l.r,
        "lora_alpha": l.alpha,
        "lora_dropout": l.dropout,
        "use_rslora": l.rslora,
        "target_modules": adapter.targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
    });
    let cfg = dir.join("adapter_config.json");
    let text = serde_json::to_string_pretty(&config).map_err(|e| bad(&cfg, e.to_string()))?;
    yuanli_nn::checkpoint::write_atomic(&cfg, text.as_bytes()).map_err(|e| bad(&cfg, e.to_string()))
}

/// Reads `adapter_config.json` of a PEFT LoRA adapter.
pub fn read_adapter_config(dir: &Path) -> Result<Adapter, LoadError> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| bad(&path, e.to_string()))?;
    let v: Json = serde_json::from_str(&text).map_err(|e| bad(&path, format!("not JSON: {e}")))?;
    match v.get("peft_type").and_then(Json::as_str) {
        Some("LORA") | None => {}
        Some(other) => return Err(bad(&path, format!("peft_type {other:?}: only LORA adapters are supported"))),
    }
    let r = v.get("r").and_then(Json::as_u64).ok_or_else(|| bad(&path, "\"r\" is missing or not an integer"))? as usize;
    let alpha = v.get("lora_alpha").and_then(Json::as_f64).unwrap_or(8.0);
    let dropout = v.get("lora_dropout").and_then(Json::as_f64).unwrap_or(0.0);
    let rslora = v.get("use_rslora").and_then(Json::as_bool).unwrap_or(false);
    let targets: Vec<String> = match v.get("target_modules") {
        Some(Json::String(s)) => vec![s.clone()],
        Some(Json::Array(a)) => a.iter().filter_map(Json::as_str).map(str::to_string).collect(),
        _ => return Err(bad(&path, "\"target_modules\" is missing")),
    };
    for (key, unsupported) in [("use_dora", Json::Bool(true)), ("fan_in_fan_out", Json::Bool(true))] {
        if v.get(key) == Some(&unsupported) {
            return Err(bad(&path, format!("{key} = true is not supported")));
        }
    }
    for key in ["layers_to_transform", "rank_pattern", "alpha_pattern", "modules_to_save"] {
        let set = match v.get(key) {
            None | Some(Json::Null) => false,
            Some(Json::Object(o)) => !o.is_empty(),
            Some(Json::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        if set {
            return Err(bad(&path, format!("{key} is set; adapters that use it are not supported")));
        }
    }
    let lora = LoraConfig { r, alpha, dropout, rslora };
    lora.validate().map_err(|e| bad(&path, e))?;
    let base = v.get("base_model_name_or_path").and_then(Json::as_str).unwrap_or_default().to_string();
    Ok(Adapter { lora, targets, base })
}

/// Attaches the PEFT adapter in `dir` to `model` (parameters into `store`, under the store's
/// trainable rule) and loads its values; every adapter tensor must match the base's shapes.
pub fn load_adapter(dir: &Path, model: &mut Llama, store: &mut ParamStore) -> Result<Adapter, LoadError> {
    let adapter = read_adapter_config(dir)?;
    // PEFT may list full module paths or short names; keep the short names we know.
    let targets: Vec<String> = adapter
        .targets
        .iter()
        .map(|t| t.rsplit('.').next().unwrap_or(t).to_string())
        .filter(|t| t == "all-linear" || LORA_TARGETS.contains(&t.as_str()) || t == "lm_head")
        .collect();
    if targets.iter().any(|t| t == "lm_head") {
        return Err(bad(dir, "an adapter on lm_head is not supported"));
    }
    let modules = model.attach_lora(store, &adapter.lora, &targets, &mut Rng::new(0))?;
    let st: PathBuf = dir.join("adapter_model.safetensors");
    let tensors = yuanli_nn::checkpoint::read_tensors(&st).map_err(|e| bad(&st, e.to_string()))?;
    let mut used = 0;
    for module in &modules {
        for part in ["lora_A", "lora_B"] {
            let theirs = format!("{PREFIX}{module}.{part}.weight");
            let ours = format!("{module}.{part}.weight");
            let (shape, values) =
                tensors.get(&theirs).ok_or_else(|| bad(&st, format!("tensor {theirs} is missing")))?;
            let p = store.get(&ours).ok_or_else(|| bad(&st, format!("no parameter {ours}")))?;
            if *shape != p.shape {
                return Err(bad(
                    &st,
                    format!("tensor {theirs} has shape {shape:?}, the base model needs {:?}", p.shape),
                ));
            }
            let mut v = values.clone();
            if part == "lora_B" {
                if let Some(heads) = reordered_heads(model, module) {
                    v = interleave_rope_rows(&v, heads, shape[0] / heads, shape[1], false);
                }
            }
            store.set_values(p, &v);
            used += 1;
        }
    }
    if used != tensors.len() {
        let extra = tensors.keys().find(|k| !modules.iter().any(|m| k.starts_with(&format!("{PREFIX}{m}."))));
        return Err(bad(
            &st,
            format!("{} tensors are not used by the listed target modules, e.g. {extra:?}", tensors.len() - used),
        ));
    }
    Ok(adapter)
}

/// The updates `s·B·A` of the PEFT adapter in `dir`, merged form: one `(out, in)` row-major
/// matrix per adapted map, by the Hugging Face name of the weight it adds to
/// (`model.layers.0.self_attn.q_proj.weight`), in llama.cpp's query/key row order when
/// `interleaved` (a `llama` GGUF file). Every tensor must belong to a map of the model `c`
/// describes, with its shape.
pub fn adapter_deltas(dir: &Path, c: &LlamaConfig, interleaved: bool) -> Result<Vec<(String, Vec<f32>)>, LoadError> {
    let adapter = read_adapter_config(dir)?;
    let s = adapter.lora.scale() as f32;
    let st = dir.join("adapter_model.safetensors");
    let tensors = yuanli_nn::checkpoint::read_tensors(&st).map_err(|e| bad(&st, e.to_string()))?;
    let shapes: std::collections::HashMap<String, (usize, usize)> =
        matrix_shapes(c).into_iter().map(|(n, r, k)| (n, (r, k))).collect();
    let mut out = Vec::new();
    let mut names: Vec<&String> = tensors.keys().filter(|k| k.ends_with(".lora_A.weight")).collect();
    names.sort();
    for a_name in names {
        let module = a_name.strip_prefix(PREFIX).unwrap_or(a_name).trim_end_matches(".lora_A.weight").to_string();
        let weight = format!("{module}.weight");
        let &(rows, cols) =
            shapes.get(&weight).ok_or_else(|| bad(&st, format!("{a_name}: the base model has no matrix {weight}")))?;
        let b_name = format!("{PREFIX}{module}.lora_B.weight");
        let (a_shape, a) = &tensors[a_name];
        let (b_shape, b) = tensors.get(&b_name).ok_or_else(|| bad(&st, format!("tensor {b_name} is missing")))?;
        let r = a_shape.first().copied().unwrap_or(0);
        if a_shape != &[r, cols] || b_shape != &[rows, r] {
            return Err(bad(
                &st,
                format!("{module}: A {a_shape:?} and B {b_shape:?} do not fit {weight} ({rows}×{cols})"),
            ));
        }
        let mut delta = vec![0f32; rows * cols];
        for (o, drow) in delta.chunks_exact_mut(cols).enumerate() {
            for k in 0..r {
                let bk = s * b[o * r + k];
                for (d, &av) in drow.iter_mut().zip(&a[k * cols..(k + 1) * cols]) {
                    *d += bk * av;
                }
            }
        }
        if let (true, Some(h)) = (interleaved, crate::load::rope_row_heads(c, &module)) {
            delta = interleave_rope_rows(&delta, h, c.head_dim, cols, false);
        }
        out.push((weight, delta));
    }
    if out.is_empty() {
        return Err(bad(&st, "no lora_A tensors"));
    }
    Ok(out)
}
