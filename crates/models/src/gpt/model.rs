//! The GPT model: token and learned position embeddings, pre-LN decoder blocks, a final
//! LayerNorm and a language-model head tied to the token embedding.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer};
use burn::tensor::{Bool, DType, Device, Distribution, Int, Tensor, TensorData};
use lmforge_layers::position::{LearnedPositions, LearnedPositionsConfig};
use lmforge_layers::transformer::{
    BlockConfig, DecoderBlock, FeedForwardActivation, Norm, NormKind, normal_linear,
};
use lmforge_layers::{Embedding, EmbeddingConfig, Linear};

use crate::cache::{DecoderCache, DecoderInputs};
use crate::error::{ModelError, check, check_dropout};
use crate::tokens::tied_logits;

/// Configuration of a [`Gpt`].
#[derive(Config, Debug)]
pub struct GptConfig {
    /// Number of token ids.
    pub vocab_size: usize,
    /// Longest sequence (context window). Default: 1024.
    #[config(default = 1024)]
    pub max_seq_length: usize,
    /// Model width. Default: 768.
    #[config(default = 768)]
    pub d_model: usize,
    /// Number of decoder blocks. Default: 12.
    #[config(default = 12)]
    pub n_layers: usize,
    /// Attention heads per block. Default: 12.
    #[config(default = 12)]
    pub n_heads: usize,
    /// Feed-forward inner width. Default: `4 * d_model`.
    #[config(default = "None")]
    pub d_ff: Option<usize>,
    /// Feed-forward non-linearity. Default: GELU's tanh approximation (GPT-2's `gelu_new`).
    #[config(default = "FeedForwardActivation::GeluTanh")]
    pub activation: FeedForwardActivation,
    /// Dropout on embeddings and on each sub-layer's output (GPT-2's `embd_pdrop` and
    /// `resid_pdrop`). Default: 0.1.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Dropout on attention probabilities (`attn_pdrop`). Default: 0.1.
    #[config(default = 0.1)]
    pub attention_dropout: f64,
    /// LayerNorm epsilon. Default: 1e-5.
    #[config(default = 1e-5)]
    pub norm_epsilon: f64,
    /// Use the token embedding as the output projection (GPT-2). Default: true.
    #[config(default = true)]
    pub tie_embeddings: bool,
    /// Standard deviation of the normal initialisation; the projections into the residual
    /// stream use `init_std / sqrt(2 * n_layers)` (GPT-2). Default: 0.02.
    #[config(default = 0.02)]
    pub init_std: f64,
}

impl GptConfig {
    /// GPT-2 small (124M parameters, HuggingFace `gpt2`).
    pub fn gpt2_small() -> Self {
        Self::new(50257)
    }

    /// GPT-2 medium (355M, `gpt2-medium`).
    pub fn gpt2_medium() -> Self {
        Self::new(50257)
            .with_d_model(1024)
            .with_n_layers(24)
            .with_n_heads(16)
    }

    /// GPT-2 large (774M, `gpt2-large`).
    pub fn gpt2_large() -> Self {
        Self::new(50257)
            .with_d_model(1280)
            .with_n_layers(36)
            .with_n_heads(20)
    }

    /// GPT-2 XL (1.5B, `gpt2-xl`).
    pub fn gpt2_xl() -> Self {
        Self::new(50257)
            .with_d_model(1600)
            .with_n_layers(48)
            .with_n_heads(25)
    }

    /// A small model for tests and examples: 2 layers, width 64, 4 heads, context 128, no
    /// dropout.
    pub fn tiny(vocab_size: usize) -> Self {
        Self::new(vocab_size)
            .with_max_seq_length(128)
            .with_d_model(64)
            .with_n_layers(2)
            .with_n_heads(4)
            .with_dropout(0.0)
            .with_attention_dropout(0.0)
    }

    /// The feed-forward width (`d_ff`, or `4 * d_model`).
    pub fn d_ff(&self) -> usize {
        self.d_ff.unwrap_or(4 * self.d_model)
    }

