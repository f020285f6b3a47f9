//! Reading HuggingFace `config.json` files with typed errors.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::weights::read_file;
use crate::error::ModelError;

/// A parsed `config.json`.
#[derive(Debug, Clone)]
pub(crate) struct HfConfig {
    path: PathBuf,
    /// For a nested object: its field name and a dot, prefixed to field names in errors.
    prefix: String,
    fields: Map<String, Value>,
}

impl HfConfig {
    /// Reads and parses `path`.
    pub(crate) fn read(path: &Path) -> Result<Self, ModelError> {
        let bytes = read_file(path)?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| ModelError::ConfigField {
            path: path.to_path_buf(),
            field: "(file)".into(),
            reason: format!("not valid JSON: {e}"),
        })?;
        let Value::Object(fields) = value else {
            return Err(ModelError::ConfigField {
                path: path.to_path_buf(),
                field: "(file)".into(),
                reason: "expected a JSON object".into(),
            });
        };
        Ok(Self {
            path: path.to_path_buf(),
            prefix: String::new(),
            fields,
        })
    }

    /// An optional nested object (e.g. `rope_scaling`), read with the same accessors.
    pub(crate) fn object(&self, field: &str) -> Result<Option<HfConfig>, ModelError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Object(fields)) => Ok(Some(Self {
                path: self.path.clone(),
                prefix: format!("{}{field}.", self.prefix),
                fields: fields.clone(),
            })),
            Some(value) => Err(self.error(field, format!("expected an object, got {value}"))),
        }
    }

    /// Whether `field` is present (and not null).
    pub(crate) fn has(&self, field: &str) -> bool {
        self.get(field).is_some()
    }

    /// An error about `field`.
    pub(crate) fn error(&self, field: &str, reason: impl Into<String>) -> ModelError {
        ModelError::ConfigField {
            path: self.path.clone(),
            field: format!("{}{field}", self.prefix),
            reason: reason.into(),
        }
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.fields.get(field).filter(|v| !v.is_null())
    }

    /// A required positive integer.
    pub(crate) fn usize(&self, field: &str) -> Result<usize, ModelError> {
        let value = self
            .get(field)
            .ok_or_else(|| self.error(field, "missing"))?;
        match value.as_u64() {
            Some(v) if v > 0 => Ok(v as usize),
            _ => Err(self.error(field, format!("expected a positive integer, got {value}"))),
        }
    }

    /// An optional positive integer.
    pub(crate) fn usize_opt(&self, field: &str) -> Result<Option<usize>, ModelError> {
        match self.get(field) {
            None => Ok(None),
            Some(_) => self.usize(field).map(Some),
        }
    }

    /// An optional number with a default.
    pub(crate) fn f64_or(&self, field: &str, default: f64) -> Result<f64, ModelError> {
        match self.get(field) {
            None => Ok(default),
            Some(value) => value
                .as_f64()
                .ok_or_else(|| self.error(field, format!("expected a number, got {value}"))),
        }
    }

    /// An optional string with a default.
    pub(crate) fn str_or<'a>(
        &'a self,
        field: &str,
        default: &'a str,
    ) -> Result<&'a str, ModelError> {
        match self.get(field) {
            None => Ok(default),
            Some(value) => value
                .as_str()
                .ok_or_else(|| self.error(field, format!("expected a string, got {value}"))),
        }
    }

    /// An optional boolean with a default.
    pub(crate) fn bool_or(&self, field: &str, default: bool) -> Result<bool, ModelError> {
        match self.get(field) {
            None => Ok(default),
            Some(value) => value
                .as_bool()
                .ok_or_else(|| self.error(field, format!("expected true or false, got {value}"))),
        }
    }

    /// The number of labels of a classification head: `num_labels`, else the size of
    /// `id2label`, else HuggingFace's default of 2.
    pub(crate) fn num_labels(&self) -> Result<usize, ModelError> {
        if let Some(n) = self.usize_opt("num_labels")? {
            return Ok(n);
        }
        match self.get("id2label") {
            Some(Value::Object(map)) if !map.is_empty() => Ok(map.len()),
            Some(value) => Err(self.error("id2label", format!("expected an object, got {value}"))),
            None => Ok(2),
        }
    }
}
