//! The LSTM language model: embedding, stacked LSTM, dropout, projection to the vocabulary
//! (Zaremba et al. 2014, "Recurrent Neural Network Regularization"; weight tying from Press &
//! Wolf 2017 and Inan et al. 2017).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer};
use burn::tensor::{Device, Int, Tensor};
use lmforge_layers::rnn::{Lstm, LstmConfig, LstmState};
use lmforge_layers::{Embedding, EmbeddingConfig, Linear, LinearConfig};

use crate::error::{ModelError, check, check_dropout};
use crate::tokens::{assert_tokens, tied_logits};

/// Configuration of an [`LstmLm`].
#[derive(Config, Debug)]
pub struct LstmLmConfig {
    /// Number of token ids.
    pub vocab_size: usize,
    /// Embedding width. Default: 128.
    #[config(default = 128)]
    pub d_embedding: usize,
    /// LSTM hidden width. Default: 256.
    #[config(default = 256)]
    pub d_hidden: usize,
    /// Number of stacked LSTM layers. Default: 2.
    #[config(default = 2)]
    pub n_layers: usize,
    /// Dropout on the embeddings, between LSTM layers and before the output projection.
    /// Default: 0.2.
    #[config(default = 0.2)]
    pub dropout: f64,
    /// Use the embedding matrix as the output projection (needs `d_embedding == d_hidden`).
    /// Default: false.
    #[config(default = false)]
    pub tie_weights: bool,
    /// Embeddings and output weights are drawn from `U(-init_range, init_range)`.
    /// Default: 0.1.
    #[config(default = 0.1)]
    pub init_range: f64,
}

impl LstmLmConfig {
    /// Builds the model.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] for a zero size, a dropout outside `[0, 1)`, or tied
    /// weights with `d_embedding != d_hidden`.
    pub fn init(&self, device: &Device) -> Result<LstmLm, ModelError> {
        let model = "LstmLmConfig";
        check(self.vocab_size > 0, model, || {
            "vocab_size must be > 0".into()
        })?;
        check(self.d_embedding > 0, model, || {
            "d_embedding must be > 0".into()
        })?;
        check_dropout(model, self.dropout)?;
        check(
            !self.tie_weights || self.d_embedding == self.d_hidden,
            model,
            || {
                format!(
                    "tie_weights needs d_embedding ({}) == d_hidden ({})",
                    self.d_embedding, self.d_hidden
                )
            },
        )?;
        let uniform = Initializer::Uniform {
            min: -self.init_range,
            max: self.init_range,
        };
        let output = (!self.tie_weights).then(|| {
            let mut linear = LinearConfig::new(self.d_hidden, self.vocab_size)
                .with_initializer(uniform.clone())
                .init(device);
            // A new parameter (not `Param::map`, whose result would not require gradients).
            linear.bias = linear
                .bias
                .take()
                .map(|b| Param::from_tensor(b.val().zeros_like()));
            linear
        });
        Ok(LstmLm {
            embedding: EmbeddingConfig::new(self.vocab_size, self.d_embedding)
                .with_initializer(uniform)
                .init(device),
            lstm: LstmConfig::new(self.d_embedding, self.d_hidden)
                .with_n_layers(self.n_layers)
                .with_dropout(self.dropout)
                .init(device)?,
            output,
            dropout: DropoutConfig::new(self.dropout).init(),
            config: self.clone(),
        })
    }
}

/// An LSTM language model: `tokens -> embedding -> dropout -> stacked LSTM -> dropout ->
/// linear (or the tied embedding) -> logits`.
///
/// The recurrent state is an input and an output, so a training loop can carry it across
/// consecutive batches of a long text (truncated backpropagation through time: detach it
/// with [`LstmState::detach`] between batches), and generation can feed one token at a time.
///
/// ```
/// use burn::tensor::{Int, Tensor};
/// use lmforge_models::lstm_lm::LstmLmConfig;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let device = lmforge_device::device_from_env()?;
/// let lm = LstmLmConfig::new(50).with_d_embedding(16).with_d_hidden(32).init(&device)?;
/// let tokens = Tensor::<2, Int>::from_ints([[1, 2, 3], [4, 5, 6]], &device);
/// let (logits, state) = lm.forward(tokens, None);
/// assert_eq!(logits.dims(), [2, 3, 50]); // [batch_size, seq_length, vocab_size]
/// let next = Tensor::<2, Int>::from_ints([[7], [8]], &device);
/// let (logits, _) = lm.forward(next, Some(state.detach())); // continues the sequences
/// assert_eq!(logits.dims(), [2, 1, 50]);
/// # Ok(())
/// # }
/// ```
#[derive(Module, Debug)]
pub struct LstmLm {
    /// Token embedding `[vocab_size, d_embedding]`.
    pub embedding: Embedding,
    /// The stacked LSTM.
    pub lstm: Lstm,
    /// Output projection `d_hidden -> vocab_size`; `None` when tied to the embedding.
    pub output: Option<Linear>,
    dropout: Dropout,
    #[module(skip)]
    config: LstmLmConfig,
}

impl LstmLm {
    /// The configuration the model was built from.
    pub fn config(&self) -> &LstmLmConfig {
        &self.config
    }

    /// Logits for every position, and the state after the last one.
    ///
    /// # Shapes
    /// - `tokens`: `[batch_size, seq_length]`
    /// - `state`: hidden and cell `[n_layers, batch_size, d_hidden]`; `None` = zeros
    /// - returns: logits `[batch_size, seq_length, vocab_size]` and the final state
    ///
    /// # Panics
    /// When a token id is outside `0..vocab_size` or the state's shape does not fit.
    pub fn forward(
        &self,
        tokens: Tensor<2, Int>,
        state: Option<LstmState>,
    ) -> (Tensor<3>, LstmState) {
        assert_tokens("LstmLm", &tokens, self.config.vocab_size);
        let x = self.dropout.forward(self.embedding.forward(tokens));
        let (hidden, state) = self.lstm.forward(x, state);
        let hidden = self.dropout.forward(hidden);
        let logits = match &self.output {
            Some(output) => output.forward(hidden),
            None => tied_logits(hidden, &self.embedding),
        };
        (logits, state)
    }
}

lmforge_layers::pack_layers!(LstmLm { embedding, output });
