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
use super::{assume_init, flex_tensor, matmul, matmul_uninit};

/// Attention `softmax(s Q Kᵀ + mask) V` of flex tensors, or `None` (other devices, other
/// dtypes, and inference calls flex serves better: see below). Inference runs the same forward
/// pass and drops the probabilities (faster than flex's own attention op on MiniLM:
/// docs/performance.md).
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
    if !all_f32(q, k, v) {
        return None;
    }
    if !q.device().is_autodiff() {
        // The forward pass runs one batch entry per thread: inference takes it for several
        // queries (encoders, prompts) over at least one entry per thread; single-query
        // decoding steps and batch-1 prompts keep flex's attention, which spreads the heads.
        let [batch, _, seq_q, _] = q.dims();
        if seq_q > 1 && batch >= rayon::current_num_threads() {
            return inference(q, k, v, mask, causal, scale);
        }
        return None;
    }
    on_autodiff::<NoCheckpointing>(q, k, v, mask, causal, scale)
        .or_else(|| on_autodiff::<BalancedCheckpointing>(q, k, v, mask, causal, scale))
}

/// A decoding step's attention on flex tensors: one query position for each (batch, head) pair
/// over keys and values of any row stride (the filled part of a [`KvCache`] buffer is read
/// where it lies, with no copy), `group` query heads per key/value head (grouped-query
/// attention without repeating the keys). The pairs run in parallel once there is enough to
/// read. `None` on other devices, other dtypes, under autodiff and for several queries.
///
/// - `q`: `[batch, heads, 1, d]`; `k`: `[batch, heads / group, seq_k, d]`; `v`: `[batch,
///   heads / group, seq_k, d_v]`;
/// - `mask`: `[batch, heads, 1, seq_k]`, `true` where a key must not be attended (nothing is
///   causal for the last position);
/// - `scale`: the factor of the scores.
///
/// [`KvCache`]: crate::attention::KvCache
pub(crate) fn single_query(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    mask: Option<&Tensor<4, Bool>>,
    group: usize,
    scale: f32,
) -> Option<Tensor<4>> {
    if !all_f32(q, k, v) || q.device().is_autodiff() || q.dims()[2] != 1 {
        return None;
    }
    let q = HeadView::new(q.clone().try_into_primitive::<Flex>().ok()?);
    let k = HeadView::new(k.clone().try_into_primitive::<Flex>().ok()?);
    let v = HeadView::new(v.clone().try_into_primitive::<Flex>().ok()?);
    let [batch, heads, _, d] = q.dims;
    let [_, kv_heads, seq_k, d_v] = v.dims;
    assert_eq!(
        heads,
        kv_heads * group,
        "attention: query heads per key/value head"
    );
    assert_eq!(k.dims, [batch, kv_heads, seq_k, d], "attention: key shape");
    assert_eq!(v.dims[0], batch, "attention: value shape");
    if batch * heads * seq_k == 0 {
        return None;
    }
    let mask = mask_on_host(mask, batch * heads * seq_k)?;
    // The context of pair `(b, h)` is row `b * heads + h`: `[batch, 1, heads, d_v]`.
    let mut out = vec![0.0f32; batch * heads * d_v];
    let pair = |p: usize, out: &mut [f32], scores: &mut Vec<f32>, bias: &mut Vec<f32>| {
        let (b, h) = (p / heads, p % heads);
        let (query, _) = q.matrix(b, h);
        let (keys, k_rs) = k.matrix(b, h / group);
        let (values, v_rs) = v.matrix(b, h / group);
        scores.resize(seq_k, 0.0);
        bias.clear();
        match &mask {
            Some(m) => bias.extend(
                m[p * seq_k..][..seq_k]
                    .iter()
                    .map(|&masked| if masked { f32::NEG_INFINITY } else { 0.0 }),
            ),
            None => bias.resize(seq_k, 0.0),
        }
        decode_pair(
            out,
            scores,
            bias,
            &query[..d],
            keys,
            k_rs,
            values,
            v_rs,
            scale,
        );
    };
    // Below this many key and value elements, waking the other threads costs more than
    // sharing the reads saves.
    const PARALLEL_MIN: usize = 1 << 15;
    if batch * heads * seq_k * (d + d_v) >= PARALLEL_MIN {
        out.par_chunks_mut(d_v).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(scores, bias), (p, out)| pair(p, out, scores, bias),
        );
    } else {
        let (mut scores, mut bias) = (Vec::new(), Vec::new());
        for (p, out) in out.chunks_mut(d_v).enumerate() {
            pair(p, out, &mut scores, &mut bias);
        }
    }
    let out = flex_tensor(out, [batch, 1, heads, d_v]).transpose(1, 2);
    Some(Tensor::from_primitive::<Flex>(out))
}

