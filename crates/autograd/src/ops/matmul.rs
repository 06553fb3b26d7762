//! Matrix product, and the fused linear layer `x·Wᵀ + b`.

use crate::var::{Backward, Var};
use yuanli_tensor::{QMatrix, Tensor};

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

/// `Y = X·Wᵀ + b` with a frozen `W (N, K)` stored in a GGML format ([`QMatrix`]: F16, BF16,
/// Q8_0, Q4_1, …). The product is [`Linear`]'s with `W` dequantized, so `∂L/∂X = G·W` and
/// `∂L/∂b = Σ_rows G`; `W` is no parameter and gets no gradient. It is dequantized in the
/// forward pass and again in the backward, never kept in f32 between them: the memory QLoRA
/// saves.
struct LinearQ {
    x_shape: Vec<usize>,
    w: QMatrix,
}
impl Backward for LinearQ {
    fn name(&self) -> &'static str {
        "linear_q"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        let rows: usize = self.x_shape[..self.x_shape.len() - 1].iter().product();
        let g = g.reshape(&[rows, self.w.rows()]);
        let mut out = vec![n[0].then(|| g.matmul(&dequantized(&self.w, g.dtype())).reshape(&self.x_shape))];
        if n.len() > 1 {
            out.push(n[1].then(|| g.sum(&[0], false)));
        }
        out
    }
}

/// `W` as a dense `(N, K)` tensor of `dtype`.
fn dequantized(w: &QMatrix, dtype: yuanli_tensor::DType) -> Tensor {
    Tensor::new(w.dequantize(), &[w.rows(), w.cols()]).to_dtype(dtype)
}

impl Var {
    /// `x·Wᵀ + b` with a frozen, stored weight `W (N, K)` ([`QMatrix`]); the gradient flows to
    /// `x` (and `b`), never to `W`. The basis of QLoRA: a quantized base passes gradients
    /// through to the adapters.
    #[track_caller]
    pub fn linear_q(&self, w: &QMatrix, b: Option<&Var>) -> Var {
        assert_eq!(
            self.dim_last(),
            w.cols(),
            "linear_q: x {:?} and W {}×{} disagree on K",
            self.shape(),
            w.rows(),
            w.cols()
        );
        let y = self.value().linear(&dequantized(w, self.value().dtype()), b.map(|b| b.value()));
        let op = LinearQ { x_shape: self.shape().to_vec(), w: w.clone() };
        match b {
            Some(b) => Var::from_op(y, op, &[self, b]),
            None => Var::from_op(y, op, &[self]),
        }
    }

    fn dim_last(&self) -> usize {
        self.shape().last().copied().unwrap_or(0)
    }

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
