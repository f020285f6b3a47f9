//! Pieces the training examples share: device selection and the small corpora they generate
//! when no data path is given (seeded, so every run sees the same text).

#![allow(dead_code)]

use anyhow::{Context, Result};
use burn::tensor::Device;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

/// The examples' global allocator: mimalloc keeps freed memory for reuse, where the system
/// allocator returns each large block (a training step's activations) to the kernel and pays
/// page faults to get it back on the next step (docs/performance.md has the measurement).
/// Applications choose their own allocator; lmforge works with any. (Not in the test binary
/// that includes every example as a module: one allocator per program.)
#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tells the examples' mimalloc to keep freed memory committed instead of purging it after a
/// delay: a training step frees and reallocates the same activations and gradients, and each
/// purged block comes back as freshly faulted, kernel-zeroed huge pages on the next step
/// (measured on the BERT case: 17 000 page faults in 12 steps before, 500 after; about 4% of
/// the step). A `MIMALLOC_PURGE_DELAY` set in the environment is left as it is. Called by
/// [`training_device`].
fn keep_freed_memory() {
    // mimalloc 3's `mi_option_purge_delay` (its position in `mi_option_e`, mimalloc.h; the
    // default is 1000 ms); -1 turns purging off.
    #[cfg(not(test))]
    // SAFETY: plain version and option accessors of the linked mimalloc.
    unsafe {
        const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        let major = libmimalloc_sys::mi_version() / 10_000;
        if major == 3 && std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
        }
    }
}

/// The autodiff device for `name` (`flex`, `ndarray`, `wgpu`, ...), or the `LMFORGE_DEVICE`
/// variable, or the build's default backend; prints what was chosen.
pub fn training_device(name: Option<&str>, quiet: bool) -> Result<Device> {
    keep_freed_memory();
    let selected = lmforge::device::select_named(name)?;
    if !quiet {
        println!("device: {selected}");
    }
    Ok(selected.device.autodiff())
}

/// The trainer every example uses: `config` with a progress display unless `quiet`, writing
/// its run files into `out` when given and, with `resume`, continuing from
/// `out/checkpoint.lmf`.
pub fn trainer(
    config: lmforge::training::TrainerConfig,
    out: Option<&std::path::Path>,
    resume: bool,
    quiet: bool,
) -> lmforge::training::Trainer {
    use lmforge::training::{Progress, Trainer, files};
    let progress = if quiet {
        Progress::Silent
    } else {
        Progress::Auto
    };
    let mut trainer = Trainer::new(config.with_progress(progress));
    if let Some(out) = out {
        trainer = trainer.with_output_dir(out);
        if resume {
            trainer = trainer.resume_from(out.join(files::CHECKPOINT));
        }
    }
    trainer
}

/// Reads a text file, naming it in the error.
pub fn read_text(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

const CAPITALS: [(&str, &str); 10] = [
    ("paris", "france"),
    ("rome", "italy"),
    ("berlin", "germany"),
    ("madrid", "spain"),
    ("lisbon", "portugal"),
    ("vienna", "austria"),
    ("athens", "greece"),
    ("dublin", "ireland"),
    ("oslo", "norway"),
    ("warsaw", "poland"),
];
const SOUNDS: [(&str, &str); 8] = [
    ("dog", "barks"),
    ("cat", "meows"),
    ("cow", "moos"),
    ("lion", "roars"),
    ("bird", "sings"),
    ("snake", "hisses"),
    ("horse", "neighs"),
    ("owl", "hoots"),
];
const FOODS: [(&str, &str); 8] = [
    ("dogs", "bones"),
    ("cats", "fish"),
    ("cows", "grass"),
    ("rabbits", "carrots"),
    ("monkeys", "bananas"),
    ("bears", "honey"),
    ("mice", "cheese"),
    ("birds", "seeds"),
];
const COLOURS: [(&str, &str); 6] = [
    ("the sky", "blue"),
    ("grass", "green"),
    ("snow", "white"),
    ("the sun", "yellow"),
    ("coal", "black"),
    ("blood", "red"),
];
const NUMBERS: [&str; 11] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
];
const OPENERS: [&str; 6] = [
    "",
    "everyone knows that ",
    "my teacher said that ",
    "it is true that ",
    "i read that ",
    "we learned that ",
];

