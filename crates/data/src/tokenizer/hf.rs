//! HuggingFace tokenizers (BPE, WordPiece, any `tokenizer.json`) through the `tokenizers`
//! crate.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainerBuilder};
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, EncodeInput};

use super::{Encoding, Normalization, SpecialTokens, Tokenizer, assign_role};
use crate::error::DataError;

fn hf_error(context: &str, e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer(format!("{context}: {e}"))
}

/// Runs a call into the `tokenizers` crate, turning a panic there into a typed error. That
/// crate panics instead of returning an error on some inconsistent descriptions (a `decoder`
/// section with a malformed key while parsing; a post-processor template naming a special
/// token it does not define, at the first encoding); the `tokenizer_json` fuzz target found
/// both. Nothing is left half-updated: every guarded call works on `&self` or on new values.
fn guarded<T>(context: &str, call: impl FnOnce() -> tokenizers::Result<T>) -> Result<T, DataError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)) {
        Ok(result) => result.map_err(|e| hf_error(context, e)),
        Err(_) => Err(DataError::Tokenizer(format!(
            "{context}: the tokenizer description is inconsistent (the tokenizers crate \
             failed inside)"
        ))),
    }
}

/// A byte range `start..end` in a text, as `(start, end)`.
pub type ByteRange = (usize, usize);

/// Options for training a BERT-style WordPiece vocabulary
/// ([`HfTokenizer::train_wordpiece`]).
#[derive(Clone, Debug, PartialEq)]
pub struct WordPieceTrainOptions {
    /// Target vocabulary size, special tokens included. Default: 30 000.
    pub vocab_size: usize,
    /// Pieces seen fewer times are not merged. Default: 2.
    pub min_frequency: u64,
    /// Special tokens, first in the vocabulary. Default: `[PAD]`, `[UNK]`, `[CLS]`, `[SEP]`,
    /// `[MASK]` (the unknown token must be `[UNK]`).
    pub special_tokens: Vec<String>,
    /// Lowercase the input (BERT "uncased"). Default: true.
    pub lowercase: bool,
    /// Strip accents; `None` follows `lowercase`, as BERT does. Default: `None`.
    pub strip_accents: Option<bool>,
}

impl Default for WordPieceTrainOptions {
    fn default() -> Self {
        Self {
            vocab_size: 30_000,
            min_frequency: 2,
            special_tokens: ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                .map(String::from)
                .to_vec(),
            lowercase: true,
            strip_accents: None,
        }
    }
}

/// Options for training a byte-level BPE vocabulary (GPT-2 style,
/// [`HfTokenizer::train_bpe`]).
#[derive(Clone, Debug, PartialEq)]
pub struct BpeTrainOptions {
    /// Target vocabulary size: the 256 byte symbols, the special tokens and the merges.
    /// Default: 8 000.
    pub vocab_size: usize,
    /// Pairs seen fewer times are not merged. Default: 2.
    pub min_frequency: u64,
    /// Special tokens, first in the vocabulary. Default: `<|endoftext|>`.
    pub special_tokens: Vec<String>,
    /// Normalization before splitting. Default: none.
    pub normalization: Normalization,
}

impl Default for BpeTrainOptions {
    fn default() -> Self {
        Self {
            vocab_size: 8_000,
            min_frequency: 2,
            special_tokens: vec!["<|endoftext|>".to_string()],
            normalization: Normalization::none(),
        }
    }
}

