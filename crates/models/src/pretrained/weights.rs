//! Reading and writing safetensors weight files, and the visitor that maps a model's
//! parameters to checkpoint tensor names in both directions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{DType, Tensor, TensorData};
use lmforge_layers::transformer::Norm;
use lmforge_layers::{Embedding, Linear};
use safetensors::{Dtype, SafeTensors};

use crate::error::ModelError;

/// The tensors of a safetensors file, converted to `f32`, with a record of which were used.
#[derive(Debug)]
pub(crate) struct Weights {
    path: PathBuf,
    tensors: BTreeMap<String, TensorData>,
    used: BTreeSet<String>,
    /// The shapes of the tensors [`Weights::take`] moved out.
    taken: BTreeMap<String, Vec<usize>>,
}

impl Weights {
    /// Reads every tensor of `path` (F32, F16, BF16 and F64 become F32, or with `keep_half`
    /// F16 and BF16 stay as they are; integer tensors, which are buffers such as BERT's
    /// `position_ids`, are kept as they are).
    pub(crate) fn read(path: &Path, keep_half: bool) -> Result<Self, ModelError> {
        let mut tensors = BTreeMap::new();
        read_tensors(path, &mut tensors, keep_half, |_| true)?;
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            used: BTreeSet::new(),
            taken: BTreeMap::new(),
        })
    }

    /// Reads a sharded checkpoint: the index `path` (`model.safetensors.index.json`, whose
    /// `weight_map` names the shard of every tensor) and the shards beside it. Every tensor
    /// the index lists must be in its shard, and a shard's tensors that the index does not
    /// assign to it are refused; errors name the index (and the shard).
    pub(crate) fn read_sharded(path: &Path, keep_half: bool) -> Result<Self, ModelError> {
        let bytes = read_file(path)?;
        let index_error = |reason: String| ModelError::NotSafetensors {
            path: path.to_path_buf(),
            reason,
        };
        let index: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| index_error(format!("index is not valid JSON: {e}")))?;
        let Some(map) = index.get("weight_map").and_then(|m| m.as_object()) else {
            return Err(index_error("index has no `weight_map` object".into()));
        };
        let mut shards: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, shard) in map {
            let Some(shard) = shard.as_str() else {
                return Err(index_error(format!(
                    "`weight_map.{name}` is not a file name"
                )));
            };
            // Shards live beside the index: no paths that leave the folder.
            if shard.is_empty() || shard.contains(['/', '\\']) || shard == ".." {
                return Err(index_error(format!(
                    "`weight_map.{name}`: shard `{shard}` is not a file name in the folder"
                )));
            }
            shards
                .entry(shard.to_string())
                .or_default()
                .insert(name.clone());
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut tensors = BTreeMap::new();
        for (shard, names) in &shards {
            let shard_path = dir.join(shard);
            let mut unlisted = Vec::new();
            read_tensors(&shard_path, &mut tensors, keep_half, |name| {
                let listed = names.contains(name);
                if !listed {
                    unlisted.push(name.to_string());
                }
                listed
            })?;
            if !unlisted.is_empty() {
                return Err(ModelError::UnexpectedKeys {
                    path: shard_path,
                    names: unlisted,
                });
            }
            if let Some(name) = names.iter().find(|n| !tensors.contains_key(*n)) {
                return Err(ModelError::MissingKey {
                    path: shard_path,
                    name: name.clone(),
                });
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            used: BTreeSet::new(),
            taken: BTreeMap::new(),
        })
    }

    /// The floating-point dtype of the file's tensors when they all share one, else `None`.
    pub(crate) fn float_dtype(&self) -> Option<DType> {
        let mut dtypes = self
            .tensors
            .values()
            .map(|d| d.dtype())
            .filter(|d| d.is_float());
        let first = dtypes.next()?;
        dtypes.all(|d| d == first).then_some(first)
    }

    /// The number of values in the file (all tensors).
    pub(crate) fn n_values(&self) -> usize {
        let taken: usize = self
            .taken
            .values()
            .map(|s| s.iter().product::<usize>())
            .sum();
        self.tensors
            .values()
            .map(|d| d.num_elements())
            .sum::<usize>()
            + taken
    }

    /// The file the weights came from.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether any tensor name starts with `prefix`.
    pub(crate) fn has_prefix(&self, prefix: &str) -> bool {
        self.names().any(|k| k.starts_with(prefix))
    }

    /// Whether a tensor is present.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.taken.contains_key(name)
    }

    /// The shape of a tensor, if present.
    pub(crate) fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors
            .get(name)
            .map(|d| d.shape().to_vec())
            .or_else(|| self.taken.get(name).cloned())
    }

    /// Renames a tensor (used for legacy names such as LayerNorm `gamma`/`beta`).
    pub(crate) fn rename(&mut self, from: &str, to: &str) {
        if let Some(data) = self.tensors.remove(from) {
            self.tensors.insert(to.to_string(), data);
        }
    }

    /// Removes a tensor without marking it used (it must be re-inserted under other names).
    pub(crate) fn remove(&mut self, name: &str) -> Option<TensorData> {
        self.tensors.remove(name)
    }

    /// Adds a tensor.
    pub(crate) fn insert(&mut self, name: String, data: TensorData) {
        self.tensors.insert(name, data);
    }

    /// Marks a tensor as used without reading it (buffers the model recomputes).
    pub(crate) fn ignore(&mut self, name: &str) {
        if self.tensors.contains_key(name) {
            self.used.insert(name.to_string());
        }
    }

    /// Takes a tensor as read (F32, or F16/BF16 when read with `keep_half`), checking its
    /// shape.
    pub(crate) fn take(
        &mut self,
        name: &str,
        expected: &[usize],
    ) -> Result<TensorData, ModelError> {
        let data = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingKey {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        self.check_shape(name, data.shape(), expected)?;
        self.used.insert(name.to_string());
        // Moved out, not copied: the values are held once while the model is built.
        self.taken.insert(name.to_string(), expected.to_vec());
        Ok(self.tensors.remove(name).expect("looked up above"))
    }

    /// `Err(UnsupportedDtype)` unless `data` holds floats (an integer buffer where a weight
    /// is expected is a broken or mismatched checkpoint, not something to convert).
    pub(crate) fn check_float(&self, name: &str, data: &TensorData) -> Result<(), ModelError> {
        if data.dtype().is_float() {
            Ok(())
        } else {
            Err(ModelError::UnsupportedDtype {
                path: self.path.clone(),
                name: name.to_string(),
                dtype: format!("{:?}", data.dtype()),
            })
        }
    }

    /// `Err(ShapeMismatch)` unless `actual == expected`.
    pub(crate) fn check_shape(
        &self,
        name: &str,
        actual: &[usize],
        expected: &[usize],
    ) -> Result<(), ModelError> {
        if actual == expected {
            Ok(())
        } else {
            Err(ModelError::ShapeMismatch {
                path: self.path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                actual: actual.to_vec(),
            })
        }
    }

    /// `Err(UnexpectedKeys)` listing every tensor that was not used.
    pub(crate) fn finish(&self) -> Result<(), ModelError> {
        let unused: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(ModelError::UnexpectedKeys {
                path: self.path.clone(),
                names: unused,
            })
        }
    }

    /// Every tensor name (those taken included).
    pub(crate) fn names(&self) -> impl Iterator<Item = String> + '_ {
        self.tensors.keys().chain(self.taken.keys()).cloned()
    }
}

