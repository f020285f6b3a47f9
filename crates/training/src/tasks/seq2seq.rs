//! Encoder-decoder tasks: translation with teacher forcing, and denoising auto-encoding.

use burn::tensor::{Bool, Int, Tensor, TensorData};
use lmforge_data::DataError;
use lmforge_models::seq2seq::{Seq2Seq, Seq2SeqInput};
use lmforge_objectives::denoising::DenoisingConfig;
use lmforge_objectives::{CrossEntropy, IGNORE_INDEX};

use super::correct;
use crate::task::{StepContext, StepOutput, Task, TaskError};

/// Sequence-to-sequence training with teacher forcing on `(source, target)` pairs of token ids
/// without special tokens.
///
/// The encoder reads `source + [eos]`; the decoder reads `[bos] + target` and learns to
/// predict `target + [eos]`. Rows are padded with `pad_id` on both sides; padding is masked in
/// the encoder, the decoder and the cross-attention, and never predicted. Evaluation steps
/// count target-token accuracy (teacher-forced arg-max).
///
/// Every id and length is checked on the host against the model's vocabularies and
/// `max_seq_length` before anything runs on the device.
#[derive(Clone, Debug)]
pub struct Seq2SeqTask {
    /// Padding id (both sides).
    pub pad_id: u32,
    /// The decoder's start id.
    pub bos_id: u32,
    /// The end-of-sequence id (appended to sources and targets).
    pub eos_id: u32,
    /// The loss (e.g. with label smoothing 0.1, as the original Transformer).
    pub loss: CrossEntropy,
}

impl Seq2SeqTask {
    /// Plain cross-entropy with these special ids.
    pub fn new(pad_id: u32, bos_id: u32, eos_id: u32) -> Self {
        Self {
            pad_id,
            bos_id,
            eos_id,
            loss: CrossEntropy::new(),
        }
    }

    /// Uses `loss` (label smoothing, ignore index).
    pub fn with_loss(mut self, loss: CrossEntropy) -> Self {
        self.loss = loss;
        self
    }

    fn check(&self, model: &Seq2Seq, items: &[(Vec<u32>, Vec<u32>)]) -> Result<(), DataError> {
        if items.is_empty() {
            return Err(DataError::EmptyCorpus {
                what: "a sequence-to-sequence batch has no pair".into(),
            });
        }
        let config = model.config();
        let (src_vocab, tgt_vocab) = (config.src_vocab_size, config.tgt_vocab_size());
        let max = config.max_seq_length;
        let specials = [self.pad_id, self.bos_id, self.eos_id];
        for (source, target) in items {
            if source.is_empty() {
                return Err(DataError::EmptyCorpus {
                    what: "a sequence-to-sequence source has no token".into(),
                });
            }
            for length in [source.len(), target.len()] {
                if length + 1 > max {
                    return Err(DataError::SequenceTooLong {
                        length: length + 1,
                        max,
                    });
                }
            }
            lmforge_data::tokenizer::check_ids(source, src_vocab)?;
            lmforge_data::tokenizer::check_ids(target, tgt_vocab)?;
        }
        for id in specials {
            lmforge_data::tokenizer::check_ids(&[id], src_vocab.min(tgt_vocab))?;
        }
        Ok(())
    }
}

/// Pads `rows` to the longest with `fill`: ids, the padding mask (true = padding), the shape,
/// and whether any row is short.
fn pad_rows(rows: &[Vec<i64>], fill: i64) -> (Vec<i64>, Vec<bool>, [usize; 2], bool) {
    let length = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = vec![fill; rows.len() * length];
    let mut padding = vec![true; rows.len() * length];
    for (b, row) in rows.iter().enumerate() {
        ids[b * length..b * length + row.len()].copy_from_slice(row);
        padding[b * length..b * length + row.len()].fill(false);
    }
    let short = rows.iter().any(|r| r.len() < length);
    (ids, padding, [rows.len(), length], short)
}

impl Task<Seq2Seq> for Seq2SeqTask {
    type Item = (Vec<u32>, Vec<u32>);

