//! Causal (next-token) language-modelling loss.

use burn::tensor::{Int, Tensor};

use crate::cross_entropy::{CrossEntropy, LossOutput};

/// Next-token cross-entropy: position `t` of `logits` predicts `targets[t + 1]`.
///
/// `targets` is usually the input ids themselves, with padding (and anything else that must not
/// be predicted) replaced by the ignore index; the shift happens here, as in HuggingFace's
/// `*ForCausalLM` models. The last position of each row predicts nothing and the first target
/// of each row is never predicted. Equivalent to PyTorch's
/// `F.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten(), ...)`.
///
/// # Shapes
/// - `logits`: `[batch_size, seq_length, vocab_size]`
/// - `targets`: `[batch_size, seq_length]`
///
/// # Panics
/// When the batch or sequence dimensions of `logits` and `targets` differ.
pub fn causal_lm_loss(
    logits: Tensor<3>,
    targets: Tensor<2, Int>,
    loss: &CrossEntropy,
) -> LossOutput {
    let [batch_size, seq_length, vocab_size] = logits.dims();
    assert_eq!(
        [batch_size, seq_length],
        targets.dims(),
        "causal_lm_loss: `logits` is [{batch_size}, {seq_length}, {vocab_size}] but `targets` is {:?}",
        targets.dims()
    );
    let n = batch_size * seq_length.saturating_sub(1);
    if n == 0 {
        return LossOutput::empty(logits.sum() * 0.0);
    }
    let logits = logits
        .slice([0..batch_size, 0..seq_length - 1])
        .reshape([n, vocab_size]);
    let targets = targets.slice([0..batch_size, 1..seq_length]).reshape([n]);
    loss.forward(logits, targets)
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;
    use lmforge_device::testing::reference_device;

    use super::*;

    /// Vocabulary 2; logits at t = 0 favour token 1 (ln 3 vs 0), so with targets [0, 1]
    /// the only counted pair is (t = 0 predicts 1): loss = −ln(3/4). The logits at t = 1
    /// (which would cost a lot for any target) are never used.
    #[test]
    fn shifts_targets_by_one() {
        let d = reference_device();
        let logits = Tensor::<3>::from_data(
            TensorData::new(vec![0.0f32, 3f32.ln(), 100.0, -100.0], [1, 2, 2]),
            d,
        );
        let targets = Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 1], [1, 2]), d);
        let out = causal_lm_loss(logits, targets, &CrossEntropy::new());
        assert_eq!(out.count_value(), 1);
        assert!((out.loss_value() + (0.75f64).ln()).abs() < 1e-6);
    }

    #[test]
    fn single_token_rows_give_zero_loss_with_count_zero() {
        let d = reference_device();
        let logits = Tensor::<3>::zeros([3, 1, 5], d);
        let targets = Tensor::<2, Int>::zeros([3, 1], d);
        let out = causal_lm_loss(logits, targets, &CrossEntropy::new());
        assert_eq!(out.count_value(), 0);
        assert_eq!(out.loss_value(), 0.0);
    }
}
