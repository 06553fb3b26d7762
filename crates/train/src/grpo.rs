//! Group relative policy optimisation (`yuanli grpo`) on a verifiable task, with a LoRA adapter.
//!
//! Each step takes `P` problems, and for each samples `G` completions from the current policy
//! with the batched inference engine (all `P·G` sequences decode together, each weight read
//! once per token step; the adapter is applied unmerged, so the engine samples the very policy
//! being trained). A checker scores every completion — 1 when the number it gives equals the
//! problem's answer — and each completion's advantage is its reward against its own group's:
//! `A = (r − mean_group) / (std_group + 1e-4)`. No value network: the other samples of the same
//! prompt are the baseline. The loss is GRPO's clipped ratio objective on the completion's
//! tokens, with the k3 estimate of the KL divergence to the reference weighted by β
//! ([`grpo_loss`]); the reference is the base with the adapter switched off ([`Pass::Base`]),
//! as for DPO.
//!
//! A group whose completions all scored the same — all right, or all wrong — has advantage 0 on
//! every token and teaches nothing; by default such groups are dropped before the forward pass
//! (DAPO's dynamic sampling, without its resampling), so a step costs only what can teach.
//!
//! With one optimisation pass per batch of samples (TRL's default `num_iterations = 1`) the
//! "old" policy that sampled is the policy being differentiated, so the ratio is 1 in value and
//! only its gradient `∇ log π` counts: the step is REINFORCE with a group baseline, and the clip
//! never binds.
//!
//! **What is measured.** Before training, every `eval_interval` steps and at the end, the
//! held-out problems are answered greedily (temperature 0) and checked: the accuracy and, at
//! the end, the change against the starting model on the same problems with its 95% confidence
//! interval (paired: the per-problem differences). Each evaluation's answers are written to
//! `out_dir/answers_step{N}.jsonl` to be read.
//!
//! Problems are JSONL, one per line: `{"prompt": "Calculate 5 + 91 =", "answer": "96"}` (the
//! prompt may also be a list of messages, the answer a JSON number).

use crate::align::{group_advantages, grpo_loss, GrpoAggregation, GrpoConfig, RewardScale};
use crate::optim::Adam;
use crate::preference::prompt_of;
use crate::schedule::LrSchedule;
use crate::sft::{
    batch, formatter, load_adapter_checkpoint, load_for_lora, next_batch, read_jsonl, replace_dir,
    save_adapter_checkpoint, Example, FinetuneError, Formatter, MetricsLog, SftError, SftState, IGNORE,
};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use yuanli_autograd::{no_grad, Var};
use yuanli_models::llama::Pass;
use yuanli_models::load::Pretrained;
use yuanli_models::peft::{save_adapter, Adapter};
use yuanli_models::{generate_batch, Message, Request, SamplingParams};
use yuanli_nn::LoraConfig;
use yuanli_tensor::{Rng, Tensor};

/// A problem with a checkable answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// The conversation before the answer.
    pub prompt: Vec<Message>,
    /// The gold answer, as written in the file.
    pub answer: String,
}

/// Reads a JSONL file of problems; errors name the file and line.
pub fn read_problems(path: &Path) -> Result<Vec<Problem>, SftError> {
    read_jsonl(path, "problems", problem)
}

fn problem(v: &serde_json::Value) -> Result<Problem, String> {
    let prompt = prompt_of(v, "\"prompt\" and \"answer\"")?;
    let answer = match v.get("answer") {
        Some(serde_json::Value::String(s)) => s.trim().to_string(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(_) => return Err("\"answer\" is neither a string nor a number".into()),
        None => return Err("\"answer\" is missing (a problem needs \"prompt\" and \"answer\")".into()),
    };
    Ok(Problem { prompt, answer })
}

/// How a completion is checked against the gold answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checker {
    /// The last number in the completion equals the answer ("… = 96", "The answer is 96.").
    LastNumber,
    /// GSM8K's answer line: the completion ends with `#### N` and N equals the answer.
    Gsm8k,
}

/// A checked completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The answer it gives is right.
    pub correct: bool,
    /// It gives an answer in the checker's form at all.
    pub formatted: bool,
}

/// The numbers in `text` (integers or decimals, an optional minus sign, thousands commas
/// allowed: `-1,234.5`), in order.
pub fn numbers(text: &str) -> Vec<f64> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let neg = i > 0 && b[i - 1] == b'-' && (i < 2 || !b[i - 2].is_ascii_alphanumeric());
            let start = i;
            while i < b.len()
                && (b[i].is_ascii_digit()
                    || (matches!(b[i], b',' | b'.') && i + 1 < b.len() && b[i + 1].is_ascii_digit()))
            {
                i += 1;
            }
            let s: String = text[start..i].chars().filter(|&c| c != ',').collect();
            if let Ok(x) = s.parse::<f64>() {
                out.push(if neg { -x } else { x });
            }
        } else {
            i += 1;
        }
    }
    out
}

