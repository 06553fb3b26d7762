//! Matrix multiplication through the `gemm` crate.
//!
//! `gemm` takes a row stride and a column stride for every operand, so a transposed view
//! (`b.t()`) costs nothing: `A·Bᵀ` with weights stored `[out, in]` runs as fast as `A·B`. It
//! picks AVX-512 / AVX2 / scalar micro-kernels at run time from the CPU's features (AVX-512
//! only when built with the `gemm-avx512` feature: [`gemm_level`]).

use super::pool::SpinPool;
use crate::dtype::Float;
use std::any::TypeId;
use std::sync::{Mutex, MutexGuard, OnceLock, TryLockError};

/// The micro-kernels `gemm` runs on this CPU for f32 products: `"avx512"` (built with the
/// `gemm-avx512` feature, CPU with AVX-512F), `"avx2"` (FMA), else `"portable"`. `YUANLI_SIMD`
/// does not cap them: build without the feature for that.
pub fn gemm_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(feature = "gemm-avx512") && std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("fma") {
            return "avx2";
        }
    }
    "portable"
}

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
/// With B's rows contiguous (`cs = 1`) each thread streams one contiguous block of rows of B
/// (the hardware prefetcher's favourite pattern) into `out` or a partial sum, and the partial
/// sums are added; with B's columns contiguous (`rs = 1`, i.e. a weight stored `[out, in]` and
/// used transposed) each thread takes a band of outputs, each a dot product of two contiguous
/// vectors. Both read B exactly once: the kernel runs at memory bandwidth. The threads are the
/// spinning team when it is free: a GEMV lasts tens of microseconds and a parked rayon worker
/// takes 5–50 µs to wake on a VM (measured on 1×768×3072: 0.88 of OpenBLAS's speed with rayon,
/// 0.98 on the team).
pub fn gemv<T: Float>(out: &mut [T], a: &[T], b: &[T], bm: MatRef, k: usize, threads: usize) {
    use rayon::prelude::*;
    assert!(bm.cs == 1 || bm.rs == 1, "gemv: B needs contiguous rows or columns, strides {bm:?}");
    let n = out.len();
    // `o += Σ_{p0 ≤ p < p1} a[p]·B[p, ..]`, four rows of B per pass.
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
    // `o[j] = a · B[.., c0 + j]`.
    let dots = |o: &mut [T], c0: usize| {
        for (j, v) in o.iter_mut().enumerate() {
            let start = bm.off + (c0 + j) * bm.cs;
            *v = T::dot(a, &b[start..start + k]);
        }
    };
    let parallel = threads > 1 && k * n >= 1 << 16;
    let team = if parallel { team(threads) } else { None };
    let tasks = team.as_ref().map_or(threads, |t| t.threads());
    if bm.cs == 1 {
        out.fill(T::ZERO);
        if !parallel {
            return accumulate_rows(out, 0, k);
        }
        // Task 0 sums into `out`, task t > 0 into partial t − 1.
        let per = k.div_ceil(tasks).next_multiple_of(4);
        let mut partials = vec![T::ZERO; (tasks - 1) * n];
        let rows = |t: usize| ((t * per).min(k), ((t + 1) * per).min(k));
        if let Some(team) = &team {
            let mut slots: Vec<Mutex<&mut [T]>> = vec![Mutex::new(&mut out[..])];
            slots.extend(partials.chunks_mut(n).map(Mutex::new));
            team.run(&|t| {
                if let Some(slot) = slots.get(t) {
                    let mut o = slot.lock().unwrap_or_else(|e| e.into_inner());
                    let (p0, p1) = rows(t);
                    accumulate_rows(&mut o, p0, p1);
                }
            });
        } else {
            let (first, rest) = (&mut out[..], &mut partials[..]);
            rayon::join(
                || accumulate_rows(first, rows(0).0, rows(0).1),
                || {
                    rest.par_chunks_mut(n)
                        .enumerate()
                        .for_each(|(i, o)| accumulate_rows(o, rows(i + 1).0, rows(i + 1).1))
                },
            );
        }
        for p in partials.chunks(n) {
            T::axpy(out, T::ONE, p);
        }
    } else {
        let band = if parallel { n.div_ceil(tasks).next_multiple_of(16) } else { n.max(1) };
        if let Some(team) = &team {
            let bands: Vec<Mutex<(usize, &mut [T])>> =
                out.chunks_mut(band).enumerate().map(|(i, o)| Mutex::new((i * band, o))).collect();
            team.run(&|t| {
                if let Some(slot) = bands.get(t) {
                    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
                    let (c0, ref mut o) = *slot;
                    dots(o, c0);
                }
            });
        } else if parallel {
            out.par_chunks_mut(band).enumerate().for_each(|(i, o)| dots(o, i * band));
        } else {
            dots(out, 0);
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

/// Runs `f` with the spinning [`team`] when no other caller holds it, else with a team of one
/// (the calling thread alone). The inference engine runs a whole forward step this way: one
/// caller at a time gets every core, and concurrent callers (other threads decoding other
/// sequences) still make progress on their own thread instead of waiting.
pub fn with_team<R>(f: impl FnOnce(&SpinPool) -> R) -> R {
    static ALONE: OnceLock<SpinPool> = OnceLock::new();
    match team(crate::num_threads()) {
        Some(team) => f(&team),
        None => f(ALONE.get_or_init(|| SpinPool::new(1))),
    }
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
