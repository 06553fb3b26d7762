//! The gradient checker must catch a wrong backward formula.

use yuanli_autograd::gradcheck::{gradcheck, GradcheckOpts};
use yuanli_autograd::{Backward, Var};
use yuanli_tensor::{DType, Rng, Tensor};

/// tanh with a perturbed derivative: `1 − y` instead of `1 − y²` when `wrong`.
struct Tanh {
    y: Tensor,
    wrong: bool,
}
impl Backward for Tanh {
    fn name(&self) -> &'static str {
        "tanh (test copy)"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        let d = if self.wrong { self.y.affine(-1.0, 1.0) } else { self.y.sqr().affine(-1.0, 1.0) };
        vec![n[0].then(|| g.mul(&d))]
    }
}

fn tanh(x: &Var, wrong: bool) -> Var {
    let y = x.value().tanh();
    Var::from_op(y.clone(), Tanh { y, wrong }, &[x])
}

/// LayerNorm backward with "term 3" dropped (a classic derivation slip), built by hand.
struct LayerNormMissingTerm {
    x: Tensor,
}
impl Backward for LayerNormMissingTerm {
    fn name(&self) -> &'static str {
        "layer_norm (term 3 dropped)"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        // Correct: rstd·(g − mean(g) − n̂·mean(g ⊙ n̂)); here the last term is missing.
        let mu = self.x.mean(&[-1], true);
        let xc = self.x.sub(&mu);
        let rstd = xc.sqr().mean(&[-1], true).add_scalar(1e-5).powf(-0.5);
        vec![n[0].then(|| g.sub(&g.mean(&[-1], true)).mul(&rstd))]
    }
}

#[test]
fn a_correct_backward_passes_and_a_perturbed_one_is_caught() {
    let x = Tensor::randn(&[3, 4], 0.0, 1.0, DType::F64, &mut Rng::new(1));
    assert!(gradcheck(|v| tanh(&v[0], false), &[x.clone()], GradcheckOpts::default()).is_ok());
    let err = gradcheck(|v| tanh(&v[0], true), &[x.clone()], GradcheckOpts::default())
        .expect_err("wrong tanh backward must fail");
    assert!(err.to_string().contains("analytic"), "{err}");

    let ln_wrong = |v: &[Var]| {
        let xv = v[0].value().clone();
        let (y, _) = xv.layer_norm(&Tensor::ones(&[4], DType::F64), None, 1e-5);
        Var::from_op(y, LayerNormMissingTerm { x: xv }, &[&v[0]])
    };
    assert!(
        gradcheck(ln_wrong, &[x.clone()], GradcheckOpts::default()).is_err(),
        "dropping a LayerNorm term must be caught"
    );
    // The real fused LayerNorm passes the same check.
    let w = Var::constant(Tensor::ones(&[4], DType::F64));
    assert!(gradcheck(|v| v[0].layer_norm(&w, None, 1e-5), &[x], GradcheckOpts::default()).is_ok());
}

#[test]
fn no_grad_records_nothing_and_backward_accumulates() {
    let w = Var::leaf(Tensor::new(vec![3.0f64], &[1]));
    {
        let _g = yuanli_autograd::no_grad();
        let y = w.mul(&w);
        assert!(!y.requires_grad() && y.op_name().is_none());
    }
    assert!(yuanli_autograd::is_grad_enabled());
    // d(w²)/dw = 2w = 6, twice → 12 (accumulation with +=).
    w.mul(&w).sum_all().backward();
    w.mul(&w).sum_all().backward();
    assert_eq!(w.grad().map(|g| g.to_vec::<f64>()), Some(vec![12.0]));
}

#[test]
fn a_deep_graph_does_not_overflow_the_stack() {
    let x = Var::leaf(Tensor::new(vec![1.0f32], &[1]));
    let mut y = x.clone();
    for _ in 0..100_000 {
        y = y.add_scalar(1e-6);
    }
    y.sum_all().backward();
    assert_eq!(x.grad().map(|g| g.to_vec::<f32>()), Some(vec![1.0]));
}
