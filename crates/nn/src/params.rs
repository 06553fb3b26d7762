//! The parameter arena.

use crate::error::{Error, Result};
use std::collections::HashMap;
use yuanli_autograd::Var;
use yuanli_tensor::{cpu, DType, Tensor};

/// What role a parameter plays; optimizers use it to pick defaults (weight decay applies to
/// `Weight` matrices only, not to norms, biases or embeddings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// A weight matrix of a linear map.
    Weight,
    /// A bias vector.
    Bias,
    /// A normalisation layer's gain or shift.
    Norm,
    /// An embedding table.
    Embedding,
}

/// One registered parameter.
#[derive(Clone, Debug)]
pub struct ParamInfo {
    /// Dotted path, e.g. `blocks.0.attn.c_attn.weight`.
    pub name: String,
    /// Role, for optimizer defaults.
    pub kind: ParamKind,
    /// Frozen: a constant leaf in the frozen arena, with no gradient slot and no optimizer
    /// state; otherwise trainable, in the value and gradient arenas.
    pub frozen: bool,
    /// First element in its arena (the trainable arenas, or the frozen one).
    pub offset: usize,
    /// Shape of the parameter.
    pub shape: Vec<usize>,
    /// The graph leaf (value = arena view, gradient = grad-arena view).
    pub var: Var,
}

impl ParamInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// All parameters and gradients of a model in two contiguous f32 arenas.
///
/// A parameter may instead be **frozen** ([`ParamStore::set_trainable`] decides at
/// registration): its value goes to a third arena and its leaf is a constant, so it gets no
/// gradient slot, no optimizer state, no place in the gradient norm, clipping or weight decay,
/// and the backward pass never computes its gradient (`Backward` is asked only for inputs that
/// require one). The trainable arenas hold exactly the trainable parameters.
///
/// ```
/// use yuanli_nn::{ParamKind, ParamStore};
/// use yuanli_tensor::{DType, Tensor};
/// let mut store = ParamStore::new();
/// let w = store.param("fc.weight", Tensor::ones(&[2, 3], DType::F32), ParamKind::Weight).unwrap();
/// w.sum_all().backward();
/// assert_eq!(store.grad_arena().to_vec::<f32>(), vec![1.0; 6]);
/// store.zero_grad();
/// assert_eq!(store.grad_norm(), 0.0);
/// ```
pub struct ParamStore {
    values: Tensor,
    grads: Tensor,
    frozen: Tensor,
    params: Vec<ParamInfo>,
    by_name: HashMap<String, usize>,
    trainable: TrainableRule,
}

/// Decides from a parameter's name and kind whether it is trainable.
type TrainableRule = Box<dyn Fn(&str, ParamKind) -> bool + Send + Sync>;

impl Default for ParamStore {
    fn default() -> Self {
        Self::new()
    }
}

impl ParamStore {
    /// An empty store; every parameter registered in it is trainable.
    pub fn new() -> Self {
        Self {
            values: Tensor::arena(DType::F32),
            grads: Tensor::arena(DType::F32),
            frozen: Tensor::arena(DType::F32),
            params: Vec::new(),
            by_name: HashMap::new(),
            trainable: Box::new(|_, _| true),
        }
    }

    /// An empty store in which every parameter is frozen (a model for inference only: no
    /// gradient arena is allocated).
    pub fn frozen() -> Self {
        let mut s = Self::new();
        s.set_trainable(|_, _| false);
        s
    }

    /// Decides, for every parameter registered from now on, whether it is trainable (`true`)
    /// or frozen, from its dotted name and kind. Build the model after setting it.
    pub fn set_trainable(&mut self, rule: impl Fn(&str, ParamKind) -> bool + Send + Sync + 'static) {
        self.trainable = Box::new(rule);
    }

