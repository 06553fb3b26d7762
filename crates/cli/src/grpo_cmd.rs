//! `yuanli grpo`: group relative policy optimisation on problems with checkable answers (a
//! LoRA adapter; completions sampled with the batched engine).

use crate::gpt_cmd::{say, steps_bar, stop_on_ctrl_c};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use yuanli_train::align::{GrpoAggregation, RewardScale};
use yuanli_train::grpo::{paired_change, train_grpo, Checker, GrpoEvent, GrpoOptions};
use yuanli_train::plot::{line_plot, Series};

/// How a completion is checked.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum CheckerArg {
    /// The last number in the completion must equal "answer".
    Number,
    /// GSM8K's form: the completion ends with "#### N" and N equals "answer".
    Gsm8k,
}

/// How per-token losses are averaged (TRL's loss_type).
#[derive(Clone, Copy, Debug, ValueEnum)]
enum LossType {
    /// Each sequence's mean, then the mean over sequences (the GRPO paper's).
    Grpo,
    /// The mean over all completion tokens of the batch (TRL's bnpo).
    Bnpo,
    /// The sum over tokens divided by batch × max new tokens (Dr. GRPO: no length bias).
    DrGrpo,
}

/// How rewards become advantages.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Scale {
    /// (r − group mean) / group std: the GRPO paper's.
    Group,
    /// (r − group mean) / the batch's std.
    Batch,
    /// r − group mean (Dr. GRPO).
    None,
}

/// `yuanli grpo`
#[derive(Args, Debug)]
pub(crate) struct GrpoArgs {
    /// Read flags from a TOML file whose keys are this command's long flags (`lr = 1e-4`,
    /// `targets = ["q_proj", "v_proj"]`, `rslora = true`); flags given here override it. See
    /// configs/ for the recipes of the book.
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// The base model: a .gguf file or a Hugging Face directory (it needs a chat template).
    #[arg(long)]
    model: PathBuf,
    /// Training problems, JSONL: {"prompt": …, "answer": …} per line (the prompt a string or a
    /// list of messages; the answer a number, as a string or a JSON number).
    #[arg(long, value_name = "FILE.jsonl")]
    data: PathBuf,
    /// Held-out problems (same format), answered greedily at the start, every --eval-interval
    /// steps and at the end.
    #[arg(long, value_name = "FILE.jsonl")]
    eval_data: PathBuf,
    /// Output directory: metrics.jsonl, grpo.png, answers_step{N}.jsonl and adapter/ (PEFT's
    /// format, for --lora).
    #[arg(long)]
    out: PathBuf,
    /// How a completion is checked (the reward is 1 for a right answer).
    #[arg(long, value_enum, default_value_t = CheckerArg::Number)]
    checker: CheckerArg,
    /// Reward added for an answer in the checker's form, right or wrong.
    #[arg(long, default_value_t = 0.0)]
    format_reward: f64,
    #[command(flatten)]
    adapter: crate::rl_adapter_args::PolicyAdapterArgs,
    /// Peak learning rate (AdamW; 10% warm-up, cosine to a tenth).
    #[arg(long, default_value_t = 2e-5)]
    lr: f64,
    /// Optimizer steps.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Problems per step.
    #[arg(long, default_value_t = 4)]
    prompts: usize,
    /// Completions sampled per problem: the group whose mean reward is each one's baseline.
    #[arg(long, default_value_t = 8)]
    group: usize,
    /// Longest completion in tokens (a longer one is cut off).
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature of the training completions.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// β: weight of the KL penalty (k3 estimator) toward the reference, the base with the
    /// adapter off; 0 skips the reference pass.
    #[arg(long, default_value_t = 0.04)]
    beta: f64,
    /// The ratio is clipped to [1 − ε, 1 + ε-high].
    #[arg(long, default_value_t = 0.2)]
    epsilon: f64,
    /// Upper clip (DAPO's clip-higher; default: --epsilon).
    #[arg(long)]
    epsilon_high: Option<f64>,
    /// How per-token losses are averaged.
    #[arg(long, value_enum, default_value_t = LossType::Bnpo)]
    loss_type: LossType,
    /// How rewards are scaled into advantages.
    #[arg(long, value_enum, default_value_t = Scale::Group)]
    scale_rewards: Scale,
    /// Keep groups whose completions all scored the same in the loss, as TRL does (they add
    /// only the KL term). By default they are dropped before the forward pass (DAPO's dynamic
    /// sampling, without resampling).
    #[arg(long)]
    keep_uniform_groups: bool,
    /// Held-out evaluation every this many steps (0: at the start and the end only).
    #[arg(long, default_value_t = 0)]
    eval_interval: usize,
    /// Held-out problems evaluated (the first ones; 0 = all).
    #[arg(long, default_value_t = 0)]
    eval_problems: usize,
    /// Held-out problems decoded together.
    #[arg(long, default_value_t = 64)]
    eval_batch: usize,
    /// Seed of the order, the samples and the adapters' initialisation.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Continue a stopped run from OUT/checkpoint (written at every held-out evaluation and on
    /// Ctrl-C), with the same options.
    #[arg(long)]
    resume: bool,
}

