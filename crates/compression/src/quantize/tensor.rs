//! Symmetric integer quantization of one weight matrix, on the host.

use serde::{Deserialize, Serialize};

use crate::error::CompressionError;

/// How a weight matrix is quantized. Both schemes are symmetric (zero maps to zero) and keep
/// one `f32` scale per group of values: `w ≈ q · scale`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QuantScheme {
    /// 8-bit integers in `[-127, 127]`, one scale per output channel (a column of a `Linear`
    /// weight, a row of an `Embedding` table): `scale = max|w| / 127` over the channel.
    /// Error per value at most `scale / 2`.
    Int8PerChannel,
    /// 4-bit integers in `[-7, 7]`, one scale per block of `block` consecutive values of a
    /// channel along its input axis: `scale = max|w| / 7` over the block. Two values per
    /// byte on disk. Error per value at most `scale / 2`.
    Int4Block {
        /// Values per block (32 is the common choice).
        block: usize,
    },
}

impl QuantScheme {
    /// Int4 with blocks of 32 values.
    pub fn int4() -> Self {
        Self::Int4Block { block: 32 }
    }

    /// The largest integer magnitude: 127 or 7.
    pub fn q_max(&self) -> f32 {
        match self {
            Self::Int8PerChannel => 127.0,
            Self::Int4Block { .. } => 7.0,
        }
    }

    /// Bits per stored value.
    pub fn bits(&self) -> usize {
        match self {
            Self::Int8PerChannel => 8,
            Self::Int4Block { .. } => 4,
        }
    }

