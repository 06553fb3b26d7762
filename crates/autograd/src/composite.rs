//! Composite twins of the fused ops, built only from primitives.
//!
//! They are slow and allocate the full intermediate tensors, and they are the reference: the
//! tests check every fused op against its twin here, forward and backward, and gradient-check
//! both. Reading them side by side with the fused backward formulas is a good exercise.

use crate::ops::{AttentionOpts, RopeOpts};
use crate::var::Var;
use yuanli_tensor::{GeluKind, RopeLayout, Tensor};

fn last_axis_max_const(x: &Var) -> Var {
    // The max shift does not change softmax; treating it as a constant is exact.
    let m = x.value().max(&[-1], true);
    // Rows that are all −∞ would give NaN; shift by 0 there.
    let zero = Tensor::zeros(&[], m.dtype());
    let inf = Tensor::full(f64::NEG_INFINITY, &[], m.dtype());
    Var::constant(Tensor::where_cond(&m.eq(&inf), &zero, &m))
}

/// `linear(x, W, b) = x·Wᵀ + b`: a matmul with a transposed view, then a broadcast add.
pub fn linear(x: &Var, w: &Var, b: Option<&Var>) -> Var {
    let y = x.matmul(&w.t());
    match b {
        Some(b) => y.add(b),
        None => y,
    }
}

/// `lora_linear(x) = x·Wᵀ + b + s · (x ⊙ m)·Aᵀ·Bᵀ` with `W` a constant: linears, a mask
/// product (the same hashed mask the fused op draws), a scale and an add.
pub fn lora_linear(x: &Var, w: &Tensor, b: Option<&Var>, a: &Var, bm: &Var, opts: crate::ops::LoraOpts) -> Var {
    let base = linear(x, &Var::constant(w.clone()), b);
    let xd = if opts.dropout > 0.0 {
        let ones = Tensor::ones(x.shape(), x.value().dtype());
        x.mul(&Var::constant(ones.dropout_hashed(opts.dropout, opts.seed)))
    } else {
        x.clone()
    };
    base.add(&linear(&linear(&xd, a, None), bm, None).scale(opts.scale))
}

/// `softmax(x) = e^{x−m} / Σ e^{x−m}` over the last axis.
pub fn softmax(x: &Var) -> Var {
    let e = x.sub(&last_axis_max_const(x)).exp();
    e.div(&e.sum(&[-1], true))
}

/// `log_softmax(x) = x − m − ln Σ e^{x−m}`.
pub fn log_softmax(x: &Var) -> Var {
    let s = x.sub(&last_axis_max_const(x));
    s.sub(&s.exp().sum(&[-1], true).log())
}

/// Mean over counted rows of `−log_softmax(x)[y]`.
pub fn cross_entropy(logits: &Var, targets: &Tensor, ignore_index: Option<u32>) -> Var {
    let v = logits.shape()[logits.shape().len() - 1];
    let n = targets.numel();
    let lp = log_softmax(&logits.reshape(&[n, v]));
    let ids = targets.to_vec::<u32>();
    let counted = ids.iter().filter(|&&t| Some(t) != ignore_index).count();
    // Ignored rows gather column 0 and get weight 0.
    let safe: Vec<u32> = ids.iter().map(|&t| if Some(t) == ignore_index { 0 } else { t }).collect();
    let w: Vec<f64> = ids
        .iter()
        .map(|&t| if Some(t) == ignore_index || counted == 0 { 0.0 } else { -1.0 / counted as f64 })
        .collect();
    let picked = lp.gather(1, &Tensor::new(safe, &[n, 1]));
    let weights = Var::constant(Tensor::new(w, &[n, 1]).to_dtype(logits.value().dtype()));
    picked.mul(&weights).sum_all()
}

/// LayerNorm from mean, subtraction, power and products.
pub fn layer_norm(x: &Var, w: &Var, b: Option<&Var>, eps: f64) -> Var {
    let xc = x.sub(&x.mean(&[-1], true));
    let var = xc.mul(&xc).mean(&[-1], true);
    let y = xc.mul(&var.add_scalar(eps).powf(-0.5)).mul(w);
    match b {
        Some(b) => y.add(b),
        None => y,
    }
}

/// RMSNorm `x·(mean(x²) + ε)^{−1/2}·w`.
pub fn rms_norm(x: &Var, w: &Var, eps: f64) -> Var {
    let ms = x.mul(x).mean(&[-1], true);
    x.mul(&ms.add_scalar(eps).powf(-0.5)).mul(w)
}

/// GELU from tanh or erf primitives.
pub fn gelu(x: &Var, kind: GeluKind) -> Var {
    let inner = match kind {
        GeluKind::Tanh => x.add(&x.powf(3.0).scale(0.044715)).scale((2.0 / std::f64::consts::PI).sqrt()).tanh(),
        GeluKind::Exact => x.scale(std::f64::consts::FRAC_1_SQRT_2).erf(),
    };
    x.mul(&inner.add_scalar(1.0)).scale(0.5)
}