/// `n` sentences stating simple facts (capitals, animal sounds and foods, colours, counting),
/// each with an optional opener; a model that learns the corpus can fill in the facts.
pub fn facts_corpus(n: usize, seed: u64) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let opener = OPENERS.choose(&mut rng).expect("not empty");
            let fact = match rng.random_range(0..5) {
                0 => {
                    let (city, country) = CAPITALS.choose(&mut rng).expect("not empty");
                    format!("the capital of {country} is {city}")
                }
                1 => {
                    let (animal, sound) = SOUNDS.choose(&mut rng).expect("not empty");
                    format!("the {animal} {sound}")
                }
                2 => {
                    let (animals, food) = FOODS.choose(&mut rng).expect("not empty");
                    format!("{animals} eat {food}")
                }
                3 => {
                    let (thing, colour) = COLOURS.choose(&mut rng).expect("not empty");
                    format!("{thing} is {colour}")
                }
                _ => {
                    let a = rng.random_range(0..10);
                    format!("after {} comes {}", NUMBERS[a], NUMBERS[a + 1])
                }
            };
            format!("{opener}{fact} .")
        })
        .collect()
}

const POSITIVE: [&str; 8] = [
    "great",
    "wonderful",
    "moving",
    "funny",
    "brilliant",
    "charming",
    "superb",
    "delightful",
];
const NEGATIVE: [&str; 8] = [
    "boring", "awful", "dull", "terrible", "clumsy", "tedious", "bland", "painful",
];
const SUBJECTS: [&str; 6] = ["movie", "film", "plot", "acting", "story", "ending"];
const INTENSIFIERS: [&str; 5] = ["", "really ", "very ", "quite ", "truly "];

/// `n` short reviews with their sentiment (1 positive, 0 negative); "not" flips the
/// adjective's polarity, so a bag of words is not enough.
pub fn sentiment_corpus(n: usize, seed: u64) -> Vec<(String, i64)> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let positive = rng.random_bool(0.5);
            let negated = rng.random_bool(0.3);
            let adjective = if positive ^ negated {
                POSITIVE.choose(&mut rng)
            } else {
                NEGATIVE.choose(&mut rng)
            }
            .expect("not empty");
            let subject = SUBJECTS.choose(&mut rng).expect("not empty");
            let intensifier = INTENSIFIERS.choose(&mut rng).expect("not empty");
            let not = if negated { "not " } else { "" };
            let text = format!("the {subject} was {not}{intensifier}{adjective}");
            (text, i64::from(positive))
        })
        .collect()
}

const PEOPLE: [&[&str]; 8] = [
    &["alice"],
    &["bob"],
    &["maria", "lopez"],
    &["john", "smith"],
    &["yuki"],
    &["omar", "haddad"],
    &["anna", "berg"],
    &["li", "wei"],
];
const PLACES: [&[&str]; 6] = [
    &["london"],
    &["new", "york"],
    &["tokyo"],
    &["cairo"],
    &["rio", "de", "janeiro"],
    &["oslo"],
];
const ORGS: [&[&str]; 5] = [
    &["acme", "corp"],
    &["globex"],
    &["the", "red", "cross"],
    &["initech"],
    &["united", "nations"],
];

/// `n` sentences in CoNLL column format (`word TAG`, blank line between sentences) with
/// person, location and organisation entities in BIO tags.
pub fn ner_corpus(n: usize, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = String::new();
    for _ in 0..n {
        let person = *PEOPLE.choose(&mut rng).expect("not empty");
        let place = *PLACES.choose(&mut rng).expect("not empty");
        let org = *ORGS.choose(&mut rng).expect("not empty");
        let mut words: Vec<(&str, &str)> = Vec::new();
        let entity = |words: &mut Vec<(&str, &str)>, tokens: &[&'static str], kind: &str| {
            for (i, t) in tokens.iter().enumerate() {
                let tag = match (i, kind) {
                    (0, "PER") => "B-PER",
                    (_, "PER") => "I-PER",
                    (0, "LOC") => "B-LOC",
                    (_, "LOC") => "I-LOC",
                    (0, _) => "B-ORG",
                    _ => "I-ORG",
                };
                words.push((t, tag));
            }
        };
        let plain = |words: &mut Vec<(&str, &str)>, text: &'static str| {
            for w in text.split(' ') {
                words.push((w, "O"));
            }
        };
        match rng.random_range(0..4) {
            0 => {
                entity(&mut words, person, "PER");
                plain(&mut words, "works for");
                entity(&mut words, org, "ORG");
                plain(&mut words, "in");
                entity(&mut words, place, "LOC");
            }
            1 => {
                plain(&mut words, "yesterday");
                entity(&mut words, person, "PER");
                plain(&mut words, "flew to");
                entity(&mut words, place, "LOC");
            }
            2 => {
                entity(&mut words, org, "ORG");
                plain(&mut words, "opened an office in");
                entity(&mut words, place, "LOC");
            }
            _ => {
                plain(&mut words, "we met");
                entity(&mut words, person, "PER");
                plain(&mut words, "at the station");
            }
        }
        words.push((".", "O"));
        for (word, tag) in words {
            out.push_str(&format!("{word} {tag}\n"));
        }
        out.push('\n');
    }
    out
}

