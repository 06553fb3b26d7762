//! Fused rotary position embedding.

use crate::var::{Backward, Var};
use yuanli_tensor::{RopeFreqs, RopeLayout, Tensor};

/// Options of a RoPE call.
#[derive(Clone, Copy, Debug)]
pub struct RopeOpts<'a> {
    /// The axis that indexes positions (e.g. 2 for `(B, H, T, D)`, 1 for `(B, T, H, D)`).
    pub seq_axis: isize,
    /// Position of the first element along `seq_axis` (the KV-cache length when decoding).
    pub pos0: usize,
    /// The frequencies (and factor on cos/sin): [`RopeFreqs::new`] for plain RoPE.
    pub freqs: &'a RopeFreqs,
    /// Which channels pair up.
    pub layout: RopeLayout,
}

/// `y = m·R(p)·x` with `R` a rotation per channel pair: `∂L/∂x = m·R(p)ᵀ·g` (rotate back).
struct Rope {
    seq_axis: isize,
    pos0: usize,
    freqs: RopeFreqs,
    layout: RopeLayout,
}
impl Backward for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| g.contiguous().rope_backward(self.seq_axis, self.pos0, &self.freqs, self.layout))]
    }
}

impl Var {
    /// Rotary position embedding (fused).
    #[track_caller]
    pub fn rope(&self, o: RopeOpts) -> Var {
        let y = self.value().rope(o.seq_axis, o.pos0, o.freqs, o.layout);
        let back = Rope { seq_axis: o.seq_axis, pos0: o.pos0, freqs: o.freqs.clone(), layout: o.layout };
        Var::from_op(y, back, &[self])
    }
}
