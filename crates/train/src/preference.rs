//! Learning from preference pairs on a LoRA adapter: a Bradley–Terry reward model
//! (`yuanli rm`) and direct preference optimisation (`yuanli dpo`) — one loop, two objectives.
//!
//! Data is JSONL in TRL's preference format, one pair per line:
//!
//! ```text
//! {"prompt": "…", "chosen": "…", "rejected": "…"}
//! {"prompt": [{"role": "user", "content": "…"}], "chosen": [{"role": "assistant", "content": "…"}], "rejected": […]}
//! ```
//!
//! Each answer is rendered after its prompt with the model's chat template, and only the
//! answer's tokens (its end-of-turn marker included) enter `log π(y|x)`, as in SFT's mask.
//!
//! **The reward model** is the base with the adapter and a scalar head `score (1, C)` on the
//! final hidden state of the answer's last token (its end-of-turn marker), as Hugging Face's
//! sequence-classification models pool; trained on `−log σ(r_c − r_r)`.
//!
//! **DPO's reference is the base itself.** The policy is the frozen base plus a LoRA adapter
//! whose `B` starts at zero, so at step 0 policy and reference are the same model, and the
//! reference's log-probabilities at any later step are the same network with the adapter
//! switched off ([`Pass::Base`]) — no second copy of the weights, as TRL does for a PEFT model.
//!
//! **What is measured on held-out pairs.** `logp accuracy`: how often the policy gives the
//! chosen answer the higher log-probability (the starting model's figure is its step-0 value);
//! `reward accuracy` and `margin`: how often, and by how much, the implicit reward
//! `β·log(π/π_ref)` of the chosen answer exceeds the rejected one's (0 at step 0, where
//! `π = π_ref`); and the DPO loss itself.

use crate::align::{dpo_loss, reward_loss, DpoKind, PairLogps};
use crate::optim::Adam;
use crate::schedule::LrSchedule;
use crate::sft::{
    batch, formatter, load_adapter_checkpoint, load_for_lora, next_batch, read_jsonl, replace_dir,
    save_adapter_checkpoint, Example, FinetuneError, MetricsLog, SftError, SftState, IGNORE, ROLES,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use yuanli_autograd::{no_grad, Var};
use yuanli_models::llama::{Llama, Pass};
use yuanli_models::load::{load_pretrained_with, LoadOptions, Pretrained};
use yuanli_models::peft::{save_adapter, Adapter};
use yuanli_models::Message;
use yuanli_nn::{LoraConfig, ParamKind};
use yuanli_tensor::{Rng, Tensor};

/// One preference: a prompt (the conversation before the answer) and two answers to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    /// The messages before the answer.
    pub prompt: Vec<Message>,
    /// The preferred answer.
    pub chosen: String,
    /// The dispreferred answer.
    pub rejected: String,
}

/// Reads a JSONL file of preference pairs; errors name the file and line.
pub fn read_pairs(path: &Path) -> Result<Vec<Pair>, SftError> {
    read_jsonl(path, "preference pairs", pair)
}

/// The `prompt` of a JSONL record: a string (one user turn) or a list of messages; `needs`
/// names the record's fields for the error when it is missing. Shared by preference pairs
/// and GRPO's problems.
pub(crate) fn prompt_of(v: &serde_json::Value, needs: &str) -> Result<Vec<Message>, String> {
    Ok(match v.get("prompt") {
        Some(serde_json::Value::String(s)) => vec![Message::new("user", s)],
        Some(serde_json::Value::Array(arr)) => {
            let mut msgs = Vec::with_capacity(arr.len());
            for (j, m) in arr.iter().enumerate() {
                let field = |k: &str| {
                    m.get(k)
                        .and_then(|x| x.as_str())
                        .ok_or(format!("prompt message {j}: \"{k}\" is missing or not a string"))
                };
                let role = field("role")?;
                if !ROLES.contains(&role) {
                    return Err(format!("prompt message {j}: unknown role {role:?} (roles are {})", ROLES.join(", ")));
                }
                msgs.push(Message::new(role, field("content")?));
            }
            if msgs.is_empty() {
                return Err("\"prompt\" is an empty conversation".into());
            }
            msgs
        }
        Some(_) => return Err("\"prompt\" is neither a string nor a list of messages".into()),
        None => return Err(format!("\"prompt\" is missing (a record needs {needs})")),
    })
}

