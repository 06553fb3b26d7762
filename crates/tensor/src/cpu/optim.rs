//! Optimizer update kernels: one pass over contiguous parameter, gradient and moment buffers.

use crate::dtype::Float;
use rayon::prelude::*;

/// Hyper-parameters of one Adam/AdamW step.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    /// Learning rate for this step.
    pub lr: f32,
    /// β₁, the first-moment decay.
    pub beta1: f32,
    /// β₂, the second-moment decay.
    pub beta2: f32,
    /// ε in the denominator.
    pub eps: f32,
    /// Weight decay λ (0 for parameters that should not decay).
    pub weight_decay: f32,
    /// AdamW (true): decay the weights directly. Adam (false): add λθ to the gradient (L2).
    pub decoupled: bool,
    /// 1-based step number, for bias correction.
    pub t: u64,
}

/// Adam / AdamW (Kingma & Ba; Loshchilov & Hutter), in place over all four buffers:
/// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `m̂ = m/(1−β₁ᵗ)`, `v̂ = v/(1−β₂ᵗ)`, then
/// AdamW: `θ ← θ − lr·(m̂/(√v̂ + ε) + λθ)`; Adam: the same without `λθ`, with `g ← g + λθ` first.
pub fn adam_update(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], s: AdamStep) {
    let t = s.t.clamp(1, i32::MAX as u64) as i32;
    let bc1 = 1.0 - s.beta1.powi(t);
    let bc2 = 1.0 - s.beta2.powi(t);
    let (l2, decay) = if s.decoupled { (0.0, s.weight_decay) } else { (s.weight_decay, 0.0) };
    // Zipped iterators (no indexing) let the compiler drop bounds checks and vectorize.
    let update = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let gi = g + l2 * *p;
            *m = s.beta1 * *m + (1.0 - s.beta1) * gi;
            *v = s.beta2 * *v + (1.0 - s.beta2) * gi * gi;
            let mhat = *m / bc1;
            let vhat = *v / bc2;
            *p -= s.lr * (mhat / (vhat.sqrt() + s.eps) + decay * *p);
        }
    };
    // Tasks of 2¹³ parameters (four buffers stream through each): small enough to split a
    // small model's weight matrices over the spinning team, which pays no wake-up per task.
    const CHUNK: usize = 1 << 13;
    let tasks: Vec<_> =
        param.chunks_mut(CHUNK).zip(grad.chunks(CHUNK)).zip(m.chunks_mut(CHUNK).zip(v.chunks_mut(CHUNK))).collect();
    super::team_for_each(tasks, |((p, g), (m, v))| update(p, g, m, v));
}

/// SGD with momentum (PyTorch convention): `b ← μb + g`; `θ ← θ − lr·b`, or with Nesterov
/// `θ ← θ − lr·(g + μb)`; weight decay is L2 (added to `g`).
pub fn sgd_update(
    param: &mut [f32],
    grad: &[f32],
    buf: &mut [f32],
    lr: f32,
    momentum: f32,
    nesterov: bool,
    weight_decay: f32,
) {
    for i in 0..param.len() {
        let g = grad[i] + weight_decay * param[i];
        buf[i] = momentum * buf[i] + g;
        let step = if nesterov { g + momentum * buf[i] } else { buf[i] };
        param[i] -= lr * step;
    }
}

/// Σ g² over a buffer, in f64 (the global gradient norm's building block).
///
/// Each task keeps 16 independent partial sums, which the compiler holds in vector registers;
/// a single running f64 sum would make every add wait for the previous one.
pub fn sum_squares<T: Float>(x: &[T]) -> f64 {
    const LANES: usize = 16;
    let task = |c: &[T]| {
        let mut acc = [0.0f64; LANES];
        let chunks = c.chunks_exact(LANES);
        let tail: f64 = chunks.remainder().iter().map(|v| v.to_f64() * v.to_f64()).sum();
        for ch in chunks {
            for (a, v) in acc.iter_mut().zip(ch) {
                *a += v.to_f64() * v.to_f64();
            }
        }
        acc.iter().sum::<f64>() + tail
    };
    if x.len() < super::PAR_MIN_ELEMS {
        return task(x);
    }
    x.par_chunks(super::PAR_MIN_ELEMS).map(task).sum()
}
