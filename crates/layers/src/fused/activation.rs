//! GELU (exact and tanh approximation) as single fused operations with hand-written derivatives.

use core::marker::PhantomData;
use core::mem::MaybeUninit;

use burn::tensor::{DType, Tensor};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_dispatch::DispatchKindConversion;
use burn_flex::{Flex, FlexTensor};
use burn_tensor::DispatchTensor;
use rayon::prelude::*;

use super::math::{exp, normal_cdf, sigmoid, simd_dispatch};
use super::{contiguous, flex_tensor, slice, writable};

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// An elementwise function and its derivative, over chunks.
trait Activation: Copy + Send + Sync + core::fmt::Debug + 'static {
    /// `y = f(x)`, writing every element of `y`.
    fn forward(x: &[f32], y: &mut [MaybeUninit<f32>]);
    /// `g = g * f'(x)` in place (`g` holds `dy` on entry and `dx` on return), given the input
    /// `x` and the output `y = f(x)`.
    fn backward(x: &[f32], y: &[f32], g: &mut [f32]);
}

/// `Φ(x) = y / x` for both GELUs (`y = x Φ(x)`, with `Φ` the normal CDF or its logistic
/// approximation), and `Φ(0) = 1/2` where the division would lose it. Recovering `Φ` from the
/// kept output saves re-evaluating the CDF or the sigmoid in the backward pass.
#[inline(always)]
fn cdf_from_output(x: f32, y: f32) -> f32 {
    if x.abs() > 1e-30 { y / x } else { 0.5 }
}

/// `2 √(2/π)`: GELU-tanh is `x σ(K1 x + K3 x³)`.
const K1: f32 = 1.595_769_2;
const K3: f32 = K1 * 0.044_715;
/// `1/√2` and `1/√(2π)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

simd_dispatch! {
    fn gelu_tanh_forward(x: &[f32], y: &mut [MaybeUninit<f32>]) {
        for (y, &x) in y.iter_mut().zip(x) {
            y.write(x * sigmoid(x * (K1 + K3 * x * x)));
        }
    }
}

simd_dispatch! {
    fn gelu_tanh_backward(x: &[f32], y: &[f32], g: &mut [f32]) {
        for ((g, &x), &y) in g.iter_mut().zip(x).zip(y) {
            let s = cdf_from_output(x, y);
            *g *= s + x * s * (1.0 - s) * (K1 + 3.0 * K3 * x * x);
        }
    }
}

simd_dispatch! {
    fn gelu_exact_forward(x: &[f32], y: &mut [MaybeUninit<f32>]) {
        for (y, &x) in y.iter_mut().zip(x) {
            y.write(x * normal_cdf(x));
        }
    }
}

