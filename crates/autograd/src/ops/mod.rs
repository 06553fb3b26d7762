//! Differentiable ops. Each file pairs forward functions with their `Backward` structs.
//!
//! Primitives: [`elementwise`], [`reduce`], [`matmul`], [`shape`] (views, concat, gather,
//! where). Fused ops with hand-derived backward: [`matmul`] (the linear layer `x·Wᵀ + b`, and LoRA's adapted map over a frozen base), [`softmax`] (softmax, log-softmax,
//! cross-entropy), [`norm`] (LayerNorm, RMSNorm), [`activation`] (GELU, SiLU, SwiGLU,
//! dropout), [`embedding`], [`rope`], [`attention`].

pub mod activation;
pub mod attention;
pub mod elementwise;
pub mod embedding;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod rope;
pub mod shape;
pub mod softmax;

pub use attention::AttentionOpts;
pub use matmul::{Frozen, LoraOpts};
pub use rope::RopeOpts;
