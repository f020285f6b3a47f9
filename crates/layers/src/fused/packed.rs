//! Products of `f32` activations with quantized weights kept packed ([`PackedWeight`]): the
//! integers are widened to `f32` in registers as they are read, scaled per group, and the
//! accumulation is in `f32`, so the result is the product with the dequantized weight (to
//! `f32` rounding) while the bytes read from memory are a quarter (int8) or an eighth (int4) of
//! an `f32` weight's.
//!
//! - Few rows (`m <= SMALL_ROWS`, decoding): the channels are shared out among the threads in
//!   contiguous runs; each output is one pass over its channel's bytes (one row: the integers
//!   are multiplied as they are read; more rows: the channel is widened once into a buffer in
//!   L1 and each row takes a dot product with it).
//! - Many rows (prompt processing, batches): blocks of channels are widened to `f32` and
//!   multiplied with `gemm`, so one block at a time is held in `f32`.

use burn::tensor::{DType, Tensor};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::linear::{dot, rows_from_columns};
use super::math::simd_dispatch;
use super::{contiguous, flex_tensor, matmul, slice};
use crate::quant::{PackedWeight, QuantScheme, widen_i4};

/// Up to this many rows take the streaming path; more go through `gemm` by blocks.
const SMALL_ROWS: usize = 16;
/// Channels per task of the streaming path.
const CHANNELS_PER_TASK: usize = 32;
/// Channels per widened block of the many-rows path.
const BLOCK: usize = 512;

simd_dispatch! {
    /// `out[0] = Σ x[i] q[i]` for int8 bytes `q` (sixteen partial sums).
    fn dot_i8(x: &[f32], q: &[u8], out: &mut [f32]) {
        let mut acc = [0f32; 16];
        let (xc, qc) = (x.chunks_exact(16), q.chunks_exact(16));
        let (xr, qr) = (xc.remainder(), qc.remainder());
        for (x, q) in xc.zip(qc) {
            for l in 0..16 {
                acc[l] += x[l] * f32::from(q[l] as i8);
            }
        }
        let mut tail = 0f32;
        for (x, q) in xr.iter().zip(qr) {
            tail += x * f32::from(*q as i8);
        }
        let mut s = 0f32;
        for v in acc {
            s += v;
        }
        out[0] = s + tail;
    }
}

simd_dispatch! {
    /// `out[0] = Σ_g scales[g] Σ_t x[32 g + t] q[32 g + t]` over whole int4 blocks of 32
    /// (16 bytes each: values `t` and `t + 16` share byte `t`).
    fn dot_i4_32(x: &[f32], bytes: &[u8], scales: &[f32], out: &mut [f32]) {
        let mut acc = [0f32; 16];
        for ((x, b), s) in x.chunks_exact(32).zip(bytes.chunks_exact(16)).zip(scales) {
            let mut block = [0f32; 16];
            for l in 0..16 {
                let low = f32::from((b[l] & 0x0f) as i8 - 8);
                let high = f32::from((b[l] >> 4) as i8 - 8);
                block[l] = x[l] * low + x[l + 16] * high;
            }
            for l in 0..16 {
                acc[l] += block[l] * s;
            }
        }
        let mut sum = 0f32;
        for v in acc {
            sum += v;
        }
        out[0] = sum;
    }
}

/// `x · w_channel` for one row `x` of the channel's width (`buf`: room for a block; `scales`:
/// room for a channel's scales).
fn dot_channel(
    x: &[f32],
    w: &PackedWeight,
    channel: usize,
    buf: &mut [f32],
    scales: &mut [f32],
) -> f32 {
    let width = w.width();
    let bytes = &w.data()[channel * w.channel_bytes()..][..w.channel_bytes()];
    let groups = w.groups_per_channel();
    w.channel_scales(channel, scales);
    let scales = &scales[..groups];
    let mut out = 0f32;
    match w.scheme() {
        QuantScheme::Int8PerChannel => {
            dot_i8(x, bytes, std::slice::from_mut(&mut out));
            out * scales[0]
        }
        QuantScheme::Int4Block { block } => {
            let whole = if block == 32 { width / 32 } else { 0 };
            if whole > 0 {
                dot_i4_32(
                    &x[..32 * whole],
                    &bytes[..16 * whole],
                    &scales[..whole],
                    std::slice::from_mut(&mut out),
                );
            }
            // Other block sizes, and a last partial block: widened, then a dot product.
            let half = block.div_ceil(2);
            let mut part = 0f32;
            for g in whole..groups {
                let len = block.min(width - g * block);
                let buf = &mut buf[..len];
                widen_i4(&bytes[g * half..][..half], scales[g], buf);
                dot(&x[g * block..][..len], buf, std::slice::from_mut(&mut part));
                out += part;
            }
            out
        }
    }
}

