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
//! their path and the type of the module that holds them. The guide is `docs/compression.md`;
//! `examples/compress` runs every method on a character-level GPT and prints a [`report`].
//!
//! ```
//! use burn::module::Module;
//! use lmforge_compression::prune::{self, PruneConfig};
//! use lmforge_models::gpt::GptConfig;
//!
//! # let device = lmforge_device::device_from_env().unwrap();
//! let model = GptConfig::tiny(96).init(&device)?;
//! // Half of every Linear weight matrix set to zero, the smallest first.
//! let (sparse, masks) = prune::prune_magnitude(model.clone(), &PruneConfig::new(0.5))?;
//! assert_eq!(masks.sparsity(), 0.5);
//! // A quarter of all attention heads cut out of the matrices.
//! let keep = prune::keep_most_important(&prune::head_importance(&model), 0.25)?;
//! let smaller = prune::prune_heads(model.clone(), &keep)?;
//! assert!(smaller.num_params() < model.num_params());
//! # let _ = sparse;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod distill;
mod error;
mod paths;
pub mod prune;
pub mod quantize;
pub mod report;

pub use error::CompressionError;
