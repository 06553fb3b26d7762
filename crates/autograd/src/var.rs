//! `Var`, the graph node, and the backward pass.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use yuanli_tensor::Tensor;

/// The backward half of an op: given `∂L/∂out`, return `∂L/∂input` for each input.
///
/// `needs[i]` says whether input `i` wants a gradient; return `None` for the others (and you
/// may skip computing them). A returned gradient must have exactly the input's shape.
pub trait Backward: Send + Sync {
    /// The op's name, for error messages and graph printing.
    fn name(&self) -> &'static str;
    /// Computes the input gradients from the output gradient.
    fn backward(&self, dout: &Tensor, needs: &[bool]) -> Vec<Option<Tensor>>;
}

/// The graph part of a variable: what the backward pass needs, and nothing else. It holds no
/// value: an op keeps the tensors its backward reads (in its [`Backward`] struct), and every
/// other intermediate is freed as soon as the forward code drops its [`Var`] — so a training
/// step's memory is what the backward needs, as in PyTorch, not every value ever computed.
struct Node {
    id: u64,
    shape: Vec<usize>,
    requires_grad: bool,
    op: Option<Box<dyn Backward>>,
    parents: Vec<Arc<Node>>,
    /// Accumulated gradient of a leaf (created on first use).
    grad: Mutex<Option<Tensor>>,
    /// For arena-backed parameters: a view into the gradient arena, accumulated in place.
    grad_slot: Option<Tensor>,
}

impl Drop for Node {
    /// Drops the graph iteratively: the default recursive drop of a long chain of `Arc`s
    /// would overflow the stack, exactly like a recursive topological sort.
    fn drop(&mut self) {
        let mut stack: Vec<Arc<Node>> = std::mem::take(&mut self.parents);
        while let Some(v) = stack.pop() {
            if let Ok(mut node) = Arc::try_unwrap(v) {
                stack.append(&mut node.parents);
            }
        }
    }
}

impl Node {
    fn accumulate_leaf(&self, g: Tensor) {
        match &self.grad_slot {
            Some(slot) => slot.add_assign_(&g),
            None => {
                let mut guard = self.grad.lock().unwrap_or_else(|e| e.into_inner());
                *guard = Some(match guard.take() {
                    None => g,
                    Some(prev) => prev.add(&g), // never in place: `g` may be shared
                });
            }
        }
    }
}

struct Inner {
    value: Tensor,
    node: Arc<Node>,
}

/// A tensor in the autodiff graph: a value and its graph node.
///
/// Cloning is cheap (an `Arc`). Leaves are made with [`Var::leaf`] (requires grad),
/// [`Var::constant`] (does not) or [`Var::param`] (gradient accumulated into an arena view).
#[derive(Clone)]
pub struct Var(Arc<Inner>);

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops record the graph on this thread.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Restores gradient recording when dropped.
pub struct NoGradGuard {
    prev: bool,
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.prev));
    }
}

/// Stops recording on this thread until the guard is dropped (inference, evaluation).
///
/// ```
/// use yuanli_autograd::{no_grad, Var, Tensor};
/// let w = Var::leaf(Tensor::new(vec![2.0f32], &[1]));
/// let y = {
///     let _g = no_grad();
///     w.mul(&w)
/// };
/// assert!(!y.requires_grad());
/// ```
pub fn no_grad() -> NoGradGuard {
    let prev = GRAD_ENABLED.with(|g| g.replace(false));
    NoGradGuard { prev }
}

impl Var {
    fn make(
        value: Tensor,
        requires_grad: bool,
        op: Option<Box<dyn Backward>>,
        parents: Vec<Arc<Node>>,
        grad_slot: Option<Tensor>,
    ) -> Self {
        Var(Arc::new(Inner {
            node: Arc::new(Node {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                shape: value.shape().to_vec(),
                requires_grad,
                op,
                parents,
                grad: Mutex::new(None),
                grad_slot,
            }),
            value,
        }))
    }

    /// A leaf that requires a gradient.
    pub fn leaf(value: Tensor) -> Self {
        Self::make(value, true, None, vec![], None)
    }

    /// A leaf that does not require a gradient (data, masks, targets).
    pub fn constant(value: Tensor) -> Self {
        Self::make(value, false, None, vec![], None)
    }

    /// A parameter leaf whose gradient is accumulated in place into `grad_slot` (a view of
    /// the same shape into a gradient arena).
    #[track_caller]
    pub fn param(value: Tensor, grad_slot: Tensor) -> Self {
        assert_eq!(
            value.shape(),
            grad_slot.shape(),
            "Var::param: value {:?} vs grad slot {:?}",
            value.shape(),
            grad_slot.shape()
        );
        Self::make(value, true, None, vec![], Some(grad_slot))
    }

    /// The result of an op: records `op` and `parents` when recording is on and some parent
    /// requires a gradient; otherwise a constant.
    pub fn from_op(value: Tensor, op: impl Backward + 'static, parents: &[&Var]) -> Self {
        crate::profile::forward_op(op.name());
        if is_grad_enabled() && parents.iter().any(|p| p.requires_grad()) {
            Self::make(value, true, Some(Box::new(op)), parents.iter().map(|&p| p.0.node.clone()).collect(), None)
        } else {
            Self::constant(value)
        }
    }

