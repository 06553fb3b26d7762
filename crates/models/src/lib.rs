//! # yuanli-models — model definitions
//!
//! One readable file per architecture: [`gpt`] (GPT-2). Models register their parameters in a
//! [`ParamStore`](yuanli_nn::ParamStore) under the same dotted names nanoGPT uses, so
//! checkpoints and the Hugging Face mapping stay legible.

pub mod gpt;
pub mod hf;
pub mod sample;

pub use gpt::{Gpt, GptConfig, KvCache};
pub use sample::{generate, pick, SamplingParams};
