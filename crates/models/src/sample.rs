//! Sampling the next token from logits, and the interface every model's inference engine
//! implements ([`CausalLm`]). Generation loops live in [`crate::generate`].

use crate::engine::{Batch, EngineError, Session, SessionOpts};
use yuanli_tensor::Rng;

/// A causal language model on the inference engine: one shared model, any number of
/// sequences, each step a [`Batch`] of their tokens (see [`crate::engine`]). `Send + Sync`:
/// threads may share one model, each with its own [`Session`].
pub trait CausalLm: Send + Sync {
    /// Real vocabulary size (logit rows have this many columns).
    fn vocab_size(&self) -> usize;
    /// Longest context the model accepts (positions per sequence).
    fn context_len(&self) -> usize;
    /// A session (paged KV cache and step scratch) for this model.
    fn new_session(&self, opts: SessionOpts) -> Session;
    /// Runs one step: every token of `batch` goes through the network after the positions its
    /// sequence already holds (their keys and values are cached), and `logits` receives `V`
    /// values for each token that asked for them, in batch order. On error nothing changed.
    fn forward_batch(&self, session: &mut Session, batch: &Batch, logits: &mut Vec<f32>) -> Result<(), EngineError>;
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

#[cfg(test)]
mod tests {
    use super::*;

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
