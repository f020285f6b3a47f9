//! Optimizers: AdamW with weight-decay exclusions and SGD, built on burn's `ModuleOptimizer`,
//! with per-group learning-rate factors (e.g. a faster task head when fine-tuning).

use burn::lr_scheduler::LrScheduler;
use burn::lr_scheduler::LrSchedulerRecord;
use burn::lr_scheduler::module_lr_scheduler::{ModuleLearningRate, ModuleLrScheduler};
use burn::module::{Module, ParamGroup};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, ModuleOptimizer,
    Optimizer, SgdConfig,
};
use burn::tensor::{Device, Tensor};
use lmforge_layers::{AdamWStep, adamw_step};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::params::{compile, group_matching, parameters};

/// Which optimizer updates the parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OptimizerKind {
    /// AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay
    /// `param -= lr * weight_decay * param`, as PyTorch's `torch.optim.AdamW`.
    AdamW {
        /// First-moment decay. PyTorch's default: 0.9.
        beta_1: f32,
        /// Second-moment decay. PyTorch's default: 0.999.
        beta_2: f32,
        /// Added to the denominator. PyTorch's default: 1e-8.
        epsilon: f32,
    },
    /// Stochastic gradient descent, optionally with momentum; its weight decay is the classic
    /// L2 penalty (added to the gradient).
    Sgd {
        /// Momentum factor (0: none).
        momentum: f64,
    },
}

/// Which parameters get no weight decay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoDecay {
    /// Exclude every one-dimensional parameter: biases and the scales/shifts of LayerNorm and
    /// RMSNorm. Default: true.
    pub biases_and_norms: bool,
    /// Exclude the weights of embedding tables (token, position, token type). Default: true.
    pub embeddings: bool,
    /// Also exclude parameters whose path matches any of these regular expressions.
    pub patterns: Vec<String>,
}

impl Default for NoDecay {
    fn default() -> Self {
        Self {
            biases_and_norms: true,
            embeddings: true,
            patterns: Vec::new(),
        }
    }
}

/// A learning-rate factor for the parameters whose path matches a regular expression.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrGroup {
    /// Regular expression over parameter paths, e.g. `^classifier\.`.
    pub pattern: String,
    /// The group's learning rate is the schedule's times this factor.
    pub factor: f64,
}

/// The optimizer of a run: kind, weight decay and its exclusions, learning-rate groups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    /// AdamW or SGD.
    pub kind: OptimizerKind,
    /// Weight decay (AdamW: decoupled; SGD: L2 penalty). Default: 0.01.
    pub weight_decay: f32,
    /// Parameters exempt from weight decay.
    pub no_decay: NoDecay,
    /// Learning-rate factors for groups of parameters; the last matching group wins.
    pub lr_groups: Vec<LrGroup>,
}

impl OptimizerConfig {
    /// AdamW with PyTorch's defaults (betas 0.9/0.999, epsilon 1e-8), weight decay 0.01,
    /// excluding biases, norms and embeddings from decay.
    pub fn adamw() -> Self {
        Self {
            kind: OptimizerKind::AdamW {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-8,
            },
            weight_decay: 0.01,
            no_decay: NoDecay::default(),
            lr_groups: Vec::new(),
        }
    }

    /// SGD with the given momentum and no weight decay.
    pub fn sgd(momentum: f64) -> Self {
        Self {
            kind: OptimizerKind::Sgd { momentum },
            weight_decay: 0.0,
            no_decay: NoDecay::default(),
            lr_groups: Vec::new(),
        }
    }

    /// Sets the weight decay.
    pub fn with_weight_decay(mut self, weight_decay: f32) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// Sets which parameters are exempt from weight decay.
    pub fn with_no_decay(mut self, no_decay: NoDecay) -> Self {
        self.no_decay = no_decay;
        self
    }

    /// Adds a learning-rate factor for the parameters matching `pattern`.
    pub fn with_lr_group(mut self, pattern: impl Into<String>, factor: f64) -> Self {
        self.lr_groups.push(LrGroup {
            pattern: pattern.into(),
            factor,
        });
        self
    }

