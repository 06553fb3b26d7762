//! Softmax and log-softmax over the last axis of `(N, C)` rows.

use super::rows_per_task;
use crate::dtype::Float;
use rayon::prelude::*;

fn row_max<T: Float>(x: &[T]) -> T {
    T::max_slice(x)
}

/// `out_i = exp(x_i − max x) / Σ_j exp(x_j − max x)` for each row of length `c` (`=` into out).
pub fn softmax_forward<T: Float>(out: &mut [T], inp: &[T], c: usize) {
    let per = rows_per_task(inp.len() / c.max(1), c);
    out.par_chunks_mut(per * c).zip(inp.par_chunks(per * c)).for_each(|(o, x)| {
        for (o, x) in o.chunks_mut(c).zip(x.chunks(c)) {
            let m = row_max(x);
            let m = if m == T::NEG_INFINITY { T::ZERO } else { m };
            o.copy_from_slice(x);
            let sum = T::exp_sub_sum(o, m);
            T::scale_slice(o, if sum > T::ZERO { T::ONE / sum } else { T::ZERO });
        }
    });
}

/// Given `y = softmax(x)`: `dx_i += y_i (dy_i − Σ_j dy_j y_j)`.
pub fn softmax_backward<T: Float>(dinp: &mut [T], dout: &[T], out: &[T], c: usize) {
    let per = rows_per_task(out.len() / c.max(1), c);
    dinp.par_chunks_mut(per * c).zip(dout.par_chunks(per * c).zip(out.par_chunks(per * c))).for_each(
        |(dx, (dy, y))| {
            for (dx, (dy, y)) in dx.chunks_mut(c).zip(dy.chunks(c).zip(y.chunks(c))) {
                let dot: T = dy.iter().zip(y).map(|(&a, &b)| a * b).sum();
                for ((dx, &dy), &y) in dx.iter_mut().zip(dy).zip(y) {
                    *dx += y * (dy - dot);
                }
            }
        },
    );
}

/// `out_i = x_i − max x − ln Σ_j exp(x_j − max x)` (`=` into out).
pub fn log_softmax_forward<T: Float>(out: &mut [T], inp: &[T], c: usize) {
    let per = rows_per_task(inp.len() / c.max(1), c);
    out.par_chunks_mut(per * c).zip(inp.par_chunks(per * c)).for_each(|(o, x)| {
        for (o, x) in o.chunks_mut(c).zip(x.chunks(c)) {
            let m = row_max(x);
            let m = if m == T::NEG_INFINITY { T::ZERO } else { m };
            o.copy_from_slice(x);
            let lse = T::exp_sub_sum(o, m).ln() + m;
            for (o, &v) in o.iter_mut().zip(x) {
                *o = v - lse;
            }
        }
    });
}

/// Given `y = log_softmax(x)`: `dx_i += dy_i − exp(y_i) Σ_j dy_j`.
pub fn log_softmax_backward<T: Float>(dinp: &mut [T], dout: &[T], out: &[T], c: usize) {
    let per = rows_per_task(out.len() / c.max(1), c);
    dinp.par_chunks_mut(per * c).zip(dout.par_chunks(per * c).zip(out.par_chunks(per * c))).for_each(
        |(dx, (dy, y))| {
            for (dx, (dy, y)) in dx.chunks_mut(c).zip(dy.chunks(c).zip(y.chunks(c))) {
                let s: T = dy.iter().copied().sum();
                for ((dx, &dy), &y) in dx.iter_mut().zip(dy).zip(y) {
                    *dx += dy - y.exp() * s;
                }
            }
        },
    );
}

