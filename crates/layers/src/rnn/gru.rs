//! Gated recurrent unit (GRU).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::recurrent::{Cell, RecurrentStack, Sizes};
use crate::error::LayerError;

/// Configuration of a [`Gru`].
#[derive(Config, Debug)]
pub struct GruConfig {
    /// Size of each input vector.
    pub d_input: usize,
    /// Size of the hidden state (per direction).
    pub d_hidden: usize,
    /// Number of stacked layers. Default: 1.
    #[config(default = 1)]
    pub n_layers: usize,
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

impl GruConfig {
    /// Builds the layer with PyTorch's initialisation (`U(-1/sqrt(d_hidden), 1/sqrt(d_hidden))`).
    ///
    /// # Errors
    /// [`LayerError::InvalidConfig`] for a zero size or a dropout outside `[0, 1)`.
    pub fn init(&self, device: &Device) -> Result<Gru, LayerError> {
        let sizes = Sizes {
            d_input: self.d_input,
            d_hidden: self.d_hidden,
            n_layers: self.n_layers,
            bidirectional: self.bidirectional,
            bias: self.bias,
            dropout: self.dropout,
        };
        Ok(Gru {
            stack: RecurrentStack::new(Cell::Gru, sizes, device)?,
        })
    }
}

/// A stacked, optionally bidirectional GRU over batch-first sequences, with PyTorch's
/// parameter layout (`nn.GRU`: gate order `r, z, n`, two bias vectors), so PyTorch weights
/// load one-to-one through [`Gru::load_pytorch`]. The input projection of a whole sequence is
/// one matmul and the three gates of a step are one.
///
/// ```text
/// r = σ(W_ir x + b_ir + W_hr h + b_hr)
/// z = σ(W_iz x + b_iz + W_hz h + b_hz)
/// n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
/// h' = (1 - z) ⊙ n + z ⊙ h
/// ```
///
/// The state is the hidden state alone, `[n_layers * n_directions, batch_size, d_hidden]`.
#[derive(Module, Debug)]
pub struct Gru {
    /// The layers and their weights.
    pub stack: RecurrentStack,
}

impl Gru {
    /// Runs the GRU over whole sequences.
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

    /// One time step, for generation: equal to [`Gru::forward`] on a length-1 sequence.
    ///
    /// # Shapes
    /// - `x`: `[batch_size, d_input]`
    /// - returns: `[batch_size, d_hidden]` and the new hidden state
    ///
    /// # Panics
    /// For a bidirectional GRU, or on the shape errors of [`Gru::forward`].
    pub fn step(&self, x: Tensor<2>, hidden: Option<Tensor<3>>) -> (Tensor<2>, Tensor<3>) {
        let (y, hidden, _) = self.stack.step(x, hidden, None);
        (y, hidden)
    }

    /// Loads weights from a PyTorch `nn.GRU` state dict; see [`Lstm::load_pytorch`](super::Lstm::load_pytorch).
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
