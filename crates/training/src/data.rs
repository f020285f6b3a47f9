//! Batches of examples in a reproducible order.

use lmforge_data::dataset::shuffle;

/// A list of examples cut into batches, reshuffled on every pass with a seed derived from the
/// run's seed and the pass number.
///
/// The batch at any position is a pure function of `(seed, pass, index)`: this is what lets a
/// resumed run read exactly the batches an uninterrupted run would have read.
#[derive(Clone, Debug)]
pub struct Batches<T> {
    items: Vec<T>,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
}

impl<T: Clone> Batches<T> {
    /// Batches of `batch_size` examples, shuffled each pass (the last partial batch of a pass is
    /// dropped so every step sees a full batch; a list shorter than one batch is one batch).
    ///
    /// # Panics
    /// If `batch_size` is 0 or `items` is empty.
    pub fn new(items: Vec<T>, batch_size: usize) -> Self {
        assert!(batch_size > 0, "batch_size must be > 0");
        assert!(!items.is_empty(), "no examples to batch");
        Self {
            items,
            batch_size,
            shuffle: true,
            seed: 0,
        }
    }

    /// Keeps the examples in order (for evaluation sets). An unshuffled list keeps its last
    /// partial batch.
    pub fn in_order(mut self) -> Self {
        self.shuffle = false;
        self
    }

    /// Sets the seed the shuffles derive from.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Number of batches in one pass.
    pub fn len(&self) -> usize {
        if self.shuffle {
            (self.items.len() / self.batch_size).max(1)
        } else {
            self.items.len().div_ceil(self.batch_size)
        }
    }

    /// Always false: an empty list is refused by [`Batches::new`].
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of examples.
    pub fn n_items(&self) -> usize {
        self.items.len()
    }

    /// The examples.
    pub fn items(&self) -> &[T] {
        &self.items
    }

    /// The batch at `index` (taken modulo [`len`](Self::len)) of pass `pass`.
    pub fn batch(&self, pass: u64, index: usize) -> Vec<T> {
        let index = index % self.len();
        let start = index * self.batch_size;
        let end = (start + self.batch_size).min(self.items.len());
        if !self.shuffle {
            return self.items[start..end].to_vec();
        }
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        shuffle(
            &mut order,
            self.seed ^ pass.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        order[start..end]
            .iter()
            .map(|&i| self.items[i].clone())
            .collect()
    }

    /// The batch read at global position `position` (pass `position / len`, index
    /// `position % len`).
    pub fn at(&self, position: u64) -> Vec<T> {
        let len = self.len() as u64;
        self.batch(position / len, (position % len) as usize)
    }
}