    /// The value.
    pub fn value(&self) -> &Tensor {
        &self.0.value
    }

    /// Shorthand for `value().shape()`.
    pub fn shape(&self) -> &[usize] {
        self.0.value.shape()
    }

    /// Whether a gradient flows to this node.
    pub fn requires_grad(&self) -> bool {
        self.0.node.requires_grad
    }

    /// A unique id (stable for the node's life).
    pub fn id(&self) -> u64 {
        self.0.node.id
    }

    /// The op that made this node, if any.
    pub fn op_name(&self) -> Option<&'static str> {
        self.0.node.op.as_ref().map(|o| o.name())
    }

    /// The same value, cut from the graph.
    pub fn detach(&self) -> Var {
        Var::constant(self.0.value.clone())
    }

    /// The accumulated gradient of a leaf (after [`Var::backward`]), if any.
    pub fn grad(&self) -> Option<Tensor> {
        let node = &self.0.node;
        match &node.grad_slot {
            Some(slot) => Some(slot.clone()),
            None => node.grad.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    /// Clears the gradient of a leaf (zeroes an arena slot).
    pub fn zero_grad(&self) {
        let node = &self.0.node;
        match &node.grad_slot {
            Some(slot) => slot.fill_(0.0),
            None => *node.grad.lock().unwrap_or_else(|e| e.into_inner()) = None,
        }
    }

    /// Graph nodes that require a gradient, reachable from `self`, in topological order
    /// (inputs before outputs), found by an iterative depth-first search.
    fn topo_order(&self) -> Vec<Arc<Node>> {
        let mut order = Vec::new();
        let mut visited = std::collections::HashSet::new();
        // (node, whether its parents have been pushed)
        let mut stack: Vec<(Arc<Node>, bool)> = vec![(self.0.node.clone(), false)];
        while let Some((v, expanded)) = stack.pop() {
            if expanded {
                order.push(v);
                continue;
            }
            if !v.requires_grad || !visited.insert(v.id) {
                continue;
            }
            stack.push((v.clone(), true));
            for p in v.parents.iter().rev() {
                if p.requires_grad && !visited.contains(&p.id) {
                    stack.push((p.clone(), false));
                }
            }
        }
        order
    }

    /// Back-propagates from a scalar: `∂self/∂leaf` is added to every leaf's gradient.
    #[track_caller]
    pub fn backward(&self) {
        assert_eq!(
            self.value().numel(),
            1,
            "backward: the loss must be a scalar, got shape {:?}; use backward_with",
            self.shape()
        );
        let seed = Tensor::ones(self.shape(), self.value().dtype());
        self.backward_with(seed);
    }

    /// Back-propagates a given output gradient `∂L/∂self`.
    #[track_caller]
    pub fn backward_with(&self, dout: Tensor) {
        assert_eq!(dout.shape(), self.shape(), "backward_with: seed {:?} vs output {:?}", dout.shape(), self.shape());
        if !self.requires_grad() {
            return;
        }
        let mut order = self.topo_order();
        let mut grads: HashMap<u64, Tensor> = HashMap::new();
        grads.insert(self.id(), dout);
        // Outputs to inputs; a gradient is dropped as soon as it has been passed on.
        while let Some(node) = order.pop() {
            let Some(g) = grads.remove(&node.id) else {
                continue;
            };
            let Some(op) = &node.op else {
                node.accumulate_leaf(g);
                continue;
            };
            let needs: Vec<bool> = node.parents.iter().map(|p| p.requires_grad).collect();
            let started = crate::profile::enabled().then(std::time::Instant::now);
            let pgrads = op.backward(&g, &needs);
            if let Some(t) = started {
                crate::profile::backward_op(op.name(), t.elapsed().as_secs_f64());
            }
            drop(g);
            for (p, pg) in node.parents.iter().zip(pgrads) {
                let Some(pg) = pg else { continue };
                if !p.requires_grad {
                    continue;
                }
                assert_eq!(
                    pg.shape(),
                    p.shape.as_slice(),
                    "backward of {}: gradient {:?} for an input of shape {:?}",
                    op.name(),
                    pg.shape(),
                    p.shape
                );
                match grads.remove(&p.id) {
                    None => grads.insert(p.id, pg),
                    // In place only when no other handle can see `prev` (a gradient handed to
                    // two parents, like Add's, shares its storage and is added out of place).
                    Some(prev) if prev.is_sole_owner() && prev.is_contiguous() => {
                        prev.add_assign_(&pg);
                        grads.insert(p.id, prev)
                    }
                    Some(prev) => grads.insert(p.id, prev.add(&pg)),
                };
            }
        }
    }
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Var#{}({:?}, op {:?}, grad {})", self.id(), self.value(), self.op_name(), self.requires_grad())
    }
}
