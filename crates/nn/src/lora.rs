//! LoRA (Hu et al., 2021): fine-tune a frozen matrix `W (out, in)` through a trainable
//! low-rank update,
//!
//! ```text
//! y = x·Wᵀ + b + s · x̃·Aᵀ·Bᵀ,     A (r, in),  B (out, r),  x̃ = dropout(x),
//! s = α / r   (rsLoRA: α / √r)
//! ```
//!
//! so the layer behaves as `W + s·B·A`, a rank-`r` change, while only `r·(in + out)` numbers
//! train instead of `in·out`. `B` starts at zero — the adapted model starts exactly as the base
//! — and `A` as PEFT draws it (`nn.Linear`'s default, Kaiming-uniform with `a = √5`:
//! `U(−1/√in, 1/√in)`), so a fresh adapter here and in PEFT are the same distribution.
//!
//! **Gradients.** With `u = x̃·Aᵀ (…, r)` and `G = ∂L/∂y (…, out)`, summed over the leading
//! axes:
//!
//! ```text
//! ∂L/∂B = s · Gᵀ·u              (out, r)
//! ∂L/∂A = s · (G·B)ᵀ·x̃          (r, in)
//! ∂L/∂x = G·W + s · (G·B·A) ⊙ m   (m the dropout mask, scaled by 1/(1−p))
//! ```
//!
//! nothing reaches `W`, which may be an f32 parameter or a block-quantized stored matrix
//! (QLoRA: `x` gets `G·deq(W)`). Over a frozen base the whole map is one fused op,
//! [`Var::lora_linear`](yuanli_autograd::Var::lora_linear), which keeps only `x`, `u` and the
//! dropout mask's seed for the backward pass (the mask is drawn again from its seed); it is
//! checked against its composite twin in yuanli-autograd, and `tests` gradient-checks it here
//! over an f32 and a Q8_0 base, with and without dropout. Derivation in the book (lesson 9).

use crate::error::{Error, Result};
use crate::init::Init;
use crate::layers::join;
use crate::params::{ParamKind, ParamStore};
use yuanli_autograd::{LoraOpts, Var};
use yuanli_tensor::Rng;

/// An adapter's hyper-parameters (PEFT's `LoraConfig` names in brackets).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank `r` (`r`).
    pub r: usize,
    /// `α` (`lora_alpha`): the update is scaled by `α/r`.
    pub alpha: f64,
    /// Dropout on the adapter's input during training (`lora_dropout`).
    pub dropout: f64,
    /// Scale by `α/√r` instead (`use_rslora`): the update's size no longer shrinks as `r` grows.
    pub rslora: bool,
}

impl LoraConfig {
    /// `s`: `α/r`, or `α/√r` with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Checks the fields, naming the first problem.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.r == 0 {
            return Err("LoRA rank r must be at least 1".into());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(format!("lora_alpha = {} must be positive", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("lora_dropout = {} must be in [0, 1)", self.dropout));
        }
        Ok(())
    }
}

/// The trainable part of one adapted linear map.
pub struct Lora {
    /// `(r, in)`.
    pub a: Var,
    /// `(out, r)`.
    pub b: Var,
    /// `s` (α/r or α/√r).
    pub scale: f64,
    /// Dropout probability on the input of `A`.
    pub dropout: f64,
}

