//! The building blocks of lmforge's models, usable on their own in any burn model.
//!
//! - [`rnn`]: Elman RNN, LSTM and GRU (stacked, bidirectional, stateful, PyTorch layout).
//! - [`attention`]: multi-head attention with padding and causal masks, a KV cache and
//!   optional attention probabilities.
//! - [`position`]: learned, sinusoidal and rotary positional encodings.
//! - [`transformer`]: feed-forward sub-layer, LayerNorm/RMSNorm, and Transformer encoder and
//!   decoder blocks (pre-LN or post-LN, optional cross-attention, KV-cached decoding).
//! - [`Linear`] and [`Embedding`]: burn's layers of those names (same parameters and paths)
//!   that can keep their weights quantized and packed ([`quant`]: int8 per channel, int4 in
//!   blocks), multiplied through a kernel that widens the integers in registers;
//!   [`PackLayers`] reaches every such layer of a model.
//!
//! Every layer works on any burn device; this crate never selects a backend.
//!
//! With the crate feature `flex` (on through the `lmforge` facade's `flex` feature), the layers
//! that dominate training run as fused operations with hand-written backward passes when their
//! tensors live on burn's `flex` CPU backend: the LSTM recurrence (one operation per layer and
//! direction, its weight gradient as one product), attention (per-head products and softmax in
//! parallel, probabilities kept for the backward pass), LayerNorm and GELU. They compute the same
//! functions as the composed tensor code used on every other backend, and the tests compare both
//! paths value for value and gradient for gradient. Linear layers inside the blocks fold the
//! batch into rows ([`linear_rows`]) so that each is one matrix product.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use lmforge_layers::rnn::LstmConfig;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let device = lmforge_device::device_from_env()?;
//! let lstm = LstmConfig::new(8, 16).with_n_layers(2).init(&device)?;
//! let x = Tensor::<3>::zeros([4, 10, 8], &device); // [batch_size, seq_length, d_input]
//! let (y, state) = lstm.forward(x, None);
//! assert_eq!(y.dims(), [4, 10, 16]);
//! assert_eq!(state.hidden.dims(), [2, 4, 16]); // [n_layers, batch_size, d_hidden]
//! # Ok(())
//! # }
//! ```

pub mod attention;
mod dense;
mod error;
#[cfg(feature = "flex")]
mod fused;
pub mod position;
pub mod quant;
pub mod rnn;
mod rows;
#[cfg(test)]
mod test_values;
pub mod transformer;

pub use dense::{
    Embedding, EmbeddingConfig, LayerMut, Linear, LinearConfig, PackLayers, join_path,
    normal_linear,
};
pub use error::LayerError;
#[cfg(feature = "flex")]
pub use fused::gemm::matmul_f32;

pub use rows::{
    AdamWStep, adamw_step, cross_entropy_rows, linear_rows, on_compute_threads, project_rows,
};
