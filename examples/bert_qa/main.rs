//! Fine-tune BERT for extractive question answering (SQuAD style) and report exact match and
//! F1 on held-out questions, as the official SQuAD v1.1 script computes them.
//!
//! Long contexts are split into overlapping windows; the answer's start and end tokens are
//! learnt with the span loss; answers are decoded over every window of a question (n-best
//! starts and ends, a maximum answer length, never outside the context) back to the context's
//! own text.
//!
//! Data: a SQuAD v1.1 JSON file (`--data`), split by article so that test questions are about
//! passages never trained on; or by default generated questions about generated passages.
//!
//! ```sh
//! cargo run --release --example bert_qa                              # generated, ~1 minute
//! cargo run --release --example bert_qa -- --data squaddev_v1.1.json \
//!     --pretrained path/to/all-MiniLM-L6-v2 --steps 600 --lr 1e-4
//! ```

#[path = "../common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::Tensor;
use clap::Parser;
use lmforge::data::batcher::BatcherConfig;
use lmforge::data::dataset::squad::{
    Answer, QaExample, QaFeature, QaWindowConfig, SpanSearch, best_spans, read_squad,
};
use lmforge::data::tokenizer::Tokenizer;
use lmforge::models::bert::{BertForQuestionAnswering, BertInput};
use lmforge::objectives::metrics::SquadScores;
use lmforge::training::tasks::QuestionAnsweringTask;
use lmforge::training::{Batches, Monitor, Schedule, TrainerConfig, evaluate};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

/// Fine-tune BERT for extractive question answering.
#[derive(Parser, Debug, Clone)]
pub struct Args {
    /// A SQuAD v1.1 JSON file. Default: generated passages and questions.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A HuggingFace BERT folder (config.json, model.safetensors, tokenizer.json) to start
    /// from. Default: a small random BERT.
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// Backend: flex, ndarray, wgpu, ... (default: LMFORGE_DEVICE or the build's default).
    #[arg(long)]
    pub device: Option<String>,
    /// Articles held out for the test set (SQuAD data).
    #[arg(long, default_value_t = 6)]
    pub test_articles: usize,
    /// Articles held out for validation (SQuAD data).
    #[arg(long, default_value_t = 2)]
    pub valid_articles: usize,
    /// Train on at most this many questions (a seeded subset; 0 = all).
    #[arg(long, default_value_t = 0)]
    pub train_questions: usize,
    /// Score at most this many test questions (a seeded subset; 0 = all).
    #[arg(long, default_value_t = 0)]
    pub test_questions: usize,
    /// Validate on at most this many questions.
    #[arg(long, default_value_t = 200)]
    pub valid_questions: usize,
    /// Longest window in tokens.
    #[arg(long, default_value_t = 192)]
    pub max_length: usize,
    /// Context tokens shared by consecutive windows.
    #[arg(long, default_value_t = 64)]
    pub stride: usize,
    /// Questions are cut to this many tokens.
    #[arg(long, default_value_t = 48)]
    pub max_question_tokens: usize,
    /// Start and end candidates per window when decoding answers.
    #[arg(long, default_value_t = 20)]
    pub n_best: usize,
    /// Longest answer in tokens.
    #[arg(long, default_value_t = 30)]
    pub max_answer_tokens: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Peak learning rate (10% warmup, then linear decay).
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    /// Evaluate on the validation windows every this many steps (the best model is kept).
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Folder for checkpoints, metrics.jsonl, loss.svg, predictions.tsv and squad.json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Resume from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Seed.
    #[arg(long, default_value_t = 3)]
    pub seed: u64,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}

/// What a run measured.
pub struct Summary {
    /// Mean training loss of the first logged window.
    pub first_loss: f64,
    /// Mean training loss of the last logged window.
    pub last_loss: f64,
    /// Validation span loss of the kept model.
    pub valid_loss: f64,
    /// Test questions scored.
    pub test_questions: usize,
    /// SQuAD exact match on the test questions (0-100).
    pub exact_match: f64,
    /// SQuAD F1 on the test questions (0-100).
    pub f1: f64,
    /// (question, predicted answer, first reference) for the first test questions.
    pub samples: Vec<(String, String, String)>,
}

