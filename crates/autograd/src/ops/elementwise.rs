//! Elementwise primitives. Binary ops broadcast; their backward sums the gradient back over
//! the broadcast axes (`sum_to_shape`).

use crate::var::{Backward, Var};
use yuanli_tensor::Tensor;

// ------------------------------------------------------------------ binary

/// `z = x + y`: `∂z/∂x = 1`, `∂z/∂y = 1` (summed over broadcast axes).
struct Add {
    xs: Vec<usize>,
    ys: Vec<usize>,
}
impl Backward for Add {
    fn name(&self) -> &'static str {
        "add"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| g.sum_to_shape(&self.xs)), n[1].then(|| g.sum_to_shape(&self.ys))]
    }
}

/// `z = x − y`: `∂z/∂x = 1`, `∂z/∂y = −1`.
struct Sub {
    xs: Vec<usize>,
    ys: Vec<usize>,
}
impl Backward for Sub {
    fn name(&self) -> &'static str {
        "sub"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| g.sum_to_shape(&self.xs)), n[1].then(|| g.neg().sum_to_shape(&self.ys))]
    }
}

/// `z = x ⊙ y`: `∂z/∂x = y`, `∂z/∂y = x`.
struct Mul {
    x: Tensor,
    y: Tensor,
}
impl Backward for Mul {
    fn name(&self) -> &'static str {
        "mul"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![
            n[0].then(|| g.mul(&self.y).sum_to_shape(self.x.shape())),
            n[1].then(|| g.mul(&self.x).sum_to_shape(self.y.shape())),
        ]
    }
}

/// `z = x / y`: `∂z/∂x = 1/y`, `∂z/∂y = −x/y² = −z/y`.
struct Div {
    x: Tensor,
    y: Tensor,
    z: Tensor,
}
impl Backward for Div {
    fn name(&self) -> &'static str {
        "div"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![
            n[0].then(|| g.div(&self.y).sum_to_shape(self.x.shape())),
            n[1].then(|| g.mul(&self.z).div(&self.y).neg().sum_to_shape(self.y.shape())),
        ]
    }
}

impl Var {
    /// `x + y` (broadcasting).
    #[track_caller]
    pub fn add(&self, y: &Var) -> Var {
        let v = self.value().add(y.value());
        Var::from_op(v, Add { xs: self.shape().to_vec(), ys: y.shape().to_vec() }, &[self, y])
    }

    /// `x − y` (broadcasting).
    #[track_caller]
    pub fn sub(&self, y: &Var) -> Var {
        let v = self.value().sub(y.value());
        Var::from_op(v, Sub { xs: self.shape().to_vec(), ys: y.shape().to_vec() }, &[self, y])
    }

    /// `x ⊙ y` (broadcasting).
    #[track_caller]
    pub fn mul(&self, y: &Var) -> Var {
        let v = self.value().mul(y.value());
        Var::from_op(v, Mul { x: self.value().clone(), y: y.value().clone() }, &[self, y])
    }

    /// `x / y` (broadcasting).
    #[track_caller]
    pub fn div(&self, y: &Var) -> Var {
        let v = self.value().div(y.value());
        Var::from_op(v.clone(), Div { x: self.value().clone(), y: y.value().clone(), z: v }, &[self, y])
    }
}

// ------------------------------------------------------------------ unary

/// A unary op whose derivative is a function of the input `x` and output `y`.
struct Unary {
    name: &'static str,
    x: Tensor,
    y: Tensor,
    /// `dy/dx` from `(x, y)`.
    deriv: fn(&Tensor, &Tensor) -> Tensor,
}
impl Backward for Unary {
    fn name(&self) -> &'static str {
        self.name
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| g.mul(&(self.deriv)(&self.x, &self.y)))]
    }
}

fn unary(x: &Var, name: &'static str, f: impl Fn(&Tensor) -> Tensor, deriv: fn(&Tensor, &Tensor) -> Tensor) -> Var {
    let y = f(x.value());
    Var::from_op(y.clone(), Unary { name, x: x.value().clone(), y, deriv }, &[x])
}

/// `z = a·x + b` for scalars: `∂z/∂x = a`.
struct Affine {
    a: f64,
}
impl Backward for Affine {
    fn name(&self) -> &'static str {
        "affine"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| g.mul_scalar(self.a))]
    }
}

/// `z = xᵖ`: `∂z/∂x = p·xᵖ⁻¹`.
struct Pow {
    x: Tensor,
    p: f64,
}
impl Backward for Pow {
    fn name(&self) -> &'static str {
        "pow"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| g.mul(&self.x.powf(self.p - 1.0).mul_scalar(self.p)))]
    }
}

