//! Fixed sinusoidal position encodings.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{LayerError, check};

/// Configuration of [`SinusoidalPositions`].
#[derive(Config, Debug)]
pub struct SinusoidalPositionsConfig {
    /// Longest sequence.
    pub max_seq_length: usize,
    /// Width of each position vector (even).
    pub d_model: usize,
    /// Base of the wavelengths. Default: 10000.
    #[config(default = 10000.0)]
    pub base: f64,
}

impl SinusoidalPositionsConfig {
    /// Builds the table.
    ///
    /// # Errors
    /// [`LayerError::InvalidConfig`] for a zero size or an odd `d_model`.
    pub fn init(&self, device: &Device) -> Result<SinusoidalPositions, LayerError> {
        let layer = "SinusoidalPositionsConfig";
        check(self.max_seq_length > 0, layer, || {
            "max_seq_length must be > 0".into()
        })?;
        check(
            self.d_model > 0 && self.d_model.is_multiple_of(2),
            layer,
            || format!("d_model must be even and > 0, got {}", self.d_model),
        )?;
        let mut table = vec![0f32; self.max_seq_length * self.d_model];
        for pos in 0..self.max_seq_length {
            for i in 0..self.d_model / 2 {
                let angle = pos as f64 / self.base.powf(2.0 * i as f64 / self.d_model as f64);
                table[pos * self.d_model + 2 * i] = angle.sin() as f32;
                table[pos * self.d_model + 2 * i + 1] = angle.cos() as f32;
            }
        }
        let table = Tensor::from_data(
            TensorData::new(table, [self.max_seq_length, self.d_model]),
            device,
        );
        Ok(SinusoidalPositions {
            table: Param::from_tensor(table).set_require_grad(false),
        })
    }
}

/// `PE(pos, 2i) = sin(pos / base^(2i/d_model))`, `PE(pos, 2i+1) = cos(...)` (Vaswani et al.
/// 2017), precomputed in f64 and stored (not a parameter). Added to token embeddings by the
/// caller.
///
/// lmforge keeps its own rather than burn-nn's `PositionalEncoding` so that positions can
/// start at an offset (decoding with a cache) and the table is exact to f32 rounding.
#[derive(Module, Debug)]
pub struct SinusoidalPositions {
    /// The table, `[max_seq_length, d_model]`; a constant (no gradient), saved with the module.
    pub table: Param<Tensor<2>>,
}

impl SinusoidalPositions {
    /// Position vectors for positions `start .. start + seq_length`.
    ///
    /// # Shapes
    /// - returns: `[1, seq_length, d_model]`
    ///
    /// # Panics
    /// When `start + seq_length` exceeds the table.
    pub fn forward(&self, start: usize, seq_length: usize) -> Tensor<3> {
        let [max_seq_length, d_model] = self.table.dims();
        let end = start + seq_length;
        assert!(
            end <= max_seq_length,
            "SinusoidalPositions: positions {start}..{end} exceed max_seq_length {max_seq_length}"
        );
        self.table
            .val()
            .narrow(0, start, seq_length)
            .reshape([1, seq_length, d_model])
    }
}
