//! The standard throughput cases of lmforge, each measured the same way as its PyTorch twin in
//! `benches/torch_cases.py`, so that `benches/compare.py` can run both in turn and print the
//! ratio per case.
//!
//! | case | what is timed |
//! |---|---|
//! | `gpt-train` | one AdamW step of a char GPT: vocab 96, context 128, 4 layers, 4 heads, width 256, batch 16 |
//! | `lstm-train` | one AdamW step of an LSTM LM: vocab 96, embedding 128, 2 x LSTM 256, sequence 128, batch 16 |
//! | `bert-mlm-train` | one AdamW step of BERT masked-LM: vocab 1000, width 256, 4 layers, 4 heads, FFN 1024, sequence 128, batch 16, 15% masking |
//! | `gpt-generate` | greedy generation with the KV cache on the `gpt-train` shape: batch 1, prompt 16, 256 new tokens |
//! | `llama-generate` | greedy generation with the KV cache of a ~100M-parameter grouped-query Llama (8 layers, width 768, 12 query / 4 key-value heads, FFN 2048, vocab 32000, untied): batch 1, prompt 16, 128 new tokens |
//! | `llama-generate-bf16` | `llama-generate` with the parameters in bf16 (activations f32) |
//! | `llama-generate-int8` | `llama-generate` with every `Linear` and `Embedding` packed as int8 per channel |
//! | `llama-generate-int4` | the same with int4 in blocks of 32 |
//! | `gpt-generate-f32` | greedy generation with the KV cache of a GPT-2-small-size model (12 layers, width 768, 12 heads, vocab 50257, tied embeddings; random weights): batch 1, prompt 16, 128 new tokens |
//! | `gpt-generate-int8` | `gpt-generate-f32` with every `Linear` and `Embedding` quantized to int8 per channel and kept packed |
//! | `gpt-generate-int4` | the same with int4 in blocks of 32 |
//! | `minilm-forward` | inference forward of a MiniLM-size BERT encoder (6 layers, 384, 12 heads): batch 8 x 128 |
//! | `matmul` | `[n, n] x [n, n]` float matmul for n = 256, 512, 1024, in GFLOP/s |
//!
//! Dropout is 0 everywhere (on both sides), so every step does the same arithmetic. A training
//! step is what lmforge's trainer does per batch: the task's loss (lmforge's `CausalLmTask` /
//! `MaskedLmTask`, host-side batch building included), backward, and burn's AdamW update.
//!
//! Each case prints one JSON line: tokens/s from the median step time, the minimum and median
//! step times, and the process's peak resident memory (Linux: reset before the case through
//! `/proc/self/clear_refs`, read from `VmHWM` after it). The `gpt-generate-*` cases also report
//! `weights_rss_mib`: the resident memory the model holds, measured as the growth of `VmRSS`
//! from before the model is built to after it is built (and quantized), freed memory returned
//! to the system first.
//!
//! The binary (`cargo run --release -p lmforge-bench -- --case all`) prints the lines; the
//! library runs a case from Rust:
//!
//! ```
//! use lmforge_bench::{Options, run};
//!
//! let device = lmforge::device::device("flex")?;
//! let options = Options { repeats: 1, warmup: 0, tiny: true, ..Options::default() };
//! let lines = run("matmul", &device, &options)?; // one line per matrix size
//! assert!(lines.iter().all(|m| m.gflops.is_some_and(|g| g > 0.0)));
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use lmforge::compression::quantize::{self, QuantScheme, QuantizeConfig};
use lmforge::compression::report::{initialize_parameters, measure_resident};
use lmforge::data::batcher::BatcherConfig;
use lmforge::data::tokenizer::Encoding;
use lmforge::models::bert::{BertConfig, BertInput};
use lmforge::models::generate::{Decoder, GenerationConfig, generate};
use lmforge::models::gpt::{Gpt, GptConfig};
use lmforge::models::llama::LlamaConfig;
use lmforge::models::lstm_lm::LstmLmConfig;
use lmforge::objectives::masked_lm::MaskingConfig;
use lmforge::training::tasks::{CausalLmTask, MaskedLmTask};
use lmforge::training::{OptimizerConfig, StepContext, Task};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;

