//! GPT pretraining by next-token prediction: the loop, its configuration and its checkpoints.
//!
//! One step: for each of `accum` micro-batches draw `(B, T+1)` windows from the memory-mapped
//! training shard, run the model, and back-propagate `loss / accum`; then check that every
//! gradient is finite, clip the global norm, and take one AdamW step at the scheduled rate.
//! Every `eval_interval` steps the mean loss over `eval_iters` fixed batches of each split is
//! measured without recording a graph.
//!
//! Resuming is exact: batches depend only on `(seed, batch index)`, dropout draws from a saved
//! generator, and the optimizer moments, step counters and parameters are saved bit for bit.

use crate::optim::Adam;
use crate::schedule::LrSchedule;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use yuanli_autograd::no_grad;
use yuanli_data::{Shard, ShardError};
use yuanli_models::{Gpt, GptConfig};
use yuanli_nn::checkpoint::write_atomic;
use yuanli_nn::{CheckpointError, ParamStore};
use yuanli_tensor::{Rng, Tensor};

/// What can stop training.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The configuration is inconsistent.
    #[error("config: {0}")]
    Config(String),
    /// A shard is missing or damaged.
    #[error(transparent)]
    Data(#[from] ShardError),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The loss or a gradient became NaN or infinite.
    #[error("training diverged at step {step}: {what}; the last good checkpoint is untouched")]
    NonFinite {
        /// The step.
        step: usize,
        /// What was not finite.
        what: String,
    },
    /// A file operation failed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// Everything a pretraining run needs (`yuanli train --config FILE.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The model; `vocab_size = 0` takes the vocabulary of the prepared data.
    pub model: GptConfig,
    /// Directory made by `yuanli prepare` (train.bin, val.bin, meta.json).
    pub data_dir: PathBuf,
    /// Where checkpoints, `metrics.jsonl` and the loss plot go.
    pub out_dir: PathBuf,
    /// Sequences per micro-batch B (the context length T is `model.block_size`).
    pub batch_size: usize,
    /// Tokens per optimizer step; a multiple of `B·T` (gradient accumulation).
    #[serde(default)]
    pub total_batch_tokens: usize,
    /// Optimizer steps.
    pub max_iters: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Floor of the cosine decay.
    pub min_lr: f64,
    /// Linear warm-up steps.
    pub warmup_iters: usize,
    /// AdamW weight decay (matrices only).
    #[serde(default)]
    pub weight_decay: f64,
    /// AdamW β₁.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// AdamW β₂.
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// Global gradient-norm clip (0 disables).
    #[serde(default = "default_clip")]
    pub grad_clip: f64,
    /// Steps between evaluations.
    pub eval_interval: usize,
    /// Batches per evaluation.
    pub eval_iters: usize,
    /// Steps between checkpoints (0: only at the end).
    #[serde(default)]
    pub checkpoint_interval: usize,
    /// Master seed (initialisation, batches, dropout).
    #[serde(default)]
    pub seed: u64,
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_clip() -> f64 {
    1.0
}

impl TrainConfig {
    /// The "baby" recipe: a 4-layer, 128-wide GPT with a 64-token context, batch 12, AdamW
    /// (β 0.9/0.99, decay 0.1), learning rate 1e-3 after a warm-up of a tenth of the run (at
    /// most 100 steps) then cosine to 1e-4, clipping at 1.0, ten evaluations per run.
    pub fn baby(vocab_size: usize, data_dir: PathBuf, out_dir: PathBuf, steps: usize, seed: u64) -> TrainConfig {
        TrainConfig {
            model: GptConfig {
                vocab_size,
                block_size: 64,
                n_layer: 4,
                n_head: 4,
                n_embd: 128,
                dropout: 0.0,
                bias: true,
                positions: Default::default(),
            },
            data_dir,
            out_dir,
            batch_size: 12,
            total_batch_tokens: 0,
            max_iters: steps,
            learning_rate: 1e-3,
            min_lr: 1e-4,
            warmup_iters: 100.min(steps / 10),
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            grad_clip: 1.0,
            eval_interval: (steps / 10).max(1),
            eval_iters: 20,
            checkpoint_interval: 0,
            seed,
        }
    }

    /// Micro-batches per step.
    pub fn accum_steps(&self) -> usize {
        let per = self.batch_size * self.model.block_size;
        if self.total_batch_tokens == 0 {
            1
        } else {
            (self.total_batch_tokens / per).max(1)
        }
    }

    /// Checks the numbers that a typo would break.
    pub fn validate(&self) -> Result<(), TrainError> {
        self.model.validate().map_err(|e| TrainError::Config(e.to_string()))?;
        let per = self.batch_size * self.model.block_size;
        if self.batch_size == 0 || self.max_iters == 0 || self.eval_iters == 0 || self.eval_interval == 0 {
            return Err(TrainError::Config(
                "batch_size, max_iters, eval_interval and eval_iters must be positive".into(),
            ));
        }
        if self.total_batch_tokens != 0 && !self.total_batch_tokens.is_multiple_of(per) {
            return Err(TrainError::Config(format!(
                "total_batch_tokens = {} is not a multiple of batch_size·block_size = {per}",
                self.total_batch_tokens
            )));
        }
        if !(self.learning_rate > 0.0 && self.min_lr >= 0.0 && self.min_lr <= self.learning_rate) {
            return Err(TrainError::Config(format!(
                "need 0 ≤ min_lr ≤ learning_rate > 0, got {} and {}",
                self.min_lr, self.learning_rate
            )));
        }
        Ok(())
    }

    /// The learning-rate schedule.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule::WarmupCosine {
            max_lr: self.learning_rate,
            min_lr: self.min_lr,
            warmup: self.warmup_iters,
            total: self.max_iters,
        }
    }
}

