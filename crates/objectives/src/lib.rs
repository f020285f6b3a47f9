//! Training objectives and evaluation metrics for language models.
//!
//! - [`CrossEntropy`]: PyTorch-compatible cross-entropy with an ignore index (−100 by default)
//!   and label smoothing, returning a [`LossOutput`] with the mean, the sum, the unsmoothed
//!   negative log-likelihood and the number of counted targets. A batch whose targets are all
//!   ignored gives a loss of 0 with a count of 0, never NaN.
//! - [`causal_lm`]: next-token loss (the shift happens inside).
//! - [`masked_lm`]: BERT's masking (15% of tokens, 80% `[MASK]` / 10% random / 10% unchanged,
//!   never special or padding tokens, optional whole-word masking), seeded, and its loss.
//! - [`denoising`]: the noise of denoising auto-encoding (token drop, blanking, local
//!   shuffle), seeded.
//! - [`classification`]: sequence classification, next-sentence prediction and token
//!   classification losses.
//! - [`metrics`]: perplexity from summed NLL, accuracy, macro precision/recall/F1 and
//!   entity-level F1 for BIO/BIOES tags.
//!
//! Losses are ordinary tensor code: they run on any device and are differentiable on autodiff
//! devices.
//!
//! ```
//! use burn::tensor::{Int, Tensor, TensorData};
//! use lmforge_objectives::{CrossEntropy, causal_lm::causal_lm_loss, metrics::Perplexity};
//!
//! # let device = lmforge_device::device_from_env().unwrap();
//! // One sequence of 4 tokens over a vocabulary of 5; uniform logits.
//! let logits = Tensor::<3>::zeros([1, 4, 5], &device);
//! let targets = Tensor::<2, Int>::from_data(TensorData::new(vec![3i64, 1, 4, -100], [1, 4]), &device);
//! let out = causal_lm_loss(logits, targets, &CrossEntropy::new());
//! assert_eq!(out.count_value(), 2); // predicts 1 and 4; the padded last target is ignored
//!
//! let mut ppl = Perplexity::new();
//! ppl.update(&out);
//! assert!((ppl.value().unwrap() - 5.0).abs() < 1e-4); // uniform over 5 tokens
//! ```

pub mod causal_lm;
pub mod classification;
mod cross_entropy;
pub mod denoising;
mod error;
pub mod masked_lm;
pub mod metrics;

pub use cross_entropy::{CrossEntropy, IGNORE_INDEX, LossOutput};
pub use error::ObjectiveError;
