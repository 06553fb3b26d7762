//! Batch-invariant sessions on SmolLM2-135M Q4_1 (its quantized weights read in place, and
//! dequantized to f32): a sequence's logits are bitwise the same whether it is read and
//! decoded alone, or in steps shared with other sequences' prompts and decodes, or after its
//! prompt's first blocks were read in an earlier step (a prefix cache's split).
//! Needs `models/SmolLM2-135M-Instruct.Q4_1.gguf`; skips without it (fails under `CI=true`).

mod common;

use yuanli_models::load::{load_pretrained_with, LoadOptions};
use yuanli_models::{Batch, CausalLm, Logits, SessionOpts};

fn opts() -> SessionOpts {
    SessionOpts { batch_invariant: true, ..SessionOpts::tokens(4096) }
}

/// The logits of `prompt` (last position) and of `n` greedy decoding steps, the sequence alone;
/// the prompt read in pieces of `split` tokens.
fn alone(m: &dyn CausalLm, prompt: &[u32], n: usize, split: usize) -> Vec<Vec<f32>> {
    let v = m.vocab_size();
    let mut s = m.new_session(opts());
    let seq = s.add_sequence();
    let (mut batch, mut logits, mut out) = (Batch::new(), Vec::new(), Vec::new());
    let mut pos = 0;
    for piece in prompt.chunks(split) {
        batch.clear();
        let last = pos + piece.len() == prompt.len();
        batch.add_seq(seq, pos, piece, if last { Logits::Last } else { Logits::None });
        m.forward_batch(&mut s, &batch, &mut logits).unwrap();
        pos += piece.len();
    }
    out.push(logits[..v].to_vec());
    for _ in 0..n {
        let tok = common::argmax(&logits[..v]) as u32;
        batch.clear();
        batch.add(seq, pos, tok, true);
        m.forward_batch(&mut s, &batch, &mut logits).unwrap();
        pos += 1;
        out.push(logits[..v].to_vec());
    }
    out
}

#[test]
fn a_sequence_gets_the_same_logits_alone_and_in_any_batch() {
    let Some(path) = common::smollm2() else { return };
    for options in [LoadOptions::fast(), LoadOptions::exact()] {
        check(&load_pretrained_with(&path, options).unwrap());
    }
}

/// The check on one loaded model.
fn check(loaded: &yuanli_models::load::Pretrained) {
    let m: &dyn CausalLm = &loaded.model;
    let v = m.vocab_size();
    let tok = |s: &str| loaded.tokenizer.encode_ordinary(s).unwrap();
    let prompts: Vec<Vec<u32>> = [
        "The history of the printing press begins in",
        "Write a short poem about the sea and the ships that sail on it at night, under the stars.",
        "def fibonacci(n):",
        "Bread is made from flour, water, salt and yeast; the dough rises because",
        "Paris",
    ]
    .iter()
    .map(|s| tok(s))
    .collect();
    let n = 12;
    let want: Vec<Vec<Vec<f32>>> = prompts.iter().map(|p| alone(m, p, n, p.len())).collect();
    // Read in pieces (as after a cached prefix, or chunked prefill): the same logits.
    for (p, w) in prompts.iter().zip(&want) {
        assert!(alone(m, p, n, 5) == *w, "a prompt read 5 tokens at a time differs from one piece");
    }
    // All together: the prompts in one step (the last one joins a step later, while the
    // others decode), then every sequence decodes in shared steps.
    let mut s = m.new_session(opts());
    let seqs: Vec<_> = prompts.iter().map(|_| s.add_sequence()).collect();
    let (mut batch, mut logits) = (Batch::new(), Vec::new());
    let k = prompts.len();
    let mut pos = vec![0usize; k];
    let mut got: Vec<Vec<Vec<f32>>> = vec![Vec::new(); k];
    let mut next = vec![0u32; k];
    for i in 0..k - 1 {
        batch.add_seq(seqs[i], 0, &prompts[i], Logits::Last);
        pos[i] = prompts[i].len();
    }
    m.forward_batch(&mut s, &batch, &mut logits).unwrap();
    for i in 0..k - 1 {
        got[i].push(logits[i * v..(i + 1) * v].to_vec());
        next[i] = common::argmax(&logits[i * v..(i + 1) * v]) as u32;
    }
    for step in 0..=n {
        batch.clear();
        let mut rows = Vec::new();
        for i in 0..k {
            let joined = i < k - 1 || step > 0;
            if joined && got[i].len() <= n {
                batch.add(seqs[i], pos[i], next[i], true);
                pos[i] += 1;
                rows.push(i);
            } else if !joined {
                batch.add_seq(seqs[i], 0, &prompts[i], Logits::Last);
                pos[i] = prompts[i].len();
                rows.push(i);
            }
        }
        if rows.is_empty() {
            break;
        }
        m.forward_batch(&mut s, &batch, &mut logits).unwrap();
        for (r, &i) in rows.iter().enumerate() {
            let row = &logits[r * v..(r + 1) * v];
            got[i].push(row.to_vec());
            next[i] = common::argmax(row) as u32;
        }
    }
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        for (j, (a, b)) in g.iter().zip(w).enumerate() {
            let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(a == b, "sequence {i}, step {j}: batched logits differ from alone (max |Δ| {diff:e})");
        }
        assert_eq!(g.len(), n + 1, "sequence {i}");
    }
}
