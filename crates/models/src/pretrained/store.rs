//! lmforge's own checkpoint format: burn's burnpack records, with typed errors.

use std::path::Path;

use burn::module::Module;
use burn::store::ModuleRecord;

use super::weights::{io_error, write_atomic};
use crate::error::ModelError;

/// Saves every parameter of `model` to `path` in burn's burnpack format, atomically
/// (a temporary file, then a rename). Save the model's config beside it (configs derive
/// burn's `Config`, which has `save`) to rebuild the model before [`load`].
///
/// # Errors
/// [`ModelError::Record`] or [`ModelError::Io`].
pub fn save<M: Module>(model: &M, path: impl AsRef<Path>) -> Result<(), ModelError> {
    let path = path.as_ref();
    let bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| record_error(path, e))?;
    write_atomic(path, &bytes)
}

/// Loads parameters saved by [`save`] into `model` (built from the same config).
///
/// # Errors
/// [`ModelError::FileMissing`], or [`ModelError::Record`] for a corrupt file or one whose
/// tensors do not match the model (burn's message names them).
pub fn load<M: Module>(model: M, path: impl AsRef<Path>) -> Result<M, ModelError> {
    let path = path.as_ref();
    if !path.exists() {
        return Err(io_error(path, std::io::ErrorKind::NotFound.into()));
    }
    let record = ModuleRecord::load(path).map_err(|e| record_error(path, e))?;
    model
        .try_load_record(record)
        .map_err(|e| record_error(path, e))
}

fn record_error(path: &Path, error: impl std::fmt::Display) -> ModelError {
    ModelError::Record {
        path: path.to_path_buf(),
        reason: error.to_string(),
    }
}
