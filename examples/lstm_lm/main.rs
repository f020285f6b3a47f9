//! Word-level LSTM language model (Embedding -> LSTM -> Dense): trains, then reports
//! validation and test perplexity and next-word accuracy.
//!
//! ```sh
//! cargo run --release --example lstm_lm                        # built-in corpus, ~1 minute
//! cargo run --release --example lstm_lm -- --data ../shared/data/ptb --embedding 200 \
//!     --hidden 200 --bptt 20 --stateful --sgd --lr 20 --clip 0.25 --steps 13938 \
//!     --eval-every 2323                        # Penn Treebank, Zaremba et al.'s small model
//! ```

#[path = "../common/mod.rs"]
mod common;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use lmforge::data::dataset::lm_blocks::{LmBlocksConfig, LmSplits};
use lmforge::data::dataset::stream::LineEnd;
use lmforge::data::tokenizer::{Tokenizer, WordSplit, WordTokenizer, WordVocabOptions};
use lmforge::models::lstm_lm::{LstmLm, LstmLmConfig};
use lmforge::training::tasks::{CausalLmTask, StatefulLstmTask, stream_windows};
use lmforge::training::{Batches, OptimizerConfig, Schedule, Task, TrainerConfig, evaluate};

/// Train a word-level LSTM language model and report perplexity.
#[derive(Parser, Debug, Clone)]
pub struct Args {
    /// A folder with `ptb.train.txt`, `ptb.valid.txt` and `ptb.test.txt` (one sentence per
    /// line, words split by spaces). Default: a generated corpus of simple facts.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Backend: flex, ndarray, wgpu, ... (default: LMFORGE_DEVICE or the build's default).
    #[arg(long)]
    pub device: Option<String>,
    /// Optimizer steps.
    #[arg(long, default_value_t = 400)]
    pub steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 20)]
    pub batch_size: usize,
    /// Tokens per training sequence.
    #[arg(long, default_value_t = 35)]
    pub bptt: usize,
    /// Embedding width.
    #[arg(long, default_value_t = 128)]
    pub embedding: usize,
    /// LSTM hidden width.
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    /// LSTM layers.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Dropout.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Carry the LSTM state from each batch to the next (truncated BPTT over contiguous
    /// streams, as Zaremba et al.); without it every sequence starts from a zero state.
    #[arg(long)]
    pub stateful: bool,
    /// Tie the output layer to the input embedding (needs --embedding = --hidden).
    #[arg(long)]
    pub tie: bool,
    /// Use SGD (Zaremba et al.'s recipe) instead of AdamW.
    #[arg(long)]
    pub sgd: bool,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Clip the global gradient norm to this value.
    #[arg(long, default_value_t = 5.0)]
    pub clip: f64,
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
    #[arg(long, default_value_t = 11)]
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
    /// Validation perplexity at the end.
    pub valid_perplexity: f64,
    /// Test perplexity at the end.
    pub test_perplexity: f64,
    /// Test next-word accuracy (the arg-max is the next word) at the end.
    pub test_accuracy: f64,
}

fn load(args: &Args) -> Result<(WordTokenizer, LmSplits)> {
    let options = WordVocabOptions {
        special_tokens: vec!["<pad>".into(), "<unk>".into(), "<eos>".into()],
        // Penn Treebank is pre-tokenized: words such as `<unk>` and `'s` stay whole.
        split: WordSplit::Whitespace,
        ..Default::default()
    };
    let (texts, own_split) = match &args.data {
        Some(dir) => {
            let read = |name: &str| common::read_text(&dir.join(name));
            (
                vec![
                    read("ptb.train.txt")?,
                    read("ptb.valid.txt")?,
                    read("ptb.test.txt")?,
                ],
                false,
            )
        }
        None => (vec![common::facts_corpus(6000, args.seed).join("\n")], true),
    };
    let tokenizer = WordTokenizer::train(texts[0].lines(), &options)?;
    let eos = tokenizer.token_to_id("<eos>").context("no <eos>")?;
    let blocks = LmBlocksConfig::new(args.bptt + 1).with_line_end(LineEnd::Token(eos));
    let splits = if own_split {
        blocks
            .with_fractions(0.1, 0.1)
            .from_text(&tokenizer, &texts[0])?
    } else {
        let one = |text: &str| -> Result<Vec<Vec<u32>>> {
            Ok(blocks
                .with_fractions(0.0, 0.0)
                .from_text(&tokenizer, text)?
                .train)
        };
        LmSplits {
            train: one(&texts[0])?,
            valid: one(&texts[1])?,
            test: one(&texts[2])?,
        }
    };
    Ok((tokenizer, splits))
}

