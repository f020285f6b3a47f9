//! Unstructured magnitude pruning: zero the smallest weights, one-shot or gradually.

use std::collections::BTreeMap;
use std::sync::Mutex;

use burn::module::Module;
use lmforge_training::{StepContext, StepOutput, Task, TaskError};
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::CompressionError;
use crate::paths::{HostTransform, Site, map_host};
use crate::quantize::compile;

/// Over what the smallest weights are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    /// Each weight matrix loses the same fraction of its values.
    Layer,
    /// The smallest weights over all selected matrices together: layers with many small
    /// weights lose more.
    Global,
}

/// Which weights magnitude pruning considers, and how many it removes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneConfig {
    /// Fraction of the selected weights set to zero, in `[0, 1)`.
    pub sparsity: f64,
    /// Per matrix or over all of them.
    pub scope: Scope,
    /// Types of the modules whose 2-D `weight` is pruned. Default: `Linear`.
    pub owners: Vec<String>,
    /// Regular expressions over parameter paths to leave alone (e.g. `^lm_head\.`).
    pub skip: Vec<String>,
}

impl PruneConfig {
    /// Prunes `sparsity` of every `Linear` weight matrix, layer by layer.
    pub fn new(sparsity: f64) -> Self {
        Self {
            sparsity,
            scope: Scope::Layer,
            owners: vec!["Linear".into()],
            skip: Vec::new(),
        }
    }

    /// Counts the smallest weights over all matrices together.
    pub fn global(mut self) -> Self {
        self.scope = Scope::Global;
        self
    }

    /// Also prunes the weights of modules of type `owner` (e.g. `Embedding`).
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owners.push(owner.into());
        self
    }

    /// Leaves the parameters whose path matches `pattern` alone.
    pub fn with_skip(mut self, pattern: impl Into<String>) -> Self {
        self.skip.push(pattern.into());
        self
    }

    fn validate(&self) -> Result<Vec<Regex>, CompressionError> {
        if !(0.0..1.0).contains(&self.sparsity) {
            return Err(CompressionError::InvalidConfig(format!(
                "sparsity must be in [0, 1), got {}",
                self.sparsity
            )));
        }
        compile(&self.skip)
    }

    fn selects(&self, site: &Site, skip: &[Regex]) -> bool {
        site.shape.len() == 2
            && site.path.ends_with("weight")
            && self.owners.iter().any(|o| o == &site.owner)
            && !skip.iter().any(|r| r.is_match(&site.path))
    }
}

/// Which weights are kept, by parameter path (`true` = kept), row-major like the weight.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Masks {
    /// One mask per pruned parameter.
    pub masks: BTreeMap<String, Vec<bool>>,
}

impl Masks {
    /// Sets the removed weights of `model` to zero (parameter ids and gradient settings are
    /// kept, so optimizer state still applies).
    ///
    /// # Errors
    /// [`CompressionError::InvalidConfig`] when a mask names a parameter the model does not have
    /// or has another number of values than it (masks computed for another model, or before
    /// heads were removed).
    pub fn apply<M: Module>(&self, model: M) -> Result<M, CompressionError> {
        let sites = lmforge_training::params::parameters(&model);
        for (path, mask) in &self.masks {
            let site = sites.iter().find(|s| &s.path == path);
            let numel = site.map(|s| s.shape.iter().product::<usize>());
            if numel != Some(mask.len()) {
                return Err(CompressionError::InvalidConfig(match site {
                    None => format!("a mask names `{path}`, which the model does not have"),
                    Some(s) => format!(
                        "the mask of `{path}` has {} values, the parameter {:?}",
                        mask.len(),
                        s.shape
                    ),
                }));
            }
        }
        let mut apply = Apply { masks: self };
        Ok(map_host(model, &mut apply))
    }

    /// Number of weights removed.
    pub fn removed(&self) -> usize {
        self.masks
            .values()
            .map(|m| m.iter().filter(|&&keep| !keep).count())
            .sum()
    }

    /// Number of weights the masks cover.
    pub fn len(&self) -> usize {
        self.masks.values().map(Vec::len).sum()
    }

    /// Whether the masks cover no weight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fraction of the covered weights removed.
    pub fn sparsity(&self) -> f64 {
        self.removed() as f64 / self.len().max(1) as f64
    }
}

struct Apply<'a> {
    masks: &'a Masks,
}