    /// Checks the scheme's settings.
    ///
    /// # Errors
    /// [`CompressionError::InvalidConfig`] for an int4 block of 0.
    pub fn validate(&self) -> Result<(), CompressionError> {
        match self {
            Self::Int4Block { block: 0 } => Err(CompressionError::InvalidConfig(
                "int4 block size must be > 0".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// A quantized 2-D weight: integer values and their scales, in the weight's own layout.
///
/// `channel_axis` says which axis holds the output channels: 1 for burn's `Linear` weight
/// (`[d_input, d_output]`, one channel per column), 0 for an `Embedding` table (one per row).
/// Groups run along the other (input) axis: the whole channel for int8, blocks of it for int4.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedTensor {
    /// The weight's shape.
    pub shape: [usize; 2],
    /// The axis of the output channels (0 or 1).
    pub channel_axis: usize,
    /// The scheme.
    pub scheme: QuantScheme,
    /// One integer per weight value, row-major like the weight.
    pub values: Vec<i8>,
    /// One scale per group, channel-major: channel `c`'s groups are
    /// `scales[c * groups_per_channel ..][.. groups_per_channel]`.
    pub scales: Vec<f32>,
}

impl QuantizedTensor {
    /// Quantizes a row-major `[rows, cols]` matrix.
    ///
    /// # Errors
    /// [`CompressionError::InvalidConfig`] for a bad scheme, an axis other than 0 or 1, a
    /// length that disagrees with the shape, or a value that is not finite.
    pub fn quantize(
        weights: &[f32],
        shape: [usize; 2],
        channel_axis: usize,
        scheme: QuantScheme,
    ) -> Result<Self, CompressionError> {
        scheme.validate()?;
        if channel_axis > 1 {
            return Err(CompressionError::InvalidConfig(format!(
                "channel axis must be 0 or 1, got {channel_axis}"
            )));
        }
        if weights.len() != shape[0] * shape[1] {
            return Err(CompressionError::InvalidConfig(format!(
                "{} values for a {shape:?} matrix",
                weights.len()
            )));
        }
        if let Some(bad) = weights.iter().find(|w| !w.is_finite()) {
            return Err(CompressionError::InvalidConfig(format!(
                "cannot quantize a non-finite weight ({bad})"
            )));
        }
        let mut quantized = Self {
            shape,
            channel_axis,
            scheme,
            values: vec![0; weights.len()],
            scales: Vec::new(),
        };
        let q_max = scheme.q_max();
        let group = quantized.group_len();
        let channels = quantized.channels();
        quantized
            .scales
            .reserve(channels * quantized.groups_per_channel());
        for channel in 0..channels {
            let indices: Vec<usize> = quantized.channel_indices(channel).collect();
            for chunk in indices.chunks(group) {
                let max = chunk
                    .iter()
                    .map(|&i| weights[i].abs())
                    .fold(0.0f32, f32::max);
                let scale = max / q_max;
                quantized.scales.push(scale);
                if scale > 0.0 {
                    for &i in chunk {
                        let q = (weights[i] / scale).round().clamp(-q_max, q_max);
                        quantized.values[i] = q as i8;
                    }
                }
            }
        }
        Ok(quantized)
    }

    /// The weights the integers stand for, `q · scale`, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.values.len()];
        let group = self.group_len();
        let mut scales = self.scales.iter();
        for channel in 0..self.channels() {
            let indices: Vec<usize> = self.channel_indices(channel).collect();
            for chunk in indices.chunks(group) {
                let scale = *scales.next().expect("one scale per group");
                for &i in chunk {
                    out[i] = self.values[i] as f32 * scale;
                }
            }
        }
        out
    }

    /// Number of output channels.
    pub fn channels(&self) -> usize {
        self.shape[self.channel_axis]
    }

    /// Values per channel (the input width).
    pub fn channel_len(&self) -> usize {
        self.shape[1 - self.channel_axis]
    }

    /// Values that share one scale.
    pub fn group_len(&self) -> usize {
        match self.scheme {
            QuantScheme::Int8PerChannel => self.channel_len().max(1),
            QuantScheme::Int4Block { block } => block,
        }
    }

    /// Scales per channel.
    pub fn groups_per_channel(&self) -> usize {
        self.channel_len().div_ceil(self.group_len())
    }

    /// Row-major indices of channel `channel`'s values, in input order.
    fn channel_indices(&self, channel: usize) -> impl Iterator<Item = usize> + use<> {
        let [_, cols] = self.shape;
        let len = self.channel_len();
        let axis = self.channel_axis;
        (0..len).map(move |k| {
            if axis == 0 {
                channel * cols + k
            } else {
                k * cols + channel
            }
        })
    }

    /// The integers as stored on disk: one byte each for int8; for int4 two per byte
    /// (`q + 8` in a nibble, the even index in the low nibble), padded with a zero nibble.
    pub fn packed_values(&self) -> Vec<u8> {
        match self.scheme {
            QuantScheme::Int8PerChannel => self.values.iter().map(|&q| q as u8).collect(),
            QuantScheme::Int4Block { .. } => self
                .values
                .chunks(2)
                .map(|pair| {
                    let low = (pair[0] + 8) as u8;
                    let high = pair.get(1).map_or(8, |&q| (q + 8) as u8);
                    low | (high << 4)
                })
                .collect(),
        }
    }

    /// Reverses [`Self::packed_values`].
    ///
    /// # Errors
    /// A message when the byte count disagrees with the shape.
    pub fn unpack_values(
        bytes: &[u8],
        scheme: QuantScheme,
        numel: usize,
    ) -> Result<Vec<i8>, String> {
        let expected = match scheme {
            QuantScheme::Int8PerChannel => numel,
            QuantScheme::Int4Block { .. } => numel.div_ceil(2),
        };
        if bytes.len() != expected {
            return Err(format!(
                "{} bytes of values, expected {expected}",
                bytes.len()
            ));
        }
        Ok(match scheme {
            QuantScheme::Int8PerChannel => bytes.iter().map(|&b| b as i8).collect(),
            QuantScheme::Int4Block { .. } => bytes
                .iter()
                .flat_map(|&b| [(b & 0x0f) as i8 - 8, (b >> 4) as i8 - 8])
                .take(numel)
                .collect(),
        })
    }

    /// Bytes the quantized weight takes on disk: packed values plus `f32` scales.
    pub fn stored_bytes(&self) -> usize {
        self.values.len().div_ceil(8 / self.scheme.bits()) + 4 * self.scales.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A matrix with a wide spread of magnitudes per channel, and an all-zero channel.
    fn matrix(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| {
                let (r, c) = (i / cols, i % cols);
                if c == 2 {
                    0.0
                } else {
                    ((i as f32 * 0.731).sin() * (1.0 + r as f32)) / (1.0 + c as f32)
                }
            })
            .collect()
    }

    /// Every value is within half a step of its group's scale, groups are as documented, and
    /// the largest magnitude of each group maps to ±q_max exactly.
    #[test]
    fn error_is_within_half_a_step() {
        let (rows, cols) = (37, 5);
        let weights = matrix(rows, cols);
        for scheme in [
            QuantScheme::Int8PerChannel,
            QuantScheme::Int4Block { block: 8 },
        ] {
            for axis in [0, 1] {
                let q = QuantizedTensor::quantize(&weights, [rows, cols], axis, scheme).unwrap();
                assert_eq!(q.scales.len(), q.channels() * q.groups_per_channel());
                let back = q.dequantize();
                let group = q.group_len();
                for channel in 0..q.channels() {
                    let idx: Vec<usize> = q.channel_indices(channel).collect();
                    for (g, chunk) in idx.chunks(group).enumerate() {
                        let scale = q.scales[channel * q.groups_per_channel() + g];
                        let max = chunk.iter().map(|&i| weights[i].abs()).fold(0.0, f32::max);
                        assert!((scale * scheme.q_max() - max).abs() <= max * 1e-6);
                        for &i in chunk {
                            let err = (back[i] - weights[i]).abs();
                            assert!(err <= scale * 0.5 * (1.0 + 1e-5), "{scheme:?} axis {axis}");
                        }
                        if max > 0.0 {
                            assert!(
                                chunk
                                    .iter()
                                    .any(|&i| q.values[i].unsigned_abs() as f32 == scheme.q_max())
                            );
                        }
                    }
                }
            }
        }
    }

    /// Hand-derived: channel [0.6, -1.0, 0.25] (a column) has scale 1/127, so its integers
    /// are round(76.2) = 76, -127, round(31.75) = 32; in int4 with one block, scale 1/7:
    /// round(4.2) = 4, -7, round(1.75) = 2.
    #[test]
    fn hand_derived_values() {
        let weights = [0.6, -1.0, 0.25];
        let q =
            QuantizedTensor::quantize(&weights, [3, 1], 1, QuantScheme::Int8PerChannel).unwrap();
        assert_eq!(q.values, vec![76, -127, 32]);
        assert_eq!(q.scales, vec![1.0 / 127.0]);
        let q = QuantizedTensor::quantize(&weights, [3, 1], 1, QuantScheme::int4()).unwrap();
        assert_eq!(q.values, vec![4, -7, 2]);
        assert_eq!(q.scales, vec![1.0 / 7.0]);
    }

    #[test]
    fn packing_round_trips() {
        let weights = matrix(7, 3); // 21 values: an odd count pads the last nibble
        for scheme in [QuantScheme::Int8PerChannel, QuantScheme::int4()] {
            let q = QuantizedTensor::quantize(&weights, [7, 3], 1, scheme).unwrap();
            let packed = q.packed_values();
            assert_eq!(packed.len(), 21usize.div_ceil(8 / scheme.bits()));
            let values = QuantizedTensor::unpack_values(&packed, scheme, 21).unwrap();
            assert_eq!(values, q.values);
            assert!(QuantizedTensor::unpack_values(&packed[1..], scheme, 21).is_err());
        }
    }

    #[test]
    fn bad_input_is_refused() {
        let scheme = QuantScheme::Int8PerChannel;
        assert!(QuantizedTensor::quantize(&[1.0, 2.0], [3, 1], 0, scheme).is_err());
        assert!(QuantizedTensor::quantize(&[1.0, f32::NAN], [2, 1], 0, scheme).is_err());
        assert!(QuantizedTensor::quantize(&[1.0, 2.0], [2, 1], 2, scheme).is_err());
        let zero_block = QuantScheme::Int4Block { block: 0 };
        assert!(QuantizedTensor::quantize(&[1.0, 2.0], [2, 1], 0, zero_block).is_err());
    }
}
