//! GPT: a GPT-2-compatible decoder-only Transformer language model (Radford et al. 2019,
//! "Language Models are Unsupervised Multitask Learners"), with weight tying, KV-cached
//! decoding and HuggingFace GPT-2 import/export.

mod model;
mod pretrained;

pub use model::{Gpt, GptCache, GptConfig};
