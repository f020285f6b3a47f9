//! The recurrent products of the fused LSTM: the whole batch times some of a weight matrix's
//! columns (one thread's share of the hidden units), with a weight that stays the same for
//! every time step.
//!
//! A general matmul packs its right-hand side on every call, and with a batch of 16 rows that
//! packing costs as much as the product. Here the weight is packed **once per sequence** into
//! the column panels of lmforge's matrix product (`[k][w]`, `w` = 32 columns with AVX-512, 16
//! otherwise, zero-padded), and each step runs the product's register tiles over them
//! ([`crate::fused::gemm::mul_panels`]: the rows read in place, `k` unrolled, prefetched).
//!
//! The columns come in `blocks` equal blocks (the four gates `i, f, g, o` of the forward
//! product, one block for the backward one), each padded to whole panels, so that the same
//! range of hidden units selects whole panels in every block.

use std::ops::Range;

use rayon::prelude::*;

use crate::fused::gemm::{mul_panels, panel_width};

/// How the source of a [`Packed`] matrix is laid out.
#[derive(Clone, Copy, Debug)]
pub(super) enum Source {
    /// The `[k, n]` matrix itself, row-major.
    Rows,
    /// Its transpose, `[n, k]` row-major (PyTorch's `weight_hh` for `h W^T`).
    Transposed,
}

/// A `[k, n]` right-hand side (`n = blocks * block`) packed into panels of `[k][w]`, each
/// block starting on a new panel.
#[derive(Clone, Debug)]
pub(super) struct Packed {
    k: usize,
    /// Blocks of columns.
    blocks: usize,
    /// Columns per block.
    block: usize,
    /// Columns per panel: the product's panel width on this CPU.
    nr: usize,
    /// Panels per block.
    block_panels: usize,
    panels: Vec<f32>,
}

impl Packed {
    /// Packs the `[k, blocks * block]` matrix held by `src` in the layout `source` (the panels
    /// are filled on rayon's threads).
    pub(super) fn new(src: &[f32], k: usize, blocks: usize, block: usize, source: Source) -> Self {
        let n = blocks * block;
        assert_eq!(src.len(), k * n, "packed matmul: source size");
        let nr = panel_width();
        let block_panels = block.div_ceil(nr);
        let mut panels = vec![0.0f32; blocks * block_panels * k * nr];
        if k > 0 {
            panels
                .par_chunks_mut(k * nr)
                .enumerate()
                .for_each(|(p, panel)| {
                    let (b, q) = (p / block_panels, p % block_panels);
                    let col0 = b * block + q * nr;
                    let cols = nr.min(block - q * nr);
                    match source {
                        Source::Rows => {
                            for (row, out) in panel.chunks_exact_mut(nr).enumerate() {
                                out[..cols].copy_from_slice(&src[row * n + col0..][..cols]);
                            }
                        }
                        Source::Transposed => {
                            for col in 0..cols {
                                let from = &src[(col0 + col) * k..][..k];
                                for (row, v) in from.iter().enumerate() {
                                    panel[row * nr + col] = *v;
                                }
                            }
                        }
                    }
                });
        }
        Self {
            k,
            blocks,
            block,
            nr,
            block_panels,
            panels,
        }
    }

    /// Where hidden-unit ranges may start: units are split at whole panels.
    pub(super) fn panel_width(&self) -> usize {
        self.nr
    }

