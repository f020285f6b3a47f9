//! Fine-tune BERT for sentence classification (sentiment) on TSV data and report accuracy.
//! The encoder is random (with a WordPiece vocabulary learnt from the data) or imported from a
//! HuggingFace folder; embeddings or the first blocks can be frozen and the head can learn
//! faster than the encoder.
//!
//! ```sh
//! cargo run --release --example bert_classify                  # built-in reviews, ~1 minute
//! cargo run --release --example bert_classify -- --data ../shared/data/sst2 \
//!     --pretrained path/to/all-MiniLM-L6-v2 --steps 1000 --lr 5e-5 --head-lr-factor 20
//! ```

#[path = "../common/mod.rs"]
mod common;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use lmforge::data::batcher::BatcherConfig;
use lmforge::data::dataset::tsv::{TsvConfig, TsvDataset};
use lmforge::data::tokenizer::{Encoding, Tokenizer};
use lmforge::models::bert::BertForSequenceClassification;
use lmforge::training::params::{embeddings_pattern, first_blocks_pattern, freeze_matching};
use lmforge::training::tasks::SequenceClassificationTask;
use lmforge::training::{Batches, Monitor, OptimizerConfig, Schedule, TrainerConfig, evaluate};

/// Fine-tune BERT for sentence classification.
#[derive(Parser, Debug, Clone)]
pub struct Args {
    /// A folder with `train.tsv`, `dev.tsv` and `test.tsv` (`sentence<TAB>label`, no header).
    /// Default: generated movie reviews.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A HuggingFace BERT folder (config.json, model.safetensors, tokenizer.json) to start
    /// from. Default: a small random BERT.
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
    /// Freeze the embeddings.
    #[arg(long)]
    pub freeze_embeddings: bool,
    /// Freeze the first N encoder blocks.
    #[arg(long, default_value_t = 0)]
    pub freeze_layers: usize,
    /// Evaluate on the dev set every this many steps (the best model is kept).
    #[arg(long, default_value_t = 100)]
    pub eval_every: usize,
    /// Folder for checkpoints, metrics.jsonl and loss.svg.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Resume from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// After training, compress the kept model (int8, int4, 50% magnitude pruning, 25% of the
    /// heads removed; none fine-tuned) and print size, test accuracy and latency of each.
    #[arg(long)]
    pub compress: bool,
    /// Seed.
    #[arg(long, default_value_t = 5)]
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
    /// Dev accuracy of the kept model.
    pub dev_accuracy: f64,
    /// Test accuracy of the kept model.
    pub test_accuracy: f64,
    /// With `--compress`: the compressed variants against the kept model.
    pub compression: Option<lmforge::compression::report::Report>,
}

type Example = (String, i64);

fn load(args: &Args) -> Result<[Vec<Example>; 3]> {
    let Some(dir) = &args.data else {
        let all = common::sentiment_corpus(3000, args.seed);
        let (train, rest) = all.split_at(2400);
        let (dev, test) = rest.split_at(300);
        return Ok([train.to_vec(), dev.to_vec(), test.to_vec()]);
    };
    let config = TsvConfig {
        text_column: lmforge::data::dataset::tsv::Column::Index(0),
        label_column: lmforge::data::dataset::tsv::Column::Index(1),
        ..Default::default()
    };
    let train = config.read(dir.join("train.tsv"), None)?;
    let examples = |d: TsvDataset| -> Result<Vec<Example>> {
        d.examples
            .into_iter()
            .map(|e| {
                let name = d.labels.name(e.label).context("label")?;
                Ok((
                    e.text,
                    name.parse::<i64>()
                        .with_context(|| format!("label `{name}`"))?,
                ))
            })
            .collect()
    };
    let dev = config.read(dir.join("dev.tsv"), Some(&train.labels))?;
    let test = config.read(dir.join("test.tsv"), Some(&train.labels))?;
    Ok([examples(train)?, examples(dev)?, examples(test)?])
}

