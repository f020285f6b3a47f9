//! The recurrent products of the fused LSTM: a few rows (one thread's block of the batch) times
//! a weight matrix that stays the same for every time step.
//!
//! A general matmul packs its right-hand side on every call, and with 8 or 16 rows that packing
//! costs as much as the product. Here the weight is packed **once per sequence** into panels of
//! 16 columns (`[k][16]`, zero-padded), and each step runs an AVX2 + FMA register tile of 4 rows
//! by 16 columns over them; with AVX-512, panels of 32 columns and tiles of 8 rows by 32.
//! CPUs without AVX2/FMA (and other architectures) use the `gemm` crate on the unpacked weight
//! instead.

/// Columns per packed panel (two 8-lane vectors).
const NR: usize = 16;
/// Rows per register tile.
const MR: usize = 4;
/// Columns per packed panel with AVX-512 (two 16-lane vectors).
const NR_512: usize = 32;
/// Rows per AVX-512 register tile.
const MR_512: usize = 8;

/// A `[k, n]` right-hand side packed into `ceil(n / 16)` panels of `[k][16]`.
#[derive(Clone, Debug)]
pub(super) struct Packed {
    k: usize,
    n: usize,
    /// Columns per panel: 32 for the AVX-512 tile, 16 for the AVX2 one.
    nr: usize,
    panels: Vec<f32>,
    /// Row-major copy for the fallback path (empty when the packed kernel is used).
    plain: Vec<f32>,
}