impl Var {
    /// `−x`: derivative −1.
    pub fn neg(&self) -> Var {
        self.affine(-1.0, 0.0)
    }

    /// `a·x + b` for scalars `a`, `b`: derivative `a`.
    pub fn affine(&self, a: f64, b: f64) -> Var {
        Var::from_op(self.value().affine(a, b), Affine { a }, &[self])
    }

    /// `x · c` for a scalar.
    pub fn scale(&self, c: f64) -> Var {
        self.affine(c, 0.0)
    }

    /// `x + c` for a scalar.
    pub fn add_scalar(&self, c: f64) -> Var {
        self.affine(1.0, c)
    }

    /// `xᵖ` for a scalar exponent: derivative `p·xᵖ⁻¹`.
    pub fn powf(&self, p: f64) -> Var {
        Var::from_op(self.value().powf(p), Pow { x: self.value().clone(), p }, &[self])
    }

    /// `eˣ`: derivative `eˣ = y`.
    pub fn exp(&self) -> Var {
        unary(self, "exp", Tensor::exp, |_, y| y.clone())
    }

    /// `ln x`: derivative `1/x`.
    pub fn log(&self) -> Var {
        unary(self, "log", Tensor::log, |x, _| x.recip())
    }

    /// `√x`: derivative `1/(2√x) = 1/(2y)`.
    pub fn sqrt(&self) -> Var {
        unary(self, "sqrt", Tensor::sqrt, |_, y| y.recip().mul_scalar(0.5))
    }

    /// `tanh x`: derivative `1 − y²`.
    pub fn tanh(&self) -> Var {
        unary(self, "tanh", Tensor::tanh, |_, y| y.sqr().affine(-1.0, 1.0))
    }

    /// `σ(x)`: derivative `y(1 − y)`.
    pub fn sigmoid(&self) -> Var {
        unary(self, "sigmoid", Tensor::sigmoid, |_, y| y.mul(&y.affine(-1.0, 1.0)))
    }

    /// `ln σ(x)` (stable for large |x|): derivative `1 − σ(x) = σ(−x)`.
    pub fn log_sigmoid(&self) -> Var {
        unary(self, "log_sigmoid", Tensor::log_sigmoid, |x, _| x.neg().sigmoid())
    }

    /// `x` clamped to `[lo, hi]`: derivative 1 inside (bounds included, as PyTorch), 0 outside.
    pub fn clamp(&self, lo: f64, hi: f64) -> Var {
        let x = self.value();
        let lo_t = Tensor::full(lo, &[], x.dtype());
        let hi_t = Tensor::full(hi, &[], x.dtype());
        let y = Var::where_cond(&x.lt(&lo_t), &Var::constant(lo_t.clone()), self);
        Var::where_cond(&x.gt(&hi_t), &Var::constant(hi_t), &y)
    }

    /// `min(x, y)` elementwise (broadcasting); the gradient goes to the smaller input, to `x`
    /// on a tie (the sum of the two gradients is PyTorch's, which splits ties in halves).
    #[track_caller]
    pub fn minimum(&self, y: &Var) -> Var {
        Var::where_cond(&self.value().gt(y.value()), y, self)
    }

    /// `max(x, y)` elementwise (broadcasting); on a tie the gradient goes to `x`.
    #[track_caller]
    pub fn maximum(&self, y: &Var) -> Var {
        Var::where_cond(&self.value().lt(y.value()), y, self)
    }

    /// `max(x, 0)`: derivative `1[x > 0]` (0 at 0).
    pub fn relu(&self) -> Var {
        unary(self, "relu", Tensor::relu, |x, _| x.step())
    }

    /// `erf x`: derivative `2/√π · e^{−x²}`.
    pub fn erf(&self) -> Var {
        unary(self, "erf", Tensor::erf, |x, _| x.sqr().neg().exp().mul_scalar(std::f64::consts::FRAC_2_SQRT_PI))
    }
}

macro_rules! var_operator {
    ($trait:ident, $fn:ident) => {
        impl std::ops::$trait<&Var> for &Var {
            type Output = Var;
            #[track_caller]
            fn $fn(self, rhs: &Var) -> Var {
                Var::$fn(self, rhs)
            }
        }
    };
}
var_operator!(Add, add);
var_operator!(Sub, sub);
var_operator!(Mul, mul);
var_operator!(Div, div);
