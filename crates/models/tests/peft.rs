//! LoRA adapters in PEFT's format against PEFT itself (testdata/peft, from
//! `tools/reference/peft_reference.py`, PEFT and transformers from PyPI), on the tiny LLaMA of
//! testdata/tiny_hf:
//! - an adapter PEFT made (random non-zero A and B, rsLoRA, every linear map), loaded here,
//!   gives PEFT's float64 logits;
//! - an adapter made here (seeded, q/k/v and down projections), which PEFT loaded: its file is
//!   what `save_adapter` writes, and our logits are PEFT's.
//!
//! `YUANLI_REGEN=1 cargo test -p yuanli-models --test peft` rewrites testdata/peft/from_yuanli
//! (then rerun the Python script).

use serde_json::Value;
use std::path::PathBuf;
use yuanli_models::load::{load_pretrained_with, LoadOptions, Pretrained};
use yuanli_models::peft::{load_adapter, save_adapter, Adapter};
use yuanli_nn::LoraConfig;
use yuanli_tensor::{Rng, Tensor};

fn testdata(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join(p)
}

/// The tiny LLaMA with f32 weights; adapters registered from now on are trainable.
fn base() -> Pretrained {
    let mut m = load_pretrained_with(&testdata("tiny_hf/llama"), LoadOptions::exact()).unwrap();
    m.store.set_trainable(|name, _| name.contains(".lora_"));
    m
}

fn logits(m: &Pretrained, ids: &[u32]) -> Vec<f32> {
    let _g = yuanli_autograd::no_grad();
    m.model.forward(&Tensor::new(ids.to_vec(), &[1, ids.len()])).value().to_vec::<f32>()
}

/// `(ids, logits)` PEFT computed, from `reference.json` in `dir`.
fn reference(dir: &str) -> (Vec<u32>, Vec<f64>) {
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(testdata(dir).join("reference.json")).unwrap()).unwrap();
    let ids = r["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let logits = r["logits"].as_array().unwrap().iter().flat_map(|row| row.as_array().unwrap().clone());
    (ids, logits.map(|x| x.as_f64().unwrap()).collect())
}

fn assert_close(ours: &[f32], want: &[f64], what: &str) {
    assert_eq!(ours.len(), want.len(), "{what}: logits shape");
    let worst = ours.iter().zip(want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-4, "{what}: largest |ours − PEFT| = {worst}");
}

#[test]
fn an_adapter_peft_made_gives_pefts_logits() {
    let mut m = base();
    let a = load_adapter(&testdata("peft/from_peft"), &mut m.model, &mut m.store).unwrap();
    assert!(a.lora.rslora && a.lora.r == 4, "{a:?}");
    let (ids, want) = reference("peft/from_peft");
    let ours = logits(&m, &ids);
    assert_close(&ours, &want, "PEFT's adapter");
    // and the adapter does something: the base alone is far from these logits
    let plain = logits(&base(), &ids);
    let moved = plain.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
    assert!(moved > 1e-2, "the adapter moves the logits by only {moved}");
}

/// The adapter of `an_adapter_made_here_gives_the_same_logits_in_peft`: q, k, v and down
/// projections, rank 3, α 6, A as initialised from seed 11 and B drawn from seed 12.
fn our_adapter() -> (Pretrained, Adapter) {
    let mut m = base();
    let lora = LoraConfig { r: 3, alpha: 6.0, dropout: 0.05, rslora: false };
    let targets: Vec<String> = ["q_proj", "k_proj", "v_proj", "down_proj"].iter().map(|s| s.to_string()).collect();
    m.model.attach_lora(&mut m.store, &lora, &targets, &mut Rng::new(11)).unwrap();
    let mut rng = Rng::new(12);
    for p in m.store.params().iter().filter(|p| p.name.ends_with("lora_B.weight")) {
        let v: Vec<f32> = (0..p.numel()).map(|_| 0.2 * rng.normal() as f32).collect();
        m.store.set_values(p, &v);
    }
    (m, Adapter { lora, targets, base: "tiny_hf/llama".into() })
}