simd_dispatch! {
    fn gelu_exact_backward(x: &[f32], y: &[f32], g: &mut [f32]) {
        for ((g, &x), &y) in g.iter_mut().zip(x).zip(y) {
            let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * x * x);
            *g *= cdf_from_output(x, y) + x * pdf;
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct GeluTanh;

impl Activation for GeluTanh {
    fn forward(x: &[f32], y: &mut [MaybeUninit<f32>]) {
        gelu_tanh_forward(x, y)
    }
    fn backward(x: &[f32], y: &[f32], g: &mut [f32]) {
        gelu_tanh_backward(x, y, g)
    }
}

#[derive(Clone, Copy, Debug)]
struct GeluExact;

impl Activation for GeluExact {
    fn forward(x: &[f32], y: &mut [MaybeUninit<f32>]) {
        gelu_exact_forward(x, y)
    }
    fn backward(x: &[f32], y: &[f32], g: &mut [f32]) {
        gelu_exact_backward(x, y, g)
    }
}

/// GELU's tanh approximation, `x/2 (1 + tanh(√(2/π) (x + 0.044715 x³)))`, fused on flex.
pub(crate) fn gelu_tanh<const D: usize>(x: &Tensor<D>) -> Option<Tensor<D>> {
    unary::<D, GeluTanh>(x)
}

/// Exact GELU, `x Φ(x) = x/2 (1 + erf(x/√2))`, fused on flex.
pub(crate) fn gelu_exact<const D: usize>(x: &Tensor<D>) -> Option<Tensor<D>> {
    unary::<D, GeluExact>(x)
}

/// `f` over `x` into a new buffer (which `f` writes whole, so it is never zero-filled first).
fn map(x: &[f32], f: fn(&[f32], &mut [MaybeUninit<f32>])) -> Vec<f32> {
    let n = x.len();
    let mut y = Vec::with_capacity(n);
    let out = &mut y.spare_capacity_mut()[..n];
    if n <= CHUNK {
        // One chunk: run here rather than hand it to the thread pool (decoding steps).
        f(x, out);
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| f(x, y));
    }
    // SAFETY: `Activation::forward` writes every element of its output chunk.
    unsafe { y.set_len(n) };
    y
}

fn unary<const D: usize, A: Activation>(x: &Tensor<D>) -> Option<Tensor<D>> {
    if x.dtype() != DType::F32 {
        return None;
    }
    if let Some(y) = unary_autodiff::<D, A, NoCheckpointing>(x) {
        return Some(y);
    }
    if let Some(y) = unary_autodiff::<D, A, BalancedCheckpointing>(x) {
        return Some(y);
    }
    let x = contiguous(x.clone().try_into_primitive::<Flex>().ok()?);
    let y = flex_tensor(map(slice(&x), A::forward), x.layout().shape().clone());
    Some(Tensor::from_primitive::<Flex>(y))
}

fn unary_autodiff<const D: usize, A: Activation, C: CheckpointStrategy>(
    x: &Tensor<D>,
) -> Option<Tensor<D>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let x = x.clone().try_into_primitive::<Autodiff<Flex, C>>().ok()?;
    let guard = x.node();
    let x = contiguous(x.into_primitive());
    let y = flex_tensor(map(slice(&x), A::forward), x.layout().shape().clone());
    let y = match UnaryBackward::<A>(PhantomData)
        .prepare::<C>([guard])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((x, y.clone()), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex, C>>(y))
}

/// The backward node: keeps the input and the output, and applies the derivative.
#[derive(Debug)]
struct UnaryBackward<A>(PhantomData<A>);

