//! LayerNorm and RMSNorm over the last axis of `(N, C)` rows.
//!
//! Derivations: docs/book, "Normalisation layers". Forward caches `mean` and `rstd` per row
//! (`(N,)` buffers) for the backward pass, as llm.c does.

use super::matmul::team_for_each;
use super::rows_per_task;
use crate::dtype::Float;
use rayon::prelude::*;
use std::sync::Mutex;

/// Independent partial sums per row reduction. One running sum makes every add wait for the
/// previous one (a 4-cycle latency chain); `LANES` of them fill vector registers instead.
const LANES: usize = 16;

/// `Σ f(a[i], b[i])` over equal-length rows, in [`LANES`] partial sums added at the end.
#[inline(always)]
fn lane_sum<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    let mut acc = [T::ZERO; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail = ca.remainder().iter().zip(cb.remainder()).fold(T::ZERO, |s, (&x, &y)| s + f(x, y));
    for (xa, xb) in ca.zip(cb) {
        for ((acc, &x), &y) in acc.iter_mut().zip(xa).zip(xb) {
            *acc += f(x, y);
        }
    }
    acc.iter().fold(tail, |s, &v| s + v)
}

/// `Σ f(a[i], b[i], c[i])` over equal-length rows, in [`LANES`] partial sums.
#[inline(always)]
fn lane_sum3<T: Float>(a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> T) -> T {
    let mut acc = [T::ZERO; LANES];
    let (ca, cb, cc) = (a.chunks_exact(LANES), b.chunks_exact(LANES), c.chunks_exact(LANES));
    let rest = ca.remainder().iter().zip(cb.remainder()).zip(cc.remainder());
    let tail = rest.fold(T::ZERO, |s, ((&x, &y), &z)| s + f(x, y, z));
    for ((xa, xb), xc) in ca.zip(cb).zip(cc) {
        for (((acc, &x), &y), &z) in acc.iter_mut().zip(xa).zip(xb).zip(xc) {
            *acc += f(x, y, z);
        }
    }
    acc.iter().fold(tail, |s, &v| s + v)
}

/// LayerNorm: `y = (x − μ)·rstd·w + b`, `μ = mean(x)`, `rstd = 1/√(var(x) + ε)` (biased var).
///
/// Writes `out` (`=`), `mean` and `rstd` (`(N,)`, `=`).
pub fn layernorm_forward<T: Float>(
    out: &mut [T],
    mean: &mut [T],
    rstd: &mut [T],
    inp: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    c: usize,
    eps: T,
) {
    let n = inp.len() / c;
    let per = team_rows_per_task(n, c);
    let inv_c = T::ONE / T::from_f64(c as f64);
    let tasks: Vec<_> =
        out.chunks_mut(per * c).zip(mean.chunks_mut(per).zip(rstd.chunks_mut(per))).enumerate().collect();
    team_for_each(tasks, |(ci, (o, (mu, rs)))| {
        for r in 0..mu.len() {
            let row = ci * per + r;
            let x = &inp[row * c..(row + 1) * c];
            let m = lane_sum(x, x, |v, _| v) * inv_c;
            let var = lane_sum(x, x, |v, _| (v - m) * (v - m)) * inv_c;
            let s = T::ONE / (var + eps).sqrt();
            let y = &mut o[r * c..(r + 1) * c];
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(weight) {
                *y = (x - m) * s * w;
            }
            if let Some(b) = bias {
                for (y, &b) in y.iter_mut().zip(b) {
                    *y += b;
                }
            }
            mu[r] = m;
            rs[r] = s;
        }
    });
}

/// LayerNorm of one row: writes `y = (x − μ)·rstd·w + b` (the inference engine's, token by
/// token; the same arithmetic as [`layernorm_forward`]).
#[inline]
pub fn layernorm_row<T: Float>(y: &mut [T], x: &[T], weight: &[T], bias: Option<&[T]>, eps: T) {
    let inv_c = T::ONE / T::from_f64(x.len() as f64);
    let m = lane_sum(x, x, |v, _| v) * inv_c;
    let var = lane_sum(x, x, |v, _| (v - m) * (v - m)) * inv_c;
    let s = T::ONE / (var + eps).sqrt();
    for ((y, &x), &w) in y.iter_mut().zip(x).zip(weight) {
        *y = (x - m) * s * w;
    }
    if let Some(b) = bias {
        for (y, &b) in y.iter_mut().zip(b) {
            *y += b;
        }
    }
}

/// Sums per-task partial parameter gradients: `(rows, c)` tasks each produce `(k, c)` vectors.
fn par_rows_with_partials<T: Float>(
    n: usize,
    c: usize,
    k: usize,
    dinp: &mut [T],
    body: impl Fn(usize, &mut [T], &mut [T]) + Sync,
) -> Vec<T> {
    let per = team_rows_per_task(n, c);
    let partials: Vec<Mutex<Vec<T>>> = (0..n.div_ceil(per)).map(|_| Mutex::new(Vec::new())).collect();
    team_for_each(dinp.chunks_mut(per * c).enumerate().collect(), |(ci, dx)| {
        let mut acc = vec![T::ZERO; k * c];
        for (r, dx_row) in dx.chunks_mut(c).enumerate() {
            body(ci * per + r, dx_row, &mut acc);
        }
        *partials[ci].lock().unwrap_or_else(|e| e.into_inner()) = acc;
    });
    // Summed in task order, so the result does not depend on which thread ran which task.
    let mut total = vec![T::ZERO; k * c];
    for p in partials {
        for (t, v) in total.iter_mut().zip(p.into_inner().unwrap_or_else(|e| e.into_inner())) {
            *t += v;
        }
    }
    total
}