impl Checker {
    /// The gold answer as a number, or an error saying why it cannot be checked.
    pub fn gold(self, answer: &str) -> Result<f64, String> {
        match numbers(answer).as_slice() {
            [x] => Ok(*x),
            _ => Err(format!("the answer {answer:?} is not one number, so it cannot be checked")),
        }
    }

    /// Checks `completion` against `gold`.
    pub fn check(self, completion: &str, gold: f64) -> Verdict {
        let given = match self {
            Checker::LastNumber => numbers(completion).last().copied(),
            Checker::Gsm8k => completion
                .trim_end()
                .rsplit_once("####")
                .filter(|(_, tail)| !tail.contains('\n'))
                .and_then(|(_, tail)| numbers(tail).last().copied()),
        };
        Verdict {
            correct: given.is_some_and(|x| (x - gold).abs() <= 1e-6 * gold.abs().max(1.0)),
            formatted: given.is_some(),
        }
    }
}

/// A GRPO run.
#[derive(Clone, Debug)]
pub struct GrpoOptions {
    /// The base model (`.gguf` or Hugging Face directory; it needs a chat template).
    pub model: PathBuf,
    /// Training problems (JSONL).
    pub data: PathBuf,
    /// Held-out problems (JSONL).
    pub eval_data: PathBuf,
    /// Where `metrics.jsonl`, the answers and `adapter/` go.
    pub out_dir: PathBuf,
    /// The adapter.
    pub lora: LoraConfig,
    /// Target modules.
    pub targets: Vec<String>,
    /// QLoRA: the base kept block-quantized.
    pub quantized_base: bool,
    /// How completions are checked.
    pub checker: Checker,
    /// Reward for an answer in the checker's form, right or wrong (0: correctness alone).
    pub format_reward: f64,
    /// Peak learning rate (AdamW, warm-up then cosine).
    pub lr: f64,
    /// Optimizer steps.
    pub steps: usize,
    /// Problems per step.
    pub prompts_per_step: usize,
    /// Completions sampled per problem (the group).
    pub group: usize,
    /// Longest completion in tokens (a longer one is cut and usually scores 0).
    pub max_new_tokens: usize,
    /// Sampling temperature of the training completions.
    pub temperature: f64,
    /// β: weight of the k3 KL to the reference (0: no reference pass).
    pub beta: f64,
    /// Clip range of the ratio: `[1 − ε_low, 1 + ε_high]`.
    pub eps_low: f64,
    /// Upper clip.
    pub eps_high: f64,
    /// How per-token losses are averaged.
    pub aggregation: GrpoAggregation,
    /// How rewards are scaled into advantages.
    pub scale: RewardScale,
    /// Keep the groups whose completions all scored the same in the loss (TRL's behaviour:
    /// their advantage is 0, so they add only the KL term). By default they are dropped before
    /// the forward pass, as DAPO's dynamic sampling drops them (without resampling): the step
    /// costs only what can teach, and a step where no group differs makes no update.
    pub keep_uniform_groups: bool,
    /// Held-out evaluation every this many steps (0: only at the start and the end).
    pub eval_interval: usize,
    /// Held-out problems evaluated (the first ones; 0 = all).
    pub eval_problems: usize,
    /// Sequences decoded together when evaluating.
    pub eval_batch: usize,
    /// Seed of the order, the samples and the adapters' initialisation.
    pub seed: u64,
    /// Continue from `out_dir/checkpoint` instead of starting over.
    pub resume: bool,
}

/// The options a checkpoint is only valid for (everything but the output, the evaluation
/// schedule and `resume`).
fn fingerprint(o: &GrpoOptions) -> String {
    format!(
        "grpo model={} data={} eval_data={} lora={:?} targets={:?} quantized_base={} checker={:?} format_reward={} lr={} steps={} prompts={} group={} max_new={} temperature={} beta={} eps=({}, {}) aggregation={:?} scale={:?} keep_uniform={} eval_problems={} seed={}",
        o.model.display(),
        o.data.display(),
        o.eval_data.display(),
        o.lora,
        o.targets,
        o.quantized_base,
        o.checker,
        o.format_reward,
        o.lr,
        o.steps,
        o.prompts_per_step,
        o.group,
        o.max_new_tokens,
        o.temperature,
        o.beta,
        o.eps_low,
        o.eps_high,
        o.aggregation,
        o.scale,
        o.keep_uniform_groups,
        o.eval_problems,
        o.seed
    )
}

/// Held-out results: one verdict per problem, in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Accuracy {
    /// Whether each problem was answered right.
    pub correct: Vec<bool>,
    /// Whether each answer had the checker's form.
    pub formatted: Vec<bool>,
    /// Mean completion length in tokens.
    pub mean_len: f64,
}

impl Accuracy {
    /// Fraction answered right.
    pub fn rate(&self) -> f64 {
        self.correct.iter().filter(|&&c| c).count() as f64 / self.correct.len().max(1) as f64
    }

    /// Fraction with an answer in the checker's form.
    pub fn format_rate(&self) -> f64 {
        self.formatted.iter().filter(|&&c| c).count() as f64 / self.formatted.len().max(1) as f64
    }

