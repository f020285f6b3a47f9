//! Products of `f32` activations with weight matrices as linear layers hold them: in `f32`, or
//! kept in half precision (`f16` or `bf16`) and widened to `f32` in registers, so the
//! half-size weights are read from memory once and never converted as a whole.
//!
//! Decoding multiplies one or a few rows by each weight matrix, so its speed is the speed of
//! reading the weights (half precision: half the bytes, nearly half the time). Both cores
//! stream the weight, with software prefetching. Accumulation is in `f32`. `f32` weights take
//! this path for few rows only; more rows go to burn's product.
//!
//! - Few rows (`m <= SMALL_ROWS`), weight `[k, n]`: the weight's rows are split into one
//!   contiguous range per thread; each thread streams its range once and accumulates a partial
//!   `[m, n]` result, and the partials are added in a fixed order (the result does not depend
//!   on scheduling).
//! - Few rows, weight `[n, k]` (a tied embedding used as the output layer): each output is a
//!   dot product with one weight row; the weight's rows are shared out among the threads.
//! - Many rows (prompt processing, batches) with a half-precision weight: blocks of the weight
//!   are widened to `f32` and multiplied with `gemm`, so a block at a time is held in `f32`, never the whole matrix.

use burn::tensor::{DType, Tensor, bf16, f16};
use burn_flex::{Flex, FlexTensor};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::math::simd_dispatch;
use super::{contiguous, flex_tensor, matmul, slice};

/// Up to this many rows take the streaming path; more go through `gemm` by blocks.
const SMALL_ROWS: usize = 16;
/// Weight rows widened together (one pass over the result per group).
const GROUP: usize = 4;
/// Columns per tile of the streaming path (the tile of the result stays in L1).
const TILE: usize = 512;
/// Output features per widened block of the many-rows path.
const BLOCK: usize = 1024;

/// A weight matrix's values (the name: most of them are half precision).
#[derive(Clone, Copy)]
enum Half<'a> {
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
    F32(&'a [f32]),
}

impl Half<'_> {
    /// Asks the CPU to fetch `len` values from each of `starts` into cache.
    fn prefetch(self, starts: impl Iterator<Item = usize>, len: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let (base, total, size) = match self {
                Half::F16(w) => (w.as_ptr().cast::<i8>(), w.len(), 2),
                Half::Bf16(w) => (w.as_ptr().cast::<i8>(), w.len(), 2),
                Half::F32(w) => (w.as_ptr().cast::<i8>(), w.len(), 4),
            };
            for start in starts {
                let end = (start + len).min(total);
                // Every 64-byte line.
                for at in (start..end).step_by(64 / size) {
                    // SAFETY: prefetching never faults, and `at` is inside the slice.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(base.add(size * at)) };
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (starts, len);
    }

    /// Widens `len` values from `start` into `dst[..len]`.
    fn widen(self, start: usize, dst: &mut [f32]) {
        let len = dst.len();
        match self {
            Half::F16(w) => w[start..start + len].convert_to_f32_slice(dst),
            Half::Bf16(w) => widen_bf16(&w[start..start + len], dst),
            Half::F32(w) => dst.copy_from_slice(&w[start..start + len]),
        }
    }
}

simd_dispatch! {
    /// `dst = src` widened (a bf16 is the upper half of an f32).
    fn widen_bf16(src: &[bf16], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits(u32::from(s.to_bits()) << 16);
        }
    }
}

/// `y += Σ_t xs[t] wide(w[start + t stride ..][..y.len()])`: the loop both element types
/// share, inlined into each `simd_dispatch!` body so it vectorizes for the CPU's features.
#[inline(always)]
fn accumulate_rows<T: Copy>(
    y: &mut [f32],
    xs: &[f32],
    w: &[T],
    (start, stride): (usize, usize),
    wide: impl Fn(T) -> f32,
) {
    let c = y.len();
    let row = |t: usize| &w[start + t * stride..start + t * stride + c];
    match xs.len() {
        4 => {
            let (w0, w1, w2, w3) = (row(0), row(1), row(2), row(3));
            let (a, b, d, e) = (xs[0], xs[1], xs[2], xs[3]);
            for j in 0..c {
                y[j] += a * wide(w0[j]) + b * wide(w1[j]) + d * wide(w2[j]) + e * wide(w3[j]);
            }
        }
        _ => {
            for (t, &a) in xs.iter().enumerate() {
                let w = row(t);
                for j in 0..c {
                    y[j] += a * wide(w[j]);
                }
            }
        }
    }
}

