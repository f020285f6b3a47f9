//! Token-level data augmentation: new training sentences made from old ones by deleting,
//! swapping and inserting words and by replacing words with synonyms from a lexicon the user
//! supplies (the "easy data augmentation" operations), seeded and composable.
//!
//! An [`Augmenter`] applies its operations in order to the whitespace-separated words of a
//! sentence; the same seed gives the same sentences. It works on text, before tokenization,
//! so it fits any example's data pipeline.
//!
//! ```
//! use lmforge_data::augment::{Augmentation, Augmenter, Lexicon};
//!
//! let lexicon = Lexicon::from_tsv("good\tfine,great\nmovie\tfilm\n")?;
//! let mut augmenter = Augmenter::new(7)
//!     .with(Augmentation::SynonymReplacement { n: 1 })
//!     .with(Augmentation::RandomSwap { n: 1 })
//!     .with_lexicon(lexicon);
//! let variants = augmenter.augment_n("a good movie with a slow start", 3);
//! assert_eq!(variants.len(), 3);
//! for v in &variants {
//!     assert_eq!(v.split_whitespace().count(), 7);
//! }
//! # Ok::<(), lmforge_data::DataError>(())
//! ```

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use crate::DataError;

/// One augmentation operation on a sentence's words.
#[derive(Clone, Debug, PartialEq)]
pub enum Augmentation {
    /// Each word is removed with probability `p` (one random word stays when all would go).
    RandomDeletion {
        /// Probability of removing each word, in `0..=1`.
        p: f64,
    },
    /// `n` times, the words at two different random positions trade places.
    RandomSwap {
        /// Swaps per sentence.
        n: usize,
    },
    /// `n` times, a synonym of a random word that has one in the lexicon is inserted at a
    /// random position (nothing happens when no word has a synonym).
    RandomInsertion {
        /// Insertions per sentence.
        n: usize,
    },
    /// Up to `n` different words that have synonyms in the lexicon are each replaced, at every
    /// occurrence, by one of their synonyms chosen at random.
    SynonymReplacement {
        /// Most distinct words replaced per sentence.
        n: usize,
    },
}

impl Augmentation {
    fn check(&self) -> Result<(), DataError> {
        match *self {
            Self::RandomDeletion { p } if !(0.0..=1.0).contains(&p) => {
                Err(DataError::InvalidConfig {
                    what: "Augmentation::RandomDeletion",
                    reason: format!("p = {p} is not a probability"),
                })
            }
            _ => Ok(()),
        }
    }
}

/// Synonyms by word. Lookups are exact first, then lower-cased.
#[derive(Clone, Debug, Default)]
pub struct Lexicon {
    synonyms: HashMap<String, Vec<String>>,
}

impl Lexicon {
    /// An empty lexicon.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds synonyms of `word` (a word is never its own synonym; duplicates are dropped).
    pub fn insert<S: Into<String>>(&mut self, word: &str, synonyms: impl IntoIterator<Item = S>) {
        let entry = self.synonyms.entry(word.to_owned()).or_default();
        for synonym in synonyms {
            let synonym = synonym.into();
            if synonym != word && !synonym.is_empty() && !entry.contains(&synonym) {
                entry.push(synonym);
            }
        }
        if entry.is_empty() {
            self.synonyms.remove(word);
        }
    }

    /// Reads lines of `word<TAB>synonym,synonym,...` (empty lines and lines starting with `#`
    /// are skipped).
    pub fn from_tsv(text: &str) -> Result<Self, DataError> {
        let mut lexicon = Self::new();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((word, synonyms)) = line.split_once('\t') else {
                return Err(DataError::MalformedLine {
                    path: "<memory>".into(),
                    line: index + 1,
                    reason: "expected `word<TAB>synonym,synonym,...`".into(),
                });
            };
            lexicon.insert(word.trim(), synonyms.split(',').map(str::trim));
        }
        Ok(lexicon)
    }

    /// The synonyms of `word`: its own entry, else its lower-cased form's.
    pub fn synonyms(&self, word: &str) -> &[String] {
        self.synonyms
            .get(word)
            .or_else(|| self.synonyms.get(&word.to_lowercase()))
            .map_or(&[], Vec::as_slice)
    }

    /// Words with synonyms.
    pub fn len(&self) -> usize {
        self.synonyms.len()
    }

    /// Whether no word has synonyms.
    pub fn is_empty(&self) -> bool {
        self.synonyms.is_empty()
    }
}

/// Applies a list of [`Augmentation`]s to sentences with its own seeded generator.
#[derive(Clone, Debug)]
pub struct Augmenter {
    operations: Vec<Augmentation>,
    lexicon: Lexicon,
    rng: StdRng,
}

