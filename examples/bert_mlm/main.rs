//! Pre-train a small BERT with masked-language modelling (next-sentence prediction optional)
//! on a built-in corpus or any text file, then print the top-5 predictions for masked
//! sentences.
//!
//! ```sh
//! cargo run --release --example bert_mlm                      # built-in corpus, ~3 minutes
//! cargo run --release --example bert_mlm -- --data my.txt --steps 3000 --out runs/mlm
//! cargo run --release --example bert_mlm -- --nsp             # MLM + next-sentence prediction
//! ```

#[path = "../common/mod.rs"]
mod common;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::{Int, Tensor, TensorData};
use clap::Parser;
use lmforge::data::batcher::BatcherConfig;
use lmforge::data::dataset::nsp::nsp_pairs;
use lmforge::data::tokenizer::{Encoding, HfTokenizer, Tokenizer, WordPieceTrainOptions};
use lmforge::models::bert::{BertConfig, BertInput};
use lmforge::objectives::masked_lm::MaskingConfig;
use lmforge::training::tasks::MaskedLmTask;
use lmforge::training::{Batches, Schedule, TrainerConfig};

/// Pre-train a small BERT with masked-language modelling.
#[derive(Parser, Debug, Clone)]
pub struct Args {
    /// A text file, one sentence per line; blank lines separate documents (for --nsp).
    /// Default: a generated corpus of simple facts.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Backend: flex, ndarray, wgpu, ... (default: LMFORGE_DEVICE or the build's default).
    #[arg(long)]
    pub device: Option<String>,
    /// Train with burn-train's Learner on these devices, one model replica each, the batch
    /// split between them (comma-separated backend names, e.g. `flex,flex` or `flex,wgpu`).
    #[arg(long)]
    pub devices: Option<String>,
    /// With --devices: distributed data parallel (all-reduce; CUDA devices only in burn 0.22)
    /// instead of gathering the gradients on the first device.
    #[arg(long)]
    pub ddp: bool,
    /// Optimizer steps.
    #[arg(long, default_value_t = 2000)]
    pub steps: usize,
    /// Sentences per step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Longest input in tokens.
    #[arg(long, default_value_t = 48)]
    pub max_length: usize,
    /// WordPiece vocabulary size.
    #[arg(long, default_value_t = 1000)]
    pub vocab_size: usize,
    /// Model width.
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    /// Encoder blocks.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Dropout (hidden and attention).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Peak learning rate (warmup, then linear decay).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Also train next-sentence prediction on sentence pairs.
    #[arg(long)]
    pub nsp: bool,
    /// Mask whole words rather than single WordPiece tokens.
    #[arg(long)]
    pub whole_word: bool,
    /// Sentences to fill in after training, with `[MASK]` where a word is missing.
    #[arg(long)]
    pub predict: Vec<String>,
    /// Folder for checkpoints, metrics.jsonl, loss.svg and the tokenizer.
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

/// A sentence to fill in, with the five most likely tokens and their probabilities.
pub type Prediction = (String, Vec<(String, f32)>);

/// What a run measured.
pub struct Summary {
    /// Mean training loss of the first logged window.
    pub first_loss: f64,
    /// Mean training loss of the last logged window.
    pub last_loss: f64,
    /// Masked-token accuracy on the held-out sentences.
    pub valid_accuracy: f64,
    /// For each sentence to fill in: the five most likely tokens and their probabilities.
    pub predictions: Vec<Prediction>,
}

const DEFAULT_PROMPTS: [&str; 5] = [
    "the capital of france is [MASK] .",
    "the dog [MASK] .",
    "cows eat [MASK] .",
    "everyone knows that snow is [MASK] .",
    "after three comes [MASK] .",
];

/// Documents of sentences: blank lines separate documents in a file; the built-in corpus is
/// cut into documents of eight sentences.
fn documents(args: &Args) -> Result<Vec<Vec<String>>> {
    let docs: Vec<Vec<String>> = match &args.data {
        Some(path) => common::read_text(path)?
            .split("\n\n")
            .map(|doc| {
                doc.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|doc| !doc.is_empty())
            .collect(),
        None => common::facts_corpus(8000, args.seed)
            .chunks(8)
            .map(<[String]>::to_vec)
            .collect(),
    };
    if docs.is_empty() {
        bail!("the corpus has no sentences");
    }
    Ok(docs)
}

/// Runs the example with `args` and returns what it measured.
pub fn run(args: &Args) -> Result<Summary> {
    let device = common::training_device(args.device.as_deref(), args.quiet)?;
    let parallel = common::parallel(args.devices.as_deref(), args.ddp, args.quiet)?;
    let docs = documents(args)?;
    let sentences: Vec<&str> = docs.iter().flatten().map(String::as_str).collect();

    // A WordPiece vocabulary learnt from the corpus (the trainer reads files).
    let work = args.out.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("lmforge-bert-mlm-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work)?;
    let corpus_file = work.join("corpus.txt");
    std::fs::write(&corpus_file, sentences.join("\n"))?;
    let tokenizer = HfTokenizer::train_wordpiece(
        &[&corpus_file],
        &WordPieceTrainOptions {
            vocab_size: args.vocab_size,
            min_frequency: 1,
            ..Default::default()
        },
    )?;
    tokenizer.save(work.join("tokenizer.json"))?;
    let specials = tokenizer.special_tokens();
    let (pad, mask) = (
        specials.pad.context("no [PAD]")?,
        specials.mask.context("no [MASK]")?,
    );
    let vocab_size = tokenizer.vocab_size();

    let batcher = BatcherConfig::new(pad)
        .with_max_length(args.max_length)
        .with_truncate(true)
        .with_vocab_size(vocab_size)
        .init()?;
    let masking =
        MaskingConfig::new(mask, vocab_size, specials.ids()).with_whole_word(args.whole_word);
    let task = MaskedLmTask::new(batcher, masking);
    let config = BertConfig::new(vocab_size)
        .with_d_model(args.d_model)
        .with_n_layers(args.layers)
        .with_n_heads(args.heads)
        .with_d_ff(4 * args.d_model)
        .with_max_seq_length(args.max_length.max(64))
        .with_dropout(args.dropout)
        .with_attention_dropout(args.dropout);
    let trainer_config = TrainerConfig::new(
        args.steps,
        Schedule::warmup_linear(args.lr, args.steps / 10),
    )
    .with_max_grad_norm(1.0)
    .with_eval((args.steps / 4).max(1), Some(10))
    .with_checkpoint_every((args.steps / 4).max(1))
    .with_log_every((args.steps / 20).max(1))
    .with_seed(args.seed);
    let trainer = common::trainer(trainer_config, args.out.as_deref(), args.resume, args.quiet);
    device.seed(args.seed);

    // Hold out one sentence in twenty for evaluation.
    let split = |n: usize| (0..n).partition::<Vec<usize>, _>(|i| i % 20 != 0);
    let prompts: Vec<String> = if args.predict.is_empty() {
        DEFAULT_PROMPTS.iter().map(|s| s.to_string()).collect()
    } else {
        args.predict.clone()
    };

    let ((first_loss, last_loss), valid, predictions) = if args.nsp {
        let pairs = nsp_pairs(&docs, args.seed)?;
        let items = pairs
            .iter()
            .map(|p| Ok((p.encode(&tokenizer)?, p.label())))
            .collect::<Result<Vec<(Encoding, i64)>>>()?;
        let (train_ids, valid_ids) = split(items.len());
        let pick = |ids: &[usize]| ids.iter().map(|&i| items[i].clone()).collect::<Vec<_>>();
        let train = Batches::new(pick(&train_ids), args.batch_size).with_seed(args.seed);
        let valid = Batches::new(pick(&valid_ids), args.batch_size).in_order();
        let model = config.init_pretraining(&device)?;
        let trained = common::train(
            parallel.as_ref(),
            &trainer,
            model,
            &task,
            &train,
            &valid,
            args.batch_size,
            args.out.as_deref(),
        )?;
        let eval = trained.last_eval.context("no evaluation ran")?;
        let model = trained.model.valid();
        let predictions = predict(&tokenizer, &prompts, &device, |input| {
            model.forward(input).mlm_logits
        })?;
        (trained.losses, eval, predictions)
    } else {
        let items = sentences
            .iter()
            .map(|s| Ok(tokenizer.encode(s, true)?))
            .collect::<Result<Vec<Encoding>>>()?;
        let (train_ids, valid_ids) = split(items.len());
        let pick = |ids: &[usize]| ids.iter().map(|&i| items[i].clone()).collect::<Vec<_>>();
        let train = Batches::new(pick(&train_ids), args.batch_size).with_seed(args.seed);
        let valid = Batches::new(pick(&valid_ids), args.batch_size).in_order();
        let model = config.init_masked_lm(&device)?;
        let trained = common::train(
            parallel.as_ref(),
            &trainer,
            model,
            &task,
            &train,
            &valid,
            args.batch_size,
            args.out.as_deref(),
        )?;
        let eval = trained.last_eval.context("no evaluation ran")?;
        let model = trained.model.valid();
        let predictions = predict(&tokenizer, &prompts, &device, |input| {
            model.forward(input).logits
        })?;
        (trained.losses, eval, predictions)
    };

    if !args.quiet {
        println!(
            "training loss {:.3} -> {:.3}; held-out masked-token accuracy {:.1}% (loss {:.3})",
            first_loss,
            last_loss,
            100.0 * valid.accuracy.unwrap_or(0.0),
            valid.loss
        );
        for (sentence, top) in &predictions {
            let shown: Vec<String> = top.iter().map(|(t, p)| format!("{t} ({p:.2})")).collect();
            println!("{sentence}\n    -> {}", shown.join(", "));
        }
    }
    Ok(Summary {
        first_loss,
        last_loss,
        valid_accuracy: valid.accuracy.unwrap_or(0.0),
        predictions,
    })
}

/// The five most likely tokens at the first `[MASK]` of each sentence.
fn predict(
    tokenizer: &HfTokenizer,
    sentences: &[String],
    device: &burn::tensor::Device,
    logits: impl Fn(BertInput) -> Tensor<3>,
) -> Result<Vec<Prediction>> {
    let device = device.clone().without_autodiff();
    let mask = tokenizer.special_tokens().mask.context("no [MASK]")?;
    let mut out = Vec::new();
    for sentence in sentences {
        let encoding = tokenizer.encode(sentence, true)?;
        let position = encoding
            .ids
            .iter()
            .position(|&id| id == mask)
            .with_context(|| format!("no [MASK] in `{sentence}`"))?;
        let ids: Vec<i64> = encoding.ids.iter().map(|&id| i64::from(id)).collect();
        let n = ids.len();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), &device);
        let all = logits(BertInput::new(tokens));
        let [_, _, vocab] = all.dims();
        let row = all
            .slice([0..1, position..position + 1, 0..vocab])
            .reshape([vocab]);
        let probs: Vec<f32> = softmax(row, 0).into_data().iter::<f32>().collect();
        let mut ranked: Vec<(usize, f32)> = probs.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top = ranked
            .into_iter()
            .take(5)
            .map(|(id, p)| (tokenizer.id_to_token(id as u32).unwrap_or_default(), p))
            .collect();
        out.push((sentence.clone(), top));
    }
    Ok(out)
}

#[allow(dead_code)]
fn main() -> Result<()> {
    run(&Args::parse())?;
    Ok(())
}
