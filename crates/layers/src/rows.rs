//! Linear layers applied to every position as one matrix product.

use burn::tensor::Tensor;

use crate::Linear;
use crate::quant::PackedWeight;

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
/// use burn::tensor::{Device, Tensor};
/// use lmforge_layers::{LinearConfig, linear_rows};
///
/// let device = Device::default();
/// let linear = LinearConfig::new(4, 3).init(&device);
/// let x = Tensor::<3>::ones([2, 5, 4], &device);
/// assert_eq!(linear_rows(&linear, x).dims(), [2, 5, 3]);
/// ```
///
/// A weight stored in another dtype than `x` (a model loaded with half-precision parameters
/// and run on `f32` activations) is multiplied as by [`project_rows`].
pub fn linear_rows<const D: usize>(linear: &Linear, x: Tensor<D>) -> Tensor<D> {
    let bias = linear.bias.as_ref().map(|b| b.val());
    if let Some(packed) = linear.packed_for_kernel() {
        return project_packed_or(packed, x, bias.as_ref(), |x| {
            project_rows(x, &linear.dense_weight(), bias.as_ref(), false)
        });
    }
    let weight = linear.weight.val();
    let dims = x.dims();
    let d_input = dims[D - 1];
    let rows = dims[..D - 1].iter().product::<usize>();
    if weight.dtype() != x.dtype() || rows <= 16 {
        // Half-precision weights, or few rows (decoding), which lmforge's kernel on flex
        // streams with both cores.
        return project_rows(x, &weight, bias.as_ref(), false);
    }
    let x = x.reshape([rows, d_input]);
    #[cfg(feature = "flex")]
    let y = crate::fused::affine::affine(&x, &weight, bias.as_ref(), false)
        .unwrap_or_else(|| burn::tensor::module::linear(x, weight, bias));
    #[cfg(not(feature = "flex"))]
    let y = burn::tensor::module::linear(x, weight, bias);
    let mut out = dims;
    out[D - 1] = y.dims()[1];
    y.reshape(out)
}

/// `x Wᵀ + b` with `W` packed (`[d_output, d_input]` channels), through lmforge's kernel on
/// flex; elsewhere (or under autodiff) `fallback(x)`.
pub(crate) fn project_packed_or<const D: usize>(
    packed: &PackedWeight,
    x: Tensor<D>,
    bias: Option<&Tensor<1>>,
    fallback: impl FnOnce(Tensor<D>) -> Tensor<D>,
) -> Tensor<D> {
    let dims = x.dims();
    let d_input = dims[D - 1];
    assert_eq!(
        d_input,
        packed.width(),
        "packed layer: input width {d_input}, weight of {} channels x {}",
        packed.channels(),
        packed.width()
    );
    #[cfg(feature = "flex")]
    {
        let rows = dims[..D - 1].iter().product::<usize>();
        let x2 = x.clone().reshape([rows, d_input]);
        if let Some(y) = crate::fused::packed::packed_product(&x2, packed, bias) {
            let mut out = dims;
            out[D - 1] = packed.channels();
            return y.reshape(out);
        }
    }
    let _ = bias;
    fallback(x)
}

/// `x W + b` over the last dimension of `x` (`transposed`: `x Wᵀ + b`, for a weight stored
/// `[d_output, d_input]` such as a tied embedding used as the output layer), for a weight in
/// any float dtype. The result has the dtype of `x`.
///
/// When the weight's dtype differs from `x`'s, the weight is widened (or narrowed) to `x`'s
/// dtype for the product and the parameter itself stays as it is. On flex, `f32` activations
/// without autodiff run lmforge's own kernel for an `f16`/`bf16` weight, which widens the
/// weight in registers as it reads it (the weight's memory and the bytes read per product stay
/// half of `f32`'s), and for an `f32` weight when there are at most 16 rows (decoding: both
/// cores stream the weight). Elsewhere burn's ops run, the weight cast for each product.
///
/// # Shapes
/// - `x`: `[..., d_input]`
/// - `weight`: `[d_input, d_output]` (`transposed`: `[d_output, d_input]`)
/// - `bias`: `[d_output]`
/// - returns: `[..., d_output]`
///
/// # Panics
/// When the widths do not match.
///
/// ```
/// use burn::tensor::{DType, Device, Tensor};
/// use lmforge_layers::project_rows;
///
/// let device = Device::default();
/// let weight = Tensor::<2>::ones([4, 3], &device).cast(DType::BF16);
/// let x = Tensor::<3>::ones([2, 5, 4], &device);
/// let y = project_rows(x, &weight, None, false);
/// assert_eq!((y.dims(), y.dtype()), ([2, 5, 3], DType::F32));
/// ```
pub fn project_rows<const D: usize>(
    x: Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    transposed: bool,
) -> Tensor<D> {
    let dims = x.dims();
    let d_input = dims[D - 1];
    let [r, c] = weight.dims();
    let (w_in, d_output) = if transposed { (c, r) } else { (r, c) };
    assert_eq!(
        w_in,
        d_input,
        "project_rows: input width {d_input}, weight {:?} (transposed: {transposed})",
        [r, c]
    );
    if let Some(bias) = bias {
        assert_eq!(bias.dims(), [d_output], "project_rows: bias width");
    }
    let rows = dims[..D - 1].iter().product::<usize>();
    let x = x.reshape([rows, d_input]);
    let mut out = dims;
    out[D - 1] = d_output;
    #[cfg(feature = "flex")]
    if let Some(y) = crate::fused::linear::linear_product(&x, weight, bias, transposed) {
        return y.reshape(out);
    }
    #[cfg(feature = "flex")]
    if let Some(y) = crate::fused::affine::affine(&x, weight, bias, transposed) {
        return y.reshape(out);
    }
    let dtype = x.dtype();
    let weight = weight.clone().cast(dtype);
    let weight = if transposed {
        weight.transpose()
    } else {
        weight
    };
    let mut y = x.matmul(weight);
    if let Some(bias) = bias {
        y = y + bias.clone().cast(dtype).unsqueeze();
    }
    y.reshape(out)
}