/// The size of a BERT built from scratch by [`bert_encoder`].
pub struct ScratchBert {
    /// WordPiece vocabulary size to train.
    pub vocab_size: usize,
    /// Model width.
    pub d_model: usize,
    /// Encoder blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Longest input.
    pub max_length: usize,
}

/// A BERT encoder (with pooler) and its tokenizer: imported from a HuggingFace folder
/// (`config.json`, `model.safetensors`, `tokenizer.json`) when `pretrained` is given, else
/// built at random with a WordPiece vocabulary trained on `texts`.
pub fn bert_encoder(
    pretrained: Option<&std::path::Path>,
    texts: &[&str],
    scratch: &ScratchBert,
    device: &Device,
    quiet: bool,
) -> Result<(
    lmforge::models::bert::Bert,
    lmforge::data::tokenizer::HfTokenizer,
)> {
    use lmforge::data::tokenizer::{HfTokenizer, Tokenizer, WordPieceTrainOptions};
    use lmforge::models::Pretrained;
    use lmforge::models::bert::{Bert, BertConfig};
    match pretrained {
        Some(dir) => {
            let bert = Bert::from_pretrained(dir, device)?;
            let tokenizer = HfTokenizer::from_file(dir.join("tokenizer.json"))?;
            if !quiet {
                println!(
                    "imported {} ({} parameters, vocabulary {})",
                    dir.display(),
                    lmforge::burn::module::Module::num_params(&bert),
                    tokenizer.vocab_size()
                );
            }
            Ok((bert, tokenizer))
        }
        None => {
            let file = std::env::temp_dir().join(format!(
                "lmforge-example-corpus-{}-{}.txt",
                std::process::id(),
                texts.len()
            ));
            std::fs::write(&file, texts.join("\n"))?;
            let tokenizer = HfTokenizer::train_wordpiece(
                &[&file],
                &WordPieceTrainOptions {
                    vocab_size: scratch.vocab_size,
                    min_frequency: 1,
                    ..Default::default()
                },
            );
            let _ = std::fs::remove_file(&file);
            let tokenizer = tokenizer?;
            let bert = BertConfig::new(tokenizer.vocab_size())
                .with_d_model(scratch.d_model)
                .with_n_layers(scratch.layers)
                .with_n_heads(scratch.heads)
                .with_d_ff(4 * scratch.d_model)
                .with_max_seq_length(scratch.max_length.max(64))
                .init(device)?;
            Ok((bert, tokenizer))
        }
    }
}

/// Mean training loss over the first and over the last quarter of the logged windows (at
/// least one window each): a steadier "before and after" than single noisy windows.
pub fn loss_trend(history: &[lmforge::training::Record]) -> Result<(f64, f64)> {
    let losses: Vec<f64> = history
        .iter()
        .filter_map(|r| match r {
            lmforge::training::Record::Train { loss, .. } => Some(*loss),
            _ => None,
        })
        .collect();
    anyhow::ensure!(!losses.is_empty(), "no training record");
    let k = (losses.len() / 4).max(1);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    Ok((mean(&losses[..k]), mean(&losses[losses.len() - k..])))
}

/// Where the `--devices` flag sends training: lmforge's own trainer on one device (`None`), or
/// burn-train's `Learner` over these devices.
pub struct Parallel {
    /// The devices (autodiff), one model replica each.
    pub devices: Vec<Device>,
    /// All-reduce DDP instead of gathering gradients on the first device.
    pub ddp: bool,
}

/// Parses `--devices flex,flex` / `--devices flex,wgpu` (backend names, one per replica).
pub fn parallel(devices: Option<&str>, ddp: bool, quiet: bool) -> Result<Option<Parallel>> {
    let Some(list) = devices else {
        anyhow::ensure!(!ddp, "--ddp needs --devices");
        return Ok(None);
    };
    let devices = list
        .split(',')
        .map(|name| {
            let selected = lmforge::device::select_named(Some(name.trim()))?;
            if !quiet {
                println!("replica device: {selected}");
            }
            Ok(selected.device.autodiff())
        })
        .collect::<Result<Vec<Device>>>()?;
    anyhow::ensure!(!devices.is_empty(), "--devices names no device");
    Ok(Some(Parallel { devices, ddp }))
}

/// A trained model and the losses a run reports.
pub struct Trained<M> {
    /// The model after training.
    pub model: M,
    /// Training loss at the start and at the end (see [`loss_trend`]; with `--devices`, the
    /// loss on the first 10 training batches before and after).
    pub losses: (f64, f64),
    /// The last evaluation on the validation batches.
    pub last_eval: Option<lmforge::training::Evaluation>,
}

