//! Character-level tokenizer.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Encoding, Normalization, SpecialTokens, Tokenizer, assign_role, wrap_single};
use crate::error::DataError;

/// One id per character, as in char-RNN and nanoGPT's Shakespeare model.
///
/// The vocabulary is the special tokens (in the order given) followed by the distinct
/// characters of a training text in code-point order, so the same text always gives the same
/// ids. Characters outside the vocabulary map to the unknown token when there is one (named
/// `<unk>` or `[UNK]`) and are an error otherwise. Word ids count whitespace-separated words;
/// whitespace itself has no word id.
///
/// ```
/// use lmforge_data::tokenizer::{CharTokenizer, Normalization, Tokenizer};
///
/// let tok = CharTokenizer::train("abc cab", &["<pad>", "<unk>"], Normalization::none())?;
/// assert_eq!(tok.vocab_size(), 6); // <pad> <unk> ' ' a b c
/// assert_eq!(tok.encode("cad", false)?.ids, [5, 3, 1]); // 'd' is unknown
/// assert_eq!(tok.special_tokens().pad, Some(0));
/// # Ok::<(), lmforge_data::DataError>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "CharTokenizerFile", into = "CharTokenizerFile")]
pub struct CharTokenizer {
    special_names: Vec<String>,
    chars: Vec<char>,
    normalization: Normalization,
    index: HashMap<char, u32>,
    specials: SpecialTokens,
}

/// The saved form of a [`CharTokenizer`].
#[derive(Clone, Serialize, Deserialize)]
struct CharTokenizerFile {
    kind: String,
    special_tokens: Vec<String>,
    chars: String,
    #[serde(default)]
    normalization: Normalization,
}

impl TryFrom<CharTokenizerFile> for CharTokenizer {
    type Error = String;
    fn try_from(file: CharTokenizerFile) -> Result<Self, String> {
        if file.kind != "char" {
            return Err(format!(
                "expected a char tokenizer, found kind `{}`",
                file.kind
            ));
        }
        Ok(Self::build(
            file.special_tokens,
            file.chars.chars().collect(),
            file.normalization,
        ))
    }
}

impl From<CharTokenizer> for CharTokenizerFile {
    fn from(t: CharTokenizer) -> Self {
        Self {
            kind: "char".to_string(),
            special_tokens: t.special_names,
            chars: t.chars.into_iter().collect(),
            normalization: t.normalization,
        }
    }
}

impl CharTokenizer {
    /// The characters of `text`, no special tokens, no normalization.
    ///
    /// # Errors
    /// [`DataError::EmptyCorpus`] when `text` is empty.
    pub fn from_text(text: &str) -> Result<Self, DataError> {
        Self::train(text, &[], Normalization::none())
    }

    /// The characters of `text` after `normalization`, preceded by `special_tokens`.
    ///
    /// # Errors
    /// [`DataError::EmptyCorpus`] when `text` is empty after normalization.
    pub fn train(
        text: &str,
        special_tokens: &[&str],
        normalization: Normalization,
    ) -> Result<Self, DataError> {
        let chars: BTreeSet<char> = normalization.apply(text).chars().collect();
        if chars.is_empty() {
            return Err(DataError::EmptyCorpus {
                what: "no character to build a character vocabulary from".to_string(),
            });
        }
        let names = special_tokens.iter().map(|s| s.to_string()).collect();
        Ok(Self::build(
            names,
            chars.into_iter().collect(),
            normalization,
        ))
    }

    fn build(special_names: Vec<String>, chars: Vec<char>, normalization: Normalization) -> Self {
        let mut specials = SpecialTokens::default();
        for (i, name) in special_names.iter().enumerate() {
            assign_role(&mut specials, name, i as u32);
        }
        let offset = special_names.len() as u32;
        let index = chars
            .iter()
            .enumerate()
            .map(|(i, &c)| (c, offset + i as u32))
            .collect();
        Self {
            special_names,
            chars,
            normalization,
            index,
            specials,
        }
    }

    /// The normalization applied before encoding.
    pub fn normalization(&self) -> Normalization {
        self.normalization
    }