/// The benchmark cases, in the order `all` runs them.
pub const CASES: [&str; 14] = [
    "gpt-train",
    "lstm-train",
    "bert-mlm-train",
    "gpt-generate",
    "llama-generate",
    "llama-generate-bf16",
    "llama-generate-int8",
    "llama-generate-int4",
    "gpt-generate-f32",
    "gpt-generate-int8",
    "gpt-generate-int4",
    "minilm-forward",
    "matmul",
    "matmul-train",
];

/// How a case is run: repetitions and optional size overrides (for the sweeps).
#[derive(Clone, Debug)]
pub struct Options {
    /// Timed repetitions (the median is reported).
    pub repeats: usize,
    /// Untimed repetitions first.
    pub warmup: usize,
    /// Overrides the sequence length (context for the GPT cases).
    pub seq_length: Option<usize>,
    /// Overrides the model width (`d_model`, or the LSTM's hidden size).
    pub width: Option<usize>,
    /// Shrinks every case to a few milliseconds (for tests of the harness itself).
    pub tiny: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            repeats: 10,
            warmup: 2,
            seq_length: None,
            width: None,
            tiny: false,
        }
    }
}

/// One measured case: what the JSON line holds.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    /// `"lmforge"` (the PyTorch script writes `"pytorch"`).
    pub implementation: &'static str,
    /// The case name (`matmul-512` for one matmul size).
    pub case: String,
    /// The device the case ran on.
    pub device: String,
    /// Compute threads (`RAYON_NUM_THREADS`, else the machine's parallelism).
    pub threads: usize,
    /// Tokens per second from the median step (new tokens for generation); none for matmul.
    pub tokens_per_s: Option<f64>,
    /// GFLOP/s from the median (matmul only).
    pub gflops: Option<f64>,
    /// Fastest step, milliseconds.
    pub step_ms_min: f64,
    /// Median step, milliseconds.
    pub step_ms_median: f64,
    /// Peak resident memory of the process during the case, MiB (Linux only).
    pub peak_rss_mib: Option<f64>,
    /// Resident memory the model's weights take, MiB (generation cases on Linux; module docs).
    pub weights_rss_mib: Option<f64>,
    /// The sizes the case ran with.
    pub config: serde_json::Value,
}

/// Compute threads the CPU backends use: `RAYON_NUM_THREADS` when set, else the machine's
/// available parallelism.
pub fn threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs `case` (one of [`CASES`]) on `device` (without autodiff: training cases turn it on)
/// and returns its measurements (three for `matmul`, one otherwise).
///
/// # Errors
/// An unknown case, or a model or step that fails.
pub fn run(case: &str, device: &Device, options: &Options) -> Result<Vec<Measurement>> {
    reset_peak_rss();
    let mut out = match case {
        "gpt-train" => vec![gpt_train(device, options)?],
        "lstm-train" => vec![lstm_train(device, options)?],
        "bert-mlm-train" => vec![bert_mlm_train(device, options)?],
        "gpt-generate" => vec![gpt_generate(device, options)?],
        "llama-generate" => vec![llama_generate(
            device,
            options,
            LlamaWeights::Float(DType::F32),
        )?],
        "llama-generate-bf16" => vec![llama_generate(
            device,
            options,
            LlamaWeights::Float(DType::BF16),
        )?],
        "llama-generate-int8" => vec![llama_generate(
            device,
            options,
            LlamaWeights::Packed(QuantScheme::Int8PerChannel),
        )?],
        "llama-generate-int4" => vec![llama_generate(
            device,
            options,
            LlamaWeights::Packed(QuantScheme::int4()),
        )?],
        "gpt-generate-f32" => vec![gpt2_generate(device, options, None)?],
        "gpt-generate-int8" => vec![gpt2_generate(
            device,
            options,
            Some(QuantScheme::Int8PerChannel),
        )?],
        "gpt-generate-int4" => vec![gpt2_generate(device, options, Some(QuantScheme::int4()))?],
        "minilm-forward" => vec![minilm_forward(device, options)?],
        "matmul" => matmul(device, options)?,
        "matmul-train" => matmul_train(options)?,
        other => bail!("unknown case `{other}`; the cases are {}", CASES.join(", ")),
    };
    let peak = peak_rss_mib();
    for m in &mut out {
        m.peak_rss_mib = peak;
    }
    Ok(out)
}

