//! Batching: truncation, padding and padding masks, as tensors on a device.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use crate::dataset::conll::{AlignedExample, IGNORE_LABEL};
use crate::error::{DataError, check};
use crate::tokenizer::{Encoding, Tokenizer, check_ids};

/// The length a batch is padded to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// The longest sequence of the batch (dynamic length: no compute wasted on padding).
    Longest,
    /// Always this length (static shapes; sequences must not be longer unless truncated).
    Fixed(usize),
}

/// How sequences are truncated and padded into a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatcherConfig {
    /// The id used for padding.
    pub pad_id: u32,
    /// The longest sequence allowed (usually the model's maximum length). Default: none.
    pub max_length: Option<usize>,
    /// Cut longer sequences to `max_length` (keeping a final special token) instead of
    /// returning [`DataError::SequenceTooLong`]. Default: true.
    pub truncate: bool,
    /// The padded length. Default: [`Padding::Longest`].
    pub padding: Padding,
    /// Round the padded length up to a multiple of this (tensor-core friendly shapes).
    /// Default: none.
    pub pad_to_multiple_of: Option<usize>,
    /// When set, every id must be below it ([`DataError::TokenOutOfRange`] otherwise).
    /// Default: none.
    pub vocab_size: Option<usize>,
}

impl BatcherConfig {
    /// Dynamic padding with `pad_id`, no maximum length.
    pub fn new(pad_id: u32) -> Self {
        Self {
            pad_id,
            max_length: None,
            truncate: true,
            padding: Padding::Longest,
            pad_to_multiple_of: None,
            vocab_size: None,
        }
    }

    /// Sets the maximum length.
    pub fn with_max_length(mut self, max_length: usize) -> Self {
        self.max_length = Some(max_length);
        self
    }

    /// Turns truncation on or off.
    pub fn with_truncate(mut self, truncate: bool) -> Self {
        self.truncate = truncate;
        self
    }

    /// Sets the padding.
    pub fn with_padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// Rounds padded lengths up to a multiple of `multiple`.
    pub fn with_pad_to_multiple_of(mut self, multiple: usize) -> Self {
        self.pad_to_multiple_of = Some(multiple);
        self
    }

    /// Checks ids against the vocabulary size.
    pub fn with_vocab_size(mut self, vocab_size: usize) -> Self {
        self.vocab_size = Some(vocab_size);
        self
    }

    /// Validates the configuration.
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] for zero lengths or multiples, a fixed length above
    /// `max_length`, or a padding id outside the vocabulary.
    pub fn init(self) -> Result<Batcher, DataError> {
        let what = "BatcherConfig";
        check(self.max_length != Some(0), what, || {
            "max_length must be positive".into()
        })?;
        check(self.pad_to_multiple_of != Some(0), what, || {
            "pad_to_multiple_of must be positive".into()
        })?;
        if let Padding::Fixed(n) = self.padding {
            check(n > 0, what, || {
                "a fixed padding length must be positive".into()
            })?;
            check(self.max_length.is_none_or(|m| n <= m), what, || {
                format!("fixed length {n} exceeds max_length {:?}", self.max_length)
            })?;
        }
        check(
            self.vocab_size.is_none_or(|v| (self.pad_id as usize) < v),
            what,
            || {
                format!(
                    "pad_id {} is outside the vocabulary {:?}",
                    self.pad_id, self.vocab_size
                )
            },
        )?;
        Ok(Batcher { config: self })
    }
}

/// A padded batch of token sequences on a device.
///
/// # Shapes
/// - `input_ids`, `type_ids`: `[batch_size, seq_length]`
/// - `padding_mask`: `[batch_size, seq_length]`, `true` at padding (masked out, burn's
///   convention)
#[derive(Clone, Debug)]
pub struct TokenBatch {
    /// Token ids, padded with the padding id.
    pub input_ids: Tensor<2, Int>,
    /// Segment ids (0 for padding).
    pub type_ids: Tensor<2, Int>,
    /// `true` where the position is padding.
    pub padding_mask: Tensor<2, Bool>,
    /// The unpadded length of each sequence (after truncation).
    pub lengths: Vec<usize>,
}

