//! The Llama family: decoder-only Transformers with RMSNorm, rotary positions, grouped-query
//! attention and SwiGLU feed-forward (Touvron et al. 2023, "LLaMA: Open and Efficient
//! Foundation Language Models"). One config-driven model covers HuggingFace's Llama
//! (2, 3, 3.1, 3.2; SmolLM, TinyLlama), Mistral (sliding-window attention) and Qwen2 (biases on
//! the query, key and value projections), with KV-cached decoding that stores the key/value
//! heads only, and HuggingFace import/export.

mod model;
mod pretrained;

pub use model::{Llama, LlamaCache, LlamaConfig, LlamaFamily};
