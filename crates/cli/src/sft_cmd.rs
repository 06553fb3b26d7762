//! `yuanli sft`: LoRA fine-tuning of a pretrained model on conversations.

use crate::gpt_cmd::{say, steps_bar, stop_on_ctrl_c};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use yuanli_nn::LoraConfig;
use yuanli_train::plot::{line_plot, Series};
use yuanli_train::sft::{finetune, SftEvent, SftOptions};

/// `yuanli sft`
#[derive(Args, Debug)]
pub(crate) struct SftArgs {
    /// Read flags from a TOML file whose keys are this command's long flags (`lr = 1e-4`,
    /// `targets = ["q_proj", "v_proj"]`, `rslora = true`); flags given here override it. See
    /// configs/ for the recipes of the book.
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// The base model: a .gguf file or a Hugging Face directory (it needs a chat template).
    #[arg(long)]
    model: PathBuf,
    /// Training data, JSONL: {"messages": [{"role": "user"|"assistant"|"system", "content": …}, …]}
    /// or {"prompt": …, "completion": …} per line. The loss counts the assistant's tokens only.
    #[arg(long, value_name = "FILE.jsonl")]
    data: PathBuf,
    /// Held-out data (same format); without it, --eval-fraction of --data is held out.
    #[arg(long, value_name = "FILE.jsonl")]
    eval_data: Option<PathBuf>,
    /// Share of --data held out when there is no --eval-data.
    #[arg(long, default_value_t = 0.1)]
    eval_fraction: f64,
    /// Output directory: metrics.jsonl, loss.png and adapter/ (PEFT's format, for --lora).
    #[arg(long)]
    out: PathBuf,
    /// LoRA rank r.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// LoRA α: the update is scaled by α/r (α/√r with --rslora).
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    /// Dropout on the adapters' input while training.
    #[arg(long, default_value_t = 0.05)]
    dropout: f64,
    /// Scale the update by α/√r (rank-stabilised LoRA).
    #[arg(long)]
    rslora: bool,
    /// Modules to adapt, comma-separated: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
    /// down_proj, or all-linear.
    #[arg(long, default_value = "q_proj,v_proj", value_delimiter = ',')]
    targets: Vec<String>,
    /// QLoRA: keep a GGUF base block-quantized (its own types) instead of dequantizing to f32.
    #[arg(long)]
    quantized_base: bool,
    /// Peak learning rate (AdamW; 10% warm-up, cosine to a tenth).
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Optimizer steps.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Conversations per step.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Longest example in tokens (longer ones are cut; the count is reported).
    #[arg(long, default_value_t = 512)]
    max_len: usize,
    /// Held-out loss every this many steps.
    #[arg(long, default_value_t = 50)]
    eval_interval: usize,
    /// Held-out conversations the loss is measured on (the first ones; 0 = all).
    #[arg(long, default_value_t = 64)]
    eval_examples: usize,
    /// Seed of the split, the order and the adapters' initialisation.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Continue a stopped run from OUT/checkpoint (written at every held-out evaluation and on
    /// Ctrl-C), with the same options: it ends where the uninterrupted run would have.
    #[arg(long)]
    resume: bool,
    /// Full fine-tuning: train every weight (f32; about 16 bytes per parameter for weights,
    /// gradients and AdamW's moments) instead of LoRA adapters; writes OUT/model, a Hugging Face
    /// directory that --model accepts. The LoRA options are ignored.
    #[arg(long, conflicts_with = "quantized_base")]
    full: bool,
}

pub(crate) fn run(a: &SftArgs) -> Result<()> {
    let stop = stop_on_ctrl_c();
    let o = SftOptions {
        model: a.model.clone(),
        data: a.data.clone(),
        eval_data: a.eval_data.clone(),
        eval_fraction: a.eval_fraction,
        out_dir: a.out.clone(),
        lora: LoraConfig { r: a.rank, alpha: a.alpha, dropout: a.dropout, rslora: a.rslora },
        targets: a.targets.clone(),
        quantized_base: a.quantized_base,
        lr: a.lr,
        steps: a.steps,
        batch_size: a.batch_size,
        max_len: a.max_len,
        eval_interval: a.eval_interval,
        eval_examples: a.eval_examples,
        seed: a.seed,
        resume: a.resume,
        full: a.full,
    };
    let bar = steps_bar(a.steps);
    let (mut train_pts, mut eval_pts) = (Vec::new(), Vec::new());
    let plot = a.out.join("loss.png");
    let mut on_event = |e: &SftEvent| {
        match e {
        SftEvent::Data { train, eval, truncated, trainable } => say(&bar, format!(
            "{train} training and {eval} held-out conversations ({truncated} cut to --max-len {}); {:.2} M trainable parameters",
            a.max_len,
            *trainable as f64 / 1e6
        )),
        SftEvent::Step { step, loss, lr, tokens_per_sec } => {
            bar.set_position(*step as u64);
            bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {tokens_per_sec:.0} tok/s"));
            train_pts.push((*step as f64, *loss));
        }
        SftEvent::Eval { step, loss } => {
            say(&bar, format!("step {step:>5}: held-out loss {loss:.4}"));
            eval_pts.push((*step as f64, *loss));
            let series =
                [Series { label: "train", points: train_pts.clone() }, Series { label: "held-out", points: eval_pts.clone() }];
            if let Err(err) = line_plot(&plot, "LoRA fine-tuning", "step", "loss on assistant tokens (nats)", &series, false)
            {
                say(&bar, format!("warning: {err}"));
            }
        }
        SftEvent::Checkpoint { dir, step } => bar.set_message(format!("checkpoint of step {step} in {}", dir.display())),
        SftEvent::Resumed { step } => {
            say(&bar, format!("resuming after step {step} from {}", a.out.join("checkpoint").display()));
            bar.set_position(*step as u64);
            // The curves so far, from the metrics the earlier run wrote (appended to from here).
            let text = std::fs::read_to_string(a.out.join("metrics.jsonl")).unwrap_or_default();
            for v in text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
                let (Some(s), loss, eval) = (v["step"].as_u64(), v["loss"].as_f64(), v["eval_loss"].as_f64()) else { continue };
                if s as usize > *step {
                    continue;
                }
                if let Some(l) = loss {
                    train_pts.push((s as f64, l));
                }
                if let Some(l) = eval {
                    eval_pts.push((s as f64, l));
                }
            }
        }
        SftEvent::Saved { dir } => say(&bar, format!("written to {}", dir.display())),
    }
    };
    let result = finetune(&o, &stop, &mut on_event);
    bar.finish_and_clear();
    let (before, after) = result.with_context(|| format!("fine-tuning {}", a.model.display()))?;
    if stop.load(Ordering::Relaxed) {
        println!(
            "stopped early; the checkpoint is in {}: run the same command with --resume to continue",
            a.out.join("checkpoint").display()
        );
    }
    if a.full {
        println!(
            "held-out loss {before:.4} → {after:.4}; use it with: yuanli generate --model {}",
            a.out.join("model").display()
        );
    } else {
        println!(
            "held-out loss {before:.4} → {after:.4}; use it with: yuanli generate --model {} --lora {}",
            a.model.display(),
            a.out.join("adapter").display()
        );
    }
    Ok(())
}
