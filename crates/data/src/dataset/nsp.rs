//! Sentence pairs for next-sentence prediction (BERT pre-training).

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::stream::LineReader;
use crate::error::DataError;
use crate::tokenizer::{Encoding, Tokenizer};

/// One next-sentence-prediction example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NspExample {
    /// The first sentence.
    pub first: String,
    /// The true next sentence, or a random sentence from another document.
    pub second: String,
    /// Whether `second` follows `first` in the corpus.
    pub is_next: bool,
}

impl NspExample {
    /// The class label, as BERT and HuggingFace use it: 0 = is next, 1 = random.
    pub fn label(&self) -> i64 {
        i64::from(!self.is_next)
    }

    /// Encodes the pair with the tokenizer's pair template (`[CLS] a [SEP] b [SEP]`).
    ///
    /// # Errors
    /// Tokenizer errors.
    pub fn encode(&self, tokenizer: &dyn Tokenizer) -> Result<Encoding, DataError> {
        tokenizer.encode_pair(&self.first, &self.second, true)
    }
}

/// Reads documents in BERT's pre-training format: one sentence per line, documents separated
/// by blank lines. Lines are streamed; surrounding whitespace is trimmed.
///
/// # Errors
/// [`DataError::Io`] when the file cannot be read.
pub fn read_documents(path: impl AsRef<Path>) -> Result<Vec<Vec<String>>, DataError> {
    let mut documents = vec![Vec::new()];
    for line in LineReader::open(path)? {
        let (_, line) = line?;
        let line = line.trim();
        if line.is_empty() {
            if !documents.last().is_some_and(Vec::is_empty) {
                documents.push(Vec::new());
            }
        } else {
            documents
                .last_mut()
                .expect("one document")
                .push(line.to_string());
        }
    }
    documents.retain(|d| !d.is_empty());
    Ok(documents)
}

/// One example per pair of consecutive sentences of each document: with probability ½ the
/// true next sentence, otherwise a uniformly drawn sentence of a uniformly drawn *other*
/// document. Seeded: the same documents and seed give the same examples.
///
/// ```
/// use lmforge_data::dataset::nsp::nsp_pairs;
///
/// let docs = vec![
///     vec!["a1".to_string(), "a2".to_string(), "a3".to_string()],
///     vec!["b1".to_string(), "b2".to_string()],
/// ];
/// let pairs = nsp_pairs(&docs, 0)?;
/// assert_eq!(pairs.len(), 3); // a1-a2, a2-a3, b1-b2
/// for p in &pairs {
///     let same_doc = p.first.chars().next() == p.second.chars().next();
///     assert_eq!(same_doc, p.is_next);
/// }
/// # Ok::<(), lmforge_data::DataError>(())
/// ```
///
/// # Errors
/// [`DataError::EmptyCorpus`] when there are fewer than two non-empty documents (a random
/// sentence must come from another document) or no document has two sentences.
pub fn nsp_pairs(documents: &[Vec<String>], seed: u64) -> Result<Vec<NspExample>, DataError> {
    let usable: Vec<usize> = (0..documents.len())
        .filter(|&d| !documents[d].is_empty())
        .collect();
    if usable.len() < 2 {
        return Err(DataError::EmptyCorpus {
            what: format!(
                "next-sentence prediction needs at least 2 non-empty documents, found {}",
                usable.len()
            ),
        });
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut examples = Vec::new();
    for (d, document) in documents.iter().enumerate() {
        for pair in document.windows(2) {
            let is_next = rng.random_bool(0.5);
            let second = if is_next {
                pair[1].clone()
            } else {
                // Draw among the other usable documents.
                let k = rng.random_range(0..usable.len() - 1);
                let other = usable.iter().copied().filter(|&o| o != d).nth(k);
                let other = &documents[other.expect("k indexes the other documents")];
                other[rng.random_range(0..other.len())].clone()
            };
            examples.push(NspExample {
                first: pair[0].clone(),
                second,
                is_next,
            });
        }
    }
    if examples.is_empty() {
        return Err(DataError::EmptyCorpus {
            what: "no document has two consecutive sentences".to_string(),
        });
    }
    Ok(examples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(n_docs: usize, n_sentences: usize) -> Vec<Vec<String>> {
        (0..n_docs)
            .map(|d| (0..n_sentences).map(|s| format!("{d}:{s}")).collect())
            .collect()
    }

    /// Over 2000 pairs the share of true next sentences is 0.5 ± 0.05 (about 4.5 standard
    /// deviations), and a random second sentence never comes from the same document.
    #[test]
    fn half_are_next_and_random_ones_come_from_other_documents() {
        let documents = docs(40, 51);
        let pairs = nsp_pairs(&documents, 3).unwrap();
        assert_eq!(pairs.len(), 2000);
        let next = pairs.iter().filter(|p| p.is_next).count() as f64 / 2000.0;
        assert!((next - 0.5).abs() < 0.05, "{next}");
        for p in &pairs {
            let doc = |s: &str| s.split(':').next().unwrap().to_string();
            assert_eq!(doc(&p.first) == doc(&p.second), p.is_next, "{p:?}");
            assert_eq!(p.label(), if p.is_next { 0 } else { 1 });
        }
        assert_eq!(pairs, nsp_pairs(&documents, 3).unwrap());
    }

    #[test]
    fn needs_two_documents() {
        assert!(matches!(
            nsp_pairs(&docs(1, 5), 0),
            Err(DataError::EmptyCorpus { .. })
        ));
        assert!(nsp_pairs(&docs(3, 1), 0).is_err());
    }
}
