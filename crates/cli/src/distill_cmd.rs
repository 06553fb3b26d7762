//! `yuanli distill`: a small random LLaMA learns a teacher's next-token distributions (or, as
//! the baseline, the data alone).

use crate::gpt_cmd::{say, steps_bar, stop_on_ctrl_c};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use yuanli_train::distill::{train_distill, DistillEvent, DistillLoss, DistillOptions, StudentShape};
use yuanli_train::plot::{line_plot, Series};

/// What the student learns from.
#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum LossArg {
    /// The teacher's distributions, forward KL(teacher ‖ student): classic distillation.
    Kl,
    /// The teacher's distributions, generalised Jensen–Shannon divergence with --beta (GKD).
    Jsd,
    /// The data alone (next-token cross-entropy; the teacher only lends its tokenizer): the
    /// baseline to compare with.
    Ce,
}

/// `yuanli distill`
#[derive(Args, Debug)]
pub(crate) struct DistillArgs {
    /// Read flags from a TOML file whose keys are this command's long flags; flags given here
    /// override it. See configs/distill-shakespeare.toml.
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// The teacher: a .gguf file or a Hugging Face directory. The student uses its tokenizer.
    #[arg(long)]
    teacher: PathBuf,
    /// Training text: files, or directories whose .txt files are read (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    data: Vec<PathBuf>,
    /// Held-out text (files or directories, comma-separated); never trained on, even when a
    /// --data directory holds it.
    #[arg(long, value_delimiter = ',', required = true)]
    eval_data: Vec<PathBuf>,
    /// Output directory: metrics.jsonl, distill.png, checkpoint/ and model/ (the student as a
    /// Hugging Face directory: `yuanli generate --model OUT/model`).
    #[arg(long)]
    out: PathBuf,
    /// What the student learns from.
    #[arg(long, value_enum, default_value_t = LossArg::Kl)]
    loss: LossArg,
    /// GKD's β for --loss jsd: the divergence mixes the two distributions as (1−β)·student +
    /// β·teacher (0 would be forward KL, 1 reverse KL).
    #[arg(long, default_value_t = 0.5)]
    beta: f64,
    /// Softening temperature of both distributions inside the divergence.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Weight of the data's cross-entropy added to the divergence.
    #[arg(long, default_value_t = 0.0)]
    ce_weight: f64,
    /// The student's blocks.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// The student's hidden size.
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// The student's attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// The student's key/value heads (default: --heads).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// The student's MLP width (default: 8/3 of --hidden, rounded up to 64).
    #[arg(long)]
    intermediate: Option<usize>,
    /// Peak learning rate (AdamW; 10% warm-up, cosine to a tenth).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// AdamW's weight decay on the weight matrices.
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    /// Optimizer steps.
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Tokens per window: the student's context.
    #[arg(long, default_value_t = 128)]
    context: usize,
    /// Held-out evaluation every this many steps (and at the start and the end).
    #[arg(long, default_value_t = 25)]
    eval_interval: usize,
    /// Held-out tokens evaluated (the first ones; 0 = all).
    #[arg(long, default_value_t = 16384)]
    eval_tokens: usize,
    /// Seed of the student's weights and of every step's windows (two runs with the same seed
    /// start from the same student and read the same text).
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Another run's output directory whose held-out curve is drawn beside this one (the
    /// --loss ce baseline, say).
    #[arg(long, value_name = "DIR")]
    compare: Option<PathBuf>,
    /// Continue a stopped run from OUT/checkpoint (written at every evaluation and on Ctrl-C)
    /// with the same options.
    #[arg(long)]
    resume: bool,
}

/// The `(step, eval_loss)` points of a run's metrics.jsonl (steps up to `upto`).
fn eval_points(dir: &Path, upto: usize) -> Vec<(f64, f64)> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()? as usize, v["eval_loss"].as_f64()?)))
        .filter(|&(s, _)| s <= upto)
        .map(|(s, l)| (s as f64, l))
        .collect()
}

