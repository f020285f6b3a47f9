//! Text generation from a HuggingFace folder: GPT-2, Llama, Mistral or Qwen2, streamed to the
//! terminal as it is produced.
//!
//! ```sh
//! cargo run --release --example generate -- --model path/to/SmolLM2-135M --prompt "The sea"
//! cargo run --release --example generate -- --model path/to/folder --do-sample --top-p 0.9
//! cargo run --release --example generate -- --model tests/fixtures/models/llama_gqa --prompt-ids 1,5,9
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Parser;
use lmforge::data::chat::{ChatMessage, ChatTemplate};
use lmforge::data::tokenizer::{HfTokenizer, Tokenizer};
use lmforge::models::generate::{
    BeamConfig, Decoder, GenerationConfig, beam_search, generate_with_detokenizer,
};
use lmforge::models::gpt::Gpt;
use lmforge::models::llama::Llama;
use lmforge::models::pretrained::ParamDtype;

/// Generate text with a pretrained decoder language model.
#[derive(Parser, Debug, Clone)]
pub struct Args {
    /// A HuggingFace model folder: config.json, model.safetensors (or shards with
    /// model.safetensors.index.json) and tokenizer.json. GPT-2, Llama, Mistral and Qwen2.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The prompt text.
    #[arg(long, default_value = "Once upon a time")]
    pub prompt: String,
    /// Send the prompt as a user message through the folder's chat template
    /// (`tokenizer_config.json` or `chat_template.jinja`), opening the assistant's turn.
    #[arg(long)]
    pub chat: bool,
    /// With `--chat`: a system message before the user's.
    #[arg(long)]
    pub system: Option<String>,
    /// The prompt as token ids (comma-separated) instead of text; needed for folders without
    /// a tokenizer.json, whose output is then printed as ids.
    #[arg(long, value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    /// Most new tokens.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// End-of-sequence tokens are suppressed until this many were generated.
    #[arg(long, default_value_t = 0)]
    pub min_new_tokens: usize,
    /// Sample instead of taking the most likely token.
    #[arg(long)]
    pub do_sample: bool,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Sample among the k most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling threshold in (0, 1].
    #[arg(long)]
    pub top_p: Option<f64>,
    /// HuggingFace's repetition penalty (1 = none).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    /// Stop as soon as the new text contains this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Beam search with this many beams (greedy when 1; not streamed).
    #[arg(long, default_value_t = 1)]
    pub num_beams: usize,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Data type of the parameters in memory: f32, f16, bf16, or file (the file's own: a bf16
    /// checkpoint stays bf16). Activations are f32.
    #[arg(long, default_value = "file")]
    pub dtype: ParamDtype,
    /// Backend: flex, ndarray, wgpu, ... (default: LMFORGE_DEVICE or the build's default).
    #[arg(long)]
    pub device: Option<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.model.is_none() {
        eprintln!(
            "generate needs --model DIR: a HuggingFace folder (config.json, model.safetensors \
             or its shards, tokenizer.json) of a GPT-2, Llama, Mistral or Qwen2 model"
        );
        std::process::exit(2);
    }
    run(&args).map(|_| ())
}

/// Loads the folder, generates (streaming to stdout) and returns the new token ids.
pub fn run(args: &Args) -> Result<Vec<u32>> {
    let Some(dir) = args.model.clone() else {
        bail!("--model DIR is required");
    };
    let selected = lmforge::device::select_named(args.device.as_deref())?;
    eprintln!("device: {selected}");
    let device = selected.device.clone();
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("config.json"))
            .with_context(|| format!("{}: config.json", dir.display()))?,
    )
    .with_context(|| format!("{}: config.json is not JSON", dir.display()))?;
    let model_type = config["model_type"].as_str().unwrap_or("").to_string();
    let eos = eos_ids(&dir, &config);
    let start = Instant::now();
    match model_type.as_str() {
        "gpt2" => {
            let model = Gpt::from_pretrained_as(&dir, &device, args.dtype)?;
            let dtype = format!("{:?}", model.param_dtype()).to_lowercase();
            report_load(&model_type, &dtype, start);
            decode_with(&model, &dir, args, eos, &device)
        }
        "llama" | "mistral" | "qwen2" => {
            let model = Llama::from_pretrained_as(&dir, &device, args.dtype)?;
            let dtype = format!("{:?}", model.param_dtype()).to_lowercase();
            report_load(&model_type, &dtype, start);
            decode_with(&model, &dir, args, eos, &device)
        }
        other => bail!(
            "{}: model_type \"{other}\" is not one generate runs (gpt2, llama, mistral, qwen2)",
            dir.display()
        ),
    }
}

fn report_load(model_type: &str, dtype: &str, start: Instant) {
    eprintln!(
        "loaded a {model_type} model in {:.2} s, parameters in {dtype}{}",
        start.elapsed().as_secs_f64(),
        resident_memory()
            .map(|(now, peak)| format!(
                "; resident memory {now:.0} MiB (peak while loading {peak:.0} MiB)"
            ))
            .unwrap_or_default()
    );
}

