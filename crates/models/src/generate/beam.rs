//! Beam search with HuggingFace `generate()`'s semantics (`num_beams`, `length_penalty`,
//! `early_stopping` true, false or "never"): at every step the `2 * num_beams` best continuations over all
//! beams are ranked; those ending in an end-of-sequence id among the first `num_beams` become
//! finished hypotheses scored `sum_logprobs / new_length^length_penalty`; the best
//! `num_beams` others continue. Generation stops by the [`EarlyStopping`] rule, or at
//! `max_new_tokens` (then every leading candidate is a hypothesis).

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::{Decoder, GenerationConfig, GenerationError, check_prompts, logits};

/// "Minus infinity" as HuggingFace's beam search uses it (a large finite penalty).
const NEG: f32 = -1.0e9;

/// When beam search stops (HuggingFace's `early_stopping`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EarlyStopping {
    /// Stop as soon as `num_beams` hypotheses are finished (`early_stopping=True`).
    Finished,
    /// Stop when no running beam can beat the worst finished hypothesis, estimated at the
    /// current length (`early_stopping=False`, HuggingFace's default).
    Heuristic,
    /// As `Heuristic`, but with a positive length penalty the estimate assumes the longest
    /// possible length (`early_stopping="never"`, the canonical beam search).
    Never,
}

/// Beam-search settings on top of a [`GenerationConfig`].
#[derive(Clone, Debug, PartialEq)]
pub struct BeamConfig {
    /// Number of beams (>= 1).
    pub num_beams: usize,
    /// Exponent of the length normalisation of finished hypotheses (1 = mean log-prob per
    /// new token; > 1 favours longer, < 1 shorter hypotheses).
    pub length_penalty: f32,
    /// The stopping rule.
    pub early_stopping: EarlyStopping,
}

impl BeamConfig {
    /// `num_beams` beams, `length_penalty` 1, stopping once `num_beams` hypotheses finished.
    pub fn new(num_beams: usize) -> Self {
        Self {
            num_beams,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Finished,
        }
    }

    /// Sets the length penalty.
    pub fn with_length_penalty(mut self, length_penalty: f32) -> Self {
        self.length_penalty = length_penalty;
        self
    }

    /// Sets the stopping rule.
    pub fn with_early_stopping(mut self, early_stopping: EarlyStopping) -> Self {
        self.early_stopping = early_stopping;
        self
    }
}

struct Finished {
    tokens: Vec<u32>,
    score: f32,
}

