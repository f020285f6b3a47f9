//! Training and fine-tuning of lmforge models.
//!
//! - [`Trainer`] runs a fixed number of optimizer steps of a [`Task`] (a model and its
//!   objective) over [`Batches`] of examples: AdamW with weight-decay exclusions or SGD
//!   ([`OptimizerConfig`]), a [`Schedule`] (warmup, then constant, linear or cosine), clipping
//!   by the global gradient norm, gradient accumulation, evaluation every N steps with early
//!   stopping and keep-best, and atomic [checkpoints](checkpoint) that resume exactly.
//! - Progress is a bar on a terminal and plain lines otherwise; every record also goes to
//!   `metrics.jsonl`, and the run ends with a loss curve (`loss.svg`).
//! - [`tasks`] holds the tasks of lmforge's models: causal LM (GPT, LSTM LM), masked LM and
//!   BERT pre-training, sequence and token classification. Your own model trains by
//!   implementing [`Task`].
//! - [`learner`] (feature `learner`) runs the same tasks under burn-train's `Learner`: one
//!   device, several devices with data parallelism, or DDP.
//! - [`params`] lists parameters by path and freezes them (fine-tuning: embeddings, the first
//!   N blocks); [`OptimizerConfig::with_lr_group`] gives a head its own learning rate.
//!
//! ```
//! use burn::tensor::Device;
//! use lmforge_models::gpt::GptConfig;
//! use lmforge_training::tasks::CausalLmTask;
//! use lmforge_training::{Batches, Progress, Schedule, Trainer, TrainerConfig};
//!
//! # let device = lmforge_device::device_from_env().unwrap().autodiff();
//! let model = GptConfig::tiny(16).init(&device)?;
//! // Rows of token ids: the task predicts each next token.
//! let rows: Vec<Vec<u32>> = (0..8).map(|i| (0..9).map(|t| (i + t) % 16).collect()).collect();
//! let config = TrainerConfig::new(20, Schedule::warmup_cosine(1e-2, 2))
//!     .with_max_grad_norm(1.0)
//!     .with_progress(Progress::Silent);
//! let out = Trainer::new(config).fit(model, &CausalLmTask::new(0), &Batches::new(rows, 4), None)?;
//! let first = out.history.first().unwrap();
//! let last = out.history.last().unwrap();
//! # let loss = |r: &lmforge_training::log::Record| match r {
//! #     lmforge_training::log::Record::Train { loss, .. } => *loss, _ => f64::NAN };
//! assert!(loss(last) < loss(first));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod checkpoint;
mod data;
mod error;
#[cfg(feature = "learner")]
pub mod learner;
pub mod log;
mod optimizer;
pub mod params;
mod schedule;
mod task;
pub mod tasks;
mod trainer;

pub use data::Batches;
pub use error::{CheckpointError, TrainError};
pub use log::{Progress, Record};
pub use optimizer::{LrGroup, NoDecay, OptimizerConfig, OptimizerKind};
pub use schedule::{Decay, Schedule};
pub use task::{StepContext, StepOutput, Task, TaskError};
pub use trainer::{
    EarlyStopping, Evaluation, Monitor, TrainOutput, Trainer, TrainerConfig, evaluate, files,
    load_checkpoint_model,
};
