//! Indexing kernels: row lookup (embedding), gather/scatter-add along an axis, top-k.

use crate::dtype::{Element, Float};

/// `out[n, :] = table[ids[n], :]` for rows of length `c` (`=`). Panics naming the id if one is
/// out of range (callers validate user input first).
pub fn index_select_rows<T: Element>(out: &mut [T], table: &[T], ids: &[u32], c: usize) {
    let rows = table.len() / c.max(1);
    for (n, &id) in ids.iter().enumerate() {
        let id = id as usize;
        assert!(id < rows, "index_select: id {id} at position {n} ≥ table rows {rows}");
        out[n * c..(n + 1) * c].copy_from_slice(&table[id * c..(id + 1) * c]);
    }
}

/// `dtable[ids[n], :] += dout[n, :]`: the backward of a row lookup (repeated ids accumulate).
pub fn scatter_add_rows<T: Float>(dtable: &mut [T], ids: &[u32], dout: &[T], c: usize) {
    for (n, &id) in ids.iter().enumerate() {
        let id = id as usize;
        let dst = &mut dtable[id * c..(id + 1) * c];
        for (d, &g) in dst.iter_mut().zip(&dout[n * c..(n + 1) * c]) {
            *d += g;
        }
    }
}

/// Gather along the middle axis: `x` is `(outer, n, inner)`, `idx` is `(outer, k, inner)`,
/// `out[o, j, i] = x[o, idx[o, j, i], i]`.
pub fn gather_axis<T: Element>(x: &[T], idx: &[u32], outer: usize, n: usize, k: usize, inner: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(outer * k * inner);
    for o in 0..outer {
        for j in 0..k {
            for i in 0..inner {
                let id = idx[(o * k + j) * inner + i] as usize;
                assert!(id < n, "gather: index {id} out of range for axis of size {n}");
                out.push(x[(o * n + id) * inner + i]);
            }
        }
    }
    out
}

/// Scatter-add along the middle axis, the backward of [`gather_axis`]:
/// `dx[o, idx[o, j, i], i] += src[o, j, i]`.
pub fn scatter_add_axis<T: Float>(
    dx: &mut [T],
    idx: &[u32],
    src: &[T],
    outer: usize,
    n: usize,
    k: usize,
    inner: usize,
) {
    for o in 0..outer {
        for j in 0..k {
            for i in 0..inner {
                let id = idx[(o * k + j) * inner + i] as usize;
                assert!(id < n, "scatter_add: index {id} out of range for axis of size {n}");
                dx[(o * n + id) * inner + i] += src[(o * k + j) * inner + i];
            }
        }
    }
}

/// The `k` largest values of each row of length `c`, in descending order, with their indices
/// (ties: the lower index first; NaN sorts last).
pub fn topk_rows<T: Float>(x: &[T], c: usize, k: usize) -> (Vec<T>, Vec<u32>) {
    let rows = x.len() / c.max(1);
    let mut vals = Vec::with_capacity(rows * k);
    let mut ids = Vec::with_capacity(rows * k);
    let mut order: Vec<u32> = Vec::with_capacity(c);
    for r in 0..rows {
        let row = &x[r * c..(r + 1) * c];
        order.clear();
        order.extend(0..c as u32);
        let cmp = |a: &u32, b: &u32| {
            let (va, vb) = (row[*a as usize], row[*b as usize]);
            match (va.is_nan(), vb.is_nan()) {
                (true, true) => a.cmp(b),
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ => vb.partial_cmp(&va).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(b)),
            }
        };
        if k < c {
            order.select_nth_unstable_by(k, cmp);
            order.truncate(k);
        }
        order.sort_by(cmp);
        for &i in order.iter().take(k) {
            vals.push(row[i as usize]);
            ids.push(i);
        }
    }
    (vals, ids)
}
