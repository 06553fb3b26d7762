//! A scalar autodiff engine in one screen (lesson 1), in the spirit of micrograd.
//!
//! Each [`Value`] holds a number, its gradient, the values it was computed from and a rule
//! that pushes its gradient back to them. [`Value::backward`] sorts the graph topologically
//! (iteratively, so deep graphs cannot overflow the stack) and applies the chain rule from
//! the output back to the inputs, accumulating with `+=`. It shares nothing with the tensor
//! engine: a test checks that both give the same gradients on the same expression.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

// ANCHOR: value
// ANCHOR: node
/// How a value was made, with what its backward rule needs.
#[derive(Clone, Debug)]
enum Op {
    Leaf,
    Add,
    Mul,
    Pow(f64),
    Tanh,
    Relu,
    Exp,
}

struct Node {
    data: f64,
    grad: RefCell<f64>,
    op: Op,
    children: Vec<Value>,
    label: String,
}

/// A scalar in the computation graph (cheap to clone: an `Rc`).
#[derive(Clone)]
pub struct Value(Rc<Node>);
// ANCHOR_END: node

impl Value {
    fn make(data: f64, op: Op, children: Vec<Value>) -> Value {
        Value(Rc::new(Node { data, grad: RefCell::new(0.0), op, children, label: String::new() }))
    }

    /// A leaf with a label (for printing the graph).
    pub fn new(data: f64, label: &str) -> Value {
        Value(Rc::new(Node { data, grad: RefCell::new(0.0), op: Op::Leaf, children: vec![], label: label.to_string() }))
    }

    /// The number.
    pub fn data(&self) -> f64 {
        self.0.data
    }

    /// ∂output/∂self after [`Value::backward`].
    pub fn grad(&self) -> f64 {
        *self.0.grad.borrow()
    }

    // ANCHOR: ops
    /// `a + b`
    pub fn add(&self, o: &Value) -> Value {
        Value::make(self.data() + o.data(), Op::Add, vec![self.clone(), o.clone()])
    }

    /// `a · b`
    pub fn mul(&self, o: &Value) -> Value {
        Value::make(self.data() * o.data(), Op::Mul, vec![self.clone(), o.clone()])
    }

    /// `aᵖ`
    pub fn pow(&self, p: f64) -> Value {
        Value::make(self.data().powf(p), Op::Pow(p), vec![self.clone()])
    }

    /// `tanh a`
    pub fn tanh(&self) -> Value {
        Value::make(self.data().tanh(), Op::Tanh, vec![self.clone()])
    }

    /// `max(a, 0)`
    pub fn relu(&self) -> Value {
        Value::make(self.data().max(0.0), Op::Relu, vec![self.clone()])
    }

    /// `eᵃ`
    pub fn exp(&self) -> Value {
        Value::make(self.data().exp(), Op::Exp, vec![self.clone()])
    }

    /// `a − b`, built from the primitives: `a + (−1)·b`.
    pub fn sub(&self, o: &Value) -> Value {
        self.add(&o.mul(&Value::new(-1.0, "")))
    }

    /// `a / b = a · b⁻¹`.
    pub fn div(&self, o: &Value) -> Value {
        self.mul(&o.pow(-1.0))
    }
    // ANCHOR_END: ops

    // ANCHOR: backward_step
    /// The local chain rule: push this node's gradient to its children (`+=`).
    fn backward_step(&self) {
        let g = self.grad();
        let c = &self.0.children;
        let push = |i: usize, d: f64| *c[i].0.grad.borrow_mut() += d * g;
        match self.0.op {
            Op::Leaf => {}
            Op::Add => {
                push(0, 1.0); // ∂(a+b)/∂a = 1
                push(1, 1.0);
            }
            Op::Mul => {
                push(0, c[1].data()); // ∂(ab)/∂a = b
                push(1, c[0].data());
            }
            Op::Pow(p) => push(0, p * c[0].data().powf(p - 1.0)),
            Op::Tanh => push(0, 1.0 - self.data() * self.data()), // 1 − tanh²
            Op::Relu => push(0, if c[0].data() > 0.0 { 1.0 } else { 0.0 }),
            Op::Exp => push(0, self.data()), // (eᵃ)' = eᵃ
        }
    }
    // ANCHOR_END: backward_step

