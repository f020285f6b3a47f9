//! Transformer encoder and decoder blocks, pre-LN or post-LN.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Bool, Device, Tensor};

use super::feed_forward::{FeedForward, FeedForwardActivation, FeedForwardConfig};
use super::norm::{Norm, NormKind};
use crate::attention::{AttentionInput, KvCache, MultiHeadAttention, MultiHeadAttentionConfig};
use crate::error::{LayerError, check};
use crate::position::RopeConfig;

/// Configuration shared by [`EncoderBlock`] and [`DecoderBlock`].
#[derive(Config, Debug)]
pub struct BlockConfig {
    /// Model width.
    pub d_model: usize,
    /// Number of attention heads.
    pub n_heads: usize,
    /// Inner width of the feed-forward block.
    pub d_ff: usize,
    /// Normalise before each sub-layer (pre-LN, GPT-2) instead of after the residual sum
    /// (post-LN, BERT and the original Transformer). Default: true.
    #[config(default = true)]
    pub norm_first: bool,
    /// The feed-forward non-linearity. Default: exact GELU.
    #[config(default = "FeedForwardActivation::Gelu")]
    pub activation: FeedForwardActivation,
    /// LayerNorm or RMSNorm. Default: LayerNorm.
    #[config(default = "NormKind::LayerNorm")]
    pub norm: NormKind,
    /// Epsilon of the norms. Default: 1e-5 (GPT-2; BERT uses 1e-12).
    #[config(default = 1e-5)]
    pub norm_epsilon: f64,
    /// Dropout on each sub-layer's output before the residual sum. Default: 0.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Dropout on attention probabilities. Default: 0.
    #[config(default = 0.0)]
    pub attention_dropout: f64,
    /// Standard deviation of the normal weight initialisation. Default: 0.02.
    #[config(default = 0.02)]
    pub init_std: f64,
    /// Key/value heads of the attention (grouped-query attention). Default: `n_heads`.
    #[config(default = "None")]
    pub n_kv_heads: Option<usize>,
    /// Width of one attention head. Default: `d_model / n_heads`.
    #[config(default = "None")]
    pub d_head: Option<usize>,
    /// Biases on the feed-forward projections (and, unless set apart, on the attention's).
    /// Default: true.
    #[config(default = true)]
    pub bias: bool,
    /// Bias on the attention's output projection. Default: `bias`.
    #[config(default = "None")]
    pub output_bias: Option<bool>,
    /// Biases on the attention's query, key and value projections. Default: `bias`.
    #[config(default = "None")]
    pub qkv_bias: Option<bool>,
    /// Rotary position embeddings in the self-attention. Default: none.
    #[config(default = "None")]
    pub rotary: Option<RopeConfig>,
    /// Sliding window of the causal self-attention. Default: none.
    #[config(default = "None")]
    pub sliding_window: Option<usize>,
    /// Decoder blocks only: add cross-attention over an encoder's output of this width
    /// (`Some(d_model)` for a standard encoder-decoder). Default: none.
    #[config(default = "None")]
    pub cross_attention: Option<usize>,
}

impl BlockConfig {
    fn attention(
        &self,
        d_memory: Option<usize>,
        device: &Device,
    ) -> Result<MultiHeadAttention, LayerError> {
        let is_self = d_memory.is_none();
        MultiHeadAttentionConfig::new(self.d_model, self.n_heads)
            .with_d_memory(d_memory)
            .with_n_kv_heads(self.n_kv_heads)
            .with_d_head(self.d_head)
            .with_bias(self.qkv_bias.unwrap_or(self.bias))
            .with_output_bias(Some(self.output_bias.unwrap_or(self.bias)))
            .with_rotary(self.rotary.clone().filter(|_| is_self))
            .with_sliding_window(self.sliding_window.filter(|_| is_self))
            .with_dropout(self.attention_dropout)
            .with_init_std(self.init_std)
            .init(device)
    }

    fn parts(&self, device: &Device) -> Result<(FeedForward, Dropout), LayerError> {
        check((0.0..1.0).contains(&self.dropout), "BlockConfig", || {
            format!("dropout must be in [0, 1), got {}", self.dropout)
        })?;
        let feed_forward = FeedForwardConfig::new(self.d_model, self.d_ff)
            .with_activation(self.activation)
            .with_bias(self.bias)
            .with_init_std(self.init_std)
            .init(device)?;
        Ok((feed_forward, DropoutConfig::new(self.dropout).init()))
    }

    fn norm(&self, device: &Device) -> Norm {
        Norm::new(self.norm, self.d_model, self.norm_epsilon, device)
    }

