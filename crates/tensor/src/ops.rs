//! Operations on tensors: the methods model code calls. Each one checks its shape contract
//! (panicking with the op's name and every shape on violation), then calls a kernel in
//! [`crate::cpu`].

use crate::cpu::{self, AttnDims, GeluKind, HeadsView, MaskView, MatRef, ReduceOp, RopeFreqs, RopeLayout};
use crate::dtype::{DType, Element, Float};
use crate::layout::{broadcast_shapes, resolve_axis, walk_rows};
use crate::tensor::{float_dispatch, Tensor};
use rayon::prelude::*;

/// Per-row statistics a normalisation forward keeps for its backward.
#[derive(Clone, Debug)]
pub struct NormStats {
    /// Row means `(N,)` (LayerNorm only; empty for RMSNorm).
    pub mean: Option<Tensor>,
    /// Row reciprocal standard deviations `(N,)`.
    pub rstd: Tensor,
}

/// The result of the fused attention forward.
#[derive(Clone, Debug)]
pub struct AttentionOutput {
    /// `(B, H, Tq, D)`, contiguous.
    pub out: Tensor,
    /// Row log-sum-exp of the scores `(B, H, Tq)`, kept for the backward pass.
    pub lse: Tensor,
}

macro_rules! unary_ops {
    ($($(#[$doc:meta])* $name:ident => |$x:ident| $body:expr;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(&self) -> Tensor {
                float_dispatch!(self.dtype(), stringify!($name), T => {
                    let out = self.with_slice(|s: &[T]| cpu::map(s, |$x: T| $body));
                    Tensor::new(out, self.shape())
                })
            }
        )*
    };
}

