//! Supervised fine-tuning data: conversations in, token ids and a loss mask out.
//!
//! A data file is JSONL, one example per line, in either of the two forms Hugging Face TRL
//! reads:
//!
//! ```text
//! {"messages": [{"role": "system", "content": "…"}, {"role": "user", "content": "…"},
//!               {"role": "assistant", "content": "…"}, …]}
//! {"prompt": "…", "completion": "…"}          (a user turn and the assistant's answer)
//! ```
//!
//! Each conversation is rendered with the model's own chat template, and the loss counts only
//! what the assistant says: the tokens of each assistant turn, its end-of-turn marker
//! included (`<|im_end|>`, `<end_of_turn>`), and nothing of the system prompt, the user's
//! turns or the template's scaffolding. The model still *reads* all of it; it is only not
//! asked to *predict* it.
//!
//! **Finding the assistant's tokens.** The template is a program, so instead of guessing its
//! format we ask it: for assistant turn `k`, `render(messages[..k], generation prompt)` is the
//! text before the reply and `render(messages[..=k])` the text through it. Their difference is
//! the reply, as characters; the token ids of the whole rendered text, laid end to end, tell
//! which tokens fall inside it. A template that does not render conversations prefix by prefix
//! is an error, not a silent guess.

use crate::optim::Adam;
use crate::schedule::LrSchedule;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use yuanli_models::llama::Llama;
use yuanli_models::load::{load_pretrained_with, LoadOptions, Pretrained};
use yuanli_models::peft::{save_adapter, Adapter};
use yuanli_models::{ChatTemplate, Message};
use yuanli_nn::LoraConfig;
use yuanli_tensor::{Rng, Tensor};
use yuanli_tokenizer::{SpecialMode, Tokenizer};

/// What can be wrong with fine-tuning data; every variant names the file and line.
#[derive(Debug, thiserror::Error)]
pub enum SftError {
    /// The file cannot be read.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What happened.
        message: String,
    },
    /// A line is not a valid example.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The chat template cannot be used to find the assistant's tokens.
    #[error("{0}")]
    Template(String),
}

/// The roles a message may have.
pub const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// Reads a JSONL file of conversations (`messages`, or `prompt` + `completion`). Blank lines
/// are skipped; every conversation needs at least one assistant turn.
pub fn read_conversations(path: &Path) -> Result<Vec<Vec<Message>>, SftError> {
    read_jsonl(path, "examples", conversation)
}

/// Reads a JSONL file, one record per non-blank line, each turned into a `T` by `parse`;
/// every error names the file and line. `what` names the records for an empty file.
pub(crate) fn read_jsonl<T>(
    path: &Path,
    what: &str,
    parse: impl Fn(&serde_json::Value) -> Result<T, String>,
) -> Result<Vec<T>, SftError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SftError::Io { path: p.clone(), message: e.to_string() })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| SftError::Line { path: p.clone(), line: i + 1, message };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| err(format!("not JSON: {e}")))?;
        out.push(parse(&v).map_err(err)?);
    }
    if out.is_empty() {
        return Err(SftError::Io { path: p, message: format!("no {what} in the file") });
    }
    Ok(out)
}

/// Writes a result directory atomically: `write` fills `dir.tmp`, which then replaces `dir`
/// (a crash leaves the old one or the new one, never half of either).
pub(crate) fn replace_dir(
    dir: &Path,
    write: impl FnOnce(&Path) -> Result<(), FinetuneError>,
) -> Result<(), FinetuneError> {
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    write(&tmp)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| FinetuneError::File { path: dir.to_path_buf(), message: e.to_string() })
}

/// One example's conversation.
fn conversation(v: &serde_json::Value) -> Result<Vec<Message>, String> {
    let str_field = |o: &serde_json::Value, k: &str| -> Result<String, String> {
        o.get(k)
            .and_then(|x| x.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("\"{k}\" is missing or not a string"))
    };
    let msgs = if let Some(m) = v.get("messages") {
        let arr = m.as_array().ok_or("\"messages\" is not an array")?;
        let mut msgs = Vec::with_capacity(arr.len());
        for (j, m) in arr.iter().enumerate() {
            let role = str_field(m, "role").map_err(|e| format!("message {j}: {e}"))?;
            if !ROLES.contains(&role.as_str()) {
                return Err(format!("message {j}: unknown role {role:?} (roles are {})", ROLES.join(", ")));
            }
            msgs.push(Message::new(&role, &str_field(m, "content").map_err(|e| format!("message {j}: {e}"))?));
        }
        msgs
    } else if v.get("prompt").is_some() || v.get("completion").is_some() {
        vec![Message::new("user", &str_field(v, "prompt")?), Message::new("assistant", &str_field(v, "completion")?)]
    } else {
        return Err("an example needs \"messages\", or \"prompt\" and \"completion\"".into());
    };
    if !msgs.iter().any(|m| m.role == "assistant") {
        return Err("the conversation has no assistant turn (nothing to learn from)".into());
    }
    Ok(msgs)
}

/// A tokenized example: `ids`, and for each position whether the loss counts the prediction
/// *of* that token (from the tokens before it).
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// Token ids of the rendered conversation (BOS first when the model takes one).
    pub ids: Vec<u32>,
    /// `target[i]`: `ids[i]` is part of an assistant turn.
    pub target: Vec<bool>,
}

