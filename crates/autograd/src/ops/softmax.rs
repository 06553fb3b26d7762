//! Fused softmax, log-softmax and cross-entropy (derivations: docs/book, "Softmax and
//! cross-entropy").

use crate::var::{is_grad_enabled, Backward, Var};
use yuanli_tensor::{DType, QMatrix, Tensor};

/// `y = softmax(x)` over the last axis: `∂L/∂x = y ⊙ (g − Σ_j g_j y_j)`.
struct Softmax {
    y: Tensor,
}
impl Backward for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| self.y.softmax_backward(&g.contiguous()))]
    }
}

/// `y = log_softmax(x)`: `∂L/∂x = g − softmax(x) · Σ_j g_j`, with `softmax(x) = e^y`.
struct LogSoftmax {
    y: Tensor,
}
impl Backward for LogSoftmax {
    fn name(&self) -> &'static str {
        "log_softmax"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| self.y.log_softmax_backward(&g.contiguous()))]
    }
}

/// `L = (1/N_counted) Σ_n [lse(x_n) − x_n[y_n]]` over rows whose target is not ignored:
/// `∂L/∂x_n = (softmax(x_n) − onehot(y_n)) / N_counted`, and 0 for ignored rows.
struct CrossEntropy {
    logits: Tensor,
    targets: Tensor,
    lse: Tensor,
    ignore: Option<u32>,
    counted: usize,
}
impl Backward for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| {
            let scale = if self.counted > 0 { g.item() / self.counted as f64 } else { 0.0 };
            let dlosses = Tensor::full(scale, self.targets.shape(), self.logits.dtype());
            self.logits.cross_entropy_rows_backward(&self.targets, &self.lse, &dlosses, self.ignore)
        })]
    }
}

impl Var {
    /// Softmax over the last axis (fused).
    pub fn softmax(&self) -> Var {
        let y = self.value().softmax();
        Var::from_op(y.clone(), Softmax { y }, &[self])
    }

    /// Log-softmax over the last axis (fused).
    pub fn log_softmax(&self) -> Var {
        let y = self.value().log_softmax();
        Var::from_op(y.clone(), LogSoftmax { y }, &[self])
    }

    /// Mean cross-entropy of logits `(…, V)` against u32 targets `(…)`, skipping rows whose
    /// target equals `ignore_index`. A 0-d result; 0 when every row is ignored.
    #[track_caller]
    pub fn cross_entropy(&self, targets: &Tensor, ignore_index: Option<u32>) -> Var {
        assert_eq!(targets.dtype(), DType::U32, "cross_entropy: targets must be u32");
        let logits = self.value().contiguous();
        let (losses, lse) = logits.cross_entropy_rows(targets, ignore_index);
        let counted = match ignore_index {
            Some(ig) => targets.to_vec::<u32>().iter().filter(|&&t| t != ig).count(),
            None => targets.numel(),
        };
        let total = losses.sum_all();
        let loss = if counted > 0 { total.mul_scalar(1.0 / counted as f64) } else { total.mul_scalar(0.0) };
        Var::from_op(
            loss,
            CrossEntropy { logits, targets: targets.clone(), lse, ignore: ignore_index, counted },
            &[self],
        )
    }
}

/// Rows of logits a chunk of [`Var::linear_cross_entropy`] holds at once, in values (96 MB of
/// f32): with a 49,152-token vocabulary, 512 rows. Each chunk's two products stream and pack all
/// of `W`, so fewer, taller chunks are faster (LoRA step on SmolLM2, 411 counted rows, AVX2:
/// 0.51 s for the head in chunks of 137 rows, 0.46 s at 170, 0.41 s in one chunk).
const CE_CHUNK_VALUES: usize = 24 << 20;

