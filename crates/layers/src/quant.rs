//! Weights kept as integers in memory: int8 per output channel, or int4 in blocks (two values
//! per byte), each group with an `f32` scale.
//!
//! A [`PackedWeight`] is the form a quantized [`Linear`](crate::Linear) or
//! [`Embedding`](crate::Embedding) holds. It is laid out for reading while multiplying:
//! channel-major (one output channel's values after another, in input order), so an output is
//! one pass over one contiguous run of bytes, and the kernel behind [`crate::Linear::forward`]
//! widens the integers to `f32` in registers (the weight is never widened as a whole).
//!
//! Both schemes are symmetric (zero maps to zero): `w ≈ q · scale` with `scale = max|w| / q_max`
//! over the group and `q = round(w / scale)` clamped to `±q_max`. Int8 keeps its per-channel
//! scales in `f32`; int4 keeps its per-block scales in `f16` (a block's scale is an eighth of
//! its bytes' worth in `f32`), rounded up to the next `f16` so that no value is clamped: the
//! error per value stays at most half the stored scale.
//!
//! ```
//! use lmforge_layers::quant::{PackedWeight, QuantScheme};
//!
//! // Two channels of four values each, channel-major.
//! let values = [0.5, -1.0, 0.25, 0.0, 2.0, 1.0, -0.5, 0.1];
//! let packed = PackedWeight::quantize(&values, 2, 4, QuantScheme::Int8PerChannel)?;
//! assert_eq!(packed.integers(), vec![64, -127, 32, 0, 127, 64, -32, 6]);
//! assert_eq!(packed.scales(), vec![1.0 / 127.0, 2.0 / 127.0]);
//! # Ok::<(), lmforge_layers::LayerError>(())
//! ```

use half::f16;
use half::slice::HalfFloatSliceExt;
use serde::{Deserialize, Serialize};

use crate::LayerError;

/// How a weight matrix is quantized: the integer width and the values that share a scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QuantScheme {
    /// 8-bit integers in `[-127, 127]`, one scale per output channel (a column of a `Linear`
    /// weight, a row of an `Embedding` table): `scale = max|w| / 127` over the channel.
    /// Error per value at most `scale / 2`.
    Int8PerChannel,
    /// 4-bit integers in `[-7, 7]`, one scale per block of `block` consecutive values of a
    /// channel along its input axis: `scale = max|w| / 7` over the block. Two values per
    /// byte. Error per value at most `scale / 2`.
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
    /// [`LayerError::InvalidConfig`] for an int4 block of 0.
    pub fn validate(&self) -> Result<(), LayerError> {
        match self {
            Self::Int4Block { block: 0 } => Err(invalid("int4 block size must be > 0".into())),
            _ => Ok(()),
        }
    }

    /// Values that share one scale in a channel of `width` values.
    pub fn group_len(&self, width: usize) -> usize {
        match self {
            Self::Int8PerChannel => width.max(1),
            Self::Int4Block { block } => *block,
        }
    }
}

fn invalid(reason: String) -> LayerError {
    LayerError::InvalidConfig {
        layer: "PackedWeight",
        reason,
    }
}

/// A quantized weight matrix as it is kept in memory: `channels` output channels of `width`
/// values each, channel-major.
///
/// - Int8: one byte per value (two's complement), channel `c` at `data[c * width..][..width]`,
///   one scale per channel.
/// - Int4 with blocks of `b`: each block of a channel takes `ceil(b / 2)` bytes; byte `t` of a
///   block holds value `t` in its low nibble and value `t + ceil(b / 2)` in its high nibble,
///   each stored as `q + 8`. A channel's last block is padded with zeros when `b` does not
///   divide `width`. One scale per block.
///
/// Scales are channel-major too: channel `c`'s are `scales[c * groups..][..groups]`; `f32`
/// for int8, `f16` for int4.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedWeight {
    scheme: QuantScheme,
    channels: usize,
    width: usize,
    data: Vec<u8>,
    scales: Scales,
}

/// Per-group scales as kept in memory.
#[derive(Clone, Debug, PartialEq)]
enum Scales {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Scales {
    fn len(&self) -> usize {
        match self {
            Scales::F32(s) => s.len(),
            Scales::F16(s) => s.len(),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Scales::F32(s) => 4 * s.len(),
            Scales::F16(s) => 2 * s.len(),
        }
    }

