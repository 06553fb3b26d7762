//! Lesson 4: the tokenizer — byte-level BPE from scratch.
//!
//! We train two 512-token vocabularies, one on Shakespeare and one on Tang poems, watch the
//! first merges each one learns, and measure how many bytes one token covers on English and on
//! Chinese text under both vocabularies and under GPT-2's 50,257 tokens. The punchline: a
//! byte-level vocabulary spends tokens on whatever text it did not see in training, and for
//! Chinese — three UTF-8 bytes a character — that means up to three tokens a character.

use crate::LessonOpts;
use anyhow::{bail, Context};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;
use yuanli_tokenizer::train::{count_chunks, train_merges_reference};
use yuanli_tokenizer::{formats, train, Pattern, Splitter, Tokenizer, TrainOptions};

/// `data/<rel>` if it exists, else `../shared/data/<rel>` next to the repository.
fn find_data(opts: &LessonOpts, rel: &str) -> anyhow::Result<PathBuf> {
    let candidates = [opts.data_dir.join(rel), opts.data_dir.join("../../shared/data").join(rel)];
    for c in &candidates {
        if c.exists() {
            return Ok(c.clone());
        }
    }
    bail!("lesson 4 needs {rel}: looked in {} and {}", candidates[0].display(), candidates[1].display())
}

/// The Shakespeare texts, one string per file, sorted by file name.
fn shakespeare(opts: &LessonOpts) -> anyhow::Result<Vec<String>> {
    let dir = find_data(opts, "shakespeare")?;
    let files = yuanli_data::files_with_extension(&dir, "txt").with_context(|| format!("reading {}", dir.display()))?;
    if files.len() < 2 {
        bail!("{}: lesson 4 needs at least two Shakespeare .txt files", dir.display());
    }
    files.iter().map(|f| std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))).collect()
}

/// The Tang poems as plain text, one string per poem: title, author, lines, blank line.
fn tang_poems(opts: &LessonOpts) -> anyhow::Result<Vec<String>> {
    let path = find_data(opts, "tang_poems.jsonl")?;
    let raw = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut poems = Vec::new();
    for (n, line) in raw.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", path.display(), n + 1))?;
        let mut poem = format!("{}\n{}\n", v["title"].as_str().unwrap_or(""), v["author"].as_str().unwrap_or(""));
        for l in v["lines"].as_array().into_iter().flatten() {
            poem += l.as_str().unwrap_or("");
            poem += "\n";
        }
        poems.push(poem + "\n");
    }
    if poems.len() < 1000 {
        bail!("{}: expected thousands of poems, found {}", path.display(), poems.len());
    }
    Ok(poems)
}

/// A token shown readably: its text if it is valid UTF-8, otherwise its bytes in hex.
fn show(tok: &Tokenizer, id: u32) -> String {
    let bytes = tok.token_bytes(id).unwrap_or_default();
    match std::str::from_utf8(bytes) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("<{}>", bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")),
    }
}

/// A text cut into its tokens, with `|` between them.
fn pieces(tok: &Tokenizer, text: &str) -> anyhow::Result<String> {
    let ids = tok.encode_ordinary(text)?;
    // a token that is only part of a character is shown as its bytes in hex
    let parts: Vec<String> = ids
        .iter()
        .map(|&id| {
            let bytes = tok.token_bytes(id).unwrap_or_default();
            match std::str::from_utf8(bytes) {
                Ok(s) => s.to_string(),
                Err(_) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
            }
        })
        .collect();
    Ok(format!("{} tokens: |{}|", ids.len(), parts.join("|").replace('\n', "⏎")))
}