    pub(crate) fn validate(&self) -> Result<(), TrainError> {
        let bad = |what: String| Err(TrainError::InvalidConfig(what));
        if !self.weight_decay.is_finite() || self.weight_decay < 0.0 {
            return bad(format!(
                "weight_decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        match self.kind {
            OptimizerKind::AdamW {
                beta_1,
                beta_2,
                epsilon,
            } => {
                if !(0.0..1.0).contains(&beta_1) || !(0.0..1.0).contains(&beta_2) {
                    return bad(format!(
                        "AdamW betas must be in [0, 1), got {beta_1}, {beta_2}"
                    ));
                }
                if epsilon <= 0.0 {
                    return bad(format!("AdamW epsilon must be > 0, got {epsilon}"));
                }
            }
            OptimizerKind::Sgd { momentum } => {
                if !(0.0..1.0).contains(&momentum) {
                    return bad(format!("SGD momentum must be in [0, 1), got {momentum}"));
                }
            }
        }
        for group in &self.lr_groups {
            if !group.factor.is_finite() || group.factor < 0.0 {
                return bad(format!("lr group `{}` factor must be >= 0", group.pattern));
            }
        }
        compile(&self.no_decay.patterns)?;
        compile(
            &self
                .lr_groups
                .iter()
                .map(|g| g.pattern.clone())
                .collect::<Vec<_>>(),
        )?;
        Ok(())
    }

    /// The parameters of `model` that weight decay skips.
    pub fn no_decay_group<M: Module>(&self, model: &M) -> Result<ParamGroup, TrainError> {
        let patterns = compile(&self.no_decay.patterns)?;
        let ids = parameters(model)
            .into_iter()
            .filter(|p| {
                (self.no_decay.biases_and_norms && p.shape.len() == 1)
                    || (self.no_decay.embeddings && p.owner.ends_with("Embedding"))
                    || patterns.iter().any(|r| r.is_match(&p.path))
            })
            .map(|p| p.id)
            .collect();
        Ok(ParamGroup::from_ids(ids))
    }

    /// Builds burn's optimizer for `model`: one optimizer with weight decay, and the same one
    /// without it for the excluded parameters.
    ///
    /// # Errors
    /// [`TrainError::InvalidConfig`] for out-of-range values or bad patterns.
    pub fn init<M: Module>(&self, model: &M) -> Result<ModuleOptimizer, TrainError> {
        self.validate()?;
        let no_decay = self.no_decay_group(model)?;
        Ok(match self.kind {
            OptimizerKind::AdamW {
                beta_1,
                beta_2,
                epsilon,
            } => {
                let adamw = |weight_decay: f32| FusedAdamW {
                    composed: AdamWConfig::new()
                        .with_beta_1(beta_1)
                        .with_beta_2(beta_2)
                        .with_epsilon(epsilon)
                        .with_weight_decay(weight_decay)
                        .build(),
                    beta_1,
                    beta_2,
                    epsilon,
                    weight_decay,
                };
                ModuleOptimizer::from(adamw(self.weight_decay)).with_group(
                    no_decay,
                    adamw(0.0),
                    None,
                )
            }
            OptimizerKind::Sgd { momentum } => {
                let momentum = (momentum > 0.0).then(|| {
                    MomentumConfig::new()
                        .with_momentum(momentum)
                        .with_dampening(0.0)
                });
                let decay =
                    (self.weight_decay > 0.0).then(|| WeightDecayConfig::new(self.weight_decay));
                SgdConfig::new()
                    .with_momentum(momentum.clone())
                    .with_weight_decay(decay)
                    .init()
                    .with_group(
                        no_decay,
                        SgdConfig::new().with_momentum(momentum).build(),
                        None,
                    )
            }
        })
    }

    /// The learning rate of every parameter of `model` when the schedule gives `lr`: `lr`
    /// times the factor of the last matching [`LrGroup`].
    pub fn learning_rates<M: Module>(
        &self,
        model: &M,
        lr: f64,
    ) -> Result<ModuleLearningRate, TrainError> {
        Ok(self
            .group_schedulers(model, |factor| Fixed(lr * factor))?
            .step())
    }

    /// burn's per-group scheduler for `model`: `scheduler(1.0)` for every parameter, then
    /// `scheduler(factor)` for the parameters of each [`LrGroup`] (the last match wins).
    pub(crate) fn group_schedulers<M: Module, S: LrScheduler + Clone + 'static>(
        &self,
        model: &M,
        scheduler: impl Fn(f64) -> S,
    ) -> Result<ModuleLrScheduler, TrainError> {
        let mut groups = ModuleLrScheduler::new(scheduler(1.0));
        for group in &self.lr_groups {
            let ids = group_matching(model, std::slice::from_ref(&group.pattern))?;
            groups = groups.with_group(ids, scheduler(group.factor));
        }
        Ok(groups)
    }
}

/// burn's AdamW (same state, so checkpoints are interchangeable), with each parameter's update
/// run as one fused pass on flex ([`lmforge_layers::adamw_step`]: the same `f32` operations in
/// the same order, spread over the threads) instead of about fourteen tensor operations.
/// Elsewhere burn's composed update runs.
#[derive(Clone)]
struct FusedAdamW {
    composed: AdamW,
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let time = state.as_ref().map_or(1, |s| s.momentum.time + 1);
        let moments = state
            .as_ref()
            .map(|s| (s.momentum.moment_1.clone(), s.momentum.moment_2.clone()));
        let step = AdamWStep {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            time: time as i32,
            lr,
            weight_decay: self.weight_decay as f64,
        };
        match adamw_step(tensor.clone(), grad.clone(), moments, step) {
            Some((tensor, moment_1, moment_2)) => {
                let momentum = AdaptiveMomentumState::new(time, moment_1, moment_2);
                (tensor, Some(AdamWState::new(momentum)))
            }
            None => self.composed.step(lr, tensor, grad, state),
        }
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        AdamW::to_device(state, device)
    }
}

/// A scheduler that always answers the same rate: lmforge computes each step's rate from its
/// [`Schedule`](crate::Schedule) and hands burn a fixed one per parameter group.
#[derive(Clone)]
struct Fixed(f64);

impl LrScheduler for Fixed {
    fn step(&mut self) -> f64 {
        self.0
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new()
    }

    fn load_record(&mut self, _record: LrSchedulerRecord) {}
}