fn wide_kernel_512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::fused::math::wide_simd_512()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn wide_kernel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::fused::math::wide_simd()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Packed {
    /// Packs the `[k, n]` matrix whose element `(row, col)` is `at(row, col)`.
    pub(super) fn new(k: usize, n: usize, at: impl Fn(usize, usize) -> f32) -> Self {
        if wide_kernel() {
            let nr = if wide_kernel_512() { NR_512 } else { NR };
            let n_panels = n.div_ceil(nr);
            let mut panels = vec![0.0f32; n_panels * k * nr];
            for p in 0..n_panels {
                let panel = &mut panels[p * k * nr..][..k * nr];
                for col in 0..nr.min(n - p * nr) {
                    for row in 0..k {
                        panel[row * nr + col] = at(row, p * nr + col);
                    }
                }
            }
            Self {
                k,
                n,
                nr,
                panels,
                plain: Vec::new(),
            }
        } else {
            let mut plain = vec![0.0f32; k * n];
            for row in 0..k {
                for col in 0..n {
                    plain[row * n + col] = at(row, col);
                }
            }
            Self {
                k,
                n,
                nr: NR,
                panels: Vec::new(),
                plain,
            }
        }
    }

    /// `c[m, n] (+)= a[m, k] * self`, with `a` rows `lda` apart and `c` rows `ldc` apart;
    /// `accumulate` adds to `c` instead of overwriting it.
    pub(super) fn mul(
        &self,
        m: usize,
        a: &[f32],
        lda: usize,
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    ) {
        let (k, n) = (self.k, self.n);
        if m == 0 || n == 0 {
            return;
        }
        assert!(
            a.len() >= (m - 1) * lda + k,
            "packed matmul: lhs out of bounds"
        );
        assert!(
            c.len() >= (m - 1) * ldc + n,
            "packed matmul: output out of bounds"
        );
        if self.panels.is_empty() {
            // SAFETY: bounds checked above; `c` is borrowed mutably, so it aliases nothing.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    ldc as isize,
                    accumulate,
                    a.as_ptr(),
                    1,
                    lda as isize,
                    self.plain.as_ptr(),
                    1,
                    n as isize,
                    1.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: panels exist only when the CPU has AVX2 and FMA, 32-column panels only when
        // it has AVX-512 F; bounds checked above.
        unsafe {
            if self.nr == NR_512 {
                wide512::mul(self, m, a, lda, c, ldc, accumulate);
            } else {
                wide::mul(self, m, a, lda, c, ldc, accumulate);
            }
        }
    }
}

/// One SIMD build of the step product: module `$name` with `mul` (tiles of `$mr` rows over
/// every `$nr`-column panel, then one tile for the remaining rows) for the instruction set
/// `$features`, whose vectors hold `$lanes` floats (`$nr` is two vectors).
macro_rules! step_product {
    (
        $name:ident, $features:literal, $mr:expr, $nr:expr, $lanes:expr, $vector:ty,
        zero: $zero:ident, load: $load:ident, store: $store:ident, splat: $splat:ident,
        fma: $fma:ident, rest: [$($rest:literal),*]
    ) => {
        #[cfg(target_arch = "x86_64")]
        mod $name {
            use super::Packed;
            use std::arch::x86_64::*;

            const MR: usize = $mr;
            const NR: usize = $nr;

            #[target_feature(enable = $features)]
            pub(super) fn mul(
                packed: &Packed,
                m: usize,
                a: &[f32],
                lda: usize,
                c: &mut [f32],
                ldc: usize,
                accumulate: bool,
            ) {
                let (k, n) = (packed.k, packed.n);
                for p in 0..n.div_ceil(NR) {
                    let panel = &packed.panels[p * k * NR..][..k * NR];
                    let cols = NR.min(n - p * NR);
                    let mut row = 0;
                    while row + MR <= m {
                        tile::<MR>(
                            k,
                            &a[row * lda..],
                            lda,
                            panel,
                            &mut c[row * ldc + p * NR..],
                            ldc,
                            cols,
                            accumulate,
                        );
                        row += MR;
                    }
                    if row == m {
                        continue;
                    }
                    let c = &mut c[row * ldc + p * NR..];
                    let a = &a[row * lda..];
                    match m - row {
                        $($rest => tile::<$rest>(k, a, lda, panel, c, ldc, cols, accumulate),)*
                        _ => unreachable!("fewer than {MR} rows remain"),
                    }
                }
            }

            /// `R` rows of `c` (`cols <= NR` columns) from `R` rows of `a` and one panel.
            #[target_feature(enable = $features)]
            #[allow(clippy::too_many_arguments)]
            fn tile<const R: usize>(
                k: usize,
                a: &[f32],
                lda: usize,
                panel: &[f32],
                c: &mut [f32],
                ldc: usize,
                cols: usize,
                accumulate: bool,
            ) {
                assert!(panel.len() >= k * NR && a.len() >= (R - 1) * lda + k);
                assert!(c.len() >= (R - 1) * ldc + cols);
                let mut acc: [[$vector; 2]; R] = [[$zero(); 2]; R];
                let (a, b) = (a.as_ptr(), panel.as_ptr());
                for kk in 0..k {
                    // SAFETY: `kk < k`, and the asserts above bound every row of `a` and the
                    // panel.
                    unsafe {
                        let b0 = $load(b.add(kk * NR));
                        let b1 = $load(b.add(kk * NR + $lanes));
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let av = $splat(*a.add(r * lda + kk));
                            acc[0] = $fma(av, b0, acc[0]);
                            acc[1] = $fma(av, b1, acc[1]);
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    let row = &mut c[r * ldc..][..cols];
                    let mut out = [0.0f32; NR];
                    // SAFETY: `out` holds `NR` floats, two vectors.
                    unsafe {
                        $store(out.as_mut_ptr(), acc[0]);
                        $store(out.as_mut_ptr().add($lanes), acc[1]);
                    }
                    if accumulate {
                        for (c, v) in row.iter_mut().zip(out) {
                            *c += v;
                        }
                    } else {
                        row.copy_from_slice(&out[..cols]);
                    }
                }
            }
        }
    };
}

step_product!(
    wide, "avx2,fma", super::MR, super::NR, 8, __m256,
    zero: _mm256_setzero_ps, load: _mm256_loadu_ps, store: _mm256_storeu_ps,
    splat: _mm256_set1_ps, fma: _mm256_fmadd_ps, rest: [1, 2, 3]
);
step_product!(
    wide512, "avx512f,avx2,fma", super::MR_512, super::NR_512, 16, __m512,
    zero: _mm512_setzero_ps, load: _mm512_loadu_ps, store: _mm512_storeu_ps,
    splat: _mm512_set1_ps, fma: _mm512_fmadd_ps, rest: [1, 2, 3, 4, 5, 6, 7]
);

#[cfg(test)]
mod tests {
    use super::Packed;

    /// Against a naive triple loop, for shapes with partial panels and partial row tiles, with
    /// strided rows, both overwriting and accumulating.
    #[test]
    fn packed_product_matches_naive() {
        let value = |i: usize, salt: usize| (((i * 31 + salt * 7) % 23) as f32 - 11.0) / 8.0;
        for (m, k, n) in [
            (1, 1, 1),
            (3, 5, 7),
            (4, 16, 16),
            (8, 33, 40),
            (7, 64, 100),
            (14, 9, 65),
            (21, 17, 33),
        ] {
            let (lda, ldc) = (k + 3, n + 5);
            let b: Vec<f32> = (0..k * n).map(|i| value(i, 1)).collect();
            let a: Vec<f32> = (0..m * lda).map(|i| value(i, 2)).collect();
            let packed = Packed::new(k, n, |row, col| b[row * n + col]);
            for accumulate in [false, true] {
                let start: Vec<f32> = (0..m * ldc).map(|i| value(i, 3)).collect();
                let mut c = start.clone();
                packed.mul(m, &a, lda, &mut c, ldc, accumulate);
                for i in 0..m {
                    for j in 0..ldc {
                        let got = c[i * ldc + j];
                        if j >= n {
                            assert_eq!(got, start[i * ldc + j], "padding column written");
                            continue;
                        }
                        let dot: f32 = (0..k).map(|x| a[i * lda + x] * b[x * n + j]).sum();
                        let want = if accumulate {
                            start[i * ldc + j] + dot
                        } else {
                            dot
                        };
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "({m}, {k}, {n}) [{i}, {j}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
