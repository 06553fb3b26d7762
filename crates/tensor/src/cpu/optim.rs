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
    const CHUNK: usize = 1 << 14;
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((p, g), (m, v))| {
            for i in 0..p.len() {
                let gi = g[i] + l2 * p[i];
                m[i] = s.beta1 * m[i] + (1.0 - s.beta1) * gi;
                v[i] = s.beta2 * v[i] + (1.0 - s.beta2) * gi * gi;
                let mhat = m[i] / bc1;
                let vhat = v[i] / bc2;
                p[i] -= s.lr * (mhat / (vhat.sqrt() + s.eps) + decay * p[i]);
            }
        });
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
pub fn sum_squares<T: Float>(x: &[T]) -> f64 {
    x.par_chunks(1 << 14).map(|c| c.iter().map(|v| v.to_f64() * v.to_f64()).sum::<f64>()).sum()
}
