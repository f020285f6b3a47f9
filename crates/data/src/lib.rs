//! Text data for language models: tokenizers, datasets and batching.
//!
//! - [`tokenizer`]: one object-safe [`Tokenizer`](tokenizer::Tokenizer) trait over
//!   character-level, word-level and HuggingFace tokenizers (BPE, WordPiece, any
//!   `tokenizer.json`, with the same ids as HuggingFace), special tokens, optional
//!   normalization (NFKC, accent stripping, lowercasing) and word ids.
//! - [`dataset`]: corpora as causal-LM token blocks with train/valid/test splits,
//!   next-sentence-prediction pairs, TSV classification, CoNLL token labels aligned to
//!   sub-words, seeded shuffling and streaming readers for large files.
//! - [`augment`]: seeded token-level data augmentation (deletion, swap, insertion, synonyms).
//! - [`batcher`]: truncation, padding (dynamic or fixed), padding masks and label tensors.
//!
//! Token ids become `Tensor<2, Int>` `[batch_size, seq_length]` and padding masks
//! `Tensor<2, Bool>` with `true` at padding (burn's "masked out"). Nothing here selects a
//! backend: batches go to whatever device they are given.
//!
//! ```
//! use lmforge_data::batcher::BatcherConfig;
//! use lmforge_data::dataset::lm_blocks::LmBlocksConfig;
//! use lmforge_data::tokenizer::{CharTokenizer, Tokenizer};
//!
//! # let device = lmforge_device::device_from_env().unwrap();
//! let text = "to be or not to be\n".repeat(20);
//! let tokenizer = CharTokenizer::from_text(&text)?;
//! let splits = LmBlocksConfig::new(16).from_text(&tokenizer, &text)?;
//! let batcher = BatcherConfig::new(0).init()?;
//! let batch = batcher.batch_ids(&splits.train[..4], &device)?;
//! assert_eq!(batch.input_ids.dims(), [4, 16]);
//! # Ok::<(), lmforge_data::DataError>(())
//! ```

pub mod augment;
pub mod batcher;
pub mod chat;
pub mod dataset;
mod error;
pub mod tokenizer;

pub use error::DataError;
