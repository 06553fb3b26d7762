//! Fused LayerNorm and RMSNorm (derivations: docs/book, "Normalisation layers").

use crate::var::{Backward, Var};
use yuanli_tensor::{NormStats, Tensor};

/// LayerNorm `y = (x − μ)·rstd·w + b` over the last axis. With `n̂ = (x − μ)·rstd`, `ĝ = g ⊙ w`:
/// `∂L/∂x = rstd·(ĝ − mean(ĝ) − n̂·mean(ĝ ⊙ n̂))`, `∂L/∂w = Σ g ⊙ n̂`, `∂L/∂b = Σ g`.
struct LayerNorm {
    x: Tensor,
    w: Tensor,
    stats: NormStats,
}
impl Backward for LayerNorm {
    fn name(&self) -> &'static str {
        "layer_norm"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        let (dx, dw, db) = self.x.layer_norm_backward(&self.w, &self.stats, &g.contiguous());
        let mut out = vec![n[0].then_some(dx), n[1].then_some(dw)];
        if n.len() > 2 {
            out.push(n[2].then_some(db));
        }
        out
    }
}

/// RMSNorm `y = x·rstd·w`, `rstd = 1/√(mean(x²) + ε)`. With `n̂ = x·rstd`, `ĝ = g ⊙ w`:
/// `∂L/∂x = rstd·(ĝ − n̂·mean(ĝ ⊙ n̂))`, `∂L/∂w = Σ g ⊙ n̂`.
struct RmsNorm {
    x: Tensor,
    w: Tensor,
    stats: NormStats,
}
impl Backward for RmsNorm {
    fn name(&self) -> &'static str {
        "rms_norm"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        let (dx, dw) = self.x.rms_norm_backward(&self.w, &self.stats, &g.contiguous());
        vec![n[0].then_some(dx), n[1].then_some(dw)]
    }
}

impl Var {
    /// LayerNorm over the last axis with weight `(C,)` and optional bias `(C,)` (fused).
    #[track_caller]
    pub fn layer_norm(&self, weight: &Var, bias: Option<&Var>, eps: f64) -> Var {
        let x = self.value().contiguous();
        let (y, stats) = x.layer_norm(weight.value(), bias.map(|b| b.value()), eps);
        let op = LayerNorm { x, w: weight.value().clone(), stats };
        match bias {
            Some(b) => Var::from_op(y, op, &[self, weight, b]),
            None => Var::from_op(y, op, &[self, weight]),
        }
    }

    /// RMSNorm over the last axis with weight `(C,)` (fused).
    #[track_caller]
    pub fn rms_norm(&self, weight: &Var, eps: f64) -> Var {
        let x = self.value().contiguous();
        let (y, stats) = x.rms_norm(weight.value(), eps);
        Var::from_op(y, RmsNorm { x, w: weight.value().clone(), stats }, &[self, weight])
    }
}
