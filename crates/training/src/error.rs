//! Errors of training runs and checkpoints.

use std::path::PathBuf;

/// Why a run or a checkpoint operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid training config: {0}")]
    InvalidConfig(String),
    /// The model's parameters are not on an autodiff device, so no gradients can be taken.
    #[error(
        "the model is not on an autodiff device: build it on `device.autodiff()` (or call \
         `model.fork(&device.autodiff())`) before training"
    )]
    NotAutodiff,
    /// The loss became NaN or infinite; training stopped before the optimizer applied it, and
    /// the last checkpoint on disk (if any) is untouched.
    #[error(
        "the loss is {loss} at step {step}: training stopped; the last good checkpoint is \
         {last_checkpoint:?}. Lower the learning rate, enable gradient clipping, or check the data"
    )]
    NonFiniteLoss {
        /// The optimizer step (0-based) whose loss was not finite.
        step: usize,
        /// The value read.
        loss: f64,
        /// The newest checkpoint written by this run, if any.
        last_checkpoint: Option<PathBuf>,
    },
    /// The task could not compute a step (bad batch).
    #[error("step {step}: {source}")]
    Task {
        /// The optimizer step (0-based), or the evaluation's step.
        step: usize,
        /// The task's error.
        source: crate::task::TaskError,
    },
    /// Training under burn-train's `Learner` stopped: a task step failed (its message names
    /// the batch) or burn-train itself failed.
    #[error("burn-train stopped: {0}")]
    Learner(String),
    /// A checkpoint could not be read or does not fit the run.
    #[error("checkpoint {path}: {cause}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong with it.
        cause: CheckpointError,
    },
    /// Reading or writing a file of the run failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Drawing the loss curve failed.
    #[error("loss curve {path}: {reason}")]
    Plot {
        /// The image file.
        path: PathBuf,
        /// The plotting library's message.
        reason: String,
    },
}

/// What is wrong with a checkpoint file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file does not exist.
    #[error("no such file")]
    Missing,
    /// The file does not start with lmforge's checkpoint header.
    #[error("not an lmforge checkpoint (bad magic bytes)")]
    NotACheckpoint,
    /// The file was written by an incompatible version of the format.
    #[error("format version {found} is not supported (this build reads version {supported})")]
    Version {
        /// The file's version.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The file ends before its declared contents (an interrupted copy).
    #[error("truncated: {0}")]
    Truncated(String),
    /// The contents do not match their checksum (the file was damaged).
    #[error("checksum mismatch: stored {stored:08x}, computed {computed:08x}; the file is damaged")]
    Checksum {
        /// The checksum stored in the file.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// The training state could not be decoded.
    #[error("bad training state: {0}")]
    State(String),
    /// The model in the checkpoint has different parameters than the model being resumed.
    #[error("the model does not match: {0}")]
    ModelMismatch(String),
    /// The checkpoint was written by a run with a different setting that resuming must keep.
    #[error("the run does not match: {0}")]
    RunMismatch(String),
    /// burn could not decode the model or optimizer record.
    #[error("{0}")]
    Record(String),
}