fn pair(v: &serde_json::Value) -> Result<Pair, String> {
    let prompt = prompt_of(v, "\"prompt\", \"chosen\" and \"rejected\"")?;
    let answer = |k: &str| -> Result<String, String> {
        match v.get(k) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(serde_json::Value::Array(arr)) => match arr.as_slice() {
                [m] if m.get("role").and_then(|r| r.as_str()) == Some("assistant") => m
                    .get("content")
                    .and_then(|c| c.as_str())
                    .map(str::to_string)
                    .ok_or(format!("\"{k}\": the message's \"content\" is missing or not a string")),
                _ => Err(format!("\"{k}\" must be a string or one assistant message")),
            },
            _ => Err(format!("\"{k}\" is missing (a pair needs \"prompt\", \"chosen\" and \"rejected\")")),
        }
    };
    Ok(Pair { prompt, chosen: answer("chosen")?, rejected: answer("rejected")? })
}

/// What a run on preference pairs optimises.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Objective {
    /// A reward model: the adapter plus a scalar head, on the Bradley–Terry loss.
    Reward {
        /// TRL's `center_rewards_coefficient`: `c·mean (r_c + r_r)²` added (None: off).
        center: Option<f64>,
    },
    /// DPO with this loss and β.
    Dpo {
        /// Which preference loss.
        kind: DpoKind,
        /// β: the strength of the KL regularisation toward the reference (TRL's default 0.1).
        beta: f64,
    },
}

/// A run on preference pairs.
#[derive(Clone, Debug)]
pub struct PairOptions {
    /// The base model (`.gguf` or Hugging Face directory; it needs a chat template).
    pub model: PathBuf,
    /// Training pairs (JSONL).
    pub data: PathBuf,
    /// Held-out pairs (JSONL).
    pub eval_data: PathBuf,
    /// Where `metrics.jsonl` and `adapter/` go.
    pub out_dir: PathBuf,
    /// The adapter.
    pub lora: LoraConfig,
    /// Target modules.
    pub targets: Vec<String>,
    /// QLoRA: the base kept block-quantized.
    pub quantized_base: bool,
    /// The reward model or DPO.
    pub objective: Objective,
    /// Peak learning rate (AdamW, warm-up then cosine).
    pub lr: f64,
    /// Optimizer steps.
    pub steps: usize,
    /// Pairs per step.
    pub batch_pairs: usize,
    /// Longest rendered answer-with-prompt in tokens; longer pairs are skipped (counted).
    pub max_len: usize,
    /// Held-out evaluation every this many steps (and at the end).
    pub eval_interval: usize,
    /// Held-out pairs evaluated (the first ones; 0 = all).
    pub eval_pairs: usize,
    /// Seed of the order, the dropout and the adapters' initialisation.
    pub seed: u64,
    /// Continue from `out_dir/checkpoint` (written at every held-out evaluation and when the
    /// run is stopped) instead of starting over: the same losses as an uninterrupted run.
    pub resume: bool,
}

/// The options a checkpoint is only valid for (everything but the output and `resume`).
fn fingerprint(o: &PairOptions) -> String {
    format!(
        "pairs model={} data={} eval_data={} lora={:?} targets={:?} quantized_base={} objective={:?} lr={} steps={} batch_pairs={} max_len={} eval_pairs={} seed={}",
        o.model.display(),
        o.data.display(),
        o.eval_data.display(),
        o.lora,
        o.targets,
        o.quantized_base,
        o.objective,
        o.lr,
        o.steps,
        o.batch_pairs,
        o.max_len,
        o.eval_pairs,
        o.seed
    )
}

/// The held-out statistics a metrics line holds (`eval_*` fields), if it is an evaluation.
fn eval_of(v: &serde_json::Value) -> Option<PrefEval> {
    Some(PrefEval {
        loss: v["eval_loss"].as_f64()?,
        logp_accuracy: v["eval_logp_accuracy"].as_f64().unwrap_or(f64::NAN),
        reward_accuracy: v["eval_reward_accuracy"].as_f64()?,
        margin: v["eval_margin"].as_f64()?,
    })
}

/// Held-out preference statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PrefEval {
    /// Mean loss (Bradley–Terry, or DPO's).
    pub loss: f64,
    /// DPO: fraction of pairs with `log π(y_c) > log π(y_r)` (NaN for a reward model).
    pub logp_accuracy: f64,
    /// Fraction of pairs whose chosen reward (DPO: implicit reward) is larger (strictly);
    /// chance is 0.5.
    pub reward_accuracy: f64,
    /// Mean reward margin `r_c − r_r` (DPO: `β[(log π − log π_ref)(y_c) − (…)(y_r)]`).
    pub margin: f64,
}

