//! The key/value caches of decoder-only models, shared by GPT and the Llama family.

use burn::tensor::{Bool, Device, Tensor, TensorData};
use lmforge_layers::transformer::DecoderBlockCache;

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

    /// Makes room for `n_blocks` block caches (on the first call).
    pub(crate) fn ensure_blocks(&mut self, n_blocks: usize) {
        if self.blocks.len() != n_blocks {
            self.blocks = vec![DecoderBlockCache::default(); n_blocks];
        }
    }

    /// For a left-padded cache and new positions `start..start + seq_length`: the key padding
    /// mask `[batch_size, start + seq_length]` and each row's positions counted from its first
    /// real token (`batch_size * seq_length`, row-major; padding positions get 0). `None`
    /// without left padding.
    ///
    /// # Panics
    /// When the cache holds another number of rows than `batch_size`, or a `mask_pad` was
    /// given as well (`model` names the caller).
    pub(crate) fn left_padding_layout(
        &self,
        model: &str,
        batch_size: usize,
        start: usize,
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