/// A HuggingFace tokenizer: BPE, WordPiece, Unigram or word-level, with its normalizer,
/// pre-tokenizer, post-processor (special-token template) and decoder, exactly as described by
/// a `tokenizer.json`; it gives the same ids as HuggingFace's `tokenizers` and `transformers`.
///
/// Padding and truncation settings stored in a `tokenizer.json` are removed on loading (lmforge's
/// [`Batcher`](crate::batcher::Batcher) pads and truncates); a stored truncation length is kept
/// as [`HfTokenizer::max_length`]. Special tokens are recognised by their names (`[PAD]`,
/// `<pad>`, `[CLS]`, `<s>`, `<|endoftext|>`, ...); [`HfTokenizer::with_special_tokens`]
/// overrides them.
///
/// ```no_run
/// use lmforge_data::tokenizer::{HfTokenizer, Tokenizer};
///
/// let tokenizer = HfTokenizer::from_file("model/tokenizer.json")?;
/// let encoding = tokenizer.encode("Hello world", true)?; // [CLS] hello world [SEP]
/// println!("{:?} {:?}", encoding.ids, tokenizer.special_tokens());
/// # Ok::<(), lmforge_data::DataError>(())
/// ```
#[derive(Clone, Debug)]
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    specials: SpecialTokens,
    max_length: Option<usize>,
}

impl HfTokenizer {
    /// Wraps a tokenizer of the `tokenizers` crate (its padding and truncation are removed).
    pub fn from_hf(mut inner: tokenizers::Tokenizer) -> Self {
        let max_length = inner.get_truncation().map(|t| t.max_length);
        let pad_from_padding = inner.get_padding().map(|p| p.pad_id);
        inner.with_padding(None);
        // Removing truncation cannot fail (only setting one is validated).
        let _ = inner.with_truncation(None);
        let mut specials = SpecialTokens::default();
        if let Some(pad) = pad_from_padding {
            specials.pad = Some(pad);
        }
        let mut added: Vec<(u32, AddedToken)> =
            inner.get_added_tokens_decoder().into_iter().collect();
        added.sort_by_key(|(id, _)| *id);
        for (id, token) in added.iter().filter(|(_, t)| t.special) {
            assign_role(&mut specials, &token.content, *id);
        }
        const NAMES: [&str; 16] = [
            "[PAD]",
            "<pad>",
            "[UNK]",
            "<unk>",
            "[CLS]",
            "<cls>",
            "[SEP]",
            "<sep>",
            "[MASK]",
            "<mask>",
            "<s>",
            "<bos>",
            "</s>",
            "<eos>",
            "<|endoftext|>",
            "<|pad|>",
        ];
        for name in NAMES {
            if let Some(id) = inner.token_to_id(name) {
                assign_role(&mut specials, name, id);
            }
        }
        Self {
            inner,
            specials,
            max_length,
        }
    }

    /// Reads a `tokenizer.json`.
    ///
    /// # Errors
    /// [`DataError::Io`] when the file cannot be read; [`DataError::Tokenizer`] when it is not
    /// a valid tokenizer description.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        Self::from_bytes(&bytes).map_err(|e| match e {
            DataError::Tokenizer(m) => DataError::Tokenizer(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses the contents of a `tokenizer.json`.
    ///
    /// # Errors
    /// [`DataError::Tokenizer`] when `bytes` is not a valid tokenizer description.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DataError> {
        let inner = guarded("invalid tokenizer.json", || {
            tokenizers::Tokenizer::from_bytes(bytes)
        })?;
        Ok(Self::from_hf(inner))
    }

    /// A BERT tokenizer from a WordPiece `vocab.txt` (one token per line, id = line number),
    /// as HuggingFace's `BertTokenizerFast(vocab_file, do_lower_case)` builds it: BERT
    /// normalizer (accents stripped when lowercasing), BERT pre-tokenizer, `[UNK]` unknown
    /// token, `[CLS] … [SEP]` template.
    ///
    /// # Errors
    /// [`DataError::Io`] when the file cannot be read; [`DataError::Tokenizer`] when it lacks
    /// `[UNK]`, `[CLS]` or `[SEP]`.
    pub fn from_wordpiece_vocab(
        path: impl AsRef<Path>,
        lowercase: bool,
    ) -> Result<Self, DataError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let vocab = WordPiece::read_bytes(&bytes).map_err(|e| hf_error("vocab.txt", e))?;
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".to_string())
            .build()
            .map_err(|e| hf_error("WordPiece vocabulary", e))?;
        let mut inner = tokenizers::Tokenizer::new(model);
        for required in ["[UNK]", "[CLS]", "[SEP]"] {
            if inner.token_to_id(required).is_none() {
                return Err(DataError::Tokenizer(format!(
                    "{}: the vocabulary has no {required}",
                    path.display()
                )));
            }
        }
        let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .into_iter()
            .filter(|t| inner.token_to_id(t).is_some())
            .map(|t| AddedToken::from(t, true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| hf_error("special tokens", e))?;
        bert_pipeline(&mut inner, lowercase, None)?;
        Ok(Self::from_hf(inner))
    }

