//! Pruning: unstructured magnitude pruning (one-shot or gradual, masks held while training)
//! and structured removal of attention heads and feed-forward units.
//!
//! - [`prune_magnitude`] zeroes the smallest weights of every `Linear` (per matrix or
//!   globally, [`PruneConfig`]); [`PrunedTask`] wraps any training task so the removed weights
//!   stay exactly zero through optimizer updates, with fixed masks or a [`GradualPruning`]
//!   schedule. Zeros are stored as zeros: the forward costs what the dense model costs.
//! - [`prune_heads`] and [`prune_neurons`] cut heads and units out of the matrices of GPT and
//!   BERT models ([`TransformerBlocks`]), ranked by [`head_importance`] and
//!   [`neuron_importance`]: fewer parameters and a faster forward.

mod magnitude;
mod structured;

pub use magnitude::{
    GradualPruning, Masks, PruneConfig, PrunedTask, Scope, magnitude_masks, measured_sparsity,
    prune_magnitude,
};
pub use structured::{
    TransformerBlocks, head_importance, keep_most_important, neuron_importance, prune_heads,
    prune_neurons,
};
