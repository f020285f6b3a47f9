//! Checkpoint files: the model, the optimizer state and the training state in one file,
//! written atomically and checked on reading.
//!
//! Layout (little-endian): the 8 magic bytes `LMFCKPT\0`, a `u32` format version, three
//! sections each preceded by its `u64` length (the training state as JSON, the model as a
//! burnpack record, the optimizer state as a burn optimizer record), then a CRC-32 of every
//! byte before it. The file is written to `<name>.tmp`, flushed to disk and renamed over the
//! old checkpoint, so a crash leaves either the old or the new checkpoint, never half of one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{CheckpointError, TrainError};
use crate::log::Record;

const MAGIC: &[u8; 8] = b"LMFCKPT\0";
const VERSION: u32 = 1;

/// Where a run stands: everything besides the model and optimizer that an exact resume needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Batches read from the training data so far (its position).
    pub position: u64,
    /// Batches in one pass over the training data when the checkpoint was written.
    pub batches_per_pass: usize,
    /// The run's seed (masks, dropout and shuffles derive from it and the position).
    pub seed: u64,
    /// Batches per optimizer step.
    pub grad_accumulation: usize,
    /// The best evaluation so far: `(step, monitored value)`.
    pub best: Option<(usize, f64)>,
    /// Evaluations since the best one (for early stopping).
    pub evals_without_improvement: usize,
    /// Seconds spent training before this checkpoint.
    pub elapsed_s: f64,
    /// Every logged record so far.
    pub history: Vec<Record>,
    /// Each parameter's path and shape, to recognise a checkpoint of another model.
    pub params: Vec<(String, Vec<usize>)>,
}

/// The contents of a checkpoint file, decoded but not yet applied to a model.
pub struct Checkpoint {
    /// The training state.
    pub state: TrainState,
    model: Vec<u8>,
    optimizer: Vec<u8>,
    path: PathBuf,
}

