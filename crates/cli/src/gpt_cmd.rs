//! `yuanli prepare | train | sample | quickstart`: GPT pretraining from the command line.

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use yuanli_data::{char_vocab, write_shards, Shard};
use yuanli_infer::Vocab;
use yuanli_models::SamplingParams;
use yuanli_tensor::{Rng, Tensor};
use yuanli_train::plot::{line_plot, Series};
use yuanli_train::pretrain::{train, Event, TrainConfig, Trainee};

/// `yuanli prepare`
#[derive(Args, Debug)]
pub(crate) struct PrepareArgs {
    /// `char` for a character-level vocabulary built from the input, or a tokenizer file
    /// (yuanli JSON, Hugging Face tokenizer.json, or .tiktoken with the GPT-2 pattern).
    #[arg(long, default_value = "char")]
    tokenizer: String,
    /// Text files to read, concatenated in order.
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<PathBuf>,
    /// Output directory for train.bin, val.bin and meta.json.
    #[arg(long)]
    out: PathBuf,
    /// Fraction of the tokens (at the end) kept for validation.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
}

pub(crate) fn prepare(args: &PrepareArgs) -> Result<()> {
    if !(0.0..1.0).contains(&args.val_fraction) {
        bail!("--val-fraction {} must be in [0, 1)", args.val_fraction);
    }
    let mut text = String::new();
    for p in &args.input {
        text.push_str(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?);
    }
    let meta = if args.tokenizer == "char" {
        let chars = char_vocab(&text);
        let index: std::collections::HashMap<char, u32> =
            chars.iter().enumerate().map(|(i, &c)| (c, i as u32)).collect();
        let ids: Vec<u32> = text.chars().map(|c| index[&c]).collect();
        write_shards(&args.out, &ids, chars.len(), "char", chars, args.val_fraction)?
    } else {
        // A BPE tokenizer file: copy it next to the shards so the data directory is
        // self-contained (sampling decodes with it).
        let src = Path::new(&args.tokenizer);
        let tok = yuanli_tokenizer::formats::load(src, None)
            .with_context(|| format!("loading tokenizer {}", src.display()))?;
        let ids = tok.encode_ordinary_parallel(&text).with_context(|| format!("encoding with {}", src.display()))?;
        let ext = src.extension().and_then(|e| e.to_str()).unwrap_or("json");
        let name = format!("tokenizer.{ext}");
        std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
        std::fs::copy(src, args.out.join(&name))
            .with_context(|| format!("copying {} into {}", src.display(), args.out.display()))?;
        write_shards(&args.out, &ids, tok.vocab_size(), &name, vec![], args.val_fraction)?
    };
    println!(
        "prepared {}: {} train + {} val tokens, vocabulary {} ({}), in {}",
        args.input.len(),
        meta.train_tokens,
        meta.val_tokens,
        meta.vocab_size,
        meta.dtype,
        args.out.display()
    );
    Ok(())
}

/// `yuanli train`
#[derive(Args, Debug)]
pub(crate) struct TrainArgs {
    /// Training configuration (TOML); see configs/ for examples.
    #[arg(long)]
    config: PathBuf,
    /// Continue from a checkpoint directory (exactly where it stopped).
    #[arg(long)]
    resume: Option<PathBuf>,
}

/// Measures this machine's f32 matmul peak (GFLOP/s) on a 1024³ product, for MFU.
fn matmul_peak_gflops() -> f64 {
    let mut rng = Rng::new(0);
    let a = Tensor::randn(&[1024, 1024], 0.0, 1.0, yuanli_tensor::DType::F32, &mut rng);
    let t = crate::bench::time_median(0.3, 3, || {
        std::hint::black_box(a.matmul(&a));
    });
    2.0 * 1024f64.powi(3) / t / 1e9
}

fn load_config(path: &Path) -> Result<TrainConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
    let mut cfg: TrainConfig = toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
    if cfg.model.vocab_size == 0 {
        cfg.model.vocab_size = Shard::meta(&cfg.data_dir)?.vocab_size;
    }
    Ok(cfg)
}

/// Prints a line above the progress bar, or plainly when the bar is hidden (not a terminal).
pub(crate) fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

/// A flag that Ctrl-C sets: training loops check it between steps and stop with what they
/// made saved. (A second Ctrl-C while saving would kill the process; the saves are atomic.)
pub(crate) fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed));
    stop
}

