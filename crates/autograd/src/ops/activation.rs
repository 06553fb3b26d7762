//! Fused activations: GELU, SiLU, SwiGLU, and dropout.

use crate::var::{Backward, Var};
use yuanli_tensor::{GeluKind, Rng, Tensor};

/// `y = gelu(x)`: `∂L/∂x = g ⊙ gelu'(x)` (formulas in [`yuanli_tensor::cpu::gelu_grad`]).
struct Gelu {
    x: Tensor,
    kind: GeluKind,
}
impl Backward for Gelu {
    fn name(&self) -> &'static str {
        "gelu"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| self.x.gelu_backward(&g.contiguous(), self.kind))]
    }
}

/// `y = x·σ(x)`: `∂L/∂x = g ⊙ σ(x)(1 + x(1 − σ(x)))`.
struct Silu {
    x: Tensor,
}
impl Backward for Silu {
    fn name(&self) -> &'static str {
        "silu"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| g.mul(&self.x.silu_grad()))]
    }
}

/// `y = silu(a) ⊙ b`: `∂L/∂a = g ⊙ b ⊙ silu'(a)`, `∂L/∂b = g ⊙ silu(a)`.
struct SwiGlu {
    gate: Tensor,
    up: Tensor,
}
impl Backward for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        let (dg, du) = self.gate.swiglu_backward(&self.up, &g.contiguous());
        vec![n[0].then_some(dg), n[1].then_some(du)]
    }
}

/// `y = x ⊙ m` with `m_i ∈ {0, 1/(1−p)}` drawn at forward: `∂L/∂x = g ⊙ m`.
struct Dropout {
    mask: Tensor,
}
impl Backward for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| g.mul(&self.mask))]
    }
}

/// The dropout mask `m_i ∈ {0, 1/(1−p)}`, `P(m_i = 0) = p`, drawn from `rng`.
pub fn dropout_mask(shape: &[usize], p: f64, dtype: yuanli_tensor::DType, rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let keep = 1.0 / (1.0 - p);
    let m: Vec<f64> = (0..n).map(|_| if rng.uniform() < p { 0.0 } else { keep }).collect();
    Tensor::new(m, shape).to_dtype(dtype)
}

impl Var {
    /// GELU (fused; tanh approximation or exact).
    pub fn gelu(&self, kind: GeluKind) -> Var {
        let x = self.value().contiguous();
        Var::from_op(x.gelu(kind), Gelu { x, kind }, &[self])
    }

    /// SiLU / swish `x·σ(x)` (fused).
    pub fn silu(&self) -> Var {
        let x = self.value().contiguous();
        Var::from_op(x.silu(), Silu { x }, &[self])
    }

    /// SwiGLU `silu(self) ⊙ up` (fused; `self` is the gate).
    #[track_caller]
    pub fn swiglu(&self, up: &Var) -> Var {
        let (gate, upv) = (self.value().contiguous(), up.value().contiguous());
        Var::from_op(gate.swiglu(&upv), SwiGlu { gate, up: upv }, &[self, up])
    }

    /// Inverted dropout with drop probability `p`; the identity when `train` is false or `p = 0`.
    #[track_caller]
    pub fn dropout(&self, p: f64, train: bool, rng: &mut Rng) -> Var {
        assert!((0.0..1.0).contains(&p), "dropout: p = {p} must be in [0, 1)");
        if !train || p == 0.0 {
            return self.clone();
        }
        let mask = dropout_mask(self.shape(), p, self.value().dtype(), rng);
        Var::from_op(self.value().mul(&mask), Dropout { mask }, &[self])
    }
}
