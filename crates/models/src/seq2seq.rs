//! The encoder-decoder Transformer (Vaswani et al. 2017, "Attention Is All You Need") for
//! translation, summarisation and denoising auto-encoding.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Initializer};
use burn::tensor::{Bool, Device, Int, Tensor};
use lmforge_layers::position::{SinusoidalPositions, SinusoidalPositionsConfig};
use lmforge_layers::transformer::{
    BlockConfig, DecoderBlock, DecoderBlockCache, EncoderBlock, FeedForwardActivation, Memory,
    Norm, NormKind, normal_linear,
};
use lmforge_layers::{Embedding, EmbeddingConfig, Linear};

use crate::error::{ModelError, check, check_dropout};
use crate::tokens::{assert_tokens, check_positions, tied_logits};

/// Configuration of a [`Seq2Seq`].
#[derive(Config, Debug)]
pub struct Seq2SeqConfig {
    /// Number of source token ids.
    pub src_vocab_size: usize,
    /// Number of target token ids. Default: `src_vocab_size`.
    #[config(default = "None")]
    pub tgt_vocab_size: Option<usize>,
    /// Model width. Default: 512.
    #[config(default = 512)]
    pub d_model: usize,
    /// Attention heads. Default: 8.
    #[config(default = 8)]
    pub n_heads: usize,
    /// Encoder blocks. Default: 6.
    #[config(default = 6)]
    pub n_encoder_layers: usize,
    /// Decoder blocks. Default: 6.
    #[config(default = 6)]
    pub n_decoder_layers: usize,
    /// Feed-forward inner width. Default: 2048.
    #[config(default = 2048)]
    pub d_ff: usize,
    /// Longest source or target sequence. Default: 512.
    #[config(default = 512)]
    pub max_seq_length: usize,
    /// Feed-forward non-linearity. Default: ReLU (the original Transformer).
    #[config(default = "FeedForwardActivation::Relu")]
    pub activation: FeedForwardActivation,
    /// Pre-LN blocks with a final norm after each stack (true), or post-LN as in the paper.
    /// Default: true (trains without a long warmup).
    #[config(default = true)]
    pub norm_first: bool,
    /// Dropout on embeddings and sub-layer outputs. Default: 0.1.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Dropout on attention probabilities. Default: 0.
    #[config(default = 0.0)]
    pub attention_dropout: f64,
    /// One embedding table for source and target (needs equal vocabularies). Default: true.
    #[config(default = true)]
    pub share_embeddings: bool,
    /// Use the target embedding as the output projection. Default: true.
    #[config(default = true)]
    pub tie_output: bool,
    /// Standard deviation of the normal initialisation. Default: 0.02.
    #[config(default = 0.02)]
    pub init_std: f64,
}

impl Seq2SeqConfig {
    /// A small model for tests and examples: width 64, 4 heads, 2 + 2 layers, `d_ff` 256,
    /// no dropout.
    pub fn tiny(vocab_size: usize) -> Self {
        Self::new(vocab_size)
            .with_d_model(64)
            .with_n_heads(4)
            .with_n_encoder_layers(2)
            .with_n_decoder_layers(2)
            .with_d_ff(256)
            .with_max_seq_length(128)
            .with_dropout(0.0)
    }

    /// The target vocabulary size.
    pub fn tgt_vocab_size(&self) -> usize {
        self.tgt_vocab_size.unwrap_or(self.src_vocab_size)
    }

    /// Builds the model.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] for a zero size, a dropout outside `[0, 1)`, or shared
    /// embeddings with different vocabularies; [`ModelError::Layer`] for block settings.
    pub fn init(&self, device: &Device) -> Result<Seq2Seq, ModelError> {
        let model = "Seq2SeqConfig";
        let tgt_vocab_size = self.tgt_vocab_size();
        check(self.src_vocab_size > 0 && tgt_vocab_size > 0, model, || {
            "vocabulary sizes must be > 0".into()
        })?;
        check(
            self.n_encoder_layers > 0 && self.n_decoder_layers > 0,
            model,
            || "n_encoder_layers and n_decoder_layers must be > 0".into(),
        )?;
        check(
            !self.share_embeddings || self.src_vocab_size == tgt_vocab_size,
            model,
            || {
                format!(
                    "share_embeddings needs src_vocab_size ({}) == tgt_vocab_size ({tgt_vocab_size})",
                    self.src_vocab_size
                )
            },
        )?;
        check_dropout(model, self.dropout)?;
        let block = BlockConfig::new(self.d_model, self.n_heads, self.d_ff)
            .with_norm_first(self.norm_first)
            .with_activation(self.activation)
            .with_dropout(self.dropout)
            .with_attention_dropout(self.attention_dropout)
            .with_init_std(self.init_std);
        let encoder = (0..self.n_encoder_layers)
            .map(|_| block.init_encoder(device))
            .collect::<Result<Vec<_>, _>>()?;
        let decoder_block = block.clone().with_cross_attention(Some(self.d_model));
        let decoder = (0..self.n_decoder_layers)
            .map(|_| decoder_block.init_decoder(device))
            .collect::<Result<Vec<_>, _>>()?;
        let embedding = |n| {
            EmbeddingConfig::new(n, self.d_model)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: self.init_std,
                })
                .init(device)
        };
        let final_norm = || {
            self.norm_first
                .then(|| Norm::new(NormKind::LayerNorm, self.d_model, 1e-5, device))
        };
        Ok(Seq2Seq {
            src_embedding: embedding(self.src_vocab_size),
            tgt_embedding: (!self.share_embeddings).then(|| embedding(tgt_vocab_size)),
            positions: SinusoidalPositionsConfig::new(self.max_seq_length, self.d_model)
                .init(device)?,
            encoder,
            decoder,
            encoder_norm: final_norm(),
            decoder_norm: final_norm(),
            output: (!self.tie_output)
                .then(|| normal_linear(self.d_model, tgt_vocab_size, true, self.init_std, device)),
            dropout: DropoutConfig::new(self.dropout).init(),
            config: self.clone(),
        })
    }
}