/// The progress bar of a training run of `steps` steps.
pub(crate) fn steps_bar(steps: usize) -> ProgressBar {
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Runs training with a progress bar; returns the final state's step count.
pub(crate) fn run_training(cfg: &TrainConfig, resume: Option<&Path>, quiet_header: bool) -> Result<()> {
    let stop = stop_on_ctrl_c();
    let peak = matmul_peak_gflops();
    let flops_per_token = cfg.model.flops_per_token();
    if !quiet_header {
        println!(
            "GPT {}×{} (heads {}, context {}), {:.2} M parameters, {:.1} MFLOP/token; matmul peak {peak:.0} GFLOP/s",
            cfg.model.n_layer,
            cfg.model.n_embd,
            cfg.model.n_head,
            cfg.model.block_size,
            cfg.model.num_params() as f64 / 1e6,
            flops_per_token / 1e6
        );
    }
    let bar = steps_bar(cfg.max_iters);
    let (mut train_pts, mut val_pts) = (Vec::new(), Vec::new());
    let plot_path = cfg.out_dir.join("loss.png");
    let mut on_event = |e: &Event| match e {
        Event::Step { step, loss, lr, grad_norm, tokens_per_sec } => {
            let mfu = 100.0 * tokens_per_sec * flops_per_token / (peak * 1e9);
            bar.set_position(*step as u64);
            bar.set_message(format!(
                "loss {loss:.4} lr {lr:.2e} |g| {grad_norm:.2} {tokens_per_sec:.0} tok/s MFU {mfu:.1}%"
            ));
        }
        Event::Eval { step, train_loss, val_loss } => {
            say(&bar, format!("step {step:>6}: train loss {train_loss:.4}, val loss {val_loss:.4}"));
            train_pts.push((*step as f64, *train_loss));
            val_pts.push((*step as f64, *val_loss));
            let series = [
                Series { label: "train", points: train_pts.clone() },
                Series { label: "validation", points: val_pts.clone() },
            ];
            if let Err(err) =
                line_plot(&plot_path, "GPT pretraining", "step", "cross-entropy (nats/token)", &series, false)
            {
                say(&bar, format!("warning: {err}"));
            }
        }
        Event::Checkpoint { dir, step } => say(&bar, format!("checkpoint at step {step} → {}", dir.display())),
    };
    let result = train(cfg, resume, &stop, &mut on_event);
    bar.finish_and_clear();
    let state = result?;
    if stop.load(Ordering::Relaxed) {
        println!(
            "interrupted at step {}: checkpoint saved in {}; continue with --resume {}",
            state.step,
            cfg.out_dir.join("checkpoint").display(),
            cfg.out_dir.join("checkpoint").display()
        );
    } else {
        println!(
            "done: {} steps; checkpoint {}, loss curve {}",
            state.step,
            cfg.out_dir.join("checkpoint").display(),
            plot_path.display()
        );
    }
    Ok(())
}

pub(crate) fn train_cmd(args: &TrainArgs) -> Result<()> {
    let cfg = load_config(&args.config)?;
    run_training(&cfg, args.resume.as_deref(), false)
}

/// `yuanli sample`
#[derive(Args, Debug)]
pub(crate) struct SampleArgs {
    /// Checkpoint directory (from `yuanli train`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Text to continue.
    #[arg(long, default_value = "\n")]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    max_new_tokens: usize,
    /// Softmax temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = all).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Random seed.
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// Print one JSON object `{"token_ids": [...], "text": "..."}` instead of streaming.
    #[arg(long)]
    json: bool,
}
/// Generates from a loaded model; calls `emit` with text as soon as it forms whole characters.
pub(crate) fn generate(
    t: &Trainee,
    vocab: &Vocab,
    prompt: &str,
    args: &SampleArgs,
    emit: &mut dyn FnMut(&str),
) -> Result<Vec<u32>> {
    let ids = vocab.encode(prompt, false)?;
    if ids.is_empty() {
        bail!("the prompt is empty");
    }
    let block = t.model.config.block_size;
    if ids.len() > block {
        bail!("the prompt has {} tokens but the model's context is {block}", ids.len());
    }
    let params =
        SamplingParams { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p, ..Default::default() };
    let mut stream = yuanli_infer::TextStream::new(vocab, &[]);
    let out = yuanli_models::generate(&t.model, &ids, args.max_new_tokens, params, args.seed, &mut |id| {
        emit(&stream.push(id).0);
        std::ops::ControlFlow::Continue(())
    })?;
    emit(&stream.finish());
    Ok(out.tokens)
}

pub(crate) fn sample(args: &SampleArgs) -> Result<()> {
    let (t, cfg) = Trainee::load(&args.checkpoint)?;
    let vocab = Vocab::of_data(&cfg.data_dir)?;
    use std::io::Write;
    let mut stdout = std::io::stdout();
    if args.json {
        let ids = generate(&t, &vocab, &args.prompt, args, &mut |_| {})?;
        println!("{}", serde_json::json!({"token_ids": ids, "text": vocab.decode(&ids)?}));
    } else {
        print!("{}", args.prompt);
        generate(&t, &vocab, &args.prompt, args, &mut |s| {
            let _ = write!(stdout, "{s}");
            let _ = stdout.flush();
        })?;
        println!();
    }
    Ok(())
}

/// `yuanli quickstart`
#[derive(Args, Debug)]
pub(crate) struct QuickstartArgs {
    /// Which bundled corpus: shakespeare (English, 1 MB) or tang (7,418 Tang poems, character-level).
    #[arg(long, default_value = "shakespeare")]
    corpus: String,
    /// Optimizer steps (the default takes about five minutes on 2 cores: 3,000 steps measured
    /// 2 min 15 s, reaching validation loss 1.94 on Shakespeare).
    #[arg(long, default_value_t = 6000)]
    steps: usize,
    /// Output directory.
    #[arg(long, default_value = "runs/quickstart")]
    out: PathBuf,
}

/// The Tang poems (`data/tang_poems.jsonl`) as plain text: title, author, then the lines.
fn tang_text(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{} not found: run quickstart from the repository root", path.display()))?;
    let mut out = String::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let poem: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))?;
        let field = |k: &str| poem.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        out.push_str(&format!("{}\n{}\n", field("title"), field("author")));
        for l in poem.get("lines").and_then(|v| v.as_array()).into_iter().flatten() {
            out.push_str(l.as_str().unwrap_or(""));
            out.push('\n');
        }
        out.push('\n');
    }
    Ok(out)
}