    fn get(&self, i: usize) -> f32 {
        match self {
            Scales::F32(s) => s[i],
            Scales::F16(s) => s[i].to_f32(),
        }
    }
}

/// The smallest `f16` at or above `x` (non-negative, finite), as `f32`; `None` beyond `f16`'s
/// range.
fn f16_at_or_above(x: f32) -> Option<f16> {
    let h = f16::from_f32(x);
    let h = if h.to_f32() < x {
        f16::from_bits(h.to_bits() + 1)
    } else {
        h
    };
    h.is_finite().then_some(h)
}

impl PackedWeight {
    /// Quantizes `channels` channels of `width` values, given channel-major.
    ///
    /// # Errors
    /// [`LayerError::InvalidConfig`] for a bad scheme, a length other than
    /// `channels * width`, or a value that is not finite.
    pub fn quantize(
        values: &[f32],
        channels: usize,
        width: usize,
        scheme: QuantScheme,
    ) -> Result<Self, LayerError> {
        scheme.validate()?;
        if values.len() != channels * width {
            return Err(invalid(format!(
                "{} values for {channels} channels of {width}",
                values.len()
            )));
        }
        if let Some(bad) = values.iter().find(|w| !w.is_finite()) {
            return Err(invalid(format!(
                "cannot quantize a non-finite weight ({bad})"
            )));
        }
        let q_max = scheme.q_max();
        let group = scheme.group_len(width);
        let mut integers = vec![0i8; values.len()];
        let mut scales = Vec::with_capacity(channels * width.div_ceil(group));
        for (channel, ints) in values
            .chunks(width.max(1))
            .zip(integers.chunks_mut(width.max(1)))
        {
            for (chunk, ints) in channel.chunks(group).zip(ints.chunks_mut(group)) {
                let max = chunk.iter().map(|w| w.abs()).fold(0.0f32, f32::max);
                let scale = match scheme {
                    QuantScheme::Int8PerChannel => max / q_max,
                    QuantScheme::Int4Block { .. } => f16_at_or_above(max / q_max)
                        .ok_or_else(|| {
                            invalid(format!(
                                "a block of magnitude {max} is beyond the f16 scales of int4"
                            ))
                        })?
                        .to_f32(),
                };
                scales.push(scale);
                if scale > 0.0 {
                    for (q, w) in ints.iter_mut().zip(chunk) {
                        *q = (w / scale).round().clamp(-q_max, q_max) as i8;
                    }
                }
            }
        }
        Self::from_integers(&integers, scales, channels, width, scheme)
    }

    /// Packs integers given channel-major (one per value) with their scales.
    ///
    /// # Errors
    /// [`LayerError::InvalidConfig`] for a bad scheme, lengths that disagree with the shape,
    /// an integer outside `±q_max`, or a negative or non-finite scale.
    pub fn from_integers(
        integers: &[i8],
        scales: Vec<f32>,
        channels: usize,
        width: usize,
        scheme: QuantScheme,
    ) -> Result<Self, LayerError> {
        scheme.validate()?;
        let groups = width.div_ceil(scheme.group_len(width));
        if integers.len() != channels * width {
            return Err(invalid(format!(
                "{} integers for {channels} channels of {width}",
                integers.len()
            )));
        }
        if scales.len() != channels * groups {
            return Err(invalid(format!(
                "{} scales, expected {channels} channels x {groups} groups",
                scales.len()
            )));
        }
        let q_max = scheme.q_max() as i8;
        if integers
            .iter()
            .any(|q| q.unsigned_abs() > q_max.unsigned_abs())
        {
            return Err(invalid(format!("an integer outside ±{q_max}")));
        }
        if scales.iter().any(|s| !s.is_finite() || *s < 0.0) {
            return Err(invalid("a negative or non-finite scale".into()));
        }
        let scales = match scheme {
            QuantScheme::Int8PerChannel => Scales::F32(scales),
            QuantScheme::Int4Block { .. } => {
                // Exactly sized: the scales of a large table are megabytes.
                let mut half = Vec::with_capacity(scales.len());
                for &s in &scales {
                    half.push(f16_at_or_above(s).ok_or_else(|| {
                        invalid(format!("an int4 scale of {s} is beyond f16's range"))
                    })?);
                }
                Scales::F16(half)
            }
        };
        let data = match scheme {
            QuantScheme::Int8PerChannel => integers.iter().map(|&q| q as u8).collect(),
            QuantScheme::Int4Block { block } => {
                let half = block.div_ceil(2);
                let mut data = Vec::with_capacity(channels * groups * half);
                for channel in integers.chunks(width.max(1)).take(channels) {
                    for chunk in channel.chunks(block) {
                        let nibble = |t: usize| chunk.get(t).map_or(8u8, |&q| (q + 8) as u8);
                        data.extend((0..half).map(|t| nibble(t) | (nibble(t + half) << 4)));
                    }
                }
                data
            }
        };
        Ok(Self {
            scheme,
            channels,
            width,
            data,
            scales,
        })
    }

