//! `yuanli tokenizer train|encode|decode|stats|bench`: byte-level BPE from the command line.
//!
//! Wherever a tokenizer is read, the path may be yuanli's JSON, a Hugging Face
//! `tokenizer.json`, or a `.tiktoken` ranks file (then `--pattern` names its regex, GPT-2's by
//! default, and `<|endoftext|>` gets the id after the last rank, as in GPT-2).

use anyhow::{Context, Result};
use clap::{Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;
use yuanli_tokenizer::{formats, train, Pattern, SpecialMode, Tokenizer, TrainOptions};

#[derive(Subcommand, Debug)]
pub(crate) enum TokenizerCommand {
    /// Train a byte-level BPE vocabulary on text files.
    Train {
        /// Text files (UTF-8) to train on.
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// Vocabulary size: 256 bytes + merges + special tokens.
        #[arg(long)]
        vocab_size: usize,
        /// Pre-tokenization: gpt2, gpt4, none, or a regex (fancy-regex syntax).
        #[arg(long, default_value = "gpt2")]
        pattern: String,
        /// Special tokens, given the ids after the last merge (repeatable).
        #[arg(long, num_args = 1..)]
        special: Vec<String>,
        /// Where to write the tokenizer.
        #[arg(long)]
        out: PathBuf,
        /// File format [default: hf if the name ends in tokenizer.json, tiktoken if it ends in
        /// .tiktoken, else yuanli].
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Encode text into token ids.
    Encode {
        /// Tokenizer file (yuanli JSON, tokenizer.json or .tiktoken).
        #[arg(long)]
        tokenizer: PathBuf,
        /// Pattern of a .tiktoken file: gpt2, gpt4, none, or a regex.
        #[arg(long)]
        pattern: Option<String>,
        /// Print exactly one JSON array of ids (default: ids separated by spaces).
        #[arg(long)]
        json: bool,
        /// What to do with special tokens written in the text.
        #[arg(long, value_enum, default_value = "reject")]
        specials: Specials,
        /// Input file, or `-` for stdin.
        #[arg(default_value = "-")]
        input: String,
    },
    /// Decode a JSON array of ids back to text.
    Decode {
        /// Tokenizer file (yuanli JSON, tokenizer.json or .tiktoken).
        #[arg(long)]
        tokenizer: PathBuf,
        /// Pattern of a .tiktoken file.
        #[arg(long)]
        pattern: Option<String>,
        /// Replace invalid UTF-8 with U+FFFD instead of failing.
        #[arg(long)]
        lossy: bool,
        /// Input file holding a JSON array of ids, or `-` for stdin.
        #[arg(default_value = "-")]
        input: String,
    },
    /// Bytes per token and the most frequent tokens of a text.
    Stats {
        /// Tokenizer file (yuanli JSON, tokenizer.json or .tiktoken).
        #[arg(long)]
        tokenizer: PathBuf,
        /// Pattern of a .tiktoken file.
        #[arg(long)]
        pattern: Option<String>,
        /// How many of the most frequent tokens to list.
        #[arg(long, default_value_t = 20)]
        top: usize,
        /// Text file.
        file: PathBuf,
    },
    /// Measure encoding throughput and training time (bench/tokenizer.py calls this).
    Bench {
        /// Tokenizer to encode with (yuanli JSON, tokenizer.json or .tiktoken).
        #[arg(long)]
        tokenizer: PathBuf,
        /// Pattern of a .tiktoken file.
        #[arg(long)]
        pattern: Option<String>,
        /// Text files: encoded one by one (batch) and concatenated (single thread).
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// Thread counts for the batch encoding.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        batch_threads: Vec<usize>,
        /// Also train a vocabulary of this size on the inputs (GPT-2 pattern; 0: skip).
        #[arg(long, default_value_t = 0)]
        train_vocab: usize,
        /// Repetitions; the best time counts.
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Tokenizer file formats.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Format {
    /// yuanli's JSON (merges as id pairs).
    Yuanli,
    /// Hugging Face tokenizer.json.
    Hf,
    /// tiktoken ranks file (the pattern is not stored).
    Tiktoken,
}

/// What to do with special tokens written in the text.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Specials {
    /// Fail, naming the special token found.
    Reject,
    /// Encode them as their special ids.
    Allow,
    /// Encode them as ordinary text.
    Text,
}

pub(crate) fn run(cmd: TokenizerCommand) -> Result<()> {
    match cmd {
        TokenizerCommand::Train { input, vocab_size, pattern, special, out, format } => {
            train_cmd(&input, vocab_size, &pattern, special, &out, format)
        }
        TokenizerCommand::Encode { tokenizer, pattern, json, specials, input } => {
            let tok = load(&tokenizer, pattern.as_deref())?;
            let text = read_input(&input)?;
            let mode = match specials {
                Specials::Reject => SpecialMode::Reject,
                Specials::Allow => SpecialMode::Allow,
                Specials::Text => SpecialMode::AsText,
            };
            let ids = tok.encode(&text, mode).with_context(|| format!("encoding {input}"))?;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer(&mut out, &ids)?;
            } else {
                let line: Vec<String> = ids.iter().map(u32::to_string).collect();
                write!(out, "{}", line.join(" "))?;
            }
            writeln!(out)?;
            Ok(())
        }
        TokenizerCommand::Decode { tokenizer, pattern, lossy, input } => {
            let tok = load(&tokenizer, pattern.as_deref())?;
            let text = read_input(&input)?;
            let ids: Vec<u32> =
                serde_json::from_str(&text).with_context(|| format!("{input}: expected a JSON array of token ids"))?;
            let decoded = if lossy {
                tok.decode_lossy(&ids)?
            } else {
                tok.decode(&ids).map_err(|e| anyhow::anyhow!("{e} (--lossy replaces invalid bytes with U+FFFD)"))?
            };
            let mut out = std::io::stdout().lock();
            out.write_all(decoded.as_bytes())?;
            Ok(())
        }
        TokenizerCommand::Stats { tokenizer, pattern, top, file } => {
            let tok = load(&tokenizer, pattern.as_deref())?;
            stats_cmd(&tok, &file, top)
        }
        TokenizerCommand::Bench { tokenizer, pattern, input, batch_threads, train_vocab, repeat, json } => {
            let tok = load(&tokenizer, pattern.as_deref())?;
            bench_cmd(&tok, &input, &batch_threads, train_vocab, repeat.max(1), json)
        }
    }
}

fn load(path: &Path, pattern: Option<&str>) -> Result<Tokenizer> {
    Ok(formats::load(path, pattern.map(Pattern::parse))?)
}

fn read_input(input: &str) -> Result<String> {
    if input == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading stdin (as UTF-8)")?;
        Ok(s)
    } else {
        read_text(Path::new(input))
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {} (as UTF-8 text)", path.display()))
}

/// Shows a token readably: its text if it is valid UTF-8, else its bytes in hex.
fn show_token(tok: &Tokenizer, id: u32) -> String {
    let bytes = tok.token_bytes(id).unwrap_or_default();
    match std::str::from_utf8(bytes) {
        Ok(s) => format!("{s:?}"),
        Err(_) => {
            let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
            format!("<{}>", hex.join(" "))
        }
    }
}

fn train_cmd(
    input: &[PathBuf],
    vocab_size: usize,
    pattern: &str,
    specials: Vec<String>,
    out: &Path,
    format: Option<Format>,
) -> Result<()> {
    let texts: Vec<String> = input.iter().map(|p| read_text(p)).collect::<Result<_>>()?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let bytes: usize = refs.iter().map(|t| t.len()).sum();
    let opts = TrainOptions { vocab_size, pattern: Pattern::parse(pattern), specials };
    eprintln!(
        "training {vocab_size} tokens on {} file(s), {:.2} MB, pattern {}, {} thread(s)",
        input.len(),
        bytes as f64 / 1e6,
        opts.pattern.name(),
        rayon::current_num_threads()
    );
    let bar = ProgressBar::new(vocab_size.saturating_sub(256 + opts.specials.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("merges {bar:40} {pos}/{len} [{elapsed_precise}, eta {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let tok = train::train(&refs, &opts, &mut |p| bar.set_position(p.done as u64))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let format = format.unwrap_or_else(|| {
        let name = out.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with("tokenizer.json") {
            Format::Hf
        } else if name.ends_with(".tiktoken") {
            Format::Tiktoken
        } else {
            Format::Yuanli
        }
    });
    match format {
        Format::Yuanli => formats::save_yuanli(&tok, out)?,
        Format::Hf => formats::save_hf(&tok, out)?,
        Format::Tiktoken => formats::save_tiktoken(&tok, out)?,
    }
    let merges = tok.merge_list().unwrap_or_default();
    eprintln!(
        "trained {} merges in {secs:.2} s; vocabulary of {} written to {} ({format:?})",
        merges.len(),
        tok.vocab_size(),
        out.display()
    );
    let first: Vec<String> = (256..256 + merges.len().min(10) as u32).map(|id| show_token(&tok, id)).collect();
    eprintln!("first merges: {}", first.join(" "));
    Ok(())
}

fn stats_cmd(tok: &Tokenizer, file: &Path, top: usize) -> Result<()> {
    let text = read_text(file)?;
    let ids = tok.encode(&text, SpecialMode::Allow)?;
    let mut counts = vec![0u64; tok.vocab_size()];
    for &id in &ids {
        counts[id as usize] += 1;
    }
    let used = counts.iter().filter(|&&c| c > 0).count();
    println!("file:            {}", file.display());
    println!("bytes:           {}", text.len());
    println!("characters:      {}", text.chars().count());
    println!("tokens:          {}", ids.len());
    println!("bytes per token: {:.3}", text.len() as f64 / ids.len().max(1) as f64);
    println!("distinct tokens: {used} of {}", tok.vocab_size());
    let mut order: Vec<u32> = (0..tok.vocab_size() as u32).filter(|&i| counts[i as usize] > 0).collect();
    order.sort_by(|&a, &b| counts[b as usize].cmp(&counts[a as usize]).then(a.cmp(&b)));
    println!("most frequent tokens:");
    for &id in order.iter().take(top) {
        let c = counts[id as usize];
        println!("  {id:>7} {c:>9} {:>6.2}%  {}", 100.0 * c as f64 / ids.len() as f64, show_token(tok, id));
    }
    Ok(())
}

/// Best wall time of `repeat` runs of `f`, in seconds.
fn best_time<T>(repeat: usize, mut f: impl FnMut() -> Result<T>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..repeat {
        let t = Instant::now();
        std::hint::black_box(f()?);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn bench_cmd(
    tok: &Tokenizer,
    input: &[PathBuf],
    batch_threads: &[usize],
    train_vocab: usize,
    repeat: usize,
    json: bool,
) -> Result<()> {
    let texts: Vec<String> = input.iter().map(|p| read_text(p)).collect::<Result<_>>()?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let all = texts.concat();
    let mb = all.len() as f64 / 1e6;
    let tokens = tok.encode_ordinary(&all)?.len();

    // one thread, one big text
    let single = best_time(repeat, || Ok(tok.encode_ordinary(&all)?))?;
    // a batch of texts (one per file) on pools of different sizes
    let mut batch = Vec::new();
    for &threads in batch_threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build()?;
        let secs = pool.install(|| best_time(repeat, || Ok(tok.encode_batch(&refs, SpecialMode::AsText)?)))?;
        batch.push(serde_json::json!({"threads": threads, "secs": secs, "mb_per_s": mb / secs}));
    }
    let mut report = serde_json::json!({
        "bytes": all.len(),
        "files": texts.len(),
        "tokens": tokens,
        "encode_single": {"secs": single, "mb_per_s": mb / single},
        "encode_batch": batch,
    });
    if train_vocab > 0 {
        let opts = TrainOptions { vocab_size: train_vocab, pattern: Pattern::Gpt2, specials: vec![] };
        let secs = best_time(repeat.min(3), || Ok(train::train(&refs, &opts, &mut |_| {})?))?;
        report["train"] = serde_json::json!({
            "vocab_size": train_vocab,
            "threads": rayon::current_num_threads(),
            "secs": secs,
        });
    }
    if json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
