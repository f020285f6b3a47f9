//! Text data for language models: tokenizers, datasets and batching.
//!
//! Planned contents (see `docs/architecture.md`): char, word, BPE and WordPiece tokenizers
//! (and any HuggingFace `tokenizer.json`), corpus and labelled datasets, and batchers that pad
//! and build attention masks.
