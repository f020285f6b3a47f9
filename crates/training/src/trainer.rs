//! The step-based trainer.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Device;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, Checkpoint, TrainState};
use crate::data::Batches;
use crate::error::TrainError;
use crate::log::{Logger, Progress, Record, plot_loss_curve};
use crate::optimizer::OptimizerConfig;
use crate::params::{clip_global_norm, parameters};
use crate::schedule::Schedule;
use crate::task::{StepContext, Task};

/// The file names a run writes in its output folder.
pub mod files {
    /// The latest checkpoint (model, optimizer, training state).
    pub const CHECKPOINT: &str = "checkpoint.lmf";
    /// The parameters of the best evaluated model (burnpack, for
    /// `lmforge_models::pretrained::load`).
    pub const BEST_MODEL: &str = "best.bpk";
    /// One JSON record per line: training windows and evaluations.
    pub const METRICS: &str = "metrics.jsonl";
    /// The loss curve.
    pub const LOSS_CURVE: &str = "loss.svg";
    /// The run's [`TrainerConfig`](super::TrainerConfig) as JSON.
    pub const CONFIG: &str = "trainer.json";
}

/// Which evaluation number decides "best" and early stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Monitor {
    /// The evaluation loss; lower is better.
    Loss,
    /// The evaluation accuracy; higher is better.
    Accuracy,
}

/// Stop when the monitored number has not improved for `patience` evaluations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Evaluations without improvement before stopping.
    pub patience: usize,
    /// The smallest change that counts as an improvement.
    pub min_delta: f64,
}

/// Everything that defines a training run besides the model, the task and the data. Saved as
/// `trainer.json` in the output folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerConfig {
    /// Optimizer steps to run.
    pub steps: usize,
    /// Batches whose gradients are summed (each loss divided by this) per optimizer step.
    pub grad_accumulation: usize,
    /// The optimizer.
    pub optimizer: OptimizerConfig,
    /// The learning-rate schedule over `steps`.
    pub schedule: Schedule,
    /// Clip the global gradient norm to this value (PyTorch's `clip_grad_norm_`).
    pub max_grad_norm: Option<f64>,
    /// Evaluate every this many steps (0: only at the end). Needs validation data.
    pub eval_every: usize,
    /// Evaluate on at most this many validation batches.
    pub eval_batches: Option<usize>,
    /// What "best" means.
    pub monitor: Monitor,
    /// Early stopping, if any.
    pub early_stopping: Option<EarlyStopping>,
    /// Keep the best evaluated model (in memory, and as `best.bpk` in the output folder).
    pub keep_best: bool,
    /// Write a checkpoint every this many steps (0: only at the end). Checkpoints are written
    /// only when the trainer has an output folder.
    pub checkpoint_every: usize,
    /// Log (progress line, metrics file) every this many steps.
    pub log_every: usize,
    /// Seed for shuffling, masking and dropout.
    pub seed: u64,
    /// How progress is shown.
    pub progress: Progress,
}

impl TrainerConfig {
    /// A run of `steps` optimizer steps with AdamW and the given schedule, logging every 10
    /// steps, no clipping, no accumulation, evaluation only at the end.
    pub fn new(steps: usize, schedule: Schedule) -> Self {
        Self {
            steps,
            grad_accumulation: 1,
            optimizer: OptimizerConfig::adamw(),
            schedule,
            max_grad_norm: None,
            eval_every: 0,
            eval_batches: None,
            monitor: Monitor::Loss,
            early_stopping: None,
            keep_best: false,
            checkpoint_every: 0,
            log_every: 10,
            seed: 42,
            progress: Progress::Auto,
        }
    }

