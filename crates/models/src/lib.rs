//! Language models assembled from `lmforge-layers`.
//!
//! Planned contents (see `docs/architecture.md`): an LSTM language model, GPT (GPT-2
//! compatible, weight tying, KV-cached decoding), BERT with its task heads (masked LM,
//! next-sentence prediction, sequence and token classification, question answering), an
//! encoder-decoder Transformer, text generation, and import/export of HuggingFace
//! safetensors checkpoints.
