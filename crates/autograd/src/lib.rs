//! # yuanli-autograd — reverse-mode automatic differentiation
//!
//! A [`Var`] wraps a [`Tensor`] value and, when gradients are wanted, the operation that made
//! it. Calling [`Var::backward`] on a scalar loss walks the recorded graph once in reverse
//! topological order (an iterative DFS: deep graphs cannot overflow the stack) and accumulates
//! `∂loss/∂leaf` into every leaf that requires a gradient, with `+=`.
//!
//! Every op lives in one place under [`ops`]: a forward function first, then the struct that
//! remembers what the backward needs and implements [`Backward`]; the doc comment states the
//! derivative. Two tiers:
//! - **primitives** (add, mul, exp, sum, matmul, reshape, …) with one-line backward rules;
//! - **fused ops** (softmax, cross-entropy, layer norm, attention, …) whose backward is derived
//!   by hand and runs a dedicated kernel. Each has a twin built only from primitives in
//!   [`composite`], and the tests check that both agree, forward and backward.
//!
//! Inside a [`no_grad`] scope nothing is recorded, so one model code path serves training and
//! inference. [`gradcheck`] compares analytic gradients with central finite differences.

pub mod composite;
pub mod gradcheck;
pub mod ops;
pub mod profile;
mod var;

pub use ops::{AttentionOpts, Frozen, LoraOpts, RopeOpts};
pub use var::{is_grad_enabled, no_grad, Backward, NoGradGuard, Var};
pub use yuanli_tensor::{DType, GeluKind, Rng, RopeFreqs, RopeLayout, Tensor};