    fn step(
        &self,
        model: &Seq2Seq,
        items: &[(Vec<u32>, Vec<u32>)],
        context: &mut StepContext<'_>,
    ) -> Result<StepOutput, TaskError> {
        self.check(model, items)?;
        let device = context.device;
        let (pad, bos, eos) = (
            i64::from(self.pad_id),
            i64::from(self.bos_id),
            i64::from(self.eos_id),
        );
        let sources: Vec<Vec<i64>> = items
            .iter()
            .map(|(s, _)| s.iter().map(|&i| i64::from(i)).chain([eos]).collect())
            .collect();
        let inputs: Vec<Vec<i64>> = items
            .iter()
            .map(|(_, t)| {
                [bos]
                    .into_iter()
                    .chain(t.iter().map(|&i| i64::from(i)))
                    .collect()
            })
            .collect();
        let labels: Vec<Vec<i64>> = items
            .iter()
            .map(|(_, t)| t.iter().map(|&i| i64::from(i)).chain([eos]).collect())
            .collect();
        let mask = |padding: Vec<bool>, shape: [usize; 2], short: bool| {
            short.then(|| Tensor::<2, Bool>::from_data(TensorData::new(padding, shape), device))
        };
        let (src, src_padding, src_shape, src_short) = pad_rows(&sources, pad);
        let (tgt, tgt_padding, tgt_shape, tgt_short) = pad_rows(&inputs, pad);
        let (labels, _, _, _) = pad_rows(&labels, IGNORE_INDEX);
        let tokens = items.iter().map(|(s, t)| s.len() + t.len() + 2).sum();
        let mut input = Seq2SeqInput::new(
            Tensor::from_data(TensorData::new(src, src_shape), device),
            Tensor::from_data(TensorData::new(tgt, tgt_shape), device),
        );
        input.src_mask_pad = mask(src_padding, src_shape, src_short);
        input.tgt_mask_pad = mask(tgt_padding, tgt_shape, tgt_short);
        let logits = model.forward(input);
        let labels: Tensor<2, Int> = Tensor::from_data(TensorData::new(labels, tgt_shape), device);
        let hits = (!context.training).then(|| correct(logits.clone().detach(), labels.clone()));
        let [b, t, v] = logits.dims();
        let loss = self
            .loss
            .forward(logits.reshape([b * t, v]), labels.reshape([b * t]));
        let out = StepOutput::from_loss(loss, tokens);
        Ok(match hits {
            Some(hits) => out.with_correct(hits),
            None => out,
        })
    }
}

/// Denoising auto-encoding on sentences of token ids (no special tokens): each step corrupts
/// every sentence afresh with [`DenoisingConfig`]'s noise, drawn from the step's seeded
/// generator (so a resumed run draws the same noise), and trains the model to reconstruct the
/// original through a [`Seq2SeqTask`].
#[derive(Clone, Debug)]
pub struct DenoisingTask {
    /// The reconstruction task.
    pub seq2seq: Seq2SeqTask,
    /// The noise.
    pub noise: DenoisingConfig,
}

impl DenoisingTask {
    /// Reconstruction through `seq2seq` from sentences corrupted by `noise`.
    ///
    /// # Errors
    /// [`ObjectiveError::InvalidConfig`](lmforge_objectives::ObjectiveError) for noise
    /// probabilities outside `[0, 1)`.
    pub fn new(
        seq2seq: Seq2SeqTask,
        noise: DenoisingConfig,
    ) -> Result<Self, lmforge_objectives::ObjectiveError> {
        noise.validate()?;
        Ok(Self { seq2seq, noise })
    }
}

impl Task<Seq2Seq> for DenoisingTask {
    type Item = Vec<u32>;

    fn step(
        &self,
        model: &Seq2Seq,
        items: &[Vec<u32>],
        context: &mut StepContext<'_>,
    ) -> Result<StepOutput, TaskError> {
        let pairs: Vec<(Vec<u32>, Vec<u32>)> = items
            .iter()
            .map(|s| (self.noise.corrupt(s, context.rng), s.clone()))
            .collect();
        self.seq2seq.step(model, &pairs, context)
    }
}

#[cfg(test)]
mod tests {
    use lmforge_device::testing::reference_device;
    use lmforge_models::seq2seq::Seq2SeqConfig;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn model() -> Seq2Seq {
        Seq2SeqConfig::tiny(30)
            .with_d_model(16)
            .with_n_heads(2)
            .with_d_ff(32)
            .with_max_seq_length(12)
            // Weights large enough that attention is far from uniform, so a missing mask shows.
            .with_init_std(0.3)
            .init(reference_device())
            .unwrap()
    }

