//! The recurrent products of the fused LSTM: a few rows (one thread's block of the batch) times
//! a weight matrix that stays the same for every time step.
//!
//! A general matmul packs its right-hand side on every call, and with 8 or 16 rows that packing
//! costs as much as the product. Here the weight is packed **once per sequence** into the
//! column panels of lmforge's matrix product (`[k][w]`, `w` = 32 columns with AVX-512, 16
//! otherwise, zero-padded), and each step runs the product's register tiles over them
//! ([`crate::fused::gemm::mul_panels`]: the rows read in place, `k` unrolled, prefetched).

use crate::fused::gemm::{mul_panels, panel_width};

/// A `[k, n]` right-hand side packed into `ceil(n / w)` panels of `[k][w]`.
#[derive(Clone, Debug)]
pub(super) struct Packed {
    k: usize,
    n: usize,
    /// Columns per panel: the product's panel width on this CPU.
    nr: usize,
    panels: Vec<f32>,
}

impl Packed {
    /// Packs the `[k, n]` matrix whose element `(row, col)` is `at(row, col)`.
    pub(super) fn new(k: usize, n: usize, at: impl Fn(usize, usize) -> f32) -> Self {
        let nr = panel_width();
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
        Self { k, n, nr, panels }
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
        // The tile the product runs now is the one the panels were packed for (the kernel
        // choice is fixed for the process).
        debug_assert_eq!(self.nr, panel_width());
        // SAFETY: bounds checked above; every panel holds `k * nr` floats; `c` is borrowed
        // mutably, so it aliases nothing.
        unsafe {
            mul_panels(
                (m, n, k),
                a.as_ptr(),
                lda,
                self.panels.as_ptr(),
                std::slice::from_ref(&(0..n.div_ceil(self.nr))),
                (c.as_mut_ptr(), ldc, 0),
                accumulate,
            );
        }
    }
}

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
