//! Knowledge distillation: a small LLaMA student learns a teacher's next-token distributions.
//!
//! The student shares the teacher's tokenizer (so their distributions are over the same
//! vocabulary) and starts from random weights. Each step draws `B` windows of `T + 1` tokens
//! from the training text; the teacher — frozen, run by the inference engine with its
//! weights read in place — gives its logits at every position, and the student is trained on
//!
//! ```text
//!   L = D(teacher ‖ student) + w · CE(student, next token)
//! ```
//!
//! where `D` is the generalised Jensen–Shannon divergence of GKD ([`generalized_jsd`]: β = 0
//! the forward KL of classic distillation, β = 1 the reverse KL) and `w` an optional weight on
//! the data's own loss. `DistillLoss::Ce` trains the same student on the data alone: the
//! baseline distillation must beat. Both are measured the same way, by the student's
//! cross-entropy on held-out text (windows of `T` tokens, each from an empty context), beside
//! the teacher's on the same windows.
//!
//! Why it helps: the data says only which token came next; the teacher says how plausible
//! every token was. One position of soft targets carries far more bits than one index, so a
//! student sees more signal per token read (Hinton et al., "Distilling the Knowledge in a
//! Neural Network").

use crate::align::generalized_jsd;
use crate::optim::Adam;
use crate::schedule::LrSchedule;
use crate::sft::{load_adapter_checkpoint, replace_dir, save_adapter_checkpoint, FinetuneError, MetricsLog, SftState};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use yuanli_models::engine::{Batch, Logits, SessionOpts};
use yuanli_models::llama::{Extras, Llama, LlamaConfig};
use yuanli_models::load::{load_pretrained_with, LoadOptions, Pretrained};
use yuanli_models::sample::CausalLm;
use yuanli_nn::ParamStore;
use yuanli_tensor::{Rng, RopeLayout, Tensor};

/// What the student is trained on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DistillLoss {
    /// The data alone (next-token cross-entropy): the baseline.
    Ce,
    /// The teacher's distributions through the generalised JSD with this β (0: forward KL).
    Jsd {
        /// GKD's β.
        beta: f64,
    },
}

/// The student's shape; its vocabulary is the teacher's, its context `T`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StudentShape {
    /// Blocks.
    pub layers: usize,
    /// Hidden size C.
    pub hidden: usize,
    /// Query heads (C must divide by it).
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Inner width of the SwiGLU MLP.
    pub intermediate: usize,
}

/// Everything a distillation run needs.
#[derive(Clone, Debug)]
pub struct DistillOptions {
    /// The teacher: a `.gguf` file or a Hugging Face directory (also the tokenizer's source).
    pub teacher: PathBuf,
    /// Training text: files, or directories whose `.txt` files are read (sorted by name).
    pub data: Vec<PathBuf>,
    /// Held-out text: files or directories; a training path that is also here is skipped.
    pub eval_data: Vec<PathBuf>,
    /// Where `metrics.jsonl`, `checkpoint/` and the student (`model/`, a Hugging Face
    /// directory) go.
    pub out_dir: PathBuf,
    /// The student.
    pub student: StudentShape,
    /// The loss.
    pub loss: DistillLoss,
    /// Both distributions are softened by this temperature inside the divergence.
    pub temperature: f64,
    /// Weight of the data's cross-entropy added to the divergence (0: distributions alone).
    pub ce_weight: f64,
    /// Peak learning rate (AdamW; 10% warm-up, cosine to a tenth).
    pub lr: f64,
    /// AdamW's decoupled weight decay on the weight matrices.
    pub weight_decay: f64,
    /// Optimizer steps.
    pub steps: usize,
    /// Windows per step (B).
    pub batch_size: usize,
    /// Tokens per window (T): also the student's context.
    pub context: usize,
    /// Held-out evaluation every this many steps (and at the start and the end).
    pub eval_interval: usize,
    /// Held-out tokens evaluated (the first ones; 0 = all).
    pub eval_tokens: usize,
    /// Seed of the student's initialisation and of every step's windows.
    pub seed: u64,
    /// Continue from `out_dir/checkpoint` with the same options.
    pub resume: bool,
}

