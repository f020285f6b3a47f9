//! Each training example runs end to end with a tiny setting (through its own command-line
//! parser) and its training loss falls.
//!
//! Each example includes `examples/common/mod.rs` as its own module, so this binary holds
//! several copies of it.
#![allow(clippy::duplicate_mod)]

#[allow(dead_code)]
#[path = "../examples/bert_classify/main.rs"]
mod bert_classify;
#[allow(dead_code)]
#[path = "../examples/bert_mlm/main.rs"]
mod bert_mlm;
#[allow(dead_code)]
#[path = "../examples/bert_ner/main.rs"]
mod bert_ner;
#[allow(dead_code)]
#[path = "../examples/gpt_char/main.rs"]
mod gpt_char;
#[allow(dead_code)]
#[path = "../examples/lstm_lm/main.rs"]
mod lstm_lm;

use clap::Parser;

fn args<A: Parser>(flags: &str) -> A {
    A::parse_from(std::iter::once("example").chain(flags.split_whitespace()))
}

fn assert_falls(name: &str, first: f64, last: f64) {
    assert!(
        first.is_finite() && last < first,
        "{name}: training loss {first} -> {last} did not fall"
    );
}

#[test]
fn gpt_char_trains_and_samples() {
    let a: gpt_char::Args = args(
        "--steps 40 --context 16 --d-model 32 --layers 1 --heads 2 --eval-every 20 \
         --sample-len 20 --quiet",
    );
    let s = gpt_char::run(&a).unwrap();
    assert_falls("gpt_char", s.first_loss, s.last_loss);
    assert!(s.valid_loss.is_finite());
    assert_eq!(s.sample.chars().count(), 20);
}

#[test]
fn lstm_lm_trains_and_reports_perplexity() {
    let a: lstm_lm::Args =
        args("--steps 40 --bptt 12 --embedding 32 --hidden 32 --layers 1 --eval-every 20 --quiet");
    let s = lstm_lm::run(&a).unwrap();
    assert_falls("lstm_lm", s.first_loss, s.last_loss);
    assert!(
        s.test_perplexity > 1.0 && s.test_perplexity < 200.0,
        "{}",
        s.test_perplexity
    );
}

#[test]
fn bert_mlm_trains_and_predicts() {
    let a: bert_mlm::Args = args(
        "--steps 40 --batch-size 16 --d-model 32 --layers 1 --heads 2 --vocab-size 300 --quiet",
    );
    let s = bert_mlm::run(&a).unwrap();
    assert_falls("bert_mlm", s.first_loss, s.last_loss);
    assert_eq!(s.predictions.len(), 5);
    assert!(s.predictions.iter().all(|(_, top)| top.len() == 5));
}

#[test]
fn bert_mlm_with_next_sentence_prediction() {
    let a: bert_mlm::Args = args(
        "--steps 30 --batch-size 16 --d-model 32 --layers 1 --heads 2 --vocab-size 300 --nsp \
         --whole-word --quiet",
    );
    let s = bert_mlm::run(&a).unwrap();
    assert_falls("bert_mlm --nsp", s.first_loss, s.last_loss);
}

#[test]
fn bert_classify_fine_tunes_with_frozen_embeddings() {
    let a: bert_classify::Args = args(
        "--steps 40 --batch-size 16 --eval-every 20 --freeze-embeddings --head-lr-factor 2 --quiet",
    );
    let s = bert_classify::run(&a).unwrap();
    assert_falls("bert_classify", s.first_loss, s.last_loss);
    assert!((0.0..=1.0).contains(&s.test_accuracy));
}

#[test]
fn bert_ner_trains_and_scores_entities() {
    let a: bert_ner::Args = args("--steps 40 --batch-size 16 --eval-every 20 --quiet");
    let s = bert_ner::run(&a).unwrap();
    assert_falls("bert_ner", s.first_loss, s.last_loss);
    assert!((0.0..=1.0).contains(&s.test_f1));
}
