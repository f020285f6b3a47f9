//! Tokenizers behind one object-safe trait, [`Tokenizer`].
//!
//! - [`CharTokenizer`]: one id per character, vocabulary from a corpus.
//! - [`WordTokenizer`]: whitespace/punctuation words, frequency-ranked vocabulary with an
//!   unknown token.
//! - [`HfTokenizer`]: any HuggingFace `tokenizer.json` (BPE, WordPiece, Unigram, ...) through
//!   the `tokenizers` crate, giving the same ids as HuggingFace; also trains BPE and WordPiece
//!   vocabularies from text files, and builds a BERT tokenizer from a `vocab.txt`.
//!
//! Every tokenizer returns an [`Encoding`]: ids plus segment ids, word ids (which word of the
//! input each token came from: whole-word masking and label alignment use them) and a
//! special-token mask.

mod char;
mod hf;
mod normalize;
mod word;

pub use self::char::CharTokenizer;
pub use hf::{BpeTrainOptions, ByteRange, HfTokenizer, WordPieceTrainOptions};
pub use normalize::Normalization;
pub use word::{WordSplit, WordTokenizer, WordVocabOptions, split_words};

use serde::{Deserialize, Serialize};

use crate::error::DataError;

/// Ids of the special tokens a tokenizer knows; `None` where it has no such token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokens {
    /// Padding.
    pub pad: Option<u32>,
    /// Unknown token (out-of-vocabulary input).
    pub unk: Option<u32>,
    /// Classification token at the start of BERT inputs (`[CLS]`).
    pub cls: Option<u32>,
    /// Separator between and after BERT segments (`[SEP]`).
    pub sep: Option<u32>,
    /// Mask token of masked language modelling (`[MASK]`).
    pub mask: Option<u32>,
    /// Beginning of sequence.
    pub bos: Option<u32>,
    /// End of sequence.
    pub eos: Option<u32>,
}

impl SpecialTokens {
    /// Every id that is set, without duplicates, in ascending order.
    pub fn ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = [
            self.pad, self.unk, self.cls, self.sep, self.mask, self.bos, self.eos,
        ]
        .into_iter()
        .flatten()
        .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Whether `id` is one of the special tokens.
    pub fn contains(&self, id: u32) -> bool {
        self.ids().contains(&id)
    }
}

/// The output of a tokenizer for one input (a text, a pair of texts, or a list of words).
///
/// All vectors have one entry per token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Segment ids: 0 for the first text (and its special tokens), 1 for the second of a pair.
    pub type_ids: Vec<u32>,
    /// Index of the input word each token belongs to; `None` for special tokens. For a pair,
    /// the second text's words are numbered from 0 again.
    pub word_ids: Vec<Option<u32>>,
    /// `true` for tokens added by the tokenizer (`[CLS]`, `[SEP]`, `<bos>`, ...).
    pub special_tokens_mask: Vec<bool>,
}

impl Encoding {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there is no token.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Appends one token.
    pub fn push(&mut self, id: u32, type_id: u32, word_id: Option<u32>, special: bool) {
        self.ids.push(id);
        self.type_ids.push(type_id);
        self.word_ids.push(word_id);
        self.special_tokens_mask.push(special);
    }

    /// Shortens the encoding to `max_length` tokens. When the encoding ends with a special
    /// token (`[SEP]`, `<eos>`) that would be cut off, it is kept as the last token, so a
    /// truncated BERT input still ends with `[SEP]`.
    pub fn truncate(&mut self, max_length: usize) {
        if self.len() <= max_length {
            return;
        }
        let last = self.len() - 1;
        let keep_last = max_length > 0 && self.special_tokens_mask[last];
        let (id, type_id, word_id) = (self.ids[last], self.type_ids[last], self.word_ids[last]);
        self.ids.truncate(max_length);
        self.type_ids.truncate(max_length);
        self.word_ids.truncate(max_length);
        self.special_tokens_mask.truncate(max_length);
        if keep_last {
            let end = max_length - 1;
            self.ids[end] = id;
            self.type_ids[end] = type_id;
            self.word_ids[end] = word_id;
            self.special_tokens_mask[end] = true;
        }
    }

    /// Checks that every id is below `vocab_size`.
    ///
    /// # Errors
    /// [`DataError::TokenOutOfRange`] with the first offending id.
    pub fn check_ids(&self, vocab_size: usize) -> Result<(), DataError> {
        check_ids(&self.ids, vocab_size)
    }
}

/// Checks that every id is below `vocab_size`.
///
/// # Errors
/// [`DataError::TokenOutOfRange`] with the first offending id.
pub fn check_ids(ids: &[u32], vocab_size: usize) -> Result<(), DataError> {
    match ids.iter().find(|&&id| id as usize >= vocab_size) {
        Some(&id) => Err(DataError::TokenOutOfRange { id, vocab_size }),
        None => Ok(()),
    }
}

