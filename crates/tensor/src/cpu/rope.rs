//! Rotary position embedding (RoPE, Su et al. 2021).
//!
//! Each pair of channels `(x₁, x₂)` at position `p` is rotated by the angle `p·θ_i`,
//! `θ_i = base^(−2i/D)`: `(x₁ cos − x₂ sin, x₁ sin + x₂ cos)`. A rotation's inverse is its
//! transpose, so the backward pass is the same rotation with `−sin` (and with a factor `m` on
//! both, [`RopeFreqs::mscale`], the map is `m·R` and its transpose `m·Rᵀ`: still `−sin`). Dot products between a
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

/// What turns a position into angles: pair `i` at position `p` turns by `p·θ_i`
/// (`inv_freq[i] = θ_i`), and both `cos` and `sin` are multiplied by `mscale` — so queries and
/// keys are scaled by it and attention logits by `mscale²` (YaRN's "attention temperature";
/// 1 for every other scheme). Plain RoPE has `θ_i = base^(−2i/D)`; a RoPE *scaling* (linear,
/// NTK, YaRN, LLaMA 3) only changes these numbers — which numbers is the model's business
/// (`yuanli_models::RopeScaling`), the rotation below is the same for all.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeFreqs {
    /// `θ_i` for each of the `D/2` pairs.
    pub inv_freq: Vec<f64>,
    /// Factor on `cos` and `sin`.
    pub mscale: f64,
}

impl Default for RopeFreqs {
    /// No pairs, factor 1 (storage to fill).
    fn default() -> Self {
        RopeFreqs { inv_freq: Vec::new(), mscale: 1.0 }
    }
}

impl RopeFreqs {
    /// Plain RoPE over a head of `d` channels: `θ_i = base^(−2i/d)`, `i < d/2`, computed in f64.
    pub fn new(d: usize, base: f64) -> RopeFreqs {
        RopeFreqs { inv_freq: (0..d / 2).map(|i| base.powf(-2.0 * i as f64 / d as f64)).collect(), mscale: 1.0 }
    }

    /// The head size these frequencies rotate (`2 ×` pairs; an odd last channel is left alone).
    pub fn pairs(&self) -> usize {
        self.inv_freq.len()
    }
}

/// `mscale·cos(p·θ_i)` and `mscale·sin(p·θ_i)` for positions `pos0..pos0+t`, each `(t, D/2)`.
///
/// A training step asks for the same tables twice per layer and pass (queries and keys, forward
/// and backward): they are computed once in f64 and kept (the last few sets), so the
/// `t·D/2` sines and cosines (≈ 0.5 ms for 256 positions of 64 channels) are paid once per run.
pub fn rope_tables<T: Float>(pos0: usize, t: usize, freqs: &RopeFreqs) -> (Vec<T>, Vec<T>) {
    let tables = cached_tables(pos0, t, freqs);
    let cast = |v: &[f64]| v.iter().map(|&x| T::from_f64(x)).collect();
    (cast(&tables.0), cast(&tables.1))
}

type Tables = std::sync::Arc<(Vec<f64>, Vec<f64>)>;

fn cached_tables(pos0: usize, t: usize, freqs: &RopeFreqs) -> Tables {
    use std::sync::{Arc, Mutex};
    const KEEP: usize = 8;
    type Key = (usize, usize, RopeFreqs);
    static CACHE: Mutex<Vec<(Key, Tables)>> = Mutex::new(Vec::new());
    let hit = |k: &Key| k.0 == pos0 && k.1 == t && k.2 == *freqs;
    if let Some((_, tables)) = CACHE.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(k, _)| hit(k)) {
        return tables.clone();
    }
    let half = freqs.pairs();
    let (mut cos, mut sin) = (vec![0.0; t * half], vec![0.0; t * half]);
    for (r, p) in (pos0..pos0 + t).enumerate() {
        rope_angles(p, freqs, &mut cos[r * half..(r + 1) * half], &mut sin[r * half..(r + 1) * half]);
    }
    let tables = Arc::new((cos, sin));
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= KEEP {
        cache.remove(0);
    }
    cache.push(((pos0, t, freqs.clone()), tables.clone()));
    tables
}

/// One row of the tables: `cos[i] = mscale·cos(p·θ_i)`, `sin[i] = mscale·sin(p·θ_i)`,
/// computed in f64 (`i < D/2`).
pub fn rope_angles<T: Float>(p: usize, freqs: &RopeFreqs, cos: &mut [T], sin: &mut [T]) {
    let m = freqs.mscale;
    for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(&freqs.inv_freq) {
        let a = p as f64 * f;
        *c = T::from_f64(m * a.cos());
        *s = T::from_f64(m * a.sin());
    }
}

/// The channels of pair `i` (of `D/2`).
#[inline(always)]
fn pair(i: usize, half: usize, layout: RopeLayout) -> (usize, usize) {
    match layout {
        RopeLayout::HalfSplit => (i, i + half),
        RopeLayout::Interleaved => (2 * i, 2 * i + 1),
    }
}

/// `(x₁ cos − x₂ sin, x₁ sin + x₂ cos)`: the rotation of one pair (the inverse is `sin → −sin`).
#[inline(always)]
fn rotate<T: Float>(x1: T, x2: T, c: T, s: T) -> (T, T) {
    (x1 * c - x2 * s, x1 * s + x2 * c)
}

/// Rotates one row `x` of `D` channels in place by the angles of one table row (`D/2` each):
/// the inference engine's RoPE, one token at its own position.
pub fn rope_row_inplace<T: Float>(x: &mut [T], cos: &[T], sin: &[T], layout: RopeLayout) {
    let half = x.len() / 2;
    for i in 0..half {
        let (i1, i2) = pair(i, half, layout);
        (x[i1], x[i2]) = rotate(x[i1], x[i2], cos[i], sin[i]);
    }
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
            let (i1, i2) = pair(i, half, layout);
            if backward {
                let (y1, y2) = rotate(x[i1], x[i2], c[i], -s[i]);
                o[i1] += y1;
                o[i2] += y2;
            } else {
                (o[i1], o[i2]) = rotate(x[i1], x[i2], c[i], s[i]);
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
