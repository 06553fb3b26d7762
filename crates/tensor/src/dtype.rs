//! Element types: what a tensor can hold and what it can compute in.

use crate::storage::CpuStorage;
use half::{bf16, f16};
use std::fmt;

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float: the working precision of every kernel.
    F32,
    /// 64-bit float: gradient checks and lessons.
    F64,
    /// IEEE half precision (storage only; convert to f32 to compute).
    F16,
    /// bfloat16 (storage only; convert to f32 to compute).
    BF16,
    /// Unsigned 32-bit integers: token ids, indices, argmax results.
    U32,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F64 => 8,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Whether kernels compute in this dtype (f32 and f64).
    pub fn is_float_compute(self) -> bool {
        matches!(self, DType::F32 | DType::F64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::U32 => "u32",
        };
        f.write_str(s)
    }
}

/// A Rust type that can live in a tensor.
pub trait Element: Copy + Send + Sync + fmt::Debug + PartialOrd + 'static {
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Borrows the storage as `&[Self]`, or `None` if it holds another dtype.
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    /// Borrows the storage as `&mut [Self]`, or `None` if it holds another dtype.
    fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]>;
    /// Wraps a vector into storage.
    fn into_storage(v: Vec<Self>) -> CpuStorage;
    /// Converts to f64 (exact for every dtype we hold).
    fn to_f64(self) -> f64;
    /// Converts from f64 (rounding to nearest; integers saturate).
    fn from_f64(v: f64) -> Self;
    /// Converts to f32.
    fn to_f32(self) -> f32 {
        self.to_f64() as f32
    }
    /// Zero of this type.
    fn zero() -> Self {
        Self::from_f64(0.0)
    }
}

macro_rules! impl_element {
    ($t:ty, $variant:ident, $to:expr, $from:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$variant;
            fn slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(s: &mut CpuStorage) -> Option<&mut [Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn into_storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(v)
            }
            #[inline]
            fn to_f64(self) -> f64 {
                let f: fn($t) -> f64 = $to;
                f(self)
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                let f: fn(f64) -> $t = $from;
                f(v)
            }
        }
    };
}

impl_element!(f32, F32, |x| x as f64, |v| v as f32);
impl_element!(f64, F64, |x| x, |v| v);
impl_element!(f16, F16, |x| x.to_f64(), f16::from_f64);
impl_element!(bf16, BF16, |x| x.to_f64(), bf16::from_f64);
impl_element!(u32, U32, |x| x as f64, |v| v as u32);

/// A floating-point type the kernels compute in (f32 or f64).
///
/// Kernels are generic over `Float` so that the same code runs in f32 for speed and in f64 for
/// finite-difference gradient checks.
pub trait Float:
    Element
    + Default
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + std::ops::DivAssign
    + std::iter::Sum
{
    /// 0
    const ZERO: Self;
    /// 1
    const ONE: Self;
    /// -∞ (used for masking, never a large negative constant).
    const NEG_INFINITY: Self;
    /// Machine epsilon.
    const EPSILON: Self;
    /// From an f32 constant.
    fn c(v: f32) -> Self;
    /// e^x
    fn exp(self) -> Self;
    /// ln x
    fn ln(self) -> Self;
    /// √x
    fn sqrt(self) -> Self;
    /// tanh x
    fn tanh(self) -> Self;
    /// x^p
    fn powf(self, p: Self) -> Self;
    /// |x|
    fn abs(self) -> Self;
    /// max(x, y), NaN-propagating in `x`.
    fn max(self, y: Self) -> Self;
    /// min(x, y)
    fn min(self, y: Self) -> Self;
    /// erf x (via `libm`)
    fn erf(self) -> Self;
    /// sin x
    fn sin(self) -> Self;
    /// cos x
    fn cos(self) -> Self;
    /// Whether the value is finite.
    fn is_finite(self) -> bool;
    /// Whether the value is NaN.
    fn is_nan(self) -> bool;
    /// `max x` over a slice (−∞ when empty). f32 uses the SIMD kernel.
    fn max_slice(x: &[Self]) -> Self {
        x.iter().fold(Self::NEG_INFINITY, |m, &v| if v > m { v } else { m })
    }
    /// `x ← exp(x − shift)`, returning `Σ x`. f32 uses the SIMD kernel.
    fn exp_sub_sum(x: &mut [Self], shift: Self) -> Self {
        let mut s = Self::ZERO;
        for v in x.iter_mut() {
            *v = (*v - shift).exp();
            s += *v;
        }
        s
    }
    /// `x ← exp(x − shift)`. f32 uses the SIMD kernel.
    fn exp_sub(x: &mut [Self], shift: Self) {
        for v in x.iter_mut() {
            *v = (*v - shift).exp();
        }
    }
    /// `x ← s·x`.
    fn scale_slice(x: &mut [Self], s: Self) {
        for v in x.iter_mut() {
            *v *= s;
        }
    }
    /// `y ← y + Σ_r a_r·x_r` over four rows. f32 uses the SIMD kernel.
    fn axpy4(y: &mut [Self], a: [Self; 4], x0: &[Self], x1: &[Self], x2: &[Self], x3: &[Self]) {
        for i in 0..y.len() {
            y[i] += a[0] * x0[i] + a[1] * x1[i] + a[2] * x2[i] + a[3] * x3[i];
        }
    }
    /// `Σ a_i b_i`. f32 uses the SIMD kernel.
    fn dot(a: &[Self], b: &[Self]) -> Self {
        a.iter().zip(b).map(|(&x, &y)| x * y).sum()
    }
    /// `y ← y + a·x`. f32 uses the SIMD kernel.
    fn axpy(y: &mut [Self], a: Self, x: &[Self]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y += a * x;
        }
    }
}

macro_rules! impl_float {
    ($t:ty, $erf:path $(, $extra:item)*) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            const EPSILON: Self = <$t>::EPSILON;
            #[inline(always)]
            fn c(v: f32) -> Self {
                v as $t
            }
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn powf(self, p: Self) -> Self {
                <$t>::powf(self, p)
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn max(self, y: Self) -> Self {
                if self.is_nan() || self >= y {
                    self
                } else {
                    y
                }
            }
            #[inline(always)]
            fn min(self, y: Self) -> Self {
                if self.is_nan() || self <= y {
                    self
                } else {
                    y
                }
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            #[inline(always)]
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            $($extra)*
        }
    };
}

impl_float!(
    f32,
    libm::erff,
    fn max_slice(x: &[f32]) -> f32 {
        crate::cpu::simd::max(x)
    },
    fn exp_sub_sum(x: &mut [f32], shift: f32) -> f32 {
        crate::cpu::simd::exp_sub_sum(x, shift)
    },
    fn exp_sub(x: &mut [f32], shift: f32) {
        crate::cpu::simd::exp_sub_inplace(x, shift)
    },
    fn scale_slice(x: &mut [f32], s: f32) {
        crate::cpu::simd::scale(x, s)
    },
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        crate::cpu::simd::dot(a, b)
    },
    fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        crate::cpu::simd::axpy(y, a, x)
    },
    fn axpy4(y: &mut [f32], a: [f32; 4], x0: &[f32], x1: &[f32], x2: &[f32], x3: &[f32]) {
        crate::cpu::simd::axpy4(y, a, x0, x1, x2, x3)
    }
);
impl_float!(f64, libm::erf);
