//! The key/value cache of incremental decoding.

use burn::tensor::{Int, Tensor, TensorData};

/// Positions a self-attention cache reserves on its first append beyond what that append needs.
const MIN_SPARE: usize = 64;

/// Keys and values already computed by a [`MultiHeadAttention`](super::MultiHeadAttention),
/// so each decoding step projects only the new positions.
///
/// For self-attention the cache grows by the new positions at every call; for
/// cross-attention it holds the projected memory, computed on the first call.
///
/// Growing does not copy what is cached: the keys and values live in buffers with room for
/// more positions (doubled when full), and each step writes its positions into the free
/// room in place. [`Self::key`] and [`Self::value`] are views of the filled part.
///
/// # Shapes
/// - [`Self::key`], [`Self::value`]: `[batch_size, n_kv_heads, seq_cached, d_head]`
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    /// Keys, `[batch_size, n_kv_heads, capacity, d_head]`; positions `len..` are unused.
    key: Option<Tensor<4>>,
    /// Values, laid out as the keys.
    value: Option<Tensor<4>>,
    /// Number of filled positions.
    len: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of positions the buffers hold before they grow.
    pub fn capacity(&self) -> usize {
        self.key.as_ref().map_or(0, |k| k.dims()[2])
    }

    /// Drops the cached positions and their buffers: the next call starts over.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The cached keys, `[batch_size, n_kv_heads, seq_cached, d_head]` (`None` when empty).
    pub fn key(&self) -> Option<Tensor<4>> {
        self.key.as_ref().map(|k| filled(k, self.len))
    }

    /// The cached values, `[batch_size, n_kv_heads, seq_cached, d_head]` (`None` when empty).
    pub fn value(&self) -> Option<Tensor<4>> {
        self.value.as_ref().map(|v| filled(v, self.len))
    }

    /// Replaces the contents by `key` and `value` (cross-attention's projected memory), with
    /// no spare room.
    ///
    /// # Panics
    /// When the shapes of `key` and `value` differ in anything but the last dimension.
    pub fn set(&mut self, key: Tensor<4>, value: Tensor<4>) {
        check_pair(&key, &value);
        self.len = key.dims()[2];
        self.key = Some(key);
        self.value = Some(value);
    }

    /// Appends the positions of `key` and `value` (`[batch_size, n_kv_heads, seq_new,
    /// d_head]`) and returns the whole cached keys and values, as [`Self::key`] and
    /// [`Self::value`]. The buffers double when full; otherwise nothing cached is copied
    /// (where the backend writes in place, as flex does for buffers no other tensor shares).
    ///
    /// # Panics
    /// When the new positions' batch size, heads or widths differ from the cached ones.
    pub fn append(&mut self, key: Tensor<4>, value: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        check_pair(&key, &value);
        let [batch_size, heads, seq_new, d_key] = key.dims();
        let d_value = value.dims()[3];
        let (Some(old_key), Some(old_value)) = (self.key.take(), self.value.take()) else {
            // The first append: a buffer with room to spare.
            let capacity = seq_new + seq_new.max(MIN_SPARE);
            self.key = Some(with_room(key, capacity));
            self.value = Some(with_room(value, capacity));
            self.len = seq_new;
            return (self.key().unwrap(), self.value().unwrap());
        };
        let [b, h, capacity, d] = old_key.dims();
        assert!(
            [b, h, d, old_value.dims()[3]] == [batch_size, heads, d_key, d_value],
            "KvCache::append: new keys {:?} and values {:?} do not extend the cached {:?} and {:?}",
            key.dims(),
            value.dims(),
            [b, h, self.len, d],
            [b, h, self.len, old_value.dims()[3]],
        );
        let len = self.len + seq_new;
        let (old_key, old_value) = if len > capacity {
            let capacity = (2 * capacity).max(len);
            (
                with_room(filled(&old_key, self.len), capacity),
                with_room(filled(&old_value, self.len), capacity),
            )
        } else {
            (old_key, old_value)
        };
        let at = self.len..len;
        self.key = Some(old_key.slice_assign([0..b, 0..h, at.clone(), 0..d], key));
        self.value = Some(old_value.slice_assign([0..b, 0..h, at, 0..d_value], value));
        self.len = len;
        (self.key().unwrap(), self.value().unwrap())
    }

    /// Keeps the batch rows `rows` in that order: row `i` becomes a copy of row `rows[i]`
    /// (beam search continues its best beams).
    ///
    /// # Panics
    /// When a row is out of range.
    pub fn select_rows(&mut self, rows: &[usize]) {
        for buffer in [&mut self.key, &mut self.value].into_iter().flatten() {
            let batch_size = buffer.dims()[0];
            assert!(
                rows.iter().all(|&r| r < batch_size),
                "KvCache::select_rows: rows {rows:?} out of range for batch size {batch_size}"
            );
            let index: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
            let index =
                Tensor::<1, Int>::from_data(TensorData::new(index, [rows.len()]), &buffer.device());
            *buffer = buffer.clone().select(0, index);
        }
    }
}

/// Positions `..len` of a buffer.
fn filled(buffer: &Tensor<4>, len: usize) -> Tensor<4> {
    let [b, h, _, d] = buffer.dims();
    buffer.clone().slice([0..b, 0..h, 0..len, 0..d])
}

/// `x` at the start of a zeroed buffer of `capacity` positions.
fn with_room(x: Tensor<4>, capacity: usize) -> Tensor<4> {
    let [b, h, seq, d] = x.dims();
    Tensor::<4>::zeros([b, h, capacity, d], (&x.device(), x.dtype()))
        .slice_assign([0..b, 0..h, 0..seq, 0..d], x)
}

fn check_pair(key: &Tensor<4>, value: &Tensor<4>) {
    let (k, v) = (key.dims(), value.dims());
    assert!(
        k[..3] == v[..3],
        "KvCache: keys {k:?} and values {v:?} differ in batch size, heads or positions"
    );
}
