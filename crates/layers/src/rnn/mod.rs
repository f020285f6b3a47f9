//! Recurrent layers: Elman RNN, LSTM and GRU.
//!
//! All three are stacked (`n_layers`), optionally bidirectional, batch-first, take an optional
//! initial state and return the final one (so language models can carry state across batches
//! for truncated backpropagation through time), and have a single-step API for generation.
//! Their parameters use PyTorch's layout and names (`nn.RNN`, `nn.LSTM`, `nn.GRU`;
//! Elman 1990, Hochreiter & Schmidhuber 1997, Cho et al. 2014), so PyTorch weights load
//! one-to-one.
//!
//! The input projection of a whole sequence is one matmul per layer and direction; each time
//! step is one matmul for all gates. On burn's `flex` CPU backend (with this crate's `flex`
//! feature, which the `lmforge` facade's `flex` feature turns on) the LSTM recurrence of a whole
//! direction runs as one fused operation with a hand-written backward pass: the same function,
//! several times faster to train.

#[cfg(feature = "flex")]
mod fused_lstm;
mod gru;
mod lstm;
mod recurrent;
#[allow(clippy::module_inception)]
mod rnn;

pub use gru::{Gru, GruConfig};
pub use lstm::{Lstm, LstmConfig, LstmState};
pub use recurrent::{RecurrentLayer, RecurrentStack, RecurrentWeights};
pub use rnn::{Rnn, RnnActivation, RnnConfig};

#[cfg(test)]
mod tests;
