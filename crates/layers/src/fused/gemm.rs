//! lmforge's single-precision matrix product: `C (+)= A B` on strided views, cache-blocked,
//! with a register-tiled micro-kernel and both cores on one product.
//!
//! The layout follows the classic blocked scheme. For each block of `NC` columns of `B`, the
//! shared dimension of `B` is packed into panels of `NR` columns (`[kc][NR]` per slice of at
//! most the tile's `KC`, equal slices, zero-padded), shared by every thread: all of it at once
//! when it stays within 1 MiB, else one slice at a time, consumed while it is still in cache.
//! The rows of `A` are cut into blocks of whole row panels, at most `MC_MAX` rows, balanced
//! between the threads; each task walks its block over every column panel of its range, and
//! each column panel through every slice: one `B` panel stays in the first-level cache while
//! the rows of `A` stream from the second, and the task's tiles of `C` are summed while still
//! in cache. Row-major `A` is read in place; other layouts are packed into panels of `MR` rows
//! (`[kc][MR]`). Tasks are (row block, column range) pairs, sized so both threads get the same
//! share. That row split serves products with a narrow `B` (at most 256 columns per thread);
//! a wider `B` is split by columns instead: each thread packs its own panels, in groups of at
//! most 1 MiB per slice that stay in its second-level cache while every row of `A` passes over
//! them, and meets the other thread only at the end. (Sharing packed panels between the cores
//! cost 5-10% at these sizes: half of them are read from the other core's cache.)
//!
//! The micro-kernel is chosen at run time: a `12 x 32` tile of `C` in twenty-four 16-lane
//! registers (AVX-512), a `6 x 16` tile in twelve 8-lane registers (AVX2 + FMA), or, on other
//! CPUs or with `LMFORGE_KERNELS=portable`, the same blocking with a portable `6 x 16` tile
//! that the compiler vectorises for the baseline target (`LMFORGE_KERNELS=avx2` caps it at
//! AVX2). Packing buffers are kept per thread and reused across calls, so a training step does
//! not return them to the system.

use std::cell::RefCell;

use rayon::prelude::*;

/// Most rows of any register tile (sizes the scratch tile).
const MR_MAX: usize = 12;
/// Most columns of any register tile.
const NR_MAX: usize = 32;
/// Most rows of `A` in one block (`MC_MAX x 256` floats: 144 KiB, at the smallest tile's
/// `KC`), a multiple of every `MR`.
const MC_MAX: usize = 144;
/// Most columns of `B` packed at once.
const NC: usize = 4096;
/// Most floats of `B` packed at once (8 MiB: the whole shared dimension of `NC` columns or
/// fewer, read by every task from the last-level cache).
const B_BUDGET: usize = 1 << 21;
/// Most floats of packed `B` (1 MiB) packed in one round before the tasks consume them; more
/// is packed and consumed one slice of the shared dimension at a time, so each slice is read
/// back while it is still in cache (a weight gradient's 8 MiB `B` had been packed whole, then
/// read back from memory).
const B_RESIDENT: usize = 1 << 18;
/// Fewest columns of `C` per thread for a product to be split by columns.
const COLUMN_SPLIT_MIN: usize = 256;

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
    /// `12 x 32` tile in twenty-four 16-lane registers.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// `6 x 16` tile in twelve 8-lane registers.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// `6 x 16` tile the compiler vectorises for the baseline target.
    Portable,
}

impl Kernel {
    fn select() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if super::math::wide_simd_512() {
                return Kernel::Avx512;
            }
            if super::math::wide_simd() {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }
}

/// A register tile: its shape and the micro-kernel that computes it.
trait Tile {
    /// Rows of the tile.
    const MR: usize;
    /// Columns of the tile.
    const NR: usize;
    /// Most depth of one packed slice of `B`.
    const KC: usize = 256;
    /// `out (+)= a b` for one `MR x NR` tile over `kc` steps of the shared dimension.
    ///
    /// # Safety
    /// The CPU has the tile's instructions; `a` covers `MR` rows and `kc` columns, `b` holds
    /// `kc * NR` floats; `out` covers `MR` rows of `NR` floats at row stride `rs`.
    unsafe fn micro(kc: usize, a: View, b: *const f32, out: *mut f32, rs: usize, acc: bool);
    /// Packs rows `i0..i0 + rows` of `A`, depth `pc..pc + kc`, into panels of `[kc][MR]`.
    ///
    /// # Safety
    /// The CPU has the tile's instructions; the rows and depth lie inside `A`'s view.
    unsafe fn pack_a(a: View, i0: usize, rows: usize, pc: usize, kc: usize, out: &mut [f32]) {
        // SAFETY: forwarded from the caller.
        unsafe { pack_a(Self::MR, a, i0, rows, pc, kc, out) }
    }
    /// Packs columns `j0..j0 + cols` of `B` (`cols <= NR`), depth `pc..pc + kc`, into
    /// `[kc][NR]`.
    ///
    /// # Safety
    /// The CPU has the tile's instructions; the columns and depth lie inside `B`'s view.
    unsafe fn pack_b(b: View, pc: usize, kc: usize, j0: usize, cols: usize, panel: &mut [f32]) {
        // SAFETY: forwarded from the caller.
        unsafe { pack_b(Self::NR, b, pc, kc, j0, cols, panel) }
    }
}

/// The portable tile.
struct PortableTile;

