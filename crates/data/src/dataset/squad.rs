//! Extractive question answering in the SQuAD format: reading the JSON files, turning each
//! (question, context) into model inputs with long contexts split into overlapping windows,
//! mapping answers to token spans, and turning predicted start/end scores back into answer
//! text.
//!
//! A window is `[CLS] question [SEP] context-part [SEP]` (segment 0 for the question, 1 for
//! the context). Consecutive windows overlap by `stride` context tokens, so an answer cut by
//! one window's edge is whole in the next. A window that does not contain the whole answer is
//! labelled with the `[CLS]` position (0), as SQuAD fine-tuning does. Every context token
//! keeps its byte range in the original context, so a predicted span becomes the exact
//! substring of the context, never text outside it.

use std::path::Path;

use serde::Deserialize;

use crate::error::DataError;
use crate::tokenizer::{Encoding, HfTokenizer, Tokenizer};

/// An answer: its text and its byte offset in the context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The answer text (`&context[start..start + text.len()]`).
    pub text: String,
    /// Byte offset of the answer in the context.
    pub start: usize,
}

/// One question about one context, with its reference answers (several in SQuAD's dev set;
/// the first is the training target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QaExample {
    /// The question id.
    pub id: String,
    /// The article title.
    pub title: String,
    /// The passage.
    pub context: String,
    /// The question.
    pub question: String,
    /// Reference answers.
    pub answers: Vec<Answer>,
}

#[derive(Deserialize)]
struct SquadFile {
    data: Vec<SquadArticle>,
}

#[derive(Deserialize)]
struct SquadArticle {
    #[serde(default)]
    title: String,
    paragraphs: Vec<SquadParagraph>,
}

#[derive(Deserialize)]
struct SquadParagraph {
    context: String,
    qas: Vec<SquadQuestion>,
}

#[derive(Deserialize)]
struct SquadQuestion {
    id: String,
    question: String,
    #[serde(default)]
    answers: Vec<SquadAnswer>,
}

#[derive(Deserialize)]
struct SquadAnswer {
    text: String,
    answer_start: usize,
}

/// Reads a SQuAD v1.1 JSON file (`{"data": [{"title", "paragraphs": [{"context", "qas":
/// [{"id", "question", "answers": [{"text", "answer_start"}]}]}]}]}`).
///
/// `answer_start` counts characters (Unicode scalar values, as Python indexes strings); it is
/// converted to a byte offset. An answer whose text is not at its offset is looked up within a
/// few characters of it (SQuAD's files hold a handful of answers shifted by leading
/// whitespace); one that is not found there is an error.
///
/// # Errors
/// [`DataError::Io`]; [`DataError::MalformedLine`] (line 1, with the question id) for JSON
/// that is not SQuAD or an answer not found in its context; [`DataError::EmptyCorpus`] when
/// there is no question.
pub fn read_squad(path: impl AsRef<Path>) -> Result<Vec<QaExample>, DataError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    parse_squad_at(&text, path)
}

/// Like [`read_squad`] for JSON text in memory (errors name the path `<memory>`).
///
/// ```
/// let json = r#"{"data": [{"title": "T", "paragraphs": [{"context": "Éire is in Europe.",
///     "qas": [{"id": "q1", "question": "Where is Éire?",
///              "answers": [{"text": "Europe", "answer_start": 11}]}]}]}]}"#;
/// let examples = lmforge_data::dataset::squad::parse_squad(json)?;
/// let answer = &examples[0].answers[0];
/// assert_eq!(answer.start, 12); // 11 characters, 12 bytes: `É` takes two
/// assert_eq!(&examples[0].context[answer.start..], "Europe.");
/// # Ok::<(), lmforge_data::DataError>(())
/// ```
///
/// # Errors
/// As [`read_squad`].
pub fn parse_squad(text: &str) -> Result<Vec<QaExample>, DataError> {
    parse_squad_at(text, Path::new("<memory>"))
}

