//! Greedy generation throughput with the KV cache, printing new tokens/s: GPT with 4 layers,
//! d_model 256, 4 heads, vocab 96, context 512; batch 1, prompt 16, 256 new tokens. Run
//! `benches/generate_torch.py` in the same session for HuggingFace `generate()`'s figure on
//! the identical configuration.
//!
//! ```sh
//! cargo bench --bench generate                # default device (flex), or LMFORGE_DEVICE
//! ```

mod common;

use lmforge::device::select_from_env;
use lmforge::models::generate::{GenerationConfig, generate};
use lmforge::models::gpt::GptConfig;

const NEW_TOKENS: usize = 256;
const REPEATS: usize = 5;

fn main() {
    let selected = select_from_env().expect("device");
    let device = &selected.device;
    device.seed(0);
    let gpt = GptConfig::new(96)
        .with_max_seq_length(512)
        .with_d_model(256)
        .with_n_layers(4)
        .with_n_heads(4)
        .with_dropout(0.0)
        .with_attention_dropout(0.0)
        .init(device)
        .expect("config");
    let prompt: Vec<u32> = (0..16).map(|i| (i * 7 % 96) as u32).collect();
    let config = GenerationConfig::new()
        .with_max_new_tokens(NEW_TOKENS)
        .with_min_new_tokens(NEW_TOKENS);
    println!("device: {selected}; GPT 4 x 256, 4 heads, vocab 96; prompt 16, {NEW_TOKENS} new");
    let (median, best) = common::time(device, REPEATS, || {
        let out = generate(
            &gpt,
            std::slice::from_ref(&prompt),
            &config,
            device,
            |_, _| {},
        )
        .expect("generate");
        assert_eq!(out[0].len(), NEW_TOKENS);
    });
    println!(
        "lmforge greedy generation: median {:.1} ms, best {:.1} ms, {:.0} tokens/s",
        median * 1e3,
        best * 1e3,
        NEW_TOKENS as f64 / median
    );
}