/// Runs the example with `args` and returns what it measured.
pub fn run(args: &Args) -> Result<Summary> {
    let device = common::training_device(args.device.as_deref(), args.quiet)?;
    let [train, valid, test] = load(args)?;
    if !args.quiet {
        println!(
            "{} training, {} validation, {} test questions",
            train.len(),
            valid.len(),
            test.len()
        );
    }
    device.seed(args.seed);
    let texts: Vec<String> = train
        .iter()
        .flat_map(|e| [e.context.clone(), e.question.clone()])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let scratch = common::ScratchBert {
        vocab_size: 3000,
        d_model: 128,
        layers: 2,
        heads: 4,
        max_length: args.max_length,
    };
    let (bert, tokenizer) = common::bert_encoder(
        args.pretrained.as_deref(),
        &texts,
        &scratch,
        &device,
        args.quiet,
    )?;
    let model = BertForQuestionAnswering::from_encoder(bert, &device);
    let windows = QaWindowConfig {
        max_length: args.max_length,
        stride: args.stride,
        max_question_tokens: args.max_question_tokens,
    };
    let train_features = windows.features(&train, &tokenizer)?;
    let valid_features = windows.features(&valid, &tokenizer)?;
    let test_features = windows.features(&test, &tokenizer)?;
    if !args.quiet {
        println!(
            "windows of up to {} tokens: {} training, {} validation, {} test",
            args.max_length,
            train_features.len(),
            valid_features.len(),
            test_features.len()
        );
    }
    let pad = tokenizer.special_tokens().pad.context("no [PAD]")?;
    let batcher = BatcherConfig::new(pad)
        .with_max_length(args.max_length)
        .with_truncate(false)
        .with_vocab_size(tokenizer.vocab_size())
        .init()?;
    let task = QuestionAnsweringTask::new(batcher);
    let train_batches = Batches::new(train_features, args.batch_size).with_seed(args.seed);
    let valid_batches = Batches::new(valid_features, 32).in_order();
    let config = TrainerConfig::new(
        args.steps,
        Schedule::warmup_linear(args.lr, args.steps / 10),
    )
    .with_max_grad_norm(1.0)
    .with_eval(args.eval_every, None)
    .with_checkpoint_every(args.eval_every)
    .with_monitor(Monitor::Loss)
    .with_keep_best(true)
    .with_log_every((args.steps / 20).max(1))
    .with_seed(args.seed);
    let trainer = common::trainer(config, args.out.as_deref(), args.resume, args.quiet);
    let out = trainer.fit(model, &task, &train_batches, Some(&valid_batches))?;
    let (first_loss, last_loss) = common::loss_trend(&out.history)?;
    let model = out.best_model.unwrap_or(out.model);
    let valid_loss = evaluate(&model, &task, &valid_batches, None)?.loss;

    let model = model.valid();
    let inference = device.clone().without_autodiff();
    let search = SpanSearch {
        n_best: args.n_best,
        max_answer_tokens: args.max_answer_tokens,
    };
    let predictions = predict(&model, &task, &test, &test_features, &search, &inference)?;
    let mut scores = SquadScores::new();
    for (example, prediction) in test.iter().zip(&predictions) {
        let references: Vec<&str> = example.answers.iter().map(|a| a.text.as_str()).collect();
        scores.add(prediction, &references)?;
    }
    let exact_match = scores.exact_match().context("no test question")?;
    let f1 = scores.f1().context("no test question")?;
    let samples: Vec<(String, String, String)> = test
        .iter()
        .zip(&predictions)
        .take(8)
        .map(|(e, p)| (e.question.clone(), p.clone(), e.answers[0].text.clone()))
        .collect();
    if !args.quiet {
        println!(
            "kept model: validation loss {valid_loss:.3}; test on {} questions: exact match \
             {exact_match:.2}, F1 {f1:.2}",
            test.len()
        );
        for (question, predicted, reference) in &samples {
            println!("  {question}\n    -> {predicted}   (reference: {reference})");
        }
    }
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        let mut lines = String::from("id\tquestion\tprediction\treferences\n");
        for (e, p) in test.iter().zip(&predictions) {
            let refs: Vec<&str> = e.answers.iter().map(|a| a.text.as_str()).collect();
            lines.push_str(&format!(
                "{}\t{}\t{p}\t{}\n",
                e.id,
                e.question,
                refs.join(" | ")
            ));
        }
        std::fs::write(out.join("predictions.tsv"), lines)?;
        let metrics = serde_json::json!({
            "data": args.data.as_ref().map(|p| p.display().to_string()),
            "pretrained": args.pretrained.as_ref().map(|p| p.display().to_string()),
            "questions": [train.len(), valid.len(), test.len()],
            "steps": args.steps,
            "valid_loss": valid_loss,
            "exact_match": exact_match,
            "f1": f1,
        });
        std::fs::write(out.join("squad.json"), format!("{metrics}\n"))?;
    }
    Ok(Summary {
        first_loss,
        last_loss,
        valid_loss,
        test_questions: test.len(),
        exact_match,
        f1,
        samples,
    })
}

