//! Matrix product, and the fused linear layer `x·Wᵀ + b`.

use crate::var::{Backward, Var};
use yuanli_tensor::Tensor;

/// `Z = X·Y` with `X (…, M, K)`, `Y (…, K, N)`: `∂L/∂X = G·Yᵀ`, `∂L/∂Y = Xᵀ·G`
/// (each summed over broadcast batch axes). The transposes are views: no copies.
struct Matmul {
    x: Tensor,
    y: Tensor,
}
impl Backward for Matmul {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        let dy = |x: &Tensor| {
            if self.y.rank() == 2 && x.rank() > 2 {
                // A shared (K, N) weight: fold the batch into one (K, B·M)·(B·M, N) product
                // instead of B products summed afterwards.
                let k = x.dim(-1);
                let rows = x.numel() / k.max(1);
                x.reshape(&[rows, k]).t().matmul(&g.reshape(&[rows, g.dim(-1)]))
            } else {
                x.t().matmul(g).sum_to_shape(self.y.shape())
            }
        };
        vec![n[0].then(|| g.matmul(&self.y.t()).sum_to_shape(self.x.shape())), n[1].then(|| dy(&self.x))]
    }
}

/// `Y = X·Wᵀ + b` with `X (…, K)`, `W (N, K)`, `b (N,)`. With the leading axes of `X` and `G`
/// folded into `R` rows: `∂L/∂X = G·W`, `∂L/∂W = Gᵀ·X` (an `(N, K)` product, already in W's
/// layout), `∂L/∂b = Σ_rows G`.
struct Linear {
    x: Tensor,
    w: Tensor,
}
impl Backward for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        let (k, m) = (self.x.dim(-1), self.w.dim(0));
        let rows: usize = self.x.shape()[..self.x.rank() - 1].iter().product();
        let g = g.reshape(&[rows, m]);
        let mut out = vec![
            n[0].then(|| g.matmul(&self.w).reshape(self.x.shape())),
            n[1].then(|| g.t().matmul(&self.x.reshape(&[rows, k]))),
        ];
        if n.len() > 2 {
            out.push(n[2].then(|| g.sum(&[0], false)));
        }
        out
    }
}

impl Var {
    /// A linear layer's map `x·Wᵀ + b` for `x (…, K)`, weight `W (N, K)` (PyTorch's layout) and
    /// an optional bias `(N,)` (fused: one GEMM that starts from the bias).
    #[track_caller]
    pub fn linear(&self, w: &Var, b: Option<&Var>) -> Var {
        let y = self.value().linear(w.value(), b.map(|b| b.value()));
        let op = Linear { x: self.value().clone(), w: w.value().clone() };
        match b {
            Some(b) => Var::from_op(y, op, &[self, w, b]),
            None => Var::from_op(y, op, &[self, w]),
        }
    }

    /// `X·Y` over the last two axes, batch axes broadcast. Use `y.t()` for `X·Yᵀ` (free).
    #[track_caller]
    pub fn matmul(&self, y: &Var) -> Var {
        let v = self.value().matmul(y.value());
        Var::from_op(v, Matmul { x: self.value().clone(), y: y.value().clone() }, &[self, y])
    }
}
