//! # yuanli-lessons — the runnable lessons of the book
//!
//! Each lesson is a module with `run(&LessonOpts) -> anyhow::Result<serde_json::Value>`: it
//! prints its story to stdout and returns its headline numbers, which `yuanli lesson N --json`
//! prints as one JSON object on the last line. The book chapters include the lesson code from
//! these files, so what a reader sees is what runs.

pub mod l12_positions;
pub mod l1_micrograd;
pub mod l2_digits;
pub mod l3_char_lm;
pub mod l4_tokenizer;
pub mod l5_attention;
pub mod l6_pretraining;
pub mod l7_llama;
pub mod l8_quantization;
pub mod micrograd;

/// Options every lesson accepts.
#[derive(Clone, Debug)]
pub struct LessonOpts {
    /// Directory with the lesson data (`data/` in the repository).
    pub data_dir: std::path::PathBuf,
    /// Directory for outputs (plots, checkpoints).
    pub out_dir: std::path::PathBuf,
    /// Master seed.
    pub seed: u64,
    /// Print less (the `--json` mode keeps stdout for the final object).
    pub quiet: bool,
}

/// Prints one line of a lesson's story unless `opts.quiet`. A closed pipe (`yuanli lesson 3 |
/// head`) is not an error: the line is dropped and the lesson finishes.
pub fn say(opts: &LessonOpts, line: &str) {
    use std::io::Write;
    if !opts.quiet {
        let _ = writeln!(std::io::stdout(), "{line}");
    }
}

/// A lesson in the list.
pub struct Lesson {
    /// Its number (`yuanli lesson N`).
    pub number: u32,
    /// Short title.
    pub title: &'static str,
    /// Runs it.
    pub run: fn(&LessonOpts) -> anyhow::Result<serde_json::Value>,
}

/// All lessons, in order.
pub fn all() -> Vec<Lesson> {
    vec![
        Lesson {
            number: 1,
            title: "micrograd from scratch: a scalar autodiff, a neuron, an MLP",
            run: l1_micrograd::run,
        },
        Lesson {
            number: 2,
            title: "an MLP classifier on real data: digits, cross-validation, bias and variance",
            run: l2_digits::run,
        },
        Lesson { number: 3, title: "bigram and MLP language models on Shakespeare characters", run: l3_char_lm::run },
        Lesson { number: 4, title: "the tokenizer: byte-level BPE from scratch", run: l4_tokenizer::run },
        Lesson {
            number: 5,
            title: "attention and the Transformer block: inside a trained head",
            run: l5_attention::run,
        },
        Lesson {
            number: 6,
            title: "pretraining a GPT: objective, schedule, loss curve, MFU",
            run: l6_pretraining::run,
        },
        Lesson {
            number: 7,
            title: "from GPT to LLaMA: RMSNorm, RoPE, SwiGLU, GQA, and a real model",
            run: l7_llama::run,
        },
        Lesson {
            number: 8,
            title: "quantization and the KV cache: block formats, memory-bound decoding",
            run: l8_quantization::run,
        },
        Lesson {
            number: 12,
            title: "positions and length: learned, sinusoidal, RoPE, ALiBi, none — and RoPE scaling",
            run: l12_positions::run,
        },
    ]
}
