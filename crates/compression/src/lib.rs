//! Model compression for deployment: quantization, pruning and distillation.
//!
//! - [`quantize`]: post-training weight quantization of every `Linear` and `Embedding`,
//!   int8 per output channel or int4 per block of 32, saved at the reduced size and loaded
//!   back.
//! - [`prune`]: magnitude pruning (one-shot, or gradual while fine-tuning with masks held by
//!   [`prune::PrunedTask`]) and structured pruning of attention heads and feed-forward units.
//! - [`distill`]: the teacher-student loss (softened KL plus the label loss) and a causal-LM
//!   distillation task for the trainer.
//! - [`report`]: parameters, bytes on disk, quality and latency before and after, as a table
//!   (`examples/compress` builds one).
//!
//! Every function works on any lmforge model (or any burn module): parameters are found by
//! their path and the type of the module that holds them.

pub mod distill;
mod error;
mod paths;
pub mod prune;
pub mod quantize;
pub mod report;

pub use error::CompressionError;
pub use paths::Site;