/// Host-side result of padding: row-major buffers ready to become tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaddedRows {
    /// Number of sequences.
    pub batch_size: usize,
    /// Padded length.
    pub seq_length: usize,
    /// `batch_size * seq_length` ids.
    pub ids: Vec<i64>,
    /// `batch_size * seq_length` segment ids.
    pub type_ids: Vec<i64>,
    /// `batch_size * seq_length` flags, `true` at padding.
    pub padding: Vec<bool>,
    /// Unpadded lengths.
    pub lengths: Vec<usize>,
}

impl PaddedRows {
    /// Moves the buffers to `device`.
    pub fn to_batch(&self, device: &Device) -> TokenBatch {
        let shape = [self.batch_size, self.seq_length];
        TokenBatch {
            input_ids: Tensor::from_data(TensorData::new(self.ids.clone(), shape), device),
            type_ids: Tensor::from_data(TensorData::new(self.type_ids.clone(), shape), device),
            padding_mask: Tensor::from_data(TensorData::new(self.padding.clone(), shape), device),
            lengths: self.lengths.clone(),
        }
    }
}

/// Turns encodings into padded tensors.
///
/// ```
/// use lmforge_data::batcher::BatcherConfig;
/// use lmforge_data::tokenizer::{CharTokenizer, Tokenizer};
///
/// # let device = lmforge_device::device_from_env().unwrap();
/// let tokenizer = CharTokenizer::train("abc", &["<pad>"], Default::default())?;
/// let batcher = BatcherConfig::new(0).with_max_length(4).init()?;
/// let batch = batcher.encode_texts(&tokenizer, &["abcabc", "ab"], &device)?;
/// assert_eq!(batch.input_ids.dims(), [2, 4]); // the first text is truncated to 4
/// assert_eq!(batch.lengths, [4, 2]);
/// let mask: Vec<bool> = batch.padding_mask.int().into_data().iter::<i64>().map(|v| v != 0).collect();
/// assert_eq!(mask, [false, false, false, false, false, false, true, true]);
/// # Ok::<(), lmforge_data::DataError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batcher {
    config: BatcherConfig,
}

impl Batcher {
    /// The configuration.
    pub fn config(&self) -> &BatcherConfig {
        &self.config
    }

    /// Truncates (or rejects) one encoding according to the configuration.
    fn fit(&self, mut encoding: Encoding) -> Result<Encoding, DataError> {
        if let Some(v) = self.config.vocab_size {
            encoding.check_ids(v)?;
        }
        let limit = match (self.config.max_length, self.config.padding) {
            (Some(m), _) => Some(m),
            (None, Padding::Fixed(n)) => Some(n),
            (None, Padding::Longest) => None,
        };
        if let Some(max) = limit
            && encoding.len() > max
        {
            if !self.config.truncate {
                return Err(DataError::SequenceTooLong {
                    length: encoding.len(),
                    max,
                });
            }
            encoding.truncate(max);
        }
        Ok(encoding)
    }

    fn padded_length(&self, longest: usize) -> usize {
        let base = match self.config.padding {
            Padding::Longest => longest,
            Padding::Fixed(n) => n,
        };
        match self.config.pad_to_multiple_of {
            Some(m) => base.div_ceil(m) * m,
            None => base,
        }
    }

    /// Truncates and pads on the host.
    ///
    /// # Errors
    /// [`DataError::EmptyCorpus`] for an empty batch; [`DataError::SequenceTooLong`] when
    /// truncation is off; [`DataError::TokenOutOfRange`] when `vocab_size` is set.
    pub fn pad(&self, encodings: &[Encoding]) -> Result<PaddedRows, DataError> {
        if encodings.is_empty() {
            return Err(DataError::EmptyCorpus {
                what: "a batch needs at least one sequence".to_string(),
            });
        }
        let fitted: Vec<Encoding> = encodings
            .iter()
            .map(|e| self.fit(e.clone()))
            .collect::<Result<_, _>>()?;
        let longest = fitted.iter().map(Encoding::len).max().unwrap_or(0);
        let seq_length = self.padded_length(longest);
        let batch_size = fitted.len();
        let mut rows = PaddedRows {
            batch_size,
            seq_length,
            ids: vec![i64::from(self.config.pad_id); batch_size * seq_length],
            type_ids: vec![0; batch_size * seq_length],
            padding: vec![true; batch_size * seq_length],
            lengths: Vec::with_capacity(batch_size),
        };
        for (b, e) in fitted.iter().enumerate() {
            let start = b * seq_length;
            for (t, (&id, &type_id)) in e.ids.iter().zip(&e.type_ids).enumerate() {
                rows.ids[start + t] = i64::from(id);
                rows.type_ids[start + t] = i64::from(type_id);
                rows.padding[start + t] = false;
            }
            rows.lengths.push(e.len());
        }
        Ok(rows)
    }