    /// Registers a parameter with initial value `init` (converted to f32) and returns its leaf:
    /// trainable, or a constant when the store's rule freezes it.
    pub fn param(&mut self, name: &str, init: Tensor, kind: ParamKind) -> Result<Var> {
        if self.by_name.contains_key(name) {
            return Err(Error::DuplicateName(name.to_string()));
        }
        let shape = init.shape().to_vec();
        let frozen = !(self.trainable)(name, kind);
        let (offset, var) = if frozen {
            let offset = self.frozen.arena_push(&init);
            (offset, Var::constant(self.frozen.view_at(offset, &shape)))
        } else {
            let offset = self.values.arena_push(&init);
            let goff = self.grads.arena_push(&Tensor::zeros(&shape, DType::F32));
            debug_assert_eq!(offset, goff, "value and gradient arenas grow in lockstep");
            (offset, Var::param(self.values.view_at(offset, &shape), self.grads.view_at(offset, &shape)))
        };
        self.by_name.insert(name.to_string(), self.params.len());
        self.params.push(ParamInfo { name: name.to_string(), kind, frozen, offset, shape, var: var.clone() });
        Ok(var)
    }

    /// Every parameter, in registration order (which is arena order).
    pub fn params(&self) -> &[ParamInfo] {
        &self.params
    }

    /// A parameter by name.
    pub fn get(&self, name: &str) -> Option<&ParamInfo> {
        self.by_name.get(name).map(|&i| &self.params[i])
    }

    /// Total number of scalar parameters, trainable and frozen.
    pub fn num_params(&self) -> usize {
        self.num_trainable() + self.frozen.buffer_len()
    }

    /// Number of trainable scalars (the length of the value and gradient arenas).
    pub fn num_trainable(&self) -> usize {
        self.values.buffer_len()
    }

    /// The trainable values as one contiguous 1-d tensor (a view; writes are seen by the model).
    pub fn value_arena(&self) -> Tensor {
        self.values.view_at(0, &[self.num_trainable()])
    }

    /// The gradients of the trainable values, laid out as [`ParamStore::value_arena`].
    pub fn grad_arena(&self) -> Tensor {
        self.grads.view_at(0, &[self.num_trainable()])
    }

    /// The values of one parameter, trainable or frozen (a view).
    pub fn value_of(&self, p: &ParamInfo) -> Tensor {
        p.var.value().clone()
    }

    /// Overwrites a parameter's values (trainable or frozen) from row-major `data`.
    #[track_caller]
    pub fn set_values(&self, p: &ParamInfo, data: &[f32]) {
        assert_eq!(data.len(), p.numel(), "set_values: {} values for {} {:?}", data.len(), p.name, p.shape);
        p.var.value().with_slice_mut(|dst: &mut [f32]| dst.copy_from_slice(data));
    }

    /// Sets every gradient to zero: one `fill` over the gradient arena.
    pub fn zero_grad(&self) {
        self.grad_arena().fill_(0.0);
    }

    /// `‖g‖₂` over all gradients (accumulated in f64).
    pub fn grad_norm(&self) -> f64 {
        self.grad_arena().with_slice(|g: &[f32]| cpu::sum_squares(g)).sqrt()
    }

    /// Scales all gradients so that their global norm is at most `max_norm`; returns the norm
    /// before clipping (what a training log should show).
    pub fn clip_grad_norm(&self, max_norm: f64) -> f64 {
        let norm = self.grad_norm();
        if norm > max_norm && norm.is_finite() {
            let s = (max_norm / (norm + 1e-6)) as f32;
            self.grad_arena().with_slice_mut(|g: &mut [f32]| cpu::simd::scale(g, s));
        }
        norm
    }

