//! CoNLL-style token-label files (NER, chunking, POS) and label alignment to sub-words.

use std::path::{Path, PathBuf};

use super::LabelSet;
use super::stream::LineReader;
use crate::error::DataError;
use crate::tokenizer::{Encoding, Tokenizer};

/// Label id of tokens that do not count in the loss (PyTorch's ignore index).
pub const IGNORE_LABEL: i64 = -100;

/// Which whitespace-separated columns hold the word and its tag.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConllConfig {
    /// The word column. Default: 0.
    pub token_column: usize,
    /// The tag column; `None` = the last column (CoNLL-2003's NER tags). Default: `None`.
    pub tag_column: Option<usize>,
}

/// One sentence: words and their tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConllSentence {
    /// The words.
    pub tokens: Vec<String>,
    /// One tag per word (e.g. `B-PER`).
    pub tags: Vec<String>,
    /// The 1-based line of the first word, for error messages.
    pub line: usize,
}

/// A sentence tokenized into sub-words with one label id per sub-word: the first sub-word of
/// each word carries the word's label, the others and the special tokens carry
/// [`IGNORE_LABEL`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlignedExample {
    /// The tokenizer's output.
    pub encoding: Encoding,
    /// One label per token.
    pub labels: Vec<i64>,
}

impl AlignedExample {
    /// Shortens the example to `max_length` tokens, keeping a final special token (see
    /// [`Encoding::truncate`]) and its ignored label.
    pub fn truncate(&mut self, max_length: usize) {
        if self.labels.len() <= max_length {
            return;
        }
        let last = *self.labels.last().expect("non-empty");
        let keep_last =
            max_length > 0 && *self.encoding.special_tokens_mask.last().expect("non-empty");
        self.encoding.truncate(max_length);
        self.labels.truncate(max_length);
        if keep_last {
            self.labels[max_length - 1] = last;
        }
    }
}

impl ConllConfig {
    /// Reads a CoNLL file (streamed): one word per line with whitespace-separated columns,
    /// blank lines between sentences, `-DOCSTART-` lines ignored.
    ///
    /// # Errors
    /// [`DataError::Io`]; [`DataError::MalformedLine`] (with the line number) for a line
    /// without the configured columns; [`DataError::EmptyCorpus`] when there is no sentence.
    pub fn read(&self, path: impl AsRef<Path>) -> Result<Vec<ConllSentence>, DataError> {
        let path = path.as_ref();
        self.parse_lines(path.to_path_buf(), LineReader::open(path)?)
    }

    /// Like [`ConllConfig::read`] for text in memory (errors name the path `<memory>`).
    ///
    /// ```
    /// use lmforge_data::dataset::conll::ConllConfig;
    ///
    /// let text = "-DOCSTART- -X- O\n\nMarie NNP B-PER\nsmiled VBD O\n\nHi UH O\n";
    /// let sentences = ConllConfig::default().parse(text)?;
    /// assert_eq!(sentences.len(), 2);
    /// assert_eq!(sentences[0].tags, ["B-PER", "O"]);
    /// # Ok::<(), lmforge_data::DataError>(())
    /// ```
    ///
    /// # Errors
    /// As [`ConllConfig::read`].
    pub fn parse(&self, text: &str) -> Result<Vec<ConllSentence>, DataError> {
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
    ) -> Result<Vec<ConllSentence>, DataError> {
        let mut sentences = Vec::new();
        let mut current = ConllSentence {
            tokens: Vec::new(),
            tags: Vec::new(),
            line: 0,
        };
        let flush = |current: &mut ConllSentence, sentences: &mut Vec<ConllSentence>| {
            if !current.tokens.is_empty() {
                sentences.push(std::mem::replace(
                    current,
                    ConllSentence {
                        tokens: Vec::new(),
                        tags: Vec::new(),
                        line: 0,
                    },
                ));
            }
        };
        for line in lines {
            let (number, line) = line?;
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.is_empty() {
                flush(&mut current, &mut sentences);
                continue;
            }
            if fields[0] == "-DOCSTART-" {
                continue;
            }
            let tag_column = self.tag_column.unwrap_or(fields.len() - 1);
            let needed = self.token_column.max(tag_column) + 1;
            if fields.len() < needed || (self.tag_column.is_none() && fields.len() < 2) {
                return Err(DataError::malformed(
                    &path,
                    number,
                    format!(
                        "expected a word and a tag (at least {} columns), found {}",
                        needed.max(2),
                        fields.len()
                    ),
                ));
            }
            if current.tokens.is_empty() {
                current.line = number;
            }
            current.tokens.push(fields[self.token_column].to_string());
            current.tags.push(fields[tag_column].to_string());
        }
        flush(&mut current, &mut sentences);
        if sentences.is_empty() {
            return Err(DataError::EmptyCorpus {
                what: format!("{} has no sentence", path.display()),
            });
        }
        Ok(sentences)
    }
}

