//! Rotary position embeddings (RoPE).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{LayerError, check};

/// How the feature dimensions are paired for rotation.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum RotaryStyle {
    /// Dimension `i` rotates with `i + d_head/2` (GPT-NeoX, LLaMA in HuggingFace).
    HalfSplit,
    /// Dimension `2i` rotates with `2i + 1` (RoFormer, GPT-J, burn-nn's `RotaryEncoding`).
    Interleaved,
}

/// Configuration of a [`RotaryEncoding`].
#[derive(Config, Debug)]
pub struct RotaryEncodingConfig {
    /// Longest sequence (positions precomputed).
    pub max_seq_length: usize,
    /// Width of the rotated vectors: the head width (even).
    pub d_head: usize,
    /// Base of the frequencies. Default: 10000.
    #[config(default = 10000.0)]
    pub base: f64,
    /// Pairing of dimensions. Default: half-split.
    #[config(default = "RotaryStyle::HalfSplit")]
    pub style: RotaryStyle,
}

impl RotaryEncodingConfig {
    /// Precomputes the cosines and sines (in f64, stored as f32).
    ///
    /// # Errors
    /// [`LayerError::InvalidConfig`] for a zero size or an odd `d_head`.
    pub fn init(&self, device: &Device) -> Result<RotaryEncoding, LayerError> {
        let layer = "RotaryEncodingConfig";
        check(self.max_seq_length > 0, layer, || {
            "max_seq_length must be > 0".into()
        })?;
        check(
            self.d_head > 0 && self.d_head.is_multiple_of(2),
            layer,
            || format!("d_head must be even and > 0, got {}", self.d_head),
        )?;
        let half = self.d_head / 2;
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for pos in 0..self.max_seq_length {
            for d in 0..self.d_head {
                // The frequency index of dimension d under each pairing.
                let i = match self.style {
                    RotaryStyle::HalfSplit => d % half,
                    RotaryStyle::Interleaved => d / 2,
                };
                let angle = pos as f64 / self.base.powf(2.0 * i as f64 / self.d_head as f64);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let table = |values: Vec<f32>| {
            let t = Tensor::from_data(
                TensorData::new(values, [self.max_seq_length, self.d_head]),
                device,
            );
            Param::from_tensor(t).set_require_grad(false)
        };
        Ok(RotaryEncoding {
            cos: table(cos),
            sin: table(sin),
            style: self.style,
        })
    }
}

/// Rotary position embeddings (Su et al. 2021, "RoFormer"): each pair of query/key dimensions
/// is rotated by an angle proportional to the position, so attention scores depend on relative
/// positions. Applied to queries and keys, not added to embeddings.
///
/// `x' = x ⊙ cos + rotate(x) ⊙ sin`, where `rotate` maps each pair `(a, b)` to `(-b, a)`.
/// lmforge has its own rather than burn-nn's `RotaryEncoding` because it offers both pairings
/// (burn-nn has only the interleaved one; HuggingFace's GPT-NeoX/LLaMA use the half split) and
/// works elementwise instead of through a small matmul per pair.
#[derive(Module, Debug)]
pub struct RotaryEncoding {
    /// Cosines, `[max_seq_length, d_head]`; constant.
    pub cos: Param<Tensor<2>>,
    /// Sines, `[max_seq_length, d_head]`; constant.
    pub sin: Param<Tensor<2>>,
    #[module(skip)]
    style: RotaryStyle,
}

impl RotaryEncoding {
    /// Rotates `x` for positions `start .. start + seq_length`.
    ///
    /// # Shapes
    /// - `x`: `[batch_size, n_heads, seq_length, d_head]`
    /// - returns: the same shape
    ///
    /// # Panics
    /// When the last dimension is not `d_head` or the positions exceed `max_seq_length`.
    pub fn apply(&self, x: Tensor<4>, start: usize) -> Tensor<4> {
        let [_, _, seq_length, d_head] = x.dims();
        let [max_seq_length, d_table] = self.cos.dims();
        assert_eq!(
            d_head, d_table,
            "RotaryEncoding: `x` has d_head {d_head}, expected {d_table}"
        );
        assert!(
            start + seq_length <= max_seq_length,
            "RotaryEncoding: positions {start}..{} exceed max_seq_length {max_seq_length}",
            start + seq_length
        );
        let table = |t: &Param<Tensor<2>>| {
            t.val()
                .narrow(0, start, seq_length)
                .reshape([1, 1, seq_length, d_head])
        };
        let rotated = rotate_pairs(x.clone(), self.style);
        x * table(&self.cos) + rotated * table(&self.sin)
    }
}

/// Maps each rotated pair `(a, b)` of `x` to `(-b, a)`, pairing dimensions by `style`.
///
/// # Shapes
/// - `x`: `[batch_size, n_heads, seq_length, d_head]`; returns the same shape
pub(super) fn rotate_pairs(x: Tensor<4>, style: RotaryStyle) -> Tensor<4> {
    let [batch_size, n_heads, seq_length, d_head] = x.dims();
    match style {
        RotaryStyle::HalfSplit => {
            let half = d_head / 2;
            let first = x.clone().narrow(3, 0, half);
            let second = x.narrow(3, half, half);
            Tensor::cat(vec![second.neg(), first], 3)
        }
        RotaryStyle::Interleaved => {
            let pairs = x.reshape([batch_size, n_heads, seq_length, d_head / 2, 2]);
            let even = pairs.clone().narrow(4, 0, 1);
            let odd = pairs.narrow(4, 1, 1);
            Tensor::cat(vec![odd.neg(), even], 4).reshape([batch_size, n_heads, seq_length, d_head])
        }
    }
}