/// What a run reports as it goes.
#[derive(Clone, Debug)]
pub enum PairEvent {
    /// The data is ready.
    Data {
        /// Training pairs kept.
        train: usize,
        /// Held-out pairs kept.
        eval: usize,
        /// Pairs skipped for being longer than `max_len`.
        skipped: usize,
        /// Trainable parameters.
        trainable: usize,
    },
    /// One optimizer step.
    Step {
        /// The step (from 1).
        step: usize,
        /// The batch's loss.
        loss: f64,
        /// The batch's (implicit-)reward accuracy.
        accuracy: f64,
        /// The batch's mean (implicit-)reward margin.
        margin: f64,
        /// Learning rate of the step.
        lr: f64,
        /// Prompt-and-answer tokens per second (both answers; DPO's reference pass included).
        tokens_per_sec: f64,
    },
    /// A held-out evaluation.
    Eval {
        /// The step it follows (0: the starting model).
        step: usize,
        /// The statistics.
        eval: PrefEval,
    },
    /// The result was written (atomically).
    Saved {
        /// Its directory.
        dir: PathBuf,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// Its directory.
        dir: PathBuf,
        /// The step it holds.
        step: usize,
    },
    /// The run continues from a checkpoint.
    Resumed {
        /// The last step the checkpoint holds.
        step: usize,
    },
}

/// A pair rendered for the model: the chosen and the rejected example, and once computed the
/// reference's summed log-probabilities of both (the reference never changes, so each pair's
/// are computed once: the held-out set's at step 0, a training pair's at its first use).
struct Rendered {
    chosen: Example,
    rejected: Example,
    reference: std::cell::Cell<Option<(f64, f64)>>,
}

/// Summed answer log-probabilities of a batch of pairs, chosen rows first: `(2P,)`, and the
/// answer lengths.
fn sequence_logps(model: &Llama, pairs: &[&Rendered], pass: Pass<'_>) -> (Var, Tensor) {
    let rows: Vec<&Example> = pairs.iter().map(|r| &r.chosen).chain(pairs.iter().map(|r| &r.rejected)).collect();
    let (x, y, _) = batch(&rows);
    let (b, t) = (y.dim(0), y.dim(1));
    let ys = y.to_vec::<u32>();
    // (n,) in row-major order; the per-row sums are one product with a constant 0/1 matrix
    // S (2P, n), S[r, i] = 1 when the i-th counted position lies in row r.
    let tok = model.token_logps(&x, &y, IGNORE, pass);
    let n = tok.shape()[0];
    let mut s = vec![0f32; b * n];
    let mut lens = vec![0f32; b];
    for (i, pos) in ys.iter().enumerate().filter(|(_, &y)| y != IGNORE).map(|(i, _)| i).enumerate() {
        s[(pos / t) * n + i] = 1.0;
        lens[pos / t] += 1.0;
    }
    let dt = tok.value().dtype();
    let s = Var::constant(Tensor::new(s, &[b, n]).to_dtype(dt));
    (s.matmul(&tok.reshape(&[n, 1])).reshape(&[b]), Tensor::new(lens, &[b]).to_dtype(dt))
}

/// The DPO loss (and its statistics) of a batch of pairs under the policy in `pass`, and the
/// policy's summed answer log-probabilities `(2P,)`, chosen first.
fn pair_loss(
    model: &Llama,
    pairs: &[&Rendered],
    pass: Pass<'_>,
    kind: DpoKind,
    beta: f64,
) -> (crate::align::DpoLoss, Tensor) {
    let p = pairs.len();
    // The policy in `Pass::Base` is the reference itself (evaluating the starting model): one
    // pass serves as both.
    let base = matches!(pass, Pass::Base);
    let mut policy = None;
    if pairs.iter().any(|r| r.reference.get().is_none()) || base {
        let _g = (!base).then(no_grad);
        let (logps, lens) = sequence_logps(model, pairs, Pass::Base);
        let v = logps.value().to_vec_f64();
        for (i, r) in pairs.iter().enumerate() {
            r.reference.set(Some((v[i], v[p + i])));
        }
        policy = base.then_some((logps, lens));
    }
    let refs: Vec<(f64, f64)> = pairs.iter().filter_map(|r| r.reference.get()).collect();
    let (logps, lens) = match policy {
        Some(l) => l,
        None => sequence_logps(model, pairs, pass),
    };
    let dt = logps.value().dtype();
    let reference =
        Tensor::new(refs.iter().map(|r| r.0).chain(refs.iter().map(|r| r.1)).collect::<Vec<f64>>(), &[2 * p])
            .to_dtype(dt);
    let (chosen, rejected) = (logps.narrow(0, 0, p), logps.narrow(0, p, p));
    let (rc, rr) = (reference.narrow(0, 0, p).contiguous(), reference.narrow(0, p, p).contiguous());
    let (lc, lr) = (lens.narrow(0, 0, p).contiguous(), lens.narrow(0, p, p).contiguous());
    let out = dpo_loss(
        &PairLogps {
            chosen: &chosen,
            rejected: &rejected,
            ref_chosen: &rc,
            ref_rejected: &rr,
            chosen_len: &lc,
            rejected_len: &lr,
        },
        kind,
        beta,
    );
    (out, logps.value().clone())
}

