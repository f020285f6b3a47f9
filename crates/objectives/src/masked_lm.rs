//! Masked language modelling (BERT): choosing the tokens to predict and corrupting them, and
//! the loss over the chosen tokens.

use std::collections::HashSet;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::classification::token_classification_loss;
use crate::cross_entropy::{CrossEntropy, IGNORE_INDEX, LossOutput};
use crate::error::{ObjectiveError, check};

/// How tokens are chosen and corrupted for masked language modelling.
///
/// Defaults follow BERT: each candidate token (or word, with `whole_word`) is chosen with
/// probability 0.15; a chosen token becomes `[MASK]` with probability 0.8, a random token with
/// probability 0.1, and stays unchanged otherwise (0.1). Special tokens (including padding) are
/// never chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskingConfig {
    /// Id of the mask token.
    pub mask_id: u32,
    /// Vocabulary size: every input id must be below it; random replacements are drawn from it.
    pub vocab_size: usize,
    /// Ids that are never chosen nor drawn as random replacements: padding, `[CLS]`, `[SEP]`,
    /// `[MASK]`, `[UNK]`, ...
    pub special_ids: Vec<u32>,
    /// Probability of choosing a token (or a word). Default: 0.15.
    pub probability: f64,
    /// Fraction of chosen tokens replaced by the mask token. Default: 0.8.
    pub mask_fraction: f64,
    /// Fraction of chosen tokens replaced by a random non-special token. Default: 0.1. The rest
    /// (`1 - mask_fraction - random_fraction`) keep their id.
    pub random_fraction: f64,
    /// Choose whole words: all sub-tokens of a word are chosen together. Needs word ids.
    /// Default: false.
    pub whole_word: bool,
}

impl MaskingConfig {
    /// BERT's defaults for a vocabulary of `vocab_size` with the given mask and special ids.
    pub fn new(mask_id: u32, vocab_size: usize, special_ids: Vec<u32>) -> Self {
        Self {
            mask_id,
            vocab_size,
            special_ids,
            probability: 0.15,
            mask_fraction: 0.8,
            random_fraction: 0.1,
            whole_word: false,
        }
    }

    /// Sets the probability of choosing a token (or word).
    pub fn with_probability(mut self, probability: f64) -> Self {
        self.probability = probability;
        self
    }

    /// Sets the mask / random fractions of chosen tokens (the rest stay unchanged).
    pub fn with_fractions(mut self, mask_fraction: f64, random_fraction: f64) -> Self {
        self.mask_fraction = mask_fraction;
        self.random_fraction = random_fraction;
        self
    }

    /// Chooses whole words instead of single tokens.
    pub fn with_whole_word(mut self, whole_word: bool) -> Self {
        self.whole_word = whole_word;
        self
    }

    /// Builds a [`Masker`] whose random stream starts from `seed`.
    ///
    /// # Errors
    /// [`ObjectiveError::InvalidConfig`] for probabilities outside `[0, 1]`, fractions that sum
    /// to more than 1, a mask id outside the vocabulary, or a vocabulary with no non-special
    /// token to draw random replacements from.
    pub fn init(&self, seed: u64) -> Result<Masker, ObjectiveError> {
        let what = "MaskingConfig";
        let unit = |p: f64| (0.0..=1.0).contains(&p);
        check(unit(self.probability), what, || {
            format!("probability must lie in [0, 1], got {}", self.probability)
        })?;
        check(
            unit(self.mask_fraction)
                && unit(self.random_fraction)
                && self.mask_fraction + self.random_fraction <= 1.0 + 1e-12,
            what,
            || {
                format!(
                    "mask_fraction {} and random_fraction {} must be in [0, 1] and sum to at most 1",
                    self.mask_fraction, self.random_fraction
                )
            },
        )?;
        check((self.mask_id as usize) < self.vocab_size, what, || {
            format!(
                "mask_id {} is not below vocab_size {}",
                self.mask_id, self.vocab_size
            )
        })?;
        let special: HashSet<u32> = self.special_ids.iter().copied().collect();
        let replacements: Vec<u32> = (0..self.vocab_size as u32)
            .filter(|id| !special.contains(id) && *id != self.mask_id)
            .collect();
        check(
            !replacements.is_empty() || self.random_fraction == 0.0,
            what,
            || "every vocabulary id is special: no random replacement can be drawn".to_string(),
        )?;
        Ok(Masker {
            config: self.clone(),
            special,
            replacements,
            rng: StdRng::seed_from_u64(seed),
        })
    }
}

/// Corrupted input ids and the labels to predict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskedTokens {
    /// Input ids after masking, one row per sequence.
    pub input_ids: Vec<Vec<u32>>,
    /// The original id at every chosen position, [`IGNORE_INDEX`] elsewhere.
    pub labels: Vec<Vec<i64>>,
}