/// The process's resident memory now and at its peak, in MiB (Linux: /proc/self/status).
fn resident_memory() -> Option<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// End-of-sequence ids from generation_config.json, else config.json (a number or a list).
fn eos_ids(dir: &Path, config: &serde_json::Value) -> Vec<u32> {
    let generation = std::fs::read(dir.join("generation_config.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    let value = generation
        .as_ref()
        .map(|g| g["eos_token_id"].clone())
        .filter(|v| !v.is_null())
        .unwrap_or_else(|| config["eos_token_id"].clone());
    match value {
        serde_json::Value::Number(n) => n.as_u64().map(|id| vec![id as u32]).unwrap_or_default(),
        serde_json::Value::Array(ids) => ids
            .iter()
            .filter_map(|id| id.as_u64().map(|id| id as u32))
            .collect(),
        _ => Vec::new(),
    }
}

fn decode_with<M: Decoder>(
    model: &M,
    dir: &Path,
    args: &Args,
    eos: Vec<u32>,
    device: &Device,
) -> Result<Vec<u32>> {
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = if tokenizer_path.exists() {
        Some(HfTokenizer::from_file(&tokenizer_path)?)
    } else {
        None
    };
    let prompt = prompt_ids(dir, args, tokenizer.as_ref())?;
    // More new tokens than the context leaves room for: as many as fit, said on stderr.
    let mut max_new_tokens = args.max_new_tokens;
    if let Some(context) = model.max_seq_length()
        && prompt.len() + max_new_tokens > context
        && prompt.len() < context
    {
        max_new_tokens = context - prompt.len();
        eprintln!(
            "--max-new-tokens {} capped to {max_new_tokens}: the model's context is {context} \
             and the prompt has {} tokens",
            args.max_new_tokens,
            prompt.len()
        );
    }
    let config = GenerationConfig::new()
        .with_max_new_tokens(max_new_tokens)
        .with_min_new_tokens(args.min_new_tokens.min(max_new_tokens))
        .with_do_sample(args.do_sample)
        .with_temperature(args.temperature)
        .with_top_k(args.top_k)
        .with_top_p(args.top_p)
        .with_repetition_penalty(args.repetition_penalty)
        .with_eos_token_ids(eos)
        .with_stop_strings(args.stop.clone())
        .with_seed(args.seed);
    let decode = |ids: &[u32]| -> String {
        match &tokenizer {
            Some(tokenizer) => tokenizer.decode(ids, true).unwrap_or_default(),
            None => ids
                .iter()
                .map(|id| format!(" {id}"))
                .collect::<Vec<_>>()
                .concat(),
        }
    };
    match &tokenizer {
        Some(_) => print!("{}", args.prompt),
        None => print!("{:?} ->", prompt),
    }
    std::io::stdout().flush()?;
    let start = Instant::now();
    let new_tokens = if args.num_beams > 1 {
        let out = beam_search(
            model,
            &prompt,
            &config,
            &BeamConfig::new(args.num_beams),
            device,
        )?;
        print!("{}", decode(&out));
        out
    } else {
        // Streamed: the text of all new tokens is decoded again at each token and the part
        // not yet printed is written (a character may span several tokens).
        let mut ids = Vec::new();
        let mut printed = 0;
        let out = generate_with_detokenizer(
            model,
            std::slice::from_ref(&prompt),
            &config,
            device,
            &|ids: &[u32]| decode(ids),
            |_, token| {
                ids.push(token);
                let text = decode(&ids);
                if text.len() > printed && text.is_char_boundary(printed) {
                    print!("{}", &text[printed..]);
                    let _ = std::io::stdout().flush();
                    printed = text.len();
                }
            },
        )?;
        out.into_iter().next().unwrap_or_default()
    };
    let seconds = start.elapsed().as_secs_f64();
    println!();
    eprintln!(
        "{} new tokens in {seconds:.2} s ({:.1} tokens/s, prompt {} tokens)",
        new_tokens.len(),
        new_tokens.len() as f64 / seconds,
        prompt.len()
    );
    Ok(new_tokens)
}

/// The prompt's ids: `--prompt-ids` as given, or `--prompt` encoded with the folder's
/// tokenizer, through its chat template with `--chat` (and `--system`).
pub fn prompt_ids(dir: &Path, args: &Args, tokenizer: Option<&HfTokenizer>) -> Result<Vec<u32>> {
    Ok(match (&args.prompt_ids, tokenizer) {
        (Some(_), _) if args.chat => bail!("--chat renders text: give --prompt, not --prompt-ids"),
        (Some(ids), _) => ids.clone(),
        (None, Some(tokenizer)) if args.chat => {
            let template = ChatTemplate::from_folder(dir)?;
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(ChatMessage::new("system", system.as_str()));
            }
            messages.push(ChatMessage::new("user", args.prompt.as_str()));
            let text = template.render(&messages, true)?;
            // The template writes the special tokens (BOS included) itself.
            tokenizer.encode(&text, false)?.ids
        }
        (None, Some(tokenizer)) => tokenizer.encode(&args.prompt, true)?.ids,
        (None, None) => bail!(
            "{}: no tokenizer.json; give the prompt as --prompt-ids 1,2,3",
            dir.display()
        ),
    })
}
