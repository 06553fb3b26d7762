//! `yuanli generate`, `yuanli chat` and `yuanli perplexity`: using a model — a GGUF file, a
//! Hugging Face directory, or a checkpoint from `yuanli train`.

use crate::gpt_cmd::Vocab;
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use yuanli_models::sample::{generate, Generation};
use yuanli_models::{load_pretrained, CausalLm, Message, Pretrained, QuantModel, SamplingParams};
use yuanli_tokenizer::SpecialMode;
use yuanli_train::pretrain::Trainee;

/// A loaded model and how to turn text into its tokens.
pub(crate) enum Model {
    /// A pretrained LLaMA-family model (GGUF or Hugging Face).
    Pretrained(Box<Pretrained>),
    /// A LLaMA-family GGUF on the fast quantized path.
    Quant(Box<QuantModel>),
    /// A GPT from `yuanli train`, with the vocabulary of its data.
    Trained(Box<Trainee>, Vocab),
}

impl Model {
    /// Loads `path`: a `.gguf` file, a Hugging Face directory (`config.json` with a
    /// `model_type`), or a yuanli checkpoint directory.
    pub(crate) fn load(path: &Path) -> Result<Model> {
        Model::open(path, false)
    }

    /// [`Model::load`], choosing the exact f32 path for GGUF files when `exact`.
    pub(crate) fn open(path: &Path, exact: bool) -> Result<Model> {
        let is_hf = path.is_dir()
            && std::fs::read_to_string(path.join("config.json")).is_ok_and(|s| s.contains("\"model_type\""));
        if path.is_dir() && !is_hf {
            let (t, cfg) = Trainee::load(path).with_context(|| {
                format!("{} is neither a Hugging Face model nor a yuanli checkpoint", path.display())
            })?;
            let vocab = Vocab::of_data(&cfg.data_dir)?;
            return Ok(Model::Trained(Box::new(t), vocab));
        }
        // A GPT-2 GGUF (what `yuanli quantize` makes of a checkpoint) is a trained GPT again.
        if path.is_file() {
            let f = yuanli_models::gguf::GgufFile::open(path).with_context(|| format!("loading {}", path.display()))?;
            if f.get("general.architecture").and_then(|v| v.as_str()) == Some(yuanli_models::load::GPT2_ARCH) {
                let (model, store) =
                    yuanli_models::gpt_from_gguf(&f).with_context(|| format!("loading {}", path.display()))?;
                let vocab = match yuanli_models::gpt_vocab_from_gguf(&f)
                    .with_context(|| format!("loading the vocabulary of {}", path.display()))?
                {
                    yuanli_models::GptVocab::Chars(c) => Vocab::Chars(c),
                    yuanli_models::GptVocab::Bpe(t) => Vocab::Bpe(t),
                };
                return Ok(Model::Trained(Box::new(Trainee { store, model }), vocab));
            }
        }
        Model::load_pretrained(path, exact)
    }

    /// Loads a pretrained LLaMA-family model: a GGUF file on the fast quantized path, unless
    /// `exact` (weights dequantized to f32, autograd engine: the path checked against float64
    /// references), or a Hugging Face directory.
    pub(crate) fn load_pretrained(path: &Path, exact: bool) -> Result<Model> {
        if path.is_file() && !exact {
            let m = QuantModel::open(path, yuanli_tensor::num_threads())
                .with_context(|| format!("loading {}", path.display()))?;
            return Ok(Model::Quant(Box::new(m)));
        }
        let p = load_pretrained(path).with_context(|| format!("loading {}", path.display()))?;
        Ok(Model::Pretrained(Box::new(p)))
    }

    pub(crate) fn lm(&self) -> &dyn CausalLm {
        match self {
            Model::Pretrained(p) => &p.model,
            Model::Quant(q) => &q.model,
            Model::Trained(t, _) => &t.model,
        }
    }

