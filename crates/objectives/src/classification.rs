//! Losses of classification heads: whole sequences (sentiment, NSP) and single tokens (NER,
//! part-of-speech tagging, masked-LM predictions).

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

    #[test]
    #[should_panic(expected = "2 classes")]
    fn nsp_needs_two_classes() {
        let d = reference_device();
        let labels = Tensor::<1, Int>::zeros([1], d);
        next_sentence_loss(Tensor::<2>::zeros([1, 3], d), labels, &CrossEntropy::new());
    }
}
