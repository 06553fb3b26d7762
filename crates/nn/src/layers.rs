//! Layers. Each registers its parameters in a [`ParamStore`] under a dotted path and only
//! defines `forward`: autograd derives the backward pass.

use crate::init::Init;
use crate::lora::Lora;
use crate::params::{ParamKind, ParamStore};
use crate::Result;
use yuanli_autograd::{Frozen, GeluKind, LoraOpts, Var};
use yuanli_tensor::{DType, QMatrix, QuantType, Rng, Tensor};

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

/// The weight matrix `(rows, cols)` of a linear map or an embedding table, in one of the
/// forms a model's weights take:
/// - an f32 **parameter** in a [`ParamStore`] — trainable, or frozen (a constant leaf, see
///   [`ParamStore::set_trainable`]);
/// - a **stored** matrix in a GGML format — F16, BF16 or block-quantized (Q8_0, Q4_1, Q4_K, …),
///   read in place from a memory-mapped file or an owned buffer. Always frozen: it never gets a
///   gradient, but the gradient still flows through it to the layer's input (QLoRA).
///
/// Training code calls [`Weight::linear`] and [`Weight::embedding`] (autograd); the inference
/// engine reads the raw form with [`Weight::with_bytes`] and hands it to the quantized kernels.
#[derive(Clone, Debug)]
pub enum Weight {
    /// An f32 parameter (trainable or frozen).
    Param(Var),
    /// A frozen matrix in a storage format.
    Stored(QMatrix),
}

impl Weight {
    /// Rows (output features; vocabulary entries of an embedding).
    pub fn rows(&self) -> usize {
        match self {
            Weight::Param(v) => v.shape()[0],
            Weight::Stored(q) => q.rows(),
        }
    }

    /// Columns (input features; the embedding width).
    pub fn cols(&self) -> usize {
        match self {
            Weight::Param(v) => v.shape()[1],
            Weight::Stored(q) => q.cols(),
        }
    }

    /// The storage format (`F32` for a parameter).
    pub fn ty(&self) -> QuantType {
        match self {
            Weight::Param(_) => QuantType::F32,
            Weight::Stored(q) => q.ty(),
        }
    }

    /// The parameter, if this is one.
    pub fn var(&self) -> Option<&Var> {
        match self {
            Weight::Param(v) => Some(v),
            Weight::Stored(_) => None,
        }
    }

    /// Whether training updates it (a trainable parameter).
    pub fn is_trainable(&self) -> bool {
        self.var().is_some_and(Var::requires_grad)
    }

    /// `x·Wᵀ + b` for `x (…, cols)` → `(…, rows)`, differentiable with respect to `x` and `b`
    /// (and `W` when it is a trainable parameter). A frozen weight is applied at the input's
    /// precision (f64 in gradient checks), as a stored one is dequantized to it.
    pub fn linear(&self, x: &Var, b: Option<&Var>) -> Var {
        match self {
            Weight::Param(w) if !w.requires_grad() && w.value().dtype() != x.value().dtype() => {
                x.linear(&Var::constant(w.value().to_dtype(x.value().dtype())), b)
            }
            Weight::Param(w) => x.linear(w, b),
            Weight::Stored(q) => x.linear_q(q, b),
        }
    }

    /// The fused LM head and loss: mean cross-entropy of `x·Wᵀ` (`x (N, cols)`) against
    /// `targets (N,)`, never holding the `(N, rows)` logits ([`Var::linear_cross_entropy`];
    /// a frozen weight at the input's precision, as in [`Weight::linear`]).
    pub fn linear_cross_entropy(&self, x: &Var, targets: &Tensor) -> Var {
        match self {
            Weight::Param(w) if !w.requires_grad() && w.value().dtype() != x.value().dtype() => {
                x.linear_cross_entropy(&Var::constant(w.value().to_dtype(x.value().dtype())), targets)
            }
            Weight::Param(w) => x.linear_cross_entropy(w, targets),
            Weight::Stored(q) => x.linear_q_cross_entropy(q, targets),
        }
    }

    /// The fused head's per-row log-probabilities of `targets (N,)` under `x·Wᵀ`
    /// ([`Var::linear_token_logps`]): what DPO, GRPO and PPO weigh token by token.
    pub fn token_logps(&self, x: &Var, targets: &Tensor) -> Var {
        match self {
            Weight::Param(w) if !w.requires_grad() && w.value().dtype() != x.value().dtype() => {
                x.linear_token_logps(&Var::constant(w.value().to_dtype(x.value().dtype())), targets)
            }
            Weight::Param(w) => x.linear_token_logps(w, targets),
            Weight::Stored(q) => x.linear_q_token_logps(q, targets),
        }
    }