    /// The scheme.
    pub fn scheme(&self) -> QuantScheme {
        self.scheme
    }

    /// Number of output channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Values per channel (the input width).
    pub fn width(&self) -> usize {
        self.width
    }

    /// Values that share one scale.
    pub fn group_len(&self) -> usize {
        self.scheme.group_len(self.width)
    }

    /// Scales per channel.
    pub fn groups_per_channel(&self) -> usize {
        self.width.div_ceil(self.group_len())
    }

    /// The scales, channel-major, as `f32` (int4's are kept in `f16`: an `f32` scale given
    /// to [`Self::from_integers`] is rounded up to the next `f16`).
    pub fn scales(&self) -> Vec<f32> {
        (0..self.scales.len()).map(|i| self.scales.get(i)).collect()
    }

    /// Channel `channel`'s scales, as `f32`, into `dst[..groups_per_channel]`.
    ///
    /// # Panics
    /// When `channel` is out of range or `dst` is too short.
    pub fn channel_scales(&self, channel: usize, dst: &mut [f32]) {
        let groups = self.groups_per_channel();
        let start = channel * groups;
        match &self.scales {
            Scales::F32(s) => dst[..groups].copy_from_slice(&s[start..start + groups]),
            // F16C when the CPU has it.
            Scales::F16(s) => s[start..start + groups].convert_to_f32_slice(&mut dst[..groups]),
        }
    }

    /// The packed bytes (layout in the type's documentation).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Bytes of one channel's packed values.
    pub fn channel_bytes(&self) -> usize {
        match self.scheme {
            QuantScheme::Int8PerChannel => self.width,
            QuantScheme::Int4Block { block } => self.groups_per_channel() * block.div_ceil(2),
        }
    }

    /// Bytes held in memory: packed values and scales.
    pub fn memory_bytes(&self) -> usize {
        self.data.len() + self.scales.bytes()
    }

    /// The integers, one per value, channel-major.
    pub fn integers(&self) -> Vec<i8> {
        let mut out = Vec::with_capacity(self.channels * self.width);
        for channel in 0..self.channels {
            let bytes = &self.data[channel * self.channel_bytes()..][..self.channel_bytes()];
            match self.scheme {
                QuantScheme::Int8PerChannel => out.extend(bytes.iter().map(|&b| b as i8)),
                QuantScheme::Int4Block { block } => {
                    let half = block.div_ceil(2);
                    for (g, bytes) in bytes.chunks(half).enumerate() {
                        let len = block.min(self.width - g * block);
                        out.extend((0..len).map(|t| {
                            let b = bytes[t % half];
                            let nibble = if t < half { b & 0x0f } else { b >> 4 };
                            nibble as i8 - 8
                        }));
                    }
                }
            }
        }
        out
    }

    /// Channel `channel`'s values, `q · scale`, written to `dst[..width]`.
    ///
    /// # Panics
    /// When `channel` is out of range or `dst` is shorter than the width.
    pub fn dequantize_channel(&self, channel: usize, dst: &mut [f32]) {
        let width = self.width;
        let bytes = &self.data[channel * self.channel_bytes()..][..self.channel_bytes()];
        let groups = self.groups_per_channel();
        let dst = &mut dst[..width];
        match self.scheme {
            QuantScheme::Int8PerChannel => widen_i8(bytes, self.scales.get(channel), dst),
            QuantScheme::Int4Block { block } => {
                let half = block.div_ceil(2);
                for (g, dst) in dst.chunks_mut(block).enumerate() {
                    let scale = self.scales.get(channel * groups + g);
                    widen_i4(&bytes[g * half..][..half], scale, dst);
                }
            }
        }
    }

    /// Every value, `q · scale`, channel-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.channels * self.width];
        for (channel, dst) in out.chunks_mut(self.width.max(1)).enumerate() {
            if channel < self.channels {
                self.dequantize_channel(channel, dst);
            }
        }
        out
    }

    /// The values as a row-major `[width, channels]` matrix (a `Linear` weight's layout:
    /// one column per channel).
    pub fn dequantize_transposed(&self) -> Vec<f32> {
        let (n, k) = (self.channels, self.width);
        let channel_major = self.dequantize();
        let mut out = vec![0f32; n * k];
        for c in 0..n {
            for i in 0..k {
                out[i * n + c] = channel_major[c * k + i];
            }
        }
        out
    }
}

