//! Reference fixtures: tensors written by lmforge's committed PyTorch generator scripts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, TensorData};
use safetensors::{Dtype, SafeTensors};

/// A safetensors file of named reference tensors, read whole into host memory.
///
/// Generator scripts name entries `param.<name>`, `input.<name>`, `output.<name>` and
/// `grad.<name>`; [`Fixture::with_prefix`] lists one group.
#[derive(Debug)]
pub struct Fixture {
    path: PathBuf,
    tensors: BTreeMap<String, TensorData>,
}

impl Fixture {
    /// Reads `path` (relative paths are taken from the calling crate's manifest directory when
    /// run under cargo).
    ///
    /// # Panics
    /// When the file cannot be read or is not a safetensors file of f32/f64/i64 tensors: a test
    /// fixture that cannot be loaded is a failed test.
    pub fn load(path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
        let file = SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("{} is not a safetensors file: {e}", path.display()));
        let tensors = file
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let dtype = match view.dtype() {
                    Dtype::F32 => DType::F32,
                    Dtype::F64 => DType::F64,
                    Dtype::I64 => DType::I64,
                    other => panic!(
                        "{}: `{name}` has unsupported dtype {other:?}",
                        path.display()
                    ),
                };
                let data = TensorData::from_bytes_vec(view.data().to_vec(), view.shape(), dtype);
                (name, data)
            })
            .collect();
        Self { path, tensors }
    }

    /// The tensor named `name`.
    ///
    /// # Panics
    /// When the fixture has no such tensor (the message lists what it has).
    pub fn get(&self, name: &str) -> TensorData {
        self.tensors.get(name).cloned().unwrap_or_else(|| {
            panic!(
                "{} has no tensor `{name}`; it has {:?}",
                self.path.display(),
                self.tensors.keys().collect::<Vec<_>>()
            )
        })
    }

    /// The tensor named `name`, if present.
    pub fn try_get(&self, name: &str) -> Option<TensorData> {
        self.tensors.get(name).cloned()
    }

    /// The names that start with `prefix`, with the prefix removed, in sorted order.
    pub fn with_prefix(&self, prefix: &str) -> Vec<String> {
        self.tensors
            .keys()
            .filter_map(|k| k.strip_prefix(prefix).map(str::to_string))
            .collect()
    }
}

impl Fixture {
    /// Asserts that every entry of `outputs` whose name starts with `prefix` equals the
    /// fixture's tensor of the same name within `tolerance`, and that the fixture has no entry
    /// with that prefix which `outputs` lacks.
    ///
    /// # Panics
    /// On any difference, listing each mismatching tensor with its worst element.
    pub fn assert_close(
        &self,
        outputs: &crate::testing::Outputs,
        prefix: &str,
        tolerance: crate::testing::Tolerance,
    ) {
        let mut expected = crate::testing::Outputs::new();
        let mut got = crate::testing::Outputs::new();
        for name in self.with_prefix(prefix) {
            let name = format!("{prefix}{name}");
            let entry = outputs.get(&name).unwrap_or_else(|| {
                panic!(
                    "{}: `{name}` was not computed by the test",
                    self.path.display()
                )
            });
            expected = expected.data(name.clone(), self.get(&name));
            got = got.data(
                name,
                TensorData::new(entry.values.clone(), entry.shape.clone()),
            );
        }
        let extra: Vec<&str> = outputs
            .entries()
            .iter()
            .map(|e| e.name.as_str())
            .filter(|n| n.starts_with(prefix) && self.try_get(n).is_none())
            .collect();
        assert!(
            extra.is_empty(),
            "{}: no reference for {extra:?}",
            self.path.display()
        );
        let problems = got.mismatches(&expected, tolerance, "lmforge", "reference");
        assert!(
            problems.is_empty(),
            "{} differs from the reference:\n  {}",
            self.path.display(),
            problems.join("\n  ")
        );
    }
}