impl MaskedTokens {
    /// The rows as tensors `(input_ids, labels)`.
    ///
    /// # Shapes
    /// - returns: two `[batch_size, seq_length]` tensors
    ///
    /// # Panics
    /// When the rows have different lengths (pad them first) or there are none.
    pub fn to_tensors(&self, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
        let batch_size = self.input_ids.len();
        assert!(batch_size > 0, "MaskedTokens::to_tensors: no rows");
        let seq_length = self.input_ids[0].len();
        assert!(
            self.input_ids.iter().all(|r| r.len() == seq_length),
            "MaskedTokens::to_tensors: rows have different lengths; pad them first"
        );
        let ids: Vec<i64> = self
            .input_ids
            .iter()
            .flatten()
            .map(|&i| i64::from(i))
            .collect();
        let labels: Vec<i64> = self.labels.iter().flatten().copied().collect();
        let shape = [batch_size, seq_length];
        (
            Tensor::from_data(TensorData::new(ids, shape), device),
            Tensor::from_data(TensorData::new(labels, shape), device),
        )
    }
}

/// Seeded masked-LM corruption (see [`MaskingConfig`]); one stream of random numbers across
/// calls, so a run is reproducible from its seed.
///
/// ```
/// use lmforge_objectives::masked_lm::MaskingConfig;
///
/// // Vocabulary of 100 ids; 0 = [PAD], 1 = [CLS], 2 = [SEP], 3 = [MASK].
/// let mut masker = MaskingConfig::new(3, 100, vec![0, 1, 2, 3]).init(42)?;
/// let rows = vec![vec![1, 10, 11, 12, 13, 2, 0, 0]];
/// let masked = masker.mask(&rows, None)?;
/// for (pos, &label) in masked.labels[0].iter().enumerate() {
///     if label != -100 {
///         assert_eq!(label, i64::from(rows[0][pos])); // chosen: the label is the original id
///         assert!((1..5).contains(&pos)); // never [CLS], [SEP] or padding
///     }
/// }
/// # Ok::<(), lmforge_objectives::ObjectiveError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Masker {
    config: MaskingConfig,
    special: HashSet<u32>,
    replacements: Vec<u32>,
    rng: StdRng,
}

impl Masker {
    /// The configuration.
    pub fn config(&self) -> &MaskingConfig {
        &self.config
    }

    /// Chooses and corrupts tokens of every row.
    ///
    /// `word_ids` gives, for each token, the index of the word it belongs to (`None` for
    /// special tokens), as produced by lmforge-data's tokenizers; consecutive tokens with the
    /// same word id form one word. It is required when `whole_word` is set and ignored
    /// otherwise.
    ///
    /// # Errors
    /// [`ObjectiveError::TokenOutOfRange`] for an id not below `vocab_size`;
    /// [`ObjectiveError::LengthMismatch`] when `word_ids` does not match the rows;
    /// [`ObjectiveError::InvalidConfig`] when `whole_word` is set without `word_ids`.
    pub fn mask(
        &mut self,
        rows: &[Vec<u32>],
        word_ids: Option<&[Vec<Option<u32>>]>,
    ) -> Result<MaskedTokens, ObjectiveError> {
        let word_ids = if self.config.whole_word {
            let w = word_ids.ok_or_else(|| ObjectiveError::InvalidConfig {
                what: "MaskingConfig",
                reason: "whole_word masking needs word ids".to_string(),
            })?;
            if w.len() != rows.len() {
                return Err(ObjectiveError::LengthMismatch {
                    what: "rows vs word_ids",
                    left: rows.len(),
                    right: w.len(),
                });
            }
            Some(w)
        } else {
            None
        };
        let mut input_ids = Vec::with_capacity(rows.len());
        let mut labels = Vec::with_capacity(rows.len());
        for (r, row) in rows.iter().enumerate() {
            if let Some(&id) = row
                .iter()
                .find(|&&id| id as usize >= self.config.vocab_size)
            {
                return Err(ObjectiveError::TokenOutOfRange {
                    id: i64::from(id),
                    vocab_size: self.config.vocab_size,
                });
            }
            let units = match word_ids {
                Some(w) => {
                    if w[r].len() != row.len() {
                        return Err(ObjectiveError::LengthMismatch {
                            what: "row vs its word ids",
                            left: row.len(),
                            right: w[r].len(),
                        });
                    }
                    self.word_units(row, &w[r])
                }
                None => self.token_units(row),
            };
            let (ids, row_labels) = self.corrupt(row, &units);
            input_ids.push(ids);
            labels.push(row_labels);
        }
        Ok(MaskedTokens { input_ids, labels })
    }

    /// Like [`Masker::mask`] for a tensor of ids (read back to the host), returning tensors on
    /// the same device.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch_size, seq_length]`
    /// - returns: `(input_ids, labels)`, both `[batch_size, seq_length]`
    ///
    /// # Errors
    /// As [`Masker::mask`], plus [`ObjectiveError::TokenOutOfRange`] for negative ids.
    pub fn mask_tensor(
        &mut self,
        input_ids: Tensor<2, Int>,
        word_ids: Option<&[Vec<Option<u32>>]>,
    ) -> Result<(Tensor<2, Int>, Tensor<2, Int>), ObjectiveError> {
        let [batch_size, seq_length] = input_ids.dims();
        let device = input_ids.device();
        let values = crate::metrics::int_values(input_ids);
        let mut rows = Vec::with_capacity(batch_size);
        for chunk in values.chunks(seq_length.max(1)).take(batch_size) {
            let row: Result<Vec<u32>, _> = chunk
                .iter()
                .map(|&v| {
                    u32::try_from(v).map_err(|_| ObjectiveError::TokenOutOfRange {
                        id: v,
                        vocab_size: self.config.vocab_size,
                    })
                })
                .collect();
            rows.push(row?);
        }
        Ok(self.mask(&rows, word_ids)?.to_tensors(&device))
    }

