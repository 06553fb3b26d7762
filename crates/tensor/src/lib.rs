//! # yuanli-tensor — n-dimensional arrays and the kernels that move them
//!
//! A [`Tensor`] is a strided view (shape, strides, offset) over a shared, reference-counted
//! buffer ([`Storage`]). Views — [`Tensor::reshape`] of contiguous data, [`Tensor::permute`],
//! [`Tensor::narrow`], [`Tensor::broadcast_as`] — never copy; [`Tensor::contiguous`]
//! materialises. Compute happens in f32 (the working precision) or f64 (gradient checks and
//! lessons); f16/bf16 are storage formats and u32 holds token ids.
//!
//! This crate knows nothing about gradients, layers, tokens or files. Kernels live in [`cpu`]
//! as free functions over slices with explicit dimensions (`*_forward` above `*_backward`,
//! llm.c style), so that they can be read, tested against their naive twins, and benchmarked
//! on their own.
//!
//! Error policy: a shape, dtype or device mismatch inside tensor math is a programmer error and
//! panics with `#[track_caller]` and a message naming the op and every shape involved. Anything
//! that comes from outside (a buffer of the wrong length, a CUDA device that is not compiled
//! in) returns [`Error`].

pub mod cpu;
mod device;
mod dtype;
mod error;
mod layout;
mod ops;
pub mod quant;
mod rng;
mod storage;
mod tensor;
mod threads;

pub use cpu::{GeluKind, RopeFreqs, RopeLayout};
pub use device::{cuda_is_available, Device};
pub use dtype::{DType, Element, Float};
pub use error::{Error, Result};
pub use half::{bf16, f16};
pub use layout::Layout;
pub use ops::{AttentionOutput, NormStats};
pub use quant::{QMatrix, QuantType};
pub use rng::Rng;
pub use storage::{CpuStorage, Storage};
pub use tensor::Tensor;
pub use threads::{init_threads, num_threads, run_in_pool, THREADS_ENV};
