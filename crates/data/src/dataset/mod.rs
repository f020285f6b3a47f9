//! Datasets built from text files.
//!
//! - [`lm_blocks`]: a corpus as contiguous token blocks for causal language modelling, split
//!   into train / valid / test.
//! - [`nsp`]: sentence pairs for next-sentence prediction (50% true next sentence, 50% a
//!   random sentence from another document).
//! - [`tsv`]: text classification from TSV files (configurable columns, optional header).
//! - [`conll`]: CoNLL-style token labels, aligned to sub-word tokens.
//! - [`squad`]: extractive question answering (SQuAD JSON, stride windows, span decoding).
//! - [`parallel`]: sentence pairs for translation (TSV), with a held-out split by source.
//! - [`stream`]: line and token-block readers that stream large files.
//!
//! Every reader reports malformed input with its file and line number, and [`shuffle`]
//! gives a reproducible order from a seed.

pub mod conll;
mod labels;
pub mod lm_blocks;
pub mod nsp;
pub mod parallel;
pub mod squad;
pub mod stream;
pub mod tsv;

pub use labels::LabelSet;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Shuffles `items` in place; the same seed always gives the same order.
///
/// ```
/// let mut a = vec![1, 2, 3, 4, 5];
/// let mut b = a.clone();
/// lmforge_data::dataset::shuffle(&mut a, 7);
/// lmforge_data::dataset::shuffle(&mut b, 7);
/// assert_eq!(a, b);
/// ```
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    items.shuffle(&mut StdRng::seed_from_u64(seed));
}