/// The resumable state saved next to the weights (`state.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Micro-batches drawn from the training shard so far.
    pub batch_index: u64,
    /// AdamW's step counter.
    pub adam_t: u64,
    /// The dropout generator.
    pub rng_state: [u64; 4],
    /// Best validation loss seen.
    pub best_val_loss: Option<f64>,
}

/// What the loop tells its caller (the CLI draws a progress bar from these).
#[derive(Clone, Debug)]
pub enum Event {
    /// One optimizer step finished.
    Step {
        /// Step number (1-based count of completed steps).
        step: usize,
        /// Mean training loss of the step's micro-batches.
        loss: f64,
        /// Learning rate used.
        lr: f64,
        /// Global gradient norm before clipping.
        grad_norm: f64,
        /// Training tokens per second for this step.
        tokens_per_sec: f64,
    },
    /// An evaluation finished.
    Eval {
        /// Step number.
        step: usize,
        /// Mean loss on training batches.
        train_loss: f64,
        /// Mean loss on validation batches.
        val_loss: f64,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// The directory.
        dir: PathBuf,
        /// Step number.
        step: usize,
    },
}

/// A model with its parameters, ready to train or sample.
pub struct Trainee {
    /// The parameter arena.
    pub store: ParamStore,
    /// The model.
    pub model: Gpt,
}

impl Trainee {
    /// Builds a freshly initialised model.
    pub fn new(config: &GptConfig, seed: u64) -> Result<Self, TrainError> {
        let mut store = ParamStore::new();
        let model =
            Gpt::new(config.clone(), &mut store, &mut Rng::new(seed)).map_err(|e| TrainError::Config(e.to_string()))?;
        Ok(Self { store, model })
    }

    /// Loads the weights of a checkpoint directory (its `config.json` decides the shape).
    pub fn load(dir: &Path) -> Result<(Self, TrainConfig), TrainError> {
        let config = read_json::<TrainConfig>(&dir.join("config.json"))?;
        let t = Self::new(&config.model, config.seed)?;
        t.store.load(dir.join("model.safetensors"))?;
        Ok((t, config))
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TrainError::File { path: path.to_path_buf(), message: e.to_string() })?;
    serde_json::from_str(&text).map_err(|e| TrainError::File {
        path: path.to_path_buf(),
        message: format!("not a valid checkpoint file: {e}"),
    })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| TrainError::File { path: path.to_path_buf(), message: e.to_string() })?;
    Ok(write_atomic(path, text.as_bytes())?)
}

