//! Cross-entropy over the rows of a logits matrix as one fused operation: log-softmax, the
//! target's negative log-likelihood, label smoothing and the ignore index in one pass per row,
//! and the gradient `softmax - target distribution` in one pass in the backward.

use burn::tensor::{DType, Int, Tensor, TensorData};
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

use super::math::{exp, simd_dispatch};
use super::{contiguous, flex_tensor, slice, writable};

/// Rows per rayon task.
const ROWS: usize = 16;
/// Independent partial sums and maxima per row.
const LANES: usize = 16;

simd_dispatch! {
    /// `stats = [max, Σ exp(x - max), Σ x]` of one row.
    fn row_stats(x: &[f32], stats: &mut [f32]) {
        let full = x.len() / LANES * LANES;
        let mut lane_max = [f32::NEG_INFINITY; LANES];
        for chunk in x[..full].chunks_exact(LANES) {
            for l in 0..LANES {
                lane_max[l] = if chunk[l] > lane_max[l] { chunk[l] } else { lane_max[l] };
            }
        }
        let mut max = f32::NEG_INFINITY;
        for &v in x[full..].iter().chain(&lane_max) {
            if v > max {
                max = v;
            }
        }
        let (mut lane_exp, mut lane_sum) = ([0.0f32; LANES], [0.0f32; LANES]);
        for chunk in x[..full].chunks_exact(LANES) {
            for l in 0..LANES {
                lane_exp[l] += exp(chunk[l] - max);
                lane_sum[l] += chunk[l];
            }
        }
        let (mut total_exp, mut total) = (0.0f32, 0.0f32);
        for &v in &x[full..] {
            total_exp += exp(v - max);
            total += v;
        }
        stats[0] = max;
        stats[1] = total_exp + lane_exp.iter().sum::<f32>();
        stats[2] = total + lane_sum.iter().sum::<f32>();
    }
}

simd_dispatch! {
    /// `x = g (exp(x - lse) - off)` in place for one row: the logits become their gradient
    /// (the target's `-(1 - ε)` is added by the caller).
    fn row_gradient(x: &mut [f32], lse: f32, g: f32, off: f32) {
        for v in x.iter_mut() {
            *v = g * (exp(*v - lse) - off);
        }
    }
}

/// What the forward pass computed per row.
struct Rows {
    /// `log Σ exp(x)` per row.
    lse: Vec<f32>,
    /// The smoothed loss per row (0 for ignored rows).
    loss: Vec<f32>,
    /// `-log p(target)` per row (0 for ignored rows).
    nll: Vec<f32>,
}

fn forward(x: &[f32], classes: usize, targets: &[Option<usize>], eps: f32) -> Rows {
    let n = targets.len();
    let (mut lse, mut loss, mut nll) = (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n]);
    lse.par_chunks_mut(ROWS)
        .zip(loss.par_chunks_mut(ROWS))
        .zip(nll.par_chunks_mut(ROWS))
        .enumerate()
        .for_each(|(block, ((lse, loss), nll))| {
            let mut stats = [0.0f32; 3];
            for (i, ((lse, loss), nll)) in lse.iter_mut().zip(loss).zip(nll).enumerate() {
                let r = block * ROWS + i;
                let row = &x[r * classes..][..classes];
                row_stats(row, &mut stats);
                *lse = stats[0] + stats[1].ln();
                if let Some(t) = targets[r] {
                    *nll = *lse - row[t];
                    let smooth = *lse - stats[2] / classes as f32;
                    *loss = (1.0 - eps) * *nll + eps * smooth;
                }
            }
        });
    Rows { lse, loss, nll }
}

/// State of the backward node.
#[derive(Clone, Debug)]
struct CrossEntropyState {
    logits: FlexTensor,
    classes: usize,
    targets: Vec<Option<usize>>,
    lse: Vec<f32>,
    eps: f32,
}

#[derive(Debug)]
struct CrossEntropyBackward;

