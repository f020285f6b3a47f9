//! [`Task`]s for lmforge's models: causal LM (GPT, LSTM LM, and the LSTM LM with its state
//! carried across batches), masked LM and BERT pre-training, sequence and token
//! classification, extractive question answering, sequence-to-sequence (translation) and
//! denoising auto-encoding.

use burn::tensor::{Bool, Int, Tensor, TensorData};
use lmforge_data::batcher::{Batcher, PaddedRows};
use lmforge_data::dataset::conll::AlignedExample;
use lmforge_data::dataset::squad::QaFeature;
use lmforge_data::tokenizer::Encoding;
use lmforge_models::bert::{
    BertForMaskedLm, BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
    BertForTokenClassification, BertInput,
};
use lmforge_models::gpt::Gpt;
use lmforge_models::lstm_lm::LstmLm;
use lmforge_objectives::causal_lm::causal_lm_loss;
use lmforge_objectives::classification::{
    next_sentence_loss, sequence_classification_loss, span_loss, token_classification_loss,
};
use lmforge_objectives::masked_lm::MaskingConfig;
use lmforge_objectives::{CrossEntropy, IGNORE_INDEX};
use rand::Rng;

use crate::task::{StepContext, StepOutput, Task, TaskError};

mod seq2seq;
mod stateful;

pub use seq2seq::{DenoisingTask, Seq2SeqTask};
pub use stateful::{StatefulLstmTask, stream_windows};

/// A model that maps token ids to next-token logits.
pub trait CausalLm: burn::module::Module {
    /// Logits `[batch_size, seq_length, vocab_size]` for `tokens` `[batch_size, seq_length]`;
    /// `mask_pad` is `true` at (trailing) padding.
    fn causal_logits(&self, tokens: Tensor<2, Int>, mask_pad: Option<Tensor<2, Bool>>)
    -> Tensor<3>;
}

impl CausalLm for Gpt {
    fn causal_logits(
        &self,
        tokens: Tensor<2, Int>,
        mask_pad: Option<Tensor<2, Bool>>,
    ) -> Tensor<3> {
        self.forward(tokens, mask_pad)
    }
}

impl CausalLm for LstmLm {
    /// Each batch starts from a zero state; trailing padding cannot influence earlier steps.
    fn causal_logits(
        &self,
        tokens: Tensor<2, Int>,
        _mask_pad: Option<Tensor<2, Bool>>,
    ) -> Tensor<3> {
        self.forward(tokens, None).0
    }
}

/// Next-token prediction on rows of token ids (e.g. the blocks of
/// [`LmBlocksConfig`](lmforge_data::dataset::lm_blocks::LmBlocksConfig)); rows shorter than the longest
/// are padded with `pad_id` and the padding is neither attended to nor predicted. Evaluation
/// steps also count next-token accuracy (the arg-max equals the next token).
#[derive(Clone, Debug)]
pub struct CausalLmTask {
    /// The padding id.
    pub pad_id: u32,
    /// The loss (ignore index, label smoothing).
    pub loss: CrossEntropy,
}

impl CausalLmTask {
    /// Plain cross-entropy; `pad_id` pads short rows.
    pub fn new(pad_id: u32) -> Self {
        Self {
            pad_id,
            loss: CrossEntropy::new(),
        }
    }
}

impl<M: CausalLm> Task<M> for CausalLmTask {
    type Item = Vec<u32>;