simd_dispatch! {
    /// `y += Σ_t xs[t] w[start + t stride ..][..y.len()]`.
    fn accumulate(y: &mut [f32], xs: &[f32], w: &[f32], start: usize, stride: usize) {
        accumulate_rows(y, xs, w, (start, stride), |v| v);
    }
}

simd_dispatch! {
    /// `y += Σ_t xs[t] w[start + t stride ..][..y.len()]`, the bf16 weights widened as they
    /// are read (a bf16 is the upper half of an f32).
    fn accumulate_bf16(y: &mut [f32], xs: &[f32], w: &[bf16], start: usize, stride: usize) {
        accumulate_rows(y, xs, w, (start, stride), |b| f32::from_bits(u32::from(b.to_bits()) << 16));
    }
}

simd_dispatch! {
    /// `out[0] = a · b` with sixteen independent partial sums (vectorizable).
    pub(crate) fn dot(a: &[f32], b: &[f32], out: &mut [f32]) {
        let mut acc = [0f32; 16];
        let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
        let (ar, br) = (ac.remainder(), bc.remainder());
        for (x, y) in ac.zip(bc) {
            for l in 0..16 {
                acc[l] += x[l] * y[l];
            }
        }
        let mut tail = 0f32;
        for (x, y) in ar.iter().zip(br) {
            tail += x * y;
        }
        let mut s = 0f32;
        for v in acc {
            s += v;
        }
        out[0] = s + tail;
    }
}

/// `x W` (`transposed`: `x Wᵀ`) plus `bias`, on flex, for `f32` activations without autodiff
/// and an `f16`/`bf16` weight, or an `f32` weight and at most `SMALL_ROWS` rows; `None`
/// elsewhere (the caller runs burn's ops).
///
/// # Shapes
/// - `x`: `[m, k]`; `weight`: `[k, n]` (`transposed`: `[n, k]`); `bias`: `[n]`
/// - returns: `[m, n]`
pub(crate) fn linear_product(
    x: &Tensor<2>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    transposed: bool,
) -> Option<Tensor<2>> {
    let [m, k] = x.dims();
    // f32 weights only for few rows (gemm is faster for many).
    let takes = match weight.dtype() {
        DType::F16 | DType::BF16 => true,
        DType::F32 => m <= SMALL_ROWS,
        _ => false,
    };
    if x.dtype() != DType::F32 || !takes {
        return None;
    }
    let [r, c] = weight.dims();
    let n = if transposed { r } else { c };
    if (if transposed { c } else { r }) != k || m == 0 || n == 0 || k == 0 {
        return None;
    }
    let x_flex = contiguous(x.clone().try_into_primitive::<Flex>().ok()?);
    let w_flex = contiguous(weight.clone().try_into_primitive::<Flex>().ok()?);
    let bias: Option<FlexTensor> = match bias {
        Some(b) => Some(contiguous(
            b.clone()
                .cast(DType::F32)
                .try_into_primitive::<Flex>()
                .ok()?,
        )),
        None => None,
    };
    let w = match w_flex.dtype() {
        DType::F16 => Half::F16(w_flex.as_slice::<f16>()?),
        DType::BF16 => Half::Bf16(w_flex.as_slice::<bf16>()?),
        DType::F32 => Half::F32(w_flex.as_slice::<f32>()?),
        _ => return None,
    };
    let x = slice(&x_flex);
    let mut y = match (m <= SMALL_ROWS, transposed) {
        (true, false) => few_rows(x, (m, k, n), w),
        (true, true) => few_rows_transposed(x, (m, k, n), w),
        (false, _) => many_rows(x, (m, k, n), w, transposed),
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

/// `x W` for `W: [k, n]`, one contiguous range of `W`'s rows per thread.
fn few_rows(x: &[f32], (m, k, n): (usize, usize, usize), w: Half<'_>) -> Vec<f32> {
    let parts = rayon::current_num_threads().clamp(1, k.div_ceil(64));
    let per = k.div_ceil(parts);
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let (i0, i1) = (p * per, ((p + 1) * per).min(k));
            let mut y = vec![0f32; m * n];
            let mut buf = vec![0f32; GROUP * TILE];
            // `GROUP` whole rows of `W` at a time, each read front to back, in tiles that stay
            // in L1; the same tile of the next group's rows is prefetched meanwhile (without
            // it, the hardware prefetcher restarts at every row and the reads stall).
            let mut i = i0;
            while i < i1 {
                let g = GROUP.min(i1 - i);
                let next = (i + g..(i + g + GROUP).min(i1)).map(|r| r * n);
                for j0 in (0..n).step_by(TILE) {
                    let c = TILE.min(n - j0);
                    w.prefetch(next.clone().map(|start| start + j0), c);
                    match w {
                        Half::Bf16(values) => {
                            for r in 0..m {
                                let xs = &x[r * k + i..r * k + i + g];
                                let y = &mut y[r * n + j0..r * n + j0 + c];
                                accumulate_bf16(y, xs, values, i * n + j0, n);
                            }
                        }
                        Half::F32(values) => {
                            for r in 0..m {
                                let xs = &x[r * k + i..r * k + i + g];
                                let y = &mut y[r * n + j0..r * n + j0 + c];
                                accumulate(y, xs, values, i * n + j0, n);
                            }
                        }
                        Half::F16(_) => {
                            for t in 0..g {
                                w.widen((i + t) * n + j0, &mut buf[t * TILE..t * TILE + c]);
                            }
                            for r in 0..m {
                                let xs = &x[r * k + i..r * k + i + g];
                                let y = &mut y[r * n + j0..r * n + j0 + c];
                                accumulate(y, xs, &buf, 0, TILE);
                            }
                        }
                    }
                }
                i += g;
            }
            y
        })
        .collect();
    let mut parts = partials.into_iter();
    let mut y = parts.next().expect("at least one part");
    for part in parts {
        for (a, b) in y.iter_mut().zip(&part) {
            *a += b;
        }
    }
    y
}