pub(crate) fn quickstart(args: &QuickstartArgs) -> Result<()> {
    let inputs: Vec<PathBuf> = match args.corpus.as_str() {
        "shakespeare" => {
            let dir = Path::new("data/shakespeare");
            yuanli_data::files_with_extension(dir, "txt")
                .with_context(|| format!("{} not found: run quickstart from the repository root", dir.display()))?
        }
        "tang" => {
            std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
            let txt = args.out.join("tang_poems.txt");
            std::fs::write(&txt, tang_text(Path::new("data/tang_poems.jsonl"))?)
                .with_context(|| format!("writing {}", txt.display()))?;
            vec![txt]
        }
        other => bail!("--corpus {other}: choose shakespeare or tang"),
    };
    let data = args.out.join("data");
    prepare(&PrepareArgs { tokenizer: "char".into(), input: inputs, out: data.clone(), val_fraction: 0.1 })?;
    let vocab = Shard::meta(&data)?.vocab_size;
    let cfg = TrainConfig::baby(vocab, data, args.out.clone(), args.steps, 1337);
    let sample_args = SampleArgs {
        checkpoint: args.out.join("checkpoint"),
        prompt: "\n".into(),
        max_new_tokens: 300,
        temperature: 0.8,
        top_k: 0,
        top_p: 1.0,
        seed: 7,
        json: false,
    };
    let untrained = Trainee::new(&cfg.model, cfg.seed)?;
    let vocab = Vocab::of_data(&cfg.data_dir)?;
    let before = vocab.decode(&generate(&untrained, &vocab, "\n", &sample_args, &mut |_| {})?)?;
    println!("--- before training (random weights) ---\n{before}\n");
    run_training(&cfg, None, false)?;
    println!("\n--- after training ---");
    sample(&sample_args)
}

