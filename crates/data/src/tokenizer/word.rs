//! Word-level tokenizer with an unknown token.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Encoding, Normalization, SpecialTokens, Tokenizer, assign_role, wrap_single};
use crate::error::{DataError, check};

/// How a [`WordTokenizer`] builds its vocabulary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WordVocabOptions {
    /// Special tokens, first in the vocabulary in this order. Default:
    /// `<pad>`, `<unk>`, `<bos>`, `<eos>`.
    pub special_tokens: Vec<String>,
    /// The unknown token; must be one of `special_tokens`. Default: `<unk>`.
    pub unk_token: String,
    /// Words seen fewer times are left out (they encode as the unknown token). Default: 1.
    pub min_frequency: usize,
    /// Largest vocabulary, special tokens included; the most frequent words are kept.
    /// Default: no limit.
    pub max_vocab_size: Option<usize>,
    /// Normalization applied before splitting. Default: none.
    pub normalization: Normalization,
    /// How text is cut into words. Default: [`WordSplit::Punctuation`].
    pub split: WordSplit,
}

/// How a [`WordTokenizer`] cuts text into words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WordSplit {
    /// [`split_words`]: runs of letters and digits, each punctuation character a word.
    #[default]
    Punctuation,
    /// Only at whitespace, for pre-tokenized corpora such as Penn Treebank, whose words
    /// (`<unk>`, `'s`, `a.m.`) contain punctuation.
    Whitespace,
}

impl WordSplit {
    /// The words of `text`.
    pub fn words<'a>(&self, text: &'a str) -> Vec<&'a str> {
        match self {
            WordSplit::Punctuation => split_words(text),
            WordSplit::Whitespace => text.split_whitespace().collect(),
        }
    }
}

impl Default for WordVocabOptions {
    fn default() -> Self {
        Self {
            special_tokens: ["<pad>", "<unk>", "<bos>", "<eos>"]
                .map(String::from)
                .to_vec(),
            unk_token: "<unk>".to_string(),
            min_frequency: 1,
            max_vocab_size: None,
            normalization: Normalization::none(),
            split: WordSplit::Punctuation,
        }
    }
}

