//! Entity-level scores for BIO / BIOES tag sequences, with seqeval's default chunking.

use crate::error::ObjectiveError;

/// A labelled span of tokens.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Entity {
    /// The entity type (`PER` for `B-PER`); `_` for bare tags like `B`.
    pub kind: String,
    /// Index of the first token.
    pub start: usize,
    /// Index one past the last token.
    pub end: usize,
}

/// Splits a tag into its prefix (`O`, `B`, `I`, `E`, `S`) and type.
fn parse(tag: &str, position: usize) -> Result<(char, &str), ObjectiveError> {
    let invalid = || ObjectiveError::InvalidTag {
        tag: tag.to_string(),
        position,
    };
    let prefix = tag.chars().next().ok_or_else(invalid)?;
    if !matches!(prefix, 'O' | 'B' | 'I' | 'E' | 'S') {
        return Err(invalid());
    }
    let rest = &tag[prefix.len_utf8()..];
    let kind = match rest.split_once('-') {
        Some((_, kind)) => kind,
        None => rest,
    };
    Ok((prefix, if kind.is_empty() { "_" } else { kind }))
}

/// Whether a chunk ends between the previous tag and the current one.
fn ends(prev: char, tag: char, prev_kind: &str, kind: &str) -> bool {
    matches!(prev, 'E' | 'S')
        || (matches!(prev, 'B' | 'I') && matches!(tag, 'B' | 'S' | 'O'))
        || (prev != 'O' && prev_kind != kind)
}

/// Whether a chunk starts at the current tag.
fn starts(prev: char, tag: char, prev_kind: &str, kind: &str) -> bool {
    matches!(tag, 'B' | 'S')
        || (matches!(prev, 'E' | 'S' | 'O') && matches!(tag, 'E' | 'I'))
        || (tag != 'O' && prev_kind != kind)
}

/// The entities of one tag sequence, in order.
///
/// Chunking follows seqeval's default mode (the CoNLL `conlleval` rules), which reads BIO
/// (IOB2) and BIOES tags alike: a chunk starts at `B`/`S`, at an `I`/`E` that follows `O`, `E`
/// or `S`, or at a change of type; it ends after `E`/`S`, before `B`/`S`/`O`, or at a change of
/// type. So `I-PER I-PER` is one entity and `B-PER I-LOC` is two.
///
/// ```
/// use lmforge_objectives::metrics::{Entity, entities};
///
/// let found = entities(&["B-PER", "I-PER", "O", "S-LOC"])?;
/// let e = |kind: &str, start, end| Entity { kind: kind.to_string(), start, end };
/// assert_eq!(found, vec![e("PER", 0, 2), e("LOC", 3, 4)]);
/// # Ok::<(), lmforge_objectives::ObjectiveError>(())
/// ```
///
/// # Errors
/// [`ObjectiveError::InvalidTag`] for a tag whose first character is not `O`, `B`, `I`, `E`
/// or `S`.
pub fn entities<S: AsRef<str>>(tags: &[S]) -> Result<Vec<Entity>, ObjectiveError> {
    let mut found = Vec::new();
    let (mut prev, mut prev_kind) = ('O', String::new());
    let mut begin = 0;
    // A trailing `O` closes the last chunk.
    for i in 0..=tags.len() {
        let (tag, kind) = match tags.get(i) {
            Some(t) => parse(t.as_ref(), i)?,
            None => ('O', "_"),
        };
        if ends(prev, tag, &prev_kind, kind) {
            found.push(Entity {
                kind: prev_kind.clone(),
                start: begin,
                end: i,
            });
        }
        if starts(prev, tag, &prev_kind, kind) {
            begin = i;
        }
        prev = tag;
        prev_kind = kind.to_string();
    }
    Ok(found)
}

/// Micro-averaged entity precision, recall and F1 over many sentences (seqeval's default
/// `f1_score`): a predicted entity counts only when its type, start and end all match a gold
/// entity of the same sentence.
///
/// ```
/// use lmforge_objectives::metrics::EntityF1;
///
/// let mut f1 = EntityF1::new();
/// // Gold: PER [0, 2) and LOC [3, 4). Predicted: PER [0, 1) (too short) and LOC [3, 4).
/// f1.update(&["B-PER", "I-PER", "O", "B-LOC"], &["B-PER", "O", "O", "B-LOC"])?;
/// assert_eq!((f1.precision(), f1.recall(), f1.f1()), (0.5, 0.5, 0.5));
/// # Ok::<(), lmforge_objectives::ObjectiveError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntityF1 {
    correct: u64,
    predicted: u64,
    gold: u64,
}