/// Median and minimum seconds of `options.repeats` calls of `f` after `options.warmup`
/// untimed ones, waiting for the device after each.
fn time(device: &Device, options: &Options, mut f: impl FnMut() -> Result<()>) -> Result<Timing> {
    for _ in 0..options.warmup {
        f()?;
    }
    device.sync().context("device sync")?;
    let mut seconds = Vec::with_capacity(options.repeats);
    for _ in 0..options.repeats.max(1) {
        let start = Instant::now();
        f()?;
        device.sync().context("device sync")?;
        seconds.push(start.elapsed().as_secs_f64());
    }
    seconds.sort_by(f64::total_cmp);
    Ok(Timing {
        min: seconds[0],
        median: seconds[seconds.len() / 2],
    })
}

#[derive(Clone, Copy, Debug)]
struct Timing {
    min: f64,
    median: f64,
}

impl Timing {
    fn measurement(
        self,
        case: &str,
        device: &Device,
        tokens: usize,
        config: serde_json::Value,
    ) -> Measurement {
        Measurement {
            implementation: "lmforge",
            case: case.to_string(),
            device: format!("{device:?}"),
            threads: threads(),
            tokens_per_s: Some(tokens as f64 / self.median),
            gflops: None,
            step_ms_min: self.min * 1e3,
            step_ms_median: self.median * 1e3,
            peak_rss_mib: None,
            weights_rss_mib: None,
            config,
        }
    }
}

/// Deterministic pseudo-random token rows.
fn token_rows(rows: usize, length: usize, vocab: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..rows)
        .map(|_| {
            (0..length)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect()
        })
        .collect()
}

/// Times one training step of `task` on `model` per call: loss, backward, AdamW update.
fn train<M: Module, T: Task<M>>(
    model: M,
    task: &T,
    items: &[T::Item],
    device: &Device,
    options: &Options,
) -> Result<Timing> {
    let mut optimizer = OptimizerConfig::adamw().init(&model).context("optimizer")?;
    let mut rng = StdRng::seed_from_u64(0);
    let mut model = Some(model);
    time(device, options, || {
        let current = model
            .take()
            .expect("the model is put back after every step");
        let mut context = StepContext {
            device,
            rng: &mut rng,
            training: true,
            position: 0,
        };
        let out = task
            .step(&current, items, &mut context)
            .map_err(|e| anyhow::anyhow!("step: {e}"))?;
        let grads = GradientsParams::from_grads(out.loss.backward(), &current);
        model = Some(optimizer.step(1e-4, current, grads));
        Ok(())
    })
}

struct GptShape {
    vocab: usize,
    seq: usize,
    layers: usize,
    heads: usize,
    width: usize,
    batch: usize,
}

fn gpt_shape(options: &Options) -> GptShape {
    if options.tiny {
        GptShape {
            vocab: 96,
            seq: options.seq_length.unwrap_or(16),
            layers: 1,
            heads: 2,
            width: options.width.unwrap_or(32),
            batch: 2,
        }
    } else {
        GptShape {
            vocab: 96,
            seq: options.seq_length.unwrap_or(128),
            layers: 4,
            heads: 4,
            width: options.width.unwrap_or(256),
            batch: 16,
        }
    }
}

impl GptShape {
    fn config(&self, max_seq_length: usize) -> GptConfig {
        GptConfig::new(self.vocab)
            .with_max_seq_length(max_seq_length)
            .with_d_model(self.width)
            .with_n_layers(self.layers)
            .with_n_heads(self.heads)
            .with_dropout(0.0)
            .with_attention_dropout(0.0)
    }

    fn json(&self) -> serde_json::Value {
        json!({"vocab": self.vocab, "seq": self.seq, "layers": self.layers,
               "heads": self.heads, "width": self.width, "batch": self.batch})
    }
}