/// Runs the example with `args` and returns what it measured.
pub fn run(args: &Args) -> Result<Summary> {
    let device = common::training_device(args.device.as_deref(), args.quiet)?;
    let [train, dev, test] = load(args)?;
    let n_labels = train.iter().map(|e| e.1).max().unwrap_or(1) as usize + 1;
    device.seed(args.seed);
    let texts: Vec<&str> = train.iter().map(|e| e.0.as_str()).collect();
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
    let mut model = BertForSequenceClassification::from_encoder(bert, n_labels, &device)?;
    let mut patterns = Vec::new();
    if args.freeze_embeddings {
        patterns.push(embeddings_pattern());
    }
    patterns.extend(first_blocks_pattern(args.freeze_layers));
    if !patterns.is_empty() {
        let (frozen, count) = freeze_matching(model, &patterns)?;
        model = frozen;
        if !args.quiet {
            println!("froze {count} parameter tensors");
        }
    }

    let encode = |examples: &[Example]| -> Result<Vec<(Encoding, i64)>> {
        examples
            .iter()
            .map(|(text, label)| Ok((tokenizer.encode(text, true)?, *label)))
            .collect()
    };
    let pad = tokenizer.special_tokens().pad.context("no [PAD]")?;
    let batcher = BatcherConfig::new(pad)
        .with_max_length(args.max_length)
        .with_truncate(true)
        .with_vocab_size(tokenizer.vocab_size())
        .init()?;
    let task = SequenceClassificationTask::new(batcher);
    let train = Batches::new(encode(&train)?, args.batch_size).with_seed(args.seed);
    let dev = Batches::new(encode(&dev)?, 64).in_order();
    let test = Batches::new(encode(&test)?, 64).in_order();
    if !args.quiet {
        println!(
            "{} training, {} dev, {} test sentences; {n_labels} labels",
            train.n_items(),
            dev.n_items(),
            test.n_items()
        );
    }

    let optimizer = OptimizerConfig::adamw().with_lr_group(r"^classifier\.", args.head_lr_factor);
    let config = TrainerConfig::new(
        args.steps,
        Schedule::warmup_linear(args.lr, args.steps / 10),
    )
    .with_optimizer(optimizer)
    .with_max_grad_norm(1.0)
    .with_eval(args.eval_every, None)
    .with_checkpoint_every(args.eval_every)
    .with_monitor(Monitor::Accuracy)
    .with_keep_best(true)
    .with_log_every((args.steps / 20).max(1))
    .with_seed(args.seed);
    let trainer = common::trainer(config, args.out.as_deref(), args.resume, args.quiet);
    let out = trainer.fit(model, &task, &train, Some(&dev))?;
    let (first_loss, last_loss) = common::loss_trend(&out.history)?;
    let model = out.best_model.unwrap_or(out.model);
    let dev_eval = evaluate(&model, &task, &dev, None)?;
    let test_eval = evaluate(&model, &task, &test, None)?;
    let (dev_accuracy, test_accuracy) = (
        dev_eval.accuracy.context("no accuracy")?,
        test_eval.accuracy.context("no accuracy")?,
    );
    if !args.quiet {
        println!(
            "kept model: dev accuracy {:.2}%, test accuracy {:.2}% ({} test sentences)",
            100.0 * dev_accuracy,
            100.0 * test_accuracy,
            test_eval.count
        );
    }
    let compression = if args.compress {
        Some(compress(args, &model, &task, &test)?)
    } else {
        None
    };
    Ok(Summary {
        first_loss,
        last_loss,
        dev_accuracy,
        test_accuracy,
        compression,
    })
}

