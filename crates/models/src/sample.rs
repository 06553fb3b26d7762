//! Sampling the next token, and generation with the KV cache (token ids in, token ids out),
//! for any model that implements [`CausalLm`].

use crate::cache::KvCache;
use crate::gpt::Gpt;
use crate::llama::Llama;
use std::any::Any;
use std::ops::ControlFlow;
use std::time::Instant;
use yuanli_autograd::{no_grad, Var};
use yuanli_tensor::{Rng, Tensor};

/// A causal language model that processes a sequence incrementally: what generation and
/// perplexity need. The state (a KV cache) is opaque to callers.
pub trait CausalLm {
    /// Real vocabulary size (logit columns past it are padding and never sampled).
    fn vocab_size(&self) -> usize;
    /// Longest context the model accepts.
    fn context_len(&self) -> usize;
    /// A fresh state for a sequence of up to `n_ctx` positions.
    fn new_state(&self, n_ctx: usize) -> Box<dyn Any>;
    /// Feeds `tokens` after those already in `state` and writes into `out` the logits (`V` per
    /// row) of the fed tokens from index `logits_from` on.
    fn feed(&self, state: &mut dyn Any, tokens: &[u32], logits_from: usize, out: &mut Vec<f32>);
}

/// `feed` for the autograd models: one cached forward pass, then the wanted rows.
fn feed_autograd(
    forward_cached: impl Fn(&Tensor, &mut KvCache) -> Var,
    vocab: usize,
    state: &mut dyn Any,
    tokens: &[u32],
    logits_from: usize,
    out: &mut Vec<f32>,
) {
    let _g = no_grad();
    let cache = state.downcast_mut::<KvCache>().expect("feed: a state made by this model's new_state");
    let t = tokens.len();
    let logits = forward_cached(&Tensor::new(tokens.to_vec(), &[1, t]), cache);
    let rows = logits.value().narrow(1, logits_from, t - logits_from);
    let rows = if rows.dim(2) == vocab { rows } else { rows.narrow(2, 0, vocab) };
    *out = rows.contiguous().to_vec::<f32>();
}

impl CausalLm for Gpt {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn context_len(&self) -> usize {
        self.config.block_size
    }
    fn new_state(&self, _n_ctx: usize) -> Box<dyn Any> {
        Box::new(KvCache::default())
    }
    fn feed(&self, state: &mut dyn Any, tokens: &[u32], logits_from: usize, out: &mut Vec<f32>) {
        feed_autograd(|x, c| self.forward_cached(x, c), self.config.vocab_size, state, tokens, logits_from, out)
    }
}

impl CausalLm for Llama {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn context_len(&self) -> usize {
        self.config.max_seq_len
    }
    fn new_state(&self, _n_ctx: usize) -> Box<dyn Any> {
        Box::new(KvCache::default())
    }
    fn feed(&self, state: &mut dyn Any, tokens: &[u32], logits_from: usize, out: &mut Vec<f32>) {
        feed_autograd(|x, c| self.forward_cached(x, c), self.config.vocab_size, state, tokens, logits_from, out)
    }
}

/// How to turn logits into a token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `≤ 0` means greedy (argmax).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `p` (1 = all).
    pub top_p: f64,
    /// Drop tokens less likely than `min_p` times the most likely one (0 = off).
    pub min_p: f64,
    /// Repetition penalty (llama.cpp's): a logit `z` of a token among the last
    /// `repeat_last_n` becomes `z / r` if positive, `z · r` if negative (1 = off).
    pub repeat_penalty: f64,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, repeat_penalty: 1.0, repeat_last_n: 64 }
    }
}

impl SamplingParams {
    /// Argmax decoding.
    pub fn greedy() -> Self {
        SamplingParams { temperature: 0.0, ..Default::default() }
    }
}

/// Picks a token id from the first `vocab` logits.
pub fn pick(logits: &[f32], vocab: usize, p: SamplingParams, rng: &mut Rng) -> u32 {
    pick_after(logits, vocab, p, &[], rng)
}

/// Like [`pick`], with the repetition penalty applied to the tokens of `recent`.
pub fn pick_after(logits: &[f32], vocab: usize, p: SamplingParams, recent: &[u32], rng: &mut Rng) -> u32 {
    Sampler::default().pick(logits, vocab, p, recent, rng)
}

/// Picks tokens with reusable buffers: after the first call, no allocation per token, and
/// with `top_k > 0` only the `k` best logits are sorted (a selection finds them in O(V)).
#[derive(Clone, Debug, Default)]
pub struct Sampler {
    penalized: Vec<f32>,
    recent: Vec<u32>,
    order: Vec<u32>,
    probs: Vec<f64>,
}

