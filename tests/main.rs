//! lmforge's integration tests, in one binary so the workspace links once.
//!
//! Backend parity tests run on every device compiled into the build (`--features wgpu`
//! adds the wgpu adapter); `LMFORGE_TEST_DEVICES=flex,wgpu` narrows the set.

mod attention_reference;
mod block_reference;
mod examples;
mod generate;
mod llama_reference;
mod models;
mod models_reference;
mod parity;
mod rnn_reference;
