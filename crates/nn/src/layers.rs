//! Layers. Each registers its parameters in a [`ParamStore`] under a dotted path and only
//! defines `forward`: autograd derives the backward pass.

use crate::init::Init;
use crate::params::{ParamKind, ParamStore};
use crate::Result;
use yuanli_autograd::{GeluKind, Var};
use yuanli_tensor::{Rng, Tensor};

/// Something that maps one `Var` to another.
pub trait Module {
    /// The forward pass.
    fn forward(&self, x: &Var) -> Var;
}

/// `prefix.name`, or `name` at the root: the dotted parameter paths.
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// `y = x·Wᵀ + b` with `W` stored `[out, in]` (PyTorch's layout).
///
/// ```
/// use yuanli_nn::{Linear, Module, ParamStore, Init};
/// use yuanli_autograd::Var;
/// use yuanli_tensor::{Rng, Tensor};
/// let mut store = ParamStore::new();
/// let fc = Linear::new(&mut store, "fc", 3, 2, true, Init::Ones, &mut Rng::new(0)).unwrap();
/// let y = fc.forward(&Var::constant(Tensor::new(vec![1.0f32, 2.0, 3.0], &[1, 3])));
/// assert_eq!(y.value().to_vec::<f32>(), vec![6.0, 6.0]); // bias starts at 0
/// ```
pub struct Linear {
    /// `(out, in)`
    pub weight: Var,
    /// `(out,)`, if any.
    pub bias: Option<Var>,
}

impl Linear {
    /// Registers `{prefix}.weight` (drawn from `init`) and, with `bias`, `{prefix}.bias` (zeros).
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        init: Init,
        rng: &mut Rng,
    ) -> Result<Self> {
        let weight = store.param(&join(prefix, "weight"), init.tensor(&[d_out, d_in], rng), ParamKind::Weight)?;
        let bias = if bias {
            Some(store.param(&join(prefix, "bias"), Init::Zeros.tensor(&[d_out], rng), ParamKind::Bias)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Var) -> Var {
        x.linear(&self.weight, self.bias.as_ref()) // (…, in)·(in, out) + (out,) → (…, out)
    }
}

/// A lookup table `(vocab, dim)`: token ids → vectors.
pub struct Embedding {
    /// `(vocab, dim)`
    pub weight: Var,
}

impl Embedding {
    /// Registers `{prefix}.weight`.
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        vocab: usize,
        dim: usize,
        init: Init,
        rng: &mut Rng,
    ) -> Result<Self> {
        Ok(Self {
            weight: store.param(&join(prefix, "weight"), init.tensor(&[vocab, dim], rng), ParamKind::Embedding)?,
        })
    }

    /// Looks up u32 `ids` of any shape → `(…ids, dim)`.
    pub fn forward(&self, ids: &Tensor) -> Var {
        self.weight.embedding(ids)
    }
}

/// LayerNorm over the last axis with learned gain (ones) and optional shift (zeros).
pub struct LayerNorm {
    /// Gain `(C,)`.
    pub weight: Var,
    /// Shift `(C,)`.
    pub bias: Option<Var>,
    /// ε inside the square root.
    pub eps: f64,
}

impl LayerNorm {
    /// Registers `{prefix}.weight` and, with `bias`, `{prefix}.bias`.
    pub fn new(store: &mut ParamStore, prefix: &str, dim: usize, bias: bool, eps: f64) -> Result<Self> {
        let mut rng = Rng::new(0); // constant inits draw nothing
        let weight = store.param(&join(prefix, "weight"), Init::Ones.tensor(&[dim], &mut rng), ParamKind::Norm)?;
        let bias = if bias {
            Some(store.param(&join(prefix, "bias"), Init::Zeros.tensor(&[dim], &mut rng), ParamKind::Norm)?)
        } else {
            None
        };
        Ok(Self { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Var) -> Var {
        x.layer_norm(&self.weight, self.bias.as_ref(), self.eps)
    }
}

/// RMSNorm over the last axis with a learned gain.
pub struct RmsNorm {
    /// Gain `(C,)`.
    pub weight: Var,
    /// ε inside the square root.
    pub eps: f64,
}

impl RmsNorm {
    /// Registers `{prefix}.weight` (ones).
    pub fn new(store: &mut ParamStore, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        let weight =
            store.param(&join(prefix, "weight"), Init::Ones.tensor(&[dim], &mut Rng::new(0)), ParamKind::Norm)?;
        Ok(Self { weight, eps })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Var) -> Var {
        x.rms_norm(&self.weight, self.eps)
    }
}

/// Pointwise non-linearities.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// σ(x)
    Sigmoid,
    /// tanh x
    Tanh,
    /// max(x, 0)
    Relu,
    /// x for x > 0, else slope·x
    LeakyRelu(f64),
    /// GELU (tanh approximation or exact)
    Gelu(GeluKind),
    /// SiLU / swish x·σ(x)
    Silu,
}

impl Activation {
    /// Applies the activation.
    pub fn apply(self, x: &Var) -> Var {
        match self {
            Activation::Sigmoid => x.sigmoid(),
            Activation::Tanh => x.tanh(),
            Activation::Relu => x.relu(),
            Activation::LeakyRelu(slope) => {
                let positive = x.value().gt(&Tensor::zeros(&[], x.value().dtype()));
                Var::where_cond(&positive, x, &x.scale(slope))
            }
            Activation::Gelu(kind) => x.gelu(kind),
            Activation::Silu => x.silu(),
        }
    }
}

/// Inverted dropout: zero each element with probability `p` in training, scale the rest by
/// `1/(1−p)`; the identity in evaluation.
pub struct Dropout {
    /// Drop probability.
    pub p: f64,
}

impl Dropout {
    /// Applies dropout (`train = false` → identity).
    pub fn forward(&self, x: &Var, train: bool, rng: &mut Rng) -> Var {
        x.dropout(self.p, train, rng)
    }
}

/// A multi-layer perceptron: Linear → activation → … → Linear.
pub struct Mlp {
    /// The linear layers, `layers.0`, `layers.1`, ….
    pub layers: Vec<Linear>,
    /// The activation between layers.
    pub act: Activation,
}

impl Mlp {
    /// Sizes `[d_in, h₁, …, d_out]`; layers are `{prefix}.layers.{i}` with Kaiming-uniform
    /// weights (good for ReLU-family activations) and biases.
    pub fn new(store: &mut ParamStore, prefix: &str, sizes: &[usize], act: Activation, rng: &mut Rng) -> Result<Self> {
        let mut layers = Vec::new();
        for (i, w) in sizes.windows(2).enumerate() {
            layers.push(Linear::new(
                store,
                &join(prefix, &format!("layers.{i}")),
                w[0],
                w[1],
                true,
                Init::KaimingUniform,
                rng,
            )?);
        }
        Ok(Self { layers, act })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Var) -> Var {
        let mut h = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h);
            if i + 1 < self.layers.len() {
                h = self.act.apply(&h);
            }
        }
        h
    }
}