/// SiLU `x·σ(x)`.
pub fn silu(x: &Var) -> Var {
    x.mul(&x.sigmoid())
}

/// SwiGLU `silu(gate) ⊙ up`.
pub fn swiglu(gate: &Var, up: &Var) -> Var {
    silu(gate).mul(up)
}

/// Embedding as a one-hot matrix product: `onehot(ids) · W`.
pub fn embedding(table: &Var, ids: &Tensor) -> Var {
    let (v, c) = (table.shape()[0], table.shape()[1]);
    let idv = ids.to_vec::<u32>();
    let mut onehot = vec![0.0f64; idv.len() * v];
    for (n, &id) in idv.iter().enumerate() {
        onehot[n * v + id as usize] = 1.0;
    }
    let oh = Var::constant(Tensor::new(onehot, &[idv.len(), v]).to_dtype(table.value().dtype()));
    let mut shape = ids.shape().to_vec();
    shape.push(c);
    oh.matmul(table).reshape(&shape)
}

/// Dropout with a given mask: `x ⊙ m`.
pub fn dropout(x: &Var, mask: &Tensor) -> Var {
    x.mul(&Var::constant(mask.clone()))
}

/// RoPE from narrow, products and concat: `(x₁cos − x₂sin, x₁sin + x₂cos)` per pair.
#[track_caller]
pub fn rope(x: &Var, o: RopeOpts) -> Var {
    let shape = x.shape().to_vec();
    let r = shape.len();
    let d = shape[r - 1];
    assert!(d.is_multiple_of(2), "composite rope: even head size needed, got {d}");
    let sa = if o.seq_axis < 0 { (o.seq_axis + r as isize) as usize } else { o.seq_axis as usize };
    let t = shape[sa];
    let (cos, sin) = yuanli_tensor::cpu::rope_tables::<f64>(o.pos0, t, o.freqs);
    let mut tshape = vec![1; r];
    tshape[sa] = t;
    tshape[r - 1] = d / 2;
    let dt = x.value().dtype();
    let cos = Var::constant(Tensor::new(cos, &tshape).to_dtype(dt));
    let sin = Var::constant(Tensor::new(sin, &tshape).to_dtype(dt));
    let rotate = |x1: &Var, x2: &Var| (x1.mul(&cos).sub(&x2.mul(&sin)), x1.mul(&sin).add(&x2.mul(&cos)));
    match o.layout {
        RopeLayout::HalfSplit => {
            let (x1, x2) = (x.narrow(-1, 0, d / 2), x.narrow(-1, d / 2, d / 2));
            let (y1, y2) = rotate(&x1, &x2);
            Var::concat(&[y1, y2], -1)
        }
        RopeLayout::Interleaved => {
            let mut pairs = shape.clone();
            pairs[r - 1] = d / 2;
            pairs.push(2);
            let xp = x.reshape(&pairs);
            let (x1, x2) =
                (xp.narrow(-1, 0, 1).reshape(&tshape_like(&pairs)), xp.narrow(-1, 1, 1).reshape(&tshape_like(&pairs)));
            let (y1, y2) = rotate(&x1, &x2);
            let mut un = pairs.clone();
            un[r] = 1;
            Var::concat(&[y1.reshape(&un), y2.reshape(&un)], -1).reshape(&shape)
        }
    }
}

fn tshape_like(pairs: &[usize]) -> Vec<usize> {
    pairs[..pairs.len() - 1].to_vec()
}

/// Attention from matmul, scale, mask, `where` and the composite softmax; GQA by repeating
/// key/value heads with broadcast + reshape.
#[track_caller]
pub fn attention(q: &Var, k: &Var, v: &Var, o: &AttentionOpts) -> Var {
    let (b, h, tq, d) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let (hk, tk) = (k.shape()[1], k.shape()[2]);
    let g = h / hk;
    let repeat = |x: &Var| {
        if g == 1 {
            return x.clone();
        }
        x.reshape(&[b, hk, 1, tk, d]).broadcast_as(&[b, hk, g, tk, d]).reshape(&[b, h, tk, d])
    };
    let (k, v) = (repeat(k), repeat(v));
    let scale = o.scale.unwrap_or(1.0 / (d as f64).sqrt());
    let mut s = q.matmul(&k.t()).scale(scale);
    let dt = q.value().dtype();
    if let Some(m) = &o.mask {
        s = s.add(&Var::constant(m.clone()));
    }
    if o.causal {
        let mut allowed = vec![0.0f64; tq * tk];
        for i in 0..tq {
            for j in 0..(i + 1 + tk - tq).min(tk) {
                allowed[i * tk + j] = 1.0;
            }
        }
        let cond = Tensor::new(allowed, &[tq, tk]);
        let neg = Var::constant(Tensor::full(f64::NEG_INFINITY, &[], dt));
        s = Var::where_cond(&cond, &s, &neg);
    }
    softmax(&s).matmul(&v)
}
