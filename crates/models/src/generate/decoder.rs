//! The trait generation drives, and its implementations for lmforge's models.

use burn::tensor::{Int, Tensor};
use lmforge_layers::rnn::LstmState;

use crate::gpt::{Gpt, GptCache};
use crate::lstm_lm::LstmLm;

/// An autoregressive model that [`super::generate`] can drive: it reads a prompt once, then
/// one token per row at a time, carrying whatever it needs (a KV cache, a recurrent state)
/// in `State`.
///
/// # Shapes
/// - `tokens`: `[batch_size, prompt_length]` for [`Decoder::prefill`], `[batch_size, 1]` for
///   [`Decoder::step`]
/// - returns: next-token logits of the last position, `[batch_size, vocab_size]`
pub trait Decoder {
    /// What is carried from one step to the next.
    type State;

    /// Number of token ids (the width of the logits).
    fn vocab_size(&self) -> usize;

    /// Longest sequence the model accepts, if it has a limit.
    fn max_seq_length(&self) -> Option<usize>;

    /// Runs the prompt; returns the logits after its last token and the state.
    fn prefill(&self, tokens: Tensor<2, Int>) -> (Tensor<2>, Self::State);

    /// Feeds one more token per row.
    fn step(&self, tokens: Tensor<2, Int>, state: &mut Self::State) -> Tensor<2>;

    /// Rearranges the batch rows of `state`: row `i` becomes a copy of row `rows[i]` (beam
    /// search continues the best beams).
    fn reorder(&self, state: &mut Self::State, rows: &[usize]);
}

fn index(rows: &[usize], device: &burn::tensor::Device) -> Tensor<1, Int> {
    let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let n = rows.len();
    Tensor::from_data(burn::tensor::TensorData::new(rows, [n]), device)
}

fn reorder_kv(cache: &mut lmforge_layers::attention::KvCache, rows: &[usize]) {
    for t in [&mut cache.key, &mut cache.value].into_iter().flatten() {
        *t = t.clone().select(0, index(rows, &t.device()));
    }
}

/// Logits of the last position.
fn last(logits: Tensor<3>) -> Tensor<2> {
    let [batch_size, seq_length, vocab_size] = logits.dims();
    logits
        .slice([0..batch_size, seq_length - 1..seq_length])
        .reshape([batch_size, vocab_size])
}

impl Decoder for Gpt {
    type State = GptCache;

    fn vocab_size(&self) -> usize {
        Gpt::vocab_size(self)
    }

    fn max_seq_length(&self) -> Option<usize> {
        Some(Gpt::max_seq_length(self))
    }

    fn prefill(&self, tokens: Tensor<2, Int>) -> (Tensor<2>, GptCache) {
        let mut cache = GptCache::default();
        let logits = self.forward_cached(tokens, None, &mut cache);
        (last(logits), cache)
    }

    fn step(&self, tokens: Tensor<2, Int>, cache: &mut GptCache) -> Tensor<2> {
        last(self.forward_cached(tokens, None, cache))
    }

    fn reorder(&self, cache: &mut GptCache, rows: &[usize]) {
        for block in &mut cache.blocks {
            reorder_kv(&mut block.self_attention, rows);
            reorder_kv(&mut block.cross_attention, rows);
        }
    }
}

impl Decoder for LstmLm {
    type State = LstmState;

    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }

    fn max_seq_length(&self) -> Option<usize> {
        None
    }

    fn prefill(&self, tokens: Tensor<2, Int>) -> (Tensor<2>, LstmState) {
        let (logits, state) = self.forward(tokens, None);
        (last(logits), state)
    }

    fn step(&self, tokens: Tensor<2, Int>, state: &mut LstmState) -> Tensor<2> {
        let (logits, next) = self.forward(tokens, Some(state.clone()));
        *state = next;
        last(logits)
    }

    fn reorder(&self, state: &mut LstmState, rows: &[usize]) {
        let rows = index(rows, &state.hidden.device());
        state.hidden = state.hidden.clone().select(1, rows.clone());
        state.cell = state.cell.clone().select(1, rows);
    }
}