impl Sampler {
    /// A token id from the first `vocab` logits, with the repetition penalty over `recent`.
    pub fn pick(&mut self, logits: &[f32], vocab: usize, p: SamplingParams, recent: &[u32], rng: &mut Rng) -> u32 {
        let mut logits = &logits[..vocab.min(logits.len())];
        if p.repeat_penalty != 1.0 && !recent.is_empty() {
            self.penalized.clear();
            self.penalized.extend_from_slice(logits);
            self.recent.clear();
            self.recent.extend_from_slice(&recent[recent.len().saturating_sub(p.repeat_last_n)..]);
            self.recent.sort_unstable();
            self.recent.dedup();
            let (r, n) = (p.repeat_penalty as f32, self.penalized.len());
            for &t in self.recent.iter().filter(|&&t| (t as usize) < n) {
                let z = &mut self.penalized[t as usize];
                *z = if *z > 0.0 { *z / r } else { *z * r };
            }
            logits = &self.penalized;
        }
        if p.temperature <= 0.0 {
            return logits
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                .0 as u32;
        }
        // Candidates in decreasing logit order (ties: lower id first).
        let desc = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
        let order = &mut self.order;
        order.clear();
        order.extend(0..logits.len() as u32);
        if p.top_k > 0 && p.top_k < order.len() {
            order.select_nth_unstable_by(p.top_k - 1, desc);
            order.truncate(p.top_k);
        }
        order.sort_unstable_by(desc);
        let m = logits[order[0] as usize] as f64;
        let probs = &mut self.probs;
        probs.clear();
        probs.extend(order.iter().map(|&i| ((logits[i as usize] as f64 - m) / p.temperature).exp()));
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= z);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            keep = probs
                .iter()
                .position(|&x| {
                    acc += x;
                    acc >= p.top_p
                })
                .map_or(keep, |k| k + 1);
        }
        if p.min_p > 0.0 {
            // probs are sorted: the first is the largest
            keep = keep.min(probs.iter().take_while(|&&x| x >= p.min_p * probs[0]).count().max(1));
        }
        probs.truncate(keep);
        order.truncate(keep);
        let z: f64 = probs.iter().sum();
        let u = rng.uniform() * z;
        let mut acc = 0.0;
        for (i, &pi) in probs.iter().enumerate() {
            acc += pi;
            if u < acc {
                return order[i];
            }
        }
        order[probs.len() - 1]
    }
}

/// What a generation produced, and how fast.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Generation {
    /// The generated token ids (the prompt not included).
    pub tokens: Vec<u32>,
    /// Seconds spent on the prompt (prefill), up to the first sampled token.
    pub prefill_secs: f64,
    /// Seconds spent on the tokens after the first.
    pub decode_secs: f64,
}

impl Generation {
    /// Prompt tokens processed per second.
    pub fn prefill_tok_s(&self, prompt_len: usize) -> f64 {
        if self.tokens.is_empty() {
            return 0.0; // nothing was generated, so the prompt was never run
        }
        prompt_len as f64 / self.prefill_secs.max(1e-9)
    }

    /// Generated tokens per second after the first.
    pub fn decode_tok_s(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode_secs.max(1e-9)
    }
}