    /// Sets the optimizer.
    pub fn with_optimizer(mut self, optimizer: OptimizerConfig) -> Self {
        self.optimizer = optimizer;
        self
    }
    /// Sets the number of batches per optimizer step.
    pub fn with_grad_accumulation(mut self, batches: usize) -> Self {
        self.grad_accumulation = batches;
        self
    }
    /// Clips the global gradient norm.
    pub fn with_max_grad_norm(mut self, max_norm: f64) -> Self {
        self.max_grad_norm = Some(max_norm);
        self
    }
    /// Evaluates every `steps` steps, on at most `batches` batches.
    pub fn with_eval(mut self, steps: usize, batches: Option<usize>) -> Self {
        self.eval_every = steps;
        self.eval_batches = batches;
        self
    }
    /// Sets what "best" means.
    pub fn with_monitor(mut self, monitor: Monitor) -> Self {
        self.monitor = monitor;
        self
    }
    /// Stops after `patience` evaluations without improvement.
    pub fn with_early_stopping(mut self, patience: usize) -> Self {
        self.early_stopping = Some(EarlyStopping {
            patience,
            min_delta: 0.0,
        });
        self
    }
    /// Keeps the best evaluated model.
    pub fn with_keep_best(mut self, keep_best: bool) -> Self {
        self.keep_best = keep_best;
        self
    }
    /// Writes a checkpoint every `steps` steps.
    pub fn with_checkpoint_every(mut self, steps: usize) -> Self {
        self.checkpoint_every = steps;
        self
    }
    /// Logs every `steps` steps.
    pub fn with_log_every(mut self, steps: usize) -> Self {
        self.log_every = steps;
        self
    }
    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Sets how progress is shown.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] naming the bad value.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |what: &str| Err(TrainError::InvalidConfig(what.to_string()));
        if self.grad_accumulation == 0 {
            return bad("grad_accumulation must be >= 1");
        }
        if self.log_every == 0 {
            return bad("log_every must be >= 1");
        }
        if let Some(norm) = self.max_grad_norm
            && !(norm > 0.0 && norm.is_finite())
        {
            return bad("max_grad_norm must be > 0");
        }
        self.schedule
            .validate()
            .map_err(TrainError::InvalidConfig)?;
        self.optimizer.validate()
    }
}

/// The result of [`Trainer::fit`].
pub struct TrainOutput<M> {
    /// The model after the last step.
    pub model: M,
    /// The best evaluated model, when [`TrainerConfig::keep_best`] is on and an evaluation ran.
    pub best_model: Option<M>,
    /// Every record of the run (also in `metrics.jsonl`).
    pub history: Vec<Record>,
    /// Optimizer steps completed (fewer than configured after early stopping).
    pub steps: usize,
    /// True when early stopping ended the run.
    pub stopped_early: bool,
    /// The last evaluation, if any.
    pub last_eval: Option<Evaluation>,
}

/// Numbers from [`evaluate`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    /// Mean negative log-likelihood per target.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Fraction of correct predictions, for tasks that count them.
    pub accuracy: Option<f64>,
    /// Number of targets.
    pub count: usize,
}

impl Evaluation {
    fn monitored(&self, monitor: Monitor) -> f64 {
        match monitor {
            Monitor::Loss => self.loss,
            Monitor::Accuracy => -self.accuracy.unwrap_or(f64::NAN),
        }
    }
}

/// Evaluates `model` on up to `max_batches` batches of `data` (in order, dropout off): the
/// mean loss over all targets, perplexity and accuracy. Masks and other random choices of the
/// task use a fixed seed, so evaluations are comparable across steps.
pub fn evaluate<M: Module, T: Task<M>>(
    model: &M,
    task: &T,
    data: &Batches<T::Item>,
    max_batches: Option<usize>,
) -> Result<Evaluation, TrainError> {
    evaluate_at(model, task, data, max_batches, 0)
}