/// `x Wᵀ + bias` for a packed weight with `n` channels of width `k`, on flex, for `f32`
/// activations without autodiff; `None` elsewhere (the caller dequantizes).
///
/// # Shapes
/// - `x`: `[m, k]`; `bias`: `[n]`
/// - returns: `[m, n]`
pub(crate) fn packed_product(
    x: &Tensor<2>,
    w: &PackedWeight,
    bias: Option<&Tensor<1>>,
) -> Option<Tensor<2>> {
    let [m, k] = x.dims();
    let n = w.channels();
    if x.dtype() != DType::F32 || k != w.width() || m == 0 || n == 0 || k == 0 {
        return None;
    }
    let x_flex = contiguous(x.clone().try_into_primitive::<Flex>().ok()?);
    let bias: Option<FlexTensor> = match bias {
        Some(b) => Some(contiguous(
            b.clone()
                .cast(DType::F32)
                .try_into_primitive::<Flex>()
                .ok()?,
        )),
        None => None,
    };
    let x = slice(&x_flex);
    let mut y = if m <= SMALL_ROWS {
        few_rows(x, m, w)
    } else {
        many_rows(x, m, w)
    };
    if let Some(bias) = &bias {
        let bias = slice(bias);
        for row in y.chunks_mut(n) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
    Some(Tensor::from_primitive::<Flex>(flex_tensor(y, [m, n])))
}

/// Few rows: runs of channels per task, each channel read once.
fn few_rows(x: &[f32], m: usize, w: &PackedWeight) -> Vec<f32> {
    let (n, k) = (w.channels(), w.width());
    // Computed as `[n, m]` (each task writes whole rows), then transposed.
    let mut yt = vec![0f32; n * m];
    yt.par_chunks_mut(CHANNELS_PER_TASK * m)
        .enumerate()
        .for_each_init(
            || (vec![0f32; k], vec![0f32; w.groups_per_channel()]),
            |(buf, scales), (chunk, out)| {
                for (cc, out) in out.chunks_mut(m).enumerate() {
                    let channel = chunk * CHANNELS_PER_TASK + cc;
                    if m == 1 {
                        out[0] = dot_channel(x, w, channel, buf, scales);
                        continue;
                    }
                    w.dequantize_channel(channel, buf);
                    for (r, o) in out.iter_mut().enumerate() {
                        dot(&x[r * k..(r + 1) * k], buf, std::slice::from_mut(o));
                    }
                }
            },
        );
    rows_from_columns(yt, m, n)
}

/// Many rows: `BLOCK` channels at a time, widened to `f32` and multiplied with `gemm`.
fn many_rows(x: &[f32], m: usize, w: &PackedWeight) -> Vec<f32> {
    let (n, k) = (w.channels(), w.width());
    let mut y = vec![0f32; m * n];
    let mut block = vec![0f32; k * BLOCK.min(n)];
    for j0 in (0..n).step_by(BLOCK) {
        let nb = BLOCK.min(n - j0);
        let block = &mut block[..k * nb];
        block
            .par_chunks_mut(k)
            .enumerate()
            .for_each(|(jj, row)| w.dequantize_channel(j0 + jj, row));
        matmul(
            (m, nb, k),
            &mut y[j0..],
            (n, 1),
            false,
            x,
            (k, 1),
            block,
            (1, k),
            true,
        );
    }
    y
}

/// Rows `ids` of a packed table (channels are rows), widened: `[ids.len(), width]`.
pub(crate) fn gather_rows(w: &PackedWeight, ids: &[usize]) -> Vec<f32> {
    let k = w.width();
    let mut out = vec![0f32; ids.len() * k];
    out.par_chunks_mut(k.max(1))
        .zip(ids.par_iter())
        .for_each(|(row, &id)| w.dequantize_channel(id, row));
    out
}

#[cfg(test)]
mod tests {
    use crate::test_values::pseudo_random;
    use burn::tensor::{Tensor, TensorData};

    use super::packed_product;
    use crate::fused::test_support::{FLEX_REQUIRED, flex_device, values};
    use crate::quant::{PackedWeight, QuantScheme};

    /// The kernel against `x Wᵀ (+ b)` in f64 from the dequantized weight: one row, a few
    /// rows, many rows; widths that are and are not multiples of 32; int8, int4 in blocks of
    /// 32 and of an odd size; with and without bias; within 1e-5 relative to the row's scale.
    #[test]
    fn packed_products_equal_f64_reference() {
        let device = flex_device().expect(FLEX_REQUIRED);
        let shapes = [
            (1, 5, 7),
            (1, 96, 130),
            (1, 770, 33),
            (3, 64, 1100),
            (16, 33, 1),
            (17, 70, 600),
            (40, 129, 65),
        ];
        let mut seed = 0;
        for (m, k, n) in shapes {
            for scheme in [
                QuantScheme::Int8PerChannel,
                QuantScheme::int4(),
                QuantScheme::Int4Block { block: 7 },
            ] {
                for with_bias in [false, true] {
                    seed += 1;
                    let w = pseudo_random(n * k, seed + 1000);
                    let packed = PackedWeight::quantize(&w, n, k, scheme).unwrap();
                    let wq = packed.dequantize();
                    let x = pseudo_random(m * k, seed);
                    let bias = with_bias.then(|| pseudo_random(n, seed + 2000));
                    let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &device);
                    let bt = bias
                        .as_ref()
                        .map(|b| Tensor::<1>::from_data(TensorData::new(b.clone(), [n]), &device));
                    let y = packed_product(&xt, &packed, bt.as_ref())
                        .expect("f32 activations on flex take the kernel");
                    assert_eq!(y.dims(), [m, n]);
                    let got = values(y);
                    for r in 0..m {
                        for j in 0..n {
                            let (mut want, mut scale) = (0f64, 0f64);
                            for i in 0..k {
                                let term = f64::from(x[r * k + i]) * f64::from(wq[j * k + i]);
                                want += term;
                                scale += term.abs();
                            }
                            if let Some(b) = &bias {
                                want += f64::from(b[j]);
                                scale += f64::from(b[j]).abs();
                            }
                            let diff = (f64::from(got[r * n + j]) - want).abs();
                            assert!(
                                diff <= 1e-5 * scale.max(1e-3),
                                "{scheme:?} m={m} k={k} n={n} bias={with_bias}: y[{r},{j}] = {} vs {want}",
                                got[r * n + j]
                            );
                        }
                    }
                }
            }
        }
    }
}
