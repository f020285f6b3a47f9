//! Train an encoder-decoder Transformer to translate, then translate a held-out test split
//! with greedy decoding and with beam search and score both with corpus BLEU (sacreBLEU's
//! default: 13a tokenization, 4-grams, brevity penalty; every translation of a test source in
//! the corpus is a reference).
//!
//! Data: a TSV of sentence pairs (`--data`; Tatoeba's exports are `source<TAB>target<TAB>...`),
//! or by default a generated toy language pair (English-like sentences and a rule-based
//! "translation" that reorders words and inflects them). With `--denoise` the same model is
//! trained as a denoising auto-encoder of the target side instead (drop, blank and local
//! shuffle noise), and BLEU measures the reconstruction of clean test sentences from noisy
//! ones.
//!
//! ```sh
//! cargo run --release --example translate                      # toy language pair, ~2 minutes
//! cargo run --release --example translate -- --data fra.tsv --steps 4000 --out runs/translate
//! ```

#[path = "../common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::module::Module;
use clap::Parser;
use lmforge::data::dataset::parallel::{ParallelConfig, ParallelCorpus, SentencePair};
use lmforge::data::tokenizer::{BpeTrainOptions, HfTokenizer, Tokenizer};
use lmforge::models::generate::{BeamConfig, GenerationConfig, beam_search, generate};
use lmforge::models::seq2seq::Seq2SeqConfig;
use lmforge::objectives::CrossEntropy;
use lmforge::objectives::denoising::DenoisingConfig;
use lmforge::objectives::metrics::corpus_bleu;
use lmforge::training::tasks::{DenoisingTask, Seq2SeqTask};
use lmforge::training::{Batches, Monitor, Schedule, TrainerConfig, evaluate};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

/// Train a Transformer translator and score it with BLEU.
#[derive(Parser, Debug, Clone)]
pub struct Args {
    /// A TSV file of sentence pairs. Default: a generated toy language pair.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// 0-based column of the source sentence.
    #[arg(long, default_value_t = 0)]
    pub source_column: usize,
    /// 0-based column of the target sentence.
    #[arg(long, default_value_t = 1)]
    pub target_column: usize,
    /// Keep pairs whose sides have at most this many words.
    #[arg(long, default_value_t = 12)]
    pub max_words: usize,
    /// Use at most this many pairs of the file (a seeded random subset; 0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Held-out validation pairs.
    #[arg(long, default_value_t = 500)]
    pub valid: usize,
    /// Held-out test pairs (BLEU is computed on them).
    #[arg(long, default_value_t = 1000)]
    pub test: usize,
    /// Translate (and score) at most this many distinct test sources.
    #[arg(long, default_value_t = 500)]
    pub test_sources: usize,
    /// Train a denoising auto-encoder of the target side instead of a translator.
    #[arg(long)]
    pub denoise: bool,
    /// Backend: flex, ndarray, wgpu, ... (default: LMFORGE_DEVICE or the build's default).
    #[arg(long)]
    pub device: Option<String>,
    /// Joint (source + target) byte-level BPE vocabulary size.
    #[arg(long, default_value_t = 4000)]
    pub vocab_size: usize,
    /// Model width.
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    /// Encoder blocks (and as many decoder blocks).
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Dropout.
    #[arg(long, default_value_t = 0.1)]
    pub dropout: f64,
    /// Label smoothing of the loss.
    #[arg(long, default_value_t = 0.1)]
    pub label_smoothing: f64,
    /// Longest side in tokens (longer pairs are dropped).
    #[arg(long, default_value_t = 48)]
    pub max_tokens: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = 1500)]
    pub steps: usize,
    /// Pairs per step.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Peak learning rate (warmup over 5% of the steps, then cosine decay).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Evaluate on the validation pairs every this many steps (the best model is kept).
    #[arg(long, default_value_t = 250)]
    pub eval_every: usize,
    /// Beams of the beam search.
    #[arg(long, default_value_t = 4)]
    pub beams: usize,
    /// Folder for checkpoints, metrics.jsonl, loss.svg and translations.tsv.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Resume from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Seed (split, initialisation, batches, noise).
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
    /// Validation loss (per target token) of the kept model.
    pub valid_loss: f64,
    /// Teacher-forced target-token accuracy on the validation pairs.
    pub valid_accuracy: f64,
    /// Corpus BLEU of greedy decoding on the test sources.
    pub bleu_greedy: f64,
    /// Corpus BLEU of beam search on the test sources.
    pub bleu_beam: f64,
    /// Test sources translated.
    pub test_sources: usize,
    /// (source, beam translation, first reference) for the first test sources.
    pub samples: Vec<(String, String, String)>,
}

