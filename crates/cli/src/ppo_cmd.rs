//! `yuanli ppo`: RLHF with PPO — a LoRA policy with a value head, a reward model from
//! `yuanli rm`, a per-token KL penalty to the base.

use crate::gpt_cmd::{say, steps_bar, stop_on_ctrl_c};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use yuanli_train::align::{KlEstimator, PpoConfig};
use yuanli_train::plot::{line_plot, Series};
use yuanli_train::ppo::{train_ppo, PpoEval, PpoEvent, PpoOptions};

/// Which KL estimate each token pays for.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum KlArg {
    /// log π − log π_ref (TRL's default; unbiased, may be negative).
    K1,
    /// e^{ref − logp} − (ref − logp) − 1 (unbiased and never negative).
    K3,
}

/// `yuanli ppo`
#[derive(Args, Debug)]
pub(crate) struct PpoArgs {
    /// Read flags from a TOML file whose keys are this command's long flags; flags given here
    /// override it. See configs/ppo-gsm8k.toml.
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// The policy's base model: a .gguf file or a Hugging Face directory (it needs a chat
    /// template).
    #[arg(long)]
    model: PathBuf,
    /// The reward model: the reward_model/ directory `yuanli rm` wrote (a LoRA adapter and
    /// score.safetensors; its base is the one its adapter_config.json names).
    #[arg(long, value_name = "DIR")]
    reward_model: PathBuf,
    /// Training prompts, JSONL: {"prompt": …} per line (a string or a list of messages; other
    /// fields are ignored, so SFT and GRPO files serve).
    #[arg(long, value_name = "FILE.jsonl")]
    data: PathBuf,
    /// Held-out prompts (same format): one completion each is sampled, scored and its KL to
    /// the reference measured at the start, every --eval-interval steps and at the end.
    #[arg(long, value_name = "FILE.jsonl")]
    eval_data: PathBuf,
    /// Output directory: metrics.jsonl, ppo.png, answers_step{N}.jsonl, checkpoint/ and
    /// adapter/ (PEFT's format).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    adapter: crate::rl_adapter_args::PolicyAdapterArgs,
    /// Peak learning rate (AdamW; 10% warm-up, cosine to a tenth).
    #[arg(long, default_value_t = 3e-5)]
    lr: f64,
    /// PPO steps: each one rollout and --epochs updates.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Prompts per rollout (one completion each).
    #[arg(long, default_value_t = 8)]
    prompts: usize,
    /// Longest completion in tokens.
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature (rollouts and held-out samples).
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// β: the per-token KL penalty's coefficient (its start, with --kl-target).
    #[arg(long, default_value_t = 0.05)]
    kl_coef: f64,
    /// Adapt β toward this sequence KL in nats (Ziegler et al.'s controller); without it β
    /// stays fixed.
    #[arg(long)]
    kl_target: Option<f64>,
    /// The controller's horizon in samples: how fast β moves.
    #[arg(long, default_value_t = 10000.0)]
    kl_horizon: f64,
    /// The KL estimate each token pays for.
    #[arg(long, value_enum, default_value_t = KlArg::K1)]
    kl_estimator: KlArg,
    /// Updates on each rollout.
    #[arg(long, default_value_t = 4)]
    epochs: usize,
    /// Discount γ.
    #[arg(long, default_value_t = 1.0)]
    gamma: f64,
    /// GAE's λ.
    #[arg(long, default_value_t = 0.95)]
    lam: f64,
    /// The policy ratio is clipped to 1 ± this.
    #[arg(long, default_value_t = 0.2)]
    cliprange: f64,
    /// The value prediction is clipped to the old value ± this.
    #[arg(long, default_value_t = 0.2)]
    cliprange_value: f64,
    /// Weight of the value loss.
    #[arg(long, default_value_t = 0.1)]
    vf_coef: f64,
    /// Subtracted from the score of a completion cut off before its end-of-turn token.
    #[arg(long, default_value_t = 0.0)]
    missing_eos_penalty: f64,
    /// Held-out evaluation every this many steps (0: at the start and the end only).
    #[arg(long, default_value_t = 0)]
    eval_interval: usize,
    /// Held-out prompts evaluated (the first ones; 0 = all).
    #[arg(long, default_value_t = 64)]
    eval_prompts: usize,
    /// Held-out prompts sampled together.
    #[arg(long, default_value_t = 32)]
    eval_batch: usize,
    /// Seed of the order, the samples and the adapter's initialisation.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Continue a stopped run from OUT/checkpoint (written at every held-out evaluation and on
    /// Ctrl-C), with the same options.
    #[arg(long)]
    resume: bool,
}

