//! Fused scaled-dot-product attention (FlashAttention-style forward and backward).

use crate::var::{Backward, Var};
use yuanli_tensor::{AttentionOutput, Tensor};

/// Options of an attention call.
#[derive(Clone, Debug, Default)]
pub struct AttentionOpts {
    /// Restrict query `i` to keys `j ≤ i + Tk − Tq`.
    pub causal: bool,
    /// Additive mask broadcastable to `(B, H, Tq, Tk)` (a constant: no gradient).
    pub mask: Option<Tensor>,
    /// Score multiplier; `None` means `1/√D`.
    pub scale: Option<f64>,
}

/// `O = softmax(scale·QKᵀ + M) V`. The backward recomputes `P` block by block from the saved
/// row log-sum-exp; see [`yuanli_tensor::cpu::attention_backward`] for the formulas.
struct Attention {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    opts: AttentionOpts,
    fwd: AttentionOutput,
}
impl Backward for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        let o = &self.opts;
        let (dq, dk, dv) =
            Tensor::attention_backward(&self.q, &self.k, &self.v, o.mask.as_ref(), o.causal, o.scale, &self.fwd, g);
        vec![n[0].then_some(dq), n[1].then_some(dk), n[2].then_some(dv)]
    }
}

impl Var {
    /// Scaled-dot-product attention (fused): `q (B, H, Tq, D)`, `k, v (B, Hk, Tk, D)`,
    /// `H % Hk == 0` (grouped-query attention). Returns `(B, H, Tq, D)`.
    #[track_caller]
    pub fn attention(q: &Var, k: &Var, v: &Var, opts: &AttentionOpts) -> Var {
        let fwd = Tensor::attention(q.value(), k.value(), v.value(), opts.mask.as_ref(), opts.causal, opts.scale);
        let out = fwd.out.clone();
        let op =
            Attention { q: q.value().clone(), k: k.value().clone(), v: v.value().clone(), opts: opts.clone(), fwd };
        Var::from_op(out, op, &[q, k, v])
    }
}
