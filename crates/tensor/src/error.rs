//! Errors for everything that comes from outside the tensor math: buffers, devices, files.

/// The tensor crate's error type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A buffer handed to a constructor does not hold `shape.product()` elements.
    #[error("{op}: buffer holds {len} elements but shape {shape:?} needs {expected}")]
    BufferLength {
        /// The constructor that was called.
        op: &'static str,
        /// Elements supplied.
        len: usize,
        /// Elements the shape needs.
        expected: usize,
        /// The requested shape.
        shape: Vec<usize>,
    },
    /// The crate was built without the `cuda` feature.
    #[error("device {device}: yuanli was built without CUDA support (enable the `cuda` feature)")]
    CudaNotCompiled {
        /// The device that was asked for.
        device: String,
    },
    /// A value outside the range an op accepts (an index, a dtype for this op, ...).
    #[error("{op}: {message}")]
    Invalid {
        /// The op that refused the value.
        op: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// `Result` with the tensor crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
