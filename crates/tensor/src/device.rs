//! Where a tensor's memory lives.
//!
//! Only the CPU backend exists today. `Device::Cuda` is part of the type so that model code
//! can name it now and keep working when the CUDA backend lands behind the `cuda` feature;
//! without it, asking for a CUDA tensor returns [`crate::Error::CudaNotCompiled`].

use std::fmt;

/// A compute device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// Host memory and the CPU kernels in [`crate::cpu`].
    #[default]
    Cpu,
    /// A CUDA device by ordinal (not yet implemented: the stub returns an error).
    Cuda(usize),
}

impl Device {
    /// Checks that the device can be used in this build.
    pub fn check(self) -> crate::Result<Self> {
        match self {
            Device::Cpu => Ok(self),
            Device::Cuda(_) if cuda_is_available() => Ok(self),
            Device::Cuda(_) => Err(crate::Error::CudaNotCompiled { device: self.to_string() }),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Whether this build has a CUDA backend (false until the `cuda` feature has one).
pub fn cuda_is_available() -> bool {
    false
}
