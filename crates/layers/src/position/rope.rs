//! Rotary position embeddings computed for any positions, with the frequency scalings of
//! modern decoder models (Llama 3, linear interpolation).

use burn::config::Config;
use burn::tensor::{Device, Tensor, TensorData};

use super::rotary::{RotaryStyle, rotate_pairs};
use crate::error::{LayerError, check};

/// How the rotary frequencies are rescaled for contexts longer than the model was trained on
/// (HuggingFace's `rope_scaling` / `rope_parameters`).
#[derive(Config, Debug, Copy, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor` (HuggingFace `rope_type: "linear"`): every frequency is
    /// divided by `factor`.
    Linear {
        /// The interpolation factor (> 0).
        factor: f64,
    },
    /// Llama 3.1's scaling (`rope_type: "llama3"`): low frequencies (wavelength above
    /// `original_max_position_embeddings / low_freq_factor`) are divided by `factor`, high
    /// frequencies (wavelength below `.. / high_freq_factor`) are kept, and the band between
    /// is interpolated smoothly.
    Llama3 {
        /// Division of the low frequencies (8 for Llama 3.1).
        factor: f64,
        /// Lower edge of the smoothing band (1 for Llama 3.1).
        low_freq_factor: f64,
        /// Upper edge of the smoothing band (4 for Llama 3.1).
        high_freq_factor: f64,
        /// The context length the model was pre-trained with (8192 for Llama 3.1).
        original_max_position_embeddings: usize,
    },
}

/// Configuration of a [`Rope`].
#[derive(Config, Debug)]
pub struct RopeConfig {
    /// Width of the rotated vectors: the head width (even).
    pub d_head: usize,
    /// Base of the frequencies (HuggingFace `rope_theta`). Default: 10000.
    #[config(default = 10000.0)]
    pub base: f64,
    /// Pairing of dimensions. Default: half-split (Llama, Mistral, Qwen2 in HuggingFace).
    #[config(default = "RotaryStyle::HalfSplit")]
    pub style: RotaryStyle,
    /// Frequency rescaling for long contexts. Default: none.
    #[config(default = "None")]
    pub scaling: Option<RopeScaling>,
}

impl RopeConfig {
    /// Computes the frequencies.
    ///
    /// # Errors
    /// [`LayerError::InvalidConfig`] for an odd or zero `d_head`, a base that is not
    /// positive, or a scaling with a factor that is not positive or an empty smoothing band.
    pub fn init(&self) -> Result<Rope, LayerError> {
        let layer = "RopeConfig";
        check(
            self.d_head > 0 && self.d_head.is_multiple_of(2),
            layer,
            || format!("d_head must be even and > 0, got {}", self.d_head),
        )?;
        check(self.base > 0.0 && self.base.is_finite(), layer, || {
            format!("base must be positive, got {}", self.base)
        })?;
        // HuggingFace computes the frequencies in f32; so does lmforge, operation for
        // operation, so the two agree to the last bit where the libraries' `pow` agree.
        let half = self.d_head / 2;
        let base = self.base as f32;
        let mut inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / self.d_head as f32))
            .collect();
        match self.scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => {
                check(factor > 0.0, layer, || {
                    format!("linear scaling factor must be > 0, got {factor}")
                })?;
                for f in &mut inv_freq {
                    *f /= factor as f32;
                }
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                check(
                    factor > 0.0
                        && low_freq_factor > 0.0
                        && high_freq_factor > low_freq_factor
                        && original_max_position_embeddings > 0,
                    layer,
                    || {
                        format!(
                            "llama3 scaling needs factor > 0, 0 < low_freq_factor < \
                             high_freq_factor and original_max_position_embeddings > 0, got \
                             {factor}, {low_freq_factor}, {high_freq_factor}, \
                             {original_max_position_embeddings}"
                        )
                    },
                )?;
                let old_context = original_max_position_embeddings as f32;
                let low_freq_wavelen = old_context / low_freq_factor as f32;
                let high_freq_wavelen = old_context / high_freq_factor as f32;
                let (factor, low, high) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                );
                for f in &mut inv_freq {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    let scaled = if wavelen > low_freq_wavelen {
                        *f / factor
                    } else {
                        *f
                    };
                    let medium = (high_freq_wavelen..=low_freq_wavelen).contains(&wavelen);
                    *f = if medium {
                        let smooth = (old_context / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                }
            }
        }
        Ok(Rope {
            inv_freq,
            style: self.style,
        })
    }
}