/// `yuanli export`
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["checkpoint", "model"])))]
pub(crate) struct ExportArgs {
    /// A GPT checkpoint directory (from `yuanli train`): written as Hugging Face GPT-2.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// A LLaMA-family model (.gguf file or Hugging Face directory): written as a Hugging Face
    /// `LlamaForCausalLM` (or `Qwen2ForCausalLM`) directory in f32.
    #[arg(long)]
    model: Option<PathBuf>,
    /// A LoRA adapter (PEFT's format, as `yuanli sft` writes it) merged into --model's weights.
    #[arg(long, requires = "model")]
    lora: Option<PathBuf>,
    /// Target layout; `hf` writes Hugging Face safetensors (`model.safetensors`, `config.json`).
    #[arg(long, default_value = "hf")]
    format: String,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn export(args: &ExportArgs) -> Result<()> {
    if args.format != "hf" {
        bail!("--format {}: only `hf` is supported", args.format);
    }
    if let Some(model) = &args.model {
        let p = yuanli_models::load_pretrained(model).with_context(|| format!("loading {}", model.display()))?;
        // The updates in Hugging Face's row order: the export writes every weight in that order.
        let deltas = match &args.lora {
            Some(dir) => yuanli_models::peft::adapter_deltas(dir, &p.model.config, false)
                .with_context(|| format!("reading the adapter {}", dir.display()))?,
            None => Vec::new(),
        };
        let files = yuanli_models::hf::export_llama(&p, &deltas, &args.out)?;
        println!(
            "exported {}{} as a Hugging Face model to {} ({})",
            model.display(),
            args.lora.as_ref().map_or(String::new(), |d| format!(" with {} merged", d.display())),
            args.out.display(),
            files.iter().filter_map(|f| f.file_name()).map(|n| n.to_string_lossy()).collect::<Vec<_>>().join(", ")
        );
        return Ok(());
    }
    let Some(checkpoint) = &args.checkpoint else { bail!("give --checkpoint or --model") };
    let (t, cfg) = Trainee::load(checkpoint)?;
    if cfg.model.positions != yuanli_models::Positions::Learned {
        bail!(
            "{}: positions = {:?}; Hugging Face's GPT2LMHeadModel has learned positions only",
            checkpoint.display(),
            cfg.model.positions.name()
        );
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    yuanli_nn::checkpoint::write_tensors(
        &args.out.join("model.safetensors"),
        &yuanli_models::hf::to_hf(&t.store, &cfg.model),
    )?;
    let config = serde_json::to_string_pretty(&yuanli_models::hf::hf_config(&cfg.model))?;
    yuanli_nn::checkpoint::write_atomic(&args.out.join("config.json"), config.as_bytes())?;
    println!("exported {} as a Hugging Face GPT2LMHeadModel to {}", checkpoint.display(), args.out.display());
    Ok(())
}

/// `yuanli import`
#[derive(Args, Debug)]
pub(crate) struct ImportArgs {
    /// Source layout; `hf` reads a Hugging Face GPT-2 directory.
    #[arg(long, default_value = "hf")]
    format: String,
    /// The directory to read (`model.safetensors` and `config.json`).
    dir: PathBuf,
    /// Output checkpoint directory.
    #[arg(long)]
    out: PathBuf,
    /// Prepared data directory whose vocabulary the model uses (recorded for `sample`).
    #[arg(long, default_value = "")]
    data_dir: PathBuf,
}

pub(crate) fn import(args: &ImportArgs) -> Result<()> {
    if args.format != "hf" {
        bail!("--format {}: only `hf` is supported", args.format);
    }
    let cfg_path = args.dir.join("config.json");
    let cfg_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?,
    )
    .with_context(|| format!("{}: not valid JSON", cfg_path.display()))?;
    let model = yuanli_models::hf::config_from_hf(&cfg_json, &cfg_path.display().to_string())?;
    let t = Trainee::new(&model, 0)?;
    let w_path = args.dir.join("model.safetensors");
    let weights = yuanli_nn::checkpoint::read_tensors(&w_path)?;
    yuanli_models::hf::load_hf(&t.store, &model, &weights, &w_path.display().to_string())?;
    let cfg = TrainConfig {
        model,
        data_dir: args.data_dir.clone(),
        out_dir: args.out.clone(),
        batch_size: 1,
        total_batch_tokens: 0,
        max_iters: 1,
        learning_rate: 3e-4,
        min_lr: 3e-5,
        warmup_iters: 0,
        weight_decay: 0.1,
        beta1: 0.9,
        beta2: 0.95,
        grad_clip: 1.0,
        eval_interval: 1,
        eval_iters: 1,
        checkpoint_interval: 0,
        seed: 0,
    };
    let state = yuanli_train::pretrain::TrainState {
        step: 0,
        batch_index: 0,
        adam_t: 0,
        rng_state: Rng::new(0).state(),
        best_val_loss: None,
    };
    let mut opt = yuanli_train::Adam::adamw(0.9, 0.95, 1e-8, 0.1);
    opt.m = vec![0.0; t.store.num_params()];
    opt.v = vec![0.0; t.store.num_params()];
    yuanli_train::pretrain::save_checkpoint(&args.out, &t, &cfg, &state, &opt)?;
    println!("imported {} into the yuanli checkpoint {}", args.dir.display(), args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every example pretraining config parses and passes validation (with a vocabulary filled
    /// in, as `load_config` does from the prepared data). The fine-tuning and alignment recipes
    /// (`sft-*.toml`, `grpo-*.toml`, …: flags for `--config`) are checked in `config_args`.
    #[test]
    fn every_example_config_parses_and_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") && crate::config_args::recipe_command(&path).is_none() {
                let text = std::fs::read_to_string(&path).unwrap();
                let mut cfg: TrainConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                if cfg.model.vocab_size == 0 {
                    cfg.model.vocab_size = 65;
                }
                cfg.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 3, "expected the example configs in {}", dir.display());
    }
}