    /// Errors with the first parameter (in arena order) whose gradient is NaN or ±∞.
    pub fn check_finite_grads(&self) -> Result<()> {
        let bad = self.grad_arena().with_slice(|g: &[f32]| g.iter().position(|v| !v.is_finite()).map(|i| (i, g[i])));
        let Some((flat, value)) = bad else {
            return Ok(());
        };
        let p = self
            .params
            .iter()
            .rev()
            .find(|p| !p.frozen && p.offset <= flat)
            .expect("every arena element belongs to a parameter");
        Err(Error::NonFiniteGradient { name: p.name.clone(), index: flat - p.offset, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_views_into_one_arena_and_gradients_accumulate_in_place() {
        let mut store = ParamStore::new();
        let a = store.param("a", Tensor::new(vec![1.0f32, 2.0], &[2]), ParamKind::Weight).unwrap();
        let b = store.param("b", Tensor::new(vec![3.0f32], &[1]), ParamKind::Bias).unwrap();
        assert_eq!(store.num_params(), 3);
        assert_eq!(store.value_arena().to_vec::<f32>(), vec![1.0, 2.0, 3.0]);
        // The arena grew after `a` was made: `a` still reads its own values.
        assert_eq!(a.value().to_vec::<f32>(), vec![1.0, 2.0]);
        a.mul(&a).sum_all().add(&b.scale(5.0).sum_all()).backward();
        assert_eq!(store.grad_arena().to_vec::<f32>(), vec![2.0, 4.0, 5.0]);
        // A second backward accumulates (+=).
        b.sum_all().backward();
        assert_eq!(store.grad_arena().to_vec::<f32>(), vec![2.0, 4.0, 6.0]);
        assert!((store.grad_norm() - (4.0f64 + 16.0 + 36.0).sqrt()).abs() < 1e-6);
        let pre = store.clip_grad_norm(1.0);
        assert!((pre - 56f64.sqrt()).abs() < 1e-5 && (store.grad_norm() - 1.0).abs() < 1e-4);
        // Writing the value arena changes what the model sees.
        store.value_arena().fill_(0.5);
        assert_eq!(b.value().to_vec::<f32>(), vec![0.5]);
        assert!(matches!(
            store.param("a", Tensor::zeros(&[1], DType::F32), ParamKind::Bias),
            Err(Error::DuplicateName(_))
        ));
    }

    #[test]
    fn frozen_parameters_have_no_gradient_slot_and_receive_no_gradient() {
        let mut store = ParamStore::new();
        store.set_trainable(|name, _| name.starts_with("lora"));
        let w =
            store.param("base.weight", Tensor::new(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2]), ParamKind::Weight).unwrap();
        let a = store.param("lora.a", Tensor::new(vec![0.5f32, -1.0], &[1, 2]), ParamKind::Weight).unwrap();
        assert_eq!((store.num_trainable(), store.num_params()), (2, 6));
        assert!(!w.requires_grad() && a.requires_grad());
        assert!(store.params()[0].frozen && !store.params()[1].frozen);
        let x = Var::constant(Tensor::new(vec![1.0f32, 1.0], &[1, 2]));
        x.linear(&w, None).linear(&a, None).sum_all().backward();
        assert!(w.grad().is_none(), "a frozen weight gets no gradient");
        assert_eq!(store.grad_arena().to_vec::<f32>(), vec![3.0, 7.0]);
        // Writing a frozen value is seen by the model.
        store.set_values(&store.params()[0].clone(), &[0.0, 0.0, 0.0, 0.0]);
        assert_eq!(w.value().to_vec::<f32>(), vec![0.0; 4]);
        assert_eq!(ParamStore::frozen().num_trainable(), 0);
    }

    #[test]
    fn a_nan_gradient_is_reported_by_parameter_name() {
        let mut store = ParamStore::new();
        let _a = store.param("blocks.0.w", Tensor::zeros(&[3], DType::F32), ParamKind::Weight).unwrap();
        let b = store.param("blocks.1.w", Tensor::new(vec![1.0f32, -1.0], &[2]), ParamKind::Weight).unwrap();
        assert!(store.check_finite_grads().is_ok());
        b.sqrt().sum_all().backward(); // √−1 is NaN, and so is its gradient
        let err = store.check_finite_grads().expect_err("NaN gradient");
        assert_eq!(err.to_string(), "gradient of parameter blocks.1.w is not finite (NaN) at element 1");
    }
}
