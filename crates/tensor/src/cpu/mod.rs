//! CPU kernels: free functions over slices with explicit dimensions.
//!
//! Conventions (llm.c): shapes are documented as `(B, T, C)`; `*_forward` sits above
//! `*_backward`; backward kernels *accumulate* (`+=`) into gradient buffers unless their doc
//! says `=`. Each fast kernel has a naive twin (or a composite reference in autograd) that the
//! tests compare it with. Large loops run on rayon's global pool (see [`crate::init_threads`]).

mod activation;
mod alloc;
mod attention;
pub mod bf16gemm;
mod elementwise;
mod index;
mod matmul;
mod norm;
mod optim;
pub mod pool;
pub mod qmatmul;
mod reduce;
mod rope;
pub mod simd;
mod softmax;

pub use activation::*;
pub use alloc::*;
pub use attention::*;
pub use elementwise::*;
pub use index::*;
pub use matmul::*;
pub use norm::*;
pub use optim::*;
pub use pool::SpinPool;
pub use qmatmul::{qmatmul, QuantizedActs};
pub use reduce::*;
pub use rope::*;
pub use softmax::*;

/// Below this many elements a loop runs on the calling thread. Handing work to another thread
/// costs 5–50 µs on a VM (a parked worker must be woken), more than an elementwise pass over
/// 100 k floats takes; raising this from 2¹⁵ to 2¹⁷ took the baby GPT's training step from a
/// noisy 41–62 ms to a steady 41–43 ms, with no change on larger models.
pub const PAR_MIN_ELEMS: usize = 1 << 17;

/// Rows per parallel task so that each task touches at least [`PAR_MIN_ELEMS`] elements.
pub(crate) fn rows_per_task(rows: usize, row_len: usize) -> usize {
    let per = PAR_MIN_ELEMS.div_ceil(row_len.max(1)).max(1);
    let tasks = crate::num_threads() * 4;
    per.max(rows.div_ceil(tasks.max(1))).max(1)
}