/// Rows per task for the LayerNorm kernels and the norms' backward: at least 2¹⁴ elements and
/// at most 8 tasks. The spinning team pays no wake-up per task, so rows far below
/// [`super::PAR_MIN_ELEMS`] (rayon's threshold) are worth splitting.
fn team_rows_per_task(rows: usize, c: usize) -> usize {
    (1usize << 14).div_ceil(c.max(1)).max(rows.div_ceil(8)).max(1)
}

/// LayerNorm backward (accumulates `+=` into `dinp`, `dweight`, `dbias`).
///
/// With `n̂ = (x − μ)·rstd` and `g = dy ⊙ w`:
/// `dx = rstd · (g − mean(g) − n̂ · mean(g ⊙ n̂))`, `dw = Σ_rows dy ⊙ n̂`, `db = Σ_rows dy`.
pub fn layernorm_backward<T: Float>(
    dinp: &mut [T],
    dweight: &mut [T],
    dbias: Option<&mut [T]>,
    dout: &[T],
    inp: &[T],
    weight: &[T],
    mean: &[T],
    rstd: &[T],
    c: usize,
) {
    let n = inp.len() / c;
    let inv_c = T::ONE / T::from_f64(c as f64);
    let total = par_rows_with_partials(n, c, 2, dinp, |row, dx, acc| {
        let x = &inp[row * c..(row + 1) * c];
        let dy = &dout[row * c..(row + 1) * c];
        let (m, s) = (mean[row], rstd[row]);
        // Two reductions over the row: mean(g) and mean(g ⊙ n̂).
        let dnorm_mean = lane_sum(dy, weight, |d, w| d * w) * inv_c;
        let dnorm_norm_mean = lane_sum3(dy, weight, x, |d, w, x| d * w * ((x - m) * s)) * inv_c;
        let (dw, db) = acc.split_at_mut(c);
        for i in 0..c {
            let norm = (x[i] - m) * s;
            let g = dy[i] * weight[i];
            db[i] += dy[i]; // term for the bias
            dw[i] += dy[i] * norm; // term for the weight
            dx[i] += s * (g - dnorm_mean - norm * dnorm_norm_mean); // terms 1, 2, 3
        }
    });
    for (d, v) in dweight.iter_mut().zip(&total[..c]) {
        *d += *v;
    }
    if let Some(db) = dbias {
        for (d, v) in db.iter_mut().zip(&total[c..]) {
            *d += *v;
        }
    }
}

/// RMSNorm: `y = x · rstd · w`, `rstd = 1/√(mean(x²) + ε)`. Writes `out` and `rstd` (`=`).
pub fn rmsnorm_forward<T: Float>(out: &mut [T], rstd: &mut [T], inp: &[T], weight: &[T], c: usize, eps: T) {
    let n = inp.len() / c;
    let per = rows_per_task(n, c);
    out.par_chunks_mut(per * c).zip(rstd.par_chunks_mut(per)).enumerate().for_each(|(ci, (o, rs))| {
        for r in 0..rs.len() {
            let row = ci * per + r;
            rs[r] = rmsnorm_row(&mut o[r * c..(r + 1) * c], &inp[row * c..(row + 1) * c], weight, eps);
        }
    });
}

/// RMSNorm of one row: writes `y = x · rstd · w` and returns `rstd` (the inference engine
/// calls it token by token; [`rmsnorm_forward`] row by row).
#[inline]
pub fn rmsnorm_row<T: Float>(y: &mut [T], x: &[T], weight: &[T], eps: T) -> T {
    let ms = lane_sum(x, x, |v, _| v * v) / T::from_f64(x.len() as f64);
    let s = T::ONE / (ms + eps).sqrt();
    for ((y, &x), &w) in y.iter_mut().zip(x).zip(weight) {
        *y = x * s * w;
    }
    s
}

/// RMSNorm backward (accumulates). With `n̂ = x·rstd`, `g = dy ⊙ w`:
/// `dx = rstd · (g − n̂ · mean(g ⊙ n̂))`, `dw = Σ_rows dy ⊙ n̂`.
pub fn rmsnorm_backward<T: Float>(
    dinp: &mut [T],
    dweight: &mut [T],
    dout: &[T],
    inp: &[T],
    weight: &[T],
    rstd: &[T],
    c: usize,
) {
    let n = inp.len() / c;
    let inv_c = T::ONE / T::from_f64(c as f64);
    let total = par_rows_with_partials(n, c, 1, dinp, |row, dx, dw| {
        let x = &inp[row * c..(row + 1) * c];
        let dy = &dout[row * c..(row + 1) * c];
        let s = rstd[row];
        let mut gn = T::ZERO;
        for i in 0..c {
            gn += dy[i] * weight[i] * x[i] * s;
        }
        gn *= inv_c;
        for i in 0..c {
            let norm = x[i] * s;
            dw[i] += dy[i] * norm;
            dx[i] += s * (dy[i] * weight[i] - norm * gn);
        }
    });
    for (d, v) in dweight.iter_mut().zip(&total) {
        *d += *v;
    }
}
