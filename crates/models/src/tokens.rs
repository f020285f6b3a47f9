//! Input checks and the tied output projection, shared by the models.

use burn::tensor::{Int, Tensor};
use lmforge_layers::Embedding;

/// Panics with a clear message when a token id is outside `0..vocab_size`.
///
/// burn's embedding lookup does not check ids (an out-of-range id panics deep inside a CPU
/// backend and reads arbitrary memory on a GPU), so every model checks first. This reads two
/// scalars back from the device.
#[track_caller]
pub(crate) fn assert_tokens(model: &str, tokens: &Tensor<2, Int>, vocab_size: usize) {
    if tokens.dims().contains(&0) {
        return;
    }
    let max = tokens.clone().max().into_scalar::<i64>();
    let min = tokens.clone().min().into_scalar::<i64>();
    assert!(
        min >= 0 && (max as u64) < vocab_size as u64,
        "{model}: token id {} is out of range for vocab_size {vocab_size}",
        if min < 0 { min } else { max }
    );
}

/// Panics with a clear message when positions `start..start + seq_length` do not fit the
/// model's context window.
#[track_caller]
pub(crate) fn check_positions(model: &str, start: usize, seq_length: usize, max_seq_length: usize) {
    assert!(
        start + seq_length <= max_seq_length,
        "{model}: sequence of {} positions ({start} cached + {seq_length} new) exceeds max_seq_length {max_seq_length}",
        start + seq_length
    );
}

/// Vocabulary logits through a tied embedding: `hidden · Eᵀ`.
///
/// # Shapes
/// - `hidden`: `[batch_size, seq_length, d_model]`; `embedding`: `[vocab_size, d_model]`
/// - returns: `[batch_size, seq_length, vocab_size]`
pub(crate) fn tied_logits(hidden: Tensor<3>, embedding: &Embedding) -> Tensor<3> {
    // Rows folded into one product; lmforge's kernels on flex for few rows (decoding), a
    // half-precision or a packed table.
    embedding.project(hidden)
}
