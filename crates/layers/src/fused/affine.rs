//! `x W + b` as one operation on flex, through lmforge's matrix product, with a hand-written
//! backward pass.
//!
//! Forward: `y` starts as the bias broadcast over the rows and the product accumulates onto it,
//! so the bias costs no pass of its own. Backward, with `dy` the gradient of `y`:
//! `dx = dy Wᵀ`, `dW = xᵀ dy` (`transposed`: `dW = dyᵀ x`), `db = Σ_rows dy`; the transposes are
//! strided views, never copies.

use burn::tensor::{DType, Tensor};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use burn_autodiff::{Autodiff, NodeId};
use burn_dispatch::DispatchKindConversion;
use burn_flex::{Flex, FlexTensor};
use burn_tensor::DispatchTensor;
use rayon::prelude::*;

use super::{contiguous, flex_tensor, matmul, matmul_new, slice};

/// `x W + b` (`transposed`: `x Wᵀ + b`) for `f32` tensors on flex (with or without autodiff);
/// `None` elsewhere, when the widths do not match (the caller's composed path reports it), or
/// under `LMFORGE_MATMUL=gemm-crate`.
///
/// # Shapes
/// - `x`: `[m, k]`; `weight`: `[k, n]` (`transposed`: `[n, k]`); `bias`: `[n]`
/// - returns: `[m, n]`
pub(crate) fn affine(
    x: &Tensor<2>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    transposed: bool,
) -> Option<Tensor<2>> {
    if !super::own_matmul()
        || x.dtype() != DType::F32
        || weight.dtype() != DType::F32
        || bias.is_some_and(|b| b.dtype() != DType::F32)
    {
        return None;
    }
    let [m, k] = x.dims();
    let [r, c] = weight.dims();
    let (wk, n) = if transposed { (c, r) } else { (r, c) };
    if wk != k || m == 0 || n == 0 || k == 0 || bias.is_some_and(|b| b.dims() != [n]) {
        return None;
    }
    let shape = Shape {
        m,
        n,
        k,
        transposed,
    };
    if let Some(y) = on_autodiff::<NoCheckpointing>(x, weight, bias, shape) {
        return Some(y);
    }
    if let Some(y) = on_autodiff::<BalancedCheckpointing>(x, weight, bias, shape) {
        return Some(y);
    }
    let x = contiguous(x.clone().try_into_primitive::<Flex>().ok()?);
    let w = contiguous(weight.clone().try_into_primitive::<Flex>().ok()?);
    let b = match bias {
        Some(b) => Some(contiguous(b.clone().try_into_primitive::<Flex>().ok()?)),
        None => None,
    };
    let y = forward(shape, slice(&x), slice(&w), b.as_ref().map(slice));
    Some(Tensor::from_primitive::<Flex>(flex_tensor(y, [m, n])))
}

/// Sizes of one product.
#[derive(Clone, Copy, Debug)]
struct Shape {
    m: usize,
    n: usize,
    k: usize,
    transposed: bool,
}

impl Shape {
    /// `(row stride, column stride)` of `W` seen as `[k, n]`.
    fn weight_view(self) -> (usize, usize) {
        if self.transposed {
            (1, self.k)
        } else {
            (self.n, 1)
        }
    }
}

fn forward(shape: Shape, x: &[f32], w: &[f32], b: Option<&[f32]>) -> Vec<f32> {
    let Shape { m, n, k, .. } = shape;
    let Some(b) = b else {
        return matmul_new((m, n, k), x, (k, 1), w, shape.weight_view());
    };
    assert_eq!(b.len(), n, "affine: bias width");
    if m * n == 0 {
        return vec![0.0; m * n];
    }
    // Every row starts as the bias (written once, no zero fill), then the product adds to it.
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let fill = |row: &mut [std::mem::MaybeUninit<f32>]| {
        for (d, &b) in row.iter_mut().zip(b) {
            d.write(b);
        }
    };
    if m * n >= 1 << 16 {
        y.spare_capacity_mut()[..m * n]
            .par_chunks_mut(n)
            .for_each(fill);
    } else {
        y.spare_capacity_mut()[..m * n].chunks_mut(n).for_each(fill);
    }
    // SAFETY: the `m` rows of `n` floats were written just above.
    unsafe { y.set_len(m * n) };
    matmul(
        (m, n, k),
        &mut y,
        (n, 1),
        true,
        x,
        (k, 1),
        w,
        shape.weight_view(),
        true,
    );
    y
}

