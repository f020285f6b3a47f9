//! Multi-head attention (Vaswani et al. 2017, "Attention Is All You Need"), its masks and its
//! KV cache.

mod cache;
mod mask;
mod mha;

#[cfg(test)]
pub(crate) use crate::dense::select_outputs;
pub use cache::KvCache;
pub use mask::{causal_mask, padding_mask};
pub use mha::{AttentionInput, AttentionOutput, MultiHeadAttention, MultiHeadAttentionConfig};

#[cfg(test)]
mod tests;