fn parse_squad_at(text: &str, path: &Path) -> Result<Vec<QaExample>, DataError> {
    let file: SquadFile = serde_json::from_str(text)
        .map_err(|e| DataError::malformed(path, e.line(), format!("not SQuAD JSON: {e}")))?;
    let mut examples = Vec::new();
    for article in file.data {
        for paragraph in article.paragraphs {
            let context = paragraph.context;
            for qa in paragraph.qas {
                let answers = qa
                    .answers
                    .iter()
                    .map(|a| locate(&context, a))
                    .collect::<Option<Vec<Answer>>>()
                    .ok_or_else(|| {
                        DataError::malformed(
                            path,
                            1,
                            format!("question {}: an answer is not in its context", qa.id),
                        )
                    })?;
                examples.push(QaExample {
                    id: qa.id,
                    title: article.title.clone(),
                    context: context.clone(),
                    question: qa.question,
                    answers,
                });
            }
        }
    }
    if examples.is_empty() {
        return Err(DataError::EmptyCorpus {
            what: format!("{} has no question", path.display()),
        });
    }
    Ok(examples)
}

/// The byte offset of `answer` in `context`: at its character offset, or the nearest
/// occurrence within 3 characters of it.
fn locate(context: &str, answer: &SquadAnswer) -> Option<Answer> {
    let chars: Vec<usize> = context
        .char_indices()
        .map(|(b, _)| b)
        .chain([context.len()])
        .collect();
    let at = |c: usize| chars.get(c).copied();
    let found = |b: usize| context[b..].starts_with(&answer.text);
    let text = answer.text.clone();
    let c = answer.answer_start;
    for shift in 0..=3usize {
        for candidate in [c.checked_add(shift), c.checked_sub(shift)]
            .into_iter()
            .flatten()
        {
            if let Some(b) = at(candidate)
                && found(b)
            {
                return Some(Answer { text, start: b });
            }
        }
    }
    None
}

/// How questions and contexts become model inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QaWindowConfig {
    /// Longest input in tokens, special tokens included. Default: 384.
    pub max_length: usize,
    /// Context tokens shared by consecutive windows. Default: 128.
    pub stride: usize,
    /// Questions are cut to this many tokens. Default: 64.
    pub max_question_tokens: usize,
}

impl Default for QaWindowConfig {
    fn default() -> Self {
        Self {
            max_length: 384,
            stride: 128,
            max_question_tokens: 64,
        }
    }
}

/// One model input: a window of one example's context after its question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QaFeature {
    /// Index of the example (in the slice given to [`QaWindowConfig::features`]).
    pub example: usize,
    /// `[CLS] question [SEP] context-part [SEP]`.
    pub encoding: Encoding,
    /// For each token, its byte range in the context (`None` for the question and special
    /// tokens): only these tokens can start or end an answer.
    pub context_offsets: Vec<Option<(usize, usize)>>,
    /// Token index of the first answer's first token, or 0 (`[CLS]`) when the window does not
    /// hold the whole answer (or the example has none).
    pub start_position: usize,
    /// Token index of the first answer's last token (0 as above).
    pub end_position: usize,
}

