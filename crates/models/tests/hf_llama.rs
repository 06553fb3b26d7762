//! Loading LLaMA-family Hugging Face directories (one safetensors file, sharded files, Qwen2
//! with biases and tied embeddings, Qwen3 with QK-norm): logits equal transformers' float64
//! logits for the same tiny random models. Regenerate with
//! `bench/.venv/bin/python tools/reference/llama_hf_reference.py` and
//! `tools/reference/qwen3_reference.py`.

use serde_json::Value;
use std::path::PathBuf;
use yuanli_models::{load_pretrained, Message};
use yuanli_tensor::Tensor;
use yuanli_tokenizer::SpecialMode;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/tiny_hf").join(name)
}

fn check(name: &str) {
    let d = dir(name);
    let r: Value = serde_json::from_str(&std::fs::read_to_string(d.join("reference.json")).unwrap()).unwrap();
    let m = load_pretrained(&d).unwrap();
    let ids: Vec<u32> = r["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let _g = yuanli_autograd::no_grad();
    let ours = m.model.forward(&Tensor::new(ids.clone(), &[1, ids.len()])).value().to_vec::<f32>();
    let want: Vec<f64> = r["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().clone())
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(ours.len(), want.len(), "{name}: logits shape");
    let worst = ours.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
    // f32 arithmetic on a 2-layer model with logits of order 1: 1e-5 is ~100 ulps.
    assert!(worst < 1e-5, "{name}: largest |ours − float64 transformers| = {worst}");
    let text_ids: Vec<u32> = r["text_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    assert_eq!(
        m.tokenizer.encode(r["text"].as_str().unwrap(), SpecialMode::Allow).unwrap(),
        text_ids,
        "{name}: tokenizer"
    );
    let chat = m.chat_template.as_ref().unwrap().render(&[Message::new("user", "hi")], true).unwrap();
    assert_eq!(chat, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    assert_eq!(m.eos, vec![m.tokenizer.special_id("<|im_end|>").unwrap()]);
}

#[test]
fn llama_single_file() {
    check("llama");
}

#[test]
fn llama_sharded() {
    check("llama_sharded");
}

#[test]
fn qwen2_with_biases_and_tied_embeddings() {
    check("qwen2");
    let m = load_pretrained(&dir("qwen2")).unwrap();
    assert!(m.model.config.attention_bias && m.model.config.tie_word_embeddings);
}

#[test]
fn qwen3_with_qk_norm() {
    check("qwen3");
    let m = load_pretrained(&dir("qwen3")).unwrap();
    assert!(m.model.config.extras.qk_norm && !m.model.config.attention_bias && m.model.config.head_dim == 16);
}

#[test]
fn a_missing_shard_is_named() {
    let tmp = std::env::temp_dir().join(format!("yuanli-missing-shard-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for e in std::fs::read_dir(dir("llama_sharded")).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "model-00003-of-00006.safetensors" {
            std::fs::copy(e.path(), tmp.join(e.file_name())).unwrap();
        }
    }
    let err = load_pretrained(&tmp).err().expect("a shard is missing").to_string();
    assert!(err.contains("model-00003-of-00006.safetensors"), "{err}");
    std::fs::remove_dir_all(&tmp).unwrap();
}
