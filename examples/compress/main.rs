//! Compress a character-level GPT every way lmforge can, and report size, quality and speed.
//!
//! Trains a 4-block GPT (or loads one a `gpt_char` run saved), then measures, against it:
//! int8 and int4 weight quantization, one-shot and gradual 50% magnitude pruning, removal of
//! 25% of the attention heads (then fine-tuning), and distillation into a 2-block student.
//!
//! ```sh
//! cargo run --release --example compress                      # built-in corpus, ~5 minutes
//! cargo run --release --example compress -- --data ../shared/data/tinyshakespeare.txt \
//!     --load runs/shakespeare/checkpoint.lmf --context 64 --d-model 128 --out runs/compress
//! ```

#[path = "../common/mod.rs"]
mod common;

use std::path::PathBuf;

use anyhow::Result;
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Parser;
use lmforge::compression::distill::{CausalLmDistillationTask, DistillationConfig};
use lmforge::compression::prune::{
    GradualPruning, PruneConfig, PrunedTask, head_importance, keep_most_important, prune_heads,
    prune_magnitude,
};
use lmforge::compression::quantize::{self, QuantScheme, QuantizeConfig};
use lmforge::compression::report::{
    Report, ReportRow, file_bytes, initialize_parameters, interleaved_latencies, measure_resident,
    nonzero_parameters,
};
use lmforge::data::dataset::lm_blocks::LmBlocksConfig;
use lmforge::data::tokenizer::{CharTokenizer, Tokenizer};
use lmforge::models::gpt::{Gpt, GptConfig};
use lmforge::training::tasks::CausalLmTask;
use lmforge::training::{Batches, Schedule, Task, TrainerConfig, evaluate, load_checkpoint_model};

/// Compress a character-level GPT and report size, quality and latency.
#[derive(Parser, Debug, Clone)]
pub struct Args {
    /// A text file (default: a generated corpus of simple facts).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Backend: flex, ndarray, wgpu, ... (default: LMFORGE_DEVICE or the build's default).
    #[arg(long)]
    pub device: Option<String>,
    /// Load the model from this `checkpoint.lmf` (a gpt_char run with the same sizes and
    /// data) instead of training one.
    #[arg(long)]
    pub load: Option<PathBuf>,
    /// Training steps of the model to compress.
    #[arg(long, default_value_t = 300)]
    pub steps: usize,
    /// Fine-tuning steps after pruning (gradual pruning runs within them).
    #[arg(long, default_value_t = 60)]
    pub finetune_steps: usize,
    /// Training steps of the distilled student.
    #[arg(long, default_value_t = 200)]
    pub distill_steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Context length in characters.
    #[arg(long, default_value_t = 64)]
    pub context: usize,
    /// Model width.
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    /// Transformer blocks of the model (the student gets half).
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Validation batches the quality is measured on.
    #[arg(long, default_value_t = 50)]
    pub eval_batches: usize,
    /// Sequences per timed forward pass.
    #[arg(long, default_value_t = 8)]
    pub latency_batch: usize,
    /// Timed forward passes per variant, interleaved across variants (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub repeats: usize,
    /// Folder for the compressed model files and report.md (default: a temporary folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed for data order and initialization.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// No progress output.
    #[arg(long)]
    pub quiet: bool,
}

/// Trains (quietly unless asked) with the example's schedule.
fn train<T: Task<Gpt>>(
    args: &Args,
    model: Gpt,
    task: &T,
    train: &Batches<T::Item>,
    steps: usize,
    lr: f64,
) -> Result<Gpt> {
    let config = TrainerConfig::new(
        steps,
        Schedule::warmup_cosine(lr, (steps / 10).max(1)).with_final_lr(lr / 10.0),
    )
    .with_max_grad_norm(1.0)
    .with_log_every((steps / 10).max(1))
    .with_seed(args.seed);
    let out = common::trainer(config, None, false, args.quiet).fit(model, task, train, None)?;
    Ok(out.model)
}