impl QaWindowConfig {
    /// Splits each example into windows.
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] when `max_length` leaves no room for context after the
    /// question and special tokens, or `stride` is not smaller than that room;
    /// [`DataError::Tokenizer`] when the tokenizer has no `[CLS]`/`[SEP]` or fails.
    pub fn features(
        &self,
        examples: &[QaExample],
        tokenizer: &HfTokenizer,
    ) -> Result<Vec<QaFeature>, DataError> {
        let room = self
            .max_length
            .checked_sub(self.max_question_tokens + 3)
            .filter(|&r| r > self.stride)
            .ok_or_else(|| DataError::InvalidConfig {
                what: "QaWindowConfig",
                reason: format!(
                    "max_length {} leaves no more than stride {} context tokens after a question \
                     of up to {} tokens and 3 special tokens",
                    self.max_length, self.stride, self.max_question_tokens
                ),
            })?;
        let specials = tokenizer.special_tokens();
        let (cls, sep) = specials.cls.zip(specials.sep).ok_or_else(|| {
            DataError::Tokenizer("question answering needs [CLS] and [SEP]".into())
        })?;
        let mut features = Vec::new();
        for (e, example) in examples.iter().enumerate() {
            let mut question = tokenizer.encode(&example.question, false)?.ids;
            question.truncate(self.max_question_tokens);
            let (ids, offsets) = tokenizer.encode_with_offsets(&example.context)?;
            let answer = example
                .answers
                .first()
                .map(|a| (a.start, a.start + a.text.len()));
            let mut start = 0;
            loop {
                let end = (start + room).min(ids.len());
                let mut encoding = Encoding::default();
                let mut context_offsets = Vec::new();
                encoding.push(cls, 0, None, true);
                for &id in &question {
                    encoding.push(id, 0, None, false);
                }
                encoding.push(sep, 0, None, true);
                context_offsets.resize(encoding.len(), None);
                let first = encoding.len();
                for (t, &id) in ids[start..end].iter().enumerate() {
                    encoding.push(id, 1, Some((start + t) as u32), false);
                    context_offsets.push(Some(offsets[start + t]));
                }
                encoding.push(sep, 1, None, true);
                context_offsets.push(None);
                let (start_position, end_position) = answer
                    .and_then(|(a, b)| span(&offsets[start..end], a, b))
                    .map_or((0, 0), |(s, t)| (first + s, first + t));
                features.push(QaFeature {
                    example: e,
                    encoding,
                    context_offsets,
                    start_position,
                    end_position,
                });
                if end == ids.len() {
                    break;
                }
                start = end - self.stride;
            }
        }
        Ok(features)
    }
}

/// The first and last token (indices into `offsets`) covering bytes `a..b`, when the window
/// holds the whole answer.
fn span(offsets: &[(usize, usize)], a: usize, b: usize) -> Option<(usize, usize)> {
    let (first, last) = (offsets.first()?, offsets.last()?);
    if a < first.0 || b > last.1 {
        return None;
    }
    let start = offsets.iter().position(|&(_, end)| end > a)?;
    let end = offsets.iter().rposition(|&(begin, _)| begin < b)?;
    (start <= end).then_some((start, end))
}

/// A candidate answer of [`best_spans`].
#[derive(Clone, Debug, PartialEq)]
pub struct SpanPrediction {
    /// The answer: `&context[start..end]`.
    pub text: String,
    /// Byte range in the context.
    pub start: usize,
    /// End of the byte range.
    pub end: usize,
    /// Start logit + end logit.
    pub score: f32,
}

/// How [`best_spans`] searches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanSearch {
    /// Start and end candidates taken per window (the highest scores). Default: 20.
    pub n_best: usize,
    /// Longest answer in tokens. Default: 30.
    pub max_answer_tokens: usize,
}

impl Default for SpanSearch {
    fn default() -> Self {
        Self {
            n_best: 20,
            max_answer_tokens: 30,
        }
    }
}