macro_rules! binary_ops {
    ($($(#[$doc:meta])* $name:ident => |$a:ident, $b:ident| $body:expr;)*) => {
        $(
            $(#[$doc])*
            #[track_caller]
            pub fn $name(&self, other: &Tensor) -> Tensor {
                float_dispatch!(self.dtype(), stringify!($name), T => {
                    self.binary_map(other, stringify!($name), |$a: T, $b: T| -> T { $body })
                })
            }
        )*
    };
}

impl Tensor {
    // ---------------------------------------------------------------- elementwise

    unary_ops! {
        /// −x
        neg => |x| -x;
        /// eˣ
        exp => |x| x.exp();
        /// ln x
        log => |x| x.ln();
        /// √x
        sqrt => |x| x.sqrt();
        /// σ(x) = 1/(1 + e⁻ˣ)
        sigmoid => |x| cpu::sigmoid(x);
        /// ln σ(x) = min(x, 0) − ln(1 + e^{−|x|}), finite for every x
        log_sigmoid => |x| x.min(T::ZERO) - (T::ONE + (-x.abs()).exp()).ln();
        /// max(x, 0)
        relu => |x| if x > T::ZERO { x } else { T::ZERO };
        /// x·σ(x)
        silu => |x| cpu::silu(x);
        /// dSiLU/dx
        silu_grad => |x| cpu::silu_grad(x);
        /// |x|
        abs => |x| x.abs();
        /// erf x
        erf => |x| Float::erf(x);
        /// x²
        sqr => |x| x * x;
        /// 1/x
        recip => |x| T::ONE / x;
        /// 1 where x > 0, else 0 (the ReLU derivative)
        step => |x| if x > T::ZERO { T::ONE } else { T::ZERO };
        /// sin x
        sin => |x| x.sin();
        /// cos x
        cos => |x| x.cos();
    }

    /// tanh x (f32 through the vectorised kernel).
    pub fn tanh(&self) -> Tensor {
        if self.dtype() == DType::F32 {
            let mut out = vec![0.0f32; self.numel()];
            self.with_slice(|x: &[f32]| par_rows2(&mut out, x, cpu::simd::tanh));
            return Tensor::new(out, self.shape());
        }
        float_dispatch!(self.dtype(), "tanh", T => {
            Tensor::new(self.with_slice(|s: &[T]| cpu::map(s, |x: T| x.tanh())), self.shape())
        })
    }

    /// GELU (tanh approximation or exact).
    pub fn gelu(&self, kind: GeluKind) -> Tensor {
        if self.dtype() == DType::F32 && kind == GeluKind::Tanh {
            let mut out = vec![0.0f32; self.numel()];
            self.with_slice(|x: &[f32]| par_rows2(&mut out, x, cpu::simd::gelu_tanh_forward));
            return Tensor::new(out, self.shape());
        }
        float_dispatch!(self.dtype(), "gelu", T => {
            Tensor::new(self.with_slice(|s: &[T]| cpu::map(s, |x| cpu::gelu(x, kind))), self.shape())
        })
    }

    /// GELU backward: `dx = dout ⊙ gelu'(self)` in one pass.
    #[track_caller]
    pub fn gelu_backward(&self, dout: &Tensor, kind: GeluKind) -> Tensor {
        assert_eq!(self.shape(), dout.shape(), "gelu_backward: x {:?} vs dout {:?}", self.shape(), dout.shape());
        if self.dtype() == DType::F32 && kind == GeluKind::Tanh {
            let mut dx = vec![0.0f32; self.numel()];
            self.with_slice(|x: &[f32]| {
                dout.with_slice(|g: &[f32]| {
                    let per = cpu::PAR_MIN_ELEMS;
                    let chunks = dx.chunks_mut(per).zip(g.chunks(per).zip(x.chunks(per))).collect();
                    cpu::team_for_each(chunks, |(d, (g, x))| cpu::simd::gelu_tanh_backward(d, g, x));
                })
            });
            return Tensor::new(dx, self.shape());
        }
        dout.mul(&self.gelu_grad(kind))
    }

    /// dGELU/dx at each element.
    pub fn gelu_grad(&self, kind: GeluKind) -> Tensor {
        float_dispatch!(self.dtype(), "gelu_grad", T => {
            Tensor::new(self.with_slice(|s: &[T]| cpu::map(s, |x| cpu::gelu_grad(x, kind))), self.shape())
        })
    }

    /// xᵖ for a scalar exponent.
    pub fn powf(&self, p: f64) -> Tensor {
        float_dispatch!(self.dtype(), "powf", T => {
            let p = T::from_f64(p);
            Tensor::new(self.with_slice(|s: &[T]| cpu::map(s, |x| x.powf(p))), self.shape())
        })
    }

    /// `a·x + b` for scalars `a`, `b`.
    pub fn affine(&self, a: f64, b: f64) -> Tensor {
        float_dispatch!(self.dtype(), "affine", T => {
            let (a, b) = (T::from_f64(a), T::from_f64(b));
            Tensor::new(self.with_slice(|s: &[T]| cpu::map(s, |x| a * x + b)), self.shape())
        })
    }

    /// x + c
    pub fn add_scalar(&self, c: f64) -> Tensor {
        self.affine(1.0, c)
    }

    /// x · c
    pub fn mul_scalar(&self, c: f64) -> Tensor {
        self.affine(c, 0.0)
    }

    #[track_caller]
    fn binary_map<T: Element, U: Element>(&self, other: &Tensor, op: &str, f: impl Fn(T, T) -> U + Sync) -> Tensor {
        assert_eq!(self.dtype(), other.dtype(), "{op}: dtypes differ: {} and {}", self.dtype(), other.dtype());
        let shape = match broadcast_shapes(self.shape(), other.shape()) {
            Some(s) => s,
            None => panic!("{op}: shapes {:?} and {:?} do not broadcast", self.shape(), other.shape()),
        };
        let (a, b) = (self.broadcast_as(&shape), other.broadcast_as(&shape));
        let out = a.with_strided(|da: &[T], la| b.with_strided(|db: &[T], lb| cpu::binary_strided(da, la, db, lb, f)));
        Tensor::new(out, &shape)
    }

    binary_ops! {
        /// a + b (broadcasting)
        add => |a, b| a + b;
        /// a − b (broadcasting)
        sub => |a, b| a - b;
        /// a ⊙ b (broadcasting)
        mul => |a, b| a * b;
        /// a / b (broadcasting)
        div => |a, b| a / b;
        /// max(a, b) (broadcasting)
        maximum => |a, b| a.max(b);
        /// min(a, b) (broadcasting)
        minimum => |a, b| a.min(b);
        /// aᵇ (broadcasting)
        pow => |a, b| a.powf(b);
        /// 1 where a > b else 0
        gt => |a, b| if a > b { T::ONE } else { T::ZERO };
        /// 1 where a ≥ b else 0
        ge => |a, b| if a >= b { T::ONE } else { T::ZERO };
        /// 1 where a < b else 0
        lt => |a, b| if a < b { T::ONE } else { T::ZERO };
        /// 1 where a == b else 0
        eq => |a, b| if a == b { T::ONE } else { T::ZERO };
    }

    /// `cond ? a : b` elementwise, broadcasting all three; `cond` is any dtype, nonzero = true.
    #[track_caller]
    pub fn where_cond(cond: &Tensor, a: &Tensor, b: &Tensor) -> Tensor {
        assert_eq!(a.dtype(), b.dtype(), "where: branch dtypes differ: {} and {}", a.dtype(), b.dtype());
        let shape = broadcast_shapes(a.shape(), b.shape())
            .and_then(|s| broadcast_shapes(&s, cond.shape()))
            .unwrap_or_else(|| {
                panic!("where: shapes cond {:?}, a {:?}, b {:?} do not broadcast", cond.shape(), a.shape(), b.shape())
            });
        let c = cond.to_dtype(DType::F64).broadcast_as(&shape);
        let (a, b) = (a.broadcast_as(&shape), b.broadcast_as(&shape));
        float_dispatch!(a.dtype(), "where", T => {
            let out = c.with_strided(|dc: &[f64], lc| a.with_strided(|da: &[T], la| b.with_strided(|db: &[T], lb| {
                cpu::ternary_strided(dc, lc, da, la, db, lb, |c, x, y| if c != 0.0 { x } else { y })
            })));
            Tensor::new(out, &shape)
        })
    }

    /// Replaces elements where `mask` is nonzero by `value` (broadcasting `mask`).
    #[track_caller]
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Tensor {
        let fill = Tensor::full(value, &[], self.dtype());
        Tensor::where_cond(mask, &fill, self)
    }

    // ---------------------------------------------------------------- reductions

    fn reduce_one(&self, axis: usize, op: ReduceOp) -> Tensor {
        let shape = self.shape();
        let outer: usize = shape[..axis].iter().product();
        let inner: usize = shape[axis + 1..].iter().product();
        let n = shape[axis];
        let mut out_shape = shape.to_vec();
        out_shape[axis] = 1;
        float_dispatch!(self.dtype(), "reduce", T => {
            let out = self.with_slice(|s: &[T]| cpu::reduce_axis(s, outer, n, inner, op));
            Tensor::new(out, &out_shape)
        })
    }

    fn reduce(&self, axes: &[isize], keepdim: bool, op: ReduceOp, name: &str) -> Tensor {
        let mut ax: Vec<usize> = axes.iter().map(|&a| resolve_axis(a, self.rank(), name)).collect();
        ax.sort_unstable();
        ax.dedup();
        let mut x = self.clone();
        for &a in ax.iter().rev() {
            x = x.reduce_one(a, op);
        }
        if !keepdim {
            let shape: Vec<usize> =
                x.shape().iter().enumerate().filter(|(i, _)| !ax.contains(i)).map(|(_, &d)| d).collect();
            x = x.reshape(&shape);
        }
        x
    }

    /// Σ over `axes`.
    #[track_caller]
    pub fn sum(&self, axes: &[isize], keepdim: bool) -> Tensor {
        self.reduce(axes, keepdim, ReduceOp::Sum, "sum")
    }

    /// Σ over all elements (a 0-d tensor).
    pub fn sum_all(&self) -> Tensor {
        self.reshape(&[self.numel()]).sum(&[0], false)
    }

    /// Mean over `axes`.
    #[track_caller]
    pub fn mean(&self, axes: &[isize], keepdim: bool) -> Tensor {
        let count: usize = axes.iter().map(|&a| self.shape()[resolve_axis(a, self.rank(), "mean")]).product();
        self.sum(axes, keepdim).mul_scalar(1.0 / count as f64)
    }

    /// Max over `axes`.
    #[track_caller]
    pub fn max(&self, axes: &[isize], keepdim: bool) -> Tensor {
        self.reduce(axes, keepdim, ReduceOp::Max, "max")
    }

    /// Min over `axes`.
    #[track_caller]
    pub fn min(&self, axes: &[isize], keepdim: bool) -> Tensor {
        self.reduce(axes, keepdim, ReduceOp::Min, "min")
    }

    /// Index of the max along `axis` (u32; the axis is removed).
    #[track_caller]
    pub fn argmax(&self, axis: isize) -> Tensor {
        let a = resolve_axis(axis, self.rank(), "argmax");
        let shape = self.shape();
        let outer: usize = shape[..a].iter().product();
        let inner: usize = shape[a + 1..].iter().product();
        let out_shape: Vec<usize> = shape.iter().enumerate().filter(|&(i, _)| i != a).map(|(_, &d)| d).collect();
        float_dispatch!(self.dtype(), "argmax", T => {
            Tensor::new(self.with_slice(|s: &[T]| cpu::argmax_axis(s, outer, shape[a], inner)), &out_shape)
        })
    }

    /// Sums a broadcast result back to `shape` (the backward of broadcasting).
    #[track_caller]
    pub fn sum_to_shape(&self, shape: &[usize]) -> Tensor {
        if self.shape() == shape {
            return self.clone();
        }
        let r = self.rank();
        assert!(shape.len() <= r, "sum_to_shape: {:?} cannot reduce to higher rank {shape:?}", self.shape());
        let lead = r - shape.len();
        let mut axes: Vec<isize> = (0..lead as isize).collect();
        for (i, &d) in shape.iter().enumerate() {
            if d == 1 && self.shape()[lead + i] != 1 {
                axes.push((lead + i) as isize);
            } else {
                assert_eq!(
                    d,
                    self.shape()[lead + i],
                    "sum_to_shape: {:?} is not a broadcast of {shape:?}",
                    self.shape()
                );
            }
        }
        self.sum(&axes, true).reshape(shape)
    }

    // ---------------------------------------------------------------- matmul

    /// Matrix product `(…, M, K) · (…, K, N) → (…, M, N)` with broadcast batch axes.
    ///
    /// Transposed operands are free: pass `b.t()` for `A·Bᵀ`.
    #[track_caller]
    pub fn matmul(&self, other: &Tensor) -> Tensor {
        let (a, b) = (self, other);
        assert!(a.rank() >= 2 && b.rank() >= 2, "matmul: needs rank ≥ 2, got {:?} and {:?}", a.shape(), b.shape());
        assert_eq!(a.dtype(), b.dtype(), "matmul: dtypes differ: {} and {}", a.dtype(), b.dtype());
        let (m, k) = (a.dim(-2), a.dim(-1));
        let (k2, n) = (b.dim(-2), b.dim(-1));
        assert_eq!(k, k2, "matmul: inner dimensions differ: {:?} · {:?}", a.shape(), b.shape());
        // (…, M, K) · (K, N): fold the batch into M for one large product when `a` allows it.
        if b.rank() == 2 && a.rank() > 2 {
            let rows: usize = a.shape()[..a.rank() - 1].iter().product();
            if a.layout().reshaped(&[rows, k]).is_some() {
                let mut out_shape = a.shape()[..a.rank() - 1].to_vec();
                out_shape.push(n);
                return a.reshape(&[rows, k]).matmul(b).reshape(&out_shape);
            }
        }
        let batch = broadcast_shapes(&a.shape()[..a.rank() - 2], &b.shape()[..b.rank() - 2])
            .unwrap_or_else(|| panic!("matmul: batch axes of {:?} and {:?} do not broadcast", a.shape(), b.shape()));
        let nb: usize = batch.iter().product();
        let mut ashape = batch.clone();
        ashape.extend([m, k]);
        let mut bshape = batch.clone();
        bshape.extend([k, n]);
        let (a, b) = (a.broadcast_as(&ashape), b.broadcast_as(&bshape));
        let mut offs = Vec::with_capacity(nb);
        let r = batch.len();
        walk_rows(
            &batch,
            [&a.strides()[..r], &b.strides()[..r]],
            [a.layout().offset(), b.layout().offset()],
            0..nb,
            |_, o| offs.push(o),
        );
        let (ars, acs) = (a.strides()[r], a.strides()[r + 1]);
        let (brs, bcs) = (b.strides()[r], b.strides()[r + 1]);
        let mut out_shape = batch.clone();
        out_shape.extend([m, n]);
        let threads = crate::num_threads();
        float_dispatch!(a.dtype(), "matmul", T => {
            // Every element is written by its GEMM (`accumulate = false`).
            let mut out = cpu::alloc_for_overwrite::<T>(nb * m * n);
            a.with_strided(|da: &[T], _| b.with_strided(|db: &[T], _| {
                let one = |dst: &mut [T], (oa, ob): (usize, usize), th: usize| {
                    cpu::gemm_into(m, k, n, dst, n, false, da, MatRef { off: oa, rs: ars, cs: acs }, db, MatRef { off: ob, rs: brs, cs: bcs }, T::ONE, th);
                };
                let small = m * n * k < 128 * 128 * 128;
                if nb > 1 && (small || nb >= threads) && m * n > 0 {
                    out.par_chunks_mut(m * n).zip(offs.par_iter()).for_each(|(dst, &[oa, ob])| one(dst, (oa, ob), 1));
                } else if m * n > 0 {
                    for (dst, &[oa, ob]) in out.chunks_mut(m * n).zip(offs.iter()) {
                        one(dst, (oa, ob), threads);
                    }
                }
            }));
            Tensor::new(out, &out_shape)
        })
    }

    /// The affine map of a linear layer: `x·Wᵀ + b` for `x (…, K)`, `W (N, K)` and an optional
    /// bias `b (N,)`, giving `(…, N)`.
    ///
    /// One GEMM whose output starts as the bias rows and accumulates the product
    /// (`out = b + x·Wᵀ`), instead of a matmul into a zeroed buffer and then a separate
    /// broadcast add: one pass over the output less, one buffer less.
    #[track_caller]
    pub fn linear(&self, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        assert!(
            self.rank() >= 1 && w.rank() == 2,
            "linear: needs x (…, K) and W (N, K), got {:?} and {:?}",
            self.shape(),
            w.shape()
        );
        let (k, n) = (self.dim(-1), w.dim(0));
        assert_eq!(w.dim(1), k, "linear: x {:?} and W {:?} disagree on K", self.shape(), w.shape());
        assert_eq!(self.dtype(), w.dtype(), "linear: dtypes differ: {} and {}", self.dtype(), w.dtype());
        if let Some(b) = b {
            assert_eq!(b.shape(), &[n], "linear: bias {:?} for {n} outputs", b.shape());
            assert_eq!(b.dtype(), w.dtype(), "linear: bias dtype {} differs from {}", b.dtype(), w.dtype());
        }
        let rows: usize = self.shape()[..self.rank() - 1].iter().product();
        let x = self.reshape(&[rows, k]);
        let mut out_shape = self.shape()[..self.rank() - 1].to_vec();
        out_shape.push(n);
        let threads = crate::num_threads();
        float_dispatch!(self.dtype(), "linear", T => {
            let mut out: Vec<T> = match b {
                Some(b) => b.contiguous().to_vec::<T>().repeat(rows),
                None if k > 0 => cpu::alloc_for_overwrite::<T>(rows * n), // overwritten below
                None => cpu::alloc_zeroed::<T>(rows * n),
            };
            if k > 0 {
                x.with_strided(|dx: &[T], lx| w.with_strided(|dw: &[T], lw| {
                    let xm = MatRef { off: lx.offset(), rs: lx.strides()[0], cs: lx.strides()[1] };
                    // Wᵀ as a view: element (p, j) of Wᵀ is W[j, p].
                    let wt = MatRef { off: lw.offset(), rs: lw.strides()[1], cs: lw.strides()[0] };
                    cpu::gemm_into(rows, k, n, &mut out, n, b.is_some(), dx, xm, dw, wt, T::ONE, threads);
                }));
            }
            Tensor::new(out, &out_shape)
        })
    }

    /// `self += α·a·b` in place, for a contiguous `self (M, N)` and 2-D views `a (M, K)`,
    /// `b (K, N)` (any strides: pass `w.t()` for `a·Wᵀ`).
    ///
    /// One GEMM that accumulates into the output: no product buffer, no second pass to add it.
    /// A LoRA update `y += s·u·Bᵀ` and its input gradient `dx += du·A` take this path.
    #[track_caller]
    pub fn add_matmul_(&self, a: &Tensor, b: &Tensor, alpha: f64) {
        let (m, n) = (self.dim(0), self.dim(1));
        assert!(
            self.rank() == 2
                && a.rank() == 2
                && b.rank() == 2
                && a.dim(0) == m
                && b.dim(1) == n
                && a.dim(1) == b.dim(0),
            "add_matmul_: out {:?} += a {:?} · b {:?} do not fit",
            self.shape(),
            a.shape(),
            b.shape()
        );
        assert!(
            self.dtype() == a.dtype() && a.dtype() == b.dtype(),
            "add_matmul_: dtypes {}, {} and {}",
            self.dtype(),
            a.dtype(),
            b.dtype()
        );
        let copy_if_shared = |t: &Tensor| if self.same_storage(t) { t.copy() } else { t.clone() };
        let (a, b) = (copy_if_shared(a), copy_if_shared(b));
        let k = a.dim(1);
        let threads = crate::num_threads();
        float_dispatch!(self.dtype(), "add_matmul_", T => {
            a.with_strided(|da: &[T], la| b.with_strided(|db: &[T], lb| {
                let am = MatRef { off: la.offset(), rs: la.strides()[0], cs: la.strides()[1] };
                let bm = MatRef { off: lb.offset(), rs: lb.strides()[0], cs: lb.strides()[1] };
                self.with_slice_mut(|out: &mut [T]| {
                    cpu::gemm_into(m, k, n, out, n, true, da, am, db, bm, T::from_f64(alpha), threads)
                });
            }));
        })
    }

    // ---------------------------------------------------------------- softmax family

    fn last_axis_rows(&self, op: &str) -> usize {
        assert!(self.rank() >= 1, "{op}: needs rank ≥ 1, got a scalar");
        self.dim(-1)
    }

    /// Softmax over the last axis.
    pub fn softmax(&self) -> Tensor {
        let c = self.last_axis_rows("softmax");
        float_dispatch!(self.dtype(), "softmax", T => {
            let mut out = vec![T::ZERO; self.numel()];
            self.with_slice(|x: &[T]| cpu::softmax_forward(&mut out, x, c));
            Tensor::new(out, self.shape())
        })
    }

    /// Log-softmax over the last axis.
    pub fn log_softmax(&self) -> Tensor {
        let c = self.last_axis_rows("log_softmax");
        float_dispatch!(self.dtype(), "log_softmax", T => {
            let mut out = vec![T::ZERO; self.numel()];
            self.with_slice(|x: &[T]| cpu::log_softmax_forward(&mut out, x, c));
            Tensor::new(out, self.shape())
        })
    }

    /// Given `self = softmax(x)` and `dout`, returns `dx`.
    #[track_caller]
    pub fn softmax_backward(&self, dout: &Tensor) -> Tensor {
        assert_eq!(self.shape(), dout.shape(), "softmax_backward: out {:?} vs dout {:?}", self.shape(), dout.shape());
        let c = self.last_axis_rows("softmax_backward");
        float_dispatch!(self.dtype(), "softmax_backward", T => {
            let mut dx = vec![T::ZERO; self.numel()];
            self.with_slice(|y: &[T]| dout.with_slice(|dy: &[T]| cpu::softmax_backward(&mut dx, dy, y, c)));
            Tensor::new(dx, self.shape())
        })
    }

    /// Given `self = log_softmax(x)` and `dout`, returns `dx`.
    #[track_caller]
    pub fn log_softmax_backward(&self, dout: &Tensor) -> Tensor {
        assert_eq!(
            self.shape(),
            dout.shape(),
            "log_softmax_backward: out {:?} vs dout {:?}",
            self.shape(),
            dout.shape()
        );
        let c = self.last_axis_rows("log_softmax_backward");
        float_dispatch!(self.dtype(), "log_softmax_backward", T => {
            let mut dx = vec![T::ZERO; self.numel()];
            self.with_slice(|y: &[T]| dout.with_slice(|dy: &[T]| cpu::log_softmax_backward(&mut dx, dy, y, c)));
            Tensor::new(dx, self.shape())
        })
    }

    /// The vocabulary size `V` of logits `(…, V)` and the ids of `targets` `(…)`, after checking
    /// that they fit (u32, one per row).
    #[track_caller]
    fn cross_entropy_targets(&self, targets: &Tensor) -> (usize, Vec<u32>) {
        let v = self.last_axis_rows("cross_entropy");
        assert_eq!(targets.dtype(), DType::U32, "cross_entropy: targets must be u32, got {}", targets.dtype());
        assert_eq!(
            &self.shape()[..self.rank() - 1],
            targets.shape(),
            "cross_entropy: logits {:?} vs targets {:?}",
            self.shape(),
            targets.shape()
        );
        (v, targets.to_vec::<u32>())
    }

    /// Per-row cross-entropy of logits `(…, V)` against u32 `targets` `(…)`.
    /// Returns `(losses (…), lse (…))`; ignored rows have loss 0.
    #[track_caller]
    pub fn cross_entropy_rows(&self, targets: &Tensor, ignore_index: Option<u32>) -> (Tensor, Tensor) {
        let (v, ids) = self.cross_entropy_targets(targets);
        let n = ids.len();
        float_dispatch!(self.dtype(), "cross_entropy", T => {
            let (mut losses, mut lse) = (vec![T::ZERO; n], vec![T::ZERO; n]);
            self.with_slice(|x: &[T]| cpu::cross_entropy_forward(&mut losses, &mut lse, x, &ids, v, ignore_index));
            (Tensor::new(losses, targets.shape()), Tensor::new(lse, targets.shape()))
        })
    }

    /// [`Tensor::cross_entropy_rows`]' losses and, in place of the logits, their gradient for a
    /// constant `dloss = g`: `self ← g·(softmax(self) − onehot(targets))` (a contiguous `(N, V)`
    /// buffer the caller owns; no target ignored). The chunked LM head's one pass.
    #[track_caller]
    pub fn cross_entropy_grad_(&self, targets: &Tensor, g: f64) -> Tensor {
        let (v, ids) = self.cross_entropy_targets(targets);
        float_dispatch!(self.dtype(), "cross_entropy", T => {
            let mut losses = vec![T::ZERO; ids.len()];
            self.with_slice_mut(|x: &mut [T]| cpu::cross_entropy_grad_inplace(x, &mut losses, &ids, v, T::from_f64(g)));
            Tensor::new(losses, targets.shape())
        })
    }

    /// Backward of [`Tensor::cross_entropy_rows`]: `dlogits = dloss · (softmax − onehot)`.
    #[track_caller]
    pub fn cross_entropy_rows_backward(
        &self,
        targets: &Tensor,
        lse: &Tensor,
        dlosses: &Tensor,
        ignore_index: Option<u32>,
    ) -> Tensor {
        let v = self.last_axis_rows("cross_entropy_backward");
        let ids = targets.to_vec::<u32>();
        float_dispatch!(self.dtype(), "cross_entropy_backward", T => {
            let mut dx = vec![T::ZERO; self.numel()];
            self.with_slice(|x: &[T]| lse.with_slice(|z: &[T]| dlosses.with_slice(|g: &[T]| {
                cpu::cross_entropy_backward(&mut dx, g, x, z, &ids, v, ignore_index)
            })));
            Tensor::new(dx, self.shape())
        })
    }

    // ---------------------------------------------------------------- normalisation

    /// LayerNorm over the last axis: returns `(y, stats)`.
    #[track_caller]
    pub fn layer_norm(&self, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> (Tensor, NormStats) {
        let c = self.last_axis_rows("layer_norm");
        assert_eq!(weight.shape(), [c], "layer_norm: weight {:?} for input {:?}", weight.shape(), self.shape());
        if let Some(b) = bias {
            assert_eq!(b.shape(), [c], "layer_norm: bias {:?} for input {:?}", b.shape(), self.shape());
        }
        let rows = self.numel() / c.max(1);
        let stat_shape = &self.shape()[..self.rank() - 1];
        float_dispatch!(self.dtype(), "layer_norm", T => {
            let (mut out, mut mean, mut rstd) = (vec![T::ZERO; self.numel()], vec![T::ZERO; rows], vec![T::ZERO; rows]);
            let bias_v = bias.map(|b| b.to_vec::<T>());
            self.with_slice(|x: &[T]| weight.with_slice(|w: &[T]| {
                cpu::layernorm_forward(&mut out, &mut mean, &mut rstd, x, w, bias_v.as_deref(), c, T::from_f64(eps))
            }));
            (Tensor::new(out, self.shape()), NormStats { mean: Some(Tensor::new(mean, stat_shape)), rstd: Tensor::new(rstd, stat_shape) })
        })
    }

    /// LayerNorm backward: returns `(dx, dweight, dbias)`.
    #[track_caller]
    pub fn layer_norm_backward(&self, weight: &Tensor, stats: &NormStats, dout: &Tensor) -> (Tensor, Tensor, Tensor) {
        let c = self.last_axis_rows("layer_norm_backward");
        let mean = stats.mean.as_ref().expect("layer_norm_backward: stats come from layer_norm and carry the mean");
        float_dispatch!(self.dtype(), "layer_norm_backward", T => {
            let (mut dx, mut dw, mut db) = (vec![T::ZERO; self.numel()], vec![T::ZERO; c], vec![T::ZERO; c]);
            self.with_slice(|x: &[T]| weight.with_slice(|w: &[T]| dout.with_slice(|dy: &[T]| mean.with_slice(|mu: &[T]| stats.rstd.with_slice(|rs: &[T]| {
                cpu::layernorm_backward(&mut dx, &mut dw, Some(&mut db), dy, x, w, mu, rs, c)
            })))));
            (Tensor::new(dx, self.shape()), Tensor::new(dw, &[c]), Tensor::new(db, &[c]))
        })
    }

    /// RMSNorm over the last axis: returns `(y, stats)`.
    #[track_caller]
    pub fn rms_norm(&self, weight: &Tensor, eps: f64) -> (Tensor, NormStats) {
        let c = self.last_axis_rows("rms_norm");
        assert_eq!(weight.shape(), [c], "rms_norm: weight {:?} for input {:?}", weight.shape(), self.shape());
        let rows = self.numel() / c.max(1);
        let stat_shape = &self.shape()[..self.rank() - 1];
        float_dispatch!(self.dtype(), "rms_norm", T => {
            let (mut out, mut rstd) = (vec![T::ZERO; self.numel()], vec![T::ZERO; rows]);
            self.with_slice(|x: &[T]| weight.with_slice(|w: &[T]| cpu::rmsnorm_forward(&mut out, &mut rstd, x, w, c, T::from_f64(eps))));
            (Tensor::new(out, self.shape()), NormStats { mean: None, rstd: Tensor::new(rstd, stat_shape) })
        })
    }

    /// RMSNorm backward: returns `(dx, dweight)`.
    #[track_caller]
    pub fn rms_norm_backward(&self, weight: &Tensor, stats: &NormStats, dout: &Tensor) -> (Tensor, Tensor) {
        let c = self.last_axis_rows("rms_norm_backward");
        float_dispatch!(self.dtype(), "rms_norm_backward", T => {
            let (mut dx, mut dw) = (vec![T::ZERO; self.numel()], vec![T::ZERO; c]);
            self.with_slice(|x: &[T]| weight.with_slice(|w: &[T]| dout.with_slice(|dy: &[T]| stats.rstd.with_slice(|rs: &[T]| {
                cpu::rmsnorm_backward(&mut dx, &mut dw, dy, x, w, rs, c)
            }))));
            (Tensor::new(dx, self.shape()), Tensor::new(dw, &[c]))
        })
    }

    // ---------------------------------------------------------------- SwiGLU, RoPE

    /// `self ⊙ m` with the counter-based dropout mask `m_i ∈ {0, 1/(1−p)}` of `seed`
    /// ([`cpu::dropout_keeps`], `i` the row-major index): the same `(p, seed)` always drops
    /// the same elements, so a backward pass can redraw the mask instead of keeping it.
    pub fn dropout_hashed(&self, p: f64, seed: u64) -> Tensor {
        // Every element is written (`add = false`): float buffers skip the zero-fill.
        let out = match self.dtype() {
            DType::F32 => Tensor::new(cpu::alloc_for_overwrite::<f32>(self.numel()), self.shape()),
            DType::F64 => Tensor::new(cpu::alloc_for_overwrite::<f64>(self.numel()), self.shape()),
            _ => Tensor::zeros(self.shape(), self.dtype()),
        };
        out.dropout_hashed_into(self, p, seed, false);
        out
    }

    /// `self += x ⊙ m` in place, `m` the mask of [`Tensor::dropout_hashed`]`(p, seed)` over
    /// `x`'s row-major indices: a gradient through a dropout added where it is accumulated, in
    /// one pass (`self` contiguous, the shape of `x`).
    #[track_caller]
    pub fn add_dropout_hashed_(&self, x: &Tensor, p: f64, seed: u64) {
        self.dropout_hashed_into(x, p, seed, true);
    }

    /// `self = x ⊙ m` (`add`: `+=`), in parallel chunks; the chunk's first index offsets the
    /// mask so that the result does not depend on the chunking.
    #[track_caller]
    fn dropout_hashed_into(&self, x: &Tensor, p: f64, seed: u64, add: bool) {
        assert_eq!(self.shape(), x.shape(), "dropout_hashed: out {:?} vs x {:?}", self.shape(), x.shape());
        assert_eq!(self.dtype(), x.dtype(), "dropout_hashed: dtypes {} and {}", self.dtype(), x.dtype());
        let x = if self.same_storage(x) { x.copy() } else { x.contiguous() };
        let per = cpu::PAR_MIN_ELEMS;
        if x.dtype() == DType::F32 {
            let (t, keep) = (cpu::dropout_threshold(p), (1.0 / (1.0 - p)) as f32);
            x.with_slice(|v: &[f32]| {
                self.with_slice_mut(|out: &mut [f32]| {
                    let chunks = out.chunks_mut(per).zip(v.chunks(per)).enumerate().collect();
                    cpu::team_for_each(chunks, |(c, (o, v))| {
                        cpu::simd::dropout_hashed(o, v, (c * per) as u32, t, keep, seed, add)
                    });
                })
            });
            return;
        }
        float_dispatch!(self.dtype(), "dropout_hashed", T => {
            x.with_slice(|v: &[T]| {
                self.with_slice_mut(|out: &mut [T]| {
                    let chunks = out.chunks_mut(per).zip(v.chunks(per)).enumerate().collect();
                    cpu::team_for_each(chunks, |(c, (o, v))| cpu::dropout_hashed(o, v, c * per, p, seed, add));
                })
            })
        })
    }

    /// `silu(self) ⊙ up` (self is the gate).
    #[track_caller]
    pub fn swiglu(&self, up: &Tensor) -> Tensor {
        assert_eq!(self.shape(), up.shape(), "swiglu: gate {:?} vs up {:?}", self.shape(), up.shape());
        if self.dtype() == DType::F32 {
            let mut out = vec![0.0f32; self.numel()];
            self.with_slice(|g: &[f32]| {
                up.with_slice(|u: &[f32]| {
                    let per = cpu::PAR_MIN_ELEMS;
                    let chunks = out.chunks_mut(per).zip(g.chunks(per).zip(u.chunks(per))).collect();
                    cpu::team_for_each(chunks, |(o, (g, u))| cpu::simd::swiglu_forward(o, g, u));
                })
            });
            return Tensor::new(out, self.shape());
        }
        float_dispatch!(self.dtype(), "swiglu", T => {
            let mut out = vec![T::ZERO; self.numel()];
            self.with_slice(|g: &[T]| up.with_slice(|u: &[T]| cpu::swiglu_forward(&mut out, g, u)));
            Tensor::new(out, self.shape())
        })
    }

    /// SwiGLU backward: returns `(dgate, dup)`.
    #[track_caller]
    pub fn swiglu_backward(&self, up: &Tensor, dout: &Tensor) -> (Tensor, Tensor) {
        assert!(
            self.shape() == up.shape() && up.shape() == dout.shape(),
            "swiglu_backward: gate {:?}, up {:?}, dout {:?}",
            self.shape(),
            up.shape(),
            dout.shape()
        );
        if self.dtype() == DType::F32 {
            let (mut dg, mut du) = (vec![0.0f32; self.numel()], vec![0.0f32; self.numel()]);
            self.with_slice(|g: &[f32]| {
                up.with_slice(|u: &[f32]| {
                    dout.with_slice(|dy: &[f32]| {
                        let per = cpu::PAR_MIN_ELEMS;
                        let chunks = dg
                            .chunks_mut(per)
                            .zip(du.chunks_mut(per))
                            .zip(dy.chunks(per).zip(g.chunks(per).zip(u.chunks(per))))
                            .collect();
                        cpu::team_for_each(chunks, |((dg, du), (dy, (g, u)))| {
                            cpu::simd::swiglu_backward(dg, du, dy, g, u)
                        });
                    })
                })
            });
            return (Tensor::new(dg, self.shape()), Tensor::new(du, self.shape()));
        }
        float_dispatch!(self.dtype(), "swiglu_backward", T => {
            let (mut dg, mut du) = (vec![T::ZERO; self.numel()], vec![T::ZERO; self.numel()]);
            self.with_slice(|g: &[T]| up.with_slice(|u: &[T]| dout.with_slice(|dy: &[T]| cpu::swiglu_backward(&mut dg, &mut du, dy, g, u))));
            (Tensor::new(dg, self.shape()), Tensor::new(du, self.shape()))
        })
    }

    fn rope_apply(
        &self,
        seq_axis: isize,
        pos0: usize,
        freqs: &RopeFreqs,
        layout: RopeLayout,
        backward: bool,
    ) -> Tensor {
        assert!(self.rank() >= 2, "rope: needs (…, T, …, D), got {:?}", self.shape());
        let sa = resolve_axis(seq_axis, self.rank(), "rope");
        assert!(
            sa < self.rank() - 1,
            "rope: the sequence axis {sa} must come before the last (head) axis of {:?}",
            self.shape()
        );
        let d = self.dim(-1);
        assert_eq!(freqs.pairs(), d / 2, "rope: {} frequencies for heads of {d} channels", freqs.pairs());
        let t = self.shape()[sa];
        let inner_rows: usize = self.shape()[sa + 1..self.rank() - 1].iter().product();
        float_dispatch!(self.dtype(), "rope", T => {
            let (cos, sin) = cpu::rope_tables::<T>(pos0, t, freqs);
            let mut out = vec![T::ZERO; self.numel()];
            // Bands of whole rows in parallel; row r of band c is row c·per + r overall.
            let per = (cpu::PAR_MIN_ELEMS / d.max(1)).max(1);
            self.with_slice(|x: &[T]| {
                let bands = out.chunks_mut(per * d.max(1)).zip(x.chunks(per * d.max(1))).enumerate().collect();
                cpu::team_for_each(bands, |(c, (o, x))| {
                    let pos_of = |r: usize| ((c * per + r) / inner_rows) % t;
                    if backward {
                        cpu::rope_backward(o, x, d, &cos, &sin, pos_of, layout)
                    } else {
                        cpu::rope_forward(o, x, d, &cos, &sin, pos_of, layout)
                    }
                });
            });
            Tensor::new(out, self.shape())
        })
    }

    /// Rotary position embedding; positions run `pos0, pos0+1, …` along `seq_axis`, pair `i`
    /// turning by `freqs.inv_freq[i]` per position.
    #[track_caller]
    pub fn rope(&self, seq_axis: isize, pos0: usize, freqs: &RopeFreqs, layout: RopeLayout) -> Tensor {
        self.rope_apply(seq_axis, pos0, freqs, layout, false)
    }

    /// The backward of [`Tensor::rope`] applied to `self = dout` (the inverse rotation).
    #[track_caller]
    pub fn rope_backward(&self, seq_axis: isize, pos0: usize, freqs: &RopeFreqs, layout: RopeLayout) -> Tensor {
        self.rope_apply(seq_axis, pos0, freqs, layout, true)
    }

    // ---------------------------------------------------------------- attention

    fn heads_view(&self, name: &str) -> (Tensor, HeadsView) {
        assert_eq!(self.rank(), 4, "attention: {name} must be (B, heads, T, D), got {:?}", self.shape());
        let t = if self.strides()[3] == 1 || self.dim(-1) == 1 { self.clone() } else { self.contiguous() };
        let s = t.strides().to_vec();
        let view = HeadsView { off: t.layout().offset(), sb: s[0], sh: s[1], st: s[2] };
        (t, view)
    }

    fn attention_dims(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool, scale: Option<f64>) -> AttnDims {
        let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
        let ctx = || format!("q {qs:?}, k {ks:?}, v {vs:?}");
        assert!(
            qs.len() == 4 && ks.len() == 4 && vs.len() == 4,
            "attention: q, k, v must be (B, heads, T, D): {}",
            ctx()
        );
        assert!(ks == vs, "attention: k and v shapes differ: {}", ctx());
        assert!(qs[0] == ks[0] && qs[3] == ks[3], "attention: batch or head size differ: {}", ctx());
        assert!(ks[1] > 0 && qs[1] % ks[1] == 0, "attention: query heads must be a multiple of kv heads: {}", ctx());
        assert!(!causal || qs[2] <= ks[2], "attention: causal needs Tq ≤ Tk: {}", ctx());
        AttnDims {
            b: qs[0],
            h: qs[1],
            hk: ks[1],
            tq: qs[2],
            tk: ks[2],
            d: qs[3],
            scale: scale.unwrap_or(1.0 / (qs[3] as f64).sqrt()),
            causal,
        }
    }

    /// Fused scaled-dot-product attention forward: `softmax(scale·QKᵀ + mask) V`.
    ///
    /// `q` is `(B, H, Tq, D)`, `k` and `v` `(B, Hk, Tk, D)` with `H % Hk == 0` (grouped-query);
    /// `mask` (additive, constant) broadcasts to `(B, H, Tq, Tk)`; `scale` defaults to `1/√D`.
    #[track_caller]
    pub fn attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        causal: bool,
        scale: Option<f64>,
    ) -> AttentionOutput {
        let dims = Self::attention_dims(q, k, v, causal, scale);
        let ((q, qv), (k, kv), (v, vv)) = (q.heads_view("q"), k.heads_view("k"), v.heads_view("v"));
        let mask = mask.map(|m| m.broadcast_as(&[dims.b, dims.h, dims.tq, dims.tk]));
        float_dispatch!(q.dtype(), "attention", T => {
            let mut out = vec![T::ZERO; dims.b * dims.h * dims.tq * dims.d];
            let mut lse = vec![T::ZERO; dims.b * dims.h * dims.tq];
            q.with_strided(|dq: &[T], _| k.with_strided(|dk: &[T], _| v.with_strided(|dv: &[T], _| {
                let mut run = |mv: Option<MaskView<'_, T>>| cpu::attention_forward(&mut out, &mut lse, dims, dq, qv, dk, kv, dv, vv, mv);
                match &mask {
                    Some(m) => m.with_strided(|dm: &[T], l| run(Some(MaskView { data: dm, off: l.offset(), strides: [l.strides()[0], l.strides()[1], l.strides()[2], l.strides()[3]] }))),
                    None => run(None),
                }
            })));
            AttentionOutput { out: Tensor::new(out, &[dims.b, dims.h, dims.tq, dims.d]), lse: Tensor::new(lse, &[dims.b, dims.h, dims.tq]) }
        })
    }

    /// Fused attention backward: returns `(dq, dk, dv)` (contiguous, shapes of q, k, v).
    #[track_caller]
    pub fn attention_backward(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        causal: bool,
        scale: Option<f64>,
        fwd: &AttentionOutput,
        dout: &Tensor,
    ) -> (Tensor, Tensor, Tensor) {
        let dims = Self::attention_dims(q, k, v, causal, scale);
        assert_eq!(
            dout.shape(),
            fwd.out.shape(),
            "attention_backward: dout {:?} vs out {:?}",
            dout.shape(),
            fwd.out.shape()
        );
        let ((q, qv), (k, kv), (v, vv)) = (q.heads_view("q"), k.heads_view("k"), v.heads_view("v"));
        let dout = dout.contiguous();
        let mask = mask.map(|m| m.broadcast_as(&[dims.b, dims.h, dims.tq, dims.tk]));
        float_dispatch!(q.dtype(), "attention_backward", T => {
            let mut dq = vec![T::ZERO; q.numel()];
            let mut dk = vec![T::ZERO; k.numel()];
            let mut dv = vec![T::ZERO; v.numel()];
            q.with_strided(|xq: &[T], _| k.with_strided(|xk: &[T], _| v.with_strided(|xv: &[T], _| {
                dout.with_slice(|g: &[T]| fwd.out.with_slice(|o: &[T]| fwd.lse.with_slice(|l: &[T]| {
                    let mut run = |mv: Option<MaskView<'_, T>>| cpu::attention_backward(&mut dq, &mut dk, &mut dv, dims, g, o, l, xq, qv, xk, kv, xv, vv, mv);
                    match &mask {
                        Some(m) => m.with_strided(|dm: &[T], lm| run(Some(MaskView { data: dm, off: lm.offset(), strides: [lm.strides()[0], lm.strides()[1], lm.strides()[2], lm.strides()[3]] }))),
                        None => run(None),
                    }
                })))
            })));
            (Tensor::new(dq, q.shape()), Tensor::new(dk, k.shape()), Tensor::new(dv, v.shape()))
        })
    }

    // ---------------------------------------------------------------- indexing

    /// Rows of a `(N, C)` table picked by u32 `ids` of any shape: `(…ids, C)` (embedding lookup).
    #[track_caller]
    pub fn index_select(&self, ids: &Tensor) -> Tensor {
        assert_eq!(self.rank(), 2, "index_select: table must be (N, C), got {:?}", self.shape());
        assert_eq!(ids.dtype(), DType::U32, "index_select: ids must be u32, got {}", ids.dtype());
        let c = self.dim(1);
        let idv = ids.to_vec::<u32>();
        let mut shape = ids.shape().to_vec();
        shape.push(c);
        float_dispatch!(self.dtype(), "index_select", T => {
            let mut out = vec![T::ZERO; idv.len() * c];
            self.with_slice(|t: &[T]| cpu::index_select_rows(&mut out, t, &idv, c));
            Tensor::new(out, &shape)
        })
    }

    /// `self` is `(…ids, C)` gradients: returns `(rows, C)` with `out[ids[n]] += self[n]`.
    #[track_caller]
    pub fn index_add_rows(&self, ids: &Tensor, rows: usize) -> Tensor {
        let c = self.dim(-1);
        let idv = ids.to_vec::<u32>();
        assert_eq!(idv.len() * c, self.numel(), "index_add_rows: {:?} values for {} ids", self.shape(), idv.len());
        float_dispatch!(self.dtype(), "index_add_rows", T => {
            let mut out = vec![T::ZERO; rows * c];
            if let Some(&bad) = idv.iter().find(|&&i| i as usize >= rows) {
                panic!("index_add_rows: id {bad} ≥ table rows {rows}");
            }
            self.with_slice(|g: &[T]| cpu::scatter_add_rows(&mut out, &idv, g, c));
            Tensor::new(out, &[rows, c])
        })
    }

    fn axis_split(&self, a: usize) -> (usize, usize, usize) {
        let s = self.shape();
        (s[..a].iter().product(), s[a], s[a + 1..].iter().product())
    }

    /// `out[…, j, …] = self[…, idx[…, j, …], …]` along `axis`; `idx` (u32) matches `self`'s shape
    /// except along `axis`.
    #[track_caller]
    pub fn gather(&self, axis: isize, idx: &Tensor) -> Tensor {
        let a = resolve_axis(axis, self.rank(), "gather");
        assert_eq!(idx.dtype(), DType::U32, "gather: index must be u32");
        let ok = idx.rank() == self.rank() && (0..self.rank()).all(|i| i == a || idx.shape()[i] == self.shape()[i]);
        assert!(ok, "gather: index {:?} must match input {:?} except on axis {a}", idx.shape(), self.shape());
        let (outer, n, inner) = self.axis_split(a);
        let k = idx.shape()[a];
        let iv = idx.to_vec::<u32>();
        float_dispatch!(self.dtype(), "gather", T => {
            Tensor::new(self.with_slice(|x: &[T]| cpu::gather_axis(x, &iv, outer, n, k, inner)), idx.shape())
        })
    }

    /// Returns a copy of `self` with `src` added at `idx` along `axis` (the backward of gather).
    #[track_caller]
    pub fn scatter_add(&self, axis: isize, idx: &Tensor, src: &Tensor) -> Tensor {
        let a = resolve_axis(axis, self.rank(), "scatter_add");
        assert_eq!(idx.shape(), src.shape(), "scatter_add: index {:?} vs src {:?}", idx.shape(), src.shape());
        let (outer, n, inner) = self.axis_split(a);
        let k = idx.shape()[a];
        let iv = idx.to_vec::<u32>();
        float_dispatch!(self.dtype(), "scatter_add", T => {
            let mut out = self.to_vec::<T>();
            src.with_slice(|s: &[T]| cpu::scatter_add_axis(&mut out, &iv, s, outer, n, k, inner));
            Tensor::new(out, self.shape())
        })
    }

    /// Concatenates along `axis`; all other axes must agree.
    #[track_caller]
    pub fn concat(parts: &[Tensor], axis: isize) -> Tensor {
        assert!(!parts.is_empty(), "concat: no tensors");
        let first = &parts[0];
        let a = resolve_axis(axis, first.rank(), "concat");
        for p in parts {
            let ok = p.rank() == first.rank()
                && p.dtype() == first.dtype()
                && (0..first.rank()).all(|i| i == a || p.shape()[i] == first.shape()[i]);
            assert!(
                ok,
                "concat: shapes {:?} disagree off axis {a}",
                parts.iter().map(|p| p.shape().to_vec()).collect::<Vec<_>>()
            );
        }
        let mut shape = first.shape().to_vec();
        shape[a] = parts.iter().map(|p| p.shape()[a]).sum();
        let outer: usize = shape[..a].iter().product();
        let row: usize = shape[a..].iter().product();
        float_dispatch!(first.dtype(), "concat", T => {
            let mut out = vec![T::ZERO; shape.iter().product()];
            let mut col = 0;
            for p in parts {
                let w: usize = p.shape()[a..].iter().product();
                p.with_slice(|s: &[T]| {
                    for o in 0..outer {
                        out[o * row + col..o * row + col + w].copy_from_slice(&s[o * w..(o + 1) * w]);
                    }
                });
                col += w;
            }
            Tensor::new(out, &shape)
        })
    }

    /// Zero padding along `axis`: `before` zeros, this tensor, then `after` zeros (the gradient
    /// of [`Tensor::narrow`]). Every output element is written once, zeros and copy alike.
    #[track_caller]
    pub fn pad_axis(&self, axis: isize, before: usize, after: usize) -> Tensor {
        let a = resolve_axis(axis, self.rank(), "pad_axis");
        let mut shape = self.shape().to_vec();
        shape[a] += before + after;
        let outer: usize = shape[..a].iter().product();
        let inner: usize = shape[a + 1..].iter().product();
        let w = self.shape()[a] * inner;
        float_dispatch!(self.dtype(), "pad_axis", T => {
            let mut out = Vec::with_capacity(shape.iter().product());
            self.with_slice(|s: &[T]| {
                for o in 0..outer {
                    out.resize(out.len() + before * inner, T::ZERO);
                    out.extend_from_slice(&s[o * w..(o + 1) * w]);
                    out.resize(out.len() + after * inner, T::ZERO);
                }
            });
            Tensor::new(out, &shape)
        })
    }

    /// The `k` largest values along the last axis, descending, and their u32 indices.
    #[track_caller]
    pub fn topk(&self, k: usize) -> (Tensor, Tensor) {
        let c = self.last_axis_rows("topk");
        assert!(k <= c, "topk: k = {k} > last axis {c} of {:?}", self.shape());
        let mut shape = self.shape().to_vec();
        *shape.last_mut().expect("rank ≥ 1") = k;
        float_dispatch!(self.dtype(), "topk", T => {
            let (v, i) = self.with_slice(|x: &[T]| cpu::topk_rows(x, c, k));
            (Tensor::new(v, &shape), Tensor::new(i, &shape))
        })
    }
}

/// Runs `f(out_chunk, x_chunk)` over matching chunks of two equal-length slices, in parallel.
fn par_rows2(out: &mut [f32], x: &[f32], f: fn(&mut [f32], &[f32])) {
    let per = cpu::PAR_MIN_ELEMS;
    if out.len() <= per {
        return f(out, x);
    }
    cpu::team_for_each(out.chunks_mut(per).zip(x.chunks(per)).collect(), |(o, x)| f(o, x));
}

macro_rules! impl_operator {
    ($trait:ident, $fn:ident, $method:ident) => {
        impl std::ops::$trait<&Tensor> for &Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $fn(self, rhs: &Tensor) -> Tensor {
                Tensor::$method(self, rhs)
            }
        }
        impl std::ops::$trait<Tensor> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $fn(self, rhs: Tensor) -> Tensor {
                Tensor::$method(&self, &rhs)
            }
        }
    };
}
impl_operator!(Add, add, add);
impl_operator!(Sub, sub, sub);
impl_operator!(Mul, mul, mul);
impl_operator!(Div, div, div);
