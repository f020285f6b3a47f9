//! The BERT encoder: embeddings, post-LN encoder blocks and the pooler.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Initializer};
use burn::tensor::activation::tanh;
use burn::tensor::{Bool, Device, Int, Tensor};
use lmforge_layers::transformer::{
    BlockConfig, EncoderBlock, FeedForwardActivation, Norm, NormKind, normal_linear,
};
use lmforge_layers::{Embedding, EmbeddingConfig, Linear};

use crate::error::{ModelError, check, check_dropout};
use crate::tokens::{assert_tokens, check_positions};

/// Configuration of a [`Bert`] encoder and of the task models built on it.
#[derive(Config, Debug)]
pub struct BertConfig {
    /// Number of token ids.
    pub vocab_size: usize,
    /// Model width (HuggingFace `hidden_size`). Default: 768.
    #[config(default = 768)]
    pub d_model: usize,
    /// Number of encoder blocks. Default: 12.
    #[config(default = 12)]
    pub n_layers: usize,
    /// Attention heads per block. Default: 12.
    #[config(default = 12)]
    pub n_heads: usize,
    /// Feed-forward inner width (`intermediate_size`). Default: 3072.
    #[config(default = 3072)]
    pub d_ff: usize,
    /// Longest sequence (`max_position_embeddings`). Default: 512.
    #[config(default = 512)]
    pub max_seq_length: usize,
    /// Number of segment (token type) ids. Default: 2.
    #[config(default = 2)]
    pub type_vocab_size: usize,
    /// Feed-forward and MLM-transform non-linearity. Default: exact GELU.
    #[config(default = "FeedForwardActivation::Gelu")]
    pub activation: FeedForwardActivation,
    /// Dropout on embeddings, sub-layer outputs and task heads. Default: 0.1.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Dropout on attention probabilities. Default: 0.1.
    #[config(default = 0.1)]
    pub attention_dropout: f64,
    /// LayerNorm epsilon. Default: 1e-12.
    #[config(default = 1e-12)]
    pub norm_epsilon: f64,
    /// Standard deviation of the normal initialisation. Default: 0.02.
    #[config(default = 0.02)]
    pub init_std: f64,
}

impl BertConfig {
    /// BERT-base (110M parameters, HuggingFace `bert-base-uncased`).
    pub fn bert_base_uncased() -> Self {
        Self::new(30522)
    }

    /// MiniLM-L6-H384 (the encoder of `all-MiniLM-L6-v2`): 6 layers, width 384, 12 heads.
    pub fn minilm_l6() -> Self {
        Self::new(30522)
            .with_d_model(384)
            .with_n_layers(6)
            .with_d_ff(1536)
    }

    /// A small model for tests and examples: 2 layers, width 64, 4 heads, `d_ff` 256,
    /// context 128, no dropout.
    pub fn tiny(vocab_size: usize) -> Self {
        Self::new(vocab_size)
            .with_d_model(64)
            .with_n_layers(2)
            .with_n_heads(4)
            .with_d_ff(256)
            .with_max_seq_length(128)
            .with_dropout(0.0)
            .with_attention_dropout(0.0)
    }

    /// Builds the encoder with a pooler.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] for a zero size or a dropout outside `[0, 1)`;
    /// [`ModelError::Layer`] when `n_heads` does not divide `d_model`.
    pub fn init(&self, device: &Device) -> Result<Bert, ModelError> {
        self.init_encoder(true, device)
    }