/// Reads the tensors of one safetensors file into `tensors` (floats as F32, or F16/BF16 as
/// they are with `keep_half`; integer buffers as they are), skipping those `keep` refuses.
fn read_tensors(
    path: &Path,
    tensors: &mut BTreeMap<String, TensorData>,
    keep_half: bool,
    mut keep: impl FnMut(&str) -> bool,
) -> Result<(), ModelError> {
    let bytes = read_file(path)?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::NotSafetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    for (name, view) in file.tensors() {
        if !keep(&name) {
            continue;
        }
        let dtype = match view.dtype() {
            Dtype::F32 => Some(DType::F32),
            Dtype::F16 => Some(DType::F16),
            Dtype::BF16 => Some(DType::BF16),
            Dtype::F64 => Some(DType::F64),
            Dtype::I64 => Some(DType::I64),
            Dtype::I32 => Some(DType::I32),
            _ => None,
        };
        let Some(dtype) = dtype else {
            return Err(ModelError::UnsupportedDtype {
                path: path.to_path_buf(),
                name,
                dtype: format!("{:?}", view.dtype()),
            });
        };
        let data = TensorData::from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), dtype);
        let data = if matches!(dtype, DType::I64 | DType::I32)
            || (keep_half && matches!(dtype, DType::F16 | DType::BF16))
        {
            data
        } else {
            data.convert_dtype(DType::F32)
        };
        tensors.insert(name, data);
    }
    Ok(())
}