pub(crate) fn run(a: &GrpoArgs) -> Result<()> {
    let stop = stop_on_ctrl_c();
    let o = GrpoOptions {
        model: a.model.clone(),
        data: a.data.clone(),
        eval_data: a.eval_data.clone(),
        out_dir: a.out.clone(),
        lora: a.adapter.lora(),
        targets: a.adapter.targets.clone(),
        quantized_base: a.adapter.quantized_base,
        checker: match a.checker {
            CheckerArg::Number => Checker::LastNumber,
            CheckerArg::Gsm8k => Checker::Gsm8k,
        },
        format_reward: a.format_reward,
        lr: a.lr,
        steps: a.steps,
        prompts_per_step: a.prompts,
        group: a.group,
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        beta: a.beta,
        eps_low: a.epsilon,
        eps_high: a.epsilon_high.unwrap_or(a.epsilon),
        aggregation: match a.loss_type {
            LossType::Grpo => GrpoAggregation::Sequence,
            LossType::Bnpo => GrpoAggregation::Token,
            LossType::DrGrpo => GrpoAggregation::DrGrpo { max_len: a.max_new_tokens },
        },
        scale: match a.scale_rewards {
            Scale::Group => RewardScale::Group,
            Scale::Batch => RewardScale::Batch,
            Scale::None => RewardScale::None,
        },
        keep_uniform_groups: a.keep_uniform_groups,
        eval_interval: a.eval_interval,
        eval_problems: a.eval_problems,
        eval_batch: a.eval_batch,
        seed: a.seed,
        resume: a.resume,
    };
    let bar = steps_bar(a.steps);
    let (mut reward, mut kl, mut len, mut eval_acc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let plot = a.out.join("grpo.png");
    let draw = |reward: &[(f64, f64)], kl: &[(f64, f64)], len: &[(f64, f64)], eval_acc: &[(f64, f64)]| {
        let series = [
            Series { label: "reward (sampled, mean of 10 steps)", points: reward.to_vec() },
            Series { label: "held-out accuracy (greedy)", points: eval_acc.to_vec() },
            Series { label: "KL to the reference ×10 (steps that trained)", points: kl.to_vec() },
            Series { label: "completion length / max", points: len.to_vec() },
        ];
        line_plot(&plot, "GRPO", "step", "reward; accuracy", &series, false)
    };
    let smooth = |raw: &[(f64, f64)]| -> Vec<(f64, f64)> {
        (0..raw.len())
            .map(|i| {
                let w = &raw[i.saturating_sub(9)..=i];
                (raw[i].0, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64)
            })
            .collect()
    };
    let mut raw_reward = Vec::new();
    let max_new = a.max_new_tokens as f64;
    let mut on_event = |e: &GrpoEvent| match e {
        GrpoEvent::Data { train, eval, trainable } => say(
            &bar,
            format!(
                "{train} training and {eval} held-out problems; {:.2} M trainable parameters",
                *trainable as f64 / 1e6
            ),
        ),
        GrpoEvent::Evaluating { done, total } => bar.set_message(format!("answering held-out problems {done}/{total}")),
        GrpoEvent::Step(s) => {
            bar.set_position(s.step as u64);
            bar.set_message(format!(
                "reward {:.3} acc {:.2} kl {:.4} len {:.1} {:.1}s/step",
                s.reward, s.accuracy, s.kl, s.completion_len, s.step_secs
            ));
            raw_reward.push((s.step as f64, s.reward));
            reward = smooth(&raw_reward);
            // A step where every group agreed trained nothing and measured no KL.
            if s.trained > 0 {
                kl.push((s.step as f64, 10.0 * s.kl));
            }
            len.push((s.step as f64, s.completion_len / max_new));
        }
        GrpoEvent::Eval { step, accuracy } => {
            let (lo, hi) = accuracy.interval();
            say(
                &bar,
                format!(
                    "step {step:>5}: held-out accuracy {:.1}% (95% CI {:.1}–{:.1}%) of {}, answers in form {:.1}%, {:.1} tokens each",
                    100.0 * accuracy.rate(),
                    100.0 * lo,
                    100.0 * hi,
                    accuracy.correct.len(),
                    100.0 * accuracy.format_rate(),
                    accuracy.mean_len
                ),
            );
            eval_acc.push((*step as f64, accuracy.rate()));
            if let Err(err) = draw(&reward, &kl, &len, &eval_acc) {
                say(&bar, format!("warning: {err}"));
            }
        }
        GrpoEvent::Saved { dir } => bar.set_message(format!("written to {}", dir.display())),
        GrpoEvent::Checkpoint { dir, step } => {
            bar.set_message(format!("checkpoint of step {step} in {}", dir.display()))
        }
        GrpoEvent::Resumed { step } => {
            say(&bar, format!("resuming after step {step} from {}", a.out.join("checkpoint").display()));
            bar.set_position(*step as u64);
            let text = std::fs::read_to_string(a.out.join("metrics.jsonl")).unwrap_or_default();
            for v in text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
                let Some(s) = v["step"].as_u64().filter(|&s| s as usize <= *step) else { continue };
                if let (Some(r), Some(k), Some(l)) =
                    (v["reward"].as_f64(), v["kl"].as_f64(), v["completion_len"].as_f64())
                {
                    raw_reward.push((s as f64, r));
                    if v["trained"].as_u64().is_some_and(|n| n > 0) {
                        kl.push((s as f64, 10.0 * k));
                    }
                    len.push((s as f64, l / max_new));
                }
                if let Some(acc) = v["eval_accuracy"].as_f64() {
                    eval_acc.push((s as f64, acc));
                }
            }
            reward = smooth(&raw_reward);
        }
    };
    let result = train_grpo(&o, &stop, &mut on_event);
    bar.finish_and_clear();
    let (before, after) = result.with_context(|| format!("GRPO with {}", a.model.display()))?;
    if stop.load(Ordering::Relaxed) {
        println!(
            "stopped early; the checkpoint is in {}: run the same command with --resume to continue",
            a.out.join("checkpoint").display()
        );
    }
    let (d, lo, hi) = paired_change(&before, &after);
    println!(
        "held-out accuracy: {:.1}% → {:.1}% on {} problems; change {:+.1} points (95% CI {:+.1} to {:+.1}){}",
        100.0 * before.rate(),
        100.0 * after.rate(),
        after.correct.len(),
        100.0 * d,
        100.0 * lo,
        100.0 * hi,
        if lo > 0.0 {
            ", above zero"
        } else if hi < 0.0 {
            ", below zero"
        } else {
            ", which includes zero"
        }
    );
    println!(
        "plot: {}; use it with: yuanli generate --model {} --lora {}",
        plot.display(),
        a.model.display(),
        a.out.join("adapter").display()
    );
    Ok(())
}
