//! Turning one row of next-token logits into a token: repetition penalty, temperature,
//! top-k, top-p, then an argmax or a seeded draw. Runs on the host, on `f32` rows.

use rand::Rng;

/// Applies HuggingFace's repetition penalty (Keskar et al. 2019): the logit of every token
/// already in `previous` is divided by `penalty` when positive and multiplied when negative.
pub fn apply_repetition_penalty(logits: &mut [f32], previous: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &token in previous {
        if let Some(flag) = seen.get_mut(token as usize) {
            *flag = true;
        }
    }
    for (logit, seen) in logits.iter_mut().zip(seen) {
        if seen {
            *logit = if *logit > 0.0 {
                *logit / penalty
            } else {
                *logit * penalty
            };
        }
    }
}

/// Index of the largest value (the first one on ties, as `torch.argmax`).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// The sampling distribution after temperature, top-k and top-p (HuggingFace semantics):
/// probabilities over the whole vocabulary, zero outside the kept set, summing to one.
///
/// - `temperature` divides the logits (must be > 0).
/// - `top_k` keeps the `k` largest logits (ties at the k-th value are kept too).
/// - `top_p` keeps the smallest set of most likely tokens whose probability reaches `p`
///   (at least one token).
pub fn sampling_distribution(
    logits: &[f32],
    temperature: f32,
    top_k: Option<usize>,
    top_p: Option<f32>,
) -> Vec<f32> {
    let mut scaled: Vec<f32> = logits.iter().map(|l| l / temperature).collect();
    if let Some(k) = top_k
        && k < scaled.len()
    {
        let mut sorted = scaled.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let threshold = sorted[k - 1];
        for l in scaled.iter_mut() {
            if *l < threshold {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    let mut probs = softmax(&scaled);
    if let Some(p) = top_p
        && p < 1.0
    {
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let mut cumulative = 0.0;
        let mut keep = vec![false; probs.len()];
        for &i in &order {
            keep[i] = true;
            cumulative += probs[i];
            if cumulative >= p {
                break;
            }
        }
        for (prob, keep) in probs.iter_mut().zip(keep) {
            if !keep {
                *prob = 0.0;
            }
        }
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|prob| *prob /= total);
    }
    probs
}

/// A numerically stable softmax (`-inf` entries get probability 0).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let total: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / total).collect()
}

/// Draws an index from `probs` (which sum to one).
pub fn draw(probs: &[f32], rng: &mut impl Rng) -> usize {
    let u: f32 = rng.random();
    let mut cumulative = 0.0;
    let mut last = 0;
    for (i, p) in probs.iter().enumerate() {
        if *p > 0.0 {
            cumulative += p;
            last = i;
            if u < cumulative {
                return i;
            }
        }
    }
    last // rounding left u above the total: the last token with mass
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-derived: logits [2, -2, 1] with tokens 0 and 1 seen and penalty 2 give
    /// [2/2, -2*2, 1] = [1, -4, 1].
    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut logits = [2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut logits, &[0, 1, 1], 2.0);
        assert_eq!(logits, [1.0, -4.0, 1.0]);
    }

    /// softmax([ln 4, ln 3, ln 2, ln 1]) = [0.4, 0.3, 0.2, 0.1]; top-p 0.65 keeps the first
    /// two (0.4 < 0.65 <= 0.7): [4/7, 3/7, 0, 0]; top-k 3 renormalises [0.4, 0.3, 0.2] / 0.9.
    #[test]
    fn top_k_and_top_p_keep_the_documented_sets() {
        let logits: Vec<f32> = [4f32, 3.0, 2.0, 1.0].iter().map(|p| p.ln()).collect();
        let p = sampling_distribution(&logits, 1.0, None, Some(0.65));
        let expected = [4.0 / 7.0, 3.0 / 7.0, 0.0, 0.0];
        for (a, b) in p.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{p:?}");
        }
        let p = sampling_distribution(&logits, 1.0, Some(3), None);
        let expected = [0.4 / 0.9, 0.3 / 0.9, 0.2 / 0.9, 0.0];
        for (a, b) in p.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{p:?}");
        }
        // Temperature 0.5 squares the odds: [16, 9, 4, 1] / 30.
        let p = sampling_distribution(&logits, 0.5, None, None);
        assert!((p[0] - 16.0 / 30.0).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    }
}
