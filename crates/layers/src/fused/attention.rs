//! Scaled dot-product attention as one autodiff operation, for training on flex.
//!
//! burn 0.22 differentiates attention by composing it (matmul, scale, mask fill, a NaN-safe
//! softmax of six ops, matmul) and differentiating each piece; on flex every piece is a pass over
//! the `[batch, heads, seq_q, seq_k]` scores on one thread. Here the forward pass runs each
//! (batch, head) pair as two matmuls and one softmax loop, in parallel over the pairs, and keeps
//! the probabilities; the backward pass is the standard one:
//!
//! ```text
//! dV = Pᵀ dO      dP = dO Vᵀ      dS = P ⊙ (dP − rowsum(P ⊙ dP))      dQ = s dS K      dK = s dSᵀ Q
//! ```
//!
//! Masked positions (the boolean mask, and with `causal` every key after the query's position
//! aligned at the bottom-right corner, as burn does) get probability 0; a fully masked row gives
//! a zero output, as in burn's NaN-safe softmax.

use burn::tensor::{Bool, DType, Tensor};
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
use super::{contiguous, flex_tensor, matmul, slice};

/// Attention `softmax(s Q Kᵀ + mask) V` of autodiff tensors on flex, or `None` (other devices,
/// other dtypes, or no autodiff: flex's own attention op serves inference).
///
/// - `q`: `[batch, heads, seq_q, d]`, `k`: `[batch, heads, seq_k, d]`, `v`: `[batch, heads,
///   seq_k, d_v]`;
/// - `mask`: `[batch, heads, seq_q, seq_k]`, `true` where a key must not be attended;
/// - `scale`: the factor `s` of the scores.
pub(crate) fn attention(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    mask: Option<&Tensor<4, Bool>>,
    causal: bool,
    scale: f32,
) -> Option<Tensor<4>> {
    if q.dtype() != DType::F32 || !q.device().is_autodiff() {
        return None;
    }
    // Check the backend before reading the mask back.
    let on_flex = q
        .clone()
        .try_into_primitive::<Autodiff<Flex, NoCheckpointing>>()
        .is_ok()
        || q.clone()
            .try_into_primitive::<Autodiff<Flex, BalancedCheckpointing>>()
            .is_ok();
    if !on_flex {
        return None;
    }
    let mask = match mask {
        Some(mask) => Some(mask.clone().into_data().try_to_vec::<bool>().ok()?),
        None => None,
    };
    on_autodiff::<NoCheckpointing>(q, k, v, mask.clone(), causal, scale)
        .or_else(|| on_autodiff::<BalancedCheckpointing>(q, k, v, mask, causal, scale))
}

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug)]
struct Dims {
    heads: usize,
    seq_q: usize,
    seq_k: usize,
    d: usize,
    d_v: usize,
}

/// State of the backward node.
#[derive(Clone, Debug)]
struct AttentionState {
    dims: Dims,
    scale: f32,
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    /// Probabilities, `[batch * heads, seq_q, seq_k]`.
    probs: Vec<f32>,
}

fn on_autodiff<C: CheckpointStrategy>(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    mask: Option<Vec<bool>>,
    causal: bool,
    scale: f32,
) -> Option<Tensor<4>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let q = q.clone().try_into_primitive::<Autodiff<Flex, C>>().ok()?;
    let k = k.clone().try_into_primitive::<Autodiff<Flex, C>>().ok()?;
    let v = v.clone().try_into_primitive::<Autodiff<Flex, C>>().ok()?;
    let guards = [q.node(), k.node(), v.node()];
    let (q, k, v) = (
        contiguous(q.into_primitive()),
        contiguous(k.into_primitive()),
        contiguous(v.into_primitive()),
    );
    let [batch, heads, seq_q, d] = dims4(&q);
    let [_, _, seq_k, d_v] = dims4(&v);
    assert_eq!(dims4(&k), [batch, heads, seq_k, d], "attention: key shape");
    let dims = Dims {
        heads,
        seq_q,
        seq_k,
        d,
        d_v,
    };
    if let Some(mask) = &mask {
        assert_eq!(
            mask.len(),
            batch * heads * seq_q * seq_k,
            "attention: mask shape"
        );
    }
    let (out, probs) = forward(
        dims,
        batch,
        slice(&q),
        slice(&k),
        slice(&v),
        mask.as_deref(),
        causal,
        scale,
    );
    let out = flex_tensor(out, [batch, heads, seq_q, d_v]);
    let out = match AttentionBackward
        .prepare::<C>(guards)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = AttentionState {
                dims,
                scale,
                q,
                k,
                v,
                probs,
            };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex, C>>(out))
}

fn dims4(tensor: &FlexTensor) -> [usize; 4] {
    let shape = tensor.layout().shape();
    [shape[0], shape[1], shape[2], shape[3]]
}

simd_dispatch! {
    /// `row = exp(row - max)` where `keep`, 0 elsewhere; returns the sum.
    fn exp_shifted(row: &mut [f32], keep: &[bool], max: f32, sum: &mut f32) {
        let mut total = 0.0f32;
        for (x, &keep) in row.iter_mut().zip(keep) {
            let e = exp(*x - max);
            *x = if keep { e } else { 0.0 };
            total += *x;
        }
        *sum = total;
    }
}