    fn step(
        &self,
        model: &M,
        items: &[Vec<u32>],
        context: &mut StepContext<'_>,
    ) -> Result<StepOutput, TaskError> {
        let seq_length = items.iter().map(Vec::len).max().unwrap_or(0);
        if seq_length < 2 {
            return Err("causal LM rows need at least 2 tokens".into());
        }
        let batch_size = items.len();
        let mut ids = vec![i64::from(self.pad_id); batch_size * seq_length];
        let mut targets = vec![IGNORE_INDEX; batch_size * seq_length];
        let mut padding = vec![true; batch_size * seq_length];
        for (b, row) in items.iter().enumerate() {
            for (t, &id) in row.iter().enumerate() {
                ids[b * seq_length + t] = i64::from(id);
                targets[b * seq_length + t] = i64::from(id);
                padding[b * seq_length + t] = false;
            }
        }
        let shape = [batch_size, seq_length];
        let device = context.device;
        let padded = items.iter().any(|r| r.len() < seq_length);
        let tokens = Tensor::from_data(TensorData::new(ids, shape), device);
        let mask_pad = padded.then(|| Tensor::from_data(TensorData::new(padding, shape), device));
        let logits = model.causal_logits(tokens, mask_pad);
        let targets = Tensor::from_data(TensorData::new(targets, shape), device);
        let n_tokens = items.iter().map(Vec::len).sum();
        // Next-token accuracy in evaluation only (training steps skip the arg-max).
        let hits = (!context.training).then(|| {
            let [b, t, _] = logits.dims();
            correct(
                logits.clone().detach().slice([0..b, 0..t - 1]),
                targets.clone().slice([0..b, 1..t]),
            )
        });
        let out = StepOutput::from_loss(causal_lm_loss(logits, targets, &self.loss), n_tokens);
        Ok(match hits {
            Some(hits) => out.with_correct(hits),
            None => out,
        })
    }
}

/// Number of arg-max predictions of `logits` (classes on the last axis) equal to `labels`;
/// ignored labels (negative) never count.
fn correct<const D: usize, const L: usize>(
    logits: Tensor<D>,
    labels: Tensor<L, Int>,
) -> Tensor<1, Int> {
    let predicted: Tensor<L, Int> = logits.argmax(D - 1).squeeze_dim(D - 1);
    predicted.equal(labels).int().sum()
}

fn rows_u32(rows: &PaddedRows) -> Vec<Vec<u32>> {
    rows.ids
        .chunks(rows.seq_length.max(1))
        .map(|row| row.iter().map(|&id| id as u32).collect())
        .collect()
}

fn padded_word_ids(items: &[Encoding], seq_length: usize) -> Vec<Vec<Option<u32>>> {
    items
        .iter()
        .map(|e| {
            let mut w: Vec<Option<u32>> = e.word_ids.iter().copied().take(seq_length).collect();
            w.resize(seq_length, None);
            w
        })
        .collect()
}

/// Masked-LM: each batch is masked afresh (BERT's 80/10/10 scheme, seeded from the run) and
/// the model predicts the original tokens. Counts masked-token accuracy.
#[derive(Clone, Debug)]
pub struct MaskedLmTask {
    /// Pads (and truncates) the batch.
    pub batcher: Batcher,
    /// How tokens are chosen and replaced.
    pub masking: MaskingConfig,
    /// The loss.
    pub loss: CrossEntropy,
}

impl MaskedLmTask {
    /// A task with plain cross-entropy.
    pub fn new(batcher: Batcher, masking: MaskingConfig) -> Self {
        Self {
            batcher,
            masking,
            loss: CrossEntropy::new(),
        }
    }

