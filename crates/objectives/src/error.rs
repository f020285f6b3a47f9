//! The error type of lmforge-objectives.

/// What can go wrong when configuring an objective or computing a metric from user data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ObjectiveError {
    /// A configuration value is out of range or inconsistent with another.
    #[error("invalid {what} config: {reason}")]
    InvalidConfig {
        /// The config type, e.g. `MaskingConfig`.
        what: &'static str,
        /// What is wrong, with the offending values.
        reason: String,
    },
    /// A token id is not below the vocabulary size.
    #[error("token id {id} is out of range for a vocabulary of {vocab_size}")]
    TokenOutOfRange {
        /// The offending id.
        id: i64,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A class label (or prediction) is not below the number of classes.
    #[error("label {label} is out of range for {n_classes} classes")]
    LabelOutOfRange {
        /// The offending label.
        label: i64,
        /// The number of classes.
        n_classes: usize,
    },
    /// Two sequences that must be aligned element by element have different lengths.
    #[error("{what}: lengths differ ({left} vs {right})")]
    LengthMismatch {
        /// What was compared, e.g. `predictions vs targets`.
        what: &'static str,
        /// Length of the first sequence.
        left: usize,
        /// Length of the second sequence.
        right: usize,
    },
    /// A tag is not `O` nor of the form `B-TYPE`, `I-TYPE`, `E-TYPE`, `S-TYPE`.
    #[error("tag `{tag}` at position {position} is not a BIO/BIOES tag")]
    InvalidTag {
        /// The offending tag.
        tag: String,
        /// Its index in the sequence.
        position: usize,
    },
}

/// Returns `Err(InvalidConfig)` with `reason` unless `ok`.
pub(crate) fn check(
    ok: bool,
    what: &'static str,
    reason: impl FnOnce() -> String,
) -> Result<(), ObjectiveError> {
    if ok {
        Ok(())
    } else {
        Err(ObjectiveError::InvalidConfig {
            what,
            reason: reason(),
        })
    }
}