/// Per (batch, head): scores, masked softmax, context. Returns the context and probabilities.
#[allow(clippy::too_many_arguments)]
fn forward(
    dims: Dims,
    batch: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[bool]>,
    causal: bool,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let Dims {
        heads,
        seq_q,
        seq_k,
        d,
        d_v,
    } = dims;
    let pairs = batch * heads;
    let mut out = vec![0.0f32; pairs * seq_q * d_v];
    let mut probs = vec![0.0f32; pairs * seq_q * seq_k];
    let offset = seq_k as isize - seq_q as isize;
    out.par_chunks_mut(seq_q * d_v)
        .zip(probs.par_chunks_mut(seq_q * seq_k))
        .enumerate()
        .for_each(|(pair, (out, p))| {
            let q = &q[pair * seq_q * d..][..seq_q * d];
            let k = &k[pair * seq_k * d..][..seq_k * d];
            let v = &v[pair * seq_k * d_v..][..seq_k * d_v];
            // S = Q Kᵀ
            matmul(
                (seq_q, seq_k, d),
                p,
                (seq_k, 1),
                false,
                q,
                (d, 1),
                k,
                (1, d),
                false,
            );
            let mut keep = vec![true; seq_k];
            for i in 0..seq_q {
                let row = &mut p[i * seq_k..][..seq_k];
                for (j, keep) in keep.iter_mut().enumerate() {
                    let masked = mask.is_some_and(|m| m[(pair * seq_q + i) * seq_k + j])
                        || (causal && j as isize > i as isize + offset);
                    *keep = !masked;
                }
                let mut max = f32::NEG_INFINITY;
                for (x, &keep) in row.iter_mut().zip(&keep) {
                    *x *= scale;
                    if keep && *x > max {
                        max = *x;
                    }
                }
                if max == f32::NEG_INFINITY {
                    // Every key masked: zero probabilities, zero output.
                    row.fill(0.0);
                    continue;
                }
                let mut sum = 0.0f32;
                exp_shifted(row, &keep, max, &mut sum);
                let inv = 1.0 / sum;
                for x in row.iter_mut() {
                    *x *= inv;
                }
            }
            // O = P V
            matmul(
                (seq_q, d_v, seq_k),
                out,
                (d_v, 1),
                false,
                p,
                (seq_k, 1),
                v,
                (d_v, 1),
                false,
            );
        });
    (out, probs)
}

