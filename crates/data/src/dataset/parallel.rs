//! Parallel corpora for translation: sentence pairs from TSV files (one pair per line, source
//! and target in two columns, as Tatoeba exports and most sentence-aligned corpora ship), and
//! a held-out split that keeps every copy of a source sentence on one side.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::stream::LineReader;
use crate::error::DataError;

/// A source sentence and its translation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentencePair {
    /// The sentence to translate.
    pub source: String,
    /// Its translation.
    pub target: String,
}

/// Where the two sides of a pair are in a TSV line, and which lines to keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParallelConfig {
    /// The 0-based column of the source sentence. Default: 0.
    pub source_column: usize,
    /// The 0-based column of the target sentence. Default: 1.
    pub target_column: usize,
    /// The field separator. Default: tab.
    pub delimiter: char,
    /// Whether the first line is a header (skipped). Default: false.
    pub has_header: bool,
    /// Drop pairs with a side longer than this many whitespace-separated words. Default: none.
    pub max_words: Option<usize>,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        Self {
            source_column: 0,
            target_column: 1,
            delimiter: '\t',
            has_header: false,
            max_words: None,
        }
    }
}

/// Sentence pairs in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParallelCorpus {
    /// The pairs.
    pub pairs: Vec<SentencePair>,
}

impl ParallelConfig {
    /// Reads a TSV file of sentence pairs (streamed line by line). Blank lines are skipped;
    /// surrounding whitespace is trimmed from both sides; extra columns (e.g. attribution)
    /// are ignored.
    ///
    /// # Errors
    /// [`DataError::Io`]; [`DataError::MalformedLine`] (with the line number) for a line with
    /// too few fields or an empty side; [`DataError::InvalidConfig`] when both sides name the
    /// same column; [`DataError::EmptyCorpus`] when no pair is left.
    pub fn read(&self, path: impl AsRef<Path>) -> Result<ParallelCorpus, DataError> {
        let path = path.as_ref();
        let lines = LineReader::open(path)?;
        self.parse_lines(path.to_path_buf(), lines)
    }

    /// Like [`ParallelConfig::read`] for text in memory (errors name the path `<memory>`).
    ///
    /// ```
    /// use lmforge_data::dataset::parallel::ParallelConfig;
    ///
    /// let text = "Go.\tVa !\tCC-BY 2.0\nI won!\tJ'ai gagné !\tCC-BY 2.0\n";
    /// let corpus = ParallelConfig::default().parse(text)?;
    /// assert_eq!(corpus.pairs.len(), 2);
    /// assert_eq!(corpus.pairs[1].target, "J'ai gagné !");
    /// # Ok::<(), lmforge_data::DataError>(())
    /// ```
    ///
    /// # Errors
    /// As [`ParallelConfig::read`].
    pub fn parse(&self, text: &str) -> Result<ParallelCorpus, DataError> {
        let lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| Ok((i + 1, l.to_string())));
        self.parse_lines(PathBuf::from("<memory>"), lines)
    }

    fn parse_lines(
        &self,
        path: PathBuf,
        lines: impl Iterator<Item = Result<(usize, String), DataError>>,
    ) -> Result<ParallelCorpus, DataError> {
        if self.source_column == self.target_column {
            return Err(DataError::InvalidConfig {
                what: "ParallelConfig",
                reason: format!(
                    "source_column and target_column are both {}",
                    self.source_column
                ),
            });
        }
        let needed = self.source_column.max(self.target_column) + 1;
        let mut pairs = Vec::new();
        let mut header = self.has_header;
        for line in lines {
            let (number, line) = line?;
            if line.trim().is_empty() {
                continue;
            }
            if header {
                header = false;
                continue;
            }
            let fields: Vec<&str> = line.split(self.delimiter).collect();
            if fields.len() < needed {
                return Err(DataError::malformed(
                    &path,
                    number,
                    format!("expected at least {needed} fields, found {}", fields.len()),
                ));
            }
            let (source, target) = (
                fields[self.source_column].trim(),
                fields[self.target_column].trim(),
            );
            if source.is_empty() || target.is_empty() {
                let side = if source.is_empty() {
                    "source"
                } else {
                    "target"
                };
                return Err(DataError::malformed(
                    &path,
                    number,
                    format!("the {side} sentence is empty"),
                ));
            }
            if let Some(max) = self.max_words {
                let words = |s: &str| s.split_whitespace().count();
                if words(source) > max || words(target) > max {
                    continue;
                }
            }
            pairs.push(SentencePair {
                source: source.to_string(),
                target: target.to_string(),
            });
        }
        if pairs.is_empty() {
            return Err(DataError::EmptyCorpus {
                what: format!("{} has no sentence pair", path.display()),
            });
        }
        Ok(ParallelCorpus { pairs })
    }
}

