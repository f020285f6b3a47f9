//! Transformer building blocks (Vaswani et al. 2017): the feed-forward sub-layer, the norms,
//! and encoder and decoder blocks in pre-LN (GPT-2) or post-LN (BERT) arrangement.

mod block;
pub(crate) mod feed_forward;
mod norm;

pub use crate::dense::normal_linear;
pub use block::{
    BlockConfig, CrossAttention, DecoderBlock, DecoderBlockCache, EncoderBlock, Memory,
};
pub use feed_forward::{FeedForward, FeedForwardActivation, FeedForwardConfig};
pub use norm::{LayerNorm, Norm, NormKind};

#[cfg(test)]
mod tests;
