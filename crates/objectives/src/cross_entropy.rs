//! Cross-entropy with an ignore index and label smoothing, PyTorch-compatible, returning the
//! summed loss and the number of counted targets next to the mean.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Int, Tensor};

use crate::error::{ObjectiveError, check};

/// PyTorch's default ignore index: targets equal to it contribute nothing to the loss.
pub const IGNORE_INDEX: i64 = -100;

/// The result of a loss over a batch of targets, some of which may be ignored.
///
/// The trainer logs `loss` and backpropagates through it; evaluation accumulates `nll_sum` and
/// `count` over a whole split, so perplexity is `exp(Σ nll_sum / Σ count)` over all tokens
/// rather than a mean of batch means (see [`Perplexity`](crate::metrics::Perplexity)).
///
/// # Shapes
/// Every tensor is `[1]`.
#[derive(Clone, Debug)]
pub struct LossOutput {
    /// `sum / count`, the quantity to minimise; `0` when no target is counted (never NaN).
    pub loss: Tensor<1>,
    /// Sum of the per-target losses (including the label-smoothing term, if any).
    pub sum: Tensor<1>,
    /// Sum of the per-target negative log-likelihoods `-log p(target)`, without label
    /// smoothing: the numerator of perplexity. Detached from the autodiff graph.
    pub nll_sum: Tensor<1>,
    /// Number of targets that are not the ignore index.
    pub count: Tensor<1, Int>,
}

impl LossOutput {
    /// The output of a batch without targets: every value 0, still connected to the graph of
    /// `zero` (a zero derived from the logits) so `backward` works.
    pub(crate) fn empty(zero: Tensor<1>) -> Self {
        let device = zero.device();
        Self {
            loss: zero.clone(),
            sum: zero.clone(),
            nll_sum: zero.detach(),
            count: Tensor::zeros([1], &device),
        }
    }

    /// The mean loss read back to the host.
    pub fn loss_value(&self) -> f64 {
        self.loss.clone().into_scalar::<f64>()
    }

    /// The summed loss read back to the host.
    pub fn sum_value(&self) -> f64 {
        self.sum.clone().into_scalar::<f64>()
    }

    /// The summed negative log-likelihood read back to the host.
    pub fn nll_sum_value(&self) -> f64 {
        self.nll_sum.clone().into_scalar::<f64>()
    }

    /// The number of counted targets read back to the host.
    pub fn count_value(&self) -> usize {
        self.count.clone().into_scalar::<i64>().max(0) as usize
    }
}

/// Cross-entropy between logits and integer targets, with PyTorch's semantics for
/// `F.cross_entropy(logits, targets, ignore_index, label_smoothing)`.
///
/// For a counted target `y` over `C` classes with log-probabilities `log p`:
///
/// ```text
/// loss_i = (1 - ε) · (−log p_y) + ε · (1/C) Σ_c (−log p_c)
/// ```
///
/// Targets equal to the ignore index (default [`IGNORE_INDEX`] = −100) are skipped; the mean
/// divides by the number of counted targets. Unlike PyTorch (which returns NaN), a batch with no
/// counted target gives a mean of `0` and a count of `0`.
///
/// ```
/// # use burn::tensor::{Int, Tensor, TensorData};
/// # use lmforge_objectives::CrossEntropy;
/// # let device = lmforge_device::device_from_env().unwrap();
/// let logits = Tensor::<2>::from_data(TensorData::new(vec![0.0f32; 6], [2, 3]), &device);
/// let targets = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, -100], [2]), &device);
/// let out = CrossEntropy::new().forward(logits, targets);
/// assert!((out.loss_value() - 3f64.ln()).abs() < 1e-6); // uniform over 3 classes
/// assert_eq!(out.count_value(), 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrossEntropy {
    ignore_index: i64,
    label_smoothing: f64,
}

impl Default for CrossEntropy {
    fn default() -> Self {
        Self {
            ignore_index: IGNORE_INDEX,
            label_smoothing: 0.0,
        }
    }
}

impl CrossEntropy {
    /// Ignore index −100, no label smoothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Uses `ignore_index` for targets that do not count.
    pub fn with_ignore_index(mut self, ignore_index: i64) -> Self {
        self.ignore_index = ignore_index;
        self
    }

    /// Mixes the one-hot target with the uniform distribution with weight `epsilon`.
    ///
    /// # Errors
    /// [`ObjectiveError::InvalidConfig`] unless `0 <= epsilon <= 1`.
    pub fn with_label_smoothing(mut self, epsilon: f64) -> Result<Self, ObjectiveError> {
        check((0.0..=1.0).contains(&epsilon), "CrossEntropy", || {
            format!("label_smoothing must lie in [0, 1], got {epsilon}")
        })?;
        self.label_smoothing = epsilon;
        Ok(self)
    }

