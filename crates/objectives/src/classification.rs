//! Losses of classification heads: whole sequences (sentiment, NSP), single tokens (NER,
//! part-of-speech tagging, masked-LM predictions) and answer spans (extractive question
//! answering).

use burn::tensor::{Int, Tensor};

use crate::cross_entropy::{CrossEntropy, LossOutput};

/// Cross-entropy of one class per sequence.
///
/// Labels equal to the ignore index (e.g. unlabelled examples) do not count.
///
/// # Shapes
/// - `logits`: `[batch_size, n_classes]`
/// - `labels`: `[batch_size]`
///
/// # Panics
/// When the batch sizes differ.
pub fn sequence_classification_loss(
    logits: Tensor<2>,
    labels: Tensor<1, Int>,
    loss: &CrossEntropy,
) -> LossOutput {
    loss.forward(logits, labels)
}

/// Next-sentence prediction: a two-class sequence classification with label `0` = the second
/// segment follows the first ("IsNext") and `1` = it is a random sentence ("NotNext"), as in
/// BERT and HuggingFace's `BertForPreTraining`.
///
/// # Shapes
/// - `logits`: `[batch_size, 2]`
/// - `labels`: `[batch_size]`
///
/// # Panics
/// When `logits` does not have two classes or the batch sizes differ.
pub fn next_sentence_loss(
    logits: Tensor<2>,
    labels: Tensor<1, Int>,
    loss: &CrossEntropy,
) -> LossOutput {
    let [_, n_classes] = logits.dims();
    assert_eq!(
        n_classes, 2,
        "next_sentence_loss: `logits` must have 2 classes, has {n_classes}"
    );
    loss.forward(logits, labels)
}

/// Cross-entropy of one class per token, without any shift.
///
/// Tokens labelled with the ignore index do not count: padding, special tokens, and the
/// sub-tokens after the first one of each word when labels are aligned to words. The masked-LM
/// loss is this function with `n_classes = vocab_size` and labels from
/// [`Masker::mask`](crate::masked_lm::Masker::mask).
///
/// # Shapes
/// - `logits`: `[batch_size, seq_length, n_classes]`
/// - `labels`: `[batch_size, seq_length]`
///
/// # Panics
/// When the batch or sequence dimensions differ.
pub fn token_classification_loss(
    logits: Tensor<3>,
    labels: Tensor<2, Int>,
    loss: &CrossEntropy,
) -> LossOutput {
    let [batch_size, seq_length, n_classes] = logits.dims();
    assert_eq!(
        [batch_size, seq_length],
        labels.dims(),
        "token_classification_loss: `logits` is [{batch_size}, {seq_length}, {n_classes}] but \
         `labels` is {:?}",
        labels.dims()
    );
    let n = batch_size * seq_length;
    loss.forward(logits.reshape([n, n_classes]), labels.reshape([n]))
}