    /// Builds the encoder, with or without the pooler (the MLM, token-classification and QA
    /// models have none).
    ///
    /// # Errors
    /// As [`Self::init`].
    pub fn init_encoder(&self, pooler: bool, device: &Device) -> Result<Bert, ModelError> {
        let model = "BertConfig";
        check(self.vocab_size > 0, model, || {
            "vocab_size must be > 0".into()
        })?;
        check(self.n_layers > 0, model, || "n_layers must be > 0".into())?;
        check(self.max_seq_length > 0, model, || {
            "max_seq_length must be > 0".into()
        })?;
        check(self.type_vocab_size > 0, model, || {
            "type_vocab_size must be > 0".into()
        })?;
        check_dropout(model, self.dropout)?;
        let block = BlockConfig::new(self.d_model, self.n_heads, self.d_ff)
            .with_norm_first(false)
            .with_activation(self.activation)
            .with_norm(NormKind::LayerNorm)
            .with_norm_epsilon(self.norm_epsilon)
            .with_dropout(self.dropout)
            .with_attention_dropout(self.attention_dropout)
            .with_init_std(self.init_std);
        let blocks = (0..self.n_layers)
            .map(|_| block.init_encoder(device))
            .collect::<Result<Vec<_>, _>>()?;
        let embedding = |n| {
            EmbeddingConfig::new(n, self.d_model)
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: self.init_std,
                })
                .init(device)
        };
        Ok(Bert {
            embeddings: BertEmbeddings {
                word: embedding(self.vocab_size),
                position: embedding(self.max_seq_length),
                token_type: embedding(self.type_vocab_size),
                norm: self.norm(device),
                dropout: DropoutConfig::new(self.dropout).init(),
            },
            blocks,
            pooler: pooler.then(|| self.linear(self.d_model, device)),
            config: self.clone(),
        })
    }

    pub(crate) fn norm(&self, device: &Device) -> Norm {
        Norm::new(NormKind::LayerNorm, self.d_model, self.norm_epsilon, device)
    }

    /// A `d_model -> d_out` Linear with BERT's initialisation.
    pub(crate) fn linear(&self, d_out: usize, device: &Device) -> Linear {
        normal_linear(self.d_model, d_out, true, self.init_std, device)
    }
}

/// BERT's input embeddings: word + absolute position + token type, then LayerNorm and
/// dropout.
#[derive(Module, Debug)]
pub struct BertEmbeddings {
    /// Word embeddings `[vocab_size, d_model]` (also the MLM decoder weight).
    pub word: Embedding,
    /// Learned absolute positions `[max_seq_length, d_model]`.
    pub position: Embedding,
    /// Segment embeddings `[type_vocab_size, d_model]`.
    pub token_type: Embedding,
    /// LayerNorm over the sum.
    pub norm: Norm,
    dropout: Dropout,
}

/// What [`Bert::forward`] reads.
///
/// # Shapes
/// - `tokens`: `[batch_size, seq_length]`
/// - `token_types`: `[batch_size, seq_length]` segment ids; `None` = all segment 0
/// - `mask_pad`: `[batch_size, seq_length]`, `true` = padding (never attended to)
#[derive(Clone, Debug)]
pub struct BertInput {
    /// Token ids.
    pub tokens: Tensor<2, Int>,
    /// Segment ids.
    pub token_types: Option<Tensor<2, Int>>,
    /// Padding mask.
    pub mask_pad: Option<Tensor<2, Bool>>,
    /// Also return the output of every layer in [`BertOutput::hidden_states`].
    pub output_hidden_states: bool,
}

impl BertInput {
    /// Input of token ids only (one segment, no padding).
    pub fn new(tokens: Tensor<2, Int>) -> Self {
        Self {
            tokens,
            token_types: None,
            mask_pad: None,
            output_hidden_states: false,
        }
    }

    /// Sets the segment ids.
    pub fn with_token_types(mut self, token_types: Tensor<2, Int>) -> Self {
        self.token_types = Some(token_types);
        self
    }

    /// Sets the padding mask (`true` = padding).
    pub fn with_mask_pad(mut self, mask_pad: Tensor<2, Bool>) -> Self {
        self.mask_pad = Some(mask_pad);
        self
    }

    /// Asks for every layer's output.
    pub fn with_hidden_states(mut self) -> Self {
        self.output_hidden_states = true;
        self
    }
}

/// What [`Bert::forward`] returns.
///
/// # Shapes
/// - `hidden`: `[batch_size, seq_length, d_model]`
/// - `pooled`: `[batch_size, d_model]`
/// - `hidden_states`: `n_layers + 1` tensors `[batch_size, seq_length, d_model]`
#[derive(Clone, Debug)]
pub struct BertOutput {
    /// The last layer's output.
    pub hidden: Tensor<3>,
    /// `tanh(dense(hidden[:, 0]))`, when the model has a pooler.
    pub pooled: Option<Tensor<2>>,
    /// The embeddings and every layer's output (HuggingFace's `hidden_states`), when asked.
    pub hidden_states: Vec<Tensor<3>>,
}

