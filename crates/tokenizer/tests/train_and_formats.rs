//! Training (fast loop = textbook loop), special tokens, decoding and file formats.

mod common;

use common::{data, prefix, shakespeare_files, tang_text};
use yuanli_tokenizer::formats::{self, load};
use yuanli_tokenizer::train::{self, count_chunks, train_merges, train_merges_reference};
use yuanli_tokenizer::{Pattern, SpecialMode, Splitter, Tokenizer, TokenizerError, TrainOptions};

const SMALL: &str = "the cat sat on the mat. the cat ate the rat!\n\
    aaaa aaaa aaa bbbb abab ababab it's 12345 67 日本語 日本 😀😀😀\n";

fn corpus_sample() -> String {
    let mut text = String::new();
    for p in shakespeare_files().iter().take(2) {
        text += &std::fs::read_to_string(p).expect("readable");
    }
    if let Some(t) = tang_text() {
        text += prefix(&t, 200_000);
    }
    text += SMALL;
    text
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("yuanli-tok-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

#[test]
fn fast_trainer_gives_the_textbook_merges() {
    let text = corpus_sample();
    for pattern in [Pattern::Gpt2, Pattern::Gpt4, Pattern::Regex(r"\S+|\s+".into())] {
        let splitter = Splitter::new(pattern.clone()).expect("pattern");
        let chunks = count_chunks(&[&text], &splitter).expect("counts");
        let n = 300;
        let fast = train_merges(&chunks, n, &mut |_| {});
        let slow = train_merges_reference(&chunks, n);
        assert_eq!(fast.len(), n);
        assert_eq!(fast, slow, "pattern {pattern:?}");
    }
    // a tiny corpus runs out of pairs: both stop at the same place
    let splitter = Splitter::new(Pattern::None).expect("pattern");
    let chunks = count_chunks(&["aaabdaaabac"], &splitter).expect("counts");
    let fast = train_merges(&chunks, 100, &mut |_| {});
    assert_eq!(fast, train_merges_reference(&chunks, 100));
    assert_eq!(fast.len(), 7); // aaabdaaabac: 3 merges of count 2, then 4 of count 1
}

#[test]
fn training_is_deterministic_across_threads() {
    let text = corpus_sample();
    let opts = TrainOptions { vocab_size: 600, pattern: Pattern::Gpt2, specials: vec!["<|endoftext|>".into()] };
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
        pool.install(|| train::train(&[&text], &opts, &mut |_| {}).expect("trains"))
    };
    let (a, b) = (run(1), run(3));
    assert_eq!(a.merge_list(), b.merge_list());
    assert_eq!(a.vocab_size(), 600);
    assert_eq!(a.special_id("<|endoftext|>"), Some(599));
}

#[test]
fn trained_tokenizer_round_trips_and_handles_specials() {
    let text = corpus_sample();
    let opts = TrainOptions {
        vocab_size: 400,
        pattern: Pattern::Gpt2,
        specials: vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()],
    };
    let tok = train::train(&[&text], &opts, &mut |_| {}).expect("trains");
    let ids = tok.encode_ordinary(&text).expect("encodes");
    assert!(ids.len() < text.len());
    assert_eq!(tok.decode(&ids).expect("decodes"), text);

    let chat = "<|im_start|>user\nhello<|im_end|><|endoftext|>";
    let ids = tok.encode(chat, SpecialMode::Allow).expect("encodes");
    assert_eq!(ids[0], tok.special_id("<|im_start|>").expect("special"));
    assert_eq!(ids[ids.len() - 1], tok.special_id("<|endoftext|>").expect("special"));
    assert_eq!(tok.decode(&ids).expect("decodes"), chat);
    let err = tok.encode(chat, SpecialMode::Reject).expect_err("specials are rejected");
    assert!(matches!(err, TokenizerError::SpecialNotAllowed { ref token, offset: 0 } if token == "<|im_start|>"));
    assert!(err.to_string().contains("<|im_start|>"));
    let plain = tok.encode(chat, SpecialMode::AsText).expect("encodes");
    assert!(plain.iter().all(|&id| !tok.is_special(id)));
    assert_eq!(tok.decode(&plain).expect("decodes"), chat);
}

