//! Shape primitives (views whose backward undoes the view), concat, gather/index, where.

use crate::var::{Backward, Var};
use yuanli_tensor::Tensor;

/// `z = reshape(x)`: the gradient is reshaped back.
struct Reshape {
    xs: Vec<usize>,
}
impl Backward for Reshape {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| g.reshape(&self.xs))]
    }
}

/// `z = permute(x, p)`: the gradient is permuted by the inverse permutation.
struct Permute {
    inverse: Vec<usize>,
}
impl Backward for Permute {
    fn name(&self) -> &'static str {
        "permute"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| g.permute(&self.inverse).contiguous())]
    }
}

/// `z = x[…, start..start+len, …]`: the gradient is placed in a zero tensor of x's shape.
struct Narrow {
    xs: Vec<usize>,
    axis: usize,
    start: usize,
}
impl Backward for Narrow {
    fn name(&self) -> &'static str {
        "narrow"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| {
            let after = self.xs[self.axis] - self.start - g.shape()[self.axis];
            g.pad_axis(self.axis as isize, self.start, after)
        })]
    }
}

/// `z = broadcast(x)`: the gradient is summed over the broadcast axes.
struct Broadcast {
    xs: Vec<usize>,
}
impl Backward for Broadcast {
    fn name(&self) -> &'static str {
        "broadcast"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| g.sum_to_shape(&self.xs))]
    }
}

/// `z = concat(x₀, x₁, …)`: each input gets its slice of the gradient.
struct Concat {
    axis: usize,
    sizes: Vec<usize>,
}
impl Backward for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        g.split(self.axis as isize, &self.sizes)
            .into_iter()
            .zip(n)
            .map(|(p, &need)| need.then(|| p.contiguous()))
            .collect()
    }
}

/// `z = gather(x, axis, idx)`: `∂L/∂x = scatter_add(0, axis, idx, g)`.
struct Gather {
    xs: Vec<usize>,
    axis: isize,
    idx: Tensor,
}
impl Backward for Gather {
    fn name(&self) -> &'static str {
        "gather"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| Tensor::zeros(&self.xs, g.dtype()).scatter_add(self.axis, &self.idx, g))]
    }
}

/// `z = table[ids]` (rows): `∂L/∂table[r] = Σ_{n: ids[n] = r} g[n]`.
struct IndexSelect {
    rows: usize,
    ids: Tensor,
}
impl Backward for IndexSelect {
    fn name(&self) -> &'static str {
        "index_select"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| g.index_add_rows(&self.ids, self.rows))]
    }
}

/// `z = cond ? a : b`: `∂L/∂a = g·1[cond]`, `∂L/∂b = g·1[¬cond]` (cond is a constant).
struct Where {
    cond: Tensor,
    xs: Vec<usize>,
    ys: Vec<usize>,
}
impl Backward for Where {
    fn name(&self) -> &'static str {
        "where"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        let zero = Tensor::zeros(&[], g.dtype());
        vec![
            n[0].then(|| Tensor::where_cond(&self.cond, g, &zero).sum_to_shape(&self.xs)),
            n[1].then(|| Tensor::where_cond(&self.cond, &zero, g).sum_to_shape(&self.ys)),
        ]
    }
}

impl Var {
    /// Same elements, new shape.
    #[track_caller]
    pub fn reshape(&self, shape: &[usize]) -> Var {
        Var::from_op(self.value().reshape(shape), Reshape { xs: self.shape().to_vec() }, &[self])
    }

    /// Reorders axes: new axis `k` is old axis `perm[k]`.
    #[track_caller]
    pub fn permute(&self, perm: &[usize]) -> Var {
        let mut inverse = vec![0; perm.len()];
        for (k, &p) in perm.iter().enumerate() {
            if p < inverse.len() {
                inverse[p] = k;
            }
        }
        Var::from_op(self.value().permute(perm), Permute { inverse }, &[self])
    }

    /// Swaps two axes.
    #[track_caller]
    pub fn transpose(&self, a: isize, b: isize) -> Var {
        let r = self.shape().len() as isize;
        let norm = |x: isize| if x < 0 { (x + r) as usize } else { x as usize };
        let mut perm: Vec<usize> = (0..r as usize).collect();
        perm.swap(norm(a), norm(b));
        self.permute(&perm)
    }

    /// Transpose of the last two axes.
    #[track_caller]
    pub fn t(&self) -> Var {
        self.transpose(-2, -1)
    }

    /// Restricts `axis` to `start..start+len` (a slice).
    #[track_caller]
    pub fn narrow(&self, axis: isize, start: usize, len: usize) -> Var {
        let v = self.value().narrow(axis, start, len);
        let r = self.shape().len() as isize;
        let a = if axis < 0 { axis + r } else { axis } as usize;
        Var::from_op(v, Narrow { xs: self.shape().to_vec(), axis: a, start }, &[self])
    }

    /// Splits `axis` into pieces of the given sizes.
    #[track_caller]
    pub fn split(&self, axis: isize, sizes: &[usize]) -> Vec<Var> {
        let mut start = 0;
        sizes
            .iter()
            .map(|&len| {
                let v = self.narrow(axis, start, len);
                start += len;
                v
            })
            .collect()
    }

    /// Broadcasts to `shape`.
    #[track_caller]
    pub fn broadcast_as(&self, shape: &[usize]) -> Var {
        Var::from_op(self.value().broadcast_as(shape), Broadcast { xs: self.shape().to_vec() }, &[self])
    }

    /// Concatenates along `axis`.
    #[track_caller]
    pub fn concat(parts: &[Var], axis: isize) -> Var {
        let values: Vec<Tensor> = parts.iter().map(|p| p.value().clone()).collect();
        let v = Tensor::concat(&values, axis);
        let r = v.rank() as isize;
        let a = if axis < 0 { axis + r } else { axis } as usize;
        let sizes = parts.iter().map(|p| p.shape()[a]).collect();
        let refs: Vec<&Var> = parts.iter().collect();
        Var::from_op(v, Concat { axis: a, sizes }, &refs)
    }

    /// Gathers along `axis` with u32 indices (see [`Tensor::gather`]).
    #[track_caller]
    pub fn gather(&self, axis: isize, idx: &Tensor) -> Var {
        let v = self.value().gather(axis, idx);
        Var::from_op(v, Gather { xs: self.shape().to_vec(), axis, idx: idx.clone() }, &[self])
    }

    /// Picks rows of a `(N, C)` table by u32 ids: `(…ids, C)`.
    #[track_caller]
    pub fn index_select(&self, ids: &Tensor) -> Var {
        let v = self.value().index_select(ids);
        Var::from_op(v, IndexSelect { rows: self.shape()[0], ids: ids.clone() }, &[self])
    }

    /// `cond ? a : b` elementwise (broadcasting); `cond` is a constant tensor, nonzero = true.
    #[track_caller]
    pub fn where_cond(cond: &Tensor, a: &Var, b: &Var) -> Var {
        let v = Tensor::where_cond(cond, a.value(), b.value());
        Var::from_op(v, Where { cond: cond.clone(), xs: a.shape().to_vec(), ys: b.shape().to_vec() }, &[a, b])
    }
}
