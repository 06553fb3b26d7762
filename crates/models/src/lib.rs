//! # yuanli-models — model definitions
//!
//! One readable file per architecture: [`gpt`] (GPT-2) and [`llama`] (LLaMA, SmolLM2, Qwen2).
//! Models register their parameters in a [`ParamStore`](yuanli_nn::ParamStore) under the
//! dotted names of their reference implementation (nanoGPT, Hugging Face), so checkpoints and
//! name mappings stay legible. [`load`] reads pretrained LLaMA-family models from GGUF files
//! and Hugging Face directories; [`sample`] generates from any [`CausalLm`].

mod cache;
pub mod chat;
pub mod eval;
pub mod gpt;
pub mod hf;
pub mod llama;
pub mod load;
pub mod qllama;
pub mod sample;

pub use cache::KvCache;
pub use chat::{ChatTemplate, Message};
pub use gpt::{Gpt, GptConfig};
pub use llama::{Llama, LlamaConfig};
pub use load::{gpt_from_gguf, gpt_vocab_from_gguf, load_pretrained, GptVocab, LoadError, Pretrained};
pub use qllama::{QLlama, QuantModel};
pub use sample::{generate, pick, CausalLm, Sampler, SamplingParams};
/// The GGUF reader and writer the loaders use (re-exported for `yuanli quantize`).
pub use yuanli_gguf as gguf;