    /// The ignore index.
    pub fn ignore_index(&self) -> i64 {
        self.ignore_index
    }

    /// The label-smoothing weight.
    pub fn label_smoothing(&self) -> f64 {
        self.label_smoothing
    }

    /// The loss over `n` independent predictions.
    ///
    /// Every target must be the ignore index or lie in `[0, n_classes)`; other values are a
    /// programming error (a panic on flex, undefined results on backends without bound
    /// checks). On flex the loss runs as one fused operation
    /// ([`lmforge_layers::cross_entropy_rows`]); elsewhere it is composed from tensor ops.
    ///
    /// # Shapes
    /// - `logits`: `[n, n_classes]`
    /// - `targets`: `[n]`
    ///
    /// # Panics
    /// When the first dimensions of `logits` and `targets` differ.
    pub fn forward(&self, logits: Tensor<2>, targets: Tensor<1, Int>) -> LossOutput {
        let [n, _] = logits.dims();
        let [n_targets] = targets.dims();
        assert_eq!(
            n, n_targets,
            "CrossEntropy: `logits` has {n} rows but `targets` has {n_targets} entries"
        );
        if n == 0 {
            return LossOutput::empty(logits.sum() * 0.0);
        }
        let ignored = targets.clone().equal_elem(self.ignore_index); // [n]
        // On flex: log-softmax, the target's term and the smoothing in one fused pass per row.
        let (per_target, nll) = lmforge_layers::cross_entropy_rows(
            &logits,
            &targets,
            self.ignore_index,
            self.label_smoothing,
        )
        .unwrap_or_else(|| self.composed(logits, targets, ignored.clone()));
        let sum = per_target.sum();
        let count = ignored.bool_not().int().sum();
        let loss = sum.clone() / count.clone().float().clamp_min(1.0);
        LossOutput {
            loss,
            sum,
            nll_sum: nll.sum().detach(),
            count,
        }
    }