impl HostTransform for Apply<'_> {
    fn select(&mut self, site: &Site) -> bool {
        self.masks.masks.contains_key(&site.path)
    }

    fn transform(&mut self, site: &Site, mut values: Vec<f32>) -> Vec<f32> {
        let mask = &self.masks.masks[&site.path];
        assert_eq!(mask.len(), values.len(), "mask of `{}`", site.path);
        for (value, &keep) in values.iter_mut().zip(mask) {
            if !keep {
                *value = 0.0;
            }
        }
        values
    }
}

/// The masks that remove the `config.sparsity` smallest-magnitude weights of `model`
/// (exactly `round(sparsity · n)` of them per matrix, or over all matrices for
/// [`Scope::Global`]; ties are broken by position).
///
/// # Errors
/// [`CompressionError::InvalidConfig`] for a sparsity outside `[0, 1)`, a bad pattern, or a
/// config that selects no weight.
pub fn magnitude_masks<M: Module>(
    model: &M,
    config: &PruneConfig,
) -> Result<Masks, CompressionError> {
    let skip = config.validate()?;
    let mut read = Read {
        config,
        skip: &skip,
        weights: Vec::new(),
    };
    let _ = map_host(model.clone(), &mut read);
    if read.weights.is_empty() {
        return Err(CompressionError::InvalidConfig(format!(
            "no weight of a module of type {:?} to prune",
            config.owners
        )));
    }
    let mut masks = Masks::default();
    match config.scope {
        Scope::Layer => {
            for (path, values) in read.weights {
                let order: Vec<(usize, usize)> = (0..values.len()).map(|i| (0, i)).collect();
                let removed = smallest(&order, |&(_, i)| values[i].abs(), config.sparsity);
                let mut mask = vec![true; values.len()];
                for (_, i) in removed {
                    mask[i] = false;
                }
                masks.masks.insert(path, mask);
            }
        }
        Scope::Global => {
            let order: Vec<(usize, usize)> = read
                .weights
                .iter()
                .enumerate()
                .flat_map(|(t, (_, values))| (0..values.len()).map(move |i| (t, i)))
                .collect();
            let removed = smallest(
                &order,
                |&(t, i)| read.weights[t].1[i].abs(),
                config.sparsity,
            );
            let mut all: Vec<Vec<bool>> = read
                .weights
                .iter()
                .map(|(_, values)| vec![true; values.len()])
                .collect();
            for (t, i) in removed {
                all[t][i] = false;
            }
            for ((path, _), mask) in read.weights.into_iter().zip(all) {
                masks.masks.insert(path, mask);
            }
        }
    }
    Ok(masks)
}

/// The `round(fraction · n)` entries of `order` with the smallest key (ties: earlier first).
fn smallest(
    order: &[(usize, usize)],
    key: impl Fn(&(usize, usize)) -> f32,
    fraction: f64,
) -> Vec<(usize, usize)> {
    let k = (fraction * order.len() as f64).round() as usize;
    if k == 0 {
        return Vec::new();
    }
    let mut order = order.to_vec();
    let compare = |a: &(usize, usize), b: &(usize, usize)| key(a).total_cmp(&key(b)).then(a.cmp(b));
    order.select_nth_unstable_by(k - 1, compare);
    order.truncate(k);
    order
}

struct Read<'a> {
    config: &'a PruneConfig,
    skip: &'a [Regex],
    weights: Vec<(String, Vec<f32>)>,
}

impl HostTransform for Read<'_> {
    fn select(&mut self, site: &Site) -> bool {
        self.config.selects(site, self.skip)
    }

    fn transform(&mut self, site: &Site, values: Vec<f32>) -> Vec<f32> {
        self.weights.push((site.path.clone(), values.clone()));
        values
    }
}

/// One-shot magnitude pruning: the model with its smallest weights set to zero, and the
/// masks (to hold them at zero while fine-tuning, with [`PrunedTask::fixed`]).
///
/// # Errors
/// As [`magnitude_masks`].
pub fn prune_magnitude<M: Module>(
    model: M,
    config: &PruneConfig,
) -> Result<(M, Masks), CompressionError> {
    let masks = magnitude_masks(&model, config)?;
    Ok((masks.apply(model)?, masks))
}

