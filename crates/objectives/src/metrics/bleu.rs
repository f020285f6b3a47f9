//! Corpus BLEU as sacreBLEU computes it by default: the `13a` tokenization (the one of WMT's
//! `mteval-v13a.pl`), n-grams up to 4, clipped counts against every reference, the brevity
//! penalty from the closest reference length, and sacreBLEU's `exp` smoothing of n-gram
//! orders with no match.
//!
//! ```
//! use lmforge_objectives::metrics::corpus_bleu;
//!
//! let hypotheses = ["the cat sat on the mat ."];
//! let references = [vec!["the cat sat on the mat ."]];
//! let bleu = corpus_bleu(&hypotheses, &references).unwrap();
//! assert!((bleu.score - 100.0).abs() < 1e-9);
//! ```

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;

use crate::ObjectiveError;

/// Highest n-gram order.
const MAX_ORDER: usize = 4;

/// Splits a sentence into tokens as sacreBLEU's default `13a` tokenizer does: HTML entities
/// `&quot; &amp; &lt; &gt;` decoded, punctuation and symbols split off, periods and commas
/// split off unless between digits, a dash split off after a digit; then split on whitespace.
/// Case is kept.
pub fn tokenize_13a(line: &str) -> Vec<String> {
    static RULES: OnceLock<[(Regex, &'static str); 4]> = OnceLock::new();
    let rules = RULES.get_or_init(|| {
        let rule = |pattern: &str, with| (Regex::new(pattern).expect("valid pattern"), with);
        [
            // ASCII punctuation and symbols except `'`, `,`, `-` and `.`.
            rule(r"([\{-~\[-`\x20-&\(-\+:-@/])", " $1 "),
            // A period or comma after a non-digit.
            rule(r"([^0-9])([\.,])", "$1 $2 "),
            // A period or comma before a non-digit.
            rule(r"([\.,])([^0-9])", " $1 $2"),
            // A dash after a digit.
            rule(r"([0-9])(-)", "$1 $2 "),
        ]
    });
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let mut line = format!(" {line} ");
    for (pattern, with) in rules {
        line = pattern.replace_all(&line, *with).into_owned();
    }
    line.split_whitespace().map(str::to_owned).collect()
}

/// A corpus BLEU score with the statistics it comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct BleuScore {
    /// BLEU on sacreBLEU's 0-100 scale.
    pub score: f64,
    /// Modified n-gram precisions for n = 1..4, in percent (smoothed where no n-gram matched).
    pub precisions: [f64; MAX_ORDER],
    /// The brevity penalty.
    pub brevity_penalty: f64,
    /// Matched (clipped) n-grams per order.
    pub matches: [usize; MAX_ORDER],
    /// Hypothesis n-grams per order.
    pub totals: [usize; MAX_ORDER],
    /// Tokens in all hypotheses.
    pub hypothesis_length: usize,
    /// Tokens in the reference closest in length to each hypothesis, summed.
    pub reference_length: usize,
}

/// Accumulates BLEU statistics sentence by sentence; [`Bleu::score`] gives the corpus score.
#[derive(Clone, Debug, Default)]
pub struct Bleu {
    matches: [usize; MAX_ORDER],
    totals: [usize; MAX_ORDER],
    hypothesis_length: usize,
    reference_length: usize,
}

/// Counts of every n-gram of orders 1..=4.
fn ngrams(tokens: &[String]) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    for n in 1..=MAX_ORDER.min(tokens.len()) {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

impl Bleu {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one hypothesis with its references (untokenized text; at least one reference).
    pub fn add<R: AsRef<str>>(
        &mut self,
        hypothesis: &str,
        references: &[R],
    ) -> Result<(), ObjectiveError> {
        if references.is_empty() {
            return Err(ObjectiveError::InvalidConfig {
                what: "Bleu",
                reason: "a hypothesis has no reference".into(),
            });
        }
        let hyp = tokenize_13a(hypothesis);
        let refs: Vec<Vec<String>> = references
            .iter()
            .map(|r| tokenize_13a(r.as_ref()))
            .collect();
        // The closest reference length; on a tie, the shorter one.
        let closest = refs
            .iter()
            .map(Vec::len)
            .min_by_key(|&len| (len.abs_diff(hyp.len()), len))
            .expect("at least one reference");
        // The most times each n-gram occurs in any one reference.
        let mut most: HashMap<&[String], usize> = HashMap::new();
        for reference in &refs {
            for (gram, count) in ngrams(reference) {
                let entry = most.entry(gram).or_insert(0);
                *entry = (*entry).max(count);
            }
        }
        for (gram, count) in ngrams(&hyp) {
            let clipped = count.min(most.get(gram).copied().unwrap_or(0));
            self.matches[gram.len() - 1] += clipped;
        }
        for (n, total) in self.totals.iter_mut().enumerate() {
            *total += (hyp.len() + 1).saturating_sub(n + 1);
        }
        self.hypothesis_length += hyp.len();
        self.reference_length += closest;
        Ok(())
    }

    /// The corpus score of everything added so far.
    pub fn score(&self) -> BleuScore {
        let mut precisions = [0.0f64; MAX_ORDER];
        let mut smooth = 1.0f64;
        // No match of any order: 0, with no smoothed precisions.
        let any_match = self.matches.iter().any(|&m| m > 0);
        let orders = precisions
            .iter_mut()
            .zip(self.matches.iter().zip(&self.totals));
        for (precision, (&matches, &total)) in orders {
            if !any_match || total == 0 {
                break;
            }
            *precision = if matches == 0 {
                // sacreBLEU's `exp` smoothing: 1 / 2^k for the k-th order without a match.
                smooth *= 2.0;
                100.0 / (smooth * total as f64)
            } else {
                100.0 * matches as f64 / total as f64
            };
        }
        let (sys, refs) = (self.hypothesis_length as f64, self.reference_length as f64);
        let brevity_penalty = if sys == 0.0 {
            0.0
        } else if sys < refs {
            (1.0 - refs / sys).exp()
        } else {
            1.0
        };
        let score = if sys == 0.0 || precisions.contains(&0.0) {
            0.0
        } else {
            let mean_log = precisions.iter().map(|p| p.ln()).sum::<f64>() / MAX_ORDER as f64;
            brevity_penalty * mean_log.exp()
        };
        BleuScore {
            score,
            precisions,
            brevity_penalty,
            matches: self.matches,
            totals: self.totals,
            hypothesis_length: self.hypothesis_length,
            reference_length: self.reference_length,
        }
    }
}

/// Corpus BLEU of `hypotheses` against `references` (`references[i]` holds the references of
/// hypothesis `i`, at least one each), as sacreBLEU's `corpus_bleu` computes it by default.
pub fn corpus_bleu<H: AsRef<str>, R: AsRef<str>>(
    hypotheses: &[H],
    references: &[Vec<R>],
) -> Result<BleuScore, ObjectiveError> {
    if hypotheses.len() != references.len() {
        return Err(ObjectiveError::LengthMismatch {
            what: "hypotheses vs references",
            left: hypotheses.len(),
            right: references.len(),
        });
    }
    let mut bleu = Bleu::new();
    for (hypothesis, refs) in hypotheses.iter().zip(references) {
        bleu.add(hypothesis.as_ref(), refs)?;
    }
    Ok(bleu.score())
}
