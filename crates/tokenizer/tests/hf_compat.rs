//! A vocabulary trained by yuanli and saved as `tokenizer.json` loads in Hugging Face
//! `tokenizers` and gives the same ids. Needs Python with `tokenizers` (`bench/.venv`, set up
//! by `bench/run_tokenizer.sh`, or `$YUANLI_PYTHON`); skips with a printed reason otherwise.

mod common;

use common::{prefix, repo_root, shakespeare_files, tang_text};
use std::process::Command;
use yuanli_tokenizer::{formats, train, Pattern, SpecialMode, TrainOptions};

fn python_with_tokenizers() -> Option<String> {
    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var("YUANLI_PYTHON") {
        candidates.push(p);
    }
    candidates.push(repo_root().join("bench/.venv/bin/python").display().to_string());
    candidates.push("python3".into());
    candidates
        .into_iter()
        .find(|py| Command::new(py).args(["-c", "import tokenizers"]).output().is_ok_and(|o| o.status.success()))
}

const SCRIPT: &str = r#"
import json, sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8").read()
print(json.dumps(tok.encode(text, add_special_tokens=False).ids))
"#;

#[test]
fn trained_vocabulary_gives_the_same_ids_in_hf_tokenizers() {
    let Some(python) = python_with_tokenizers() else {
        common::skip("no Python with the `tokenizers` package (run bench/run_tokenizer.sh once)");
        return;
    };
    let mut corpus = String::new();
    for p in shakespeare_files().iter().take(3) {
        corpus += &std::fs::read_to_string(p).expect("readable");
    }
    if let Some(t) = tang_text() {
        corpus += prefix(&t, 300_000);
    }
    corpus += "it's 2024: emoji 👩‍👩‍👧, tabs\t\tand  spaces   \n\n\n";
    let test_text = format!("{}\nHello there<|endoftext|>再見 'tis 12345 \u{a0} end  \n", prefix(&corpus, 50_000));
    let dir = std::env::temp_dir().join(format!("yuanli-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let text_path = dir.join("text.txt");
    std::fs::write(&text_path, &test_text).expect("writes");

    for (pattern, vocab) in [(Pattern::Gpt2, 2000), (Pattern::Gpt4, 1500)] {
        let opts = TrainOptions { vocab_size: vocab, pattern: pattern.clone(), specials: vec!["<|endoftext|>".into()] };
        let tok = train::train(&[&corpus], &opts, &mut |_| {}).expect("trains");
        let path = dir.join(format!("{}-tokenizer.json", pattern.name()));
        formats::save_hf(&tok, &path).expect("saves");
        let out = Command::new(&python).args(["-c", SCRIPT]).arg(&path).arg(&text_path).output().expect("python runs");
        assert!(out.status.success(), "HF tokenizers failed: {}", String::from_utf8_lossy(&out.stderr));
        let theirs: Vec<u32> = serde_json::from_slice(&out.stdout).expect("a JSON id list");
        let ours = tok.encode(&test_text, SpecialMode::Allow).expect("encodes");
        assert_eq!(ours.len(), theirs.len(), "{pattern:?}: token counts");
        assert!(ours == theirs, "{pattern:?}: ids differ");
        eprintln!("{pattern:?}: {} ids identical in HF tokenizers", ours.len());
    }
}

const SCRIPT_MANY: &str = r#"
import json, sys
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
texts = json.load(open(sys.argv[2], encoding="utf-8"))
print(json.dumps([tok.encode(t, add_special_tokens=False).ids for t in texts]))
"#;

/// GPT-2 (from `gpt2.tiktoken`, merges recovered from the ranks) written as `tokenizer.json`
/// gives tiktoken's ids on the torture set in HF `tokenizers`, too.
#[test]
fn gpt2_tokenizer_json_gives_tiktoken_ids_in_hf_tokenizers() {
    let Some(python) = python_with_tokenizers() else {
        common::skip("no Python with the `tokenizers` package (run bench/run_tokenizer.sh once)");
        return;
    };
    let reference = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/gpt2_reference.json");
    let (Ok(reference), Ok(tok)) = (
        std::fs::read_to_string(&reference),
        formats::load_tiktoken_gpt2_style(&common::data("gpt2.tiktoken"), Pattern::Gpt2),
    ) else {
        common::skip("reference ids or data/gpt2.tiktoken missing");
        return;
    };
    let reference: serde_json::Value = serde_json::from_str(&reference).expect("valid JSON");
    let cases = reference["torture"].as_array().expect("torture cases");
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().expect("text")).collect();
    let dir = std::env::temp_dir().join(format!("yuanli-hf-gpt2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (tok_path, texts_path) = (dir.join("tokenizer.json"), dir.join("texts.json"));
    formats::save_hf(&tok, &tok_path).expect("saves");
    std::fs::write(&texts_path, serde_json::to_string(&texts).expect("json")).expect("writes");
    let out = Command::new(&python).args(["-c", SCRIPT_MANY]).arg(&tok_path).arg(&texts_path).output().expect("runs");
    assert!(out.status.success(), "HF tokenizers failed: {}", String::from_utf8_lossy(&out.stderr));
    let theirs: Vec<Vec<u32>> = serde_json::from_slice(&out.stdout).expect("id lists");
    for (case, got) in cases.iter().zip(&theirs) {
        let want: Vec<u32> =
            case["allowed"].as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect();
        assert_eq!(got, &want, "HF on {:?}", case["text"]);
    }
}
