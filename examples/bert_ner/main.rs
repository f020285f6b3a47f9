//! Named-entity recognition: BERT token classification on CoNLL-format data (one `word tag`
//! per line, blank lines between sentences, BIO tags), reporting entity-level F1.
//!
//! ```sh
//! cargo run --release --example bert_ner                       # built-in sentences, ~1 minute
//! cargo run --release --example bert_ner -- \
//!     --train ../shared/data/ner/wnut17/wnut17train.conll \
//!     --dev ../shared/data/ner/wnut17/emerging.dev.conll \
//!     --test ../shared/data/ner/wnut17/emerging.test.annotated --pretrained path/to/bert
//! ```

#[path = "../common/mod.rs"]
mod common;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use lmforge::data::batcher::{Batcher, BatcherConfig};
use lmforge::data::dataset::LabelSet;
use lmforge::data::dataset::conll::{AlignedExample, ConllConfig, ConllSentence, tag_set};
use lmforge::data::tokenizer::Tokenizer;
use lmforge::models::bert::{BertForTokenClassification, BertInput};
use lmforge::objectives::metrics::EntityF1;
use lmforge::training::tasks::TokenClassificationTask;
use lmforge::training::{Batches, OptimizerConfig, Schedule, TrainerConfig};

/// Train BERT token classification and report entity F1.
#[derive(Parser, Debug, Clone)]
pub struct Args {
    /// Training sentences in CoNLL format (default: generated sentences).
    #[arg(long, requires_all = ["dev", "test"])]
    pub train: Option<PathBuf>,
    /// Development sentences (evaluated during training).
    #[arg(long)]
    pub dev: Option<PathBuf>,
    /// Test sentences.
    #[arg(long)]
    pub test: Option<PathBuf>,
    /// A HuggingFace BERT folder to start from (default: a small random BERT).
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// Backend: flex, ndarray, wgpu, ... (default: LMFORGE_DEVICE or the build's default).
    #[arg(long)]
    pub device: Option<String>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// Sentences per step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Longest input in tokens.
    #[arg(long, default_value_t = 64)]
    pub max_length: usize,
    /// Peak learning rate (10% warmup, then linear decay).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Learning-rate factor of the classification head.
    #[arg(long, default_value_t = 1.0)]
    pub head_lr_factor: f64,
    /// Evaluate every this many steps.
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Folder for checkpoints, metrics.jsonl and loss.svg.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Resume from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Seed.
    #[arg(long, default_value_t = 9)]
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
    /// Entity precision, recall and F1 on the test sentences.
    pub test_precision: f64,
    /// See `test_precision`.
    pub test_recall: f64,
    /// See `test_precision`.
    pub test_f1: f64,
}

fn load(args: &Args) -> Result<[Vec<ConllSentence>; 3]> {
    let config = ConllConfig::default();
    match (&args.train, &args.dev, &args.test) {
        (Some(train), Some(dev), Some(test)) => {
            Ok([config.read(train)?, config.read(dev)?, config.read(test)?])
        }
        _ => {
            let all = config.parse(&common::ner_corpus(1500, args.seed))?;
            let test = all[1300..].to_vec();
            let dev = all[1100..1300].to_vec();
            Ok([all[..1100].to_vec(), dev, test])
        }
    }
}