/// An encoder-decoder Transformer: the encoder reads the source bidirectionally, the decoder
/// predicts the target causally while cross-attending to the encoder's output.
///
/// Token embeddings are scaled by `sqrt(d_model)` and summed with sinusoidal positions.
/// Training feeds the target shifted right (teacher forcing); decoding runs
/// [`Seq2Seq::encode`] once and [`Seq2Seq::decode_cached`] per step.
///
/// ```
/// use burn::tensor::{Int, Tensor};
/// use lmforge_models::seq2seq::{Seq2SeqConfig, Seq2SeqInput};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let device = lmforge_device::device_from_env()?;
/// let model = Seq2SeqConfig::tiny(40).init(&device)?;
/// let src = Tensor::<2, Int>::from_ints([[5, 6, 7, 8, 9]], &device);
/// let tgt = Tensor::<2, Int>::from_ints([[1, 9, 8]], &device);
/// let logits = model.forward(Seq2SeqInput::new(src, tgt));
/// assert_eq!(logits.dims(), [1, 3, 40]); // [batch_size, tgt_length, tgt_vocab_size]
/// # Ok(())
/// # }
/// ```
#[derive(Module, Debug)]
pub struct Seq2Seq {
    /// Source embedding (also the target's when shared).
    pub src_embedding: Embedding,
    /// Target embedding, when not shared.
    pub tgt_embedding: Option<Embedding>,
    /// Sinusoidal positions (not trained).
    pub positions: SinusoidalPositions,
    /// Encoder blocks.
    pub encoder: Vec<EncoderBlock>,
    /// Decoder blocks (causal self-attention + cross-attention).
    pub decoder: Vec<DecoderBlock>,
    /// Final encoder norm (pre-LN only).
    pub encoder_norm: Option<Norm>,
    /// Final decoder norm (pre-LN only).
    pub decoder_norm: Option<Norm>,
    /// Output projection, when not tied to the target embedding.
    pub output: Option<Linear>,
    dropout: Dropout,
    #[module(skip)]
    config: Seq2SeqConfig,
}

/// What [`Seq2Seq::forward`] reads.
///
/// # Shapes
/// - `src`: `[batch_size, src_length]`, `src_mask_pad` the same, `true` = padding
/// - `tgt`: `[batch_size, tgt_length]` (the decoder input), `tgt_mask_pad` the same
#[derive(Clone, Debug)]
pub struct Seq2SeqInput {
    /// Source token ids.
    pub src: Tensor<2, Int>,
    /// Source padding.
    pub src_mask_pad: Option<Tensor<2, Bool>>,
    /// Target (decoder input) token ids.
    pub tgt: Tensor<2, Int>,
    /// Target padding.
    pub tgt_mask_pad: Option<Tensor<2, Bool>>,
}

impl Seq2SeqInput {
    /// Unpadded source and target.
    pub fn new(src: Tensor<2, Int>, tgt: Tensor<2, Int>) -> Self {
        Self {
            src,
            src_mask_pad: None,
            tgt,
            tgt_mask_pad: None,
        }
    }

    /// Sets both padding masks.
    pub fn with_masks(
        mut self,
        src_mask_pad: Tensor<2, Bool>,
        tgt_mask_pad: Tensor<2, Bool>,
    ) -> Self {
        self.src_mask_pad = Some(src_mask_pad);
        self.tgt_mask_pad = Some(tgt_mask_pad);
        self
    }
}

/// The decoder caches of a [`Seq2Seq`] for incremental decoding.
#[derive(Clone, Debug, Default)]
pub struct Seq2SeqCache {
    /// One cache per decoder block (self-attention keys/values and the projected memory).
    pub blocks: Vec<DecoderBlockCache>,
}