impl Example {
    /// How many tokens the loss counts.
    pub fn n_targets(&self) -> usize {
        self.target.iter().filter(|&&t| t).count()
    }
}

/// How to turn conversations into examples for one model.
pub struct Formatter<'a> {
    /// The model's chat template.
    pub template: &'a ChatTemplate,
    /// Its tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// The BOS token to put first, unless the template writes it itself.
    pub bos: Option<u32>,
    /// The text that ends a turn (`<|im_end|>`): the reply's span ends after it.
    pub end_of_turn: Option<String>,
}

impl Formatter<'_> {
    /// Renders and tokenizes one conversation, marking the assistant's tokens.
    pub fn example(&self, msgs: &[Message]) -> Result<Example, SftError> {
        let t = SftError::Template;
        let full = self.template.render(msgs, false).map_err(t)?;
        // Byte spans of the assistant's replies in `full`.
        let mut spans = Vec::new();
        for (k, _) in msgs.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
            let before = self.template.render(&msgs[..k], true).map_err(t)?;
            let through = self.template.render(&msgs[..=k], false).map_err(t)?;
            if !through.starts_with(&before) || !full.starts_with(&through) {
                return Err(SftError::Template(
                    "the chat template does not render a conversation prefix by prefix, so the \
                     assistant's tokens cannot be found"
                        .into(),
                ));
            }
            let mut end = through.len();
            if let Some(eot) = &self.end_of_turn {
                if let Some(at) = through[before.len()..].find(eot.as_str()) {
                    end = before.len() + at + eot.len();
                }
            }
            spans.push((before.len(), end));
        }
        let ids = self.tokenizer.encode(&full, SpecialMode::Allow).map_err(|e| SftError::Template(e.to_string()))?;
        // Token i covers bytes [start, start + len) of `full`: its bytes laid end to end must
        // give the text back, or the spans would not line up.
        let mut target = Vec::with_capacity(ids.len() + 1);
        let mut at = 0;
        for &id in &ids {
            let len = self.tokenizer.token_bytes(id).map_or(0, <[u8]>::len);
            target.push(spans.iter().any(|&(s, e)| at >= s && at < e));
            at += len;
        }
        if at != full.len() {
            return Err(SftError::Template(format!(
                "the tokens of a rendered conversation give {at} bytes back for its {}: cannot align the loss mask",
                full.len()
            )));
        }
        let bos_in_text = self.bos.is_some_and(|b| ids.first() == Some(&b));
        let (ids, target) = match self.bos {
            Some(b) if !bos_in_text => ([vec![b], ids].concat(), [vec![false], target].concat()),
            _ => (ids, target),
        };
        Ok(Example { ids, target })
    }
}

// ---------------------------------------------------------------------------------------------
// The fine-tuning loop
// ---------------------------------------------------------------------------------------------

/// A LoRA fine-tuning run.
#[derive(Clone, Debug)]
pub struct SftOptions {
    /// The base model: a `.gguf` file or a Hugging Face directory.
    pub model: PathBuf,
    /// Training conversations (JSONL).
    pub data: PathBuf,
    /// Held-out conversations; without them, `eval_fraction` of `data` is held out.
    pub eval_data: Option<PathBuf>,
    /// Share of `data` held out when there is no `eval_data`.
    pub eval_fraction: f64,
    /// Where `metrics.jsonl` and the adapter (`adapter/`, PEFT's format) go.
    pub out_dir: PathBuf,
    /// The adapter.
    pub lora: LoraConfig,
    /// Target modules (`q_proj`, …, or `all-linear`).
    pub targets: Vec<String>,
    /// QLoRA: keep a GGUF base in its stored (block-quantized) form instead of f32.
    pub quantized_base: bool,
    /// Peak learning rate (AdamW, warm-up then cosine).
    pub lr: f64,
    /// Optimizer steps.
    pub steps: usize,
    /// Conversations per step.
    pub batch_size: usize,
    /// Longest example in tokens; longer ones are cut (and counted).
    pub max_len: usize,
    /// Evaluate (held-out loss) every this many steps, and at the end.
    pub eval_interval: usize,
    /// Held-out conversations used for the loss (the first ones; 0 = all).
    pub eval_examples: usize,
    /// Seed of the split, the order and the adapter's initialisation.
    pub seed: u64,
    /// Continue from `out_dir/checkpoint` (written every `eval_interval` steps and when the
    /// run is stopped) instead of starting over: the same losses as an uninterrupted run.
    pub resume: bool,
    /// Full fine-tuning: every weight trainable in f32, no adapter; the result is a Hugging
    /// Face model directory, `out_dir/model`.
    pub full: bool,
}

/// Where a fine-tuning run stands, in `out_dir/checkpoint/state.json` beside the adapters'
/// values (`adapters.bin`) and AdamW's moments (`optimizer.bin`), all raw little-endian f32 in
/// the trainable arena's order.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SftState {
    /// Optimizer steps completed.
    pub step: usize,
    /// The shuffled order of the training examples and the position in it.
    pub order: Vec<usize>,
    /// Next position in `order`.
    pub at: usize,
    /// AdamW's step counter.
    pub adam_t: u64,
    /// The generator of the order and the dropout masks.
    pub rng_state: [u64; 4],
    /// Held-out loss at step 0 (reported again at the end).
    pub first_eval: f64,
    /// The options that shape the run (model, data, adapter, schedule); a resumed run must
    /// match them.
    pub fingerprint: String,
    /// PPO's KL coefficient, which its adaptive controller changes as the run goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl_coef: Option<f64>,
}

