//! Accuracy and macro-averaged precision, recall and F1.

use crate::error::ObjectiveError;

fn check_lengths(predictions: &[i64], targets: &[i64]) -> Result<(), ObjectiveError> {
    if predictions.len() != targets.len() {
        return Err(ObjectiveError::LengthMismatch {
            what: "predictions vs targets",
            left: predictions.len(),
            right: targets.len(),
        });
    }
    Ok(())
}

/// Fraction of counted targets predicted exactly, accumulated over batches.
///
/// ```
/// use lmforge_objectives::metrics::Accuracy;
///
/// let mut acc = Accuracy::new(-100);
/// acc.update(&[1, 0, 2, 2], &[1, 1, 2, -100])?; // the last target is ignored
/// assert!((acc.value().unwrap() - 2.0 / 3.0).abs() < 1e-12);
/// # Ok::<(), lmforge_objectives::ObjectiveError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accuracy {
    ignore_index: i64,
    correct: u64,
    total: u64,
}

impl Accuracy {
    /// An empty accumulator; targets equal to `ignore_index` are skipped.
    pub fn new(ignore_index: i64) -> Self {
        Self {
            ignore_index,
            correct: 0,
            total: 0,
        }
    }

    /// Adds aligned predictions and targets (e.g. from [`predictions`](super::predictions) and
    /// [`int_values`](super::int_values)).
    ///
    /// # Errors
    /// [`ObjectiveError::LengthMismatch`] when the lengths differ.
    pub fn update(&mut self, predictions: &[i64], targets: &[i64]) -> Result<(), ObjectiveError> {
        check_lengths(predictions, targets)?;
        for (&p, &t) in predictions.iter().zip(targets) {
            if t == self.ignore_index {
                continue;
            }
            self.total += 1;
            self.correct += u64::from(p == t);
        }
        Ok(())
    }

    /// Number of counted targets.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The accuracy, `None` before any counted target.
    pub fn value(&self) -> Option<f64> {
        (self.total > 0).then(|| self.correct as f64 / self.total as f64)
    }
}

