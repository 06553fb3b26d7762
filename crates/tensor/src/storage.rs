//! The buffers behind tensors.
//!
//! A [`Storage`] is shared by every view of it through `Arc<RwLock<Storage>>`: views read it,
//! in-place kernels (optimizer updates, gradient accumulation into the parameter arena) write
//! it. It is deliberately not `Clone`: copying a buffer is an explicit, visible operation.

use crate::dtype::{DType, Element};
use half::{bf16, f16};

/// Host memory, one variant per dtype.
#[derive(Debug)]
pub enum CpuStorage {
    /// f32 elements.
    F32(Vec<f32>),
    /// f64 elements.
    F64(Vec<f64>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    BF16(Vec<bf16>),
    /// u32 elements.
    U32(Vec<u32>),
}

impl CpuStorage {
    /// The dtype held.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::U32(_) => DType::U32,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::U32(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Borrows as `&[T]`; panics (a programmer error) if `T` is not the stored dtype.
    #[track_caller]
    pub fn as_slice<T: Element>(&self) -> &[T] {
        let dtype = self.dtype();
        match T::slice(self) {
            Some(s) => s,
            None => panic!("storage holds {dtype}, read as {}", T::DTYPE),
        }
    }

    /// Borrows as `&mut [T]`; panics if `T` is not the stored dtype.
    #[track_caller]
    pub fn as_mut_slice<T: Element>(&mut self) -> &mut [T] {
        let dtype = self.dtype();
        match T::slice_mut(self) {
            Some(s) => s,
            None => panic!("storage holds {dtype}, written as {}", T::DTYPE),
        }
    }

    /// Appends the elements of a slice, converted to the stored float type (the parameter
    /// arena grows this way).
    #[track_caller]
    pub fn extend_from_slice<T: Element>(&mut self, data: &[T]) {
        let dtype = self.dtype();
        match self {
            CpuStorage::F32(v) => v.extend(data.iter().map(|x| x.to_f32())),
            CpuStorage::F64(v) => v.extend(data.iter().map(|x| x.to_f64())),
            _ => panic!("extend_from_slice: storage holds {dtype}, got {}", T::DTYPE),
        }
    }
}

/// Device storage. Only `Cpu` exists; `Cuda` is an uninhabited stub until the backend lands,
/// so matches over it compile everywhere and cost nothing.
#[derive(Debug)]
pub enum Storage {
    /// Host memory.
    Cpu(CpuStorage),
    /// Device memory (uninhabited in this build).
    Cuda(CudaStorage),
}

/// Placeholder for CUDA memory: no value of this type can exist without the backend.
#[derive(Debug)]
pub enum CudaStorage {}

impl Storage {
    /// The host buffer. Every tensor is on the CPU in this build.
    pub fn cpu(&self) -> &CpuStorage {
        match self {
            Storage::Cpu(s) => s,
            Storage::Cuda(never) => match *never {},
        }
    }

    /// The host buffer, mutably.
    pub fn cpu_mut(&mut self) -> &mut CpuStorage {
        match self {
            Storage::Cpu(s) => s,
            Storage::Cuda(never) => match *never {},
        }
    }
}
