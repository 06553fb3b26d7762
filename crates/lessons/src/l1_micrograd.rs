//! Lesson 1: micrograd from scratch — a scalar autodiff, a neuron, a layer, an MLP.

use crate::micrograd::{sgd_step, Mlp, Value};
use crate::LessonOpts;
use serde_json::json;
use yuanli_tensor::Rng;

// ANCHOR: example
/// The expression the lesson draws: `L = tanh(a·b + c) · d + eᵃ / b`.
pub fn example_expression(a: f64, b: f64, c: f64, d: f64) -> (Value, [Value; 4]) {
    let (va, vb, vc, vd) = (Value::new(a, "a"), Value::new(b, "b"), Value::new(c, "c"), Value::new(d, "d"));
    let l = va.mul(&vb).add(&vc).tanh().mul(&vd).add(&va.exp().div(&vb));
    (l, [va, vb, vc, vd])
}
// ANCHOR_END: example

/// Two interleaved half-moons with noise: points `(x, y)` and labels ±1.
pub fn moons(n: usize, noise: f64, rng: &mut Rng) -> (Vec<[f64; 2]>, Vec<f64>) {
    let mut xs = Vec::with_capacity(n);
    let mut ys = Vec::with_capacity(n);
    for i in 0..n {
        let t = std::f64::consts::PI * rng.uniform();
        let (x, y, label) = if i % 2 == 0 { (t.cos(), t.sin(), -1.0) } else { (1.0 - t.cos(), 0.5 - t.sin(), 1.0) };
        xs.push([x + noise * rng.normal(), y + noise * rng.normal()]);
        ys.push(label);
    }
    (xs, ys)
}

/// Runs lesson 1.
pub fn run(opts: &LessonOpts) -> anyhow::Result<serde_json::Value> {
    let say = |s: String| crate::say(opts, &s);
    say("Lesson 1 — micrograd: a scalar autodiff engine, then a neural network on top of it\n".into());

    // ANCHOR: expression
    let (l, [a, b, c, d]) = example_expression(0.5, -1.5, 0.8, 2.0);
    l.backward();
    // ANCHOR_END: expression
    say("L = tanh(a·b + c)·d + exp(a)/b, every node with its value and ∂L/∂node:\n".into());
    say(l.draw());
    say(format!(
        "∂L/∂a = {:.6}, ∂L/∂b = {:.6}, ∂L/∂c = {:.6}, ∂L/∂d = {:.6}\n",
        a.grad(),
        b.grad(),
        c.grad(),
        d.grad()
    ));

    // ANCHOR: train
    let mut rng = Rng::new(opts.seed);
    let (xs, ys) = moons(100, 0.1, &mut rng);
    let mut uniform = || rng.uniform_range(-1.0, 1.0);
    let mut model = Mlp::new(&[2, 16, 16, 1], &mut uniform);
    let mut last = (0.0, 0.0);
    for step in 0..100 {
        // Max-margin (hinge) loss plus L2 regularisation, as in an SVM.
        let mut loss = Value::new(0.0, "");
        let mut correct = 0;
        for (x, &y) in xs.iter().zip(&ys) {
            let input = [Value::new(x[0], "x0"), Value::new(x[1], "x1")];
            let score = model.forward(&input).remove(0);
            let margin = Value::new(1.0, "").sub(&score.mul(&Value::new(y, "y")));
            loss = loss.add(&margin.relu());
            correct += usize::from((score.data() > 0.0) == (y > 0.0));
        }
        let params = model.parameters();
        let l2 = params.iter().fold(Value::new(0.0, ""), |acc, p| acc.add(&p.mul(p)));
        let total = loss.div(&Value::new(xs.len() as f64, "")).add(&l2.mul(&Value::new(1e-4, "")));
        total.backward();
        let lr = 1.0 - 0.9 * step as f64 / 100.0;
        model.set_parameters(&sgd_step(&params, lr));
        last = (total.data(), correct as f64 / xs.len() as f64);
        if step % 10 == 0 || step == 99 {
            say(format!("step {step:>3}  loss {:.4}  accuracy {:>5.1}%", last.0, 100.0 * last.1));
        }
    }
    // ANCHOR_END: train
    say(format!(
        "\n{} parameters, all scalars: every gradient above came from the chain rule, node by node.",
        model.parameters().len()
    ));
    Ok(json!({ "lesson": 1, "final_loss": last.0, "train_accuracy": last.1, "dl_da": a.grad(), "dl_db": b.grad() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use yuanli_autograd::Var;
    use yuanli_tensor::Tensor;

    // ANCHOR: check
    #[test]
    fn scalar_gradients_equal_the_tensor_engines() {
        let (a0, b0, c0, d0) = (0.5, -1.5, 0.8, 2.0);
        let (l, [a, b, c, d]) = example_expression(a0, b0, c0, d0);
        l.backward();
        // The same expression on the tensor engine, in f64.
        let leaf = |v: f64| Var::leaf(Tensor::new(vec![v], &[1]));
        let (ta, tb, tc, td) = (leaf(a0), leaf(b0), leaf(c0), leaf(d0));
        let tl = ta.mul(&tb).add(&tc).tanh().mul(&td).add(&ta.exp().div(&tb));
        assert!((tl.value().item() - l.data()).abs() < 1e-12);
        tl.sum_all().backward();
        for (scalar, tensor) in [(&a, &ta), (&b, &tb), (&c, &tc), (&d, &td)] {
            let g = tensor.grad().expect("leaf gradient").item();
            assert!((scalar.grad() - g).abs() < 1e-12, "{} vs {g}", scalar.grad());
        }
    }
    // ANCHOR_END: check

    #[test]
    fn the_scalar_mlp_learns_the_moons() {
        let opts = LessonOpts { data_dir: "data".into(), out_dir: std::env::temp_dir(), seed: 1337, quiet: true };
        let out = run(&opts).unwrap();
        assert!(out["train_accuracy"].as_f64().unwrap() >= 0.95, "{out}");
    }
}
