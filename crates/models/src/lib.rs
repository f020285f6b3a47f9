//! Language models assembled from `lmforge-layers`, with HuggingFace checkpoint import and
//! export.
//!
//! - [`lstm_lm`]: [`LstmLm`](lstm_lm::LstmLm), the embedding/LSTM/linear language model,
//!   carrying its recurrent state across batches.
//! - [`gpt`]: [`Gpt`](gpt::Gpt), GPT-2's architecture with weight tying and a KV cache.
//! - [`llama`]: [`Llama`](llama::Llama), the Llama/Mistral/Qwen2 skeleton: RMSNorm, rotary
//!   positions, grouped-query attention, SwiGLU, sliding windows.
//! - [`bert`]: [`Bert`](bert::Bert) and its task models: masked LM, pre-training (MLM + NSP),
//!   sequence classification, token classification, question answering.
//! - [`seq2seq`]: [`Seq2Seq`](seq2seq::Seq2Seq), the encoder-decoder Transformer.
//! - [`generate`]: greedy and sampled generation with streaming over any [`generate::Decoder`].
//! - [`pretrained`]: [`Pretrained`] (`from_pretrained`/`save_pretrained` for HuggingFace
//!   folders of GPT-2, BERT, Llama, Mistral and Qwen2; single or sharded safetensors) and [`pretrained::save`]/[`pretrained::load`] for lmforge's
//!   own checkpoint format.
//!
//! Models return logits (and states); losses live in `lmforge-objectives`. Every model runs
//! on any burn device and never selects a backend. Inputs are checked: token ids outside the
//! vocabulary, sequences longer than the context window and mismatched mask shapes panic
//! with a message naming the model, the value and the limit, before any computation.
//!
//! ```
//! use burn::tensor::{Int, Tensor};
//! use lmforge_models::gpt::{GptCache, GptConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let device = lmforge_device::device_from_env()?;
//! let gpt = GptConfig::tiny(96).init(&device)?;
//! let prompt = Tensor::<2, Int>::from_ints([[10, 20, 30]], &device);
//! let mut cache = GptCache::default();
//! let logits = gpt.forward_cached(prompt, None, &mut cache); // [1, 3, 96]
//! let next = logits.slice([0..1, 2..3]).argmax(2).reshape([1, 1]);
//! let logits = gpt.forward_cached(next, None, &mut cache); // one more position
//! assert_eq!((logits.dims(), cache.len()), ([1, 1, 96], 4));
//! # Ok(())
//! # }
//! ```

pub mod bert;
mod cache;
mod error;
pub mod generate;
pub mod gpt;
pub mod llama;
pub mod lstm_lm;
pub mod pretrained;
pub mod seq2seq;
mod tokens;

pub use cache::DecoderCache;
pub use error::ModelError;
pub use pretrained::Pretrained;
