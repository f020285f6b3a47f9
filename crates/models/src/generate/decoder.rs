//! The trait generation drives, and its implementations for lmforge's models.

use burn::tensor::{Int, Tensor};
use lmforge_layers::on_compute_threads;
use lmforge_layers::rnn::LstmState;

use lmforge_layers::transformer::{DecoderBlockCache, Memory};

use crate::cache::DecoderCache;
use crate::gpt::Gpt;
use crate::llama::Llama;
use crate::lstm_lm::LstmLm;
use crate::seq2seq::{Seq2Seq, Seq2SeqCache};

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

    /// Runs prompts that were left-padded to a common length (row `r` starts with
    /// `left_padding[r]` padding tokens), so that each row continues as it would alone.
    /// `None` when the model cannot (the default); generation then refuses prompts of
    /// different lengths.
    fn prefill_left_padded(
        &self,
        tokens: Tensor<2, Int>,
        left_padding: &[usize],
    ) -> Option<(Tensor<2>, Self::State)> {
        let _ = (tokens, left_padding);
        None
    }

    /// Rearranges the batch rows of `state`: row `i` becomes a copy of row `rows[i]` (beam
    /// search continues the best beams).
    fn reorder(&self, state: &mut Self::State, rows: &[usize]);
}

fn index(rows: &[usize], device: &burn::tensor::Device) -> Tensor<1, Int> {
    let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    let n = rows.len();
    Tensor::from_data(burn::tensor::TensorData::new(rows, [n]), device)
}

/// Reorders the batch rows of every block's self- and cross-attention cache.
fn reorder_blocks(blocks: &mut [DecoderBlockCache], rows: &[usize]) {
    for block in blocks {
        block.self_attention.select_rows(rows);
        block.cross_attention.select_rows(rows);
    }
}

/// Logits of the last position.
fn last(logits: Tensor<3>) -> Tensor<2> {
    let [batch_size, seq_length, vocab_size] = logits.dims();
    logits
        .slice([0..batch_size, seq_length - 1..seq_length])
        .reshape([batch_size, vocab_size])
}

/// [`Decoder`] for a decoder-only model with a `forward_cached` over a [`DecoderCache`]
/// (left padding masked and positions renumbered per row).
macro_rules! cached_decoder {
    ($model:ty) => {
        impl Decoder for $model {
            type State = DecoderCache;

            fn vocab_size(&self) -> usize {
                <$model>::vocab_size(self)
            }

            fn max_seq_length(&self) -> Option<usize> {
                Some(<$model>::max_seq_length(self))
            }

            fn prefill(&self, tokens: Tensor<2, Int>) -> (Tensor<2>, DecoderCache) {
                let mut cache = DecoderCache::default();
                let logits = on_compute_threads(|| self.forward_cached(tokens, None, &mut cache));
                (last(logits), cache)
            }

            fn step(&self, tokens: Tensor<2, Int>, cache: &mut DecoderCache) -> Tensor<2> {
                last(on_compute_threads(|| {
                    self.forward_cached(tokens, None, cache)
                }))
            }

            fn prefill_left_padded(
                &self,
                tokens: Tensor<2, Int>,
                left_padding: &[usize],
            ) -> Option<(Tensor<2>, DecoderCache)> {
                let mut cache = DecoderCache::left_padded(left_padding.to_vec());
                let logits = on_compute_threads(|| self.forward_cached(tokens, None, &mut cache));
                Some((last(logits), cache))
            }

            fn reorder(&self, cache: &mut DecoderCache, rows: &[usize]) {
                if !cache.left_padding.is_empty() {
                    cache.left_padding = rows.iter().map(|&r| cache.left_padding[r]).collect();
                }
                reorder_blocks(&mut cache.blocks, rows);
            }
        }
    };
}

