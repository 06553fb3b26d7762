//! The fast decoding path allocates nothing per generated token: after a warm-up, feeding one
//! token at a time (KV cache, scratch buffers, quantized activations, logits all reused) makes
//! zero heap allocations. A counting global allocator in this test binary checks it.
//! Needs `models/SmolLM2-135M-Instruct.Q4_1.gguf` (`tools/fetch_models.sh`); skips without it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use yuanli_models::{CausalLm, QuantModel};

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
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!("SKIPPED: {} is absent; run tools/fetch_models.sh to fetch it", path.display());
        return;
    }
    let m = QuantModel::open(&path, 2).unwrap();
    let mut state = m.model.new_state(64);
    let mut logits = Vec::new();
    m.model.feed(state.as_mut(), &[504, 3575, 282, 4649, 314], 4, &mut logits); // prefill
    m.model.feed(state.as_mut(), &[7042], 0, &mut logits); // first decode step warms the buffers
    let before = ALLOCS.load(Ordering::Relaxed);
    for tok in [30u32, 198, 198, 504, 2988, 314, 42, 216] {
        m.model.feed(state.as_mut(), &[tok], 0, &mut logits);
    }
    let during = ALLOCS.load(Ordering::Relaxed) - before;
    assert_eq!(during, 0, "{during} heap allocations while decoding 8 tokens");
    assert_eq!(logits.len(), m.model.config.vocab_size);
}
