//! Symmetric integer quantization of one weight matrix, on the host.

use std::sync::Arc;

use lmforge_layers::quant::PackedWeight;

use crate::error::CompressionError;

pub use lmforge_layers::quant::QuantScheme;

/// A quantized 2-D weight: its packed integers and scales (shared with the layer that runs
/// them), and where they sit in the weight's own layout.
///
/// `channel_axis` says which axis holds the output channels: 1 for a `Linear` weight
/// (`[d_input, d_output]`, one channel per column), 0 for an `Embedding` table (one per row).
/// Groups run along the other (input) axis: the whole channel for int8, blocks of it for int4.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedTensor {
    /// The weight's shape.
    pub shape: [usize; 2],
    /// The axis of the output channels (0 or 1).
    pub channel_axis: usize,
    /// The integers and scales, channel-major, as the layer keeps them in memory.
    pub packed: Arc<PackedWeight>,
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
        check_axis(channel_axis)?;
        if weights.len() != shape[0] * shape[1] {
            return Err(CompressionError::InvalidConfig(format!(
                "{} values for a {shape:?} matrix",
                weights.len()
            )));
        }
        let (channels, width) = channels_and_width(shape, channel_axis);
        let values = channel_major(weights, shape, channel_axis);
        let packed = PackedWeight::quantize(&values, channels, width, scheme)
            .map_err(|e| CompressionError::InvalidConfig(e.to_string()))?;
        Ok(Self {
            shape,
            channel_axis,
            packed: Arc::new(packed),
        })
    }

    /// A quantized weight from its integers (one per value, row-major like the weight) and
    /// scales (channel-major).
    ///
    /// # Errors
    /// [`CompressionError::InvalidConfig`] for lengths that disagree with the shape, an
    /// integer outside `±q_max`, or a negative or non-finite scale.
    pub fn from_values(
        values: &[i8],
        scales: Vec<f32>,
        shape: [usize; 2],
        channel_axis: usize,
        scheme: QuantScheme,
    ) -> Result<Self, CompressionError> {
        check_axis(channel_axis)?;
        if values.len() != shape[0] * shape[1] {
            return Err(CompressionError::InvalidConfig(format!(
                "{} integers for a {shape:?} matrix",
                values.len()
            )));
        }
        let (channels, width) = channels_and_width(shape, channel_axis);
        let integers = channel_major(values, shape, channel_axis);
        let packed = PackedWeight::from_integers(&integers, scales, channels, width, scheme)
            .map_err(|e| CompressionError::InvalidConfig(e.to_string()))?;
        Ok(Self {
            shape,
            channel_axis,
            packed: Arc::new(packed),
        })
    }

    /// The scheme.
    pub fn scheme(&self) -> QuantScheme {
        self.packed.scheme()
    }

    /// One scale per group, channel-major: channel `c`'s groups are
    /// `scales()[c * groups_per_channel ..][.. groups_per_channel]` (int4's are `f16` values).
    pub fn scales(&self) -> Vec<f32> {
        self.packed.scales()
    }

    /// One integer per weight value, row-major like the weight.
    pub fn values(&self) -> Vec<i8> {
        from_channel_major(&self.packed.integers(), self.shape, self.channel_axis)
    }

    /// The weights the integers stand for, `q · scale`, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        from_channel_major(&self.packed.dequantize(), self.shape, self.channel_axis)
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
        self.packed.group_len()
    }

    /// Scales per channel.
    pub fn groups_per_channel(&self) -> usize {
        self.packed.groups_per_channel()
    }

    /// Number of weight values.
    pub fn numel(&self) -> usize {
        self.shape[0] * self.shape[1]
    }

    /// The integers as stored on disk, row-major like the weight: one byte each for int8;
    /// for int4 two per byte (`q + 8` in a nibble, the even index in the low nibble), padded
    /// with a zero nibble.
    pub fn packed_values(&self) -> Vec<u8> {
        let values = self.values();
        match self.scheme() {
            QuantScheme::Int8PerChannel => values.iter().map(|&q| q as u8).collect(),
            QuantScheme::Int4Block { .. } => values
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
        self.numel().div_ceil(8 / self.scheme().bits()) + 4 * self.scales().len()
    }
}