simd_dispatch! {
    /// One query's attention: `out = softmax(scale * K q + bias) V`, with `K` and `V` rows
    /// `k_rs` and `v_rs` apart (`out` holds zeros on entry; `scores` and `bias` have one entry
    /// per key).
    #[allow(clippy::too_many_arguments)]
    fn decode_pair(
        out: &mut [f32],
        scores: &mut [f32],
        bias: &[f32],
        q: &[f32],
        k: &[f32],
        k_rs: usize,
        v: &[f32],
        v_rs: usize,
        scale: f32,
    ) {
        let d = q.len();
        for (j, score) in scores.iter_mut().enumerate() {
            *score = dot(q, &k[j * k_rs..][..d]);
        }
        softmax_row(scores, bias, scale);
        let d_v = out.len();
        for (j, &p) in scores.iter().enumerate() {
            if p != 0.0 {
                for (o, &x) in out.iter_mut().zip(&v[j * v_rs..][..d_v]) {
                    *o += p * x;
                }
            }
        }
    }
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
    q: HeadView,
    k: HeadView,
    v: HeadView,
    /// Probabilities, `[batch * heads, seq_q, seq_k]`.
    probs: Vec<f32>,
}

/// Inference on flex tensors: the forward pass, its probabilities dropped.
fn inference(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    mask: Option<&Tensor<4, Bool>>,
    causal: bool,
    scale: f32,
) -> Option<Tensor<4>> {
    let q = HeadView::new(q.clone().try_into_primitive::<Flex>().ok()?);
    let k = HeadView::new(k.clone().try_into_primitive::<Flex>().ok()?);
    let v = HeadView::new(v.clone().try_into_primitive::<Flex>().ok()?);
    let (dims, batch, mask) = prepare(&q, &k, &v, mask)?;
    let (out, _) = forward(dims, batch, &q, &k, &v, mask.as_deref(), causal, scale);
    let out = flex_tensor(out, [batch, dims.seq_q, dims.heads, dims.d_v]).transpose(1, 2);
    Some(Tensor::from_primitive::<Flex>(out))
}

/// The sizes of one call (checked against each other) and its mask read back to the host;
/// `None` when there is nothing to compute or the mask is not readable.
#[allow(clippy::type_complexity)]
fn prepare(
    q: &HeadView,
    k: &HeadView,
    v: &HeadView,
    mask: Option<&Tensor<4, Bool>>,
) -> Option<(Dims, usize, Option<Vec<bool>>)> {
    let [batch, heads, seq_q, d] = q.dims;
    let [_, _, seq_k, d_v] = v.dims;
    assert_eq!(k.dims, [batch, heads, seq_k, d], "attention: key shape");
    assert_eq!(v.dims[..2], [batch, heads], "attention: value shape");
    if batch * heads * seq_q * seq_k == 0 {
        return None;
    }
    let dims = Dims {
        heads,
        seq_q,
        seq_k,
        d,
        d_v,
    };
    // The mask is read back only once the tensors are known to be flex tensors.
    let mask = mask_on_host(mask, batch * heads * seq_q * seq_k)?;
    Some((dims, batch, mask))
}

