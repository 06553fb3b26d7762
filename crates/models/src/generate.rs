//! Generation on the inference engine (token ids in, token ids out): one sequence
//! ([`generate`]) or many decoded together, each with its own sampling ([`generate_batch`]).
//! Text, stop strings and chat templates are a layer above (`yuanli-infer`).

use crate::engine::{Batch, EngineError, Logits, SeqId, Session, SessionOpts};
use crate::sample::{CausalLm, Sampler, SamplingParams};
use std::ops::ControlFlow;
use std::time::Instant;
use yuanli_tensor::Rng;

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
/// is prefilled in one step; each new token then costs one cached position. When the context
/// fills up, the sequence is rebuilt from the last half of it.
pub fn generate(
    model: &dyn CausalLm,
    prompt: &[u32],
    n: usize,
    params: SamplingParams,
    seed: u64,
    emit: &mut dyn FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation, EngineError> {
    let n_ctx = (prompt.len() + n).min(model.context_len()).max(1);
    let mut session = model.new_session(SessionOpts::tokens(n_ctx));
    let seq = session.add_sequence();
    let pending = &prompt[prompt.len().saturating_sub(n_ctx)..];
    run(model, &mut session, seq, pending, prompt, n, params, seed, Some(n_ctx), emit)
}

/// Generates up to `n` tokens for sequence `seq` of `session`, whose cache already holds
/// `history[..len]` (the sequence's tokens so far): `history[len..]` (non-empty) is fed first.
/// Stops at the model's context (no sliding window): the caller (a chat) decides what to drop.
pub fn generate_in(
    model: &dyn CausalLm,
    session: &mut Session,
    seq: SeqId,
    history: &[u32],
    n: usize,
    params: SamplingParams,
    seed: u64,
    emit: &mut dyn FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation, EngineError> {
    let len = session.len(seq)?;
    let n = n.min(model.context_len().saturating_sub(history.len()) + 1);
    run(model, session, seq, &history[len.min(history.len())..], history, n, params, seed, None, emit)
}

/// The generation loop: feed `pending`, sample, feed the sample, …; with `slide = Some(n_ctx)`
/// the sequence is rebuilt from the last half of its tokens when it would pass `n_ctx`.
#[allow(clippy::too_many_arguments)]
fn run(
    model: &dyn CausalLm,
    session: &mut Session,
    mut seq: SeqId,
    pending: &[u32],
    history: &[u32],
    n: usize,
    params: SamplingParams,
    seed: u64,
    slide: Option<usize>,
    emit: &mut dyn FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation, EngineError> {
    let mut rng = Rng::new(seed);
    let mut ids = history.to_vec();
    let mut pending = pending.to_vec();
    let mut batch = Batch::new();
    let mut logits = Vec::with_capacity(model.vocab_size());
    let mut sampler = Sampler::default();
    let mut out = Generation { tokens: Vec::with_capacity(n), ..Default::default() };
    let start = Instant::now();
    for i in 0..n {
        let mut pos = session.len(seq)?;
        if let Some(n_ctx) = slide.filter(|&c| pos + pending.len() > c) {
            session.remove(seq)?;
            seq = session.add_sequence();
            pending = ids[ids.len() - n_ctx / 2..].to_vec();
            pos = 0;
        }
        batch.clear();
        batch.add_seq(seq, pos, &pending, Logits::Last);
        model.forward_batch(session, &batch, &mut logits)?;
        pending.clear();
        let next = sampler.pick(&logits, model.vocab_size(), params, &ids, &mut rng);
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
    Ok(out)
}

/// One sequence of a [`generate_batch`].
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// The prompt (non-empty).
    pub prompt: &'a [u32],
    /// Tokens to generate at most (fewer if the context ends first).
    pub max_tokens: usize,
    /// How to sample.
    pub params: SamplingParams,
    /// Its own random seed.
    pub seed: u64,
}

/// Generates for every request at once: all prompts are prefilled in one step, then every
/// step decodes one token of each unfinished sequence in one batch — each weight is read once
/// per step for all of them. `emit(request, token)` hears each token as it is sampled and may
/// stop that request. Each request's result equals what [`generate`] gives it alone (up to
/// the float rounding of a batched matrix product; greedy tokens agree).
///
/// Requests with the same prompt (several samples of one question, as GRPO draws them) share
/// it: the prompt is prefilled once and its sequence forked, the copies sharing its cached
/// keys and values until each writes its own tokens.
///
/// A sequence that reaches the model's context stops there (no sliding window here).
pub fn generate_batch(
    model: &dyn CausalLm,
    requests: &[Request<'_>],
    emit: &mut dyn FnMut(usize, u32) -> ControlFlow<()>,
) -> Result<Vec<Generation>, EngineError> {
    let ctx = model.context_len();
    let vocab = model.vocab_size();
    let block = crate::engine::DEFAULT_BLOCK_SIZE;
    let lens: Vec<usize> =
        requests.iter().map(|r| (r.prompt.len() + r.max_tokens).min(ctx).next_multiple_of(block)).collect();
    let mut session = model.new_session(SessionOpts::tokens(lens.iter().sum::<usize>().max(1)));
    struct Live {
        seq: SeqId,
        rng: Rng,
        sampler: Sampler,
        ids: Vec<u32>,
        budget: usize,
        done: bool,
    }
    let mut live: Vec<Live> = requests
        .iter()
        .map(|r| Live {
            seq: session.add_sequence(),
            rng: Rng::new(r.seed),
            sampler: Sampler::default(),
            ids: r.prompt.to_vec(),
            budget: r.max_tokens.min(ctx.saturating_sub(r.prompt.len())),
            done: r.max_tokens == 0 || r.prompt.len() >= ctx,
        })
        .collect();
    let mut out: Vec<Generation> = requests.iter().map(|_| Generation::default()).collect();
    let mut batch = Batch::new();
    let mut logits = Vec::new();
    let mut order: Vec<usize> = Vec::with_capacity(requests.len());
    // `leader[i]`: the first live request with request i's prompt, which prefills it.
    let mut leader: Vec<usize> = (0..requests.len()).collect();
    let mut first_with: std::collections::HashMap<&[u32], usize> = std::collections::HashMap::new();
    for (i, (l, r)) in live.iter().zip(requests).enumerate() {
        if !l.done {
            leader[i] = *first_with.entry(r.prompt).or_insert(i);
            if leader[i] == i {
                batch.add_seq(l.seq, 0, r.prompt, Logits::Last);
            }
        }
    }
    order.extend((0..requests.len()).filter(|&i| !live[i].done));
    // The logits row of each request in `order` after the prefill: its leader's.
    let mut row_of = vec![0; requests.len()];
    for (row, &i) in order.iter().filter(|&&i| leader[i] == i).enumerate() {
        row_of[i] = row;
    }
    let mut rows: Vec<usize> = order.iter().map(|&i| row_of[leader[i]]).collect();
    let start = Instant::now();
    let mut first = true;
    while !order.is_empty() {
        model.forward_batch(&mut session, &batch, &mut logits)?;
        if first {
            for &i in order.iter().filter(|&&i| leader[i] != i) {
                session.remove(live[i].seq)?;
                live[i].seq = session.fork(live[leader[i]].seq)?;
            }
        }
        let now = start.elapsed().as_secs_f64();
        batch.clear();
        let mut next_order = Vec::with_capacity(order.len());
        for (&row, &i) in rows.iter().zip(order.iter()) {
            let l = &mut live[i];
            let r = &requests[i];
            let tok = l.sampler.pick(&logits[row * vocab..(row + 1) * vocab], vocab, r.params, &l.ids, &mut l.rng);
            if first {
                out[i].prefill_secs = now;
            }
            l.ids.push(tok);
            out[i].tokens.push(tok);
            out[i].decode_secs = now - out[i].prefill_secs;
            l.budget -= 1;
            if emit(i, tok).is_break() || l.budget == 0 {
                l.done = true;
                session.remove(l.seq)?;
            } else {
                batch.add(l.seq, l.ids.len() - 1, tok, true);
                next_order.push(i);
            }
        }
        first = false;
        order = next_order;
        rows = (0..order.len()).collect();
    }
    Ok(out)
}

/// Feeds `tokens` to `seq` after the positions it holds and returns the logits of the tokens
/// from index `logits_from` on (`V` per row) in `out`: a one-sequence step, for scoring.
pub fn feed(
    model: &dyn CausalLm,
    session: &mut Session,
    seq: SeqId,
    tokens: &[u32],
    logits_from: usize,
    out: &mut Vec<f32>,
) -> Result<(), EngineError> {
    let pos0 = session.len(seq)?;
    let mut batch = Batch::new();
    for (i, &t) in tokens.iter().enumerate() {
        batch.add(seq, pos0 + i, t, i >= logits_from);
    }
    model.forward_batch(session, &batch, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Gpt, GptConfig};
    use yuanli_nn::ParamStore;

    fn tiny() -> Gpt {
        let cfg = GptConfig {
            vocab_size: 20,
            block_size: 8,
            n_layer: 1,
            n_head: 2,
            n_embd: 16,
            dropout: 0.0,
            bias: true,
            positions: Default::default(),
        };
        Gpt::new(cfg, &mut ParamStore::new(), &mut Rng::new(1)).unwrap()
    }

    #[test]
    fn a_fixed_seed_reproduces_the_output_and_greedy_is_deterministic() {
        let m = tiny();
        let p = SamplingParams { temperature: 1.0, top_k: 5, top_p: 0.9, ..Default::default() };
        let go = |prompt: &[u32], n, p, seed| {
            generate(&m, prompt, n, p, seed, &mut |_| ControlFlow::Continue(())).unwrap().tokens
        };
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
        })
        .unwrap();
        assert_eq!(stopped.tokens.len(), 3, "emit can stop the generation");
        // A prompt token outside the vocabulary is an error, not a panic.
        let bad = generate(&m, &[25], 2, greedy, 1, &mut |_| ControlFlow::Continue(()));
        assert!(matches!(bad, Err(EngineError::TokenOutOfRange { id: 25, vocab: 20 })), "{bad:?}");
    }

    #[test]
    fn a_batch_of_requests_equals_each_request_alone() {
        let m = tiny();
        // The first prompt three times (three samples of one question, sharing its prefill:
        // one of them stops after its first token, right after the fork).
        let prompts: [&[u32]; 5] = [&[1, 2, 3], &[7], &[4, 4, 9, 11, 2], &[1, 2, 3], &[1, 2, 3]];
        let params = SamplingParams { temperature: 0.8, top_k: 8, ..Default::default() };
        let reqs: Vec<Request<'_>> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| Request { prompt: p, max_tokens: [2, 3, 4, 1, 5][i], params, seed: 10 + i as u64 })
            .collect();
        let batched = generate_batch(&m, &reqs, &mut |_, _| ControlFlow::Continue(())).unwrap();
        for (r, g) in reqs.iter().zip(&batched) {
            let alone = generate(&m, r.prompt, r.max_tokens, r.params, r.seed, &mut |_| ControlFlow::Continue(()));
            // A batched sequence stops at the context (8) instead of sliding its window.
            let n = r.max_tokens.min(8 - r.prompt.len());
            assert_eq!(g.tokens, alone.unwrap().tokens[..n]);
        }
        assert_eq!(batched[2].tokens.len(), 3, "5 prompt tokens + 3 fill the context of 8");
    }
}
