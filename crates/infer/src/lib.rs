//! # yuanli-infer — using a model
//!
//! Everything between "a path and some text" and the inference engine of
//! [`yuanli_models`], shared by the command line and (next) the server:
//! - [`Model::open`] loads any model yuanli reads — a GGUF file (read in place on the fast
//!   quantized path, or dequantized with `exact`), a Hugging Face directory, a checkpoint from
//!   `yuanli train`, a GPT-2 GGUF from `yuanli quantize` — with its vocabulary, chat template
//!   and end-of-sequence tokens;
//! - [`TextStream`] turns generated ids into text as they come (whole UTF-8 characters only)
//!   and watches for stop strings;
//! - [`Model::generate_text`] runs one generation with EOS, stop strings and streaming;
//! - [`Grammars`] and [`Constraint`] restrict sampling to a JSON schema (structured output);
//! - [`Chat`] is a conversation that keeps its KV cache between turns (only the new turn is
//!   prefilled) and drops its oldest turns when the context fills.

mod chat;
mod constrain;
mod model;
mod stream;
#[doc(hidden)]
pub mod testing;

pub use chat::{Chat, ChatReply, CHAT_CONTEXT};
pub use constrain::{Constraint, Format, Grammars};
pub use model::{Finish, GenerateOptions, Model, ModelKind, OpenOptions, TextGeneration, Vocab};
pub use stream::TextStream;

/// Why a model could not be loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InferError {
    /// Loading a pretrained model failed.
    #[error(transparent)]
    Load(#[from] yuanli_models::LoadError),
    /// Loading a `yuanli train` checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] yuanli_train::pretrain::TrainError),
    /// A checkpoint's data directory (its vocabulary) is missing or damaged.
    #[error("the checkpoint's vocabulary lives with its data: {0}")]
    Data(#[from] yuanli_data::ShardError),
    /// Text could not be tokenized.
    #[error(transparent)]
    Tokenizer(#[from] yuanli_tokenizer::TokenizerError),
    /// The engine refused a step.
    #[error(transparent)]
    Engine(#[from] yuanli_models::EngineError),
    /// Anything else a caller can fix (an empty prompt, a missing chat template, …).
    #[error("{0}")]
    Usage(String),
}

/// `Result` with [`InferError`].
pub type Result<T, E = InferError> = std::result::Result<T, E>;
