//! Matrix multiplication through the `gemm` crate.
//!
//! `gemm` takes a row stride and a column stride for every operand, so a transposed view
//! (`b.t()`) costs nothing: `A·Bᵀ` with weights stored `[out, in]` runs as fast as `A·B`. It
//! picks AVX-512 / AVX2 / scalar micro-kernels at run time from the CPU's features.

use crate::dtype::Float;
use std::any::TypeId;

/// A strided matrix operand: element `(i, j)` is `data[off + i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef {
    /// Offset of element (0, 0).
    pub off: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

/// `dst = beta·dst + alpha·(a · b)` for one `(M, K) · (K, N)` product; `dst` is `(M, N)` with
/// row stride `dst_rs`, column stride 1. With `accumulate = false`, `dst` is overwritten.
///
/// `threads > 1` lets `gemm` split the work over rayon's pool; pass 1 inside a parallel loop.
pub fn gemm_into<T: Float>(
    m: usize,
    k: usize,
    n: usize,
    dst: &mut [T],
    dst_rs: usize,
    accumulate: bool,
    a: &[T],
    am: MatRef,
    b: &[T],
    bm: MatRef,
    alpha: T,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst.len() >= (m - 1) * dst_rs + n, "gemm_into: dst too small");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                dst[i * dst_rs..i * dst_rs + n].fill(T::ZERO);
            }
        }
        return;
    }
    let last = |mr: MatRef, r: usize, c: usize| mr.off + (r - 1) * mr.rs + (c - 1) * mr.cs;
    assert!(last(am, m, k) < a.len() && last(bm, k, n) < b.len(), "gemm_into: operand view out of bounds");
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: all pointers are derived from live slices; the asserts above check that every
    // index the strides reach, (m-1, k-1) for `a`, (k-1, n-1) for `b` and (m-1, n-1) for `dst`,
    // lies inside its slice; `dst` is borrowed mutably so it cannot alias `a` or `b`.
    // T is f32 or f64 (the only `Float` types), which `gemm` supports.
    unsafe {
        debug_assert!(TypeId::of::<T>() == TypeId::of::<f32>() || TypeId::of::<T>() == TypeId::of::<f64>());
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.as_ptr().add(am.off),
            am.cs as isize,
            am.rs as isize,
            b.as_ptr().add(bm.off),
            bm.cs as isize,
            bm.rs as isize,
            T::ONE,
            alpha,
            false,
            false,
            false,
            par,
        );
    }
}

/// The textbook triple loop, the reference the fast path is tested against.
pub fn matmul_naive<T: Float>(m: usize, k: usize, n: usize, a: &[T], am: MatRef, b: &[T], bm: MatRef) -> Vec<T> {
    let mut out = vec![T::ZERO; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = T::ZERO;
            for p in 0..k {
                acc += a[am.off + i * am.rs + p * am.cs] * b[bm.off + p * bm.rs + j * bm.cs];
            }
            out[i * n + j] = acc;
        }
    }
    out
}
