//! lmforge tasks under burn-train's `Learner`: one device, several devices with data
//! parallelism, or distributed data parallel (DDP).
//!
//! The step code is the [`Task`] that lmforge's own [`Trainer`](crate::Trainer) runs: a
//! [`TaskModel`] pairs a model with its task and implements burn-train's `TrainStep` and
//! `InferenceStep` by calling [`Task::step`], so the loss, the masking and the metrics sums are
//! computed by the same code under both engines. lmforge's [`Schedule`] becomes a burn
//! `LrScheduler` ([`ScheduleLr`]), its [`OptimizerConfig`] the `ModuleOptimizer` (weight-decay
//! exclusions and learning-rate groups included), its global-norm clipping runs inside the
//! step, and [`LmPerplexity`] and [`LmAccuracy`] are burn-train metrics fed by the task's sums.
//!
//! [`LearnerTrainer`] assembles all of it for the common case; the pieces are public for those
//! who build burn-train's `SupervisedTraining` themselves (checkpointers, early stopping, a TUI).
//!
//! ```
//! use lmforge_models::gpt::GptConfig;
//! use lmforge_training::learner::{LearnerConfig, LearnerTrainer};
//! use lmforge_training::tasks::CausalLmTask;
//! use lmforge_training::Schedule;
//!
//! # let device = lmforge_device::device_from_env().unwrap().autodiff();
//! let model = GptConfig::tiny(16).init(&device)?;
//! let rows: Vec<Vec<u32>> = (0..16).map(|i| (0..9).map(|t| (i + t) % 16).collect()).collect();
//! let dir = std::env::temp_dir().join(format!("lmforge-learner-doc-{}", std::process::id()));
//! let config = LearnerConfig::new(2, 4, Schedule::warmup_cosine(1e-2, 2));
//! // Two replicas of the model, each reading half of every global batch of 8 rows.
//! let devices = vec![device.clone(), device.clone()];
//! let out = LearnerTrainer::new(config)
//!     .with_devices(devices)
//!     .fit(model, &CausalLmTask::new(0), rows.clone(), rows, &dir)?;
//! assert_eq!(out.steps, 4); // 2 epochs x (8 rows per replica / 4 per batch)
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::{Dataset, DatasetError};
use burn::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::module::{Module, ModuleDisplay};
use burn::optim::GradientsParams;
use burn::tensor::Device;
use burn::tensor::distributed::{DistributedConfig, DistributedContext, ReduceOperation};
use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{
    Adaptor, ItemLazy, LossInput, LossMetric, Metric, MetricAttributes, MetricDefinition,
    MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry, SerializedEntry,
};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use burn::train::{
    ExecutionStrategy, InferenceStep, Interrupter, Learner, MultiDeviceOptim, SupervisedTraining,
    TrainStep, TrainingStrategy,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::error::TrainError;
use crate::optimizer::OptimizerConfig;
use crate::params::clip_global_norm;
use crate::schedule::Schedule;
use crate::task::{StepContext, StepOutput, Task};
use crate::trainer::{EVAL_SEED, mix, model_device};

/// How one [`TaskModel`] step scales and clips what it hands to burn-train.
#[derive(Clone, Debug, PartialEq)]
pub struct StepSettings {
    /// Factor on the loss before the backward pass. burn-train sums the gradients of
    /// accumulated batches and of data-parallel replicas; `1 / (replicas x accumulation)` turns
    /// the sum into the gradient of the mean loss over the global batch.
    pub loss_scale: f64,
    /// Clip each step's (scaled) gradient to this global L2 norm.
    pub max_grad_norm: Option<f64>,
    /// The run's seed: a step's random generator is seeded from it and the batch position.
    pub seed: u64,
}

impl Default for StepSettings {
    /// No scaling, no clipping, seed 0.
    fn default() -> Self {
        Self {
            loss_scale: 1.0,
            max_grad_norm: None,
            seed: 0,
        }
    }
}

/// A model and its [`Task`]: the unit burn-train trains.
///
/// `TrainStep::step` runs [`Task::step`], scales the loss by
/// [`StepSettings::loss_scale`], back-propagates and clips the gradient by its global norm;
/// `InferenceStep::step` runs the task in evaluation mode. burn-train's step signatures cannot
/// return errors, so a failing task step (a token id out of range, a non-finite loss) is
/// reported to the run's interrupter when the model has one ([`LearnerTrainer::fit`] attaches
/// it): the step applies no update and burn-train stops, and `fit` returns the failure as
/// [`TrainError::Learner`] without a panic (so it works under `panic = "abort"` too). A
/// `TaskModel` driven without an interrupter (built with [`TaskModel::new`] and trained by
/// other code) panics with the task's message instead.
///
/// burn-train has no hook after an optimizer step, so [`Task::constrain`] is never called:
/// tasks that constrain the model ([`Task::constrains`], e.g. pruning) belong to lmforge's
/// [`Trainer`](crate::Trainer); [`LearnerTrainer::fit`] refuses them.
#[derive(Module, Debug)]
pub struct TaskModel<M: Module, T: Clone + fmt::Debug + Send + Sync> {
    /// The model being trained.
    pub model: M,
    /// Its objective.
    #[module(skip)]
    pub task: T,
    /// Scaling, clipping and seeding of the steps.
    #[module(skip)]
    pub settings: StepSettings,
    /// Where failing steps report themselves.
    #[module(skip)]
    failures: StepFailures,
}

/// The first failure of a run's [`TaskModel`] steps (shared by every replica), and the
/// interrupter that stops the run.
#[derive(Clone, Default)]
struct StepFailures {
    first: Arc<Mutex<Option<String>>>,
    interrupter: Option<Interrupter>,
}

impl fmt::Debug for StepFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepFailures")
            .field("first", &self.first())
            .field("interrupting", &self.interrupter.is_some())
            .finish()
    }
}

