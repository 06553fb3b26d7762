//! Adam/AdamW and SGD over a parameter arena.

use yuanli_nn::{ParamInfo, ParamKind, ParamStore};
use yuanli_tensor::cpu::{self, AdamStep};

/// A parameter group: which parameters it holds, and their decay and rate multiplier.
pub struct ParamGroup {
    /// Name for logs (`"decay"`, `"no_decay"`, …).
    pub name: String,
    /// Weight decay λ for this group.
    pub weight_decay: f64,
    /// Multiplier of the scheduled learning rate.
    pub lr_scale: f64,
    /// Whether a parameter belongs to the group (the first matching group wins).
    pub contains: Box<dyn Fn(&ParamInfo) -> bool + Send + Sync>,
}

impl ParamGroup {
    /// The default split: λ on weight matrices, none on norms, biases and embeddings.
    pub fn default_groups(weight_decay: f64) -> Vec<ParamGroup> {
        vec![
            ParamGroup {
                name: "decay".into(),
                weight_decay,
                lr_scale: 1.0,
                contains: Box::new(|p| p.kind == ParamKind::Weight),
            },
            ParamGroup { name: "no_decay".into(), weight_decay: 0.0, lr_scale: 1.0, contains: Box::new(|_| true) },
        ]
    }
}

/// Contiguous arena ranges that share one group: `(start, end, group)`.
fn runs(store: &ParamStore, groups: &[ParamGroup]) -> Vec<(usize, usize, usize)> {
    let mut out: Vec<(usize, usize, usize)> = Vec::new();
    for p in store.params() {
        // A parameter no group claims is not updated (frozen).
        let Some(g) = groups.iter().position(|g| !p.frozen && (g.contains)(p)) else {
            continue;
        };
        let (start, end) = (p.offset, p.offset + p.numel());
        match out.last_mut() {
            Some(last) if last.1 == start && last.2 == g => last.1 = end,
            _ => out.push((start, end, g)),
        }
    }
    out
}

/// Adam (`decoupled = false`, L2 in the gradient) or AdamW (`decoupled = true`).
pub struct Adam {
    /// β₁
    pub beta1: f64,
    /// β₂
    pub beta2: f64,
    /// ε
    pub eps: f64,
    /// AdamW's decoupled decay (true) or Adam's L2 (false).
    pub decoupled: bool,
    /// Parameter groups.
    pub groups: Vec<ParamGroup>,
    /// First moments, one per arena element.
    pub m: Vec<f32>,
    /// Second moments.
    pub v: Vec<f32>,
    /// Steps taken (the bias-correction exponent).
    pub t: u64,
}