    /// Truncates, pads and moves a batch of encodings to `device`.
    ///
    /// # Errors
    /// As [`Batcher::pad`].
    pub fn batch(&self, encodings: &[Encoding], device: &Device) -> Result<TokenBatch, DataError> {
        Ok(self.pad(encodings)?.to_batch(device))
    }

    /// Like [`Batcher::batch`] for plain id sequences (e.g. language-model blocks).
    ///
    /// # Errors
    /// As [`Batcher::pad`].
    pub fn batch_ids(&self, rows: &[Vec<u32>], device: &Device) -> Result<TokenBatch, DataError> {
        let encodings: Vec<Encoding> = rows
            .iter()
            .map(|ids| Encoding {
                ids: ids.clone(),
                type_ids: vec![0; ids.len()],
                word_ids: vec![None; ids.len()],
                special_tokens_mask: vec![false; ids.len()],
            })
            .collect();
        self.batch(&encodings, device)
    }

    /// Encodes `texts` with the tokenizer's special tokens, then batches them.
    ///
    /// # Errors
    /// Tokenizer errors, then as [`Batcher::pad`].
    pub fn encode_texts(
        &self,
        tokenizer: &dyn Tokenizer,
        texts: &[&str],
        device: &Device,
    ) -> Result<TokenBatch, DataError> {
        let encodings = tokenizer.encode_batch(texts, true)?;
        self.batch(&encodings, device)
    }

    /// Batches token-classification examples: the token batch and the labels, padded with
    /// [`IGNORE_LABEL`] and truncated like the tokens.
    ///
    /// # Shapes
    /// - returns: the batch and labels `[batch_size, seq_length]`
    ///
    /// # Errors
    /// As [`Batcher::pad`].
    pub fn batch_token_labels(
        &self,
        examples: &[AlignedExample],
        device: &Device,
    ) -> Result<(TokenBatch, Tensor<2, Int>), DataError> {
        let mut fitted = Vec::with_capacity(examples.len());
        for example in examples {
            let mut example = example.clone();
            let encoding = self.fit(example.encoding.clone())?;
            example.truncate(encoding.len());
            fitted.push(example);
        }
        let encodings: Vec<Encoding> = fitted.iter().map(|e| e.encoding.clone()).collect();
        let rows = self.pad(&encodings)?;
        let mut labels = vec![IGNORE_LABEL; rows.batch_size * rows.seq_length];
        for (b, example) in fitted.iter().enumerate() {
            let start = b * rows.seq_length;
            labels[start..start + example.labels.len()].copy_from_slice(&example.labels);
        }
        let shape = [rows.batch_size, rows.seq_length];
        Ok((
            rows.to_batch(device),
            Tensor::from_data(TensorData::new(labels, shape), device),
        ))
    }
}

/// Class ids as a tensor (sequence classification and NSP targets).
///
/// # Shapes
/// - returns: `[labels.len()]`
pub fn labels_tensor(labels: &[i64], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(labels.to_vec(), [labels.len()]), device)
}

/// Checks a batch of id rows against a vocabulary size (e.g. before an embedding lookup).
///
/// # Errors
/// [`DataError::TokenOutOfRange`] with the first offending id.
pub fn check_rows(rows: &[Vec<u32>], vocab_size: usize) -> Result<(), DataError> {
    rows.iter().try_for_each(|r| check_ids(r, vocab_size))
}

#[cfg(test)]
mod tests {
    use lmforge_device::testing::reference_device;