// ANCHOR: merge_loop
/// The whole idea of BPE on one word, step by step: count adjacent pairs, merge the most
/// frequent into a new token, repeat. (The library's `train_merges_reference` is this loop
/// over many words at once; its fast `train_merges` gives the same merges.)
fn show_merge_loop(word: &str, steps: usize) -> Vec<String> {
    let mut ids: Vec<u32> = word.bytes().map(u32::from).collect();
    let mut names: Vec<String> = (0..=255u8).map(|b| (b as char).to_string()).collect();
    let mut lines = Vec::new();
    for step in 0..steps {
        let mut counts = std::collections::BTreeMap::new();
        for pair in ids.windows(2) {
            *counts.entry((pair[0], pair[1])).or_insert(0u32) += 1;
        }
        // most frequent pair; on a tie the smallest pair of ids (the library's rule)
        let Some((&(a, b), &n)) = counts.iter().max_by(|x, y| x.1.cmp(y.1).then(y.0.cmp(x.0))) else {
            break;
        };
        let new = 256 + step as u32;
        names.push(format!("{}{}", names[a as usize], names[b as usize]));
        ids = train::merge_pair(&ids, (a, b), new);
        let shown: Vec<&str> = ids.iter().map(|&i| names[i as usize].as_str()).collect();
        lines.push(format!(
            "merge {step}: ({:?}, {:?}) seen {n}x -> token {new} {:?}: {}",
            names[a as usize],
            names[b as usize],
            names[new as usize],
            shown.join(" ")
        ));
    }
    lines
}
// ANCHOR_END: merge_loop

