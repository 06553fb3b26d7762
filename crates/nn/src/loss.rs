//! Loss functions, built on autograd ops.

use yuanli_autograd::Var;
use yuanli_tensor::Tensor;

/// Mean cross-entropy of logits `(…, C)` against u32 targets `(…)`, with optional label
/// smoothing `ε`: the target distribution is `(1−ε)·onehot + ε/C`, so
/// `loss = (1−ε)·CE + ε·mean_c(−log_softmax)` (rows whose target is `ignore_index` excluded).
pub fn cross_entropy(logits: &Var, targets: &Tensor, label_smoothing: f64, ignore_index: Option<u32>) -> Var {
    let ce = logits.cross_entropy(targets, ignore_index);
    if label_smoothing == 0.0 {
        return ce;
    }
    let c = logits.shape()[logits.shape().len() - 1];
    let n = targets.numel();
    let ids = targets.to_vec::<u32>();
    let counted = ids.iter().filter(|&&t| Some(t) != ignore_index).count().max(1);
    let w: Vec<f64> =
        ids.iter().map(|&t| if Some(t) == ignore_index { 0.0 } else { -1.0 / (counted * c) as f64 }).collect();
    let weights = Var::constant(Tensor::new(w, &[n, 1]).to_dtype(logits.value().dtype()));
    let uniform = logits.reshape(&[n, c]).log_softmax().mul(&weights).sum_all();
    ce.scale(1.0 - label_smoothing).add(&uniform.scale(label_smoothing))
}

/// Mean squared error `mean((ŷ − y)²)`.
pub fn mse(pred: &Var, target: &Var) -> Var {
    let d = pred.sub(target);
    d.mul(&d).mean_all()
}

/// Binary cross-entropy from logits, computed stably:
/// `mean(max(x, 0) − x·y + ln(1 + e^{−|x|}))`.
pub fn bce_with_logits(logits: &Var, target: &Var) -> Var {
    let x = logits;
    let positive = x.value().gt(&Tensor::zeros(&[], x.value().dtype()));
    let abs = Var::where_cond(&positive, x, &x.neg());
    let softplus_neg_abs = abs.neg().exp().add_scalar(1.0).log();
    x.relu().sub(&x.mul(target)).add(&softplus_neg_abs).mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use yuanli_autograd::gradcheck::{gradcheck, GradcheckOpts};
    use yuanli_tensor::{DType, Rng};

    #[test]
    fn losses_match_their_definitions_and_gradients_check() {
        let logits = Tensor::randn(&[4, 5], 0.0, 2.0, DType::F64, &mut Rng::new(1));
        let t = Tensor::new(vec![0u32, 3, 4, 1], &[4]);
        // Label smoothing against the explicit smoothed-target formula.
        let ls = cross_entropy(&Var::constant(logits.clone()), &t, 0.1, None).value().item();
        let lp = logits.log_softmax().to_vec_f64();
        let mut want = 0.0;
        for (r, &y) in t.to_vec::<u32>().iter().enumerate() {
            for c in 0..5 {
                let q = if c as u32 == y { 0.9 + 0.02 } else { 0.02 };
                want -= q * lp[r * 5 + c] / 4.0;
            }
        }
        assert!((ls - want).abs() < 1e-12, "{ls} vs {want}");
        let opts = GradcheckOpts::default();
        assert!(gradcheck(|v| cross_entropy(&v[0], &t, 0.1, Some(4)), &[logits.clone()], opts).is_ok());
        let y = Tensor::rand_uniform(&[4, 5], 0.0, 1.0, DType::F64, &mut Rng::new(2));
        let yv = Var::constant(y.clone());
        assert!(gradcheck(|v| bce_with_logits(&v[0], &yv), &[logits.clone()], opts).is_ok());
        assert!(gradcheck(|v| mse(&v[0], &yv), &[logits.clone()], opts).is_ok());
        // BCE equals −y·ln σ(x) − (1−y)·ln(1−σ(x)).
        let b = bce_with_logits(&Var::constant(logits.clone()), &yv).value().item();
        let (xs, ys) = (logits.to_vec_f64(), y.to_vec_f64());
        let direct: f64 = xs
            .iter()
            .zip(&ys)
            .map(|(x, y)| {
                let s = 1.0 / (1.0 + (-x).exp());
                -(y * s.ln() + (1.0 - y) * (1.0 - s).ln())
            })
            .sum::<f64>()
            / 20.0;
        assert!((b - direct).abs() < 1e-10);
    }
}