    /// Builds an encoder block (bidirectional self-attention + feed-forward).
    ///
    /// # Errors
    /// [`LayerError::InvalidConfig`] as for the attention and feed-forward configs, or when
    /// `cross_attention` is set (encoder blocks have none).
    pub fn init_encoder(&self, device: &Device) -> Result<EncoderBlock, LayerError> {
        check(self.cross_attention.is_none(), "BlockConfig", || {
            "an encoder block has no cross-attention".into()
        })?;
        let (feed_forward, dropout) = self.parts(device)?;
        Ok(EncoderBlock {
            attention: self.attention(None, device)?,
            norm_attention: self.norm(device),
            feed_forward,
            norm_feed_forward: self.norm(device),
            dropout,
            norm_first: self.norm_first,
        })
    }

    /// Builds a decoder block (causal self-attention, optional cross-attention, feed-forward).
    ///
    /// # Errors
    /// [`LayerError::InvalidConfig`] as for the attention and feed-forward configs.
    pub fn init_decoder(&self, device: &Device) -> Result<DecoderBlock, LayerError> {
        let (feed_forward, dropout) = self.parts(device)?;
        let cross = match self.cross_attention {
            Some(d_memory) => Some(CrossAttention {
                attention: self.attention(Some(d_memory), device)?,
                norm: self.norm(device),
            }),
            None => None,
        };
        Ok(DecoderBlock {
            self_attention: self.attention(None, device)?,
            norm_self_attention: self.norm(device),
            cross_attention: cross,
            feed_forward,
            norm_feed_forward: self.norm(device),
            dropout,
            norm_first: self.norm_first,
        })
    }
}

/// `x + dropout(sublayer(norm(x)))` (pre-LN) or `norm(x + dropout(sublayer(x)))` (post-LN).
fn residual(
    x: Tensor<3>,
    norm: &Norm,
    dropout: &Dropout,
    norm_first: bool,
    sublayer: impl FnOnce(Tensor<3>) -> Tensor<3>,
) -> Tensor<3> {
    if norm_first {
        x.clone() + dropout.forward(sublayer(norm.forward(x)))
    } else {
        norm.forward(x.clone() + dropout.forward(sublayer(x)))
    }
}

/// A Transformer encoder block: self-attention then feed-forward, each with a residual
/// connection and a norm, pre-LN (`norm_first`) or post-LN (BERT).
#[derive(Module, Debug)]
pub struct EncoderBlock {
    /// Self-attention.
    pub attention: MultiHeadAttention,
    /// Norm around the attention sub-layer.
    pub norm_attention: Norm,
    /// Feed-forward sub-layer.
    pub feed_forward: FeedForward,
    /// Norm around the feed-forward sub-layer.
    pub norm_feed_forward: Norm,
    dropout: Dropout,
    pub(crate) norm_first: bool,
}

impl EncoderBlock {
    /// # Shapes
    /// - `x`: `[batch_size, seq_length, d_model]`
    /// - `mask_pad`: `[batch_size, seq_length]`, `true` = padding
    /// - returns: `[batch_size, seq_length, d_model]`
    pub fn forward(&self, x: Tensor<3>, mask_pad: Option<Tensor<2, Bool>>) -> Tensor<3> {
        let x = residual(
            x,
            &self.norm_attention,
            &self.dropout,
            self.norm_first,
            |h| {
                let mut input = AttentionInput::self_attention(h);
                input.mask_pad = mask_pad;
                self.attention.forward(input).context
            },
        );
        residual(
            x,
            &self.norm_feed_forward,
            &self.dropout,
            self.norm_first,
            |h| self.feed_forward.forward(h),
        )
    }
}

/// Cross-attention sub-layer of a [`DecoderBlock`].
#[derive(Module, Debug)]
pub struct CrossAttention {
    /// Attention from the decoder positions to the encoder output.
    pub attention: MultiHeadAttention,
    /// Norm around it.
    pub norm: Norm,
}

/// The caches of one [`DecoderBlock`] for incremental decoding.
#[derive(Clone, Debug, Default)]
pub struct DecoderBlockCache {
    /// Keys and values of the causal self-attention.
    pub self_attention: KvCache,
    /// Projected encoder output of the cross-attention.
    pub cross_attention: KvCache,
}

/// The encoder output a decoder block attends to.
///
/// # Shapes
/// - `memory`: `[batch_size, seq_memory, d_memory]`
/// - `mask_pad`: `[batch_size, seq_memory]`, `true` = padding
#[derive(Clone, Debug)]
pub struct Memory {
    /// Encoder output.
    pub memory: Tensor<3>,
    /// Encoder padding.
    pub mask_pad: Option<Tensor<2, Bool>>,
}