/// Whether the three inputs are `f32` (the only dtype the kernels take).
fn all_f32(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>) -> bool {
    [q.dtype(), k.dtype(), v.dtype()]
        .iter()
        .all(|&d| d == DType::F32)
}

/// The mask read back to the host (`Some(None)` without one), checked to hold `len` entries;
/// `None` when it is not readable as booleans.
fn mask_on_host(mask: Option<&Tensor<4, Bool>>, len: usize) -> Option<Option<Vec<bool>>> {
    let Some(mask) = mask else {
        return Some(None);
    };
    let mask = mask.clone().into_data().try_to_vec::<bool>().ok()?;
    assert_eq!(mask.len(), len, "attention: mask shape");
    Some(Some(mask))
}

fn on_autodiff<C: CheckpointStrategy>(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    mask: Option<&Tensor<4, Bool>>,
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
        HeadView::new(q.into_primitive()),
        HeadView::new(k.into_primitive()),
        HeadView::new(v.into_primitive()),
    );
    let (dims, batch, mask) = prepare(&q, &k, &v, mask)?;
    let (out, probs) = forward(dims, batch, &q, &k, &v, mask.as_deref(), causal, scale);
    // Written as `[batch, seq_q, heads, d_v]` and returned as its `[batch, heads, seq_q, d_v]`
    // view: multi-head attention swaps the two back and merges the heads without a copy.
    let out = flex_tensor(out, [batch, dims.seq_q, dims.heads, dims.d_v]).transpose(1, 2);
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

/// A `[batch, heads, rows, cols]` tensor read per (batch, head) as a row-major matrix with a
/// row stride: any layout whose last stride is 1 and whose other strides are non-negative, which
/// covers contiguous tensors and the `[batch, rows, heads, cols]` buffers that multi-head
/// attention views with heads and rows swapped. Other layouts are copied once.
#[derive(Clone, Debug)]
struct HeadView {
    tensor: FlexTensor,
    dims: [usize; 4],
    strides: [usize; 4],
    offset: usize,
}

impl HeadView {
    fn new(tensor: FlexTensor) -> Self {
        let readable = |t: &FlexTensor| {
            let strides = t.layout().strides();
            strides.len() == 4 && strides[3] == 1 && strides.iter().all(|&s| s >= 0)
        };
        let tensor = if readable(&tensor) {
            tensor
        } else {
            tensor.to_contiguous()
        };
        let layout = tensor.layout();
        let shape = layout.shape();
        let dims = [shape[0], shape[1], shape[2], shape[3]];
        let s = layout.strides();
        let strides = [s[0], s[1], s[2], s[3]].map(|s| s as usize);
        let offset = layout.start_offset();
        Self {
            tensor,
            dims,
            strides,
            offset,
        }
    }

    /// The matrix of `(batch, head)` and its row stride.
    fn matrix(&self, batch: usize, head: usize) -> (&[f32], usize) {
        let [_, _, rows, cols] = self.dims;
        let start = self.offset + batch * self.strides[0] + head * self.strides[1];
        let len = (rows - 1) * self.strides[2] + cols;
        (
            &self.tensor.storage::<f32>()[start..start + len],
            self.strides[2],
        )
    }
}

/// Independent partial sums and maxima per row: the loops below keep this many in flight, so
/// they vectorize (one running `f32` sum would be a serial chain the compiler must keep).
const LANES: usize = 16;