    /// Builds the model with random weights.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] for a zero size or a dropout outside `[0, 1)`;
    /// [`ModelError::Layer`] when `n_heads` does not divide `d_model`.
    pub fn init(&self, device: &Device) -> Result<Gpt, ModelError> {
        let model = "GptConfig";
        check(self.vocab_size > 0, model, || {
            "vocab_size must be > 0".into()
        })?;
        check(self.n_layers > 0, model, || "n_layers must be > 0".into())?;
        check(self.max_seq_length > 0, model, || {
            "max_seq_length must be > 0".into()
        })?;
        check_dropout(model, self.dropout)?;
        let block = BlockConfig::new(self.d_model, self.n_heads, self.d_ff())
            .with_norm_first(true)
            .with_activation(self.activation)
            .with_norm(NormKind::LayerNorm)
            .with_norm_epsilon(self.norm_epsilon)
            .with_dropout(self.dropout)
            .with_attention_dropout(self.attention_dropout)
            .with_init_std(self.init_std);
        let residual_std = self.init_std / (2.0 * self.n_layers as f64).sqrt();
        let blocks = (0..self.n_layers)
            .map(|_| {
                let mut block = block.init_decoder(device)?;
                let d_ff = self.d_ff();
                let output = &mut block.self_attention.output;
                output.weight = normal_param([self.d_model, self.d_model], residual_std, device);
                block.feed_forward.down.weight =
                    normal_param([d_ff, self.d_model], residual_std, device);
                Ok(block)
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let embedding_init = Initializer::Normal {
            mean: 0.0,
            std: self.init_std,
        };
        Ok(Gpt {
            token_embedding: EmbeddingConfig::new(self.vocab_size, self.d_model)
                .with_initializer(embedding_init.clone())
                .init(device),
            positions: LearnedPositionsConfig::new(self.max_seq_length, self.d_model)
                .with_init_std(self.init_std)
                .init(device)?,
            blocks,
            norm: Norm::new(NormKind::LayerNorm, self.d_model, self.norm_epsilon, device),
            lm_head: (!self.tie_embeddings).then(|| {
                normal_linear(self.d_model, self.vocab_size, false, self.init_std, device)
            }),
            dropout: DropoutConfig::new(self.dropout).init(),
            config: self.clone(),
        })
    }
}

fn normal_param(shape: [usize; 2], std: f64, device: &Device) -> Param<Tensor<2>> {
    Param::from_tensor(Tensor::random(
        shape,
        Distribution::Normal(0.0, std),
        device,
    ))
}

/// A GPT-2-style decoder-only language model (Radford et al. 2019).
///
/// `tokens -> token embedding + position embedding -> dropout -> n_layers pre-LN decoder
/// blocks (causal self-attention, GELU feed-forward) -> LayerNorm -> logits`, the logits
/// computed with the token embedding (tied) or a separate `lm_head`.
///
/// ```
/// use burn::tensor::{Int, Tensor};
/// use lmforge_models::gpt::GptConfig;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let device = lmforge_device::device_from_env()?;
/// let gpt = GptConfig::tiny(96).init(&device)?;
/// let tokens = Tensor::<2, Int>::from_ints([[1, 2, 3, 4]], &device);
/// let logits = gpt.forward(tokens, None);
/// assert_eq!(logits.dims(), [1, 4, 96]); // [batch_size, seq_length, vocab_size]
/// # Ok(())
/// # }
/// ```
#[derive(Module, Debug)]
pub struct Gpt {
    /// Token embedding `[vocab_size, d_model]` (HuggingFace `wte`).
    pub token_embedding: Embedding,
    /// Learned positions `[max_seq_length, d_model]` (`wpe`).
    pub positions: LearnedPositions,
    /// The decoder blocks (`h.{i}`).
    pub blocks: Vec<DecoderBlock>,
    /// Final LayerNorm (`ln_f`).
    pub norm: Norm,
    /// Output projection when the embeddings are not tied (no bias).
    pub lm_head: Option<Linear>,
    dropout: Dropout,
    #[module(skip)]
    config: GptConfig,
}

/// The per-block key/value caches of a [`Gpt`] for incremental decoding (the
/// [`DecoderCache`] shared with the Llama family).
pub type GptCache = DecoderCache;

impl Gpt {
    /// The configuration the model was built from.
    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    /// Number of token ids.
    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// Longest sequence the model accepts (cached positions included).
    pub fn max_seq_length(&self) -> usize {
        self.config.max_seq_length
    }

    /// Model width.
    pub fn d_model(&self) -> usize {
        self.token_embedding.weight.dims()[1]
    }

    /// Logits for every position.
    ///
    /// # Shapes
    /// - `tokens`: `[batch_size, seq_length]`
    /// - `mask_pad`: `[batch_size, seq_length]`, `true` = padding (masked out as a key)
    /// - returns: `[batch_size, seq_length, vocab_size]`
    ///
    /// # Panics
    /// When a token id is outside `0..vocab_size`, `seq_length` exceeds
    /// `max_seq_length`, or `mask_pad` has another shape than `tokens`.
    pub fn forward(&self, tokens: Tensor<2, Int>, mask_pad: Option<Tensor<2, Bool>>) -> Tensor<3> {
        let hidden = self.run(tokens, mask_pad, None, None);
        self.logits(hidden)
    }

    /// Logits for new positions, reusing and extending `cache`: equal to the last
    /// `seq_new` positions of [`Self::forward`] over the whole sequence so far.
    ///
    /// # Shapes
    /// - `tokens`: `[batch_size, seq_new]`
    /// - `mask_pad`: `[batch_size, seq_cached + seq_new]`, `true` = padding
    /// - returns: `[batch_size, seq_new, vocab_size]`
    ///
    /// # Panics
    /// As [`Self::forward`], counting cached positions towards `max_seq_length`.
    pub fn forward_cached(
        &self,
        tokens: Tensor<2, Int>,
        mask_pad: Option<Tensor<2, Bool>>,
        cache: &mut GptCache,
    ) -> Tensor<3> {
        let hidden = self.run(tokens, mask_pad, Some(cache), None);
        self.logits(hidden)
    }

    /// The hidden states HuggingFace reports with `output_hidden_states`: the embeddings, the
    /// output of every block but the last, and the last block's output after the final
    /// LayerNorm (`n_layers + 1` tensors).
    ///
    /// # Shapes
    /// - `tokens`, `mask_pad`: as in [`Self::forward`]
    /// - returns: `n_layers + 1` tensors `[batch_size, seq_length, d_model]`
    pub fn hidden_states(
        &self,
        tokens: Tensor<2, Int>,
        mask_pad: Option<Tensor<2, Bool>>,
    ) -> Vec<Tensor<3>> {
        let mut states = Vec::with_capacity(self.blocks.len() + 1);
        let last = self.run(tokens, mask_pad, None, Some(&mut states));
        states.push(last);
        states
    }

    /// The dtype the parameters are kept in (`f32` unless loaded with
    /// [`Gpt::from_pretrained_as`] or cast with [`Gpt::with_param_dtype`]); activations are
    /// `f32` regardless.
    pub fn param_dtype(&self) -> DType {
        self.token_embedding.weight.val().dtype()
    }

    /// The model with its parameters cast to `dtype` (`F32`, `F16` or `BF16`; see
    /// [`crate::pretrained::ParamDtype`] for what each device does with half precision).
    ///
    /// # Errors
    /// [`ModelError::DtypeNotSupported`] when the model's device cannot hold `dtype`;
    /// [`ModelError::InvalidConfig`] for a dtype that is not a float format lmforge runs.
    pub fn with_param_dtype(self, dtype: DType) -> Result<Self, ModelError> {
        let device = self.token_embedding.weight.val().device();
        crate::pretrained::cast_params(self, &device, dtype, "Gpt")
    }

    /// Projects final hidden states to vocabulary logits (tied embedding or `lm_head`).
    ///
    /// # Shapes
    /// - `hidden`: `[batch_size, seq_length, d_model]`
    /// - returns: `[batch_size, seq_length, vocab_size]`
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => lmforge_layers::linear_rows(head, hidden),
            None => tied_logits(hidden, &self.token_embedding),
        }
    }