/// Runs the example with `args` and returns what it measured.
pub fn run(args: &Args) -> Result<Summary> {
    let device = common::training_device(args.device.as_deref(), args.quiet)?;
    let (tokenizer, splits) = load(args)?;
    if !args.quiet {
        println!(
            "vocabulary {} words; {} training, {} validation, {} test sequences of {} tokens",
            tokenizer.vocab_size(),
            splits.train.len(),
            splits.valid.len(),
            splits.test.len(),
            args.bptt + 1
        );
    }
    device.seed(args.seed);
    let model = LstmLmConfig::new(tokenizer.vocab_size())
        .with_d_embedding(args.embedding)
        .with_d_hidden(args.hidden)
        .with_n_layers(args.layers)
        .with_dropout(args.dropout)
        .with_tie_weights(args.tie)
        .init(&device)?;
    if args.stateful {
        // Contiguous streams, one per row, read in order; the blocks above are contiguous,
        // so joined they give the token stream back.
        let streams = |name: &str, blocks: &[Vec<u32>]| -> Result<Batches<Vec<u32>>> {
            let tokens: Vec<u32> = blocks.concat();
            let windows = stream_windows(&tokens, args.batch_size, args.bptt);
            anyhow::ensure!(
                !windows.is_empty(),
                "the {name} split ({} tokens) is too short for {} streams of {} + 1 tokens",
                tokens.len(),
                args.batch_size,
                args.bptt
            );
            Ok(Batches::new(windows, args.batch_size).in_order())
        };
        let (train, valid, test) = (
            streams("training", &splits.train)?,
            streams("validation", &splits.valid)?,
            streams("test", &splits.test)?,
        );
        // Resetting the state at every checkpoint keeps resumed runs exact.
        let task = StatefulLstmTask::new(train.len(), args.eval_every);
        fit_and_test(args, model, &task, &train, &valid, &test)
    } else {
        let task = CausalLmTask::new(0);
        let train = Batches::new(splits.train, args.batch_size).with_seed(args.seed);
        let valid = Batches::new(splits.valid, args.batch_size).in_order();
        let test = Batches::new(splits.test, args.batch_size).in_order();
        fit_and_test(args, model, &task, &train, &valid, &test)
    }
}

fn fit_and_test<T: Task<LstmLm, Item = Vec<u32>>>(
    args: &Args,
    model: LstmLm,
    task: &T,
    train: &Batches<Vec<u32>>,
    valid: &Batches<Vec<u32>>,
    test: &Batches<Vec<u32>>,
) -> Result<Summary> {
    let (optimizer, schedule) = if args.sgd {
        // Zaremba et al.: constant, then halved each epoch for the last third (here: cosine).
        (
            OptimizerConfig::sgd(0.0),
            Schedule::warmup_cosine(args.lr, 0).with_final_lr(args.lr / 20.0),
        )
    } else {
        (
            OptimizerConfig::adamw().with_weight_decay(0.0),
            Schedule::warmup_cosine(args.lr, args.steps / 20).with_final_lr(args.lr / 10.0),
        )
    };
    let config = TrainerConfig::new(args.steps, schedule)
        .with_optimizer(optimizer)
        .with_max_grad_norm(args.clip)
        .with_eval(args.eval_every, None)
        .with_checkpoint_every(args.eval_every)
        .with_keep_best(true)
        .with_log_every((args.steps / 20).max(1))
        .with_seed(args.seed);
    let trainer = common::trainer(config, args.out.as_deref(), args.resume, args.quiet);
    let out = trainer.fit(model, task, train, Some(valid))?;
    let (first_loss, last_loss) = common::loss_trend(&out.history)?;
    let model = out.best_model.unwrap_or(out.model);
    let valid_eval = evaluate(&model, task, valid, None)?;
    let test_eval = evaluate(&model, task, test, None)?;
    let accuracy = |eval: &lmforge::training::Evaluation| {
        eval.accuracy
            .context("the language-model task counts next-word hits")
    };
    let (valid_accuracy, test_accuracy) = (accuracy(&valid_eval)?, accuracy(&test_eval)?);
    if !args.quiet {
        println!(
            "best model: validation perplexity {:.2}, accuracy {:.1}%; test perplexity {:.2}, \
             accuracy {:.1}% ({} test tokens)",
            valid_eval.perplexity,
            100.0 * valid_accuracy,
            test_eval.perplexity,
            100.0 * test_accuracy,
            test_eval.count
        );
    }
    Ok(Summary {
        first_loss,
        last_loss,
        valid_perplexity: valid_eval.perplexity,
        test_perplexity: test_eval.perplexity,
        test_accuracy,
    })
}

#[allow(dead_code)]
fn main() -> Result<()> {
    run(&Args::parse())?;
    Ok(())
}
