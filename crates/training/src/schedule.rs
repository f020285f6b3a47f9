//! Learning-rate schedules: linear warmup, then constant, linear or cosine decay.
//!
//! A schedule is a pure function of the optimizer step, so a resumed run recomputes the exact
//! learning rate of any step without carrying scheduler state.

use serde::{Deserialize, Serialize};

/// What the learning rate does after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decay {
    /// Stay at the peak learning rate.
    Constant,
    /// Fall linearly from the peak to `final_lr` at the last step.
    Linear,
    /// Follow half a cosine from the peak to `final_lr` at the last step
    /// (Loshchilov & Hutter, *SGDR*, 2017, without restarts).
    Cosine,
}

/// A learning-rate schedule: `warmup_steps` of linear warmup up to `peak_lr`, then [`Decay`]
/// down to `final_lr` over the remaining steps of the run.
///
/// Step `s` (0-based: the `s`-th optimizer update) uses
/// - warmup, `s < warmup_steps`: `peak_lr * (s + 1) / warmup_steps`, so the first update is not
///   wasted at 0 and the last warmup step reaches the peak;
/// - after warmup, with `p = (s - warmup_steps) / (total_steps - warmup_steps)` in `[0, 1)`:
///   constant `peak_lr`; linear `peak_lr + (final_lr - peak_lr) * p`;
///   cosine `final_lr + (peak_lr - final_lr) * (1 + cos(pi * p)) / 2`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// The learning rate reached at the end of warmup.
    pub peak_lr: f64,
    /// Number of warmup steps (0: start at the peak).
    pub warmup_steps: usize,
    /// The shape after warmup.
    pub decay: Decay,
    /// Where linear and cosine decay end. Ignored by [`Decay::Constant`].
    pub final_lr: f64,
}

impl Schedule {
    /// A constant learning rate.
    pub fn constant(lr: f64) -> Self {
        Self {
            peak_lr: lr,
            warmup_steps: 0,
            decay: Decay::Constant,
            final_lr: lr,
        }
    }

    /// Linear warmup over `warmup_steps`, then cosine decay to 0.
    pub fn warmup_cosine(peak_lr: f64, warmup_steps: usize) -> Self {
        Self {
            peak_lr,
            warmup_steps,
            decay: Decay::Cosine,
            final_lr: 0.0,
        }
    }

    /// Linear warmup over `warmup_steps`, then linear decay to 0 (BERT's schedule).
    pub fn warmup_linear(peak_lr: f64, warmup_steps: usize) -> Self {
        Self {
            peak_lr,
            warmup_steps,
            decay: Decay::Linear,
            final_lr: 0.0,
        }
    }

    /// Sets the learning rate that linear and cosine decay end at.
    pub fn with_final_lr(mut self, final_lr: f64) -> Self {
        self.final_lr = final_lr;
        self
    }

    /// The learning rate of optimizer step `step` (0-based) in a run of `total_steps` steps.
    pub fn lr(&self, step: usize, total_steps: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        match self.decay {
            Decay::Constant => self.peak_lr,
            Decay::Linear => self.peak_lr + (self.final_lr - self.peak_lr) * progress,
            Decay::Cosine => {
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                self.final_lr + (self.peak_lr - self.final_lr) * cosine
            }
        }
    }

    /// Checks that the rates are finite and not negative.
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (name, value) in [("peak_lr", self.peak_lr), ("final_lr", self.final_lr)] {
            if !value.is_finite() || value < 0.0 {
                return Err(format!(
                    "schedule {name} must be finite and >= 0, got {value}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values worked out by hand: peak 1.0, 2 warmup steps, 6 steps in all, so decay covers
    /// steps 2..6 with progress 0, 1/4, 2/4, 3/4.
    #[test]
    fn values_equal_a_hand_written_list() {
        let close = |a: &[f64], b: &[f64]| {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() < 1e-12, "{a:?} != {b:?}");
            }
        };
        let run = |s: Schedule| (0..6).map(|i| s.lr(i, 6)).collect::<Vec<_>>();

        close(&run(Schedule::constant(0.3)), &[0.3; 6]);
        close(
            &run(Schedule::warmup_linear(1.0, 2)),
            &[0.5, 1.0, 1.0, 0.75, 0.5, 0.25],
        );
        // cos(pi/4) = sqrt(2)/2: (1 + 0.70711) / 2 = 0.85355; cos(3pi/4): 0.14645.
        let s = 0.5f64.sqrt() / 2.0;
        close(
            &run(Schedule::warmup_cosine(1.0, 2)),
            &[0.5, 1.0, 1.0, 0.5 + s, 0.5, 0.5 - s],
        );
        // With a floor of 0.2 the cosine spans 0.8: 0.2 + 0.8 * (1 + cos) / 2.
        close(
            &run(Schedule::warmup_cosine(1.0, 2).with_final_lr(0.2)),
            &[
                0.5,
                1.0,
                1.0,
                0.2 + 0.8 * (0.5 + s),
                0.6,
                0.2 + 0.8 * (0.5 - s),
            ],
        );
        // Past the end the rate stays at the final value.
        assert_eq!(Schedule::warmup_linear(1.0, 2).lr(10, 6), 0.0);
    }

    #[test]
    fn rejects_negative_rates() {
        assert!(Schedule::constant(-1.0).validate().is_err());
        assert!(Schedule::constant(f64::NAN).validate().is_err());
        assert!(Schedule::constant(1e-3).validate().is_ok());
    }
}
