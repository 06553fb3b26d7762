//! Optimizer trajectories against torch.optim (values from tools/reference/optim_reference.py).

use yuanli_autograd::Var;
use yuanli_nn::{ParamKind, ParamStore};
use yuanli_tensor::{DType, Tensor};
use yuanli_train::{Adam, LrSchedule, Sgd};

// torch 2.15.0: 3 steps from P0 with the gradient sequence GRADS.
const ADAMW: [f64; 4] = [2.819154100509e-01, -8.731913171622e-01, 1.883211438947e+00, -1.557589594488e-01];
const ADAM_L2: [f64; 4] = [2.784127097641e-01, -8.121678951091e-01, 1.841864991546e+00, -1.251308689332e-01];
const SGD_MOMENTUM: [f64; 4] = [4.241753895000e-01, -9.792607790000e-01, 1.992553568000e+00, -8.531005000000e-03];
const SGD_NESTEROV: [f64; 4] = [4.104397619805e-01, -9.884546239610e-01, 1.997388036512e+00, -7.643544295000e-03];
const P0: [f32; 4] = [0.5, -1.0, 2.0, 0.0];
const GRADS: [[f32; 4]; 3] = [[0.1, -0.2, 0.3, 0.05], [0.4, 0.1, -0.5, 0.0], [-0.3, 0.2, 0.1, -0.05]];

fn run(mut step: impl FnMut(&ParamStore)) -> Vec<f32> {
    let mut store = ParamStore::new();
    let _w = store.param("w", Tensor::new(P0.to_vec(), &[4]), ParamKind::Weight).unwrap();
    for g in GRADS {
        store.grad_arena().copy_from_(&Tensor::new(g.to_vec(), &[4]));
        step(&store);
    }
    store.value_arena().to_vec::<f32>()
}

fn assert_matches(name: &str, got: &[f32], want: &[f64]) {
    for (g, w) in got.iter().zip(want) {
        assert!((*g as f64 - w).abs() < 2e-6, "{name}: {got:?} vs torch {want:?}");
    }
}

#[test]
fn adamw_adam_and_sgd_match_torch() {
    let mut adamw = Adam::adamw(0.9, 0.999, 1e-8, 0.1);
    assert_matches("AdamW", &run(|s| adamw.step(s, 0.1)), &ADAMW);
    let mut adam = Adam::adam_l2(0.9, 0.999, 1e-8, 0.1);
    assert_matches("Adam+L2", &run(|s| adam.step(s, 0.1)), &ADAM_L2);
    let mut sgd = Sgd::new(0.9, false, 0.01);
    assert_matches("SGD momentum", &run(|s| sgd.step(s, 0.1)), &SGD_MOMENTUM);
    let mut nesterov = Sgd::new(0.9, true, 0.01);
    assert_matches("SGD Nesterov", &run(|s| nesterov.step(s, 0.1)), &SGD_NESTEROV);
}

#[test]
fn default_groups_do_not_decay_norms_biases_or_embeddings() {
    let mut store = ParamStore::new();
    let kinds = [ParamKind::Weight, ParamKind::Bias, ParamKind::Norm, ParamKind::Embedding];
    for (i, k) in kinds.iter().enumerate() {
        store.param(&format!("p{i}"), Tensor::ones(&[2], DType::F32), *k).unwrap();
    }
    // Zero gradients: only decoupled decay moves anything.
    let mut opt = Adam::adamw(0.9, 0.999, 1e-8, 0.5);
    opt.step(&store, 0.1);
    let v = store.value_arena().to_vec::<f32>();
    assert_eq!(v[..2], [0.95, 0.95], "weights decay by lr·λ");
    assert_eq!(v[2..], [1.0; 6], "norms, biases and embeddings do not decay");
}

#[test]
fn adamw_fits_a_linear_regression() {
    // y = 3x − 2 from 64 points; loss must fall below 1e-3.
    let mut store = ParamStore::new();
    let w = store.param("w", Tensor::zeros(&[1, 1], DType::F32), ParamKind::Weight).unwrap();
    let b = store.param("b", Tensor::zeros(&[1], DType::F32), ParamKind::Bias).unwrap();
    let xs: Vec<f32> = (0..64).map(|i| i as f32 / 32.0 - 1.0).collect();
    let ys: Vec<f32> = xs.iter().map(|x| 3.0 * x - 2.0).collect();
    let (x, y) = (Var::constant(Tensor::new(xs, &[64, 1])), Var::constant(Tensor::new(ys, &[64, 1])));
    let mut opt = Adam::adamw(0.9, 0.999, 1e-8, 0.0);
    let sched = LrSchedule::WarmupCosine { max_lr: 0.1, min_lr: 0.001, warmup: 10, total: 400 };
    let mut loss = f64::INFINITY;
    for step in 0..400 {
        store.zero_grad();
        let err = x.matmul(&w).add(&b).sub(&y);
        let l = err.mul(&err).mean_all();
        loss = l.value().item();
        l.backward();
        opt.step(&store, sched.lr(step));
    }
    assert!(loss < 1e-3, "final loss {loss}");
}