/// Extractive question answering: the mean of the cross-entropies of the answer's start and
/// end positions over the sequence, as HuggingFace's `BertForQuestionAnswering` computes it
/// (`(start_loss + end_loss) / 2`). Every reported sum (`sum`, `nll_sum`) is the mean of the
/// two sums and `count` the number of counted examples, so the evaluation loss is that
/// same mean.
///
/// Positions equal to the ignore index do not count (windows without an answer are usually
/// labelled with position 0, the `[CLS]` token, instead).
///
/// # Shapes
/// - `start_logits`, `end_logits`: `[batch_size, seq_length]`
/// - `start_positions`, `end_positions`: `[batch_size]`, each below `seq_length` (or ignored)
///
/// # Panics
/// When the shapes disagree.
pub fn span_loss(
    start_logits: Tensor<2>,
    end_logits: Tensor<2>,
    start_positions: Tensor<1, Int>,
    end_positions: Tensor<1, Int>,
    loss: &CrossEntropy,
) -> LossOutput {
    assert_eq!(
        start_logits.dims(),
        end_logits.dims(),
        "span_loss: start and end logits differ in shape"
    );
    let [batch_size, _] = start_logits.dims();
    for positions in [&start_positions, &end_positions] {
        assert_eq!(
            positions.dims(),
            [batch_size],
            "span_loss: {batch_size} rows of logits but positions of shape {:?}",
            positions.dims()
        );
    }
    let start = loss.forward(start_logits, start_positions);
    let end = loss.forward(end_logits, end_positions);
    LossOutput {
        loss: (start.loss + end.loss).div_scalar(2.0),
        sum: (start.sum + end.sum).div_scalar(2.0),
        nll_sum: (start.nll_sum + end.nll_sum).div_scalar(2.0),
        count: start.count,
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;
    use lmforge_device::testing::reference_device;

    use super::*;

    /// Uniform logits over `c` classes cost ln c per counted label.
    #[test]
    fn uniform_logits_cost_log_classes() {
        let d = reference_device();
        let logits = Tensor::<3>::zeros([2, 3, 4], d);
        let labels = Tensor::<2, Int>::from_data(
            TensorData::new(vec![0i64, -100, 3, 2, 1, -100], [2, 3]),
            d,
        );
        let out = token_classification_loss(logits, labels, &CrossEntropy::new());
        assert_eq!(out.count_value(), 4);
        assert!((out.loss_value() - 4f64.ln()).abs() < 1e-6);
        assert!((out.sum_value() - 4.0 * 4f64.ln()).abs() < 1e-5);

        let logits = Tensor::<2>::zeros([1, 2], d);
        let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64], [1]), d);
        let out = next_sentence_loss(logits, labels, &CrossEntropy::new());
        assert!((out.loss_value() - 2f64.ln()).abs() < 1e-6);
    }

    /// Against a hand computation: -log softmax(start)[s] and -log softmax(end)[e], averaged
    /// over the two and over the rows.
    #[test]
    fn span_loss_is_the_mean_of_start_and_end_cross_entropies() {
        let d = reference_device();
        let starts = [[0.5f32, -1.0, 2.0, 0.0], [1.5, 0.3, -0.7, 0.2]];
        let ends = [[-0.2f32, 0.9, 0.1, 1.1], [0.0, 2.5, -1.5, 0.4]];
        let (s_pos, e_pos) = ([2usize, 0], [3usize, 1]);
        let nll = |row: &[f32; 4], k: usize| {
            let log_sum = row.iter().map(|&v| f64::from(v).exp()).sum::<f64>().ln();
            log_sum - f64::from(row[k])
        };
        let expected = (0..2)
            .map(|r| (nll(&starts[r], s_pos[r]) + nll(&ends[r], e_pos[r])) / 2.0)
            .sum::<f64>()
            / 2.0;
        let flat =
            |m: [[f32; 4]; 2]| Tensor::<2>::from_data(TensorData::new(m.concat(), [2, 4]), d);
        let pos = |p: [usize; 2]| {
            Tensor::<1, Int>::from_data(TensorData::new(p.map(|v| v as i64).to_vec(), [2]), d)
        };
        let out = span_loss(
            flat(starts),
            flat(ends),
            pos(s_pos),
            pos(e_pos),
            &CrossEntropy::new(),
        );
        assert_eq!(out.count_value(), 2);
        assert!(
            (out.loss_value() - expected).abs() < 1e-6,
            "{} vs {expected}",
            out.loss_value()
        );
        assert!((out.nll_sum_value() - 2.0 * expected).abs() < 1e-5);
    }

    #[test]
    #[should_panic(expected = "2 classes")]
    fn nsp_needs_two_classes() {
        let d = reference_device();
        let labels = Tensor::<1, Int>::zeros([1], d);
        next_sentence_loss(Tensor::<2>::zeros([1, 3], d), labels, &CrossEntropy::new());
    }
}