/// Rewards `r = score · h_last` of a batch of pairs, chosen rows first: `(2P,)`; `h_last` the
/// final hidden state at each rendered answer's last token.
fn rewards(model: &Llama, score: &Var, pairs: &[&Rendered], pass: Pass<'_>) -> Var {
    let rows: Vec<&[u32]> =
        pairs.iter().map(|r| r.chosen.ids.as_slice()).chain(pairs.iter().map(|r| r.rejected.ids.as_slice())).collect();
    reward_of(model, score, &rows, pass)
}

/// A reward model's scores `score · h_last` of token sequences `(n,)` under autograd: each
/// row right-padded, `h_last` the final hidden state at its last token.
pub(crate) fn reward_of(model: &Llama, score: &Var, rows: &[&[u32]], pass: Pass<'_>) -> Var {
    let len = rows.iter().map(|e| e.len()).max().unwrap_or(1).max(1);
    let ids: Vec<u32> = rows.iter().flat_map(|e| (0..len).map(|i| e.get(i).copied().unwrap_or(0))).collect();
    let last: Vec<u32> = rows.iter().enumerate().map(|(b, e)| (b * len + e.len().max(1) - 1) as u32).collect();
    let h = model.hidden(&Tensor::new(ids, &[rows.len(), len]), pass);
    let c = h.shape()[2];
    let picked = h.reshape(&[rows.len() * len, c]).embedding(&Tensor::new(last, &[rows.len()])); // (n, C)
    picked.matmul(&score.t()).reshape(&[rows.len()])
}

/// A reward model as `yuanli rm` writes it (`out/reward_model`: a LoRA adapter in PEFT's
/// format and the head `score.safetensors`), loaded frozen on its base model.
pub struct RewardModel {
    /// The base with the adapter attached.
    pub p: Pretrained,
    /// The head `(1, C)`.
    pub score: Var,
}

impl RewardModel {
    /// Loads `dir`; the base is the one its `adapter_config.json` names (block-quantized in
    /// place with `quantized_base`, else f32).
    pub fn load(dir: &Path, quantized_base: bool) -> Result<RewardModel, FinetuneError> {
        let config = yuanli_models::peft::read_adapter_config(dir)?;
        let base = PathBuf::from(&config.base);
        if !base.exists() {
            return Err(FinetuneError::File {
                path: dir.join("adapter_config.json"),
                message: format!("the reward model's base model {} does not exist here", base.display()),
            });
        }
        let load = if quantized_base { LoadOptions::fast() } else { LoadOptions::exact() };
        let mut p = load_pretrained_with(&base, load)?;
        yuanli_models::peft::load_adapter(dir, &mut p.model, &mut p.store)?;
        let file = dir.join("score.safetensors");
        let bad = |m: String| FinetuneError::File { path: file.clone(), message: m };
        let tensors = yuanli_nn::checkpoint::read_tensors(&file).map_err(|e| bad(e.to_string()))?;
        let (shape, values) = tensors.get("score.weight").ok_or_else(|| bad("no tensor score.weight".into()))?;
        let c = p.model.config.hidden_size;
        if *shape != [1, c] {
            return Err(bad(format!("score.weight has shape {shape:?}; the base model needs [1, {c}]")));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(bad("score.weight holds a value that is not finite".into()));
        }
        Ok(RewardModel { p, score: Var::constant(Tensor::new(values.clone(), &[1, c])) })
    }

    /// The scores of token sequences (each a rendered prompt and answer), `batch` at a time.
    pub fn scores(&self, rows: &[&[u32]], batch: usize) -> Vec<f64> {
        let _g = no_grad();
        rows.chunks(batch.max(1))
            .flat_map(|c| reward_of(&self.p.model, &self.score, c, Pass::Eval).value().to_vec_f64())
            .collect()
    }
}