/// Runs the example with `args` and returns what it measured.
pub fn run(args: &Args) -> Result<Summary> {
    let device = common::training_device(args.device.as_deref(), args.quiet)?;
    let corpus = load(args)?;
    let [train, valid, test] = corpus.split(args.valid, args.test, args.seed)?;
    if !args.quiet {
        println!(
            "{} pairs: {} train, {} valid, {} test (split by source sentence)",
            corpus.len(),
            train.len(),
            valid.len(),
            test.len()
        );
    }

    let tokenizer = train_tokenizer(&train, args)?;
    let specials = tokenizer.special_tokens();
    let (pad, bos, eos, mask) = (
        specials.pad.context("<pad>")?,
        specials.bos.context("<s>")?,
        specials.eos.context("</s>")?,
        specials.mask.context("<mask>")?,
    );
    let encode = |text: &str| -> Result<Vec<u32>> { Ok(tokenizer.encode(text, false)?.ids) };
    let encode_pairs = |set: &ParallelCorpus| -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
        let mut pairs = Vec::new();
        for pair in &set.pairs {
            let (s, t) = (encode(&pair.source)?, encode(&pair.target)?);
            if s.len() < args.max_tokens && t.len() < args.max_tokens {
                pairs.push((s, t));
            }
        }
        Ok(pairs)
    };
    let (train_pairs, valid_pairs) = (encode_pairs(&train)?, encode_pairs(&valid)?);
    anyhow::ensure!(
        !train_pairs.is_empty() && !valid_pairs.is_empty(),
        "no pair fits --max-tokens {}",
        args.max_tokens
    );

    device.seed(args.seed);
    let model = Seq2SeqConfig::new(tokenizer.vocab_size())
        .with_d_model(args.d_model)
        .with_n_heads(args.heads)
        .with_n_encoder_layers(args.layers)
        .with_n_decoder_layers(args.layers)
        .with_d_ff(4 * args.d_model)
        .with_max_seq_length(args.max_tokens + 1)
        .with_dropout(args.dropout)
        .init(&device)?;
    if !args.quiet {
        println!(
            "model: {} parameters, vocabulary {} (joint BPE)",
            model.num_params(),
            tokenizer.vocab_size()
        );
    }
    let seq2seq = Seq2SeqTask::new(pad, bos, eos)
        .with_loss(CrossEntropy::new().with_label_smoothing(args.label_smoothing)?);
    let config = TrainerConfig::new(
        args.steps,
        Schedule::warmup_cosine(args.lr, (args.steps / 20).max(1)),
    )
    .with_max_grad_norm(1.0)
    .with_eval(args.eval_every, None)
    .with_checkpoint_every(args.eval_every)
    .with_monitor(Monitor::Loss)
    .with_keep_best(true)
    .with_log_every((args.steps / 20).max(1))
    .with_seed(args.seed);
    let trainer = common::trainer(config, args.out.as_deref(), args.resume, args.quiet);

    // The model to score, its losses, and the test pairs as (model input, references).
    let (model, (first_loss, last_loss), valid_eval, test_inputs) = if args.denoise {
        let task = DenoisingTask::new(seq2seq, DenoisingConfig::new(mask))?;
        let sentences = |pairs: &[(Vec<u32>, Vec<u32>)]| -> Vec<Vec<u32>> {
            pairs.iter().map(|(_, t)| t.clone()).collect()
        };
        let train = Batches::new(sentences(&train_pairs), args.batch_size).with_seed(args.seed);
        let valid = Batches::new(sentences(&valid_pairs), 64).in_order();
        let out = trainer.fit(model, &task, &train, Some(&valid))?;
        let losses = common::loss_trend(&out.history)?;
        let model = out.best_model.unwrap_or(out.model);
        let valid_eval = evaluate(&model, &task, &valid, None)?;
        // Clean test sentences, corrupted once with a fixed seed; the reference is the
        // sentence itself.
        let mut rng = StdRng::seed_from_u64(args.seed ^ 0x5eed);
        let mut inputs = Vec::new();
        for pair in test.pairs.iter().take(args.test_sources) {
            let clean = encode(&pair.target)?;
            if clean.len() < args.max_tokens {
                let noisy = task.noise.corrupt(&clean, &mut rng);
                let shown = tokenizer.decode(&noisy, true)?;
                inputs.push((shown, noisy, vec![pair.target.clone()]));
            }
        }
        (model, losses, valid_eval, inputs)
    } else {
        let train = Batches::new(train_pairs, args.batch_size).with_seed(args.seed);
        let valid = Batches::new(valid_pairs, 64).in_order();
        let out = trainer.fit(model, &seq2seq, &train, Some(&valid))?;
        let losses = common::loss_trend(&out.history)?;
        let model = out.best_model.unwrap_or(out.model);
        let valid_eval = evaluate(&model, &seq2seq, &valid, None)?;
        let mut inputs = Vec::new();
        for (source, references) in references(&test).into_iter().take(args.test_sources) {
            let ids = encode(&source)?;
            if ids.len() < args.max_tokens {
                inputs.push((source, ids, references));
            }
        }
        (model, losses, valid_eval, inputs)
    };
    anyhow::ensure!(!test_inputs.is_empty(), "no test source fits --max-tokens");

    let inference = device.clone().without_autodiff();
    let model = model.valid();
    let decode = |ids: &[u32]| -> Result<String> {
        let ids: Vec<u32> = ids.iter().copied().filter(|&t| t != eos).collect();
        Ok(tokenizer.decode(&ids, true)?.trim().to_string())
    };
    let generation = GenerationConfig::new()
        .with_max_new_tokens(args.max_tokens)
        .with_eos_token_ids(vec![eos]);
    let mut greedy = Vec::new();
    for chunk in test_inputs.chunks(64) {
        let sources: Vec<Vec<u32>> = chunk.iter().map(|(_, ids, _)| with_eos(ids, eos)).collect();
        let (src, mask_pad) = padded(&sources, pad, &inference);
        let decoder = model.decoder(src, mask_pad);
        let prompts = vec![vec![bos]; chunk.len()];
        for row in generate(&decoder, &prompts, &generation, &inference, |_, _| {})? {
            greedy.push(decode(&row)?);
        }
    }
    let mut beam = Vec::new();
    let beam_config = BeamConfig::new(args.beams);
    for (_, ids, _) in &test_inputs {
        let (src, _) = padded(&[with_eos(ids, eos)], pad, &inference);
        let decoder = model.decoder(src, None);
        let row = beam_search(&decoder, &[bos], &generation, &beam_config, &inference)?;
        beam.push(decode(&row)?);
    }
    let refs: Vec<Vec<String>> = test_inputs.iter().map(|(_, _, r)| r.clone()).collect();
    let bleu_greedy = corpus_bleu(&greedy, &refs)?;
    let bleu_beam = corpus_bleu(&beam, &refs)?;
    let samples: Vec<(String, String, String)> = test_inputs
        .iter()
        .zip(&beam)
        .take(8)
        .map(|((source, _, r), hyp)| (source.clone(), hyp.clone(), r[0].clone()))
        .collect();
    let valid_accuracy = valid_eval.accuracy.context("no accuracy")?;
    let what = if args.denoise {
        "reconstruction"
    } else {
        "translation"
    };
    if !args.quiet {
        println!(
            "kept model: validation loss {:.3}, token accuracy {:.1}%",
            valid_eval.loss,
            100.0 * valid_accuracy
        );
        println!(
            "test {what} BLEU on {} sources: greedy {:.2}, beam ({} beams) {:.2}",
            test_inputs.len(),
            bleu_greedy.score,
            args.beams,
            bleu_beam.score
        );
        for (source, hyp, reference) in &samples {
            println!("  {source}\n    -> {hyp}\n    (reference: {reference})");
        }
    }
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        let mut lines = String::from("source\tgreedy\tbeam\treferences\n");
        for (((source, _, r), g), b) in test_inputs.iter().zip(&greedy).zip(&beam) {
            lines.push_str(&format!("{source}\t{g}\t{b}\t{}\n", r.join(" | ")));
        }
        std::fs::write(out.join("translations.tsv"), lines)?;
        let metrics = serde_json::json!({
            "task": what,
            "data": args.data.as_ref().map(|p| p.display().to_string()),
            "pairs": [train.len(), valid.len(), test.len()],
            "test_sources": test_inputs.len(),
            "valid_loss": valid_eval.loss,
            "valid_accuracy": valid_accuracy,
            "bleu_greedy": bleu_greedy.score,
            "bleu_beam": bleu_beam.score,
            "beams": args.beams,
            "steps": args.steps,
        });
        std::fs::write(out.join("bleu.json"), format!("{metrics}\n"))?;
    }
    Ok(Summary {
        first_loss,
        last_loss,
        valid_loss: valid_eval.loss,
        valid_accuracy,
        bleu_greedy: bleu_greedy.score,
        bleu_beam: bleu_beam.score,
        test_sources: test_inputs.len(),
        samples,
    })
}