/// `a · b` over `a.len()` elements in [`LANES`] partial sums, then the tail: inlined into the
/// `simd_dispatch!` bodies that call it, so it takes their instruction set.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len();
    let (a, b) = (a, &b[..n]);
    let full = n / LANES * LANES;
    let mut lanes = [0.0f32; LANES];
    for (x, y) in a[..full]
        .chunks_exact(LANES)
        .zip(b[..full].chunks_exact(LANES))
    {
        for l in 0..LANES {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut sum = lanes.iter().sum::<f32>();
    for (x, y) in a[full..].iter().zip(&b[full..]) {
        sum += x * y;
    }
    sum
}

simd_dispatch! {
    /// `row = softmax(scale * row + bias)` with `bias` 0 where a key is kept and -∞ where it is
    /// masked (masked entries get exactly 0; all zeros when nothing is kept). The mask comes
    /// as floats so every pass is plain vector arithmetic.
    fn softmax_row(row: &mut [f32], bias: &[f32], scale: f32) {
        let n = row.len();
        let full = n / LANES * LANES;
        let mut lane_max = [f32::NEG_INFINITY; LANES];
        for (x, m) in row[..full].chunks_exact(LANES).zip(bias[..full].chunks_exact(LANES)) {
            for l in 0..LANES {
                let v = x[l] * scale + m[l];
                lane_max[l] = if v > lane_max[l] { v } else { lane_max[l] };
            }
        }
        let mut max = f32::NEG_INFINITY;
        for (&x, &m) in row[full..].iter().zip(&bias[full..]) {
            let v = x * scale + m;
            if v > max {
                max = v;
            }
        }
        for m in lane_max {
            if m > max {
                max = m;
            }
        }
        if max == f32::NEG_INFINITY {
            row.fill(0.0);
            return;
        }
        let mut lane_sum = [0.0f32; LANES];
        for (x, m) in row[..full].chunks_exact_mut(LANES).zip(bias[..full].chunks_exact(LANES)) {
            for l in 0..LANES {
                let e = exp(x[l] * scale - max);
                x[l] = if m[l] == 0.0 { e } else { 0.0 };
                lane_sum[l] += x[l];
            }
        }
        let mut sum = 0.0f32;
        for (x, &m) in row[full..].iter_mut().zip(&bias[full..]) {
            let e = exp(*x * scale - max);
            *x = if m == 0.0 { e } else { 0.0 };
            sum += *x;
        }
        sum += lane_sum.iter().sum::<f32>();
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

simd_dispatch! {
    /// The softmax's backward for one row, in place: `ds = scale * p * (ds - <ds, p>)`.
    fn softmax_backward_row(ds: &mut [f32], p: &[f32], scale: f32) {
        let dot = dot(ds, p);
        for (ds, &p) in ds.iter_mut().zip(p) {
            *ds = scale * p * (*ds - dot);
        }
    }
}

/// Per (batch, head): scores, masked softmax, context. Returns the context, laid out
/// `[batch, seq_q, heads, d_v]`, and the probabilities, `[batch, heads, seq_q, seq_k]`.
#[allow(clippy::too_many_arguments)]
fn forward(
    dims: Dims,
    batch: usize,
    q: &HeadView,
    k: &HeadView,
    v: &HeadView,
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
    // Both buffers are written whole by the products below (the scores before the softmax
    // reads them; the context by the heads' column blocks together): no zero fill.
    let (n_out, n_probs) = (batch * seq_q * heads * d_v, batch * heads * seq_q * seq_k);
    let mut out: Vec<f32> = Vec::with_capacity(n_out);
    let mut probs: Vec<f32> = Vec::with_capacity(n_probs);
    let offset = seq_k as isize - seq_q as isize;
    // One task per batch entry: its heads' outputs interleave in memory.
    out.spare_capacity_mut()[..n_out]
        .par_chunks_mut(seq_q * heads * d_v)
        .zip(probs.spare_capacity_mut()[..n_probs].par_chunks_mut(heads * seq_q * seq_k))
        .enumerate()
        .for_each(|(b, (out, probs))| {
            // 0 for a kept key, -∞ for a masked one.
            let mut bias = vec![0.0f32; seq_k];
            let masked = mask.is_some() || causal;
            for (h, p) in probs.chunks_mut(seq_q * seq_k).enumerate() {
                let pair = b * heads + h;
                let ((q, q_rs), (k, k_rs), (v, v_rs)) =
                    (q.matrix(b, h), k.matrix(b, h), v.matrix(b, h));
                // S = Q Kᵀ
                matmul_uninit(
                    (seq_q, seq_k, d),
                    p,
                    (seq_k, 1),
                    q,
                    (q_rs, 1),
                    k,
                    (1, k_rs),
                    false,
                );
                // SAFETY: the product wrote the whole `[seq_q, seq_k]` block.
                let p = unsafe { assume_init(p) };
                for i in 0..seq_q {
                    let row = &mut p[i * seq_k..][..seq_k];
                    if masked {
                        // Keys after `last` are in the query's future (causal); `mask` rows
                        // mark the others.
                        let last = if causal {
                            i as isize + offset
                        } else {
                            isize::MAX
                        };
                        match mask {
                            Some(m) => {
                                let m = &m[(pair * seq_q + i) * seq_k..][..seq_k];
                                for (j, (bias, &masked)) in bias.iter_mut().zip(m).enumerate() {
                                    let out = masked || j as isize > last;
                                    *bias = if out { f32::NEG_INFINITY } else { 0.0 };
                                }
                            }
                            None => {
                                for (j, bias) in bias.iter_mut().enumerate() {
                                    let out = j as isize > last;
                                    *bias = if out { f32::NEG_INFINITY } else { 0.0 };
                                }
                            }
                        }
                    }
                    softmax_row(row, &bias, scale);
                }
                // O = P V, rows `heads * d_v` apart: head `h` writes columns
                // `h d_v..(h + 1) d_v` of every row, so the heads together write all of `out`.
                let out = &mut out[h * d_v..];
                matmul_uninit(
                    (seq_q, d_v, seq_k),
                    out,
                    (heads * d_v, 1),
                    p,
                    (seq_k, 1),
                    v,
                    (v_rs, 1),
                    false,
                );
            }
        });
    // SAFETY: every batch entry's block of both buffers was written above.
    unsafe {
        out.set_len(n_out);
        probs.set_len(n_probs);
    }
    (out, probs)
}

/// The backward node of the fused attention.
#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_out = HeadView::new(grads.consume::<Flex>(&ops.node));
        let state = ops.state;
        let Dims {
            heads,
            seq_q,
            seq_k,
            d,
            d_v,
        } = state.dims;
        let batch = state.q.dims[0];
        let scale = state.scale;
        // Gradients laid out `[batch, seq, heads, d]` (the layout of the projections the inputs
        // were split from), returned as `[batch, heads, seq, d]` views.
        let (n_q, n_k, n_v) = (
            batch * seq_q * heads * d,
            batch * seq_k * heads * d,
            batch * seq_k * heads * d_v,
        );
        let (mut dq, mut dk, mut dv) = (
            Vec::<f32>::with_capacity(n_q),
            Vec::<f32>::with_capacity(n_k),
            Vec::<f32>::with_capacity(n_v),
        );
        // Written whole by the heads' products (each head its column block of every row).
        dq.spare_capacity_mut()[..n_q]
            .par_chunks_mut(seq_q * heads * d)
            .zip(dk.spare_capacity_mut()[..n_k].par_chunks_mut(seq_k * heads * d))
            .zip(dv.spare_capacity_mut()[..n_v].par_chunks_mut(seq_k * heads * d_v))
            .enumerate()
            .for_each(|(b, ((dq, dk), dv))| {
                let mut ds = vec![0.0f32; seq_q * seq_k];
                for h in 0..heads {
                    let pair = b * heads + h;
                    let ((q, q_rs), (k, k_rs), (v, v_rs)) = (
                        state.q.matrix(b, h),
                        state.k.matrix(b, h),
                        state.v.matrix(b, h),
                    );
                    let (d_o, do_rs) = d_out.matrix(b, h);
                    let p = &state.probs[pair * seq_q * seq_k..][..seq_q * seq_k];
                    // dV = Pᵀ dO
                    let dv = &mut dv[h * d_v..];
                    matmul_uninit(
                        (seq_k, d_v, seq_q),
                        dv,
                        (heads * d_v, 1),
                        p,
                        (1, seq_k),
                        d_o,
                        (do_rs, 1),
                        false,
                    );
                    // dP = dO Vᵀ, then dS = s P ⊙ (dP − rowsum(P ⊙ dP)) in place.
                    matmul(
                        (seq_q, seq_k, d_v),
                        &mut ds,
                        (seq_k, 1),
                        false,
                        d_o,
                        (do_rs, 1),
                        v,
                        (1, v_rs),
                        false,
                    );
                    for (ds, p) in ds.chunks_mut(seq_k).zip(p.chunks(seq_k)) {
                        softmax_backward_row(ds, p, scale);
                    }
                    // dQ = dS K, dK = dSᵀ Q
                    let dq = &mut dq[h * d..];
                    matmul_uninit(
                        (seq_q, d, seq_k),
                        dq,
                        (heads * d, 1),
                        &ds,
                        (seq_k, 1),
                        k,
                        (k_rs, 1),
                        false,
                    );
                    let dk = &mut dk[h * d..];
                    matmul_uninit(
                        (seq_k, d, seq_q),
                        dk,
                        (heads * d, 1),
                        &ds,
                        (1, seq_k),
                        q,
                        (q_rs, 1),
                        false,
                    );
                }
            });
        // SAFETY: every batch entry's block of the three buffers was written above.
        unsafe {
            dq.set_len(n_q);
            dk.set_len(n_k);
            dv.set_len(n_v);
        }
        let [node_q, node_k, node_v] = ops.parents;
        if let Some(node) = node_q {
            let dq = flex_tensor(dq, [batch, seq_q, heads, d]).transpose(1, 2);
            grads.register::<Flex>(node.id, dq);
        }
        if let Some(node) = node_k {
            let dk = flex_tensor(dk, [batch, seq_k, heads, d]).transpose(1, 2);
            grads.register::<Flex>(node.id, dk);
        }
        if let Some(node) = node_v {
            let dv = flex_tensor(dv, [batch, seq_k, heads, d_v]).transpose(1, 2);
            grads.register::<Flex>(node.id, dv);
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

    use crate::fused::test_support::{FLEX_REQUIRED, flex_device, max_abs_diff, values};

    fn input(shape: [usize; 4], salt: usize, device: &Device) -> Tensor<4> {
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| (((i * 7919 + salt * 104_729) % 2001) as f32 / 1000.0 - 1.0) * 1.5)
            .collect();
        Tensor::from_data(TensorData::new(values, shape), device)
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

    /// How the inputs are laid out: contiguous `[batch, heads, seq, d]`; as multi-head attention
    /// makes them (`[batch, seq, heads, d]` with two dimensions swapped); or with the last two
    /// dimensions transposed (a layout the kernel copies first).
    #[derive(Clone, Copy, Debug)]
    enum Layout {
        Contiguous,
        HeadsSplit,
        Transposed,
    }

    /// A `[batch, heads, seq, d]` input in `layout`, and the tensor its gradient is taken of.
    fn laid_out(
        layout: Layout,
        shape: [usize; 4],
        salt: usize,
        device: &Device,
    ) -> (Tensor<4>, Tensor<4>) {
        let [b, h, t, d] = shape;
        match layout {
            Layout::Contiguous => {
                let x = input(shape, salt, device).require_grad();
                (x.clone(), x)
            }
            Layout::HeadsSplit => {
                let x = input([b, t, h, d], salt, device).require_grad();
                (x.clone().swap_dims(1, 2), x)
            }
            Layout::Transposed => {
                let x = input([b, h, d, t], salt, device).require_grad();
                (x.clone().swap_dims(2, 3), x)
            }
        }
    }

    /// Output and the three gradients through the fused op or burn's composed attention.
    fn run(
        device: &Device,
        shape: (usize, usize, usize, usize),
        lengths: Option<&[usize]>,
        causal: bool,
        layout: Layout,
        fused: bool,
    ) -> Vec<Vec<f32>> {
        let (batch, seq_q, seq_k, heads) = shape;
        let (d, d_v) = (4, 3);
        let (q, q_base) = laid_out(layout, [batch, heads, seq_q, d], 1, device);
        let (k, k_base) = laid_out(layout, [batch, heads, seq_k, d], 2, device);
        let (v, v_base) = laid_out(layout, [batch, heads, seq_k, d_v], 3, device);
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
            burn_attention(q, k, v, m, None, options)
        };
        // As multi-head attention continues: heads merged back, a weighted sum.
        let [b, h, t, dv] = out.dims();
        let merged = out.clone().swap_dims(1, 2).reshape([b, t, h * dv]);
        let weights = input([b, t, h * dv, 1], 4, device).reshape([b, t, h * dv]);
        let grads = (merged * weights).sum().backward();
        vec![
            values(out),
            values(q_base.grad(&grads).unwrap()),
            values(k_base.grad(&grads).unwrap()),
            values(v_base.grad(&grads).unwrap()),
        ]
    }

    /// The fused op equals burn's composed attention, values and gradients: causal and not,
    /// padding masks including a fully masked batch entry, fewer queries than keys (the causal
    /// boundary aligned at the end), three input layouts, with and without gradient
    /// checkpointing.
    #[test]
    fn fused_equals_composed_attention() {
        let flex = flex_device().expect(FLEX_REQUIRED);
        for device in [
            flex.clone().autodiff(),
            flex.clone().autodiff().gradient_checkpointing(),
        ] {
            for (shape, lengths) in [
                ((2, 5, 5, 3), None),
                ((3, 6, 6, 2), Some(&[6usize, 4, 0][..])),
                ((2, 3, 7, 2), Some(&[7usize, 5][..])),
                // Rows longer than the softmax's 16 lanes, with a tail.
                ((2, 20, 37, 2), Some(&[37usize, 19][..])),
            ] {
                for causal in [false, true] {
                    for layout in [Layout::Contiguous, Layout::HeadsSplit, Layout::Transposed] {
                        let fused = run(&device, shape, lengths, causal, layout, true);
                        let composed = run(&device, shape, lengths, causal, layout, false);
                        for (name, (a, b)) in ["out", "dq", "dk", "dv"]
                            .iter()
                            .zip(fused.iter().zip(&composed))
                        {
                            assert!(a.iter().all(|x| x.is_finite()), "{name} not finite");
                            let worst = max_abs_diff(a, b);
                            assert!(
                                worst <= 1e-5,
                                "{name} (shape {shape:?}, lengths {lengths:?}, causal {causal}, \
                                 {layout:?}): differs by {worst}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Inference (no autodiff) through the fused forward pass equals burn's attention.
    #[test]
    fn fused_inference_equals_composed_attention() {
        let device = flex_device().expect(FLEX_REQUIRED);
        for (shape, lengths) in [
            ((2, 5, 5, 3), None),
            ((3, 6, 6, 2), Some(&[6usize, 4, 0][..])),
            ((2, 20, 37, 2), Some(&[37usize, 19][..])),
        ] {
            let (batch, seq_q, seq_k, heads) = shape;
            for causal in [false, true] {
                let q = input([batch, heads, seq_q, 4], 1, &device);
                let k = input([batch, heads, seq_k, 4], 2, &device);
                let v = input([batch, heads, seq_k, 3], 3, &device);
                let m = lengths.map(|l| mask(l, heads, seq_q, seq_k, &device));
                let fused = super::attention(&q, &k, &v, m.as_ref(), causal, 0.5)
                    .expect("flex runs the fused attention");
                let options = AttentionModuleOptions {
                    scale: Some(0.5),
                    softcap: None,
                    is_causal: causal,
                };
                let composed = burn_attention(q, k, v, m, None, options);
                let (a, b) = (
                    fused.into_data().try_to_vec::<f32>().unwrap(),
                    composed.into_data().try_to_vec::<f32>().unwrap(),
                );
                // Rows with every key masked: burn's softmax gives NaN or a uniform row, the
                // fused op zeros; compare the rest.
                let worst = a
                    .iter()
                    .zip(&b)
                    .filter(|(_, b)| b.is_finite())
                    .fold(0.0f32, |w, (a, b)| w.max((a - b).abs()));
                assert!(
                    worst <= 1e-5,
                    "shape {shape:?}, lengths {lengths:?}, causal {causal}: differs by {worst}"
                );
            }
        }
    }

    /// Which calls take the fused op.
    /// A decoding step (one query) over keys and values read in place from a longer buffer,
    /// with grouped key/value heads, equals burn's attention over the repeated heads; on the
    /// serial path (few keys) and the parallel one, with and without a padding mask.
    #[test]
    fn single_query_equals_composed_attention() {
        let device = flex_device().expect(FLEX_REQUIRED);
        // (batch, query heads, group, keys, d, lengths)
        for (batch, heads, group, seq_k, d, lengths) in [
            (1, 2, 1, 5, 20, None),
            (2, 4, 2, 7, 16, Some(&[7usize, 3][..])),
            (2, 6, 3, 300, 64, None),
            (3, 4, 1, 150, 33, Some(&[150usize, 1, 77][..])),
        ] {
            let kv_heads = heads / group;
            let capacity = seq_k + 9;
            let q = input([batch, heads, 1, d], 1, &device);
            let in_buffer = |salt, width| {
                input([batch, kv_heads, capacity, width], salt, &device).slice([
                    0..batch,
                    0..kv_heads,
                    0..seq_k,
                    0..width,
                ])
            };
            let (k, v) = (in_buffer(2, d), in_buffer(3, d + 3));
            let m = lengths.map(|l| mask(l, heads, 1, seq_k, &device));
            let fused = super::single_query(&q, &k, &v, m.as_ref(), group, 0.25)
                .expect("flex runs the decoding step");
            let repeat = |x: Tensor<4>| {
                let [b, h, t, w] = x.dims();
                x.unsqueeze_dim::<5>(2)
                    .expand([b, h, group, t, w])
                    .reshape([b, h * group, t, w])
            };
            let options = AttentionModuleOptions {
                scale: Some(0.25),
                softcap: None,
                is_causal: false,
            };
            let composed = burn_attention(q, repeat(k), repeat(v), m, None, options);
            assert_eq!(fused.dims(), composed.dims());
            let worst = max_abs_diff(&values(fused), &values(composed));
            assert!(
                worst <= 1e-5,
                "batch {batch}, heads {heads}, group {group}, keys {seq_k}, d {d}: differs by \
                 {worst}"
            );
        }
    }

    #[test]
    fn fused_attention_is_for_flex_only() {
        for selected in test_devices() {
            for device in [selected.device.clone(), selected.device.clone().autodiff()] {
                // A batch entry per thread, several queries: fused on flex, with or without
                // autodiff.
                let batch = rayon::current_num_threads();
                let q = input([batch, 1, 2, 4], 1, &device);
                let fused = super::attention(&q, &q, &q, None, false, 0.5);
                assert_eq!(
                    fused.is_some(),
                    selected.backend == Backend::Flex,
                    "fused attention on {selected} (autodiff {})",
                    device.is_autodiff()
                );
                // One query (a decoding step): flex's attention serves inference.
                let q = input([batch, 1, 1, 4], 1, &device);
                let fused = super::attention(&q, &q, &q, None, false, 0.5);
                assert_eq!(
                    fused.is_some(),
                    selected.backend == Backend::Flex && device.is_autodiff(),
                    "one-query attention on {selected} (autodiff {})",
                    device.is_autodiff()
                );
            }
        }
    }
}
