//! `yuanli` — the one command-line entry point. Each subcommand parses its flags here and
//! calls into the library crates; nothing else in the workspace knows about clap or anyhow.

mod bench;
mod config_args;
mod distill_cmd;
mod gpt_cmd;
mod grpo_cmd;
mod lesson_cmd;
mod llm_cmd;
mod ppo_cmd;
mod pref_cmd;
mod quantize_cmd;
mod rl_adapter_args;
mod serve_cmd;
mod sft_cmd;
mod tokenizer_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// yuanli (原理): the large-language-model stack from first principles.
///
/// Every stage — tensors and autodiff, layers, tokenizer, GPT pretraining, real LLaMA-family
/// models, quantized inference — is implemented transparently in Rust, gradient-checked, and
/// runnable on a laptop CPU.
#[derive(Parser, Debug)]
#[command(
    name = "yuanli",
    version,
    about,
    long_about = None,
    args_override_self = true,
    after_help = "Start here:\n  yuanli quickstart            train a small GPT on Shakespeare in ~5 minutes, then sample\n  yuanli chat --model M.gguf   talk to a real model (tools/fetch_models.sh gets SmolLM2-135M)\n  yuanli lesson list           the runnable lessons of the book (docs/book, English and 中文)\n  yuanli bench matmul          this machine's matmul speed (bench/run_engine.sh compares numpy)\n\nEvery subcommand has its own --help, e.g. `yuanli train --help`."
)]
struct Cli {
    /// Compute threads (default: the YUANLI_THREADS environment variable, else all cores).
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure the engine's kernels (GFLOP/s, milliseconds); compare with bench/run_engine.sh.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Turn text files into token shards for training (`--tokenizer char`).
    Prepare(gpt_cmd::PrepareArgs),
    /// Pretrain a GPT from a TOML config (Ctrl-C saves a checkpoint; --resume continues).
    Train(gpt_cmd::TrainArgs),
    /// Generate text from a trained checkpoint.
    Sample(gpt_cmd::SampleArgs),
    /// Generate with any model: a .gguf file, a Hugging Face directory or a yuanli checkpoint.
    Generate(llm_cmd::GenerateArgs),
    /// Talk to a chat model in the terminal (/reset, /system TEXT, Ctrl-D to quit).
    Chat(llm_cmd::ChatArgs),
    /// Perplexity of a model on a text file, measured as llama.cpp measures it.
    Perplexity(llm_cmd::PerplexityArgs),
    /// Write a model as GGUF in one of llama.cpp's presets (q8_0, q6_k, q5_k_m, q4_k_m, …) or f16/f32.
    Quantize(quantize_cmd::QuantizeArgs),
    /// Serve a model over HTTP with OpenAI's API (continuous batching; streaming; /metrics).
    Serve(serve_cmd::ServeArgs),
    /// Fine-tune a model on conversations: LoRA or QLoRA (the adapter in PEFT's format), or every weight with --full; --resume continues a stopped run.
    Sft(sft_cmd::SftArgs),
    /// Align a model with preference pairs by DPO (sigmoid, hinge, IPO or robust loss) on a LoRA adapter; the reference is the base with the adapter off.
    Dpo(pref_cmd::DpoArgs),
    /// Train a reward model (Bradley–Terry) on preference pairs: a LoRA adapter and a scalar head.
    Rm(pref_cmd::RmArgs),
    /// Reinforce answers a checker can verify by GRPO: G completions per problem, each scored against its group, on a LoRA adapter.
    Grpo(grpo_cmd::GrpoArgs),
    /// Train a small random LLaMA on a teacher's next-token distributions (forward KL or GKD's JSD), or on the data alone for comparison.
    Distill(distill_cmd::DistillArgs),
    /// RLHF by PPO: a LoRA policy with a value head, scored by a `yuanli rm` reward model, with a per-token KL penalty to the base.
    Ppo(ppo_cmd::PpoArgs),
    /// Write a checkpoint in another layout (`--format hf`: Hugging Face GPT-2).
    Export(gpt_cmd::ExportArgs),
    /// Read a model in another layout into a yuanli checkpoint (`--format hf`).
    Import(gpt_cmd::ImportArgs),
    /// Prepare the bundled Shakespeare, train a small GPT for a few minutes, and sample.
    Quickstart(gpt_cmd::QuickstartArgs),
    /// Run a lesson of the book (`yuanli lesson list` shows them).
    Lesson(lesson_cmd::LessonArgs),
    /// Train, inspect and use byte-level BPE tokenizers.
    #[command(subcommand)]
    Tokenizer(tokenizer_cmd::TokenizerCommand),
}

fn run(cli: Cli) -> Result<()> {
    if cli.threads == Some(0) {
        anyhow::bail!("--threads must be at least 1");
    }
    yuanli_tensor::cpu::tune_allocator();
    let threads = yuanli_tensor::init_threads(cli.threads);
    match cli.command {
        Command::Bench(cmd) => yuanli_tensor::run_in_pool(|| bench::run(cmd, threads)),
        Command::Prepare(args) => gpt_cmd::prepare(&args),
        Command::Train(args) => yuanli_tensor::run_in_pool(|| gpt_cmd::train_cmd(&args)),
        Command::Sample(args) => yuanli_tensor::run_in_pool(|| gpt_cmd::sample(&args)),
        Command::Generate(args) => yuanli_tensor::run_in_pool(|| llm_cmd::generate_cmd(&args)),
        Command::Chat(args) => yuanli_tensor::run_in_pool(|| llm_cmd::chat_cmd(&args)),
        Command::Perplexity(args) => yuanli_tensor::run_in_pool(|| llm_cmd::perplexity_cmd(&args)),
        Command::Quantize(args) => yuanli_tensor::run_in_pool(|| quantize_cmd::run(&args)),
        Command::Serve(args) => serve_cmd::run(&args),
        Command::Sft(args) => yuanli_tensor::run_in_pool(|| sft_cmd::run(&args)),
        Command::Dpo(args) => yuanli_tensor::run_in_pool(|| pref_cmd::dpo(&args)),
        Command::Rm(args) => yuanli_tensor::run_in_pool(|| pref_cmd::rm(&args)),
        Command::Grpo(args) => yuanli_tensor::run_in_pool(|| grpo_cmd::run(&args)),
        Command::Distill(args) => yuanli_tensor::run_in_pool(|| distill_cmd::run(&args)),
        Command::Ppo(args) => yuanli_tensor::run_in_pool(|| ppo_cmd::run(&args)),
        Command::Export(args) => gpt_cmd::export(&args),
        Command::Import(args) => gpt_cmd::import(&args),
        Command::Quickstart(args) => yuanli_tensor::run_in_pool(|| gpt_cmd::quickstart(&args)),
        Command::Lesson(args) => yuanli_tensor::run_in_pool(|| lesson_cmd::run(args)),
        Command::Tokenizer(cmd) => tokenizer_cmd::run(cmd),
    }
}

fn main() -> ExitCode {
    let args = match config_args::expand(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(args);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed pipe (`yuanli … | head`) is not an error worth reporting.
            if err
                .chain()
                .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
