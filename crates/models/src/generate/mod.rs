//! Text generation for autoregressive lmforge models: greedy decoding and sampling with
//! temperature, top-k, top-p and a repetition penalty (HuggingFace `generate()` semantics),
//! minimum/maximum new tokens, end-of-sequence ids, seeded randomness and streaming.
//!
//! Any model that implements [`Decoder`] can be driven: [`crate::gpt::Gpt`] and
//! [`crate::llama::Llama`] (with their KV caches), [`crate::lstm_lm::LstmLm`] (with its carried state), a
//! [`crate::seq2seq::Seq2Seq`] through [`Seq2SeqDecoder`] (cached self- and
//! cross-attention), and users' own models.
//!
//! ```
//! use lmforge_models::generate::{GenerationConfig, generate};
//! use lmforge_models::gpt::GptConfig;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let device = lmforge_device::device_from_env()?;
//! let gpt = GptConfig::tiny(96).init(&device)?;
//! let config = GenerationConfig::new().with_max_new_tokens(5).with_do_sample(true).with_top_k(Some(10));
//! let mut streamed = Vec::new();
//! let out = generate(&gpt, &[vec![1, 2, 3]], &config, &device, |_row, token| streamed.push(token))?;
//! assert_eq!(out[0].len(), 5);
//! assert_eq!(out[0], streamed); // tokens were streamed as they were produced
//! # Ok(())
//! # }
//! ```
//!
//! [`beam_search`] decodes one prompt with HuggingFace's beam search.
//!
//! Prompts of different lengths are left-padded for models that support it
//! ([`Decoder::prefill_left_padded`]: GPT masks the padding and renumbers positions, the
//! LSTM LM reads each prompt unpadded), each row giving what it gives alone.
//!
//! Stop strings are matched on the decoded new text ([`generate_with_detokenizer`]).
//!
//! Not yet here: batched beam search; the sampling arithmetic runs on the host over `f32`
//! rows.

mod beam;
mod decoder;
pub mod logits;

use burn::config::Config;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;

pub use beam::{BeamConfig, EarlyStopping, beam_search};
pub use decoder::{Decoder, Seq2SeqDecoder};

/// How to generate. Defaults: greedy, 32 new tokens, no end-of-sequence id.
#[derive(Config, Debug, PartialEq)]
pub struct GenerationConfig {
    /// Most tokens to add per row. Default: 32.
    #[config(default = 32)]
    pub max_new_tokens: usize,
    /// End-of-sequence ids are suppressed until this many tokens were added. Default: 0.
    #[config(default = 0)]
    pub min_new_tokens: usize,
    /// Sample from the distribution (true) or take the most likely token. Default: false.
    #[config(default = false)]
    pub do_sample: bool,
    /// Sampling temperature (> 0). Default: 1.
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Sample among the `k` most likely tokens only. Default: none.
    #[config(default = "None")]
    pub top_k: Option<usize>,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches `p`, in
    /// `(0, 1]`. Default: none.
    #[config(default = "None")]
    pub top_p: Option<f64>,
    /// HuggingFace's repetition penalty (> 0; 1 = none). Default: 1.
    #[config(default = 1.0)]
    pub repetition_penalty: f64,
    /// A row finishes when it produces one of these ids (included in its output).
    #[config(default = "Vec::new()")]
    pub eos_token_ids: Vec<u32>,
    /// A row finishes as soon as the text of its new tokens contains one of these strings
    /// (the token completing it is included). Needs a detokenizer: see
    /// [`generate_with_detokenizer`].
    #[config(default = "Vec::new()")]
    pub stop_strings: Vec<String>,
    /// Seed of the sampling; row `r` draws from its own stream seeded `seed + r`, so a row's
    /// text does not depend on the other rows of the batch. Default: 0.
    #[config(default = 0)]
    pub seed: u64,
}