impl Tile for PortableTile {
    const MR: usize = 6;
    const NR: usize = 16;
    unsafe fn micro(kc: usize, a: View, b: *const f32, out: *mut f32, rs: usize, acc: bool) {
        // SAFETY: forwarded from the caller.
        unsafe { micro_portable::<6, 16>(kc, a, b, out, rs, acc) }
    }
}

/// The AVX2 + FMA tile.
#[cfg(target_arch = "x86_64")]
struct Avx2Tile;

#[cfg(target_arch = "x86_64")]
impl Tile for Avx2Tile {
    const MR: usize = 6;
    const NR: usize = 16;
    unsafe fn micro(kc: usize, a: View, b: *const f32, out: *mut f32, rs: usize, acc: bool) {
        // SAFETY: forwarded from the caller (the CPU has AVX2 and FMA).
        unsafe { avx2::micro(kc, a, b, out, rs, acc) }
    }
    unsafe fn pack_a(a: View, i0: usize, rows: usize, pc: usize, kc: usize, out: &mut [f32]) {
        // SAFETY: forwarded from the caller (the CPU has AVX2 and FMA).
        unsafe { avx2::pack_a(a, i0, rows, pc, kc, out) }
    }
    unsafe fn pack_b(b: View, pc: usize, kc: usize, j0: usize, cols: usize, panel: &mut [f32]) {
        // SAFETY: forwarded from the caller (the CPU has AVX2 and FMA).
        unsafe { avx2::pack_b(b, pc, kc, j0, cols, panel) }
    }
}

/// The AVX-512 tile of `M` rows.
#[cfg(target_arch = "x86_64")]
struct Avx512Tile<const M: usize>;

#[cfg(target_arch = "x86_64")]
impl<const M: usize> Tile for Avx512Tile<M> {
    const MR: usize = M;
    const NR: usize = 32;
    /// A `B` panel of 384 steps is 48 KiB, the size of the first-level cache, so part of it
    /// streams from the second; measured against 256, a 384-deep product gains 3-5% (one
    /// slice instead of two) and no probed shape loses.
    const KC: usize = 384;
    unsafe fn micro(kc: usize, a: View, b: *const f32, out: *mut f32, rs: usize, acc: bool) {
        // SAFETY: forwarded from the caller (the CPU has AVX-512 F).
        unsafe { avx512::micro::<M>(kc, a, b, out, rs, acc) }
    }
    unsafe fn pack_a(a: View, i0: usize, rows: usize, pc: usize, kc: usize, out: &mut [f32]) {
        // SAFETY: forwarded from the caller (the CPU has AVX-512 F).
        unsafe { avx512::pack_a::<M>(a, i0, rows, pc, kc, out) }
    }
    unsafe fn pack_b(b: View, pc: usize, kc: usize, j0: usize, cols: usize, panel: &mut [f32]) {
        // SAFETY: forwarded from the caller (the CPU has AVX-512 F).
        unsafe { avx512::pack_b(b, pc, kc, j0, cols, panel) }
    }
}

/// `c = (accumulate ? c : 0) + a b` for `f32` matrices on strided views, through lmforge's
/// cache-blocked product on rayon's threads: the product lmforge's layers run on flex.
///
/// `a` is `[m, k]`, `b` is `[k, n]` and `c` is `[m, n]`; each `*_strides` pair is `(row stride,
/// column stride)` in elements, so a transposed operand is the same slice with its strides
/// swapped, and padded rows are a larger row stride. The micro-kernel is the widest the CPU
/// has: AVX-512, AVX2 + FMA, or portable code (`LMFORGE_KERNELS=avx2` caps it at AVX2,
/// `LMFORGE_KERNELS=portable` forces the portable one).
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
    shape: (usize, usize, usize),
    dst: &mut [f32],
    dst_strides: (usize, usize),
    read_dst: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    parallel: bool,
) {
    // SAFETY: forwarded from the caller; `dst` is an exclusive borrow.
    unsafe {
        sgemm_ptr(
            shape,
            dst.as_mut_ptr(),
            dst_strides,
            read_dst,
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            parallel,
        )
    }
}

/// [`sgemm`] into memory behind a pointer. Without `read_dst`, every element of the `[m, n]`
/// view is written once before any is read (the first slice of the shared dimension
/// overwrites, later ones add), so the memory may start uninitialized.
///
/// # Safety
/// As [`sgemm`]; `dst` must be valid for writes (and, with `read_dst`, reads) over the view,
/// and nothing else may access that memory during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_ptr(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
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
                    // SAFETY: inside the view (caller).
                    unsafe { dst.add(i * dst_rs + j * dst_cs).write(0.0) };
                }
            }
        }
        return;
    }
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
        ptr: dst,
        rs: dst_rs,
        cs: dst_cs,
    };
    let threads = if parallel {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    // SAFETY: the views are in bounds (caller); each tile's instructions are checked by
    // `Kernel::select`.
    unsafe {
        match Kernel::select() {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => blocked::<Avx512Tile<12>>((m, n, k), c, read_dst, a, b, threads),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => blocked::<Avx2Tile>((m, n, k), c, read_dst, a, b, threads),
            Kernel::Portable => blocked::<PortableTile>((m, n, k), c, read_dst, a, b, threads),
        }
    }
}

/// Columns per packed `B` panel of the micro-kernel the CPU runs (32 with AVX-512, 16
/// otherwise): the layout [`mul_panels`] reads.
pub(crate) fn panel_width() -> usize {
    match Kernel::select() {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => Avx512Tile::<12>::NR,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => Avx2Tile::NR,
        Kernel::Portable => PortableTile::NR,
    }
}