#[test]
fn decoding_strict_lossy_and_streaming() {
    let Ok(tok) = formats::load_tiktoken_gpt2_style(&data("gpt2.tiktoken"), Pattern::Gpt2) else {
        common::skip("data/gpt2.tiktoken is missing");
        return;
    };
    // "日" is three bytes; GPT-2 spends more than one token on it
    let ids = tok.encode_ordinary("日本").expect("encodes");
    assert!(ids.len() > 2);
    let first = &ids[..1];
    assert!(matches!(tok.decode(first), Err(TokenizerError::InvalidUtf8 { offset: 0 })));
    assert!(tok.decode_lossy(first).expect("known ids").contains('\u{FFFD}'));
    let mut dec = tok.stream_decoder();
    let pieces: Vec<String> = ids.iter().map(|&id| dec.push(id).expect("known id")).collect();
    assert_eq!(pieces.concat(), "日本");
    assert!(pieces.iter().all(|p| p.is_empty() || p.chars().all(|c| c != '\u{FFFD}')));
    assert!(matches!(tok.decode(&[99_999]), Err(TokenizerError::UnknownId { id: 99_999, .. })));
}

#[test]
fn yuanli_and_hf_files_round_trip() {
    let text = corpus_sample();
    for pattern in [Pattern::Gpt2, Pattern::Gpt4, Pattern::None] {
        let opts = TrainOptions { vocab_size: 350, pattern: pattern.clone(), specials: vec!["<|endoftext|>".into()] };
        let tok = train::train(&[&text], &opts, &mut |_| {}).expect("trains");
        let want = tok.encode(prefix(&text, 20_000), SpecialMode::Allow).expect("encodes");
        for name in ["tok.json", "tokenizer.json"] {
            let path = tmp(&format!("{}-{name}", pattern.name()));
            if name == "tok.json" {
                formats::save_yuanli(&tok, &path).expect("saves");
            } else {
                formats::save_hf(&tok, &path).expect("saves");
            }
            let back = load(&path, None).expect("loads");
            assert_eq!(back.pattern(), tok.pattern());
            assert_eq!(back.vocab_size(), tok.vocab_size());
            let got = back.encode(prefix(&text, 20_000), SpecialMode::Allow).expect("encodes");
            assert_eq!(got, want, "{name} with {pattern:?}");
        }
    }
}

#[test]
fn vocab_and_merge_strings_constructor() {
    let tok = train::train(
        &[SMALL],
        &TrainOptions { vocab_size: 280, pattern: Pattern::Gpt2, specials: vec![] },
        &mut |_| {},
    )
    .expect("trains");
    let hf = formats::to_hf_json(&tok).expect("json");
    let mut tokens = vec![String::new(); tok.vocab_size()];
    for (name, id) in hf["model"]["vocab"].as_object().expect("vocab") {
        tokens[id.as_u64().expect("id") as usize] = name.clone();
    }
    let merges: Vec<String> = hf["model"]["merges"]
        .as_array()
        .expect("merges")
        .iter()
        .map(|m| m.as_str().expect("string").to_string())
        .collect();
    let back = formats::from_byte_level_strings(&tokens, &merges, Pattern::Gpt2, &[]).expect("builds");
    assert_eq!(back.encode_ordinary(SMALL).expect("encodes"), tok.encode_ordinary(SMALL).expect("encodes"));
}