#[test]
fn an_adapter_made_here_gives_the_same_logits_in_peft() {
    let (m, adapter) = our_adapter();
    let dir = testdata("peft/from_yuanli");
    if std::env::var("YUANLI_REGEN").is_ok() {
        save_adapter(&dir, &m.model, &adapter).unwrap();
        return;
    }
    // what save_adapter writes is the committed file PEFT read
    let tmp = std::env::temp_dir().join(format!("yuanli-peft-{}", std::process::id()));
    save_adapter(&tmp, &m.model, &adapter).unwrap();
    let (got, want) = (
        yuanli_nn::checkpoint::read_tensors(&tmp.join("adapter_model.safetensors")).unwrap(),
        yuanli_nn::checkpoint::read_tensors(&dir.join("adapter_model.safetensors")).unwrap(),
    );
    assert_eq!(got, want, "save_adapter no longer writes the committed adapter");
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(tmp.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((cfg["r"].as_u64(), cfg["lora_alpha"].as_f64()), (Some(3), Some(6.0)));
    let _ = std::fs::remove_dir_all(&tmp);
    let (ids, want) = reference("peft/from_yuanli");
    assert_close(&logits(&m, &ids), &want, "our adapter in PEFT");
    // and it loads back here to the same logits
    let mut again = base();
    load_adapter(&dir, &mut again.model, &mut again.store).unwrap();
    assert_close(&logits(&again, &ids), &want, "our adapter read back");
}

#[test]
fn bad_adapters_are_refused_with_a_reason() {
    let mut m = base();
    let err = m
        .model
        .attach_lora(
            &mut m.store,
            &LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, rslora: false },
            &["qproj".into()],
            &mut Rng::new(0),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("qproj") && err.contains("q_proj, k_proj"), "{err}");
    // a PEFT adapter for a model of another width
    let tmp = std::env::temp_dir().join(format!("yuanli-peft-bad-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(testdata("peft/from_peft/adapter_config.json"), tmp.join("adapter_config.json")).unwrap();
    let t = yuanli_nn::checkpoint::read_tensors(&testdata("peft/from_peft/adapter_model.safetensors")).unwrap();
    let mut named: Vec<(String, Vec<usize>, Vec<f32>)> = t
        .into_iter()
        .map(|(n, (mut s, v))| {
            if n.ends_with("lora_A.weight") {
                s[1] = v.len() / s[0];
            }
            (n, s, v)
        })
        .collect();
    let first_a = named.iter_mut().find(|(n, _, _)| n.contains("layers.0.self_attn.q_proj.lora_A")).unwrap();
    first_a.1 = vec![first_a.1[0] * 2, first_a.1[1] / 2];
    yuanli_nn::checkpoint::write_tensors(&tmp.join("adapter_model.safetensors"), &named).unwrap();
    let mut m = base();
    let err = load_adapter(&tmp, &mut m.model, &mut m.store).err().unwrap().to_string();
    assert!(err.contains("q_proj.lora_A.weight") && err.contains("shape"), "{err}");
    // not JSON
    std::fs::write(tmp.join("adapter_config.json"), "{ r: 4").unwrap();
    let mut m = base();
    let err = load_adapter(&tmp, &mut m.model, &mut m.store).err().unwrap().to_string();
    assert!(err.contains("adapter_config.json") && err.contains("not JSON"), "{err}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A Python that can import transformers and torch: `$YUANLI_HF_PYTHON`, `bench/.venv-hf`,
/// `bench/.venv`; `None` (a skip, a failure under `CI=true`) when there is none.
fn python_with_transformers() -> Option<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut candidates: Vec<String> = std::env::var("YUANLI_HF_PYTHON").into_iter().collect();
    for venv in ["bench/.venv-hf", "bench/.venv"] {
        candidates.push(root.join(venv).join("bin/python").display().to_string());
    }
    candidates.into_iter().find(|py| {
        std::process::Command::new(py)
            .args(["-c", "import torch, transformers"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn skip(why: &str) {
    assert!(std::env::var("CI").map_or(true, |v| v != "true"), "cannot run under CI=true: {why}");
    eprintln!("SKIP: {why}");
}

/// The float64 logits transformers gives for `ids` on the Hugging Face directory `dir`.
fn transformers_logits(python: &str, dir: &std::path::Path, ids: &[u32]) -> Vec<f64> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/reference/hf_logits.py");
    let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let out = std::process::Command::new(python).arg(script).arg(dir).arg(ids.join(",")).output().unwrap();
    assert!(out.status.success(), "hf_logits.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim().lines().last().unwrap()).unwrap();
    let rows = v["logits"].as_array().unwrap().iter().flat_map(|row| row.as_array().unwrap().clone());
    rows.map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn a_merged_export_loads_in_transformers_with_pefts_logits() {
    // PEFT's adapter merged into the tiny LLaMA and written as a Hugging Face directory:
    // transformers, loading it as a plain model, gives the logits PEFT gave with the adapter.
    let Some(python) = python_with_transformers() else {
        return skip("no Python with torch and transformers (bench/.venv-hf: see tools/reference/hf_logits.py)");
    };
    let m = load_pretrained_with(&testdata("tiny_hf/llama"), LoadOptions::exact()).unwrap();
    let deltas = yuanli_models::peft::adapter_deltas(&testdata("peft/from_peft"), &m.model.config, false).unwrap();
    assert!(!deltas.is_empty());
    let dir = std::env::temp_dir().join(format!("yuanli-merged-{}", std::process::id()));
    yuanli_models::hf::export_llama(&m, &deltas, &dir).unwrap();
    let (ids, want) = reference("peft/from_peft");
    let got = transformers_logits(&python, &dir, &ids);
    std::fs::remove_dir_all(&dir).ok();
    let got: Vec<f32> = got.iter().map(|&x| x as f32).collect();
    assert_close(&got, &want, "merged export in transformers vs PEFT");
}

#[test]
fn a_gguf_model_exports_in_hugging_faces_row_order() {
    // SmolLM2 from its GGUF file (query/key rows in llama.cpp's interleaved order, dequantized
    // to f32) written as a Hugging Face directory: transformers gives the logits ours gives.
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        return skip(&format!("{} is missing (bash tools/fetch_models.sh)", path.display()));
    }
    let Some(python) = python_with_transformers() else {
        return skip("no Python with torch and transformers (bench/.venv-hf: see tools/reference/hf_logits.py)");
    };
    let m = load_pretrained_with(&path, LoadOptions::exact()).unwrap();
    let dir = std::env::temp_dir().join(format!("yuanli-export-{}", std::process::id()));
    let files = yuanli_models::hf::export_llama(&m, &[], &dir).unwrap();
    assert!(files.iter().any(|f| f.ends_with("tokenizer.json")), "{files:?}");
    let ids = [1u32, 504, 3458, 282, 4649, 314, 253, 1789];
    let got = transformers_logits(&python, &dir, &ids);
    std::fs::remove_dir_all(&dir).ok();
    let ours = logits(&m, &ids);
    let worst = ours.iter().zip(&got).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
    // f32 arithmetic here against float64 there, through 30 layers and a 49,152-way head.
    assert!(worst < 2e-3, "largest |ours − transformers| = {worst}");
}