    /// Masks a batch; returns the encoder input, the masked positions (flat indices
    /// `b * seq_length + s`) with their labels, and the number of real tokens.
    fn masked_input(
        &self,
        items: &[Encoding],
        context: &mut StepContext<'_>,
    ) -> Result<(BertInput, Vec<usize>, Tensor<1, Int>, usize), TaskError> {
        let rows = self.batcher.pad(items)?;
        let mut masker = self.masking.init(context.rng.random())?;
        let word_ids = self
            .masking
            .whole_word
            .then(|| padded_word_ids(items, rows.seq_length));
        let masked = masker.mask(&rows_u32(&rows), word_ids.as_deref())?;
        let (input_ids, _) = masked.to_tensors(context.device);
        // The loss reads the logits at the chosen positions only, so the head runs on those
        // rows alone. A batch with nothing chosen keeps one ignored row: its loss is the
        // empty loss, as over the whole batch.
        let (mut positions, mut labels) = (Vec::new(), Vec::new());
        for (p, &label) in masked.labels.iter().flatten().enumerate() {
            if label != IGNORE_INDEX {
                positions.push(p);
                labels.push(label);
            }
        }
        if positions.is_empty() {
            positions.push(0);
            labels.push(IGNORE_INDEX);
        }
        let n = labels.len();
        let labels = Tensor::from_data(TensorData::new(labels, [n]), context.device);
        let batch = rows.to_batch(context.device);
        let input = BertInput::new(input_ids)
            .with_token_types(batch.type_ids)
            .with_mask_pad(batch.padding_mask);
        Ok((input, positions, labels, batch.lengths.iter().sum()))
    }
}

impl Task<BertForMaskedLm> for MaskedLmTask {
    type Item = Encoding;

    fn step(
        &self,
        model: &BertForMaskedLm,
        items: &[Encoding],
        context: &mut StepContext<'_>,
    ) -> Result<StepOutput, TaskError> {
        let (input, positions, labels, tokens) = self.masked_input(items, context)?;
        let logits = model.forward_at(input, &positions).logits;
        let hits = correct(logits.clone().detach(), labels.clone());
        let loss = self.loss.forward(logits, labels);
        Ok(StepOutput::from_loss(loss, tokens).with_correct(hits))
    }
}

/// BERT pre-training: masked LM plus next-sentence prediction on sentence pairs labelled
/// 0 (is next) or 1 (random). The loss is the sum of both; the evaluation numbers (loss,
/// perplexity, accuracy) are the masked LM's.
impl Task<BertForPreTraining> for MaskedLmTask {
    type Item = (Encoding, i64);

    fn step(
        &self,
        model: &BertForPreTraining,
        items: &[(Encoding, i64)],
        context: &mut StepContext<'_>,
    ) -> Result<StepOutput, TaskError> {
        let encodings: Vec<Encoding> = items.iter().map(|(e, _)| e.clone()).collect();
        let labels: Vec<i64> = items.iter().map(|(_, l)| *l).collect();
        let (input, positions, mlm_labels, tokens) = self.masked_input(&encodings, context)?;
        let (mlm, nsp_logits) = model.forward_at(input, &positions);
        let hits = correct(mlm.logits.clone().detach(), mlm_labels.clone());
        let mlm = self.loss.forward(mlm.logits, mlm_labels);
        let nsp_labels = Tensor::from_data(TensorData::new(labels, [items.len()]), context.device);
        let nsp = next_sentence_loss(nsp_logits, nsp_labels, &self.loss);
        let mut output = StepOutput::from_loss(mlm, tokens).with_correct(hits);
        output.loss = output.loss + nsp.loss;
        Ok(output)
    }
}

/// Sequence classification on `(encoding, label)` pairs; counts accuracy.
#[derive(Clone, Debug)]
pub struct SequenceClassificationTask {
    /// Pads (and truncates) the batch.
    pub batcher: Batcher,
    /// The loss.
    pub loss: CrossEntropy,
}

impl SequenceClassificationTask {
    /// A task with plain cross-entropy.
    pub fn new(batcher: Batcher) -> Self {
        Self {
            batcher,
            loss: CrossEntropy::new(),
        }
    }
}

impl Task<BertForSequenceClassification> for SequenceClassificationTask {
    type Item = (Encoding, i64);

