//! GPT-2 through yuanli gives exactly tiktoken's ids: on a torture set, on every Shakespeare
//! file and on the Tang poems. The reference ids come from
//! `tools/reference/tokenizer_reference.py` (stored in `testdata/gpt2_reference.json`).

mod common;

use common::{data, fnv1a64, shakespeare_files, tang_text};
use serde_json::Value;
use yuanli_tokenizer::formats::load_tiktoken_gpt2_style;
use yuanli_tokenizer::pretokenize::{compile, split_gpt2, split_regex};
use yuanli_tokenizer::{Pattern, SpecialMode, Tokenizer, TokenizerError, GPT2_PATTERN};

fn reference() -> Option<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/gpt2_reference.json");
    match std::fs::read_to_string(&path) {
        Ok(s) => Some(serde_json::from_str(&s).expect("reference file is valid JSON")),
        Err(e) => {
            common::skip(&format!("{} not readable ({e}); run tools/reference/tokenizer_reference.py", path.display()));
            None
        }
    }
}

fn gpt2() -> Option<Tokenizer> {
    let path = data("gpt2.tiktoken");
    if !path.exists() {
        common::skip(&format!("{} is missing", path.display()));
        return None;
    }
    Some(load_tiktoken_gpt2_style(&path, Pattern::Gpt2).expect("gpt2.tiktoken loads"))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("an id array").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

fn check_summary(name: &str, tok: &Tokenizer, text: &str, want: &Value) {
    let got = tok.encode_ordinary(text).expect("encodes");
    assert_eq!(got.len() as u64, want["count"].as_u64().expect("count"), "{name}: id count");
    let first = ids(&want["first"]);
    assert_eq!(&got[..first.len()], &first[..], "{name}: first ids");
    assert_eq!(fnv1a64(&got), want["fnv1a64"].as_str().expect("hash"), "{name}: id hash");
    assert_eq!(tok.decode(&got).expect("decodes"), text, "{name}: round trip");
}

#[test]
fn torture_set_matches_tiktoken() {
    let (Some(reference), Some(tok)) = (reference(), gpt2()) else {
        return;
    };
    assert_eq!(tok.vocab_size(), 50257);
    assert_eq!(tok.special_id("<|endoftext|>"), Some(50256));
    for case in reference["torture"].as_array().expect("torture cases") {
        let text = case["text"].as_str().expect("text");
        let short: String = text.chars().take(40).collect();
        let ordinary = tok.encode_ordinary(text).expect("encodes");
        assert_eq!(ordinary, ids(&case["ordinary"]), "ordinary: {short:?}");
        let allowed = tok.encode(text, SpecialMode::Allow).expect("encodes");
        assert_eq!(allowed, ids(&case["allowed"]), "allowed: {short:?}");
        assert_eq!(tok.decode(&ordinary).expect("decodes"), text);
        assert_eq!(tok.decode(&allowed).expect("decodes"), text);
        match tok.encode(text, SpecialMode::Reject) {
            Err(TokenizerError::SpecialNotAllowed { token, offset }) => {
                assert_eq!(token, "<|endoftext|>");
                assert_eq!(text.find("<|endoftext|>"), Some(offset));
            }
            Ok(got) => {
                assert!(!text.contains("<|endoftext|>"));
                assert_eq!(got, ordinary);
            }
            Err(e) => panic!("unexpected error {e}"),
        }
        // the incremental decoder gives the same text, piece by piece
        let mut dec = tok.stream_decoder();
        let mut streamed = String::new();
        for &id in &allowed {
            streamed += &dec.push(id).expect("known id");
        }
        streamed += &dec.finish();
        assert_eq!(streamed, text);
    }
}

#[test]
fn shakespeare_matches_tiktoken() {
    let (Some(reference), Some(tok)) = (reference(), gpt2()) else {
        return;
    };
    let files = shakespeare_files();
    if files.is_empty() {
        common::skip("no Shakespeare text in data/shakespeare or ../shared/data/shakespeare");
        return;
    }
    let mut checked = 0;
    for path in &files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let text = std::fs::read_to_string(path).expect("readable text");
        match reference["shakespeare"].get(name) {
            Some(want) if want["bytes"].as_u64() == Some(text.len() as u64) => {
                check_summary(name, &tok, &text, want);
                checked += 1;
            }
            _ => eprintln!("note: no reference ids for {name} (not the reference file); skipped"),
        }
    }
    eprintln!("checked {checked} Shakespeare files");
    assert!(checked > 0, "no Shakespeare file matched the reference");
}

