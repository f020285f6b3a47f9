//! Truncated backpropagation through time with the LSTM state carried across batches.

use std::sync::Mutex;

use burn::tensor::{Int, Tensor, TensorData};
use lmforge_layers::rnn::LstmState;
use lmforge_models::lstm_lm::LstmLm;
use lmforge_objectives::CrossEntropy;

use crate::task::{StepContext, StepOutput, Task, TaskError};

/// Cuts a token stream into `batch_size` contiguous streams and those into windows of
/// `window + 1` tokens that overlap by one (the last token of a window is the first input of
/// the next), ordered so that batch `i` holds window `i` of every stream:
/// item `i * batch_size + r` is window `i` of stream `r`. Feed the result to an unshuffled
/// [`Batches`](crate::Batches) of `batch_size`, with a [`StatefulLstmTask`].
///
/// Tokens that do not fill a last window of every stream are dropped.
pub fn stream_windows(tokens: &[u32], batch_size: usize, window: usize) -> Vec<Vec<u32>> {
    if batch_size == 0 || window == 0 {
        return Vec::new();
    }
    let stream_len = tokens.len() / batch_size;
    let n_windows = stream_len.saturating_sub(1) / window;
    let mut items = Vec::with_capacity(n_windows * batch_size);
    for i in 0..n_windows {
        for r in 0..batch_size {
            let start = r * stream_len + i * window;
            items.push(tokens[start..start + window + 1].to_vec());
        }
    }
    items
}

/// Next-word prediction for an [`LstmLm`] whose state flows from one batch to the next, as in
/// Zaremba et al. (2014): row `r` of batch `i` continues row `r` of batch `i - 1`
/// (data laid out by [`stream_windows`], read in order). Gradients stop at batch boundaries
/// (the carried state is detached).
///
/// The state starts from zero at the start of every pass over the training data, every
/// `reset_every` batches (so that a run resumed from a checkpoint taken at such a batch
/// continues exactly: set it to the checkpoint interval times the gradient accumulation),
/// and at the first batch of every evaluation. Training and evaluation keep separate states.
///
/// A run resumed from a checkpoint that is not a reset point (the checkpoint a run writes at
/// its last step, extended with more steps) starts there from a zero state, so it does not
/// continue exactly.
pub struct StatefulLstmTask {
    batches_per_pass: u64,
    reset_every: u64,
    loss: CrossEntropy,
    /// `[training, evaluation]`: the state after the batch at the stored position.
    states: Mutex<[Option<(u64, LstmState)>; 2]>,
}

impl StatefulLstmTask {
    /// A task over training data of `batches_per_pass` batches per pass, starting again from
    /// a zero state every `reset_every` batches (0: only at pass starts).
    pub fn new(batches_per_pass: usize, reset_every: usize) -> Self {
        Self {
            batches_per_pass: batches_per_pass.max(1) as u64,
            reset_every: reset_every as u64,
            loss: CrossEntropy::new(),
            states: Mutex::new([None, None]),
        }
    }

    fn restarts(&self, training: bool, position: u64) -> bool {
        if !training {
            return position == 0;
        }
        position.is_multiple_of(self.batches_per_pass)
            || (self.reset_every > 0 && position.is_multiple_of(self.reset_every))
    }
}

impl Task<LstmLm> for StatefulLstmTask {
    type Item = Vec<u32>;

    fn step(
        &self,
        model: &LstmLm,
        items: &[Vec<u32>],
        context: &mut StepContext<'_>,
    ) -> Result<StepOutput, TaskError> {
        let seq_length = items.first().map_or(0, Vec::len);
        if seq_length < 2 || items.iter().any(|r| r.len() != seq_length) {
            return Err("stateful LM windows must all have the same length, at least 2".into());
        }
        let batch_size = items.len();
        let slot = usize::from(!context.training);
        let position = context.position;
        let previous = {
            // A poisoned lock (a step panicked while holding it) still holds plain slots; at
            // worst a slot is empty and this step starts from a fresh state.
            let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
            let carried = states[slot].take();
            match carried {
                Some((at, state))
                    if at + 1 == position
                        && !self.restarts(context.training, position)
                        && state.hidden.dims()[1] == batch_size =>
                {
                    Some(state)
                }
                _ => None,
            }
        };
        let ids: Vec<i64> = items.iter().flatten().map(|&id| i64::from(id)).collect();
        let tokens: Tensor<2, Int> = Tensor::from_data(
            TensorData::new(ids, [batch_size, seq_length]),
            context.device,
        );
        let inputs = tokens.clone().slice([0..batch_size, 0..seq_length - 1]);
        let (logits, state) = model.forward(inputs, previous);
        self.states.lock().unwrap_or_else(|e| e.into_inner())[slot] =
            Some((position, state.detach()));
        // A window's last token is only a target here; it is the next window's first input.
        let [_, steps, vocab_size] = logits.dims();
        let targets = tokens.slice([0..batch_size, 1..seq_length]);
        // Next-token accuracy in evaluation only (training steps skip the arg-max).
        let hits =
            (!context.training).then(|| super::correct(logits.clone().detach(), targets.clone()));
        let loss = self.loss.forward(
            logits.reshape([batch_size * steps, vocab_size]),
            targets.reshape([batch_size * steps]),
        );
        let out = StepOutput::from_loss(loss, batch_size * steps);
        Ok(match hits {
            Some(hits) => out.with_correct(hits),
            None => out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2 streams of 7 tokens (14 of 15 used), windows of 3 + 1: stream 0 is 0..7, stream 1
    /// is 7..14; windows [0,1,2,3], [3,4,5,6] and [7,8,9,10], [10,11,12,13].
    #[test]
    fn windows_continue_their_stream() {
        let tokens: Vec<u32> = (0..15).collect();
        let items = stream_windows(&tokens, 2, 3);
        assert_eq!(
            items,
            vec![
                vec![0, 1, 2, 3],
                vec![7, 8, 9, 10],
                vec![3, 4, 5, 6],
                vec![10, 11, 12, 13],
            ]
        );
    }
}
