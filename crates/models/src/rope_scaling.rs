//! RoPE scaling: how a model trained on `L` positions is stretched to run on more.
//!
//! Plain RoPE turns channel pair `i` of a head of `D` channels by `p·θ_i` at position `p`,
//! `θ_i = base^(−2i/D)`: pair 0 turns by one radian per position (a wavelength of 2π
//! positions), the last pair by `base^(−(D−2)/D)` — wavelengths up to ~`2π·base`, longer than
//! the training context `L`. Past `L`, the slow pairs reach angles the model never saw. Every
//! scaling below only changes the `θ_i` (and, for YaRN, a factor on the attention logits); the
//! rotation itself is [`yuanli_tensor::cpu::rope_forward`], the same for all. Each is written as
//! transformers computes it (`modeling_rope_utils.py`), which is what the checkpoints were
//! trained with; `crates/models/tests/rope_scaling.rs` holds our logits to transformers' float64
//! ones past the original context.
//!
//! - **Linear** (position interpolation, Chen et al. 2023): `θ_i / s`. Position `p` looks like
//!   `p / s`: `s·L` positions fit in the angles of `L`, at the price of crowding nearby ones.
//! - **Dynamic NTK** ("NTK-aware", bloc97/emozilla 2023): a larger base,
//!   `base' = base·(s·n/L − (s − 1))^(D/(D−2))` for a sequence of `n > L` positions (unchanged up
//!   to `L`): the fast pairs keep their resolution, the slowest are interpolated by about
//!   `n/L`. It depends on `n`, so the angles follow the sequence's length; see
//!   [`RopeScaling::Dynamic`] for what "length" means with a KV cache.
//! - **YaRN** (Peng et al. 2023): pairs that turn more than `β_fast` times within `L` positions
//!   keep their `θ_i`, pairs that turn fewer than `β_slow` times are interpolated (`θ_i / s`),
//!   a linear ramp over the pair index in between; and every attention logit is multiplied by
//!   `m² = (0.1·ln s + 1)²` (the "temperature": `m` on `cos` and `sin`, so on `q` and on `k`).
//! - **LLaMA 3** (Meta 2024): like YaRN's blend but over wavelengths: shorter than `L/h` keep
//!   `θ_i`, longer than `L/l` get `θ_i / s`, in between a smooth mix (`l`, `h` the low/high
//!   frequency factors); no temperature.
//! - **Frequency factors**: `θ_i / f_i` with the `f_i` given — how llama.cpp's GGUF files carry
//!   LLaMA 3's scaling (the `rope_freqs` tensor: `f_i = θ_i / θ'_i` of the LLaMA 3 rule).

use serde::{Deserialize, Serialize};
use std::f64::consts::PI;
use yuanli_tensor::RopeFreqs;

/// A RoPE scaling and its numbers, resolved (defaults filled in) from a `config.json` or GGUF
/// metadata. `original` is the context length the model was pretrained with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Plain RoPE.
    #[default]
    None,
    /// `θ_i / factor`.
    Linear {
        /// `s`: the context is stretched `s` times.
        factor: f64,
    },
    /// NTK-aware base change, from `original` positions on.
    ///
    /// The base follows the length `n` of the forward pass: in training and in a prefill, the
    /// last position + 1; when decoding with a KV cache, the length after this step, while the
    /// keys already cached keep the angles they were rotated with — exactly what transformers
    /// does (it caches rotated keys and recomputes `θ` when a forward pass reaches a new
    /// length). The engine takes `n` per sequence; transformers takes the largest over a batch.
    Dynamic {
        /// `s` of the base formula.
        factor: f64,
        /// `L`: from this length on the base grows (transformers: `max_position_embeddings`).
        original: usize,
    },
    /// YaRN's ramp between `β_fast` and `β_slow` rotations, with `attention_factor` on cos/sin.
    Yarn {
        /// `s`: slow pairs turn `s` times slower.
        factor: f64,
        /// `L`: the pretraining context the rotation counts are taken over.
        original: usize,
        /// Pairs turning more often than this over `L` keep `θ_i` (32).
        beta_fast: f64,
        /// Pairs turning less often than this over `L` get `θ_i / s` (1).
        beta_slow: f64,
        /// `m` on cos and sin (logits × `m²`).
        attention_factor: f64,
        /// Round the ramp's ends to whole pairs (transformers' and llama.cpp's default).
        truncate: bool,
    },
    /// LLaMA 3's wavelength rule.
    Llama3 {
        /// `s`: long wavelengths turn `s` times slower.
        factor: f64,
        /// `l`: wavelengths longer than `L/l` get `θ_i / s`.
        low_freq_factor: f64,
        /// `h`: wavelengths shorter than `L/h` keep `θ_i`.
        high_freq_factor: f64,
        /// `L`: the pretraining context.
        original: usize,
    },
    /// `θ_i / factors[i]` (one per pair).
    FreqFactors {
        /// `f_i`, one per pair.
        factors: Vec<f64>,
    },
}