impl Augmenter {
    /// No operations yet, an empty lexicon, the generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            operations: Vec::new(),
            lexicon: Lexicon::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Adds an operation (applied after the ones added before).
    ///
    /// # Panics
    /// When it is invalid (a deletion probability outside `0..=1`); see
    /// [`Augmenter::try_with`].
    pub fn with(self, operation: Augmentation) -> Self {
        self.try_with(operation).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Adds an operation, or says why it is invalid.
    pub fn try_with(mut self, operation: Augmentation) -> Result<Self, DataError> {
        operation.check()?;
        self.operations.push(operation);
        Ok(self)
    }

    /// Uses `lexicon` for insertions and synonym replacement.
    pub fn with_lexicon(mut self, lexicon: Lexicon) -> Self {
        self.lexicon = lexicon;
        self
    }

    /// The operations, in the order they apply.
    pub fn operations(&self) -> &[Augmentation] {
        &self.operations
    }

    /// Applies every operation, in order, to `words`.
    pub fn augment_words(&mut self, words: &[String]) -> Vec<String> {
        let mut words = words.to_vec();
        for operation in &self.operations {
            let rng = &mut self.rng;
            match *operation {
                Augmentation::RandomDeletion { p } => {
                    if words.is_empty() {
                        continue;
                    }
                    let kept: Vec<String> = words
                        .iter()
                        .filter(|_| !rng.random_bool(p))
                        .cloned()
                        .collect();
                    words = if kept.is_empty() {
                        vec![words.choose(rng).expect("not empty").clone()]
                    } else {
                        kept
                    };
                }
                Augmentation::RandomSwap { n } => {
                    if words.len() < 2 {
                        continue;
                    }
                    for _ in 0..n {
                        let i = rng.random_range(0..words.len());
                        // A different position: one of the other `len - 1`.
                        let j = (i + rng.random_range(1..words.len())) % words.len();
                        words.swap(i, j);
                    }
                }
                Augmentation::RandomInsertion { n } => {
                    for _ in 0..n {
                        let candidates: Vec<&[String]> = words
                            .iter()
                            .map(|w| self.lexicon.synonyms(w))
                            .filter(|s| !s.is_empty())
                            .collect();
                        let Some(synonyms) = candidates.choose(rng) else {
                            break;
                        };
                        let synonym = synonyms.choose(rng).expect("not empty").clone();
                        let at = rng.random_range(0..=words.len());
                        words.insert(at, synonym);
                    }
                }
                Augmentation::SynonymReplacement { n } => {
                    let mut distinct: Vec<&String> = Vec::new();
                    for word in &words {
                        if !self.lexicon.synonyms(word).is_empty() && !distinct.contains(&word) {
                            distinct.push(word);
                        }
                    }
                    distinct.shuffle(rng);
                    let chosen: HashMap<String, String> = distinct
                        .into_iter()
                        .take(n)
                        .map(|word| {
                            let synonyms = self.lexicon.synonyms(word);
                            (
                                word.clone(),
                                synonyms.choose(rng).expect("not empty").clone(),
                            )
                        })
                        .collect();
                    for word in &mut words {
                        if let Some(synonym) = chosen.get(word) {
                            *word = synonym.clone();
                        }
                    }
                }
            }
        }
        words
    }

    /// Applies every operation to the whitespace-separated words of `sentence`; the result's
    /// words are joined by single spaces.
    pub fn augment(&mut self, sentence: &str) -> String {
        let words: Vec<String> = sentence.split_whitespace().map(str::to_owned).collect();
        self.augment_words(&words).join(" ")
    }

    /// `n` augmented versions of `sentence` (drawn one after the other from the generator).
    pub fn augment_n(&mut self, sentence: &str, n: usize) -> Vec<String> {
        (0..n).map(|_| self.augment(sentence)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{Augmentation, Augmenter, Lexicon};

    const SENTENCE: &str = "the quick brown fox jumps over the lazy dog";

    fn words(s: &str) -> Vec<&str> {
        s.split_whitespace().collect()
    }

    fn lexicon() -> Lexicon {
        Lexicon::from_tsv("quick\tfast,rapid\n# a comment\n\nlazy\tidle\nDog\thound\n").unwrap()
    }

    /// Whether `small` is `big` with some words removed (order kept).
    fn is_subsequence(small: &[&str], big: &[&str]) -> bool {
        let mut rest = big.iter();
        small.iter().all(|w| rest.any(|b| b == w))
    }

    #[test]
    fn deletion_removes_about_p_of_the_words_in_order() {
        let original = words(SENTENCE);
        let unchanged = Augmenter::new(1)
            .with(Augmentation::RandomDeletion { p: 0.0 })
            .augment(SENTENCE);
        assert_eq!(unchanged, SENTENCE);
        let mut all = Augmenter::new(1).with(Augmentation::RandomDeletion { p: 1.0 });
        for _ in 0..20 {
            let one = all.augment(SENTENCE);
            assert_eq!(words(&one).len(), 1, "one word stays: {one:?}");
            assert!(original.contains(&one.as_str()));
        }
        let mut some = Augmenter::new(2).with(Augmentation::RandomDeletion { p: 0.3 });
        let (mut kept, trials) = (0usize, 2000);
        for _ in 0..trials {
            let out = some.augment(SENTENCE);
            assert!(is_subsequence(&words(&out), &original), "{out:?}");
            kept += words(&out).len();
        }
        // Kept fraction 0.7 of 9 words; the binomial standard deviation over 18000 words is
        // about 0.0034: six of them.
        let fraction = kept as f64 / (trials * original.len()) as f64;
        assert!((fraction - 0.7).abs() < 0.02, "kept {fraction}");
    }

    #[test]
    fn swap_moves_exactly_two_words() {
        let original = words(SENTENCE);
        let mut augmenter = Augmenter::new(3).with(Augmentation::RandomSwap { n: 1 });
        for _ in 0..50 {
            let out = augmenter.augment(SENTENCE);
            let out = words(&out);
            let moved: Vec<usize> = (0..original.len())
                .filter(|&i| out[i] != original[i])
                .collect();
            // Two positions trade places, unless both hold "the".
            assert!(moved.is_empty() || moved.len() == 2, "{out:?}");
            if let [i, j] = moved[..] {
                assert_eq!((out[i], out[j]), (original[j], original[i]));
            }
            let (mut a, mut b) = (out.clone(), original.clone());
            a.sort();
            b.sort();
            assert_eq!(a, b);
        }
        let single = Augmenter::new(3)
            .with(Augmentation::RandomSwap { n: 5 })
            .augment("alone");
        assert_eq!(single, "alone");
    }

    #[test]
    fn insertion_adds_synonyms_of_words_present() {
        let original = words(SENTENCE);
        let mut augmenter = Augmenter::new(4)
            .with(Augmentation::RandomInsertion { n: 2 })
            .with_lexicon(lexicon());
        let synonyms = ["fast", "rapid", "idle", "hound"];
        for _ in 0..50 {
            let out = augmenter.augment(SENTENCE);
            let out = words(&out);
            assert_eq!(out.len(), original.len() + 2);
            assert!(is_subsequence(&original, &out));
            let added: Vec<&str> = out
                .iter()
                .copied()
                .filter(|w| synonyms.contains(w))
                .collect();
            assert_eq!(added.len(), 2, "{out:?}");
        }
        // No word with a synonym: nothing to insert.
        let none = Augmenter::new(4)
            .with(Augmentation::RandomInsertion { n: 3 })
            .with_lexicon(lexicon())
            .augment("a b c");
        assert_eq!(none, "a b c");
    }

    #[test]
    fn synonym_replacement_changes_at_most_n_distinct_words() {
        let mut augmenter = Augmenter::new(5)
            .with(Augmentation::SynonymReplacement { n: 1 })
            .with_lexicon(lexicon());
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let out = augmenter.augment(SENTENCE);
            let diff: Vec<(&str, &str)> = words(SENTENCE)
                .into_iter()
                .zip(words(&out))
                .filter(|(a, b)| a != b)
                .collect();
            assert_eq!(diff.len(), 1, "{out:?}");
            let (from, to) = diff[0];
            // "dog" finds "Dog"'s entry only through the lower-cased lookup the other way
            // round, so it is never replaced.
            let allowed: &[&str] = match from {
                "quick" => &["fast", "rapid"],
                "lazy" => &["idle"],
                other => panic!("{other} has no synonym"),
            };
            assert!(allowed.contains(&to), "{from} -> {to}");
            seen.insert(to.to_owned());
        }
        assert_eq!(seen.len(), 3, "every synonym drawn: {seen:?}");
        // Every occurrence of a chosen word is replaced.
        let twice = Augmenter::new(6)
            .with(Augmentation::SynonymReplacement { n: 5 })
            .with_lexicon(lexicon())
            .augment("lazy lazy Lazy");
        assert_eq!(twice, "idle idle idle");
    }

    #[test]
    fn same_seed_same_sentences_other_seed_others() {
        let build = |seed| {
            Augmenter::new(seed)
                .with(Augmentation::SynonymReplacement { n: 2 })
                .with(Augmentation::RandomInsertion { n: 1 })
                .with(Augmentation::RandomSwap { n: 2 })
                .with(Augmentation::RandomDeletion { p: 0.1 })
                .with_lexicon(lexicon())
        };
        let a = build(11).augment_n(SENTENCE, 20);
        assert_eq!(a, build(11).augment_n(SENTENCE, 20));
        assert_ne!(a, build(12).augment_n(SENTENCE, 20));
        assert_eq!(build(11).operations().len(), 4);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(
            Augmenter::new(0)
                .try_with(Augmentation::RandomDeletion { p: 1.5 })
                .is_err()
        );
        assert!(Lexicon::from_tsv("no tab here").is_err());
        let mut lexicon = Lexicon::new();
        lexicon.insert("same", ["same", ""]);
        assert!(lexicon.is_empty(), "a word is not its own synonym");
    }
}