/// Reads a whole file, with typed errors for a missing file and other I/O failures.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|source| io_error(path, source))
}

pub(crate) fn io_error(path: &Path, source: std::io::Error) -> ModelError {
    if source.kind() == std::io::ErrorKind::NotFound {
        ModelError::FileMissing {
            path: path.to_path_buf(),
        }
    } else {
        ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a failure never leaves a
/// truncated file behind.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|source| io_error(&tmp, source))?;
    std::fs::rename(&tmp, path).map_err(|source| io_error(path, source))
}

/// Serialises `f32` tensors as a safetensors file (atomically).
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, TensorData>,
) -> Result<(), ModelError> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, data) in tensors {
        let view = safetensors::tensor::TensorView::new(
            Dtype::F32,
            data.shape().to_vec(),
            data.as_bytes(),
        )
        .map_err(|e| ModelError::NotSafetensors {
            path: path.to_path_buf(),
            reason: format!("`{name}`: {e}"),
        })?;
        views.push((name.clone(), view));
    }
    let bytes = safetensors::serialize(views, None).map_err(|e| ModelError::NotSafetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

/// Walks a model's parameters under their checkpoint names. One mapping function per model
/// drives both import ([`Loader`]) and export ([`Exporter`]), so the two cannot disagree.
pub(crate) trait Visitor {
    /// Visits one parameter. `transpose`: the checkpoint stores the transpose of lmforge's
    /// layout (PyTorch `nn.Linear` weights, `[d_out, d_in]`, against burn's `[d_in, d_out]`).
    fn param<const D: usize>(
        &mut self,
        name: &str,
        param: &mut Param<Tensor<D>>,
        transpose: bool,
    ) -> Result<(), ModelError>;
}

/// Sets parameters from [`Weights`], as `f32` or in the dtype [`Loader::with_dtype`] names.
pub(crate) struct Loader<'a> {
    weights: &'a mut Weights,
    dtype: DType,
}

impl<'a> Loader<'a> {
    /// A loader that makes `f32` parameters.
    pub(crate) fn new(weights: &'a mut Weights) -> Self {
        Self {
            weights,
            dtype: DType::F32,
        }
    }

    /// A loader that makes parameters of `dtype` (`F32`, `F16` or `BF16`).
    pub(crate) fn with_dtype(weights: &'a mut Weights, dtype: DType) -> Self {
        Self { weights, dtype }
    }
}

impl Visitor for Loader<'_> {
    fn param<const D: usize>(
        &mut self,
        name: &str,
        param: &mut Param<Tensor<D>>,
        transpose: bool,
    ) -> Result<(), ModelError> {
        // The parameter's shape and device without initialising it (burn initialises
        // parameters lazily: the random values a fresh model would draw are never made).
        let device = param.lazy_device();
        let mut expected: [usize; D] = param.lazy_shape().dims();
        if transpose {
            expected.swap(D - 2, D - 1);
        }
        let data = self.weights.take(name, &expected)?;
        self.weights.check_float(name, &data)?;
        let data = if data.dtype() == self.dtype {
            data
        } else {
            data.convert_dtype(self.dtype)
        };
        // Transposed on the host, so the parameter is contiguous in lmforge's layout (as a
        // freshly initialised one is) rather than a strided view.
        let data = if transpose {
            transpose_last(data)
        } else {
            data
        };
        *param = Param::from_tensor(Tensor::<D>::from_data(data, (&device, self.dtype)));
        Ok(())
    }
}