    /// Per-target losses and negative log-likelihoods (`[n]` each, 0 where `ignored`) from
    /// tensor operations: every backend.
    fn composed(
        &self,
        logits: Tensor<2>,
        targets: Tensor<1, Int>,
        ignored: Tensor<1, Bool>,
    ) -> (Tensor<1>, Tensor<1>) {
        let [n, n_classes] = logits.dims();
        let safe_targets = targets.mask_fill(ignored.clone(), 0).reshape([n, 1]);
        let log_probs = log_softmax(logits, 1); // [n, n_classes]
        let nll = log_probs.clone().gather(1, safe_targets).neg().reshape([n]);
        let nll = nll.mask_fill(ignored.clone(), 0.0);
        let per_target = if self.label_smoothing > 0.0 {
            let smooth = log_probs.sum_dim(1).reshape([n]).neg() / n_classes as f64;
            let smooth = smooth.mask_fill(ignored, 0.0);
            nll.clone() * (1.0 - self.label_smoothing) + smooth * self.label_smoothing
        } else {
            nll.clone()
        };
        (per_target, nll)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;
    use lmforge_device::testing::reference_device;

    use super::*;

    fn logits(values: Vec<f32>, shape: [usize; 2]) -> Tensor<2> {
        Tensor::from_data(TensorData::new(values, shape), reference_device())
    }

    fn targets(values: Vec<i64>) -> Tensor<1, Int> {
        let n = values.len();
        Tensor::from_data(TensorData::new(values, [n]), reference_device())
    }

    /// Two classes with logits (0, ln 3): p = (1/4, 3/4). Target 1 gives −ln(3/4); with
    /// ε = 0.5 the loss is 0.5·(−ln 3/4) + 0.5·(−ln(1/4) − ln(3/4))/2.
    #[test]
    fn hand_derived_values_with_and_without_smoothing() {
        let x = logits(vec![0.0, 3f32.ln()], [1, 2]);
        let plain = CrossEntropy::new().forward(x.clone(), targets(vec![1]));
        let nll = -(0.75f64).ln();
        assert!((plain.loss_value() - nll).abs() < 1e-6);
        let smooth = CrossEntropy::new()
            .with_label_smoothing(0.5)
            .unwrap()
            .forward(x, targets(vec![1]));
        let expected = 0.5 * nll + 0.5 * (-(0.25f64).ln() - (0.75f64).ln()) / 2.0;
        assert!((smooth.loss_value() - expected).abs() < 1e-6);
        // The perplexity numerator ignores smoothing.
        assert!((smooth.nll_sum_value() - nll).abs() < 1e-6);
    }

    #[test]
    fn ignored_targets_do_not_count_and_all_ignored_gives_zero() {
        let x = logits(vec![1.0, 2.0, 3.0, -1.0, 0.5, 4.0], [3, 2]);
        let some = CrossEntropy::new().forward(x.clone(), targets(vec![0, -100, 1]));
        assert_eq!(some.count_value(), 2);
        assert!((some.loss_value() - some.sum_value() / 2.0).abs() < 1e-6);

        let none = CrossEntropy::new()
            .with_label_smoothing(0.1)
            .unwrap()
            .forward(x, targets(vec![-100, -100, -100]));
        assert_eq!(none.count_value(), 0);
        assert_eq!(none.loss_value(), 0.0);
        assert_eq!(none.sum_value(), 0.0);
    }

    #[test]
    fn custom_ignore_index_and_invalid_smoothing() {
        let x = logits(vec![0.0, 0.0], [1, 2]);
        let out = CrossEntropy::new()
            .with_ignore_index(0)
            .forward(x, targets(vec![0]));
        assert_eq!(out.count_value(), 0);
        assert!(CrossEntropy::new().with_label_smoothing(1.5).is_err());
        assert!(CrossEntropy::new().with_label_smoothing(-0.1).is_err());
    }

    /// The gradient of `loss` with respect to `x`.
    fn gradient(x: &Tensor<2>, loss: Tensor<1>) -> Vec<f32> {
        let grads = loss.backward();
        x.grad(&grads)
            .unwrap()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap()
    }

    /// The fused loss (flex) equals the composed one in per-target loss, NLL and gradient,
    /// with ignored targets, with and without label smoothing, for rows longer than the
    /// vector lanes; on logits the caller still holds (which the backward must leave intact)
    /// and on fresh ones (which it turns into their gradient in place).
    #[test]
    fn fused_equals_composed_values_and_gradients() {
        let device = reference_device().clone().autodiff();
        let (n, classes) = (7, 37);
        let values: Vec<f32> = (0..n * classes)
            .map(|i| ((i * 7919 % 2003) as f32 / 2003.0 - 0.5) * 6.0)
            .collect();
        let labels = vec![3i64, -100, 36, 0, 17, -100, 20];
        for (eps, fresh) in [(0.0, false), (0.1, false), (0.1, true)] {
            let loss = CrossEntropy::new().with_label_smoothing(eps).unwrap();
            let run = |fused: bool| {
                let x =
                    Tensor::<2>::from_data(TensorData::new(values.clone(), [n, classes]), &device)
                        .require_grad();
                let t = Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [n]), &device);
                let logits = if fresh { x.clone() * 2.0 } else { x.clone() };
                let (per_target, nll) = if fused {
                    // `logits` is dropped here, as in `CrossEntropy::forward`: only `x` (the
                    // caller's tensor) may still hold the buffer.
                    let rows = lmforge_layers::cross_entropy_rows(&logits, &t, IGNORE_INDEX, eps);
                    drop(logits);
                    rows.expect("flex (the reference device) runs the fused loss")
                } else {
                    let ignored = t.clone().equal_elem(IGNORE_INDEX);
                    loss.composed(logits, t, ignored)
                };
                let read = |t: Tensor<1>| t.into_data().try_into_vec::<f32>().unwrap();
                let (per, nll) = (read(per_target.clone()), read(nll));
                let grad = gradient(&x, per_target.sum());
                let kept = x.into_data().try_into_vec::<f32>().unwrap();
                assert_eq!(
                    kept, values,
                    "the backward overwrote logits the caller holds"
                );
                (per, nll, grad)
            };
            let (fused, composed) = (run(true), run(false));
            for (name, a, b, bound) in [
                ("per-target loss", &fused.0, &composed.0, 1e-5),
                ("nll", &fused.1, &composed.1, 1e-5),
                ("gradient", &fused.2, &composed.2, 1e-6),
            ] {
                let worst = a
                    .iter()
                    .zip(b)
                    .fold(0.0f32, |w, (a, b)| w.max((a - b).abs() / (1.0 + b.abs())));
                assert!(worst <= bound, "eps {eps}: {name} differs by {worst}");
            }
        }
    }

    #[test]
    fn all_ignored_batch_has_finite_zero_gradient() {
        let device = reference_device().clone().autodiff();
        let x = Tensor::<2>::from_data(
            TensorData::new(vec![0.3f32, -0.2, 0.9, 0.1], [2, 2]),
            &device,
        )
        .require_grad();
        let t = Tensor::<1, Int>::from_data(TensorData::new(vec![-100i64, -100], [2]), &device);
        let out = CrossEntropy::new().forward(x.clone(), t);
        let g = gradient(&x, out.loss);
        assert!(g.iter().all(|v| *v == 0.0), "{g:?}");
    }
}
