//! The `Tensor` type: a strided view over shared storage, and its views and conversions.

use crate::cpu;
use crate::device::Device;
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::layout::{resolve_axis, Layout};
use crate::rng::Rng;
use crate::storage::{CpuStorage, Storage};
use std::fmt;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// An n-dimensional array: a [`Layout`] over shared [`Storage`].
///
/// Cloning a tensor is cheap (it clones an `Arc` and the layout) and yields another view of the
/// same memory. Operations return new tensors; the few in-place ones end in `_` and say so.
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<RwLock<Storage>>,
    layout: Layout,
    dtype: DType,
    device: Device,
}

macro_rules! float_dispatch {
    ($dtype:expr, $op:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            other => panic!("{}: dtype {other} cannot be computed in; convert with to_dtype(DType::F32)", $op),
        }
    };
}
pub(crate) use float_dispatch;

impl Tensor {
    // ---------------------------------------------------------------- construction

    /// Wraps a vector as a contiguous tensor; errors if `data.len()` is not the shape's product.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Self> {
        let expected: usize = shape.iter().product();
        if data.len() != expected {
            return Err(Error::BufferLength { op: "from_vec", len: data.len(), expected, shape: shape.to_vec() });
        }
        Ok(Self::from_storage(T::into_storage(data), Layout::contiguous(shape)))
    }

    /// Like [`Tensor::from_vec`] for data the caller built to size: panics on a length mismatch.
    #[track_caller]
    pub fn new<T: Element>(data: Vec<T>, shape: &[usize]) -> Self {
        let expected: usize = shape.iter().product();
        assert_eq!(data.len(), expected, "Tensor::new: {} elements for shape {shape:?}", data.len());
        Self::from_storage(T::into_storage(data), Layout::contiguous(shape))
    }

    /// A 0-d tensor holding one value.
    pub fn scalar<T: Element>(v: T) -> Self {
        Self::new(vec![v], &[])
    }

    pub(crate) fn from_storage(s: CpuStorage, layout: Layout) -> Self {
        let dtype = s.dtype();
        Self { storage: Arc::new(RwLock::new(Storage::Cpu(s))), layout, dtype, device: Device::Cpu }
    }

    /// A tensor filled with `value`.
    pub fn full(value: f64, shape: &[usize], dtype: DType) -> Self {
        let n = shape.iter().product();
        let s = match dtype {
            DType::F32 => CpuStorage::F32(vec![value as f32; n]),
            DType::F64 => CpuStorage::F64(vec![value; n]),
            DType::F16 => CpuStorage::F16(vec![half::f16::from_f64(value); n]),
            DType::BF16 => CpuStorage::BF16(vec![half::bf16::from_f64(value); n]),
            DType::U32 => CpuStorage::U32(vec![value as u32; n]),
        };
        Self::from_storage(s, Layout::contiguous(shape))
    }

    /// Zeros.
    pub fn zeros(shape: &[usize], dtype: DType) -> Self {
        Self::full(0.0, shape, dtype)
    }

    /// Ones.
    pub fn ones(shape: &[usize], dtype: DType) -> Self {
        Self::full(1.0, shape, dtype)
    }

    /// Zeros with this tensor's shape and dtype.
    pub fn zeros_like(&self) -> Self {
        Self::zeros(self.shape(), self.dtype)
    }

    /// 0, 1, …, n−1.
    pub fn arange(n: usize, dtype: DType) -> Self {
        let v: Vec<f64> = (0..n).map(|i| i as f64).collect();
        Self::new(v, &[n]).to_dtype(dtype)
    }

    /// Samples from U[lo, hi).
    pub fn rand_uniform(shape: &[usize], lo: f64, hi: f64, dtype: DType, rng: &mut Rng) -> Self {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.uniform_range(lo, hi)).collect();
        Self::new(v, shape).to_dtype(dtype)
    }

    /// Samples from N(mean, std²).
    pub fn randn(shape: &[usize], mean: f64, std: f64, dtype: DType, rng: &mut Rng) -> Self {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| mean + std * rng.normal()).collect();
        Self::new(v, shape).to_dtype(dtype)
    }

    // ---------------------------------------------------------------- accessors

    /// The dimensions.
    pub fn shape(&self) -> &[usize] {
        self.layout.shape()
    }

    /// Size of one axis (negative counts from the end).
    #[track_caller]
    pub fn dim(&self, axis: isize) -> usize {
        self.shape()[resolve_axis(axis, self.rank(), "dim")]
    }

    /// The strides, in elements.
    pub fn strides(&self) -> &[usize] {
        self.layout.strides()
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.layout.rank()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.layout.numel()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Where the data lives.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Whether this handle is the only one on its storage: no clone and no view shares it, so
    /// writing through it in place cannot be observed by anyone else.
    pub fn is_sole_owner(&self) -> bool {
        Arc::strong_count(&self.storage) == 1 && Arc::weak_count(&self.storage) == 0
    }

    /// Whether the view is row-major without gaps.
    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }

    /// Whether two tensors are views of the same buffer.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.storage, &other.storage)
    }

    pub(crate) fn read_storage(&self) -> RwLockReadGuard<'_, Storage> {
        self.storage.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write_storage(&self) -> RwLockWriteGuard<'_, Storage> {
        self.storage.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies the elements out in row-major order. Panics if `T` is not the dtype.
    #[track_caller]
    pub fn to_vec<T: Element>(&self) -> Vec<T> {
        self.with_slice(|s: &[T]| s.to_vec())
    }

    /// The elements as f64, whatever the dtype (for tests and printing).
    pub fn to_vec_f64(&self) -> Vec<f64> {
        self.to_dtype(DType::F64).to_vec::<f64>()
    }

    /// The single value of a one-element tensor, as f64.
    #[track_caller]
    pub fn item(&self) -> f64 {
        assert_eq!(self.numel(), 1, "item: tensor of shape {:?} has {} elements", self.shape(), self.numel());
        self.to_vec_f64()[0]
    }

    /// Runs `f` on the elements as one contiguous row-major slice (copying only if the view is
    /// not contiguous). Panics if `T` is not the dtype.
    #[track_caller]
    pub fn with_slice<T: Element, R>(&self, f: impl FnOnce(&[T]) -> R) -> R {
        if !self.is_contiguous() {
            return self.contiguous().with_slice(f);
        }
        let guard = self.read_storage();
        let data = guard.cpu().as_slice::<T>();
        let off = self.layout.offset();
        f(&data[off..off + self.numel()])
    }

    /// Runs `f` on the elements of a contiguous view, mutably (in place: every view of this
    /// buffer sees the change). Panics if the view is not contiguous or `T` is not the dtype.
    #[track_caller]
    pub fn with_slice_mut<T: Element, R>(&self, f: impl FnOnce(&mut [T]) -> R) -> R {
        assert!(
            self.is_contiguous(),
            "with_slice_mut: view of shape {:?} strides {:?} is not contiguous",
            self.shape(),
            self.strides()
        );
        let mut guard = self.write_storage();
        let data = guard.cpu_mut().as_mut_slice::<T>();
        let off = self.layout.offset();
        let n = self.numel();
        f(&mut data[off..off + n])
    }

    /// Runs `f` on the whole underlying buffer and this view's layout (for strided kernels).
    #[track_caller]
    pub(crate) fn with_strided<T: Element, R>(&self, f: impl FnOnce(&[T], &Layout) -> R) -> R {
        let guard = self.read_storage();
        f(guard.cpu().as_slice::<T>(), &self.layout)
    }

    // ---------------------------------------------------------------- views (no copy)

    fn with_layout(&self, layout: Layout) -> Self {
        Self { storage: self.storage.clone(), layout, dtype: self.dtype, device: self.device }
    }

    /// Same elements, new shape. A view when the layout allows it, else a contiguous copy.
    /// The product of `shape` must equal the number of elements.
    #[track_caller]
    pub fn reshape(&self, shape: &[usize]) -> Self {
        let n: usize = shape.iter().product();
        assert_eq!(
            n,
            self.numel(),
            "reshape: cannot view shape {:?} ({} elements) as {shape:?} ({n} elements)",
            self.shape(),
            self.numel()
        );
        match self.layout.reshaped(shape) {
            Some(l) => self.with_layout(l),
            None => self.contiguous().reshape(shape),
        }
    }

    /// Reorders the axes: new axis `k` is old axis `perm[k]`.
    #[track_caller]
    pub fn permute(&self, perm: &[usize]) -> Self {
        self.with_layout(self.layout.permute(perm))
    }

    /// Swaps two axes.
    #[track_caller]
    pub fn transpose(&self, a: isize, b: isize) -> Self {
        let r = self.rank();
        let (a, b) = (resolve_axis(a, r, "transpose"), resolve_axis(b, r, "transpose"));
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(a, b);
        self.permute(&perm)
    }

    /// Transpose of the last two axes (`(…, M, N)` → `(…, N, M)`), as a view.
    #[track_caller]
    pub fn t(&self) -> Self {
        assert!(self.rank() >= 2, "t: needs rank ≥ 2, got shape {:?}", self.shape());
        self.transpose(-2, -1)
    }

    /// Restricts `axis` to `start..start+len`, as a view.
    #[track_caller]
    pub fn narrow(&self, axis: isize, start: usize, len: usize) -> Self {
        let a = resolve_axis(axis, self.rank(), "narrow");
        self.with_layout(self.layout.narrow(a, start, len))
    }

    /// Splits `axis` into pieces of the given sizes, as views.
    #[track_caller]
    pub fn split(&self, axis: isize, sizes: &[usize]) -> Vec<Self> {
        let a = resolve_axis(axis, self.rank(), "split");
        let total: usize = sizes.iter().sum();
        assert_eq!(total, self.shape()[a], "split: sizes {sizes:?} do not sum to axis {a} of shape {:?}", self.shape());
        let mut start = 0;
        sizes
            .iter()
            .map(|&len| {
                let v = self.narrow(a as isize, start, len);
                start += len;
                v
            })
            .collect()
    }

    /// Expands to `shape` by broadcasting (stride-0 axes), as a view.
    #[track_caller]
    pub fn broadcast_as(&self, shape: &[usize]) -> Self {
        self.with_layout(self.layout.broadcast_as(shape))
    }

    /// Inserts a size-1 axis at `axis`.
    #[track_caller]
    pub fn unsqueeze(&self, axis: isize) -> Self {
        let r = self.rank() as isize + 1;
        let a = resolve_axis(axis, r as usize, "unsqueeze");
        let mut shape = self.shape().to_vec();
        shape.insert(a, 1);
        let mut strides = self.strides().to_vec();
        strides.insert(a, 0);
        self.with_layout(Layout::from_parts(shape, strides, self.layout.offset()))
    }

    /// Removes a size-1 axis.
    #[track_caller]
    pub fn squeeze(&self, axis: isize) -> Self {
        let a = resolve_axis(axis, self.rank(), "squeeze");
        assert_eq!(self.shape()[a], 1, "squeeze: axis {a} of shape {:?} is not 1", self.shape());
        let mut shape = self.shape().to_vec();
        shape.remove(a);
        let mut strides = self.strides().to_vec();
        strides.remove(a);
        self.with_layout(Layout::from_parts(shape, strides, self.layout.offset()))
    }

    /// A view of the whole buffer from `offset` with a contiguous `shape` (for arenas).
    #[track_caller]
    pub fn view_at(&self, offset: usize, shape: &[usize]) -> Self {
        assert!(self.is_contiguous(), "view_at: base view is not contiguous");
        let l = Layout::contiguous_at(shape, self.layout.offset() + offset);
        let len = self.read_storage().cpu().len();
        assert!(
            l.max_index_exclusive() <= len,
            "view_at: offset {offset} shape {shape:?} past the buffer of {len} elements"
        );
        self.with_layout(l)
    }

    /// An empty, growable 1-d buffer of `dtype` (f32 or f64) for an arena of parameters.
    pub fn arena(dtype: DType) -> Self {
        Self::zeros(&[0], dtype)
    }

    /// Appends `data` to the end of this tensor's buffer and returns the offset it starts at.
    ///
    /// Views made before keep working: they address the buffer by offset, not by pointer.
    #[track_caller]
    pub fn arena_push(&self, data: &Tensor) -> usize {
        let data = if self.same_storage(data) { data.copy() } else { data.clone() };
        float_dispatch!(self.dtype, "arena_push", T => {
            let src = data.to_dtype(self.dtype).to_vec::<T>();
            let mut guard = self.write_storage();
            let s = guard.cpu_mut();
            let off = s.len();
            s.extend_from_slice(&src);
            off
        })
    }

    /// Number of elements in the whole underlying buffer (not just this view).
    pub fn buffer_len(&self) -> usize {
        self.read_storage().cpu().len()
    }

    // ---------------------------------------------------------------- copies

    /// A contiguous copy if the view is not contiguous; otherwise a cheap clone.
    pub fn contiguous(&self) -> Self {
        if self.is_contiguous() {
            return self.clone();
        }
        self.copy()
    }

    /// A fresh contiguous copy that shares nothing with `self`.
    pub fn copy(&self) -> Self {
        macro_rules! go {
            ($t:ty) => {
                self.with_strided(|d: &[$t], l| {
                    Self::from_storage(<$t>::into_storage(cpu::strided_copy(d, l)), Layout::contiguous(l.shape()))
                })
            };
        }
        match self.dtype {
            DType::F32 => go!(f32),
            DType::F64 => go!(f64),
            DType::F16 => go!(half::f16),
            DType::BF16 => go!(half::bf16),
            DType::U32 => go!(u32),
        }
    }

    /// Converts the element type (a copy; a cheap clone if already `dtype`).
    pub fn to_dtype(&self, dtype: DType) -> Self {
        if dtype == self.dtype {
            return self.clone();
        }
        fn conv<S: Element, D: Element>(src: &[S]) -> Vec<D> {
            let mut out = cpu::alloc_zeroed::<D>(src.len());
            for (o, &x) in out.iter_mut().zip(src) {
                *o = D::from_f64(x.to_f64());
            }
            out
        }
        macro_rules! from {
            ($s:ty) => {
                self.with_slice(|src: &[$s]| match dtype {
                    DType::F32 => CpuStorage::F32(conv(src)),
                    DType::F64 => CpuStorage::F64(conv(src)),
                    DType::F16 => CpuStorage::F16(conv(src)),
                    DType::BF16 => CpuStorage::BF16(conv(src)),
                    DType::U32 => CpuStorage::U32(conv(src)),
                })
            };
        }
        let s = match self.dtype {
            DType::F32 => from!(f32),
            DType::F64 => from!(f64),
            DType::F16 => from!(half::f16),
            DType::BF16 => from!(half::bf16),
            DType::U32 => from!(u32),
        };
        Self::from_storage(s, Layout::contiguous(self.shape()))
    }

    /// Moves to a device (a clone on the CPU; an error for CUDA in this build).
    pub fn to_device(&self, device: Device) -> Result<Self> {
        device.check()?;
        Ok(self.clone())
    }

    // ---------------------------------------------------------------- in place

    /// `self += other` in place (broadcasting `other`). `self` must be a contiguous float view.
    #[track_caller]
    pub fn add_assign_(&self, other: &Tensor) {
        assert_eq!(self.dtype, other.dtype, "add_assign_: dtypes {} and {}", self.dtype, other.dtype);
        let other = if self.same_storage(other) { other.copy() } else { other.clone() };
        let other = other.broadcast_as(self.shape()).contiguous();
        float_dispatch!(self.dtype, "add_assign_", T => {
            other.with_slice(|o: &[T]| self.with_slice_mut(|s: &mut [T]| cpu::add_assign(s, o)))
        })
    }

    /// Sets every element to `value`, in place.
    pub fn fill_(&self, value: f64) {
        float_dispatch!(self.dtype, "fill_", T => {
            self.with_slice_mut(|s: &mut [T]| s.fill(T::from_f64(value)))
        })
    }

    /// Copies `src` (same shape) into this contiguous view, in place.
    #[track_caller]
    pub fn copy_from_(&self, src: &Tensor) {
        assert_eq!(self.shape(), src.shape(), "copy_from_: shapes {:?} and {:?}", self.shape(), src.shape());
        let src = if self.same_storage(src) { src.copy() } else { src.to_dtype(self.dtype) };
        float_dispatch!(self.dtype, "copy_from_", T => {
            src.with_slice(|o: &[T]| self.with_slice_mut(|s: &mut [T]| s.copy_from_slice(o)))
        })
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.to_vec_f64();
        let shown: Vec<String> = v.iter().take(8).map(|x| format!("{x:.4}")).collect();
        write!(
            f,
            "Tensor[{:?}, {}, {}]({}{})",
            self.shape(),
            self.dtype,
            self.device,
            shown.join(", "),
            if v.len() > 8 { ", …" } else { "" }
        )
    }
}
