//! A corpus as contiguous token blocks for causal language modelling.

use std::path::Path;

use super::stream::{LineEnd, LineReader, encode_line};
use crate::error::{DataError, check};
use crate::tokenizer::Tokenizer;

/// How a corpus is cut into blocks and splits.
///
/// The token stream is split into three contiguous parts (train first, then valid, then test,
/// by the given fractions of tokens), and each part into non-overlapping blocks of
/// `block_size` tokens; a part's final partial block is dropped. Keeping the parts contiguous
/// means no validation text leaks into training through overlapping context.
///
/// A block is both the input and (shifted by one inside the loss, see lmforge-objectives'
/// `causal_lm_loss`) the target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LmBlocksConfig {
    /// Tokens per block.
    pub block_size: usize,
    /// Fraction of the tokens for validation. Default: 0.05.
    pub valid_fraction: f64,
    /// Fraction of the tokens for testing. Default: 0.05.
    pub test_fraction: f64,
    /// What ends each line. Default: [`LineEnd::Newline`].
    pub line_end: LineEnd,
}

/// Train, validation and test blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LmSplits {
    /// Training blocks, in corpus order (shuffle with [`shuffle`](super::shuffle)).
    pub train: Vec<Vec<u32>>,
    /// Validation blocks.
    pub valid: Vec<Vec<u32>>,
    /// Test blocks.
    pub test: Vec<Vec<u32>>,
}

impl LmBlocksConfig {
    /// Blocks of `block_size` tokens, 5% validation, 5% test, newlines kept.
    pub fn new(block_size: usize) -> Self {
        Self {
            block_size,
            valid_fraction: 0.05,
            test_fraction: 0.05,
            line_end: LineEnd::Newline,
        }
    }

    /// Sets the validation and test fractions.
    pub fn with_fractions(mut self, valid_fraction: f64, test_fraction: f64) -> Self {
        self.valid_fraction = valid_fraction;
        self.test_fraction = test_fraction;
        self
    }

    /// Sets what ends each line.
    pub fn with_line_end(mut self, line_end: LineEnd) -> Self {
        self.line_end = line_end;
        self
    }

    /// Cuts a token stream into splits and blocks.
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] for a zero block size or fractions outside `[0, 1)` that
    /// leave nothing for training; [`DataError::EmptyCorpus`] when a split with a positive
    /// fraction (or training) gets no complete block.
    pub fn split_ids(&self, ids: &[u32]) -> Result<LmSplits, DataError> {
        let what = "LmBlocksConfig";
        check(self.block_size > 0, what, || {
            "block_size must be positive".into()
        })?;
        let (v, t) = (self.valid_fraction, self.test_fraction);
        check(v >= 0.0 && t >= 0.0 && v + t < 1.0, what, || {
            format!("valid_fraction {v} and test_fraction {t} must be >= 0 and sum to < 1")
        })?;
        let n = ids.len();
        let n_valid = (n as f64 * v).round() as usize;
        let n_test = (n as f64 * t).round() as usize;
        let n_train = n - n_valid - n_test;
        let blocks = |part: &[u32]| -> Vec<Vec<u32>> {
            part.chunks_exact(self.block_size)
                .map(<[u32]>::to_vec)
                .collect()
        };
        let splits = LmSplits {
            train: blocks(&ids[..n_train]),
            valid: blocks(&ids[n_train..n_train + n_valid]),
            test: blocks(&ids[n_train + n_valid..]),
        };
        for (name, fraction, part) in [
            ("train", 1.0, &splits.train),
            ("valid", v, &splits.valid),
            ("test", t, &splits.test),
        ] {
            if fraction > 0.0 && part.is_empty() {
                return Err(DataError::EmptyCorpus {
                    what: format!(
                        "{n} tokens leave no complete block of {} tokens for the {name} split",
                        self.block_size
                    ),
                });
            }
        }
        Ok(splits)
    }

    /// Tokenizes `text` line by line and cuts it into splits and blocks.
    ///
    /// ```
    /// use lmforge_data::dataset::lm_blocks::LmBlocksConfig;
    /// use lmforge_data::tokenizer::CharTokenizer;
    ///
    /// let text = "abcdefghij\n".repeat(10); // 110 characters
    /// let tokenizer = CharTokenizer::from_text(&text)?;
    /// let splits = LmBlocksConfig::new(8).with_fractions(0.1, 0.1).from_text(&tokenizer, &text)?;
    /// assert_eq!((splits.train.len(), splits.valid.len(), splits.test.len()), (11, 1, 1));
    /// # Ok::<(), lmforge_data::DataError>(())
    /// ```
    ///
    /// # Errors
    /// As [`LmBlocksConfig::split_ids`], plus tokenizer errors.
    pub fn from_text(&self, tokenizer: &dyn Tokenizer, text: &str) -> Result<LmSplits, DataError> {
        let mut ids = Vec::new();
        for line in text.lines() {
            encode_line(tokenizer, line, self.line_end, &mut ids)?;
        }
        self.split_ids(&ids)
    }

    /// Tokenizes a file line by line (the text is streamed; only the ids are kept) and cuts
    /// it into splits and blocks.
    ///
    /// # Errors
    /// [`DataError::Io`] for an unreadable file, then as [`LmBlocksConfig::from_text`].
    pub fn from_file(
        &self,
        tokenizer: &dyn Tokenizer,
        path: impl AsRef<Path>,
    ) -> Result<LmSplits, DataError> {
        let mut ids = Vec::new();
        for line in LineReader::open(path)? {
            let (_, line) = line?;
            encode_line(tokenizer, &line, self.line_end, &mut ids)?;
        }
        self.split_ids(&ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_contiguous_and_blocks_full() {
        let ids: Vec<u32> = (0..100).collect();
        let s = LmBlocksConfig::new(10)
            .with_fractions(0.2, 0.1)
            .split_ids(&ids)
            .unwrap();
        assert_eq!(s.train.len(), 7);
        assert_eq!(s.train[0], (0..10).collect::<Vec<_>>());
        assert_eq!(
            s.valid,
            vec![(70..80).collect::<Vec<_>>(), (80..90).collect()]
        );
        assert_eq!(s.test, vec![(90..100).collect::<Vec<_>>()]);
    }

    #[test]
    fn too_little_text_and_bad_fractions_are_errors() {
        let ids: Vec<u32> = (0..15).collect();
        assert!(matches!(
            LmBlocksConfig::new(10).split_ids(&ids),
            Err(DataError::EmptyCorpus { .. })
        ));
        assert!(matches!(
            LmBlocksConfig::new(10)
                .with_fractions(0.0, 0.0)
                .split_ids(&[]),
            Err(DataError::EmptyCorpus { .. })
        ));
        let ok = LmBlocksConfig::new(10)
            .with_fractions(0.0, 0.0)
            .split_ids(&ids);
        assert_eq!(ok.unwrap().train.len(), 1);
        assert!(matches!(
            LmBlocksConfig::new(10)
                .with_fractions(0.6, 0.5)
                .split_ids(&ids),
            Err(DataError::InvalidConfig { .. })
        ));
        assert!(LmBlocksConfig::new(0).split_ids(&ids).is_err());
    }
}