/// `c (+)= a b` on one thread for some column panels of a `B` packed ahead of time: panel `p`
/// is `[k][w]` at `b[p * k * w..]` (`w` = [`panel_width`], zero-padded past `n`) and fills
/// columns `p * w..` of the product, which `c` holds from column `first_col` on (the listed
/// panels start there or later). `a` is `m` rows of `k` floats at row stride `lda`, read in place
/// (a last partial tile of rows is packed). For products repeated with the same `B`, such as
/// a recurrent weight at every time step, split by panels across threads.
///
/// # Safety
/// `a` covers `m` rows of `k` floats at stride `lda`; `b` holds every listed panel; `c` covers
/// `m` rows at stride `ldc` and the listed panels' columns (less `first_col`, at most `n`); no
/// other thread writes them meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn mul_panels(
    (m, n, k): (usize, usize, usize),
    a: *const f32,
    lda: usize,
    b: *const f32,
    panels: &[std::ops::Range<usize>],
    (c, ldc, first_col): (*mut f32, usize, usize),
    accumulate: bool,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    macro_rules! with {
        ($tile:ty) => {
            mul_panels_with::<$tile>(
                (m, n, k),
                a,
                lda,
                b,
                panels,
                (c, ldc, first_col),
                accumulate,
            )
        };
    }
    // SAFETY: forwarded from the caller; each tile's instructions are checked by `select`.
    unsafe {
        match Kernel::select() {
            // Whole tiles of 8 rows rather than 12 and a partial one (a 16-row batch).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 if m % 12 != 0 && m % 8 == 0 => with!(Avx512Tile<8>),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => with!(Avx512Tile<12>),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => with!(Avx2Tile),
            Kernel::Portable => with!(PortableTile),
        }
    }
}

/// [`mul_panels`] with the register tile `T`.
///
/// # Safety
/// As [`mul_panels`]; the CPU has `T`'s instructions.
#[allow(clippy::too_many_arguments)]
unsafe fn mul_panels_with<T: Tile>(
    (m, n, k): (usize, usize, usize),
    a: *const f32,
    lda: usize,
    b: *const f32,
    panels: &[std::ops::Range<usize>],
    (c, ldc, first_col): (*mut f32, usize, usize),
    accumulate: bool,
) {
    let (mr, nr) = (T::MR, T::NR);
    let full = m / mr * mr;
    let a = View {
        ptr: a,
        rs: lda,
        cs: 1,
    };
    let c = Out {
        ptr: c,
        rs: ldc,
        cs: 1,
    };
    with_buffer(&A_PACK, k * mr, |rest| {
        // SAFETY (whole block): rows `0..m` and depth `0..k` of `a`, the listed panels of `b`
        // and their columns of `c` are inside the caller's views.
        unsafe {
            if full < m {
                T::pack_a(a, full, m - full, 0, k, rest);
            }
            for p in panels.iter().cloned().flatten() {
                let cols = nr.min(n - p * nr);
                let j = p * nr - first_col;
                let bpanel = b.add(p * k * nr);
                for i in (0..full).step_by(mr) {
                    let rows = View {
                        ptr: a.ptr.add(i * lda),
                        ..a
                    };
                    tile::<T>(k, rows, bpanel, c, (i, j), (mr, cols), accumulate);
                }
                if full < m {
                    let packed = View {
                        ptr: rest.as_ptr(),
                        rs: 1,
                        cs: mr,
                    };
                    tile::<T>(
                        k,
                        packed,
                        bpanel,
                        c,
                        (full, j),
                        (m - full, cols),
                        accumulate,
                    );
                }
            }
        }
    })
}

/// Depth of the slices a shared dimension of `k` is cut into for the tile `T`: as few slices
/// of at most `T::KC` as cover it, of equal depth rounded up to 16 steps (the in-place
/// kernel's unrolling), so `k = 1024` is three slices of 352 rather than 384, 384 and 256.
fn slice_depth<T: Tile>(k: usize) -> usize {
    k.div_ceil(k.div_ceil(T::KC))
        .next_multiple_of(16)
        .min(T::KC)
}