    fn step(
        &self,
        model: &BertForSequenceClassification,
        items: &[(Encoding, i64)],
        context: &mut StepContext<'_>,
    ) -> Result<StepOutput, TaskError> {
        let encodings: Vec<Encoding> = items.iter().map(|(e, _)| e.clone()).collect();
        let batch = self.batcher.batch(&encodings, context.device)?;
        let labels: Vec<i64> = items.iter().map(|(_, l)| *l).collect();
        let labels = Tensor::from_data(TensorData::new(labels, [items.len()]), context.device);
        let tokens = batch.lengths.iter().sum();
        let input = BertInput::new(batch.input_ids)
            .with_token_types(batch.type_ids)
            .with_mask_pad(batch.padding_mask);
        let logits = model.forward(input).logits;
        let hits = correct(logits.clone().detach(), labels.clone());
        let loss = sequence_classification_loss(logits, labels, &self.loss);
        Ok(StepOutput::from_loss(loss, tokens).with_correct(hits))
    }
}

/// Token classification (NER) on sub-word-aligned examples; counts token accuracy over the
/// labelled positions (entity F1 is computed from predictions, see the `bert_ner` example).
#[derive(Clone, Debug)]
pub struct TokenClassificationTask {
    /// Pads (and truncates) the batch.
    pub batcher: Batcher,
    /// The loss.
    pub loss: CrossEntropy,
}

impl TokenClassificationTask {
    /// A task with plain cross-entropy.
    pub fn new(batcher: Batcher) -> Self {
        Self {
            batcher,
            loss: CrossEntropy::new(),
        }
    }
}

impl Task<BertForTokenClassification> for TokenClassificationTask {
    type Item = AlignedExample;

    fn step(
        &self,
        model: &BertForTokenClassification,
        items: &[AlignedExample],
        context: &mut StepContext<'_>,
    ) -> Result<StepOutput, TaskError> {
        let (batch, labels) = self.batcher.batch_token_labels(items, context.device)?;
        let tokens = batch.lengths.iter().sum();
        let input = BertInput::new(batch.input_ids)
            .with_token_types(batch.type_ids)
            .with_mask_pad(batch.padding_mask);
        let logits = model.forward(input).logits;
        let hits = correct(logits.clone().detach(), labels.clone());
        let loss = token_classification_loss(logits, labels, &self.loss);
        Ok(StepOutput::from_loss(loss, tokens).with_correct(hits))
    }
}

/// Extractive question answering on [`QaFeature`]s (a question and a window of its context,
/// from [`QaWindowConfig::features`](lmforge_data::dataset::squad::QaWindowConfig::features)):
/// the span loss of the answer's start and end tokens. Counts the windows whose predicted start
/// and end (arg-max of each) are both right. Answer text, exact match and F1 come from the
/// logits through [`best_spans`](lmforge_data::dataset::squad::best_spans) (see the `bert_qa`
/// example).
#[derive(Clone, Debug)]
pub struct QuestionAnsweringTask {
    /// Pads the batch (features must fit its maximum length: windows are cut to size when
    /// they are made, never truncated here).
    pub batcher: Batcher,
    /// The loss of each of the two positions.
    pub loss: CrossEntropy,
}

impl QuestionAnsweringTask {
    /// A task with plain cross-entropy.
    pub fn new(batcher: Batcher) -> Self {
        Self {
            batcher,
            loss: CrossEntropy::new(),
        }
    }
}

impl Task<BertForQuestionAnswering> for QuestionAnsweringTask {
    type Item = QaFeature;