    /// The 95% confidence interval of the accuracy (Wilson's score interval).
    pub fn interval(&self) -> (f64, f64) {
        let n = self.correct.len().max(1) as f64;
        let (p, z) = (self.rate(), 1.959_963_984_540_054);
        let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
        let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
        (centre - half, centre + half)
    }
}

/// The change in accuracy from `before` to `after` on the same problems, with its 95%
/// confidence interval from the per-problem differences `d_i ∈ {−1, 0, 1}` (paired: the
/// problems both get right or both get wrong add no noise): `mean ± 1.96·s/√n`, `s` the
/// differences' sample standard deviation. Returns `(change, low, high)`.
pub fn paired_change(before: &Accuracy, after: &Accuracy) -> (f64, f64, f64) {
    assert_eq!(before.correct.len(), after.correct.len(), "paired_change: different problem sets");
    let d: Vec<f64> = before
        .correct
        .iter()
        .zip(&after.correct)
        .map(|(&b, &a)| f64::from(u8::from(a)) - f64::from(u8::from(b)))
        .collect();
    let n = d.len().max(1) as f64;
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let half = 1.959_963_984_540_054 * (var / n).sqrt();
    (mean, mean - half, mean + half)
}

/// What a run reports as it goes.
#[derive(Clone, Debug)]
pub enum GrpoEvent {
    /// The data is ready.
    Data {
        /// Training problems.
        train: usize,
        /// Held-out problems.
        eval: usize,
        /// Trainable parameters.
        trainable: usize,
    },
    /// Answering the held-out problems: `done` of `total`.
    Evaluating {
        /// Problems answered so far.
        done: usize,
        /// Problems to answer.
        total: usize,
    },
    /// One optimizer step.
    Step(StepStats),
    /// A held-out evaluation.
    Eval {
        /// The step it follows (0: the starting model).
        step: usize,
        /// The results.
        accuracy: Accuracy,
    },
    /// The adapter was written (atomically).
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

/// The statistics of one step (also its `metrics.jsonl` line).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StepStats {
    /// The step (from 1).
    pub step: usize,
    /// The loss.
    pub loss: f64,
    /// Mean reward of the sampled completions.
    pub reward: f64,
    /// Mean over groups of the rewards' standard deviation (0: nothing to learn from).
    pub reward_std: f64,
    /// Fraction of sampled completions that are right.
    pub accuracy: f64,
    /// Fraction of groups whose completions all scored the same (zero advantage).
    pub solved_or_failed: f64,
    /// Masked mean of the k3 KL estimate to the reference (0 with β = 0).
    pub kl: f64,
    /// Mean completion length in tokens.
    pub completion_len: f64,
    /// Fraction of completions cut at `max_new_tokens`.
    pub truncated: f64,
    /// Fraction of tokens whose ratio was clipped.
    pub clip: f64,
    /// Completions that entered the loss.
    pub trained: usize,
    /// Learning rate of the step.
    pub lr: f64,
    /// Seconds spent sampling.
    pub sample_secs: f64,
    /// Seconds of the whole step.
    pub step_secs: f64,
}

/// The prompt's token ids with the generation prompt (the assistant's turn opened).
pub(crate) fn prompt_ids(f: &Formatter<'_>, msgs: &[Message]) -> Result<Vec<u32>, SftError> {
    let text = f.template.render(msgs, true).map_err(SftError::Template)?;
    let ids = f
        .tokenizer
        .encode(&text, yuanli_tokenizer::SpecialMode::Allow)
        .map_err(|e| SftError::Template(e.to_string()))?;
    Ok(match f.bos {
        Some(b) if ids.first() != Some(&b) => [vec![b], ids].concat(),
        _ => ids,
    })
}

/// A problem ready for the model: the prompt's ids and the gold answer as a number.
struct Ready {
    ids: Vec<u32>,
    gold: f64,
    answer: String,
    prompt: String,
}

