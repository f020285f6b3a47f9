//! lmforge's single-precision matrix product: `C (+)= A B` on strided views, cache-blocked,
//! with a register-tiled micro-kernel and both cores on one product.
//!
//! The layout follows the classic blocked scheme. For each block of `NC` columns of `B` and
//! each slice of `KC` of the shared dimension, the slice of `B` is packed once into panels of
//! `NR` columns (`[kc][NR]`, zero-padded), shared by every thread. The rows of `A` are cut into
//! blocks of at most `MC_MAX` rows; each task packs its block into panels of `MR` rows
//! (`[kc][MR]`, zero-padded) and runs the micro-kernel over every (row panel, column panel)
//! pair: one `B` panel (16 KiB) stays in the first-level cache while the `A` block (up to
//! 144 KiB) streams from the second. Tasks are (row block, column range) pairs, sized so both
//! threads get the same share.
//!
//! The micro-kernel keeps a `6 x 16` tile of `C` in twelve 8-lane registers (AVX2 + FMA, chosen
//! at run time); other CPUs, or `LMFORGE_KERNELS=portable`, run the same blocking with a portable
//! tile that the compiler vectorises for the baseline target. Packing buffers are kept per
//! thread and reused across calls, so a training step does not return them to the system.

use std::cell::RefCell;

use rayon::prelude::*;

/// Rows of the register tile.
pub(crate) const MR: usize = 6;
/// Columns of the register tile (two 8-lane vectors).
pub(crate) const NR: usize = 16;
/// Depth of one packed slice: a `B` panel of `KC x NR` floats is 16 KiB.
const KC: usize = 256;
/// Most rows of `A` packed at once (`MC_MAX x KC` floats: 144 KiB).
const MC_MAX: usize = 144;
/// Most columns of `B` packed at once.
const NC: usize = 4096;
/// Most floats of `B` packed at once (8 MiB: the whole shared dimension of `NC` columns or
/// fewer, read by every task from the last-level cache).
const B_BUDGET: usize = 1 << 21;

thread_local! {
    /// Packed `A` blocks of the tasks this thread runs.
    static A_PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Packed `B` slices of the products this thread starts.
    static B_PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of this thread's buffer in `cell`, starting at a 64-byte boundary
/// (so no 8-lane load of a packed panel straddles two cache lines); a fresh buffer when the
/// thread's own is in use (e.g. by a product it started and is waiting on).
fn with_buffer<R>(
    cell: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    let aligned = |buffer: &mut Vec<f32>| {
        if buffer.len() < len + 16 {
            buffer.resize(len + 16, 0.0);
        }
        let start = buffer.as_ptr().align_offset(64).min(16);
        f(&mut buffer[start..start + len])
    };
    cell.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffer) => aligned(&mut buffer),
        Err(_) => aligned(&mut Vec::new()),
    })
}

/// A read-only strided matrix view: element `(i, j)` at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

/// The output view; tasks write disjoint tiles of it.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    rs: usize,
    cs: usize,
}

// SAFETY: the views are only read (`View`) or written at disjoint tiles by different tasks
// (`Out`) while the borrow of the slices they come from is held by `sgemm`.
unsafe impl Send for View {}
unsafe impl Sync for View {}
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// Which micro-kernel runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Kernel {
    fn select() -> Self {
        #[cfg(target_arch = "x86_64")]
        if super::math::wide_simd() {
            return Kernel::Avx2;
        }
        Kernel::Portable
    }
}

