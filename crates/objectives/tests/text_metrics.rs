//! BLEU and SQuAD exact match / F1 against their reference implementations: sacreBLEU's
//! `corpus_bleu` and torchmetrics' port of SQuAD's official script, on the cases written by
//! `tests/fixtures/gen_text_metrics.py`.

use lmforge_objectives::metrics::{
    Bleu, SquadScores, corpus_bleu, squad_exact_match, squad_f1, tokenize_13a,
};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/objectives/text_metrics.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture readable"))
        .expect("fixture is JSON")
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

fn numbers(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect()
}

#[test]
fn tokenize_13a_equals_sacrebleu() {
    let fixture = fixture();
    let cases = fixture["tokenize_13a"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let line = case["line"].as_str().unwrap();
        assert_eq!(
            tokenize_13a(line),
            strings(&case["tokens"]),
            "line {line:?}"
        );
    }
}

/// Every statistic and the score of each corpus, to 1e-9 (both sides compute in `f64`).
#[test]
fn corpus_bleu_equals_sacrebleu() {
    let fixture = fixture();
    let corpora = fixture["bleu"].as_array().unwrap();
    assert!(corpora.len() >= 6);
    for corpus in corpora {
        let name = corpus["name"].as_str().unwrap();
        let hypotheses = strings(&corpus["hypotheses"]);
        let references: Vec<Vec<String>> = corpus["references"]
            .as_array()
            .unwrap()
            .iter()
            .map(strings)
            .collect();
        let got = corpus_bleu(&hypotheses, &references).unwrap();
        let count = |key: &str| -> Vec<usize> {
            numbers(&corpus[key]).iter().map(|&v| v as usize).collect()
        };
        assert_eq!(got.matches.to_vec(), count("matches"), "{name}");
        assert_eq!(got.totals.to_vec(), count("totals"), "{name}");
        assert_eq!(
            got.hypothesis_length,
            corpus["hypothesis_length"].as_u64().unwrap() as usize,
            "{name}"
        );
        assert_eq!(
            got.reference_length,
            corpus["reference_length"].as_u64().unwrap() as usize,
            "{name}"
        );
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + b.abs());
        for (g, w) in got.precisions.iter().zip(numbers(&corpus["precisions"])) {
            assert!(close(*g, w), "{name}: precision {g} vs {w}");
        }
        let bp = corpus["brevity_penalty"].as_f64().unwrap();
        assert!(
            close(got.brevity_penalty, bp),
            "{name}: bp {}",
            got.brevity_penalty
        );
        let score = corpus["score"].as_f64().unwrap();
        assert!(close(got.score, score), "{name}: {} vs {score}", got.score);

        // Sentence by sentence through the accumulator: the same corpus statistics.
        let mut bleu = Bleu::new();
        for (h, r) in hypotheses.iter().zip(&references) {
            bleu.add(h, r).unwrap();
        }
        assert_eq!(bleu.score(), got, "{name}");
    }
}

#[test]
fn bleu_rejects_misaligned_input() {
    assert!(corpus_bleu(&["a"], &[vec!["a"], vec!["b"]]).is_err());
    let no_reference: Vec<Vec<&str>> = vec![vec![]];
    assert!(corpus_bleu(&["a"], &no_reference).is_err());
}

/// Per question to 1e-6 (torchmetrics returns `f32` tensors), the corpus figures to 1e-4
/// percent.
#[test]
fn squad_scores_equal_the_official_script() {
    let fixture = fixture();
    for group in fixture["squad"].as_array().unwrap() {
        let mut scores = SquadScores::new();
        let questions = group["questions"].as_array().unwrap();
        assert!(questions.len() >= 15);
        for q in questions {
            let prediction = q["prediction"].as_str().unwrap();
            let references = strings(&q["references"]);
            let best = |metric: fn(&str, &str) -> f64| {
                references
                    .iter()
                    .map(|r| metric(prediction, r))
                    .fold(0.0, f64::max)
            };
            let (em, f1) = (
                q["exact_match"].as_f64().unwrap(),
                q["f1"].as_f64().unwrap(),
            );
            assert_eq!(best(squad_exact_match), em, "{prediction:?}");
            assert!((best(squad_f1) - f1).abs() <= 1e-6, "{prediction:?}");
            scores.add(prediction, &references).unwrap();
        }
        assert_eq!(scores.questions(), questions.len());
        let em = group["exact_match"].as_f64().unwrap();
        let f1 = group["f1"].as_f64().unwrap();
        assert!((scores.exact_match().unwrap() - em).abs() <= 1e-4);
        assert!((scores.f1().unwrap() - f1).abs() <= 1e-4);
    }
    let no_reference: [&str; 0] = [];
    assert!(SquadScores::new().add("x", &no_reference).is_err());
    assert_eq!(SquadScores::new().f1(), None);
}