/// What the loop reports.
#[derive(Clone, Debug, PartialEq)]
pub enum DistillEvent {
    /// The data and both models are ready.
    Data {
        /// Training tokens.
        train_tokens: usize,
        /// Held-out tokens evaluated.
        eval_tokens: usize,
        /// The student's parameters.
        student_params: usize,
        /// The teacher's description.
        teacher: String,
    },
    /// The teacher's held-out cross-entropy on the same windows (the floor to approach).
    TeacherEval {
        /// Nats per token.
        loss: f64,
    },
    /// One optimizer step.
    Step {
        /// The step (from 1).
        step: usize,
        /// The loss optimised.
        loss: f64,
        /// The student's cross-entropy on the batch.
        ce: f64,
        /// The learning rate.
        lr: f64,
        /// Training tokens per second (teacher pass included).
        tokens_per_sec: f64,
    },
    /// A held-out evaluation of the student.
    Eval {
        /// The step it follows (0: the initial student).
        step: usize,
        /// Nats per token.
        loss: f64,
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
    /// The student was written (a Hugging Face directory).
    Saved {
        /// Its directory.
        dir: PathBuf,
    },
}

/// The result of a run: the student's held-out loss at the start and at the end, and the
/// teacher's on the same windows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistillSummary {
    /// The student's held-out cross-entropy before training.
    pub first: f64,
    /// After the last step.
    pub last: f64,
    /// The teacher's.
    pub teacher: f64,
}

/// The text files a list of paths names: a file itself, or a directory's `.txt` files
/// sorted by name.
pub fn text_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, FinetuneError> {
    let mut out = Vec::new();
    for p in paths {
        let err = |m: String| FinetuneError::File { path: p.clone(), message: m };
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| err(e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "txt"))
                .collect();
            if files.is_empty() {
                return Err(err("the directory has no .txt files".into()));
            }
            files.sort();
            out.extend(files);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(err("no such file or directory".into()));
        }
    }
    Ok(out)
}

/// The token ids of `files` laid end to end (each file encoded as ordinary text).
fn tokens_of(files: &[PathBuf], teacher: &Pretrained) -> Result<Vec<u32>, FinetuneError> {
    let mut ids = Vec::new();
    for f in files {
        let err = |m: String| FinetuneError::File { path: f.clone(), message: m };
        let text = std::fs::read_to_string(f).map_err(|e| err(e.to_string()))?;
        let file_ids = teacher.tokenizer.encode_ordinary_parallel(&text).map_err(|e| err(e.to_string()))?;
        let v = teacher.model.config.vocab_size;
        if let Some(bad) = file_ids.iter().find(|&&t| t as usize >= v) {
            return Err(err(format!("the tokenizer gives id {bad}, outside the model's vocabulary of {v}")));
        }
        ids.extend(file_ids);
    }
    Ok(ids)
}

/// The student's configuration: the shape asked for, the teacher's vocabulary, context `t`,
/// tied embeddings, Hugging Face's RoPE layout.
pub fn student_config(s: &StudentShape, vocab_size: usize, t: usize) -> Result<LlamaConfig, FinetuneError> {
    if s.heads == 0 || !s.hidden.is_multiple_of(s.heads) {
        return Err(FinetuneError::Options(format!(
            "the student's hidden size {} must be a multiple of its {} heads",
            s.hidden, s.heads
        )));
    }
    let c = LlamaConfig {
        vocab_size,
        hidden_size: s.hidden,
        intermediate_size: s.intermediate,
        n_layer: s.layers,
        n_head: s.heads,
        n_kv_head: s.kv_heads,
        head_dim: s.hidden / s.heads,
        rope_theta: 10_000.0,
        rope_scaling: Default::default(),
        rope_layout: RopeLayout::HalfSplit,
        rms_norm_eps: 1e-5,
        max_seq_len: t,
        tie_word_embeddings: true,
        attention_bias: false,
        extras: Extras::default(),
    };
    c.validate().map_err(|m| FinetuneError::Options(format!("student: {m}")))?;
    Ok(c)
}

