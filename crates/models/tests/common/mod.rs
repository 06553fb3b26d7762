//! Helpers shared by the real-model tests.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `models/SmolLM2-135M-Instruct.Q4_1.gguf`, or `None` with a note when it has not been fetched
/// (`tools/fetch_models.sh`). Under CI (`CI=true`) a missing model fails the test instead: a
/// test that skips in CI proves nothing.
pub fn smollm2() -> Option<PathBuf> {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v != "true"),
        "{} is absent under CI=true; .ci/run fetches it with tools/fetch_models.sh",
        p.display()
    );
    eprintln!("SKIPPED: {} is absent; run tools/fetch_models.sh to fetch it", p.display());
    None
}

/// The index of the largest value.
pub fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
}