/// Fraction of exactly-zero values among the weights `config` selects (its `sparsity` is
/// not used).
///
/// # Errors
/// [`CompressionError::InvalidConfig`] for a bad pattern or a config that selects no weight.
pub fn measured_sparsity<M: Module>(
    model: &M,
    config: &PruneConfig,
) -> Result<f64, CompressionError> {
    let skip = compile(&config.skip)?;
    let mut read = Read {
        config,
        skip: &skip,
        weights: Vec::new(),
    };
    let _ = map_host(model.clone(), &mut read);
    let total: usize = read.weights.iter().map(|(_, v)| v.len()).sum();
    if total == 0 {
        return Err(CompressionError::InvalidConfig("no weight selected".into()));
    }
    let zeros: usize = read
        .weights
        .iter()
        .map(|(_, v)| v.iter().filter(|&&x| x == 0.0).count())
        .sum();
    Ok(zeros as f64 / total as f64)
}

/// Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"): every `every`
/// updates from `start` to `end`, the masks are recomputed from the current weights with
/// sparsity `s(t) = s_f + (s_i - s_f) (1 - (t - start) / (end - start))³`, rising from
/// `initial` to `config.sparsity`; between recomputations the masks are held fixed, and after
/// `end` the final masks stay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradualPruning {
    /// The final sparsity (`config.sparsity`), scope and selection.
    pub config: PruneConfig,
    /// Sparsity of the first masks, at `start`.
    pub initial: f64,
    /// Update count of the first masks.
    pub start: usize,
    /// Update count of the last masks (the final sparsity).
    pub end: usize,
    /// Updates between recomputations.
    pub every: usize,
}

impl GradualPruning {
    /// Rises from 0 to `config.sparsity` between updates `start` and `end`, new masks every
    /// `every` updates.
    pub fn new(config: PruneConfig, start: usize, end: usize, every: usize) -> Self {
        Self {
            config,
            initial: 0.0,
            start,
            end,
            every,
        }
    }

    /// Checks the schedule.
    ///
    /// # Errors
    /// [`CompressionError::InvalidConfig`] when `every` is 0, `end < start`, `end - start` is
    /// not a multiple of `every` (the final sparsity would never be reached), or a sparsity is
    /// outside `[0, 1)`.
    pub fn validate(&self) -> Result<(), CompressionError> {
        self.config.validate()?;
        let bad = |m: String| Err(CompressionError::InvalidConfig(m));
        if self.every == 0 {
            return bad("gradual pruning: `every` must be > 0".into());
        }
        if self.end < self.start || !(self.end - self.start).is_multiple_of(self.every) {
            return bad(format!(
                "gradual pruning: end ({}) - start ({}) must be a non-negative multiple of every ({})",
                self.end, self.start, self.every
            ));
        }
        if !(0.0..1.0).contains(&self.initial) {
            return bad(format!("initial sparsity {} outside [0, 1)", self.initial));
        }
        Ok(())
    }

    /// The update count of the masks in force after `step` updates, if any yet.
    pub fn mask_step(&self, step: usize) -> Option<usize> {
        (step >= self.start)
            .then(|| self.start + (step.min(self.end) - self.start) / self.every * self.every)
    }

    /// The sparsity of the masks computed at update count `step`.
    pub fn sparsity_at(&self, step: usize) -> f64 {
        if self.end == self.start || step >= self.end {
            return self.config.sparsity;
        }
        let progress = step.saturating_sub(self.start) as f64 / (self.end - self.start) as f64;
        self.config.sparsity + (self.initial - self.config.sparsity) * (1.0 - progress).powi(3)
    }
}

enum Plan {
    Fixed(Masks),
    Gradual {
        schedule: GradualPruning,
        /// The masks in force and the update count they were computed at.
        current: Mutex<Option<(usize, Masks)>>,
    },
}

/// A task whose model keeps pruned weights at exactly zero while it trains: after every
/// optimizer update the masks are applied again (the optimizer's momentum would otherwise
/// move them off zero). Wraps any [`Task`].
///
/// A gradual task remembers the masks in force: use one task per training run (a fresh one
/// to resume), not one task for two different models.
pub struct PrunedTask<T> {
    inner: T,
    plan: Plan,
}

impl<T> PrunedTask<T> {
    /// Holds `masks` fixed (fine-tuning after one-shot pruning).
    pub fn fixed(inner: T, masks: Masks) -> Self {
        Self {
            inner,
            plan: Plan::Fixed(masks),
        }
    }

