//! Exact match and F1 of extractive question answering, as SQuAD's official evaluation script
//! (v2.0, whose rules include v1.1's) computes them: answers are lower-cased, ASCII
//! punctuation and the articles `a`, `an`, `the` removed and whitespace collapsed before they
//! are compared; F1 is over the bags of the remaining words; a prediction scores the best of
//! its reference answers; an empty answer matches only an empty one (SQuAD 2.0's unanswerable
//! questions take `[""]` as their reference).
//!
//! ```
//! use lmforge_objectives::metrics::SquadScores;
//!
//! let mut squad = SquadScores::new();
//! squad.add("the Eiffel Tower", &["Eiffel Tower", "the tower"]).unwrap();
//! squad.add("in Paris, France", &["Paris"]).unwrap();
//! assert_eq!(squad.exact_match(), Some(50.0));
//! // 1.0 and 2 * (1/3 * 1) / (1/3 + 1) = 0.5.
//! assert!((squad.f1().unwrap() - 75.0).abs() < 1e-9);
//! ```

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;

use crate::ObjectiveError;

/// An answer as the script compares it: lower-cased, ASCII punctuation removed, the articles
/// `a`, `an`, `the` removed (as whole words), whitespace collapsed to single spaces.
pub fn squad_normalize(answer: &str) -> String {
    static ARTICLES: OnceLock<Regex> = OnceLock::new();
    let articles = ARTICLES.get_or_init(|| Regex::new(r"\b(a|an|the)\b").expect("valid pattern"));
    let lower = answer.to_lowercase();
    let no_punctuation: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    let no_articles = articles.replace_all(&no_punctuation, " ");
    no_articles.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// 1.0 when the normalized answers are equal, else 0.0.
pub fn squad_exact_match(prediction: &str, reference: &str) -> f64 {
    f64::from(u8::from(
        squad_normalize(prediction) == squad_normalize(reference),
    ))
}

/// Word-overlap F1 of the normalized answers (in 0..=1). When either is empty, 1.0 if both
/// are, else 0.0.
pub fn squad_f1(prediction: &str, reference: &str) -> f64 {
    let prediction = squad_normalize(prediction);
    let reference = squad_normalize(reference);
    let predicted: Vec<&str> = prediction.split_whitespace().collect();
    let wanted: Vec<&str> = reference.split_whitespace().collect();
    if predicted.is_empty() || wanted.is_empty() {
        return f64::from(u8::from(predicted == wanted));
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for word in &wanted {
        *counts.entry(word).or_insert(0) += 1;
    }
    let mut same = 0usize;
    for word in &predicted {
        if let Some(count) = counts.get_mut(word).filter(|c| **c > 0) {
            *count -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / predicted.len() as f64;
    let recall = same as f64 / wanted.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Exact match and F1 accumulated over questions, in percent as the script reports them.
#[derive(Clone, Debug, Default)]
pub struct SquadScores {
    exact: f64,
    f1: f64,
    questions: usize,
}

impl SquadScores {
    /// No questions yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Scores one prediction against its reference answers (at least one; the best counts).
    pub fn add<R: AsRef<str>>(
        &mut self,
        prediction: &str,
        references: &[R],
    ) -> Result<(), ObjectiveError> {
        if references.is_empty() {
            return Err(ObjectiveError::InvalidConfig {
                what: "SquadScores",
                reason: "a question has no reference answer (use [\"\"] for an unanswerable \
                         one)"
                    .into(),
            });
        }
        let best = |metric: fn(&str, &str) -> f64| {
            references
                .iter()
                .map(|r| metric(prediction, r.as_ref()))
                .fold(0.0f64, f64::max)
        };
        self.exact += best(squad_exact_match);
        self.f1 += best(squad_f1);
        self.questions += 1;
        Ok(())
    }

    /// Questions scored.
    pub fn questions(&self) -> usize {
        self.questions
    }

    /// Exact match in percent; `None` before any question.
    pub fn exact_match(&self) -> Option<f64> {
        (self.questions > 0).then(|| 100.0 * self.exact / self.questions as f64)
    }

    /// F1 in percent; `None` before any question.
    pub fn f1(&self) -> Option<f64> {
        (self.questions > 0).then(|| 100.0 * self.f1 / self.questions as f64)
    }
}
