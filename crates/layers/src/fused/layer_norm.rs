//! Layer normalisation over the last dimension as one operation with a hand-written backward
//! pass, rows spread over rayon's threads.
//!
//! Per row of width `d`: `mean`, `var = mean((x - mean)²)` (two passes), `r = 1/√(var + ε)`,
//! `x̂ = (x - mean) r`, `y = γ x̂ + β`. Backward, with `g = γ dy`:
//! `dx = r (g - mean(g) - x̂ mean(g x̂))`, `dγ = Σ_rows dy x̂`, `dβ = Σ_rows dy`.

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
use burn_flex::{Flex, FlexTensor, Layout};
use burn_tensor::DispatchTensor;
use rayon::prelude::*;

use super::math::simd_dispatch;
use super::{contiguous, flex_tensor, slice, writable};

/// Rows per rayon task.
const ROWS: usize = 64;

/// `γ x̂ + β` over the last dimension of `x` on flex (`f32`), or `None` elsewhere.
pub(crate) fn layer_norm<const D: usize>(
    x: &Tensor<D>,
    gamma: &Tensor<1>,
    beta: &Tensor<1>,
    epsilon: f64,
) -> Option<Tensor<D>> {
    if x.dtype() != DType::F32 || gamma.dtype() != DType::F32 || beta.dtype() != DType::F32 {
        return None;
    }
    if x.dims().contains(&0) {
        return None;
    }
    let eps = epsilon as f32;
    if let Some(y) = on_autodiff::<D, NoCheckpointing>(x, gamma, beta, eps) {
        return Some(y);
    }
    if let Some(y) = on_autodiff::<D, BalancedCheckpointing>(x, gamma, beta, eps) {
        return Some(y);
    }
    let x = contiguous(x.clone().try_into_primitive::<Flex>().ok()?);
    let gamma = contiguous(gamma.clone().try_into_primitive::<Flex>().ok()?);
    let beta = contiguous(beta.clone().try_into_primitive::<Flex>().ok()?);
    let (y, _) = forward(slice(&x), slice(&gamma), slice(&beta), eps);
    let y = flex_tensor(y, x.layout().shape().clone());
    Some(Tensor::from_primitive::<Flex>(y))
}

fn on_autodiff<const D: usize, C: CheckpointStrategy>(
    x: &Tensor<D>,
    gamma: &Tensor<1>,
    beta: &Tensor<1>,
    eps: f32,
) -> Option<Tensor<D>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let x = x.clone().try_into_primitive::<Autodiff<Flex, C>>().ok()?;
    let gamma = gamma
        .clone()
        .try_into_primitive::<Autodiff<Flex, C>>()
        .ok()?;
    let beta = beta
        .clone()
        .try_into_primitive::<Autodiff<Flex, C>>()
        .ok()?;
    let guards = [x.node(), gamma.node(), beta.node()];
    let x = contiguous(x.into_primitive());
    let gamma = contiguous(gamma.into_primitive());
    let beta = contiguous(beta.into_primitive());
    let (y, stats) = forward(slice(&x), slice(&gamma), slice(&beta), eps);
    let y = flex_tensor(y, x.layout().shape().clone());
    let y = match LayerNormBackward
        .prepare::<C>(guards)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(LayerNormState { x, gamma, stats }, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex, C>>(y))
}

/// Independent partial sums per row reduction.
const LANES: usize = 16;

/// `Σ f(x_i)` over 16 independent lanes, then the tail (vectorizes inside the dispatched
/// loops; a single running sum is a serial chain).
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let full = x.len() / LANES * LANES;
    let mut lanes = [0.0f32; LANES];
    for chunk in x[..full].chunks_exact(LANES) {
        for l in 0..LANES {
            lanes[l] += f(chunk[l]);
        }
    }
    let mut tail = 0.0f32;
    for &v in &x[full..] {
        tail += f(v);
    }
    tail + lanes.iter().sum::<f32>()
}

simd_dispatch! {
    /// One row: writes `y` and returns `(mean, 1/√(var + ε))` in `stats`.
    fn row_forward(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        y: &mut [MaybeUninit<f32>],
        stats: &mut [f32],
    ) {
        let d = x.len() as f32;
        let mean = lane_sum(x, |v| v) / d;
        let var = lane_sum(x, |v| (v - mean) * (v - mean)) / d;
        let r = 1.0 / (var + eps).sqrt();
        for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
            y.write((x - mean) * r * g + b);
        }
        stats[0] = mean;
        stats[1] = r;
    }
}

