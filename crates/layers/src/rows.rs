//! Linear layers applied to every position as one matrix product.

use burn::nn::Linear;
use burn::tensor::Tensor;

/// `linear.forward(x)` with the leading dimensions of `x` folded into rows: one
/// `[rows, d_input] x [d_input, d_output]` product. burn's `Linear` on a `[batch, seq, d]` input
/// runs a batched product, one per batch entry; folded, the weight is read (and packed by CPU
/// backends) once and the threads share all rows. The result is the same function.
///
/// # Shapes
/// - `x`: `[..., d_input]`
/// - returns: `[..., d_output]`
///
/// ```
/// use burn::nn::LinearConfig;
/// use burn::tensor::{Device, Tensor};
/// use lmforge_layers::linear_rows;
///
/// let device = Device::default();
/// let linear = LinearConfig::new(4, 3).init(&device);
/// let x = Tensor::<3>::ones([2, 5, 4], &device);
/// assert_eq!(linear_rows(&linear, x).dims(), [2, 5, 3]);
/// ```
pub fn linear_rows<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    let dims = x.dims();
    let d_input = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let y = linear.forward(x.reshape([rows, d_input]));
    let mut out = dims;
    out[D - 1] = y.dims()[1];
    y.reshape(out)
}