    /// Trains a BERT-style WordPiece tokenizer on text files (lines are read as they come).
    ///
    /// # Errors
    /// [`DataError::Io`] for an unreadable file; [`DataError::Tokenizer`] when training fails.
    pub fn train_wordpiece(
        files: &[impl AsRef<Path>],
        options: &WordPieceTrainOptions,
    ) -> Result<Self, DataError> {
        let files = readable(files)?;
        let special: Vec<AddedToken> = options
            .special_tokens
            .iter()
            .map(|t| AddedToken::from(t.clone(), true))
            .collect();
        let trainer = WordPieceTrainerBuilder::new()
            .vocab_size(options.vocab_size)
            .min_frequency(options.min_frequency)
            .special_tokens(special)
            .show_progress(false)
            .continuing_subword_prefix("##".to_string())
            .build();
        let mut inner = tokenizers::Tokenizer::new(WordPiece::default());
        set_normalizer(
            &mut inner,
            Some(BertNormalizer::new(true, true, options.strip_accents, options.lowercase).into()),
        )?;
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        let mut trainer = TrainerWrapper::WordPieceTrainer(trainer);
        inner
            .train_from_files(&mut trainer, files)
            .map_err(|e| hf_error("WordPiece training", e))?;
        bert_pipeline(&mut inner, options.lowercase, options.strip_accents)?;
        Ok(Self::from_hf(inner))
    }

    /// Trains a byte-level BPE tokenizer (GPT-2 style: no unknown token, every byte
    /// representable) on text files.
    ///
    /// # Errors
    /// [`DataError::Io`] for an unreadable file; [`DataError::Tokenizer`] when training fails.
    pub fn train_bpe(
        files: &[impl AsRef<Path>],
        options: &BpeTrainOptions,
    ) -> Result<Self, DataError> {
        let files = readable(files)?;
        let special: Vec<AddedToken> = options
            .special_tokens
            .iter()
            .map(|t| AddedToken::from(t.clone(), true))
            .collect();
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(options.vocab_size)
            .min_frequency(options.min_frequency)
            .special_tokens(special)
            .show_progress(false)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        set_normalizer(&mut inner, options.normalization.to_hf())?;
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        inner.with_post_processor(Some(ByteLevel::default().trim_offsets(false)));
        let mut trainer = TrainerWrapper::BpeTrainer(trainer);
        inner
            .train_from_files(&mut trainer, files)
            .map_err(|e| hf_error("BPE training", e))?;
        Ok(Self::from_hf(inner))
    }

    /// Writes the tokenizer as a `tokenizer.json` that HuggingFace (and
    /// [`HfTokenizer::from_file`]) can load.
    ///
    /// # Errors
    /// [`DataError::Io`] when the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), DataError> {
        let path = path.as_ref();
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| hf_error("serializing the tokenizer", e))?;
        std::fs::write(path, json).map_err(|e| DataError::io(path, e))
    }

    /// Replaces the detected special-token ids.
    pub fn with_special_tokens(mut self, specials: SpecialTokens) -> Self {
        self.specials = specials;
        self
    }

    /// The truncation length the loaded `tokenizer.json` declared (often the model's maximum
    /// sequence length), if any.
    pub fn max_length(&self) -> Option<usize> {
        self.max_length
    }

    /// Tokenizes `text` without special tokens and returns each token's id with its byte
    /// range `start..end` in `text` (after normalization, mapped back to the original text,
    /// so `&text[start..end]` is what the token covers). Question answering maps answers to
    /// tokens and predicted spans back to text with it.
    ///
    /// # Errors
    /// [`DataError::Tokenizer`] when the underlying tokenizer fails.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<ByteRange>), DataError> {
        let encoding = guarded("encoding", || self.inner.encode(text, false))?;
        Ok((encoding.get_ids().to_vec(), encoding.get_offsets().to_vec()))
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    fn convert(e: tokenizers::Encoding) -> Encoding {
        Encoding {
            ids: e.get_ids().to_vec(),
            type_ids: e.get_type_ids().to_vec(),
            word_ids: e.get_word_ids().to_vec(),
            special_tokens_mask: e
                .get_special_tokens_mask()
                .iter()
                .map(|&m| m != 0)
                .collect(),
        }
    }

    fn run<'s>(&self, input: impl Into<EncodeInput<'s>>, add: bool) -> Result<Encoding, DataError> {
        guarded("encoding", || self.inner.encode(input, add)).map(Self::convert)
    }
}

