//! The error type of lmforge-data.

use std::path::PathBuf;

/// What can go wrong when reading, tokenizing or batching text.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file cannot be opened, read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line of a TSV or CoNLL file does not have the expected form.
    #[error("{path}:{line}: {reason}")]
    MalformedLine {
        /// The file (or `<memory>` for in-memory text).
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A label is not in the label set.
    #[error("label `{label}` is not in the label set {known:?}{}", location(path, *line))]
    UnknownLabel {
        /// The label.
        label: String,
        /// The labels known.
        known: Vec<String>,
        /// Where it was read, when it came from a file.
        path: Option<PathBuf>,
        /// The 1-based line number, when it came from a file.
        line: Option<usize>,
    },
    /// A corpus or dataset has no usable content.
    #[error("empty corpus: {what}")]
    EmptyCorpus {
        /// What was empty and why that matters.
        what: String,
    },
    /// A token id is not below the vocabulary size.
    #[error("token id {id} is out of range for a vocabulary of {vocab_size}")]
    TokenOutOfRange {
        /// The offending id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A sequence is longer than the model (or the batcher) allows and truncation is off.
    #[error("sequence of {length} tokens is longer than the maximum of {max}")]
    SequenceTooLong {
        /// The sequence length.
        length: usize,
        /// The maximum.
        max: usize,
    },
    /// A configuration value is out of range or inconsistent with another.
    #[error("invalid {what} config: {reason}")]
    InvalidConfig {
        /// The config type.
        what: &'static str,
        /// What is wrong, with the offending values.
        reason: String,
    },
    /// A chat template is missing, does not parse, or failed to render (a template's own
    /// `raise_exception` message comes through as it is).
    #[error("chat template: {0}")]
    ChatTemplate(String),
    /// The HuggingFace tokenizers library reported an error (bad `tokenizer.json`, training
    /// failure, ...).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

fn location(path: &Option<PathBuf>, line: Option<usize>) -> String {
    match (path, line) {
        (Some(p), Some(l)) => format!(" at {}:{l}", p.display()),
        (None, Some(l)) => format!(" at line {l}"),
        (Some(p), None) => format!(" in {}", p.display()),
        (None, None) => String::new(),
    }
}

impl DataError {
    /// An [`DataError::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`DataError::MalformedLine`].
    pub(crate) fn malformed(
        path: impl Into<PathBuf>,
        line: usize,
        reason: impl Into<String>,
    ) -> Self {
        Self::MalformedLine {
            path: path.into(),
            line,
            reason: reason.into(),
        }
    }
}

/// Returns `Err(InvalidConfig)` with `reason` unless `ok`.
pub(crate) fn check(
    ok: bool,
    what: &'static str,
    reason: impl FnOnce() -> String,
) -> Result<(), DataError> {
    if ok {
        Ok(())
    } else {
        Err(DataError::InvalidConfig {
            what,
            reason: reason(),
        })
    }
}