    /// Writes the tokenizer as JSON.
    ///
    /// # Errors
    /// [`DataError::Io`] when the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), DataError> {
        super::save_json(self, path.as_ref())
    }

    /// Reads a tokenizer written by [`CharTokenizer::save`].
    ///
    /// # Errors
    /// [`DataError::Io`] when the file cannot be read, [`DataError::Tokenizer`] when it is not
    /// a saved char tokenizer.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, DataError> {
        super::load_json(path.as_ref())
    }
}

impl Tokenizer for CharTokenizer {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Encoding, DataError> {
        let text = self.normalization.apply(text);
        let mut encoding = Encoding::default();
        let mut word: Option<u32> = None;
        let mut next_word = 0u32;
        for c in text.chars() {
            let id = match (self.index.get(&c), self.specials.unk) {
                (Some(&id), _) | (None, Some(id)) => id,
                (None, None) => {
                    return Err(DataError::Tokenizer(format!(
                        "character {c:?} is not in the vocabulary and there is no unknown token"
                    )));
                }
            };
            let word_id = if c.is_whitespace() {
                word = None;
                None
            } else {
                Some(*word.get_or_insert_with(|| {
                    next_word += 1;
                    next_word - 1
                }))
            };
            encoding.push(id, 0, word_id, false);
        }
        Ok(wrap_single(encoding, &self.specials, add_special_tokens))
    }

    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, DataError> {
        let mut text = String::new();
        let n_special = self.special_names.len();
        for &id in ids {
            let i = id as usize;
            if i < n_special {
                if !skip_special_tokens {
                    text.push_str(&self.special_names[i]);
                }
            } else {
                let c = self
                    .chars
                    .get(i - n_special)
                    .ok_or(DataError::TokenOutOfRange {
                        id,
                        vocab_size: self.vocab_size(),
                    })?;
                text.push(*c);
            }
        }
        Ok(text)
    }

    fn vocab_size(&self) -> usize {
        self.special_names.len() + self.chars.len()
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        if let Some(i) = self.special_names.iter().position(|s| s == token) {
            return Some(i as u32);
        }
        let mut chars = token.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => self.index.get(&c).copied(),
            _ => None,
        }
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        let i = id as usize;
        let n = self.special_names.len();
        if i < n {
            Some(self.special_names[i].clone())
        } else {
            self.chars.get(i - n).map(|c| c.to_string())
        }
    }

    fn special_tokens(&self) -> SpecialTokens {
        self.specials
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_save_load_and_errors() {
        let text = "To be, or not to be: that is the question.";
        let tok = CharTokenizer::train(text, &["<pad>", "<bos>", "<eos>"], Normalization::none())
            .unwrap();
        let e = tok.encode(text, true).unwrap();
        assert_eq!(e.ids.first(), Some(&1));
        assert_eq!(e.ids.last(), Some(&2));
        assert_eq!(tok.decode(&e.ids, true).unwrap(), text);
        assert_eq!(tok.decode(&e.ids[..2], false).unwrap(), "<bos>T");
        assert!(matches!(
            tok.decode(&[999], false),
            Err(DataError::TokenOutOfRange { id: 999, .. })
        ));
        // No unknown token: an unseen character is an error.
        assert!(tok.encode("Z", false).is_err());

        let dir = std::env::temp_dir().join(format!("lmforge-char-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("char.json");
        tok.save(&path).unwrap();
        let back = CharTokenizer::load(&path).unwrap();
        assert_eq!(back.encode(text, true).unwrap(), e);
        assert_eq!(back.special_tokens(), tok.special_tokens());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            CharTokenizer::load(dir.join("missing.json")),
            Err(DataError::Io { .. })
        ));
        assert!(matches!(
            CharTokenizer::from_text(""),
            Err(DataError::EmptyCorpus { .. })
        ));
    }

    #[test]
    fn word_ids_and_normalization() {
        let n = Normalization {
            lowercase: true,
            strip_accents: true,
            nfkc: false,
        };
        let tok = CharTokenizer::train("ab ba", &["<unk>"], n).unwrap();
        let e = tok.encode("Áb  B", false).unwrap();
        assert_eq!(tok.decode(&e.ids, false).unwrap(), "ab  b");
        assert_eq!(e.word_ids, [Some(0), Some(0), None, None, Some(1)]);
        assert_eq!(tok.token_to_id("a"), Some(2));
        assert_eq!(tok.id_to_token(0).as_deref(), Some("<unk>"));
        assert_eq!(tok.token_to_id("ab"), None);
    }
}