/// Entity precision, recall and F1 of `model` on `sentences`: each word's tag is the one
/// predicted for its first sub-word.
fn entity_f1(
    model: &BertForTokenClassification,
    batcher: &Batcher,
    examples: &[AlignedExample],
    sentences: &[ConllSentence],
    labels: &LabelSet,
    device: &burn::tensor::Device,
) -> Result<EntityF1> {
    let model = burn::module::Module::valid(model);
    let device = device.clone().without_autodiff();
    let mut f1 = EntityF1::new();
    for (chunk, gold) in examples.chunks(64).zip(sentences.chunks(64)) {
        let (batch, _) = batcher.batch_token_labels(chunk, &device)?;
        let [batch_size, seq_length] = batch.input_ids.dims();
        let input = BertInput::new(batch.input_ids)
            .with_token_types(batch.type_ids)
            .with_mask_pad(batch.padding_mask);
        let predicted: Vec<i64> = model
            .forward(input)
            .logits
            .argmax(2)
            .reshape([batch_size * seq_length])
            .into_data()
            .iter::<i64>()
            .collect();
        for (b, (example, sentence)) in chunk.iter().zip(gold).enumerate() {
            // The first sub-word of each word is where the label is not ignored.
            let tags: Vec<String> = example
                .labels
                .iter()
                .enumerate()
                .filter(|(t, label)| **label >= 0 && *t < seq_length)
                .map(|(t, _)| {
                    let id = predicted[b * seq_length + t] as usize;
                    labels.name(id).unwrap_or("O").to_string()
                })
                .collect();
            // Words cut off by truncation count as predicted `O`.
            let mut tags = tags;
            tags.resize(sentence.tags.len(), "O".to_string());
            f1.update(&sentence.tags, &tags)?;
        }
    }
    Ok(f1)
}

/// Runs the example with `args` and returns what it measured.
pub fn run(args: &Args) -> Result<Summary> {
    let device = common::training_device(args.device.as_deref(), args.quiet)?;
    let [train, dev, test] = load(args)?;
    let labels = tag_set(&[train.clone(), dev.clone(), test.clone()].concat());
    device.seed(args.seed);
    let texts: Vec<String> = train.iter().map(|s| s.tokens.join(" ")).collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let scratch = common::ScratchBert {
        vocab_size: 2000,
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
    let model = BertForTokenClassification::from_encoder(bert, labels.len(), &device)?;

    let align = |sentences: &[ConllSentence]| -> Result<Vec<AlignedExample>> {
        sentences
            .iter()
            .map(|s| Ok(s.align(&tokenizer, &labels, true)?))
            .collect()
    };
    let pad = tokenizer.special_tokens().pad.context("no [PAD]")?;
    let batcher = BatcherConfig::new(pad)
        .with_max_length(args.max_length)
        .with_truncate(true)
        .with_vocab_size(tokenizer.vocab_size())
        .init()?;
    let task = TokenClassificationTask::new(batcher);
    let (train_x, dev_x, test_x) = (align(&train)?, align(&dev)?, align(&test)?);
    if !args.quiet {
        println!(
            "{} training, {} dev, {} test sentences; tags: {}",
            train.len(),
            dev.len(),
            test.len(),
            labels.names().join(" ")
        );
    }
    let train_batches = Batches::new(train_x, args.batch_size).with_seed(args.seed);
    let dev_batches = Batches::new(dev_x, 64).in_order();

    let optimizer = OptimizerConfig::adamw().with_lr_group(r"^classifier\.", args.head_lr_factor);
    let config = TrainerConfig::new(
        args.steps,
        Schedule::warmup_linear(args.lr, args.steps / 10),
    )
    .with_optimizer(optimizer)
    .with_max_grad_norm(1.0)
    .with_eval(args.eval_every, None)
    .with_checkpoint_every(args.eval_every)
    .with_log_every((args.steps / 20).max(1))
    .with_seed(args.seed);
    let trainer = common::trainer(config, args.out.as_deref(), args.resume, args.quiet);
    let out = trainer.fit(model, &task, &train_batches, Some(&dev_batches))?;
    let (first_loss, last_loss) = common::loss_trend(&out.history)?;
    let f1 = entity_f1(&out.model, &task.batcher, &test_x, &test, &labels, &device)?;
    if !args.quiet {
        println!(
            "test entities: precision {:.2}%, recall {:.2}%, F1 {:.2}%",
            100.0 * f1.precision(),
            100.0 * f1.recall(),
            100.0 * f1.f1()
        );
    }
    Ok(Summary {
        first_loss,
        last_loss,
        test_precision: f1.precision(),
        test_recall: f1.recall(),
        test_f1: f1.f1(),
    })
}

#[allow(dead_code)]
fn main() -> Result<()> {
    run(&Args::parse())?;
    Ok(())
}