/// The fused language-model head and loss, `L = (1/N) Σ_n [lse(x_n·Wᵀ) − x_n·w_{y_n}]`, whose
/// gradient the forward pass already computes. The loss is the graph's last node, so its
/// incoming gradient is a scalar `g`, and
///
/// ```text
/// ∂L/∂x_n = g · (softmax(x_n·Wᵀ) − onehot(y_n)) · W / N,   ∂L/∂W = g · Σ_n (softmax − onehot)ᵀ x_n / N.
/// ```
///
/// Both are linear in `g`, so the forward computes them for `g = 1`, chunk by chunk of rows,
/// and the backward only scales them. The `(N, V)` logits are never held whole (a chunk at a
/// time) and never computed twice: for a 49k vocabulary that is most of a small model's
/// activation memory.
struct LinearCrossEntropy {
    dx: Tensor,
    dw: Option<Tensor>,
}
impl Backward for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "linear_cross_entropy"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        let g = g.item();
        let mut out = vec![n[0].then(|| self.dx.mul_scalar(g))];
        if n.len() > 1 {
            // dW was computed in the forward pass exactly when W needed a gradient.
            out.push(self.dw.as_ref().filter(|_| n[1]).map(|dw| dw.mul_scalar(g)));
        }
        out
    }
}

impl Var {
    /// Mean cross-entropy of the logits `x·Wᵀ` (`x (N, K)`, `W (V, K)`) against u32 targets
    /// `(N,)`, fused: equal to `x.linear(w, None).cross_entropy(targets, None)` without ever
    /// holding the `(N, V)` logits. Gradients flow to `x` and, when it needs one, to `W`.
    #[track_caller]
    pub fn linear_cross_entropy(&self, w: &Var, targets: &Tensor) -> Var {
        let needs = is_grad_enabled() && (self.requires_grad() || w.requires_grad());
        let scale = 1.0 / targets.numel().max(1) as f64;
        let (losses, dx, dw) = linear_ce(self.value(), w.value(), targets, scale, needs, needs && w.requires_grad());
        let loss = losses.sum_all().mul_scalar(scale);
        match dx {
            Some(dx) => Var::from_op(loss, LinearCrossEntropy { dx, dw }, &[self, w]),
            None => Var::constant(loss),
        }
    }

    /// [`Var::linear_cross_entropy`] with a frozen head stored in a GGML format
    /// ([`QMatrix`]), dequantized for the call: the gradient flows to `x` only.
    #[track_caller]
    pub fn linear_q_cross_entropy(&self, w: &QMatrix, targets: &Tensor) -> Var {
        let dense = Tensor::new(w.dequantize(), &[w.rows(), w.cols()]).to_dtype(self.value().dtype());
        let needs = is_grad_enabled() && self.requires_grad();
        let scale = 1.0 / targets.numel().max(1) as f64;
        let (losses, dx, _) = linear_ce(self.value(), &dense, targets, scale, needs, false);
        let loss = losses.sum_all().mul_scalar(scale);
        match dx {
            Some(dx) => Var::from_op(loss, LinearCrossEntropy { dx, dw: None }, &[self]),
            None => Var::constant(loss),
        }
    }
}

/// The fused head's per-position log-probabilities, `ℓ_n = x_n·w_{y_n} − lse(x_n·Wᵀ)`, for
/// the losses that weigh each token differently (DPO's sums over a completion, GRPO's and
/// PPO's per-token ratios). The incoming gradient is a vector `g (N,)` now, so only the part
/// that does not depend on it is computed in the forward pass:
///
/// ```text
/// ∂ℓ_n/∂x_n = w_{y_n} − softmax(x_n·Wᵀ)·W = −D_n,   D = (softmax − onehot)·W   (N, K),
/// ∂L/∂x_n   = −g_n · D_n.
/// ```
///
/// `D` is what [`LinearCrossEntropy`] keeps too (for `g = 1/N`). A head that needs a gradient
/// itself (full fine-tuning) would need `Σ_n g_n (softmax_n − onehot_n)ᵀ x_n`, which depends
/// on `g`: that case takes the unfused composite instead.
struct LinearTokenLogps {
    d: Tensor,
}
impl Backward for LinearTokenLogps {
    fn name(&self) -> &'static str {
        "linear_token_logps"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        let rows = self.d.dim(0);
        vec![n[0].then(|| self.d.mul(&g.reshape(&[rows, 1])).neg())]
    }
}

