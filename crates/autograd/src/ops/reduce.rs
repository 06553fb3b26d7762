//! Reductions: sum, mean, max.

use crate::var::{Backward, Var};
use yuanli_tensor::Tensor;

/// `z = Σ_axes x`: `∂z/∂x = 1`, i.e. the gradient is broadcast back over the reduced axes.
struct Sum {
    xs: Vec<usize>,
    kept: Vec<usize>,
}
impl Backward for Sum {
    fn name(&self) -> &'static str {
        "sum"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| g.reshape(&self.kept).broadcast_as(&self.xs).contiguous())]
    }
}

/// `z = max_axes x`: the gradient goes to the maximal elements (shared equally on ties).
struct Max {
    x: Tensor,
    zk: Tensor,
}
impl Backward for Max {
    fn name(&self) -> &'static str {
        "max"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| {
            let mask = self.x.eq(&self.zk);
            let axes: Vec<isize> = self
                .zk
                .shape()
                .iter()
                .enumerate()
                .filter(|&(i, &d)| d == 1 && self.x.shape()[i] != 1)
                .map(|(i, _)| i as isize)
                .collect();
            let count = mask.sum(&axes, true);
            mask.div(&count).mul(&g.reshape(self.zk.shape()))
        })]
    }
}

fn kept_shape(x: &Var, axes: &[isize]) -> Vec<usize> {
    let r = x.shape().len() as isize;
    let norm: Vec<usize> = axes.iter().map(|&a| if a < 0 { (a + r) as usize } else { a as usize }).collect();
    x.shape().iter().enumerate().map(|(i, &d)| if norm.contains(&i) { 1 } else { d }).collect()
}

impl Var {
    /// Σ over `axes` (negative axes count from the end).
    #[track_caller]
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Var {
        let v = self.value().sum(axes, keepdim);
        Var::from_op(v, Sum { xs: self.shape().to_vec(), kept: kept_shape(self, axes) }, &[self])
    }

    /// Σ of every element (a 0-d result).
    pub fn sum_all(&self) -> Var {
        let axes: Vec<isize> = (0..self.shape().len() as isize).collect();
        self.sum(&axes, false)
    }

    /// Mean over `axes` = Σ / count.
    #[track_caller]
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Var {
        let kept = kept_shape(self, axes);
        let count: usize = self.shape().iter().zip(&kept).filter(|(a, k)| a != k).map(|(a, _)| *a).product();
        let count = if count == 0 { 1 } else { count };
        // Axes of size 1 reduce nothing, so counting only changed axes is exact.
        self.sum(axes, keepdim).scale(1.0 / count as f64)
    }

    /// Mean of every element.
    pub fn mean_all(&self) -> Var {
        let axes: Vec<isize> = (0..self.shape().len() as isize).collect();
        self.mean(&axes, false)
    }

    /// Max over `axes`.
    #[track_caller]
    pub fn max(&self, axes: &[isize], keepdim: bool) -> Var {
        let zk = self.value().max(axes, true);
        let v = if keepdim { zk.clone() } else { self.value().max(axes, false) };
        Var::from_op(v, Max { x: self.value().clone(), zk }, &[self])
    }
}