/// Runs the example and returns the report.
pub fn run(args: &Args) -> Result<Report> {
    let device = common::training_device(args.device.as_deref(), args.quiet)?;
    let text = match &args.data {
        Some(path) => common::read_text(path)?,
        None => common::facts_corpus(4000, args.seed).join("\n"),
    };
    let tokenizer = CharTokenizer::from_text(&text)?;
    let splits = LmBlocksConfig::new(args.context + 1)
        .with_fractions(0.1, 0.0)
        .from_text(&tokenizer, &text)?;
    let task = CausalLmTask::new(0);
    let train_data = Batches::new(splits.train, args.batch_size).with_seed(args.seed);
    let valid = Batches::new(splits.valid, args.batch_size).in_order();
    let config = GptConfig::new(tokenizer.vocab_size())
        .with_max_seq_length(args.context + 1)
        .with_d_model(args.d_model)
        .with_n_layers(args.layers)
        .with_n_heads(args.heads)
        .with_dropout(0.0)
        .with_attention_dropout(0.0);
    device.seed(args.seed);
    let mut model = config.init(&device)?;
    model = match &args.load {
        Some(path) => load_checkpoint_model(model, path)?,
        None => {
            say(args, &format!("training the {}-block model", args.layers));
            train(args, model, &task, &train_data, args.steps, args.lr)?
        }
    };

    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("lmforge-compress-{}", std::process::id())),
    };
    std::fs::create_dir_all(&out)?;
    let inference = device.clone().without_autodiff();
    let latency_input = {
        let n = args.latency_batch * args.context;
        let ids: Vec<i64> = (0..n)
            .map(|i| (i % tokenizer.vocab_size()) as i64)
            .collect();
        Tensor::<2, Int>::from_data(
            TensorData::new(ids, [args.latency_batch, args.context]),
            &inference,
        )
    };
    // Quality and size now; latency at the end, all variants interleaved, so that a busy
    // machine slows every variant alike.
    let mut runners: Vec<Gpt> = Vec::new();
    let mut measure = |method: &str,
                       model: &Gpt,
                       file: PathBuf,
                       weights_bytes: Option<u64>|
     -> Result<ReportRow> {
        let quality = evaluate(model, &task, &valid, Some(args.eval_batches))?.perplexity;
        runners.push(model.valid());
        let row = ReportRow {
            method: method.to_string(),
            parameters: model.num_params(),
            nonzero: nonzero_parameters(model),
            file_bytes: file_bytes(&file),
            quality,
            latency_ms: f64::NAN,
            weights_bytes,
        };
        say(
            args,
            &format!(
                "{method}: perplexity {:.4}, file {} bytes",
                row.quality, row.file_bytes
            ),
        );
        Ok(row)
    };
    let save_float = |model: &Gpt, name: &str| -> Result<PathBuf> {
        let file = out.join(format!("{name}.bpk"));
        lmforge::models::pretrained::save(model, &file)?;
        Ok(file)
    };
    let mut report = Report::new(
        "validation perplexity",
        true,
        format!(
            "median of {} forward passes (variants interleaved, one warm-up each), batch {} x {} tokens, {}",
            args.repeats,
            args.latency_batch,
            args.context,
            describe(&inference)
        ),
    );

    // Weights in memory: the growth of resident memory while a variant is built (float: a
    // fresh model of the same config) or loaded from its file (quantized) on the inference
    // device, where quantized layers stay packed.
    let float_file = save_float(&model, "float32")?;
    let (fresh, float_weights) = measure_resident(|| -> Result<Gpt> {
        let model = config.init(&inference)?;
        initialize_parameters(&model);
        Ok(model)
    });
    drop(fresh?);
    report.push(measure("float32", &model, float_file, float_weights)?);

    for (name, scheme) in [
        ("int8 per channel", QuantScheme::Int8PerChannel),
        ("int4 blocks of 32", QuantScheme::int4()),
    ] {
        let quantized = quantize::quantize(model.clone(), &QuantizeConfig::new(scheme))?;
        let file = out.join(format!("{}.safetensors", name.replace(' ', "-")));
        quantized.save(&file)?;
        drop(quantized);
        // Measure what a user gets back from the file.
        let (loaded, weights) = measure_resident(|| -> Result<Gpt> {
            let model = quantize::load(config.init(&inference)?, &file)?.model;
            initialize_parameters(&model);
            Ok(model)
        });
        report.push(measure(name, &loaded?, file, weights)?);
    }

    let fifty = PruneConfig::new(0.5);
    let (pruned, _) = prune_magnitude(model.clone(), &fifty)?;
    report.push(measure(
        "50% magnitude, one-shot",
        &pruned,
        save_float(&pruned, "magnitude-one-shot")?,
        None,
    )?);

    say(args, "gradual pruning to 50% while fine-tuning");
    let every = (args.finetune_steps / 10).max(1);
    let schedule = GradualPruning::new(fifty.clone(), 0, 6 * every, every);
    let gradual_task = PrunedTask::gradual(task.clone(), schedule)?;
    let gradual = train(
        args,
        model.clone(),
        &gradual_task,
        &train_data,
        args.finetune_steps.max(6 * every),
        args.lr / 3.0,
    )?;
    report.push(measure(
        "50% magnitude, gradual + fine-tune",
        &gradual,
        save_float(&gradual, "magnitude-gradual")?,
        None,
    )?);

    say(args, "removing 25% of the heads, then fine-tuning");
    let keep = keep_most_important(&head_importance(&model), 0.25)?;
    let heads = prune_heads(model.clone(), &keep)?;
    let heads = train(
        args,
        heads,
        &task,
        &train_data,
        args.finetune_steps,
        args.lr / 3.0,
    )?;
    report.push(measure(
        "25% of heads removed + fine-tune",
        &heads,
        save_float(&heads, "heads-pruned")?,
        None,
    )?);

    let student_layers = (args.layers / 2).max(1);
    say(
        args,
        &format!("distilling into a {student_layers}-block student"),
    );
    device.seed(args.seed + 1);
    let student_config = config.clone().with_n_layers(student_layers);
    let distill = CausalLmDistillationTask::new(model.clone(), DistillationConfig::default())?;
    let student = train(
        args,
        student_config.init(&device)?,
        &distill,
        &train_data,
        args.distill_steps,
        args.lr,
    )?;
    report.push(measure(
        &format!("distilled into {student_layers} blocks"),
        &student,
        save_float(&student, "distilled")?,
        None,
    )?);

    say(args, "timing the forward pass of every variant");
    let latencies = interleaved_latencies(&runners, args.repeats, |runner| {
        let _ = runner.forward(latency_input.clone(), None).into_data();
    });
    for (row, latency) in report.rows.iter_mut().zip(latencies) {
        row.latency_ms = latency.as_secs_f64() * 1e3;
    }

    let table = report.table();
    std::fs::write(out.join("report.md"), &table)?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    if !args.quiet {
        println!("\n{table}");
        println!("files in {}", out.display());
    }
    if args.out.is_none() {
        let _ = std::fs::remove_dir_all(&out);
    }
    Ok(report)
}

fn say(args: &Args, message: &str) {
    if !args.quiet {
        println!("{message}");
    }
}

fn describe(device: &Device) -> String {
    format!("{device:?}")
}

#[allow(dead_code)]
fn main() -> Result<()> {
    run(&Args::parse())?;
    Ok(())
}