/// The loss of a batch under `objective`, with its accuracy and margin (and DPO's policy
/// log-probabilities, for the held-out `logp_accuracy`).
struct BatchLoss {
    loss: Var,
    accuracy: f64,
    margin: f64,
    logps: Option<Tensor>,
    reward_chosen: f64,
    reward_rejected: f64,
}

fn batch_loss(
    model: &Llama,
    score: Option<&Var>,
    pairs: &[&Rendered],
    pass: Pass<'_>,
    objective: Objective,
) -> BatchLoss {
    let p = pairs.len();
    match (objective, score) {
        (Objective::Reward { center }, Some(score)) => {
            let r = rewards(model, score, pairs, pass);
            let out = reward_loss(&r.narrow(0, 0, p), &r.narrow(0, p, p), None, center);
            let v = r.value().to_vec_f64();
            let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
            BatchLoss {
                loss: out.loss,
                accuracy: out.accuracy,
                margin: out.margin,
                logps: None,
                reward_chosen: mean(&v[..p]),
                reward_rejected: mean(&v[p..]),
            }
        }
        (Objective::Dpo { kind, beta }, _) => {
            let (out, logps) = pair_loss(model, pairs, pass, kind, beta);
            BatchLoss {
                loss: out.loss,
                accuracy: out.accuracy,
                margin: out.margin,
                logps: Some(logps),
                reward_chosen: out.reward_chosen,
                reward_rejected: out.reward_rejected,
            }
        }
        (Objective::Reward { .. }, None) => unreachable!("a reward model always has its score head"),
    }
}

/// Held-out statistics over `pairs`, `batch` pairs at a time, without gradients.
/// `start`: the adapter has not been trained yet (its `B` is zero), so the policy is the base
/// and DPO's two passes are one.
fn evaluate(
    model: &Llama,
    score: Option<&Var>,
    pairs: &[Rendered],
    batch: usize,
    objective: Objective,
    start: bool,
) -> PrefEval {
    let _g = no_grad();
    let mut sum = PrefEval::default();
    for chunk in pairs.chunks(batch.max(1)) {
        let refs: Vec<&Rendered> = chunk.iter().collect();
        let k = refs.len() as f64;
        let pass = if start { Pass::Base } else { Pass::Eval };
        let out = batch_loss(model, score, &refs, pass, objective);
        sum.loss += out.loss.value().item() * k;
        sum.logp_accuracy += match &out.logps {
            Some(l) => {
                let v = l.to_vec_f64();
                (0..refs.len()).filter(|&i| v[i] > v[i + refs.len()]).count() as f64
            }
            None => f64::NAN,
        };
        sum.reward_accuracy += out.accuracy * k;
        sum.margin += out.margin * k;
    }
    let n = pairs.len().max(1) as f64;
    PrefEval {
        loss: sum.loss / n,
        logp_accuracy: sum.logp_accuracy / n,
        reward_accuracy: sum.reward_accuracy / n,
        margin: sum.margin / n,
    }
}

/// Writes the result atomically (a `.tmp` directory swapped in): `out_dir/adapter` (PEFT's
/// format) for DPO; for a reward model `out_dir/reward_model`, the adapter and the head
/// `score.safetensors` (`score.weight`, `(1, C)` f32, as Hugging Face names it).
fn save(o: &PairOptions, p: &Pretrained, score: Option<&Var>) -> Result<PathBuf, FinetuneError> {
    let dir = o.out_dir.join(if score.is_some() { "reward_model" } else { "adapter" });
    replace_dir(&dir, |tmp| {
        let adapter = Adapter { lora: o.lora.clone(), targets: o.targets.clone(), base: o.model.display().to_string() };
        save_adapter(tmp, &p.model, &adapter)?;
        if let Some(score) = score {
            let file = tmp.join("score.safetensors");
            let bad = |e: String| FinetuneError::File { path: file.clone(), message: e };
            let bytes: Vec<u8> = score.value().to_vec::<f32>().iter().flat_map(|x| x.to_le_bytes()).collect();
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, score.shape().to_vec(), &bytes)
                .map_err(|e| bad(e.to_string()))?;
            safetensors::serialize_to_file([("score.weight", view)], None, &file).map_err(|e| bad(e.to_string()))?;
        }
        Ok(())
    })?;
    Ok(dir)
}