cached_decoder!(Gpt);
cached_decoder!(Llama);

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

    /// Runs each row's prompt without its padding (a recurrent state has no mask), then
    /// stacks the rows' states.
    fn prefill_left_padded(
        &self,
        tokens: Tensor<2, Int>,
        left_padding: &[usize],
    ) -> Option<(Tensor<2>, LstmState)> {
        let [batch_size, seq_length] = tokens.dims();
        let mut logits = Vec::with_capacity(batch_size);
        let (mut hidden, mut cell) = (Vec::new(), Vec::new());
        for (r, &pad) in left_padding.iter().enumerate() {
            let row = tokens.clone().slice([r..r + 1, pad..seq_length]);
            let (row_logits, state) = self.prefill(row);
            logits.push(row_logits);
            hidden.push(state.hidden);
            cell.push(state.cell);
        }
        let state = LstmState {
            hidden: Tensor::cat(hidden, 1),
            cell: Tensor::cat(cell, 1),
        };
        Some((Tensor::cat(logits, 0), state))
    }

    fn reorder(&self, state: &mut LstmState, rows: &[usize]) {
        let rows = index(rows, &state.hidden.device());
        state.hidden = state.hidden.clone().select(1, rows.clone());
        state.cell = state.cell.clone().select(1, rows);
    }
}

/// A [`Seq2Seq`] with an encoded source, ready to be driven by generation: the prompt is the
/// decoder's start (e.g. a begin-of-sequence id per row).
///
/// A source of batch 1 is repeated for every row of the prompt (beam search, or several
/// samples of one source); otherwise the batch sizes must agree.
#[derive(Clone, Debug)]
pub struct Seq2SeqDecoder<'a> {
    /// The model.
    pub model: &'a Seq2Seq,
    /// The encoder output (from [`Seq2Seq::encode`]).
    pub memory: Memory,
}

impl Seq2Seq {
    /// Encodes `src` once and returns a [`Decoder`] over this source.
    ///
    /// # Shapes
    /// - `src`: `[batch_size, src_length]`; `src_mask_pad` the same, `true` = padding
    pub fn decoder(
        &self,
        src: Tensor<2, Int>,
        src_mask_pad: Option<Tensor<2, burn::tensor::Bool>>,
    ) -> Seq2SeqDecoder<'_> {
        Seq2SeqDecoder {
            model: self,
            memory: self.encode(src, src_mask_pad),
        }
    }
}

impl Decoder for Seq2SeqDecoder<'_> {
    /// Decoder caches and the memory, whose rows follow the batch's.
    type State = (Seq2SeqCache, Memory);

    fn vocab_size(&self) -> usize {
        self.model.config().tgt_vocab_size()
    }

    fn max_seq_length(&self) -> Option<usize> {
        Some(self.model.config().max_seq_length)
    }

    fn prefill(&self, tokens: Tensor<2, Int>) -> (Tensor<2>, Self::State) {
        let rows = tokens.dims()[0];
        let mut memory = self.memory.clone();
        let sources = memory.memory.dims()[0];
        if sources == 1 && rows > 1 {
            memory.memory = memory.memory.repeat_dim(0, rows);
            memory.mask_pad = memory.mask_pad.map(|m| m.repeat_dim(0, rows));
        }
        assert_eq!(
            memory.memory.dims()[0],
            rows,
            "Seq2SeqDecoder: {rows} prompt rows for {sources} encoded sources"
        );
        let mut cache = Seq2SeqCache::default();
        let logits = self.model.decode_cached(tokens, None, &memory, &mut cache);
        (last(logits), (cache, memory))
    }

    fn step(&self, tokens: Tensor<2, Int>, (cache, memory): &mut Self::State) -> Tensor<2> {
        last(self.model.decode_cached(tokens, None, memory, cache))
    }

    fn reorder(&self, (cache, memory): &mut Self::State, rows: &[usize]) {
        reorder_blocks(&mut cache.blocks, rows);
        let device = memory.memory.device();
        memory.memory = memory.memory.clone().select(0, index(rows, &device));
        memory.mask_pad = memory
            .mask_pad
            .take()
            .map(|m| m.select(0, index(rows, &device)));
    }
}
