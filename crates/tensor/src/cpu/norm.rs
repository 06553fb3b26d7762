//! LayerNorm and RMSNorm over the last axis of `(N, C)` rows.
//!
//! Derivations: docs/book, "Normalisation layers". Forward caches `mean` and `rstd` per row
//! (`(N,)` buffers) for the backward pass, as llm.c does.

use super::rows_per_task;
use crate::dtype::Float;
use rayon::prelude::*;

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
    let per = rows_per_task(n, c);
    let inv_c = T::ONE / T::from_f64(c as f64);
    out.par_chunks_mut(per * c).zip(mean.par_chunks_mut(per).zip(rstd.par_chunks_mut(per))).enumerate().for_each(
        |(ci, (o, (mu, rs)))| {
            for r in 0..mu.len() {
                let row = ci * per + r;
                let x = &inp[row * c..(row + 1) * c];
                let m = x.iter().copied().sum::<T>() * inv_c;
                let var = x.iter().map(|&v| (v - m) * (v - m)).sum::<T>() * inv_c;
                let s = T::ONE / (var + eps).sqrt();
                let y = &mut o[r * c..(r + 1) * c];
                for i in 0..c {
                    let norm = (x[i] - m) * s;
                    y[i] = norm * weight[i] + bias.map_or(T::ZERO, |b| b[i]);
                }
                mu[r] = m;
                rs[r] = s;
            }
        },
    );
}

/// Sums per-task partial parameter gradients: `(rows, c)` tasks each produce `(k, c)` vectors.
fn par_rows_with_partials<T: Float>(
    n: usize,
    c: usize,
    k: usize,
    dinp: &mut [T],
    body: impl Fn(usize, &mut [T], &mut [T]) + Sync,
) -> Vec<T> {
    let per = rows_per_task(n, c);
    let partials: Vec<Vec<T>> = dinp
        .par_chunks_mut(per * c)
        .enumerate()
        .map(|(ci, dx)| {
            let mut acc = vec![T::ZERO; k * c];
            for (r, dx_row) in dx.chunks_mut(c).enumerate() {
                body(ci * per + r, dx_row, &mut acc);
            }
            acc
        })
        .collect();
    let mut total = vec![T::ZERO; k * c];
    for p in partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
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
        let mut dnorm_mean = T::ZERO;
        let mut dnorm_norm_mean = T::ZERO;
        for i in 0..c {
            let norm = (x[i] - m) * s;
            let g = dy[i] * weight[i];
            dnorm_mean += g;
            dnorm_norm_mean += g * norm;
        }
        dnorm_mean *= inv_c;
        dnorm_norm_mean *= inv_c;
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
    let inv_c = T::ONE / T::from_f64(c as f64);
    out.par_chunks_mut(per * c).zip(rstd.par_chunks_mut(per)).enumerate().for_each(|(ci, (o, rs))| {
        for r in 0..rs.len() {
            let row = ci * per + r;
            let x = &inp[row * c..(row + 1) * c];
            let ms = x.iter().map(|&v| v * v).sum::<T>() * inv_c;
            let s = T::ONE / (ms + eps).sqrt();
            for (i, y) in o[r * c..(r + 1) * c].iter_mut().enumerate() {
                *y = x[i] * s * weight[i];
            }
            rs[r] = s;
        }
    });
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
