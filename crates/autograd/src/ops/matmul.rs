//! Matrix product.

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

impl Var {
    /// `X·Y` over the last two axes, batch axes broadcast. Use `y.t()` for `X·Yᵀ` (free).
    #[track_caller]
    pub fn matmul(&self, y: &Var) -> Var {
        let v = self.value().matmul(y.value());
        Var::from_op(v, Matmul { x: self.value().clone(), y: y.value().clone() }, &[self, y])
    }
}
