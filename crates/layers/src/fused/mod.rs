//! Fused kernels for burn's `flex` CPU backend (this crate's `flex` feature).
//!
//! Composed tensor code records one autodiff operation per elementwise step, and flex runs each
//! of them as a separate pass over memory on one thread. The kernels here compute a whole
//! function (an activation with its derivative, an LSTM recurrence) in one pass, spread over
//! rayon's threads, with a hand-written backward pass registered as a single autodiff node.
//!
//! Every entry point returns `None` unless its tensors are `f32` tensors on flex (with or without
//! autodiff); callers then run the composed ops, which compute the same function. Tests compare
//! the two paths value for value and gradient for gradient.

pub(crate) mod activation;
pub(crate) mod adamw;
pub(crate) mod affine;
pub(crate) mod attention;
pub(crate) mod cross_entropy;
pub(crate) mod gemm;
pub(crate) mod layer_norm;
pub(crate) mod linear;
pub(crate) mod math;
pub(crate) mod packed;
#[cfg(test)]
pub(crate) mod test_support;

use core::mem::MaybeUninit;

use burn::tensor::{DType, Shape, TensorData};
use burn_flex::FlexTensor;

/// `tensor` with a contiguous row-major layout (no copy when it already has one).
pub(crate) fn contiguous(tensor: FlexTensor) -> FlexTensor {
    if tensor.as_slice::<f32>().is_some() {
        tensor
    } else {
        tensor.to_contiguous()
    }
}

/// A contiguous `f32` tensor the caller may overwrite in place: `tensor` itself when it is the
/// only holder of its buffer and laid out over the whole of it in order (so
/// [`FlexTensor::try_storage_mut`] gives exactly its values), else a contiguous copy.
pub(crate) fn writable(mut tensor: FlexTensor) -> FlexTensor {
    let n = tensor.layout().num_elements();
    let in_place = tensor.dtype() == DType::F32
        && tensor.layout().contiguous_offsets() == Some((0, n))
        && tensor
            .try_storage_mut::<f32>()
            .is_some_and(|s| s.len() == n);
    if in_place {
        return tensor;
    }
    let shape = tensor.layout().shape().clone();
    flex_tensor(slice(&contiguous(tensor)).to_vec(), shape)
}

/// The values of a contiguous `f32` tensor.
///
/// # Panics
/// When the tensor is not contiguous or not `f32` (callers check the dtype first).
pub(crate) fn slice(tensor: &FlexTensor) -> &[f32] {
    tensor
        .as_slice::<f32>()
        .expect("fused kernels read contiguous f32 buffers")
}

/// A flex tensor owning `data`, row-major with `shape`.
pub(crate) fn flex_tensor(data: Vec<f32>, shape: impl Into<Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

/// `dst = (read_dst ? dst : 0) + lhs * rhs` on strided row-major views (`*_rs`: row stride,
/// `*_cs`: column stride), `[m, k] x [k, n]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
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
    check_views(
        (m, n, k),
        Some((dst.len(), (dst_rs, dst_cs))),
        lhs,
        (lhs_rs, lhs_cs),
        rhs,
        (rhs_rs, rhs_cs),
    );
    if !own_matmul() {
        let parallelism = if parallel {
            ::gemm::Parallelism::Rayon(0)
        } else {
            ::gemm::Parallelism::None
        };
        // SAFETY: the three views were bounds-checked above; `dst` is borrowed mutably, so it
        // aliases neither input.
        unsafe {
            ::gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                dst_cs as isize,
                dst_rs as isize,
                read_dst,
                lhs.as_ptr(),
                lhs_cs as isize,
                lhs_rs as isize,
                rhs.as_ptr(),
                rhs_cs as isize,
                rhs_rs as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                parallelism,
            );
        }
        return;
    }
    // SAFETY: the three views were bounds-checked above; `dst` is borrowed mutably, so it
    // aliases neither input.
    unsafe {
        gemm::sgemm(
            (m, n, k),
            dst,
            (dst_rs, dst_cs),
            read_dst,
            lhs,
            (lhs_rs, lhs_cs),
            rhs,
            (rhs_rs, rhs_cs),
            parallel,
        );
    }
}

/// Panics unless every view of a product lies inside its slice (`dst`: its length and strides).
fn check_views(
    (m, n, k): (usize, usize, usize),
    dst: Option<(usize, (usize, usize))>,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * rs + (cols - 1) * cs + 1
        }
    };
    if let Some((len, (dst_rs, dst_cs))) = dst {
        assert!(
            len >= last(m, dst_rs, n, dst_cs),
            "fused matmul: dst view out of bounds"
        );
    }
    assert!(
        lhs.len() >= last(m, lhs_rs, k, lhs_cs),
        "fused matmul: lhs view out of bounds"
    );
    assert!(
        rhs.len() >= last(k, rhs_rs, n, rhs_cs),
        "fused matmul: rhs view out of bounds"
    );
}

/// `lhs * rhs` (`[m, k] x [k, n]`, strided views) into a new row-major `[m, n]` buffer through
/// lmforge's product on rayon's threads. The buffer is not zero-filled first: the product
/// writes every element once before reading any (a training step's products would otherwise
/// spend a pass over memory on zeros).
///
/// # Panics
/// When a view reaches past the end of its slice.
pub(crate) fn matmul_new(
    (m, n, k): (usize, usize, usize),
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    matmul_uninit(
        (m, n, k),
        &mut out.spare_capacity_mut()[..m * n],
        (n, 1),
        lhs,
        lhs_strides,
        rhs,
        rhs_strides,
        true,
    );
    // SAFETY: the product wrote its whole `[m, n]` view, which is the whole buffer.
    unsafe { out.set_len(m * n) };
    out
}

/// `dst = lhs * rhs` into uninitialised memory: afterwards every element of `dst`'s
/// `[m, n]` view is initialised (elements outside the view are left as they were).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_uninit(
    (m, n, k): (usize, usize, usize),
    dst: &mut [MaybeUninit<f32>],
    dst_strides: (usize, usize),
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    parallel: bool,
) {
    check_views(
        (m, n, k),
        Some((dst.len(), dst_strides)),
        lhs,
        lhs_strides,
        rhs,
        rhs_strides,
    );
    // SAFETY: the views were bounds-checked above; `dst` is borrowed mutably, so it aliases
    // neither input; without `read_dst` the product writes its view before reading it.
    unsafe {
        gemm::sgemm_ptr(
            (m, n, k),
            dst.as_mut_ptr().cast::<f32>(),
            dst_strides,
            false,
            lhs,
            lhs_strides,
            rhs,
            rhs_strides,
            parallel,
        );
    }
}

/// `memory` as the floats it now holds.
///
/// # Safety
/// Every element must have been written.
pub(crate) unsafe fn assume_init(memory: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout; every element is initialised (caller).
    unsafe { &mut *(memory as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// Whether lmforge's own matrix product runs ([`gemm`]): yes, unless the environment variable
/// `LMFORGE_MATMUL=gemm-crate` asks for the previous path (the `gemm` crate in the fused
/// kernels, burn's composed ops for the linear layers), for side-by-side measurements.
pub(crate) fn own_matmul() -> bool {
    static OWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| std::env::var("LMFORGE_MATMUL").as_deref() != Ok("gemm-crate"))
}
