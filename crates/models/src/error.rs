//! The error type of lmforge-models.

use std::path::PathBuf;

use lmforge_layers::LayerError;

/// What can go wrong when building a model or reading and writing its weights.
///
/// Every variant that concerns a file names it; weight errors name the tensor.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A model configuration value is out of range or inconsistent with another.
    #[error("invalid {model} config: {reason}")]
    InvalidConfig {
        /// The config type, e.g. `GptConfig`.
        model: &'static str,
        /// What is wrong, with the offending values.
        reason: String,
    },
    /// A layer rejected its configuration.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// A file that should exist does not.
    #[error("{}: file not found", .path.display())]
    FileMissing {
        /// The path looked for.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A weights file is not a valid safetensors file.
    #[error("{}: not a safetensors file: {reason}", .path.display())]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// What the parser reported.
        reason: String,
    },
    /// A `config.json` field is missing, has the wrong type, or contradicts another field.
    #[error("{}: config field `{field}`: {reason}", .path.display())]
    ConfigField {
        /// The config file.
        path: PathBuf,
        /// The field (HuggingFace name).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A weight the model needs is not in the file.
    #[error("{}: missing weight `{name}`", .path.display())]
    MissingKey {
        /// The weights file.
        path: PathBuf,
        /// The tensor name looked for.
        name: String,
    },
    /// The file holds weights the model has no place for (listed).
    #[error("{}: unexpected weights {names:?}", .path.display())]
    UnexpectedKeys {
        /// The weights file.
        path: PathBuf,
        /// The tensor names that were not used.
        names: Vec<String>,
    },
    /// A weight's shape differs from the one the config implies.
    #[error("{}: weight `{name}` has shape {actual:?}, expected {expected:?}", .path.display())]
    ShapeMismatch {
        /// The weights file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The shape the model's config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        actual: Vec<usize>,
    },
    /// A weight has a data type lmforge cannot read as floats.
    #[error("{}: weight `{name}` has dtype {dtype}, expected F32, F16, BF16 or F64", .path.display())]
    UnsupportedDtype {
        /// The weights file.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The data type in the file.
        dtype: String,
    },
    /// Parameters were asked for in a dtype the device cannot store (for example `bf16` on
    /// ndarray).
    #[error(
        "the device {device} cannot hold parameters in {dtype}; use f32 there (supported: {supported})"
    )]
    DtypeNotSupported {
        /// The dtype asked for.
        dtype: String,
        /// The device.
        device: String,
        /// The parameter dtypes the device can hold.
        supported: String,
    },
    /// A checkpoint in burn's own format could not be read, written or applied.
    #[error("{}: {reason}", .path.display())]
    Record {
        /// The checkpoint file.
        path: PathBuf,
        /// burn's message.
        reason: String,
    },
}

/// Returns `Err(InvalidConfig)` with `reason` unless `ok`.
pub(crate) fn check(
    ok: bool,
    model: &'static str,
    reason: impl FnOnce() -> String,
) -> Result<(), ModelError> {
    if ok {
        Ok(())
    } else {
        Err(ModelError::InvalidConfig {
            model,
            reason: reason(),
        })
    }
}

/// Returns `Err(InvalidConfig)` unless `dropout` is in `[0, 1)`.
pub(crate) fn check_dropout(model: &'static str, dropout: f64) -> Result<(), ModelError> {
    check((0.0..1.0).contains(&dropout), model, || {
        format!("dropout must be in [0, 1), got {dropout}")
    })
}