/// Checks the files can be opened, returning their names for the trainer.
fn readable(files: &[impl AsRef<Path>]) -> Result<Vec<String>, DataError> {
    if files.is_empty() {
        return Err(DataError::EmptyCorpus {
            what: "no training file given".to_string(),
        });
    }
    files
        .iter()
        .map(|f| {
            let f = f.as_ref();
            std::fs::File::open(f).map_err(|e| DataError::io(f, e))?;
            Ok(f.to_string_lossy().into_owned())
        })
        .collect()
}

fn set_normalizer(
    inner: &mut tokenizers::Tokenizer,
    normalizer: Option<tokenizers::NormalizerWrapper>,
) -> Result<(), DataError> {
    inner
        .with_normalizer(normalizer)
        .map(|_| ())
        .map_err(|e| hf_error("normalizer", e))
}

/// BERT's normalizer, pre-tokenizer, `[CLS] $A [SEP]` template and WordPiece decoder.
fn bert_pipeline(
    inner: &mut tokenizers::Tokenizer,
    lowercase: bool,
    strip_accents: Option<bool>,
) -> Result<(), DataError> {
    set_normalizer(
        inner,
        Some(BertNormalizer::new(true, true, strip_accents, lowercase).into()),
    )?;
    inner.with_pre_tokenizer(Some(BertPreTokenizer));
    inner.with_decoder(Some(WordPieceDecoder::default()));
    let id = |t: &str| {
        inner
            .token_to_id(t)
            .ok_or_else(|| DataError::Tokenizer(format!("the vocabulary has no {t}")))
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let template = TemplateProcessing::builder()
        .try_single("[CLS]:0 $A:0 [SEP]:0")
        .and_then(|b| b.try_pair("[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1"))
        .map_err(|e| hf_error("template", e))?
        .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
        .build()
        .map_err(|e| hf_error("template", e))?;
    inner.with_post_processor(Some(template));
    Ok(())
}

impl Tokenizer for HfTokenizer {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Encoding, DataError> {
        self.run(text, add_special_tokens)
    }

    fn encode_pair(
        &self,
        first: &str,
        second: &str,
        add_special_tokens: bool,
    ) -> Result<Encoding, DataError> {
        self.run((first, second), add_special_tokens)
    }

    fn encode_words(
        &self,
        words: &[&str],
        add_special_tokens: bool,
    ) -> Result<Encoding, DataError> {
        self.run(words, add_special_tokens)
    }

    fn encode_batch(
        &self,
        texts: &[&str],
        add_special_tokens: bool,
    ) -> Result<Vec<Encoding>, DataError> {
        let inputs: Vec<EncodeInput> = texts.iter().map(|&t| t.into()).collect();
        guarded("encoding", || {
            self.inner.encode_batch(inputs, add_special_tokens)
        })
        .map(|v| v.into_iter().map(Self::convert).collect())
    }

    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, DataError> {
        super::check_ids(ids, self.vocab_size())?;
        guarded("decoding", || self.inner.decode(ids, skip_special_tokens))
    }

    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    fn special_tokens(&self) -> SpecialTokens {
        self.specials
    }
}
