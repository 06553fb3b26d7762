//! `yuanli generate`, `yuanli chat` and `yuanli perplexity`: using a model — a GGUF file, a
//! Hugging Face directory, or a checkpoint from `yuanli train`.

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use yuanli_infer::{Chat, GenerateOptions, ModelKind, OpenOptions, TextGeneration};
use yuanli_models::{Batch, Logits, Message, SamplingParams, SessionOpts};

pub(crate) use yuanli_infer::Model;

/// Loads `path` (a `.gguf` file, a Hugging Face directory or a `yuanli train` checkpoint); a
/// GGUF file runs on its quantized weights unless `exact`.
pub(crate) fn open_model(path: &Path, exact: bool) -> Result<Model> {
    open_model_with(path, exact, None)
}

/// [`open_model`] with a LoRA adapter (a PEFT directory) on top.
pub(crate) fn open_model_with(path: &Path, exact: bool, lora: Option<&Path>) -> Result<Model> {
    let opts = OpenOptions { exact, lora: lora.map(Path::to_path_buf) };
    Model::open(path, opts).with_context(|| format!("loading {}", path.display()))
}

/// Sampling flags shared by `generate` and `chat`.
#[derive(Args, Debug, Clone)]
pub(crate) struct SamplingArgs {
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Softmax temperature; 0 = greedy (always the most likely token).
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = all).
    #[arg(long, default_value_t = 0.95)]
    top_p: f64,
    /// Drop tokens less likely than min-p times the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    min_p: f64,
    /// Penalise tokens among the last 64 (1 = off; 1.1 is a mild penalty).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f64,
    /// Random seed (the same seed and flags give the same text).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long = "stop", value_name = "TEXT")]
    stops: Vec<String>,
}

impl SamplingArgs {
    fn options(&self) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            params: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                repeat_last_n: 64,
            },
            seed: self.seed,
            stops: self.stops.clone(),
        }
    }
}

