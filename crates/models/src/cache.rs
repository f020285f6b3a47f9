//! The key/value caches of decoder-only models, shared by GPT and the Llama family.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use lmforge_layers::transformer::{DecoderBlock, DecoderBlockCache};

use crate::tokens::{assert_tokens, check_positions};

/// The per-block key/value caches of a decoder-only model ([`Gpt`](crate::gpt::Gpt),
/// [`Llama`](crate::llama::Llama)) for incremental decoding.
#[derive(Clone, Debug, Default)]
pub struct DecoderCache {
    /// One cache per block.
    pub blocks: Vec<DecoderBlockCache>,
    /// Per row, the number of padding positions at the start of the sequence (left padding
    /// for batched generation); empty = none. See [`DecoderCache::left_padded`].
    pub left_padding: Vec<usize>,
}

impl DecoderCache {
    /// A cache for a batch whose row `r` starts with `left_padding[r]` padding positions:
    /// the model's `forward_cached` then masks those positions as keys and numbers each row's
    /// positions from its first real token, so every row gives what it gives alone.
    pub fn left_padded(left_padding: Vec<usize>) -> Self {
        Self {
            blocks: Vec::new(),
            left_padding,
        }
    }

    /// Number of positions cached so far.
    pub fn len(&self) -> usize {
        self.blocks
            .first()
            .map_or(0, |block| block.self_attention.len())
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The positions already cached and, for a left-padded cache, the key padding mask
    /// `[batch_size, start + seq_length]` and each row's positions counted from its first real
    /// token (`batch_size * seq_length`, row-major; padding positions get 0).
    ///
    /// # Panics
    /// When the cache holds another number of rows than `batch_size`, or a `mask_pad` was
    /// given as well (`model` names the caller).
    fn left_padding_layout(
        &self,
        model: &str,
        batch_size: usize,
        seq_length: usize,
        has_mask: bool,
        device: &Device,
    ) -> Option<(Tensor<2, Bool>, Vec<usize>)> {
        if self.left_padding.is_empty() {
            return None;
        }
        assert!(
            self.left_padding.len() == batch_size && !has_mask,
            "{model}: a left-padded cache needs one padding count per row ({batch_size}) and no `mask_pad`"
        );
        let start = self.len();
        let end = start + seq_length;
        let mask: Vec<bool> = self
            .left_padding
            .iter()
            .flat_map(|&pad| (0..end).map(move |c| c < pad))
            .collect();
        let positions: Vec<usize> = self
            .left_padding
            .iter()
            .flat_map(|&pad| (start..end).map(move |c| c.saturating_sub(pad)))
            .collect();
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(mask, [batch_size, end]), device);
        Some((mask, positions))
    }
}

/// The inputs of a decoder-only model's pass after [`DecoderInputs::check`].
pub(crate) struct DecoderInputs {
    /// Positions already cached (0 without a cache).
    pub(crate) start: usize,
    /// The key padding mask: the caller's, or the one of a left-padded cache.
    pub(crate) mask_pad: Option<Tensor<2, Bool>>,
    /// Per-row positions of the new tokens for a left-padded cache (`batch_size *
    /// seq_length`); `None`: `start..start + seq_length` for every row.
    pub(crate) positions: Option<Vec<usize>>,
}

impl DecoderInputs {
    /// Checks `tokens` and `mask_pad` against the model (`model` names it in panics) and the
    /// cache, and readies the cache for `n_blocks` blocks.
    ///
    /// # Panics
    /// When a token id is outside `0..vocab_size`, the cached and new positions exceed
    /// `max_seq_length`, `mask_pad` is not `[batch_size, start + seq_length]`, or a
    /// left-padded cache does not fit the batch.
    #[track_caller]
    pub(crate) fn check(
        model: &str,
        tokens: &Tensor<2, Int>,
        mask_pad: Option<Tensor<2, Bool>>,
        cache: Option<&mut DecoderCache>,
        [n_blocks, max_seq_length, vocab_size]: [usize; 3],
    ) -> Self {
        let [batch_size, seq_length] = tokens.dims();
        let start = cache.as_ref().map_or(0, |c| c.len());
        check_positions(model, start, seq_length, max_seq_length);
        if let Some(mask) = &mask_pad {
            assert_eq!(
                mask.dims(),
                [batch_size, start + seq_length],
                "{model}: `mask_pad` has shape {:?}, expected [{batch_size}, {}] (cached + new positions)",
                mask.dims(),
                start + seq_length
            );
        }
        assert_tokens(model, tokens, vocab_size);
        let Some(cache) = cache else {
            return Self {
                start,
                mask_pad,
                positions: None,
            };
        };
        if cache.blocks.len() != n_blocks {
            cache.blocks = vec![DecoderBlockCache::default(); n_blocks];
        }
        let layout = cache.left_padding_layout(
            model,
            batch_size,
            seq_length,
            mask_pad.is_some(),
            &tokens.device(),
        );
        match layout {
            Some((mask, positions)) => Self {
                start,
                mask_pad: Some(mask),
                positions: Some(positions),
            },
            None => Self {
                start,
                mask_pad,
                positions: None,
            },
        }
    }

    /// Runs `x` through decoder-only `blocks` (with the cache when given), pushing the input
    /// of every block to `states` when given.
    pub(crate) fn run_blocks(
        self,
        blocks: &[DecoderBlock],
        mut x: Tensor<3>,
        mut cache: Option<&mut DecoderCache>,
        mut states: Option<&mut Vec<Tensor<3>>>,
    ) -> Tensor<3> {
        for (i, block) in blocks.iter().enumerate() {
            if let Some(states) = states.as_deref_mut() {
                states.push(x.clone());
            }
            let block_cache = cache.as_deref_mut().map(|c| &mut c.blocks[i]);
            x = block.forward_at(
                x,
                self.mask_pad.clone(),
                self.positions.clone(),
                block_cache,
            );
        }
        x
    }
}
