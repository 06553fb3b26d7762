//! # yuanli-models — model definitions
//!
//! One readable file per architecture: [`gpt`] (GPT-2) and [`llama`] (LLaMA, SmolLM2, Qwen2).
//! Models register their parameters in a [`ParamStore`](yuanli_nn::ParamStore) under the
//! dotted names of their reference implementation (nanoGPT, Hugging Face), so checkpoints and
//! name mappings stay legible. [`load`] reads pretrained LLaMA-family models from GGUF files
//! and Hugging Face directories; [`sample`] generates from any [`CausalLm`].

pub mod chat;
pub mod engine;
pub mod eval;
pub mod generate;
pub mod gpt;
pub mod hf;
pub mod llama;
pub mod load;
pub mod peft;
pub mod positions;
pub mod rope_scaling;
pub mod sample;

pub use chat::{ChatTemplate, Message};
pub use engine::{Batch, EngineError, KvShape, KvType, Logits, SeqId, Session, SessionOpts};
pub use generate::{generate, generate_batch, generate_in, Generation, Request};
pub use gpt::{Gpt, GptConfig};
pub use llama::{Llama, LlamaConfig, Pass};
pub use load::{gpt_from_gguf, gpt_vocab_from_gguf, load_pretrained, GptVocab, LoadError, Pretrained};
pub use positions::Positions;
pub use rope_scaling::RopeScaling;
pub use sample::{pick, CausalLm, Sampler, SamplingParams};
/// The GGUF reader and writer the loaders use (re-exported for `yuanli quantize`).
pub use yuanli_gguf as gguf;
