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
pub(crate) mod math;

use burn::tensor::{Shape, TensorData};
use burn_flex::FlexTensor;

/// `tensor` with a contiguous row-major layout (no copy when it already has one).
pub(crate) fn contiguous(tensor: FlexTensor) -> FlexTensor {
    if tensor.as_slice::<f32>().is_some() {
        tensor
    } else {
        tensor.to_contiguous()
    }
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