    use super::*;

    fn encoding(ids: &[u32], last_special: bool) -> Encoding {
        let n = ids.len();
        let mut special = vec![false; n];
        if last_special {
            special[n - 1] = true;
        }
        Encoding {
            ids: ids.to_vec(),
            type_ids: vec![0; n],
            word_ids: vec![None; n],
            special_tokens_mask: special,
        }
    }

    fn ints(t: Tensor<2, Int>) -> Vec<i64> {
        t.into_data().try_into_vec_as::<i64>().unwrap()
    }

    #[test]
    fn dynamic_padding_masks_and_multiples() {
        let d = reference_device();
        let batcher = BatcherConfig::new(0)
            .with_pad_to_multiple_of(4)
            .init()
            .unwrap();
        let batch = batcher
            .batch(
                &[encoding(&[5, 6, 7, 8, 9], false), encoding(&[5], false)],
                d,
            )
            .unwrap();
        assert_eq!(batch.input_ids.dims(), [2, 8]);
        assert_eq!(batch.lengths, [5, 1]);
        let ids = ints(batch.input_ids);
        assert_eq!(&ids[8..], [5, 0, 0, 0, 0, 0, 0, 0]);
        let mask = batch.padding_mask.into_data().try_to_vec::<bool>().unwrap();
        assert_eq!(mask.iter().filter(|m| **m).count(), 3 + 7);
        assert!(!mask[0] && mask[5] && !mask[8] && mask[9]);

        // batch size 1, fixed length
        let fixed = BatcherConfig::new(1)
            .with_padding(Padding::Fixed(6))
            .init()
            .unwrap();
        let batch = fixed.batch(&[encoding(&[3, 4], false)], d).unwrap();
        assert_eq!(ints(batch.input_ids), [3, 4, 1, 1, 1, 1]);
    }

    #[test]
    fn truncation_limits_and_errors() {
        let d = reference_device();
        let long = encoding(&[2, 5, 6, 7, 3], true);
        let batcher = BatcherConfig::new(0).with_max_length(3).init().unwrap();
        let batch = batcher.batch(std::slice::from_ref(&long), d).unwrap();
        assert_eq!(ints(batch.input_ids), [2, 5, 3]);

        let strict = BatcherConfig::new(0)
            .with_max_length(3)
            .with_truncate(false)
            .init()
            .unwrap();
        assert!(matches!(
            strict.batch(std::slice::from_ref(&long), d),
            Err(DataError::SequenceTooLong { length: 5, max: 3 })
        ));
        let checked = BatcherConfig::new(0).with_vocab_size(7).init().unwrap();
        assert!(matches!(
            checked.batch(&[long], d),
            Err(DataError::TokenOutOfRange {
                id: 7,
                vocab_size: 7
            })
        ));
        assert!(matches!(
            checked.batch(&[], d),
            Err(DataError::EmptyCorpus { .. })
        ));
        assert!(BatcherConfig::new(9).with_vocab_size(5).init().is_err());
        assert!(
            BatcherConfig::new(0)
                .with_max_length(4)
                .with_padding(Padding::Fixed(8))
                .init()
                .is_err()
        );
        assert!(check_rows(&[vec![1, 2], vec![9]], 9).is_err());
    }

    #[test]
    fn token_labels_are_truncated_and_padded_with_ignore() {
        let d = reference_device();
        let a = AlignedExample {
            encoding: encoding(&[2, 5, 6, 7, 3], true),
            labels: vec![-100, 1, -100, 0, -100],
        };
        let b = AlignedExample {
            encoding: encoding(&[2, 8, 3], true),
            labels: vec![-100, 2, -100],
        };
        let batcher = BatcherConfig::new(0).with_max_length(4).init().unwrap();
        let (batch, labels) = batcher.batch_token_labels(&[a, b], d).unwrap();
        assert_eq!(ints(batch.input_ids), [2, 5, 6, 3, 2, 8, 3, 0]);
        assert_eq!(ints(labels), [-100, 1, -100, -100, -100, 2, -100, -100]);
        let t = labels_tensor(&[1, 0], d);
        assert_eq!(t.dims(), [2]);
    }
}
