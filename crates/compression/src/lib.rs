//! Model compression for deployment.
//!
//! Planned contents (see `docs/architecture.md`): int8/int4 post-training quantization,
//! magnitude and structured (attention head) pruning, knowledge distillation, and
//! size/quality/latency reports.