/// Samples (or, at temperature 0, decodes greedily) one completion per request; each stops at
/// an end-of-generation token (kept as its last token) or after `max_new` tokens.
pub(crate) fn complete(
    p: &Pretrained,
    prompts: &[&[u32]],
    params: SamplingParams,
    max_new: usize,
    seeds: &[u64],
) -> Result<Vec<Vec<u32>>, FinetuneError> {
    let requests: Vec<Request<'_>> = prompts
        .iter()
        .zip(seeds)
        .map(|(&prompt, &seed)| Request { prompt, max_tokens: max_new, params, seed })
        .collect();
    let eos = &p.eos;
    let out = generate_batch(&p.model, &requests, &mut |_, tok| {
        if eos.contains(&tok) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .map_err(|e| FinetuneError::Options(format!("sampling completions: {e}")))?;
    Ok(out.into_iter().map(|g| g.tokens).collect())
}

/// The text of a completion (its end-of-generation token dropped).
pub(crate) fn text_of(p: &Pretrained, tokens: &[u32]) -> String {
    let body = match tokens.last() {
        Some(t) if p.eos.contains(t) => &tokens[..tokens.len() - 1],
        _ => tokens,
    };
    p.tokenizer.decode_lossy(body).unwrap_or_default()
}

/// Answers the held-out problems greedily, `batch` at a time, checks them, and writes the
/// answers to `out_dir/answers_step{step}.jsonl`.
fn evaluate(
    o: &GrpoOptions,
    p: &Pretrained,
    problems: &[Ready],
    step: usize,
    on_event: &mut dyn FnMut(&GrpoEvent),
) -> Result<Accuracy, FinetuneError> {
    let mut acc = Accuracy::default();
    let mut lines = String::new();
    let mut tokens = 0usize;
    for chunk in problems.chunks(o.eval_batch.max(1)) {
        on_event(&GrpoEvent::Evaluating { done: acc.correct.len(), total: problems.len() });
        let prompts: Vec<&[u32]> = chunk.iter().map(|r| r.ids.as_slice()).collect();
        let outs = complete(p, &prompts, SamplingParams::greedy(), o.max_new_tokens, &vec![0; chunk.len()])?;
        for (r, out) in chunk.iter().zip(&outs) {
            let text = text_of(p, out);
            let v = o.checker.check(&text, r.gold);
            tokens += out.len();
            acc.correct.push(v.correct);
            acc.formatted.push(v.formatted);
            lines.push_str(
                &serde_json::json!({"prompt": r.prompt, "answer": r.answer, "completion": text, "correct": v.correct,
                    "formatted": v.formatted, "tokens": out.len()})
                .to_string(),
            );
            lines.push('\n');
        }
    }
    acc.mean_len = tokens as f64 / problems.len().max(1) as f64;
    write_answers(&o.out_dir, step, &lines)?;
    Ok(acc)
}

/// Writes a held-out evaluation's answers (`lines`, JSONL) atomically to
/// `out_dir/answers_step{step}.jsonl`: GRPO's and PPO's.
pub(crate) fn write_answers(out_dir: &Path, step: usize, lines: &str) -> Result<(), FinetuneError> {
    let path = out_dir.join(format!("answers_step{step}.jsonl"));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, lines)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| FinetuneError::File { path: path.clone(), message: e.to_string() })
}

/// Reads back the `n` answers an earlier evaluation wrote (to resume with the step-0
/// results), each turned into a `T` by `parse`; errors name the file.
pub(crate) fn read_answers<T>(
    path: &Path,
    n: usize,
    parse: impl Fn(&serde_json::Value) -> Result<T, String>,
) -> Result<Vec<T>, FinetuneError> {
    let bad = |m: String| FinetuneError::File { path: path.to_path_buf(), message: m };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::with_capacity(n);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        out.push(parse(&v).map_err(bad)?);
    }
    if out.len() != n {
        return Err(bad(format!("holds {} answers, this run evaluates {n}", out.len())));
    }
    Ok(out)
}

/// GRPO's step-0 accuracy read back from its answers file.
fn read_accuracy(path: &Path, n: usize) -> Result<Accuracy, FinetuneError> {
    let rows = read_answers(path, n, |v| {
        let correct = v["correct"].as_bool().ok_or("an answer without \"correct\"")?;
        // (files written before these fields existed: in form, length unknown)
        Ok((correct, v["formatted"].as_bool().unwrap_or(true), v["tokens"].as_u64().unwrap_or(0)))
    })?;
    Ok(Accuracy {
        correct: rows.iter().map(|r| r.0).collect(),
        formatted: rows.iter().map(|r| r.1).collect(),
        mean_len: rows.iter().map(|r| r.2 as f64).sum::<f64>() / n.max(1) as f64,
    })
}

/// `(B, T)` per-token log-probabilities from the `(n,)` values at the counted positions of
/// `targets` (row-major), zeros elsewhere: one product with a constant 0/1 matrix, so the
/// gradient flows back to the counted ones.
fn spread(tok: &Var, targets: &Tensor) -> Var {
    let (b, t) = (targets.dim(0), targets.dim(1));
    let n = tok.shape()[0];
    let mut s = vec![0f32; b * t * n];
    for (k, pos) in targets.to_vec::<u32>().iter().enumerate().filter(|(_, &y)| y != IGNORE).map(|(i, _)| i).enumerate()
    {
        s[pos * n + k] = 1.0;
    }
    let s = Var::constant(Tensor::new(s, &[b * t, n]).to_dtype(tok.value().dtype()));
    s.matmul(&tok.reshape(&[n, 1])).reshape(&[b, t])
}

/// Writes the adapter of `p` atomically to `out_dir/adapter` (PEFT's format), its config naming
/// `base`: the result of GRPO and PPO (whose value head stays in the checkpoint).
pub(crate) fn save_lora(
    out_dir: &Path,
    p: &Pretrained,
    lora: &LoraConfig,
    targets: &[String],
    base: &Path,
) -> Result<PathBuf, FinetuneError> {
    let dir = out_dir.join("adapter");
    replace_dir(&dir, |tmp| {
        let adapter = Adapter { lora: lora.clone(), targets: targets.to_vec(), base: base.display().to_string() };
        save_adapter(tmp, &p.model, &adapter)?;
        Ok(())
    })?;
    Ok(dir)
}

