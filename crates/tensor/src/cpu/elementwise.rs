//! Elementwise kernels: strided copy, unary maps, broadcasting binary and ternary maps.

use super::{alloc_zeroed, rows_per_task, PAR_MIN_ELEMS};
use crate::dtype::Element;
use crate::layout::{walk_rows, Layout};
use rayon::prelude::*;

/// Copies a strided view into a fresh row-major vector.
pub fn strided_copy<T: Element>(data: &[T], l: &Layout) -> Vec<T> {
    let n = l.numel();
    if n == 0 {
        return Vec::new();
    }
    if l.is_contiguous() {
        return data[l.offset()..l.offset() + n].to_vec();
    }
    let rank = l.rank();
    let last = l.shape()[rank - 1];
    let s_last = l.strides()[rank - 1];
    let rows = n / last;
    let mut out = alloc_zeroed::<T>(n);
    let outer = &l.shape()[..rank - 1];
    let ostr = &l.strides()[..rank - 1];
    let per = rows_per_task(rows, last);
    out.par_chunks_mut(per * last).enumerate().for_each(|(ci, chunk)| {
        let r0 = ci * per;
        let r1 = r0 + chunk.len() / last;
        walk_rows(outer, [ostr], [l.offset()], r0..r1, |row, [off]| {
            let dst = &mut chunk[(row - r0) * last..(row - r0 + 1) * last];
            if s_last == 1 {
                dst.copy_from_slice(&data[off..off + last]);
            } else {
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = data[off + j * s_last];
                }
            }
        });
    });
    out
}

/// `out[i] = f(x[i])`, in parallel for large inputs.
pub fn map<T: Element, U: Element>(x: &[T], f: impl Fn(T) -> U + Sync) -> Vec<U> {
    if x.len() < PAR_MIN_ELEMS {
        return x.iter().map(|&v| f(v)).collect();
    }
    let mut out = alloc_zeroed::<U>(x.len());
    out.par_chunks_mut(PAR_MIN_ELEMS).zip(x.par_chunks(PAR_MIN_ELEMS)).for_each(|(o, i)| {
        for (o, &i) in o.iter_mut().zip(i) {
            *o = f(i);
        }
    });
    out
}

/// `out[i] = f(a[i], b[i])` over contiguous equal-length slices, in parallel for large inputs.
pub fn zip_map<T: Element, U: Element>(a: &[T], b: &[T], f: impl Fn(T, T) -> U + Sync) -> Vec<U> {
    assert_eq!(a.len(), b.len());
    if a.len() < PAR_MIN_ELEMS {
        return a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect();
    }
    let mut out = alloc_zeroed::<U>(a.len());
    out.par_chunks_mut(PAR_MIN_ELEMS).zip(a.par_chunks(PAR_MIN_ELEMS).zip(b.par_chunks(PAR_MIN_ELEMS))).for_each(
        |(o, (x, y))| {
            for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                *o = f(x, y);
            }
        },
    );
    out
}

/// `out = f(a, b)` where `la`, `lb` are layouts already broadcast to the same shape.
pub fn binary_strided<T: Element, U: Element>(
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
    f: impl Fn(T, T) -> U + Sync,
) -> Vec<U> {
    let n = la.numel();
    if n == 0 {
        return Vec::new();
    }
    if la.is_contiguous() && lb.is_contiguous() {
        return zip_map(&a[la.offset()..la.offset() + n], &b[lb.offset()..lb.offset() + n], f);
    }
    let rank = la.rank();
    if rank == 0 {
        return vec![f(a[la.offset()], b[lb.offset()])];
    }
    let last = la.shape()[rank - 1];
    let (sa, sb) = (la.strides()[rank - 1], lb.strides()[rank - 1]);
    let rows = n / last;
    let outer = &la.shape()[..rank - 1];
    let mut out = alloc_zeroed::<U>(n);
    let per = rows_per_task(rows, last);
    out.par_chunks_mut(per * last).enumerate().for_each(|(ci, chunk)| {
        let r0 = ci * per;
        let r1 = r0 + chunk.len() / last;
        walk_rows(
            outer,
            [&la.strides()[..rank - 1], &lb.strides()[..rank - 1]],
            [la.offset(), lb.offset()],
            r0..r1,
            |row, [oa, ob]| {
                let dst = &mut chunk[(row - r0) * last..(row - r0 + 1) * last];
                match (sa, sb) {
                    (1, 1) => {
                        for ((d, &x), &y) in dst.iter_mut().zip(&a[oa..oa + last]).zip(&b[ob..ob + last]) {
                            *d = f(x, y);
                        }
                    }
                    (1, 0) => {
                        let y = b[ob];
                        for (d, &x) in dst.iter_mut().zip(&a[oa..oa + last]) {
                            *d = f(x, y);
                        }
                    }
                    (0, 1) => {
                        let x = a[oa];
                        for (d, &y) in dst.iter_mut().zip(&b[ob..ob + last]) {
                            *d = f(x, y);
                        }
                    }
                    _ => {
                        for (j, d) in dst.iter_mut().enumerate() {
                            *d = f(a[oa + j * sa], b[ob + j * sb]);
                        }
                    }
                }
            },
        );
    });
    out
}

/// `out = f(c, a, b)` over three layouts already broadcast to one shape (for `where`).
pub fn ternary_strided<C: Element, T: Element>(
    c: &[C],
    lc: &Layout,
    a: &[T],
    la: &Layout,
    b: &[T],
    lb: &Layout,
    f: impl Fn(C, T, T) -> T + Sync,
) -> Vec<T> {
    let n = la.numel();
    if n == 0 {
        return Vec::new();
    }
    let rank = la.rank();
    if rank == 0 {
        return vec![f(c[lc.offset()], a[la.offset()], b[lb.offset()])];
    }
    let last = la.shape()[rank - 1];
    let (sc, sa, sb) = (lc.strides()[rank - 1], la.strides()[rank - 1], lb.strides()[rank - 1]);
    let rows = n / last;
    let mut out = alloc_zeroed::<T>(n);
    let per = rows_per_task(rows, last);
    let outer = &la.shape()[..rank - 1];
    out.par_chunks_mut(per * last).enumerate().for_each(|(ci, chunk)| {
        let r0 = ci * per;
        let r1 = r0 + chunk.len() / last;
        walk_rows(
            outer,
            [&lc.strides()[..rank - 1], &la.strides()[..rank - 1], &lb.strides()[..rank - 1]],
            [lc.offset(), la.offset(), lb.offset()],
            r0..r1,
            |row, [oc, oa, ob]| {
                let dst = &mut chunk[(row - r0) * last..(row - r0 + 1) * last];
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = f(c[oc + j * sc], a[oa + j * sa], b[ob + j * sb]);
                }
            },
        );
    });
    out
}

/// `dst[i] += src[i]`.
pub fn add_assign<T: Element + std::ops::AddAssign>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len(), "add_assign: lengths {} and {}", dst.len(), src.len());
    if dst.len() < PAR_MIN_ELEMS {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d += s;
        }
        return;
    }
    dst.par_chunks_mut(PAR_MIN_ELEMS).zip(src.par_chunks(PAR_MIN_ELEMS)).for_each(|(d, s)| {
        for (d, &s) in d.iter_mut().zip(s) {
            *d += s;
        }
    });
}