fn gpt_train(device: &Device, options: &Options) -> Result<Measurement> {
    let s = gpt_shape(options);
    let device = device.clone().autodiff();
    device.seed(0);
    let model = s.config(s.seq).init(&device)?;
    let items = token_rows(s.batch, s.seq, s.vocab, 1);
    let timing = train(model, &CausalLmTask::new(0), &items, &device, options)?;
    Ok(timing.measurement("gpt-train", &device, s.batch * s.seq, s.json()))
}

fn lstm_train(device: &Device, options: &Options) -> Result<Measurement> {
    let (vocab, embedding, layers) = (96, if options.tiny { 16 } else { 128 }, 2);
    let hidden = options.width.unwrap_or(if options.tiny { 32 } else { 256 });
    let (seq, batch) = if options.tiny {
        (options.seq_length.unwrap_or(16), 2)
    } else {
        (options.seq_length.unwrap_or(128), 16)
    };
    let device = device.clone().autodiff();
    device.seed(0);
    let model = LstmLmConfig::new(vocab)
        .with_d_embedding(embedding)
        .with_d_hidden(hidden)
        .with_n_layers(layers)
        // As in PyTorch's case (benches/torch_cases.py): no dropout.
        .with_dropout(0.0)
        .init(&device)?;
    let items = token_rows(batch, seq, vocab, 2);
    let timing = train(model, &CausalLmTask::new(0), &items, &device, options)?;
    let config = json!({"vocab": vocab, "embedding": embedding, "hidden": hidden,
                        "layers": layers, "seq": seq, "batch": batch});
    Ok(timing.measurement("lstm-train", &device, batch * seq, config))
}

fn bert_mlm_train(device: &Device, options: &Options) -> Result<Measurement> {
    let vocab = 1000;
    let width = options.width.unwrap_or(if options.tiny { 32 } else { 256 });
    let (layers, heads, batch) = if options.tiny { (1, 2, 2) } else { (4, 4, 16) };
    let seq = options
        .seq_length
        .unwrap_or(if options.tiny { 16 } else { 128 });
    anyhow::ensure!(
        seq >= 3,
        "bert-mlm-train needs --seq >= 3 ([CLS], a word, [SEP])"
    );
    // Ids 0-4 are the special tokens: 0 [PAD], 1 [UNK], 2 [CLS], 3 [SEP], 4 [MASK].
    let items: Vec<Encoding> = token_rows(batch, seq - 2, vocab - 5, 3)
        .into_iter()
        .map(|row| {
            let mut e = Encoding::default();
            e.push(2, 0, None, true);
            for (i, id) in row.into_iter().enumerate() {
                e.push(id + 5, 0, Some(i as u32), false);
            }
            e.push(3, 0, None, true);
            e
        })
        .collect();
    let batcher = BatcherConfig::new(0)
        .with_max_length(seq)
        .with_vocab_size(vocab)
        .init()?;
    let task = MaskedLmTask::new(batcher, MaskingConfig::new(4, vocab, vec![0, 1, 2, 3, 4]));
    let device = device.clone().autodiff();
    device.seed(0);
    let model = BertConfig::new(vocab)
        .with_d_model(width)
        .with_n_layers(layers)
        .with_n_heads(heads)
        .with_d_ff(4 * width)
        .with_max_seq_length(seq.max(128))
        .with_dropout(0.0)
        .with_attention_dropout(0.0)
        .init_masked_lm(&device)?;
    let timing = train(model, &task, &items, &device, options)?;
    let config = json!({"vocab": vocab, "width": width, "layers": layers, "heads": heads,
                        "ffn": 4 * width, "seq": seq, "batch": batch, "masking": 0.15});
    Ok(timing.measurement("bert-mlm-train", &device, batch * seq, config))
}