    /// `c[m, units of every block] (+)= a[m, k] * self[.., units of every block]`: for each
    /// block `b`, the columns `b * block + units` of the product, written at the same columns
    /// of `c`. `a` holds `m` rows `lda` apart, `c` rows `ldc` apart; `accumulate` adds to `c`
    /// instead of overwriting it. `units.start` is a multiple of [`Packed::panel_width`].
    ///
    /// # Safety
    /// `a` points at `m` rows of `k` readable floats at stride `lda`; `c` at `m` rows at stride
    /// `ldc` whose listed columns (below `blocks * block`) no other thread reads or writes
    /// meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn mul_units(
        &self,
        m: usize,
        a: *const f32,
        lda: usize,
        c: *mut f32,
        ldc: usize,
        units: Range<usize>,
        accumulate: bool,
    ) {
        let (k, nr, block) = (self.k, self.nr, self.block);
        assert!(
            units.start.is_multiple_of(nr) && units.end <= block,
            "packed matmul: units {units:?} of {block}"
        );
        if m == 0 || units.is_empty() {
            return;
        }
        debug_assert!(lda >= k && ldc >= block);
        // The tile the product runs now is the one the panels were packed for (the kernel
        // choice is fixed for the process).
        debug_assert_eq!(nr, panel_width());
        let padded = self.block_panels * nr;
        for b in 0..self.blocks {
            let first = b * padded;
            let panels = (first + units.start) / nr..(first + units.end).div_ceil(nr);
            // SAFETY: the listed panels lie inside `self.panels` (units end within the block);
            // the caller vouches for `a` and for `c`'s columns `b * block + units`, which
            // column `first` of the padded layout maps to (`n = first + block` clips the
            // block's last panel).
            unsafe {
                mul_panels(
                    (m, first + block, k),
                    a,
                    lda,
                    self.panels.as_ptr(),
                    std::slice::from_ref(&panels),
                    (c.add(b * block), ldc, first),
                    accumulate,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Range;

    use super::{Packed, Source};

    /// Against a naive triple loop, for shapes with partial panels and partial row tiles, with
    /// strided rows, both overwriting and accumulating, from both source layouts, one to four
    /// blocks, and unit ranges that cover a block or part of it.
    #[test]
    fn packed_product_matches_naive() {
        let value = |i: usize, salt: usize| (((i * 31 + salt * 7) % 23) as f32 - 11.0) / 8.0;
        for (m, k, blocks, block) in [
            (1, 1, 1, 1),
            (3, 5, 1, 7),
            (4, 16, 4, 16),
            (8, 33, 1, 40),
            (7, 64, 4, 25),
            (14, 9, 2, 65),
            (16, 17, 4, 70),
            (21, 17, 3, 33),
        ] {
            let n = blocks * block;
            let (lda, ldc) = (k + 3, n + 5);
            let b: Vec<f32> = (0..k * n).map(|i| value(i, 1)).collect();
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let a: Vec<f32> = (0..m * lda).map(|i| value(i, 2)).collect();
            let rows = Packed::new(&b, k, blocks, block, Source::Rows);
            let transposed = Packed::new(&bt, k, blocks, block, Source::Transposed);
            assert_eq!(rows.panels, transposed.panels, "the two layouts pack alike");
            let nr = rows.panel_width();
            // The whole block, and its first panel and the rest when it has more than one.
            let ranges: Vec<Range<usize>> = [(0, block), (0, nr), (nr, block)]
                .into_iter()
                .take(if block > nr { 3 } else { 1 })
                .map(|(a, b)| a..b)
                .collect();
            for units in ranges {
                for accumulate in [false, true] {
                    let start: Vec<f32> = (0..m * ldc).map(|i| value(i, 3)).collect();
                    let mut c = start.clone();
                    // SAFETY: `a` and `c` cover `m` rows at their strides.
                    unsafe {
                        rows.mul_units(
                            m,
                            a.as_ptr(),
                            lda,
                            c.as_mut_ptr(),
                            ldc,
                            units.clone(),
                            accumulate,
                        );
                    }
                    for i in 0..m {
                        for j in 0..ldc {
                            let got = c[i * ldc + j];
                            if j >= n || !units.contains(&(j % block)) {
                                assert_eq!(got, start[i * ldc + j], "column {j} written");
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
                                "({m}, {k}, {blocks}x{block}, {units:?}) [{i}, {j}]: {got} vs \
                                 {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