/// What can be wrong with a generation request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerationError {
    /// A setting is out of range.
    #[error("invalid generation config: {0}")]
    InvalidConfig(String),
    /// A prompt has no tokens (or there are no prompts).
    #[error("empty prompt: generation needs at least one token per row")]
    EmptyPrompt,
    /// Prompts of one batch differ in length and the model cannot left-pad them.
    #[error("prompts have different lengths ({0:?}) and this model cannot left-pad them")]
    RaggedPrompts(Vec<usize>),
    /// A prompt token is not in the model's vocabulary.
    #[error("prompt token id {token} is out of range for vocab_size {vocab_size}")]
    TokenOutOfRange {
        /// The offending id.
        token: u32,
        /// The model's vocabulary size.
        vocab_size: usize,
    },
    /// Prompt plus new tokens would not fit the model's context window.
    #[error(
        "prompt of {prompt} tokens + max_new_tokens {max_new_tokens} exceeds the context window of {max_seq_length}"
    )]
    PromptTooLong {
        /// Prompt length.
        prompt: usize,
        /// Requested new tokens.
        max_new_tokens: usize,
        /// The model's limit.
        max_seq_length: usize,
    },
}

impl GenerationConfig {
    /// Checks every setting.
    ///
    /// # Errors
    /// [`GenerationError::InvalidConfig`] for a temperature <= 0 when sampling, `top_k` = 0,
    /// `top_p` outside `(0, 1]`, a repetition penalty <= 0, or `min_new_tokens >
    /// max_new_tokens`.
    pub fn validate(&self) -> Result<(), GenerationError> {
        let fail = |reason: String| Err(GenerationError::InvalidConfig(reason));
        if self.do_sample && (self.temperature.is_nan() || self.temperature <= 0.0) {
            return fail(format!(
                "temperature must be > 0 when sampling, got {}",
                self.temperature
            ));
        }
        if self.top_k == Some(0) {
            return fail("top_k must be >= 1".into());
        }
        if let Some(p) = self.top_p
            && (p.is_nan() || p <= 0.0 || p > 1.0)
        {
            return fail(format!("top_p must be in (0, 1], got {p}"));
        }
        if self.repetition_penalty.is_nan() || self.repetition_penalty <= 0.0 {
            return fail(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        if self.min_new_tokens > self.max_new_tokens {
            return fail(format!(
                "min_new_tokens ({}) exceeds max_new_tokens ({})",
                self.min_new_tokens, self.max_new_tokens
            ));
        }
        Ok(())
    }
}

/// Generates continuations of `prompts`, calling `on_token(row, token)` for
/// every token as soon as it is chosen. Returns the new tokens of each row (ending with its
/// end-of-sequence id when one was produced).
///
/// # Errors
/// [`GenerationError`] for an invalid config or prompt; nothing is run then.
pub fn generate<M: Decoder>(
    model: &M,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    device: &Device,
    on_token: impl FnMut(usize, u32),
) -> Result<Vec<Vec<u32>>, GenerationError> {
    if !config.stop_strings.is_empty() {
        return Err(GenerationError::InvalidConfig(
            "stop_strings need a detokenizer: use generate_with_detokenizer".into(),
        ));
    }
    run(model, prompts, config, device, None, on_token)
}

/// Token ids to text (a tokenizer's `decode`); it may borrow the tokenizer.
pub type Detokenize<'a> = dyn Fn(&[u32]) -> String + 'a;

/// [`generate`] with a detokenizer (token ids to text, e.g. a tokenizer's `decode`), which
/// `config.stop_strings` are matched against.
///
/// # Errors
/// As [`generate`].
pub fn generate_with_detokenizer<M: Decoder>(
    model: &M,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    device: &Device,
    detokenize: &Detokenize<'_>,
    on_token: impl FnMut(usize, u32),
) -> Result<Vec<Vec<u32>>, GenerationError> {
    run(model, prompts, config, device, Some(detokenize), on_token)
}

fn run<M: Decoder>(
    model: &M,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    device: &Device,
    detokenize: Option<&Detokenize<'_>>,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Vec<Vec<u32>>, GenerationError> {
    config.validate()?;
    let prompt_length = check_prompts(model, prompts, config)?;
    let batch_size = prompts.len();
    let vocab_size = model.vocab_size();
    let mut rngs: Vec<StdRng> = (0..batch_size as u64)
        .map(|r| StdRng::seed_from_u64(config.seed.wrapping_add(r)))
        .collect();
    let mut history: Vec<Vec<u32>> = prompts.to_vec();
    let mut generated = vec![Vec::new(); batch_size];
    let mut finished = vec![false; batch_size];

    // Left padding (with id 0, masked out) brings prompts to a common length.
    let left_padding: Vec<usize> = prompts.iter().map(|p| prompt_length - p.len()).collect();
    let flat: Vec<i64> = prompts
        .iter()
        .zip(&left_padding)
        .flat_map(|(p, &pad)| std::iter::repeat_n(0, pad).chain(p.iter().map(|&t| t as i64)))
        .collect();
    let tokens =
        Tensor::<2, Int>::from_data(TensorData::new(flat, [batch_size, prompt_length]), device);
    let (mut logits, mut state) = if left_padding.iter().all(|&p| p == 0) {
        model.prefill(tokens)
    } else {
        model
            .prefill_left_padded(tokens, &left_padding)
            .ok_or_else(|| GenerationError::RaggedPrompts(prompts.iter().map(Vec::len).collect()))?
    };
    for step in 0..config.max_new_tokens {
        let rows = logits
            .into_data()
            .try_to_vec::<f32>()
            .expect("logits are f32");
        let mut next = Vec::with_capacity(batch_size);
        for (r, row) in rows.chunks(vocab_size).enumerate() {
            if finished[r] {
                // Keeps the batch rectangular; the token is not recorded.
                next.push(*history[r].last().expect("prompts are not empty"));
                continue;
            }
            let token = choose(row, &history[r], step, config, &mut rngs[r]);
            history[r].push(token);
            generated[r].push(token);
            on_token(r, token);
            finished[r] = config.eos_token_ids.contains(&token)
                || detokenize.is_some_and(|decode| {
                    let text = decode(&generated[r]);
                    config
                        .stop_strings
                        .iter()
                        .any(|stop| text.contains(stop.as_str()))
                });
            next.push(token);
        }
        if finished.iter().all(|f| *f) || step + 1 == config.max_new_tokens {
            break;
        }
        let flat: Vec<i64> = next.iter().map(|&t| t as i64).collect();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(flat, [batch_size, 1]), device);
        logits = model.step(tokens, &mut state);
    }
    Ok(generated)
}

fn check_prompts<M: Decoder>(
    model: &M,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
) -> Result<usize, GenerationError> {
    let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let Some(&prompt_length) = lengths.iter().max() else {
        return Err(GenerationError::EmptyPrompt);
    };
    if lengths.contains(&0) {
        return Err(GenerationError::EmptyPrompt);
    }
    let vocab_size = model.vocab_size();
    if let Some(&token) = prompts
        .iter()
        .flatten()
        .find(|&&t| t as usize >= vocab_size)
    {
        return Err(GenerationError::TokenOutOfRange { token, vocab_size });
    }
    if let Some(max_seq_length) = model.max_seq_length()
        && prompt_length + config.max_new_tokens > max_seq_length + 1
    {
        // The last new token is produced but never fed back, hence the `+ 1`.
        return Err(GenerationError::PromptTooLong {
            prompt: prompt_length,
            max_new_tokens: config.max_new_tokens,
            max_seq_length,
        });
    }
    Ok(prompt_length)
}

/// One row's next-token logits after the repetition penalty over `history` (the prompt and
/// the tokens added so far) and, while fewer than `config.min_new_tokens` were added (`step`
/// of them), with every end-of-sequence id at `-inf`: what greedy decoding takes the argmax of.
pub fn processed_logits(
    row: &[f32],
    history: &[u32],
    step: usize,
    config: &GenerationConfig,
) -> Vec<f32> {
    let mut row = row.to_vec();
    logits::apply_repetition_penalty(&mut row, history, config.repetition_penalty as f32);
    if step < config.min_new_tokens {
        for &eos in &config.eos_token_ids {
            if let Some(l) = row.get_mut(eos as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    row
}

/// The distribution a sampled next token is drawn from: [`processed_logits`], then
/// temperature, top-k and top-p ([`logits::sampling_distribution`]), in the order
/// HuggingFace's `generate()` applies its logits processors (checked against them on fixed
/// logits: tests/generate.rs).
pub fn next_token_distribution(
    row: &[f32],
    history: &[u32],
    step: usize,
    config: &GenerationConfig,
) -> Vec<f32> {
    logits::sampling_distribution(
        &processed_logits(row, history, step, config),
        config.temperature as f32,
        config.top_k,
        config.top_p.map(|p| p as f32),
    )
}

/// Picks the next token of one row.
fn choose(
    row: &[f32],
    history: &[u32],
    step: usize,
    config: &GenerationConfig,
    rng: &mut StdRng,
) -> u32 {
    let token = if config.do_sample {
        logits::draw(&next_token_distribution(row, history, step, config), rng)
    } else {
        logits::argmax(&processed_logits(row, history, step, config))
    };
    token as u32
}