/// Times greedy generation of exactly `new` tokens after `prompt` (one row).
fn time_greedy<M: Decoder>(
    model: &M,
    prompt: &[Vec<u32>],
    new: usize,
    device: &Device,
    options: &Options,
) -> Result<Timing> {
    let config = GenerationConfig::new()
        .with_max_new_tokens(new)
        .with_min_new_tokens(new);
    time(device, options, || {
        let out = generate(model, prompt, &config, device, |_, _| {})?;
        anyhow::ensure!(out[0].len() == new, "generated {} tokens", out[0].len());
        Ok(())
    })
}

fn gpt_generate(device: &Device, options: &Options) -> Result<Measurement> {
    let s = gpt_shape(options);
    let (prompt_length, new) = if options.tiny { (4, 8) } else { (16, 256) };
    device.seed(0);
    let model = s.config(512.max(prompt_length + new)).init(device)?;
    let prompt = token_rows(1, prompt_length, s.vocab, 4);
    let timing = time_greedy(&model, &prompt, new, device, options)?;
    let mut json = s.json();
    json["batch"] = json!(1);
    json["prompt"] = json!(prompt_length);
    json["new_tokens"] = json!(new);
    Ok(timing.measurement("gpt-generate", device, new, json))
}

/// GPT-2 small's shape (tiny: a few layers of width 32), in `f32` or quantized and packed.
fn gpt2_generate(
    device: &Device,
    options: &Options,
    scheme: Option<QuantScheme>,
) -> Result<Measurement> {
    let config = if options.tiny {
        GptConfig::new(500)
            .with_d_model(64)
            .with_n_layers(2)
            .with_n_heads(2)
            .with_max_seq_length(64)
    } else {
        GptConfig::gpt2_small()
    }
    .with_dropout(0.0)
    .with_attention_dropout(0.0);
    let (prompt_length, new) = if options.tiny { (4, 8) } else { (16, 128) };
    device.seed(0);
    let (model, weights) = measure_resident(|| -> Result<Gpt> {
        let model = config.init(device)?;
        let model = match scheme {
            Some(scheme) => quantize::quantize(model, &QuantizeConfig::new(scheme))?.model,
            None => model,
        };
        initialize_parameters(&model);
        device.sync().context("device sync")?;
        Ok(model)
    });
    let model = model?;
    let prompt = token_rows(1, prompt_length, config.vocab_size, 6);
    let timing = time_greedy(&model, &prompt, new, device, options)?;
    let (case, dtype) = match scheme {
        None => ("gpt-generate-f32", "f32"),
        Some(QuantScheme::Int8PerChannel) => ("gpt-generate-int8", "int8"),
        Some(QuantScheme::Int4Block { .. }) => ("gpt-generate-int4", "int4"),
    };
    let json = json!({"vocab": config.vocab_size, "width": config.d_model,
                      "layers": config.n_layers, "heads": config.n_heads, "batch": 1,
                      "prompt": prompt_length, "new_tokens": new, "weights": dtype});
    let mut m = timing.measurement(case, device, new, json);
    m.weights_rss_mib = weights.map(|b| b as f64 / (1 << 20) as f64);
    Ok(m)
}

/// How the Llama case holds its weights.
#[derive(Clone, Copy)]
enum LlamaWeights {
    Float(DType),
    Packed(QuantScheme),
}

fn llama_generate(
    device: &Device,
    options: &Options,
    weights: LlamaWeights,
) -> Result<Measurement> {
    let (vocab, width, layers, heads, kv_heads, ffn) = if options.tiny {
        (64, 32, 1, 4, 2, 64)
    } else {
        (32000, 768, 8, 12, 4, 2048)
    };
    let (prompt_length, new) = if options.tiny { (4, 8) } else { (16, 128) };
    device.seed(0);
    let model = LlamaConfig::new(vocab)
        .with_d_model(width)
        .with_n_layers(layers)
        .with_n_heads(heads)
        .with_n_kv_heads(Some(kv_heads))
        .with_d_ff(ffn)
        .with_max_seq_length(2048)
        .init(device)?;
    let (model, case, name) = match weights {
        LlamaWeights::Float(DType::F32) => (model, "llama-generate", "f32"),
        LlamaWeights::Float(dtype) => (
            model.with_param_dtype(dtype)?,
            "llama-generate-bf16",
            "bf16",
        ),
        LlamaWeights::Packed(scheme) => {
            let model = quantize::quantize(model, &QuantizeConfig::new(scheme))?.model;
            match scheme {
                QuantScheme::Int8PerChannel => (model, "llama-generate-int8", "int8"),
                QuantScheme::Int4Block { .. } => (model, "llama-generate-int4", "int4"),
            }
        }
    };
    let prompt = token_rows(1, prompt_length, vocab, 5);
    let timing = time_greedy(&model, &prompt, new, device, options)?;
    let json = json!({"vocab": vocab, "width": width, "layers": layers, "heads": heads,
                      "kv_heads": kv_heads, "ffn": ffn, "batch": 1, "prompt": prompt_length,
                      "new_tokens": new, "dtype": name});
    Ok(timing.measurement(case, device, new, json))
}

