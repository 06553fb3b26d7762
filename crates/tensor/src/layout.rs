//! Shape, strides and offset: how an n-d index maps into a flat buffer.
//!
//! Element `[i0, i1, …, i(n-1)]` of a view lives at `offset + Σ_k i_k · strides[k]`.
//! Row-major ("C") contiguous strides are `strides[k] = Π_{j>k} shape[j]`. A stride of 0
//! repeats one element along that axis: that is how broadcasting costs no memory.

/// The geometry of a tensor view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

/// Row-major strides for a shape.
pub(crate) fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1;
    for k in (0..shape.len()).rev() {
        strides[k] = acc;
        acc *= shape[k];
    }
    strides
}

/// Resolves a possibly negative axis (`-1` = last) against a rank; panics naming the op.
#[track_caller]
pub(crate) fn resolve_axis(axis: isize, rank: usize, op: &str) -> usize {
    let r = rank as isize;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        panic!("{op}: axis {axis} out of range for a tensor of rank {rank}");
    }
    a as usize
}

/// The broadcast of two shapes (numpy rules), or `None` if they are incompatible.
pub(crate) fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

impl Layout {
    /// A contiguous layout starting at `offset`.
    pub fn contiguous_at(shape: &[usize], offset: usize) -> Self {
        Self { strides: contiguous_strides(shape), shape: shape.to_vec(), offset }
    }

    /// A contiguous layout at offset 0.
    pub fn contiguous(shape: &[usize]) -> Self {
        Self::contiguous_at(shape, 0)
    }