    /// Token ids of `text`; specials such as `<|im_start|>` are parsed when `specials`.
    pub(crate) fn encode(&self, text: &str, specials: bool) -> Result<Vec<u32>> {
        match self {
            Model::Pretrained(p) => {
                let mode = if specials { SpecialMode::Allow } else { SpecialMode::AsText };
                let mut ids: Vec<u32> = p.bos.filter(|_| p.add_bos).into_iter().collect();
                ids.extend(p.tokenizer.encode(text, mode)?);
                Ok(ids)
            }
            Model::Quant(q) => {
                let p = &q.chat;
                let mode = if specials { SpecialMode::Allow } else { SpecialMode::AsText };
                let mut ids: Vec<u32> = p.bos.filter(|_| p.add_bos).into_iter().collect();
                ids.extend(p.tokenizer.encode(text, mode)?);
                Ok(ids)
            }
            Model::Trained(_, v) => v.encode(text),
        }
    }

    fn eos(&self) -> &[u32] {
        match self {
            Model::Pretrained(p) => &p.eos,
            Model::Quant(q) => &q.chat.eos,
            Model::Trained(..) => &[],
        }
    }

    /// Renders a conversation with the model's chat template.
    fn render_chat(&self, messages: &[Message]) -> Result<String> {
        match self {
            Model::Pretrained(p) => match &p.chat_template {
                Some(t) => t.render(messages, true).map_err(anyhow::Error::msg),
                None => bail!("this model has no chat template; leave out --chat"),
            },
            Model::Quant(q) => match &q.chat.chat_template {
                Some(t) => t.render(messages, true).map_err(anyhow::Error::msg),
                None => bail!("this model has no chat template; leave out --chat"),
            },
            Model::Trained(..) => bail!("a model from `yuanli train` has no chat template; leave out --chat"),
        }
    }
}

/// Turns generated ids into text as they come, emitting only whole UTF-8 characters, and
/// watches for stop strings.
struct TextStream<'m> {
    model: &'m Model,
    decoder: Option<yuanli_tokenizer::StreamDecoder<'m>>,
    text: String,
    emitted: usize,
    stops: &'m [String],
}

impl<'m> TextStream<'m> {
    fn new(model: &'m Model, stops: &'m [String]) -> Self {
        let decoder = match model {
            Model::Pretrained(p) => Some(p.tokenizer.stream_decoder()),
            Model::Quant(q) => Some(q.chat.tokenizer.stream_decoder()),
            Model::Trained(_, Vocab::Bpe(t)) => Some(t.stream_decoder()),
            Model::Trained(_, Vocab::Chars(_)) => None,
        };
        TextStream { model, decoder, text: String::new(), emitted: 0, stops }
    }

    /// Adds a token; returns the text that is now safe to show, and whether a stop string
    /// appeared (the text is cut before it).
    fn push(&mut self, id: u32) -> (String, bool) {
        match (&mut self.decoder, self.model) {
            (Some(d), _) => self.text.push_str(&d.push(id).unwrap_or_default()),
            (None, Model::Trained(_, Vocab::Chars(c))) => self.text.extend(c.get(id as usize)),
            _ => {}
        }
        if let Some(cut) = self.stops.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            self.text.truncate(cut);
            let out = self.text.get(self.emitted..).unwrap_or_default().to_string();
            self.emitted = self.text.len();
            return (out, true);
        }
        // Hold back a tail that could still become a stop string.
        let hold = self.stops.iter().map(|s| s.len().saturating_sub(1)).max().unwrap_or(0);
        let mut safe = self.text.len().saturating_sub(hold).max(self.emitted);
        while !self.text.is_char_boundary(safe) {
            safe -= 1;
        }
        let out = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        (out, false)
    }

    fn finish(&mut self) -> String {
        if let Some(d) = &mut self.decoder {
            self.text.push_str(&d.finish());
        }
        let out = self.text.get(self.emitted..).unwrap_or_default().to_string();
        self.emitted = self.text.len();
        out
    }
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
    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: 64,
        }
    }
}

