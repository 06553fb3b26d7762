//! `yuanli sft` end to end on the tiny LLaMA of crates/models/testdata/tiny_hf: the held-out
//! loss falls, the adapter is written in PEFT's format and `generate --lora` uses it; bad
//! input is an error that names the problem.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yuanli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_yuanli")).args(args).output().expect("run yuanli")
}

#[test]
fn sft_trains_an_adapter_that_generate_can_use() {
    let dir = std::env::temp_dir().join(format!("yuanli-sft-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // 48 real problems of the GSM8K training split cut to fit the tiny model's 64 positions:
    // the question's first 20 characters, and the answer line `#### N`
    let text = std::fs::read_to_string(repo().join("data/gsm8k/train.jsonl")).unwrap();
    let lines: Vec<String> = text
        .lines()
        .take(48)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let q: String = v["prompt"].as_str().unwrap().chars().take(20).collect();
            let a = v["completion"].as_str().unwrap().rsplit('\n').next().unwrap().to_string();
            serde_json::json!({"prompt": q, "completion": a}).to_string()
        })
        .collect();
    let data = dir.join("train.jsonl");
    std::fs::write(&data, lines.join("\n")).unwrap();
    let model = repo().join("crates/models/testdata/tiny_hf/llama");
    let out = dir.join("run");
    let s = |p: &Path| p.display().to_string();
    // `yuanli sft` on the tiny model and this data, plus `extra` flags
    let sft = |extra: &str| {
        let mut args =
            vec!["sft".to_string(), "--model".into(), s(&model), "--data".into(), s(&data), "--out".into(), s(&out)];
        args.extend(extra.split_whitespace().map(str::to_string));
        yuanli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = sft(
        "--steps 30 --batch-size 4 --max-len 64 --eval-fraction 0.25 --eval-interval 10 --lr 5e-3 --targets all-linear",
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    let line = stdout.lines().find(|l| l.starts_with("held-out loss")).expect("a summary line");
    let nums: Vec<f64> =
        line.split(|c: char| !(c.is_ascii_digit() || c == '.')).filter_map(|w| w.parse().ok()).collect();
    assert!(nums[1] < nums[0] - 0.05, "held-out loss did not fall: {line}");
    assert!(out.join("adapter/adapter_config.json").exists() && out.join("adapter/adapter_model.safetensors").exists());
    assert!(std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().count() > 30);
    let g = yuanli(&[
        "generate",
        "--model",
        &s(&model),
        "--lora",
        &s(&out.join("adapter")),
        "--prompt",
        "Tom has",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0",
    ]);
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    // a module that does not exist: the error lists the ones that do
    let o = sft("--max-len 64 --targets qkv");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("\"qkv\"") && err.contains("q_proj, k_proj"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
