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
}

macro_rules! impl_float {
    ($t:ty, $erf:path) => {
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
        }
    };
}

impl_float!(f32, libm::erff);
impl_float!(f64, libm::erf);