impl Lora {
    /// Registers `{prefix}.lora_A.weight (r, in)` (PEFT's initialisation) and
    /// `{prefix}.lora_B.weight (out, r)` (zeros) — PEFT's names under the adapted module's.
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        cfg: &LoraConfig,
        rng: &mut Rng,
    ) -> Result<Lora> {
        cfg.validate().map_err(Error::Invalid)?;
        let bound = 1.0 / (d_in as f64).sqrt();
        let a = Init::Uniform { lo: -bound, hi: bound }.tensor(&[cfg.r, d_in], rng);
        let a = store.param(&join(prefix, "lora_A.weight"), a, ParamKind::Weight)?;
        let b =
            store.param(&join(prefix, "lora_B.weight"), Init::Zeros.tensor(&[d_out, cfg.r], rng), ParamKind::Weight)?;
        Ok(Lora { a, b, scale: cfg.scale(), dropout: cfg.dropout })
    }

    /// The update `s · (x ⊙ m)·Aᵀ·Bᵀ` alone (`(…, in)` → `(…, out)`), `m` the hashed dropout
    /// mask of `opts`, from primitives: for a base that trains itself (over a frozen one,
    /// [`Linear`](crate::Linear) uses the fused [`Var::lora_linear`]).
    pub fn delta(&self, x: &Var, opts: LoraOpts) -> Var {
        let x = if opts.dropout > 0.0 {
            let ones = yuanli_tensor::Tensor::ones(x.shape(), x.value().dtype());
            x.mul(&Var::constant(ones.dropout_hashed(opts.dropout, opts.seed)))
        } else {
            x.clone()
        };
        x.linear(&self.a, None).linear(&self.b, None).scale(opts.scale)
    }

    /// Inference: `out += s · x·Aᵀ·Bᵀ` for `t` rows of `x (t, in)` into `out (t, out)`, in f32:
    /// two small matrix products, `u (t, r) = x·Aᵀ` and then `out += s·u·Bᵀ` (single-threaded:
    /// the rank is small and the engine calls this between its parallel products).
    pub fn add_to(&self, x: &[f32], t: usize, out: &mut [f32]) {
        use yuanli_tensor::cpu::{gemm_into, MatRef};
        let (av, bv) = (self.a.value().contiguous(), self.b.value().contiguous());
        let (r, d_in, d_out) = (av.dim(0), av.dim(1), bv.dim(0));
        let mut u = vec![0f32; t * r];
        av.with_slice(|a: &[f32]| {
            let xm = MatRef { off: 0, rs: d_in, cs: 1 };
            gemm_into(t, d_in, r, &mut u, r, false, &x[..t * d_in], xm, a, MatRef { off: 0, rs: 1, cs: d_in }, 1.0, 1);
        });
        bv.with_slice(|b: &[f32]| {
            let um = MatRef { off: 0, rs: r, cs: 1 };
            let bm = MatRef { off: 0, rs: 1, cs: r };
            gemm_into(t, r, d_out, &mut out[..t * d_out], d_out, true, &u, um, b, bm, self.scale as f32, 1);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yuanli_autograd::gradcheck::{gradcheck, GradcheckOpts};
    use yuanli_autograd::Frozen;
    use yuanli_tensor::{DType, QMatrix, QuantType, Tensor};

    fn cfg() -> LoraConfig {
        LoraConfig { r: 2, alpha: 3.0, dropout: 0.0, rslora: false }
    }

    /// The layer's gradients with respect to `x`, `A` and `B` by finite differences, over an
    /// f32 base and over a Q8_0 base (QLoRA: the gradient reaches `x` through `deq(W)`).
    #[test]
    fn lora_layer_passes_a_gradient_check_over_f32_and_quantized_bases() {
        let mut rng = Rng::new(3);
        let (d_in, d_out, s) = (32, 5, cfg().scale());
        let w: Vec<f32> = (0..d_out * d_in).map(|_| rng.normal() as f32 * 0.3).collect();
        let q = QMatrix::quantize(QuantType::Q8_0, d_out, d_in, &w).unwrap();
        let wt = Tensor::new(w, &[d_out, d_in]).to_dtype(DType::F64);
        let x = Tensor::randn(&[3, d_in], 0.0, 1.0, DType::F64, &mut rng);
        let a = Tensor::randn(&[2, d_in], 0.0, 0.2, DType::F64, &mut rng);
        let b = Tensor::randn(&[d_out, 2], 0.0, 0.2, DType::F64, &mut rng); // non-zero, so ∂/∂A ≠ 0
        let opts = GradcheckOpts::default();
        for quantized in [false, true] {
            for dropout in [0.0, 0.25] {
                let lo = LoraOpts { scale: s, dropout, seed: 11 };
                let f = |v: &[Var]| {
                    let base = if quantized { Frozen::Stored(&q) } else { Frozen::Dense(&wt) };
                    v[0].lora_linear(base, None, &v[1], &v[2], lo)
                };
                let worst = gradcheck(f, &[x.clone(), a.clone(), b.clone()], opts).unwrap_or_else(|m| panic!("{m}"));
                assert!(worst <= 1.0, "quantized {quantized}, dropout {dropout}: {worst}");
            }
        }
    }

    #[test]
    fn a_fresh_adapter_changes_nothing_and_add_to_equals_delta() {
        let mut store = ParamStore::new();
        let mut rng = Rng::new(1);
        let l = Lora::new(&mut store, "m.q_proj", 8, 6, &cfg(), &mut rng).unwrap();
        assert!(store.get("m.q_proj.lora_A.weight").is_some() && store.get("m.q_proj.lora_B.weight").is_some());
        let x = Var::constant(Tensor::randn(&[4, 8], 0.0, 1.0, DType::F32, &mut rng));
        assert!(
            l.delta(&x, LoraOpts { scale: l.scale, dropout: 0.0, seed: 0 })
                .value()
                .to_vec::<f32>()
                .iter()
                .all(|&v| v == 0.0),
            "B starts at zero"
        );
        // A's bound is 1/√in
        assert!(l.a.value().to_vec::<f32>().iter().all(|v| v.abs() <= 1.0 / 8f32.sqrt()));
        let bv: Vec<f32> = (0..12).map(|i| 0.1 * i as f32 - 0.5).collect();
        store.set_values(store.get("m.q_proj.lora_B.weight").unwrap(), &bv);
        let want = l.delta(&x, LoraOpts { scale: l.scale, dropout: 0.0, seed: 0 }).value().to_vec::<f32>();
        let mut got = vec![0f32; 24];
        l.add_to(&x.value().to_vec::<f32>(), 4, &mut got);
        for (p, q) in got.iter().zip(&want) {
            assert!((p - q).abs() < 1e-5, "{p} vs {q}");
        }
        let bad = LoraConfig { r: 0, ..cfg() };
        assert!(Lora::new(&mut store, "m.k_proj", 8, 6, &bad, &mut rng).is_err());
    }
}