impl Var {
    /// Log-probability of each target under the logits `x·Wᵀ`: `x (N, K)`, `W (V, K)`, u32
    /// targets `(N,)` → `(N,)`; equal to `x.linear(w, None).log_softmax()` gathered at the
    /// targets, without holding the `(N, V)` logits when `W` is frozen.
    #[track_caller]
    pub fn linear_token_logps(&self, w: &Var, targets: &Tensor) -> Var {
        if is_grad_enabled() && w.requires_grad() {
            let n = targets.numel();
            return self.linear(w, None).log_softmax().gather(-1, &targets.reshape(&[n, 1])).reshape(&[n]);
        }
        self.token_logps_frozen(w.value(), targets)
    }

    /// [`Var::linear_token_logps`] with a frozen head stored in a GGML format, dequantized
    /// for the call.
    #[track_caller]
    pub fn linear_q_token_logps(&self, w: &QMatrix, targets: &Tensor) -> Var {
        let dense = Tensor::new(w.dequantize(), &[w.rows(), w.cols()]).to_dtype(self.value().dtype());
        self.token_logps_frozen(&dense, targets)
    }

    fn token_logps_frozen(&self, w: &Tensor, targets: &Tensor) -> Var {
        let needs = is_grad_enabled() && self.requires_grad();
        let (losses, d, _) = linear_ce(self.value(), w, targets, 1.0, needs, false);
        let logps = losses.neg();
        match d {
            Some(d) => Var::from_op(logps, LinearTokenLogps { d }, &[self]),
            None => Var::constant(logps),
        }
    }
}

/// The chunked forward of [`LinearCrossEntropy`] and [`LinearTokenLogps`]: each row's loss
/// `lse(x_n·Wᵀ) − x_n·w_{y_n}` `(N,)`, and for a gradient `scale` on every row's loss the
/// gradients with respect to `x` (when `want_dx`) and `W` (when `want_dw`).
#[track_caller]
fn linear_ce(
    x: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    scale: f64,
    want_dx: bool,
    want_dw: bool,
) -> (Tensor, Option<Tensor>, Option<Tensor>) {
    assert!(
        x.rank() == 2 && w.rank() == 2,
        "linear_cross_entropy: x {:?} and W {:?} must be matrices",
        x.shape(),
        w.shape()
    );
    let (n, v) = (x.dim(0), w.dim(0));
    assert_eq!(targets.shape(), [n], "linear_cross_entropy: {} rows of x but targets {:?}", n, targets.shape());
    assert_eq!(targets.dtype(), DType::U32, "linear_cross_entropy: targets must be u32");
    let x = x.contiguous();
    // As many chunks as the budget needs, of equal size (411 rows: 3 × 137, not 170 + 170 + 71).
    let max_rows = (CE_CHUNK_VALUES / v.max(1)).max(1);
    let chunk = n.div_ceil(n.div_ceil(max_rows).max(1)).max(1);
    let mut losses = Vec::new();
    let mut dxs = Vec::new();
    let mut dw: Option<Tensor> = None;
    for r0 in (0..n).step_by(chunk) {
        let rows = chunk.min(n - r0);
        let xc = x.narrow(0, r0, rows);
        let tc = targets.narrow(0, r0, rows).contiguous();
        // The chunk's logits become its gradient `scale·(softmax − onehot)` in place.
        let d = xc.linear(w, None);
        losses.push(d.cross_entropy_grad_(&tc, scale));
        if want_dx {
            dxs.push(d.matmul(w));
        }
        if want_dw {
            dw.get_or_insert_with(|| Tensor::zeros(w.shape(), w.dtype())).add_matmul_(&d.t(), &xc, 1.0);
        }
    }
    let losses = if losses.is_empty() { Tensor::zeros(&[0], x.dtype()) } else { Tensor::concat(&losses, 0) };
    let dx =
        want_dx.then(|| if dxs.is_empty() { Tensor::zeros(x.shape(), x.dtype()) } else { Tensor::concat(&dxs, 0) });
    let dw = if want_dw { Some(dw.unwrap_or_else(|| Tensor::zeros(w.shape(), w.dtype()))) } else { None };
    (losses, dx, dw)
}
