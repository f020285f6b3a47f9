//! The Llama-family model: token embedding, pre-norm decoder blocks with grouped-query
//! rotary attention and SwiGLU feed-forward, a final RMSNorm and a language-model head.

use burn::config::Config;
use burn::module::Module;
use burn::nn::Initializer;
use burn::tensor::{Bool, DType, Device, Int, Tensor};
use lmforge_layers::position::{RopeConfig, RopeScaling};
use lmforge_layers::transformer::{
    BlockConfig, DecoderBlock, FeedForwardActivation, Norm, NormKind, normal_linear,
};
use lmforge_layers::{Embedding, EmbeddingConfig, Linear};

use crate::cache::{DecoderCache, DecoderInputs};
use crate::error::{ModelError, check, check_dropout};
use crate::tokens::tied_logits;

/// Which HuggingFace architecture a [`LlamaConfig`] describes: they share one skeleton and
/// differ in options (biases, sliding window, tying) and in their names on export.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum LlamaFamily {
    /// `LlamaForCausalLM` (`model_type: "llama"`): Llama 2/3, SmolLM, TinyLlama.
    Llama,
    /// `MistralForCausalLM` (`"mistral"`): sliding-window attention.
    Mistral,
    /// `Qwen2ForCausalLM` (`"qwen2"`): query/key/value biases.
    Qwen2,
}

/// Configuration of a [`Llama`]. Defaults are Llama 2 7B's.
#[derive(Config, Debug)]
pub struct LlamaConfig {
    /// Number of token ids.
    pub vocab_size: usize,
    /// The HuggingFace architecture. Default: Llama.
    #[config(default = "LlamaFamily::Llama")]
    pub family: LlamaFamily,
    /// Model width (`hidden_size`). Default: 4096.
    #[config(default = 4096)]
    pub d_model: usize,
    /// Number of decoder blocks. Default: 32.
    #[config(default = 32)]
    pub n_layers: usize,
    /// Query heads per block. Default: 32.
    #[config(default = 32)]
    pub n_heads: usize,
    /// Key/value heads per block (grouped-query attention; must divide `n_heads`).
    /// Default: `n_heads`.
    #[config(default = "None")]
    pub n_kv_heads: Option<usize>,
    /// Width of one head. Default: `d_model / n_heads`.
    #[config(default = "None")]
    pub d_head: Option<usize>,
    /// Feed-forward inner width (`intermediate_size`). Default: 11008.
    #[config(default = 11008)]
    pub d_ff: usize,
    /// Longest sequence (`max_position_embeddings`). Default: 2048.
    #[config(default = 2048)]
    pub max_seq_length: usize,
    /// Base of the rotary frequencies (`rope_theta`). Default: 10000.
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    /// Rotary frequency scaling (`rope_scaling`). Default: none.
    #[config(default = "None")]
    pub rope_scaling: Option<RopeScaling>,
    /// RMSNorm epsilon (`rms_norm_eps`). Default: 1e-6.
    #[config(default = 1e-6)]
    pub norm_epsilon: f64,
    /// Biases on the query, key and value projections (Qwen2; Llama's `attention_bias`).
    /// Default: false.
    #[config(default = false)]
    pub qkv_bias: bool,
    /// Bias on the attention's output projection (Llama's `attention_bias`). Default: false.
    #[config(default = false)]
    pub output_bias: bool,
    /// Biases on the feed-forward projections (Llama's `mlp_bias`). Default: false.
    #[config(default = false)]
    pub mlp_bias: bool,
    /// Each position attends to this many positions at most, itself included (Mistral's
    /// `sliding_window`). Default: none.
    #[config(default = "None")]
    pub sliding_window: Option<usize>,
    /// Use the token embedding as the output projection (`tie_word_embeddings`).
    /// Default: false.
    #[config(default = false)]
    pub tie_embeddings: bool,
    /// Dropout on attention probabilities (`attention_dropout`). Default: 0.
    #[config(default = 0.0)]
    pub attention_dropout: f64,
    /// Standard deviation of the normal initialisation (`initializer_range`). Default: 0.02.
    #[config(default = 0.02)]
    pub init_std: f64,
}

impl LlamaConfig {
    /// A small model for tests and examples: 2 layers, width 64, 4 query and 2 key/value
    /// heads, feed-forward 128, context 256.
    pub fn tiny(vocab_size: usize) -> Self {
        Self::new(vocab_size)
            .with_d_model(64)
            .with_n_layers(2)
            .with_n_heads(4)
            .with_n_kv_heads(Some(2))
            .with_d_ff(128)
            .with_max_seq_length(256)
    }