fn save(o: &GrpoOptions, p: &Pretrained) -> Result<PathBuf, FinetuneError> {
    save_lora(&o.out_dir, p, &o.lora, &o.targets, &o.model)
}

/// GRPO: load the base frozen with an adapter; evaluate the held-out problems; then for
/// `steps` steps sample `group` completions for each of `prompts_per_step` problems, reward
/// them with the checker, turn rewards into group-relative advantages, and take one AdamW step
/// (gradient clipped at 1) on [`grpo_loss`]. Held-out evaluation, the adapter and a checkpoint
/// every `eval_interval` steps and at the end; `stop` (Ctrl-C) ends early with both saved.
/// Returns the starting and the final held-out results.
pub fn train_grpo(
    o: &GrpoOptions,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&GrpoEvent),
) -> Result<(Accuracy, Accuracy), FinetuneError> {
    if o.steps == 0 || o.prompts_per_step == 0 || o.max_new_tokens == 0 {
        return Err(FinetuneError::Options("steps, prompts per step and max new tokens must be positive".into()));
    }
    if o.group < 2 {
        return Err(FinetuneError::Options(format!(
            "--group {}: GRPO's baseline is the other completions of the same prompt, so a group needs at least 2",
            o.group
        )));
    }
    if !(o.beta >= 0.0 && o.beta.is_finite() && o.temperature > 0.0 && o.temperature.is_finite()) {
        return Err(FinetuneError::Options(format!(
            "--beta must be ≥ 0 and --temperature > 0 (not {} and {})",
            o.beta, o.temperature
        )));
    }
    if !(0.0..1.0).contains(&o.eps_low) || !(0.0..=f64::MAX).contains(&o.eps_high) || !o.format_reward.is_finite() {
        return Err(FinetuneError::Options(format!(
            "the clip range needs 0 ≤ ε_low < 1 and ε_high ≥ 0 (not {} and {}), and a finite format reward",
            o.eps_low, o.eps_high
        )));
    }
    let mut rng = Rng::new(o.seed);
    let p = load_for_lora(&o.model, o.quantized_base, &o.lora, &o.targets, o.max_new_tokens + 1, &mut rng)?;
    let f = formatter(&p)?;
    let ready = |path: &Path| -> Result<Vec<Ready>, FinetuneError> {
        let problems = read_problems(path)?;
        let mut out = Vec::with_capacity(problems.len());
        for (i, pr) in problems.into_iter().enumerate() {
            let gold = o.checker.gold(&pr.answer).map_err(|e| {
                FinetuneError::Data(SftError::Line { path: path.display().to_string(), line: i + 1, message: e })
            })?;
            let ids = prompt_ids(&f, &pr.prompt)?;
            if ids.len() + o.max_new_tokens > p.model.config.max_seq_len {
                return Err(FinetuneError::Data(SftError::Line {
                    path: path.display().to_string(),
                    line: i + 1,
                    message: format!(
                        "the prompt is {} tokens; with --max-new-tokens {} it exceeds the model's context ({})",
                        ids.len(),
                        o.max_new_tokens,
                        p.model.config.max_seq_len
                    ),
                }));
            }
            let prompt = pr.prompt.last().map(|m| m.content.clone()).unwrap_or_default();
            out.push(Ready { ids, gold, answer: pr.answer, prompt });
        }
        Ok(out)
    };
    let train = ready(&o.data)?;
    let mut eval = ready(&o.eval_data)?;
    if o.eval_problems > 0 {
        eval.truncate(o.eval_problems);
    }
    on_event(&GrpoEvent::Data { train: train.len(), eval: eval.len(), trainable: p.store.num_trainable() });
    let checkpoint = o.out_dir.join("checkpoint");
    let mut metrics = MetricsLog::open(&o.out_dir, o.resume)?;
    let eval_json = |step: usize, a: &Accuracy| {
        serde_json::json!({"step": step, "eval_accuracy": a.rate(), "eval_format": a.format_rate(),
            "eval_completion_len": a.mean_len, "eval_problems": a.correct.len()})
    };
    let mut opt = Adam::adamw(0.9, 0.999, 1e-8, 0.0);
    let schedule =
        LrSchedule::WarmupCosine { max_lr: o.lr, min_lr: o.lr * 0.1, warmup: (o.steps / 10).max(1), total: o.steps };
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
        on_event(&GrpoEvent::Resumed { step: st.step });
        let first = read_accuracy(&o.out_dir.join("answers_step0.jsonl"), eval.len())?;
        (first, st.order, st.at, st.step + 1)
    } else {
        let first = evaluate(o, &p, &eval, 0, on_event)?;
        on_event(&GrpoEvent::Eval { step: 0, accuracy: first.clone() });
        metrics.log(&eval_json(0, &first))?;
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
        first_eval: first.rate(),
        fingerprint: fingerprint(o),
        kl_coef: None,
    };
    let params = SamplingParams { temperature: o.temperature, ..SamplingParams::default() };
    let cfg = GrpoConfig { eps_low: o.eps_low, eps_high: o.eps_high, aggregation: o.aggregation };
    let mut last = first.clone();
    for step in first_step..=o.steps {
        if stop.load(Ordering::Relaxed) {
            save_adapter_checkpoint(&checkpoint, &p, &opt, &state(step - 1, &order, at, &opt, &rng))?;
            on_event(&GrpoEvent::Checkpoint { dir: checkpoint.clone(), step: step - 1 });
            break;
        }
        let started = std::time::Instant::now();
        let picked = next_batch(&mut order, &mut at, o.prompts_per_step, &mut rng);
        // G completions of each problem, each with its own seed.
        let prompts: Vec<&[u32]> =
            picked.iter().flat_map(|&i| std::iter::repeat_n(train[i].ids.as_slice(), o.group)).collect();
        let seeds: Vec<u64> = prompts.iter().map(|_| rng.next_u64()).collect();
        let completions = complete(&p, &prompts, params, o.max_new_tokens, &seeds)?;
        let sample_secs = started.elapsed().as_secs_f64();
        let mut rewards = Vec::with_capacity(completions.len());
        let mut correct = 0usize;
        for (k, c) in completions.iter().enumerate() {
            let v = o.checker.check(&text_of(&p, c), train[picked[k / o.group]].gold);
            correct += usize::from(v.correct);
            rewards.push(f64::from(u8::from(v.correct)) + if v.formatted { o.format_reward } else { 0.0 });
        }
        let all_adv = group_advantages(&rewards, o.group, o.scale);
        // The completions that enter the loss: all of them, or (dropping uniform groups) those
        // of groups whose rewards differ.
        let mixed = |k: usize| {
            let g = &rewards[k / o.group * o.group..(k / o.group + 1) * o.group];
            g.iter().any(|&r| r != g[0])
        };
        let kept: Vec<usize> = (0..completions.len()).filter(|&k| o.keep_uniform_groups || mixed(k)).collect();
        let adv: Vec<f64> = kept.iter().map(|&k| all_adv[k]).collect();
        let lr = schedule.lr(step - 1);
        p.store.zero_grad();
        let nothing = kept.is_empty() || (o.beta == 0.0 && adv.iter().all(|&a| a == 0.0));
        let (loss, kl, clip) = if nothing {
            // Every group scored alike (and there is no KL term): no gradient, no update.
            (0.0, 0.0, 0.0)
        } else {
            let rows: Vec<Example> = kept
                .iter()
                .map(|&k| {
                    let ids = [prompts[k], completions[k].as_slice()].concat();
                    let target = (0..ids.len()).map(|i| i >= prompts[k].len()).collect();
                    Example { ids, target }
                })
                .collect();
            let refs: Vec<&Example> = rows.iter().collect();
            let (x, y, _) = batch(&refs);
            let mask = Tensor::new(
                y.to_vec::<u32>().iter().map(|&t| f32::from(u8::from(t != IGNORE))).collect::<Vec<f32>>(),
                &[y.dim(0), y.dim(1)],
            );
            let reference = (o.beta > 0.0).then(|| {
                let _g = no_grad();
                spread(&p.model.token_logps(&x, &y, IGNORE, Pass::Base), &y).value().clone()
            });
            let logps = spread(&p.model.token_logps(&x, &y, IGNORE, Pass::Train(&mut rng)), &y);
            let out = grpo_loss(&logps, None, reference.as_ref().map(|r| (o.beta, r)), &adv, &mask, cfg);
            let loss = out.loss.value().item();
            if !loss.is_finite() {
                save_adapter_checkpoint(&checkpoint, &p, &opt, &state(step - 1, &order, at, &opt, &rng))?;
                return Err(FinetuneError::NonFinite { step, value: loss });
            }
            out.loss.backward();
            p.store.clip_grad_norm(1.0);
            opt.step(&p.store, lr);
            (loss, out.kl, out.clip_low + out.clip_high)
        };
        let groups: Vec<&[f64]> = rewards.chunks(o.group).collect();
        let std_of = |g: &[f64]| {
            let m = g.iter().sum::<f64>() / g.len() as f64;
            (g.iter().map(|r| (r - m).powi(2)).sum::<f64>() / (g.len() - 1) as f64).sqrt()
        };
        let n = completions.len() as f64;
        let stats = StepStats {
            step,
            loss,
            reward: rewards.iter().sum::<f64>() / n,
            reward_std: groups.iter().map(|g| std_of(g)).sum::<f64>() / groups.len() as f64,
            accuracy: correct as f64 / n,
            solved_or_failed: groups.iter().filter(|g| g.iter().all(|&r| r == g[0])).count() as f64
                / groups.len() as f64,
            kl,
            completion_len: completions.iter().map(Vec::len).sum::<usize>() as f64 / n,
            truncated: completions
                .iter()
                .filter(|c| c.len() == o.max_new_tokens && !c.last().is_some_and(|t| p.eos.contains(t)))
                .count() as f64
                / n,
            clip,
            trained: if nothing { 0 } else { kept.len() },
            lr,
            sample_secs,
            step_secs: started.elapsed().as_secs_f64(),
        };
        metrics.log(&serde_json::to_value(&stats).map_err(|e| FinetuneError::Options(e.to_string()))?)?;
        on_event(&GrpoEvent::Step(stats));
        if (o.eval_interval > 0 && step % o.eval_interval == 0) || step == o.steps {
            last = evaluate(o, &p, &eval, step, on_event)?;
            on_event(&GrpoEvent::Eval { step, accuracy: last.clone() });
            metrics.log(&eval_json(step, &last))?;
            let dir = save(o, &p)?;
            on_event(&GrpoEvent::Saved { dir });
            save_adapter_checkpoint(&checkpoint, &p, &opt, &state(step, &order, at, &opt, &rng))?;
            on_event(&GrpoEvent::Checkpoint { dir: checkpoint.clone(), step });
        }
    }
    if stop.load(Ordering::Relaxed) {
        let dir = save(o, &p)?;
        on_event(&GrpoEvent::Saved { dir });
    }
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_run(out: &Path) -> GrpoOptions {
        let data = out.with_extension("jsonl");
        let lines: Vec<String> = (0..6)
            .map(|i| serde_json::json!({"prompt": format!("What is {i} plus {i}?"), "answer": i + i}).to_string())
            .collect();
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        std::fs::write(&data, lines.join("\n")).unwrap();
        GrpoOptions {
            model: Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/testdata/tiny_hf/llama"),
            data: data.clone(),
            eval_data: data,
            out_dir: out.to_path_buf(),
            lora: LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, rslora: false },
            targets: vec!["all-linear".into()],
            quantized_base: false,
            checker: Checker::LastNumber,
            // The random tiny model rarely writes a digit: rewarding any number makes groups
            // whose completions differ, so the loss has something to push on.
            format_reward: 1.0,
            lr: 1e-2,
            steps: 6,
            prompts_per_step: 2,
            group: 4,
            max_new_tokens: 8,
            temperature: 1.0,
            beta: 0.1,
            eps_low: 0.2,
            eps_high: 0.28,
            aggregation: GrpoAggregation::Token,
            scale: RewardScale::Group,
            keep_uniform_groups: false,
            eval_interval: 2,
            eval_problems: 0,
            eval_batch: 4,
            seed: 5,
            resume: false,
        }
    }

    /// A run on the tiny model learns from mixed groups (non-zero losses, a KL that moves
    /// off zero), writes its answers, adapter and metrics; stopped after step 3 and resumed it
    /// repeats the uninterrupted run's losses bit for bit; other options are refused.
    #[test]
    fn a_stopped_and_resumed_run_repeats_the_uninterrupted_losses() {
        let root = std::env::temp_dir().join(format!("yuanli-grpo-resume-{}", std::process::id()));
        let losses = |events: &[GrpoEvent]| -> Vec<u64> {
            events
                .iter()
                .filter_map(|e| if let GrpoEvent::Step(s) = e { Some(s.loss.to_bits()) } else { None })
                .collect()
        };
        let whole = tiny_run(&root.join("whole"));
        let mut ev = Vec::new();
        let (first, end) = train_grpo(&whole, &AtomicBool::new(false), &mut |e| ev.push(e.clone())).unwrap();
        let want = losses(&ev);
        assert_eq!(want.len(), 6);
        assert!(want.iter().any(|&l| f64::from_bits(l) != 0.0), "some group had different rewards");
        let kls: Vec<f64> =
            ev.iter().filter_map(|e| if let GrpoEvent::Step(s) = e { Some(s.kl) } else { None }).collect();
        assert!(kls[0] == 0.0 && kls.iter().any(|&k| k > 0.0), "the KL starts at 0 and moves: {kls:?}");
        assert_eq!((first.correct.len(), end.correct.len()), (6, 6));
        for f in ["answers_step0.jsonl", "answers_step6.jsonl", "metrics.jsonl", "adapter/adapter_config.json"] {
            assert!(whole.out_dir.join(f).exists(), "{f}");
        }
        let part = tiny_run(&root.join("part"));
        let stop = AtomicBool::new(false);
        let mut first_half = Vec::new();
        train_grpo(&part, &stop, &mut |e| {
            if matches!(e, GrpoEvent::Step(s) if s.step == 3) {
                stop.store(true, Ordering::Relaxed);
            }
            first_half.push(e.clone())
        })
        .unwrap();
        assert!(first_half.iter().any(|e| matches!(e, GrpoEvent::Checkpoint { step: 3, .. })));
        let mut second = Vec::new();
        let (first1, end1) =
            train_grpo(&GrpoOptions { resume: true, ..part.clone() }, &AtomicBool::new(false), &mut |e| {
                second.push(e.clone())
            })
            .unwrap();
        let mut got = losses(&first_half);
        got.extend(losses(&second));
        assert_eq!(got, want, "resumed vs uninterrupted losses");
        assert_eq!((&first1.correct, &end1.correct), (&first.correct, &end.correct));
        // the step-0 results read back from answers_step0.jsonl, form and length included
        assert_eq!((first1.formatted, first1.mean_len), (first.formatted, first.mean_len));
        let other = GrpoOptions { beta: 0.2, resume: true, ..part };
        let err = train_grpo(&other, &AtomicBool::new(false), &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("other options") && err.contains("beta=0.2"), "{err}");
        std::fs::remove_dir_all(&root).ok();
    }

    /// A loss that stops being finite ends the run with an error naming the step, and the
    /// checkpoint of the step before it is on disk.
    #[test]
    fn a_non_finite_loss_names_the_step_and_keeps_the_checkpoint() {
        let root = std::env::temp_dir().join(format!("yuanli-grpo-nan-{}", std::process::id()));
        let o = GrpoOptions { lr: 1e30, eval_interval: 1, keep_uniform_groups: true, ..tiny_run(&root.join("run")) };
        let err = train_grpo(&o, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
        let FinetuneError::NonFinite { step, .. } = err else { panic!("{err}") };
        assert!(step >= 2, "step {step}");
        assert!(o.out_dir.join("checkpoint/state.json").exists());
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn bad_options_and_answers_are_refused_by_name() {
        let root = std::env::temp_dir().join(format!("yuanli-grpo-bad-{}", std::process::id()));
        let o = tiny_run(&root.join("run"));
        let err = train_grpo(&GrpoOptions { group: 1, ..o.clone() }, &AtomicBool::new(false), &mut |_| {});
        assert!(err.unwrap_err().to_string().contains("at least 2"));
        std::fs::write(&o.data, "{\"prompt\": \"q\", \"answer\": \"1\"}\n{\"prompt\": \"q\", \"answer\": \"many\"}\n")
            .unwrap();
        let err = train_grpo(&o, &AtomicBool::new(false), &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("run.jsonl:2") && err.contains("not one number"), "{err}");
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn numbers_are_found_as_a_reader_would() {
        assert_eq!(numbers("5 + 91 = 96."), vec![5.0, 91.0, 96.0]);
        assert_eq!(numbers("It costs $1,234.50, or -3 then 2-1"), vec![1234.5, -3.0, 2.0, 1.0]);
        assert_eq!(numbers("x-1 and 0.5"), vec![1.0, 0.5]);
        assert!(numbers("no digits").is_empty());
    }

    #[test]
    fn checkers_read_the_answer_they_promise() {
        let c = Checker::LastNumber;
        assert_eq!(c.check("5 + 91 = 96", 96.0), Verdict { correct: true, formatted: true });
        assert_eq!(c.check("The answer is 95.", 96.0), Verdict { correct: false, formatted: true });
        assert_eq!(c.check("I don't know", 96.0), Verdict { correct: false, formatted: false });
        assert!(c.check("864 - 873 = -9", -9.0).correct);
        let g = Checker::Gsm8k;
        assert!(g.check("2 + 5 = 7\n#### 7", 7.0).correct);
        assert!(!g.check("#### 7\nand then 8", 7.0).formatted);
        assert!(!g.check("The answer is 7", 7.0).formatted);
        assert!(c.gold("96").is_ok() && c.gold("-1,234").is_ok_and(|x| x == -1234.0));
        assert!(c.gold("ninety").unwrap_err().contains("not one number"));
    }

    #[test]
    fn paired_change_has_the_textbook_interval() {
        let acc = |v: &[bool]| Accuracy { correct: v.to_vec(), formatted: v.to_vec(), mean_len: 0.0 };
        // 4 problems: one gained, three unchanged → d = (1, 0, 0, 0), mean 0.25, s = 0.5.
        let (m, lo, hi) = paired_change(&acc(&[false, true, false, true]), &acc(&[true, true, false, true]));
        assert!((m - 0.25).abs() < 1e-12);
        let half = 1.959_963_984_540_054 * 0.5 / 2.0;
        assert!((lo - (0.25 - half)).abs() < 1e-12 && (hi - (0.25 + half)).abs() < 1e-12);
        // Wilson's interval for 5 of 10 is symmetric about 0.5.
        let (l, h) = acc(&[true, false, true, false, true, false, true, false, true, false]).interval();
        assert!((l + h - 1.0).abs() < 1e-12 && l > 0.2 && h < 0.8);
    }

    #[test]
    fn bad_problems_say_what_is_wrong() {
        let parse = |l: &str| problem(&serde_json::from_str(l).unwrap());
        assert_eq!(parse(r#"{"prompt": "1+1?", "answer": 2}"#).unwrap().answer, "2");
        for (line, says) in [
            (r#"{"prompt": "q"}"#, "\"answer\" is missing"),
            (r#"{"answer": "1"}"#, "needs \"prompt\""),
            (r#"{"prompt": "q", "answer": [1]}"#, "neither a string nor a number"),
            (r#"{"prompt": [{"role": "bot", "content": "x"}], "answer": "1"}"#, "unknown role"),
        ] {
            let e = parse(line).unwrap_err();
            assert!(e.contains(says), "{line}: {e}");
        }
    }
}