fn evaluate_at<M: Module, T: Task<M>>(
    model: &M,
    task: &T,
    data: &Batches<T::Item>,
    max_batches: Option<usize>,
    at_step: usize,
) -> Result<Evaluation, TrainError> {
    let model = model.valid();
    let device = model_device(&model);
    let mut rng = StdRng::seed_from_u64(EVAL_SEED);
    let (mut nll, mut count, mut correct, mut counts_correct) = (0.0, 0i64, 0i64, false);
    let n_batches = max_batches.unwrap_or(usize::MAX).min(data.len());
    for index in 0..n_batches {
        let items = data.batch(0, index);
        let mut context = StepContext {
            device: &device,
            rng: &mut rng,
            training: false,
            position: index as u64,
        };
        let out = task
            .step(&model, &items, &mut context)
            .map_err(|source| TrainError::Task {
                step: at_step,
                source,
            })?;
        nll += out.nll_sum.into_scalar::<f64>();
        count += out.count.into_scalar::<i64>();
        if let Some(c) = out.correct {
            correct += c.into_scalar::<i64>();
            counts_correct = true;
        }
    }
    let loss = if count > 0 { nll / count as f64 } else { 0.0 };
    Ok(Evaluation {
        loss,
        perplexity: loss.exp(),
        accuracy: (counts_correct && count > 0).then(|| correct as f64 / count as f64),
        count: count as usize,
    })
}

/// The seed of the random generator that evaluation steps get.
pub(crate) const EVAL_SEED: u64 = 0x5EED_E7A1;

/// The device of `model`'s parameters.
pub(crate) fn model_device<M: Module>(model: &M) -> Device {
    model
        .devices()
        .into_iter()
        .next()
        .expect("the model has at least one parameter")
}