/// The options a checkpoint is only valid for (everything but the output and `resume`).
fn fingerprint(o: &SftOptions) -> String {
    format!(
        "model={} data={} eval_data={:?} eval_fraction={} full={} lora={:?} targets={:?} quantized_base={} lr={} steps={} batch_size={} max_len={} eval_examples={} seed={}",
        o.model.display(),
        o.data.display(),
        o.eval_data,
        o.eval_fraction,
        o.full,
        o.lora,
        o.targets,
        o.quantized_base,
        o.lr,
        o.steps,
        o.batch_size,
        o.max_len,
        o.eval_examples,
        o.seed
    )
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn read_f32s(path: &Path, n: usize) -> Result<Vec<f32>, FinetuneError> {
    let bytes = std::fs::read(path).map_err(|e| FinetuneError::File { path: path.into(), message: e.to_string() })?;
    if bytes.len() != 4 * n {
        return Err(FinetuneError::File {
            path: path.into(),
            message: format!("holds {} bytes, this run's adapters need {} ({n} values)", bytes.len(), 4 * n),
        });
    }
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Writes `dir` atomically (`dir.tmp`, then renamed over the old one): a crash mid-write
/// leaves the previous checkpoint whole. The trainable arena (adapters, and a reward model's
/// head), AdamW's moments and `state` — for `yuanli sft`, `rm` and `dpo` alike.
pub(crate) fn save_adapter_checkpoint(
    dir: &Path,
    p: &Pretrained,
    opt: &Adam,
    state: &SftState,
) -> Result<(), FinetuneError> {
    let err =
        |path: &Path, e: &dyn std::fmt::Display| FinetuneError::File { path: path.into(), message: e.to_string() };
    let tmp = dir.with_extension("tmp");
    let old = dir.with_extension("old");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| err(&tmp, &e))?;
    let values = p.store.value_arena().to_vec::<f32>();
    let n = p.store.num_trainable();
    let write = |name: &str, bytes: &[u8]| {
        let path = tmp.join(name);
        std::fs::write(&path, bytes).map_err(|e| err(&path, &e))
    };
    write("adapters.bin", &f32_bytes(&values[..n]))?;
    let mut moments = opt.m.clone();
    moments.extend_from_slice(&opt.v);
    moments.resize(2 * n, 0.0); // before the first step the moments are empty
    write("optimizer.bin", &f32_bytes(&moments))?;
    write("state.json", serde_json::to_string_pretty(state).map_err(|e| err(&tmp, &e))?.as_bytes())?;
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(dir, &old).map_err(|e| err(dir, &e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| err(&tmp, &e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// `out_dir/metrics.jsonl`, one JSON object per line: created afresh, or — resuming — cut back
/// to the checkpoint's step and appended to.
pub(crate) struct MetricsLog {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsLog {
    /// Creates `out_dir` if needed and opens its `metrics.jsonl`.
    pub(crate) fn open(out_dir: &Path, resume: bool) -> Result<MetricsLog, FinetuneError> {
        std::fs::create_dir_all(out_dir)
            .map_err(|e| FinetuneError::File { path: out_dir.to_path_buf(), message: e.to_string() })?;
        let path = out_dir.join("metrics.jsonl");
        if resume {
            trim_metrics(&path, &out_dir.join("checkpoint").join("state.json"));
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resume)
            .truncate(!resume)
            .open(&path)
            .map_err(|e| FinetuneError::File { path: path.clone(), message: e.to_string() })?;
        Ok(MetricsLog { file, path })
    }

    /// Appends one line.
    pub(crate) fn log(&mut self, v: &serde_json::Value) -> Result<(), FinetuneError> {
        use std::io::Write;
        writeln!(self.file, "{v}").map_err(|e| FinetuneError::File { path: self.path.clone(), message: e.to_string() })
    }
}

/// The next `n` example indices from a shuffled `order` at position `at`, reshuffled (from
/// `rng`) each time it is used up: epochs in a fresh random order, the state a checkpoint keeps.
pub(crate) fn next_batch(order: &mut [usize], at: &mut usize, n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut picked = Vec::with_capacity(n);
    while picked.len() < n && !order.is_empty() {
        if *at == order.len() {
            rng.shuffle(order);
            *at = 0;
        }
        picked.push(order[*at]);
        *at += 1;
    }
    picked
}

/// Drops the lines of `metrics.jsonl` past the checkpoint's step (a run that died after its
/// last checkpoint logged steps the resumed run will log again). Best effort: a missing state
/// is reported by the resume itself.
fn trim_metrics(metrics: &Path, state: &Path) {
    let Some(step) = std::fs::read_to_string(state)
        .ok()
        .and_then(|t| serde_json::from_str::<SftState>(&t).ok())
        .map(|s| s.step as u64)
    else {
        return;
    };
    let Ok(text) = std::fs::read_to_string(metrics) else { return };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["step"].as_u64().is_some_and(|s| s <= step))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let _ = std::fs::write(metrics, kept);
}

/// Reads a checkpoint into the trainable parameters and the optimizer after checking it was
/// made with the options of `fingerprint`; returns its state.
pub(crate) fn load_adapter_checkpoint(
    dir: &Path,
    now: &str,
    p: &Pretrained,
    opt: &mut Adam,
) -> Result<SftState, FinetuneError> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| FinetuneError::File {
        path: path.clone(),
        message: format!("{e} (nothing to resume: run without --resume first)"),
    })?;
    let state: SftState = serde_json::from_str(&text)
        .map_err(|e| FinetuneError::File { path: path.clone(), message: format!("not a checkpoint state: {e}") })?;
    if state.fingerprint != now {
        return Err(FinetuneError::Options(format!(
            "{}: the checkpoint was made with other options:\n  checkpoint: {}\n  now:        {now}",
            path.display(),
            state.fingerprint
        )));
    }
    let n = p.store.num_trainable();
    let values = read_f32s(&dir.join("adapters.bin"), n)?;
    p.store.value_arena().narrow(0, 0, n).copy_from_(&Tensor::new(values, &[n]));
    let moments = read_f32s(&dir.join("optimizer.bin"), 2 * n)?;
    opt.m = moments[..n].to_vec();
    opt.v = moments[n..].to_vec();
    opt.t = state.adam_t;
    Ok(state)
}

/// What the loop reports.
#[derive(Clone, Debug, PartialEq)]
pub enum SftEvent {
    /// The data is ready.
    Data {
        /// Training examples.
        train: usize,
        /// Held-out examples.
        eval: usize,
        /// Examples cut to `max_len`.
        truncated: usize,
        /// Trainable parameters (the adapters).
        trainable: usize,
    },
    /// One optimizer step.
    Step {
        /// 1-based.
        step: usize,
        /// Mean loss over the step's assistant tokens.
        loss: f64,
        /// Learning rate.
        lr: f64,
        /// Tokens (all, not only assistant ones) per second.
        tokens_per_sec: f64,
    },
    /// Held-out loss.
    Eval {
        /// Step.
        step: usize,
        /// Mean loss over the held-out assistant tokens.
        loss: f64,
    },
    /// A checkpoint (adapters, optimizer, data position) was written; `--resume` continues
    /// from it.
    Checkpoint {
        /// The directory.
        dir: PathBuf,
        /// Steps done.
        step: usize,
    },
    /// A run continued from its checkpoint after this many steps.
    Resumed {
        /// Steps already done.
        step: usize,
    },
    /// The adapter was written.
    Saved {
        /// Its directory.
        dir: PathBuf,
    },
}

/// A fine-tuning error: data, model or file.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// Bad data.
    #[error(transparent)]
    Data(#[from] SftError),
    /// The model or adapter cannot be loaded or saved.
    #[error(transparent)]
    Model(#[from] yuanli_models::LoadError),
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// The loss stopped being finite.
    #[error("step {step}: the loss is {value}")]
    NonFinite {
        /// The step.
        step: usize,
        /// The value.
        value: f64,
    },
    /// A file could not be written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What happened.
        message: String,
    },
}

/// The id that marks a position the loss ignores.
pub const IGNORE: u32 = u32::MAX;

/// `(ids (B, T), targets (B, T))` of a batch: examples right-padded (causal attention never
/// looks right, so padding changes nothing before it); the target of position `i` is the next
/// token where that token is the assistant's, else [`IGNORE`].
pub(crate) fn batch(examples: &[&Example]) -> (Tensor, Tensor, usize) {
    let t = examples.iter().map(|e| e.ids.len()).max().unwrap_or(1).max(2) - 1;
    let mut ids = Vec::with_capacity(examples.len() * t);
    let mut targets = Vec::with_capacity(examples.len() * t);
    for e in examples {
        for i in 0..t {
            ids.push(e.ids.get(i).copied().unwrap_or(0));
            let next = i + 1;
            targets.push(if next < e.ids.len() && e.target[next] { e.ids[next] } else { IGNORE });
        }
    }
    let b = examples.len();
    (Tensor::new(ids, &[b, t]), Tensor::new(targets, &[b, t]), b * t)
}

/// Mean loss over the assistant tokens of `examples`, without gradients.
fn eval_loss(model: &Llama, examples: &[Example], batch_size: usize) -> f64 {
    let _g = yuanli_autograd::no_grad();
    let (mut sum, mut n) = (0.0, 0);
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (x, y, _) = batch(&refs);
        let count = y.to_vec::<u32>().iter().filter(|&&t| t != IGNORE).count();
        if count == 0 {
            continue;
        }
        let loss = model.loss(&x, &y, IGNORE).value().item();
        sum += loss * count as f64;
        n += count;
    }
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// The base model loaded frozen (f32, or block-quantized with `quantized_base`), with LoRA
/// adapters attached to `targets` and only they trainable; its chat template checked.
pub fn load_for_lora(
    model: &Path,
    quantized_base: bool,
    lora: &LoraConfig,
    targets: &[String],
    max_len: usize,
    rng: &mut Rng,
) -> Result<Pretrained, FinetuneError> {
    let load = if quantized_base { LoadOptions::fast() } else { LoadOptions::exact() };
    let mut p = load_pretrained_with(model, load)?;
    fits_sft(&p, model, max_len)?;
    p.store.set_trainable(|name, _| name.contains(".lora_"));
    p.model.attach_lora(&mut p.store, lora, targets, rng)?;
    Ok(p)
}

/// Whether a loaded model can be fine-tuned on examples of `max_len` tokens: its context is
/// long enough and it has a chat template to render conversations with.
fn fits_sft(p: &Pretrained, model: &Path, max_len: usize) -> Result<(), FinetuneError> {
    if max_len > p.model.config.max_seq_len {
        return Err(FinetuneError::Options(format!(
            "--max-len {max_len} exceeds the context of {} ({} positions)",
            model.display(),
            p.model.config.max_seq_len
        )));
    }
    if p.chat_template.is_none() {
        return Err(FinetuneError::Options(format!(
            "{} has no chat template to render conversations with",
            model.display()
        )));
    }
    Ok(())
}

/// Loads a model for full fine-tuning: every weight an f32 parameter, all of them trainable
/// (the same checks as [`load_for_lora`]).
pub fn load_for_full(model: &Path, max_len: usize) -> Result<Pretrained, FinetuneError> {
    let p = load_pretrained_with(model, LoadOptions { weights: yuanli_models::load::Weights::F32, trainable: true })?;
    fits_sft(&p, model, max_len)?;
    Ok(p)
}

/// The [`Formatter`] of a loaded model (its chat template, BOS and end-of-turn text).
pub fn formatter(p: &Pretrained) -> Result<Formatter<'_>, FinetuneError> {
    let template =
        p.chat_template.as_ref().ok_or_else(|| FinetuneError::Options("the model has no chat template".into()))?;
    let eot = p.eos.first().and_then(|&e| p.tokenizer.token_bytes(e)).map(|b| String::from_utf8_lossy(b).into_owned());
    Ok(Formatter { template, tokenizer: &p.tokenizer, bos: p.bos.filter(|_| p.add_bos), end_of_turn: eot })
}

/// One optimizer step on the batch `(x, y)` (targets [`IGNORE`]d where the loss does not
/// count): zero the gradients, forward (with LoRA dropout drawn from `rng`), masked
/// cross-entropy, backward, clip the global gradient norm at 1, AdamW at `lr`. Returns the
/// loss (the mean over counted tokens).
pub fn train_step(p: &Pretrained, opt: &mut Adam, x: &Tensor, y: &Tensor, lr: f64, rng: &mut Rng) -> f64 {
    p.store.zero_grad();
    let loss = p.model.loss_train(x, y, IGNORE, rng);
    let value = loss.value().item();
    if value.is_finite() {
        loss.backward();
        p.store.clip_grad_norm(1.0);
        opt.step(&p.store, lr);
    }
    value
}

/// `rows` sequences of `t` tokens cut from `examples` laid end to end (each row starts at a
/// conversation's beginning and is filled with the ones after it, the last one cut): the
/// fixed-shape batch of the speed benchmark, as `(x, y)`.
pub fn packed_batch(examples: &[Example], rows: usize, t: usize) -> (Tensor, Tensor) {
    let (mut ids, mut targets) = (Vec::with_capacity(rows * t), Vec::with_capacity(rows * t));
    let mut next = 0;
    for _ in 0..rows {
        let (mut row, mut tgt) = (Vec::with_capacity(t + 1), Vec::with_capacity(t + 1));
        while row.len() < t + 1 && !examples.is_empty() {
            let e = &examples[next % examples.len()];
            next += 1;
            row.extend_from_slice(&e.ids);
            tgt.extend_from_slice(&e.target);
        }
        row.resize(t + 1, 0);
        tgt.resize(t + 1, false);
        ids.extend_from_slice(&row[..t]);
        targets.extend((1..=t).map(|i| if tgt[i] { row[i] } else { IGNORE }));
    }
    (Tensor::new(ids, &[rows, t]), Tensor::new(targets, &[rows, t]))
}

/// LoRA fine-tuning: load the base (frozen; block-quantized with `quantized_base`), attach the
/// adapters, train them with AdamW on the assistant tokens, evaluate on held-out
/// conversations, and write the adapter in PEFT's format to `out_dir/adapter` (atomically:
/// a `.tmp` directory swapped in). `stop` ends the run early (Ctrl-C) with the adapter saved.
pub fn finetune(
    o: &SftOptions,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&SftEvent),
) -> Result<(f64, f64), FinetuneError> {
    if o.steps == 0 || o.batch_size == 0 || o.max_len < 2 {
        return Err(FinetuneError::Options("steps, batch size and max length (≥ 2) must be positive".into()));
    }
    let mut rng = Rng::new(o.seed);
    if o.full && o.quantized_base {
        return Err(FinetuneError::Options(
            "full fine-tuning trains every weight in f32; a quantized base is for LoRA (QLoRA)".into(),
        ));
    }
    let p = if o.full {
        load_for_full(&o.model, o.max_len)?
    } else {
        load_for_lora(&o.model, o.quantized_base, &o.lora, &o.targets, o.max_len, &mut rng)?
    };
    // data
    let mut train_convs = read_conversations(&o.data)?;
    let eval_convs = match &o.eval_data {
        Some(path) => read_conversations(path)?,
        None => {
            rng.shuffle(&mut train_convs);
            let n_eval = ((train_convs.len() as f64 * o.eval_fraction).round() as usize).min(train_convs.len() - 1);
            train_convs.split_off(train_convs.len() - n_eval)
        }
    };
    let f = formatter(&p)?;
    let mut truncated = 0;
    let mut prepare = |convs: &[Vec<Message>]| -> Result<Vec<Example>, SftError> {
        let mut out = Vec::with_capacity(convs.len());
        for c in convs {
            let mut e = f.example(c)?;
            if e.ids.len() > o.max_len {
                e.ids.truncate(o.max_len);
                e.target.truncate(o.max_len);
                truncated += 1;
            }
            if e.n_targets() > 0 {
                out.push(e);
            }
        }
        Ok(out)
    };
    let train_ex = prepare(&train_convs)?;
    let mut eval_ex = prepare(&eval_convs)?;
    if o.eval_examples > 0 {
        eval_ex.truncate(o.eval_examples);
    }
    if train_ex.is_empty() {
        return Err(FinetuneError::Options("no training example has an assistant token within max_len".into()));
    }
    on_event(&SftEvent::Data {
        train: train_ex.len(),
        eval: eval_ex.len(),
        truncated,
        trainable: p.store.num_trainable(),
    });
    let mut metrics = MetricsLog::open(&o.out_dir, o.resume)?;
    let mut log = |v: serde_json::Value| metrics.log(&v);
    let mut opt = Adam::adamw(0.9, 0.999, 1e-8, 0.0);
    let schedule =
        LrSchedule::WarmupCosine { max_lr: o.lr, min_lr: o.lr * 0.1, warmup: (o.steps / 10).max(1), total: o.steps };
    let checkpoint = o.out_dir.join("checkpoint");
    let (before, mut order, mut at, first) = if o.resume {
        let st = load_adapter_checkpoint(&checkpoint, &fingerprint(o), &p, &mut opt)?;
        if st.order.len() != train_ex.len() || st.at > st.order.len() {
            return Err(FinetuneError::Options(format!(
                "{}: the checkpoint's data order does not fit {} training examples",
                checkpoint.display(),
                train_ex.len()
            )));
        }
        if st.step >= o.steps {
            return Err(FinetuneError::Options(format!(
                "{}: the run already finished its {} steps; nothing to resume",
                checkpoint.display(),
                o.steps
            )));
        }
        rng = Rng::from_state(st.rng_state);
        on_event(&SftEvent::Resumed { step: st.step });
        (st.first_eval, st.order, st.at, st.step + 1)
    } else {
        let before = eval_loss(&p.model, &eval_ex, o.batch_size);
        on_event(&SftEvent::Eval { step: 0, loss: before });
        log(serde_json::json!({"step": 0, "eval_loss": before}))?;
        let order: Vec<usize> = (0..train_ex.len()).collect();
        let at = order.len();
        (before, order, at, 1)
    };
    let state = |step: usize, order: &[usize], at: usize, opt: &Adam, rng: &Rng| SftState {
        step,
        order: order.to_vec(),
        at,
        adam_t: opt.t,
        rng_state: rng.state(),
        first_eval: before,
        fingerprint: fingerprint(o),
        kl_coef: None,
    };
    let mut last = before;
    for step in first..=o.steps {
        if stop.load(Ordering::Relaxed) {
            // Stopped (Ctrl-C): a checkpoint of the steps done, so that --resume continues.
            save_adapter_checkpoint(&checkpoint, &p, &opt, &state(step - 1, &order, at, &opt, &rng))?;
            on_event(&SftEvent::Checkpoint { dir: checkpoint.clone(), step: step - 1 });
            break;
        }
        let started = std::time::Instant::now();
        let picked: Vec<&Example> =
            next_batch(&mut order, &mut at, o.batch_size, &mut rng).into_iter().map(|i| &train_ex[i]).collect();
        let (x, y, tokens) = batch(&picked);
        let lr = schedule.lr(step - 1);
        let value = train_step(&p, &mut opt, &x, &y, lr, &mut rng);
        if !value.is_finite() {
            return Err(FinetuneError::NonFinite { step, value });
        }
        let tokens_per_sec = tokens as f64 / started.elapsed().as_secs_f64();
        on_event(&SftEvent::Step { step, loss: value, lr, tokens_per_sec });
        log(serde_json::json!({"step": step, "loss": value, "lr": lr, "tokens_per_sec": tokens_per_sec}))?;
        if step % o.eval_interval.max(1) == 0 || step == o.steps {
            last = eval_loss(&p.model, &eval_ex, o.batch_size);
            on_event(&SftEvent::Eval { step, loss: last });
            log(serde_json::json!({"step": step, "eval_loss": last}))?;
            save_adapter_checkpoint(&checkpoint, &p, &opt, &state(step, &order, at, &opt, &rng))?;
            on_event(&SftEvent::Checkpoint { dir: checkpoint.clone(), step });
        }
    }
    // The result, written beside and swapped in: the adapter (PEFT's format), or the whole
    // model as a Hugging Face directory after full fine-tuning.
    let dir = o.out_dir.join(if o.full { "model" } else { "adapter" });
    replace_dir(&dir, |tmp| {
        if o.full {
            yuanli_models::hf::export_llama(&p, &[], tmp)?;
        } else {
            let adapter =
                Adapter { lora: o.lora.clone(), targets: o.targets.clone(), base: o.model.display().to_string() };
            save_adapter(tmp, &p.model, &adapter)?;
        }
        Ok(())
    })?;
    on_event(&SftEvent::Saved { dir });
    Ok((before, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/gpt2.tiktoken");
        let mut t = yuanli_tokenizer::formats::load(&path, None).unwrap();
        let n = t.vocab_size() as u32;
        let specials: Vec<(String, u32)> = ["<|im_start|>", "<|im_end|>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
            .iter()
            .enumerate()
            .map(|(i, s)| (s.to_string(), n + i as u32))
            .collect();
        t.add_specials(&specials).unwrap();
        t
    }

    /// The text of the tokens the mask counts.
    fn counted(tok: &Tokenizer, ex: &Example) -> String {
        let ids: Vec<u32> = ex.ids.iter().zip(&ex.target).filter(|(_, &t)| t).map(|(&i, _)| i).collect();
        tok.decode(&ids).unwrap()
    }

    fn conversation() -> Vec<Message> {
        vec![
            Message::new("system", "Be brief."),
            Message::new("user", "What is 2+2?"),
            Message::new("assistant", "4."),
            Message::new("user", "And 3+3?"),
            Message::new("assistant", "6, of course."),
        ]
    }

    #[test]
    fn the_mask_counts_only_the_assistants_turns_in_chatml() {
        let tok = tokenizer();
        let t = ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            "",
            "<|im_end|>",
        );
        let f = Formatter { template: &t, tokenizer: &tok, bos: None, end_of_turn: Some("<|im_end|>".into()) };
        let ex = f.example(&conversation()).unwrap();
        // the replies and their end-of-turn markers, nothing else
        assert_eq!(counted(&tok, &ex), "4.<|im_end|>6, of course.<|im_end|>");
        assert_eq!(ex.ids.len(), ex.target.len());
    }

    #[test]
    fn the_mask_counts_only_the_assistants_turns_in_a_gemma_template() {
        let tok = tokenizer();
        // Gemma's shape: BOS written by the template, the assistant called "model", the
        // system prompt folded into the first user turn
        let t = ChatTemplate::new(
            "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] + '\n\n' %}\
             {% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}\
             {% for m in msgs %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n\
             {{ sys if loop.first else '' }}{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}\
             {% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
            "<bos>",
            "<eos>",
        );
        let bos = tok.special_id("<bos>");
        let f = Formatter { template: &t, tokenizer: &tok, bos, end_of_turn: Some("<end_of_turn>".into()) };
        let ex = f.example(&conversation()).unwrap();
        assert_eq!(counted(&tok, &ex), "4.<end_of_turn>6, of course.<end_of_turn>");
        assert_eq!(ex.ids.iter().filter(|&&i| Some(i) == bos).count(), 1, "the template's BOS is not doubled");
        assert_eq!(ex.ids[0], bos.unwrap());
    }

    #[test]
    fn a_batch_predicts_the_next_token_where_it_is_the_assistants() {
        let a = Example { ids: vec![1, 2, 3, 4], target: vec![false, false, true, true] };
        let b = Example { ids: vec![5, 6], target: vec![false, true] };
        let (x, y, n) = batch(&[&a, &b]);
        assert_eq!((x.shape(), n), (&[2, 3][..], 6));
        assert_eq!(x.to_vec::<u32>(), vec![1, 2, 3, 5, 6, 0]); // right-padded
                                                               // position i is scored against ids[i + 1] when that token is the assistant's
        assert_eq!(y.to_vec::<u32>(), vec![IGNORE, 3, 4, 6, IGNORE, IGNORE]);
    }

    /// Options for a few steps on the tiny LLaMA of crates/models/testdata (it has a chat
    /// template) over eight short conversations.
    fn tiny_run(out: &Path, steps: usize) -> SftOptions {
        let data = out.with_extension("jsonl");
        let lines: Vec<String> = (0..8)
            .map(|i| serde_json::json!({"prompt": format!("What is {i} plus {i}?"), "completion": format!("{} #### {}", i + i, i + i)}).to_string())
            .collect();
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        std::fs::write(&data, lines.join("\n")).unwrap();
        SftOptions {
            model: Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/testdata/tiny_hf/llama"),
            data,
            eval_data: None,
            eval_fraction: 0.25,
            out_dir: out.to_path_buf(),
            lora: LoraConfig { r: 2, alpha: 4.0, dropout: 0.1, rslora: false },
            targets: vec!["all-linear".into()],
            quantized_base: false,
            lr: 1e-2,
            steps,
            batch_size: 2,
            max_len: 64,
            eval_interval: 2,
            eval_examples: 0,
            seed: 7,
            resume: false,
            full: false,
        }
    }

    #[test]
    fn full_fine_tuning_trains_every_weight_and_writes_a_model_that_loads() {
        let root = std::env::temp_dir().join(format!("yuanli-sft-full-{}", std::process::id()));
        let o = SftOptions { full: true, lr: 1e-3, ..tiny_run(&root.join("run"), 4) };
        let mut events = Vec::new();
        let (before, after) = finetune(&o, &AtomicBool::new(false), &mut |e| events.push(e.clone())).unwrap();
        assert!(after < before, "held-out loss {before} → {after}");
        let trainable =
            events.iter().find_map(|e| if let SftEvent::Data { trainable, .. } = e { Some(*trainable) } else { None });
        let base = load_pretrained_with(&o.model, LoadOptions::exact()).unwrap();
        assert_eq!(trainable, Some(base.store.num_params()), "every weight is trainable");
        let tuned = load_pretrained_with(&root.join("run/model"), LoadOptions::exact()).unwrap();
        let logits = |p: &Pretrained| {
            let _g = yuanli_autograd::no_grad();
            p.model.forward(&Tensor::new(vec![1u32, 5, 9, 2], &[1, 4])).value().to_vec::<f32>()
        };
        let (a, b) = (logits(&base), logits(&tuned));
        assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-4), "the written model is the trained one");
        let both = SftOptions { quantized_base: true, ..o };
        assert!(finetune(&both, &AtomicBool::new(false), &mut |_| {}).is_err());
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn a_stopped_and_resumed_run_repeats_the_uninterrupted_losses() {
        let root = std::env::temp_dir().join(format!("yuanli-sft-resume-{}", std::process::id()));
        let losses = |events: &[SftEvent]| -> Vec<(usize, f64)> {
            events
                .iter()
                .filter_map(|e| if let SftEvent::Step { step, loss, .. } = e { Some((*step, *loss)) } else { None })
                .collect()
        };
        let whole = tiny_run(&root.join("whole"), 6);
        let mut ev = Vec::new();
        let (b0, end) = finetune(&whole, &AtomicBool::new(false), &mut |e| ev.push(e.clone())).unwrap();
        let want = losses(&ev);
        assert_eq!(want.len(), 6);
        assert!(want.iter().all(|(_, l)| l.is_finite()) && want[5].1 < want[0].1, "it learns: {want:?}");
        let done = SftOptions { resume: true, ..whole };
        let err = finetune(&done, &AtomicBool::new(false), &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("already finished"), "{err}");

        // Stopped after step 3 (as Ctrl-C would), then resumed to 6.
        let part = tiny_run(&root.join("part"), 6);
        let stop = AtomicBool::new(false);
        let mut first = Vec::new();
        finetune(&part, &stop, &mut |e| {
            if matches!(e, SftEvent::Step { step: 3, .. }) {
                stop.store(true, Ordering::Relaxed);
            }
            first.push(e.clone())
        })
        .unwrap();
        assert!(first.iter().any(|e| matches!(e, SftEvent::Checkpoint { step: 3, .. })), "{first:?}");
        let mut second = Vec::new();
        let resumed = SftOptions { resume: true, ..part.clone() };
        let (b1, end1) = finetune(&resumed, &AtomicBool::new(false), &mut |e| second.push(e.clone())).unwrap();
        assert!(second.contains(&SftEvent::Resumed { step: 3 }));
        let mut got = losses(&first);
        got.extend(losses(&second));
        assert_eq!(got.len(), 6, "{got:?}");
        for ((s, a), (_, b)) in got.iter().zip(&want) {
            assert_eq!(a.to_bits(), b.to_bits(), "step {s}: resumed {got:?} vs uninterrupted {want:?}");
        }
        assert_eq!((b0.to_bits(), end.to_bits()), (b1.to_bits(), end1.to_bits()));
        let logged = std::fs::read_to_string(root.join("part/metrics.jsonl")).unwrap();
        let steps =
            logged.lines().filter(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].is_f64()).count();
        assert_eq!(steps, 6, "metrics.jsonl holds each step once");

        // Other options: refused, naming what differs.
        let other = SftOptions { lr: 5e-3, resume: true, ..part };
        let err = finetune(&other, &AtomicBool::new(false), &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("other options") && err.contains("lr=0.005"), "{err}");
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn bad_lines_are_errors_that_name_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("yuanli-sft-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            ("{\"messages\": [", "not JSON"),
            ("{\"messages\": [{\"role\": \"robot\", \"content\": \"hi\"}]}", "unknown role \"robot\""),
            ("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", "no assistant turn"),
            ("{\"text\": \"hi\"}", "needs \"messages\""),
            ("{\"prompt\": \"hi\"}", "\"completion\" is missing"),
        ];
        for (k, (line, want)) in cases.iter().enumerate() {
            let p = dir.join(format!("{k}.jsonl"));
            std::fs::write(&p, format!("{{\"prompt\": \"a\", \"completion\": \"b\"}}\n\n{line}\n")).unwrap();
            let err = read_conversations(&p).unwrap_err().to_string();
            assert!(err.contains(&format!("{k}.jsonl:3:")) && err.contains(want), "{err}");
        }
        let ok = dir.join("ok.jsonl");
        std::fs::write(&ok, "{\"prompt\": \"2+2=\", \"completion\": \"4\"}\n").unwrap();
        let c = read_conversations(&ok).unwrap();
        assert_eq!(c[0], vec![Message::new("user", "2+2="), Message::new("assistant", "4")]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