/// Splits text into words: runs of letters and digits (and any other non-punctuation,
/// non-space characters); each punctuation character is a word of its own.
pub fn split_words(text: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        let punct = c.is_ascii_punctuation() || (!c.is_alphanumeric() && !c.is_whitespace());
        if c.is_whitespace() || punct {
            if let Some(s) = start.take() {
                words.push(&text[s..i]);
            }
            if punct {
                words.push(&text[i..i + c.len_utf8()]);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        words.push(&text[s..]);
    }
    words
}

/// One id per word (see [`split_words`]), vocabulary ranked by frequency in a training corpus,
/// with an unknown token for everything else. Decoding joins words with single spaces.
///
/// ```
/// use lmforge_data::tokenizer::{Tokenizer, WordTokenizer, WordVocabOptions};
///
/// let tok = WordTokenizer::train(["the cat sat", "the dog sat."], &WordVocabOptions::default())?;
/// let unk = tok.special_tokens().unk.unwrap();
/// let ids = tok.encode("the bird sat", false)?.ids;
/// assert_eq!(ids[1], unk);
/// assert_eq!(tok.decode(&ids, false)?, "the <unk> sat");
/// # Ok::<(), lmforge_data::DataError>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "WordTokenizerFile", into = "WordTokenizerFile")]
pub struct WordTokenizer {
    tokens: Vec<String>,
    n_special: usize,
    normalization: Normalization,
    split: WordSplit,
    index: HashMap<String, u32>,
    specials: SpecialTokens,
}

#[derive(Clone, Serialize, Deserialize)]
struct WordTokenizerFile {
    kind: String,
    n_special: usize,
    tokens: Vec<String>,
    #[serde(default)]
    normalization: Normalization,
    #[serde(default)]
    split: WordSplit,
}

impl TryFrom<WordTokenizerFile> for WordTokenizer {
    type Error = String;
    fn try_from(file: WordTokenizerFile) -> Result<Self, String> {
        if file.kind != "word" || file.n_special > file.tokens.len() {
            return Err("not a saved word tokenizer".to_string());
        }
        Ok(Self::build(
            file.tokens,
            file.n_special,
            file.normalization,
            file.split,
        ))
    }
}

impl From<WordTokenizer> for WordTokenizerFile {
    fn from(t: WordTokenizer) -> Self {
        Self {
            kind: "word".to_string(),
            n_special: t.n_special,
            tokens: t.tokens,
            normalization: t.normalization,
            split: t.split,
        }
    }
}

impl WordTokenizer {
    /// Builds the vocabulary from `texts`: special tokens first, then words by decreasing
    /// frequency (ties in lexicographic order).
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] when the unknown token is not among the special tokens or
    /// `max_vocab_size` leaves no room for a word; [`DataError::EmptyCorpus`] when no word
    /// passes `min_frequency`.
    pub fn train<'a>(
        texts: impl IntoIterator<Item = &'a str>,
        options: &WordVocabOptions,
    ) -> Result<Self, DataError> {
        let what = "WordVocabOptions";
        check(
            options.special_tokens.contains(&options.unk_token),
            what,
            || format!("unk_token `{}` is not a special token", options.unk_token),
        )?;
        let n_special = options.special_tokens.len();
        check(
            options.max_vocab_size.is_none_or(|m| m > n_special),
            what,
            || format!("max_vocab_size must exceed the {n_special} special tokens"),
        )?;
        let mut counts: HashMap<String, usize> = HashMap::new();
        for text in texts {
            let text = options.normalization.apply(text);
            for word in options.split.words(&text) {
                *counts.entry(word.to_string()).or_default() += 1;
            }
        }
        let mut words: Vec<(String, usize)> = counts
            .into_iter()
            .filter(|(w, c)| *c >= options.min_frequency && !options.special_tokens.contains(w))
            .collect();
        if words.is_empty() {
            return Err(DataError::EmptyCorpus {
                what: format!("no word occurs at least {} times", options.min_frequency),
            });
        }
        words.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        if let Some(max) = options.max_vocab_size {
            words.truncate(max - n_special);
        }
        let tokens = options
            .special_tokens
            .iter()
            .cloned()
            .chain(words.into_iter().map(|(w, _)| w))
            .collect();
        let mut tok = Self::build(tokens, n_special, options.normalization, options.split);
        tok.specials.unk = tok.index.get(&options.unk_token).copied();
        Ok(tok)
    }

    fn build(
        tokens: Vec<String>,
        n_special: usize,
        normalization: Normalization,
        split: WordSplit,
    ) -> Self {
        let mut specials = SpecialTokens::default();
        for (i, name) in tokens[..n_special].iter().enumerate() {
            assign_role(&mut specials, name, i as u32);
        }
        let index = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        Self {
            tokens,
            n_special,
            normalization,
            split,
            index,
            specials,
        }
    }

    /// Writes the tokenizer as JSON.
    ///
    /// # Errors
    /// [`DataError::Io`] when the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), DataError> {
        super::save_json(self, path.as_ref())
    }

    /// Reads a tokenizer written by [`WordTokenizer::save`].
    ///
    /// # Errors
    /// [`DataError::Io`] when the file cannot be read, [`DataError::Tokenizer`] when it is not
    /// a saved word tokenizer.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, DataError> {
        super::load_json(path.as_ref())
    }
}

impl Tokenizer for WordTokenizer {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Encoding, DataError> {
        let text = self.normalization.apply(text);
        let mut encoding = Encoding::default();
        for (w, word) in self.split.words(&text).into_iter().enumerate() {
            let id = match (self.index.get(word), self.specials.unk) {
                (Some(&id), _) | (None, Some(id)) => id,
                (None, None) => {
                    return Err(DataError::Tokenizer(format!(
                        "word `{word}` is not in the vocabulary and there is no unknown token"
                    )));
                }
            };
            encoding.push(id, 0, Some(w as u32), false);
        }
        Ok(wrap_single(encoding, &self.specials, add_special_tokens))
    }

    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, DataError> {
        let mut words = Vec::with_capacity(ids.len());
        for &id in ids {
            let token = self
                .tokens
                .get(id as usize)
                .ok_or(DataError::TokenOutOfRange {
                    id,
                    vocab_size: self.tokens.len(),
                })?;
            if !(skip_special_tokens && (id as usize) < self.n_special) {
                words.push(token.as_str());
            }
        }
        Ok(words.join(" "))
    }

    fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.index.get(token).copied()
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokens.get(id as usize).cloned()
    }

    fn special_tokens(&self) -> SpecialTokens {
        self.specials
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_punctuation_and_whitespace() {
        assert_eq!(
            split_words(" Hello,  world! It's 3.5 "),
            ["Hello", ",", "world", "!", "It", "'", "s", "3", ".", "5"]
        );
        assert!(split_words("   ").is_empty());
    }

    #[test]
    fn frequency_order_limits_and_round_trip() {
        let texts = ["b a b c", "a b", "d"];
        let options = WordVocabOptions {
            max_vocab_size: Some(6),
            ..Default::default()
        };
        let tok = WordTokenizer::train(texts, &options).unwrap();
        // b (3) then a (2) then c, d (1 each, lexicographic); c and d do not fit.
        assert_eq!(tok.vocab_size(), 6);
        assert_eq!(tok.token_to_id("b"), Some(4));
        assert_eq!(tok.token_to_id("a"), Some(5));
        assert_eq!(tok.token_to_id("c"), None);
        let e = tok.encode("a c b", true).unwrap();
        assert_eq!(e.ids, [2, 5, 1, 4, 3]);
        assert_eq!(e.word_ids, [None, Some(0), Some(1), Some(2), None]);
        assert_eq!(tok.decode(&e.ids, false).unwrap(), "<bos> a <unk> b <eos>");
        assert_eq!(tok.decode(&e.ids, true).unwrap(), "a b");

        let dir = std::env::temp_dir().join(format!("lmforge-word-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        tok.save(dir.join("w.json")).unwrap();
        let back = WordTokenizer::load(dir.join("w.json")).unwrap();
        assert_eq!(back.encode("a c b", true).unwrap(), e);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn invalid_options_and_empty_corpus() {
        let bad_unk = WordVocabOptions {
            unk_token: "[UNK]".into(),
            ..Default::default()
        };
        assert!(WordTokenizer::train(["a"], &bad_unk).is_err());
        assert!(matches!(
            WordTokenizer::train(["", "  "], &WordVocabOptions::default()),
            Err(DataError::EmptyCorpus { .. })
        ));
        let rare = WordVocabOptions {
            min_frequency: 2,
            ..Default::default()
        };
        assert!(WordTokenizer::train(["a b"], &rare).is_err());
    }

    /// Whitespace splitting keeps pre-tokenized words whole, and a literal `<unk>` in the
    /// text maps to the unknown token.
    #[test]
    fn whitespace_split_keeps_words_with_punctuation() {
        let options = WordVocabOptions {
            split: WordSplit::Whitespace,
            ..Default::default()
        };
        let tok = WordTokenizer::train([" the <unk> 's a.m. ", "the 's"], &options).unwrap();
        let ids = tok.encode("the <unk> 's a.m. zebra", false).unwrap().ids;
        assert_eq!(ids.len(), 5);
        let unk = tok.special_tokens().unk.unwrap();
        assert_eq!(ids[1], unk);
        assert_eq!(ids[4], unk);
        assert_eq!(tok.decode(&ids, false).unwrap(), "the <unk> 's a.m. <unk>");
        let punct = WordTokenizer::train(["the 's"], &WordVocabOptions::default()).unwrap();
        assert_eq!(punct.encode("the 's", false).unwrap().ids.len(), 3);
        // The split survives saving.
        let path = std::env::temp_dir().join(format!("lmforge-ws-{}.json", std::process::id()));
        tok.save(&path).unwrap();
        let back = WordTokenizer::load(&path).unwrap();
        assert_eq!(back.encode("a.m.", false).unwrap().ids.len(), 1);
        let _ = std::fs::remove_file(path);
    }
}