fn on_autodiff<C: CheckpointStrategy>(
    x: &Tensor<2>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
    shape: Shape,
) -> Option<Tensor<2>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let x = x.clone().try_into_primitive::<Autodiff<Flex, C>>().ok()?;
    let w = weight
        .clone()
        .try_into_primitive::<Autodiff<Flex, C>>()
        .ok()?;
    let b = match bias {
        Some(b) => Some(b.clone().try_into_primitive::<Autodiff<Flex, C>>().ok()?),
        None => None,
    };
    let (x_node, w_node) = (x.node(), w.node());
    let x = contiguous(x.into_primitive());
    let w = contiguous(w.into_primitive());
    let b = b.map(|b| (b.node(), contiguous(b.into_primitive())));
    let y = forward(
        shape,
        slice(&x),
        slice(&w),
        b.as_ref().map(|(_, b)| slice(b)),
    );
    let y = flex_tensor(y, [shape.m, shape.n]);
    let state = AffineState { x, w, shape };
    // One backward node with two or three parents (the bias, when there is one).
    let y = match b {
        Some((b_node, _)) => match AffineBackward
            .prepare::<C>([x_node, w_node, b_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        },
        None => match AffineBackward
            .prepare::<C>([x_node, w_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        },
    };
    Some(Tensor::from_primitive::<Autodiff<Flex, C>>(y))
}

/// State of the backward node: the (contiguous) input and weight.
#[derive(Clone, Debug)]
struct AffineState {
    x: FlexTensor,
    w: FlexTensor,
    shape: Shape,
}

#[derive(Debug)]
struct AffineBackward;

/// `dx = dy Wᵀ`.
fn input_gradient(state: &AffineState, dy: &[f32]) -> FlexTensor {
    let Shape { m, n, k, .. } = state.shape;
    let (w_rs, w_cs) = state.shape.weight_view();
    // `Wᵀ` as `[n, k]`: the weight's view with its strides swapped.
    let dx = matmul_new((m, k, n), dy, (n, 1), slice(&state.w), (w_cs, w_rs));
    flex_tensor(dx, [m, k])
}

/// `dW` in the weight's own layout.
fn weight_gradient(state: &AffineState, dy: &[f32]) -> FlexTensor {
    let Shape {
        m,
        n,
        k,
        transposed,
    } = state.shape;
    let x = slice(&state.x);
    if transposed {
        // `[n, k] = dyᵀ x`.
        let dw = matmul_new((n, k, m), dy, (1, n), x, (k, 1));
        flex_tensor(dw, [n, k])
    } else {
        // `[k, n] = xᵀ dy`.
        let dw = matmul_new((k, n, m), x, (1, k), dy, (n, 1));
        flex_tensor(dw, [k, n])
    }
}

/// `db = Σ_rows dy`, column blocks in parallel.
fn bias_gradient(shape: Shape, dy: &[f32]) -> FlexTensor {
    let Shape { m, n, .. } = shape;
    let mut db = vec![0.0f32; n];
    let threads = rayon::current_num_threads().max(1);
    let block = n.div_ceil(threads).div_ceil(16) * 16;
    db.par_chunks_mut(block).enumerate().for_each(|(b, out)| {
        let j0 = b * block;
        for row in dy.chunks_exact(n).take(m) {
            for (o, v) in out.iter_mut().zip(&row[j0..]) {
                *o += v;
            }
        }
    });
    flex_tensor(db, [n])
}

/// Registers the gradients of the parents that are tracked (`[x, W, b]`).
fn register(
    state: &AffineState,
    dy: FlexTensor,
    [node_x, node_w, node_b]: [Option<NodeId>; 3],
    grads: &mut Gradients,
) {
    let dy = contiguous(dy);
    let dy = slice(&dy);
    if let Some(id) = node_x {
        grads.register::<Flex>(id, input_gradient(state, dy));
    }
    if let Some(id) = node_w {
        grads.register::<Flex>(id, weight_gradient(state, dy));
    }
    if let Some(id) = node_b {
        grads.register::<Flex>(id, bias_gradient(state.shape, dy));
    }
}

impl Backward<Flex, 3> for AffineBackward {
    type State = AffineState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let ids = ops.parents.map(|node| node.map(|node| node.id));
        register(&ops.state, dy, ids, grads);
    }
}

