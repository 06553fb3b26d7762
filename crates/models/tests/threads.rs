//! One model shared by 8 threads, each decoding its own prompt in its own session, produces
//! the tokens that running the prompts one after another does. The threads compete for the
//! kernel team (one gets it, the others run alone on their own thread), so this checks that a
//! concurrent caller never corrupts another's work. On SmolLM2 (the fast path) when the model
//! has been fetched — under `CI=true` it must be — and on a small random LLaMA always.

mod common;

use std::ops::ControlFlow;
use yuanli_models::load::{load_pretrained_with, LoadOptions};
use yuanli_models::{generate, CausalLm, Llama, LlamaConfig, SamplingParams};
use yuanli_nn::ParamStore;
use yuanli_tensor::{Rng, RopeLayout};

/// Greedy continuations of every prompt, sequentially and from 8 threads at once.
fn sequential_and_concurrent(m: &dyn CausalLm, prompts: &[Vec<u32>], n: usize) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let run = |p: &Vec<u32>| {
        generate(m, p, n, SamplingParams::greedy(), 0, &mut |_| ControlFlow::Continue(())).unwrap().tokens
    };
    let sequential: Vec<Vec<u32>> = prompts.iter().map(run).collect();
    let concurrent: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts.iter().map(|p| s.spawn(move || run(p))).collect();
        handles.into_iter().map(|h| h.join().expect("a decoding thread panicked")).collect()
    });
    (sequential, concurrent)
}

#[test]
fn eight_threads_on_a_small_random_model_decode_as_if_alone() {
    let cfg = LlamaConfig {
        vocab_size: 53,
        hidden_size: 64,
        intermediate_size: 96,
        n_layer: 2,
        n_head: 4,
        n_kv_head: 2,
        head_dim: 16,
        rope_theta: 10_000.0,
        rope_scaling: Default::default(),
        rope_layout: RopeLayout::Interleaved,
        rms_norm_eps: 1e-5,
        max_seq_len: 128,
        tie_word_embeddings: true,
        attention_bias: false,
        extras: Default::default(),
    };
    let mut store = ParamStore::frozen();
    let m = Llama::new(cfg, &mut store).unwrap();
    let mut rng = Rng::new(8);
    for p in store.params() {
        let v: Vec<f32> = (0..p.numel()).map(|_| 0.5 * rng.normal() as f32).collect();
        store.set_values(p, &v);
    }
    let prompts: Vec<Vec<u32>> =
        (0..8).map(|i| (0..3 + 5 * i).map(|j| ((i * 7 + j * 3) % 53) as u32).collect()).collect();
    for round in 0..3 {
        let (seq, conc) = sequential_and_concurrent(&m, &prompts, 24);
        assert_eq!(seq, conc, "round {round}: concurrent decoding differs from sequential");
    }
}

#[test]
fn eight_threads_on_smollm2_decode_as_if_alone() {
    let Some(path) = common::smollm2() else { return };
    let p = load_pretrained_with(&path, LoadOptions::fast()).unwrap();
    let text = std::fs::read_to_string(common::root().join("data/shakespeare/hamlet_gut.txt")).unwrap();
    let ids = p.tokenizer.encode(&text[30_000..40_000], yuanli_tokenizer::SpecialMode::AsText).unwrap();
    // Prompts of 5 to 61 tokens: some decode-sized, some prefilled by the GEMM routes.
    let prompts: Vec<Vec<u32>> = (0..8).map(|i| ids[i * 100..i * 100 + 5 + 8 * i].to_vec()).collect();
    let (seq, conc) = sequential_and_concurrent(&p.model, &prompts, 16);
    assert_eq!(seq, conc, "concurrent decoding differs from sequential");
}