/// The best answers of one example over its windows, best first (at most `search.n_best`,
/// distinct byte ranges): for each window, the `n_best` highest start and end logits are
/// paired; a pair counts when both tokens are context tokens, the end is not before the start
/// and the span has at most `max_answer_tokens` tokens. Its score is the sum of the two
/// logits; its text is the context between the start token's first byte and the end token's
/// last byte.
///
/// `windows` holds, for each of the example's features, the feature and its start and end
/// logits (one per token of its encoding; longer rows, from padding, are cut).
pub fn best_spans(
    context: &str,
    windows: &[(&QaFeature, &[f32], &[f32])],
    search: &SpanSearch,
) -> Vec<SpanPrediction> {
    let top = |scores: &[f32], allowed: &dyn Fn(usize) -> bool| -> Vec<usize> {
        let mut index: Vec<usize> = (0..scores.len()).filter(|&i| allowed(i)).collect();
        index.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
        index.truncate(search.n_best);
        index
    };
    let mut candidates: Vec<SpanPrediction> = Vec::new();
    for &(feature, starts, ends) in windows {
        let n = feature
            .context_offsets
            .len()
            .min(starts.len())
            .min(ends.len());
        let in_context = |i: usize| feature.context_offsets[i].is_some();
        for &s in &top(&starts[..n], &in_context) {
            for &e in &top(&ends[..n], &in_context) {
                if e < s || e - s + 1 > search.max_answer_tokens {
                    continue;
                }
                let (Some((a, _)), Some((_, b))) =
                    (feature.context_offsets[s], feature.context_offsets[e])
                else {
                    continue;
                };
                candidates.push(SpanPrediction {
                    text: context[a..b].to_string(),
                    start: a,
                    end: b,
                    score: starts[s] + ends[e],
                });
            }
        }
    }
    candidates.sort_by(|x, y| y.score.total_cmp(&x.score));
    let mut best: Vec<SpanPrediction> = Vec::new();
    for c in candidates {
        if best.len() == search.n_best {
            break;
        }
        if !best.iter().any(|b| b.start == c.start && b.end == c.end) {
            best.push(c);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lowercasing BERT tokenizer over a small vocabulary (every word of the texts below,
    /// some split into pieces).
    fn tokenizer() -> HfTokenizer {
        let words = "[PAD] [UNK] [CLS] [SEP] [MASK] the river flows past old mill and into \
                     lake where boats wait for summer visitors who come from north town . , ? \
                     what does flow which eire is in europe ##s ##ing boat visit ##or";
        // One folder per call: tests run in parallel and each removes its own.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("lmforge-squad-vocab-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vocab.txt");
        std::fs::write(
            &file,
            words.split_whitespace().collect::<Vec<_>>().join("\n"),
        )
        .unwrap();
        let tokenizer = HfTokenizer::from_wordpiece_vocab(&file, true).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        tokenizer
    }

    const CONTEXT: &str = "The river flows past the old mill and into the lake, where boats \
                           wait for summer visitors who come from the north town. The boats \
                           wait, the visitors come, and the river flows into Éire.";

    fn example(answer: &str, start: usize) -> QaExample {
        QaExample {
            id: format!("q{start}"),
            title: "t".into(),
            context: CONTEXT.into(),
            question: "What does the river flow into?".into(),
            answers: vec![Answer {
                text: answer.into(),
                start,
            }],
        }
    }

    /// Every span of 1 to 3 words of the context, as an answer: each window that is labelled
    /// with it points at tokens whose bytes are exactly the answer, and at least one window of
    /// each example is (the overlap is larger than any answer). A window that holds only part
    /// of an answer is labelled `[CLS]`; some answers here cross a window edge.
    #[test]
    fn answers_survive_the_stride_windows() {
        let tokenizer = tokenizer();
        let words: Vec<(usize, &str)> = CONTEXT
            .split(' ')
            .scan(0, |at, w| {
                let start = *at;
                *at += w.len() + 1;
                Some((start, w.trim_end_matches([',', '.'])))
            })
            .collect();
        let mut examples = Vec::new();
        for i in 0..words.len() {
            for n in 1..=3.min(words.len() - i) {
                let (start, _) = words[i];
                let (last, last_word) = words[i + n - 1];
                examples.push(example(&CONTEXT[start..last + last_word.len()], start));
            }
        }
        let config = QaWindowConfig {
            max_length: 20,
            stride: 6,
            max_question_tokens: 5,
        };
        let features = config.features(&examples, &tokenizer).unwrap();
        let mut found = vec![false; examples.len()];
        let mut crossing = 0;
        for f in &features {
            assert!(f.encoding.len() <= 20);
            assert_eq!(f.encoding.len(), f.context_offsets.len());
            let answer = &examples[f.example].answers[0];
            if f.start_position == 0 {
                assert_eq!(f.end_position, 0);
                // Does the window hold part of the answer? Then it crosses an edge.
                let inside = f
                    .context_offsets
                    .iter()
                    .flatten()
                    .any(|&(a, b)| a < answer.start + answer.text.len() && b > answer.start);
                crossing += usize::from(inside);
                continue;
            }
            let (a, _) = f.context_offsets[f.start_position].unwrap();
            let (_, b) = f.context_offsets[f.end_position].unwrap();
            assert_eq!(&CONTEXT[a..b], answer.text, "example {}", f.example);
            found[f.example] = true;
        }
        assert!(found.iter().all(|&f| f), "an answer lost in every window");
        assert!(crossing > 5, "only {crossing} answers cross a window edge");
        // Windows overlap: more than one per example, consecutive ones share `stride` tokens.
        let of_first: Vec<&QaFeature> = features.iter().filter(|f| f.example == 0).collect();
        assert!(of_first.len() >= 3);
        let words_of =
            |f: &QaFeature| -> Vec<u32> { f.encoding.word_ids.iter().flatten().copied().collect() };
        let (w0, w1) = (words_of(of_first[0]), words_of(of_first[1]));
        assert_eq!(w0[w0.len() - 6..], w1[..6]);
        // The accented word maps back to its original bytes (the tokenizer strips accents).
        let last = of_first.last().unwrap();
        let texts: Vec<&str> = last
            .context_offsets
            .iter()
            .flatten()
            .map(|&(a, b)| &CONTEXT[a..b])
            .collect();
        assert!(texts.contains(&"Éire"), "{texts:?}");
    }

    #[test]
    fn windows_need_room_for_context() {
        let config = QaWindowConfig {
            max_length: 20,
            stride: 12,
            max_question_tokens: 5,
        };
        assert!(matches!(
            config.features(&[example("river", 4)], &tokenizer()),
            Err(DataError::InvalidConfig { .. })
        ));
    }

    /// Spans never start or end outside the context, never end before they start, respect the
    /// length limit, and come back as the context's own text, best first.
    #[test]
    fn best_spans_stay_in_the_context() {
        let tokenizer = tokenizer();
        let config = QaWindowConfig {
            max_length: 64,
            stride: 8,
            max_question_tokens: 16,
        };
        let features = config.features(&[example("river", 4)], &tokenizer).unwrap();
        assert_eq!(features.len(), 1);
        let f = &features[0];
        let n = f.encoding.len();
        let first_context = f.context_offsets.iter().position(Option::is_some).unwrap();
        let mut starts = vec![0.0f32; n + 3]; // longer rows (padding) are cut
        let mut ends = vec![0.0f32; n + 3];
        starts[1] = 50.0; // a question token: never a start
        ends[0] = 50.0; // [CLS]: never an end
        starts[first_context + 4] = 10.0;
        ends[first_context + 2] = 9.0; // before the best start
        ends[first_context + 5] = 8.0;
        starts[first_context + 1] = 7.0;
        let spans = best_spans(
            CONTEXT,
            &[(f, &starts, &ends)],
            &SpanSearch {
                n_best: 5,
                max_answer_tokens: 3,
            },
        );
        let offsets = |t: usize| f.context_offsets[first_context + t].unwrap();
        // start 4 + end 5 (score 18) beats start 1 + end 2 (16); start 1 + end 5 is too long.
        assert_eq!(spans[0].start, offsets(4).0);
        assert_eq!(spans[0].end, offsets(5).1);
        assert_eq!(spans[0].text, &CONTEXT[offsets(4).0..offsets(5).1]);
        assert_eq!(spans[0].score, 18.0);
        assert_eq!(spans[1].text, "river flows");
        for s in &spans {
            assert!(s.score <= spans[0].score);
            assert_eq!(s.text, &CONTEXT[s.start..s.end]);
        }
    }

    #[test]
    fn squad_json_offsets_and_errors() {
        let json = |answer: &str, start: usize| {
            format!(
                r#"{{"data": [{{"title": "T", "paragraphs": [{{"context": "Éire lies in  Europe.",
                "qas": [{{"id": "x", "question": "Where?",
                "answers": [{{"text": "{answer}", "answer_start": {start}}}]}}]}}]}}]}}"#
            )
        };
        let examples = parse_squad(&json("Europe", 14)).unwrap();
        assert_eq!(examples[0].answers[0].start, 15);
        // Shifted by a character (as some SQuAD answers are): found nearby.
        let examples = parse_squad(&json("Europe", 13)).unwrap();
        assert_eq!(examples[0].answers[0].start, 15);
        let err = parse_squad(&json("Asia", 14)).unwrap_err();
        assert!(err.to_string().contains("question x"), "{err}");
        assert!(matches!(
            parse_squad("{\"data\": []}"),
            Err(DataError::EmptyCorpus { .. })
        ));
        assert!(matches!(
            parse_squad("[1, 2]"),
            Err(DataError::MalformedLine { .. })
        ));
    }
}