/// Writes a checkpoint directory atomically: everything goes to `DIR.tmp`, then the old `DIR`
/// is moved aside and the new one renamed into place, so a crash leaves a complete checkpoint.
pub fn save_checkpoint(
    dir: &Path,
    t: &Trainee,
    config: &TrainConfig,
    state: &TrainState,
    opt: &Adam,
) -> Result<(), TrainError> {
    let tmp = dir.with_extension("tmp");
    let old = dir.with_extension("old");
    let file_err = |p: &Path, e: std::io::Error| TrainError::File { path: p.to_path_buf(), message: e.to_string() };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| file_err(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| file_err(&tmp, e))?;
    t.store.save(tmp.join("model.safetensors"))?;
    write_json(&tmp.join("config.json"), config)?;
    write_json(&tmp.join("state.json"), state)?;
    let moments: Vec<u8> = opt.m.iter().chain(&opt.v).flat_map(|x| x.to_le_bytes()).collect();
    write_atomic(&tmp.join("optimizer.bin"), &moments)?;
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| file_err(&old, e))?;
        }
        std::fs::rename(dir, &old).map_err(|e| file_err(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| file_err(&tmp, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| file_err(&old, e))?;
    }
    Ok(())
}

/// Mean loss over `iters` batches of a shard, drawn with a fixed evaluation seed.
pub fn evaluate(t: &Trainee, shard: &Shard, config: &TrainConfig, iters: usize) -> Result<f64, TrainError> {
    let _g = no_grad();
    let (b, tt) = (config.batch_size, config.model.block_size);
    let mut rng = Rng::new(0);
    let mut total = 0.0;
    for i in 0..iters {
        let (x, y) = shard.batch(config.seed ^ 0xE7A1, i as u64, b, tt)?;
        total += t.model.loss(&Tensor::new(x, &[b, tt]), &Tensor::new(y, &[b, tt]), false, &mut rng).value().item();
    }
    Ok(total / iters as f64)
}