/// Counts of (target, prediction) pairs over `n_classes` classes, with scikit-learn's macro
/// averages.
///
/// Macro averages run over the classes that occur among the targets or the predictions (as
/// scikit-learn does by default); a class whose precision or recall has a zero denominator
/// scores 0 there, and macro F1 is the mean of per-class F1 scores (not the F1 of the macro
/// precision and recall).
///
/// ```
/// use lmforge_objectives::metrics::ConfusionMatrix;
///
/// let mut cm = ConfusionMatrix::new(3, -100);
/// cm.update(&[0, 0, 1, 2], &[0, 1, 1, 1])?;
/// // class 0: P = 1/2, R = 1; class 1: P = 1, R = 1/3; class 2: P = 0, R = 0 (never a target).
/// assert!((cm.macro_precision() - 0.5).abs() < 1e-12);
/// assert!((cm.macro_recall() - 4.0 / 9.0).abs() < 1e-12);
/// # Ok::<(), lmforge_objectives::ObjectiveError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfusionMatrix {
    n_classes: usize,
    ignore_index: i64,
    /// `counts[target * n_classes + prediction]`.
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// An empty matrix; targets equal to `ignore_index` are skipped.
    pub fn new(n_classes: usize, ignore_index: i64) -> Self {
        Self {
            n_classes,
            ignore_index,
            counts: vec![0; n_classes * n_classes],
        }
    }

    /// Adds aligned predictions and targets.
    ///
    /// # Errors
    /// [`ObjectiveError::LengthMismatch`] when the lengths differ;
    /// [`ObjectiveError::LabelOutOfRange`] for a (non-ignored) target or prediction outside
    /// `[0, n_classes)`. Nothing is added when an error is returned.
    pub fn update(&mut self, predictions: &[i64], targets: &[i64]) -> Result<(), ObjectiveError> {
        check_lengths(predictions, targets)?;
        let n = self.n_classes;
        let in_range = |v: i64| usize::try_from(v).ok().filter(|&v| v < n);
        let mut pairs = Vec::with_capacity(targets.len());
        for (&p, &t) in predictions.iter().zip(targets) {
            if t == self.ignore_index {
                continue;
            }
            let out = |label| ObjectiveError::LabelOutOfRange {
                label,
                n_classes: n,
            };
            pairs.push((in_range(t).ok_or(out(t))?, in_range(p).ok_or(out(p))?));
        }
        for (t, p) in pairs {
            self.counts[t * n + p] += 1;
        }
        Ok(())
    }

    /// How many times class `target` was predicted as `prediction`.
    pub fn count(&self, target: usize, prediction: usize) -> u64 {
        self.counts[target * self.n_classes + prediction]
    }

    /// Per-class `(precision, recall, f1, support)` for the classes present among targets or
    /// predictions, in class order, with the class index first.
    pub fn per_class(&self) -> Vec<(usize, f64, f64, f64, u64)> {
        let n = self.n_classes;
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        (0..n)
            .filter_map(|c| {
                let tp = self.count(c, c);
                let support: u64 = (0..n).map(|p| self.count(c, p)).sum();
                let predicted: u64 = (0..n).map(|t| self.count(t, c)).sum();
                if support == 0 && predicted == 0 {
                    return None;
                }
                let precision = ratio(tp, predicted);
                let recall = ratio(tp, support);
                let f1 = if precision + recall == 0.0 {
                    0.0
                } else {
                    2.0 * precision * recall / (precision + recall)
                };
                Some((c, precision, recall, f1, support))
            })
            .collect()
    }

    fn macro_mean(&self, pick: impl Fn(&(usize, f64, f64, f64, u64)) -> f64) -> f64 {
        let rows = self.per_class();
        if rows.is_empty() {
            return 0.0;
        }
        rows.iter().map(pick).sum::<f64>() / rows.len() as f64
    }

    /// Mean precision over the present classes (0 when nothing was added).
    pub fn macro_precision(&self) -> f64 {
        self.macro_mean(|r| r.1)
    }

    /// Mean recall over the present classes (0 when nothing was added).
    pub fn macro_recall(&self) -> f64 {
        self.macro_mean(|r| r.2)
    }

    /// Mean per-class F1 over the present classes (0 when nothing was added).
    pub fn macro_f1(&self) -> f64 {
        self.macro_mean(|r| r.3)
    }

    /// Accuracy over everything added, `None` when nothing was.
    pub fn accuracy(&self) -> Option<f64> {
        let total: u64 = self.counts.iter().sum();
        let correct: u64 = (0..self.n_classes).map(|c| self.count(c, c)).sum();
        (total > 0).then(|| correct as f64 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Targets [0, 0, 1, 1, 2], predictions [0, 1, 1, 1, 0]:
    /// class 0: TP 1, predicted 2, support 2 -> P 1/2, R 1/2, F1 1/2;
    /// class 1: TP 2, predicted 3, support 2 -> P 2/3, R 1, F1 4/5;
    /// class 2: TP 0, predicted 0, support 1 -> P 0, R 0, F1 0.
    /// Macro: P 7/18, R 1/2, F1 13/30 (scikit-learn gives the same).
    #[test]
    fn macro_scores_match_hand_computation() {
        let mut cm = ConfusionMatrix::new(4, -100);
        cm.update(&[0, 1, 1, 1, 0], &[0, 0, 1, 1, 2]).unwrap();
        assert!((cm.macro_precision() - 7.0 / 18.0).abs() < 1e-12);
        assert!((cm.macro_recall() - 0.5).abs() < 1e-12);
        assert!((cm.macro_f1() - 13.0 / 30.0).abs() < 1e-12);
        assert_eq!(cm.per_class().len(), 3, "class 3 never occurs");
        assert!((cm.accuracy().unwrap() - 0.6).abs() < 1e-12);
    }

    #[test]
    fn errors_leave_the_counts_unchanged() {
        let mut cm = ConfusionMatrix::new(2, -100);
        assert!(matches!(
            cm.update(&[0, 5], &[0, 1]),
            Err(ObjectiveError::LabelOutOfRange { label: 5, .. })
        ));
        assert!(cm.update(&[0], &[0, 1]).is_err());
        assert_eq!(cm.accuracy(), None);
        let mut acc = Accuracy::new(-100);
        assert!(acc.update(&[1], &[]).is_err());
        assert_eq!(acc.value(), None);
    }
}