    /// Llama 3.2 1B (`meta-llama/Llama-3.2-1B`): 16 layers, width 2048, 32 query and 8
    /// key/value heads, tied embeddings, Llama 3.1 rotary scaling.
    pub fn llama3_2_1b() -> Self {
        Self::new(128256)
            .with_d_model(2048)
            .with_n_layers(16)
            .with_n_heads(32)
            .with_n_kv_heads(Some(8))
            .with_d_ff(8192)
            .with_max_seq_length(131072)
            .with_rope_theta(500000.0)
            .with_rope_scaling(Some(RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            }))
            .with_norm_epsilon(1e-5)
            .with_tie_embeddings(true)
    }

    /// Number of key/value heads.
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    /// Width of one head.
    pub fn d_head(&self) -> usize {
        self.d_head.unwrap_or(self.d_model / self.n_heads.max(1))
    }

    /// The configuration of every decoder block.
    pub fn block(&self) -> BlockConfig {
        BlockConfig::new(self.d_model, self.n_heads, self.d_ff)
            .with_norm_first(true)
            .with_activation(FeedForwardActivation::SwiGlu)
            .with_norm(NormKind::RmsNorm)
            .with_norm_epsilon(self.norm_epsilon)
            .with_attention_dropout(self.attention_dropout)
            .with_init_std(self.init_std)
            .with_n_kv_heads(Some(self.n_kv_heads()))
            .with_d_head(Some(self.d_head()))
            .with_bias(self.mlp_bias)
            .with_qkv_bias(Some(self.qkv_bias))
            .with_output_bias(Some(self.output_bias))
            .with_rotary(Some(
                RopeConfig::new(self.d_head())
                    .with_base(self.rope_theta)
                    .with_scaling(self.rope_scaling),
            ))
            .with_sliding_window(self.sliding_window)
    }

    /// Builds the model with random weights.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] for a zero size, a dropout outside `[0, 1)` or an
    /// epsilon that is not positive; [`ModelError::Layer`] when the head counts or widths
    /// disagree (`n_kv_heads` must divide `n_heads`, `n_heads` must divide `d_model` unless
    /// `d_head` is given, `d_head` must be even) or the rotary scaling is invalid.
    pub fn init(&self, device: &Device) -> Result<Llama, ModelError> {
        let model = "LlamaConfig";
        check(self.vocab_size > 0, model, || {
            "vocab_size must be > 0".into()
        })?;
        check(self.n_layers > 0, model, || "n_layers must be > 0".into())?;
        check(self.n_heads > 0, model, || "n_heads must be > 0".into())?;
        check(self.max_seq_length > 0, model, || {
            "max_seq_length must be > 0".into()
        })?;
        check(self.norm_epsilon > 0.0, model, || {
            format!("norm_epsilon must be > 0, got {}", self.norm_epsilon)
        })?;
        check_dropout(model, self.attention_dropout)?;
        let block = self.block();
        let blocks = (0..self.n_layers)
            .map(|_| block.init_decoder(device))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Llama {
            token_embedding: EmbeddingConfig::new(self.vocab_size, self.d_model)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: self.init_std,
                })
                .init(device),
            blocks,
            norm: Norm::new(NormKind::RmsNorm, self.d_model, self.norm_epsilon, device),
            lm_head: (!self.tie_embeddings).then(|| {
                normal_linear(self.d_model, self.vocab_size, false, self.init_std, device)
            }),
            config: self.clone(),
        })
    }
}

