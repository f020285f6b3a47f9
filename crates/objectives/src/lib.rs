//! Training objectives and evaluation metrics for language models.
//!
//! Planned contents (see `docs/architecture.md`): causal-LM loss, masked-LM masking (15%,
//! 80/10/10, whole-word), next-sentence prediction, sequence- and token-classification losses
//! with label smoothing and an ignore index; perplexity, accuracy and entity-level F1.