/// Mixes the run's seed with a position into an independent-looking seed (SplitMix64).
pub(crate) fn mix(seed: u64, position: u64) -> u64 {
    let mut z = seed ^ position.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Trains a model with a [`Task`] on [`Batches`] of examples.
///
/// Each optimizer step reads `grad_accumulation` batches; before each batch the device's
/// random generator is seeded from the run's seed and the data position, so dropout masks are
/// reproducible and a resumed run continues exactly (this reseeds the device's global
/// generator: other random draws on that device during training are affected).
pub struct Trainer {
    config: TrainerConfig,
    output_dir: Option<PathBuf>,
    resume: Option<PathBuf>,
}

impl Trainer {
    /// A trainer for `config`, writing nothing to disk.
    pub fn new(config: TrainerConfig) -> Self {
        Self {
            config,
            output_dir: None,
            resume: None,
        }
    }

    /// Writes checkpoints, `metrics.jsonl`, `loss.svg`, `trainer.json` and `best.bpk` into `dir`.
    pub fn with_output_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.output_dir = Some(dir.into());
        self
    }

    /// Resumes from the checkpoint at `path` (see [`files::CHECKPOINT`]).
    pub fn resume_from(mut self, path: impl Into<PathBuf>) -> Self {
        self.resume = Some(path.into());
        self
    }

    /// The run's configuration.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    fn file(&self, name: &str) -> Option<PathBuf> {
        self.output_dir.as_ref().map(|d| d.join(name))
    }

    /// Trains `model` (on an autodiff device) with `task` on `train`, evaluating on `valid`.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`], [`TrainError::NotAutodiff`], a checkpoint error when
    /// resuming, [`TrainError::NonFiniteLoss`] when the loss becomes NaN or infinite, and I/O
    /// errors from the output folder.
    pub fn fit<M: Module, T: Task<M>>(
        &self,
        model: M,
        task: &T,
        train: &Batches<T::Item>,
        valid: Option<&Batches<T::Item>>,
    ) -> Result<TrainOutput<M>, TrainError> {
        let config = &self.config;
        config.validate()?;
        if config.eval_every > 0 && valid.is_none() {
            return Err(TrainError::InvalidConfig(
                "eval_every is set but no validation data was given".into(),
            ));
        }
        let device = model_device(&model);
        if !device.is_autodiff() {
            return Err(TrainError::NotAutodiff);
        }
        let mut model = model;
        let mut optimizer = config.optimizer.init(&model)?;
        let mut state = TrainState {
            step: 0,
            position: 0,
            batches_per_pass: train.len(),
            seed: config.seed,
            grad_accumulation: config.grad_accumulation,
            best: None,
            evals_without_improvement: 0,
            elapsed_s: 0.0,
            history: Vec::new(),
            params: parameters(&model)
                .into_iter()
                .map(|p| (p.path, p.shape))
                .collect(),
        };
        let mut last_checkpoint = None;
        if let Some(path) = &self.resume {
            let checkpoint = Checkpoint::read(path)?;
            model = checkpoint.load_model(model)?;
            // The loaded parameters carry the checkpoint's ids: the parameter groups (weight
            // decay exclusions) must be built from them, not from the fresh model's.
            optimizer = checkpoint.load_optimizer(config.optimizer.init(&model)?)?;
            let saved = &checkpoint.state;
            checkpoint.require_same("the seed", saved.seed, config.seed)?;
            checkpoint.require_same(
                "grad_accumulation",
                saved.grad_accumulation,
                config.grad_accumulation,
            )?;
            checkpoint.require_same(
                "the number of training batches per pass",
                saved.batches_per_pass,
                train.len(),
            )?;
            state = checkpoint.state.clone();
            last_checkpoint = Some(path.clone());
            model = task
                .constrain(model, state.step)
                .map_err(|source| TrainError::Task {
                    step: state.step,
                    source,
                })?;
        }
        if let Some(path) = self.file(files::CONFIG) {
            let json = serde_json::to_vec_pretty(config).expect("the config serializes");
            checkpoint::write_atomic(&path, &json)?;
        }
        let mut logger = Logger::new(
            config.progress,
            config.steps,
            state.step,
            self.file(files::METRICS),
            &state.history,
        )?;
        if state.step > 0 {
            logger.message(&format!(
                "resumed at step {} of {}",
                state.step, config.steps
            ));
        }

        let mut best_model = None;
        let mut last_eval = None;
        let mut stopped_early = false;
        let started = Instant::now() - std::time::Duration::from_secs_f64(state.elapsed_s);
        let (mut window_loss, mut window_steps, mut window_tokens) = (0.0, 0usize, 0usize);
        let mut window_seconds = 0.0;

        while state.step < config.steps {
            let step_start = Instant::now();
            let lr = config.schedule.lr(state.step, config.steps);
            let mut accumulator = GradientsAccumulator::<M>::new();
            let mut step_loss = 0.0;
            for _ in 0..config.grad_accumulation {
                let items = train.at(state.position);
                let seed = mix(config.seed, state.position);
                device.seed(seed);
                let mut rng = StdRng::seed_from_u64(seed);
                let mut context = StepContext {
                    device: &device,
                    rng: &mut rng,
                    training: true,
                    position: state.position,
                };
                let out = match task.step(&model, &items, &mut context) {
                    Ok(out) => out,
                    Err(source) => {
                        logger.finish();
                        return Err(TrainError::Task {
                            step: state.step,
                            source,
                        });
                    }
                };
                let loss = out.loss.div_scalar(config.grad_accumulation as f64);
                let value = loss.clone().into_scalar::<f64>();
                if !value.is_finite() {
                    logger.finish();
                    return Err(TrainError::NonFiniteLoss {
                        step: state.step,
                        loss: value * config.grad_accumulation as f64,
                        last_checkpoint,
                    });
                }
                step_loss += value;
                window_tokens += out.tokens;
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                accumulator.accumulate(&model, grads);
                state.position += 1;
            }
            let mut grads = accumulator.grads();
            let grad_norm = config
                .max_grad_norm
                .map(|max| clip_global_norm(&model, &mut grads, max));
            let rates = config.optimizer.learning_rates(&model, lr)?;
            model = optimizer.step(rates, model, grads);
            state.step += 1;
            model = match task.constrain(model, state.step) {
                Ok(model) => model,
                Err(source) => {
                    logger.finish();
                    return Err(TrainError::Task {
                        step: state.step,
                        source,
                    });
                }
            };
            window_seconds += step_start.elapsed().as_secs_f64();
            window_loss += step_loss;
            window_steps += 1;

            let last = state.step == config.steps;
            if state.step.is_multiple_of(config.log_every) || last {
                // Throughput counts training time only, not evaluations or checkpoints.
                let seconds = f64::max(window_seconds, 1e-9);
                let record = Record::Train {
                    step: state.step,
                    loss: window_loss / window_steps as f64,
                    lr,
                    grad_norm,
                    tokens_per_s: window_tokens as f64 / seconds,
                    elapsed_s: started.elapsed().as_secs_f64(),
                };
                logger.record(&record)?;
                state.history.push(record);
                (window_loss, window_steps, window_tokens, window_seconds) = (0.0, 0, 0, 0.0);
            }

            let eval_due =
                (config.eval_every > 0 && state.step.is_multiple_of(config.eval_every)) || last;
            if let (true, Some(valid)) = (eval_due, valid) {
                let evaluation = evaluate_at(&model, task, valid, config.eval_batches, state.step)?;
                let record = Record::Eval {
                    step: state.step,
                    loss: evaluation.loss,
                    perplexity: evaluation.perplexity,
                    accuracy: evaluation.accuracy,
                };
                logger.record(&record)?;
                state.history.push(record);
                last_eval = Some(evaluation);
                let value = evaluation.monitored(config.monitor);
                let min_delta = config.early_stopping.as_ref().map_or(0.0, |e| e.min_delta);
                let improved = state.best.is_none_or(|(_, best)| value < best - min_delta);
                if improved {
                    state.best = Some((state.step, value));
                    state.evals_without_improvement = 0;
                    if config.keep_best {
                        if let Some(path) = self.file(files::BEST_MODEL) {
                            lmforge_models::pretrained::save(&model, &path).map_err(|e| {
                                TrainError::Io {
                                    path,
                                    source: std::io::Error::other(e.to_string()),
                                }
                            })?;
                        }
                        best_model = Some(model.clone());
                    }
                } else {
                    state.evals_without_improvement += 1;
                }
                if let Some(early) = &config.early_stopping
                    && state.evals_without_improvement >= early.patience
                {
                    logger.message(&format!(
                        "early stopping at step {}: no improvement for {} evaluations (best at step {})",
                        state.step,
                        early.patience,
                        state.best.map_or(0, |b| b.0)
                    ));
                    stopped_early = true;
                }
            }

            let checkpoint_due =
                config.checkpoint_every > 0 && state.step.is_multiple_of(config.checkpoint_every);
            if let Some(path) = self.file(files::CHECKPOINT)
                && (checkpoint_due || last || stopped_early)
            {
                state.elapsed_s = started.elapsed().as_secs_f64();
                checkpoint::write(&path, &model, &optimizer, &state)?;
                last_checkpoint = Some(path);
            }
            if stopped_early {
                break;
            }
        }
        logger.finish();
        if let Some(path) = self.file(files::LOSS_CURVE) {
            plot_loss_curve(&state.history, path)?;
        }
        Ok(TrainOutput {
            model,
            best_model,
            history: state.history,
            steps: state.step,
            stopped_early,
            last_eval,
        })
    }
}

/// Loads the model parameters of a trainer checkpoint into `model` (built from the same
/// config), e.g. to sample from or evaluate a trained model.
///
/// # Errors
/// As [`Checkpoint::read`] and [`Checkpoint::load_model`].
pub fn load_checkpoint_model<M: Module>(model: M, path: impl AsRef<Path>) -> Result<M, TrainError> {
    Checkpoint::read(path)?.load_model(model)
}
