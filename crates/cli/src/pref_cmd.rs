//! `yuanli rm` and `yuanli dpo`: a reward model, or direct preference optimisation, trained on
//! preference pairs (a LoRA adapter; the reward model adds a scalar head).

use crate::gpt_cmd::{say, steps_bar, stop_on_ctrl_c};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use yuanli_nn::LoraConfig;
use yuanli_train::align::DpoKind;
use yuanli_train::plot::{line_plot, Series};
use yuanli_train::preference::{train_pairs, Objective, PairEvent, PairOptions};

/// What both commands read and write.
#[derive(Args, Debug)]
pub(crate) struct PairArgs {
    /// Read flags from a TOML file whose keys are this command's long flags (`lr = 1e-4`,
    /// `targets = ["q_proj", "v_proj"]`, `rslora = true`); flags given here override it. See
    /// configs/ for the recipes of the book.
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// The base model: a .gguf file or a Hugging Face directory (it needs a chat template).
    #[arg(long)]
    model: PathBuf,
    /// Training pairs, JSONL: {"prompt": …, "chosen": …, "rejected": …} per line (strings, or
    /// TRL's conversational form: a list of messages for the prompt, one assistant message
    /// for each answer).
    #[arg(long, value_name = "FILE.jsonl")]
    data: PathBuf,
    /// Held-out pairs (same format), evaluated at the start, every --eval-interval steps and
    /// at the end.
    #[arg(long, value_name = "FILE.jsonl")]
    eval_data: PathBuf,
    /// Output directory: metrics.jsonl, a plot, and the result (adapter/ for DPO, in PEFT's
    /// format; reward_model/ — the adapter and score.safetensors — for a reward model).
    #[arg(long)]
    out: PathBuf,
    /// LoRA rank r.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// LoRA α: the update is scaled by α/r (α/√r with --rslora).
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    /// Dropout on the adapters' input while training (TRL disables dropout for DPO and reward models).
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Scale the update by α/√r (rank-stabilised LoRA).
    #[arg(long)]
    rslora: bool,
    /// Modules to adapt, comma-separated (q_proj, …, down_proj, or all-linear).
    #[arg(long, default_value = "all-linear", value_delimiter = ',')]
    targets: Vec<String>,
    /// QLoRA: keep a GGUF base block-quantized instead of dequantizing to f32.
    #[arg(long)]
    quantized_base: bool,
    /// Peak learning rate (AdamW; 10% warm-up, cosine to a tenth).
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    /// Optimizer steps.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Preference pairs per step.
    #[arg(long, default_value_t = 4)]
    batch_pairs: usize,
    /// Longest prompt-and-answer in tokens (longer pairs are skipped; the count is reported).
    #[arg(long, default_value_t = 512)]
    max_len: usize,
    /// Held-out evaluation every this many steps.
    #[arg(long, default_value_t = 25)]
    eval_interval: usize,
    /// Held-out pairs evaluated (the first ones; 0 = all).
    #[arg(long, default_value_t = 0)]
    eval_pairs: usize,
    /// Seed of the order, the dropout and the adapters' initialisation.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Continue a stopped run from OUT/checkpoint (written at every held-out evaluation and on
    /// Ctrl-C), with the same options: it ends where the uninterrupted run would have.
    #[arg(long)]
    resume: bool,
}

/// The preference loss.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Loss {
    /// −log σ(βΔ): the DPO paper's.
    Sigmoid,
    /// max(0, 1 − βΔ): SLiC's hinge.
    Hinge,
    /// (Δ̄ − 1/(2β))² over length-averaged log-ratios: IPO.
    Ipo,
    /// Robust DPO for labels flipped at rate --label-smoothing.
    Robust,
}

/// `yuanli dpo`
#[derive(Args, Debug)]
pub(crate) struct DpoArgs {
    #[command(flatten)]
    pairs: PairArgs,
    /// The preference loss.
    #[arg(long, value_enum, default_value_t = Loss::Sigmoid)]
    loss: Loss,
    /// β: how strongly the policy is held near the reference (TRL's default 0.1).
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// The label-flip rate ε of --loss robust.
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
}

/// `yuanli rm`
#[derive(Args, Debug)]
pub(crate) struct RmArgs {
    #[command(flatten)]
    pairs: PairArgs,
    /// Add c·mean (r_c + r_r)² to the loss, keeping rewards centred on 0 (TRL's
    /// center_rewards_coefficient; 0.01 is its suggestion).
    #[arg(long)]
    center_rewards: Option<f64>,
}

pub(crate) fn dpo(a: &DpoArgs) -> Result<()> {
    let kind = match a.loss {
        Loss::Sigmoid => DpoKind::Sigmoid,
        Loss::Hinge => DpoKind::Hinge,
        Loss::Ipo => DpoKind::Ipo,
        Loss::Robust => DpoKind::Robust { label_smoothing: a.label_smoothing },
    };
    run(&a.pairs, Objective::Dpo { kind, beta: a.beta })
}

pub(crate) fn rm(a: &RmArgs) -> Result<()> {
    run(&a.pairs, Objective::Reward { center: a.center_rewards })
}