fn minilm_forward(device: &Device, options: &Options) -> Result<Measurement> {
    let mut config = BertConfig::minilm_l6()
        .with_dropout(0.0)
        .with_attention_dropout(0.0);
    let (batch, default_seq) = if options.tiny {
        config = config.with_n_layers(1).with_d_model(48).with_d_ff(96);
        (2, 16)
    } else {
        (8, 128)
    };
    if let Some(width) = options.width {
        config = config.with_d_model(width).with_d_ff(4 * width);
    }
    let seq = options.seq_length.unwrap_or(default_seq);
    let max_seq_length = config.max_seq_length.max(seq);
    config = config.with_max_seq_length(max_seq_length);
    device.seed(0);
    let model = config.init_encoder(false, device)?;
    let ids: Vec<i64> = token_rows(batch, seq, config.vocab_size, 5)
        .concat()
        .into_iter()
        .map(i64::from)
        .collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, seq]), device);
    let timing = time(device, options, || {
        let hidden = model.forward(BertInput::new(tokens.clone())).hidden;
        // Reading one value back waits for the whole forward on every backend.
        let _ = hidden.slice([0..1, 0..1, 0..1]).into_scalar::<f32>();
        Ok(())
    })?;
    let json = json!({"vocab": config.vocab_size, "width": config.d_model,
                      "layers": config.n_layers, "heads": config.n_heads, "ffn": config.d_ff,
                      "seq": seq, "batch": batch});
    Ok(timing.measurement("minilm-forward", device, batch * seq, json))
}