impl StepFailures {
    /// Reporting to `interrupter`.
    fn to(interrupter: Interrupter) -> Self {
        Self {
            first: Arc::default(),
            interrupter: Some(interrupter),
        }
    }

    /// Keeps `message` (unless an earlier failure is kept) and stops the run; panics with it
    /// when there is no interrupter to stop.
    fn report(&self, message: String) {
        let Some(interrupter) = &self.interrupter else {
            panic!("{message}");
        };
        // A poisoned lock only means another replica panicked while holding it: the slot is
        // still a plain `Option`, so keep using it.
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(message.clone());
        }
        interrupter.stop(Some(&message));
    }

    /// The first failure reported, if any.
    fn first(&self) -> Option<String> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl<M, T> TaskModel<M, T>
where
    M: Module,
    T: Task<M> + Clone + fmt::Debug,
{
    /// Pairs `model` with `task`.
    pub fn new(model: M, task: T, settings: StepSettings) -> Self {
        Self {
            model,
            task,
            settings,
            failures: StepFailures::default(),
        }
    }

    /// Reports failing steps to `interrupter` instead of panicking.
    fn reporting_to(mut self, interrupter: Interrupter) -> Self {
        self.failures = StepFailures::to(interrupter);
        self
    }

    /// What a step that failed hands to burn-train: a NaN loss and no counts (its gradients
    /// are empty, so the optimizer leaves the model as it is).
    fn failed_output(&self) -> TaskOutput {
        let device = model_device(&self.model);
        TaskOutput {
            loss: burn::tensor::Tensor::<1>::from_data([f32::NAN], &device),
            loss_value: f64::NAN,
            stats: LmStats {
                nll_sum: 0.0,
                count: 0,
                correct: None,
            },
        }
    }

    /// The task's step, or `None` after reporting its failure.
    fn run(&self, batch: &TaskBatch<T::Item>, training: bool) -> Option<StepOutput> {
        let device = model_device(&self.model);
        let seed = if training {
            mix(self.settings.seed, batch.position)
        } else {
            EVAL_SEED
        };
        if training {
            device.seed(seed);
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut context = StepContext {
            device: &device,
            rng: &mut rng,
            training,
            position: batch.position,
        };
        match self.task.step(&self.model, &batch.items, &mut context) {
            Ok(out) => Some(out),
            Err(err) => {
                self.failures.report(format!(
                    "lmforge task step failed on batch {}: {err}",
                    batch.position
                ));
                None
            }
        }
    }
}

impl<M, T> TrainStep for TaskModel<M, T>
where
    M: Module + ModuleDisplay + 'static,
    T: Task<M> + Clone + fmt::Debug + 'static,
    T::Item: fmt::Debug + 'static,
{
    type Input = TaskBatch<T::Item>;
    type Output = TaskOutput;

    fn step(&self, batch: TaskBatch<T::Item>) -> burn::train::TrainOutput<TaskOutput> {
        let skipped = |item| burn::train::TrainOutput {
            grads: GradientsParams::new(),
            item,
        };
        let Some(out) = self.run(&batch, true) else {
            return skipped(self.failed_output());
        };
        let item = TaskOutput::read(&out);
        if !item.loss_value.is_finite() {
            self.failures.report(format!(
                "lmforge task step failed on batch {}: the loss is {}",
                batch.position, item.loss_value
            ));
            return skipped(item);
        }
        let loss = out.loss.mul_scalar(self.settings.loss_scale);
        let mut grads = GradientsParams::from_grads(loss.backward(), &self.model);
        if let Some(max_norm) = self.settings.max_grad_norm {
            clip_global_norm(&self.model, &mut grads, max_norm);
        }
        burn::train::TrainOutput { grads, item }
    }
}

impl<M, T> InferenceStep for TaskModel<M, T>
where
    M: Module + ModuleDisplay + 'static,
    T: Task<M> + Clone + fmt::Debug + 'static,
    T::Item: fmt::Debug + 'static,
{
    type Input = TaskBatch<T::Item>;
    type Output = TaskOutput;

    fn step(&self, batch: TaskBatch<T::Item>) -> TaskOutput {
        match self.run(&batch, false) {
            Some(out) => TaskOutput::read(&out),
            None => self.failed_output(),
        }
    }
}

/// A batch of host-side examples and its position (its first example's index in the data
/// divided by the batch size): the input of a [`TaskModel`] step.
#[derive(Clone, Debug)]
pub struct TaskBatch<I> {
    /// The examples.
    pub items: Vec<I>,
    /// Seeds the step's random generator (masked-LM masks, dropout) and is the task's
    /// [`StepContext::position`]. It comes from the examples' indices, so it restarts every
    /// epoch (unlike the trainer's, which counts across passes) and every epoch draws the same
    /// masks for the same batch.
    pub position: u64,
}

/// An example and its index in the dataset.
#[derive(Clone, Debug)]
pub struct Numbered<I> {
    /// Index of the example in its dataset.
    pub index: usize,
    /// The example.
    pub item: I,
}

/// A burn dataset over a vector of examples that hands each out with its index.
#[derive(Clone, Debug)]
pub struct NumberedDataset<I> {
    items: Arc<Vec<I>>,
}

impl<I> NumberedDataset<I> {
    /// The dataset of `items`, in order.
    pub fn new(items: Vec<I>) -> Self {
        Self {
            items: Arc::new(items),
        }
    }
}

impl<I: Clone + Send + Sync> Dataset<Numbered<I>> for NumberedDataset<I> {
    fn get(&self, index: usize) -> Result<Numbered<I>, DatasetError> {
        match self.items.get(index) {
            Some(item) => Ok(Numbered {
                index,
                item: item.clone(),
            }),
            None => Err(DatasetError::new(std::io::Error::other(format!(
                "index {index} is past the {} examples",
                self.items.len()
            )))),
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

/// Groups [`Numbered`] examples into [`TaskBatch`]es (the task builds its tensors itself, on
/// the model's device).
#[derive(Clone, Debug)]
pub struct TaskBatcher {
    batch_size: usize,
}

impl TaskBatcher {
    /// A batcher for batches of `batch_size` examples (it numbers the batches).
    pub fn new(batch_size: usize) -> Self {
        Self {
            batch_size: batch_size.max(1),
        }
    }
}

impl<I: Send + Sync> Batcher<Numbered<I>, TaskBatch<I>> for TaskBatcher {
    fn batch(&self, items: Vec<Numbered<I>>, _device: &Device) -> TaskBatch<I> {
        let first = items.first().map_or(0, |n| n.index);
        TaskBatch {
            position: (first / self.batch_size) as u64,
            items: items.into_iter().map(|n| n.item).collect(),
        }
    }
}

/// What a [`TaskModel`] step reports to burn-train's metrics, read back to the host.
#[derive(Clone, Debug)]
pub struct TaskOutput {
    /// The step's loss (unscaled), for burn's `LossMetric`.
    pub loss: burn::tensor::Tensor<1>,
    /// The same loss as a number.
    pub loss_value: f64,
    /// The task's sums for perplexity and accuracy.
    pub stats: LmStats,
}

impl TaskOutput {
    fn read(out: &StepOutput) -> Self {
        let loss = out.loss.clone().detach();
        Self {
            loss_value: loss.clone().into_scalar::<f64>(),
            loss,
            stats: LmStats {
                nll_sum: out.nll_sum.clone().into_scalar::<f64>(),
                count: out.count.clone().into_scalar::<i64>().max(0) as usize,
                correct: out
                    .correct
                    .clone()
                    .map(|c| c.into_scalar::<i64>().max(0) as usize),
            },
        }
    }
}

impl ItemLazy for TaskOutput {
    /// The numbers are read during the step; nothing is pending.
    fn sync(self) -> Result<Self, burn::tensor::ExecutionError> {
        Ok(self)
    }
}

impl Adaptor<LossInput> for TaskOutput {
    fn adapt(&self) -> LossInput {
        LossInput::new(self.loss.clone())
    }
}

impl Adaptor<LmStats> for TaskOutput {
    fn adapt(&self) -> LmStats {
        self.stats.clone()
    }
}

/// A step's sums: negative log-likelihood, targets counted, correct arg-max predictions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LmStats {
    /// Sum of the per-target negative log-likelihoods.
    pub nll_sum: f64,
    /// Number of targets.
    pub count: usize,
    /// Correct predictions, when the task measures accuracy.
    pub correct: Option<usize>,
}

/// What a pooled metric computes from its sums.
#[derive(Clone, Copy, Debug)]
enum PoolKind {
    /// `exp(sum of NLL / targets)`.
    Perplexity,
    /// `correct / targets`.
    Accuracy,
}

impl PoolKind {
    fn numerator(self, stats: &LmStats) -> f64 {
        match self {
            Self::Perplexity => stats.nll_sum,
            Self::Accuracy => stats.correct.unwrap_or(0) as f64,
        }
    }

    fn value(self, numerator: f64, count: usize) -> f64 {
        match (self, count) {
            (Self::Perplexity, 0) => f64::INFINITY,
            (Self::Perplexity, _) => (numerator / count as f64).exp(),
            (Self::Accuracy, 0) => 0.0,
            (Self::Accuracy, _) => numerator / count as f64,
        }
    }
}

/// A metric pooled over an epoch from the task's sums, with the last batch's value.
#[derive(Clone, Debug)]
struct Pooled {
    name: MetricName,
    kind: PoolKind,
    numerator: f64,
    count: usize,
    batch: f64,
    batch_count: usize,
}

impl Pooled {
    fn new(name: &str, kind: PoolKind) -> Self {
        Self {
            name: Arc::new(name.to_string()),
            kind,
            numerator: 0.0,
            count: 0,
            batch: f64::NAN,
            batch_count: 0,
        }
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: matches!(self.kind, PoolKind::Accuracy),
        }
        .into()
    }

    fn update(&mut self, stats: &LmStats) -> SerializedEntry {
        let numerator = self.kind.numerator(stats);
        self.numerator += numerator;
        self.count += stats.count;
        self.batch = self.kind.value(numerator, stats.count);
        self.batch_count = stats.count;
        self.entry(false)
    }

    fn epoch(&self) -> f64 {
        self.kind.value(self.numerator, self.count)
    }

    fn entry(&self, last: bool) -> SerializedEntry {
        let epoch = self.epoch();
        let formatted = format!("epoch {epoch:.4} - batch {:.4}", self.batch);
        let serialized = if last {
            NumericEntry::Final(epoch)
        } else {
            self.value()
        };
        SerializedEntry::new(formatted, serialized.serialize())
    }

    fn clear(&mut self) {
        *self = Self::new(&self.name, self.kind);
    }

    fn value(&self) -> NumericEntry {
        NumericEntry::Aggregated {
            aggregated_value: self.batch,
            count: self.batch_count,
        }
    }

    fn running_value(&self) -> NumericEntry {
        NumericEntry::Aggregated {
            aggregated_value: self.epoch(),
            count: self.count,
        }
    }
}

/// Implements burn-train's `Metric` and `Numeric` for a newtype over [`Pooled`].
macro_rules! pooled_metric {
    ($metric:ident, $name:literal, $kind:expr) => {
        impl $metric {
            #[doc = concat!("A metric named \"", $name, "\".")]
            pub fn new() -> Self {
                Self(Pooled::new($name, $kind))
            }
        }

        impl Default for $metric {
            fn default() -> Self {
                Self::new()
            }
        }

        impl Metric for $metric {
            type Input = LmStats;

            fn name(&self) -> MetricName {
                self.0.name.clone()
            }

            fn attributes(&self) -> MetricAttributes {
                self.0.attributes()
            }

            fn update(
                &mut self,
                item: &LmStats,
                _metadata: &MetricMetadata,
            ) -> Result<SerializedEntry, burn::tensor::TensorReadError> {
                Ok(self.0.update(item))
            }

            fn compute(&mut self) -> Result<SerializedEntry, burn::tensor::TensorReadError> {
                Ok(self.0.entry(true))
            }

            fn clear(&mut self) {
                self.0.clear();
            }
        }

        impl Numeric for $metric {
            fn value(&self) -> Option<NumericEntry> {
                Some(self.0.value())
            }

            fn running_value(&self) -> Option<NumericEntry> {
                Some(self.0.running_value())
            }

            fn final_value(&self) -> NumericEntry {
                NumericEntry::Final(self.0.epoch())
            }
        }
    };
}

/// Perplexity over an epoch: `exp(sum of NLL / number of targets)`, from the task's sums (the
/// same figure as [`Evaluation::perplexity`](crate::Evaluation)), not the mean of per-batch
/// perplexities.
#[derive(Clone, Debug)]
pub struct LmPerplexity(Pooled);

pooled_metric!(LmPerplexity, "Perplexity", PoolKind::Perplexity);

/// Accuracy over an epoch: correct arg-max predictions / targets, for tasks that count them
/// (classification, token classification, masked LM); 0 for tasks that do not.
#[derive(Clone, Debug)]
pub struct LmAccuracy(Pooled);

pooled_metric!(LmAccuracy, "Accuracy", PoolKind::Accuracy);

/// lmforge's [`Schedule`] as a burn `LrScheduler`: each `step()` answers the rate of the next
/// optimizer step (0-based, as the [`Trainer`](crate::Trainer) uses it), times a group factor.
#[derive(Clone, Debug)]
pub struct ScheduleLr {
    schedule: Schedule,
    total_steps: usize,
    factor: f64,
    next: usize,
}

impl ScheduleLr {
    /// The schedule of a run of `total_steps` optimizer steps, scaled by `factor`.
    pub fn new(schedule: Schedule, total_steps: usize, factor: f64) -> Self {
        Self {
            schedule,
            total_steps,
            factor,
            next: 0,
        }
    }
}

impl LrScheduler for ScheduleLr {
    fn step(&mut self) -> f64 {
        let lr = self.schedule.lr(self.next, self.total_steps) * self.factor;
        self.next += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new().with_scalar("next", self.next as u64)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(next) = record.scalar::<u64>("next") {
            self.next = next as usize;
        }
    }
}

/// How [`LearnerTrainer`] spreads training over several devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Parallelism {
    /// burn-train's multi-device strategy: one model replica per device, each on its share of
    /// every global batch; the gradients are gathered and summed on the first device, which
    /// runs the optimizer and hands the updated model to the replicas. Runs on every backend
    /// (two replicas may share one device).
    #[default]
    DataParallel,
    /// burn-train's distributed data parallel: each device runs its replica and optimizer and
    /// the gradients are averaged with an all-reduce. burn 0.22 implements the collective
    /// operations on CUDA (and remote devices) only: flex, ndarray and wgpu devices are refused.
    Ddp,
}

/// What [`LearnerTrainer`] runs: epochs, batches, optimizer, schedule and clipping.
#[derive(Clone, Debug, PartialEq)]
pub struct LearnerConfig {
    /// Passes over the training examples.
    pub epochs: usize,
    /// Examples per batch and per device: the global batch is `batch_size x devices`.
    pub batch_size: usize,
    /// Learning-rate schedule over the whole run.
    pub schedule: Schedule,
    /// Optimizer, weight-decay exclusions and learning-rate groups.
    pub optimizer: OptimizerConfig,
    /// Clip the gradient's global L2 norm to this value.
    pub max_grad_norm: Option<f64>,
    /// Batches (per device) per optimizer step.
    pub grad_accumulation: usize,
    /// Seeds the steps' random generators.
    pub seed: u64,
    /// How several devices share the work.
    pub parallelism: Parallelism,
}

impl LearnerConfig {
    /// AdamW (lmforge's defaults), no clipping, no accumulation, seed 0, data parallel.
    pub fn new(epochs: usize, batch_size: usize, schedule: Schedule) -> Self {
        Self {
            epochs,
            batch_size,
            schedule,
            optimizer: OptimizerConfig::adamw(),
            max_grad_norm: None,
            grad_accumulation: 1,
            seed: 0,
            parallelism: Parallelism::DataParallel,
        }
    }

    /// Uses `optimizer`.
    pub fn with_optimizer(mut self, optimizer: OptimizerConfig) -> Self {
        self.optimizer = optimizer;
        self
    }

    /// Clips the global gradient norm.
    pub fn with_max_grad_norm(mut self, max_norm: f64) -> Self {
        self.max_grad_norm = Some(max_norm);
        self
    }

    /// Accumulates `batches` batches per optimizer step.
    pub fn with_grad_accumulation(mut self, batches: usize) -> Self {
        self.grad_accumulation = batches;
        self
    }

    /// Seeds the run.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Spreads the work over several devices this way.
    pub fn with_parallelism(mut self, parallelism: Parallelism) -> Self {
        self.parallelism = parallelism;
        self
    }

    fn validate(&self) -> Result<(), TrainError> {
        let bad = |what: &str| Err(TrainError::InvalidConfig(what.to_string()));
        if self.epochs == 0 {
            return bad("epochs must be > 0");
        }
        if self.batch_size == 0 {
            return bad("batch_size must be > 0");
        }
        if self.grad_accumulation == 0 {
            return bad("grad_accumulation must be > 0");
        }
        if let Some(max) = self.max_grad_norm
            && !(max.is_finite() && max > 0.0)
        {
            return Err(TrainError::InvalidConfig(format!(
                "max_grad_norm must be finite and > 0, got {max}"
            )));
        }
        self.schedule.validate().map_err(TrainError::InvalidConfig)
    }
}

/// The result of [`LearnerTrainer::fit`].
#[derive(Debug)]
pub struct LearnerOutput<M> {
    /// The trained model (on the first device, without autodiff-specific state).
    pub model: M,
    /// Optimizer steps taken (the schedule's length).
    pub steps: usize,
}

/// Trains an lmforge model and task with burn-train's `Learner` and `SupervisedTraining`.
///
/// It writes burn-train's run directory (`experiment.log`, per-epoch metric logs of the loss,
/// [`LmPerplexity`] and [`LmAccuracy`] for the training and validation splits) and prints
/// burn-train's progress lines. Batches are read in order (no shuffling), so a run is
/// reproducible. Every step reads full batches on every device: the largest multiple of
/// `devices x batch_size x grad_accumulation` training examples is used, split into equal
/// contiguous shards, one per device, and step `k` reads the `k`-th batches of every shard.
pub struct LearnerTrainer {
    config: LearnerConfig,
    devices: Vec<Device>,
    quiet: bool,
}

impl LearnerTrainer {
    /// A trainer for `config` on the model's own device.
    pub fn new(config: LearnerConfig) -> Self {
        Self {
            config,
            devices: Vec::new(),
            quiet: false,
        }
    }

    /// Prints nothing (burn-train's progress lines are dropped; its logs are still written).
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Trains on these devices (one model replica each; the first holds the result). Empty
    /// means the model's device.
    pub fn with_devices(mut self, devices: Vec<Device>) -> Self {
        self.devices = devices;
        self
    }

    /// Examples one optimizer step reads: `batch_size x grad_accumulation` on each device.
    fn examples_per_step(&self) -> usize {
        self.devices.len().max(1)
            * self.config.batch_size.max(1)
            * self.config.grad_accumulation.max(1)
    }

    /// The optimizer steps a run over `n_train` examples takes: every step reads full batches
    /// on every device, so the last `n_train mod (devices x batch_size x grad_accumulation)`
    /// examples are not used (as the trainer leaves out the incomplete batch of a shuffled
    /// pass).
    pub fn steps(&self, n_train: usize) -> usize {
        self.config.epochs * (n_train / self.examples_per_step())
    }

    /// Trains `model` with `task` on `train`, validating on `valid` after every epoch, and
    /// writes burn-train's logs to `dir`.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] for a bad config, no examples, fewer training examples
    /// than devices, or DDP on devices without collective operations; [`TrainError::Task`]
    /// when a step fails (the task's message, e.g. a token id out of range, or a non-finite
    /// loss).
    pub fn fit<M, T>(
        &self,
        model: M,
        task: &T,
        train: Vec<T::Item>,
        valid: Vec<T::Item>,
        dir: impl AsRef<Path>,
    ) -> Result<LearnerOutput<M>, TrainError>
    where
        M: Module + ModuleDisplay + 'static,
        T: Task<M> + Clone + fmt::Debug + 'static,
        T::Item: fmt::Debug + 'static,
    {
        let config = &self.config;
        config.validate()?;
        config.optimizer.validate()?;
        if train.is_empty() || valid.is_empty() {
            return Err(TrainError::InvalidConfig(
                "training and validation need at least one example each".into(),
            ));
        }
        let devices = if self.devices.is_empty() {
            model.devices().into_iter().take(1).collect()
        } else {
            self.devices.clone()
        };
        let replicas = devices.len();
        if task.constrains() {
            return Err(TrainError::InvalidConfig(
                "the task constrains the model after every optimizer step (e.g. pruning), which \
                 burn-train's Learner cannot do: train it with lmforge's Trainer"
                    .into(),
            ));
        }
        if config.parallelism == Parallelism::Ddp {
            if let Some(device) = devices.iter().find(|d| !supports_collectives(d)) {
                return Err(TrainError::InvalidConfig(format!(
                    "DDP needs collective operations, which burn 0.22 implements on CUDA and \
                     remote devices only; {device:?} has none (use Parallelism::DataParallel)"
                )));
            }
            let names: Vec<String> = devices.iter().map(|d| format!("{d:?}")).collect();
            if (1..names.len()).any(|i| names[..i].contains(&names[i])) {
                return Err(TrainError::InvalidConfig(
                    "DDP needs distinct devices; a device is listed twice".into(),
                ));
            }
        }
        // Full batches on every device for every step: equal shards, so every replica takes
        // the same steps (DDP's all-reduce needs every peer) and the loss scaling is exact.
        let per_step = self.examples_per_step();
        let used = train.len() / per_step * per_step;
        if used == 0 {
            return Err(TrainError::InvalidConfig(format!(
                "{} training examples do not fill one step of {replicas} device(s) x batch_size \
                 {} x grad_accumulation {}",
                train.len(),
                config.batch_size,
                config.grad_accumulation
            )));
        }
        let mut train = train;
        train.truncate(used);
        let steps = self.steps(used);

        // burn-train sums replica gradients in the data-parallel strategy and averages them
        // in DDP; it always sums accumulated batches.
        let summed_replicas = match config.parallelism {
            Parallelism::DataParallel => replicas,
            Parallelism::Ddp => 1,
        };
        let summed = (summed_replicas * config.grad_accumulation) as f64;
        let settings = StepSettings {
            loss_scale: 1.0 / summed,
            // Each summed gradient (a replica's share of an accumulated batch) is clipped to
            // its part of the bound, so their sum stays within `max_grad_norm`.
            max_grad_norm: config.max_grad_norm.map(|max| max / summed),
            seed: config.seed,
        };
        let optimizer = config.optimizer.init(&model)?;
        let scheduler = config.optimizer.group_schedulers(&model, |factor| {
            ScheduleLr::new(config.schedule.clone(), steps, factor)
        })?;
        let interrupter = Interrupter::new();
        let task_model =
            TaskModel::new(model, task.clone(), settings).reporting_to(interrupter.clone());
        let failures = task_model.failures.clone();
        let learner = Learner::new(task_model, optimizer, scheduler);

        let loader = |items: Vec<T::Item>| -> Arc<dyn DataLoader<TaskBatch<T::Item>>> {
            DataLoaderBuilder::new(TaskBatcher::new(config.batch_size))
                .batch_size(config.batch_size)
                .build(NumberedDataset::new(items))
        };
        let strategy = match config.parallelism {
            Parallelism::DataParallel => {
                ExecutionStrategy::MultiDevice(devices.clone(), MultiDeviceOptim::OptimMainDevice)
            }
            Parallelism::Ddp => ExecutionStrategy::DistributedDataParallel {
                context: DistributedContext::init(
                    devices.clone(),
                    DistributedConfig {
                        all_reduce_op: ReduceOperation::Mean,
                    },
                ),
                devices: devices.clone(),
            },
        };
        let mut training = SupervisedTraining::new(dir, loader(train), loader(valid))
            .with_training_strategy(TrainingStrategy::Default(strategy))
            .with_interrupter(interrupter.clone())
            .metric_train_numeric(LossMetric::new())
            .metric_valid_numeric(LossMetric::new())
            .metric_train_numeric(LmPerplexity::new())
            .metric_valid_numeric(LmPerplexity::new())
            .metric_train_numeric(LmAccuracy::new())
            .metric_valid_numeric(LmAccuracy::new())
            .num_epochs(config.epochs)
            .grads_accumulation(config.grad_accumulation);
        if self.quiet {
            training = training.renderer(Box::new(Silent));
        }
        // Task failures stop the run through the interrupter (no panic); a panic inside
        // burn-train itself still becomes an error where unwinding is on.
        let launched =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| training.launch(learner)));
        let failure = TrainError::Learner;
        if let Some(message) = failures.first() {
            return Err(failure(message));
        }
        let result = launched.map_err(|payload| failure(panic_message(payload.as_ref())))?;
        if let Some(error) = interrupter.error() {
            return Err(failure(error.to_string()));
        }
        Ok(LearnerOutput {
            model: result.model.model.valid(),
            steps,
        })
    }
}

/// A burn-train renderer that shows nothing.
struct Silent;

impl MetricsRendererTraining for Silent {
    fn update_train(&mut self, _state: MetricState) {}
    fn update_valid(&mut self, _state: MetricState) {}
}

impl MetricsRendererEvaluation for Silent {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
}

impl TrainingProgressLogger for Silent {
    fn start(&mut self, _: usize, _: usize, _: Option<usize>, _: Option<&str>) {}
    fn update_epoch(&mut self, _epoch: usize) {}
    fn start_split(&mut self, _split: &str, _total_items: usize) {}
    fn update_split(&mut self, _items_processed: usize) {}
    fn end_split(&mut self) {}
    fn end(&mut self) {}
    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for Silent {
    fn start_global_progress(&mut self, _total_tests: usize) {}
    fn start_test(&mut self, _name: &str, _total_items: usize) {}
    fn update_test_progress(&mut self, _items_processed: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRenderer for Silent {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, _definition: MetricDefinition) {}
}

/// Whether burn 0.22 can run collective operations (all-reduce) on `device`.
fn supports_collectives(device: &Device) -> bool {
    let name = format!("{device:?}");
    name.contains("Cuda") || name.contains("Remote")
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "training panicked".to_string()
    }
}