/// `x Wᵀ` for `W: [n, k]`: one dot product per output, `W`'s rows shared out.
fn few_rows_transposed(x: &[f32], (m, k, n): (usize, usize, usize), w: Half<'_>) -> Vec<f32> {
    const ROWS: usize = 64;
    // Computed as `[n, m]` (each task writes whole rows), then transposed.
    let mut yt = vec![0f32; n * m];
    yt.par_chunks_mut(ROWS * m).enumerate().for_each_init(
        || vec![0f32; k],
        |buf, (chunk, out)| {
            for (jj, out) in out.chunks_mut(m).enumerate() {
                let j = chunk * ROWS + jj;
                let row: &[f32] = match w {
                    Half::F32(values) => &values[j * k..(j + 1) * k],
                    _ => {
                        w.widen(j * k, buf);
                        buf
                    }
                };
                for (r, o) in out.iter_mut().enumerate() {
                    dot(&x[r * k..(r + 1) * k], row, std::slice::from_mut(o));
                }
            }
        },
    );
    rows_from_columns(yt, m, n)
}

/// `[m, n]` row-major from the same values computed as `[n, m]` (no copy for one row).
pub(crate) fn rows_from_columns(yt: Vec<f32>, m: usize, n: usize) -> Vec<f32> {
    if m == 1 {
        return yt;
    }
    let mut y = vec![0f32; m * n];
    for j in 0..n {
        for r in 0..m {
            y[r * n + j] = yt[j * m + r];
        }
    }
    y
}

/// Many rows: `BLOCK` output features at a time, widened to `f32` and multiplied with `gemm`.
fn many_rows(
    x: &[f32],
    (m, k, n): (usize, usize, usize),
    w: Half<'_>,
    transposed: bool,
) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    let mut block = vec![0f32; k * BLOCK.min(n)];
    for j0 in (0..n).step_by(BLOCK) {
        let nb = BLOCK.min(n - j0);
        let block = &mut block[..k * nb];
        // The block as `[nb, k]` (transposed) or `[k, nb]`, widened in parallel.
        if transposed {
            block
                .par_chunks_mut(k)
                .enumerate()
                .for_each(|(jj, row)| w.widen((j0 + jj) * k, row));
        } else {
            block
                .par_chunks_mut(nb)
                .enumerate()
                .for_each(|(i, row)| w.widen(i * n + j0, row));
        }
        let rhs_strides = if transposed { (1, k) } else { (nb, 1) };
        matmul(
            (m, nb, k),
            &mut y[j0..],
            (n, 1),
            false,
            x,
            (k, 1),
            block,
            rhs_strides,
            true,
        );
    }
    y
}