impl Checkpoint {
    /// Reads and checks a checkpoint file.
    ///
    /// # Errors
    /// [`TrainError::Checkpoint`] naming the file and the cause: missing, not a checkpoint,
    /// unsupported version, truncated, damaged (checksum), or an undecodable state.
    pub fn read(path: impl AsRef<Path>) -> Result<Self, TrainError> {
        let path = path.as_ref();
        let fail = |cause| TrainError::Checkpoint {
            path: path.to_path_buf(),
            cause,
        };
        let bytes = fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => fail(CheckpointError::Missing),
            _ => TrainError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(fail(CheckpointError::NotACheckpoint));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(fail(CheckpointError::Version {
                found: version,
                supported: VERSION,
            }));
        }
        let mut cursor = 12;
        let mut sections = Vec::with_capacity(3);
        for name in ["training state", "model", "optimizer"] {
            let Some(len) = bytes.get(cursor..cursor + 8) else {
                return Err(fail(CheckpointError::Truncated(format!(
                    "ends before the {name} section"
                ))));
            };
            let len = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
            cursor += 8;
            // Checked sums: a damaged length near `u64::MAX` must not wrap around (the
            // `checkpoint` fuzz target found one that did).
            let end = cursor
                .checked_add(len)
                .filter(|&end| end.checked_add(4).is_some_and(|e| e <= bytes.len()));
            let Some(end) = end else {
                return Err(fail(CheckpointError::Truncated(format!(
                    "the {name} section declares {len} bytes, {} remain",
                    bytes.len().saturating_sub(cursor + 4)
                ))));
            };
            sections.push(bytes[cursor..end].to_vec());
            cursor = end;
        }
        if cursor + 4 != bytes.len() {
            return Err(fail(CheckpointError::Truncated(format!(
                "{} unexpected bytes after the sections",
                bytes.len() - cursor - 4
            ))));
        }
        let stored = u32::from_le_bytes(bytes[cursor..].try_into().expect("4 bytes"));
        let computed = crc32fast::hash(&bytes[..cursor]);
        if stored != computed {
            return Err(fail(CheckpointError::Checksum { stored, computed }));
        }
        let optimizer = sections.pop().expect("3 sections");
        let model = sections.pop().expect("3 sections");
        let state = serde_json::from_slice(&sections[0])
            .map_err(|e| fail(CheckpointError::State(e.to_string())))?;
        Ok(Self {
            state,
            model,
            optimizer,
            path: path.to_path_buf(),
        })
    }

    /// The file this checkpoint was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, cause: CheckpointError) -> TrainError {
        TrainError::Checkpoint {
            path: self.path.clone(),
            cause,
        }
    }

    /// Loads the checkpoint's parameters into `model` (built from the same config).
    ///
    /// # Errors
    /// [`CheckpointError::ModelMismatch`] naming the first parameter whose path or shape
    /// differs, or [`CheckpointError::Record`] if burn cannot decode the record.
    pub fn load_model<M: Module>(&self, model: M) -> Result<M, TrainError> {
        let expected = crate::params::parameters(&model)
            .into_iter()
            .map(|p| (p.path, p.shape))
            .collect::<Vec<_>>();
        if let Some(difference) = describe_difference(&self.state.params, &expected) {
            return Err(self.error(CheckpointError::ModelMismatch(difference)));
        }
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(self.model.clone()))
            .map_err(|e| self.error(CheckpointError::Record(format!("model: {e}"))))?;
        model
            .try_load_record(record)
            .map_err(|e| self.error(CheckpointError::Record(format!("model: {e}"))))
    }

    /// The optimizer state bytes (burn's optimizer record).
    pub(crate) fn load_optimizer(
        &self,
        optimizer: burn::optim::ModuleOptimizer,
    ) -> Result<burn::optim::ModuleOptimizer, TrainError> {
        optimizer
            .from_bytes(Bytes::from_bytes_vec(self.optimizer.clone()))
            .map_err(|e| self.error(CheckpointError::Record(format!("optimizer: {e}"))))
    }

    /// Fails with [`CheckpointError::RunMismatch`] when `what` differs.
    pub(crate) fn require_same<T: PartialEq + std::fmt::Debug>(
        &self,
        what: &str,
        in_checkpoint: T,
        now: T,
    ) -> Result<(), TrainError> {
        if in_checkpoint == now {
            Ok(())
        } else {
            Err(self.error(CheckpointError::RunMismatch(format!(
                "{what} is {now:?} now but {in_checkpoint:?} in the checkpoint"
            ))))
        }
    }
}

fn describe_difference(
    saved: &[(String, Vec<usize>)],
    model: &[(String, Vec<usize>)],
) -> Option<String> {
    for (i, (s, m)) in saved.iter().zip(model).enumerate() {
        if s != m {
            return Some(format!(
                "parameter {i} is `{}` {:?} in the checkpoint but `{}` {:?} in the model",
                s.0, s.1, m.0, m.1
            ));
        }
    }
    (saved.len() != model.len()).then(|| {
        format!(
            "the checkpoint has {} parameter tensors, the model {}",
            saved.len(),
            model.len()
        )
    })
}

/// Writes a checkpoint of `model`, `optimizer` and `state` to `path` atomically.
pub(crate) fn write<M: Module>(
    path: &Path,
    model: &M,
    optimizer: &burn::optim::ModuleOptimizer,
    state: &TrainState,
) -> Result<(), TrainError> {
    let record_error = |e: burn::store::RecordError| TrainError::Checkpoint {
        path: path.to_path_buf(),
        cause: CheckpointError::Record(e.to_string()),
    };
    let state_json = serde_json::to_vec(state).expect("the training state serializes");
    let model_bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map_err(record_error)?;
    let optimizer_bytes = optimizer.into_bytes().map_err(record_error)?;
    let mut bytes =
        Vec::with_capacity(32 + state_json.len() + model_bytes.len() + optimizer_bytes.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    for section in [&state_json[..], &model_bytes[..], &optimizer_bytes[..]] {
        bytes.extend_from_slice(&(section.len() as u64).to_le_bytes());
        bytes.extend_from_slice(section);
    }
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let io = |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = fs::File::create(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    fs::rename(&tmp, path).map_err(io)
}