#[test]
fn tang_poems_match_tiktoken() {
    let (Some(reference), Some(tok)) = (reference(), gpt2()) else {
        return;
    };
    let Some(text) = tang_text() else {
        common::skip("data/tang_poems.jsonl is missing");
        return;
    };
    check_summary("tang", &tok, &text, &reference["tang"]);
}

#[test]
fn parallel_encoding_gives_the_same_ids() {
    let Some(tok) = gpt2() else { return };
    let Some(text) = tang_text() else { return };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("pool");
    let par = pool.install(|| tok.encode_ordinary_parallel(&text)).expect("encodes");
    assert_eq!(par, tok.encode_ordinary(&text).expect("encodes"));
}

/// The hand-written GPT-2 splitter cuts every corpus exactly like the regex.
#[test]
fn hand_written_splitter_equals_regex_on_corpora() {
    let re = compile(GPT2_PATTERN).expect("compiles");
    let mut texts: Vec<String> = shakespeare_files().iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect();
    texts.extend(tang_text());
    if let Some(r) = reference() {
        for case in r["torture"].as_array().into_iter().flatten() {
            texts.push(case["text"].as_str().unwrap_or_default().to_string());
        }
    }
    for text in &texts {
        let mut want = Vec::new();
        split_regex(&re, text, |c| want.push(c)).expect("regex runs");
        let mut got = Vec::new();
        split_gpt2(text, |c| got.push(c));
        assert_eq!(got.len(), want.len());
        assert!(got == want);
    }
}

/// GPT-2's ranks become a merge list, saved as `tokenizer.json`; read back, it gives
/// tiktoken's ids too.
#[test]
fn gpt2_saved_as_tokenizer_json_gives_the_same_ids() {
    let (Some(reference), Some(tok)) = (reference(), gpt2()) else {
        return;
    };
    let merges = tok.recover_merges().expect("GPT-2's ranks are a merge list");
    assert_eq!(merges.len(), 50_000);
    let path = std::env::temp_dir().join(format!("yuanli-gpt2-{}-tokenizer.json", std::process::id()));
    yuanli_tokenizer::formats::save_hf(&tok, &path).expect("saves");
    let back = yuanli_tokenizer::formats::load(&path, None).expect("loads");
    assert_eq!(back.vocab_size(), 50257);
    for case in reference["torture"].as_array().expect("torture cases") {
        let text = case["text"].as_str().expect("text");
        assert_eq!(back.encode(text, SpecialMode::Allow).expect("encodes"), ids(&case["allowed"]));
    }
    if let Some(text) = tang_text() {
        check_summary("tang via tokenizer.json", &back, &text, &reference["tang"]);
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn batch_encoding_equals_one_by_one() {
    let Some(tok) = gpt2() else { return };
    let mut texts: Vec<String> = shakespeare_files().iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect();
    texts.extend(tang_text());
    texts.push("a <|endoftext|> b".into());
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("pool");
    let batch = pool.install(|| tok.encode_batch(&refs, SpecialMode::Allow)).expect("encodes");
    for (text, ids) in refs.iter().zip(&batch) {
        assert!(*ids == tok.encode(text, SpecialMode::Allow).expect("encodes"));
    }
    assert!(pool.install(|| tok.encode_batch(&refs, SpecialMode::Reject)).is_err());
}