    fn step(task: &Seq2SeqTask, model: &Seq2Seq, items: &[(Vec<u32>, Vec<u32>)]) -> (f64, usize) {
        let mut rng = StdRng::seed_from_u64(0);
        let mut context = StepContext {
            device: reference_device(),
            rng: &mut rng,
            training: false,
            position: 0,
        };
        let out = task.step(model, items, &mut context).unwrap();
        let nll = f64::from(out.nll_sum.into_scalar::<f32>());
        let count = out.count.into_scalar::<i64>();
        (nll, count as usize)
    }

    /// A padded batch gives each pair the loss it has alone: padding on either side changes
    /// nothing (masks in the encoder, decoder and cross-attention; padded labels ignored), and
    /// each pair predicts its target plus the end-of-sequence id.
    #[test]
    fn padded_batch_equals_pairs_alone() {
        let model = model();
        let task = Seq2SeqTask::new(0, 1, 2);
        let pairs = vec![
            (vec![5, 6, 7, 8, 9, 10], vec![11, 12]),
            (vec![13], vec![14, 15, 16, 17, 18, 19, 20]),
            (vec![21, 22, 23], vec![24, 25, 26]),
        ];
        let (batch_nll, batch_count) = step(&task, &model, &pairs);
        let (mut nll, mut count) = (0.0, 0);
        for pair in &pairs {
            let (n, c) = step(&task, &model, std::slice::from_ref(pair));
            assert_eq!(c, pair.1.len() + 1);
            nll += n;
            count += c;
        }
        assert_eq!(batch_count, count);
        assert!(
            (batch_nll - nll).abs() < 1e-4 * nll.abs(),
            "batch {batch_nll} vs alone {nll}"
        );
    }

    /// Bad pairs are refused with a typed error before the model runs.
    #[test]
    fn bad_pairs_are_typed_errors() {
        let model = model();
        let task = Seq2SeqTask::new(0, 1, 2);
        let mut rng = StdRng::seed_from_u64(0);
        let mut context = StepContext {
            device: reference_device(),
            rng: &mut rng,
            training: true,
            position: 0,
        };
        let mut fails = |items: Vec<(Vec<u32>, Vec<u32>)>| -> DataError {
            let err = task.step(&model, &items, &mut context).unwrap_err();
            *err.downcast::<DataError>().expect("a DataError")
        };
        assert!(matches!(
            fails(vec![(vec![5, 30], vec![6])]),
            DataError::TokenOutOfRange { id: 30, .. }
        ));
        assert!(matches!(
            fails(vec![(vec![5], vec![6, 99])]),
            DataError::TokenOutOfRange { id: 99, .. }
        ));
        assert!(matches!(
            fails(vec![(vec![5; 12], vec![6])]),
            DataError::SequenceTooLong {
                length: 13,
                max: 12
            }
        ));
        assert!(matches!(
            fails(vec![(vec![5], vec![6; 12])]),
            DataError::SequenceTooLong {
                length: 13,
                max: 12
            }
        ));
        assert!(matches!(
            fails(vec![(vec![], vec![6])]),
            DataError::EmptyCorpus { .. }
        ));
        assert!(matches!(fails(vec![]), DataError::EmptyCorpus { .. }));
        let bad_special = Seq2SeqTask::new(0, 1, 40);
        let err = bad_special
            .step(&model, &[(vec![5], vec![6])], &mut context)
            .unwrap_err();
        assert!(err.to_string().contains("40"), "{err}");
    }

    /// The noise comes from the step's generator: the same seed gives the same loss, another
    /// seed another corruption; the targets (the clean sentences) and their count are the same.
    #[test]
    fn denoising_draws_noise_from_the_step_generator() {
        let model = model();
        let task = DenoisingTask::new(Seq2SeqTask::new(0, 1, 2), DenoisingConfig::new(3)).unwrap();
        let sentences: Vec<Vec<u32>> = (0..4)
            .map(|r| (0..8).map(|i| 5 + (i * 3 + r) % 24).collect())
            .collect();
        let run = |seed: u64| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut context = StepContext {
                device: reference_device(),
                rng: &mut rng,
                training: false,
                position: 0,
            };
            let out = task.step(&model, &sentences, &mut context).unwrap();
            let nll = out.nll_sum.into_scalar::<f32>();
            let count = out.count.into_scalar::<i64>();
            (nll, count)
        };
        let (a, b, c) = (run(7), run(7), run(8));
        assert_eq!(a, b);
        assert_eq!(a.1, 4 * 9);
        assert_eq!(c.1, a.1);
        assert_ne!(a.0, c.0);
    }
}