/// Generates up to `n` tokens after `prompt` (non-empty), calling `emit` with each; `emit`
/// returns `ControlFlow::Break` to stop (an end-of-sequence token, a stop string). The prompt
/// is prefilled in one pass; each new token then costs one cached position. When the context
/// fills up, the state is rebuilt from the last half of it.
pub fn generate(
    model: &dyn CausalLm,
    prompt: &[u32],
    n: usize,
    params: SamplingParams,
    seed: u64,
    emit: &mut dyn FnMut(u32) -> ControlFlow<()>,
) -> Generation {
    let block = model.context_len();
    let vocab = model.vocab_size();
    let n_ctx = (prompt.len() + n).min(block);
    let mut rng = Rng::new(seed);
    let mut ids = prompt.to_vec();
    let mut state = model.new_state(n_ctx);
    let mut in_state = 0;
    let mut pending: Vec<u32> = prompt[prompt.len().saturating_sub(block)..].to_vec();
    let mut logits = Vec::with_capacity(vocab);
    let mut sampler = Sampler::default();
    let mut out = Generation { tokens: Vec::with_capacity(n), ..Default::default() };
    let start = Instant::now();
    for i in 0..n {
        if in_state + pending.len() > n_ctx {
            state = model.new_state(n_ctx);
            pending = ids[ids.len() - n_ctx / 2..].to_vec();
            in_state = 0;
        }
        model.feed(state.as_mut(), &pending, pending.len() - 1, &mut logits);
        in_state += pending.len();
        pending.clear();
        let next = sampler.pick(&logits[..vocab], vocab, params, &ids, &mut rng);
        if i == 0 {
            out.prefill_secs = start.elapsed().as_secs_f64();
        }
        ids.push(next);
        out.tokens.push(next);
        pending.push(next);
        if emit(next).is_break() {
            break;
        }
    }
    out.decode_secs = start.elapsed().as_secs_f64() - out.prefill_secs;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GptConfig;
    use yuanli_nn::ParamStore;

    #[test]
    fn a_fixed_seed_reproduces_the_output_and_greedy_is_deterministic() {
        let cfg =
            GptConfig { vocab_size: 20, block_size: 8, n_layer: 1, n_head: 2, n_embd: 16, dropout: 0.0, bias: true };
        let mut store = ParamStore::new();
        let m = Gpt::new(cfg, &mut store, &mut Rng::new(1)).unwrap();
        let p = SamplingParams { temperature: 1.0, top_k: 5, top_p: 0.9, ..Default::default() };
        let go =
            |prompt: &[u32], n, p, seed| generate(&m, prompt, n, p, seed, &mut |_| ControlFlow::Continue(())).tokens;
        let a = go(&[1, 2, 3], 20, p, 42);
        assert_eq!(a, go(&[1, 2, 3], 20, p, 42));
        assert_eq!(a.len(), 20, "max tokens respected, past the context length");
        assert!(a.iter().all(|&t| t < 20), "never samples a padded-vocabulary id");
        let greedy = SamplingParams::greedy();
        assert_eq!(go(&[4], 6, greedy, 1), go(&[4], 6, greedy, 2));
        let mut seen = 0;
        let stopped = generate(&m, &[4], 6, greedy, 1, &mut |_| {
            seen += 1;
            if seen == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert_eq!(stopped.tokens.len(), 3, "emit can stop the generation");
    }

    #[test]
    fn top_k_by_selection_equals_a_full_sort() {
        let mut rng = Rng::new(5);
        // Ties on purpose: logits drawn from a few values.
        let logits: Vec<f32> = (0..300).map(|_| (rng.below(7) as f32) * 0.5).collect();
        let p = SamplingParams { temperature: 0.9, top_k: 11, top_p: 0.95, ..Default::default() };
        let reference = |rng: &mut Rng| {
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
            order.truncate(p.top_k);
            let m = logits[order[0]] as f64;
            let mut probs: Vec<f64> = order.iter().map(|&i| ((logits[i] as f64 - m) / p.temperature).exp()).collect();
            let z: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|x| *x /= z);
            let mut acc = 0.0;
            let keep = probs.iter().position(|&x| {
                acc += x;
                acc >= p.top_p
            });
            let keep = keep.map_or(probs.len(), |k| k + 1);
            let z: f64 = probs[..keep].iter().sum();
            let u = rng.uniform() * z;
            let mut acc = 0.0;
            for i in 0..keep {
                acc += probs[i];
                if u < acc {
                    return order[i] as u32;
                }
            }
            order[keep - 1] as u32
        };
        let (mut r1, mut r2) = (Rng::new(9), Rng::new(9));
        let mut sampler = Sampler::default();
        for _ in 0..200 {
            assert_eq!(sampler.pick(&logits, 300, p, &[], &mut r1), reference(&mut r2));
        }
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = [0.1f32, 2.0, -1.0, 1.5];
        let mut rng = Rng::new(0);
        for _ in 0..20 {
            assert_eq!(pick(&logits, 4, SamplingParams { top_k: 1, ..Default::default() }, &mut rng), 1);
            // min-p 0.9 keeps only tokens at least 0.9 times as likely as the best: just id 1
            assert_eq!(pick(&logits, 4, SamplingParams { min_p: 0.9, ..Default::default() }, &mut rng), 1);
        }
        // A strong repetition penalty moves greedy off a token seen recently.
        let p = SamplingParams { repeat_penalty: 2.0, ..SamplingParams::greedy() };
        assert_eq!(pick_after(&logits, 4, p, &[1], &mut rng), 3);
        assert_eq!(pick_after(&logits, 4, p, &[2], &mut rng), 1);
    }
}