/// Trains with lmforge's trainer, or, with `parallel`, with burn-train's `Learner` over its
/// devices for as many epochs as cover the trainer's steps (same schedule, optimizer,
/// clipping and seed; the global batch of `batch_size` is split evenly across the devices).
#[allow(clippy::too_many_arguments)]
pub fn train<M, T>(
    parallel: Option<&Parallel>,
    trainer: &lmforge::training::Trainer,
    model: M,
    task: &T,
    train: &lmforge::training::Batches<T::Item>,
    valid: &lmforge::training::Batches<T::Item>,
    batch_size: usize,
    out: Option<&std::path::Path>,
) -> Result<Trained<M>>
where
    M: burn::module::Module + burn::module::ModuleDisplay + 'static,
    T: lmforge::training::Task<M> + Clone + std::fmt::Debug + 'static,
    T::Item: std::fmt::Debug + 'static,
{
    let quiet = trainer.config().progress == lmforge::training::Progress::Silent;
    let Some(parallel) = parallel else {
        let out = trainer.fit(model, task, train, Some(valid))?;
        return Ok(Trained {
            losses: loss_trend(&out.history)?,
            last_eval: out.last_eval,
            model: out.model,
        });
    };
    #[cfg(feature = "learner")]
    {
        train_on_devices(
            parallel, trainer, model, task, train, valid, batch_size, out, quiet,
        )
    }
    #[cfg(not(feature = "learner"))]
    {
        let _ = (parallel, model, task, train, valid, batch_size, out, quiet);
        anyhow::bail!("--devices needs lmforge's `learner` feature (on by default)")
    }
}

#[cfg(feature = "learner")]
#[allow(clippy::too_many_arguments)]
fn train_on_devices<M, T>(
    parallel: &Parallel,
    trainer: &lmforge::training::Trainer,
    model: M,
    task: &T,
    train: &lmforge::training::Batches<T::Item>,
    valid: &lmforge::training::Batches<T::Item>,
    batch_size: usize,
    out: Option<&std::path::Path>,
    quiet: bool,
) -> Result<Trained<M>>
where
    M: burn::module::Module + burn::module::ModuleDisplay + 'static,
    T: lmforge::training::Task<M> + Clone + std::fmt::Debug + 'static,
    T::Item: std::fmt::Debug + 'static,
{
    use lmforge::training::evaluate;
    use lmforge::training::learner::{LearnerConfig, LearnerTrainer, Parallelism};

    let config = trainer.config();
    let replicas = parallel.devices.len();
    anyhow::ensure!(
        batch_size.is_multiple_of(replicas),
        "--batch-size {batch_size} does not split evenly over {replicas} devices"
    );
    let per_device = batch_size / replicas;
    let learner_config = |epochs| {
        let mut learner = LearnerConfig::new(epochs, per_device, config.schedule.clone())
            .with_optimizer(config.optimizer.clone())
            .with_grad_accumulation(config.grad_accumulation)
            .with_seed(config.seed)
            .with_parallelism(if parallel.ddp {
                Parallelism::Ddp
            } else {
                Parallelism::DataParallel
            });
        if let Some(max) = config.max_grad_norm {
            learner = learner.with_max_grad_norm(max);
        }
        learner
    };
    // A run shorter than one pass reads the trainer's first (shuffled) global batches only.
    let global_batches = config.steps * config.grad_accumulation;
    let items: Vec<T::Item> = if global_batches < train.len() {
        (0..global_batches as u64)
            .flat_map(|p| train.at(p))
            .collect()
    } else {
        train.items().to_vec()
    };
    let per_epoch = LearnerTrainer::new(learner_config(1))
        .with_devices(parallel.devices.clone())
        .steps(items.len());
    let epochs = config.steps.div_ceil(per_epoch.max(1)).max(1);
    let dir = match out {
        Some(out) => out.join("burn-train"),
        None => std::env::temp_dir().join(format!("lmforge-learner-{}", std::process::id())),
    };
    let home = model
        .devices()
        .into_iter()
        .next()
        .context("a model with parameters")?;
    let before = evaluate(&model, task, train, Some(10))?.loss;
    let fitted = LearnerTrainer::new(learner_config(epochs))
        .with_devices(parallel.devices.clone())
        .quiet(quiet)
        .fit(model, task, items, valid.items().to_vec(), &dir)?;
    if out.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    // Back on the device the rest of the example uses (sampling, prediction).
    let model = fitted.model.train().fork(&home);
    let after = evaluate(&model, task, train, Some(10))?.loss;
    let last_eval = evaluate(&model, task, valid, None)?;
    Ok(Trained {
        model,
        losses: (before, after),
        last_eval: Some(last_eval),
    })
}
