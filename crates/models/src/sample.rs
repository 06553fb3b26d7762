//! Sampling the next token, and generation with the KV cache (token ids in, token ids out).

use crate::gpt::{Gpt, KvCache};
use yuanli_autograd::no_grad;
use yuanli_tensor::{Rng, Tensor};

/// How to turn logits into a token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; `≤ 0` means greedy (argmax).
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `p` (1 = all).
    pub top_p: f64,
}

/// Picks a token id from the first `vocab` logits.
pub fn pick(logits: &[f32], vocab: usize, p: SamplingParams, rng: &mut Rng) -> u32 {
    let logits = &logits[..vocab.min(logits.len())];
    if p.temperature <= 0.0 {
        return logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
            as u32;
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if p.top_k > 0 {
        order.truncate(p.top_k);
    }
    let m = logits[order[0]] as f64;
    let mut probs: Vec<f64> = order.iter().map(|&i| ((logits[i] as f64 - m) / p.temperature).exp()).collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= z);
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs.iter().position(|&x| {
            acc += x;
            acc >= p.top_p
        });
        let keep = keep.map_or(probs.len(), |k| k + 1);
        probs.truncate(keep);
        order.truncate(keep);
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= z);
    }
    let u = rng.uniform();
    let mut acc = 0.0;
    for (i, &pi) in probs.iter().enumerate() {
        acc += pi;
        if u < acc {
            return order[i] as u32;
        }
    }
    order[probs.len() - 1] as u32
}

/// Generates `n` tokens after `prompt` (non-empty, at most `block_size` ids), calling `emit`
/// with each. The prompt is prefilled in one pass; each new token then costs one cached
/// position. When the context fills up, the cache is rebuilt from the last half of it.
pub fn generate(
    model: &Gpt,
    prompt: &[u32],
    n: usize,
    params: SamplingParams,
    seed: u64,
    emit: &mut dyn FnMut(u32),
) -> Vec<u32> {
    let _g = no_grad();
    let block = model.config.block_size;
    let vocab = model.config.vocab_size;
    let mut rng = Rng::new(seed);
    let mut ids = prompt.to_vec();
    let mut cache = KvCache::default();
    let mut pending: Vec<u32> = prompt.to_vec();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if cache.len() + pending.len() > block {
            cache = KvCache::default();
            pending = ids[ids.len() - block / 2..].to_vec();
        }
        let t = pending.len();
        let logits = model.forward_cached(&Tensor::new(std::mem::take(&mut pending), &[1, t]), &mut cache);
        let last = logits.value().narrow(1, t - 1, 1).to_vec::<f32>();
        let next = pick(&last, vocab, params, &mut rng);
        ids.push(next);
        out.push(next);
        pending.push(next);
        emit(next);
    }
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
        let p = SamplingParams { temperature: 1.0, top_k: 5, top_p: 0.9 };
        let a = generate(&m, &[1, 2, 3], 20, p, 42, &mut |_| {});
        assert_eq!(a, generate(&m, &[1, 2, 3], 20, p, 42, &mut |_| {}));
        assert_eq!(a.len(), 20, "max tokens respected, past the context length");
        assert!(a.iter().all(|&t| t < 20), "never samples a padded-vocabulary id");
        let greedy = SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0 };
        assert_eq!(generate(&m, &[4], 6, greedy, 1, &mut |_| {}), generate(&m, &[4], 6, greedy, 2, &mut |_| {}));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let logits = [0.1f32, 2.0, -1.0, 1.5];
        let mut rng = Rng::new(0);
        for _ in 0..20 {
            assert_eq!(pick(&logits, 4, SamplingParams { temperature: 1.0, top_k: 1, top_p: 1.0 }, &mut rng), 1);
        }
    }
}
