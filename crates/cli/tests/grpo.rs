//! `yuanli grpo` end to end on the tiny LLaMA of crates/models/testdata/tiny_hf, its options read
//! from a `--config` file that flags on the command line override; bad problems are an error
//! naming the file and line.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yuanli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_yuanli")).args(args).output().expect("run yuanli")
}

#[test]
fn grpo_runs_from_a_config_and_names_bad_problems() {
    let dir = std::env::temp_dir().join(format!("yuanli-grpo-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // 12 items of data/arithmetic/train.jsonl; the tiny model's 64 positions hold the question
    // without its choices.
    let text = std::fs::read_to_string(repo().join("data/arithmetic/train.jsonl")).unwrap();
    let lines: Vec<String> = text
        .lines()
        .take(12)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let q = v["prompt"].as_str().unwrap().split('?').next().unwrap().to_string();
            serde_json::json!({"prompt": q + "?", "answer": v["answer"]}).to_string()
        })
        .collect();
    let data = dir.join("problems.jsonl");
    std::fs::write(&data, lines.join("\n")).unwrap();
    let out = dir.join("run");
    let s = |p: &Path| p.display().to_string();
    let config = dir.join("grpo.toml");
    let model = repo().join("crates/models/testdata/tiny_hf/llama");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\ndata = {:?}\neval_data = {:?}\nout = {:?}\nsteps = 100\nprompts = 2\ngroup = 4\n\
             max_new_tokens = 8\nformat_reward = 1.0\nlr = 1e-2\nrank = 2\nalpha = 4.0\neval_batch = 6\n",
            s(&model),
            s(&data),
            s(&data),
            s(&out)
        ),
    )
    .unwrap();
    // --steps on the command line overrides the file's 100.
    let o = yuanli(&["grpo", "--config", &s(&config), "--steps", "4"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.lines().any(|l| l.starts_with("held-out accuracy:") && l.contains("on 12 problems")), "{stdout}");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"reward\"")).count(), 4, "{metrics}");
    assert!(out.join("adapter/adapter_config.json").exists() && out.join("answers_step4.jsonl").exists());
    assert!(out.join("grpo.png").exists());
    // a problem whose answer is not a number: the error names the file and line
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, format!("{}\n{{\"prompt\": \"What is 2 + 2?\", \"answer\": \"four\"}}\n", lines[0])).unwrap();
    let o = yuanli(&["grpo", "--config", &s(&config), "--data", &s(&bad)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bad.jsonl:2") && err.contains("not one number"), "{err}");
    // a config key that is no flag of the command is clap's error, naming it
    std::fs::write(&config, "model = \"m.gguf\"\nlearning_rate = 1.0\n").unwrap();
    let o = yuanli(&["grpo", "--config", &s(&config)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--learning-rate"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