impl ParallelCorpus {
    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there is no pair.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Splits into train, validation and test sets of about `valid` and `test` pairs, drawn at
    /// random (seeded). Pairs are grouped by source sentence first, so a sentence with several
    /// translations lands on one side only and the held-out sets never test a sentence the
    /// model was trained on. Each held-out set takes whole groups until it holds at least its
    /// count; the training set keeps the rest, in file order.
    ///
    /// ```
    /// use lmforge_data::dataset::parallel::ParallelConfig;
    ///
    /// let text: String = (0..100).map(|i| format!("s{}\tt{i}\n", i / 2)).collect();
    /// let corpus = ParallelConfig::default().parse(&text)?;
    /// let [train, valid, test] = corpus.split(10, 20, 7)?;
    /// assert_eq!(train.len() + valid.len() + test.len(), 100);
    /// assert!(test.pairs.iter().all(|p| !train.pairs.iter().any(|q| q.source == p.source)));
    /// # Ok::<(), lmforge_data::DataError>(())
    /// ```
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] when the held-out sets would leave no training pair.
    pub fn split(&self, valid: usize, test: usize, seed: u64) -> Result<[Self; 3], DataError> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut by_source: HashMap<&str, usize> = HashMap::new();
        for (i, pair) in self.pairs.iter().enumerate() {
            let g = *by_source.entry(pair.source.as_str()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
        }
        let mut order: Vec<usize> = (0..groups.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        let mut side = vec![0u8; self.pairs.len()];
        let mut next = order.into_iter();
        for (label, want) in [(1u8, valid), (2u8, test)] {
            let mut taken = 0;
            while taken < want {
                let Some(g) = next.next() else { break };
                for &i in &groups[g] {
                    side[i] = label;
                }
                taken += groups[g].len();
            }
        }
        if !side.contains(&0) {
            return Err(DataError::InvalidConfig {
                what: "ParallelCorpus::split",
                reason: format!(
                    "{valid} validation + {test} test pairs leave no training pair out of {}",
                    self.pairs.len()
                ),
            });
        }
        let mut sets: [Self; 3] = Default::default();
        for (pair, &s) in self.pairs.iter().zip(&side) {
            sets[s as usize].pairs.push(pair.clone());
        }
        Ok(sets)
    }

    /// The same corpus with source and target exchanged.
    pub fn reversed(&self) -> Self {
        Self {
            pairs: self
                .pairs
                .iter()
                .map(|p| SentencePair {
                    source: p.target.clone(),
                    target: p.source.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_header_and_length_filter() {
        let config = ParallelConfig {
            source_column: 2,
            target_column: 0,
            has_header: true,
            max_words: Some(3),
            ..Default::default()
        };
        let text = "de\tx\ten\n\nHallo Welt\t1\t Hello world \nein zwei drei vier\t2\tone\n";
        let corpus = config.parse(text).unwrap();
        // The header is skipped, sides trimmed, the 4-word target dropped.
        assert_eq!(
            corpus.pairs,
            vec![SentencePair {
                source: "Hello world".into(),
                target: "Hallo Welt".into()
            }]
        );
        assert_eq!(corpus.reversed().pairs[0].source, "Hallo Welt");
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let config = ParallelConfig::default();
        let err = config.parse("a\tb\nonly one field\n").unwrap_err();
        assert!(
            matches!(err, DataError::MalformedLine { line: 2, .. }),
            "{err}"
        );
        let err = config.parse("a\tb\n\nc\t  \n").unwrap_err();
        assert!(
            matches!(&err, DataError::MalformedLine { line: 3, reason, .. } if reason.contains("target")),
            "{err}"
        );
        assert!(matches!(
            config.parse("\n\n"),
            Err(DataError::EmptyCorpus { .. })
        ));
        let same = ParallelConfig {
            target_column: 0,
            ..Default::default()
        };
        assert!(matches!(
            same.parse("a\tb"),
            Err(DataError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn split_keeps_sources_on_one_side_and_is_seeded() {
        // 60 sources with 1, 2 or 3 translations each.
        let mut text = String::new();
        for s in 0..60 {
            for t in 0..(1 + s % 3) {
                text.push_str(&format!("source {s}\ttarget {s}.{t}\n"));
            }
        }
        let corpus = ParallelConfig::default().parse(&text).unwrap();
        let [train, valid, test] = corpus.split(15, 20, 3).unwrap();
        assert_eq!(train.len() + valid.len() + test.len(), corpus.len());
        assert!((15..15 + 3).contains(&valid.len()), "{}", valid.len());
        assert!((20..20 + 3).contains(&test.len()), "{}", test.len());
        let sources = |c: &ParallelCorpus| -> std::collections::HashSet<String> {
            c.pairs.iter().map(|p| p.source.clone()).collect()
        };
        let (a, b, c) = (sources(&train), sources(&valid), sources(&test));
        assert!(a.is_disjoint(&b) && a.is_disjoint(&c) && b.is_disjoint(&c));
        // Same seed, same split; another seed, another test set.
        assert_eq!(corpus.split(15, 20, 3).unwrap()[2], test);
        assert_ne!(corpus.split(15, 20, 4).unwrap()[2], test);
        assert!(matches!(
            corpus.split(100, 100, 3),
            Err(DataError::InvalidConfig { .. })
        ));
    }
}
