//! Every tensor of a real downloaded file dequantized bit for bit as `gguf.quants` does:
//! Gemma 3 270M in Q4_K_M, a file that mixes Q5_0, Q8_0, Q4_K, Q6_K and F32 tensors (what
//! llama.cpp's "Q4_K_M" preset writes). The reference digests come from
//! `tools/reference/gguf_digest.py`, run by this test with the `gguf` package from PyPI.
//!
//! Needs `bash tools/fetch_models.sh gemma3` and Python with `gguf` (`bench/.venv`, which
//! `.ci/run` sets up); skips without them locally, fails under `CI=true`.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use yuanli_gguf::GgufFile;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Notes why the test does not run here; under `CI=true` it fails instead.
fn skip(why: &str) {
    assert!(std::env::var("CI").map_or(true, |v| v != "true"), "cannot run under CI=true: {why}");
    eprintln!("SKIP: {why}");
}

/// A Python that can import `gguf`: `$YUANLI_PYTHON`, `bench/.venv`, or `python3`.
fn python_with_gguf() -> Option<String> {
    let mut candidates: Vec<String> = std::env::var("YUANLI_PYTHON").into_iter().collect();
    candidates.push(repo_root().join("bench/.venv/bin/python").display().to_string());
    candidates.push("python3".into());
    candidates
        .into_iter()
        .find(|py| Command::new(py).args(["-c", "import gguf"]).output().is_ok_and(|o| o.status.success()))
}

#[test]
fn every_tensor_of_gemma3_q4_k_m_dequantizes_like_gguf_quants() {
    let path = repo_root().join("models/gemma-3-270m-Q4_K_M.gguf");
    if !path.exists() {
        return skip(&format!("{} is missing (bash tools/fetch_models.sh gemma3)", path.display()));
    }
    let Some(python) = python_with_gguf() else {
        return skip("no Python with the gguf package (pip install -r bench/requirements-gguf.txt)");
    };
    let out = Command::new(&python)
        .arg(repo_root().join("tools/reference/gguf_digest.py"))
        .arg(&path)
        .output()
        .expect("python runs");
    assert!(out.status.success(), "gguf_digest.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let file = GgufFile::open(&path).unwrap();
    let mut types = std::collections::BTreeMap::<String, usize>::new();
    let mut n = 0;
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let want: serde_json::Value = serde_json::from_str(line).unwrap();
        let name = want["name"].as_str().unwrap();
        let info = file.tensor_info(name).unwrap();
        assert_eq!(info.ty.name(), want["type"].as_str().unwrap(), "{name}: type");
        let (_, values) = file.tensor_f32(name).unwrap();
        assert_eq!(values.len() as u64, want["n"].as_u64().unwrap(), "{name}: element count");
        let mut h = Sha256::new();
        for v in &values {
            h.update(v.to_le_bytes());
        }
        let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, want["sha256"].as_str().unwrap(), "{name} ({}): values differ from gguf.quants", info.ty);
        *types.entry(info.ty.name().to_string()).or_default() += 1;
        n += 1;
    }
    assert_eq!(n, file.tensors().len(), "the reference listed {n} of {} tensors", file.tensors().len());
    eprintln!("{n} tensors identical to gguf.quants: {types:?}");
    for ty in ["Q5_0", "Q8_0", "Q4_K", "Q6_K"] {
        assert!(types.contains_key(ty), "no {ty} tensor seen");
    }
}