impl Adam {
    /// AdamW with the usual defaults (β = (0.9, 0.95) as in GPT training is common; PyTorch's
    /// default is (0.9, 0.999)) and the default groups.
    pub fn adamw(beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Self {
        Self {
            beta1,
            beta2,
            eps,
            decoupled: true,
            groups: ParamGroup::default_groups(weight_decay),
            m: Vec::new(),
            v: Vec::new(),
            t: 0,
        }
    }

    /// Adam with L2 regularisation `λ` added to every parameter's gradient.
    pub fn adam_l2(beta1: f64, beta2: f64, eps: f64, weight_decay: f64) -> Self {
        let groups = vec![ParamGroup { name: "all".into(), weight_decay, lr_scale: 1.0, contains: Box::new(|_| true) }];
        Self { beta1, beta2, eps, decoupled: false, groups, m: Vec::new(), v: Vec::new(), t: 0 }
    }

    /// One update with learning rate `lr`: one pass over the arenas.
    pub fn step(&mut self, store: &ParamStore, lr: f64) {
        let n = store.num_trainable();
        self.m.resize(n, 0.0);
        self.v.resize(n, 0.0);
        self.t += 1;
        let runs = runs(store, &self.groups);
        store.grad_arena().with_slice(|g: &[f32]| {
            store.value_arena().with_slice_mut(|p: &mut [f32]| {
                for &(a, b, gi) in &runs {
                    let grp = &self.groups[gi];
                    let s = AdamStep {
                        lr: (lr * grp.lr_scale) as f32,
                        beta1: self.beta1 as f32,
                        beta2: self.beta2 as f32,
                        eps: self.eps as f32,
                        weight_decay: grp.weight_decay as f32,
                        decoupled: self.decoupled,
                        t: self.t,
                    };
                    cpu::adam_update(&mut p[a..b], &g[a..b], &mut self.m[a..b], &mut self.v[a..b], s);
                }
            })
        });
    }
}

/// SGD with momentum (optionally Nesterov) and L2 weight decay, PyTorch's convention.
pub struct Sgd {
    /// Momentum μ (0 for plain SGD).
    pub momentum: f64,
    /// Nesterov's look-ahead.
    pub nesterov: bool,
    /// Parameter groups.
    pub groups: Vec<ParamGroup>,
    /// Momentum buffers.
    pub buf: Vec<f32>,
}

impl Sgd {
    /// SGD where every parameter gets L2 decay `weight_decay`.
    pub fn new(momentum: f64, nesterov: bool, weight_decay: f64) -> Self {
        let groups = vec![ParamGroup { name: "all".into(), weight_decay, lr_scale: 1.0, contains: Box::new(|_| true) }];
        Self { momentum, nesterov, groups, buf: Vec::new() }
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, store: &ParamStore, lr: f64) {
        self.buf.resize(store.num_trainable(), 0.0);
        let runs = runs(store, &self.groups);
        store.grad_arena().with_slice(|g: &[f32]| {
            store.value_arena().with_slice_mut(|p: &mut [f32]| {
                for &(a, b, gi) in &runs {
                    let grp = &self.groups[gi];
                    let lr = (lr * grp.lr_scale) as f32;
                    cpu::sgd_update(
                        &mut p[a..b],
                        &g[a..b],
                        &mut self.buf[a..b],
                        lr,
                        self.momentum as f32,
                        self.nesterov,
                        grp.weight_decay as f32,
                    );
                }
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yuanli_autograd::Var;
    use yuanli_nn::{Init, Linear, Module};
    use yuanli_tensor::{Rng, Tensor};

    /// A model with a frozen base and a trainable head: AdamW keeps moments for the head only,
    /// the frozen weights never change, and the gradient norm and clipping see only the head.
    #[test]
    fn frozen_parameters_get_no_optimizer_state_and_never_move() {
        let mut store = ParamStore::new();
        store.set_trainable(|name, _| name.starts_with("head"));
        let mut rng = Rng::new(1);
        let base = Linear::new(&mut store, "base", 4, 8, true, Init::Normal { std: 0.5 }, &mut rng).unwrap();
        let head = Linear::new(&mut store, "head", 8, 2, false, Init::Normal { std: 0.5 }, &mut rng).unwrap();
        assert_eq!((store.num_trainable(), store.num_params()), (16, 16 + 40));
        let frozen_before: Vec<Vec<f32>> =
            store.params().iter().filter(|p| p.frozen).map(|p| store.value_of(p).to_vec::<f32>()).collect();
        let mut opt = Adam::adamw(0.9, 0.95, 1e-8, 0.1);
        for step in 0..3 {
            let x = Var::constant(Tensor::randn(&[5, 4], 0.0, 1.0, yuanli_tensor::DType::F32, &mut Rng::new(step)));
            let y = head.forward(&base.forward(&x));
            y.mul(&y).sum_all().backward();
            assert!(store.grad_norm() > 0.0);
            store.clip_grad_norm(1.0);
            opt.step(&store, 1e-2);
            store.zero_grad();
        }
        assert_eq!((opt.m.len(), opt.v.len()), (16, 16), "moments for the trainable head only");
        let frozen_after: Vec<Vec<f32>> =
            store.params().iter().filter(|p| p.frozen).map(|p| store.value_of(p).to_vec::<f32>()).collect();
        assert_eq!(frozen_before, frozen_after, "frozen parameters never move");
        assert!(base.weight.var().is_some_and(|w| w.grad().is_none()), "no gradient reaches a frozen weight");
    }
}