/// A random student: every matrix `N(0, 0.02²)`, the two that write into the residual stream
/// (`o_proj`, `down_proj`) scaled down by `√(2L)` as GPT-2 does, norm gains at one. It carries
/// the teacher's tokenizer, special tokens and chat template, so that it saves as a model
/// `yuanli generate` can run.
pub fn new_student(c: LlamaConfig, teacher: &Pretrained, seed: u64) -> Result<Pretrained, FinetuneError> {
    let mut store = ParamStore::new();
    let model = Llama::new(c.clone(), &mut store)?;
    let mut rng = Rng::new(seed);
    let residual = 0.02 / (2.0 * c.n_layer as f64).sqrt();
    for p in store.params() {
        if p.shape.len() != 2 {
            continue;
        }
        let std = if p.name.contains("o_proj") || p.name.contains("down_proj") { residual } else { 0.02 };
        let v: Vec<f32> = (0..p.numel()).map(|_| (rng.normal() * std) as f32).collect();
        store.set_values(p, &v);
    }
    Ok(Pretrained {
        description: format!(
            "distilled student, llama {}×{} ({:.1} M parameters)",
            c.n_layer,
            c.hidden_size,
            c.num_params() as f64 / 1e6
        ),
        model,
        store,
        tokenizer: teacher.tokenizer.clone(),
        chat_template: teacher.chat_template.clone(),
        bos: teacher.bos,
        eos: teacher.eos.clone(),
        add_bos: teacher.add_bos,
        weight_types: vec![("F32".into(), 0)],
    })
}

/// The teacher's logits at every position of the `rows` windows `x (rows, T)`, row-major
/// `(rows·T, V)`, each window read from an empty context by the inference engine.
pub fn teacher_logits(teacher: &Llama, x: &Tensor) -> Result<Tensor, FinetuneError> {
    let (rows, t) = (x.dim(0), x.dim(1));
    let ids = x.to_vec::<u32>();
    let mut session = teacher.new_session(SessionOpts::tokens(rows * t));
    let mut batch = Batch::new();
    for r in 0..rows {
        let seq = session.add_sequence();
        batch.add_seq(seq, 0, &ids[r * t..(r + 1) * t], Logits::All);
    }
    let mut logits = Vec::new();
    teacher
        .forward_batch(&mut session, &batch, &mut logits)
        .map_err(|e| FinetuneError::Options(format!("teacher: {e}")))?;
    Ok(Tensor::new(logits, &[rows * t, teacher.config.vocab_size]))
}