/// A Llama-family decoder-only language model (Touvron et al. 2023; Mistral, Qwen2 and
/// SmolLM share the skeleton).
///
/// `tokens -> token embedding -> n_layers pre-norm blocks (RMSNorm, causal grouped-query
/// attention with rotary positions, RMSNorm, SwiGLU feed-forward) -> RMSNorm -> logits`,
/// the logits from a separate `lm_head` or the tied token embedding.
///
/// ```
/// use burn::tensor::{Int, Tensor};
/// use lmforge_models::llama::{LlamaCache, LlamaConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let device = lmforge_device::device_from_env()?;
/// let llama = LlamaConfig::tiny(96).init(&device)?;
/// let tokens = Tensor::<2, Int>::from_ints([[1, 2, 3, 4]], &device);
/// let logits = llama.forward(tokens.clone(), None);
/// assert_eq!(logits.dims(), [1, 4, 96]); // [batch_size, seq_length, vocab_size]
/// let mut cache = LlamaCache::default();
/// let _ = llama.forward_cached(tokens, None, &mut cache);
/// assert_eq!(cache.len(), 4);
/// # Ok(())
/// # }
/// ```
#[derive(Module, Debug)]
pub struct Llama {
    /// Token embedding `[vocab_size, d_model]` (HuggingFace `model.embed_tokens`).
    pub token_embedding: Embedding,
    /// The decoder blocks (`model.layers.{i}`).
    pub blocks: Vec<DecoderBlock>,
    /// Final RMSNorm (`model.norm`).
    pub norm: Norm,
    /// Output projection when the embeddings are not tied (`lm_head`, no bias).
    pub lm_head: Option<Linear>,
    #[module(skip)]
    config: LlamaConfig,
}

/// The per-block key/value caches of a [`Llama`]: keys and values are stored for the
/// key/value heads only (not repeated per query head), already rotated.
pub type LlamaCache = DecoderCache;

impl Llama {
    /// The configuration the model was built from.
    pub fn config(&self) -> &LlamaConfig {
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

    /// Logits for every position.
    ///
    /// # Shapes
    /// - `tokens`: `[batch_size, seq_length]`
    /// - `mask_pad`: `[batch_size, seq_length]`, `true` = padding (masked out as a key)
    /// - returns: `[batch_size, seq_length, vocab_size]`
    ///
    /// # Panics
    /// When a token id is outside `0..vocab_size`, `seq_length` exceeds `max_seq_length`,
    /// or `mask_pad` has another shape than `tokens`.
    pub fn forward(&self, tokens: Tensor<2, Int>, mask_pad: Option<Tensor<2, Bool>>) -> Tensor<3> {
        let hidden = self.run(tokens, mask_pad, None, None);
        self.logits(hidden)
    }

    /// Logits for new positions, reusing and extending `cache`: equal to the last `seq_new`
    /// positions of [`Self::forward`] over the whole sequence so far.
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
        cache: &mut LlamaCache,
    ) -> Tensor<3> {
        let hidden = self.run(tokens, mask_pad, Some(cache), None);
        self.logits(hidden)
    }

    /// The hidden states HuggingFace reports with `output_hidden_states`: the embeddings, the
    /// output of every block but the last, and the last block's output after the final norm
    /// (`n_layers + 1` tensors).
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
    /// [`Llama::from_pretrained_as`] in half precision); activations are `f32` regardless.
    pub fn param_dtype(&self) -> DType {
        self.token_embedding.weight.val().dtype()
    }

    /// The model with its parameters cast to `dtype` (`F32`, `F16` or `BF16`; see
    /// [`crate::pretrained::ParamDtype`] for what each device does with half precision).
    /// Activations stay `f32`.
    ///
    /// # Errors
    /// [`ModelError::DtypeNotSupported`] when the model's device cannot hold `dtype`;
    /// [`ModelError::InvalidConfig`] for a dtype that is not a float format lmforge runs.
    pub fn with_param_dtype(self, dtype: DType) -> Result<Self, ModelError> {
        let device = self.token_embedding.weight.val().device();
        crate::pretrained::cast_params(self, &device, dtype, "Llama")
    }

    /// Projects final hidden states to vocabulary logits (`lm_head` or tied embedding).
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

    fn run(
        &self,
        tokens: Tensor<2, Int>,
        mask_pad: Option<Tensor<2, Bool>>,
        mut cache: Option<&mut LlamaCache>,
        states: Option<&mut Vec<Tensor<3>>>,
    ) -> Tensor<3> {
        let dims = [self.blocks.len(), self.max_seq_length(), self.vocab_size()];
        let inputs = DecoderInputs::check("Llama", &tokens, mask_pad, cache.as_deref_mut(), dims);
        let x = self.token_embedding.forward(tokens);
        // Half-precision parameters: the activations are f32 all the same.
        let x = if x.dtype() == DType::F32 {
            x
        } else {
            x.cast(DType::F32)
        };
        let x = inputs.run_blocks(&self.blocks, x, cache, states);
        self.norm.forward(x)
    }
}

lmforge_layers::pack_layers!(Llama {
    token_embedding,
    blocks,
    lm_head
});
