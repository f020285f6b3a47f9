//! Character-level GPT: train on any text file, report validation loss, then sample.
//!
//! ```sh
//! cargo run --release --example gpt_char                       # built-in corpus, ~1 minute
//! cargo run --release --example gpt_char -- --data ../shared/data/tinyshakespeare.txt \
//!     --steps 5000 --context 128 --d-model 256 --out runs/shakespeare
//! ```

#[path = "../common/mod.rs"]
mod common;

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::module::Module;
use clap::Parser;
use lmforge::data::dataset::lm_blocks::LmBlocksConfig;
use lmforge::data::tokenizer::{CharTokenizer, Tokenizer};
use lmforge::models::generate::{GenerationConfig, generate};
use lmforge::models::gpt::GptConfig;
use lmforge::training::tasks::CausalLmTask;
use lmforge::training::{Batches, Schedule, TrainerConfig, evaluate, load_checkpoint_model};

/// Train a character-level GPT and sample from it.
#[derive(Parser, Debug, Clone)]
pub struct Args {
    /// A text file to train on (default: a generated corpus of simple facts).
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
    #[arg(long, default_value_t = 400)]
    pub steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Context length in characters.
    #[arg(long, default_value_t = 64)]
    pub context: usize,
    /// Model width.
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Dropout.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Peak learning rate (warmup, then cosine decay to a tenth).
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Warmup steps.
    #[arg(long, default_value_t = 50)]
    pub warmup: usize,
    /// Evaluate every this many steps.
    #[arg(long, default_value_t = 200)]
    pub eval_every: usize,
    /// Folder for checkpoints, metrics.jsonl and loss.svg.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Resume from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Skip training: load this checkpoint and only sample.
    #[arg(long)]
    pub load: Option<PathBuf>,
    /// Characters to sample.
    #[arg(long, default_value_t = 200)]
    pub sample_len: usize,
    /// Text the sample starts from.
    #[arg(long, default_value = "the ")]
    pub prompt: String,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Seed for data order, initialization and sampling.
    #[arg(long, default_value_t = 7)]
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
    /// Validation loss (nats per character) at the end.
    pub valid_loss: f64,
    /// The sampled text.
    pub sample: String,
}

/// Runs the example with `args` and returns what it measured.
pub fn run(args: &Args) -> Result<Summary> {
    let device = common::training_device(args.device.as_deref(), args.quiet)?;
    let parallel = common::parallel(args.devices.as_deref(), args.ddp, args.quiet)?;
    let text = match &args.data {
        Some(path) => common::read_text(path)?,
        None => common::facts_corpus(4000, args.seed).join("\n"),
    };
    let tokenizer = CharTokenizer::from_text(&text)?;
    let splits = LmBlocksConfig::new(args.context + 1)
        .with_fractions(0.1, 0.0)
        .from_text(&tokenizer, &text)?;
    if !args.quiet {
        println!(
            "corpus: {} characters, vocabulary {}, {} training and {} validation blocks of {}",
            text.len(),
            tokenizer.vocab_size(),
            splits.train.len(),
            splits.valid.len(),
            args.context + 1
        );
    }

    let config = GptConfig::new(tokenizer.vocab_size())
        .with_max_seq_length(args.context + 1)
        .with_d_model(args.d_model)
        .with_n_layers(args.layers)
        .with_n_heads(args.heads)
        .with_dropout(args.dropout)
        .with_attention_dropout(args.dropout);
    device.seed(args.seed);
    let mut model = config.init(&device)?;
    let task = CausalLmTask::new(0);
    let train = Batches::new(splits.train, args.batch_size).with_seed(args.seed);
    let valid = Batches::new(splits.valid, args.batch_size).in_order();

    let (first_loss, last_loss) = if let Some(path) = &args.load {
        model = load_checkpoint_model(model, path)?;
        (f64::NAN, f64::NAN)
    } else {
        let trainer_config = TrainerConfig::new(
            args.steps,
            Schedule::warmup_cosine(args.lr, args.warmup).with_final_lr(args.lr / 10.0),
        )
        .with_max_grad_norm(1.0)
        .with_eval(args.eval_every, Some(20))
        .with_checkpoint_every(args.eval_every)
        .with_log_every((args.steps / 20).max(1))
        .with_seed(args.seed);
        let trainer = common::trainer(trainer_config, args.out.as_deref(), args.resume, args.quiet);
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
        model = trained.model;
        trained.losses
    };
    let valid_eval = evaluate(&model, &task, &valid, Some(50))?;

    let prompt = tokenizer.encode(&args.prompt, false)?.ids;
    let generation = GenerationConfig::new()
        .with_max_new_tokens(args.sample_len)
        .with_do_sample(true)
        .with_temperature(args.temperature)
        .with_seed(args.seed);
    let inference = model.valid();
    let inference_device = device.clone().without_autodiff();
    // Sample in chunks, each conditioned on the last half context of what came before, so
    // samples can be longer than the context window.
    let mut text_ids = prompt;
    let mut sampled = Vec::new();
    let window = args.context.div_ceil(2);
    while sampled.len() < args.sample_len {
        let start = text_ids.len().saturating_sub(window);
        let context = text_ids[start..].to_vec();
        let n = (args.sample_len - sampled.len()).min(args.context + 1 - context.len());
        let generation = generation
            .clone()
            .with_max_new_tokens(n)
            .with_seed(args.seed + sampled.len() as u64);
        let new = generate(
            &inference,
            &[context],
            &generation,
            &inference_device,
            |_, _| {},
        )?;
        let new = new.into_iter().next().context("one sample")?;
        anyhow::ensure!(!new.is_empty(), "the model produced no token");
        text_ids.extend_from_slice(&new);
        sampled.extend(new);
    }
    let sample = tokenizer.decode(&sampled, false)?;
    if !args.quiet {
        println!(
            "training loss {first_loss:.3} -> {last_loss:.3}; validation loss {:.3} nats/char \
             ({:.3} bits/char)",
            valid_eval.loss,
            valid_eval.loss / std::f64::consts::LN_2
        );
        println!("sample:\n{}{}", args.prompt, sample);
        if let Some(out) = &args.out {
            println!("run files in {}", out.display());
        }
    }
    Ok(Summary {
        first_loss,
        last_loss,
        valid_loss: valid_eval.loss,
        sample,
    })
}

#[allow(dead_code)]
fn main() -> Result<()> {
    run(&Args::parse())?;
    Ok(())
}
