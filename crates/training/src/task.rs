//! The step code: what one training or evaluation step computes for a model and its objective.
//!
//! A [`Task`] turns a slice of host-side examples into a loss. The [`Trainer`](crate::Trainer)
//! owns everything around it (optimizer, schedule, clipping, accumulation, checkpoints), so the
//! same task can drive other training loops too.

use burn::tensor::{Device, Int, Tensor};
use lmforge_objectives::LossOutput;
use rand::rngs::StdRng;

/// What a step hands back: the loss to minimise and the sums the evaluation metrics need.
#[derive(Clone, Debug)]
pub struct StepOutput {
    /// The scalar (one-element) loss the optimizer minimises.
    pub loss: Tensor<1>,
    /// Sum of the per-target negative log-likelihoods (no label smoothing), for the mean
    /// evaluation loss and perplexity.
    pub nll_sum: Tensor<1>,
    /// Number of targets counted in `nll_sum`.
    pub count: Tensor<1, Int>,
    /// Number of correct arg-max predictions among those targets, when the task measures
    /// accuracy.
    pub correct: Option<Tensor<1, Int>>,
    /// Tokens the step read (inputs, padding excluded): the numerator of tokens/s.
    pub tokens: usize,
}

impl StepOutput {
    /// The output of a cross-entropy loss over `tokens` input tokens.
    pub fn from_loss(loss: LossOutput, tokens: usize) -> Self {
        Self {
            loss: loss.loss,
            nll_sum: loss.nll_sum,
            count: loss.count,
            correct: None,
            tokens,
        }
    }

    /// Adds the number of correct predictions.
    pub fn with_correct(mut self, correct: Tensor<1, Int>) -> Self {
        self.correct = Some(correct);
        self
    }
}

/// What a step may use besides the model and the examples.
pub struct StepContext<'a> {
    /// The device of the model's parameters (an autodiff device while training).
    pub device: &'a Device,
    /// A random generator seeded from the run's seed and the step's position in the data, so a
    /// resumed run draws the same numbers (e.g. masked-LM masks). Evaluation gets a fixed seed.
    pub rng: &'a mut StdRng,
    /// True while training, false during evaluation.
    pub training: bool,
    /// The batch's position: while training, the number of batches read before it since
    /// step 0 (across passes, so `position % batches_per_pass` is its index in the pass); in
    /// an evaluation, its index there. Stateful tasks use it to tell a continuation from a
    /// restart.
    pub position: u64,
}

/// A model's training objective: from a batch of examples to a [`StepOutput`].
///
/// Implement it for your own model or objective; lmforge's are in [`tasks`](crate::tasks).
pub trait Task<M>: Send + Sync {
    /// One example as the data source holds it (token ids, a labelled sentence, ...).
    type Item: Clone + Send + Sync;

    /// Computes the loss of `model` on `items`.
    ///
    /// # Errors
    /// Whatever makes the batch unusable (a token id out of range, an empty row, ...); the
    /// trainer stops and reports it with the step.
    fn step(
        &self,
        model: &M,
        items: &[Self::Item],
        context: &mut StepContext<'_>,
    ) -> Result<StepOutput, TaskError>;

    /// Constrains the model after `step` optimizer updates: the trainer calls it after every
    /// update (step 1 after the first) and once when a run resumes (with the checkpoint's model
    /// and step); the model it returns is trained on from then on, evaluated and checkpointed.
    /// The default returns the model unchanged. Pruning uses it to hold removed weights at
    /// exactly zero.
    ///
    /// It must be idempotent and depend only on the model and the step (nothing carried
    /// between calls that a checkpoint would not restore), so that a resumed run continues
    /// exactly.
    ///
    /// # Errors
    /// Whatever makes the model unusable; the trainer stops and reports it with the step.
    fn constrain(&self, model: M, step: usize) -> Result<M, TaskError> {
        let _ = step;
        Ok(model)
    }

    /// Whether [`constrain`](Task::constrain) changes the model (the default: it does not).
    /// Training loops that cannot call `constrain` after every optimizer step (burn-train's
    /// `Learner`) refuse tasks that answer `true`.
    fn constrains(&self) -> bool {
        false
    }
}

/// The error type of [`Task::step`]: any error, boxed.
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;