/// `dst = q · scale` for int8 bytes.
pub(crate) fn widen_i8(bytes: &[u8], scale: f32, dst: &mut [f32]) {
    for (d, &b) in dst.iter_mut().zip(bytes) {
        *d = f32::from(b as i8) * scale;
    }
}

/// `dst = q · scale` for one int4 block (`dst.len()` values, `bytes.len()` = half the block).
pub(crate) fn widen_i4(bytes: &[u8], scale: f32, dst: &mut [f32]) {
    let half = bytes.len();
    for (t, d) in dst.iter_mut().enumerate() {
        let b = bytes[t % half];
        let nibble = if t < half { b & 0x0f } else { b >> 4 };
        *d = f32::from(nibble as i8 - 8) * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(channels: usize, width: usize) -> Vec<f32> {
        (0..channels * width)
            .map(|i| {
                let (c, k) = (i / width, i % width);
                if c == 1 {
                    0.0
                } else {
                    ((i as f32 * 0.731).sin() * (1.0 + k as f32)) / (1.0 + c as f32)
                }
            })
            .collect()
    }

    /// Every value within half a step of its scale; the packed bytes give back the integers;
    /// an all-zero channel stays zero; odd widths and odd blocks pad as documented.
    #[test]
    fn round_trip_within_half_a_step() {
        for scheme in [
            QuantScheme::Int8PerChannel,
            QuantScheme::int4(),
            QuantScheme::Int4Block { block: 5 },
        ] {
            for (channels, width) in [(3, 7), (4, 64), (2, 33), (1, 1)] {
                let w = matrix(channels, width);
                let p = PackedWeight::quantize(&w, channels, width, scheme).unwrap();
                assert_eq!(p.data().len(), channels * p.channel_bytes());
                let ints = p.integers();
                let back = p.dequantize();
                let scales = p.scales();
                let g = p.group_len();
                for c in 0..channels {
                    for i in 0..width {
                        let scale = scales[c * p.groups_per_channel() + i / g];
                        let at = c * width + i;
                        assert_eq!(back[at], f32::from(ints[at]) * scale);
                        assert!((back[at] - w[at]).abs() <= scale * 0.5 * (1.0 + 1e-5));
                    }
                }
                let again =
                    PackedWeight::from_integers(&ints, scales.clone(), channels, width, scheme)
                        .unwrap();
                assert_eq!(again, p);
            }
        }
    }

    /// Hand-derived: channel [0.6, -1.0, 0.25] has int8 scale 1/127, integers
    /// round(76.2) = 76, -127, round(31.75) = 32; int4 scale 1/7: 4, -7, 2, packed with a
    /// block of 32 as bytes (4+8) | (8 << 4), (-7+8) | (8 << 4), (2+8) | (8 << 4), then 8 | 8 << 4.
    #[test]
    fn hand_derived_values() {
        let w = [0.6, -1.0, 0.25];
        let p = PackedWeight::quantize(&w, 1, 3, QuantScheme::Int8PerChannel).unwrap();
        assert_eq!(p.integers(), vec![76, -127, 32]);
        assert_eq!(p.data(), &[76, 129, 32]);
        let p = PackedWeight::quantize(&w, 1, 3, QuantScheme::int4()).unwrap();
        assert_eq!(p.integers(), vec![4, -7, 2]);
        // 1/7 rounded up to the next f16: 0x3093 = 1171 / 8192 (0x3092 is below 1/7).
        assert_eq!(p.scales(), vec![1171.0 / 8192.0]);
        let mut want = vec![0x88u8; 16];
        want[..3].copy_from_slice(&[0x80 | 12, 0x80 | 1, 0x80 | 10]);
        assert_eq!(p.data(), want.as_slice());
        assert_eq!(p.memory_bytes(), 16 + 2);
    }

    #[test]
    fn bad_input_is_refused() {
        let int8 = QuantScheme::Int8PerChannel;
        assert!(PackedWeight::quantize(&[1.0, 2.0], 3, 1, int8).is_err());
        assert!(PackedWeight::quantize(&[1.0, f32::NAN], 2, 1, int8).is_err());
        let zero_block = QuantScheme::Int4Block { block: 0 };
        assert!(PackedWeight::quantize(&[1.0, 2.0], 2, 1, zero_block).is_err());
        assert!(
            PackedWeight::from_integers(&[8, 0], vec![1.0, 1.0], 1, 2, QuantScheme::int4())
                .is_err()
        );
        assert!(PackedWeight::from_integers(&[1, 0], vec![-1.0], 1, 2, int8).is_err());
        assert!(PackedWeight::from_integers(&[1, 0], vec![1.0, 1.0], 1, 2, int8).is_err());
    }
}