impl EntityF1 {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sentence's gold and predicted tags.
    ///
    /// # Errors
    /// [`ObjectiveError::LengthMismatch`] when the sequences have different lengths;
    /// [`ObjectiveError::InvalidTag`] for a malformed tag. Nothing is added on error.
    pub fn update<S: AsRef<str>, T: AsRef<str>>(
        &mut self,
        gold: &[S],
        predicted: &[T],
    ) -> Result<(), ObjectiveError> {
        if gold.len() != predicted.len() {
            return Err(ObjectiveError::LengthMismatch {
                what: "gold vs predicted tags",
                left: gold.len(),
                right: predicted.len(),
            });
        }
        let gold = entities(gold)?;
        let predicted = entities(predicted)?;
        self.correct += predicted.iter().filter(|e| gold.contains(e)).count() as u64;
        self.predicted += predicted.len() as u64;
        self.gold += gold.len() as u64;
        Ok(())
    }

    /// Correct predicted entities / predicted entities (0 when none was predicted).
    pub fn precision(&self) -> f64 {
        ratio(self.correct, self.predicted)
    }

    /// Correct predicted entities / gold entities (0 when there is no gold entity).
    pub fn recall(&self) -> f64 {
        ratio(self.correct, self.gold)
    }

    /// Harmonic mean of precision and recall (0 when both are 0).
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(kind: &str, start: usize, end: usize) -> Entity {
        Entity {
            kind: kind.to_string(),
            start,
            end,
        }
    }

    #[test]
    fn bio_chunking_including_ill_formed_sequences() {
        assert_eq!(
            entities(&["B-PER", "I-PER", "B-PER", "O"]).unwrap(),
            [e("PER", 0, 2), e("PER", 2, 3)]
        );
        // An I- after O starts an entity; a type change splits it.
        assert_eq!(
            entities(&["O", "I-ORG", "I-ORG", "I-LOC"]).unwrap(),
            [e("ORG", 1, 3), e("LOC", 3, 4)]
        );
        assert_eq!(
            entities(&["B-PER", "I-LOC"]).unwrap(),
            [e("PER", 0, 1), e("LOC", 1, 2)]
        );
        assert_eq!(entities(&["O", "O"]).unwrap(), []);
        assert_eq!(entities::<&str>(&[]).unwrap(), []);
        assert_eq!(entities(&["B", "I", "O"]).unwrap(), [e("_", 0, 2)]);
        assert_eq!(
            entities(&["B-PER", "X-PER"]).unwrap_err(),
            ObjectiveError::InvalidTag {
                tag: "X-PER".to_string(),
                position: 1
            }
        );
    }

    #[test]
    fn bioes_chunking() {
        assert_eq!(
            entities(&["S-LOC", "B-PER", "I-PER", "E-PER", "S-PER", "O"]).unwrap(),
            [e("LOC", 0, 1), e("PER", 1, 4), e("PER", 4, 5)]
        );
        // E ends a chunk even without a following O; an E after O is a one-token entity.
        assert_eq!(
            entities(&["B-ORG", "E-ORG", "I-ORG", "O", "E-MISC"]).unwrap(),
            [e("ORG", 0, 2), e("ORG", 2, 3), e("MISC", 4, 5)]
        );
    }

    /// Gold: PER [0, 2), LOC [3, 4), ORG [5, 7).
    /// Predicted: PER [0, 2) correct; LOC [3, 4) typed ORG (type mismatch, wrong);
    /// ORG [5, 6) partial (wrong); ORG [6, 7) spurious.
    /// P = 1/4, R = 1/3, F1 = 2·(1/4)(1/3)/(1/4 + 1/3) = 2/7.
    #[test]
    fn partial_matches_and_type_mismatches_count_as_wrong() {
        let gold = ["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG"];
        let pred = ["B-PER", "I-PER", "O", "B-ORG", "O", "B-ORG", "B-ORG"];
        let mut f1 = EntityF1::new();
        f1.update(&gold, &pred).unwrap();
        assert!((f1.precision() - 0.25).abs() < 1e-12);
        assert!((f1.recall() - 1.0 / 3.0).abs() < 1e-12);
        assert!((f1.f1() - 2.0 / 7.0).abs() < 1e-12);
    }

    /// Two sentences, micro-averaged: sentence 1 has 2 gold, 2 predicted, 2 correct (BIOES);
    /// sentence 2 has 1 gold, 0 predicted. P = 2/2, R = 2/3, F1 = 0.8.
    #[test]
    fn micro_average_over_sentences_with_bioes() {
        let mut f1 = EntityF1::new();
        f1.update(&["B-PER", "E-PER", "S-LOC"], &["B-PER", "E-PER", "S-LOC"])
            .unwrap();
        f1.update(&["S-ORG", "O"], &["O", "O"]).unwrap();
        assert_eq!(f1.precision(), 1.0);
        assert!((f1.recall() - 2.0 / 3.0).abs() < 1e-12);
        assert!((f1.f1() - 0.8).abs() < 1e-12);
        assert!(f1.update(&["O"], &["O", "O"]).is_err());
        assert_eq!(EntityF1::new().f1(), 0.0);
    }
}