pub(crate) fn run(a: &DistillArgs) -> Result<()> {
    let stop = stop_on_ctrl_c();
    let loss = match a.loss {
        LossArg::Kl => DistillLoss::Jsd { beta: 0.0 },
        LossArg::Jsd => DistillLoss::Jsd { beta: a.beta },
        LossArg::Ce => DistillLoss::Ce,
    };
    let o = DistillOptions {
        teacher: a.teacher.clone(),
        data: a.data.clone(),
        eval_data: a.eval_data.clone(),
        out_dir: a.out.clone(),
        student: StudentShape {
            layers: a.layers,
            hidden: a.hidden,
            heads: a.heads,
            kv_heads: a.kv_heads.unwrap_or(a.heads),
            intermediate: a.intermediate.unwrap_or((a.hidden * 8 / 3).div_ceil(64) * 64),
        },
        loss,
        temperature: a.temperature,
        ce_weight: a.ce_weight,
        lr: a.lr,
        weight_decay: a.weight_decay,
        steps: a.steps,
        batch_size: a.batch_size,
        context: a.context,
        eval_interval: a.eval_interval,
        eval_tokens: a.eval_tokens,
        seed: a.seed,
        resume: a.resume,
    };
    let what = match a.loss {
        LossArg::Kl => "student (forward KL to the teacher)".to_string(),
        LossArg::Jsd => format!("student (JSD β={} to the teacher)", a.beta),
        LossArg::Ce => "student (data alone)".to_string(),
    };
    let bar = steps_bar(a.steps);
    let plot = a.out.join("distill.png");
    let baseline = a.compare.as_ref().map(|d| eval_points(d, usize::MAX)).unwrap_or_default();
    let baseline_label = a.compare.as_ref().map(|d| format!("{}, held-out", d.display())).unwrap_or_default();
    let (mut eval, mut ce, mut teacher) = (Vec::new(), Vec::new(), None::<f64>);
    let draw = |eval: &[(f64, f64)], ce: &[(f64, f64)], teacher: Option<f64>| {
        let mut series = vec![
            Series { label: &what, points: eval.to_vec() },
            Series { label: "training batch cross-entropy (mean of 10 steps)", points: ce.to_vec() },
        ];
        if !baseline.is_empty() {
            series.push(Series { label: &baseline_label, points: baseline.clone() });
        }
        if let (Some(t), Some(end)) = (teacher, eval.last()) {
            series.push(Series { label: "teacher, held-out", points: vec![(0.0, t), (end.0.max(1.0), t)] });
        }
        line_plot(&plot, "Distillation: held-out cross-entropy", "step", "nats per token", &series, false)
    };
    let mut raw_ce: Vec<(f64, f64)> = Vec::new();
    let smooth = |raw: &[(f64, f64)]| -> Vec<(f64, f64)> {
        (0..raw.len())
            .map(|i| {
                let w = &raw[i.saturating_sub(9)..=i];
                (raw[i].0, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64)
            })
            .collect()
    };
    let mut on_event = |e: &DistillEvent| match e {
        DistillEvent::Data { train_tokens, eval_tokens, student_params, teacher } => say(
            &bar,
            format!(
                "teacher {teacher}; student {:.2} M parameters; {train_tokens} training tokens, {eval_tokens} held out",
                *student_params as f64 / 1e6
            ),
        ),
        DistillEvent::TeacherEval { loss } => {
            teacher = Some(*loss);
            say(&bar, format!("teacher's held-out cross-entropy {loss:.4}"));
        }
        DistillEvent::Step { step, loss, ce: c, tokens_per_sec, .. } => {
            bar.set_position(*step as u64);
            bar.set_message(format!("loss {loss:.4} ce {c:.4} {tokens_per_sec:.0} tok/s"));
            raw_ce.push((*step as f64, *c));
            ce = smooth(&raw_ce);
        }
        DistillEvent::Eval { step, loss } => {
            say(&bar, format!("step {step:>5}: held-out cross-entropy {loss:.4}"));
            eval.push((*step as f64, *loss));
            if let Err(err) = draw(&eval, &ce, teacher) {
                say(&bar, format!("warning: {err}"));
            }
        }
        DistillEvent::Checkpoint { dir, step } => {
            bar.set_message(format!("checkpoint of step {step} in {}", dir.display()))
        }
        DistillEvent::Resumed { step } => {
            say(&bar, format!("resuming after step {step} from {}", a.out.join("checkpoint").display()));
            bar.set_position(*step as u64);
            eval = eval_points(&a.out, *step);
            let text = std::fs::read_to_string(a.out.join("metrics.jsonl")).unwrap_or_default();
            raw_ce = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| Some((v["step"].as_u64()? as f64, v["ce"].as_f64()?)))
                .filter(|&(s, _)| s <= *step as f64)
                .collect();
            ce = smooth(&raw_ce);
        }
        DistillEvent::Saved { dir } => bar.set_message(format!("written to {}", dir.display())),
    };
    let result = train_distill(&o, &stop, &mut on_event);
    bar.finish_and_clear();
    let s = result.with_context(|| format!("distilling from {}", a.teacher.display()))?;
    if stop.load(Ordering::Relaxed) {
        println!(
            "stopped early; the checkpoint is in {}: run the same command with --resume to continue",
            a.out.join("checkpoint").display()
        );
    }
    println!(
        "held-out cross-entropy: {:.4} → {:.4} nats per token (teacher {:.4}){}",
        s.first,
        s.last,
        s.teacher,
        match baseline.last() {
            Some(&(step, b)) => format!("; the compared run ended at {b:.4} (step {step})"),
            None => String::new(),
        }
    );
    println!(
        "plot: {}; try it: yuanli generate --model {} --prompt \"…\"",
        plot.display(),
        a.out.join("model").display()
    );
    Ok(())
}