    fn step(
        &self,
        model: &BertForQuestionAnswering,
        items: &[QaFeature],
        context: &mut StepContext<'_>,
    ) -> Result<StepOutput, TaskError> {
        let mut starts = Vec::with_capacity(items.len());
        let mut ends = Vec::with_capacity(items.len());
        for f in items {
            let n = f.encoding.len();
            if f.start_position >= n || f.end_position >= n || f.end_position < f.start_position {
                return Err(format!(
                    "question-answering window of {n} tokens has the answer span {}..={}",
                    f.start_position, f.end_position
                )
                .into());
            }
            if let Some(max) = self.batcher.config().max_length
                && n > max
            {
                return Err(lmforge_data::DataError::SequenceTooLong { length: n, max }.into());
            }
            starts.push(f.start_position as i64);
            ends.push(f.end_position as i64);
        }
        let encodings: Vec<Encoding> = items.iter().map(|f| f.encoding.clone()).collect();
        let batch = self.batcher.batch(&encodings, context.device)?;
        let tokens = batch.lengths.iter().sum();
        let n = items.len();
        let starts = Tensor::<1, Int>::from_data(TensorData::new(starts, [n]), context.device);
        let ends = Tensor::<1, Int>::from_data(TensorData::new(ends, [n]), context.device);
        let input = BertInput::new(batch.input_ids)
            .with_token_types(batch.type_ids)
            .with_mask_pad(batch.padding_mask);
        let out = model.forward(input);
        let predicted = |logits: &Tensor<2>| -> Tensor<1, Int> {
            logits.clone().detach().argmax(1).squeeze_dim(1)
        };
        let hits = predicted(&out.start_logits)
            .equal(starts.clone())
            .int()
            .mul(predicted(&out.end_logits).equal(ends.clone()).int())
            .sum();
        let loss = span_loss(out.start_logits, out.end_logits, starts, ends, &self.loss);
        Ok(StepOutput::from_loss(loss, tokens).with_correct(hits))
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Tensor;
    use lmforge_data::batcher::BatcherConfig;
    use lmforge_device::testing::reference_device;
    use lmforge_models::bert::BertConfig;
    use lmforge_objectives::masked_lm::masked_lm_loss;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn encodings() -> Vec<Encoding> {
        (0..3)
            .map(|r| {
                let mut e = Encoding::default();
                e.push(2, 0, None, true);
                for i in 0..(9 + r) {
                    e.push(5 + ((i * 7 + r * 3) % 25) as u32, 0, Some(i as u32), false);
                }
                e.push(3, 0, None, true);
                e
            })
            .collect()
    }

    /// Evaluation steps count next-token hits (the arg-max of position `t` equals token
    /// `t + 1`; padding never counts), computed here on the host from the model's logits;
    /// training steps count none.
    #[test]
    fn causal_lm_evaluation_counts_next_token_hits() {
        let device = reference_device();
        let model = lmforge_models::lstm_lm::LstmLmConfig::new(7)
            .with_d_embedding(8)
            .with_d_hidden(8)
            .init(device)
            .unwrap();
        // Rows the model itself continues greedily, so every next token is its arg-max (hits
        // are then many, and a shifted comparison would miss them); the second row is
        // shorter: its last target position is padding.
        let argmax =
            |row: &[f32]| (0..row.len()).fold(0, |m, v| if row[v] > row[m] { v } else { m });
        let greedy = |start: u32, len: usize| {
            let mut row = vec![start];
            while row.len() < len {
                let ids: Vec<i64> = row.iter().map(|&v| i64::from(v)).collect();
                let n = ids.len();
                let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), device);
                let logits: Vec<f32> = model
                    .forward(tokens, None)
                    .0
                    .into_data()
                    .try_to_vec()
                    .unwrap();
                row.push(argmax(&logits[(n - 1) * 7..]) as u32);
            }
            row
        };
        let items: Vec<Vec<u32>> = vec![greedy(1, 7), greedy(6, 6)];
        let task = CausalLmTask::new(0);
        let mut rng = StdRng::seed_from_u64(0);
        let mut step = |training| {
            let mut context = StepContext {
                device,
                rng: &mut rng,
                training,
                position: 0,
            };
            task.step(&model, &items, &mut context).unwrap()
        };
        assert!(step(true).correct.is_none());
        let hits = step(false).correct.unwrap().into_scalar::<i64>();