impl ConllSentence {
    /// Tokenizes the words and aligns the tags: the first sub-word of each word gets the id of
    /// its tag in `labels`, every other token [`IGNORE_LABEL`].
    ///
    /// ```
    /// use lmforge_data::dataset::LabelSet;
    /// use lmforge_data::dataset::conll::{ConllConfig, IGNORE_LABEL};
    /// use lmforge_data::tokenizer::{CharTokenizer, Tokenizer};
    ///
    /// let sentence = &ConllConfig::default().parse("Ann B-PER\nran O\n")?[0];
    /// let tokenizer = CharTokenizer::train("Ann ran", &["[CLS]", "[SEP]"], Default::default())?;
    /// let labels = LabelSet::new(["O", "B-PER"]);
    /// let aligned = sentence.align(&tokenizer, &labels, true)?;
    /// // [CLS] A n n r a n [SEP]: one label per word, on its first character.
    /// let i = IGNORE_LABEL;
    /// assert_eq!(aligned.labels, [i, 1, i, i, 0, i, i, i]);
    /// # Ok::<(), lmforge_data::DataError>(())
    /// ```
    ///
    /// # Errors
    /// [`DataError::UnknownLabel`] (with the sentence's first line) for a tag not in
    /// `labels`; tokenizer errors.
    pub fn align(
        &self,
        tokenizer: &dyn Tokenizer,
        labels: &LabelSet,
        add_special_tokens: bool,
    ) -> Result<AlignedExample, DataError> {
        let tag_ids = self
            .tags
            .iter()
            .map(|tag| {
                labels.id(tag).ok_or_else(|| DataError::UnknownLabel {
                    label: tag.clone(),
                    known: labels.names().to_vec(),
                    path: None,
                    line: Some(self.line),
                })
            })
            .collect::<Result<Vec<usize>, _>>()?;
        let words: Vec<&str> = self.tokens.iter().map(String::as_str).collect();
        let encoding = tokenizer.encode_words(&words, add_special_tokens)?;
        let mut previous: Option<u32> = None;
        let labels = encoding
            .word_ids
            .iter()
            .zip(&encoding.special_tokens_mask)
            .map(|(&word, &special)| {
                let label = match word {
                    Some(w) if !special && previous != Some(w) => tag_ids
                        .get(w as usize)
                        .map_or(IGNORE_LABEL, |&id| id as i64),
                    _ => IGNORE_LABEL,
                };
                previous = if special { None } else { word };
                label
            })
            .collect();
        Ok(AlignedExample { encoding, labels })
    }
}

/// The sorted distinct tags of `sentences`, as a label set.
pub fn tag_set(sentences: &[ConllSentence]) -> LabelSet {
    LabelSet::sorted(sentences.iter().flat_map(|s| s.tags.iter().cloned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lines_report_their_number() {
        let err = ConllConfig::default()
            .parse("a O\nb O\n\nlonely\n")
            .unwrap_err();
        assert!(
            matches!(err, DataError::MalformedLine { line: 4, .. }),
            "{err}"
        );
        let err = ConllConfig {
            token_column: 0,
            tag_column: Some(3),
        }
        .parse("a NN B-NP O\nb NN\n")
        .unwrap_err();
        assert!(
            matches!(err, DataError::MalformedLine { line: 2, .. }),
            "{err}"
        );
        assert!(matches!(
            ConllConfig::default().parse("-DOCSTART- O\n\n"),
            Err(DataError::EmptyCorpus { .. })
        ));
    }

    #[test]
    fn unknown_tags_and_truncation() {
        let sentences = ConllConfig::default().parse("\n\nx B-X\ny O\n").unwrap();
        assert_eq!(sentences[0].line, 3);
        assert_eq!(tag_set(&sentences).names(), ["B-X", "O"]);
        let tokenizer =
            crate::tokenizer::CharTokenizer::train("xy", &["[CLS]", "[SEP]"], Default::default())
                .unwrap();
        let err = sentences[0]
            .align(&tokenizer, &LabelSet::new(["O"]), true)
            .unwrap_err();
        assert!(
            matches!(err, DataError::UnknownLabel { line: Some(3), .. }),
            "{err}"
        );
        let mut aligned = sentences[0]
            .align(&tokenizer, &LabelSet::new(["O", "B-X"]), true)
            .unwrap();
        assert_eq!(aligned.labels, [-100, 1, 0, -100]);
        aligned.truncate(3);
        assert_eq!(aligned.labels, [-100, 1, -100]);
        assert_eq!(aligned.encoding.ids, [0, 2, 1]);
    }
}