fn check_axis(channel_axis: usize) -> Result<(), CompressionError> {
    if channel_axis > 1 {
        return Err(CompressionError::InvalidConfig(format!(
            "channel axis must be 0 or 1, got {channel_axis}"
        )));
    }
    Ok(())
}

fn channels_and_width(shape: [usize; 2], channel_axis: usize) -> (usize, usize) {
    (shape[channel_axis], shape[1 - channel_axis])
}

/// A row-major `shape` matrix reordered channel by channel.
fn channel_major<T: Copy>(values: &[T], [rows, cols]: [usize; 2], channel_axis: usize) -> Vec<T> {
    if channel_axis == 0 {
        return values.to_vec();
    }
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| values[r * cols + c]))
        .collect()
}

/// Reverses [`channel_major`].
fn from_channel_major<T: Copy>(
    values: &[T],
    [rows, cols]: [usize; 2],
    channel_axis: usize,
) -> Vec<T> {
    if channel_axis == 0 {
        return values.to_vec();
    }
    (0..rows)
        .flat_map(|r| (0..cols).map(move |c| values[c * rows + r]))
        .collect()
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
                assert_eq!(q.scales().len(), q.channels() * q.groups_per_channel());
                let back = q.dequantize();
                let values = q.values();
                let group = q.group_len();
                for channel in 0..q.channels() {
                    let idx: Vec<usize> = (0..q.channel_len())
                        .map(|k| {
                            if axis == 0 {
                                channel * cols + k
                            } else {
                                k * cols + channel
                            }
                        })
                        .collect();
                    for (g, chunk) in idx.chunks(group).enumerate() {
                        let scale = q.scales()[channel * q.groups_per_channel() + g];
                        let max = chunk.iter().map(|&i| weights[i].abs()).fold(0.0, f32::max);
                        // Exact for int8; int4's is the next f16 at or above (2^-10 apart).
                        let exact = max / scheme.q_max();
                        let slack = match scheme {
                            QuantScheme::Int8PerChannel => 1e-6,
                            QuantScheme::Int4Block { .. } => 1.0 / 1024.0,
                        };
                        assert!(scale >= exact * (1.0 - 1e-6) && scale <= exact * (1.0 + slack));
                        for &i in chunk {
                            let err = (back[i] - weights[i]).abs();
                            assert!(err <= scale * 0.5 * (1.0 + 1e-5), "{scheme:?} axis {axis}");
                        }
                        if max > 0.0 {
                            assert!(
                                chunk
                                    .iter()
                                    .any(|&i| values[i].unsigned_abs() as f32 == scheme.q_max())
                            );
                        }
                    }
                }
            }
        }
    }

    /// Hand-derived: channel [0.6, -1.0, 0.25] (a column) has scale 1/127, so its integers
    /// are round(76.2) = 76, -127, round(31.75) = 32; in int4 with one block, scale 1/7 kept as
    /// the next f16 up, 1171/8192: round(4.197) = 4, round(-6.996) = -7, round(1.749) = 2.
    #[test]
    fn hand_derived_values() {
        let weights = [0.6, -1.0, 0.25];
        let q =
            QuantizedTensor::quantize(&weights, [3, 1], 1, QuantScheme::Int8PerChannel).unwrap();
        assert_eq!(q.values(), vec![76, -127, 32]);
        assert_eq!(q.scales(), vec![1.0 / 127.0]);
        let q = QuantizedTensor::quantize(&weights, [3, 1], 1, QuantScheme::int4()).unwrap();
        assert_eq!(q.values(), vec![4, -7, 2]);
        assert_eq!(q.scales(), vec![1171.0 / 8192.0]); // 1/7 rounded up to an f16
    }

    #[test]
    fn packing_round_trips() {
        let weights = matrix(7, 3); // 21 values: an odd count pads the last nibble
        for scheme in [QuantScheme::Int8PerChannel, QuantScheme::int4()] {
            let q = QuantizedTensor::quantize(&weights, [7, 3], 1, scheme).unwrap();
            let packed = q.packed_values();
            assert_eq!(packed.len(), 21usize.div_ceil(8 / scheme.bits()));
            let values = QuantizedTensor::unpack_values(&packed, scheme, 21).unwrap();
            assert_eq!(values, q.values());
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
