//! The fast decoding path allocates nothing per generated token: after a warm-up, a decoding
//! step (paged KV cache, step plan, scratch buffers, quantized activations, logits all reused)
//! makes zero heap allocations — for one sequence and for a batch of four. A counting global
//! allocator in this test binary checks it.
//! Needs `models/SmolLM2-135M-Instruct.Q4_1.gguf` (`tools/fetch_models.sh`); skips without it.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use yuanli_models::load::{load_pretrained_with, LoadOptions};
use yuanli_models::{Batch, CausalLm, Logits, SessionOpts};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decoding_a_token_allocates_nothing() {
    let Some(path) = common::smollm2() else { return };
    let m = load_pretrained_with(&path, LoadOptions::fast()).unwrap().model;
    let mut s = m.new_session(SessionOpts::tokens(256));
    let seqs: Vec<_> = (0..4).map(|_| s.add_sequence()).collect();
    let (mut batch, mut logits) = (Batch::new(), Vec::new());
    for &seq in &seqs {
        batch.add_seq(seq, 0, &[504, 3575, 282, 4649, 314], Logits::Last); // prefill
    }
    m.forward_batch(&mut s, &batch, &mut logits).unwrap();
    for n_seqs in [1, 4] {
        let mut step = |tok: u32| {
            batch.clear();
            for &seq in &seqs[..n_seqs] {
                batch.add(seq, s.len(seq).unwrap(), tok, true);
            }
            m.forward_batch(&mut s, &batch, &mut logits).unwrap();
        };
        step(7042); // the first decode step of this batch size warms the buffers
        let before = ALLOCS.load(Ordering::Relaxed);
        for tok in [30u32, 198, 198, 504, 2988, 314, 42, 216] {
            step(tok);
        }
        let during = ALLOCS.load(Ordering::Relaxed) - before;
        assert_eq!(during, 0, "{during} heap allocations while decoding 8 tokens of {n_seqs} sequences");
        assert_eq!(logits.len(), n_seqs * m.config.vocab_size);
    }
}
