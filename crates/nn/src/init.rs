//! Parameter initialisers. Every one takes the generator explicitly: no global RNG.
//!
//! Fan-in and fan-out of a weight stored `[out, in]` (PyTorch's layout) are `in` and `out`.

use yuanli_tensor::{DType, Rng, Tensor};

/// How to fill a new parameter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// N(0, std²).
    Normal {
        /// Standard deviation.
        std: f64,
    },
    /// U[lo, hi).
    Uniform {
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// Glorot/Xavier uniform: U[−a, a], `a = gain·√(6/(fan_in + fan_out))`.
    XavierUniform {
        /// Gain (1 for linear/sigmoid, 5/3 for tanh).
        gain: f64,
    },
    /// Glorot/Xavier normal: std = `gain·√(2/(fan_in + fan_out))`.
    XavierNormal {
        /// Gain.
        gain: f64,
    },
    /// He/Kaiming uniform for ReLU nets: U[−b, b], `b = √(6/fan_in)`.
    KaimingUniform,
    /// He/Kaiming normal: std = `√(2/fan_in)`.
    KaimingNormal,
}

/// `(fan_in, fan_out)` of a shape: `[out, in]` for matrices, `[n]` counts as fan-in n.
pub fn fans(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (*n, *n),
        [out, inp] => (*inp, *out),
        [out, inp, rest @ ..] => {
            let r: usize = rest.iter().product();
            (inp * r, out * r)
        }
    }
}

impl Init {
    /// A new f32 tensor of `shape` drawn from this initialiser.
    pub fn tensor(self, shape: &[usize], rng: &mut Rng) -> Tensor {
        let (fan_in, fan_out) = fans(shape);
        let (fi, fo) = (fan_in.max(1) as f64, fan_out.max(1) as f64);
        match self {
            Init::Zeros => Tensor::zeros(shape, DType::F32),
            Init::Ones => Tensor::ones(shape, DType::F32),
            Init::Normal { std } => Tensor::randn(shape, 0.0, std, DType::F32, rng),
            Init::Uniform { lo, hi } => Tensor::rand_uniform(shape, lo, hi, DType::F32, rng),
            Init::XavierUniform { gain } => {
                let a = gain * (6.0 / (fi + fo)).sqrt();
                Tensor::rand_uniform(shape, -a, a, DType::F32, rng)
            }
            Init::XavierNormal { gain } => Tensor::randn(shape, 0.0, gain * (2.0 / (fi + fo)).sqrt(), DType::F32, rng),
            Init::KaimingUniform => {
                let b = (6.0 / fi).sqrt();
                Tensor::rand_uniform(shape, -b, b, DType::F32, rng)
            }
            Init::KaimingNormal => Tensor::randn(shape, 0.0, (2.0 / fi).sqrt(), DType::F32, rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialisers_have_the_advertised_spread() {
        let mut rng = Rng::new(0);
        let std = |t: &Tensor| {
            let v = t.to_vec_f64();
            let m = v.iter().sum::<f64>() / v.len() as f64;
            (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        let k = Init::KaimingNormal.tensor(&[256, 512], &mut rng);
        assert!((std(&k) - (2.0f64 / 512.0).sqrt()).abs() < 0.002);
        let x = Init::XavierUniform { gain: 1.0 }.tensor(&[300, 100], &mut rng);
        // U[−a, a] has std a/√3.
        assert!((std(&x) - (6.0f64 / 400.0).sqrt() / 3f64.sqrt()).abs() < 0.003);
        assert_eq!(Init::Ones.tensor(&[3], &mut rng).to_vec::<f32>(), vec![1.0; 3]);
        // The same seed gives the same weights.
        assert_eq!(
            Init::KaimingUniform.tensor(&[4, 4], &mut Rng::new(5)).to_vec::<f32>(),
            Init::KaimingUniform.tensor(&[4, 4], &mut Rng::new(5)).to_vec::<f32>()
        );
    }
}
