//! Helpers shared by the integration tests: where the data lives.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository root.
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Notes on stderr why a test does not run here. Under CI (`CI=true`) it fails the test
/// instead: a test that skips in CI proves nothing, and `.ci/run` installs what they need.
#[track_caller]
pub(crate) fn skip(why: &str) {
    assert!(std::env::var("CI").map_or(true, |v| v != "true"), "cannot run under CI=true: {why}");
    eprintln!("SKIP: {why}");
}

/// `data/<name>` in the repository.
pub(crate) fn data(name: &str) -> PathBuf {
    repo_root().join("data").join(name)
}

/// The Shakespeare text files: `data/shakespeare/*.txt` if present, otherwise
/// `../shared/data/shakespeare`; sorted by name. Empty if neither exists.
pub(crate) fn shakespeare_files() -> Vec<PathBuf> {
    for dir in [repo_root().join("data/shakespeare"), repo_root().join("../shared/data/shakespeare")] {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> =
            rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "txt")).collect();
        files.sort();
        if !files.is_empty() {
            return files;
        }
    }
    Vec::new()
}

/// The Tang poems as plain text: title, author, then the lines, one a line, and an empty line
/// after each poem (`tools/reference/tokenizer_reference.py` builds it the same way).
pub(crate) fn tang_text() -> Option<String> {
    let raw = std::fs::read_to_string(data("tang_poems.jsonl")).ok()?;
    let mut out = String::new();
    for line in raw.lines().filter(|l| !l.trim().is_empty()) {
        let poem: serde_json::Value = serde_json::from_str(line).expect("valid JSON line");
        out += poem["title"].as_str().unwrap_or_default();
        out += "\n";
        out += poem["author"].as_str().unwrap_or_default();
        out += "\n";
        for l in poem["lines"].as_array().into_iter().flatten() {
            out += l.as_str().unwrap_or_default();
            out += "\n";
        }
        out += "\n";
    }
    Some(out)
}

/// FNV-1a 64 over the ids, each as 4 little-endian bytes (as the reference script computes).
pub(crate) fn fnv1a64(ids: &[u32]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for id in ids {
        for b in id.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The longest prefix of `s` of at most `n` bytes that ends on a character boundary.
pub(crate) fn prefix(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
