//! Training and fine-tuning of lmforge models.
//!
//! Planned contents (see `docs/architecture.md`): a step-based trainer with AdamW and
//! weight-decay exclusions, warmup with cosine or linear decay, global-norm clipping,
//! gradient accumulation, early stopping, atomic checkpoints with exact resume, progress and
//! metric logs, and fine-tuning helpers (load pretrained weights, add a head, freeze layers).