    /// One unit per non-special token.
    fn token_units(&self, row: &[u32]) -> Vec<Vec<usize>> {
        (0..row.len())
            .filter(|&i| !self.special.contains(&row[i]))
            .map(|i| vec![i])
            .collect()
    }

    /// One unit per run of consecutive non-special tokens with the same word id; tokens with
    /// no word id are units of their own.
    fn word_units(&self, row: &[u32], word_ids: &[Option<u32>]) -> Vec<Vec<usize>> {
        let mut units: Vec<Vec<usize>> = Vec::new();
        let mut previous: Option<u32> = None;
        for (i, (&id, &word)) in row.iter().zip(word_ids).enumerate() {
            if self.special.contains(&id) {
                previous = None;
                continue;
            }
            match (word, previous) {
                (Some(w), Some(p)) if w == p => units.last_mut().expect("a unit").push(i),
                _ => units.push(vec![i]),
            }
            previous = word;
        }
        units
    }

    fn corrupt(&mut self, row: &[u32], units: &[Vec<usize>]) -> (Vec<u32>, Vec<i64>) {
        let mut ids = row.to_vec();
        let mut labels = vec![IGNORE_INDEX; row.len()];
        for unit in units {
            if self.rng.random::<f64>() >= self.config.probability {
                continue;
            }
            for &i in unit {
                labels[i] = i64::from(row[i]);
                let r = self.rng.random::<f64>();
                if r < self.config.mask_fraction {
                    ids[i] = self.config.mask_id;
                } else if r < self.config.mask_fraction + self.config.random_fraction {
                    let k = self.rng.random_range(0..self.replacements.len());
                    ids[i] = self.replacements[k];
                }
            }
        }
        (ids, labels)
    }
}

/// Masked-LM loss: cross-entropy at the chosen positions (labels other than the ignore
/// index), no shift.
///
/// # Shapes
/// - `logits`: `[batch_size, seq_length, vocab_size]`
/// - `labels`: `[batch_size, seq_length]`
pub fn masked_lm_loss(
    logits: Tensor<3>,
    labels: Tensor<2, Int>,
    loss: &CrossEntropy,
) -> LossOutput {
    token_classification_loss(logits, labels, loss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_configs_are_rejected() {
        let base = MaskingConfig::new(3, 10, vec![0, 1, 2, 3]);
        assert!(base.clone().with_probability(1.5).init(0).is_err());
        assert!(base.clone().with_fractions(0.8, 0.3).init(0).is_err());
        assert!(MaskingConfig::new(10, 10, vec![]).init(0).is_err());
        assert!(MaskingConfig::new(1, 2, vec![0, 1]).init(0).is_err());
        assert!(base.init(0).is_ok());
    }

    #[test]
    fn out_of_range_ids_and_missing_word_ids_are_errors() {
        let mut masker = MaskingConfig::new(3, 10, vec![0, 3]).init(0).unwrap();
        let err = masker.mask(&[vec![4, 10]], None).unwrap_err();
        assert_eq!(
            err,
            ObjectiveError::TokenOutOfRange {
                id: 10,
                vocab_size: 10
            }
        );
        let mut whole = MaskingConfig::new(3, 10, vec![0, 3])
            .with_whole_word(true)
            .init(0)
            .unwrap();
        assert!(whole.mask(&[vec![4, 5]], None).is_err());
        assert!(whole.mask(&[vec![4, 5]], Some(&[vec![Some(0)]])).is_err());
    }

    /// With probability 1 and mask fraction 1, every non-special token becomes the mask id.
    #[test]
    fn probability_one_masks_every_candidate() {
        let mut masker = MaskingConfig::new(3, 10, vec![0, 1, 2, 3])
            .with_probability(1.0)
            .with_fractions(1.0, 0.0)
            .init(7)
            .unwrap();
        let out = masker.mask(&[vec![1, 5, 6, 2, 0]], None).unwrap();
        assert_eq!(out.input_ids, vec![vec![1, 3, 3, 2, 0]]);
        assert_eq!(out.labels, vec![vec![-100, 5, 6, -100, -100]]);
    }

    #[test]
    fn same_seed_same_masks() {
        let rows = vec![(4..60).collect::<Vec<u32>>(); 4];
        let config = MaskingConfig::new(3, 100, vec![0, 1, 2, 3]);
        let a = config.init(5).unwrap().mask(&rows, None).unwrap();
        let b = config.init(5).unwrap().mask(&rows, None).unwrap();
        let c = config.init(6).unwrap().mask(&rows, None).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