/// Runs lesson 4.
pub fn run(opts: &LessonOpts) -> anyhow::Result<serde_json::Value> {
    let say = |s: &str| crate::say(opts, s);
    say("Lesson 4 — the tokenizer: byte-level BPE from scratch\n");

    // 1. The merge loop on one word.
    say("1. The merge loop on one word, \"aaabdaaabac\":");
    for line in show_merge_loop("aaabdaaabac", 4) {
        say(&format!("   {line}"));
    }

    // ANCHOR: data
    // 2. Data: hold out some text of each language for measuring.
    let plays = shakespeare(opts)?;
    let (train_en, test_en) = plays.split_at(plays.len() - 1);
    let train_en: Vec<&str> = train_en.iter().map(String::as_str).collect();
    let test_en = test_en[0].as_str();
    let poems = tang_poems(opts)?;
    let (train_zh, test_zh) = poems.split_at(poems.len() - 500);
    let train_zh: Vec<&str> = train_zh.iter().map(String::as_str).collect();
    let test_zh: String = test_zh.concat();
    // ANCHOR_END: data
    say(&format!(
        "\n2. Training text: {} Shakespeare files ({:.2} MB), {} Tang poems ({:.2} MB); held out: one play \
         ({:.0} KB) and 500 poems ({:.0} KB).",
        train_en.len(),
        train_en.iter().map(|t| t.len()).sum::<usize>() as f64 / 1e6,
        train_zh.len(),
        train_zh.iter().map(|t| t.len()).sum::<usize>() as f64 / 1e6,
        test_en.len() as f64 / 1e3,
        test_zh.len() as f64 / 1e3,
    ));

    // ANCHOR: train
    // 3. Train two 512-token vocabularies: 256 bytes + 255 merges + <|endoftext|>.
    let options = TrainOptions { vocab_size: 512, pattern: Pattern::Gpt2, specials: vec!["<|endoftext|>".into()] };
    let t0 = Instant::now();
    let en = train::train(&train_en, &options, &mut |_| {})?;
    let secs_en = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let zh = train::train(&train_zh, &options, &mut |_| {})?;
    let secs_zh = t0.elapsed().as_secs_f64();
    // ANCHOR_END: train
    say(&format!("\n3. Trained 512-token vocabularies in {secs_en:.2} s (Shakespeare) and {secs_zh:.2} s (Tang)."));
    for (name, tok) in [("Shakespeare", &en), ("Tang", &zh)] {
        let first: Vec<String> = (256..276).map(|id| show(tok, id)).collect();
        say(&format!("   first 20 merges, {name}: {}", first.join(" ")));
    }
    say("   Shakespeare's first merges are English: \" t\", \"he\", \" a\", ... The Tang vocabulary's are\n   \
         mostly byte fragments: a Chinese character is three UTF-8 bytes (月 = e6 9c 88), and the pair\n   \
         that is most frequent is the first two bytes that many characters share (<e4 b8> begins 一, 三,\n   \
         上, 下, 不, ...). Only the most frequent characters, here \"，\" and \"。\", become whole tokens early.");

    // The fast trainer and the textbook loop agree (on a small sample, since the textbook loop is slow).
    let sample_zh: String = train_zh[..200].concat();
    let chunks = count_chunks(&[train_en[0], &sample_zh], &Splitter::new(Pattern::Gpt2)?)?;
    let fast = yuanli_tokenizer::train::train_merges(&chunks, 100, &mut |_| {});
    let same = fast == train_merges_reference(&chunks, 100);
    say(&format!("   fast trainer == textbook loop on a sample (100 merges): {same}"));

    // ANCHOR: compare
    // 4. Bytes per token: English and Chinese text under three vocabularies.
    let gpt2 = formats::load_tiktoken_gpt2_style(&find_data(opts, "gpt2.tiktoken")?, Pattern::Gpt2)?;
    let mut table = serde_json::Map::new();
    say("\n4. Bytes per token on held-out text (higher = fewer tokens for the same text):");
    say("   vocabulary              English   Chinese   Chinese tokens per character");
    for (name, tok) in [("shakespeare_512", &en), ("tang_512", &zh), ("gpt2_50257", &gpt2)] {
        let n_en = tok.encode_ordinary(test_en)?.len();
        let n_zh = tok.encode_ordinary(&test_zh)?.len();
        let bpt_en = test_en.len() as f64 / n_en as f64;
        let bpt_zh = test_zh.len() as f64 / n_zh as f64;
        let per_char = n_zh as f64 / test_zh.chars().count() as f64;
        say(&format!("   {name:<22} {bpt_en:>8.2}  {bpt_zh:>8.2}   {per_char:>8.2}"));
        table.insert(
            name.to_string(),
            json!({"english_bytes_per_token": bpt_en, "chinese_bytes_per_token": bpt_zh,
                   "chinese_tokens_per_char": per_char}),
        );
    }
    // ANCHOR_END: compare
    let line = "床前明月光，疑是地上霜。";
    say(&format!("\n   {line:?} (12 characters, {} bytes):", line.len()));
    for (name, tok) in [("Shakespeare-512", &en), ("Tang-512", &zh), ("GPT-2", &gpt2)] {
        say(&format!("   {name:<16} {}", pieces(tok, line)?));
    }
    let line = "To be, or not to be, that is the question:";
    say(&format!("   {line:?}:"));
    for (name, tok) in [("Shakespeare-512", &en), ("Tang-512", &zh), ("GPT-2", &gpt2)] {
        say(&format!("   {name:<16} {}", pieces(tok, line)?));
    }
    say("\n   Why: byte-level BPE can encode anything, but it only has merges for byte pairs it saw often.\n   \
         The Shakespeare vocabulary never saw Chinese, so a Chinese character falls apart into its three\n   \
         UTF-8 bytes — about 1 byte per token. GPT-2 saw a little Chinese on the web and learned some\n   \
         lead-byte pairs, but still spends about two tokens a character. A vocabulary trained on Tang\n   \
         poems learns whole characters and does better on Chinese than GPT-2's 50,257 tokens — and worse\n   \
         on English than the Shakespeare one. Tokens are a budget: context length, compute and cost are\n   \
         counted in them, so a model serves languages its tokenizer never saw at several times the price.");

    Ok(json!({
        "lesson": 4,
        "vocab_size": 512,
        "train_secs": {"shakespeare": secs_en, "tang": secs_zh},
        "fast_equals_textbook": same,
        "first_merges": {
            "shakespeare": (256..266).map(|id| show(&en, id)).collect::<Vec<_>>(),
            "tang": (256..266).map(|id| show(&zh, id)).collect::<Vec<_>>(),
        },
        "bytes_per_token": table,
    }))
}
