//! Elman recurrent network (`tanh` or `relu`).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::recurrent::{Cell, RecurrentStack, Sizes};
use crate::error::LayerError;

/// The non-linearity of an [`Rnn`].
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum RnnActivation {
    /// `h' = tanh(W_ih x + b_ih + W_hh h + b_hh)` (PyTorch's default).
    Tanh,
    /// `h' = relu(W_ih x + b_ih + W_hh h + b_hh)`.
    Relu,
}

/// Configuration of an [`Rnn`].
#[derive(Config, Debug)]
pub struct RnnConfig {
    /// Size of each input vector.
    pub d_input: usize,
    /// Size of the hidden state (per direction).
    pub d_hidden: usize,
    /// Number of stacked layers. Default: 1.
    #[config(default = 1)]
    pub n_layers: usize,
    /// The non-linearity. Default: tanh.
    #[config(default = "RnnActivation::Tanh")]
    pub activation: RnnActivation,
    /// Run a second, right-to-left direction in every layer and concatenate. Default: false.
    #[config(default = false)]
    pub bidirectional: bool,
    /// Dropout on the outputs of every layer but the last (training only). Default: 0.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Use the two bias vectors. Default: true.
    #[config(default = true)]
    pub bias: bool,
}

impl RnnConfig {
    /// Builds the layer with PyTorch's initialisation (`U(-1/sqrt(d_hidden), 1/sqrt(d_hidden))`).
    ///
    /// # Errors
    /// [`LayerError::InvalidConfig`] for a zero size or a dropout outside `[0, 1)`.
    pub fn init(&self, device: &Device) -> Result<Rnn, LayerError> {
        let cell = match self.activation {
            RnnActivation::Tanh => Cell::Tanh,
            RnnActivation::Relu => Cell::Relu,
        };
        let sizes = Sizes {
            d_input: self.d_input,
            d_hidden: self.d_hidden,
            n_layers: self.n_layers,
            bidirectional: self.bidirectional,
            bias: self.bias,
            dropout: self.dropout,
        };
        Ok(Rnn {
            stack: RecurrentStack::new(cell, sizes, device)?,
        })
    }
}

/// A stacked, optionally bidirectional Elman RNN over batch-first sequences, with PyTorch's
/// parameter layout (`nn.RNN`), so PyTorch weights load one-to-one through
/// [`Rnn::load_pytorch`]. The input projection of a whole sequence is one matmul.
///
/// The state is the hidden state alone, `[n_layers * n_directions, batch_size, d_hidden]`
/// (layer-major, forward direction before reverse), as in PyTorch.
#[derive(Module, Debug)]
pub struct Rnn {
    /// The layers and their weights.
    pub stack: RecurrentStack,
}

impl Rnn {
    /// Runs the RNN over whole sequences.
    ///
    /// # Shapes
    /// - `x`: `[batch_size, seq_length, d_input]`
    /// - `hidden`: `[n_layers * n_directions, batch_size, d_hidden]`; `None` starts from zeros
    /// - returns: the last layer's outputs `[batch_size, seq_length, n_directions * d_hidden]`
    ///   and the final hidden state (same shape as `hidden`)
    ///
    /// # Panics
    /// When `x` or `hidden` does not have the shapes above (the message names both shapes).
    pub fn forward(&self, x: Tensor<3>, hidden: Option<Tensor<3>>) -> (Tensor<3>, Tensor<3>) {
        let (y, hidden, _) = self.stack.run(x, hidden, None);
        (y, hidden)
    }

    /// One time step, for generation: equal to [`Rnn::forward`] on a length-1 sequence.
    ///
    /// # Shapes
    /// - `x`: `[batch_size, d_input]`
    /// - returns: `[batch_size, d_hidden]` and the new hidden state
    ///
    /// # Panics
    /// For a bidirectional RNN, or on the shape errors of [`Rnn::forward`].
    pub fn step(&self, x: Tensor<2>, hidden: Option<Tensor<3>>) -> (Tensor<2>, Tensor<3>) {
        let (y, hidden, _) = self.stack.step(x, hidden, None);
        (y, hidden)
    }

    /// Loads weights from a PyTorch `nn.RNN` state dict; see [`Lstm::load_pytorch`](super::Lstm::load_pytorch).
    ///
    /// # Errors
    /// [`LayerError::MissingWeight`], [`LayerError::WeightShape`] or
    /// [`LayerError::UnexpectedWeights`].
    pub fn load_pytorch(
        mut self,
        lookup: impl FnMut(&str) -> Option<TensorData>,
        keys: impl IntoIterator<Item = String>,
    ) -> Result<Self, LayerError> {
        self.stack.load_pytorch(lookup, keys)?;
        Ok(self)
    }
}
