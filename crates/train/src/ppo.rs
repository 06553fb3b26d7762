//! PPO for RLHF (Ziegler et al.; InstructGPT): a policy with a value head learns to write
//! answers a reward model scores highly, held near the model it started from by a per-token
//! KL penalty.
//!
//! One step, as TRL's `PPOTrainer` takes it:
//!
//! 1. **Roll out.** `P` prompts, one completion each, sampled by the batched engine from the
//!    policy (the base plus a LoRA adapter).
//! 2. **Score.** The reward model (`yuanli rm`'s output) scores each prompt and completion;
//!    the policy's and the reference's (the adapter switched off) log-probabilities and the
//!    value head's estimates are computed once, without gradients ("old").
//! 3. **Rewards and advantages.** Every token pays `−β·(log π − log π_ref)`; the score is
//!    added after the last one ([`ppo_rewards`]). GAE turns rewards and values into
//!    advantages and value targets ([`gae`]); advantages are whitened.
//! 4. **Optimise.** `epochs` passes over the batch, each one AdamW step on the clipped policy
//!    loss plus the clipped value loss ([`ppo_loss`]).
//!
//! β is fixed, or (with a KL target) adapted as Ziegler et al. do: after each step
//! `β ← β·(1 + clip(KL/target − 1, ±0.2)·P/horizon)`.
//!
//! The value head `V(s) = w·h + b` reads the policy's own final hidden states (one network
//! for both, as TRL's `AutoModelForCausalLMWithValueHead`): slot `j` of a completion of
//! length `n` is the state after `j` of its tokens — the one that predicts token `j` — and
//! slot `n`, after the last token, is where the score arrives.

use crate::align::{gae, masked_whiten, ppo_loss, ppo_rewards, KlEstimator, PpoConfig};
use crate::grpo::{complete, prompt_ids, read_answers, save_lora, text_of, write_answers};
use crate::optim::Adam;
use crate::preference::{prompt_of, RewardModel};
use crate::schedule::LrSchedule;
use crate::sft::{
    formatter, load_adapter_checkpoint, load_for_lora, next_batch, read_jsonl, save_adapter_checkpoint, FinetuneError,
    MetricsLog, SftError, SftState,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use yuanli_autograd::{no_grad, Var};
use yuanli_models::llama::Pass;
use yuanli_models::load::Pretrained;
use yuanli_models::SamplingParams;
use yuanli_nn::{Linear, LoraConfig, Module, ParamKind, Weight};
use yuanli_tensor::{Rng, Tensor};

/// Everything a PPO run needs.
#[derive(Clone, Debug)]
pub struct PpoOptions {
    /// The policy's base model (it needs a chat template).
    pub model: PathBuf,
    /// The reward model: a directory `yuanli rm` wrote (`out/reward_model`).
    pub reward_model: PathBuf,
    /// Training prompts, JSONL with a `prompt` (a string or messages); other fields ignored.
    pub data: PathBuf,
    /// Held-out prompts (same format).
    pub eval_data: PathBuf,
    /// Where `metrics.jsonl`, `answers_step{N}.jsonl`, `checkpoint/` and `adapter/` go.
    pub out_dir: PathBuf,
    /// The policy's adapter.
    pub lora: LoraConfig,
    /// Its target modules.
    pub targets: Vec<String>,
    /// Keep GGUF bases (policy and reward model) block-quantized.
    pub quantized_base: bool,
    /// Peak learning rate (AdamW; 10% warm-up, cosine to a tenth).
    pub lr: f64,
    /// PPO steps (each a rollout and `epochs` updates).
    pub steps: usize,
    /// Prompts (and completions) per rollout.
    pub prompts_per_step: usize,
    /// Longest completion.
    pub max_new_tokens: usize,
    /// Sampling temperature of the rollouts and of the held-out samples.
    pub temperature: f64,
    /// β, the KL penalty's starting coefficient.
    pub kl_coef: f64,
    /// With a target, β is adapted toward a per-sequence KL of this many nats.
    pub kl_target: Option<f64>,
    /// The adaptive controller's horizon in samples.
    pub kl_horizon: f64,
    /// Which KL estimate each token pays for.
    pub kl_estimator: KlEstimator,
    /// Updates per rollout.
    pub epochs: usize,
    /// Discount γ.
    pub gamma: f64,
    /// GAE's λ.
    pub lam: f64,
    /// Clip ranges and the value loss's weight.
    pub ppo: PpoConfig,
    /// Subtracted from the score of a completion cut off before its end-of-turn token.
    pub missing_eos_penalty: f64,
    /// Held-out evaluation every this many steps (0: at the start and the end only).
    pub eval_interval: usize,
    /// Held-out prompts evaluated (the first ones; 0 = all).
    pub eval_prompts: usize,
    /// Held-out prompts sampled together.
    pub eval_batch: usize,
    /// Seed of the order, the samples and the adapter's initialisation.
    pub seed: u64,
    /// Continue from `out_dir/checkpoint` with the same options.
    pub resume: bool,
}

/// The held-out measurement: one completion per prompt, sampled at the run's temperature
/// with the same seed for the same prompt at every evaluation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PpoEval {
    /// The reward model's score of each completion.
    pub scores: Vec<f64>,
    /// `Σ_t log π(y_t) − log π_ref(y_t)` of each completion: its KL estimate (nats).
    pub kl: Vec<f64>,
    /// Mean completion length in tokens.
    pub mean_len: f64,
}