/// Cross-entropy from logits, per row: `loss_n = lse(x_n) − x_n[y_n]`, `0` where `y_n == ignore`.
///
/// `logits` is `(N, V)`; writes `losses[n]` (`=`) and `lse[n]` (kept for backward). Targets
/// `≥ V` that are not `ignore` are a contract violation (callers validate user data first).
pub fn cross_entropy_forward<T: Float>(
    losses: &mut [T],
    lse: &mut [T],
    logits: &[T],
    targets: &[u32],
    v: usize,
    ignore: Option<u32>,
) {
    let n = targets.len();
    assert_eq!(logits.len(), n * v, "cross_entropy: logits hold {} values, want N·V = {n}·{v}", logits.len());
    let per = rows_per_task(n, v);
    losses.par_chunks_mut(per).zip(lse.par_chunks_mut(per)).enumerate().for_each(|(ci, (l, s))| {
        let mut tmp = vec![T::ZERO; v];
        for r in 0..l.len() {
            let row = ci * per + r;
            let x = &logits[row * v..(row + 1) * v];
            let m = row_max(x);
            tmp.copy_from_slice(x);
            let z = T::exp_sub_sum(&mut tmp, m).ln() + m;
            s[r] = z;
            let t = targets[row];
            if Some(t) == ignore {
                l[r] = T::ZERO;
            } else {
                assert!((t as usize) < v, "cross_entropy: target {t} at row {row} ≥ vocabulary {v}");
                l[r] = z - x[t as usize];
            }
        }
    });
}

/// Cross-entropy and its gradient in one sweep, in place: for each row `x` of `logits` (length
/// `v`) with target `y`, `losses[r] = lse(x) − x_y`, then `x ← g·(softmax(x) − onehot(y))` —
/// the forward's logits become the backward's `dlogits` with no second buffer and no second
/// exponential (three passes over a row: max, exp-and-sum, scale). Every target must be `< v`.
pub fn cross_entropy_grad_inplace<T: Float>(logits: &mut [T], losses: &mut [T], targets: &[u32], v: usize, g: T) {
    let n = targets.len();
    assert_eq!(logits.len(), n * v, "cross_entropy: logits hold {} values, want N·V = {n}·{v}", logits.len());
    if n == 0 || v == 0 {
        return;
    }
    let per = rows_per_task(n, v);
    let bands = logits.chunks_mut(per * v).zip(losses.chunks_mut(per)).enumerate().collect();
    super::team_for_each(bands, |(ci, (band, l))| {
        for (r, x) in band.chunks_mut(v).enumerate() {
            let row = ci * per + r;
            let t = targets[row] as usize;
            assert!(t < v, "cross_entropy: target {t} at row {row} ≥ vocabulary {v}");
            let (m, xt) = (row_max(x), x[t]);
            let sum = T::exp_sub_sum(x, m); // x ← exp(x − m)
            l[r] = sum.ln() + m - xt;
            T::scale_slice(x, g / sum);
            x[t] -= g;
        }
    });
}

/// Backward of the per-row cross-entropy: `dlogits_n += dloss_n · (softmax(x_n) − onehot(y_n))`.
///
/// The famous simplification: the gradient of `lse(x) − x_y` is `p − 1[y]`.
pub fn cross_entropy_backward<T: Float>(
    dlogits: &mut [T],
    dlosses: &[T],
    logits: &[T],
    lse: &[T],
    targets: &[u32],
    v: usize,
    ignore: Option<u32>,
) {
    let n = targets.len();
    let per = rows_per_task(n, v);
    dlogits.par_chunks_mut(per * v).enumerate().for_each(|(ci, dl)| {
        let mut p = vec![T::ZERO; v];
        for (r, d) in dl.chunks_mut(v).enumerate() {
            let row = ci * per + r;
            let t = targets[row];
            if Some(t) == ignore {
                continue;
            }
            let g = dlosses[row];
            p.copy_from_slice(&logits[row * v..(row + 1) * v]);
            T::exp_sub(&mut p, lse[row]); // p = softmax(x) = exp(x − lse)
            T::axpy(d, g, &p);
            d[t as usize] -= g;
        }
    });
}
