//! Lesson 6: pretraining a GPT — the objective, the schedule, the loss curve, and MFU — with the
//! same loop `yuanli train` runs.

use crate::LessonOpts;
use serde_json::json;
use std::sync::atomic::AtomicBool;
use yuanli_data::{char_vocab, write_shards};
use yuanli_tensor::{DType, Rng, Tensor};
use yuanli_train::pretrain::{train, Event, TrainConfig};

/// Runs lesson 6.
pub fn run(opts: &LessonOpts) -> anyhow::Result<serde_json::Value> {
    let say = |s: String| crate::say(opts, &s);
    say("Lesson 6 — pretraining: next-token prediction with warm-up, cosine decay and evaluation\n".into());
    // ANCHOR: prepare
    let files = yuanli_data::files_with_extension(&opts.data_dir.join("shakespeare"), "txt")?;
    let text: String = files.iter().map(std::fs::read_to_string).collect::<Result<_, _>>()?;
    let chars = char_vocab(&text);
    let ids: Vec<u32> = text.chars().map(|c| chars.binary_search(&c).map(|i| i as u32).unwrap_or(0)).collect();
    let data_dir = opts.out_dir.join("lesson6_data");
    write_shards(&data_dir, &ids, chars.len(), "char", chars.clone(), 0.1)?;
    // ANCHOR_END: prepare

    // ANCHOR: config
    // The baby recipe, shortened to 600 steps (warm-up 60), evaluated every 100 steps.
    let baby = TrainConfig::baby(chars.len(), data_dir, opts.out_dir.join("lesson6_run"), 600, opts.seed);
    let config = TrainConfig { eval_interval: 100, ..baby };
    // ANCHOR_END: config
    let _ = std::fs::remove_dir_all(&config.out_dir); // a fresh run each time
    let schedule = config.schedule();
    say(format!(
        "learning rate: step 0 {:.1e}, step 59 {:.1e} (end of warm-up), step 330 {:.1e}, step 599 {:.1e}",
        schedule.lr(0),
        schedule.lr(59),
        schedule.lr(330),
        schedule.lr(599)
    ));
    // Peak matmul throughput of this machine, the denominator of MFU.
    let a = Tensor::randn(&[512, 512], 0.0, 1.0, DType::F32, &mut Rng::new(0));
    let start = std::time::Instant::now();
    for _ in 0..20 {
        std::hint::black_box(a.matmul(&a));
    }
    let peak = 20.0 * 2.0 * 512f64.powi(3) / start.elapsed().as_secs_f64();
    let fpt = config.model.flops_per_token();
    say(format!(
        "model: {:.2} M parameters, {:.2} MFLOP per token (6N + 12·L·C·T); matmul peak ≈ {:.0} GFLOP/s\n",
        config.model.num_params() as f64 / 1e6,
        fpt / 1e6,
        peak / 1e9
    ));
    // ANCHOR: train
    let mut curve = Vec::new();
    let mut speed = Vec::new();
    let stop = AtomicBool::new(false);
    train(&config, None, &stop, &mut |e| match e {
        Event::Eval { step, train_loss, val_loss } => curve.push((*step, *train_loss, *val_loss)),
        Event::Step { tokens_per_sec, .. } => speed.push(*tokens_per_sec),
        Event::Checkpoint { .. } => {}
    })?;
    // ANCHOR_END: train
    for (step, tr, va) in &curve {
        say(format!("step {step:>4}: train {tr:.3}  validation {va:.3}"));
    }
    speed.sort_by(f64::total_cmp);
    let tps = speed[speed.len() / 2];
    let mfu = tps * fpt / peak;
    say(format!(
        "\nmedian {tps:.0} tokens/s → {:.1} GFLOP/s of useful work = MFU {:.1}% of the matmul peak",
        tps * fpt / 1e9,
        100.0 * mfu
    ));
    say(format!("loss curve: {}", config.out_dir.join("loss.png").display()));
    let last = curve.last().copied().unwrap_or((0, f64::NAN, f64::NAN));
    Ok(json!({ "lesson": 6, "final_val_loss": last.2, "tokens_per_sec": tps, "mfu": mfu }))
}
