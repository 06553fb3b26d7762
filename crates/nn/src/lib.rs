//! # yuanli-nn — parameters, layers, losses, checkpoints
//!
//! [`ParamStore`] keeps every parameter of a model in one flat f32 buffer, every gradient in a
//! second one (the llm.c arena): zeroing the gradients, measuring their global norm, clipping
//! them and the optimizer update are each one pass over contiguous memory, and a checkpoint is
//! one write. Each parameter is a [`Var`](yuanli_autograd::Var) whose value is a view into the
//! value arena and whose gradient accumulates, in place, into its slot of the gradient arena.
//!
//! Layers ([`Linear`] — optionally with a [`Lora`] adapter —, [`Embedding`], [`LayerNorm`],
//! [`RmsNorm`], [`Dropout`], [`Mlp`], [`Activation`]) register their weights by dotted path (`blocks.3.attn.c_attn.weight`) and
//! only define `forward`; [`loss`] has cross-entropy (with label smoothing), MSE and binary
//! cross-entropy; [`checkpoint`] saves and loads a store as safetensors.

pub mod checkpoint;
mod error;
mod init;
mod layers;
mod lora;
pub mod loss;
mod params;

pub use checkpoint::CheckpointError;
pub use error::{Error, Result};
pub use init::{fans, Init};
pub use layers::{join, Activation, Dropout, Embedding, LayerNorm, Linear, Mlp, Module, RmsNorm, Weight};
pub use lora::{Lora, LoraConfig};
pub use params::{ParamInfo, ParamKind, ParamStore};