/// Runs one generation, streaming text to `out` (if any); returns the ids (EOS excluded),
/// the text, and the timings.
fn run_generation(
    model: &Model,
    prompt_ids: &[u32],
    s: &SamplingArgs,
    mut out: Option<&mut dyn Write>,
) -> Result<(Vec<u32>, String, Generation)> {
    if prompt_ids.is_empty() {
        bail!("the prompt is empty");
    }
    let ctx = model.lm().context_len();
    if prompt_ids.len() >= ctx {
        bail!("the prompt has {} tokens but the model's context is {ctx}; shorten it", prompt_ids.len());
    }
    let eos = model.eos().to_vec();
    let mut stream = TextStream::new(model, &s.stops);
    let mut ids = Vec::new();
    let mut text = String::new();
    let mut io_err = None;
    let gen = generate(model.lm(), prompt_ids, s.max_new_tokens, s.params(), s.seed, &mut |id| {
        if eos.contains(&id) {
            return ControlFlow::Break(());
        }
        ids.push(id);
        let (piece, stop) = stream.push(id);
        text.push_str(&piece);
        if let Some(w) = out.as_deref_mut() {
            if let Err(e) = write!(w, "{piece}").and_then(|_| w.flush()) {
                io_err = Some(e);
                return ControlFlow::Break(());
            }
        }
        if stop {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    if let Some(e) = io_err {
        return Err(e.into());
    }
    let tail = stream.finish();
    text.push_str(&tail);
    if let Some(w) = out {
        write!(w, "{tail}")?;
    }
    Ok((ids, text, gen))
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
    /// Print one JSON object `{"token_ids", "text", "prefill_tok_s", "decode_tok_s"}`
    /// (generated tokens only) instead of streaming.
    #[arg(long)]
    json: bool,
}

pub(crate) fn generate_cmd(args: &GenerateArgs) -> Result<()> {
    let model = Model::open(&args.model, args.exact)?;
    let (text, specials) = if args.chat {
        let mut msgs = Vec::new();
        if let Some(s) = &args.system {
            msgs.push(Message::new("system", s));
        }
        msgs.push(Message::new("user", &args.prompt));
        (model.render_chat(&msgs)?, true)
    } else {
        (args.prompt.clone(), false)
    };
    let prompt_ids = model.encode(&text, specials)?;
    if args.json {
        let (ids, out, g) = run_generation(&model, &prompt_ids, &args.sampling, None)?;
        println!(
            "{}",
            serde_json::json!({"token_ids": ids, "text": out, "prefill_tok_s": g.prefill_tok_s(prompt_ids.len()),
                               "decode_tok_s": g.decode_tok_s()})
        );
    } else {
        let mut stdout = std::io::stdout();
        if !args.chat {
            print!("{}", args.prompt);
        }
        let (ids, _, g) = run_generation(&model, &prompt_ids, &args.sampling, Some(&mut stdout))?;
        println!();
        eprintln!(
            "[{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s]",
            prompt_ids.len(),
            g.prefill_tok_s(prompt_ids.len()),
            ids.len(),
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
}

pub(crate) fn chat_cmd(args: &ChatArgs) -> Result<()> {
    let model = Model::open(&args.model, args.exact)?;
    model.render_chat(&[Message::new("user", "")])?; // fail now if there is no template
    match &model {
        Model::Pretrained(p) => eprintln!("{}", p.description),
        Model::Quant(q) => eprintln!("{}", q.description),
        Model::Trained(..) => {}
    }
    eprintln!("Type a message and press Enter. /reset forgets the conversation, /system TEXT sets the system message, Ctrl-D quits.");
    let mut system = args.system.clone();
    let mut history: Vec<Message> = Vec::new();
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
            history.clear();
            eprintln!("(conversation cleared)");
            continue;
        }
        if let Some(s) = line.trim().strip_prefix("/system") {
            system = Some(s.trim().to_string()).filter(|s| !s.is_empty());
            history.clear();
            eprintln!("(system message {}; conversation cleared)", if system.is_some() { "set" } else { "removed" });
            continue;
        }
        history.push(Message::new("user", line));
        let mut msgs: Vec<Message> = system.iter().map(|s| Message::new("system", s)).collect();
        msgs.extend(history.iter().cloned());
        let prompt_ids = model.encode(&model.render_chat(&msgs)?, true)?;
        let ctx = model.lm().context_len();
        if prompt_ids.len() >= ctx {
            history.clear();
            eprintln!(
                "(the conversation, {} tokens, no longer fits the context of {ctx}: cleared; ask again)",
                prompt_ids.len()
            );
            continue;
        }
        let sampling = SamplingArgs { seed: args.sampling.seed.wrapping_add(turn), ..args.sampling.clone() };
        turn += 1;
        let (_, reply, _) = run_generation(&model, &prompt_ids, &sampling, Some(&mut stdout))?;
        writeln!(stdout)?;
        history.push(Message::new("assistant", reply.trim()));
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
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn perplexity_cmd(args: &PerplexityArgs) -> Result<()> {
    if args.ctx < 4 {
        bail!("--ctx must be at least 4");
    }
    let model = Model::open(&args.model, args.exact)?;
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
    bar.set_length(if args.chunks > 0 { n_chunks.min(args.chunks) } else { n_chunks } as u64);
    let p = yuanli_models::eval::perplexity(model.lm(), &ids, args.ctx, args.chunks, &mut |_, ppl| {
        bar.inc(1);
        bar.set_message(format!("ppl {ppl:.4}"));
    });
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

/// `yuanli bench generate`: prefill `prompt_tokens` tokens of Tempest, then decode
/// `gen_tokens` greedily, one at a time; median tokens/s over `reps` runs after a warm-up.
pub(crate) fn bench_generate(
    path: &Path,
    prompt_tokens: usize,
    gen_tokens: usize,
    reps: usize,
    exact: bool,
    threads: usize,
) -> Result<serde_json::Value> {
    if prompt_tokens == 0 || gen_tokens == 0 {
        bail!("--prompt-tokens and --gen-tokens must be positive");
    }
    let model = Model::open(path, exact)?;
    let text_path = Path::new("data/shakespeare/tempest_gut.txt");
    let text = std::fs::read_to_string(text_path).with_context(|| {
        format!("reading the benchmark prompt {} (run from the repository root)", text_path.display())
    })?;
    let mut ids = model.encode(&text, false)?;
    if ids.len() < prompt_tokens {
        bail!("the benchmark text has only {} tokens", ids.len());
    }
    ids.truncate(prompt_tokens);
    let lm = model.lm();
    let v = lm.vocab_size();
    let n_ctx = prompt_tokens + gen_tokens;
    if n_ctx > lm.context_len() {
        bail!("{prompt_tokens} + {gen_tokens} tokens exceed the model's context of {}", lm.context_len());
    }
    let argmax = |row: &[f32]| {
        row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0 as u32
    };
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    let mut logits = Vec::new();
    let mut generated = Vec::new();
    for rep in 0..=reps {
        let mut state = lm.new_state(n_ctx);
        let t0 = std::time::Instant::now();
        lm.feed(state.as_mut(), &ids, prompt_tokens - 1, &mut logits);
        let t1 = std::time::Instant::now();
        let mut next = argmax(&logits[..v]);
        generated.clear();
        for _ in 0..gen_tokens {
            generated.push(next);
            lm.feed(state.as_mut(), &[next], 0, &mut logits);
            next = argmax(&logits[..v]);
        }
        let t2 = std::time::Instant::now();
        if rep > 0 {
            prefill.push(prompt_tokens as f64 / (t1 - t0).as_secs_f64());
            decode.push(gen_tokens as f64 / (t2 - t1).as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(serde_json::json!({
        "model": path.display().to_string(), "threads": threads, "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens, "prefill_tok_s": median(&mut prefill), "decode_tok_s": median(&mut decode),
        "peak_rss_mb": crate::bench::peak_rss_mb(), "path": match &model { Model::Quant(_) => "quantized", _ => "f32" },
        "first_generated": &generated[..generated.len().min(8)],
    }))
}