#[cfg(test)]
mod tests {
    use crate::test_values::pseudo_random;
    use burn::tensor::{DType, Device, Tensor, TensorData};

    use super::linear_product;
    use crate::fused::test_support::{FLEX_REQUIRED, flex_device, values};

    /// The kernel's products against `x W (+ b)` computed in f64 from the widened weight:
    /// every path (few rows, transposed, many rows by blocks), odd widths, with and without
    /// bias, f16, bf16 and (few rows) f32, within 1e-5 relative to the row's scale.
    #[test]
    fn half_weight_products_equal_f64_reference() {
        let device = flex_device().expect(FLEX_REQUIRED);
        let shapes = [
            (1, 5, 7),
            (1, 130, 600),
            (3, 64, 1100),
            (16, 33, 1),
            (17, 70, 1030),
            (40, 129, 65),
        ];
        let mut case = 0;
        for (m, k, n) in shapes {
            for dtype in [DType::F16, DType::BF16, DType::F32] {
                if dtype == DType::F32 && m > super::SMALL_ROWS {
                    continue;
                }
                for transposed in [false, true] {
                    for with_bias in [false, true] {
                        case += 1;
                        check(&device, (m, k, n), dtype, transposed, with_bias, case);
                    }
                }
            }
        }
    }

    fn check(
        device: &Device,
        (m, k, n): (usize, usize, usize),
        dtype: DType,
        transposed: bool,
        with_bias: bool,
        seed: u64,
    ) {
        let x = pseudo_random(m * k, seed);
        let w_shape = if transposed { [n, k] } else { [k, n] };
        let weight = Tensor::<2>::from_data(
            TensorData::new(pseudo_random(k * n, seed + 1000), w_shape),
            device,
        )
        .cast(dtype);
        // The values the kernel sees: the weight rounded to `dtype`, widened exactly.
        let w = values(weight.clone().cast(DType::F32));
        let bias = with_bias.then(|| pseudo_random(n, seed + 2000));
        let x_tensor = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), device);
        let bias_tensor = bias
            .as_ref()
            .map(|b| Tensor::<1>::from_data(TensorData::new(b.clone(), [n]), device));
        let y = linear_product(&x_tensor, &weight, bias_tensor.as_ref(), transposed)
            .expect("f32 activations and a half weight on flex take the kernel");
        assert_eq!(y.dims(), [m, n]);
        let got = values(y);
        for r in 0..m {
            for j in 0..n {
                let (mut want, mut scale) = (0f64, 0f64);
                for i in 0..k {
                    let wv = if transposed {
                        w[j * k + i]
                    } else {
                        w[i * n + j]
                    };
                    let term = f64::from(x[r * k + i]) * f64::from(wv);
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
                    "{dtype:?} m={m} k={k} n={n} transposed={transposed} bias={with_bias}: \
                     y[{r},{j}] = {} vs {want}",
                    got[r * n + j]
                );
            }
        }
    }

    /// Inputs the kernel does not take (f32 weights with many rows, half activations) are left
    /// to the caller.
    #[test]
    fn other_dtypes_are_left_to_burn() {
        let device = flex_device().expect(FLEX_REQUIRED);
        let x = Tensor::<2>::ones([2, 3], &device);
        let w = Tensor::<2>::ones([3, 4], &device);
        assert!(linear_product(&x, &w, None, false).is_some());
        let many = Tensor::<2>::ones([17, 3], &device);
        assert!(linear_product(&many, &w, None, false).is_none());
        let half_x = x.clone().cast(DType::F16);
        assert!(linear_product(&half_x, &w.clone().cast(DType::F16), None, false).is_none());
        assert!(linear_product(&x, &w.cast(DType::BF16), None, false).is_some());
    }
}
