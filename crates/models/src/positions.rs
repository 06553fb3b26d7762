//! Position schemes: how a Transformer tells "the cat sat" from "sat the cat".
//!
//! Attention alone is permutation-equivariant: shuffle the tokens and each output is shuffled
//! the same way, the causal mask being the only thing that tells positions apart (it lets
//! token `i` see `i + 1` others — enough for a model to count, as NoPE models learn to). Each
//! scheme below gives the model positions in another way (lesson 12 compares them, trained on
//! short windows and measured on longer ones):
//!
//! - **learned** (GPT-2): a trained vector `P[p]` added to the token embedding; nothing exists
//!   past the rows trained;
//! - **sinusoidal** (Vaswani et al. 2017): the fixed vector
//!   `PE(p, 2i) = sin(p·ω_i)`, `PE(p, 2i+1) = cos(p·ω_i)`, `ω_i = 10000^(−2i/C)`, added to the
//!   embedding (× √C, as in the paper) ([`sinusoidal_row`]): defined at every position, but
//!   unseen ones are new inputs;
//! - **RoPE** (Su et al. 2021): queries and keys rotated by `p·θ_i`, so `q·k` depends on the
//!   distance only ([`yuanli_tensor::cpu::rope_forward`]; scalings in [`crate::rope_scaling`]);
//! - **ALiBi** (Press et al. 2022): no embedding; head `h` adds `−m_h·(i − j)` to the score of
//!   query `i` on key `j` ([`alibi_slopes`], [`alibi_bias`]): nearer keys win, at any length;
//! - **none** (NoPE, Kazemnejad et al. 2023): the causal mask alone.

use serde::{Deserialize, Serialize};
use yuanli_tensor::{DType, Tensor};

/// How a GPT knows where a token is (its `[model] positions` in a training config).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// A learned vector per position (`wpe`, `block_size` rows), added to the embedding.
    #[default]
    Learned,
    /// The fixed sine/cosine vector of each position, added to the embedding (× √C).
    Sinusoidal,
    /// Queries and keys rotated by RoPE (half-split pairs, base 10 000).
    Rope,
    /// A linear penalty on distance, per head, added to the attention scores.
    Alibi,
    /// Nothing but the causal mask.
    None,
}

impl Positions {
    /// Every scheme, in the lesson's order.
    pub const ALL: [Positions; 5] =
        [Positions::Learned, Positions::Sinusoidal, Positions::Rope, Positions::Alibi, Positions::None];

    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            Positions::Learned => "learned",
            Positions::Sinusoidal => "sinusoidal",
            Positions::Rope => "rope",
            Positions::Alibi => "alibi",
            Positions::None => "none",
        }
    }
}

/// The sinusoidal vector of position `p` into `out` (`C` values):
/// `out[2i] = sin(p·ω_i)`, `out[2i+1] = cos(p·ω_i)`, `ω_i = 10000^(−2i/C)`, in f64 then rounded.
pub fn sinusoidal_row(p: usize, out: &mut [f32]) {
    let c = out.len() as f64;
    for (j, o) in out.iter_mut().enumerate() {
        let angle = p as f64 * 10_000f64.powf(-((j - j % 2) as f64) / c);
        *o = if j % 2 == 0 { angle.sin() } else { angle.cos() } as f32;
    }
}

/// The sinusoidal table of positions `0..t`, `(t, C)` f32.
pub fn sinusoidal_table(t: usize, c: usize) -> Tensor {
    let mut v = vec![0f32; t * c];
    for (p, row) in v.chunks_exact_mut(c.max(1)).enumerate() {
        sinusoidal_row(p, row);
    }
    Tensor::new(v, &[t, c])
}

/// ALiBi's slope of each of `h` heads: a geometric sequence from `2^(−8/n)` with ratio
/// `2^(−8/n)` for `n = h` a power of two (8 heads: 1/2, 1/4, …, 1/256); otherwise the `n`
/// slopes of the largest power of two `n ≤ h`, then every other slope of `2n` for the rest —
/// the rule of the paper's code (and of BLOOM's).
pub fn alibi_slopes(h: usize) -> Vec<f64> {
    let geometric = |n: usize| -> Vec<f64> {
        let start = 2f64.powf(-8.0 / n as f64);
        (1..=n).map(|i| start.powi(i as i32)).collect()
    };
    if h == 0 {
        return vec![];
    }
    let n = 1usize << (usize::BITS - 1 - h.leading_zeros()); // largest power of two ≤ h
    let mut s = geometric(n);
    s.extend(geometric(2 * n).into_iter().step_by(2).take(h - n));
    s
}

/// The additive ALiBi scores `(H, tq, tk)` for queries at positions `tk − tq .. tk` over keys
/// `0..tk`: `−m_h·(i − j)` (positive distances only; the causal mask removes `j > i`).
pub fn alibi_bias(h: usize, tq: usize, tk: usize, dtype: DType) -> Tensor {
    let slopes = alibi_slopes(h);
    let mut v = vec![0f64; h * tq * tk];
    for (hi, m) in slopes.iter().enumerate() {
        for r in 0..tq {
            let i = tk - tq + r;
            for j in 0..tk {
                v[(hi * tq + r) * tk + j] = -m * i.saturating_sub(j) as f64;
            }
        }
    }
    Tensor::new(v, &[h, tq, tk]).to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alibi_slopes_follow_the_paper() {
        // 8 heads: 2^-1 … 2^-8 (the paper's example)
        let want: Vec<f64> = (1..=8).map(|k| 2f64.powi(-k)).collect();
        assert_eq!(alibi_slopes(8), want);
        // 6 heads: the 4-head slopes 2^-2, 2^-4, 2^-6, 2^-8, then 2^-1, 2^-3 from the 8-head ones
        assert_eq!(alibi_slopes(6), vec![0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]);
        // 1 head: 2^-8
        assert_eq!(alibi_slopes(1), vec![2f64.powi(-8)]);
        let b = alibi_bias(2, 2, 3, DType::F64).to_vec_f64();
        // head 0 (m = 1/16), queries at 1 and 2 over keys 0..3
        assert_eq!(&b[..6], &[-1.0 / 16.0, 0.0, 0.0, -2.0 / 16.0, -1.0 / 16.0, 0.0]);
    }

    #[test]
    fn sinusoidal_rows_follow_the_formula() {
        let mut row = vec![0f32; 6];
        sinusoidal_row(3, &mut row);
        for (j, &x) in row.iter().enumerate() {
            let w = 1.0 / 10_000f64.powf((2 * (j / 2)) as f64 / 6.0);
            let want = if j % 2 == 0 { (3.0 * w).sin() } else { (3.0 * w).cos() };
            assert!((x as f64 - want).abs() < 1e-7, "channel {j}: {x} vs {want}");
        }
        // position 0: sin 0 = 0, cos 0 = 1
        let t = sinusoidal_table(2, 4).to_vec_f64();
        assert_eq!(&t[..4], &[0.0, 1.0, 0.0, 1.0]);
    }
}
