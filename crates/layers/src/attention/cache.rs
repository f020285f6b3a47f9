//! The key/value cache of incremental decoding.

use burn::tensor::Tensor;

/// Keys and values already computed by a [`MultiHeadAttention`](super::MultiHeadAttention),
/// so each decoding step projects only the new positions.
///
/// For self-attention the cache grows by the new positions at every call; for
/// cross-attention it holds the projected memory, computed on the first call.
///
/// # Shapes
/// - `key`, `value`: `[batch_size, n_heads, seq_cached, d_head]`
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    /// Cached keys.
    pub key: Option<Tensor<4>>,
    /// Cached values.
    pub value: Option<Tensor<4>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.key.as_ref().map_or(0, |k| k.dims()[2])
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the cached positions (keeping capacity for nothing): the next call starts over.
    pub fn clear(&mut self) {
        self.key = None;
        self.value = None;
    }
}