    /// Embeddings, blocks and the final norm; pushes the input of every block when `states`
    /// is given.
    fn run(
        &self,
        tokens: Tensor<2, Int>,
        mask_pad: Option<Tensor<2, Bool>>,
        mut cache: Option<&mut GptCache>,
        states: Option<&mut Vec<Tensor<3>>>,
    ) -> Tensor<3> {
        let [batch_size, seq_length] = tokens.dims();
        let dims = [self.blocks.len(), self.max_seq_length(), self.vocab_size()];
        let mut inputs = DecoderInputs::check("Gpt", &tokens, mask_pad, cache.as_deref_mut(), dims);
        // Left-padded rows' positions select learned embeddings here (GPT's blocks have no
        // rotary embeddings to pass them to).
        let positions = match inputs.positions.take() {
            None => self.positions.forward(inputs.start, seq_length),
            Some(positions) => {
                let ids: Vec<i64> = positions.into_iter().map(|p| p as i64).collect();
                let ids = Tensor::<2, Int>::from_data(
                    TensorData::new(ids, [batch_size, seq_length]),
                    &tokens.device(),
                );
                self.positions.embedding.forward(ids)
            }
        };
        // Half-precision parameters: the activations are f32 all the same.
        let f32 = |t: Tensor<3>| {
            if t.dtype() == DType::F32 {
                t
            } else {
                t.cast(DType::F32)
            }
        };
        let x = f32(self.token_embedding.forward(tokens)) + f32(positions);
        let x = self.dropout.forward(x);
        let x = inputs.run_blocks(&self.blocks, x, cache, states);
        self.norm.forward(x)
    }
}

lmforge_layers::pack_layers!(Gpt {
    token_embedding,
    positions,
    blocks,
    lm_head
});
