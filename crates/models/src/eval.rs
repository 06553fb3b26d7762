//! Evaluating a language model on text: perplexity.

use crate::engine::{Batch, EngineError, SessionOpts};
use crate::sample::CausalLm;

/// The result of a perplexity run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Perplexity {
    /// `exp(total NLL / tokens scored)`.
    pub ppl: f64,
    /// Summed negative log-likelihood in nats.
    pub nll: f64,
    /// Tokens scored.
    pub count: usize,
    /// Summed NLL of each chunk.
    pub chunk_nll: Vec<f64>,
}

/// Perplexity as llama.cpp's `perplexity` tool measures it: `ids` is cut into chunks of `ctx`
/// tokens, each evaluated from an empty context, and only the predictions made from positions
/// `ctx/2 .. ctx−1` are scored — so every scored token sees at least `ctx/2` tokens of
/// context and none is scored twice. For a model that starts every text with a BOS token,
/// `ids` starts with it and `bos` is it: each chunk's first token is replaced by BOS, as
/// llama.cpp does. At most `max_chunks` chunks (0 = all); `on_chunk` hears after each one
/// (chunk index, running perplexity).
pub fn perplexity(
    model: &dyn CausalLm,
    ids: &[u32],
    bos: Option<u32>,
    ctx: usize,
    max_chunks: usize,
    on_chunk: &mut dyn FnMut(usize, f64),
) -> Result<Perplexity, EngineError> {
    perplexity_with(model, ids, bos, ctx, max_chunks, SessionOpts::tokens(ctx.max(1)), on_chunk)
}

/// [`perplexity`] in a session made with `opts` (its `max_tokens` raised to `ctx` if lower):
/// e.g. with [`SessionOpts::ggml_activations`], to reproduce llama.cpp's figure.
pub fn perplexity_with(
    model: &dyn CausalLm,
    ids: &[u32],
    bos: Option<u32>,
    ctx: usize,
    max_chunks: usize,
    opts: SessionOpts,
    on_chunk: &mut dyn FnMut(usize, f64),
) -> Result<Perplexity, EngineError> {
    let v = model.vocab_size();
    let mut n_chunks = ids.len() / ctx.max(1);
    if max_chunks > 0 {
        n_chunks = n_chunks.min(max_chunks);
    }
    let mut out = Perplexity::default();
    let mut logits = Vec::new();
    let mut session = model.new_session(SessionOpts { max_tokens: opts.max_tokens.max(ctx.max(1)), ..opts });
    let mut batch = Batch::new();
    for c in 0..n_chunks {
        let chunk = &ids[c * ctx..(c + 1) * ctx];
        let first = ctx / 2;
        let seq = session.add_sequence();
        batch.clear();
        for (j, &t) in chunk.iter().enumerate() {
            batch.add(seq, j, if j == 0 { bos.unwrap_or(t) } else { t }, j >= first);
        }
        model.forward_batch(&mut session, &batch, &mut logits)?;
        session.remove(seq)?;
        let mut nll = 0.0;
        for j in first..ctx - 1 {
            let row = &logits[(j - first) * v..(j - first + 1) * v];
            // −log softmax(row)[next] = logsumexp(row) − row[next], in f64
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let lse = m + row.iter().map(|&z| (z as f64 - m).exp()).sum::<f64>().ln();
            nll += lse - row[chunk[j + 1] as usize] as f64;
            out.count += 1;
        }
        out.nll += nll;
        out.chunk_nll.push(nll);
        out.ppl = (out.nll / out.count as f64).exp();
        on_chunk(c, out.ppl);
    }
    Ok(out)
}
