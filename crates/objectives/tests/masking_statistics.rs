//! Statistics of masked-LM masking over many draws.
//!
//! 400 rows of 128 tokens (with special tokens and padding) give about 40 000 candidate tokens,
//! of which about 6 000 are chosen. The bounds are about five standard deviations wide, so a
//! correct implementation passes for any seed and a wrong rate fails.

use std::collections::HashMap;

use lmforge_objectives::IGNORE_INDEX;
use lmforge_objectives::masked_lm::{MaskedTokens, MaskingConfig};

const PAD: u32 = 0;
const CLS: u32 = 1;
const SEP: u32 = 2;
const MASK: u32 = 3;
const VOCAB: usize = 1000;

/// Rows `[CLS] tokens… [SEP] [PAD]…` with 96..=126 real tokens each; word `w` of a row spans
/// 1 to 3 consecutive tokens. Returns the rows and their word ids.
#[allow(clippy::type_complexity)]
fn corpus() -> (Vec<Vec<u32>>, Vec<Vec<Option<u32>>>) {
    let mut rows = Vec::new();
    let mut words = Vec::new();
    for r in 0..400u32 {
        let n_real = 96 + (r * 7 % 31) as usize;
        let mut row = vec![CLS];
        let mut word_ids = vec![None];
        let mut w = 0u32;
        while row.len() < n_real + 1 {
            let width = 1 + ((r + w) % 3) as usize;
            for _ in 0..width.min(n_real + 1 - row.len()) {
                row.push(4 + (r * 131 + row.len() as u32 * 17) % (VOCAB as u32 - 4));
                word_ids.push(Some(w));
            }
            w += 1;
        }
        row.push(SEP);
        word_ids.push(None);
        while row.len() < 128 {
            row.push(PAD);
            word_ids.push(None);
        }
        rows.push(row);
        words.push(word_ids);
    }
    (rows, words)
}

struct Counts {
    candidates: usize,
    chosen: usize,
    masked: usize,
    random: usize,
    kept: usize,
}

fn count(rows: &[Vec<u32>], out: &MaskedTokens) -> Counts {
    let mut c = Counts {
        candidates: 0,
        chosen: 0,
        masked: 0,
        random: 0,
        kept: 0,
    };
    for (r, row) in rows.iter().enumerate() {
        for (t, &original) in row.iter().enumerate() {
            let special = [PAD, CLS, SEP, MASK].contains(&original);
            let label = out.labels[r][t];
            let now = out.input_ids[r][t];
            if special {
                assert_eq!(
                    label, IGNORE_INDEX,
                    "special token chosen at row {r} pos {t}"
                );
                assert_eq!(now, original, "special token changed at row {r} pos {t}");
                continue;
            }
            c.candidates += 1;
            if label == IGNORE_INDEX {
                assert_eq!(now, original, "unchosen token changed");
                continue;
            }
            assert_eq!(label, i64::from(original), "label must be the original id");
            c.chosen += 1;
            if now == MASK {
                c.masked += 1;
            } else if now == original {
                c.kept += 1;
            } else {
                assert!(
                    ![PAD, CLS, SEP].contains(&now) && (now as usize) < VOCAB,
                    "random replacement {now} is special or out of range"
                );
                c.random += 1;
            }
        }
    }
    c
}

fn check_rates(c: &Counts) {
    let fraction = c.chosen as f64 / c.candidates as f64;
    // sd = sqrt(0.15 * 0.85 / 40 000) ≈ 0.0018
    assert!((fraction - 0.15).abs() < 0.01, "chosen fraction {fraction}");
    let share = |n: usize| n as f64 / c.chosen as f64;
    // sd ≈ 0.0052 (80%) and 0.0039 (10%) for about 6 000 chosen tokens.
    assert!(
        (share(c.masked) - 0.8).abs() < 0.025,
        "mask share {}",
        share(c.masked)
    );
    assert!(
        (share(c.random) - 0.1).abs() < 0.02,
        "random share {}",
        share(c.random)
    );
    assert!(
        (share(c.kept) - 0.1).abs() < 0.02,
        "kept share {}",
        share(c.kept)
    );
}

#[test]
fn token_masking_rates_and_never_specials_or_padding() {
    let (rows, _) = corpus();
    for seed in [0, 1, 2] {
        let mut masker = MaskingConfig::new(MASK, VOCAB, vec![PAD, CLS, SEP, MASK])
            .init(seed)
            .unwrap();
        let out = masker.mask(&rows, None).unwrap();
        let c = count(&rows, &out);
        assert!(c.candidates > 40_000, "{}", c.candidates);
        check_rates(&c);
    }
}

#[test]
fn whole_word_masking_masks_whole_words_at_the_same_rates() {
    let (rows, words) = corpus();
    let mut masker = MaskingConfig::new(MASK, VOCAB, vec![PAD, CLS, SEP, MASK])
        .with_whole_word(true)
        .init(11)
        .unwrap();
    let out = masker.mask(&rows, Some(&words)).unwrap();
    check_rates(&count(&rows, &out));
    let mut multi_token_words_chosen = 0;
    for (r, word_ids) in words.iter().enumerate() {
        // Per word: how many of its tokens are chosen, and its length.
        let mut per_word: HashMap<u32, (usize, usize)> = HashMap::new();
        for (t, w) in word_ids.iter().enumerate() {
            if let Some(w) = w {
                let entry = per_word.entry(*w).or_default();
                entry.1 += 1;
                if out.labels[r][t] != IGNORE_INDEX {
                    entry.0 += 1;
                }
            }
        }
        for (w, (chosen, len)) in per_word {
            assert!(
                chosen == 0 || chosen == len,
                "row {r} word {w}: {chosen} of {len} tokens chosen"
            );
            if chosen > 1 {
                multi_token_words_chosen += 1;
            }
        }
    }
    assert!(multi_token_words_chosen > 100, "{multi_token_words_chosen}");
}
