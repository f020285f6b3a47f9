//! The error type of lmforge-compression.

use std::path::PathBuf;

/// What can go wrong while compressing a model or reading a compressed one.
#[derive(Debug, thiserror::Error)]
pub enum CompressionError {
    /// A setting is out of range (a sparsity of 1.5, an int4 block of 0, ...).
    #[error("invalid compression setting: {0}")]
    InvalidConfig(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not a quantized lmforge model, or it is damaged.
    #[error("{path}: not a readable quantized lmforge model: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file does not fit the model it is loaded into.
    #[error("{path}: does not match the model: {reason}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The first parameter that differs, and how.
        reason: String,
    },
    /// The model has no part the operation applies to (no attention heads to prune, ...).
    #[error("{0}")]
    Unsupported(String),
}