/// Quantizes and prunes `model` (no fine-tuning afterwards) and reports each variant's file
/// size, test accuracy and forward latency on one test batch.
fn compress(
    args: &Args,
    model: &BertForSequenceClassification,
    task: &SequenceClassificationTask,
    test: &Batches<(Encoding, i64)>,
) -> Result<lmforge::compression::report::Report> {
    use burn::module::Module;
    use lmforge::compression::prune::{
        PruneConfig, head_importance, keep_most_important, prune_heads, prune_magnitude,
    };
    use lmforge::compression::quantize::{self, QuantScheme, QuantizeConfig};
    use lmforge::compression::report::{
        Report, ReportRow, file_bytes, initialize_parameters, interleaved_latencies,
        measure_resident, nonzero_parameters,
    };
    use lmforge::models::bert::BertInput;

    let dir = args.out.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("lmforge-classify-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)?;
    let items = test.batch(0, 0);
    let encodings: Vec<Encoding> = items.iter().map(|e| e.0.clone()).collect();
    let inference = model.devices()[0].clone().without_autodiff();
    let batch = task.batcher.batch(&encodings, &inference)?;
    let seq_length = batch.input_ids.dims()[1];
    let input = || {
        BertInput::new(batch.input_ids.clone())
            .with_token_types(batch.type_ids.clone())
            .with_mask_pad(batch.padding_mask.clone())
    };
    // Each variant with the resident memory its weights took when it was loaded from its file
    // onto the inference device (where quantized layers stay packed); pruned variants are
    // float models of the baseline's memory and are not measured.
    type Variant = (String, BertForSequenceClassification, PathBuf, Option<u64>);
    let mut variants: Vec<Variant> = Vec::new();
    let float = dir.join("float32.bpk");
    lmforge::models::pretrained::save(model, &float)?;
    // The float model's weights: a fresh model of the same shape, every parameter initialized.
    let n_labels = model.classifier.weight.dims()[1];
    let (fresh, weights) = measure_resident(|| {
        let fresh = model
            .bert
            .config()
            .init_sequence_classification(n_labels, &inference);
        if let Ok(m) = &fresh {
            initialize_parameters(m);
        }
        fresh
    });
    drop(fresh?);
    variants.push(("float32".into(), model.clone(), float, weights));
    for (name, scheme) in [
        ("int8 per channel", QuantScheme::Int8PerChannel),
        ("int4 blocks of 32", QuantScheme::int4()),
    ] {
        let file = dir.join(format!("{}.safetensors", name.replace(' ', "-")));
        quantize::quantize(model.clone(), &QuantizeConfig::new(scheme))?.save(&file)?;
        // What a user gets back from the file.
        let (loaded, weights) = measure_resident(|| {
            let loaded = quantize::load(model.valid(), &file);
            if let Ok(q) = &loaded {
                initialize_parameters(&q.model);
            }
            loaded
        });
        variants.push((name.into(), loaded?.model, file, weights));
    }
    let (sparse, _) = prune_magnitude(model.clone(), &PruneConfig::new(0.5))?;
    let file = dir.join("magnitude-50.bpk");
    lmforge::models::pretrained::save(&sparse, &file)?;
    variants.push(("50% magnitude, one-shot".into(), sparse, file, None));
    let keep = keep_most_important(&head_importance(model), 0.25)?;
    let heads = prune_heads(model.clone(), &keep)?;
    let file = dir.join("heads-75.bpk");
    lmforge::models::pretrained::save(&heads, &file)?;
    variants.push(("25% of heads removed".into(), heads, file, None));

    let mut report = Report::new(
        "test accuracy",
        false,
        format!(
            "median of 10 forward passes (variants interleaved), one test batch of {} x {} tokens",
            items.len(),
            seq_length
        ),
    );
    let runners: Vec<BertForSequenceClassification> =
        variants.iter().map(|(_, m, _, _)| m.valid()).collect();
    let latencies = interleaved_latencies(&runners, 10, |runner| {
        let _ = runner.forward(input()).logits.into_data();
    });
    for ((method, variant, file, weights_bytes), latency) in variants.into_iter().zip(latencies) {
        let accuracy = evaluate(&variant, task, test, None)?
            .accuracy
            .context("no accuracy")?;
        report.push(ReportRow {
            method,
            parameters: variant.num_params(),
            nonzero: nonzero_parameters(&variant),
            file_bytes: file_bytes(&file),
            quality: accuracy,
            latency_ms: latency.as_secs_f64() * 1e3,
            weights_bytes,
        });
    }
    if !args.quiet {
        println!("\n{}", report.table());
    }
    if args.out.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}

#[allow(dead_code)]
fn main() -> Result<()> {
    run(&Args::parse())?;
    Ok(())
}