/// `c = (accumulate ? c : 0) + a b` for `f32` matrices on strided views, through lmforge's
/// cache-blocked product on rayon's threads: the product lmforge's layers run on flex.
///
/// `a` is `[m, k]`, `b` is `[k, n]` and `c` is `[m, n]`; each `*_strides` pair is `(row stride,
/// column stride)` in elements, so a transposed operand is the same slice with its strides
/// swapped, and padded rows are a larger row stride. The micro-kernel is AVX2 + FMA when the
/// CPU has them, otherwise portable code (`LMFORGE_KERNELS=portable` forces that).
///
/// # Panics
/// When a view reaches past the end of its slice.
///
/// ```
/// use lmforge_layers::matmul_f32;
///
/// let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // [2, 3]
/// let b = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0]; // [3, 2]
/// let mut c = [0.0; 4];
/// matmul_f32((2, 2, 3), &mut c, (2, 1), false, &a, (3, 1), &b, (2, 1));
/// assert_eq!(c, [4.0, 5.0, 10.0, 11.0]);
/// // A transposed operand is the same slice through swapped strides: here `a aᵀ`.
/// let mut g = [0.0; 4];
/// matmul_f32((2, 2, 3), &mut g, (2, 1), false, &a, (3, 1), &a, (1, 3));
/// assert_eq!(g, [14.0, 32.0, 32.0, 77.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn matmul_f32(
    (m, n, k): (usize, usize, usize),
    c: &mut [f32],
    c_strides: (usize, usize),
    accumulate: bool,
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
) {
    super::matmul(
        (m, n, k),
        c,
        c_strides,
        accumulate,
        a,
        a_strides,
        b,
        b_strides,
        true,
    );
}

/// `dst = (read_dst ? dst : 0) + lhs * rhs`, `[m, k] x [k, n]`, on strided row-major views
/// (`*_rs`: row stride, `*_cs`: column stride); `parallel` spreads the work over rayon's threads.
///
/// # Safety
/// Every view must lie inside its slice (checked by the caller, [`super::matmul`]).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (dst_rs, dst_cs): (usize, usize),
    read_dst: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !read_dst {
            for i in 0..m {
                for j in 0..n {
                    dst[i * dst_rs + j * dst_cs] = 0.0;
                }
            }
        }
        return;
    }
    let kernel = Kernel::select();
    let a = View {
        ptr: lhs.as_ptr(),
        rs: lhs_rs,
        cs: lhs_cs,
    };
    let b = View {
        ptr: rhs.as_ptr(),
        rs: rhs_rs,
        cs: rhs_cs,
    };
    let c = Out {
        ptr: dst.as_mut_ptr(),
        rs: dst_rs,
        cs: dst_cs,
    };
    let threads = if parallel {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    // Row blocks: a multiple of the thread count when there is more than one.
    let mut m_blocks = m.div_ceil(MC_MAX);
    if threads > 1 && m_blocks > 1 {
        m_blocks = m_blocks.div_ceil(threads) * threads;
    }
    let mc = m.div_ceil(m_blocks).div_ceil(MR) * MR;
    let m_blocks = m.div_ceil(mc);
    // Columns of `B` packed at once: all of the shared dimension for each, within the budget.
    let nc_max = NC.min((B_BUDGET / k).max(NR) / NR * NR);
    for jc in (0..n).step_by(nc_max) {
        let nc = nc_max.min(n - jc);
        let panels = nc.div_ceil(NR);
        // Column ranges per row block: enough tasks for every thread.
        let n_splits = if threads > 1 {
            (2 * threads).div_ceil(m_blocks).min(panels)
        } else {
            1
        };
        let panels_per_split = panels.div_ceil(n_splits);
        let n_splits = panels.div_ceil(panels_per_split);
        with_buffer(&B_PACK, k * panels * NR, |bp| {
            // Slice `pc..pc + kc` of the shared dimension starts at `pc * panels * NR`.
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                let slice = &mut bp[pc * panels * NR..][..kc * panels * NR];
                // SAFETY: the caller guarantees the view of `B` is in bounds.
                let pack = |(p, panel): (usize, &mut [f32])| unsafe {
                    pack_b(b, pc, kc, jc + p * NR, NR.min(nc - p * NR), panel)
                };
                if threads > 1 && panels >= 4 {
                    slice.par_chunks_mut(kc * NR).enumerate().for_each(pack);
                } else {
                    slice.chunks_mut(kc * NR).enumerate().for_each(pack);
                }
            }
            let bp: &[f32] = bp;
            // One task: a block of rows of `C` over a range of column panels, through every
            // slice of the shared dimension (its block of `C` stays in this core's cache).
            let task = |t: usize| {
                let (ib, split) = (t / n_splits, t % n_splits);
                let i0 = ib * mc;
                let rows = mc.min(m - i0);
                let p0 = split * panels_per_split;
                let p1 = panels.min(p0 + panels_per_split);
                let row_panels = rows.div_ceil(MR);
                with_buffer(&A_PACK, row_panels * KC.min(k) * MR, |ap| {
                    for pc in (0..k).step_by(KC) {
                        let kc = KC.min(k - pc);
                        let ap = &mut ap[..row_panels * kc * MR];
                        let slice = &bp[pc * panels * NR..][..kc * panels * NR];
                        let accumulate = read_dst || pc > 0;
                        // SAFETY: bounds as above; tasks write disjoint tiles of `C`.
                        unsafe {
                            // Row-major `A` is read in place (six rows streaming, whole row
                            // panels only); other layouts, and a last partial panel, are packed
                            // (a column-major `A` read in place would touch a new page per step).
                            let in_place = a.cs == 1;
                            if in_place {
                                if !rows.is_multiple_of(MR) {
                                    let q = rows / MR;
                                    pack_a(
                                        a,
                                        i0 + q * MR,
                                        rows - q * MR,
                                        pc,
                                        kc,
                                        &mut ap[..kc * MR],
                                    );
                                }
                            } else {
                                pack_a(a, i0, rows, pc, kc, ap);
                            }
                            for p in p0..p1 {
                                let j = jc + p * NR;
                                let cols = NR.min(n - j);
                                let bpanel = slice[p * kc * NR..][..kc * NR].as_ptr();
                                for q in 0..row_panels {
                                    let i = i0 + q * MR;
                                    let tile_rows = MR.min(m - i);
                                    let apanel = if in_place && tile_rows == MR {
                                        View {
                                            ptr: a.ptr.add(i * a.rs + pc * a.cs),
                                            ..a
                                        }
                                    } else {
                                        let panel = if in_place { 0 } else { q };
                                        View {
                                            ptr: ap[panel * kc * MR..].as_ptr(),
                                            rs: 1,
                                            cs: MR,
                                        }
                                    };
                                    tile(
                                        kernel,
                                        kc,
                                        apanel,
                                        bpanel,
                                        c,
                                        (i, j),
                                        (tile_rows, cols),
                                        accumulate,
                                    );
                                }
                            }
                        }
                    }
                })
            };
            let tasks = m_blocks * n_splits;
            if threads > 1 && tasks > 1 {
                (0..tasks).into_par_iter().for_each(task);
            } else {
                (0..tasks).for_each(task);
            }
        });
    }
}

