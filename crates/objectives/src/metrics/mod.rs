//! Evaluation metrics, accumulated on the host over a whole split.
//!
//! - [`Perplexity`]: `exp` of the summed negative log-likelihood over all counted tokens
//!   divided by their number (not a mean of per-batch means).
//! - [`Accuracy`] and [`ConfusionMatrix`] (macro precision, recall and F1, scikit-learn's
//!   definitions).
//! - [`EntityF1`]: entity-level precision, recall and F1 for BIO / BIOES tags, with seqeval's
//!   default (CoNLL-eval) chunking.
//! - [`corpus_bleu`] / [`Bleu`]: corpus BLEU as sacreBLEU computes it by default (`13a`
//!   tokenization, 4-grams, brevity penalty, `exp` smoothing).
//! - [`SquadScores`]: exact match and F1 of extractive question answering, as SQuAD's official
//!   evaluation script computes them.

mod bleu;
mod classification;
mod entity;
mod perplexity;
mod squad;

pub use bleu::{Bleu, BleuScore, corpus_bleu, tokenize_13a};
pub use classification::{Accuracy, ConfusionMatrix};
pub use entity::{Entity, EntityF1, entities};
pub use perplexity::Perplexity;
pub use squad::{SquadScores, squad_exact_match, squad_f1, squad_normalize};

use burn::tensor::{Int, Tensor};

/// The values of an integer tensor, flattened in row-major order, read back to the host.
pub fn int_values<const D: usize>(tensor: Tensor<D, Int>) -> Vec<i64> {
    tensor
        .into_data()
        .try_into_vec_as::<i64>()
        .expect("integer tensor data converts to i64")
}

/// The index of the largest logit along the last dimension, flattened in row-major order and
/// read back to the host: the predicted classes.
///
/// # Shapes
/// - `logits`: `[..., n_classes]`
/// - returns: `product of the leading dimensions` values
pub fn predictions<const D: usize>(logits: Tensor<D>) -> Vec<i64> {
    int_values(logits.argmax(D - 1))
}