impl<A: Activation> Backward<Flex, 1> for UnaryBackward<A> {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let [parent] = ops.parents;
        let Some(parent) = parent else {
            return;
        };
        let (x, y) = ops.state;
        let (xs, ys) = (slice(&x), slice(&y));
        // The incoming gradient becomes the outgoing one in place when nothing else holds its
        // buffer (the usual case: the product after the activation wrote it); otherwise a copy.
        let mut g = writable(dy);
        let gs: &mut [f32] = g.try_storage_mut().expect("unique by construction");
        if xs.len() <= CHUNK {
            A::backward(xs, ys, gs);
        } else {
            gs.par_chunks_mut(CHUNK)
                .zip(xs.par_chunks(CHUNK).zip(ys.par_chunks(CHUNK)))
                .for_each(|(g, (x, y))| A::backward(x, y, g));
        }
        let g = g.with_layout(burn_flex::Layout::contiguous(x.layout().shape().clone()));
        grads.register::<Flex>(parent.id, g);
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};
    use lmforge_device::Backend;
    use lmforge_device::testing::test_devices;

    use crate::fused::test_support::{FLEX_REQUIRED, flex_device, max_abs_diff, values};
    use crate::transformer::feed_forward::{gelu_exact_composed, gelu_tanh_composed};

    type Pair = (
        fn(&Tensor<3>) -> Option<Tensor<3>>,
        fn(Tensor<3>) -> Tensor<3>,
    );
    const PAIRS: [(&str, Pair); 2] = [
        ("gelu_tanh", (super::gelu_tanh, gelu_tanh_composed)),
        ("gelu_exact", (super::gelu_exact, gelu_exact_composed)),
    ];

    /// Values in `[-4 scale, 4 scale]`, zero included.
    fn input(shape: [usize; 3], scale: f32, device: &Device) -> Tensor<3> {
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| (((i * 7919) % 2001) as f32 / 250.0 - 4.0) * scale)
            .collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    #[test]
    fn fused_activation_runs_on_flex_only() {
        for selected in test_devices() {
            for device in [selected.device.clone(), selected.device.clone().autodiff()] {
                let x = input([2, 3, 4], 1.0, &device);
                for (name, (fused, _)) in PAIRS {
                    assert_eq!(
                        fused(&x).is_some(),
                        selected.backend == Backend::Flex,
                        "{name} on {selected}"
                    );
                }
            }
        }
    }

    /// Values and gradients of the fused kernels equal the composed ops (several rayon chunks,
    /// a non-contiguous input, with and without gradient checkpointing, and without autodiff).
    #[test]
    fn fused_equals_composed() {
        let flex = flex_device().expect(FLEX_REQUIRED);
        let devices = [
            flex.clone().autodiff(),
            flex.clone().autodiff().gradient_checkpointing(),
        ];
        for (name, (fused, composed)) in PAIRS {
            for device in &devices {
                // Several rayon chunks, transposed, wide range, and one chunk (run inline).
                for (transpose, scale, shape) in [
                    (false, 1.0, [3, 70, 100]),
                    (true, 1.0, [3, 70, 100]),
                    (false, 8.0, [3, 70, 100]),
                    (false, 1.0, [2, 3, 50]),
                ] {
                    let run = |fused_path: bool| {
                        let x = input(shape, scale, device).require_grad();
                        let xin = if transpose {
                            x.clone().swap_dims(1, 2)
                        } else {
                            x.clone()
                        };
                        let y = if fused_path {
                            fused(&xin).expect("flex runs the fused kernel")
                        } else {
                            composed(xin)
                        };
                        let weights = input(y.dims(), 0.25, device);
                        let grads = (y.clone() * weights).sum().backward();
                        (values(y), values(x.grad(&grads).unwrap()))
                    };
                    let (y, dx) = run(true);
                    let (y_ref, dx_ref) = run(false);
                    let (ey, edx) = (max_abs_diff(&y, &y_ref), max_abs_diff(&dx, &dx_ref));
                    assert!(
                        ey <= 2e-6,
                        "{name} (transposed {transpose}, scale {scale}): values differ by {ey}"
                    );
                    assert!(
                        edx <= 2e-6,
                        "{name} (transposed {transpose}, scale {scale}): gradients differ by {edx}"
                    );
                }
            }
            // An incoming gradient the backward must not overwrite: the sum's backward hands
            // one buffer to both of its inputs (the copy path). The other input's gradient
            // must stay the upstream weights.
            let shared = |fused_path: bool| {
                let x = input([3, 70, 100], 1.0, &devices[0]).require_grad();
                let other = input([3, 70, 100], 0.5, &devices[0]).require_grad();
                let y = if fused_path {
                    fused(&x).unwrap()
                } else {
                    composed(x.clone())
                };
                let weights = input(y.dims(), 0.25, &devices[0]);
                let grads = ((y + other.clone()) * weights.clone()).sum().backward();
                let (dx, d_other) = (x.grad(&grads).unwrap(), other.grad(&grads).unwrap());
                (values(dx), values(d_other), values(weights))
            };
            let ((dx, d_other, w), (dx_ref, _, _)) = (shared(true), shared(false));
            let gap = max_abs_diff(&dx, &dx_ref);
            assert!(gap <= 2e-6, "{name} under a shared gradient: {gap}");
            assert_eq!(d_other, w, "{name} overwrote a gradient it shares");
            let x = input([3, 70, 100], 1.0, &flex);
            let (y, y_ref) = (fused(&x).unwrap(), composed(x));
            assert!(
                max_abs_diff(&values(y), &values(y_ref)) <= 2e-6,
                "{name} without autodiff"
            );
        }
    }
}