/// Runs (or resumes) pretraining until `max_iters` or until `stop` is set; writes checkpoints
/// to `out_dir/checkpoint` and one JSON line per step to `out_dir/metrics.jsonl`.
pub fn train(
    config: &TrainConfig,
    resume: Option<&Path>,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&Event),
) -> Result<TrainState, TrainError> {
    config.validate()?;
    let meta = Shard::meta(&config.data_dir)?;
    if config.model.vocab_size < meta.vocab_size {
        return Err(TrainError::Config(format!(
            "model vocab_size {} is smaller than the data's {} ({})",
            config.model.vocab_size,
            meta.vocab_size,
            config.data_dir.display()
        )));
    }
    let train_shard = Shard::open(&config.data_dir, "train")?;
    let val_shard = Shard::open(&config.data_dir, "val")?;
    std::fs::create_dir_all(&config.out_dir)
        .map_err(|e| TrainError::File { path: config.out_dir.clone(), message: e.to_string() })?;
    let ckpt_dir = config.out_dir.join("checkpoint");
    let (t, mut state, mut opt) = match resume {
        Some(dir) => {
            let (t, saved) = Trainee::load(dir)?;
            if saved.model != config.model {
                return Err(TrainError::Config(format!(
                    "{}: checkpoint model {:?} differs from the config's {:?}",
                    dir.display(),
                    saved.model,
                    config.model
                )));
            }
            let state: TrainState = read_json(&dir.join("state.json"))?;
            let mut opt = Adam::adamw(config.beta1, config.beta2, 1e-8, config.weight_decay);
            let p = dir.join("optimizer.bin");
            let bytes = std::fs::read(&p).map_err(|e| TrainError::File { path: p.clone(), message: e.to_string() })?;
            let n = t.store.num_trainable();
            if bytes.len() != 8 * n {
                return Err(TrainError::File {
                    path: p,
                    message: format!("{} bytes, expected {} (two f32 moments per parameter)", bytes.len(), 8 * n),
                });
            }
            let f: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            opt.m = f[..n].to_vec();
            opt.v = f[n..].to_vec();
            opt.t = state.adam_t;
            (t, state, opt)
        }
        None => {
            let t = Trainee::new(&config.model, config.seed)?;
            let state = TrainState {
                step: 0,
                batch_index: 0,
                adam_t: 0,
                rng_state: Rng::new(config.seed ^ 0xD20F).state(),
                best_val_loss: None,
            };
            (t, state, Adam::adamw(config.beta1, config.beta2, 1e-8, config.weight_decay))
        }
    };
    let mut rng = Rng::from_state(state.rng_state);
    let schedule = config.schedule();
    let accum = config.accum_steps();
    let (b, tt) = (config.batch_size, config.model.block_size);
    let metrics_path = config.out_dir.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| TrainError::File { path: metrics_path.clone(), message: e.to_string() })?;
    let save =
        |state: &TrainState, opt: &Adam, rng: &Rng, on_event: &mut dyn FnMut(&Event)| -> Result<(), TrainError> {
            let s = TrainState { rng_state: rng.state(), adam_t: opt.t, ..state.clone() };
            save_checkpoint(&ckpt_dir, &t, config, &s, opt)?;
            on_event(&Event::Checkpoint { dir: ckpt_dir.clone(), step: s.step });
            Ok(())
        };
    while state.step < config.max_iters {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let started = std::time::Instant::now();
        let lr = schedule.lr(state.step);
        t.store.zero_grad();
        let mut loss_sum = 0.0;
        for _ in 0..accum {
            let (x, y) = train_shard.batch(config.seed, state.batch_index, b, tt)?;
            state.batch_index += 1;
            let loss = t.model.loss(&Tensor::new(x, &[b, tt]), &Tensor::new(y, &[b, tt]), true, &mut rng);
            let value = loss.value().item();
            if !value.is_finite() {
                return Err(TrainError::NonFinite { step: state.step + 1, what: format!("loss is {value}") });
            }
            loss_sum += value;
            loss.scale(1.0 / accum as f64).backward();
        }
        if let Err(e) = t.store.check_finite_grads() {
            return Err(TrainError::NonFinite { step: state.step + 1, what: e.to_string() });
        }
        let grad_norm =
            if config.grad_clip > 0.0 { t.store.clip_grad_norm(config.grad_clip) } else { t.store.grad_norm() };
        opt.step(&t.store, lr);
        state.step += 1;
        let loss = loss_sum / accum as f64;
        let tokens_per_sec = (accum * b * tt) as f64 / started.elapsed().as_secs_f64();
        let line = serde_json::json!({"step": state.step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_sec": tokens_per_sec});
        use std::io::Write;
        writeln!(metrics, "{line}")
            .map_err(|e| TrainError::File { path: metrics_path.clone(), message: e.to_string() })?;
        on_event(&Event::Step { step: state.step, loss, lr, grad_norm, tokens_per_sec });
        if state.step % config.eval_interval == 0 || state.step == config.max_iters {
            let train_loss = evaluate(&t, &train_shard, config, config.eval_iters)?;
            let val_loss = evaluate(&t, &val_shard, config, config.eval_iters)?;
            state.best_val_loss = Some(state.best_val_loss.map_or(val_loss, |b| b.min(val_loss)));
            let line = serde_json::json!({"step": state.step, "train_loss": train_loss, "val_loss": val_loss});
            writeln!(metrics, "{line}")
                .map_err(|e| TrainError::File { path: metrics_path.clone(), message: e.to_string() })?;
            on_event(&Event::Eval { step: state.step, train_loss, val_loss });
        }
        if config.checkpoint_interval > 0 && state.step % config.checkpoint_interval == 0 {
            save(&state, &opt, &rng, on_event)?;
        }
    }
    save(&state, &opt, &rng, on_event)?;
    state.rng_state = rng.state();
    state.adam_t = opt.t;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(dir: &Path, max_iters: usize) -> TrainConfig {
        TrainConfig {
            model: GptConfig {
                vocab_size: 12,
                block_size: 8,
                n_layer: 1,
                n_head: 2,
                n_embd: 16,
                dropout: 0.1,
                bias: true,
                positions: Default::default(),
            },
            data_dir: dir.join("data"),
            out_dir: dir.join("out"),
            batch_size: 2,
            total_batch_tokens: 32,
            max_iters,
            learning_rate: 1e-2,
            min_lr: 1e-3,
            warmup_iters: 2,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            grad_clip: 1.0,
            eval_interval: 3,
            eval_iters: 2,
            checkpoint_interval: 3,
            seed: 5,
        }
    }

    fn losses(events: &[Event]) -> Vec<f64> {
        events.iter().filter_map(|e| if let Event::Step { loss, .. } = e { Some(*loss) } else { None }).collect()
    }

    #[test]
    fn interrupted_and_resumed_training_repeats_the_same_losses() {
        let root = std::env::temp_dir().join(format!("yuanli-resume-{}", std::process::id()));
        let ids: Vec<u32> = (0..600u32).map(|i| (i * 7 + i / 5) % 12).collect();
        yuanli_data::write_shards(&root.join("data"), &ids, 12, "char", vec![], 0.2).unwrap();
        let stop = AtomicBool::new(false);
        // Uninterrupted: 6 steps.
        let cfg = tiny(&root.join("a"), 6);
        let cfg = TrainConfig { data_dir: root.join("data"), ..cfg };
        let mut full = Vec::new();
        train(&cfg, None, &stop, &mut |e| full.push(e.clone())).unwrap();
        // Interrupted after 3 steps, then resumed from the checkpoint to 6.
        let cfg_b = TrainConfig { out_dir: root.join("b/out"), max_iters: 3, ..cfg.clone() };
        let mut first = Vec::new();
        train(&cfg_b, None, &stop, &mut |e| first.push(e.clone())).unwrap();
        let resumed_cfg = TrainConfig { max_iters: 6, ..cfg_b.clone() };
        let mut second = Vec::new();
        train(&resumed_cfg, Some(&cfg_b.out_dir.join("checkpoint")), &stop, &mut |e| second.push(e.clone())).unwrap();
        let mut joined = losses(&first);
        joined.extend(losses(&second));
        let want = losses(&full);
        assert_eq!(joined.len(), 6);
        for (a, b) in joined.iter().zip(&want) {
            assert_eq!(a.to_bits(), b.to_bits(), "resumed losses {joined:?} vs uninterrupted {want:?}");
        }
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn divergence_stops_with_the_step_and_keeps_the_last_checkpoint() {
        let root = std::env::temp_dir().join(format!("yuanli-nan-{}", std::process::id()));
        let ids: Vec<u32> = (0..600u32).map(|i| (i * 7 + i / 5) % 12).collect();
        yuanli_data::write_shards(&root.join("data"), &ids, 12, "char", vec![], 0.2).unwrap();
        let stop = AtomicBool::new(false);
        // A sane first run leaves a checkpoint at step 3.
        let cfg = TrainConfig { data_dir: root.join("data"), checkpoint_interval: 0, ..tiny(&root, 3) };
        train(&cfg, None, &stop, &mut |_| {}).unwrap();
        let ckpt = cfg.out_dir.join("checkpoint");
        let before = std::fs::read(ckpt.join("model.safetensors")).unwrap();
        // Resume with an absurd learning rate: the loss blows up and training must stop.
        let wild = TrainConfig { max_iters: 200, learning_rate: 1e30, min_lr: 1e29, grad_clip: 0.0, ..cfg.clone() };
        let err = train(&wild, Some(&ckpt), &stop, &mut |_| {}).unwrap_err();
        assert!(matches!(err, TrainError::NonFinite { step, .. } if step > 3), "{err}");
        assert!(err.to_string().contains("last good checkpoint is untouched"), "{err}");
        assert_eq!(
            std::fs::read(ckpt.join("model.safetensors")).unwrap(),
            before,
            "the checkpoint was not overwritten"
        );
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn bad_configs_and_data_give_clear_errors() {
        let root = std::env::temp_dir().join(format!("yuanli-badcfg-{}", std::process::id()));
        let stop = AtomicBool::new(false);
        let mut cfg = tiny(&root, 2);
        cfg.model.n_head = 3;
        let err = train(&cfg, None, &stop, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("n_embd = 16 is not divisible by n_head = 3"), "{err}");
        let cfg = tiny(&root, 2);
        let err = train(&cfg, None, &stop, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("meta.json"), "missing shards are named: {err}");
        std::fs::remove_dir_all(&root).ok();
    }
}
