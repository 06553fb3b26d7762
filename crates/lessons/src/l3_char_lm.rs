//! Lesson 3: character-level language models on Shakespeare — a bigram model by counting, the
//! same bigram learned by gradient descent, and an MLP language model (Bengio et al., 2003).

use crate::LessonOpts;
use anyhow::Context;
use serde_json::json;
use yuanli_autograd::{no_grad, Var};
use yuanli_nn::{Embedding, Init, Linear, Module, ParamStore};
use yuanli_tensor::{Rng, Tensor};
use yuanli_train::{Adam, LrSchedule};

/// The text as ids over a sorted character vocabulary.
pub struct Corpus {
    /// Vocabulary: id → character.
    pub chars: Vec<char>,
    /// Training ids (first 90%).
    pub train: Vec<u32>,
    /// Validation ids (last 10%).
    pub val: Vec<u32>,
}

impl Corpus {
    /// Reads every `*.txt` file of `dir` (sorted by name) into one text.
    pub fn load(dir: &std::path::Path) -> anyhow::Result<Corpus> {
        let files = yuanli_data::files_with_extension(dir, "txt")
            .with_context(|| format!("lesson 3 needs the Shakespeare texts in {}", dir.display()))?;
        let mut text = String::new();
        for f in &files {
            text.push_str(&std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?);
        }
        anyhow::ensure!(text.len() > 1000, "{}: too little text ({} bytes)", dir.display(), text.len());
        let mut chars: Vec<char> = text.chars().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        chars.sort();
        let index: std::collections::HashMap<char, u32> =
            chars.iter().enumerate().map(|(i, &c)| (c, i as u32)).collect();
        let ids: Vec<u32> = text.chars().map(|c| index[&c]).collect();
        let cut = ids.len() * 9 / 10;
        Ok(Corpus { chars, train: ids[..cut].to_vec(), val: ids[cut..].to_vec() })
    }

    fn decode(&self, ids: &[u32]) -> String {
        ids.iter().map(|&i| self.chars[i as usize]).collect()
    }
}

// ANCHOR: counts
/// The bigram model by counting: `P(b | a) = (N[a, b] + α) / Σ_c (N[a, c] + α)`.
/// `α = 0` is the maximum-likelihood estimate; `α = 1` (add-one smoothing) keeps a little
/// probability for pairs never seen in training.
pub fn bigram_counts(train: &[u32], v: usize, alpha: f64) -> Vec<f64> {
    let mut n = vec![alpha; v * v];
    for w in train.windows(2) {
        n[w[0] as usize * v + w[1] as usize] += 1.0;
    }
    for row in n.chunks_mut(v) {
        let s: f64 = row.iter().sum();
        row.iter_mut().for_each(|p| *p /= s.max(f64::MIN_POSITIVE));
    }
    n
}

/// Mean negative log-likelihood of `ids` under a bigram table.
pub fn bigram_nll(p: &[f64], ids: &[u32], v: usize) -> f64 {
    let total: f64 = ids.windows(2).map(|w| -p[w[0] as usize * v + w[1] as usize].ln()).sum();
    total / (ids.len() - 1) as f64
}
// ANCHOR_END: counts

/// A model that scores the next character from the previous `context` ones.
trait NextChar {
    fn context(&self) -> usize;
    /// `ctx` is `(B, context)` ids → logits `(B, V)`.
    fn logits(&self, ctx: &Tensor) -> Var;
}

// ANCHOR: models
/// The bigram again, now as a table of logits `W (V, V)` learned by gradient descent:
/// `logits(next | a) = W[a]`. Its optimum is the count table's log-probabilities.
struct LearnedBigram {
    table: Embedding,
}

impl NextChar for LearnedBigram {
    fn context(&self) -> usize {
        1
    }
    fn logits(&self, ctx: &Tensor) -> Var {
        let b = ctx.dim(0);
        let v = self.table.weight.cols();
        self.table.forward(ctx).reshape(&[b, v])
    }
}

/// Bengio et al. (2003): embed each of the last `context` characters, concatenate, one tanh
/// hidden layer, then logits over the vocabulary.
struct MlpLm {
    context: usize,
    emb: Embedding,
    hidden: Linear,
    out: Linear,
}

impl NextChar for MlpLm {
    fn context(&self) -> usize {
        self.context
    }
    fn logits(&self, ctx: &Tensor) -> Var {
        let b = ctx.dim(0);
        let e = self.emb.forward(ctx); // (B, context, d)
        let flat = e.reshape(&[b, self.context * e.shape()[2]]); // (B, context·d)
        self.out.forward(&self.hidden.forward(&flat).tanh()) // (B, V)
    }
}
// ANCHOR_END: models

/// `(contexts (B, n), targets (B,))` for the windows starting at `starts`.
fn windows(ids: &[u32], n: usize, starts: &[usize]) -> (Tensor, Tensor) {
    let mut ctx = Vec::with_capacity(starts.len() * n);
    let mut tgt = Vec::with_capacity(starts.len());
    for &s in starts {
        ctx.extend_from_slice(&ids[s..s + n]);
        tgt.push(ids[s + n]);
    }
    (Tensor::new(ctx, &[starts.len(), n]), Tensor::new(tgt, &[starts.len()]))
}

// ANCHOR: train
fn train(model: &dyn NextChar, store: &ParamStore, ids: &[u32], steps: usize, batch: usize, lr: f64, rng: &mut Rng) {
    let n = model.context();
    let mut opt = Adam::adamw(0.9, 0.99, 1e-8, 0.0);
    let schedule = LrSchedule::WarmupCosine { max_lr: lr, min_lr: lr / 20.0, warmup: steps / 20, total: steps };
    for step in 0..steps {
        let starts: Vec<usize> = (0..batch).map(|_| rng.below(ids.len() - n)).collect();
        let (ctx, tgt) = windows(ids, n, &starts);
        store.zero_grad();
        let loss = model.logits(&ctx).cross_entropy(&tgt, None);
        loss.backward();
        opt.step(store, schedule.lr(step));
    }
}
// ANCHOR_END: train

