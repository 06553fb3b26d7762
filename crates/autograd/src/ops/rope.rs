//! Fused rotary position embedding.

use crate::var::{Backward, Var};
use yuanli_tensor::{RopeLayout, Tensor};

/// Options of a RoPE call.
#[derive(Clone, Copy, Debug)]
pub struct RopeOpts {
    /// The axis that indexes positions (e.g. 2 for `(B, H, T, D)`, 1 for `(B, T, H, D)`).
    pub seq_axis: isize,
    /// Position of the first element along `seq_axis` (the KV-cache length when decoding).
    pub pos0: usize,
    /// Frequency base θ (10 000 in LLaMA).
    pub base: f64,
    /// Which channels pair up.
    pub layout: RopeLayout,
}

/// `y = R(p)·x` with `R` a rotation per channel pair: `∂L/∂x = R(p)ᵀ·g` (rotate back).
struct Rope {
    opts: RopeOpts,
}
impl Backward for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        let o = self.opts;
        vec![n[0].then(|| g.contiguous().rope_backward(o.seq_axis, o.pos0, o.base, o.layout))]
    }
}

impl Var {
    /// Rotary position embedding (fused).
    #[track_caller]
    pub fn rope(&self, opts: RopeOpts) -> Var {
        let y = self.value().rope(opts.seq_axis, opts.pos0, opts.base, opts.layout);
        Var::from_op(y, Rope { opts }, &[self])
    }
}