/// The blocked product with the register tile `T` (`m, n, k > 0`).
///
/// # Safety
/// As [`sgemm`]; the CPU has `T`'s instructions.
unsafe fn blocked<T: Tile>(
    (m, n, k): (usize, usize, usize),
    c: Out,
    read_dst: bool,
    a: View,
    b: View,
    threads: usize,
) {
    let (mr, nr) = (T::MR, T::NR);
    if threads > 1 && n >= COLUMN_SPLIT_MIN * threads {
        // SAFETY: forwarded from the caller.
        return unsafe { column_split::<T>((m, n, k), c, read_dst, a, b, threads) };
    }
    // Row blocks: a multiple of the thread count when there is more than one.
    let mut m_blocks = m.div_ceil(MC_MAX);
    if threads > 1 && m_blocks > 1 {
        m_blocks = m_blocks.div_ceil(threads) * threads;
    }
    // Blocks of whole row panels, their counts differing by at most one (so each thread's
    // share of the rows is the same to a panel).
    let row_panels_total = m.div_ceil(mr);
    let m_blocks = m_blocks.min(row_panels_total);
    let block_rows = |ib: usize| {
        let i0 = (ib * row_panels_total / m_blocks) * mr;
        let i1 = m.min(((ib + 1) * row_panels_total / m_blocks) * mr);
        (i0, i1 - i0)
    };
    // Columns of `B` packed at once: all of the shared dimension for each, within the budget.
    let nc_max = NC.min((B_BUDGET / k).max(nr) / nr * nr);
    // Blocks of equal width (whole panels), as few as the budget allows.
    let nc_max = n.div_ceil(n.div_ceil(nc_max)).next_multiple_of(nr);
    for jc in (0..n).step_by(nc_max) {
        let nc = nc_max.min(n - jc);
        let panels = nc.div_ceil(nr);
        // Column ranges per row block: enough tasks for every thread.
        let n_splits = if threads > 1 {
            (2 * threads).div_ceil(m_blocks).min(panels)
        } else {
            1
        };
        let panels_per_split = panels.div_ceil(n_splits);
        let n_splits = panels.div_ceil(panels_per_split);
        // Depth packed per round: all of it when the packed columns stay cache-sized, else one
        // slice at a time (packed, then consumed by every task while it is still in cache).
        let ks = slice_depth::<T>(k);
        let round = if k * panels * nr > B_RESIDENT { ks } else { k };
        for d0 in (0..k).step_by(round) {
            let depth = round.min(k - d0);
            with_buffer(&B_PACK, depth * panels * nr, |bp| {
                // Slice `pc..pc + kc` starts at `(pc - d0) * panels * nr`.
                for pc in (d0..d0 + depth).step_by(ks) {
                    let kc = ks.min(k - pc);
                    let slice = &mut bp[(pc - d0) * panels * nr..][..kc * panels * nr];
                    // SAFETY: the caller guarantees the view of `B` is in bounds.
                    let pack = |(p, panel): (usize, &mut [f32])| unsafe {
                        T::pack_b(b, pc, kc, jc + p * nr, nr.min(nc - p * nr), panel)
                    };
                    if threads > 1 && panels >= 4 {
                        slice.par_chunks_mut(kc * nr).enumerate().for_each(pack);
                    } else {
                        slice.chunks_mut(kc * nr).enumerate().for_each(pack);
                    }
                }
                let bp: &[f32] = bp;
                // One task: a block of rows of `C` over a range of column panels, through every
                // slice of the round (its block of `C` stays in this core's cache).
                let task = |t: usize| {
                    let (ib, split) = (t / n_splits, t % n_splits);
                    let (i0, rows) = block_rows(ib);
                    let p0 = split * panels_per_split;
                    let p1 = panels.min(p0 + panels_per_split);
                    let row_panels = rows.div_ceil(mr);
                    with_buffer(&A_PACK, row_panels * depth * mr, |ap| {
                        // SAFETY: bounds as above; tasks write disjoint tiles of `C`.
                        unsafe {
                            depth_block::<T>(
                                (m, n),
                                c,
                                a,
                                (i0, rows),
                                (d0, depth, ks),
                                (jc, p0, p1),
                                |pc, p| {
                                    let kc = ks.min(k - pc);
                                    bp[(pc - d0) * panels * nr + p * kc * nr..].as_ptr()
                                },
                                read_dst,
                                ap,
                            )
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
}

/// One task's share of a range of the shared dimension: rows `i0..i0 + rows` of `C` over
/// column panels `p0..p1` (panel `p` starts at column `jc + p * NR`), depth `d0..d0 + depth`
/// in slices of `ks`, with panel `p` of the slice at `pc` packed at `bpanel(pc, p)`. Each
/// column panel of the tile goes through every slice before the next one starts, so the
/// task's tiles of `C` are summed while they are still in cache. Row-major `A` is read in
/// place (whole row panels; a last partial panel is packed into `ap`), other layouts are
/// packed into `ap` (a column-major `A` read in place would touch a new page per step).
///
/// # Safety
/// The rows, columns and depth lie inside the views; no other thread writes these tiles of
/// `C`; `bpanel(pc, p)` holds `kc * NR` floats; `ap` holds `rows.div_ceil(MR) * depth * MR`
/// floats; the CPU has `T`'s instructions.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn depth_block<T: Tile>(
    (m, n): (usize, usize),
    c: Out,
    a: View,
    (i0, rows): (usize, usize),
    (d0, depth, ks): (usize, usize, usize),
    (jc, p0, p1): (usize, usize, usize),
    bpanel: impl Fn(usize, usize) -> *const f32,
    read_dst: bool,
    ap: &mut [f32],
) {
    let mr = T::MR;
    let row_panels = rows.div_ceil(mr);
    let in_place = a.cs == 1;
    let whole = rows / mr;
    // Packed `A` of the slice at `pc` starts at `(pc - d0) * packed * MR`, `packed` being the
    // number of row panels packed per slice (only the partial one when `A` is read in place).
    let packed = if in_place {
        row_panels - whole
    } else {
        row_panels
    };
    // SAFETY: forwarded from the caller.
    unsafe {
        for pc in (d0..d0 + depth).step_by(ks) {
            let kc = ks.min(d0 + depth - pc);
            let out = &mut ap[(pc - d0) * packed * mr..][..packed * kc * mr];
            if !in_place {
                T::pack_a(a, i0, rows, pc, kc, out);
            } else if packed > 0 {
                T::pack_a(a, i0 + whole * mr, rows - whole * mr, pc, kc, out);
            }
        }
        for p in p0..p1 {
            let j = jc + p * T::NR;
            let cols = T::NR.min(n - j);
            for pc in (d0..d0 + depth).step_by(ks) {
                let kc = ks.min(d0 + depth - pc);
                let bpanel = bpanel(pc, p);
                let slice_a = &ap[(pc - d0) * packed * mr..];
                for q in 0..row_panels {
                    let i = i0 + q * mr;
                    let tile_rows = mr.min(m - i);
                    let apanel = if in_place && q < whole {
                        View {
                            ptr: a.ptr.add(i * a.rs + pc * a.cs),
                            ..a
                        }
                    } else {
                        let panel = if in_place { q - whole } else { q };
                        View {
                            ptr: slice_a[panel * kc * mr..].as_ptr(),
                            rs: 1,
                            cs: mr,
                        }
                    };
                    let accumulate = read_dst || pc > 0;
                    tile::<T>(kc, apanel, bpanel, c, (i, j), (tile_rows, cols), accumulate);
                }
            }
        }
    }
}

/// The blocked product when `B` is wide: each thread takes a range of column panels and, a
/// group of them at a time (at most [`B_RESIDENT`] floats per slice), packs its own panels of
/// each slice of the shared dimension and multiplies every row of `A` by them. No packed panel
/// is shared, each group's slice stays in the thread's second-level cache while the row blocks
/// pass over it, and the threads meet only at the end.
///
/// # Safety
/// As [`blocked`].
unsafe fn column_split<T: Tile>(
    (m, n, k): (usize, usize, usize),
    c: Out,
    read_dst: bool,
    a: View,
    b: View,
    threads: usize,
) {
    let (mr, nr) = (T::MR, T::NR);
    let panels = n.div_ceil(nr);
    let per_thread = panels.div_ceil(threads);
    let mc = m.div_ceil(m.div_ceil(MC_MAX)).div_ceil(mr) * mr;
    let ks = slice_depth::<T>(k);
    // Panels packed at once: a group's slice stays in the second-level cache while every row
    // block passes over it.
    let group = (B_RESIDENT / (ks * nr)).max(1);
    let task = |t: usize| {
        let (p0, p1) = (t * per_thread, panels.min((t + 1) * per_thread));
        if p0 >= p1 {
            return;
        }
        // Groups of equal size.
        let group = (p1 - p0).div_ceil((p1 - p0).div_ceil(group));
        let own = group.min(p1 - p0);
        with_buffer(&B_PACK, ks * own * nr, |bp| {
            with_buffer(&A_PACK, mc.div_ceil(mr) * ks * mr, |ap| {
                for g0 in (p0..p1).step_by(group) {
                    let g1 = p1.min(g0 + group);
                    for pc in (0..k).step_by(ks) {
                        let kc = ks.min(k - pc);
                        for (q, panel) in bp.chunks_mut(kc * nr).take(g1 - g0).enumerate() {
                            let j = (g0 + q) * nr;
                            // SAFETY: the columns and depth lie inside `B`'s view (caller).
                            unsafe { T::pack_b(b, pc, kc, j, nr.min(n - j), panel) };
                        }
                        for i0 in (0..m).step_by(mc) {
                            let rows = mc.min(m - i0);
                            let bp: &[f32] = bp;
                            // SAFETY: bounds as above; threads write disjoint columns of `C`.
                            unsafe {
                                depth_block::<T>(
                                    (m, n),
                                    c,
                                    a,
                                    (i0, rows),
                                    (pc, kc, ks),
                                    (0, g0, g1),
                                    |_, p| bp[(p - g0) * kc * nr..].as_ptr(),
                                    read_dst || pc > 0,
                                    &mut ap[..rows.div_ceil(mr) * kc * mr],
                                )
                            }
                        }
                    }
                }
            })
        })
    };
    (0..threads).into_par_iter().for_each(task);
}

/// Packs rows `i0..i0 + rows` of `A`, depth `pc..pc + kc`, into panels of `[kc][mr]`. Inlined
/// into each tile's packing, so `mr` is a constant there and the copies compile to vector
/// moves of the tile's instruction set.
///
/// # Safety
/// The rows and depth must lie inside `A`'s view.
#[inline(always)]
unsafe fn pack_a(
    mr: usize,
    a: View,
    i0: usize,
    rows: usize,
    pc: usize,
    kc: usize,
    out: &mut [f32],
) {
    let panels = rows.div_ceil(mr);
    // SAFETY (both branches): `i0 + r < i0 + rows` and `pc + kk < pc + kc`, inside the view.
    if a.cs == 1 {
        // Row-major: each row is read once, left to right.
        for (q, panel) in out.chunks_mut(kc * mr).enumerate().take(panels) {
            let r0 = i0 + q * mr;
            let live = mr.min(i0 + rows - r0);
            for r in 0..mr {
                if r < live {
                    let row =
                        unsafe { std::slice::from_raw_parts(a.ptr.add((r0 + r) * a.rs + pc), kc) };
                    for (kk, &v) in row.iter().enumerate() {
                        panel[kk * mr + r] = v;
                    }
                } else {
                    for kk in 0..kc {
                        panel[kk * mr + r] = 0.0;
                    }
                }
            }
        }
    } else {
        // Otherwise one step of the shared dimension at a time, across every row (a column of
        // a column-major `A` is contiguous).
        let full = rows / mr;
        for kk in 0..kc {
            let col = unsafe { a.ptr.add((pc + kk) * a.cs + i0 * a.rs) };
            let mut q0 = 0;
            if a.rs == 1 {
                // Column-major: whole panels are `mr` contiguous floats.
                let src = unsafe { std::slice::from_raw_parts(col, full * mr) };
                for (q, src) in src.chunks_exact(mr).enumerate() {
                    out[q * kc * mr + kk * mr..][..mr].copy_from_slice(src);
                }
                q0 = full;
            }
            for q in q0..panels {
                let dst = &mut out[q * kc * mr + kk * mr..][..mr];
                let live = mr.min(rows - q * mr);
                for (r, d) in dst.iter_mut().enumerate() {
                    *d = if r < live {
                        unsafe { *col.add((q * mr + r) * a.rs) }
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Packs columns `j0..j0 + cols` of `B` (`cols <= nr`), depth `pc..pc + kc`, into `[kc][nr]`.
/// Inlined into each tile's packing, as [`pack_a`].
///
/// # Safety
/// The columns and depth must lie inside `B`'s view.
#[inline(always)]
unsafe fn pack_b(
    nr: usize,
    b: View,
    pc: usize,
    kc: usize,
    j0: usize,
    cols: usize,
    panel: &mut [f32],
) {
    // SAFETY: `j0 + j < j0 + cols` and `pc + kk < pc + kc`, inside the view.
    unsafe {
        if b.cs == 1 {
            for kk in 0..kc {
                let row = b.ptr.add((pc + kk) * b.rs + j0);
                let dst = &mut panel[kk * nr..][..nr];
                if cols == nr {
                    dst.copy_from_slice(std::slice::from_raw_parts(row, nr));
                } else {
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = if j < cols { *row.add(j) } else { 0.0 };
                    }
                }
            }
        } else {
            for j in 0..nr {
                if j < cols {
                    let col = b.ptr.add((j0 + j) * b.cs + pc * b.rs);
                    for kk in 0..kc {
                        panel[kk * nr + j] = *col.add(kk * b.rs);
                    }
                } else {
                    for kk in 0..kc {
                        panel[kk * nr + j] = 0.0;
                    }
                }
            }
        }
    }
}

/// One `rows x cols` tile of `C` at `(i, j)` from `T::MR` rows of `A` (`a`: the first element,
/// its strides) and a packed `B` panel.
///
/// # Safety
/// The tile must lie inside `C`'s view, and no other thread may write it; `a` must cover
/// `T::MR` rows and `kc` columns, `bpanel` `kc * T::NR` floats; the CPU has `T`'s instructions.
#[inline(always)]
unsafe fn tile<T: Tile>(
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
    if rows == T::MR && cols == T::NR && c.cs == 1 {
        // SAFETY: the operands hold `kc` steps; the tile of `C` is whole (caller).
        unsafe { T::micro(kc, a, bpanel, at, c.rs, accumulate) };
        return;
    }
    // A partial tile (or a strided `C`): computed whole into a scratch tile (which the
    // micro-kernel writes completely, so it starts uninitialised: zeroing 1.5 KiB per tile
    // was a visible share of short products), then copied out.
    let mut scratch = std::mem::MaybeUninit::<[f32; MR_MAX * NR_MAX]>::uninit();
    let tile = scratch.as_mut_ptr().cast::<f32>();
    // SAFETY: the operands hold `kc` steps; the scratch tile holds `MR x NR` floats.
    unsafe { T::micro(kc, a, bpanel, tile, T::NR, false) };
    for r in 0..rows {
        for col in 0..cols {
            // SAFETY: `r < rows`, `col < cols`: inside the tile of `C` and inside the part of
            // the scratch tile the micro-kernel wrote.
            unsafe {
                let d = at.add(r * c.rs + col * c.cs);
                let v = *tile.add(r * T::NR + col);
                *d = if accumulate { *d + v } else { v };
            }
        }
    }
}

/// The portable register tile: the compiler vectorises the `NR`-wide rows.
///
/// # Safety
/// `a` must cover `MR` rows and `kc` columns, `b` `kc * NR` floats; `out` must cover `MR` rows
/// of `NR` floats at row stride `rs`.
unsafe fn micro_portable<const MR: usize, const NR: usize>(
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
    use super::View;
    use std::arch::x86_64::*;

    const MR: usize = 6;
    const NR: usize = 16;

    /// [`super::pack_a`] for this tile, compiled for AVX2.
    ///
    /// # Safety
    /// As [`super::Tile::pack_a`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pack_a(
        a: View,
        i0: usize,
        rows: usize,
        pc: usize,
        kc: usize,
        out: &mut [f32],
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { super::pack_a(MR, a, i0, rows, pc, kc, out) }
    }

    /// [`super::pack_b`] for this tile, compiled for AVX2.
    ///
    /// # Safety
    /// As [`super::Tile::pack_b`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pack_b(
        b: View,
        pc: usize,
        kc: usize,
        j0: usize,
        cols: usize,
        panel: &mut [f32],
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { super::pack_b(NR, b, pc, kc, j0, cols, panel) }
    }

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

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::View;
    use std::arch::x86_64::*;

    const NR: usize = 32;
    /// Steps of the shared dimension a row-major `B` is prefetched ahead while it is packed.
    const PACK_AHEAD: usize = 32;

    /// [`super::pack_a`] for the `MR`-row tile, compiled for AVX-512.
    ///
    /// # Safety
    /// As [`super::Tile::pack_a`].
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn pack_a<const MR: usize>(
        a: View,
        i0: usize,
        rows: usize,
        pc: usize,
        kc: usize,
        out: &mut [f32],
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { super::pack_a(MR, a, i0, rows, pc, kc, out) }
    }

    /// Transposes the 16 x 16 block held in `r` (row `i` in `r[i]`) in place: 64 in-register
    /// shuffles (pairs of rows interleaved by 32 bits, then by 64 bits, then 128-bit lanes
    /// gathered twice).
    #[inline(always)]
    unsafe fn transpose16(r: &mut [__m512; 16]) {
        // SAFETY: register operations only (the caller's function enables AVX-512 F).
        unsafe {
            let mut t = [_mm512_setzero_ps(); 16];
            for i in 0..8 {
                t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            // u[4g + e], 128-bit lane l: element 4l + e of rows 4g..4g + 4.
            let mut u = [_mm512_setzero_ps(); 16];
            for g in 0..4 {
                let (lo0, hi0) = (_mm512_castps_pd(t[4 * g]), _mm512_castps_pd(t[4 * g + 1]));
                let (lo1, hi1) = (
                    _mm512_castps_pd(t[4 * g + 2]),
                    _mm512_castps_pd(t[4 * g + 3]),
                );
                u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo0, lo1));
                u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo0, lo1));
                u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi0, hi1));
                u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi0, hi1));
            }
            // Output row 4l + e: lane l of u[e], u[4 + e], u[8 + e], u[12 + e].
            for e in 0..4 {
                let v0 = _mm512_shuffle_f32x4::<0b01_00_01_00>(u[e], u[4 + e]);
                let v1 = _mm512_shuffle_f32x4::<0b11_10_11_10>(u[e], u[4 + e]);
                let w0 = _mm512_shuffle_f32x4::<0b01_00_01_00>(u[8 + e], u[12 + e]);
                let w1 = _mm512_shuffle_f32x4::<0b11_10_11_10>(u[8 + e], u[12 + e]);
                r[e] = _mm512_shuffle_f32x4::<0b10_00_10_00>(v0, w0);
                r[4 + e] = _mm512_shuffle_f32x4::<0b11_01_11_01>(v0, w0);
                r[8 + e] = _mm512_shuffle_f32x4::<0b10_00_10_00>(v1, w1);
                r[12 + e] = _mm512_shuffle_f32x4::<0b11_01_11_01>(v1, w1);
            }
        }
    }

    /// [`super::pack_b`] for the 32-column tile, compiled for AVX-512. A column-major `B`
    /// (unit row stride: the attention's `Kᵀ`, a linear layer's `Wᵀ` in the input gradient,
    /// tied output layers) is packed 16 columns by 16 steps at a time: sixteen contiguous
    /// loads down the columns, transposed in registers, sixteen stores along the panel.
    ///
    /// # Safety
    /// As [`super::Tile::pack_b`].
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn pack_b(
        b: View,
        pc: usize,
        kc: usize,
        j0: usize,
        cols: usize,
        panel: &mut [f32],
    ) {
        if b.cs == 1 && cols == NR {
            // Row-major: two vectors per step. Each step's columns lie in another page of a
            // wide `B`, where the hardware prefetchers do not follow: rows are asked for a few
            // steps ahead.
            assert!(panel.len() >= kc * NR);
            let out = panel.as_mut_ptr();
            // SAFETY: rows `pc + kk < pc + kc` and columns `j0..j0 + NR` lie inside the view
            // (caller); the stores stay inside the checked panel; prefetches never fault.
            unsafe {
                for kk in 0..kc {
                    let row = b.ptr.add((pc + kk) * b.rs + j0);
                    let ahead = row.wrapping_add(PACK_AHEAD * b.rs);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.cast::<i8>());
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(NR - 1).cast::<i8>());
                    _mm512_storeu_ps(out.add(kk * NR), _mm512_loadu_ps(row));
                    _mm512_storeu_ps(out.add(kk * NR + 16), _mm512_loadu_ps(row.add(16)));
                }
            }
            return;
        }
        if b.rs != 1 || b.cs == 1 {
            // SAFETY: forwarded from the caller.
            return unsafe { super::pack_b(NR, b, pc, kc, j0, cols, panel) };
        }
        let blocks = kc / 16;
        assert!(panel.len() >= kc * NR);
        let out = panel.as_mut_ptr();
        // SAFETY: column `j0 + c < j0 + cols` and depth `pc + kk < pc + kc` lie inside the
        // view (caller); stores stay inside the `kc * NR` panel (checked above).
        unsafe {
            for half in 0..NR / 16 {
                let c0 = half * 16;
                for block in 0..blocks {
                    let k0 = block * 16;
                    let mut r = [_mm512_setzero_ps(); 16];
                    for (c, r) in r.iter_mut().enumerate() {
                        if c0 + c < cols {
                            *r = _mm512_loadu_ps(b.ptr.add((j0 + c0 + c) * b.cs + pc + k0));
                        }
                    }
                    transpose16(&mut r);
                    for (q, r) in r.iter().enumerate() {
                        _mm512_storeu_ps(out.add((k0 + q) * NR + c0), *r);
                    }
                }
            }
            for kk in blocks * 16..kc {
                for j in 0..NR {
                    *out.add(kk * NR + j) = if j < cols {
                        *b.ptr.add((j0 + j) * b.cs + pc + kk)
                    } else {
                        0.0
                    };
                }
            }
        }
    }

    /// `acc[r] += a_r * b[0..32]` for the `MR` rows of one step, `a_r` read at `row(r)`.
    #[inline(always)]
    unsafe fn step<const MR: usize>(
        acc: &mut [[__m512; 2]; MR],
        b: *const f32,
        row: impl Fn(usize) -> *const f32,
    ) {
        // SAFETY: the caller keeps `b` and every `row(r)` inside their operands.
        unsafe {
            // An empty block that may touch memory: the compiler cannot hoist the next step's
            // loads above this step's FMAs, which had needed a 28th register and spilled one
            // accumulator to the stack at every step (seen in `perf annotate`; +2-3% without).
            std::arch::asm!("", options(nostack, preserves_flags));
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.add(16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*row(r));
                acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
            }
        }
    }

    /// An `MR x 32` tile in `2 MR` 16-lane registers. `A` is either read in place (unit column
    /// stride: the rows are addressed from one base per three rows, so a step needs no address
    /// arithmetic; `k` unrolled by 16, each row asked for two cache lines ahead once per 16
    /// steps) or packed (`[kc][MR]`: `k` unrolled by four).
    ///
    /// # Safety
    /// AVX-512 F; `a` covers `MR` rows and `kc` columns and has unit column stride, or is a
    /// packed `[kc][MR]` panel (unit row stride, column stride `MR`); `b` holds `kc * 32`
    /// floats; `out` covers `MR` rows of 32 floats at row stride `rs`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn micro<const MR: usize>(
        kc: usize,
        a: View,
        mut b: *const f32,
        out: *mut f32,
        rs: usize,
        accumulate: bool,
    ) {
        // SAFETY: every pointer offset stays within the sizes stated above (prefetches may
        // point past them, which is allowed: they never fault).
        unsafe {
            // The tile of `C` is written at the end: start bringing it in now.
            for r in 0..MR {
                let row = out.add(r * rs);
                _mm_prefetch::<_MM_HINT_T0>(row as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(row.add(16) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(row.add(NR - 1) as *const i8);
            }
            let mut acc = [[_mm512_setzero_ps(); 2]; MR];
            if a.cs == 1 {
                // Rows `3g`, `3g + 1`, `3g + 2` at `p[g]`, `p[g] + ars`, `p[g] + 2 ars`: one
                // base and one index register per three rows, the step in the displacement.
                let ars = a.rs;
                let mut p = [a.ptr; 5];
                for (g, p) in p.iter_mut().enumerate().take(MR.div_ceil(3)) {
                    *p = a.ptr.add(3 * g * ars);
                }
                macro_rules! at {
                    ($j:expr) => {
                        |r: usize| p[r / 3].add((r % 3) * ars + $j)
                    };
                }
                macro_rules! quad {
                    ($j:expr) => {
                        // A quarter of the rows asked for two cache lines ahead.
                        let quarter = MR.div_ceil(4);
                        for r in ($j / 4) * quarter..(($j / 4 + 1) * quarter).min(MR) {
                            _mm_prefetch::<_MM_HINT_T0>(
                                p[r / 3].wrapping_add((r % 3) * ars + 32).cast::<i8>(),
                            );
                        }
                        step(&mut acc, b.add($j * NR), at!($j));
                        step(&mut acc, b.add(($j + 1) * NR), at!($j + 1));
                        step(&mut acc, b.add(($j + 2) * NR), at!($j + 2));
                        step(&mut acc, b.add(($j + 3) * NR), at!($j + 3));
                    };
                }
                for _ in 0..kc / 16 {
                    quad!(0);
                    quad!(4);
                    quad!(8);
                    quad!(12);
                    for p in p.iter_mut() {
                        *p = p.wrapping_add(16);
                    }
                    b = b.add(16 * NR);
                }
                for j in 0..kc % 16 {
                    step(&mut acc, b.add(j * NR), at!(j));
                }
            } else {
                debug_assert!(a.rs == 1 && a.cs == MR);
                let mut ap = a.ptr;
                for _ in 0..kc / 4 {
                    // The three cache lines of `A` four iterations ahead.
                    for line in 0..3 {
                        _mm_prefetch::<_MM_HINT_T0>(
                            ap.wrapping_add(16 * MR + 16 * line).cast::<i8>(),
                        );
                    }
                    step(&mut acc, b, |r| ap.add(r));
                    step(&mut acc, b.add(NR), |r| ap.add(MR + r));
                    step(&mut acc, b.add(2 * NR), |r| ap.add(2 * MR + r));
                    step(&mut acc, b.add(3 * NR), |r| ap.add(3 * MR + r));
                    ap = ap.add(4 * MR);
                    b = b.add(4 * NR);
                }
                for j in 0..kc % 4 {
                    step(&mut acc, b.add(j * NR), |r| ap.add(j * MR + r));
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let row = out.add(r * rs);
                if accumulate {
                    _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), acc[0]));
                    _mm512_storeu_ps(
                        row.add(16),
                        _mm512_add_ps(_mm512_loadu_ps(row.add(16)), acc[1]),
                    );
                } else {
                    _mm512_storeu_ps(row, acc[0]);
                    _mm512_storeu_ps(row.add(16), acc[1]);
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
            // Wide and deep: split by columns between threads (two row blocks).
            (150, 600, 700),
            // Split by columns, each thread's panels in two groups, two slices deep.
            (20, 2100, 500),
            // Packed `B` past the resident budget: packed and consumed a slice at a time.
            (290, 100, 2100),
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
        let cap = std::env::var("LMFORGE_KERNELS").unwrap_or_default();
        if cap == "portable" {
            assert_eq!(Kernel::select(), Kernel::Portable);
        }
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            let avx512 = avx2 && has!("avx512f") && has!("avx512bw");
            if cap != "portable" && avx2 {
                let want = if avx512 && cap != "avx2" {
                    Kernel::Avx512
                } else {
                    Kernel::Avx2
                };
                assert_eq!(Kernel::select(), want);
            }
        }
    }
}