/// The best answer of each example over its windows (an empty answer when no span is valid).
fn predict(
    model: &BertForQuestionAnswering,
    task: &QuestionAnsweringTask,
    examples: &[QaExample],
    features: &[QaFeature],
    search: &SpanSearch,
    device: &burn::tensor::Device,
) -> Result<Vec<String>> {
    let mut logits: Vec<(Vec<f32>, Vec<f32>)> = Vec::with_capacity(features.len());
    for chunk in features.chunks(32) {
        let encodings: Vec<_> = chunk.iter().map(|f| f.encoding.clone()).collect();
        let batch = task.batcher.batch(&encodings, device)?;
        let input = BertInput::new(batch.input_ids)
            .with_token_types(batch.type_ids)
            .with_mask_pad(batch.padding_mask);
        let out = model.forward(input);
        let rows = |t: Tensor<2>| -> Result<Vec<Vec<f32>>> {
            let [_, width] = t.dims();
            let flat: Vec<f32> = t
                .into_data()
                .try_into_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            Ok(flat.chunks(width).map(<[f32]>::to_vec).collect())
        };
        logits.extend(
            rows(out.start_logits)?
                .into_iter()
                .zip(rows(out.end_logits)?),
        );
    }
    let mut by_example: Vec<Vec<usize>> = vec![Vec::new(); examples.len()];
    for (i, f) in features.iter().enumerate() {
        by_example[f.example].push(i);
    }
    Ok(examples
        .iter()
        .zip(&by_example)
        .map(|(example, windows)| {
            let windows: Vec<(&QaFeature, &[f32], &[f32])> = windows
                .iter()
                .map(|&i| (&features[i], &logits[i].0[..], &logits[i].1[..]))
                .collect();
            best_spans(&example.context, &windows, search)
                .into_iter()
                .next()
                .map(|s| s.text)
                .unwrap_or_default()
        })
        .collect())
}

/// Train, validation and test questions.
fn load(args: &Args) -> Result<[Vec<QaExample>; 3]> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let (mut train, valid, mut test) = match &args.data {
        None => {
            let all = generated_questions(1200, args.seed);
            let (train, rest) = all.split_at(1000);
            let (valid, test) = rest.split_at(50);
            (train.to_vec(), valid.to_vec(), test.to_vec())
        }
        Some(path) => {
            let all = read_squad(path).with_context(|| format!("reading {}", path.display()))?;
            let mut titles: Vec<String> = all
                .iter()
                .map(|e| e.title.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            titles.shuffle(&mut rng);
            anyhow::ensure!(
                titles.len() > args.test_articles + args.valid_articles,
                "{} articles: too few for {} test and {} validation articles",
                titles.len(),
                args.test_articles,
                args.valid_articles
            );
            let test_titles = &titles[..args.test_articles];
            let valid_titles =
                &titles[args.test_articles..args.test_articles + args.valid_articles];
            let (mut train, mut valid, mut test) = (Vec::new(), Vec::new(), Vec::new());
            for e in all {
                if test_titles.contains(&e.title) {
                    test.push(e);
                } else if valid_titles.contains(&e.title) {
                    valid.push(e);
                } else {
                    train.push(e);
                }
            }
            valid.shuffle(&mut rng);
            valid.truncate(args.valid_questions);
            (train, valid, test)
        }
    };
    train.shuffle(&mut rng);
    if args.train_questions > 0 {
        train.truncate(args.train_questions);
    }
    if args.test_questions > 0 && test.len() > args.test_questions {
        test.shuffle(&mut rng);
        test.truncate(args.test_questions);
    }
    Ok([train, valid, test])
}

