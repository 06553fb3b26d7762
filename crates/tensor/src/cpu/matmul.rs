//! Matrix multiplication through the `gemm` crate.
//!
//! `gemm` takes a row stride and a column stride for every operand, so a transposed view
//! (`b.t()`) costs nothing: `A·Bᵀ` with weights stored `[out, in]` runs as fast as `A·B`. It
//! picks AVX-512 / AVX2 / scalar micro-kernels at run time from the CPU's features.

use super::pool::SpinPool;
use crate::dtype::Float;
use std::any::TypeId;
use std::sync::{Mutex, MutexGuard, OnceLock, TryLockError};

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
/// `threads > 1` splits a large product by rows over the spinning team (or, when another
/// caller holds the team, lets `gemm` split it over rayon's pool); pass 1 inside a parallel loop.
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
    if m == 1 && (bm.cs == 1 || bm.rs == 1) {
        // One row (decode): memory-bound, a dedicated GEMV beats a GEMM's packing.
        let row: Vec<T> = (0..k).map(|p| a[am.off + p * am.cs]).collect();
        let dst = &mut dst[..n];
        if accumulate {
            let mut tmp = vec![T::ZERO; n];
            gemv(&mut tmp, &row, b, bm, k, threads);
            for (d, t) in dst.iter_mut().zip(tmp) {
                *d += alpha * t;
            }
        } else {
            gemv(dst, &row, b, bm, k, threads);
            if alpha != T::ONE {
                T::scale_slice(dst, alpha);
            }
        }
        return;
    }
    if threads > 1 && m >= 2 * TEAM_ROW_ALIGN && m * n * k >= TEAM_MIN_MACS {
        if let Some(team) = team(threads) {
            // Each thread of the team takes a band of rows: `dst`'s bands are disjoint, `a`'s
            // bands are read-only views, and all bands share `b`.
            let per = m.div_ceil(team.threads()).next_multiple_of(TEAM_ROW_ALIGN);
            let mut bands = Vec::with_capacity(team.threads());
            let mut rest = &mut dst[..];
            let mut r0 = 0;
            while r0 < m {
                let rows = per.min(m - r0);
                let (band, tail) = if r0 + rows < m { rest.split_at_mut(rows * dst_rs) } else { (rest, &mut [][..]) };
                bands.push(Mutex::new((r0, rows, band)));
                rest = tail;
                r0 += rows;
            }
            team.run(&|i| {
                if let Some(band) = bands.get(i) {
                    let mut band = band.lock().unwrap_or_else(|e| e.into_inner());
                    let (r0, rows, ref mut d) = *band;
                    let am = MatRef { off: am.off + r0 * am.rs, ..am };
                    gemm_into(rows, k, n, d, dst_rs, accumulate, a, am, b, bm, alpha, 1);
                }
            });
            return;
        }
    }
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

/// `out (N) = a (K) · B (K, N)`, the single-row product of decoding (`=` into `out`).
///
/// With B's rows contiguous (`cs = 1`) each task owns a band of columns and streams
/// `out_band += a[p]·B[p, band]` over `p`; with B's columns contiguous (`rs = 1`, i.e. a
/// weight stored `[out, in]` and used transposed) each output is a dot product of two
/// contiguous vectors. Both read B exactly once: the kernel runs at memory bandwidth.
pub fn gemv<T: Float>(out: &mut [T], a: &[T], b: &[T], bm: MatRef, k: usize, threads: usize) {
    use rayon::prelude::*;
    let n = out.len();
    let band = if threads > 1 { n.div_ceil(threads).max(256) } else { n.max(1) };
    if bm.cs == 1 {
        // Rows of B are contiguous: split K so that each task streams one contiguous block of
        // rows (the hardware prefetcher's favourite pattern), then add the partial sums.
        let accumulate_rows = |o: &mut [T], p0: usize, p1: usize| {
            let row = |p: usize| &b[bm.off + p * bm.rs..bm.off + p * bm.rs + n];
            let mut p = p0;
            while p + 4 <= p1 {
                T::axpy4(o, [a[p], a[p + 1], a[p + 2], a[p + 3]], row(p), row(p + 1), row(p + 2), row(p + 3));
                p += 4;
            }
            for p in p..p1 {
                T::axpy(o, a[p], row(p));
            }
        };
        out.fill(T::ZERO);
        if threads > 1 && k * n >= 1 << 16 {
            let per = k.div_ceil(threads).next_multiple_of(4);
            let partials: Vec<Vec<T>> = (0..threads)
                .into_par_iter()
                .map(|t| {
                    let mut o = vec![T::ZERO; n];
                    accumulate_rows(&mut o, (t * per).min(k), ((t + 1) * per).min(k));
                    o
                })
                .collect();
            for p in partials {
                T::axpy(out, T::ONE, &p);
            }
        } else {
            accumulate_rows(out, 0, k);
        }
    } else {
        let body = |(ci, o): (usize, &mut [T])| {
            for (jj, v) in o.iter_mut().enumerate() {
                let start = bm.off + (ci * band + jj) * bm.cs;
                *v = T::dot(a, &b[start..start + k]);
            }
        };
        if threads > 1 {
            out.par_chunks_mut(band).enumerate().for_each(body);
        } else {
            out.chunks_mut(band).enumerate().for_each(body);
        }
    }
}

/// Products with at least this many multiply-adds are split over the [`team`].
const TEAM_MIN_MACS: usize = 1 << 20;
/// Row bands of a split product are multiples of this (a multiple of every micro-kernel's
/// row count, so no band ends in a partial register tile).
const TEAM_ROW_ALIGN: usize = 32;

/// The spinning thread team that splits large products by rows, if no other caller holds it.
///
/// `gemm`'s own `Rayon` mode hands half of each product to rayon's pool, whose idle workers
/// park after a few microseconds. A training step alternates matmuls with serial work (norms,
/// attention, the optimizer), so each matmul found the other worker asleep, paid a wake-up
/// and often finished before the worker arrived: the second core sat idle. A [`SpinPool`]
/// spins for milliseconds between jobs, which spans those gaps.
fn team(threads: usize) -> Option<MutexGuard<'static, SpinPool>> {
    static TEAM: OnceLock<Mutex<SpinPool>> = OnceLock::new();
    let team = match TEAM.get_or_init(|| Mutex::new(SpinPool::new(crate::num_threads()))).try_lock() {
        Ok(team) => team,
        // A job that panicked poisons the lock but leaves the team usable.
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => return None,
    };
    (team.threads() > 1 && team.threads() <= threads).then_some(team)
}

/// Calls `body` on every item, the items dealt round-robin to the threads of the spinning
/// team (a [`SpinPool`] of [`crate::num_threads`] threads) when it is free (no wake-ups between the many short kernels of a training step),
/// else spread over rayon's pool. Items are independent tasks: disjoint output chunks.
pub fn team_for_each<I: Send>(items: Vec<I>, body: impl Fn(I) + Sync + Send) {
    if items.len() <= 1 {
        return items.into_iter().for_each(body);
    }
    let threads = crate::num_threads();
    if threads > 1 {
        if let Some(team) = team(threads) {
            let n = team.threads();
            let items: Vec<Mutex<Option<I>>> = items.into_iter().map(|i| Mutex::new(Some(i))).collect();
            team.run(&|t| {
                for slot in items.iter().skip(t).step_by(n) {
                    if let Some(item) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        body(item);
                    }
                }
            });
            return;
        }
    }
    use rayon::prelude::*;
    items.into_par_iter().for_each(body);
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
