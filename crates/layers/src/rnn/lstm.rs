//! Long short-term memory (LSTM).

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::recurrent::{Cell, RecurrentStack, Sizes};
use crate::error::LayerError;

/// Configuration of an [`Lstm`].
#[derive(Config, Debug)]
pub struct LstmConfig {
    /// Size of each input vector.
    pub d_input: usize,
    /// Size of the hidden and cell states (per direction).
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

impl LstmConfig {
    /// Builds the layer with PyTorch's initialisation (`U(-1/sqrt(d_hidden), 1/sqrt(d_hidden))`).
    ///
    /// # Errors
    /// [`LayerError::InvalidConfig`] for a zero size or a dropout outside `[0, 1)`.
    pub fn init(&self, device: &Device) -> Result<Lstm, LayerError> {
        let sizes = Sizes {
            d_input: self.d_input,
            d_hidden: self.d_hidden,
            n_layers: self.n_layers,
            bidirectional: self.bidirectional,
            bias: self.bias,
            dropout: self.dropout,
        };
        Ok(Lstm {
            stack: RecurrentStack::new(Cell::Lstm, sizes, device)?,
        })
    }
}

/// Hidden and cell state of an [`Lstm`], in PyTorch's layout.
///
/// # Shapes
/// - `hidden`, `cell`: `[n_layers * n_directions, batch_size, d_hidden]`, layer-major with the
///   forward direction before the reverse one.
#[derive(Clone, Debug)]
pub struct LstmState {
    /// Hidden state `h`.
    pub hidden: Tensor<3>,
    /// Cell state `c`.
    pub cell: Tensor<3>,
}

impl LstmState {
    /// Detaches both tensors from the autodiff graph (truncated backpropagation through time:
    /// carry the state into the next batch without backpropagating into the previous one).
    pub fn detach(self) -> Self {
        Self {
            hidden: self.hidden.detach(),
            cell: self.cell.detach(),
        }
    }
}

/// A stacked, optionally bidirectional LSTM over batch-first sequences, with PyTorch's
/// parameter layout (`nn.LSTM`: gate order `i, f, g, o`, two bias vectors), so PyTorch weights
/// load one-to-one through [`Lstm::load_pytorch`].
///
/// lmforge has its own LSTM rather than stacking burn-nn's because burn-nn's keeps one linear
/// layer per gate (four matmuls per step), has no multi-layer stack and no PyTorch layout; here
/// the input projection of a whole sequence is one matmul and the four gates of a step are one.
///
/// ```text
/// i = σ(W_ii x + b_ii + W_hi h + b_hi)      c' = f ⊙ c + i ⊙ g
/// f = σ(W_if x + b_if + W_hf h + b_hf)      h' = o ⊙ tanh(c')
/// g = tanh(W_ig x + b_ig + W_hg h + b_hg)
/// o = σ(W_io x + b_io + W_ho h + b_ho)
/// ```
#[derive(Module, Debug)]
pub struct Lstm {
    /// The layers and their weights.
    pub stack: RecurrentStack,
}

impl Lstm {
    /// A zero state for `batch_size` sequences.
    pub fn zero_state(&self, batch_size: usize, device: &Device) -> LstmState {
        let shape = self.stack.state_shape(batch_size);
        LstmState {
            hidden: Tensor::zeros(shape, device),
            cell: Tensor::zeros(shape, device),
        }
    }

    /// Runs the LSTM over whole sequences.
    ///
    /// # Shapes
    /// - `x`: `[batch_size, seq_length, d_input]`
    /// - `state`: see [`LstmState`]; `None` starts from zeros
    /// - returns: the last layer's outputs `[batch_size, seq_length, n_directions * d_hidden]`
    ///   and the final state
    ///
    /// # Panics
    /// When `x` or `state` does not have the shapes above (the message names both shapes).
    pub fn forward(&self, x: Tensor<3>, state: Option<LstmState>) -> (Tensor<3>, LstmState) {
        let (h0, c0) = state.map(|s| (s.hidden, s.cell)).unzip();
        let (y, hidden, cell) = self.stack.run(x, h0, c0);
        let cell = cell.expect("an LSTM returns a cell state");
        (y, LstmState { hidden, cell })
    }

    /// One time step, for generation: equal to [`Lstm::forward`] on a length-1 sequence.
    ///
    /// # Shapes
    /// - `x`: `[batch_size, d_input]`
    /// - returns: `[batch_size, d_hidden]` and the new state
    ///
    /// # Panics
    /// For a bidirectional LSTM (the reverse direction needs the whole sequence), or on the
    /// shape errors of [`Lstm::forward`].
    pub fn step(&self, x: Tensor<2>, state: Option<LstmState>) -> (Tensor<2>, LstmState) {
        let (h0, c0) = state.map(|s| (s.hidden, s.cell)).unzip();
        let (y, hidden, cell) = self.stack.step(x, h0, c0);
        let cell = cell.expect("an LSTM returns a cell state");
        (y, LstmState { hidden, cell })
    }

    /// Loads weights from a PyTorch `nn.LSTM` state dict (`weight_ih_l0`, `weight_hh_l0`,
    /// `bias_ih_l0`, `bias_hh_l0`, `..._reverse`), given as a lookup by key and the keys
    /// present.
    ///
    /// # Errors
    /// [`LayerError::MissingWeight`], [`LayerError::WeightShape`] (with both shapes) or
    /// [`LayerError::UnexpectedWeights`] (listing the unused keys).
    pub fn load_pytorch(
        mut self,
        lookup: impl FnMut(&str) -> Option<TensorData>,
        keys: impl IntoIterator<Item = String>,
    ) -> Result<Self, LayerError> {
        self.stack.load_pytorch(lookup, keys)?;
        Ok(self)
    }
}
