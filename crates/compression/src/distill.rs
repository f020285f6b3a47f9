//! Knowledge distillation (Hinton et al. 2015): a student learns from a teacher's softened
//! output distribution as well as from the labels.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use lmforge_objectives::{CrossEntropy, IGNORE_INDEX, LossOutput};
use lmforge_training::tasks::CausalLm;
use lmforge_training::{StepContext, StepOutput, Task, TaskError};
use serde::{Deserialize, Serialize};

use crate::error::CompressionError;

/// The weights of the two terms of the distillation loss.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistillationConfig {
    /// Softmax temperature `T` of both distributions in the soft term (> 0). Default: 2.
    pub temperature: f64,
    /// Weight `α` of the soft term; the hard (label) term gets `1 - α`. Default: 0.5.
    pub alpha: f64,
}

impl Default for DistillationConfig {
    fn default() -> Self {
        Self {
            temperature: 2.0,
            alpha: 0.5,
        }
    }
}

impl DistillationConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`CompressionError::InvalidConfig`] for a temperature that is not positive or an
    /// `alpha` outside `[0, 1]`.
    pub fn validate(&self) -> Result<(), CompressionError> {
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(CompressionError::InvalidConfig(format!(
                "temperature must be > 0, got {}",
                self.temperature
            )));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(CompressionError::InvalidConfig(format!(
                "alpha must be in [0, 1], got {}",
                self.alpha
            )));
        }
        Ok(())
    }
}

/// The distillation loss and its parts.
#[derive(Clone, Debug)]
pub struct DistillationOutput {
    /// `α · soft + (1 - α) · hard`, to minimise.
    pub loss: Tensor<1>,
    /// `T² · KL(softmax(teacher / T) ‖ softmax(student / T))`, averaged over the counted
    /// positions (the `T²` keeps its gradient on the scale of the hard term's).
    pub soft: Tensor<1>,
    /// The cross-entropy of the student's logits with the labels.
    pub hard: LossOutput,
}

/// The distillation loss of `student` logits against `teacher` logits and `targets`.
/// Positions whose target is [`IGNORE_INDEX`] count in neither term. The teacher's logits are
/// detached: no gradient reaches the teacher.
///
/// # Shapes
/// - `student`, `teacher`: `[n, n_classes]`
/// - `targets`: `[n]`
///
/// # Panics
/// When the shapes disagree.
pub fn distillation_loss(
    student: Tensor<2>,
    teacher: Tensor<2>,
    targets: Tensor<1, Int>,
    config: &DistillationConfig,
    hard_loss: &CrossEntropy,
) -> DistillationOutput {
    assert_eq!(
        student.dims(),
        teacher.dims(),
        "student and teacher logits must have the same shape"
    );
    assert_eq!(student.dims()[0], targets.dims()[0], "one target per row");
    let t = config.temperature;
    let log_p_student = log_softmax(student.clone().div_scalar(t), 1);
    let log_p_teacher = log_softmax(teacher.detach().div_scalar(t), 1);
    // Σ_v p_t (log p_t - log p_s), per row.
    let kl = (log_p_teacher.clone().exp() * (log_p_teacher - log_p_student)).sum_dim(1);
    let counted = targets.clone().not_equal_elem(IGNORE_INDEX).float();
    let count = counted.clone().sum().clamp_min(1.0);
    let soft = (kl.reshape([-1]) * counted)
        .sum()
        .div(count)
        .mul_scalar(t * t);
    let hard = hard_loss.forward(student, targets);
    let loss = soft
        .clone()
        .mul_scalar(config.alpha)
        .add(hard.loss.clone().mul_scalar(1.0 - config.alpha));
    DistillationOutput { loss, soft, hard }
}

/// Causal-LM distillation: the student trains on rows of token ids (as
/// [`CausalLmTask`](lmforge_training::tasks::CausalLmTask)) with the distillation loss
/// against a fixed teacher's next-token logits. Evaluation reports the student's own
/// cross-entropy and perplexity.
pub struct CausalLmDistillationTask<T> {
    teacher: T,
    teacher_device: burn::tensor::Device,
    config: DistillationConfig,
    hard_loss: CrossEntropy,
}

impl<T: CausalLm> CausalLmDistillationTask<T> {
    /// Distils `teacher` with `config`. The teacher runs in inference mode (without autodiff
    /// and dropout, [`burn::module::Module::valid`]).
    ///
    /// # Errors
    /// As [`DistillationConfig::validate`], or [`CompressionError::Unsupported`] for a teacher
    /// without parameters.
    pub fn new(teacher: T, config: DistillationConfig) -> Result<Self, CompressionError> {
        config.validate()?;
        let teacher = teacher.valid();
        let teacher_device =
            teacher.devices().into_iter().next().ok_or_else(|| {
                CompressionError::Unsupported("the teacher has no parameters".into())
            })?;
        Ok(Self {
            teacher,
            teacher_device,
            config,
            hard_loss: CrossEntropy::new(),
        })
    }
}

impl<S: CausalLm, T: CausalLm + Sync> Task<S> for CausalLmDistillationTask<T> {
    type Item = Vec<u32>;

    fn step(
        &self,
        model: &S,
        items: &[Vec<u32>],
        context: &mut StepContext<'_>,
    ) -> Result<StepOutput, TaskError> {
        let seq_length = items.iter().map(Vec::len).max().unwrap_or(0);
        if seq_length < 2 || items.iter().any(|r| r.len() != seq_length) {
            return Err("distillation rows must all have the same length, at least 2".into());
        }
        let batch_size = items.len();
        let ids: Vec<i64> = items.iter().flatten().map(|&id| i64::from(id)).collect();
        let device = context.device;
        let tokens: Tensor<2, Int> =
            Tensor::from_data(TensorData::new(ids, [batch_size, seq_length]), device);
        let inputs = tokens.clone().slice([0..batch_size, 0..seq_length - 1]);
        let targets = tokens
            .slice([0..batch_size, 1..seq_length])
            .reshape([batch_size * (seq_length - 1)]);
        let rows = |logits: Tensor<3>| {
            let [_, _, vocab_size] = logits.dims();
            logits.reshape([batch_size * (seq_length - 1), vocab_size])
        };
        let no_mask: Option<Tensor<2, Bool>> = None;
        let student = rows(model.causal_logits(inputs.clone(), no_mask.clone()));
        if !context.training {
            let loss = self.hard_loss.forward(student, targets);
            return Ok(StepOutput::from_loss(loss, batch_size * seq_length));
        }
        let teacher_inputs = inputs.to_device(&self.teacher_device);
        let teacher = rows(self.teacher.causal_logits(teacher_inputs, no_mask)).to_device(device);
        if teacher.dims() != student.dims() {
            return Err(format!(
                "teacher logits {:?} and student logits {:?} differ: distillation needs the \
                 same vocabulary",
                teacher.dims(),
                student.dims()
            )
            .into());
        }
        let out = distillation_loss(student, teacher, targets, &self.config, &self.hard_loss);
        let mut step = StepOutput::from_loss(out.hard, batch_size * seq_length);
        step.loss = out.loss;
        Ok(step)
    }
}