/// Runs `f` on one of the threads the CPU backend computes with (rayon's global pool) and
/// returns its result; called from one of those threads, runs `f` in place.
///
/// flex spreads its operations over rayon's threads. Called from another thread (`main`),
/// every parallel operation hands its work to the pool and puts the caller to sleep, and
/// between operations the pool's idle threads spin against the caller for the same cores.
/// Run from a pool thread, the caller takes part in the work instead. lmforge's decoders run
/// each generation step this way; on the 2-core machine of docs/performance.md it raised
/// `llama-generate-bf16` from about 150 to 167 tokens/s. Without the `flex` feature, `f` runs
/// in place.
///
/// ```
/// let sum = lmforge_layers::on_compute_threads(|| (1..=4).sum::<u32>());
/// assert_eq!(sum, 10);
/// ```
pub fn on_compute_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(feature = "flex")]
    if rayon::current_thread_index().is_none() {
        return rayon::scope(|_| f());
    }
    f()
}

/// Cross-entropy of each row of `logits` against its target, as one fused operation on flex:
/// per row, `loss = (1 - ε) (-log p(target)) + ε (-mean_j log p(j))` with `p` the softmax of the
/// row and `ε` the label smoothing, and `nll = -log p(target)`; both 0 where the target is
/// `ignore_index`. `loss` is differentiable (its backward writes `softmax - target
/// distribution` in one pass per row), `nll` is detached. The rows are spread over rayon's
/// threads and every sum runs in vectorized lanes. `None` on other devices and dtypes (or
/// without the `flex` feature), where callers compose the same loss from tensor operations.
///
/// # Shapes
/// - `logits`: `[n, classes]`, `targets`: `[n]`; both outputs `[n]`.
///
/// # Panics
/// When a target is neither a class nor `ignore_index`, or the row counts differ.
#[cfg_attr(not(feature = "flex"), allow(unused_variables))]
pub fn cross_entropy_rows(
    logits: &Tensor<2>,
    targets: &Tensor<1, burn::tensor::Int>,
    ignore_index: i64,
    label_smoothing: f64,
) -> Option<(Tensor<1>, Tensor<1>)> {
    #[cfg(feature = "flex")]
    {
        crate::fused::cross_entropy::cross_entropy(
            logits,
            targets,
            ignore_index,
            label_smoothing as f32,
        )
    }
    #[cfg(not(feature = "flex"))]
    None
}

/// The scalars of one AdamW step for [`adamw_step`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// First-moment decay.
    pub beta_1: f32,
    /// Second-moment decay.
    pub beta_2: f32,
    /// Added to the square root of the corrected second moment.
    pub epsilon: f32,
    /// The step's number, from 1 (bias corrections `1 - beta^time`).
    pub time: i32,
    /// Learning rate.
    pub lr: f64,
    /// Decoupled weight decay (`param *= 1 - lr * weight_decay`; 0 for none).
    pub weight_decay: f64,
}

/// One AdamW update of `param` from `grad` as a single fused pass on flex, spread over rayon's
/// threads: returns the new parameter and the new first and second moments. `moments` are the
/// previous step's (`None` on the first step, `time` 1). Each element goes through the same
/// `f32` operations, in the same order, as burn's composed `AdamW`; the function is PyTorch's
/// `torch.optim.AdamW` with `amsgrad=False` (which orders the operations differently):
///
/// ```text
/// m = beta_1 m + (1 - beta_1) g            v = beta_2 v + (1 - beta_2) g²
/// param = param (1 - lr weight_decay) - lr (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + epsilon)
/// ```
///
/// `None` on other devices and dtypes (or without the `flex` feature), where callers compose
/// the update from tensor operations.
///
/// # Panics
/// When the gradient or the moments do not have the parameter's number of elements.
#[cfg_attr(not(feature = "flex"), allow(unused_variables))]
pub fn adamw_step<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moments: Option<(Tensor<D>, Tensor<D>)>,
    step: AdamWStep,
) -> Option<(Tensor<D>, Tensor<D>, Tensor<D>)> {
    #[cfg(feature = "flex")]
    {
        let decay_rate = step.lr * step.weight_decay;
        crate::fused::adamw::adamw(
            param,
            grad,
            moments,
            crate::fused::adamw::Step {
                beta_1: step.beta_1,
                beta_2: step.beta_2,
                epsilon: step.epsilon,
                correction_1: 1.0 - step.beta_1.powi(step.time),
                correction_2: 1.0 - step.beta_2.powi(step.time),
                decay: (decay_rate != 0.0).then_some((1.0 - decay_rate) as f32),
                lr: step.lr as f32,
            },
        )
    }
    #[cfg(not(feature = "flex"))]
    None
}