/// A text tokenizer. Object-safe: `Box<dyn Tokenizer>` and `Arc<dyn Tokenizer>` work, and
/// every implementation is `Send + Sync` so data loaders can share one across threads.
///
/// ```
/// use lmforge_data::tokenizer::{CharTokenizer, Tokenizer};
///
/// let tokenizer: Box<dyn Tokenizer> = Box::new(CharTokenizer::from_text("hello world")?);
/// let encoding = tokenizer.encode("hold", false)?;
/// assert_eq!(tokenizer.decode(&encoding.ids, false)?, "hold");
/// # Ok::<(), lmforge_data::DataError>(())
/// ```
pub trait Tokenizer: Send + Sync {
    /// Tokenizes one text. With `add_special_tokens`, the tokenizer's template is applied
    /// (`[CLS] … [SEP]` for BERT-style tokenizers, `<bos> … <eos>` where those exist).
    ///
    /// # Errors
    /// [`DataError::Tokenizer`] when the underlying tokenizer fails.
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Encoding, DataError>;

    /// Tokenizes a pair of texts (for next-sentence prediction or sentence-pair
    /// classification). The default joins the two encodings as
    /// `[CLS] first [SEP] second [SEP]` (segment ids 0 then 1) when the tokenizer has `[CLS]`
    /// and `[SEP]`, else as `<bos> first <eos> <bos> second <eos>` with whichever of those exist.
    ///
    /// # Errors
    /// As [`Tokenizer::encode`].
    fn encode_pair(
        &self,
        first: &str,
        second: &str,
        add_special_tokens: bool,
    ) -> Result<Encoding, DataError> {
        let a = self.encode(first, false)?;
        let b = self.encode(second, false)?;
        Ok(join_pair(a, b, &self.special_tokens(), add_special_tokens))
    }

    /// Tokenizes text that is already split into words (CoNLL token columns). Word ids index
    /// `words`. The default encodes each word on its own.
    ///
    /// # Errors
    /// As [`Tokenizer::encode`].
    fn encode_words(
        &self,
        words: &[&str],
        add_special_tokens: bool,
    ) -> Result<Encoding, DataError> {
        let mut joined = Encoding::default();
        for (w, word) in words.iter().enumerate() {
            let piece = self.encode(word, false)?;
            for id in piece.ids {
                joined.push(id, 0, Some(w as u32), false);
            }
        }
        Ok(wrap_single(
            joined,
            &self.special_tokens(),
            add_special_tokens,
        ))
    }

    /// Tokenizes many texts.
    ///
    /// # Errors
    /// The first error of [`Tokenizer::encode`].
    fn encode_batch(
        &self,
        texts: &[&str],
        add_special_tokens: bool,
    ) -> Result<Vec<Encoding>, DataError> {
        texts
            .iter()
            .map(|t| self.encode(t, add_special_tokens))
            .collect()
    }

    /// Turns ids back into text, optionally leaving out special tokens.
    ///
    /// # Errors
    /// [`DataError::TokenOutOfRange`] for an id not below [`Tokenizer::vocab_size`].
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, DataError>;

    /// Number of ids (including special and added tokens).
    fn vocab_size(&self) -> usize;

    /// The id of a token string.
    fn token_to_id(&self, token: &str) -> Option<u32>;

    /// The token string of an id.
    fn id_to_token(&self, id: u32) -> Option<String>;

    /// The special tokens' ids.
    fn special_tokens(&self) -> SpecialTokens;
}

/// The role a special token's name suggests: `[PAD]`/`<pad>` is padding, `[UNK]`/`<unk>` the
/// unknown token, `[CLS]`, `[SEP]`, `[MASK]`/`<mask>`, `<s>`/`<bos>` the beginning and
/// `</s>`/`<eos>` the end of a sequence; `<|endoftext|>` is both `bos` and `eos` (GPT-2).
pub(crate) fn assign_role(specials: &mut SpecialTokens, name: &str, id: u32) {
    let slot = |s: &mut Option<u32>| {
        if s.is_none() {
            *s = Some(id);
        }
    };
    match name {
        "[PAD]" | "<pad>" | "<|pad|>" => slot(&mut specials.pad),
        "[UNK]" | "<unk>" | "<|unk|>" => slot(&mut specials.unk),
        "[CLS]" | "<cls>" => slot(&mut specials.cls),
        "[SEP]" | "<sep>" => slot(&mut specials.sep),
        "[MASK]" | "<mask>" => slot(&mut specials.mask),
        "<s>" | "<bos>" | "<|startoftext|>" => slot(&mut specials.bos),
        "</s>" | "<eos>" => slot(&mut specials.eos),
        "<|endoftext|>" => {
            slot(&mut specials.bos);
            slot(&mut specials.eos);
        }
        _ => {}
    }
}

