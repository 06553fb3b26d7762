//! Rotary position embedding (RoPE, Su et al. 2021).
//!
//! Each pair of channels `(x₁, x₂)` at position `p` is rotated by the angle `p·θ_i`,
//! `θ_i = base^(−2i/D)`: `(x₁ cos − x₂ sin, x₁ sin + x₂ cos)`. A rotation's inverse is its
//! transpose, so the backward pass is the same rotation with `−sin`. Dot products between a
//! query at `p` and a key at `q` then depend only on `p − q` (derivation: docs/book, "RoPE").

use crate::dtype::Float;

/// Which channels form a rotating pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs `(i, i + D/2)`: GPT-NeoX and Hugging Face LLaMA checkpoints.
    HalfSplit,
    /// Pairs `(2i, 2i + 1)`: the original LLaMA / GPT-J layout (and GGUF's on-disk q/k order).
    Interleaved,
}

/// `cos(p·θ_i)` and `sin(p·θ_i)` for positions `pos0..pos0+t`, each `(t, D/2)`.
pub fn rope_tables<T: Float>(pos0: usize, t: usize, d: usize, base: f64) -> (Vec<T>, Vec<T>) {
    let half = d / 2;
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for p in pos0..pos0 + t {
        for i in 0..half {
            let theta = base.powf(-2.0 * i as f64 / d as f64);
            let a = p as f64 * theta;
            cos.push(T::from_f64(a.cos()));
            sin.push(T::from_f64(a.sin()));
        }
    }
    (cos, sin)
}

/// Rotates each row of length `d` of `inp` into `out`; row `r` sits at table row `pos_of(r)`.
/// Forward (`backward = false`) rotates and writes (`=`); backward applies the inverse
/// rotation and accumulates (`+=`).
fn rope_apply<T: Float>(
    out: &mut [T],
    inp: &[T],
    d: usize,
    cos: &[T],
    sin: &[T],
    pos_of: impl Fn(usize) -> usize,
    layout: RopeLayout,
    backward: bool,
) {
    let half = d / 2;
    for (r, (o, x)) in out.chunks_mut(d).zip(inp.chunks(d)).enumerate() {
        let p = pos_of(r);
        let (c, s) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
        for i in 0..half {
            let (i1, i2) = match layout {
                RopeLayout::HalfSplit => (i, i + half),
                RopeLayout::Interleaved => (2 * i, 2 * i + 1),
            };
            let (x1, x2) = (x[i1], x[i2]);
            if backward {
                o[i1] += x1 * c[i] + x2 * s[i];
                o[i2] += -x1 * s[i] + x2 * c[i];
            } else {
                o[i1] = x1 * c[i] - x2 * s[i];
                o[i2] = x1 * s[i] + x2 * c[i];
            }
        }
        // An odd trailing channel (d odd) is not rotated.
        if d % 2 == 1 {
            if backward {
                o[d - 1] += x[d - 1];
            } else {
                o[d - 1] = x[d - 1];
            }
        }
    }
}

/// RoPE forward (`=`): rows of `inp` are `(…, D)`; `pos_of(row)` gives the table row.
pub fn rope_forward<T: Float>(
    out: &mut [T],
    inp: &[T],
    d: usize,
    cos: &[T],
    sin: &[T],
    pos_of: impl Fn(usize) -> usize,
    layout: RopeLayout,
) {
    rope_apply(out, inp, d, cos, sin, pos_of, layout, false)
}

/// RoPE backward (`+=`): rotates `dout` back by the same angles.
pub fn rope_backward<T: Float>(
    dinp: &mut [T],
    dout: &[T],
    d: usize,
    cos: &[T],
    sin: &[T],
    pos_of: impl Fn(usize) -> usize,
    layout: RopeLayout,
) {
    rope_apply(dinp, dout, d, cos, sin, pos_of, layout, true)
}