fn with_eos(ids: &[u32], eos: u32) -> Vec<u32> {
    ids.iter().copied().chain([eos]).collect()
}

/// Right-padded ids `[rows, longest]` and the padding mask (when any row is short).
fn padded(
    rows: &[Vec<u32>],
    pad: u32,
    device: &burn::tensor::Device,
) -> (
    burn::tensor::Tensor<2, burn::tensor::Int>,
    Option<burn::tensor::Tensor<2, burn::tensor::Bool>>,
) {
    use burn::tensor::{Tensor, TensorData};
    let length = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = vec![i64::from(pad); rows.len() * length];
    let mut padding = vec![true; rows.len() * length];
    for (r, row) in rows.iter().enumerate() {
        for (t, &id) in row.iter().enumerate() {
            ids[r * length + t] = i64::from(id);
            padding[r * length + t] = false;
        }
    }
    let shape = [rows.len(), length];
    let mask = rows
        .iter()
        .any(|r| r.len() < length)
        .then(|| Tensor::from_data(TensorData::new(padding, shape), device));
    (Tensor::from_data(TensorData::new(ids, shape), device), mask)
}

/// The test sources in first-seen order, each with every translation the test set has for it.
fn references(test: &ParallelCorpus) -> Vec<(String, Vec<String>)> {
    let mut order: Vec<(String, Vec<String>)> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for pair in &test.pairs {
        let i = *at.entry(pair.source.as_str()).or_insert_with(|| {
            order.push((pair.source.clone(), Vec::new()));
            order.len() - 1
        });
        order[i].1.push(pair.target.clone());
    }
    order
}