/// `len` values drawn uniformly from `[-1, 1)` with `seed` (the matmul cases' operands).
fn uniform(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn matmul(device: &Device, options: &Options) -> Result<Vec<Measurement>> {
    let sizes: &[usize] = if options.tiny {
        &[16, 32]
    } else {
        &[256, 512, 1024]
    };
    let mut out = Vec::new();
    for &n in sizes {
        let a = Tensor::<2>::from_data(TensorData::new(uniform(n * n, 6), [n, n]), device);
        let b = Tensor::<2>::from_data(TensorData::new(uniform(n * n, 7), [n, n]), device);
        // Small products are timed several at a time so the clock's resolution does not matter.
        let inner = (1 << 30) / (n * n * n).max(1);
        let inner = inner.clamp(1, 64);
        let timing = time(device, options, || {
            for _ in 0..inner {
                let c = a.clone().matmul(b.clone());
                let _ = c.slice([0..1, 0..1]).into_scalar::<f32>();
            }
            Ok(())
        })?;
        let per_call = Timing {
            min: timing.min / inner as f64,
            median: timing.median / inner as f64,
        };
        let mut m = per_call.measurement(&format!("matmul-{n}"), device, 0, json!({"n": n}));
        m.tokens_per_s = None;
        m.gflops = Some(2.0 * (n * n * n) as f64 / per_call.median / 1e9);
        out.push(m);
    }
    Ok(out)
}

// `cblas-sys` declares the functions; the `openblas` feature links the system library.
#[cfg(feature = "openblas")]
#[link(name = "openblas")]
unsafe extern "C" {}

/// The products of the training cases, `(name, m, k, n, a transposed, b transposed)`: forward
/// projections of the GPT/BERT/LSTM cases (2048 rows = batch 16 x 128 tokens), the two
/// gradients of the feed-forward layer, the tied output layers and MiniLM's feed-forward layer.
const TRAINING_PRODUCTS: [(&str, usize, usize, usize, bool, bool); 8] = [
    ("qkv", 2048, 256, 768, false, false),
    ("ffn-up", 2048, 256, 1024, false, false),
    ("ffn-down", 2048, 1024, 256, false, false),
    ("ffn-up-dx", 2048, 1024, 256, false, true),
    ("ffn-up-dw", 256, 2048, 1024, true, false),
    ("gpt-head", 2048, 256, 96, false, true),
    ("bert-head", 2048, 256, 1000, false, true),
    ("minilm-ffn-up", 1024, 384, 1536, false, false),
];

/// The matrix products of the training cases through lmforge's kernel (`matmul_f32`, what its
/// layers run on flex), with the `gemm` crate (what burn's flex calls) timed in alternation on
/// the same buffers and reported in `config.gemm_crate_gflops` (with the `openblas` feature,
/// OpenBLAS too: `config.openblas_gflops`).
#[cfg(feature = "flex")]
fn matmul_train(options: &Options) -> Result<Vec<Measurement>> {
    let mut out = Vec::new();
    for (name, m, k, n, a_t, b_t) in TRAINING_PRODUCTS {
        let (m, k, n) = if options.tiny {
            (m / 64, k / 16, n / 16)
        } else {
            (m, k, n)
        };
        let (a, b) = (uniform(m * k, 6), uniform(k * n, 7));
        let mut c = vec![0.0f32; m * n];
        // (row stride, column stride) of each operand, stored transposed when asked.
        let a_strides = if a_t { (1, m) } else { (k, 1) };
        let b_strides = if b_t { (1, k) } else { (n, 1) };
        let ours = |c: &mut [f32]| {
            lmforge::layers::matmul_f32((m, n, k), c, (n, 1), false, &a, a_strides, &b, b_strides)
        };
        let crate_gemm = |c: &mut [f32]| {
            // SAFETY: the three buffers hold exactly the views described by the strides.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    a_strides.1 as isize,
                    a_strides.0 as isize,
                    b.as_ptr(),
                    b_strides.1 as isize,
                    b_strides.0 as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(0),
                )
            }
        };
        #[cfg(feature = "openblas")]
        let openblas = |c: &mut [f32]| {
            use cblas_sys::{CBLAS_LAYOUT, CBLAS_TRANSPOSE, cblas_sgemm};
            let trans = |t: bool| {
                if t {
                    CBLAS_TRANSPOSE::CblasTrans
                } else {
                    CBLAS_TRANSPOSE::CblasNoTrans
                }
            };
            let (lda, ldb) = (a_strides.0.max(a_strides.1), b_strides.0.max(b_strides.1));
            // SAFETY: the buffers hold exactly the matrices the sizes and leading dimensions
            // describe.
            unsafe {
                cblas_sgemm(
                    CBLAS_LAYOUT::CblasRowMajor,
                    trans(a_t),
                    trans(b_t),
                    m as i32,
                    n as i32,
                    k as i32,
                    1.0,
                    a.as_ptr(),
                    lda as i32,
                    b.as_ptr(),
                    ldb as i32,
                    0.0,
                    c.as_mut_ptr(),
                    n as i32,
                )
            }
        };
        let flop = 2.0 * (m * n * k) as f64;
        let inner = ((1u64 << 30) as f64 / flop).clamp(1.0, 64.0) as usize;
        let mut timed = |f: &dyn Fn(&mut [f32])| {
            let start = Instant::now();
            for _ in 0..inner {
                f(&mut c);
            }
            start.elapsed().as_secs_f64() / inner as f64
        };
        for _ in 0..options.warmup {
            timed(&ours);
            timed(&crate_gemm);
        }
        let (mut t_ours, mut t_crate) = (Vec::new(), Vec::new());
        #[cfg(feature = "openblas")]
        let mut t_blas = Vec::new();
        for round in 0..options.repeats.max(1) {
            // Alternate which candidate goes first.
            if round % 2 == 0 {
                t_ours.push(timed(&ours));
                t_crate.push(timed(&crate_gemm));
            } else {
                t_crate.push(timed(&crate_gemm));
                t_ours.push(timed(&ours));
            }
            #[cfg(feature = "openblas")]
            t_blas.push(timed(&openblas));
        }
        t_ours.sort_by(f64::total_cmp);
        t_crate.sort_by(f64::total_cmp);
        let median = |t: &[f64]| t[t.len() / 2];
        let timing = Timing {
            min: t_ours[0],
            median: median(&t_ours),
        };
        let layout = match (a_t, b_t) {
            (false, false) => "a b",
            (true, false) => "aT b",
            (false, true) => "a bT",
            (true, true) => "aT bT",
        };
        #[allow(unused_mut)]
        let mut config = json!({"shape": format!("{m}x{k}x{n} {layout}"), "m": m, "k": k, "n": n,
                            "gemm_crate_gflops": flop / median(&t_crate) / 1e9});
        #[cfg(feature = "openblas")]
        {
            t_blas.sort_by(f64::total_cmp);
            config["openblas_gflops"] = json!(flop / median(&t_blas) / 1e9);
        }
        let mut line = timing.measurement(
            &format!("matmul-train-{name}"),
            &Device::default(),
            0,
            config,
        );
        line.device = "cpu (f32 slices)".to_string();
        line.tokens_per_s = None;
        line.gflops = Some(flop / timing.median / 1e9);
        out.push(line);
    }
    Ok(out)
}