/// The BERT encoder (Devlin et al. 2019): embeddings, `n_layers` post-LN Transformer encoder
/// blocks with exact GELU, and an optional pooler over the first (`[CLS]`) position.
///
/// ```
/// use burn::tensor::{Int, Tensor};
/// use lmforge_models::bert::{BertConfig, BertInput};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let device = lmforge_device::device_from_env()?;
/// let bert = BertConfig::tiny(100).init(&device)?;
/// let tokens = Tensor::<2, Int>::from_ints([[2, 17, 42, 3]], &device);
/// let out = bert.forward(BertInput::new(tokens));
/// assert_eq!(out.hidden.dims(), [1, 4, 64]); // [batch_size, seq_length, d_model]
/// assert_eq!(out.pooled.unwrap().dims(), [1, 64]);
/// # Ok(())
/// # }
/// ```
#[derive(Module, Debug)]
pub struct Bert {
    /// Input embeddings.
    pub embeddings: BertEmbeddings,
    /// The encoder blocks (`encoder.layer.{i}`).
    pub blocks: Vec<EncoderBlock>,
    /// Pooler dense layer (followed by tanh), if any.
    pub pooler: Option<Linear>,
    #[module(skip)]
    config: BertConfig,
}

impl Bert {
    /// The configuration the encoder was built from.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Encodes a batch.
    ///
    /// # Shapes
    /// See [`BertInput`] and [`BertOutput`].
    ///
    /// # Panics
    /// When a token or segment id is out of range, `seq_length` exceeds `max_seq_length`, or
    /// `token_types`/`mask_pad` have another shape than `tokens`.
    pub fn forward(&self, input: BertInput) -> BertOutput {
        let BertInput {
            tokens,
            token_types,
            mask_pad,
            output_hidden_states,
        } = input;
        let dims = tokens.dims();
        let [batch_size, seq_length] = dims;
        check_positions("Bert", 0, seq_length, self.config.max_seq_length);
        assert_tokens("Bert", &tokens, self.config.vocab_size);
        for (name, shape) in [
            ("token_types", token_types.as_ref().map(|t| t.dims())),
            ("mask_pad", mask_pad.as_ref().map(|m| m.dims())),
        ] {
            if let Some(shape) = shape {
                assert_eq!(
                    shape, dims,
                    "Bert: `{name}` has shape {shape:?}, expected {dims:?} (the shape of `tokens`)"
                );
            }
        }
        let device = tokens.device();
        let token_types =
            token_types.unwrap_or_else(|| Tensor::zeros([batch_size, seq_length], &device));
        assert_tokens(
            "Bert token_types",
            &token_types,
            self.config.type_vocab_size,
        );
        let positions = Tensor::<1, Int>::arange(0..seq_length as i64, &device).unsqueeze::<2>();
        let e = &self.embeddings;
        let x = e.word.forward(tokens)
            + e.position.forward(positions)
            + e.token_type.forward(token_types);
        let mut x = e.dropout.forward(e.norm.forward(x));
        let mut hidden_states = Vec::new();
        for block in &self.blocks {
            if output_hidden_states {
                hidden_states.push(x.clone());
            }
            x = block.forward(x, mask_pad.clone());
        }
        if output_hidden_states {
            hidden_states.push(x.clone());
        }
        let pooled = self.pooler.as_ref().map(|pooler| {
            let d_model = self.config.d_model;
            let first = x
                .clone()
                .slice([0..batch_size, 0..1])
                .reshape([batch_size, d_model]);
            tanh(pooler.forward(first))
        });
        BertOutput {
            hidden: x,
            pooled,
            hidden_states,
        }
    }
}

lmforge_layers::pack_layers!(BertEmbeddings {
    word,
    position,
    token_type
});
lmforge_layers::pack_layers!(Bert {
    embeddings,
    blocks,
    pooler
});