/// Swaps the last two dimensions of a tensor's data (any element size).
fn transpose_last(data: TensorData) -> TensorData {
    let mut shape = data.shape().to_vec();
    let rank = shape.len();
    let (rows, cols) = (shape[rank - 2], shape[rank - 1]);
    let dtype = data.dtype();
    let size = dtype.size();
    let bytes = data.as_bytes();
    let mut out = vec![0u8; bytes.len()];
    let matrix = rows * cols * size;
    if matrix > 0 {
        for (src, dst) in bytes.chunks(matrix).zip(out.chunks_mut(matrix)) {
            for r in 0..rows {
                for c in 0..cols {
                    let (from, to) = ((r * cols + c) * size, (c * rows + r) * size);
                    dst[to..to + size].copy_from_slice(&src[from..from + size]);
                }
            }
        }
    }
    shape.swap(rank - 2, rank - 1);
    TensorData::from_bytes_vec(out, shape, dtype)
}

/// Collects parameters as `f32` tensors under their checkpoint names.
#[derive(Default)]
pub(crate) struct Exporter {
    pub(crate) tensors: BTreeMap<String, TensorData>,
}

impl Visitor for Exporter {
    fn param<const D: usize>(
        &mut self,
        name: &str,
        param: &mut Param<Tensor<D>>,
        transpose: bool,
    ) -> Result<(), ModelError> {
        let tensor = param.val();
        let tensor = if transpose {
            tensor.transpose()
        } else {
            tensor
        };
        let data = tensor.into_data().convert_dtype(DType::F32);
        self.tensors.insert(name.to_string(), data);
        Ok(())
    }
}

/// A `Linear` as `{name}.weight` (+ `{name}.bias`); `torch_layout`: stored `[d_out, d_in]`. A
/// packed layer is unpacked first (exported as its dequantized values; overwritten on import).
pub(crate) fn linear<V: Visitor>(
    v: &mut V,
    name: &str,
    linear: &mut Linear,
    torch_layout: bool,
) -> Result<(), ModelError> {
    linear.unpack();
    v.param(&format!("{name}.weight"), &mut linear.weight, torch_layout)?;
    if let Some(bias) = linear.bias.as_mut() {
        v.param(&format!("{name}.bias"), bias, false)?;
    }
    Ok(())
}

/// A LayerNorm as `{name}.weight` and `{name}.bias` (an RMSNorm as `{name}.weight`).
pub(crate) fn norm<V: Visitor>(v: &mut V, name: &str, norm: &mut Norm) -> Result<(), ModelError> {
    match norm {
        Norm::Layer(norm) => {
            v.param(&format!("{name}.weight"), &mut norm.gamma, false)?;
            if let Some(beta) = norm.beta.as_mut() {
                v.param(&format!("{name}.bias"), beta, false)?;
            }
        }
        Norm::Rms(norm) => v.param(&format!("{name}.weight"), &mut norm.gamma, false)?,
    }
    Ok(())
}

/// An `Embedding` as `{name}.weight`, `[n_embeddings, d_model]` in both layouts (a packed
/// table unpacked first, as [`linear`]).
pub(crate) fn embedding<V: Visitor>(
    v: &mut V,
    name: &str,
    embedding: &mut Embedding,
) -> Result<(), ModelError> {
    embedding.unpack();
    v.param(&format!("{name}.weight"), &mut embedding.weight, false)
}

/// Older checkpoints name LayerNorm parameters `gamma`/`beta`; lmforge reads both.
pub(crate) fn rename_legacy_norms(weights: &mut Weights) {
    let legacy: Vec<String> = weights
        .tensors
        .keys()
        .filter(|k| k.ends_with(".gamma") || k.ends_with(".beta"))
        .cloned()
        .collect();
    for name in legacy {
        let renamed = name
            .strip_suffix(".gamma")
            .map(|s| format!("{s}.weight"))
            .or_else(|| name.strip_suffix(".beta").map(|s| format!("{s}.bias")))
            .expect("filtered on the suffix");
        if !weights.contains(&renamed) {
            weights.rename(&name, &renamed);
        }
    }
}