impl Backward<Flex, 2> for AffineBackward {
    type State = AffineState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let [x, w] = ops.parents.map(|node| node.map(|node| node.id));
        register(&ops.state, dy, [x, w, None], grads);
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use crate::fused::test_support::{FLEX_REQUIRED, flex_device, max_abs_diff, values};

    fn input<const D: usize>(shape: [usize; D], salt: u64, device: &Device) -> Tensor<D> {
        let n = shape.iter().product();
        let values = crate::test_values::pseudo_random(n, salt);
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    /// `y`, `dx`, `dW` and `db` (empty without bias) of `Σ (x W + b) ⊙ g`.
    fn run(
        device: &Device,
        (m, k, n): (usize, usize, usize),
        transposed: bool,
        bias: bool,
        strided_x: bool,
        fused: bool,
    ) -> Vec<Vec<f32>> {
        // A strided input: the transpose of a `[k, m]` tensor.
        let x = if strided_x {
            input([k, m], 1, device).require_grad()
        } else {
            input([m, k], 1, device).require_grad()
        };
        let xin = if strided_x {
            x.clone().transpose()
        } else {
            x.clone()
        };
        let w_shape = if transposed { [n, k] } else { [k, n] };
        let w = input(w_shape, 2, device).require_grad();
        let b = bias.then(|| input([n], 3, device).require_grad());
        let y = if fused {
            super::affine(&xin, &w, b.as_ref(), transposed).expect("flex runs the fused op")
        } else {
            let wt = if transposed {
                w.clone().transpose()
            } else {
                w.clone()
            };
            let y = xin.matmul(wt);
            match &b {
                Some(b) => y + b.clone().unsqueeze(),
                None => y,
            }
        };
        let g = input([m, n], 4, device);
        let grads = (y.clone() * g).sum().backward();
        vec![
            values(y),
            values(x.grad(&grads).unwrap()),
            values(w.grad(&grads).unwrap()),
            b.map(|b| values(b.grad(&grads).unwrap()))
                .unwrap_or_default(),
        ]
    }

    /// Values and every gradient equal burn's composed `matmul` + add, with and without
    /// checkpointing, bias, a transposed weight and a strided input; several row blocks and
    /// depth slices of the product.
    #[test]
    fn fused_equals_composed_linear() {
        let flex = flex_device().expect(FLEX_REQUIRED);
        for device in [
            flex.clone().autodiff(),
            flex.clone().autodiff().gradient_checkpointing(),
        ] {
            for (dims, transposed, bias, strided) in [
                ((37, 300, 21), false, true, false),
                ((300, 20, 50), true, true, true),
                ((1, 5, 3), false, false, false),
                ((17, 8, 70), true, false, false),
            ] {
                let fused = run(&device, dims, transposed, bias, strided, true);
                let composed = run(&device, dims, transposed, bias, strided, false);
                for (name, (a, b)) in ["y", "dx", "dW", "db"]
                    .iter()
                    .zip(fused.iter().zip(&composed))
                {
                    assert_eq!(a.len(), b.len(), "{name}");
                    let worst = max_abs_diff(a, b);
                    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                    assert!(
                        worst <= 2e-6 * scale,
                        "{name} ({dims:?}, transposed {transposed}, bias {bias}): differs by \
                         {worst} (scale {scale})"
                    );
                }
            }
        }
        let x = input([40, 9], 1, &flex);
        let (w, b) = (input([9, 11], 2, &flex), input([11], 3, &flex));
        let fused = super::affine(&x, &w, Some(&b), false).unwrap();
        let composed = x.matmul(w) + b.unsqueeze();
        let worst = max_abs_diff(&values(fused), &values(composed));
        assert!(worst <= 1e-5, "without autodiff: {worst}");
    }

    /// Mismatched widths and other dtypes are left to the composed path.
    #[test]
    fn declines_what_it_does_not_compute() {
        let flex = flex_device().expect(FLEX_REQUIRED);
        let x = input([4, 3], 1, &flex);
        assert!(super::affine(&x, &input([4, 5], 2, &flex), None, false).is_none());
        assert!(
            super::affine(
                &x,
                &input([3, 5], 2, &flex),
                Some(&input([4], 3, &flex)),
                false
            )
            .is_none()
        );
        let half = input([3, 5], 2, &flex).cast(burn::tensor::DType::F16);
        assert!(super::affine(&x, &half, None, false).is_none());
        assert!(super::affine(&x, &input([3, 5], 2, &flex), None, false).is_some());
    }
}
