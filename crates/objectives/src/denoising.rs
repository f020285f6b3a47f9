//! Denoising auto-encoding: a sentence is corrupted and an encoder-decoder learns to
//! reconstruct the original (Lample et al. 2018, "Unsupervised Machine Translation Using
//! Monolingual Corpora Only"; Vincent et al. 2008 for the idea).
//!
//! The noise is three seeded operations on token ids, applied in this order: each token is
//! dropped with probability [`drop`](DenoisingConfig::drop) (a sentence never loses every
//! token), each remaining token is replaced by the blank id with probability
//! [`blank`](DenoisingConfig::blank), and tokens are shuffled locally so that none moves more
//! than [`shuffle_distance`](DenoisingConfig::shuffle_distance) positions away (each position
//! `i` gets the key `i + u`, `u` uniform in `[0, k + 1)`, and tokens are sorted by key).

use rand::Rng;

use crate::error::ObjectiveError;

/// The noise of a denoising objective.
#[derive(Clone, Debug, PartialEq)]
pub struct DenoisingConfig {
    /// Probability of dropping each token. Default: 0.1.
    pub drop: f64,
    /// Probability of replacing each kept token by `blank_id`. Default: 0.1.
    pub blank: f64,
    /// The id that replaces blanked tokens (a mask or unknown token).
    pub blank_id: u32,
    /// How far (in positions) a token may move in the local shuffle; 0 keeps the order.
    /// Default: 3.
    pub shuffle_distance: usize,
}

impl DenoisingConfig {
    /// Lample et al.'s noise: drop 0.1, blank 0.1 (with `blank_id`), shuffle distance 3.
    pub fn new(blank_id: u32) -> Self {
        Self {
            drop: 0.1,
            blank: 0.1,
            blank_id,
            shuffle_distance: 3,
        }
    }

    /// Checks the probabilities.
    ///
    /// # Errors
    /// [`ObjectiveError::InvalidConfig`] for a probability outside `[0, 1)`.
    pub fn validate(&self) -> Result<(), ObjectiveError> {
        for (name, p) in [("drop", self.drop), ("blank", self.blank)] {
            if !(0.0..1.0).contains(&p) {
                return Err(ObjectiveError::InvalidConfig {
                    what: "DenoisingConfig",
                    reason: format!("{name} must lie in [0, 1), got {p}"),
                });
            }
        }
        Ok(())
    }

    /// A corrupted copy of `tokens` (no special tokens: add them around the result).
    ///
    /// ```
    /// use lmforge_objectives::denoising::DenoisingConfig;
    /// use rand::SeedableRng;
    ///
    /// let noise = DenoisingConfig::new(0);
    /// let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    /// let noisy = noise.corrupt(&[5, 6, 7, 8, 9, 10, 11, 12], &mut rng);
    /// assert!(!noisy.is_empty() && noisy.len() <= 8);
    /// ```
    pub fn corrupt(&self, tokens: &[u32], rng: &mut impl Rng) -> Vec<u32> {
        let mut kept: Vec<u32> = tokens
            .iter()
            .copied()
            .filter(|_| !(self.drop > 0.0 && rng.random_bool(self.drop)))
            .collect();
        if kept.is_empty() && !tokens.is_empty() {
            kept.push(tokens[rng.random_range(0..tokens.len())]);
        }
        if self.blank > 0.0 {
            for token in &mut kept {
                if rng.random_bool(self.blank) {
                    *token = self.blank_id;
                }
            }
        }
        if self.shuffle_distance > 0 && kept.len() > 1 {
            let span = self.shuffle_distance as f64 + 1.0;
            let mut keyed: Vec<(f64, u32)> = kept
                .iter()
                .enumerate()
                .map(|(i, &t)| (i as f64 + rng.random::<f64>() * span, t))
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
            kept = keyed.into_iter().map(|(_, t)| t).collect();
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn tokens(n: u32) -> Vec<u32> {
        (100..100 + n).collect()
    }

    #[test]
    fn no_noise_is_the_identity() {
        let config = DenoisingConfig {
            drop: 0.0,
            blank: 0.0,
            blank_id: 1,
            shuffle_distance: 0,
        };
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(config.corrupt(&tokens(20), &mut rng), tokens(20));
    }

    /// Over many draws: the drop and blank rates match their probabilities, and a shuffled
    /// token never moves more than `shuffle_distance` positions.
    #[test]
    fn rates_and_shuffle_distance() {
        let mut rng = StdRng::seed_from_u64(3);
        let drop = DenoisingConfig {
            drop: 0.2,
            blank: 0.0,
            blank_id: 1,
            shuffle_distance: 0,
        };
        let kept: usize = (0..500)
            .map(|_| drop.corrupt(&tokens(40), &mut rng).len())
            .sum();
        let rate = 1.0 - kept as f64 / (500.0 * 40.0);
        assert!((rate - 0.2).abs() < 0.01, "drop rate {rate}");

        let blank = DenoisingConfig {
            drop: 0.0,
            blank: 0.3,
            ..drop.clone()
        };
        let blanks: usize = (0..500)
            .map(|_| {
                let out = blank.corrupt(&tokens(40), &mut rng);
                // Blanked positions stay in place; the others keep their token.
                for (i, &t) in out.iter().enumerate() {
                    assert!(t == 1 || t == 100 + i as u32);
                }
                out.iter().filter(|&&t| t == 1).count()
            })
            .sum();
        let rate = blanks as f64 / (500.0 * 40.0);
        assert!((rate - 0.3).abs() < 0.01, "blank rate {rate}");

        let shuffle = DenoisingConfig {
            drop: 0.0,
            blank: 0.0,
            blank_id: 1,
            shuffle_distance: 3,
        };
        let mut moved = 0;
        for _ in 0..200 {
            let out = shuffle.corrupt(&tokens(30), &mut rng);
            let mut sorted = out.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, tokens(30));
            for (i, &t) in out.iter().enumerate() {
                let from = (t - 100) as usize;
                assert!(from.abs_diff(i) <= 3, "{from} -> {i}");
                moved += usize::from(from != i);
            }
        }
        assert!(moved > 1000, "the shuffle moved only {moved} tokens");
    }

    #[test]
    fn never_empty_and_seeded() {
        let config = DenoisingConfig {
            drop: 0.99,
            ..DenoisingConfig::new(1)
        };
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..50 {
            let out = config.corrupt(&tokens(3), &mut rng);
            assert!(!out.is_empty() && out.iter().all(|t| (100..103).contains(t) || *t == 1));
        }
        let noise = DenoisingConfig::new(1);
        let a = noise.corrupt(&tokens(30), &mut StdRng::seed_from_u64(9));
        let b = noise.corrupt(&tokens(30), &mut StdRng::seed_from_u64(9));
        assert_eq!(a, b);
        assert!(noise.validate().is_ok());
        assert!(DenoisingConfig { drop: 1.0, ..noise }.validate().is_err());
    }
}