/// Packs rows `i0..i0 + rows` of `A`, depth `pc..pc + kc`, into panels of `[kc][MR]`.
///
/// # Safety
/// The rows and depth must lie inside `A`'s view.
unsafe fn pack_a(a: View, i0: usize, rows: usize, pc: usize, kc: usize, out: &mut [f32]) {
    let panels = rows.div_ceil(MR);
    // SAFETY (both branches): `i0 + r < i0 + rows` and `pc + kk < pc + kc`, inside the view.
    if a.cs == 1 {
        // Row-major: each row is read once, left to right.
        for (q, panel) in out.chunks_mut(kc * MR).enumerate().take(panels) {
            let r0 = i0 + q * MR;
            let live = MR.min(i0 + rows - r0);
            for r in 0..MR {
                if r < live {
                    let row =
                        unsafe { std::slice::from_raw_parts(a.ptr.add((r0 + r) * a.rs + pc), kc) };
                    for (kk, &v) in row.iter().enumerate() {
                        panel[kk * MR + r] = v;
                    }
                } else {
                    for kk in 0..kc {
                        panel[kk * MR + r] = 0.0;
                    }
                }
            }
        }
    } else {
        // Otherwise one step of the shared dimension at a time, across every row (a column of
        // a column-major `A` is contiguous).
        let full = rows / MR;
        for kk in 0..kc {
            let col = unsafe { a.ptr.add((pc + kk) * a.cs + i0 * a.rs) };
            let mut q0 = 0;
            if a.rs == 1 {
                // Column-major: whole panels are six contiguous floats.
                let src = unsafe { std::slice::from_raw_parts(col, full * MR) };
                for (q, src) in src.chunks_exact(MR).enumerate() {
                    out[q * kc * MR + kk * MR..][..MR].copy_from_slice(src);
                }
                q0 = full;
            }
            for q in q0..panels {
                let dst = &mut out[q * kc * MR + kk * MR..][..MR];
                let live = MR.min(rows - q * MR);
                for (r, d) in dst.iter_mut().enumerate() {
                    *d = if r < live {
                        unsafe { *col.add((q * MR + r) * a.rs) }
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Packs columns `j0..j0 + cols` of `B` (`cols <= NR`), depth `pc..pc + kc`, into `[kc][NR]`.
///
/// # Safety
/// The columns and depth must lie inside `B`'s view.
unsafe fn pack_b(b: View, pc: usize, kc: usize, j0: usize, cols: usize, panel: &mut [f32]) {
    // SAFETY: `j0 + j < j0 + cols` and `pc + kk < pc + kc`, inside the view.
    unsafe {
        if b.cs == 1 {
            for kk in 0..kc {
                let row = b.ptr.add((pc + kk) * b.rs + j0);
                let dst = &mut panel[kk * NR..][..NR];
                if cols == NR {
                    dst.copy_from_slice(std::slice::from_raw_parts(row, NR));
                } else {
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = if j < cols { *row.add(j) } else { 0.0 };
                    }
                }
            }
        } else {
            for j in 0..NR {
                if j < cols {
                    let col = b.ptr.add((j0 + j) * b.cs + pc * b.rs);
                    for kk in 0..kc {
                        panel[kk * NR + j] = *col.add(kk * b.rs);
                    }
                } else {
                    for kk in 0..kc {
                        panel[kk * NR + j] = 0.0;
                    }
                }
            }
        }
    }
}

/// One `rows x cols` tile of `C` at `(i, j)` from `MR` rows of `A` (`a`: the first element,
/// its strides) and a packed `B` panel.
///
/// # Safety
/// The tile must lie inside `C`'s view, and no other thread may write it; `a` must cover `MR`
/// rows and `kc` columns, `bpanel` `kc * NR` floats.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile(
    kernel: Kernel,
    kc: usize,
    a: View,
    bpanel: *const f32,
    c: Out,
    (i, j): (usize, usize),
    (rows, cols): (usize, usize),
    accumulate: bool,
) {
    // SAFETY: the tile is inside the view (caller).
    let at = unsafe { c.ptr.add(i * c.rs + j * c.cs) };
    let full = rows == MR && cols == NR && c.cs == 1;
    let mut scratch = [0.0f32; MR * NR];
    let (out, rs, acc) = if full {
        (at, c.rs, accumulate)
    } else {
        (scratch.as_mut_ptr(), NR, false)
    };
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2` is chosen only when the CPU has AVX2 and FMA; the operands hold `kc`
        // steps; `out` covers a full tile.
        Kernel::Avx2 => unsafe { avx2::micro(kc, a, bpanel, out, rs, acc) },
        // SAFETY: as above.
        Kernel::Portable => unsafe { micro_portable(kc, a, bpanel, out, rs, acc) },
    }
    if !full {
        for r in 0..rows {
            for col in 0..cols {
                // SAFETY: `r < rows`, `col < cols`: inside the tile.
                unsafe {
                    let d = at.add(r * c.rs + col * c.cs);
                    let v = scratch[r * NR + col];
                    *d = if accumulate { *d + v } else { v };
                }
            }
        }
    }
}

/// The portable register tile: the compiler vectorises the 16-wide rows.
///
/// # Safety
/// `a` must cover `MR` rows and `kc` columns, `b` `kc * NR` floats; `out` must cover `MR` rows
/// of `NR` floats at row stride `rs`.
unsafe fn micro_portable(
    kc: usize,
    a: View,
    b: *const f32,
    out: *mut f32,
    rs: usize,
    accumulate: bool,
) {
    let mut acc = [[0.0f32; NR]; MR];
    for kk in 0..kc {
        // SAFETY: `kk < kc`, inside both operands (caller).
        let bv = unsafe { std::slice::from_raw_parts(b.add(kk * NR), NR) };
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: as above, `r < MR`.
            let x = unsafe { *a.ptr.add(r * a.rs + kk * a.cs) };
            for (c, &y) in row.iter_mut().zip(bv) {
                *c += x * y;
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: `r < MR`; the caller guarantees `NR` floats per row.
        let dst = unsafe { std::slice::from_raw_parts_mut(out.add(r * rs), NR) };
        if accumulate {
            for (d, v) in dst.iter_mut().zip(row) {
                *d += v;
            }
        } else {
            dst.copy_from_slice(row);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR, View};
    use std::arch::x86_64::*;

    /// The `6 x 16` tile in twelve registers; `k` unrolled by four.
    ///
    /// # Safety
    /// AVX2 + FMA; `a` covers `MR` rows and `kc` columns, `b` holds `kc * NR` floats; `out`
    /// covers `MR` rows of `NR` floats at row stride `rs`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn micro(
        kc: usize,
        a: View,
        b: *const f32,
        out: *mut f32,
        rs: usize,
        accumulate: bool,
    ) {
        // SAFETY: every pointer offset stays within the sizes stated above.
        unsafe {
            // The tile of `C` is written at the end: start bringing it in now.
            for r in 0..MR {
                _mm_prefetch::<_MM_HINT_T0>(out.add(r * rs) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(out.add(r * rs + NR - 1) as *const i8);
            }
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            let (ars, acs) = (a.rs, a.cs);
            let rows = [0, ars, 2 * ars, 3 * ars, 4 * ars, 5 * ars];
            let (mut a, mut b) = (a.ptr, b);
            #[inline(always)]
            unsafe fn step(
                a: *const f32,
                rows: &[usize; MR],
                b: *const f32,
                acc: &mut [[__m256; 2]; MR],
            ) {
                // SAFETY: the caller keeps `a` and `b` inside their operands.
                unsafe {
                    let b0 = _mm256_loadu_ps(b);
                    let b1 = _mm256_loadu_ps(b.add(8));
                    for (acc, &row) in acc.iter_mut().zip(rows) {
                        let x = _mm256_broadcast_ss(&*a.add(row));
                        acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
                        acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
                    }
                }
            }
            for _ in 0..kc / 4 {
                // `A` streams from the second-level cache: ask for it early.
                _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(16 * acs) as *const i8);
                step(a, &rows, b, &mut acc);
                step(a.add(acs), &rows, b.add(NR), &mut acc);
                step(a.add(2 * acs), &rows, b.add(2 * NR), &mut acc);
                step(a.add(3 * acs), &rows, b.add(3 * NR), &mut acc);
                a = a.add(4 * acs);
                b = b.add(4 * NR);
            }
            for _ in 0..kc % 4 {
                step(a, &rows, b, &mut acc);
                a = a.add(acs);
                b = b.add(NR);
            }
            for (r, acc) in acc.iter().enumerate() {
                let row = out.add(r * rs);
                if accumulate {
                    _mm256_storeu_ps(row, _mm256_add_ps(_mm256_loadu_ps(row), acc[0]));
                    _mm256_storeu_ps(
                        row.add(8),
                        _mm256_add_ps(_mm256_loadu_ps(row.add(8)), acc[1]),
                    );
                } else {
                    _mm256_storeu_ps(row, acc[0]);
                    _mm256_storeu_ps(row.add(8), acc[1]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `C (+)= A B` in f64 on the same strided views.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        (m, n, k): (usize, usize, usize),
        dst: &[f32],
        (dst_rs, dst_cs): (usize, usize),
        read_dst: bool,
        lhs: &[f32],
        (lhs_rs, lhs_cs): (usize, usize),
        rhs: &[f32],
        (rhs_rs, rhs_cs): (usize, usize),
    ) -> Vec<f64> {
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let mut s = if read_dst {
                    dst[i * dst_rs + j * dst_cs] as f64
                } else {
                    0.0
                };
                for p in 0..k {
                    s += lhs[i * lhs_rs + p * lhs_cs] as f64 * rhs[p * rhs_rs + j * rhs_cs] as f64;
                }
                out.push(s);
            }
        }
        out
    }

    fn values(len: usize, salt: u64) -> Vec<f32> {
        crate::test_values::pseudo_random(len, salt)
    }

    /// Every shape class (1 row, 1 column, partial tiles, several depth slices and row blocks,
    /// more columns than one packed block), every layout of each operand (row-major,
    /// transposed, padded strides; `A` without a unit stride), overwriting and accumulating, one thread and all threads:
    /// within 1e-5 of the f64 product relative to its magnitude.
    #[test]
    fn matches_f64_reference_on_every_layout() {
        let shapes = [
            (1, 1, 1),
            (1, 37, 5),
            (29, 1, 300),
            (7, 17, 3),
            (6, 16, 256),
            (13, 33, 257),
            (150, 70, 600),
            (300, 48, 64),
            (5, 4100, 9),
        ];
        for &(m, n, k) in &shapes {
            // Layouts 4 and 5: `A` with no unit stride (every other column), which is packed.
            for layout in 0..6usize {
                let (a_t, b_t) = (layout & 1 == 1, layout & 2 == 2);
                // Padded leading dimensions (+3) so strides differ from the widths.
                let (lhs_rs, lhs_cs) = if layout >= 4 {
                    (2 * k + 3, 2)
                } else if a_t {
                    (1, m + 3)
                } else {
                    (k + 3, 1)
                };
                let (rhs_rs, rhs_cs) = if b_t { (1, k + 3) } else { (n + 3, 1) };
                let lhs = values(2 * (m.max(k) + 3) * (m.max(k) + 3), 1);
                let rhs = values((n.max(k) + 3) * (n.max(k) + 3), 2);
                for (read_dst, parallel, dst_t) in [
                    (false, true, false),
                    (true, true, false),
                    (true, false, true),
                    (false, false, false),
                ] {
                    let (dst_rs, dst_cs) = if dst_t { (1, m + 1) } else { (n + 2, 1) };
                    let mut dst = values((m + 2) * (n + 2), 3);
                    let want = reference(
                        (m, n, k),
                        &dst,
                        (dst_rs, dst_cs),
                        read_dst,
                        &lhs,
                        (lhs_rs, lhs_cs),
                        &rhs,
                        (rhs_rs, rhs_cs),
                    );
                    let before = dst.clone();
                    // SAFETY: every view lies inside its buffer (padded sizes above).
                    unsafe {
                        sgemm(
                            (m, n, k),
                            &mut dst,
                            (dst_rs, dst_cs),
                            read_dst,
                            &lhs,
                            (lhs_rs, lhs_cs),
                            &rhs,
                            (rhs_rs, rhs_cs),
                            parallel,
                        );
                    }
                    let scale = want.iter().fold(1.0f64, |s, v| s.max(v.abs()));
                    let mut touched = vec![false; dst.len()];
                    for i in 0..m {
                        for j in 0..n {
                            let at = i * dst_rs + j * dst_cs;
                            touched[at] = true;
                            let d = (dst[at] as f64 - want[i * n + j]).abs();
                            assert!(
                                d <= 1e-5 * scale,
                                "{m}x{n}x{k} layout {layout} read {read_dst} par {parallel} \
                                 dst_t {dst_t}: ({i}, {j}) off by {d} (scale {scale})"
                            );
                        }
                    }
                    for (at, (&a, &b)) in dst.iter().zip(&before).enumerate() {
                        assert!(
                            touched[at] || a.to_bits() == b.to_bits(),
                            "{m}x{n}x{k}: wrote outside the view at {at}"
                        );
                    }
                }
            }
        }
    }

    /// Zero depth: overwriting leaves zeros, accumulating leaves `C` alone.
    #[test]
    fn zero_depth() {
        let mut dst = vec![1.0f32; 6];
        // SAFETY: the views are in bounds (nothing of lhs/rhs is read).
        unsafe {
            sgemm(
                (2, 3, 0),
                &mut dst,
                (3, 1),
                true,
                &[],
                (0, 1),
                &[],
                (3, 1),
                true,
            );
        }
        assert_eq!(dst, vec![1.0; 6]);
        unsafe {
            sgemm(
                (2, 3, 0),
                &mut dst,
                (3, 1),
                false,
                &[],
                (0, 1),
                &[],
                (3, 1),
                true,
            );
        }
        assert_eq!(dst, vec![0.0; 6]);
    }

    /// The kernel the tests above ran is the one this CPU and `LMFORGE_KERNELS` select.
    #[test]
    fn dispatch_follows_the_switch() {
        let forced_portable = std::env::var("LMFORGE_KERNELS").as_deref() == Ok("portable");
        if forced_portable {
            assert_eq!(Kernel::select(), Kernel::Portable);
        }
        #[cfg(target_arch = "x86_64")]
        if !forced_portable
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            assert_eq!(Kernel::select(), Kernel::Avx2);
        }
    }
}
