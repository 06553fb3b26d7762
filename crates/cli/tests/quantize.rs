//! `yuanli quantize`, end to end through the built binary: a tiny trained GPT survives the trip
//! to GGUF (greedy generation gives the same tokens), and a real GGUF re-quantizes to q8_0
//! with its metadata intact.

use std::path::{Path, PathBuf};
use std::process::Command;
use yuanli_models::gguf::{GgufFile, Value};
use yuanli_tensor::QuantType;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh empty directory under the system's temp dir.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("yuanli-quantize-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

/// Runs `yuanli ARGS`, asserting success; returns stdout.
fn yuanli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_yuanli")).args(args).output().expect("run yuanli");
    assert!(
        out.status.success(),
        "yuanli {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Prepares Tempest with `tokenizer` and trains a 2-layer, 64-wide GPT for a few steps;
/// returns the checkpoint directory.
fn tiny_checkpoint(dir: &Path, tokenizer: &str) -> PathBuf {
    let text = repo().join("data/shakespeare/tempest_gut.txt");
    let data = dir.join("data");
    let s = |p: &Path| p.display().to_string();
    yuanli(&["prepare", "--tokenizer", tokenizer, "--input", &s(&text), "--out", &s(&data)]);
    let config = format!(
        "data_dir = {:?}\nout_dir = {:?}\nbatch_size = 4\nmax_iters = 8\nlearning_rate = 3e-3\nmin_lr = 3e-4\n\
         warmup_iters = 2\neval_interval = 100\neval_iters = 1\nseed = 7\n\n\
         [model]\nvocab_size = 0\nblock_size = 32\nn_layer = 2\nn_head = 2\nn_embd = 64\n",
        s(&data),
        s(&dir.join("run"))
    );
    let cfg = dir.join("tiny.toml");
    std::fs::write(&cfg, config).expect("write the config");
    yuanli(&["train", "--config", &s(&cfg)]);
    dir.join("run/checkpoint")
}

/// The greedy continuation of `prompt` by `model`.
fn greedy(model: &Path, prompt: &str) -> Vec<u64> {
    let out = yuanli(&[
        "generate",
        "--model",
        &model.display().to_string(),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("generate --json prints JSON");
    v["token_ids"].as_array().expect("token_ids").iter().map(|x| x.as_u64().expect("an id")).collect()
}

/// Quantizes a checkpoint and checks greedy generation from the GGUF against the checkpoint;
/// returns how many of the 5 tokens agree.
fn roundtrip(tokenizer: &str, ty: &str, name: &str) -> usize {
    let dir = scratch(name);
    let ckpt = tiny_checkpoint(&dir, tokenizer);
    let gguf = dir.join(format!("tiny.{ty}.gguf"));
    let report =
        yuanli(&["quantize", "--in", &ckpt.display().to_string(), "--type", ty, "--out", &gguf.display().to_string()]);
    assert!(report.contains("bits per weight"), "{report}");
    let f = GgufFile::open(&gguf).expect("the output opens");
    assert_eq!(f.get_str("general.architecture").unwrap(), "gpt2");
    assert!(f.tensor_info("output.weight").is_err(), "the head is tied");
    // token_embd holds the real vocabulary only (V rows), not the padding to a multiple of 64.
    let v = f.get_strings("tokenizer.ggml.tokens").unwrap().len();
    assert_eq!(f.tensor_info("token_embd.weight").unwrap().shape(), vec![v, 64]);
    assert_eq!(f.tensor_info("blk.1.ffn_up.weight").unwrap().shape(), vec![256, 64]);
    assert_eq!(f.tensor_info("blk.1.ffn_up.bias").unwrap().ty, QuantType::F32);
    let want = greedy(&ckpt, "ROMEO: ");
    let got = greedy(&gguf, "ROMEO: ");
    assert_eq!(got.len(), 5);
    let same = want.iter().zip(&got).filter(|(a, b)| a == b).count();
    let _ = std::fs::remove_dir_all(&dir);
    same
}

#[test]
fn char_gpt_q8_0_generates_like_the_checkpoint() {
    // q8_0 keeps each weight within half a step of 1/127 of its block's largest magnitude;
    // on a tiny model that leaves the greedy choices unchanged.
    assert_eq!(roundtrip("char", "q8_0", "char"), 5);
}

#[test]
fn bpe_gpt_f32_generates_exactly_like_the_checkpoint() {
    // f32 is lossless, so this checks the layout and the byte-level BPE tokenizer's trip
    // through tokenizer.ggml.* exactly.
    let tiktoken = repo().join("data/gpt2.tiktoken");
    assert_eq!(roundtrip(&tiktoken.display().to_string(), "f32", "bpe"), 5);
}

#[test]
fn smollm2_q4_1_requantizes_to_q8_0() {
    let src = repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !src.exists() {
        // Under CI a missing model fails the test: .ci/run fetches it.
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{} is absent under CI=true", src.display());
        println!("SKIPPED: {} is missing (tools/fetch_models.sh fetches it)", src.display());
        return;
    }
    let dir = scratch("smollm2");
    let out = dir.join("smollm2.q8_0.gguf");
    yuanli(&["quantize", "--in", &src.display().to_string(), "--type", "q8_0", "--out", &out.display().to_string()]);
    let (a, b) = (GgufFile::open(&src).unwrap(), GgufFile::open(&out).unwrap());
    assert_eq!(a.tensors().len(), b.tensors().len());
    for (x, y) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(x.name, y.name);
        assert_eq!(x.shape(), y.shape(), "{}", x.name);
        let want = if x.shape().len() == 2 { QuantType::Q8_0 } else { QuantType::F32 };
        assert_eq!(y.ty, want, "{}", x.name);
    }
    let strip = |f: &GgufFile| -> Vec<(String, Value)> {
        f.metadata().iter().filter(|(k, _)| k != "general.file_type").cloned().collect()
    };
    assert!(strip(&a) == strip(&b), "metadata other than general.file_type must be copied unchanged");
    assert_eq!(b.get("general.file_type"), Some(&Value::U32(7)));
    let _ = std::fs::remove_dir_all(&dir);
}