impl Backward<Flex, 1> for CrossEntropyBackward {
    type State = CrossEntropyState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let g = contiguous(grads.consume::<Flex>(&ops.node));
        let [parent] = ops.parents;
        let Some(parent) = parent else {
            return;
        };
        let state = ops.state;
        let g = slice(&g);
        let classes = state.classes;
        let off = state.eps / classes as f32;
        let shape = state.logits.layout().shape().clone();
        // The logits become their gradient in place when the node held the last reference to
        // them (the usual case); otherwise a copy does.
        let mut dx = writable(state.logits);
        let xs: &mut [f32] = dx.try_storage_mut().expect("unique by construction");
        xs.par_chunks_mut(ROWS * classes)
            .enumerate()
            .for_each(|(block, rows)| {
                for (i, row) in rows.chunks_mut(classes).enumerate() {
                    let r = block * ROWS + i;
                    match state.targets[r] {
                        Some(t) => {
                            row_gradient(row, state.lse[r], g[r], off);
                            row[t] -= g[r] * (1.0 - state.eps);
                        }
                        None => row.fill(0.0),
                    }
                }
            });
        let dx = dx.with_layout(burn_flex::Layout::contiguous(shape));
        grads.register::<Flex>(parent.id, dx);
    }
}

/// The targets of `[n, classes]` logits read back to the host: `None` for the ignore index.
///
/// # Panics
/// When there is not one target per row, or a target is neither the ignore index nor a class.
fn host_targets(
    targets: &Tensor<1, Int>,
    [n, classes]: [usize; 2],
    ignore: i64,
) -> Option<Vec<Option<usize>>> {
    let values = targets
        .clone()
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .ok()?;
    assert_eq!(values.len(), n, "cross-entropy: one target per row");
    Some(
        values
            .into_iter()
            .map(|t| {
                if t == ignore {
                    None
                } else {
                    assert!(
                        (0..classes as i64).contains(&t),
                        "cross-entropy: target {t} is neither a class of {classes} nor the \
                         ignore index {ignore}"
                    );
                    Some(t as usize)
                }
            })
            .collect(),
    )
}

/// Per-row smoothed loss (`[n]`, differentiable) and negative log-likelihood (`[n]`, detached)
/// of `f32` logits on flex; `None` elsewhere.
pub(crate) fn cross_entropy(
    logits: &Tensor<2>,
    targets: &Tensor<1, Int>,
    ignore: i64,
    eps: f32,
) -> Option<(Tensor<1>, Tensor<1>)> {
    // No classes (or no rows): nothing to fuse; the composed loss handles the empty shapes.
    if logits.dtype() != DType::F32 || logits.dims().contains(&0) {
        return None;
    }
    on_autodiff::<NoCheckpointing>(logits, targets, ignore, eps)
        .or_else(|| on_autodiff::<BalancedCheckpointing>(logits, targets, ignore, eps))
        .or_else(|| {
            let x = contiguous(logits.clone().try_into_primitive::<Flex>().ok()?);
            let [n, classes] = logits.dims();
            let targets = host_targets(targets, [n, classes], ignore)?;
            let rows = forward(slice(&x), classes, &targets, eps);
            Some((
                Tensor::from_primitive::<Flex>(flex_tensor(rows.loss, [n])),
                Tensor::from_primitive::<Flex>(flex_tensor(rows.nll, [n])),
            ))
        })
}

fn on_autodiff<C: CheckpointStrategy>(
    logits: &Tensor<2>,
    targets: &Tensor<1, Int>,
    ignore: i64,
    eps: f32,
) -> Option<(Tensor<1>, Tensor<1>)>
where
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let x = logits
        .clone()
        .try_into_primitive::<Autodiff<Flex, C>>()
        .ok()?;
    let [n, classes] = logits.dims();
    let targets = host_targets(targets, [n, classes], ignore)?;
    let guard = x.node();
    let x = contiguous(x.into_primitive());
    let rows = forward(slice(&x), classes, &targets, eps);
    // On the logits' device (with autodiff, untracked): callers combine it with other tensors.
    let nll = Tensor::from_data(TensorData::new(rows.nll, [n]), &logits.device());
    let loss = flex_tensor(rows.loss, [n]);
    let loss = match CrossEntropyBackward
        .prepare::<C>([guard])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = CrossEntropyState {
                logits: x,
                classes,
                targets,
                lse: rows.lse,
                eps,
            };
            prep.finish(state, loss)
        }
        OpsKind::UnTracked(prep) => prep.finish(loss),
    };
    Some((Tensor::from_primitive::<Autodiff<Flex, C>>(loss), nll))
}
