//! # yuanli-nn — parameters and layers
//!
//! [`ParamStore`] keeps every parameter of a model in one flat f32 buffer, every gradient in a
//! second one (the llm.c arena): zeroing the gradients, measuring their global norm, clipping
//! them and the optimizer update are each one pass over contiguous memory, and a checkpoint is
//! one write. Each parameter is a [`Var`](yuanli_autograd::Var) whose value is a view into the
//! value arena and whose gradient accumulates, in place, into its slot of the gradient arena.
//!
//! Layers (Linear, Embedding, norms, MLP, …) arrive with the neural-network toolkit; they
//! register their weights here by dotted path (`blocks.3.attn.c_attn.weight`).

mod error;
mod params;

pub use error::{Error, Result};
pub use params::{ParamInfo, ParamKind, ParamStore};