    /// Rows `ids` (u32, any shape) → `(…ids, cols)`. A stored table yields constants (it has no
    /// gradient to receive, and token ids have none to pass on).
    pub fn embedding(&self, ids: &Tensor) -> Var {
        match self {
            Weight::Param(w) => w.embedding(ids),
            Weight::Stored(q) => {
                let ids_v = ids.to_vec::<u32>();
                let c = q.cols();
                let mut out = vec![0f32; ids_v.len() * c];
                for (&id, row) in ids_v.iter().zip(out.chunks_exact_mut(c.max(1))) {
                    assert!((id as usize) < q.rows(), "embedding: id {id} in a table of {} rows", q.rows());
                    q.dequantize_rows(id as usize, id as usize + 1, row);
                }
                let mut shape = ids.shape().to_vec();
                shape.push(c);
                Var::constant(Tensor::new(out, &shape))
            }
        }
    }

    /// Runs `f` on the weight's storage format and bytes, row by row (an f32 parameter as its
    /// little-endian f32 bytes, read under its lock, no copy).
    pub fn with_bytes<R>(&self, f: impl FnOnce(QuantType, &[u8]) -> R) -> R {
        match self {
            Weight::Param(w) => w.value().with_slice(|v: &[f32]| f(QuantType::F32, bytemuck::cast_slice(v))),
            Weight::Stored(q) => f(q.ty(), q.bytes()),
        }
    }

    /// Row `r` in f32 into `out` (`cols` values).
    #[track_caller]
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        match self {
            Weight::Param(w) => {
                let c = out.len();
                w.value().with_slice(|v: &[f32]| out.copy_from_slice(&v[r * c..(r + 1) * c]));
            }
            Weight::Stored(q) => q.dequantize_rows(r, r + 1, out),
        }
    }

    /// Bytes the weight occupies.
    pub fn bytes(&self) -> usize {
        match self {
            Weight::Param(v) => 4 * v.value().numel(),
            Weight::Stored(q) => q.bytes().len(),
        }
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
    /// `(out, in)`: a parameter (trainable or frozen) or a stored matrix.
    pub weight: Weight,
    /// `(out,)`, if any.
    pub bias: Option<Var>,
    /// A low-rank adapter added to the map, if any ([`Lora`]).
    pub lora: Option<Lora>,
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
        Ok(Self { weight: Weight::Param(weight), bias, lora: None })
    }

    /// A layer over a stored (frozen) matrix `(out, in)`, with an optional bias registered as
    /// `{prefix}.bias` (zeros; trainable unless the store freezes it).
    pub fn stored(store: &mut ParamStore, prefix: &str, weight: QMatrix, bias: bool) -> Result<Self> {
        let bias = if bias {
            Some(store.param(&join(prefix, "bias"), Tensor::zeros(&[weight.rows()], DType::F32), ParamKind::Bias)?)
        } else {
            None
        };
        Ok(Self { weight: Weight::Stored(weight), bias, lora: None })
    }

    /// The frozen base map alone, `x·Wᵀ + b`, the adapter switched off.
    pub fn forward_base(&self, x: &Var) -> Var {
        self.weight.linear(x, self.bias.as_ref())
    }

    /// `x·Wᵀ + b`, plus the adapter's update (with its dropout when `train`). Over a frozen
    /// base this is one fused op ([`Var::lora_linear`]); over a training base, the sum of the
    /// two maps.
    pub fn forward_train(&self, x: &Var, train: bool, rng: &mut Rng) -> Var {
        let Some(l) = &self.lora else {
            return self.weight.linear(x, self.bias.as_ref());
        };
        let dropout = if train { l.dropout } else { 0.0 };
        let opts = LoraOpts { scale: l.scale, dropout, seed: if dropout > 0.0 { rng.next_u64() } else { 0 } };
        let bias = self.bias.as_ref();
        match &self.weight {
            Weight::Param(w) if w.requires_grad() => self.weight.linear(x, bias).add(&l.delta(x, opts)),
            Weight::Param(w) if w.value().dtype() != x.value().dtype() => {
                let w = w.value().to_dtype(x.value().dtype());
                x.lora_linear(Frozen::Dense(&w), bias, &l.a, &l.b, opts)
            }
            Weight::Param(w) => x.lora_linear(Frozen::Dense(w.value()), bias, &l.a, &l.b, opts),
            Weight::Stored(q) => x.lora_linear(Frozen::Stored(q), bias, &l.a, &l.b, opts),
        }
    }
}

impl Module for Linear {
    /// `(…, in)·(in, out) + (out,) → (…, out)`, plus the adapter's update (no dropout).
    fn forward(&self, x: &Var) -> Var {
        self.forward_train(x, false, &mut Rng::new(0))
    }
}

/// A lookup table `(vocab, dim)`: token ids → vectors.
pub struct Embedding {
    /// `(vocab, dim)`
    pub weight: Weight,
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
        let w = store.param(&join(prefix, "weight"), init.tensor(&[vocab, dim], rng), ParamKind::Embedding)?;
        Ok(Self { weight: Weight::Param(w) })
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