/// Runs one generation, streaming text to `out` (if any).
fn run_generation(
    model: &Model,
    prompt_ids: &[u32],
    s: &SamplingArgs,
    out: Option<&mut dyn Write>,
) -> Result<TextGeneration> {
    let (mut out, mut io_err) = (out, None);
    let g = model.generate_text(prompt_ids, &s.options(), &mut |piece| {
        if let Some(w) = out.as_deref_mut() {
            if let Err(e) = write!(w, "{piece}").and_then(|_| w.flush()) {
                io_err = Some(e);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    match io_err {
        Some(e) => Err(e.into()),
        None => Ok(g),
    }
}

/// `yuanli generate`
#[derive(Args, Debug)]
pub(crate) struct GenerateArgs {
    /// A .gguf file, a Hugging Face model directory, or a checkpoint from `yuanli train`.
    #[arg(long)]
    model: PathBuf,
    /// Text to continue (or, with --chat, the user's message).
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template as a user turn.
    #[arg(long)]
    chat: bool,
    /// A system message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Run a GGUF model on its weights dequantized to f32 (the path checked token for token
    /// against float64 transformers and llama.cpp) instead of the fast quantized kernels.
    #[arg(long)]
    exact: bool,
    /// A LoRA adapter to apply: a directory in PEFT's format (adapter_config.json +
    /// adapter_model.safetensors), from PEFT or from yuanli.
    #[arg(long, value_name = "DIR")]
    lora: Option<PathBuf>,
    /// Print one JSON object `{"token_ids", "text", "prefill_tok_s", "decode_tok_s"}`
    /// (generated tokens only) instead of streaming.
    #[arg(long)]
    json: bool,
}

pub(crate) fn generate_cmd(args: &GenerateArgs) -> Result<()> {
    let model = open_model_with(&args.model, args.exact, args.lora.as_deref())?;
    let (text, specials) = if args.chat {
        let mut msgs = Vec::new();
        if let Some(s) = &args.system {
            msgs.push(Message::new("system", s));
        }
        msgs.push(Message::new("user", &args.prompt));
        (model.render_chat(&msgs).context("--chat needs a chat template; leave it out")?, true)
    } else {
        (args.prompt.clone(), false)
    };
    let prompt_ids = model.encode(&text, specials)?;
    if args.json {
        let r = run_generation(&model, &prompt_ids, &args.sampling, None)?;
        let g = &r.generation;
        println!(
            "{}",
            serde_json::json!({"token_ids": r.ids, "text": r.text, "prefill_tok_s": g.prefill_tok_s(prompt_ids.len()),
                               "decode_tok_s": g.decode_tok_s(), "finish_reason": format!("{:?}", r.finish).to_lowercase()})
        );
    } else {
        let mut stdout = std::io::stdout();
        if !args.chat {
            print!("{}", args.prompt);
        }
        let r = run_generation(&model, &prompt_ids, &args.sampling, Some(&mut stdout))?;
        println!();
        let g = &r.generation;
        eprintln!(
            "[{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s]",
            prompt_ids.len(),
            g.prefill_tok_s(prompt_ids.len()),
            r.ids.len(),
            g.decode_tok_s()
        );
    }
    Ok(())
}

/// `yuanli chat`
#[derive(Args, Debug)]
pub(crate) struct ChatArgs {
    /// A .gguf file or a Hugging Face model directory with a chat template.
    #[arg(long)]
    model: PathBuf,
    /// The system message to start with (default: the template's own, if it has one).
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Run a GGUF model on its weights dequantized to f32 instead of the quantized kernels.
    #[arg(long)]
    exact: bool,
    /// A LoRA adapter to apply: a directory in PEFT's format (adapter_config.json +
    /// adapter_model.safetensors), from PEFT or from yuanli.
    #[arg(long, value_name = "DIR")]
    lora: Option<PathBuf>,
}

pub(crate) fn chat_cmd(args: &ChatArgs) -> Result<()> {
    let model = open_model_with(&args.model, args.exact, args.lora.as_deref())?;
    let mut chat = Chat::new(&model, args.system.clone()).context("chat needs a model with a chat template")?;
    if !model.description.is_empty() {
        eprintln!("{}", model.description);
    }
    eprintln!("Type a message and press Enter. /reset forgets the conversation, /system TEXT sets the system message, Ctrl-D quits.");
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut turn = 0u64;
    loop {
        write!(stdout, "\n> ")?;
        stdout.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            writeln!(stdout)?;
            return Ok(()); // Ctrl-D
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        if line.trim() == "/reset" {
            chat.reset();
            eprintln!("(conversation cleared)");
            continue;
        }
        if let Some(s) = line.trim().strip_prefix("/system") {
            let system = Some(s.trim().to_string()).filter(|s| !s.is_empty());
            eprintln!("(system message {}; conversation cleared)", if system.is_some() { "set" } else { "removed" });
            chat.set_system(system);
            continue;
        }
        let mut opts = args.sampling.options();
        opts.seed = opts.seed.wrapping_add(turn);
        turn += 1;
        let mut io_err = None;
        let r = chat.send(line, &opts, &mut |piece| match write!(stdout, "{piece}").and_then(|_| stdout.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                io_err = Some(e);
                ControlFlow::Break(())
            }
        });
        if let Some(e) = io_err {
            return Err(e.into());
        }
        match r {
            Ok(r) => {
                writeln!(stdout)?;
                if r.dropped_turns > 0 {
                    eprintln!("(the context was full: the {} oldest turn(s) were dropped)", r.dropped_turns);
                }
            }
            Err(e) => eprintln!("({e})"),
        }
    }
}

/// `yuanli perplexity`
#[derive(Args, Debug)]
pub(crate) struct PerplexityArgs {
    /// A .gguf file, a Hugging Face model directory, or a checkpoint from `yuanli train`.
    #[arg(long)]
    model: PathBuf,
    /// A UTF-8 text file.
    #[arg(long)]
    file: PathBuf,
    /// Context length of each chunk; the second half of each chunk is scored.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Score at most this many chunks (0 = all).
    #[arg(long, default_value_t = 0)]
    chunks: usize,
    /// Run a GGUF model on its weights dequantized to f32 instead of the quantized kernels.
    #[arg(long)]
    exact: bool,
    /// A LoRA adapter to apply: a directory in PEFT's format (adapter_config.json +
    /// adapter_model.safetensors), from PEFT or from yuanli.
    #[arg(long, value_name = "DIR")]
    lora: Option<PathBuf>,
    /// Round activations as llama.cpp's CPU backend does before each matrix product (8-bit
    /// blocks for quantized weights, f16 for F16 ones) to reproduce its perplexity; by default
    /// they stay 16-bit, closer to the exact product (compare with --exact).
    #[arg(long)]
    llama_cpp_activations: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn perplexity_cmd(args: &PerplexityArgs) -> Result<()> {
    if args.ctx < 4 {
        bail!("--ctx must be at least 4");
    }
    let model = open_model_with(&args.model, args.exact, args.lora.as_deref())?;
    if args.ctx > model.lm().context_len() {
        bail!("--ctx {} exceeds the model's context of {}", args.ctx, model.lm().context_len());
    }
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {} as UTF-8 text", args.file.display()))?;
    let ids = model.encode(&text, false)?;
    if ids.len() < args.ctx {
        bail!("{} has {} tokens, fewer than one chunk of --ctx {}", args.file.display(), ids.len(), args.ctx);
    }
    let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} chunk {pos}/{len} {msg} [{elapsed} < {eta}]")
            .expect("a valid progress template"),
    );
    let n_chunks = ids.len() / args.ctx;
    let opts = yuanli_models::SessionOpts {
        ggml_activations: args.llama_cpp_activations,
        ..yuanli_models::SessionOpts::tokens(args.ctx)
    };
    bar.set_length(if args.chunks > 0 { n_chunks.min(args.chunks) } else { n_chunks } as u64);
    let p = yuanli_models::eval::perplexity_with(
        model.lm(),
        &ids,
        model.bos_token(),
        args.ctx,
        args.chunks,
        opts,
        &mut |_, ppl| {
            bar.inc(1);
            bar.set_message(format!("ppl {ppl:.4}"));
        },
    )?;
    bar.finish_and_clear();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"perplexity": p.ppl, "nll": p.nll, "tokens_scored": p.count, "chunks": p.chunk_nll.len(),
                               "ctx": args.ctx, "file": args.file.display().to_string()})
        );
    } else {
        println!(
            "perplexity {:.4} over {} tokens ({} chunks of {}, second halves scored; {} tokens in the file)",
            p.ppl,
            p.count,
            p.chunk_nll.len(),
            args.ctx,
            ids.len()
        );
    }
    Ok(())
}