/// Mean cross-entropy over every window of `ids` (no graph recorded).
fn eval_nll(model: &dyn NextChar, ids: &[u32]) -> f64 {
    let _g = no_grad();
    let n = model.context();
    let all: Vec<usize> = (0..ids.len() - n).collect();
    let mut total = 0.0;
    for chunk in all.chunks(8192) {
        let (ctx, tgt) = windows(ids, n, chunk);
        total += model.logits(&ctx).cross_entropy(&tgt, None).value().item() * chunk.len() as f64;
    }
    total / all.len() as f64
}

// ANCHOR: sample
/// Samples `len` characters after `seed_ids` from softmax(logits).
fn sample(model: &dyn NextChar, seed_ids: &[u32], len: usize, rng: &mut Rng) -> Vec<u32> {
    let _g = no_grad();
    let n = model.context();
    let mut out = seed_ids.to_vec();
    for _ in 0..len {
        let ctx = Tensor::new(out[out.len() - n..].to_vec(), &[1, n]);
        let p = model.logits(&ctx).value().softmax().to_vec::<f32>();
        out.push(draw(&p, rng));
    }
    out[seed_ids.len()..].to_vec()
}

fn draw(p: &[f32], rng: &mut Rng) -> u32 {
    let u = rng.uniform() as f32;
    let mut acc = 0.0;
    for (i, &pi) in p.iter().enumerate() {
        acc += pi;
        if u < acc {
            return i as u32;
        }
    }
    (p.len() - 1) as u32
}
// ANCHOR_END: sample

/// Runs lesson 3.
pub fn run(opts: &LessonOpts) -> anyhow::Result<serde_json::Value> {
    let say = |s: String| crate::say(opts, &s);
    let corpus = Corpus::load(&opts.data_dir.join("shakespeare"))?;
    let v = corpus.chars.len();
    say(format!("Lesson 3 — character language models on Shakespeare: {} training and {} validation characters, vocabulary {v}\n", corpus.train.len(), corpus.val.len()));
    let mut rng = Rng::new(opts.seed);
    let prompt: Vec<u32> = corpus.val[..8].to_vec();

    // 1. Counting.
    let p_mle = bigram_counts(&corpus.train, v, 0.0);
    let p = bigram_counts(&corpus.train, v, 1.0);
    let counts_train = bigram_nll(&p_mle, &corpus.train, v);
    let counts_val = bigram_nll(&p, &corpus.val, v);
    let mut sample_counts = vec![prompt[7]];
    for _ in 0..200 {
        let a = *sample_counts.last().expect("non-empty") as usize;
        let row: Vec<f32> = p[a * v..(a + 1) * v].iter().map(|&x| x as f32).collect();
        sample_counts.push(draw(&row, &mut rng));
    }
    say(format!("bigram by counting:          train loss {counts_train:.4} (maximum likelihood), validation loss {counts_val:.4} nats/char (add-one smoothed)"));

    // 2. The same model by gradient descent.
    let mut store = ParamStore::new();
    // ANCHOR: learned
    let bigram = LearnedBigram { table: Embedding::new(&mut store, "bigram", v, v, Init::Zeros, &mut rng)? };
    train(&bigram, &store, &corpus.train, 800, 4096, 0.5, &mut rng);
    let learned_train = eval_nll(&bigram, &corpus.train);
    let learned_val = eval_nll(&bigram, &corpus.val);
    // ANCHOR_END: learned
    say(format!(
        "bigram by gradient descent:  train loss {learned_train:.4} ({:+.4} from the counted optimum: the same model, found two ways), validation loss {learned_val:.4}",
        learned_train - counts_train
    ));

    // 3. A wider context through embeddings and a hidden layer.
    let mut store = ParamStore::new();
    // ANCHOR: mlp_config
    let (context, d, hidden) = (8, 24, 320);
    let mlp = MlpLm {
        context,
        emb: Embedding::new(&mut store, "emb", v, d, Init::Normal { std: 1.0 }, &mut rng)?,
        hidden: Linear::new(
            &mut store,
            "hidden",
            context * d,
            hidden,
            true,
            Init::XavierUniform { gain: 5.0 / 3.0 },
            &mut rng,
        )?,
        out: Linear::new(&mut store, "out", hidden, v, true, Init::Normal { std: 0.01 }, &mut rng)?,
    };
    train(&mlp, &store, &corpus.train, 6000, 256, 3e-3, &mut rng);
    // ANCHOR_END: mlp_config
    let mlp_val = eval_nll(&mlp, &corpus.val);
    say(format!("MLP, {context} characters of context: validation loss {mlp_val:.4} ({:.3} nats/char better than the bigram; {} parameters)\n", counts_val - mlp_val, store.num_params()));

    let show = |name: &str, ids: &[u32]| say(format!("--- sample from the {name} ---\n{}\n", corpus.decode(ids)));
    show("counted bigram", &sample_counts[1..]);
    show("learned bigram", &sample(&bigram, &prompt[7..], 200, &mut rng));
    show("MLP language model", &sample(&mlp, &prompt, 300, &mut rng));
    Ok(json!({
        "lesson": 3,
        "bigram_counts_val_loss": counts_val,
        "bigram_learned_val_loss": learned_val,
        "bigram_counts_train_loss": counts_train,
        "bigram_learned_train_loss": learned_train,
        "mlp_val_loss": mlp_val,
    }))
}
