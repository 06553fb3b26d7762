//! Finite-difference gradient checking.
//!
//! For `f: inputs → output`, pick a fixed random `R` of the output's shape and check the
//! scalar `φ = Σ f(x) ⊙ R`. (Projecting with random weights instead of a plain sum matters:
//! `Σ softmax(x)` is constant, so a plain sum would hide any error in softmax's backward.)
//! The analytic gradient comes from one backward pass seeded with `R`; the numeric one from
//! central differences `(φ(x + εe_i) − φ(x − εe_i)) / 2ε` per element, in f64, where the
//! truncation error is `O(ε²)` and the rounding error `O(u/ε)`; `ε = 1e−6` balances them.

use crate::var::{no_grad, Var};
use yuanli_tensor::{DType, Rng, Tensor};

/// Tolerances of a check: pass when `|analytic − numeric| ≤ atol + rtol·max(|a|, |n|)`.
#[derive(Clone, Copy, Debug)]
pub struct GradcheckOpts {
    /// Finite-difference step.
    pub eps: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance.
    pub rtol: f64,
    /// Seed of the projection `R`.
    pub seed: u64,
}

impl Default for GradcheckOpts {
    fn default() -> Self {
        Self { eps: 1e-6, atol: 1e-6, rtol: 1e-5, seed: 0 }
    }
}

/// The first element whose gradients disagree.
#[derive(Clone, Debug)]
pub struct Mismatch {
    /// Which input.
    pub input: usize,
    /// Flat element index within that input.
    pub index: usize,
    /// From backward.
    pub analytic: f64,
    /// From finite differences.
    pub numeric: f64,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "input {} element {}: analytic {:.9e} vs numeric {:.9e}",
            self.input, self.index, self.analytic, self.numeric
        )
    }
}

/// Checks `f`'s gradients with respect to every input (converted to f64).
///
/// Returns the largest observed `|a − n| / (atol + rtol·max(|a|, |n|))` (≤ 1 means pass), or
/// the first mismatch. Inputs that should not be differentiated (ids, masks) are captured by
/// the closure instead of passed in.
pub fn gradcheck(f: impl Fn(&[Var]) -> Var, inputs: &[Tensor], opts: GradcheckOpts) -> Result<f64, Mismatch> {
    let xs: Vec<Tensor> = inputs.iter().map(|x| x.to_dtype(DType::F64).copy()).collect();
    let vars: Vec<Var> = xs.iter().map(|x| Var::leaf(x.clone())).collect();
    let out = f(&vars);
    let mut rng = Rng::new(opts.seed);
    let r = Tensor::randn(out.shape(), 0.0, 1.0, DType::F64, &mut rng);
    out.backward_with(r.clone());
    let phi = |xs: &[Tensor]| -> f64 {
        let _g = no_grad();
        let vs: Vec<Var> = xs.iter().map(|x| Var::constant(x.clone())).collect();
        f(&vs).value().mul(&r).sum_all().item()
    };
    let mut worst: f64 = 0.0;
    for (i, x) in xs.iter().enumerate() {
        let analytic = match vars[i].grad() {
            Some(g) => g.to_vec::<f64>(),
            None => vec![0.0; x.numel()],
        };
        for j in 0..x.numel() {
            let bump = |delta: f64| {
                let mut v = x.to_vec::<f64>();
                v[j] += delta;
                let mut ys = xs.clone();
                ys[i] = Tensor::new(v, x.shape());
                phi(&ys)
            };
            let numeric = (bump(opts.eps) - bump(-opts.eps)) / (2.0 * opts.eps);
            let a = analytic[j];
            let ratio = (a - numeric).abs() / (opts.atol + opts.rtol * a.abs().max(numeric.abs()));
            if !ratio.is_finite() || ratio > 1.0 {
                return Err(Mismatch { input: i, index: j, analytic: a, numeric });
            }
            worst = worst.max(ratio);
        }
    }
    Ok(worst)
}