simd_dispatch! {
    /// One row of the backward pass, in place: `g` holds `dy` on entry and `dx` on return;
    /// adds to `dgamma` and `dbeta`.
    fn row_backward(
        x: &[f32],
        g: &mut [f32],
        gamma: &[f32],
        stats: &[f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) {
        let (mean, r) = (stats[0], stats[1]);
        let d = x.len() as f32;
        // Two sums in 16 independent lanes each (a single running sum would not vectorize).
        let full = x.len() / LANES * LANES;
        let (mut lanes_g, mut lanes_gx) = ([0.0f32; LANES], [0.0f32; LANES]);
        for ((x, dy), gamma) in x[..full]
            .chunks_exact(LANES)
            .zip(g[..full].chunks_exact(LANES))
            .zip(gamma[..full].chunks_exact(LANES))
        {
            for l in 0..LANES {
                let g = dy[l] * gamma[l];
                lanes_g[l] += g;
                lanes_gx[l] += g * ((x[l] - mean) * r);
            }
        }
        let (mut sum_g, mut sum_gx) = (0.0f32, 0.0f32);
        for ((&x, &dy), &gamma) in x[full..].iter().zip(&g[full..]).zip(&gamma[full..]) {
            let g = dy * gamma;
            sum_g += g;
            sum_gx += g * ((x - mean) * r);
        }
        sum_g += lanes_g.iter().sum::<f32>();
        sum_gx += lanes_gx.iter().sum::<f32>();
        let (a, b) = (sum_g / d, sum_gx / d);
        for (j, g) in g.iter_mut().enumerate() {
            let (xhat, dy) = ((x[j] - mean) * r, *g);
            *g = r * (dy * gamma[j] - a - xhat * b);
            dgamma[j] += dy * xhat;
            dbeta[j] += dy;
        }
    }
}

/// Every row; returns `y` and the per-row `(mean, r)`.
fn forward(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len();
    let rows = x.len() / d;
    // Every row of `y` is written whole by `row_forward`: no zero fill.
    let mut y: Vec<f32> = Vec::with_capacity(x.len());
    let mut stats = vec![0.0f32; 2 * rows];
    let block = |(y, stats, x): (&mut [MaybeUninit<f32>], &mut [f32], &[f32])| {
        for ((y, stats), x) in y.chunks_mut(d).zip(stats.chunks_mut(2)).zip(x.chunks(d)) {
            row_forward(x, gamma, beta, eps, y, stats);
        }
    };
    let out = &mut y.spare_capacity_mut()[..x.len()];
    if rows <= ROWS {
        // One block: run here rather than hand it to the thread pool (decoding steps).
        block((out, &mut stats, x));
    } else {
        out.par_chunks_mut(ROWS * d)
            .zip(stats.par_chunks_mut(ROWS * 2))
            .zip(x.par_chunks(ROWS * d))
            .for_each(|((y, stats), x)| block((y, stats, x)));
    }
    // SAFETY: `row_forward` wrote every row.
    unsafe { y.set_len(x.len()) };
    (y, stats)
}

/// State of the backward node.
#[derive(Clone, Debug)]
struct LayerNormState {
    x: FlexTensor,
    gamma: FlexTensor,
    /// `(mean, 1/√(var + ε))` per row.
    stats: Vec<f32>,
}

#[derive(Debug)]
struct LayerNormBackward;

impl Backward<Flex, 3> for LayerNormBackward {
    type State = LayerNormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let state = ops.state;
        let shape = state.x.layout().shape().clone();
        // The incoming gradient becomes `dx` in place when nothing else holds its buffer.
        let mut g = writable(dy);
        let (x, gamma) = (slice(&state.x), slice(&state.gamma));
        let d = gamma.len();
        let gs: &mut [f32] = g.try_storage_mut().expect("unique by construction");
        let (dgamma, dbeta) = gs
            .par_chunks_mut(ROWS * d)
            .zip(x.par_chunks(ROWS * d))
            .zip(state.stats.par_chunks(ROWS * 2))
            .map(|((g, x), stats)| {
                let (mut dgamma, mut dbeta) = (vec![0.0f32; d], vec![0.0f32; d]);
                for ((g, x), stats) in g.chunks_mut(d).zip(x.chunks(d)).zip(stats.chunks(2)) {
                    row_backward(x, g, gamma, stats, &mut dgamma, &mut dbeta);
                }
                (dgamma, dbeta)
            })
            .reduce(
                || (vec![0.0f32; d], vec![0.0f32; d]),
                |(mut g1, mut b1), (g2, b2)| {
                    g1.iter_mut().zip(g2).for_each(|(a, b)| *a += b);
                    b1.iter_mut().zip(b2).for_each(|(a, b)| *a += b);
                    (g1, b1)
                },
            );
        let [node_x, node_gamma, node_beta] = ops.parents;
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, g.with_layout(Layout::contiguous(shape)));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, flex_tensor(dgamma, [d]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, flex_tensor(dbeta, [d]));
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};
    use lmforge_device::Backend;
    use lmforge_device::testing::test_devices;

    use crate::fused::test_support::{FLEX_REQUIRED, flex_device, max_abs_diff, values};

    fn input<const D: usize>(shape: [usize; D], salt: usize, device: &Device) -> Tensor<D> {
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 + salt * 104_729) % 2001) as f32 / 400.0 - 2.0)
            .collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// `y`, `dx`, `dgamma`, `dbeta`; with `shared`, the loss reads `y + other` (the sum's
    /// backward hands one gradient buffer to both, which the fused backward must not
    /// overwrite), and asserts `other`'s gradient is still the upstream weights.
    fn run(
        device: &Device,
        shape: [usize; 3],
        transpose: bool,
        fused: bool,
        shared: bool,
    ) -> Vec<Vec<f32>> {
        let d = if transpose { shape[1] } else { shape[2] };
        let x = input(shape, 1, device).require_grad();
        let gamma = input([d], 2, device).require_grad();
        let beta = input([d], 3, device).require_grad();
        let xin = if transpose {
            x.clone().swap_dims(1, 2)
        } else {
            x.clone()
        };
        let y = if fused {
            super::layer_norm(&xin, &gamma, &beta, 1e-5).expect("flex runs the fused kernel")
        } else {
            burn::tensor::module::layer_norm(xin, gamma.clone(), Some(beta.clone()), 1e-5)
        };
        let weights = input(y.dims(), 4, device);
        let other = input(y.dims(), 5, device).require_grad();
        let read = if shared {
            y.clone() + other.clone()
        } else {
            y.clone()
        };
        let grads = (read * weights.clone()).sum().backward();
        if shared {
            let d_other = values(other.grad(&grads).unwrap());
            assert_eq!(
                d_other,
                values(weights),
                "a shared gradient was overwritten"
            );
        }
        vec![
            values(y),
            values(x.grad(&grads).unwrap()),
            values(gamma.grad(&grads).unwrap()),
            values(beta.grad(&grads).unwrap()),
        ]
    }

    /// Values and gradients equal burn's composed `layer_norm` (several rayon tasks, a
    /// non-contiguous input, with and without checkpointing, and without autodiff).
    #[test]
    fn fused_equals_composed_layer_norm() {
        let flex = flex_device().expect(FLEX_REQUIRED);
        for device in [
            flex.clone().autodiff(),
            flex.clone().autodiff().gradient_checkpointing(),
        ] {
            for (shape, transpose, shared) in [
                ([3, 70, 48], false, false),
                ([3, 70, 48], false, true),
                ([2, 33, 9], true, false),
                ([1, 1, 5], false, false),
            ] {
                let fused = run(&device, shape, transpose, true, shared);
                let composed = run(&device, shape, transpose, false, shared);
                for (name, (a, b)) in ["y", "dx", "dgamma", "dbeta"]
                    .iter()
                    .zip(fused.iter().zip(&composed))
                {
                    let worst = max_abs_diff(a, b);
                    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                    assert!(
                        worst <= 2e-6 * scale,
                        "{name} (shape {shape:?}, transposed {transpose}): differs by {worst} (scale {scale})"
                    );
                }
            }
        }
        let x = input([4, 6, 10], 1, &flex);
        let (gamma, beta) = (input([10], 2, &flex), input([10], 3, &flex));
        let fused = super::layer_norm(&x, &gamma, &beta, 1e-5).unwrap();
        let composed = burn::tensor::module::layer_norm(x, gamma, Some(beta), 1e-5);
        let worst = max_abs_diff(&values(fused), &values(composed));
        assert!(worst <= 1e-5, "without autodiff: {worst}");
    }

    #[test]
    fn fused_layer_norm_runs_on_flex_only() {
        for selected in test_devices() {
            for device in [selected.device.clone(), selected.device.clone().autodiff()] {
                let x = input([2, 3], 1, &device);
                let g = input([3], 2, &device);
                assert_eq!(
                    super::layer_norm(&x, &g, &g, 1e-5).is_some(),
                    selected.backend == Backend::Flex,
                    "fused LayerNorm on {selected}"
                );
            }
        }
    }
}
