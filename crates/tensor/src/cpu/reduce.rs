//! Reductions along one axis of a contiguous tensor viewed as `(outer, n, inner)`.

use crate::dtype::Float;
use rayon::prelude::*;

/// Which reduction to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Σ
    Sum,
    /// max (NaN propagates)
    Max,
    /// min (NaN propagates)
    Min,
}

/// Reduces `x` of shape `(outer, n, inner)` over the middle axis into `(outer, inner)`.
///
/// Sums accumulate in `T` pairwise over blocks of rows (each inner position sums its column
/// in order, which keeps results deterministic regardless of thread count).
pub fn reduce_axis<T: Float>(x: &[T], outer: usize, n: usize, inner: usize, op: ReduceOp) -> Vec<T> {
    assert_eq!(x.len(), outer * n * inner);
    let init = match op {
        ReduceOp::Sum => T::ZERO,
        ReduceOp::Max => T::NEG_INFINITY,
        ReduceOp::Min => -T::NEG_INFINITY,
    };
    let mut out = vec![init; outer * inner];
    let combine = |acc: T, v: T| match op {
        ReduceOp::Sum => acc + v,
        ReduceOp::Max => acc.max(v),
        ReduceOp::Min => acc.min(v),
    };
    let body = |o: usize, dst: &mut [T]| {
        let base = &x[o * n * inner..(o + 1) * n * inner];
        if inner == 1 {
            // Reduce a contiguous row: several accumulators let the compiler vectorise.
            let mut acc = [init; 8];
            let chunks = base.chunks_exact(8);
            let rem = chunks.remainder();
            for c in chunks {
                for k in 0..8 {
                    acc[k] = combine(acc[k], c[k]);
                }
            }
            let mut r = init;
            for a in acc {
                r = combine(r, a);
            }
            for &v in rem {
                r = combine(r, v);
            }
            dst[0] = r;
        } else {
            for j in 0..n {
                let row = &base[j * inner..(j + 1) * inner];
                for (d, &v) in dst.iter_mut().zip(row) {
                    *d = combine(*d, v);
                }
            }
        }
    };
    if x.len() < super::PAR_MIN_ELEMS || inner == 0 {
        for (o, dst) in out.chunks_mut(inner.max(1)).enumerate().take(outer) {
            body(o, dst);
        }
    } else {
        out.par_chunks_mut(inner.max(1)).enumerate().for_each(|(o, dst)| body(o, dst));
    }
    out
}

/// Index of the maximum along the middle axis of `(outer, n, inner)` (first one on ties).
pub fn argmax_axis<T: Float>(x: &[T], outer: usize, n: usize, inner: usize) -> Vec<u32> {
    let mut out = vec![0u32; outer * inner];
    for o in 0..outer {
        for i in 0..inner {
            let mut best = T::NEG_INFINITY;
            let mut arg = 0;
            for j in 0..n {
                let v = x[(o * n + j) * inner + i];
                if j == 0 || v > best {
                    best = v;
                    arg = j;
                }
            }
            out[o * inner + i] = arg as u32;
        }
    }
    out
}
