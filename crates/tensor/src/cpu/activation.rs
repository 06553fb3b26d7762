//! Pointwise activations with their derivatives, side by side.

use crate::dtype::Float;

/// Which GELU: the tanh approximation (GPT-2) or the exact erf form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeluKind {
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`
    Tanh,
    /// `x·Φ(x) = 0.5·x·(1 + erf(x/√2))`
    Exact,
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const INV_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// GELU forward at one point.
#[inline]
pub fn gelu<T: Float>(x: T, kind: GeluKind) -> T {
    let half = T::c(0.5);
    match kind {
        GeluKind::Tanh => {
            let u = T::from_f64(SQRT_2_OVER_PI) * (x + T::c(0.044715) * x * x * x);
            half * x * (T::ONE + u.tanh())
        }
        GeluKind::Exact => half * x * (T::ONE + (x * T::from_f64(INV_SQRT_2)).erf()),
    }
}

/// dGELU/dx at one point.
///
/// Tanh: with `u = √(2/π)(x + 0.044715x³)`, `t = tanh u`:
/// `0.5(1 + t) + 0.5·x·(1 − t²)·√(2/π)(1 + 3·0.044715x²)`.
/// Exact: `Φ(x) + x·φ(x)`, `φ(x) = e^{−x²/2}/√(2π)`.
#[inline]
pub fn gelu_grad<T: Float>(x: T, kind: GeluKind) -> T {
    let half = T::c(0.5);
    match kind {
        GeluKind::Tanh => {
            let k = T::from_f64(SQRT_2_OVER_PI);
            let u = k * (x + T::c(0.044715) * x * x * x);
            let t = u.tanh();
            half * (T::ONE + t) + half * x * (T::ONE - t * t) * k * (T::ONE + T::c(3.0 * 0.044715) * x * x)
        }
        GeluKind::Exact => {
            let cdf = half * (T::ONE + (x * T::from_f64(INV_SQRT_2)).erf());
            let pdf = (-half * x * x).exp() * T::from_f64(INV_SQRT_2PI);
            cdf + x * pdf
        }
    }
}

/// σ(x) = 1 / (1 + e^{−x}), computed without overflow for large |x|.
#[inline]
pub fn sigmoid<T: Float>(x: T) -> T {
    if x >= T::ZERO {
        T::ONE / (T::ONE + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::ONE + e)
    }
}

/// SiLU (swish): `x·σ(x)`.
#[inline]
pub fn silu<T: Float>(x: T) -> T {
    x * sigmoid(x)
}

/// dSiLU/dx = `σ(x)·(1 + x·(1 − σ(x)))`.
#[inline]
pub fn silu_grad<T: Float>(x: T) -> T {
    let s = sigmoid(x);
    s * (T::ONE + x * (T::ONE - s))
}

/// SwiGLU forward: `out = silu(gate) ⊙ up` (`=`).
pub fn swiglu_forward<T: Float>(out: &mut [T], gate: &[T], up: &[T]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
}

/// SwiGLU backward (accumulates): `dgate += dout ⊙ up ⊙ silu'(gate)`, `dup += dout ⊙ silu(gate)`.
pub fn swiglu_backward<T: Float>(dgate: &mut [T], dup: &mut [T], dout: &[T], gate: &[T], up: &[T]) {
    for i in 0..dout.len() {
        dgate[i] += dout[i] * up[i] * silu_grad(gate[i]);
        dup[i] += dout[i] * silu(gate[i]);
    }
}

/// MurmurHash3's 32-bit finaliser: every input bit flips about half of the output bits.
#[inline(always)]
pub fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The integer form of a dropout probability: element `i` is kept when its 24-bit draw
/// `fmix32(fmix32(i·φ ⊕ seed_lo) ⊕ seed_hi) >> 8` is at least `⌈p·2²⁴⌉`, i.e. when
/// `u = draw / 2²⁴`, uniform on [0, 1), is at least `p`.
#[inline]
pub fn dropout_threshold(p: f64) -> u32 {
    (p * 16_777_216.0).ceil().clamp(0.0, 16_777_216.0) as u32
}

/// Whether element `i` survives the dropout of threshold `t` ([`dropout_threshold`]) under
/// `seed`: a counter-based draw (two rounds of [`fmix32`] over the index and the seed), so the
/// same mask can be drawn again in the backward pass instead of being stored, by many threads
/// at once, and in vector registers (32-bit multiplies only). The index is taken mod 2³².
#[inline(always)]
pub fn dropout_keeps(seed: u64, i: usize, t: u32) -> bool {
    fmix32(fmix32((i as u32).wrapping_mul(0x9e37_79b9) ^ seed as u32) ^ (seed >> 32) as u32) >> 8 >= t
}

/// `out[k] = x[k] · m_{i0+k}` (`add`: `+=`) with the hashed mask `m_i ∈ {0, 1/(1−p)}` of
/// [`dropout_keeps`] (`t` = [`dropout_threshold`]`(p)`).
pub fn dropout_hashed<T: Float>(out: &mut [T], x: &[T], i0: usize, p: f64, seed: u64, add: bool) {
    let (keep, t) = (T::from_f64(1.0 / (1.0 - p)), dropout_threshold(p));
    for (k, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        let m = if dropout_keeps(seed, i0 + k, t) { v * keep } else { T::ZERO };
        *o = if add { *o + m } else { m };
    }
}