impl Seq2SeqCache {
    /// Number of target positions cached.
    pub fn len(&self) -> usize {
        self.blocks
            .first()
            .map_or(0, |block| block.self_attention.len())
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Seq2Seq {
    /// The configuration the model was built from.
    pub fn config(&self) -> &Seq2SeqConfig {
        &self.config
    }

    fn embed(&self, embedding: &Embedding, tokens: Tensor<2, Int>, start: usize) -> Tensor<3> {
        let [_, seq_length] = tokens.dims();
        let scale = (self.config.d_model as f64).sqrt();
        let x =
            embedding.forward(tokens).mul_scalar(scale) + self.positions.forward(start, seq_length);
        self.dropout.forward(x)
    }

    fn tgt_embedding(&self) -> &Embedding {
        self.tgt_embedding.as_ref().unwrap_or(&self.src_embedding)
    }

    /// Encodes the source.
    ///
    /// # Shapes
    /// - `src`: `[batch_size, src_length]`; `src_mask_pad` the same, `true` = padding
    /// - returns: memory `[batch_size, src_length, d_model]` with the mask
    ///
    /// # Panics
    /// When a token id is out of range or `src_length` exceeds `max_seq_length`.
    pub fn encode(&self, src: Tensor<2, Int>, src_mask_pad: Option<Tensor<2, Bool>>) -> Memory {
        let [_, src_length] = src.dims();
        check_positions("Seq2Seq source", 0, src_length, self.config.max_seq_length);
        assert_tokens("Seq2Seq source", &src, self.config.src_vocab_size);
        let mut x = self.embed(&self.src_embedding, src, 0);
        for block in &self.encoder {
            x = block.forward(x, src_mask_pad.clone());
        }
        if let Some(norm) = &self.encoder_norm {
            x = norm.forward(x);
        }
        Memory {
            memory: x,
            mask_pad: src_mask_pad,
        }
    }

    /// Decodes a whole target sequence against an encoded source.
    ///
    /// # Shapes
    /// - `tgt`: `[batch_size, tgt_length]`; `tgt_mask_pad` the same
    /// - returns: `[batch_size, tgt_length, tgt_vocab_size]`
    pub fn decode(
        &self,
        tgt: Tensor<2, Int>,
        tgt_mask_pad: Option<Tensor<2, Bool>>,
        memory: &Memory,
    ) -> Tensor<3> {
        self.run_decoder(tgt, tgt_mask_pad, memory, None)
    }

    /// Decodes new target positions, reusing and extending `cache`: equal to the last
    /// `tgt_new` positions of [`Self::decode`] over the whole target so far.
    ///
    /// # Shapes
    /// - `tgt`: `[batch_size, tgt_new]`
    /// - `tgt_mask_pad`: `[batch_size, tgt_cached + tgt_new]`
    /// - returns: `[batch_size, tgt_new, tgt_vocab_size]`
    pub fn decode_cached(
        &self,
        tgt: Tensor<2, Int>,
        tgt_mask_pad: Option<Tensor<2, Bool>>,
        memory: &Memory,
        cache: &mut Seq2SeqCache,
    ) -> Tensor<3> {
        self.run_decoder(tgt, tgt_mask_pad, memory, Some(cache))
    }

    /// Encodes the source and decodes the target (teacher forcing).
    ///
    /// # Shapes
    /// See [`Seq2SeqInput`]; returns `[batch_size, tgt_length, tgt_vocab_size]`.
    pub fn forward(&self, input: Seq2SeqInput) -> Tensor<3> {
        let memory = self.encode(input.src, input.src_mask_pad);
        self.decode(input.tgt, input.tgt_mask_pad, &memory)
    }

    fn run_decoder(
        &self,
        tgt: Tensor<2, Int>,
        tgt_mask_pad: Option<Tensor<2, Bool>>,
        memory: &Memory,
        mut cache: Option<&mut Seq2SeqCache>,
    ) -> Tensor<3> {
        let [_, tgt_length] = tgt.dims();
        let start = cache.as_ref().map_or(0, |c| c.len());
        check_positions(
            "Seq2Seq target",
            start,
            tgt_length,
            self.config.max_seq_length,
        );
        assert_tokens("Seq2Seq target", &tgt, self.config.tgt_vocab_size());
        let mut x = self.embed(self.tgt_embedding(), tgt, start);
        if let Some(cache) = cache.as_deref_mut()
            && cache.blocks.len() != self.decoder.len()
        {
            cache.blocks = vec![DecoderBlockCache::default(); self.decoder.len()];
        }
        for (i, block) in self.decoder.iter().enumerate() {
            x = match cache.as_deref_mut() {
                Some(cache) => block.forward_cached(
                    x,
                    tgt_mask_pad.clone(),
                    Some(memory),
                    &mut cache.blocks[i],
                ),
                None => block.forward(x, tgt_mask_pad.clone(), Some(memory)),
            };
        }
        if let Some(norm) = &self.decoder_norm {
            x = norm.forward(x);
        }
        match &self.output {
            Some(output) => output.forward(x),
            None => tied_logits(x, self.tgt_embedding()),
        }
    }
}

lmforge_layers::pack_layers!(Seq2Seq {
    src_embedding,
    tgt_embedding,
    encoder,
    decoder,
    output
});