#[cfg(not(feature = "flex"))]
fn matmul_train(_: &Options) -> Result<Vec<Measurement>> {
    bail!("the matmul-train case measures lmforge's flex kernel: build with the `flex` feature")
}

/// Resets the kernel's peak-resident-memory mark of this process (Linux; elsewhere a no-op).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory since the last reset, in MiB (Linux only).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// An estimate of the CPU's peak float32 rate in GFLOP/s for `threads` cores: cores x clock x
/// FLOPs per cycle (32 with AVX2 + FMA: two 8-wide FMA units; 64 with AVX-512; 8 otherwise),
/// from `/proc/cpuinfo` (Linux x86 only).
pub fn cpu_peak_gflops(threads: usize) -> Option<f64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    let flags = info.lines().find(|l| l.starts_with("flags"))?;
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    let per_cycle = if has("avx512f") {
        64.0
    } else if has("avx2") && has("fma") {
        32.0
    } else {
        8.0
    };
    Some(threads as f64 * mhz / 1e3 * per_cycle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Options {
        Options {
            repeats: 1,
            warmup: 0,
            tiny: true,
            ..Options::default()
        }
    }

    #[test]
    fn every_case_measures_positive_rates() {
        let device = lmforge::device::device("flex").expect("flex");
        for case in CASES {
            let out = run(case, &device, &tiny()).expect(case);
            assert!(!out.is_empty(), "{case}");
            for m in out {
                let rate = m.tokens_per_s.or(m.gflops).expect("a rate");
                assert!(rate.is_finite() && rate > 0.0, "{case}: {rate}");
                assert!(m.step_ms_min <= m.step_ms_median, "{case}");
                assert!(m.case.starts_with(case), "{}", m.case);
                if cfg!(target_os = "linux") {
                    assert!(m.peak_rss_mib.is_some_and(|p| p > 1.0), "{case}");
                }
            }
        }
    }

    #[test]
    fn overrides_change_the_sizes() {
        let device = lmforge::device::device("flex").expect("flex");
        let options = Options {
            seq_length: Some(8),
            width: Some(16),
            ..tiny()
        };
        let m = run("gpt-train", &device, &options).expect("gpt-train");
        assert_eq!(m[0].config["seq"], 8);
        assert_eq!(m[0].config["width"], 16);
        assert!(run("no-such-case", &device, &options).is_err());
        let too_short = Options {
            seq_length: Some(2),
            ..tiny()
        };
        assert!(run("bert-mlm-train", &device, &too_short).is_err());
    }
}
