//! Our GPT-2 against Hugging Face `GPT2LMHeadModel` (PyTorch, float32) on a tiny model:
//! logits, loss and every parameter gradient for one batch. The reference files come from
//! tools/reference/gpt2_hf_reference.py and are committed, so no Python runs here.

use std::path::PathBuf;
use yuanli_models::hf::{config_from_hf, load_hf, name_map, to_hf};
use yuanli_models::Gpt;
use yuanli_nn::checkpoint::read_tensors;
use yuanli_nn::ParamStore;
use yuanli_tensor::{Rng, Tensor};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/gpt2_tiny")
}

fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max)
}

#[test]
fn logits_loss_and_gradients_match_hugging_face() {
    let d = dir();
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    let cfg = config_from_hf(&cfg_json, "config.json").unwrap();
    let mut store = ParamStore::new();
    let model = Gpt::new(cfg.clone(), &mut store, &mut Rng::new(0)).unwrap();
    let weights = read_tensors(&d.join("model.safetensors")).unwrap();
    load_hf(&store, &cfg, &weights, "model.safetensors").unwrap();
    let r = read_tensors(&d.join("reference.safetensors")).unwrap();
    let ids = |k: &str| Tensor::new(r[k].1.iter().map(|&v| v as u32).collect::<Vec<_>>(), &r[k].0);
    let (idx, targets) = (ids("idx"), ids("targets"));
    let (b, t, v) = (idx.dim(0), idx.dim(1), cfg.vocab_size);

    let logits = model.forward(&idx, false, &mut Rng::new(0)).value().narrow(-1, 0, v).contiguous();
    let dl = max_diff(&logits.to_vec::<f32>(), &r["logits"].1);
    println!("logits: TENSOR {}, maxdiff = {dl:e}", if dl < 1e-4 { "OK" } else { "NOT OK" });
    assert!(dl < 1e-4, "logits differ from HF by {dl}");
    assert_eq!(logits.shape(), [b, t, v]);

    let loss = model.loss(&idx, &targets, true, &mut Rng::new(0));
    let lv = loss.value().item();
    assert!((lv - r["loss"].1[0] as f64).abs() < 1e-5, "loss {lv} vs HF {}", r["loss"].1[0]);
    store.zero_grad();
    loss.backward();
    let grads = store.grad_arena().to_vec::<f32>();
    for (ours, hf, transposed) in name_map(&cfg) {
        let p = store.get(&ours).unwrap();
        let mut g = grads[p.offset..p.offset + p.numel()].to_vec();
        if transposed {
            let (rows, cols) = (p.shape[0], p.shape[1]);
            let mut tr = vec![0.0; g.len()];
            for i in 0..rows {
                for j in 0..cols {
                    tr[j * rows + i] = g[i * cols + j];
                }
            }
            g = tr;
        }
        if ours == "wte.weight" {
            g.truncate(v * cfg.n_embd);
        }
        let want = &r[&format!("grad.{hf}")].1;
        let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs() as f64)).max(1e-3);
        let d = max_diff(&g, want);
        assert!(d / scale < 1e-4, "gradient of {ours} ({hf}) differs by {d:e} (scale {scale:e})");
    }
}

#[test]
fn export_to_hf_layout_round_trips() {
    let d = dir();
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    let cfg = config_from_hf(&cfg_json, "config.json").unwrap();
    let mut store = ParamStore::new();
    let _m = Gpt::new(cfg.clone(), &mut store, &mut Rng::new(0)).unwrap();
    let weights = read_tensors(&d.join("model.safetensors")).unwrap();
    load_hf(&store, &cfg, &weights, "model.safetensors").unwrap();
    for (name, shape, data) in to_hf(&store, &cfg) {
        let (s, v) = &weights[&name];
        assert_eq!((&shape, &data), (s, v), "{name} does not round-trip");
    }
    let mut broken = weights.clone();
    broken.remove("transformer.h.1.mlp.c_fc.weight");
    let err = load_hf(&store, &cfg, &broken, "x.safetensors").unwrap_err().to_string();
    assert!(err.contains("missing tensor transformer.h.1.mlp.c_fc.weight"), "{err}");
}