/// Beam search for one prompt: returns the new tokens of the best hypothesis (ending with
/// its end-of-sequence id when it has one). Uses `config.max_new_tokens`,
/// `config.min_new_tokens`, `config.eos_token_ids` and `config.repetition_penalty`; sampling
/// settings are ignored.
///
/// # Errors
/// [`GenerationError`] for an invalid config or prompt, or `num_beams` = 0.
pub fn beam_search<M: Decoder>(
    model: &M,
    prompt: &[u32],
    config: &GenerationConfig,
    beam: &BeamConfig,
    device: &Device,
) -> Result<Vec<u32>, GenerationError> {
    config.validate()?;
    if beam.num_beams == 0 {
        return Err(GenerationError::InvalidConfig(
            "num_beams must be >= 1".into(),
        ));
    }
    let prompt_length = check_prompts(model, &[prompt.to_vec()], config)?;
    if config.max_new_tokens == 0 {
        return Ok(Vec::new());
    }
    let n = beam.num_beams;
    let vocab_size = model.vocab_size();
    let keep = 2.max(1 + config.eos_token_ids.len()) * n;

    let flat: Vec<i64> = (0..n)
        .flat_map(|_| prompt.iter().map(|&t| t as i64))
        .collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(flat, [n, prompt_length]), device);
    let (mut step_logits, mut state) = model.prefill(tokens);
    // Running beams: new tokens and accumulated log-probabilities; all but the first start
    // "impossible" so the first step expands one beam.
    let mut running: Vec<(Vec<u32>, f32)> = (0..n)
        .map(|b| (Vec::new(), if b == 0 { 0.0 } else { NEG }))
        .collect();
    let mut finished: Vec<Finished> = Vec::new();
    let mut improvable = true;
    for step in 0..config.max_new_tokens {
        let rows = step_logits
            .into_data()
            .try_to_vec::<f32>()
            .expect("logits are f32");
        // Every continuation of every beam: (score, beam, token).
        let mut candidates: Vec<(f32, usize, u32)> = Vec::with_capacity(n * vocab_size);
        for (b, row) in rows.chunks(vocab_size).enumerate() {
            let mut row = row.to_vec();
            let history: Vec<u32> = prompt.iter().chain(&running[b].0).copied().collect();
            let log_probs = log_softmax(&row);
            row.copy_from_slice(&log_probs);
            logits::apply_repetition_penalty(&mut row, &history, config.repetition_penalty as f32);
            // No hypothesis ends before `min_new_tokens` (HuggingFace's min-new-tokens
            // processor, applied after the log-softmax as there).
            if step < config.min_new_tokens {
                for &eos in &config.eos_token_ids {
                    if let Some(l) = row.get_mut(eos as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            for (t, lp) in row.iter().enumerate() {
                candidates.push((lp + running[b].1, b, t as u32));
            }
        }
        // Stable sort: ties keep the lower flat index first, as a sort of (beam, token) does.
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        candidates.truncate(keep);
        let last_step = step + 1 == config.max_new_tokens;
        let new_length = (step + 1) as f32;
        let hits: Vec<bool> = candidates
            .iter()
            .map(|(_, _, t)| last_step || config.eos_token_ids.contains(t))
            .collect();

        // Finished hypotheses: end-of-sequence (or last-step) candidates ranked in the first
        // `n`, unless no improvement is possible or (early stopping) the set is already full.
        let full = finished.len() >= n && beam.early_stopping == EarlyStopping::Finished;
        if improvable && !full {
            for (j, &(score, b, t)) in candidates.iter().enumerate().take(n) {
                if hits[j] {
                    let mut tokens = running[b].0.clone();
                    tokens.push(t);
                    let score = score / new_length.powf(beam.length_penalty);
                    finished.push(Finished { tokens, score });
                }
            }
            finished.sort_by(|a, b| b.score.total_cmp(&a.score));
            finished.truncate(n);
        }

        // The next running beams: the best `n` candidates that did not finish.
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        order.sort_by(|&a, &b| {
            let sa = candidates[a].0 + if hits[a] { NEG } else { 0.0 };
            let sb = candidates[b].0 + if hits[b] { NEG } else { 0.0 };
            sb.total_cmp(&sa)
        });
        let chosen: Vec<usize> = order.into_iter().take(n).collect();
        let parents: Vec<usize> = chosen.iter().map(|&j| candidates[j].1).collect();
        running = chosen
            .iter()
            .map(|&j| {
                let (score, b, t) = candidates[j];
                let mut tokens = running[b].0.clone();
                tokens.push(t);
                (tokens, score + if hits[j] { NEG } else { 0.0 })
            })
            .collect();

        // Can a running beam still beat the worst finished hypothesis?
        if finished.len() == n {
            let worst = finished.last().expect("n >= 1").score;
            let length = if beam.early_stopping == EarlyStopping::Never && beam.length_penalty > 0.0
            {
                config.max_new_tokens as f32
            } else {
                new_length
            };
            let best_possible = running[0].1 / length.powf(beam.length_penalty);
            improvable &= best_possible > worst;
        }
        let all_finished = finished.len() == n && beam.early_stopping == EarlyStopping::Finished;
        if last_step || !improvable || all_finished || hits.iter().all(|h| *h) {
            break;
        }
        model.reorder(&mut state, &parents);
        let next: Vec<i64> = running
            .iter()
            .map(|(tokens, _)| *tokens.last().expect("one token per step") as i64)
            .collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(next, [n, 1]), device);
        step_logits = model.step(tokens, &mut state);
    }
    Ok(finished
        .into_iter()
        .next()
        .map(|f| f.tokens)
        .unwrap_or_else(|| running.swap_remove(0).0))
}

fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = row.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    row.iter().map(|l| l - log_sum).collect()
}