/// Rotary position embeddings (Su et al. 2021) for arbitrary positions: each pair of query or
/// key dimensions is rotated by `position * frequency`. Unlike
/// [`RotaryEncoding`](super::RotaryEncoding), which precomputes a table for every position up
/// to a maximum, this computes the angles of the positions asked for, so a 128k-token context
/// costs nothing until it is used, positions may differ per batch row (left-padded batches),
/// and the frequencies can be rescaled ([`RopeScaling`]).
///
/// The angles are computed on the host in f32 as HuggingFace computes them (`inv_freq *
/// position` rounded to f32, then cosine and sine), and uploaded in the dtype of `x`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    inv_freq: Vec<f32>,
    style: RotaryStyle,
}

impl Rope {
    /// The frequencies, `d_head / 2` of them (after scaling).
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// Width of the rotated vectors.
    pub fn d_head(&self) -> usize {
        2 * self.inv_freq.len()
    }

    /// Rotates `x` for the given positions.
    ///
    /// # Shapes
    /// - `x`: `[batch_size, n_heads, seq_length, d_head]`
    /// - `positions`: `seq_length` positions shared by every row, or `batch_size *
    ///   seq_length` (row-major: row `b`'s positions first)
    /// - returns: the shape of `x`
    ///
    /// # Panics
    /// When the last dimension of `x` is not `d_head` or `positions` has another length.
    pub fn apply(&self, x: Tensor<4>, positions: &[usize]) -> Tensor<4> {
        let (cos, sin) = self.tables_for(&x, positions);
        self.rotate(x, cos, sin)
    }

    /// Rotates queries and keys of the same positions, computing the angles once.
    ///
    /// # Shapes
    /// - `q`: `[batch_size, n_heads, seq_length, d_head]`, `k`: `[batch_size, n_kv_heads,
    ///   seq_length, d_head]`
    /// - `positions`: as in [`Self::apply`]
    /// - returns: `q` and `k` rotated, in their shapes
    ///
    /// # Panics
    /// As [`Self::apply`], or when `q` and `k` differ in batch size or length.
    pub fn apply_pair(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        positions: &[usize],
    ) -> (Tensor<4>, Tensor<4>) {
        let ([qb, _, qs, _], [kb, _, ks, _]) = (q.dims(), k.dims());
        assert_eq!(
            (qb, qs),
            (kb, ks),
            "Rope: queries and keys differ in batch size or length"
        );
        let (cos, sin) = self.tables_for(&q, positions);
        let q = self.rotate(q, cos.clone(), sin.clone());
        (q, self.rotate(k, cos, sin))
    }

    /// `x ⊙ cos + rotate(x) ⊙ sin`.
    fn rotate(&self, x: Tensor<4>, cos: Tensor<4>, sin: Tensor<4>) -> Tensor<4> {
        let rotated = rotate_pairs(x.clone(), self.style);
        x * cos + rotated * sin
    }

    /// The cosines and sines for `positions` in the dtype of `x`, after checking both.
    fn tables_for(&self, x: &Tensor<4>, positions: &[usize]) -> (Tensor<4>, Tensor<4>) {
        let [batch_size, _, seq_length, d_head] = x.dims();
        assert_eq!(
            d_head,
            self.d_head(),
            "Rope: `x` has d_head {d_head}, expected {}",
            self.d_head()
        );
        let rows = if positions.len() == seq_length {
            1
        } else {
            assert_eq!(
                positions.len(),
                batch_size * seq_length,
                "Rope: {} positions for batch_size {batch_size} x seq_length {seq_length}",
                positions.len()
            );
            batch_size
        };
        let (cos, sin) = self.tables(positions, rows, seq_length, &x.device());
        let dtype = x.dtype();
        (cos.cast(dtype), sin.cast(dtype))
    }

    /// Cosines and sines, `[rows, 1, seq_length, d_head]`.
    fn tables(
        &self,
        positions: &[usize],
        rows: usize,
        seq_length: usize,
        device: &Device,
    ) -> (Tensor<4>, Tensor<4>) {
        let d_head = self.d_head();
        let mut cos = Vec::with_capacity(positions.len() * d_head);
        let mut sin = Vec::with_capacity(positions.len() * d_head);
        for &position in positions {
            for d in 0..d_head {
                let i = match self.style {
                    RotaryStyle::HalfSplit => d % (d_head / 2),
                    RotaryStyle::Interleaved => d / 2,
                };
                let angle = (self.inv_freq[i] * position as f32) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let shape = [rows, 1, seq_length, d_head];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}