/// A byte-level BPE vocabulary learnt from both sides of the training pairs.
fn train_tokenizer(train: &ParallelCorpus, args: &Args) -> Result<HfTokenizer> {
    let file = std::env::temp_dir().join(format!(
        "lmforge-translate-{}-{}.txt",
        std::process::id(),
        train.len()
    ));
    let mut text = String::new();
    for pair in &train.pairs {
        text.push_str(&pair.source);
        text.push('\n');
        text.push_str(&pair.target);
        text.push('\n');
    }
    std::fs::write(&file, text)?;
    let tokenizer = HfTokenizer::train_bpe(
        &[&file],
        &BpeTrainOptions {
            vocab_size: args.vocab_size,
            min_frequency: 2,
            special_tokens: ["<pad>", "<s>", "</s>", "<mask>"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
    );
    let _ = std::fs::remove_file(&file);
    Ok(tokenizer?)
}

fn load(args: &Args) -> Result<ParallelCorpus> {
    let mut corpus = match &args.data {
        Some(path) => ParallelConfig {
            source_column: args.source_column,
            target_column: args.target_column,
            max_words: Some(args.max_words),
            ..Default::default()
        }
        .read(path)
        .with_context(|| format!("reading {}", path.display()))?,
        None => toy_language_pair(12_000, args.seed),
    };
    if args.limit > 0 && corpus.len() > args.limit {
        let mut rng = StdRng::seed_from_u64(args.seed);
        let mut index: Vec<usize> = (0..corpus.len()).collect();
        rand::seq::SliceRandom::shuffle(&mut index[..], &mut rng);
        index.truncate(args.limit);
        index.sort_unstable();
        corpus.pairs = index.into_iter().map(|i| corpus.pairs[i].clone()).collect();
    }
    Ok(corpus)
}

/// `n` sentence pairs of a toy language pair: English-like sentences (subject, verb, object,
/// optional adjective and place) and a rule-based "translation" that maps every word through
/// a fixed dictionary, puts adjectives after their noun, the verb at the end (subject, object,
/// verb order) and marks plural nouns with a suffix. Only for trying the pipeline without a
/// corpus: real results need `--data`.
pub fn toy_language_pair(n: usize, seed: u64) -> ParallelCorpus {
    const NOUNS: [(&str, &str); 12] = [
        ("dog", "hund"),
        ("cat", "katu"),
        ("child", "lapso"),
        ("teacher", "opetar"),
        ("bird", "lintu"),
        ("farmer", "talon"),
        ("book", "kirja"),
        ("apple", "omena"),
        ("house", "talo"),
        ("river", "joki"),
        ("letter", "kirje"),
        ("song", "laulu"),
    ];
    const VERBS: [(&str, &str); 8] = [
        ("sees", "naki"),
        ("finds", "loysi"),
        ("likes", "pitaa"),
        ("writes", "kirjoitti"),
        ("carries", "kantoi"),
        ("wants", "halusi"),
        ("hears", "kuuli"),
        ("draws", "piirsi"),
    ];
    const ADJECTIVES: [(&str, &str); 8] = [
        ("big", "suuri"),
        ("small", "pieni"),
        ("old", "vanha"),
        ("young", "nuori"),
        ("red", "punainen"),
        ("quiet", "hiljainen"),
        ("happy", "iloinen"),
        ("strange", "outo"),
    ];
    const PLACES: [(&str, &str); 5] = [
        ("in the garden", "puutarhassa"),
        ("at home", "kotona"),
        ("near the river", "joen lahella"),
        ("in the morning", "aamulla"),
        ("at school", "koulussa"),
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    let pick = |rng: &mut StdRng| -> (String, String) {
        let &(noun, noun_t) = NOUNS.choose(rng).expect("not empty");
        let plural = rand::Rng::random_bool(rng, 0.3);
        let (mut en, mut xx) = if plural {
            (format!("the {noun}s"), format!("{noun_t}t"))
        } else {
            (format!("the {noun}"), noun_t.to_string())
        };
        if rand::Rng::random_bool(rng, 0.5) {
            let &(adj, adj_t) = ADJECTIVES.choose(rng).expect("not empty");
            en = en.replacen("the ", &format!("the {adj} "), 1);
            xx = format!("{xx} {adj_t}");
        }
        (en, xx)
    };
    let pairs = (0..n)
        .map(|_| {
            let (subject, subject_t) = pick(&mut rng);
            let (object, object_t) = pick(&mut rng);
            let &(verb, verb_t) = VERBS.choose(&mut rng).expect("not empty");
            let mut source = format!("{subject} {verb} {object}");
            let mut target = format!("{subject_t} {object_t} {verb_t}");
            if rand::Rng::random_bool(&mut rng, 0.4) {
                let &(place, place_t) = PLACES.choose(&mut rng).expect("not empty");
                source = format!("{source} {place}");
                target = format!("{place_t} {target}");
            }
            let mut capital = source.remove(0).to_uppercase().to_string();
            capital.push_str(&source);
            SentencePair {
                source: format!("{capital}."),
                target: format!("{target}."),
            }
        })
        .collect();
    ParallelCorpus { pairs }
}

#[allow(dead_code)]
fn main() -> Result<()> {
    run(&Args::parse())?;
    Ok(())
}