/// Adds the single-sequence template of `specials` around `encoding` when `add` is set:
/// `[CLS] … [SEP]` if both exist, else `<bos> … <eos>` with whichever exist.
pub(crate) fn wrap_single(encoding: Encoding, specials: &SpecialTokens, add: bool) -> Encoding {
    if !add {
        return encoding;
    }
    let (start, end) = template_ends(specials);
    let mut out = Encoding::default();
    if let Some(id) = start {
        out.push(id, 0, None, true);
    }
    append(&mut out, encoding, 0);
    if let Some(id) = end {
        out.push(id, 0, None, true);
    }
    out
}

/// Joins two encodings with the pair template of `specials` (see [`Tokenizer::encode_pair`]).
pub(crate) fn join_pair(a: Encoding, b: Encoding, specials: &SpecialTokens, add: bool) -> Encoding {
    let (start, end) = template_ends(specials);
    let bert = specials.cls.is_some() && specials.sep.is_some();
    let mut out = Encoding::default();
    if add && let Some(id) = start {
        out.push(id, 0, None, true);
    }
    append(&mut out, a, 0);
    if add && let Some(id) = end {
        out.push(id, 0, None, true);
    }
    if add
        && !bert
        && let Some(id) = start
    {
        out.push(id, 1, None, true);
    }
    append(&mut out, b, 1);
    if add && let Some(id) = end {
        out.push(id, 1, None, true);
    }
    out
}

fn template_ends(specials: &SpecialTokens) -> (Option<u32>, Option<u32>) {
    if specials.cls.is_some() && specials.sep.is_some() {
        (specials.cls, specials.sep)
    } else {
        (specials.bos, specials.eos)
    }
}

fn append(out: &mut Encoding, part: Encoding, type_id: u32) {
    for i in 0..part.len() {
        out.push(
            part.ids[i],
            type_id,
            part.word_ids[i],
            part.special_tokens_mask[i],
        );
    }
}

/// Writes a tokenizer as pretty JSON (the format of [`CharTokenizer`] and [`WordTokenizer`]).
fn save_json<T: Serialize>(tokenizer: &T, path: &std::path::Path) -> Result<(), DataError> {
    let json = serde_json::to_string_pretty(tokenizer).expect("tokenizers serialize to JSON");
    std::fs::write(path, json).map_err(|e| DataError::io(path, e))
}

/// Reads a tokenizer written by [`save_json`].
fn load_json<T: for<'de> Deserialize<'de>>(path: &std::path::Path) -> Result<T, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| DataError::Tokenizer(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(ids: &[u32]) -> Encoding {
        let mut e = Encoding::default();
        for (i, &id) in ids.iter().enumerate() {
            e.push(id, 0, Some(i as u32), false);
        }
        e
    }

    #[test]
    fn truncation_keeps_a_final_special_token() {
        let specials = SpecialTokens {
            cls: Some(1),
            sep: Some(2),
            ..Default::default()
        };
        let mut e = wrap_single(plain(&[10, 11, 12, 13]), &specials, true);
        assert_eq!(e.ids, [1, 10, 11, 12, 13, 2]);
        e.truncate(4);
        assert_eq!(e.ids, [1, 10, 11, 2]);
        assert_eq!(e.special_tokens_mask, [true, false, false, true]);
        assert_eq!(e.word_ids, [None, Some(0), Some(1), None]);
        let mut p = plain(&[5, 6, 7]);
        p.truncate(2);
        assert_eq!(p.ids, [5, 6]);
    }

    #[test]
    fn pair_templates() {
        let bert = SpecialTokens {
            cls: Some(1),
            sep: Some(2),
            ..Default::default()
        };
        let e = join_pair(plain(&[10]), plain(&[20, 21]), &bert, true);
        assert_eq!(e.ids, [1, 10, 2, 20, 21, 2]);
        assert_eq!(e.type_ids, [0, 0, 0, 1, 1, 1]);
        let gpt = SpecialTokens {
            bos: Some(3),
            eos: Some(4),
            ..Default::default()
        };
        let e = join_pair(plain(&[10]), plain(&[20]), &gpt, true);
        assert_eq!(e.ids, [3, 10, 4, 3, 20, 4]);
        let e = join_pair(plain(&[10]), plain(&[20]), &gpt, false);
        assert_eq!(e.ids, [10, 20]);
        assert!(check_ids(&[1, 2, 9], 10).is_ok());
        assert!(matches!(
            check_ids(&[1, 10], 10),
            Err(DataError::TokenOutOfRange { id: 10, .. })
        ));
        assert_eq!(bert.ids(), [1, 2]);
    }
}