fn run(a: &PairArgs, objective: Objective) -> Result<()> {
    let stop = stop_on_ctrl_c();
    let o = PairOptions {
        model: a.model.clone(),
        data: a.data.clone(),
        eval_data: a.eval_data.clone(),
        out_dir: a.out.clone(),
        lora: LoraConfig { r: a.rank, alpha: a.alpha, dropout: a.dropout, rslora: a.rslora },
        targets: a.targets.clone(),
        quantized_base: a.quantized_base,
        objective,
        lr: a.lr,
        steps: a.steps,
        batch_pairs: a.batch_pairs,
        max_len: a.max_len,
        eval_interval: a.eval_interval,
        eval_pairs: a.eval_pairs,
        seed: a.seed,
        resume: a.resume,
    };
    let dpo = matches!(objective, Objective::Dpo { .. });
    let bar = steps_bar(a.steps);
    let (mut margins, mut eval_margins, mut eval_acc) = (Vec::new(), Vec::new(), Vec::new());
    let plot = a.out.join(if dpo { "dpo.png" } else { "reward_model.png" });
    let mut on_event = |e: &PairEvent| {
        match e {
        PairEvent::Data { train, eval, skipped, trainable } => say(
            &bar,
            format!(
                "{train} training and {eval} held-out pairs ({skipped} longer than --max-len {} skipped); {:.2} M trainable parameters",
                a.max_len,
                *trainable as f64 / 1e6
            ),
        ),
        PairEvent::Step { step, loss, accuracy, margin, lr, tokens_per_sec } => {
            bar.set_position(*step as u64);
            bar.set_message(format!("loss {loss:.4} acc {accuracy:.2} margin {margin:.3} lr {lr:.1e} {tokens_per_sec:.0} tok/s"));
            margins.push((*step as f64, *margin));
        }
        PairEvent::Eval { step, eval } => {
            let more_likely = if dpo { format!(", chosen more likely {:.1}%", 100.0 * eval.logp_accuracy) } else { String::new() };
            say(
                &bar,
                format!(
                    "step {step:>5}: held-out loss {:.4}{more_likely}, reward accuracy {:.1}% (chance 50%), margin {:.3}",
                    eval.loss,
                    100.0 * eval.reward_accuracy,
                    eval.margin
                ),
            );
            eval_margins.push((*step as f64, eval.margin));
            eval_acc.push((*step as f64, if dpo { eval.logp_accuracy } else { eval.reward_accuracy }));
            let acc_label = if dpo { "held-out: chosen more likely (fraction)" } else { "held-out reward accuracy" };
            let series = [
                Series { label: "reward margin (train batch)", points: margins.clone() },
                Series { label: "reward margin (held-out)", points: eval_margins.clone() },
                Series { label: acc_label, points: eval_acc.clone() },
            ];
            let title = if dpo { "DPO" } else { "reward model" };
            if let Err(err) = line_plot(&plot, title, "step", "reward margin; accuracy", &series, false) {
                say(&bar, format!("warning: {err}"));
            }
        }
        PairEvent::Saved { dir } => bar.set_message(format!("written to {}", dir.display())),
        PairEvent::Checkpoint { dir, step } => bar.set_message(format!("checkpoint of step {step} in {}", dir.display())),
        PairEvent::Resumed { step } => {
            say(&bar, format!("resuming after step {step} from {}", a.out.join("checkpoint").display()));
            bar.set_position(*step as u64);
            // The curves so far, from the metrics the earlier run wrote (appended to from here).
            let text = std::fs::read_to_string(a.out.join("metrics.jsonl")).unwrap_or_default();
            for v in text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
                let Some(s) = v["step"].as_u64().filter(|&s| s as usize <= *step) else { continue };
                if let Some(m) = v["margin"].as_f64() {
                    margins.push((s as f64, m));
                }
                let acc_key = if dpo { "eval_logp_accuracy" } else { "eval_reward_accuracy" };
                if let (Some(m), Some(acc)) = (v["eval_margin"].as_f64(), v[acc_key].as_f64()) {
                    eval_margins.push((s as f64, m));
                    eval_acc.push((s as f64, acc));
                }
            }
        }
    }
    };
    let result = train_pairs(&o, &stop, &mut on_event);
    bar.finish_and_clear();
    let (before, after) = result.with_context(|| format!("training on pairs with {}", a.model.display()))?;
    if stop.load(Ordering::Relaxed) {
        println!(
            "stopped early; the checkpoint is in {}: run the same command with --resume to continue",
            a.out.join("checkpoint").display()
        );
    }
    if dpo {
        println!(
            "held-out pairs where the chosen answer is more likely: {:.1}% → {:.1}%; reward margin {:.3} → {:.3}",
            100.0 * before.logp_accuracy,
            100.0 * after.logp_accuracy,
            before.margin,
            after.margin
        );
        println!(
            "use it with: yuanli generate --model {} --lora {}",
            a.model.display(),
            a.out.join("adapter").display()
        );
    } else {
        println!(
            "held-out pairwise accuracy: {:.1}% → {:.1}% (chance 50%); reward margin {:.3} → {:.3}",
            100.0 * before.reward_accuracy,
            100.0 * after.reward_accuracy,
            before.margin,
            after.margin
        );
        println!("the reward model: {}", a.out.join("reward_model").display());
    }
    Ok(())
}
