//! Errors of the nn crate.

/// What can go wrong with parameters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A gradient holds NaN or ±∞; names the first such parameter and element.
    #[error("gradient of parameter {name} is not finite ({value}) at element {index}")]
    NonFiniteGradient {
        /// Parameter path.
        name: String,
        /// Flat index within the parameter.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// Two parameters registered under one name.
    #[error("parameter {0} is registered twice")]
    DuplicateName(String),
    /// A layer's settings are invalid (the message names the setting).
    #[error("{0}")]
    Invalid(String),
}

/// `Result` with the nn crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