/// YaRN's `m(s) = 0.1·μ·ln s + 1` (1 for `s ≤ 1`).
pub fn yarn_mscale(s: f64, mu: f64) -> f64 {
    if s <= 1.0 {
        1.0
    } else {
        0.1 * mu * s.ln() + 1.0
    }
}

impl RopeScaling {
    /// The frequencies of a head of `d` channels with base `base`, for a forward pass whose
    /// sequence is `n` positions long (only [`RopeScaling::Dynamic`] looks at `n`).
    pub fn freqs(&self, d: usize, base: f64, n: usize) -> RopeFreqs {
        let mut f = RopeFreqs { inv_freq: Vec::with_capacity(d / 2), mscale: 1.0 };
        self.freqs_into(d, base, n, &mut f);
        f
    }

    /// [`RopeScaling::freqs`] written into `out`, reusing its storage (the engine's decode
    /// step allocates nothing).
    pub fn freqs_into(&self, d: usize, base: f64, n: usize, out: &mut RopeFreqs) {
        let plain = |base: f64, i: usize| base.powf(-2.0 * i as f64 / d as f64);
        out.mscale = 1.0;
        out.inv_freq.clear();
        let mut fill = |f: &dyn Fn(usize, f64) -> f64| out.inv_freq.extend((0..d / 2).map(|i| f(i, plain(base, i))));
        match self {
            RopeScaling::None => fill(&|_, t| t),
            RopeScaling::Linear { factor } => fill(&|_, t| t / factor),
            RopeScaling::Dynamic { factor, original } => {
                let (n, l, d) = (n.max(*original) as f64, *original as f64, d as f64);
                let stretched = base * (factor * n / l - (factor - 1.0)).powf(d / (d - 2.0));
                fill(&|i, _| plain(stretched, i))
            }
            RopeScaling::Yarn { factor, original, beta_fast, beta_slow, attention_factor, truncate } => {
                // The pair index at which a pair turns `r` times over `original` positions.
                let pair_of = |r: f64| d as f64 * (*original as f64 / (r * 2.0 * PI)).ln() / (2.0 * base.ln());
                let (mut lo, mut hi) = (pair_of(*beta_fast), pair_of(*beta_slow));
                if *truncate {
                    (lo, hi) = (lo.floor(), hi.ceil());
                }
                let (lo, mut hi) = (lo.max(0.0), hi.min(d as f64 - 1.0));
                if lo == hi {
                    hi += 0.001;
                }
                // ramp 0 below `lo` (keep θ_i), 1 above `hi` (θ_i / s)
                fill(&|i, t| {
                    let ramp = ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
                    t / factor * ramp + t * (1.0 - ramp)
                });
                out.mscale = *attention_factor;
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original } => {
                let l = *original as f64;
                let (long, short) = (l / low_freq_factor, l / high_freq_factor);
                fill(&|_, t| {
                    let wavelen = 2.0 * PI / t;
                    if wavelen < short {
                        t
                    } else if wavelen > long {
                        t / factor
                    } else {
                        let smooth = (l / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * t / factor + smooth * t
                    }
                })
            }
            RopeScaling::FreqFactors { factors } => fill(&|i, t| t / factors[i]),
        }
    }

    /// The transformers 4 form (`config.json`'s `rope_scaling`), `None` for plain RoPE.
    /// Frequency factors (read from a GGUF file) have none.
    pub fn to_hf(&self) -> Result<Option<serde_json::Value>, String> {
        use serde_json::json;
        Ok(Some(match self {
            RopeScaling::None => return Ok(None),
            RopeScaling::Linear { factor } => json!({ "rope_type": "linear", "factor": factor }),
            RopeScaling::Dynamic { factor, .. } => json!({ "rope_type": "dynamic", "factor": factor }),
            RopeScaling::Yarn { factor, original, beta_fast, beta_slow, attention_factor, truncate } => json!({
                "rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original,
                "beta_fast": beta_fast, "beta_slow": beta_slow, "attention_factor": attention_factor, "truncate": truncate,
            }),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original } => json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original,
            }),
            RopeScaling::FreqFactors { .. } => {
                return Err("RoPE frequency factors (a GGUF rope_freqs tensor) have no config.json form".into())
            }
        }))
    }

    /// A few words for a model's description (`""` for plain RoPE): "RoPE yarn ×4 from 32768
    /// positions".
    pub fn summary(&self) -> String {
        match self {
            RopeScaling::None => String::new(),
            RopeScaling::Linear { factor } => format!("RoPE linear ×{factor}"),
            RopeScaling::Dynamic { factor, original }
            | RopeScaling::Yarn { factor, original, .. }
            | RopeScaling::Llama3 { factor, original, .. } => {
                format!("RoPE {} ×{factor} from {original} positions", self.name())
            }
            RopeScaling::FreqFactors { factors } => {
                let max = factors.iter().cloned().fold(1.0, f64::max);
                format!("RoPE frequency factors (up to ×{max})")
            }
        }
    }

    /// Whether the frequencies depend on the sequence length.
    pub fn is_dynamic(&self) -> bool {
        matches!(self, RopeScaling::Dynamic { .. })
    }

    /// The name transformers gives it (`rope_type`), or llama.cpp's for frequency factors.
    pub fn name(&self) -> &'static str {
        match self {
            RopeScaling::None => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Yarn { .. } => "yarn",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::FreqFactors { .. } => "rope_freqs",
        }
    }

    /// Checks the numbers for a head of `d` channels and base `base`: factors positive and
    /// finite, contexts non-zero, LLaMA 3's `low < high`, one frequency factor per pair, and
    /// for YaRN a base above 1 (its ramp divides by `ln base`).
    pub fn validate(&self, d: usize, base: f64) -> Result<(), String> {
        let positive = |name: &str, x: f64| {
            if x.is_finite() && x > 0.0 {
                Ok(())
            } else {
                Err(format!("RoPE scaling {}: {name} = {x} must be positive and finite", self.name()))
            }
        };
        let context = |l: usize| {
            if l == 0 {
                Err(format!("RoPE scaling {}: original_max_position_embeddings must be positive", self.name()))
            } else {
                Ok(())
            }
        };
        match self {
            RopeScaling::None => Ok(()),
            RopeScaling::Linear { factor } => positive("factor", *factor),
            RopeScaling::Dynamic { factor, original } => {
                positive("factor", *factor)?;
                if d <= 2 {
                    return Err(format!("RoPE scaling dynamic needs a head of more than 2 channels, got {d}"));
                }
                context(*original)
            }
            RopeScaling::Yarn { factor, original, beta_fast, beta_slow, attention_factor, .. } => {
                if base <= 1.0 {
                    return Err(format!("RoPE scaling yarn needs a RoPE base above 1, got {base}"));
                }
                positive("factor", *factor)?;
                positive("beta_fast", *beta_fast)?;
                positive("beta_slow", *beta_slow)?;
                positive("attention_factor", *attention_factor)?;
                context(*original)
            }
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original } => {
                positive("factor", *factor)?;
                positive("low_freq_factor", *low_freq_factor)?;
                positive("high_freq_factor", *high_freq_factor)?;
                if low_freq_factor >= high_freq_factor {
                    return Err(format!(
                        "RoPE scaling llama3: low_freq_factor = {low_freq_factor} must be below high_freq_factor = {high_freq_factor}"
                    ));
                }
                context(*original)
            }
            RopeScaling::FreqFactors { factors } => {
                if factors.len() != d / 2 {
                    return Err(format!(
                        "RoPE frequency factors: {} values for a head of {d} channels ({} pairs)",
                        factors.len(),
                        d / 2
                    ));
                }
                factors.iter().try_for_each(|&f| positive("frequency factor", f))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scaling_leaves_the_fast_pairs_or_scales_the_slow_ones_as_its_rule_says() {
        let (d, base) = (64, 10_000.0);
        let plain = RopeFreqs::new(d, base);
        // linear: every θ_i / 4
        let lin = RopeScaling::Linear { factor: 4.0 }.freqs(d, base, 100);
        assert!(lin.inv_freq.iter().zip(&plain.inv_freq).all(|(a, b)| (a * 4.0 - b).abs() < 1e-15));
        // dynamic: unchanged up to the original context, a larger base past it
        let dy = RopeScaling::Dynamic { factor: 2.0, original: 128 };
        assert_eq!(dy.freqs(d, base, 100), plain);
        let long = dy.freqs(d, base, 512);
        assert_eq!(long.inv_freq[0], 1.0);
        assert!(long.inv_freq[d / 2 - 1] < plain.inv_freq[d / 2 - 1]);
        // YaRN: pair 0 (wavelength 2π ≪ 128) kept, the last pair divided by s; temperature m
        let m = yarn_mscale(4.0, 1.0);
        let y = RopeScaling::Yarn {
            factor: 4.0,
            original: 128,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: m,
            truncate: true,
        }
        .freqs(d, base, 100);
        assert_eq!(y.inv_freq[0], plain.inv_freq[0]);
        assert!((y.inv_freq[d / 2 - 1] * 4.0 - plain.inv_freq[d / 2 - 1]).abs() < 1e-18);
        assert!((y.mscale - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
        // LLaMA 3: short wavelengths kept, long ones / s, monotone in between
        let l3 = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original: 128 }
            .freqs(d, base, 100);
        let ratio: Vec<f64> = l3.inv_freq.iter().zip(&plain.inv_freq).map(|(a, b)| b / a).collect();
        assert_eq!(ratio[0], 1.0);
        assert!((ratio[d / 2 - 1] - 8.0).abs() < 1e-12);
        assert!(ratio.windows(2).all(|w| w[1] >= w[0] - 1e-12), "{ratio:?}");
        // frequency factors computed from the LLaMA 3 rule give the LLaMA 3 frequencies
        let ff = RopeScaling::FreqFactors { factors: ratio }.freqs(d, base, 100);
        assert!(ff.inv_freq.iter().zip(&l3.inv_freq).all(|(a, b)| (a - b).abs() <= 1e-15 * b.abs()));
    }

    #[test]
    fn bad_numbers_are_named() {
        let e = RopeScaling::Linear { factor: 0.0 }.validate(64, 10_000.0).unwrap_err();
        assert!(e.contains("factor = 0"), "{e}");
        let e = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 4.0, high_freq_factor: 1.0, original: 8 }
            .validate(64, 10_000.0)
            .unwrap_err();
        assert!(e.contains("low_freq_factor"), "{e}");
        let e = RopeScaling::FreqFactors { factors: vec![1.0; 3] }.validate(64, 10_000.0).unwrap_err();
        assert!(e.contains("3 values"), "{e}");
        let yarn = RopeScaling::Yarn {
            factor: 4.0,
            original: 32,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: 1.0,
            truncate: true,
        };
        assert!(yarn.validate(64, 1.0).unwrap_err().contains("base above 1"));
    }
}