/// `yuanli bench generate`: `batch` sequences (each prompt a different stretch of
/// `prompt_tokens` tokens of Tempest) are prefilled together, then decoded greedily together,
/// one token of each per step, `gen_tokens` steps; median tokens/s over `reps` runs after a
/// warm-up. Prefill and decode rates are aggregates over the batch; `per_seq_decode_tok_s` is
/// one sequence's rate. With `batch > 1`, every repetition also runs one sequence alone right
/// after the batch, and `batch_speedup` is the median of the per-repetition ratios of the
/// aggregate decode rate to the single sequence's (adjacent runs share the machine's state,
/// so the ratio is steadier than either figure).
pub(crate) fn bench_generate(
    path: &Path,
    prompt_tokens: usize,
    gen_tokens: usize,
    reps: usize,
    exact: bool,
    batch: usize,
    threads: usize,
) -> Result<serde_json::Value> {
    if prompt_tokens == 0 || gen_tokens == 0 || batch == 0 || reps == 0 {
        bail!("--prompt-tokens, --gen-tokens, --batch and --reps must be positive");
    }
    let model = open_model(path, exact)?;
    let text_path = Path::new("data/shakespeare/tempest_gut.txt");
    let text = std::fs::read_to_string(text_path).with_context(|| {
        format!("reading the benchmark prompt {} (run from the repository root)", text_path.display())
    })?;
    let ids = model.encode(&text, false)?;
    if ids.len() < batch * prompt_tokens {
        bail!("the benchmark text has {} tokens, fewer than {batch} prompts of {prompt_tokens}", ids.len());
    }
    let lm = model.lm();
    let v = lm.vocab_size();
    let per_seq = prompt_tokens + gen_tokens;
    if per_seq > lm.context_len() {
        bail!("{prompt_tokens} + {gen_tokens} tokens exceed the model's context of {}", lm.context_len());
    }
    let argmax = |row: &[f32]| {
        row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0 as u32
    };
    let opts = SessionOpts::tokens(batch * per_seq.next_multiple_of(yuanli_models::engine::DEFAULT_BLOCK_SIZE));
    let mut session = lm.new_session(opts);
    let (mut steps, mut logits) = (Batch::new(), Vec::new());
    // One repetition with `n` sequences: (prefill tok/s, decode tok/s, first generated ids).
    let mut run = |n: usize| -> Result<(f64, f64, Vec<u32>)> {
        let seqs: Vec<_> = (0..n).map(|_| session.add_sequence()).collect();
        steps.clear();
        for (i, &seq) in seqs.iter().enumerate() {
            steps.add_seq(seq, 0, &ids[i * prompt_tokens..(i + 1) * prompt_tokens], Logits::Last);
        }
        let t0 = std::time::Instant::now();
        lm.forward_batch(&mut session, &steps, &mut logits)?;
        let t1 = std::time::Instant::now();
        let mut next: Vec<u32> = (0..n).map(|i| argmax(&logits[i * v..(i + 1) * v])).collect();
        let mut first = Vec::with_capacity(gen_tokens);
        for step in 0..gen_tokens {
            first.push(next[0]);
            steps.clear();
            for (&seq, &tok) in seqs.iter().zip(&next) {
                steps.add(seq, prompt_tokens + step, tok, true);
            }
            lm.forward_batch(&mut session, &steps, &mut logits)?;
            for (i, t) in next.iter_mut().enumerate() {
                *t = argmax(&logits[i * v..(i + 1) * v]);
            }
        }
        let t2 = std::time::Instant::now();
        for seq in seqs {
            session.remove(seq)?;
        }
        first.truncate(8);
        Ok((
            (n * prompt_tokens) as f64 / (t1 - t0).as_secs_f64(),
            (n * gen_tokens) as f64 / (t2 - t1).as_secs_f64(),
            first,
        ))
    };
    let (mut prefill, mut decode, mut single, mut ratios) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut first_generated = Vec::new();
    for rep in 0..=reps {
        let (p, d, first) = run(batch)?;
        let alone = if batch > 1 { Some(run(1)?.1) } else { None };
        if rep > 0 {
            prefill.push(p);
            decode.push(d);
            if let Some(a) = alone {
                single.push(a);
                ratios.push(d / a);
            }
        }
        first_generated = first;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let decode_tok_s = median(&mut decode);
    let mut r = serde_json::json!({
        "model": path.display().to_string(), "threads": threads, "batch": batch, "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens, "prefill_tok_s": median(&mut prefill), "decode_tok_s": decode_tok_s,
        "per_seq_decode_tok_s": decode_tok_s / batch as f64,
        "peak_rss_mb": crate::bench::peak_rss_mb(), "kv_mb": session.kv_bytes() as f64 / 1e6,
        "path": match model.kind { ModelKind::Quantized => "quantized", _ => "f32" },
        "simd": format!("{:?}", yuanli_tensor::cpu::qmatmul::best_qkernel()).to_lowercase(),
        "first_generated": first_generated,
    });
    if batch > 1 {
        r["single_decode_tok_s"] = serde_json::json!(median(&mut single));
        r["batch_speedup"] = serde_json::json!(median(&mut ratios));
    }
    Ok(r)
}
