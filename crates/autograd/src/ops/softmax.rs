//! Fused softmax, log-softmax and cross-entropy (derivations: docs/book, "Softmax and
//! cross-entropy").

use crate::var::{Backward, Var};
use yuanli_tensor::{DType, Tensor};

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
