//! Helpers shared by the autograd tests.
#![allow(dead_code, unreachable_pub)]

use yuanli_autograd::gradcheck::{gradcheck, GradcheckOpts};
use yuanli_autograd::Var;
use yuanli_tensor::{DType, Rng, Tensor};

/// Normal(0, 1) f64 data.
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 0.0, 1.0, DType::F64, &mut Rng::new(seed))
}

/// Positive data in [0.5, 2).
pub fn positive(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_uniform(shape, 0.5, 2.0, DType::F64, &mut Rng::new(seed))
}

/// Runs a gradient check and panics with the mismatch and the op's name.
#[track_caller]
pub fn check(name: &str, f: impl Fn(&[Var]) -> Var, inputs: &[Tensor]) {
    if let Err(m) = gradcheck(f, inputs, GradcheckOpts::default()) {
        let shapes: Vec<_> = inputs.iter().map(|t| t.shape().to_vec()).collect();
        panic!("gradcheck {name} failed for input shapes {shapes:?}: {m}");
    }
}

/// Largest |a − b| / (atol + rtol·|b|) over two tensors of equal shape (≤ 1 passes).
pub fn close_ratio(a: &Tensor, b: &Tensor, atol: f64, rtol: f64) -> f64 {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    a.to_vec_f64().iter().zip(b.to_vec_f64()).map(|(x, y)| (x - y).abs() / (atol + rtol * y.abs())).fold(0.0, f64::max)
}

/// Asserts two tensors agree within tolerances, printing the worst ratio ("TENSOR OK" style).
#[track_caller]
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, atol: f64, rtol: f64) {
    let r = close_ratio(a, b, atol, rtol);
    assert!(r <= 1.0, "{what}: NOT OK, worst |a−b|/(atol+rtol|b|) = {r:.3}");
}

/// Runs `fused` and `composite` on the same f32 inputs and compares outputs and every input
/// gradient (seeded with the same random output gradient).
#[track_caller]
pub fn fused_matches_composite(
    name: &str,
    fused: impl Fn(&[Var]) -> Var,
    composite: impl Fn(&[Var]) -> Var,
    inputs: &[Tensor],
    atol: f64,
    rtol: f64,
) {
    let xs: Vec<Tensor> = inputs.iter().map(|x| x.to_dtype(DType::F32)).collect();
    let run = |f: &dyn Fn(&[Var]) -> Var| {
        let vars: Vec<Var> = xs.iter().map(|x| Var::leaf(x.copy())).collect();
        let out = f(&vars);
        let seed = Tensor::randn(out.shape(), 0.0, 1.0, DType::F32, &mut Rng::new(99));
        out.backward_with(seed);
        let grads: Vec<Option<Tensor>> = vars.iter().map(|v| v.grad()).collect();
        (out.value().clone(), grads)
    };
    let (yf, gf) = run(&fused);
    let (yc, gc) = run(&composite);
    assert_close(&format!("{name} forward"), &yf, &yc, atol, rtol);
    for (i, (a, b)) in gf.iter().zip(&gc).enumerate() {
        match (a, b) {
            (Some(a), Some(b)) => assert_close(&format!("{name} grad of input {i}"), a, b, atol, rtol),
            (None, None) => {}
            _ => panic!("{name}: input {i} has a gradient on one side only"),
        }
    }
}