/// The backward node of the fused attention.
#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_out = contiguous(grads.consume::<Flex>(&ops.node));
        let state = ops.state;
        let Dims {
            heads,
            seq_q,
            seq_k,
            d,
            d_v,
        } = state.dims;
        let batch = dims4(&state.q)[0];
        let pairs = batch * heads;
        let (q, k, v, d_out) = (
            slice(&state.q),
            slice(&state.k),
            slice(&state.v),
            slice(&d_out),
        );
        let scale = state.scale;
        let mut dq = vec![0.0f32; pairs * seq_q * d];
        let mut dk = vec![0.0f32; pairs * seq_k * d];
        let mut dv = vec![0.0f32; pairs * seq_k * d_v];
        dq.par_chunks_mut(seq_q * d)
            .zip(dk.par_chunks_mut(seq_k * d))
            .zip(dv.par_chunks_mut(seq_k * d_v))
            .enumerate()
            .for_each(|(pair, ((dq, dk), dv))| {
                let q = &q[pair * seq_q * d..][..seq_q * d];
                let k = &k[pair * seq_k * d..][..seq_k * d];
                let v = &v[pair * seq_k * d_v..][..seq_k * d_v];
                let p = &state.probs[pair * seq_q * seq_k..][..seq_q * seq_k];
                let d_o = &d_out[pair * seq_q * d_v..][..seq_q * d_v];
                // dV = Pᵀ dO
                matmul(
                    (seq_k, d_v, seq_q),
                    dv,
                    (d_v, 1),
                    false,
                    p,
                    (1, seq_k),
                    d_o,
                    (d_v, 1),
                    false,
                );
                // dP = dO Vᵀ, then dS = s P ⊙ (dP − rowsum(P ⊙ dP)) in place.
                let mut ds = vec![0.0f32; seq_q * seq_k];
                matmul(
                    (seq_q, seq_k, d_v),
                    &mut ds,
                    (seq_k, 1),
                    false,
                    d_o,
                    (d_v, 1),
                    v,
                    (1, d_v),
                    false,
                );
                for (ds, p) in ds.chunks_mut(seq_k).zip(p.chunks(seq_k)) {
                    let dot: f32 = ds.iter().zip(p).map(|(a, b)| a * b).sum();
                    for (ds, &p) in ds.iter_mut().zip(p) {
                        *ds = scale * p * (*ds - dot);
                    }
                }
                // dQ = dS K, dK = dSᵀ Q
                matmul(
                    (seq_q, d, seq_k),
                    dq,
                    (d, 1),
                    false,
                    &ds,
                    (seq_k, 1),
                    k,
                    (d, 1),
                    false,
                );
                matmul(
                    (seq_k, d, seq_q),
                    dk,
                    (d, 1),
                    false,
                    &ds,
                    (1, seq_k),
                    q,
                    (d, 1),
                    false,
                );
            });
        let [node_q, node_k, node_v] = ops.parents;
        if let Some(node) = node_q {
            grads.register::<Flex>(node.id, flex_tensor(dq, [batch, heads, seq_q, d]));
        }
        if let Some(node) = node_k {
            grads.register::<Flex>(node.id, flex_tensor(dk, [batch, heads, seq_k, d]));
        }
        if let Some(node) = node_v {
            grads.register::<Flex>(node.id, flex_tensor(dv, [batch, heads, seq_k, d_v]));
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::module::attention as burn_attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::{Bool, Device, Tensor, TensorData};
    use lmforge_device::Backend;
    use lmforge_device::testing::test_devices;

    fn input(shape: [usize; 4], salt: usize, device: &Device) -> Tensor<4> {
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| (((i * 7919 + salt * 104_729) % 2001) as f32 / 1000.0 - 1.0) * 1.5)
            .collect();
        Tensor::from_data(TensorData::new(values, shape), device)
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// Padding-style mask: key `j` of batch `b` hidden when `j >= lengths[b]` (length 0 hides
    /// every key of that batch entry).
    fn mask(
        lengths: &[usize],
        heads: usize,
        seq_q: usize,
        seq_k: usize,
        device: &Device,
    ) -> Tensor<4, Bool> {
        let mut data = Vec::new();
        for &length in lengths {
            for _ in 0..heads * seq_q {
                data.extend((0..seq_k).map(|j| j >= length));
            }
        }
        Tensor::from_data(
            TensorData::new(data, [lengths.len(), heads, seq_q, seq_k]),
            device,
        )
    }

    /// Output and the three gradients through the fused op or burn's composed attention.
    fn run(
        device: &Device,
        shape: (usize, usize, usize, usize),
        lengths: Option<&[usize]>,
        causal: bool,
        fused: bool,
    ) -> Vec<Vec<f32>> {
        let (batch, seq_q, seq_k, heads) = shape;
        let (d, d_v) = (4, 3);
        let q = input([batch, heads, seq_q, d], 1, device).require_grad();
        let k = input([batch, heads, seq_k, d], 2, device).require_grad();
        let v = input([batch, heads, seq_k, d_v], 3, device).require_grad();
        let m = lengths.map(|l| mask(l, heads, seq_q, seq_k, device));
        let scale = (d as f64).sqrt().recip();
        let out = if fused {
            super::attention(&q, &k, &v, m.as_ref(), causal, scale as f32)
                .expect("flex autodiff runs the fused attention")
        } else {
            let options = AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: causal,
            };
            burn_attention(q.clone(), k.clone(), v.clone(), m, None, options)
        };
        let weights = input(out.dims(), 4, device);
        let grads = (out.clone() * weights).sum().backward();
        vec![
            values(out),
            values(q.grad(&grads).unwrap()),
            values(k.grad(&grads).unwrap()),
            values(v.grad(&grads).unwrap()),
        ]
    }

    /// The fused op equals burn's composed attention, values and gradients: causal and not,
    /// padding masks including a fully masked batch entry, fewer queries than keys (the causal
    /// boundary aligned at the end), with and without gradient checkpointing.
    #[test]
    fn fused_equals_composed_attention() {
        let Some(flex) = test_devices().iter().find(|d| d.backend == Backend::Flex) else {
            return;
        };
        for device in [
            flex.device.clone().autodiff(),
            flex.device.clone().autodiff().gradient_checkpointing(),
        ] {
            for (shape, lengths) in [
                ((2, 5, 5, 3), None),
                ((3, 6, 6, 2), Some(&[6usize, 4, 0][..])),
                ((2, 3, 7, 2), Some(&[7usize, 5][..])),
            ] {
                for causal in [false, true] {
                    let fused = run(&device, shape, lengths, causal, true);
                    let composed = run(&device, shape, lengths, causal, false);
                    for (name, (a, b)) in ["out", "dq", "dk", "dv"]
                        .iter()
                        .zip(fused.iter().zip(&composed))
                    {
                        assert!(a.iter().all(|x| x.is_finite()), "{name} not finite");
                        let worst = a
                            .iter()
                            .zip(b)
                            .map(|(a, b)| (a - b).abs())
                            .fold(0.0f32, f32::max);
                        assert!(
                            worst <= 1e-5,
                            "{name} (shape {shape:?}, lengths {lengths:?}, causal {causal}): differs by {worst}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn fused_attention_is_for_flex_training_only() {
        for selected in test_devices() {
            for device in [selected.device.clone(), selected.device.clone().autodiff()] {
                let q = input([1, 1, 2, 4], 1, &device);
                let fused = super::attention(&q, &q, &q, None, false, 0.5);
                assert_eq!(
                    fused.is_some(),
                    selected.backend == Backend::Flex && device.is_autodiff(),
                    "fused attention on {selected} (autodiff {})",
                    device.is_autodiff()
                );
            }
        }
    }
}
