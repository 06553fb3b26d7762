//! Everything that can go wrong in the tokenizer, as one error type.
//!
//! Errors about files name the file (or the origin a caller gave for in-memory text) and say
//! what is wrong with it, so that `yuanli tokenizer encode --tokenizer broken.json` tells the
//! user which file to fix and how.

use std::path::PathBuf;

/// The error type of `yuanli-tokenizer`.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// A tokenizer file (or in-memory text standing for one) is malformed.
    #[error("{origin}: {problem}")]
    Format {
        /// The file name, or a description of where the text came from.
        origin: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A pre-tokenization regex does not compile, or failed while matching.
    #[error("pre-tokenization pattern {pattern:?}: {problem}")]
    Pattern {
        /// The regex source.
        pattern: String,
        /// What the regex engine said.
        problem: String,
    },
    /// The text contains a special token but special tokens were not allowed.
    #[error(
        "the text contains the special token {token:?} at byte {offset}, and special tokens \
         are not allowed here (allow them, or encode it as ordinary text)"
    )]
    SpecialNotAllowed {
        /// The special token found in the text.
        token: String,
        /// Its byte offset in the text.
        offset: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is not in the vocabulary (size {vocab_size})")]
    UnknownId {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// Decoded bytes are not valid UTF-8 (use the lossy decoder to replace them).
    #[error("decoded bytes are not valid UTF-8 at byte {offset}")]
    InvalidUtf8 {
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// A tokenizer cannot be built from the given parts, or a request is impossible.
    #[error("{0}")]
    Invalid(String),
}

/// Shorthand for results in this crate.
pub type Result<T> = std::result::Result<T, TokenizerError>;
