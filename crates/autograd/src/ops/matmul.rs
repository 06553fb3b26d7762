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

/// The frozen base `W (out, in)` of a LoRA-adapted linear map.
#[derive(Clone, Copy, Debug)]
pub enum Frozen<'a> {
    /// A dense tensor (an f32 parameter that does not train; f64 in gradient checks).
    Dense(&'a Tensor),
    /// A matrix stored in a GGML format (QLoRA).
    Stored(&'a QMatrix),
}

/// How a LoRA update is applied: `s` and the input dropout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraOpts {
    /// The update's scale `s` (α/r, or α/√r for rsLoRA).
    pub scale: f64,
    /// Dropout probability on the adapter's input (0 when not training).
    pub dropout: f64,
    /// The dropout mask's seed ([`Tensor::dropout_hashed`]).
    pub seed: u64,
}

/// What the backward of [`Var::lora_linear`] reads; `W` in the form it came in.
enum Base {
    Dense(Tensor),
    Stored(QMatrix),
}

/// `y = x·Wᵀ + b + s · x̃·Aᵀ·Bᵀ`, `x̃ = x ⊙ m` (dropout), `W` frozen — one op. With
/// `u = x̃·Aᵀ (R, r)` and `G = ∂L/∂y (R, out)` over the `R` rows of the leading axes:
///
/// ```text
/// ∂L/∂B = s · Gᵀ·u                (out, r)
/// ∂L/∂A = (s · G·B)ᵀ·x̃            (r, in)
/// ∂L/∂x = G·W + (s · G·B·A) ⊙ m    (R, in)
/// ∂L/∂b = Σ_rows G
/// ```
///
/// It keeps `x` (which the next op or the base needs anyway), the small `u`, and the mask's
/// *seed* — not `x̃`, not the mask, not the update `s·u·Bᵀ` or the sum: the composite
/// `linear + dropout + linear + linear + scale + add` would keep three `(R, in)` or
/// `(R, out)` tensors more per adapted map. The mask is drawn again in the backward pass.
struct LoraLinear {
    x: Tensor,
    w: Base,
    a: Tensor,
    b: Tensor,
    u: Tensor,
    opts: LoraOpts,
}
impl Backward for LoraLinear {
    fn name(&self) -> &'static str {
        "lora_linear"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        let (k, out) = (self.x.dim(-1), self.b.dim(0));
        let rows = self.x.numel() / k.max(1);
        let g = g.reshape(&[rows, out]);
        let s = self.opts.scale;
        let du = g.matmul(&self.b).mul_scalar(s); // (R, r)
        let dx = n[0].then(|| {
            let dx = match &self.w {
                Base::Dense(w) => g.matmul(w),
                Base::Stored(q) => g.matmul(&dequantized(q, g.dtype())),
            };
            // dx += (du·A) ⊙ m: accumulated by the GEMM itself without dropout; with it, the
            // product is masked as it is added (the mask redrawn from its seed).
            if self.opts.dropout > 0.0 {
                dx.add_dropout_hashed_(&du.matmul(&self.a), self.opts.dropout, self.opts.seed);
            } else {
                dx.add_matmul_(&du, &self.a, 1.0);
            }
            dx.reshape(self.x.shape())
        });
        let da = n[1].then(|| {
            let x = self.x.reshape(&[rows, k]);
            let xd = if self.opts.dropout > 0.0 { x.dropout_hashed(self.opts.dropout, self.opts.seed) } else { x };
            // As (x̃ᵀ·du)ᵀ: `gemm` runs an (in × R)·(R × r) product with its full-height kernels
            // about twice as fast as (r × R)·(R × in), whose 8 rows leave them mostly idle.
            xd.t().matmul(&du).t().contiguous()
        });
        let db = n[2].then(|| g.t().matmul(&self.u).mul_scalar(s));
        let mut grads = vec![dx, da, db];
        if n.len() > 3 {
            grads.push(n[3].then(|| g.sum(&[0], false)));
        }
        grads
    }
}

impl Var {
    /// A LoRA-adapted linear map with a frozen base, fused: `x·Wᵀ + bias + s·x̃·Aᵀ·Bᵀ` for
    /// `x (…, in)`, `W (out, in)`, `A (r, in)`, `B (out, r)`, `x̃` = `x` under the dropout of
    /// `opts`. Gradients reach `x`, `A`, `B` and the bias; never `W`. Equal to its composite
    /// twin [`crate::composite::lora_linear`] (tested, with the same mask).
    #[track_caller]
    pub fn lora_linear(&self, w: Frozen<'_>, bias: Option<&Var>, a: &Var, b: &Var, opts: LoraOpts) -> Var {
        let (k, r) = (self.dim_last(), a.shape()[0]);
        let (wr, wc) = match w {
            Frozen::Dense(t) => (t.dim(0), t.dim(1)),
            Frozen::Stored(q) => (q.rows(), q.cols()),
        };
        assert!(
            wc == k && a.shape() == [r, k] && b.shape() == [wr, r],
            "lora_linear: x {:?}, W {wr}×{wc}, A {:?}, B {:?} do not fit",
            self.shape(),
            a.shape(),
            b.shape()
        );
        let x = self.value().clone();
        let rows = x.numel() / k.max(1);
        let bias_v = bias.map(|b| b.value());
        let (y, base) = match w {
            Frozen::Dense(t) => (x.linear(t, bias_v), Base::Dense(t.clone())),
            Frozen::Stored(q) => (x.linear(&dequantized(q, x.dtype()), bias_v), Base::Stored(q.clone())),
        };
        let x2 = x.reshape(&[rows, k]);
        let xd = if opts.dropout > 0.0 { x2.dropout_hashed(opts.dropout, opts.seed) } else { x2 };
        let u = xd.linear(a.value(), None); // (R, r)
        drop(xd);
        // y += s·u·Bᵀ, accumulated by the GEMM into y: no (R, out) update buffer, no add pass.
        y.reshape(&[rows, wr]).add_matmul_(&u, &b.value().t(), opts.scale);
        let op = LoraLinear { x, w: base, a: a.value().clone(), b: b.value().clone(), u, opts };
        match bias {
            Some(bias) => Var::from_op(y, op, &[self, a, b, bias]),
            None => Var::from_op(y, op, &[self, a, b]),
        }
    }
}