        let ids: Vec<i64> = [&items[0][..], &items[1][..], &[0]]
            .concat()
            .into_iter()
            .map(i64::from)
            .collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 7]), device);
        let logits: Vec<f32> = model
            .forward(tokens, None)
            .0
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let mut want = 0;
        for (b, row) in items.iter().enumerate() {
            for t in 0..row.len() - 1 {
                let best = argmax(&logits[(b * 7 + t) * 7..][..7]);
                want += i64::from(best as u32 == row[t + 1]);
            }
        }
        assert_eq!(want, 11, "every target is the model's own arg-max");
        assert_eq!(hits, want);
    }

    /// The masked-LM step runs the head on the masked positions only; its loss, hit count and
    /// gradients equal those of the loss over the full logits with the same masks.
    #[test]
    fn masked_lm_step_equals_the_loss_over_every_position() {
        let device = &reference_device().clone().autodiff();
        device.seed(5);
        let vocab = 30;
        let model = BertConfig::tiny(vocab)
            .with_d_model(16)
            .with_n_heads(2)
            .with_d_ff(32)
            .init_masked_lm(device)
            .unwrap();
        let batcher = BatcherConfig::new(0).with_vocab_size(vocab).init().unwrap();
        let masking = MaskingConfig::new(4, vocab, vec![0, 1, 2, 3, 4]).with_probability(0.3);
        let task = MaskedLmTask::new(batcher, masking.clone());
        let items = encodings();
        let mut rng = StdRng::seed_from_u64(11);
        let mut context = StepContext {
            device,
            rng: &mut rng,
            training: true,
            position: 0,
        };
        let out = task.step(&model, &items, &mut context).unwrap();

        // The same masks (the task draws the masker's seed first), every position's logits.
        let seed = StdRng::seed_from_u64(11).random();
        let rows = batcher.pad(&items).unwrap();
        let masked = masking
            .init(seed)
            .unwrap()
            .mask(&rows_u32(&rows), None)
            .unwrap();
        let (input_ids, labels) = masked.to_tensors(device);
        let batch = rows.to_batch(device);
        let input = BertInput::new(input_ids)
            .with_token_types(batch.type_ids)
            .with_mask_pad(batch.padding_mask);
        let logits = model.forward(input).logits;
        let hits = correct(logits.clone().detach(), labels.clone());
        let full = masked_lm_loss(logits, labels, &CrossEntropy::new());

        let chosen = masked
            .labels
            .iter()
            .flatten()
            .filter(|&&l| l != IGNORE_INDEX);
        assert!(chosen.count() >= 5, "too few masked positions to compare");
        assert_eq!(
            out.count.clone().into_scalar::<i64>(),
            full.count.clone().into_scalar::<i64>()
        );
        assert_eq!(
            out.correct.clone().unwrap().into_scalar::<i64>(),
            hits.into_scalar::<i64>()
        );
        let (a, b) = (
            out.loss.clone().into_scalar::<f32>(),
            full.loss.clone().into_scalar::<f32>(),
        );
        assert!((a - b).abs() <= 1e-6 * b.abs(), "loss {a} vs {b}");
        let (a, b) = (
            out.nll_sum.into_scalar::<f32>(),
            full.nll_sum.into_scalar::<f32>(),
        );
        assert!((a - b).abs() <= 1e-6 * b.abs(), "nll sum {a} vs {b}");
        // The gradients of the head's transform (reached through the chosen rows only) and
        // of the word table (the tied decoder: every vocabulary row).
        let (ga, gb) = (out.loss.backward(), full.loss.backward());
        let gap = |param: &burn::module::Param<Tensor<2>>| {
            let (a, b) = (param.grad(&ga).unwrap(), param.grad(&gb).unwrap());
            let scale: f32 = b.clone().abs().max().into_scalar();
            let gap: f32 = (a - b).abs().max().into_scalar();
            assert!(scale > 0.0, "no gradient reached the parameter");
            gap / scale
        };
        let transform = gap(&model.mlm.transform.weight);
        let word = gap(&model.bert.embeddings.word.weight);
        assert!(transform <= 1e-5 && word <= 1e-5, "{transform} {word}");
    }
}