    /// Prunes gradually while training.
    ///
    /// # Errors
    /// As [`GradualPruning::validate`].
    pub fn gradual(inner: T, schedule: GradualPruning) -> Result<Self, CompressionError> {
        schedule.validate()?;
        Ok(Self {
            inner,
            plan: Plan::Gradual {
                schedule,
                current: Mutex::new(None),
            },
        })
    }

    /// The masks in force now (none before a gradual schedule starts).
    pub fn masks(&self) -> Option<Masks> {
        match &self.plan {
            Plan::Fixed(masks) => Some(masks.clone()),
            Plan::Gradual { current, .. } => current
                .lock()
                .expect("mask lock")
                .as_ref()
                .map(|(_, m)| m.clone()),
        }
    }
}

impl<M: Module, T: Task<M>> Task<M> for PrunedTask<T> {
    type Item = T::Item;

    fn step(
        &self,
        model: &M,
        items: &[Self::Item],
        context: &mut StepContext<'_>,
    ) -> Result<StepOutput, TaskError> {
        self.inner.step(model, items, context)
    }

    /// Pruning holds removed weights at zero after every update.
    fn constrains(&self) -> bool {
        true
    }

    /// Applies the inner task's constraint, then the masks. For a gradual schedule, masks
    /// are computed from the weights when their update count is reached (or on resume: the
    /// checkpoint's weights are zero exactly where the masks in force remove them, so the same
    /// masks come back).
    fn constrain(&self, model: M, step: usize) -> Result<M, TaskError> {
        let model = self.inner.constrain(model, step)?;
        match &self.plan {
            Plan::Fixed(masks) => Ok(masks.apply(model)?),
            Plan::Gradual { schedule, current } => {
                let Some(mask_step) = schedule.mask_step(step) else {
                    return Ok(model);
                };
                // A poisoned lock still holds a whole `(step, masks)` value (it is replaced,
                // never edited in place), so carry on with it.
                let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
                if current.as_ref().map(|(s, _)| *s) != Some(mask_step) {
                    let config = PruneConfig {
                        sparsity: schedule.sparsity_at(mask_step),
                        ..schedule.config.clone()
                    };
                    *current = Some((mask_step, magnitude_masks(&model, &config)?));
                }
                Ok(current.as_ref().expect("masks").1.apply(model)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> GradualPruning {
        GradualPruning::new(PruneConfig::new(0.5), 10, 40, 10)
    }

    /// Hand-computed: s(t) = 0.5 (1 - (1 - (t-10)/30)³): t=10 -> 0, 20 -> 0.5·(1-8/27) =
    /// 0.35185..., 30 -> 0.5·(1-1/27) = 0.48148..., 40 -> 0.5.
    #[test]
    fn cubic_schedule_values() {
        let s = schedule();
        let expected = [
            (10, 0.0),
            (20, 0.5 * 19.0 / 27.0),
            (30, 0.5 * 26.0 / 27.0),
            (40, 0.5),
        ];
        for (step, want) in expected {
            assert!((s.sparsity_at(step) - want).abs() < 1e-12, "{step}");
        }
        assert_eq!(s.mask_step(9), None);
        assert_eq!(s.mask_step(10), Some(10));
        assert_eq!(s.mask_step(19), Some(10));
        assert_eq!(s.mask_step(20), Some(20));
        assert_eq!(s.mask_step(95), Some(40));
        assert!(
            GradualPruning::new(PruneConfig::new(0.5), 10, 35, 10)
                .validate()
                .is_err()
        );
        assert!(
            GradualPruning::new(PruneConfig::new(0.5), 10, 40, 0)
                .validate()
                .is_err()
        );
        assert!(
            GradualPruning::new(PruneConfig::new(1.0), 10, 40, 10)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn smallest_counts_exactly_and_breaks_ties_by_position() {
        let values = [0.5f32, -0.1, 0.1, 0.0, 2.0, -0.1];
        let order: Vec<(usize, usize)> = (0..values.len()).map(|i| (0, i)).collect();
        let mut removed = smallest(&order, |&(_, i)| values[i].abs(), 0.5);
        removed.sort();
        assert_eq!(removed, vec![(0, 1), (0, 2), (0, 3)]);
        assert!(smallest(&order, |&(_, i)| values[i].abs(), 0.0).is_empty());
    }
}