/// `B` windows of `T + 1` tokens at offsets drawn from a generator seeded by `(seed, step)`:
/// the batch of a step is a pure function of it (a resumed run reads the same windows).
/// Returns `(x, y)`, both `(B, T)`, `y` shifted by one.
pub fn windows(ids: &[u32], b: usize, t: usize, seed: u64, step: usize) -> (Tensor, Tensor) {
    let mut rng = Rng::new(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let span = ids.len() - t; // callers check ids.len() > t
    let (mut x, mut y) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
    for _ in 0..b {
        let s = rng.below(span);
        x.extend_from_slice(&ids[s..s + t]);
        y.extend_from_slice(&ids[s + 1..s + t + 1]);
    }
    (Tensor::new(x, &[b, t]), Tensor::new(y, &[b, t]))
}

/// The held-out windows: consecutive, non-overlapping `T + 1`-token spans (`x`, `y` rows).
fn eval_windows(ids: &[u32], t: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
    (0..ids.len().saturating_sub(1) / t)
        .map(|i| (ids[i * t..(i + 1) * t].to_vec(), ids[i * t + 1..(i + 1) * t + 1].to_vec()))
        .collect()
}

/// Stacks some windows into `(x, y)`.
fn stack(w: &[(Vec<u32>, Vec<u32>)]) -> (Tensor, Tensor) {
    let t = w[0].0.len();
    let x: Vec<u32> = w.iter().flat_map(|(x, _)| x.iter().copied()).collect();
    let y: Vec<u32> = w.iter().flat_map(|(_, y)| y.iter().copied()).collect();
    (Tensor::new(x, &[w.len(), t]), Tensor::new(y, &[w.len(), t]))
}

/// The student's mean cross-entropy over the held-out windows, without gradients.
fn student_eval(student: &Llama, w: &[(Vec<u32>, Vec<u32>)], batch: usize) -> f64 {
    let _g = yuanli_autograd::no_grad();
    let (mut sum, mut n) = (0.0, 0);
    for chunk in w.chunks(batch.max(1)) {
        let (x, y) = stack(chunk);
        sum += student.loss(&x, &y, crate::sft::IGNORE).value().item() * y.numel() as f64;
        n += y.numel();
    }
    sum / n.max(1) as f64
}

/// `−log softmax(row)[target]` summed over the rows of `logits (n, V)`, in f64.
fn nll_sum(logits: &Tensor, targets: &[u32]) -> f64 {
    let v = logits.dim(1);
    logits.with_slice(|l: &[f32]| {
        targets
            .iter()
            .enumerate()
            .map(|(i, &y)| {
                let row = &l[i * v..(i + 1) * v];
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let lse = m + row.iter().map(|&z| (z as f64 - m).exp()).sum::<f64>().ln();
                lse - row[y as usize] as f64
            })
            .sum()
    })
}

/// The teacher's mean cross-entropy over the same windows.
fn teacher_eval(teacher: &Llama, w: &[(Vec<u32>, Vec<u32>)], batch: usize) -> Result<f64, FinetuneError> {
    let (mut sum, mut n) = (0.0, 0);
    for chunk in w.chunks(batch.max(1)) {
        let (x, y) = stack(chunk);
        let ys = y.to_vec::<u32>();
        sum += nll_sum(&teacher_logits(teacher, &x)?, &ys);
        n += ys.len();
    }
    Ok(sum / n.max(1) as f64)
}

/// The options a checkpoint is only valid for.
fn fingerprint(o: &DistillOptions) -> String {
    format!(
        "teacher={} data={:?} eval_data={:?} student={:?} loss={:?} temperature={} ce_weight={} lr={} weight_decay={} steps={} batch_size={} context={} eval_tokens={} seed={}",
        o.teacher.display(),
        o.data,
        o.eval_data,
        o.student,
        o.loss,
        o.temperature,
        o.ce_weight,
        o.lr,
        o.weight_decay,
        o.steps,
        o.batch_size,
        o.context,
        o.eval_tokens,
        o.seed
    )
}

fn check_options(o: &DistillOptions) -> Result<(), FinetuneError> {
    let bad = |m: &str| Err(FinetuneError::Options(m.into()));
    if o.steps == 0 || o.batch_size == 0 || o.context < 2 {
        return bad("steps, batch size and context (≥ 2) must be positive");
    }
    if !(o.temperature > 0.0 && o.temperature.is_finite()) {
        return bad("--temperature must be a positive number");
    }
    if !(o.ce_weight >= 0.0 && o.ce_weight.is_finite()) {
        return bad("--ce-weight must be zero or positive");
    }
    if !(o.lr > 0.0 && o.lr.is_finite()) {
        return bad("--lr must be a positive number");
    }
    if let DistillLoss::Jsd { beta } = o.loss {
        if !(0.0..=1.0).contains(&beta) {
            return bad("--beta must lie in [0, 1] (0: forward KL, 1: reverse KL)");
        }
    }
    Ok(())
}

/// One optimizer step: the student's logits on `x`, the loss against the teacher's
/// distributions (or the data alone), backward, clip at 1, AdamW. Returns `(loss, ce)`.
fn step_loss(
    o: &DistillOptions,
    teacher: &Llama,
    student: &Pretrained,
    x: &Tensor,
    y: &Tensor,
) -> Result<(yuanli_autograd::Var, f64), FinetuneError> {
    let (b, t, v) = (x.dim(0), x.dim(1), student.model.config.vocab_size);
    let ys = y.reshape(&[b * t]);
    Ok(match o.loss {
        DistillLoss::Ce => {
            let l = student.model.loss(x, y, crate::sft::IGNORE);
            let ce = l.value().item();
            (l, ce)
        }
        DistillLoss::Jsd { beta } => {
            let target = teacher_logits(teacher, x)?;
            let logits = student.model.forward(x).reshape(&[b * t, v]);
            let ce = logits.cross_entropy(&ys, None);
            let ce_value = ce.value().item();
            let mut l = generalized_jsd(&logits, &target, None, beta, o.temperature);
            if o.ce_weight > 0.0 {
                l = l.add(&ce.scale(o.ce_weight));
            }
            (l, ce_value)
        }
    })
}

/// Trains a random student on `o.data`, from the teacher's distributions or (with
/// [`DistillLoss::Ce`]) from the data alone, evaluating both on `o.eval_data`; writes
/// `metrics.jsonl`, checkpoints (every evaluation and on `stop`) and the student as a Hugging
/// Face directory `out_dir/model` (atomically). A non-finite loss is an error naming the step,
/// with the last checkpoint left on disk.
pub fn train_distill(
    o: &DistillOptions,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&DistillEvent),
) -> Result<DistillSummary, FinetuneError> {
    check_options(o)?;
    let teacher = load_pretrained_with(&o.teacher, LoadOptions::fast())?;
    if o.context > teacher.model.config.max_seq_len {
        return Err(FinetuneError::Options(format!(
            "--context {} exceeds the teacher's context ({} positions)",
            o.context, teacher.model.config.max_seq_len
        )));
    }
    // data: held-out files are never trained on
    let eval_files = text_files(&o.eval_data)?;
    let held: Vec<PathBuf> = eval_files.iter().filter_map(|f| f.canonicalize().ok()).collect();
    let train_files: Vec<PathBuf> =
        text_files(&o.data)?.into_iter().filter(|f| f.canonicalize().map_or(true, |c| !held.contains(&c))).collect();
    if train_files.is_empty() {
        return Err(FinetuneError::Options("every training file is also held out".into()));
    }
    let train_ids = tokens_of(&train_files, &teacher)?;
    let mut eval_ids = tokens_of(&eval_files, &teacher)?;
    if o.eval_tokens > 0 {
        eval_ids.truncate(o.eval_tokens + 1);
    }
    if train_ids.len() <= o.context {
        return Err(FinetuneError::Options(format!(
            "the training text is {} tokens, not more than one window of {}",
            train_ids.len(),
            o.context
        )));
    }
    let held_out = eval_windows(&eval_ids, o.context);
    if held_out.is_empty() {
        return Err(FinetuneError::Options(format!(
            "the held-out text is {} tokens, less than one window of {} + 1",
            eval_ids.len(),
            o.context
        )));
    }
    let cfg = student_config(&o.student, teacher.model.config.vocab_size, o.context)?;
    let student = new_student(cfg, &teacher, o.seed)?;
    on_event(&DistillEvent::Data {
        train_tokens: train_ids.len(),
        eval_tokens: held_out.len() * o.context,
        student_params: student.store.num_trainable(),
        teacher: teacher.description.clone(),
    });
    let mut metrics = MetricsLog::open(&o.out_dir, o.resume)?;
    let mut opt = Adam::adamw(0.9, 0.95, 1e-8, o.weight_decay);
    let schedule =
        LrSchedule::WarmupCosine { max_lr: o.lr, min_lr: o.lr * 0.1, warmup: (o.steps / 10).max(1), total: o.steps };
    let checkpoint = o.out_dir.join("checkpoint");
    let teacher_ce = teacher_eval(&teacher.model, &held_out, o.batch_size)?;
    on_event(&DistillEvent::TeacherEval { loss: teacher_ce });
    let (first_eval, first_step) = if o.resume {
        let st = load_adapter_checkpoint(&checkpoint, &fingerprint(o), &student, &mut opt)?;
        if st.step >= o.steps {
            return Err(FinetuneError::Options(format!(
                "{}: the run already finished its {} steps; nothing to resume",
                checkpoint.display(),
                o.steps
            )));
        }
        on_event(&DistillEvent::Resumed { step: st.step });
        (st.first_eval, st.step + 1)
    } else {
        let first = student_eval(&student.model, &held_out, o.batch_size);
        on_event(&DistillEvent::Eval { step: 0, loss: first });
        metrics.log(&serde_json::json!({"step": 0, "eval_loss": first, "teacher_eval_loss": teacher_ce}))?;
        (first, 1)
    };
    let state = |step: usize, opt: &Adam| SftState {
        step,
        order: Vec::new(),
        at: 0,
        adam_t: opt.t,
        rng_state: [0; 4],
        first_eval,
        fingerprint: fingerprint(o),
        kl_coef: None,
    };
    let mut last = first_eval;
    for step in first_step..=o.steps {
        if stop.load(Ordering::Relaxed) {
            save_adapter_checkpoint(&checkpoint, &student, &opt, &state(step - 1, &opt))?;
            on_event(&DistillEvent::Checkpoint { dir: checkpoint.clone(), step: step - 1 });
            break;
        }
        let started = std::time::Instant::now();
        let (x, y) = windows(&train_ids, o.batch_size, o.context, o.seed, step);
        let lr = schedule.lr(step - 1);
        student.store.zero_grad();
        let (loss, ce) = step_loss(o, &teacher.model, &student, &x, &y)?;
        let value = loss.value().item();
        if !value.is_finite() {
            return Err(FinetuneError::NonFinite { step, value });
        }
        loss.backward();
        student.store.clip_grad_norm(1.0);
        opt.step(&student.store, lr);
        let tokens_per_sec = x.numel() as f64 / started.elapsed().as_secs_f64();
        on_event(&DistillEvent::Step { step, loss: value, ce, lr, tokens_per_sec });
        metrics.log(
            &serde_json::json!({"step": step, "loss": value, "ce": ce, "lr": lr, "tokens_per_sec": tokens_per_sec}),
        )?;
        if step % o.eval_interval.max(1) == 0 || step == o.steps {
            last = student_eval(&student.model, &held_out, o.batch_size);
            on_event(&DistillEvent::Eval { step, loss: last });
            metrics.log(&serde_json::json!({"step": step, "eval_loss": last}))?;
            save_adapter_checkpoint(&checkpoint, &student, &opt, &state(step, &opt))?;
            on_event(&DistillEvent::Checkpoint { dir: checkpoint.clone(), step });
        }
    }
    let dir = o.out_dir.join("model");
    replace_dir(&dir, |tmp| {
        yuanli_models::hf::export_llama(&student, &[], tmp)?;
        Ok(())
    })?;
    on_event(&DistillEvent::Saved { dir });
    Ok(DistillSummary { first: first_eval, last, teacher: teacher_ce })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A run on the tiny random teacher (vocabulary 300, context 64) with two text files, one
    /// of them held out.
    fn tiny_run(root: &Path, loss: DistillLoss) -> DistillOptions {
        let data = root.join("text");
        std::fs::create_dir_all(&data).unwrap();
        let line = |i: usize| format!("the {} cat sat on mat {} and ran; ", ["red", "old", "big"][i % 3], i % 7);
        std::fs::write(data.join("a.txt"), (0..120).map(line).collect::<String>()).unwrap();
        std::fs::write(data.join("b.txt"), (0..40).map(|i| line(i + 1)).collect::<String>()).unwrap();
        DistillOptions {
            teacher: Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/testdata/tiny_hf/llama"),
            data: vec![data.clone()],
            eval_data: vec![data.join("b.txt")],
            out_dir: root.join("out"),
            student: StudentShape { layers: 1, hidden: 16, heads: 2, kv_heads: 1, intermediate: 32 },
            loss,
            temperature: 1.0,
            ce_weight: 0.0,
            lr: 1e-2,
            weight_decay: 0.0,
            steps: 8,
            batch_size: 3,
            context: 16,
            eval_interval: 2,
            eval_tokens: 0,
            seed: 3,
            resume: false,
        }
    }

    fn losses(events: &[DistillEvent]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| if let DistillEvent::Step { loss, .. } = e { Some(loss.to_bits()) } else { None })
            .collect()
    }

    /// Forward KL to the teacher falls as the student learns; the held-out file is not
    /// trained on; the saved student loads and gives the logits it was trained to give;
    /// stopped after step 3 and resumed, the run repeats the uninterrupted losses bit for
    /// bit, and other options are refused.
    #[test]
    fn a_student_learns_the_teachers_distributions_and_resumes_exactly() {
        let root = std::env::temp_dir().join(format!("yuanli-distill-{}", std::process::id()));
        let whole = tiny_run(&root.join("whole"), DistillLoss::Jsd { beta: 0.0 });
        let mut ev = Vec::new();
        let s = train_distill(&whole, &AtomicBool::new(false), &mut |e| ev.push(e.clone())).unwrap();
        let want = losses(&ev);
        assert_eq!(want.len(), 8);
        let kl = |i: usize| f64::from_bits(want[i]);
        assert!(kl(7) < 0.8 * kl(0), "the KL to the teacher falls: {} → {}", kl(0), kl(7));
        // the tiny teacher is nearly uniform: the student's held-out loss moves toward its
        assert!((s.last - s.teacher).abs() < (s.first - s.teacher).abs(), "{s:?}");
        // b.txt is held out: only a.txt's tokens are trained on
        let teacher = load_pretrained_with(&whole.teacher, LoadOptions::fast()).unwrap();
        let a = tokens_of(&[root.join("whole/text/a.txt")], &teacher).unwrap().len();
        assert!(ev.iter().any(|e| matches!(e, DistillEvent::Data { train_tokens, .. } if *train_tokens == a)));
        // the written student is a model that loads, with the held-out loss it was measured at
        let saved = yuanli_models::load::load_pretrained(&whole.out_dir.join("model")).unwrap();
        let b = tokens_of(&whole.eval_data, &teacher).unwrap();
        assert!((student_eval(&saved.model, &eval_windows(&b, 16), 3) - s.last).abs() < 1e-5);

        let part = tiny_run(&root.join("part"), DistillLoss::Jsd { beta: 0.0 });
        let stop = AtomicBool::new(false);
        let mut first_half = Vec::new();
        train_distill(&part, &stop, &mut |e| {
            if matches!(e, DistillEvent::Step { step: 3, .. }) {
                stop.store(true, Ordering::Relaxed);
            }
            first_half.push(e.clone())
        })
        .unwrap();
        assert!(first_half.iter().any(|e| matches!(e, DistillEvent::Checkpoint { step: 3, .. })));
        let mut second = Vec::new();
        let s2 = train_distill(&DistillOptions { resume: true, ..part.clone() }, &AtomicBool::new(false), &mut |e| {
            second.push(e.clone())
        })
        .unwrap();
        let mut got = losses(&first_half);
        got.extend(losses(&second));
        assert_eq!(got, want, "resumed vs uninterrupted losses");
        assert_eq!((s2.first, s2.last), (s.first, s.last));
        // (the teacher's loss is re-measured by the engine, whose threads may split a sum
        // differently from one run to the next: equal to the last few bits)
        assert!((s2.teacher - s.teacher).abs() < 1e-9);
        let other = DistillOptions { temperature: 2.0, resume: true, ..part };
        let err = train_distill(&other, &AtomicBool::new(false), &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("other options") && err.contains("temperature=2"), "{err}");
        std::fs::remove_dir_all(&root).ok();
    }

    /// The data-alone baseline lowers the held-out loss; GKD's JSD falls as the student
    /// learns.
    #[test]
    fn the_baseline_and_the_jsd_train_too() {
        let root = std::env::temp_dir().join(format!("yuanli-distill-kinds-{}", std::process::id()));
        let o = tiny_run(&root.join("ce"), DistillLoss::Ce);
        let s = train_distill(&o, &AtomicBool::new(false), &mut |_| {}).unwrap();
        assert!(s.last < s.first - 0.1, "{s:?}");
        let o = tiny_run(&root.join("jsd"), DistillLoss::Jsd { beta: 0.5 });
        let mut ev = Vec::new();
        train_distill(&o, &AtomicBool::new(false), &mut |e| ev.push(e.clone())).unwrap();
        let jsd: Vec<f64> = losses(&ev).into_iter().map(f64::from_bits).collect();
        assert!(jsd[7] < 0.8 * jsd[0], "{jsd:?}");
        std::fs::remove_dir_all(&root).ok();
    }

    /// A loss that stops being finite ends the run with an error naming the step, and the
    /// checkpoint of the step before it is on disk.
    #[test]
    fn a_non_finite_loss_names_the_step_and_keeps_the_checkpoint() {
        let root = std::env::temp_dir().join(format!("yuanli-distill-nan-{}", std::process::id()));
        let o = DistillOptions { lr: 1e30, eval_interval: 1, ..tiny_run(&root, DistillLoss::Jsd { beta: 0.0 }) };
        let err = train_distill(&o, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
        let FinetuneError::NonFinite { step, .. } = err else { panic!("{err}") };
        assert!(step >= 2, "step {step}");
        assert!(o.out_dir.join("checkpoint/state.json").exists());
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn bad_options_and_files_are_refused_by_name() {
        let root = std::env::temp_dir().join(format!("yuanli-distill-bad-{}", std::process::id()));
        let o = tiny_run(&root, DistillLoss::Ce);
        let no = AtomicBool::new(false);
        let run = |o: DistillOptions| train_distill(&o, &no, &mut |_| {}).unwrap_err().to_string();
        assert!(run(DistillOptions { loss: DistillLoss::Jsd { beta: 1.5 }, ..o.clone() }).contains("--beta"));
        assert!(run(DistillOptions { context: 65, ..o.clone() }).contains("exceeds the teacher's context"));
        let e = run(DistillOptions { student: StudentShape { hidden: 15, ..o.student }, ..o.clone() });
        assert!(e.contains("multiple of its 2 heads"), "{e}");
        let e = run(DistillOptions { data: vec![root.join("missing.txt")], ..o.clone() });
        assert!(e.contains("missing.txt") && e.contains("no such file"), "{e}");
        let e = run(DistillOptions { data: o.eval_data.clone(), ..o.clone() });
        assert!(e.contains("also held out"), "{e}");
        std::fs::remove_dir_all(&root).ok();
    }
}