/// Trains on preference pairs: load the base frozen, attach the adapter (and, for a reward
/// model, the scalar head `score`), and for
/// `steps` steps take `batch_pairs` pairs, compute the objective's loss — the Bradley–Terry
/// loss of the two rewards, or DPO's on the summed answer log-probabilities with the adapter
/// on (policy) and off (reference) —, its gradient, clip at 1 and AdamW. Held-out statistics
/// at step 0, every `eval_interval` steps and at the end, each followed by the result written
/// with a checkpoint (so a crash loses at most an interval; `resume` continues from it with
/// the losses of an uninterrupted run). `stop` (Ctrl-C) ends the run early with the result and
/// a checkpoint saved. Returns the first and last held-out statistics.
pub fn train_pairs(
    o: &PairOptions,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&PairEvent),
) -> Result<(PrefEval, PrefEval), FinetuneError> {
    if o.steps == 0 || o.batch_pairs == 0 || o.max_len < 2 {
        return Err(FinetuneError::Options("steps, pairs per batch and max length (≥ 2) must be positive".into()));
    }
    match o.objective {
        Objective::Dpo { beta, .. } if !(beta > 0.0 && beta.is_finite()) => {
            return Err(FinetuneError::Options(format!("--beta must be positive, not {beta}")));
        }
        Objective::Dpo { kind: DpoKind::Robust { label_smoothing: e }, .. } if !(0.0..0.5).contains(&e) => {
            return Err(FinetuneError::Options(format!("--label-smoothing must be in [0, 0.5), not {e}")));
        }
        _ => {}
    }
    let mut rng = Rng::new(o.seed);
    let mut p = load_for_lora(&o.model, o.quantized_base, &o.lora, &o.targets, o.max_len, &mut rng)?;
    let score = match o.objective {
        Objective::Reward { .. } => {
            p.store.set_trainable(|name, _| name.contains(".lora_") || name == "score.weight");
            let c = p.model.config.hidden_size;
            // N(0, 0.02²) as transformers initialises a classification head: at step 0 the
            // rewards are small and random, and the held-out accuracy is near chance.
            let init = Tensor::randn(&[1, c], 0.0, 0.02, yuanli_tensor::DType::F32, &mut rng);
            Some(
                p.store
                    .param("score.weight", init, ParamKind::Weight)
                    .map_err(|e| FinetuneError::Options(e.to_string()))?,
            )
        }
        Objective::Dpo { .. } => None,
    };
    let f = formatter(&p)?;
    let mut skipped = 0;
    let mut render = |pairs: Vec<Pair>| -> Result<Vec<Rendered>, SftError> {
        let mut out = Vec::with_capacity(pairs.len());
        for pr in pairs {
            let with = |answer: &str| {
                let mut msgs = pr.prompt.clone();
                msgs.push(Message::new("assistant", answer));
                f.example(&msgs)
            };
            let (chosen, rejected) = (with(&pr.chosen)?, with(&pr.rejected)?);
            if chosen.ids.len() > o.max_len
                || rejected.ids.len() > o.max_len
                || chosen.n_targets() == 0
                || rejected.n_targets() == 0
            {
                skipped += 1;
                continue;
            }
            out.push(Rendered { chosen, rejected, reference: std::cell::Cell::new(None) });
        }
        Ok(out)
    };
    let train = render(read_pairs(&o.data)?)?;
    let mut eval = render(read_pairs(&o.eval_data)?)?;
    if o.eval_pairs > 0 {
        eval.truncate(o.eval_pairs);
    }
    if train.is_empty() || eval.is_empty() {
        return Err(FinetuneError::Options(format!(
            "no training or no held-out pair fits --max-len {} ({skipped} skipped)",
            o.max_len
        )));
    }
    on_event(&PairEvent::Data { train: train.len(), eval: eval.len(), skipped, trainable: p.store.num_trainable() });
    let checkpoint = o.out_dir.join("checkpoint");
    let mut metrics = MetricsLog::open(&o.out_dir, o.resume)?;
    let mut log = |v: serde_json::Value| metrics.log(&v);
    let eval_json = |step: usize, e: &PrefEval| {
        let mut v = serde_json::json!({"step": step, "eval_loss": e.loss, "eval_reward_accuracy": e.reward_accuracy,
            "eval_margin": e.margin});
        if e.logp_accuracy.is_finite() {
            v["eval_logp_accuracy"] = serde_json::json!(e.logp_accuracy);
        }
        v
    };
    let mut opt = Adam::adamw(0.9, 0.999, 1e-8, 0.0);
    let schedule =
        LrSchedule::WarmupCosine { max_lr: o.lr, min_lr: o.lr * 0.1, warmup: (o.steps / 10).max(1), total: o.steps };
    let (first, mut order, mut at, first_step) = if o.resume {
        let st = load_adapter_checkpoint(&checkpoint, &fingerprint(o), &p, &mut opt)?;
        if st.order.len() != train.len() || st.at > st.order.len() || st.step >= o.steps {
            return Err(FinetuneError::Options(format!(
                "{}: the checkpoint (step {} of {}, {} training pairs) cannot continue this run ({} pairs)",
                checkpoint.display(),
                st.step,
                o.steps,
                st.order.len(),
                train.len()
            )));
        }
        rng = Rng::from_state(st.rng_state);
        on_event(&PairEvent::Resumed { step: st.step });
        // The step-0 statistics, from the metrics the earlier run wrote.
        let text = std::fs::read_to_string(o.out_dir.join("metrics.jsonl")).unwrap_or_default();
        let first = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["step"].as_u64() == Some(0))
            .and_then(|v| eval_of(&v))
            .unwrap_or(PrefEval { loss: st.first_eval, logp_accuracy: f64::NAN, ..PrefEval::default() });
        (first, st.order, st.at, st.step + 1)
    } else {
        let first = evaluate(&p.model, score.as_ref(), &eval, o.batch_pairs, o.objective, true);
        on_event(&PairEvent::Eval { step: 0, eval: first });
        log(eval_json(0, &first))?;
        let order: Vec<usize> = (0..train.len()).collect();
        let at = order.len();
        (first, order, at, 1)
    };
    let state = |step: usize, order: &[usize], at: usize, opt: &Adam, rng: &Rng| SftState {
        step,
        order: order.to_vec(),
        at,
        adam_t: opt.t,
        rng_state: rng.state(),
        first_eval: first.loss,
        fingerprint: fingerprint(o),
        kl_coef: None,
    };
    let mut last = first;
    for step in first_step..=o.steps {
        if stop.load(Ordering::Relaxed) {
            // Stopped (Ctrl-C): a checkpoint of the steps done, so that --resume continues.
            save_adapter_checkpoint(&checkpoint, &p, &opt, &state(step - 1, &order, at, &opt, &rng))?;
            on_event(&PairEvent::Checkpoint { dir: checkpoint.clone(), step: step - 1 });
            break;
        }
        let started = std::time::Instant::now();
        let picked: Vec<&Rendered> =
            next_batch(&mut order, &mut at, o.batch_pairs, &mut rng).into_iter().map(|i| &train[i]).collect();
        let tokens: usize = picked.iter().map(|r| r.chosen.ids.len() + r.rejected.ids.len()).sum();
        let lr = schedule.lr(step - 1);
        p.store.zero_grad();
        let out = batch_loss(&p.model, score.as_ref(), &picked, Pass::Train(&mut rng), o.objective);
        let loss = out.loss.value().item();
        if !loss.is_finite() {
            return Err(FinetuneError::NonFinite { step, value: loss });
        }
        out.loss.backward();
        p.store.clip_grad_norm(1.0);
        opt.step(&p.store, lr);
        let tokens_per_sec = tokens as f64 / started.elapsed().as_secs_f64();
        on_event(&PairEvent::Step { step, loss, accuracy: out.accuracy, margin: out.margin, lr, tokens_per_sec });
        log(serde_json::json!({"step": step, "loss": loss, "reward_accuracy": out.accuracy, "margin": out.margin,
            "reward_chosen": out.reward_chosen, "reward_rejected": out.reward_rejected, "lr": lr,
            "tokens_per_sec": tokens_per_sec}))?;
        if step % o.eval_interval.max(1) == 0 || step == o.steps {
            last = evaluate(&p.model, score.as_ref(), &eval, o.batch_pairs, o.objective, false);
            on_event(&PairEvent::Eval { step, eval: last });
            log(eval_json(step, &last))?;
            let dir = save(o, &p, score.as_ref())?;
            on_event(&PairEvent::Saved { dir });
            save_adapter_checkpoint(&checkpoint, &p, &opt, &state(step, &order, at, &opt, &rng))?;
            on_event(&PairEvent::Checkpoint { dir: checkpoint.clone(), step });
        }
    }
    if stop.load(Ordering::Relaxed) {
        let dir = save(o, &p, score.as_ref())?;
        on_event(&PairEvent::Saved { dir });
    }
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Pair, String> {
        pair(&serde_json::from_str(line).unwrap())
    }

    fn tiny_run(out: &Path, objective: Objective) -> PairOptions {
        let data = out.with_extension("jsonl");
        let lines: Vec<String> = (0..6)
            .map(|i| {
                serde_json::json!({"prompt": format!("What is {i} plus {i}?"), "chosen": format!("#### {}", i + i),
                    "rejected": format!("#### {}", i + i + 1)})
                .to_string()
            })
            .collect();
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        std::fs::write(&data, lines.join("\n")).unwrap();
        PairOptions {
            model: Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/testdata/tiny_hf/llama"),
            data: data.clone(),
            eval_data: data,
            out_dir: out.to_path_buf(),
            lora: LoraConfig { r: 2, alpha: 4.0, dropout: 0.1, rslora: false },
            targets: vec!["all-linear".into()],
            quantized_base: false,
            objective,
            lr: 1e-2,
            steps: 6,
            batch_pairs: 2,
            max_len: 64,
            eval_interval: 2,
            eval_pairs: 0,
            seed: 7,
            resume: false,
        }
    }

    /// Stopped after step 3 (as Ctrl-C would) and resumed, a reward-model run and a DPO run
    /// repeat the uninterrupted run's losses bit for bit; other options are refused.
    #[test]
    fn a_stopped_and_resumed_run_repeats_the_uninterrupted_losses() {
        let root = std::env::temp_dir().join(format!("yuanli-pairs-resume-{}", std::process::id()));
        let losses = |events: &[PairEvent]| -> Vec<u64> {
            events
                .iter()
                .filter_map(|e| if let PairEvent::Step { loss, .. } = e { Some(loss.to_bits()) } else { None })
                .collect()
        };
        for (name, objective) in [
            ("rm", Objective::Reward { center: Some(0.01) }),
            ("dpo", Objective::Dpo { kind: DpoKind::Sigmoid, beta: 0.5 }),
        ] {
            let mut ev = Vec::new();
            let whole = tiny_run(&root.join(name).join("whole"), objective);
            let (_, end) = train_pairs(&whole, &AtomicBool::new(false), &mut |e| ev.push(e.clone())).unwrap();
            let want = losses(&ev);
            assert_eq!(want.len(), 6, "{name}");
            let part = tiny_run(&root.join(name).join("part"), objective);
            let stop = AtomicBool::new(false);
            let mut first = Vec::new();
            train_pairs(&part, &stop, &mut |e| {
                if matches!(e, PairEvent::Step { step: 3, .. }) {
                    stop.store(true, Ordering::Relaxed);
                }
                first.push(e.clone())
            })
            .unwrap();
            assert!(first.iter().any(|e| matches!(e, PairEvent::Checkpoint { step: 3, .. })), "{name}");
            let mut second = Vec::new();
            let (_, end1) =
                train_pairs(&PairOptions { resume: true, ..part.clone() }, &AtomicBool::new(false), &mut |e| {
                    second.push(e.clone())
                })
                .unwrap();
            let mut got = losses(&first);
            got.extend(losses(&second));
            assert_eq!(got, want, "{name}: resumed vs uninterrupted losses");
            assert_eq!(format!("{end1:?}"), format!("{end:?}"), "{name}: the final held-out statistics");
            let other = PairOptions { lr: 5e-3, resume: true, ..part };
            let err = train_pairs(&other, &AtomicBool::new(false), &mut |_| {}).unwrap_err().to_string();
            assert!(err.contains("other options") && err.contains("lr=0.005"), "{name}: {err}");
        }
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn pairs_in_both_of_trls_forms() {
        let a = parse(r#"{"prompt": "2+2?", "chosen": "4", "rejected": "5"}"#).unwrap();
        assert_eq!(a.prompt, vec![Message::new("user", "2+2?")]);
        let b = parse(
            r#"{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
                "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "5"}]}"#,
        )
        .unwrap();
        assert_eq!((b.prompt.len(), b.chosen.as_str(), b.rejected.as_str()), (2, "4", "5"));
    }

    #[test]
    fn bad_pairs_say_what_is_wrong() {
        for (line, says) in [
            (r#"{"prompt": "q", "chosen": "a"}"#, "\"rejected\" is missing"),
            (r#"{"chosen": "a", "rejected": "b"}"#, "needs \"prompt\""),
            (
                r#"{"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"}"#,
                "unknown role \"robot\"",
            ),
            (
                r#"{"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}"#,
                "one assistant message",
            ),
            (r#"{"prompt": 3, "chosen": "a", "rejected": "b"}"#, "neither a string"),
        ] {
            let e = parse(line).unwrap_err();
            assert!(e.contains(says), "{line}: {e}");
        }
        let dir = std::env::temp_dir().join(format!("yuanli-dpo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pairs.jsonl");
        std::fs::write(&f, "{\"prompt\": \"q\", \"chosen\": \"a\", \"rejected\": \"b\"}\n\nnot json\n").unwrap();
        let e = read_pairs(&f).unwrap_err().to_string();
        assert!(e.contains("pairs.jsonl:3: not JSON"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
