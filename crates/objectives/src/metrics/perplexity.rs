//! Perplexity from summed negative log-likelihood.

use crate::cross_entropy::LossOutput;

/// Perplexity accumulated over many batches: `exp(Σ nll / Σ count)`.
///
/// Every counted token weighs the same, whatever batch it came from; averaging per-batch
/// perplexities or per-batch mean losses would overweight short batches.
///
/// ```
/// use lmforge_objectives::metrics::Perplexity;
///
/// let mut ppl = Perplexity::new();
/// ppl.add(2.0 * 3f64.ln(), 2); // two tokens, each with p = 1/3
/// ppl.add(0.0, 0); // an all-padding batch changes nothing
/// assert!((ppl.value().unwrap() - 3.0).abs() < 1e-12);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Perplexity {
    nll_sum: f64,
    count: u64,
}

impl Perplexity {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a batch's summed negative log-likelihood over `count` tokens.
    pub fn add(&mut self, nll_sum: f64, count: u64) {
        self.nll_sum += nll_sum;
        self.count += count;
    }

    /// Adds a batch's loss output (its `nll_sum`, without label smoothing, and `count`), read
    /// back to the host.
    pub fn update(&mut self, output: &LossOutput) {
        self.add(output.nll_sum_value(), output.count_value() as u64);
    }

    /// Total number of counted tokens.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Mean negative log-likelihood per token (nats), `None` before any counted token.
    pub fn mean_nll(&self) -> Option<f64> {
        (self.count > 0).then(|| self.nll_sum / self.count as f64)
    }

    /// The perplexity, `None` before any counted token.
    pub fn value(&self) -> Option<f64> {
        self.mean_nll().map(f64::exp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batch A: 1 token with NLL 4; batch B: 3 tokens with NLL 0 each. Over all tokens the
    /// mean NLL is 1 (perplexity e); the mean of batch means would be 2 (perplexity e²).
    #[test]
    fn weighs_tokens_not_batches() {
        let mut ppl = Perplexity::new();
        ppl.add(4.0, 1);
        ppl.add(0.0, 3);
        assert_eq!(ppl.count(), 4);
        assert!((ppl.value().unwrap() - 1f64.exp()).abs() < 1e-12);
        assert_eq!(Perplexity::new().value(), None);
    }
}