/// A Transformer decoder block: causal self-attention, optional cross-attention to an encoder
/// output, feed-forward; each with a residual connection and a norm, pre-LN or post-LN.
/// Without cross-attention this is a GPT block.
#[derive(Module, Debug)]
pub struct DecoderBlock {
    /// Causal self-attention.
    pub self_attention: MultiHeadAttention,
    /// Norm around the self-attention.
    pub norm_self_attention: Norm,
    /// Cross-attention, when configured.
    pub cross_attention: Option<CrossAttention>,
    /// Feed-forward sub-layer.
    pub feed_forward: FeedForward,
    /// Norm around the feed-forward sub-layer.
    pub norm_feed_forward: Norm,
    dropout: Dropout,
    norm_first: bool,
}

impl DecoderBlock {
    /// Runs whole sequences.
    ///
    /// # Shapes
    /// - `x`: `[batch_size, seq_length, d_model]`
    /// - `mask_pad`: `[batch_size, seq_length]`, `true` = padding
    /// - returns: `[batch_size, seq_length, d_model]`
    ///
    /// # Panics
    /// When `memory` is given to a block without cross-attention or the reverse.
    pub fn forward(
        &self,
        x: Tensor<3>,
        mask_pad: Option<Tensor<2, Bool>>,
        memory: Option<&Memory>,
    ) -> Tensor<3> {
        self.run(x, mask_pad, memory, None, None)
    }

    /// Runs new positions with caches: equal to [`Self::forward`] over the whole sequence so
    /// far, for the new positions.
    ///
    /// # Shapes
    /// - `x`: `[batch_size, seq_new, d_model]`
    /// - `mask_pad`: `[batch_size, seq_cached + seq_new]`
    pub fn forward_cached(
        &self,
        x: Tensor<3>,
        mask_pad: Option<Tensor<2, Bool>>,
        memory: Option<&Memory>,
        cache: &mut DecoderBlockCache,
    ) -> Tensor<3> {
        self.run(x, mask_pad, memory, None, Some(cache))
    }

    /// Runs a decoder-only block (no cross-attention) with explicit query positions for its
    /// rotary embeddings, with or without a cache.
    ///
    /// # Shapes
    /// - `x`: `[batch_size, seq_new, d_model]`
    /// - `mask_pad`: `[batch_size, seq_cached + seq_new]`
    /// - `positions`: as [`AttentionInput::positions`]; `None`: the cached length onwards
    pub fn forward_at(
        &self,
        x: Tensor<3>,
        mask_pad: Option<Tensor<2, Bool>>,
        positions: Option<Vec<usize>>,
        cache: Option<&mut DecoderBlockCache>,
    ) -> Tensor<3> {
        self.run(x, mask_pad, None, positions, cache)
    }

    fn run(
        &self,
        x: Tensor<3>,
        mask_pad: Option<Tensor<2, Bool>>,
        memory: Option<&Memory>,
        positions: Option<Vec<usize>>,
        mut cache: Option<&mut DecoderBlockCache>,
    ) -> Tensor<3> {
        assert_eq!(
            memory.is_some(),
            self.cross_attention.is_some(),
            "DecoderBlock: memory must be given exactly when the block has cross-attention"
        );
        let x = residual(
            x,
            &self.norm_self_attention,
            &self.dropout,
            self.norm_first,
            |h| {
                let mut input = AttentionInput::self_attention(h).causal();
                input.mask_pad = mask_pad;
                input.positions = positions;
                match cache.as_deref_mut() {
                    Some(cache) => {
                        self.self_attention
                            .forward_cached(input, &mut cache.self_attention)
                            .context
                    }
                    None => self.self_attention.forward(input).context,
                }
            },
        );
        let x = match (&self.cross_attention, memory) {
            (Some(cross), Some(memory)) => {
                residual(x, &cross.norm, &self.dropout, self.norm_first, |h| {
                    let mut input = AttentionInput::cross_attention(h, memory.memory.clone());
                    input.mask_pad = memory.mask_pad.clone();
                    match cache {
                        Some(cache) => {
                            cross
                                .attention
                                .forward_cached(input, &mut cache.cross_attention)
                                .context
                        }
                        None => cross.attention.forward(input).context,
                    }
                })
            }
            _ => x,
        };
        residual(
            x,
            &self.norm_feed_forward,
            &self.dropout,
            self.norm_first,
            |h| self.feed_forward.forward(h),
        )
    }
}

crate::pack_layers!(EncoderBlock {
    attention,
    feed_forward
});
crate::pack_layers!(CrossAttention { attention });
crate::pack_layers!(DecoderBlock {
    self_attention,
    cross_attention,
    feed_forward
});
