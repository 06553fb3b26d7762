//! `yuanli rm` then `yuanli ppo` against the reward model it wrote, and `yuanli distill` twice
//! (the teacher's distributions, then the data alone drawn beside it), end to end on the tiny
//! LLaMA of crates/models/testdata/tiny_hf.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yuanli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_yuanli")).args(args).output().expect("run yuanli")
}

fn ok(o: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    stdout
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn a_reward_model_then_ppo_against_it() {
    let dir = std::env::temp_dir().join(format!("yuanli-ppo-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = repo().join("crates/models/testdata/tiny_hf/llama");
    // the questions of 8 arithmetic pairs, without their choices (the tiny model's context is 64)
    let text = std::fs::read_to_string(repo().join("data/arithmetic/pref_train.jsonl")).unwrap();
    let pairs: Vec<serde_json::Value> = text
        .lines()
        .take(8)
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let q = v["prompt"].as_str().unwrap().split('?').next().unwrap().to_string() + "?";
            v["prompt"] = q.into();
            v
        })
        .collect();
    let data = dir.join("pairs.jsonl");
    std::fs::write(&data, pairs.iter().map(|v| v.to_string() + "\n").collect::<String>()).unwrap();
    let rm = dir.join("rm");
    let o = yuanli(&[
        "rm",
        "--model",
        &s(&model),
        "--data",
        &s(&data),
        "--eval-data",
        &s(&data),
        "--out",
        &s(&rm),
        "--steps",
        "2",
        "--rank",
        "2",
        "--alpha",
        "4",
        "--max-len",
        "64",
        "--lr",
        "1e-2",
    ]);
    ok(&o);
    // PPO reads the same file for its prompts (other fields are ignored)
    let out = dir.join("ppo");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "ppo",
            "--model",
            &s(&model),
            "--reward-model",
            &s(&rm.join("reward_model")),
            "--data",
            &s(&data),
            "--eval-data",
            &s(&data),
            "--out",
            &s(&out),
            "--steps",
            "3",
            "--prompts",
            "4",
            "--max-new-tokens",
            "6",
            "--rank",
            "2",
            "--alpha",
            "4",
            "--lr",
            "1e-2",
            "--epochs",
            "2",
            "--kl-target",
            "1",
            "--eval-batch",
            "8",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        yuanli(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let stdout = ok(&run(&[]));
    assert!(
        stdout.lines().any(|l| l.starts_with("held-out reward-model score:") && l.contains("on 8 prompts")),
        "{stdout}"
    );
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"pg_loss\"")).count(), 3, "{metrics}");
    assert!(out.join("adapter/adapter_config.json").exists() && out.join("ppo.png").exists());
    // a reward model directory without its head: an error naming the file
    std::fs::remove_file(rm.join("reward_model/score.safetensors")).unwrap();
    let o = run(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("score.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn distill_then_the_baseline_beside_it() {
    let dir = std::env::temp_dir().join(format!("yuanli-distill-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = repo().join("crates/models/testdata/tiny_hf/llama");
    let plays = repo().join("data/shakespeare");
    let held = plays.join("tempest_gut.txt");
    // every play but The Tempest is trained on (a directory that holds the held-out file too)
    let common = |out: &Path| -> Vec<String> {
        [
            "distill",
            "--teacher",
            &s(&model),
            "--data",
            &s(&plays),
            "--eval-data",
            &s(&held),
            "--out",
            &s(out),
            "--steps",
            "4",
            "--layers",
            "1",
            "--hidden",
            "16",
            "--heads",
            "2",
            "--context",
            "32",
            "--eval-tokens",
            "256",
            "--eval-interval",
            "2",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let run = |a: Vec<String>| yuanli(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let kl = dir.join("kl");
    let stdout = ok(&run(common(&kl)));
    assert!(stdout.lines().any(|l| l.starts_with("held-out cross-entropy:") && l.contains("teacher")), "{stdout}");
    assert!(kl.join("model/config.json").exists() && kl.join("distill.png").exists());
    let ce = dir.join("ce");
    let mut a = common(&ce);
    a.extend(["--loss", "ce", "--compare"].iter().map(|x| x.to_string()));
    a.push(s(&kl));
    let stdout = ok(&run(a));
    assert!(stdout.contains("the compared run ended at"), "{stdout}");
    // the student it wrote generates
    let o = yuanli(&["generate", "--model", &s(&kl.join("model")), "--prompt", "the", "--max-new-tokens", "4"]);
    ok(&o);
    std::fs::remove_dir_all(&dir).ok();
}