/// The mean change of the held-out scores and its paired 95% interval (the same prompts and
/// seeds before and after).
fn paired(before: &PpoEval, after: &PpoEval) -> (f64, f64, f64) {
    let d: Vec<f64> = after.scores.iter().zip(&before.scores).map(|(a, b)| a - b).collect();
    let n = d.len().max(1) as f64;
    let m = d.iter().sum::<f64>() / n;
    let s = (d.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
    let half = 1.959_963_984_540_054 * s / n.sqrt();
    (m, m - half, m + half)
}

pub(crate) fn run(a: &PpoArgs) -> Result<()> {
    let stop = stop_on_ctrl_c();
    let o = PpoOptions {
        model: a.model.clone(),
        reward_model: a.reward_model.clone(),
        data: a.data.clone(),
        eval_data: a.eval_data.clone(),
        out_dir: a.out.clone(),
        lora: a.adapter.lora(),
        targets: a.adapter.targets.clone(),
        quantized_base: a.adapter.quantized_base,
        lr: a.lr,
        steps: a.steps,
        prompts_per_step: a.prompts,
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        kl_coef: a.kl_coef,
        kl_target: a.kl_target,
        kl_horizon: a.kl_horizon,
        kl_estimator: match a.kl_estimator {
            KlArg::K1 => KlEstimator::K1,
            KlArg::K3 => KlEstimator::K3,
        },
        epochs: a.epochs,
        gamma: a.gamma,
        lam: a.lam,
        ppo: PpoConfig { cliprange: a.cliprange, cliprange_value: a.cliprange_value, vf_coef: a.vf_coef },
        missing_eos_penalty: a.missing_eos_penalty,
        eval_interval: a.eval_interval,
        eval_prompts: a.eval_prompts,
        eval_batch: a.eval_batch,
        seed: a.seed,
        resume: a.resume,
    };
    let bar = steps_bar(a.steps);
    let plot = a.out.join("ppo.png");
    let (mut score, mut kl, mut eval_score, mut eval_kl) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut raw: Vec<(f64, f64, f64)> = Vec::new();
    let smooth = |raw: &[(f64, f64, f64)], pick: fn(&(f64, f64, f64)) -> f64| -> Vec<(f64, f64)> {
        (0..raw.len())
            .map(|i| {
                let w = &raw[i.saturating_sub(9)..=i];
                (raw[i].0, w.iter().map(pick).sum::<f64>() / w.len() as f64)
            })
            .collect()
    };
    let draw = |score: &[(f64, f64)], kl: &[(f64, f64)], es: &[(f64, f64)], ek: &[(f64, f64)]| {
        let mut series = vec![
            Series { label: "reward-model score (rollouts, mean of 10 steps)", points: score.to_vec() },
            Series { label: "held-out score", points: es.to_vec() },
            Series { label: "KL to the reference, nats per answer (rollouts)", points: kl.to_vec() },
            Series { label: "held-out KL", points: ek.to_vec() },
        ];
        if let Some(t) = a.kl_target {
            series.push(Series { label: "KL target", points: vec![(0.0, t), (a.steps as f64, t)] });
        }
        line_plot(&plot, "PPO", "step", "score; KL", &series, false)
    };
    let mut on_event = |e: &PpoEvent| match e {
        PpoEvent::Data { train, eval, trainable } => say(
            &bar,
            format!(
                "{train} training and {eval} held-out prompts; {:.2} M trainable parameters (adapter and value head)",
                *trainable as f64 / 1e6
            ),
        ),
        PpoEvent::Evaluating { done, total } => bar.set_message(format!("sampling held-out answers {done}/{total}")),
        PpoEvent::Step(s) => {
            bar.set_position(s.step as u64);
            bar.set_message(format!(
                "score {:.3} kl {:.3} β {:.4} pg {:.3} vf {:.3} len {:.1} {:.1}s/step",
                s.score, s.kl, s.kl_coef, s.pg_loss, s.vf_loss, s.completion_len, s.step_secs
            ));
            raw.push((s.step as f64, s.score, s.kl));
            score = smooth(&raw, |r| r.1);
            kl = smooth(&raw, |r| r.2);
        }
        PpoEvent::Eval { step, eval } => {
            say(
                &bar,
                format!(
                    "step {step:>5}: held-out score {:.3}, KL to the reference {:.3} nats, {:.1} tokens per answer ({} prompts)",
                    eval.score(),
                    eval.kl(),
                    eval.mean_len,
                    eval.scores.len()
                ),
            );
            eval_score.push((*step as f64, eval.score()));
            eval_kl.push((*step as f64, eval.kl()));
            if let Err(err) = draw(&score, &kl, &eval_score, &eval_kl) {
                say(&bar, format!("warning: {err}"));
            }
        }
        PpoEvent::Saved { dir } => bar.set_message(format!("written to {}", dir.display())),
        PpoEvent::Checkpoint { dir, step } => {
            bar.set_message(format!("checkpoint of step {step} in {}", dir.display()))
        }
        PpoEvent::Resumed { step } => {
            say(&bar, format!("resuming after step {step} from {}", a.out.join("checkpoint").display()));
            bar.set_position(*step as u64);
            let text = std::fs::read_to_string(a.out.join("metrics.jsonl")).unwrap_or_default();
            for v in text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
                let Some(s) = v["step"].as_u64().filter(|&s| s as usize <= *step) else { continue };
                if let (Some(sc), Some(k)) = (v["score"].as_f64(), v["kl"].as_f64()) {
                    raw.push((s as f64, sc, k));
                }
                if let (Some(sc), Some(k)) = (v["eval_score"].as_f64(), v["eval_kl"].as_f64()) {
                    eval_score.push((s as f64, sc));
                    eval_kl.push((s as f64, k));
                }
            }
            score = smooth(&raw, |r| r.1);
            kl = smooth(&raw, |r| r.2);
        }
    };
    let result = train_ppo(&o, &stop, &mut on_event);
    bar.finish_and_clear();
    let (before, after) = result.with_context(|| format!("PPO with {}", a.model.display()))?;
    if stop.load(Ordering::Relaxed) {
        println!(
            "stopped early; the checkpoint is in {}: run the same command with --resume to continue",
            a.out.join("checkpoint").display()
        );
    }
    let (d, lo, hi) = paired(&before, &after);
    println!(
        "held-out reward-model score: {:.3} → {:.3} on {} prompts; change {d:+.3} (95% CI {lo:+.3} to {hi:+.3}); KL to the reference {:.3} nats per answer{}",
        before.score(),
        after.score(),
        after.scores.len(),
        after.kl(),
        match a.kl_target {
            Some(t) => format!(" (target {t})"),
            None => String::new(),
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