impl PpoEval {
    /// The mean score.
    pub fn score(&self) -> f64 {
        mean(&self.scores)
    }

    /// The mean sequence KL to the reference.
    pub fn kl(&self) -> f64 {
        mean(&self.kl)
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The statistics of one step (also its `metrics.jsonl` line).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PpoStats {
    /// The step (from 1).
    pub step: usize,
    /// The reward model's mean score of the rollouts.
    pub score: f64,
    /// Mean sequence KL to the reference of the rollouts (k1, summed over tokens).
    pub kl: f64,
    /// β used for this rollout's rewards.
    pub kl_coef: f64,
    /// Mean of score − β·KL: the KL-regularised return RLHF maximises.
    pub rlhf_reward: f64,
    /// The last update's clipped policy loss.
    pub pg_loss: f64,
    /// The last update's value loss.
    pub vf_loss: f64,
    /// Fraction of tokens where the policy clip won (last update).
    pub pg_clipfrac: f64,
    /// Fraction of positions where the value clip won (last update).
    pub vf_clipfrac: f64,
    /// Mean completion length.
    pub completion_len: f64,
    /// Learning rate.
    pub lr: f64,
    /// Seconds spent sampling.
    pub sample_secs: f64,
    /// Seconds of the whole step.
    pub step_secs: f64,
}

/// What the loop reports.
#[derive(Clone, Debug)]
pub enum PpoEvent {
    /// Data and models are ready.
    Data {
        /// Training prompts.
        train: usize,
        /// Held-out prompts.
        eval: usize,
        /// Trainable parameters (adapter and value head).
        trainable: usize,
    },
    /// Sampling held-out completions: `done` of `total`.
    Evaluating {
        /// Done so far.
        done: usize,
        /// All.
        total: usize,
    },
    /// One step.
    Step(PpoStats),
    /// A held-out evaluation.
    Eval {
        /// The step it follows (0: the starting policy).
        step: usize,
        /// The results.
        eval: PpoEval,
    },
    /// The adapter was written.
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

/// A prompt ready for the model.
struct Prompt {
    ids: Vec<u32>,
    text: String,
}

/// A batch of prompt + completion rows laid out for PPO: `x (B, L)` the right-padded
/// sequences; for each row `T = max n + 1` slots, slot `j` reading the hidden state at
/// position `prompt_len − 1 + j` (clamped to the row's end) with target token `j` of the
/// completion; the policy mask covers slots `j < n`, the value mask `j ≤ n`.
struct Rollout {
    x: Tensor,
    /// Flat `(B·T,)` row indices into the `(B·L, C)` hidden states.
    gather: Tensor,
    /// `(B·T,)` target tokens (0 on masked slots).
    targets: Tensor,
    policy_mask: Tensor,
    value_mask: Tensor,
    /// Each completion's length `n`.
    lens: Vec<usize>,
}

impl Rollout {
    fn new(prompts: &[&[u32]], completions: &[Vec<u32>]) -> Rollout {
        let b = prompts.len();
        let seqs: Vec<Vec<u32>> = prompts.iter().zip(completions).map(|(p, c)| [*p, c.as_slice()].concat()).collect();
        let l = seqs.iter().map(Vec::len).max().unwrap_or(1);
        let t = completions.iter().map(Vec::len).max().unwrap_or(0) + 1;
        let mut x = vec![0u32; b * l];
        let (mut gather, mut targets) = (vec![0u32; b * t], vec![0u32; b * t]);
        let (mut pm, mut vm) = (vec![0f32; b * t], vec![0f32; b * t]);
        for r in 0..b {
            x[r * l..r * l + seqs[r].len()].copy_from_slice(&seqs[r]);
            let (p, n) = (prompts[r].len(), completions[r].len());
            for j in 0..t {
                gather[r * t + j] = (r * l + (p - 1 + j).min(seqs[r].len() - 1)) as u32;
                if j < n {
                    targets[r * t + j] = completions[r][j];
                    pm[r * t + j] = 1.0;
                }
                if j <= n {
                    vm[r * t + j] = 1.0;
                }
            }
        }
        Rollout {
            x: Tensor::new(x, &[b, l]),
            gather: Tensor::new(gather, &[b * t]),
            targets: Tensor::new(targets, &[b * t]),
            policy_mask: Tensor::new(pm, &[b, t]),
            value_mask: Tensor::new(vm, &[b, t]),
            lens: completions.iter().map(Vec::len).collect(),
        }
    }

    fn shape(&self) -> [usize; 2] {
        [self.policy_mask.dim(0), self.policy_mask.dim(1)]
    }

    /// Log-probabilities of the targets `(B, T)` and the value head's estimates `(B, T)`
    /// from one pass of the model.
    fn pass(&self, p: &Pretrained, v_head: &Linear, pass: Pass<'_>) -> (Var, Var) {
        let h = p.model.hidden(&self.x, pass);
        let c = h.shape()[2];
        let picked = h.reshape(&[self.x.numel(), c]).embedding(&self.gather); // (B·T, C)
        let logps = p.model.head_logps(&picked, &self.targets).reshape(&self.shape());
        let values = v_head.forward(&picked).reshape(&self.shape());
        (logps, values)
    }
}

/// `Σ_t (logp − ref)` of each row over the policy mask.
fn sequence_kl(logps: &Tensor, reference: &Tensor, mask: &Tensor) -> Vec<f64> {
    let (lp, rf, m) = (logps.to_vec_f64(), reference.to_vec_f64(), mask.to_vec_f64());
    let t = mask.dim(1);
    (0..mask.dim(0)).map(|r| (0..t).map(|j| m[r * t + j] * (lp[r * t + j] - rf[r * t + j])).sum()).collect()
}

/// The reward model's scores of prompt + completion rows, less the penalty for a completion
/// cut off before its end-of-turn token.
fn score(o: &PpoOptions, rm: &RewardModel, eos: &[u32], prompts: &[&[u32]], completions: &[Vec<u32>]) -> Vec<f64> {
    let rows: Vec<Vec<u32>> = prompts.iter().zip(completions).map(|(p, c)| [*p, c.as_slice()].concat()).collect();
    let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    rm.scores(&refs, 8)
        .into_iter()
        .zip(completions)
        .map(|(s, c)| if c.last().is_some_and(|t| eos.contains(t)) { s } else { s - o.missing_eos_penalty })
        .collect()
}

/// Samples one completion per held-out prompt (seeded by its index), scores it and measures
/// its KL to the reference; writes `answers_step{step}.jsonl`.
fn evaluate(
    o: &PpoOptions,
    p: &Pretrained,
    v_head: &Linear,
    rm: &RewardModel,
    prompts: &[Prompt],
    step: usize,
    on_event: &mut dyn FnMut(&PpoEvent),
) -> Result<PpoEval, FinetuneError> {
    let params = SamplingParams { temperature: o.temperature, ..SamplingParams::default() };
    let mut ev = PpoEval::default();
    let mut lines = String::new();
    let mut tokens = 0;
    for (k, chunk) in prompts.chunks(o.eval_batch.max(1)).enumerate() {
        on_event(&PpoEvent::Evaluating { done: ev.scores.len(), total: prompts.len() });
        let ids: Vec<&[u32]> = chunk.iter().map(|q| q.ids.as_slice()).collect();
        let seeds: Vec<u64> = (0..chunk.len()).map(|i| o.seed ^ (k * o.eval_batch.max(1) + i) as u64).collect();
        let outs = complete(p, &ids, params, o.max_new_tokens, &seeds)?;
        let scores = score(o, rm, &p.eos, &ids, &outs);
        let r = Rollout::new(&ids, &outs);
        let kl = {
            let _g = no_grad();
            let logps = r.pass(p, v_head, Pass::Eval).0.value().clone();
            let reference = r.pass(p, v_head, Pass::Base).0.value().clone();
            sequence_kl(&logps, &reference, &r.policy_mask)
        };
        for (i, q) in chunk.iter().enumerate() {
            tokens += outs[i].len();
            lines.push_str(
                &serde_json::json!({"prompt": q.text, "completion": text_of(p, &outs[i]), "tokens": outs[i].len(),
                    "score": scores[i], "kl": kl[i]})
                .to_string(),
            );
            lines.push('\n');
        }
        ev.scores.extend(scores);
        ev.kl.extend(kl);
    }
    ev.mean_len = tokens as f64 / prompts.len().max(1) as f64;
    write_answers(&o.out_dir, step, &lines)?;
    Ok(ev)
}

/// PPO's step-0 results read back from its answers file.
fn read_eval(path: &Path, n: usize) -> Result<PpoEval, FinetuneError> {
    let rows = read_answers(path, n, |v| match (v["score"].as_f64(), v["kl"].as_f64(), v["tokens"].as_u64()) {
        (Some(s), Some(k), Some(t)) => Ok((s, k, t)),
        _ => Err("an answer without \"score\", \"kl\" and \"tokens\"".to_string()),
    })?;
    Ok(PpoEval {
        scores: rows.iter().map(|r| r.0).collect(),
        kl: rows.iter().map(|r| r.1).collect(),
        mean_len: rows.iter().map(|r| r.2 as f64).sum::<f64>() / n.max(1) as f64,
    })
}

/// The options a checkpoint is only valid for.
fn fingerprint(o: &PpoOptions) -> String {
    format!(
        "model={} reward_model={} data={} eval_data={} lora={:?} targets={:?} quantized_base={} lr={} steps={} prompts={} max_new_tokens={} temperature={} kl_coef={} kl_target={:?} kl_horizon={} kl_estimator={:?} epochs={} gamma={} lam={} ppo={:?} missing_eos_penalty={} eval_prompts={} seed={}",
        o.model.display(),
        o.reward_model.display(),
        o.data.display(),
        o.eval_data.display(),
        o.lora,
        o.targets,
        o.quantized_base,
        o.lr,
        o.steps,
        o.prompts_per_step,
        o.max_new_tokens,
        o.temperature,
        o.kl_coef,
        o.kl_target,
        o.kl_horizon,
        o.kl_estimator,
        o.epochs,
        o.gamma,
        o.lam,
        o.ppo,
        o.missing_eos_penalty,
        o.eval_prompts,
        o.seed
    )
}

fn check_options(o: &PpoOptions) -> Result<(), FinetuneError> {
    let bad = |m: String| Err(FinetuneError::Options(m));
    if o.steps == 0 || o.prompts_per_step == 0 || o.max_new_tokens == 0 || o.epochs == 0 {
        return bad("steps, prompts per step, max new tokens and epochs must be positive".into());
    }
    if o.prompts_per_step < 2 {
        return bad("--prompts must be at least 2: advantages are whitened over the batch".into());
    }
    let finite_nonneg = |x: f64| x >= 0.0 && x.is_finite();
    if !(finite_nonneg(o.kl_coef) && o.temperature > 0.0 && o.temperature.is_finite()) {
        return bad(format!("--kl-coef must be ≥ 0 and --temperature > 0 (not {} and {})", o.kl_coef, o.temperature));
    }
    if o.kl_target.is_some_and(|t| !(t > 0.0 && t.is_finite())) || !(o.kl_horizon > 0.0 && o.kl_horizon.is_finite()) {
        return bad("--kl-target and --kl-horizon must be positive".into());
    }
    if !((0.0..=1.0).contains(&o.gamma) && (0.0..=1.0).contains(&o.lam)) {
        return bad(format!("--gamma and --lam must lie in [0, 1] (not {} and {})", o.gamma, o.lam));
    }
    if !(o.ppo.cliprange > 0.0 && o.ppo.cliprange_value > 0.0 && finite_nonneg(o.ppo.vf_coef)) {
        return bad("the clip ranges must be positive and --vf-coef ≥ 0".into());
    }
    if !finite_nonneg(o.missing_eos_penalty) {
        return bad("--missing-eos-penalty must be ≥ 0".into());
    }
    Ok(())
}

fn save(o: &PpoOptions, p: &Pretrained) -> Result<PathBuf, FinetuneError> {
    save_lora(&o.out_dir, p, &o.lora, &o.targets, &o.model)
}

/// PPO: load the policy (base + adapter + value head) and the reward model; evaluate the
/// held-out prompts; then for `steps` steps roll out, score, compute rewards and advantages,
/// and update `epochs` times. Held-out evaluation, the adapter and a checkpoint every
/// `eval_interval` steps and at the end; `stop` (Ctrl-C) ends early with both saved; a
/// non-finite loss is an error naming the step, the previous step's checkpoint on disk.
/// Returns the starting and the final held-out results.
pub fn train_ppo(
    o: &PpoOptions,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&PpoEvent),
) -> Result<(PpoEval, PpoEval), FinetuneError> {
    check_options(o)?;
    let mut rng = Rng::new(o.seed);
    let mut p = load_for_lora(&o.model, o.quantized_base, &o.lora, &o.targets, o.max_new_tokens + 1, &mut rng)?;
    p.store.set_trainable(|name, _| name.contains(".lora_") || name.starts_with("v_head."));
    let c = p.model.config.hidden_size;
    let param = |p: &mut Pretrained, name: &str, shape: &[usize], kind| {
        let zeros = Tensor::zeros(&[shape.iter().product()], yuanli_tensor::DType::F32).reshape(shape);
        p.store.param(name, zeros, kind).map_err(|e| FinetuneError::Options(e.to_string()))
    };
    // Zero-initialised: the first values are 0, and the first advantages are the rewards-to-go.
    let v_head = Linear {
        weight: Weight::Param(param(&mut p, "v_head.weight", &[1, c], ParamKind::Weight)?),
        bias: Some(param(&mut p, "v_head.bias", &[1], ParamKind::Bias)?),
        lora: None,
    };
    let rm = RewardModel::load(&o.reward_model, o.quantized_base)?;
    if rm.p.model.config.vocab_size != p.model.config.vocab_size {
        return Err(FinetuneError::Options(format!(
            "the reward model's vocabulary ({}) is not the policy's ({})",
            rm.p.model.config.vocab_size, p.model.config.vocab_size
        )));
    }
    let f = formatter(&p)?;
    let read = |path: &Path| -> Result<Vec<Prompt>, FinetuneError> {
        let msgs = read_jsonl(path, "prompts", |v| prompt_of(v, "\"prompt\""))?;
        let mut out = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.into_iter().enumerate() {
            let ids = prompt_ids(&f, &m)?;
            if ids.is_empty() {
                return Err(FinetuneError::Data(SftError::Line {
                    path: path.display().to_string(),
                    line: i + 1,
                    message: "the chat template renders this prompt as no tokens at all".into(),
                }));
            }
            let limit = p.model.config.max_seq_len.min(rm.p.model.config.max_seq_len);
            if ids.len() + o.max_new_tokens > limit {
                return Err(FinetuneError::Data(SftError::Line {
                    path: path.display().to_string(),
                    line: i + 1,
                    message: format!(
                        "the prompt is {} tokens; with --max-new-tokens {} it exceeds the context ({limit})",
                        ids.len(),
                        o.max_new_tokens
                    ),
                }));
            }
            out.push(Prompt { ids, text: m.last().map(|m| m.content.clone()).unwrap_or_default() });
        }
        Ok(out)
    };
    let train = read(&o.data)?;
    let mut eval = read(&o.eval_data)?;
    if o.eval_prompts > 0 {
        eval.truncate(o.eval_prompts);
    }
    on_event(&PpoEvent::Data { train: train.len(), eval: eval.len(), trainable: p.store.num_trainable() });
    let checkpoint = o.out_dir.join("checkpoint");
    let mut metrics = MetricsLog::open(&o.out_dir, o.resume)?;
    let eval_json = |step: usize, e: &PpoEval| {
        serde_json::json!({"step": step, "eval_score": e.score(), "eval_kl": e.kl(), "eval_completion_len": e.mean_len,
            "eval_prompts": e.scores.len()})
    };
    let mut opt = Adam::adamw(0.9, 0.999, 1e-8, 0.0);
    let schedule =
        LrSchedule::WarmupCosine { max_lr: o.lr, min_lr: o.lr * 0.1, warmup: (o.steps / 10).max(1), total: o.steps };
    let mut kl_coef = o.kl_coef;
    let (first, mut order, mut at, first_step) = if o.resume {
        let st = load_adapter_checkpoint(&checkpoint, &fingerprint(o), &p, &mut opt)?;
        if st.order.len() != train.len() || st.at > st.order.len() || st.step >= o.steps {
            return Err(FinetuneError::Options(format!(
                "{}: the checkpoint (step {} of {}) cannot continue this run",
                checkpoint.display(),
                st.step,
                o.steps
            )));
        }
        rng = Rng::from_state(st.rng_state);
        kl_coef = st.kl_coef.unwrap_or(o.kl_coef);
        on_event(&PpoEvent::Resumed { step: st.step });
        let first = read_eval(&o.out_dir.join("answers_step0.jsonl"), eval.len())?;
        (first, st.order, st.at, st.step + 1)
    } else {
        let first = evaluate(o, &p, &v_head, &rm, &eval, 0, on_event)?;
        on_event(&PpoEvent::Eval { step: 0, eval: first.clone() });
        metrics.log(&eval_json(0, &first))?;
        let order: Vec<usize> = (0..train.len()).collect();
        let at = order.len();
        (first, order, at, 1)
    };
    let state = |step: usize, order: &[usize], at: usize, opt: &Adam, rng: &Rng, kl_coef: f64| SftState {
        step,
        order: order.to_vec(),
        at,
        adam_t: opt.t,
        rng_state: rng.state(),
        first_eval: first.score(),
        fingerprint: fingerprint(o),
        kl_coef: Some(kl_coef),
    };
    let params = SamplingParams { temperature: o.temperature, ..SamplingParams::default() };
    let mut last = first.clone();
    for step in first_step..=o.steps {
        if stop.load(Ordering::Relaxed) {
            save_adapter_checkpoint(&checkpoint, &p, &opt, &state(step - 1, &order, at, &opt, &rng, kl_coef))?;
            on_event(&PpoEvent::Checkpoint { dir: checkpoint.clone(), step: step - 1 });
            break;
        }
        let started = std::time::Instant::now();
        // 1. roll out
        let picked = next_batch(&mut order, &mut at, o.prompts_per_step, &mut rng);
        let prompts: Vec<&[u32]> = picked.iter().map(|&i| train[i].ids.as_slice()).collect();
        let seeds: Vec<u64> = prompts.iter().map(|_| rng.next_u64()).collect();
        let completions = complete(&p, &prompts, params, o.max_new_tokens, &seeds)?;
        let sample_secs = started.elapsed().as_secs_f64();
        // 2. score; the old policy's and the reference's log-probabilities, the old values
        let scores = score(o, &rm, &p.eos, &prompts, &completions);
        let r = Rollout::new(&prompts, &completions);
        let (old_logps, old_values, ref_logps) = {
            let _g = no_grad();
            let (lp, v) = r.pass(&p, &v_head, Pass::Eval);
            let reference = r.pass(&p, &v_head, Pass::Base).0;
            (lp.value().mul(&r.policy_mask), v.value().mul(&r.value_mask), reference.value().mul(&r.policy_mask))
        };
        // 3. rewards, advantages, value targets
        let last_token: Vec<usize> = r.lens.iter().map(|&n| n.max(1) - 1).collect();
        let (rewards, _) = ppo_rewards(&old_logps, &ref_logps, &last_token, &scores, kl_coef, o.kl_estimator);
        let (adv, returns) = gae(&rewards, &old_values, o.gamma, o.lam);
        let adv = masked_whiten(&adv, &r.policy_mask, true).mul(&r.policy_mask);
        let kl = sequence_kl(&old_logps, &ref_logps, &r.policy_mask);
        // 4. epochs of clipped updates on the whole batch
        let lr = schedule.lr(step - 1);
        let mut out = None;
        for _ in 0..o.epochs {
            p.store.zero_grad();
            let (logps, vpred) = r.pass(&p, &v_head, Pass::Train(&mut rng));
            let l =
                ppo_loss(&logps, &vpred, &old_logps, &old_values, &adv, &returns, &r.policy_mask, &r.value_mask, o.ppo);
            let value = l.loss.value().item();
            if !value.is_finite() {
                save_adapter_checkpoint(&checkpoint, &p, &opt, &state(step - 1, &order, at, &opt, &rng, kl_coef))?;
                return Err(FinetuneError::NonFinite { step, value });
            }
            l.loss.backward();
            p.store.clip_grad_norm(1.0);
            opt.step(&p.store, lr);
            out = Some(l);
        }
        let Some(l) = out else {
            return Err(FinetuneError::Options("--epochs must be at least 1".into()));
        };
        let mean_kl = mean(&kl);
        let stats = PpoStats {
            step,
            score: mean(&scores),
            kl: mean_kl,
            kl_coef,
            rlhf_reward: mean(&scores) - kl_coef * mean_kl,
            pg_loss: l.pg_loss,
            vf_loss: l.vf_loss,
            pg_clipfrac: l.pg_clipfrac,
            vf_clipfrac: l.vf_clipfrac,
            completion_len: mean(&r.lens.iter().map(|&n| n as f64).collect::<Vec<_>>()),
            lr,
            sample_secs,
            step_secs: started.elapsed().as_secs_f64(),
        };
        if let Some(target) = o.kl_target {
            let err = (mean_kl / target - 1.0).clamp(-0.2, 0.2);
            kl_coef *= 1.0 + err * o.prompts_per_step as f64 / o.kl_horizon;
        }
        metrics.log(&serde_json::to_value(&stats).map_err(|e| FinetuneError::Options(e.to_string()))?)?;
        on_event(&PpoEvent::Step(stats));
        if (o.eval_interval > 0 && step % o.eval_interval == 0) || step == o.steps {
            last = evaluate(o, &p, &v_head, &rm, &eval, step, on_event)?;
            on_event(&PpoEvent::Eval { step, eval: last.clone() });
            metrics.log(&eval_json(step, &last))?;
            let dir = save(o, &p)?;
            on_event(&PpoEvent::Saved { dir });
            save_adapter_checkpoint(&checkpoint, &p, &opt, &state(step, &order, at, &opt, &rng, kl_coef))?;
            on_event(&PpoEvent::Checkpoint { dir: checkpoint.clone(), step });
        }
    }
    if stop.load(Ordering::Relaxed) {
        let dir = save(o, &p)?;
        on_event(&PpoEvent::Saved { dir });
    }
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preference::{train_pairs, Objective, PairOptions};

    fn tiny() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/testdata/tiny_hf/llama")
    }

    /// A reward model for the tiny base, written by `yuanli rm`'s own code (two steps on
    /// pairs that prefer one digit over another), and prompts.
    fn tiny_run(root: &Path) -> PpoOptions {
        std::fs::create_dir_all(root).unwrap();
        let pairs = root.join("pairs.jsonl");
        let lines: Vec<String> = (0..4)
            .map(|i| {
                serde_json::json!({"prompt": format!("Say {i}."), "chosen": "7 7 7", "rejected": "1 1 1"}).to_string()
            })
            .collect();
        std::fs::write(&pairs, lines.join("\n")).unwrap();
        let rm = PairOptions {
            model: tiny(),
            data: pairs.clone(),
            eval_data: pairs,
            out_dir: root.join("rm"),
            lora: LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, rslora: false },
            targets: vec!["q_proj".into(), "v_proj".into()],
            quantized_base: false,
            objective: Objective::Reward { center: None },
            lr: 1e-2,
            steps: 2,
            batch_pairs: 2,
            max_len: 64,
            eval_interval: 2,
            eval_pairs: 0,
            seed: 1,
            resume: false,
        };
        train_pairs(&rm, &AtomicBool::new(false), &mut |_| {}).unwrap();
        let prompts = root.join("prompts.jsonl");
        let lines: Vec<String> =
            (0..6).map(|i| serde_json::json!({"prompt": format!("Count to {i}.")}).to_string()).collect();
        std::fs::write(&prompts, lines.join("\n")).unwrap();
        PpoOptions {
            model: tiny(),
            reward_model: root.join("rm/reward_model"),
            data: prompts.clone(),
            eval_data: prompts,
            out_dir: root.join("ppo"),
            lora: LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, rslora: false },
            targets: vec!["all-linear".into()],
            quantized_base: false,
            lr: 3e-2,
            steps: 6,
            prompts_per_step: 3,
            max_new_tokens: 6,
            temperature: 1.0,
            kl_coef: 0.05,
            kl_target: Some(1.0),
            kl_horizon: 30.0,
            kl_estimator: KlEstimator::K1,
            epochs: 2,
            gamma: 1.0,
            lam: 0.95,
            ppo: PpoConfig { cliprange: 0.2, cliprange_value: 0.2, vf_coef: 0.1 },
            missing_eos_penalty: 0.0,
            eval_interval: 3,
            eval_prompts: 0,
            eval_batch: 4,
            seed: 9,
            resume: false,
        }
    }

    fn losses(events: &[PpoEvent]) -> Vec<(u64, u64)> {
        events
            .iter()
            .filter_map(
                |e| if let PpoEvent::Step(s) = e { Some((s.pg_loss.to_bits(), s.vf_loss.to_bits())) } else { None },
            )
            .collect()
    }

    /// A run on the tiny model trains (the KL to the reference starts at 0 and moves, β
    /// adapts toward its target, the value loss is positive), writes its answers, adapter
    /// and metrics; stopped after step 2 and resumed it repeats the uninterrupted losses bit
    /// for bit, and other options are refused.
    #[test]
    fn a_stopped_and_resumed_run_repeats_the_uninterrupted_losses() {
        let root = std::env::temp_dir().join(format!("yuanli-ppo-resume-{}", std::process::id()));
        let whole = tiny_run(&root.join("whole"));
        let mut ev = Vec::new();
        let (first, end) = train_ppo(&whole, &AtomicBool::new(false), &mut |e| ev.push(e.clone())).unwrap();
        let want = losses(&ev);
        assert_eq!(want.len(), 6);
        let stats: Vec<PpoStats> =
            ev.iter().filter_map(|e| if let PpoEvent::Step(s) = e { Some(s.clone()) } else { None }).collect();
        assert!(stats[0].kl.abs() < 1e-6 && stats.iter().any(|s| s.kl.abs() > 1e-3), "KL from 0: {stats:?}");
        assert!(stats.iter().all(|s| s.vf_loss > 0.0) && stats[5].kl_coef != 0.05, "{stats:?}");
        assert!(first.kl().abs() < 1e-6 && end.kl() != 0.0 && first.scores.len() == 6);
        for f in ["answers_step0.jsonl", "answers_step6.jsonl", "metrics.jsonl", "adapter/adapter_config.json"] {
            assert!(whole.out_dir.join(f).exists(), "{f}");
        }
        let part = tiny_run(&root.join("part"));
        let stop = AtomicBool::new(false);
        let mut first_half = Vec::new();
        train_ppo(&part, &stop, &mut |e| {
            if matches!(e, PpoEvent::Step(s) if s.step == 2) {
                stop.store(true, Ordering::Relaxed);
            }
            first_half.push(e.clone())
        })
        .unwrap();
        let mut second = Vec::new();
        let (first1, end1) =
            train_ppo(&PpoOptions { resume: true, ..part.clone() }, &AtomicBool::new(false), &mut |e| {
                second.push(e.clone())
            })
            .unwrap();
        let mut got = losses(&first_half);
        got.extend(losses(&second));
        assert_eq!(got, want, "resumed vs uninterrupted losses");
        assert_eq!(end1, end);
        // the starting scores are read back from answers_step0.jsonl (JSON: to the last bit or so)
        assert!(first1.scores.iter().zip(&first.scores).all(|(a, b)| (a - b).abs() < 1e-12));
        assert_eq!(first1.mean_len, first.mean_len);
        let other = PpoOptions { kl_coef: 0.2, resume: true, ..part };
        let err = train_ppo(&other, &AtomicBool::new(false), &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("other options") && err.contains("kl_coef=0.2"), "{err}");
        std::fs::remove_dir_all(&root).ok();
    }

    /// A loss that stops being finite ends the run with an error naming the step, and the
    /// checkpoint of the step before it is on disk.
    #[test]
    fn a_non_finite_loss_names_the_step_and_keeps_the_checkpoint() {
        let root = std::env::temp_dir().join(format!("yuanli-ppo-nan-{}", std::process::id()));
        let o = PpoOptions { lr: 1e30, epochs: 1, eval_interval: 1, ..tiny_run(&root) };
        let err = train_ppo(&o, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
        let FinetuneError::NonFinite { step, .. } = err else { panic!("{err}") };
        assert!(step >= 2, "step {step}");
        assert!(o.out_dir.join("checkpoint/state.json").exists());
        std::fs::remove_dir_all(&root).ok();
    }

    /// Bad options, a prompt file with a bad line and a broken reward model are errors that
    /// say what and where.
    #[test]
    fn bad_options_prompts_and_reward_models_are_refused_by_name() {
        let root = std::env::temp_dir().join(format!("yuanli-ppo-bad-{}", std::process::id()));
        let o = tiny_run(&root);
        let no = AtomicBool::new(false);
        let run = |o: &PpoOptions| train_ppo(o, &no, &mut |_| {}).unwrap_err().to_string();
        assert!(run(&PpoOptions { prompts_per_step: 1, ..o.clone() }).contains("at least 2"));
        assert!(run(&PpoOptions { lam: 1.5, ..o.clone() }).contains("--gamma and --lam"));
        let bad_prompts = root.join("bad.jsonl");
        std::fs::write(&bad_prompts, "{\"prompt\": \"ok\"}\n{\"question\": \"where is the prompt?\"}\n").unwrap();
        let e = run(&PpoOptions { data: bad_prompts, ..o.clone() });
        assert!(e.contains("bad.jsonl:2") && e.contains("prompt"), "{e}");
        // a reward head of the wrong width
        let rm = root.join("rm/reward_model");
        let bytes: Vec<u8> = [0.5f32; 7].iter().flat_map(|x| x.to_le_bytes()).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 7], &bytes).unwrap();
        safetensors::serialize_to_file([("score.weight", view)], None, &rm.join("score.safetensors")).unwrap();
        let e = run(&o);
        assert!(e.contains("score.safetensors") && e.contains("[1, 32]"), "{e}");
        std::fs::remove_file(rm.join("score.safetensors")).unwrap();
        let e = run(&o);
        assert!(e.contains("score.safetensors"), "{e}");
        std::fs::remove_dir_all(&root).ok();
    }

    /// Slot `j` of a completion reads the state that predicts its token `j`; the slot after
    /// the last token is in the value mask only; padding is in neither.
    #[test]
    fn a_rollout_lines_up_tokens_states_and_masks() {
        let prompts: [&[u32]; 2] = [&[1, 2, 3], &[4]];
        let r = Rollout::new(&prompts, &[vec![5, 6], vec![7]]);
        assert_eq!(r.x.to_vec::<u32>(), [1, 2, 3, 5, 6, 4, 7, 0, 0, 0]);
        // T = 3 slots; row 0: positions 2, 3, 4; row 1: positions 0, 1, then clamped to 1
        assert_eq!(r.gather.to_vec::<u32>(), [2, 3, 4, 5, 6, 6]);
        assert_eq!(r.targets.to_vec::<u32>(), [5, 6, 0, 7, 0, 0]);
        assert_eq!(r.policy_mask.to_vec::<f32>(), [1., 1., 0., 1., 0., 0.]);
        assert_eq!(r.value_mask.to_vec::<f32>(), [1., 1., 1., 1., 1., 0.]);
    }
}