    // ANCHOR: topo
    /// Nodes in topological order (children before parents), by an iterative DFS.
    fn topo(&self) -> Vec<Value> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = vec![(self.clone(), false)];
        while let Some((v, done)) = stack.pop() {
            if done {
                order.push(v);
            } else if seen.insert(Rc::as_ptr(&v.0)) {
                stack.push((v.clone(), true));
                for c in &v.0.children {
                    stack.push((c.clone(), false));
                }
            }
        }
        order
    }

    /// Sets `∂self/∂self = 1` and applies the chain rule to every node, outputs first.
    pub fn backward(&self) {
        let order = self.topo();
        for v in &order {
            *v.0.grad.borrow_mut() = 0.0;
        }
        *self.0.grad.borrow_mut() = 1.0;
        for v in order.iter().rev() {
            v.backward_step();
        }
    }
    // ANCHOR_END: topo
    // ANCHOR_END: value

    /// The graph as indented text: one line per node with its op, value and gradient.
    pub fn draw(&self) -> String {
        let mut out = String::new();
        let mut stack = vec![(self.clone(), 0usize)];
        while let Some((v, depth)) = stack.pop() {
            let name = match &v.0.op {
                Op::Leaf if v.0.label.is_empty() => "const".to_string(),
                Op::Leaf => v.0.label.clone(),
                Op::Pow(p) => format!("pow {p}"),
                op => format!("{op:?}").to_lowercase(),
            };
            out.push_str(&format!("{}{name:<8} data {:>9.4}  grad {:>9.4}\n", "  ".repeat(depth), v.data(), v.grad()));
            for c in v.0.children.iter().rev() {
                stack.push((c.clone(), depth + 1));
            }
        }
        out
    }
}

// ANCHOR: mlp
/// A neuron: `act(Σ wᵢxᵢ + b)`.
pub struct Neuron {
    w: Vec<Value>,
    b: Value,
    nonlinear: bool,
}

impl Neuron {
    /// `n_in` weights drawn from U[−1, 1) by `uniform`.
    pub fn new(n_in: usize, nonlinear: bool, uniform: &mut impl FnMut() -> f64) -> Self {
        Self { w: (0..n_in).map(|_| Value::new(uniform(), "w")).collect(), b: Value::new(0.0, "b"), nonlinear }
    }

    /// `tanh(w·x + b)`, or the plain affine map for an output neuron.
    pub fn forward(&self, x: &[Value]) -> Value {
        let mut act = self.b.clone();
        for (w, x) in self.w.iter().zip(x) {
            act = act.add(&w.mul(x));
        }
        if self.nonlinear {
            act.tanh()
        } else {
            act
        }
    }
}

/// Layers of neurons; every layer but the last is non-linear.
pub struct Mlp {
    layers: Vec<Vec<Neuron>>,
}

impl Mlp {
    /// Sizes `[n_in, h₁, …, n_out]`.
    pub fn new(sizes: &[usize], uniform: &mut impl FnMut() -> f64) -> Self {
        let n = sizes.len() - 1;
        let layers =
            (0..n).map(|i| (0..sizes[i + 1]).map(|_| Neuron::new(sizes[i], i + 1 < n, uniform)).collect()).collect();
        Self { layers }
    }

    /// The network's outputs for one input.
    pub fn forward(&self, x: &[Value]) -> Vec<Value> {
        let mut h = x.to_vec();
        for layer in &self.layers {
            h = layer.iter().map(|n| n.forward(&h)).collect();
        }
        h
    }

    /// Every weight and bias.
    pub fn parameters(&self) -> Vec<Value> {
        self.layers.iter().flatten().flat_map(|n| n.w.iter().cloned().chain(std::iter::once(n.b.clone()))).collect()
    }
}

/// One step of gradient descent: `p ← p − lr·∂L/∂p` (values are immutable, so a new leaf).
pub fn sgd_step(params: &[Value], lr: f64) -> Vec<f64> {
    params.iter().map(|p| p.data() - lr * p.grad()).collect()
}
// ANCHOR_END: mlp

impl Mlp {
    /// Replaces every parameter with a new leaf holding `values` (in `parameters()` order).
    pub fn set_parameters(&mut self, values: &[f64]) {
        let mut it = values.iter();
        for n in self.layers.iter_mut().flatten() {
            for w in n.w.iter_mut() {
                *w = Value::new(*it.next().expect("one value per parameter"), "w");
            }
            n.b = Value::new(*it.next().expect("one value per parameter"), "b");
        }
    }
}