#[test]
fn malformed_files_name_the_file_and_the_problem() {
    let cases = [
        ("bad1.json", "{not json"),
        ("bad2.json", r#"{"format": "yuanli-bpe", "version": 1, "pattern": "gpt2", "merges": [[1]]}"#),
        ("bad3.json", r#"{"format": "yuanli-bpe", "version": 1, "pattern": "gpt2", "merges": [[999, 1]]}"#),
        ("bad4.json", r#"{"format": "yuanli-bpe", "version": 7}"#),
        ("bad5.json", r#"{"hello": 1}"#),
        ("bad6.json", r#"{"model": {"type": "WordPiece"}}"#),
        ("bad7.tiktoken", "IQ== 0\nnot-base64!! 1\n"),
        ("bad8.tiktoken", "IQ== 0\nIg== 2\n"),
        ("bad9.json", r#"{"format": "yuanli-bpe", "version": 1, "pattern": "(unclosed", "merges": []}"#),
    ];
    for (name, content) in cases {
        let path = tmp(name);
        std::fs::write(&path, content).expect("writes");
        let err = load(&path, None).expect_err(name);
        let msg = err.to_string();
        assert!(msg.contains(name), "{name}: {msg}");
        eprintln!("{msg}");
    }
    let missing = load(&tmp("does-not-exist.json"), None).expect_err("missing");
    assert!(missing.to_string().contains("does-not-exist.json"));
}

#[test]
fn user_regex_and_no_split() {
    let tok = Tokenizer::from_merges(&[], Pattern::None, &[]).expect("bytes only");
    assert_eq!(tok.encode_ordinary("héllo").expect("encodes").len(), 6);
    let bad = Splitter::new(Pattern::Regex("(".into()));
    assert!(matches!(bad, Err(TokenizerError::Pattern { .. })));
    let words = Splitter::new(Pattern::Regex(r"\w+(?=\s)|.".into())).expect("lookahead works");
    assert_eq!(words.chunks("ab cd").expect("splits"), ["ab", " ", "c", "d"]);
}

#[test]
fn specials_can_be_added_with_explicit_ids() {
    let Ok(mut tok) = formats::load_tiktoken_gpt2_style(&data("gpt2.tiktoken"), Pattern::Gpt2) else {
        common::skip("data/gpt2.tiktoken is missing");
        return;
    };
    assert!(tok.add_specials(&[("<|im_start|>".into(), 50_300)]).is_err());
    tok.add_specials(&[("<|im_start|>".into(), 50_257), ("<|im_end|>".into(), 50_258)]).expect("adds");
    let text = "<|im_start|>user\nHi<|im_end|><|endoftext|>";
    let ids = tok.encode(text, SpecialMode::Allow).expect("encodes");
    assert_eq!(ids, [50_257, 7220, 198, 17250, 50_258, 50_256]);
    assert_eq!(tok.decode(&ids).expect("decodes"), text);
    assert!(tok.add_specials(&[("<|im_end|>".into(), 50_259)]).is_err());
}

#[test]
fn bytes_missing_from_a_vocabulary_are_dropped_like_llama_cpp_does() {
    use yuanli_tokenizer::{byte_level, formats, Pattern, SpecialMode};
    // A byte-level vocabulary without byte 0x04 (SmolLM2's lacks it), plus one merge "a b".
    let mut tokens: Vec<String> = (0..=255u8).filter(|&b| b != 4).map(|b| byte_level::encode_bytes(&[b])).collect();
    tokens.push("ab".into());
    let t = formats::from_byte_level_strings(&tokens, &["a b".to_string()], Pattern::Gpt2, &[]).unwrap();
    assert_eq!(t.byte_ids()[4], yuanli_tokenizer::NO_TOKEN);
    let ab = t.token_id(b"ab").unwrap();
    let x = t.token_id(b"x").unwrap();
    assert_eq!(t.encode("ab\u{4}xab", SpecialMode::Reject).unwrap(), [ab, x, ab]);
    assert_eq!(t.encode("\u{4}", SpecialMode::Reject).unwrap(), Vec::<u32>::new());
}