/// `n` questions about generated passages of four to six facts each (capitals, inventors,
/// rivers, dates), every answer a span of its passage. Only for trying the pipeline without
/// data: real results need `--data`.
pub fn generated_questions(n: usize, seed: u64) -> Vec<QaExample> {
    const PEOPLE: [&str; 10] = [
        "Ada Lovelace",
        "Alan Turing",
        "Grace Hopper",
        "Marie Curie",
        "Nikola Tesla",
        "Emmy Noether",
        "Carl Gauss",
        "Rosalind Franklin",
        "Isaac Newton",
        "Lise Meitner",
    ];
    const THINGS: [&str; 8] = [
        "a calculating engine",
        "a new alloy",
        "a tide clock",
        "a signal lamp",
        "a water pump",
        "a star chart",
        "a printing press",
        "a glass prism",
    ];
    const CITIES: [&str; 8] = [
        "Lisbon", "Oslo", "Vienna", "Prague", "Dublin", "Madrid", "Bern", "Athens",
    ];
    const RIVERS: [&str; 6] = ["Tagus", "Danube", "Rhine", "Vltava", "Liffey", "Elbe"];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut facts: Vec<(String, String, String)> = Vec::new();
        for _ in 0..rng.random_range(4..=6) {
            let person = *PEOPLE.choose(&mut rng).expect("not empty");
            let city = *CITIES.choose(&mut rng).expect("not empty");
            let year = rng.random_range(1700..1950).to_string();
            let fact = match rng.random_range(0..4) {
                0 => {
                    let thing = *THINGS.choose(&mut rng).expect("not empty");
                    (
                        format!("{person} built {thing} in {year}."),
                        format!("What did {person} build in {year}?"),
                        thing.to_string(),
                    )
                }
                1 => (
                    format!("{person} was born in {city}."),
                    format!("Where was {person} born?"),
                    city.to_string(),
                ),
                2 => {
                    let river = *RIVERS.choose(&mut rng).expect("not empty");
                    (
                        format!("The river {river} flows through {city}."),
                        format!("Which city does the {river} flow through?"),
                        city.to_string(),
                    )
                }
                _ => (
                    format!("In {year} {person} moved to {city}."),
                    format!("When did {person} move to {city}?"),
                    year,
                ),
            };
            facts.push(fact);
        }
        let context = facts
            .iter()
            .map(|f| f.0.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let mut at = 0;
        for (sentence, question, answer) in &facts {
            let start = at
                + sentence
                    .find(answer.as_str())
                    .expect("answer in its sentence");
            at += sentence.len() + 1;
            // A question is only fair when its answer is the first fact that matches it.
            let duplicate = facts.iter().filter(|(_, q, _)| q == question).count() > 1;
            if !duplicate && out.len() < n {
                out.push(QaExample {
                    id: format!("gen-{}", out.len()),
                    title: format!("passage {}", out.len() / 5),
                    context: context.clone(),
                    question: question.clone(),
                    answers: vec![Answer {
                        text: answer.clone(),
                        start,
                    }],
                });
            }
        }
    }
    out
}

#[allow(dead_code)]
fn main() -> Result<()> {
    run(&Args::parse())?;
    Ok(())
}
