//! `yuanli dpo` and `yuanli rm` end to end on the tiny LLaMA of crates/models/testdata/tiny_hf:
//! the (implicit) reward margin on the pairs grows and the pairs are preferred more often, the
//! result is written (an adapter in PEFT's format; a reward model's head beside it); bad input
//! is an error that names the file and line.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yuanli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_yuanli")).args(args).output().expect("run yuanli")
}

#[test]
fn dpo_moves_the_margin_and_writes_an_adapter() {
    let dir = std::env::temp_dir().join(format!("yuanli-dpo-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // 24 real pairs of data/gsm8k/pref_train.jsonl cut to fit the tiny model's 64 positions:
    // the question's first 20 characters, and each answer's last line (`#### N` vs `#### N'`).
    let text = std::fs::read_to_string(repo().join("data/gsm8k/pref_train.jsonl")).unwrap();
    let last_line = |v: &serde_json::Value| v.as_str().unwrap().rsplit('\n').next().unwrap().to_string();
    let lines: Vec<String> = text
        .lines()
        .take(24)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let q: String = v["prompt"].as_str().unwrap().chars().take(20).collect();
            serde_json::json!({"prompt": q, "chosen": last_line(&v["chosen"]), "rejected": last_line(&v["rejected"])})
                .to_string()
        })
        .collect();
    let data = dir.join("pairs.jsonl");
    std::fs::write(&data, lines.join("\n")).unwrap();
    let model = repo().join("crates/models/testdata/tiny_hf/llama");
    let out = dir.join("run");
    let s = |p: &Path| p.display().to_string();
    let run = |cmd: &str, data: &Path, extra: &str| {
        let mut args = vec![cmd.to_string(), "--model".into(), s(&model), "--data".into(), s(data)];
        args.extend(["--eval-data".into(), s(data), "--out".into(), s(&out)]);
        args.extend(extra.split_whitespace().map(str::to_string));
        yuanli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = run("dpo", &data, "--steps 20 --batch-pairs 4 --max-len 64 --eval-interval 10 --lr 5e-3 --beta 0.5");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    let line = stdout.lines().find(|l| l.starts_with("held-out pairs")).expect("a summary line");
    let nums: Vec<f64> =
        line.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-')).filter_map(|w| w.parse().ok()).collect();
    // [accuracy before, after, margin before, after]
    assert!(nums.len() == 4 && nums[3] > 0.1 && nums[1] > nums[0], "the pairs are not preferred more: {line}");
    assert!(out.join("adapter/adapter_config.json").exists() && out.join("adapter/adapter_model.safetensors").exists());
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"eval_margin\"")).count(), 3, "{metrics}");
    // a pair without its rejected answer: the error names the file and line
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, format!("{}\n{{\"prompt\": \"q\", \"chosen\": \"a\"}}\n", lines[0])).unwrap();
    for cmd in ["dpo", "rm"] {
        let o = run(cmd, &bad, "--max-len 64");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("bad.jsonl:2") && err.contains("\"rejected\" is missing"),
            "{cmd}: {err}"
        );
    }
    // a reward model on 8 of the pairs: held-out (here: the same) pairwise accuracy from
    // chance to all of them, and the head written beside the adapter
    let few = dir.join("few.jsonl");
    std::fs::write(&few, lines[..8].join("\n")).unwrap();
    let o = run("rm", &few, "--steps 40 --batch-pairs 4 --max-len 64 --eval-interval 20 --lr 1e-2");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    let line = stdout.lines().find(|l| l.starts_with("held-out pairwise accuracy")).expect("a summary line");
    let nums: Vec<f64> =
        line.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-')).filter_map(|w| w.parse().ok()).collect();
    // [accuracy before, after, chance 50, margin before, after]
    assert!(
        nums.len() == 5 && nums[1] >= 87.5 && nums[4] > nums[3] + 1.0,
        "the reward model did not learn the pairs: {line}"
    );
    assert!(
        out.join("reward_model/score.safetensors").exists() && out.join("reward_model/adapter_config.json").exists()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