    /// Builds a layout from parts (no checks; callers guarantee bounds).
    pub(crate) fn from_parts(shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Self {
        Self { shape, strides, offset }
    }

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Elements to skip per step along each axis.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Index of element `[0, …, 0]` in the buffer.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the elements are laid out row-major without gaps (size-1 axes may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut acc = 1;
        for k in (0..self.shape.len()).rev() {
            if self.shape[k] != 1 && self.strides[k] != acc {
                return false;
            }
            acc *= self.shape[k];
        }
        true
    }

    /// One past the largest buffer index the view touches (0 for an empty view).
    pub fn max_index_exclusive(&self) -> usize {
        if self.numel() == 0 {
            return self.offset;
        }
        self.offset + self.shape.iter().zip(&self.strides).map(|(&d, &s)| (d - 1) * s).sum::<usize>() + 1
    }

    /// Permutes the axes: new axis `k` is old axis `perm[k]`.
    #[track_caller]
    pub fn permute(&self, perm: &[usize]) -> Self {
        let n = self.rank();
        let mut seen = vec![false; n];
        if perm.len() != n || perm.iter().any(|&p| p >= n || std::mem::replace(&mut seen[p], true)) {
            panic!("permute: {perm:?} is not a permutation of the {n} axes of shape {:?}", self.shape);
        }
        Self {
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        }
    }

    /// Restricts `axis` to `start..start+len`.
    #[track_caller]
    pub fn narrow(&self, axis: usize, start: usize, len: usize) -> Self {
        if axis >= self.rank() || start + len > self.shape[axis] {
            panic!("narrow: axis {axis}, range {start}..{} out of bounds for shape {:?}", start + len, self.shape);
        }
        let mut out = self.clone();
        out.offset += start * self.strides[axis];
        out.shape[axis] = len;
        out
    }

    /// Expands to `shape` by numpy broadcasting rules (new leading axes and size-1 axes get stride 0).
    #[track_caller]
    pub fn broadcast_as(&self, shape: &[usize]) -> Self {
        let n = shape.len();
        let r = self.rank();
        if r > n {
            panic!("broadcast_as: cannot broadcast shape {:?} to lower-rank shape {shape:?}", self.shape);
        }
        let mut strides = vec![0; n];
        for i in 0..n {
            if i + r >= n {
                let j = i + r - n;
                if self.shape[j] == shape[i] {
                    strides[i] = self.strides[j];
                } else if self.shape[j] == 1 {
                    strides[i] = 0;
                } else {
                    panic!("broadcast_as: cannot broadcast shape {:?} to {shape:?}", self.shape);
                }
            }
        }
        Self { shape: shape.to_vec(), strides, offset: self.offset }
    }

    /// The view with shape `shape` over the same elements, if it exists without copying.
    ///
    /// Always exists for contiguous layouts; for others, only when merged/split axes are
    /// themselves contiguous. Returns `None` when a copy is needed.
    pub fn reshaped(&self, shape: &[usize]) -> Option<Self> {
        if self.is_contiguous() {
            return Some(Self::contiguous_at(shape, self.offset));
        }
        // General case: group old axes into chunks that are internally contiguous, and split
        // each chunk into the new axes that cover the same number of elements.
        let old: Vec<(usize, usize)> =
            self.shape.iter().zip(&self.strides).filter(|(&d, _)| d != 1).map(|(&d, &s)| (d, s)).collect();
        let mut new_strides = vec![0usize; shape.len()];
        let mut oi = 0;
        let mut ni = 0;
        while ni < shape.len() {
            if shape[ni] == 1 {
                new_strides[ni] = 0;
                ni += 1;
                continue;
            }
            if oi >= old.len() {
                return None;
            }
            // Take old axes until their product covers the new axes' product.
            let chunk_start = oi;
            let mut old_prod = old[oi].0;
            oi += 1;
            let new_start = ni;
            let mut new_prod = shape[ni];
            ni += 1;
            loop {
                if old_prod == new_prod {
                    break;
                }
                if old_prod < new_prod {
                    if oi >= old.len() {
                        return None;
                    }
                    // Merging old axes requires them to be contiguous with each other.
                    if old[oi - 1].1 != old[oi].0 * old[oi].1 {
                        return None;
                    }
                    old_prod *= old[oi].0;
                    oi += 1;
                } else {
                    if ni >= shape.len() {
                        return None;
                    }
                    new_prod *= shape[ni];
                    ni += 1;
                }
            }
            // Within the chunk the innermost stride is that of the last old axis.
            let mut stride = old[oi - 1].1;
            for k in (new_start..ni).rev() {
                new_strides[k] = if shape[k] == 1 { 0 } else { stride };
                stride *= shape[k];
            }
            let _ = chunk_start;
        }
        if oi != old.len() {
            return None;
        }
        Some(Self { shape: shape.to_vec(), strides: new_strides, offset: self.offset })
    }
}

/// Walks the rows (all axes but the last) of `K` views that share a shape, in row-major order.
///
/// For rows `range`, calls `f(row, [off_0, …, off_{K-1}])` with each view's buffer offset of
/// the row's first element. The last axis is left to the caller, who knows its length and its
/// per-view inner stride: this keeps the hot inner loop a plain slice loop.
pub(crate) fn walk_rows<const K: usize>(
    outer_shape: &[usize],
    strides: [&[usize]; K],
    base: [usize; K],
    range: std::ops::Range<usize>,
    mut f: impl FnMut(usize, [usize; K]),
) {
    let n = outer_shape.len();
    if range.is_empty() {
        return;
    }
    // Multi-index of the first row, by repeated division.
    let mut idx = vec![0usize; n];
    let mut rem = range.start;
    for k in (0..n).rev() {
        if outer_shape[k] > 0 {
            idx[k] = rem % outer_shape[k];
            rem /= outer_shape[k];
        }
    }
    let mut offs = base;
    for (v, off) in offs.iter_mut().enumerate() {
        *off += idx.iter().zip(strides[v]).map(|(i, s)| i * s).sum::<usize>();
    }
    for row in range {
        f(row, offs);
        // Odometer increment, innermost outer axis first.
        for k in (0..n).rev() {
            idx[k] += 1;
            if idx[k] < outer_shape[k] {
                for (v, off) in offs.iter_mut().enumerate() {
                    *off += strides[v][k];
                }
                break;
            }
            for (v, off) in offs.iter_mut().enumerate() {
                *off -= (idx[k] - 1) * strides[v][k];
            }
            idx[k] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_shapes_follow_numpy() {
        assert_eq!(broadcast_shapes(&[3, 1, 5], &[4, 5]), Some(vec![3, 4, 5]));
        assert_eq!(broadcast_shapes(&[2], &[3]), None);
        assert_eq!(broadcast_shapes(&[], &[2, 2]), Some(vec![2, 2]));
    }

    #[test]
    fn reshape_of_transposed_view_needs_copy_only_when_merging_across_gaps() {
        let l = Layout::contiguous(&[2, 3, 4]).permute(&[1, 0, 2]); // (3, 2, 4), strides (4, 12, 1)
        assert!(l.reshaped(&[6, 4]).is_none());
        assert_eq!(l.reshaped(&[3, 2, 2, 2]).map(|x| x.strides().to_vec()), Some(vec![4, 12, 2, 1]));
        let l = Layout::contiguous(&[4, 6]).narrow(1, 0, 3); // rows with gaps
        assert!(l.reshaped(&[12]).is_none());
        assert_eq!(l.reshaped(&[2, 2, 3]).map(|x| x.strides().to_vec()), Some(vec![12, 6, 1]));
    }

    #[test]
    fn walk_rows_visits_rows_in_order_from_any_start() {
        let l = Layout::contiguous(&[2, 3, 4]).permute(&[1, 0, 2]);
        let mut all = vec![];
        walk_rows(&l.shape()[..2], [&l.strides()[..2]], [0], 0..6, |_, [o]| all.push(o));
        assert_eq!(all, vec![0, 12, 4, 16, 8, 20]);
        let mut tail = vec![];
        walk_rows(&l.shape()[..2], [&l.strides()[..2]], [0], 3..6, |_, [o]| tail.push(o));
        assert_eq!(tail, vec![16, 8, 20]);
    }
}
