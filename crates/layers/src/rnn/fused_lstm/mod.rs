//! A fused LSTM recurrence for burn's `flex` CPU backend.
//!
//! The composed LSTM (`RecurrentWeights::step` in a loop) records about 45 autodiff operations
//! per time step, each a small tensor op on one thread, and its backward pass accumulates the
//! hidden-weight gradient as one small matmul per step. Here the whole sequence of one direction
//! is a single operation on flex's `f32` buffers:
//!
//! - the forward pass runs the gate matmul and the cell update per step, writing the activated
//!   gates and cell states that the backward pass needs;
//! - the backward pass is hand-written back-propagation through time: per step one fused loop
//!   for the gate gradients and one matmul for the recurrent gradient, then the hidden-weight
//!   gradient as **one** matmul over all steps;
//! - each time step's work is split across rayon's threads by hidden units (each thread computes
//!   its units' gates, cell and hidden state for the whole batch, from a weight packed once per
//!   sequence), with one wait per step for the other threads' units (see [`lockstep`]).
//!
//! The operation's single output packs the hidden states of every step and the final cell
//! state as `[batch_size, seq_length + 1, d_hidden]` (burn's autodiff nodes have one output).
//!
//! It is used when the tensors live on flex in `f32` (with or without autodiff); on every other
//! backend, dtype or build [`lstm_sequence`] returns `None` and the layer runs the composed ops,
//! which compute the same function.

use burn::tensor::DType;
use burn::tensor::Tensor;
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
use std::ops::Range;

mod cell;
mod lockstep;
mod packed;

use crate::fused::{contiguous, flex_tensor, matmul_new, slice, writable};
use lockstep::lockstep;
use packed::{Packed, Source};

/// Runs one LSTM direction over a projected sequence as one fused operation.
///
/// - `xp`: input projection with the biases folded in, `[batch_size, seq_length, 4 * d_hidden]`
///   (gate blocks `i, f, g, o`);
/// - `w_hh`: hidden weights in PyTorch's layout, `[4 * d_hidden, d_hidden]`;
/// - `h0`, `c0`: initial state, `[batch_size, d_hidden]`;
/// - `reverse`: run from the last position to the first.
///
/// Returns `[batch_size, seq_length + 1, d_hidden]`: the hidden state of every position (in
/// time order) followed by the final cell state. `Err(xp)` when the tensors are not `f32`
/// flex tensors; the caller then runs the composed ops on `xp`.
///
/// `xp` is taken by value: when nothing else holds its buffer, the gates are computed in it
/// (and, in the backward pass, their gradient), instead of in a copy.
// The `Err` side hands the caller's own tensor back (not an error value): boxing it would
// cost an allocation per call for nothing.
#[allow(clippy::result_large_err)]
pub(crate) fn lstm_sequence(
    xp: Tensor<3>,
    w_hh: &Tensor<2>,
    h0: &Tensor<2>,
    c0: &Tensor<2>,
    reverse: bool,
) -> Result<Tensor<3>, Tensor<3>> {
    if [xp.dtype(), w_hh.dtype(), h0.dtype(), c0.dtype()]
        .iter()
        .any(|&d| d != DType::F32)
        || xp.dims()[..2].contains(&0)
    {
        return Err(xp);
    }
    // Dispatch on `xp`'s backend (checked on a clone of its handle); the other inputs are
    // checked where they are converted.
    if xp
        .clone()
        .try_into_primitive::<Autodiff<Flex, NoCheckpointing>>()
        .is_ok()
    {
        return on_autodiff::<NoCheckpointing>(xp, w_hh, h0, c0, reverse);
    }
    if xp
        .clone()
        .try_into_primitive::<Autodiff<Flex, BalancedCheckpointing>>()
        .is_ok()
    {
        return on_autodiff::<BalancedCheckpointing>(xp, w_hh, h0, c0, reverse);
    }
    let flex = |t: &Tensor<2>| t.clone().try_into_primitive::<Flex>().map(contiguous);
    let (Ok(w), Ok(h0), Ok(c0)) = (flex(w_hh), flex(h0), flex(c0)) else {
        return Err(xp);
    };
    if xp.clone().try_into_primitive::<Flex>().is_err() {
        return Err(xp);
    }
    let xp = contiguous(xp.try_into_primitive::<Flex>().expect("checked above"));
    let (out, _) = forward(xp, &w, &h0, &c0, reverse);
    Ok(Tensor::from_primitive::<Flex>(out))
}

/// The fused operation on `Autodiff<Flex, C>` tensors (`xp`'s backend checked by the caller),
/// recording one backward node. `Err(xp)` as in [`lstm_sequence`].
#[allow(clippy::result_large_err)]
fn on_autodiff<C: CheckpointStrategy>(
    xp: Tensor<3>,
    w_hh: &Tensor<2>,
    h0: &Tensor<2>,
    c0: &Tensor<2>,
    reverse: bool,
) -> Result<Tensor<3>, Tensor<3>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let autodiff = |t: &Tensor<2>| t.clone().try_into_primitive::<Autodiff<Flex, C>>();
    let (Ok(w), Ok(h0), Ok(c0)) = (autodiff(w_hh), autodiff(h0), autodiff(c0)) else {
        return Err(xp);
    };
    let xp = xp
        .try_into_primitive::<Autodiff<Flex, C>>()
        .expect("checked by the caller");
    let guards = [xp.node(), w.node(), h0.node(), c0.node()];
    let (xp, w, h0, c0) = (
        contiguous(xp.into_primitive()),
        contiguous(w.into_primitive()),
        contiguous(h0.into_primitive()),
        contiguous(c0.into_primitive()),
    );
    let (out, saved) = forward(xp, &w, &h0, &c0, reverse);
    let out = match LstmBackward.prepare::<C>(guards).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let state = LstmState {
                saved,
                out: out.clone(),
                w,
                h0,
                c0,
                reverse,
            };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Ok(Tensor::from_primitive::<Autodiff<Flex, C>>(out))
}

/// Sizes of one fused run.
#[derive(Clone, Copy, Debug)]
struct Dims {
    batch: usize,
    seq: usize,
    hidden: usize,
}

impl Dims {
    fn gates(&self) -> usize {
        4 * self.hidden
    }

    /// Position processed at `step` (steps count in processing order).
    fn position(&self, step: usize, reverse: bool) -> usize {
        if reverse { self.seq - 1 - step } else { step }
    }
}

/// How one time step's work is shared between rayon's threads: the hidden units in whole
/// panels of the step product (each part computes its units' four gates, cell and hidden
/// state, for every batch row), and the batch rows as well when there are more threads than
/// panels of units.
#[derive(Clone, Copy, Debug)]
struct Split {
    /// Hidden units per part (a multiple of the panel width, except the last part's).
    units: usize,
    unit_parts: usize,
    /// Batch rows per part.
    rows: usize,
    row_parts: usize,
    dims: Dims,
}

impl Split {
    fn new(dims: Dims, panel_width: usize) -> Self {
        let threads = rayon::current_num_threads().max(1);
        let unit_parts = threads.min(dims.hidden.div_ceil(panel_width)).max(1);
        let units = dims
            .hidden
            .div_ceil(unit_parts)
            .next_multiple_of(panel_width);
        let unit_parts = dims.hidden.div_ceil(units);
        let rows = dims
            .batch
            .div_ceil((threads / unit_parts).clamp(1, dims.batch));
        Self {
            units,
            unit_parts,
            rows,
            row_parts: dims.batch.div_ceil(rows),
            dims,
        }
    }

    fn parts(&self) -> usize {
        self.unit_parts * self.row_parts
    }

    /// The batch rows and hidden units of part `part`.
    fn part(&self, part: usize) -> (Range<usize>, Range<usize>) {
        let (r, u) = (part / self.unit_parts, part % self.unit_parts);
        (
            r * self.rows..((r + 1) * self.rows).min(self.dims.batch),
            u * self.units..((u + 1) * self.units).min(self.dims.hidden),
        )
    }
}

/// A buffer that the chunks of one phase of [`lockstep`] read and write at disjoint places.
#[derive(Clone, Copy, Debug)]
struct Shared {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: a `Shared` is only an address; every access goes through the unsafe methods below,
// whose callers keep the threads' ranges disjoint within a phase.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    fn new(buffer: &mut [f32]) -> Self {
        Self {
            ptr: buffer.as_mut_ptr(),
            len: buffer.len(),
        }
    }

    /// The address of element `at`.
    fn at(self, at: usize) -> *mut f32 {
        assert!(at <= self.len, "fused LSTM: offset out of bounds");
        // SAFETY: `at` is within the buffer (or one past its end).
        unsafe { self.ptr.add(at) }
    }

    /// Elements `at..at + len`.
    ///
    /// # Safety
    /// No other thread reads or writes them while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice<'a>(self, at: usize, len: usize) -> &'a mut [f32] {
        assert!(at + len <= self.len, "fused LSTM: range out of bounds");
        // SAFETY: in bounds; exclusive by the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len) }
    }
}

/// What the forward pass keeps for the backward pass.
#[derive(Clone, Debug)]
struct Saved {
    dims: Dims,
    /// Activated gates `i, f, g, o` of every position, `[batch, seq, 4 * hidden]` (the
    /// backward pass turns them into their gradient in place when it holds the only
    /// reference).
    gates: FlexTensor,
    /// Cell state after every position, `[batch, seq, hidden]`.
    cells: Vec<f32>,
}

/// State of the backward node.
#[derive(Clone, Debug)]
struct LstmState {
    saved: Saved,
    /// The packed output (hidden states, then the final cell state).
    out: FlexTensor,
    w: FlexTensor,
    h0: FlexTensor,
    c0: FlexTensor,
    reverse: bool,
}

/// The forward pass on contiguous tensors. Returns the packed output and what the backward
/// pass needs. The gates are computed in `xp`'s buffer when nothing else holds it.
fn forward(
    xp: FlexTensor,
    w: &FlexTensor,
    h0: &FlexTensor,
    c0: &FlexTensor,
    reverse: bool,
) -> (FlexTensor, Saved) {
    let shape = xp.layout().shape();
    let dims = Dims {
        batch: shape[0],
        seq: shape[1],
        hidden: shape[2] / 4,
    };
    let Dims { batch, seq, hidden } = dims;
    let g4 = dims.gates();
    let (h0, c0) = (slice(h0), slice(c0));
    let (gs, cs, os) = (seq * g4, seq * hidden, (seq + 1) * hidden);

    // W_hh^T, `[hidden, 4 * hidden]`, packed once for every step, each gate on whole panels.
    let w_t = Packed::new(slice(w), hidden, 4, hidden, Source::Transposed);
    let split = Split::new(dims, w_t.panel_width());
    let mut out = vec![0.0f32; batch * os];
    // Each step adds `h_prev W_hh^T` to the projected input in place: in `xp` itself when
    // nothing else holds it, else in a copy (same layout, `[batch, seq, 4 * hidden]`).
    let mut gates = writable(xp);
    let mut cells = vec![0.0f32; batch * cs];
    {
        let g = Shared::new(gates.try_storage_mut().expect("unique by construction"));
        let (o, c) = (Shared::new(&mut out), Shared::new(&mut cells));
        lockstep(seq, split.parts(), |step, part| {
            let (rows, units) = split.part(part);
            let (u0, n) = (units.start, units.len());
            let t = dims.position(step, reverse);
            let prev = (step > 0).then(|| dims.position(step - 1, reverse));
            let (h_prev, h_rs) = match prev {
                Some(p) => (o.at(rows.start * os + p * hidden).cast_const(), os),
                None => (h0[rows.start * hidden..].as_ptr(), hidden),
            };
            // gates[rows, t, units of each gate] += h_prev W_hh^T. SAFETY: the previous
            // positions' hidden states were written by the previous phase and nothing writes
            // them now; this part alone writes its rows' gate columns of its units.
            unsafe {
                w_t.mul_units(
                    rows.len(),
                    h_prev,
                    h_rs,
                    g.at(rows.start * gs + t * g4),
                    gs,
                    units.clone(),
                    true,
                );
            }
            for r in rows {
                let gate = r * gs + t * g4 + u0;
                // SAFETY: this part alone touches its rows' units at position `t` (the gates,
                // the cell and hidden state); position `prev`'s cell states are only read.
                unsafe {
                    let c_prev: &[f32] = match prev {
                        Some(p) => c.slice(r * cs + p * hidden + u0, n),
                        None => &c0[r * hidden + u0..][..n],
                    };
                    cell::forward(
                        g.slice(gate, n),
                        g.slice(gate + hidden, n),
                        g.slice(gate + 2 * hidden, n),
                        g.slice(gate + 3 * hidden, n),
                        c_prev,
                        c.slice(r * cs + t * hidden + u0, n),
                        o.slice(r * os + t * hidden + u0, n),
                    );
                }
            }
        });
    }
    let last = dims.position(seq - 1, reverse);
    for r in 0..batch {
        out[r * os + seq * hidden..][..hidden]
            .copy_from_slice(&cells[r * cs + last * hidden..][..hidden]);
    }
    let out = flex_tensor(out, [batch, seq + 1, hidden]);
    (out, Saved { dims, gates, cells })
}

/// Gradients of the four inputs.
struct Grads {
    xp: FlexTensor,
    w: Vec<f32>,
    h0: Vec<f32>,
    c0: Vec<f32>,
}

/// Back-propagation through time. `grad` is the gradient of the packed output. The gates'
/// buffer becomes the gradient of the pre-activations (in place when the state holds the only
/// reference).
fn backward(state: LstmState, grad: &[f32]) -> Grads {
    let LstmState {
        saved: Saved { dims, gates, cells },
        out,
        w,
        h0,
        c0,
        reverse,
    } = state;
    let Dims { batch, seq, hidden } = dims;
    let g4 = dims.gates();
    let (h0, c0, out) = (slice(&h0), slice(&c0), slice(&out));
    let (gs, cs, os) = (seq * g4, seq * hidden, (seq + 1) * hidden);

    // W_hh, `[4 * hidden, hidden]`, packed once for every step.
    let w_p = Packed::new(slice(&w), g4, 1, hidden, Source::Rows);
    let split = Split::new(dims, w_p.panel_width());
    let mut dxp_t = writable(gates);
    // `dh`: the gradient flowing into the previous hidden state from the later steps (zero
    // before the last step); `dc`: the cell state's, from the final cell state's gradient.
    let mut dh = vec![0.0f32; batch * hidden];
    let mut dc = vec![0.0f32; batch * hidden];
    for r in 0..batch {
        dc[r * hidden..][..hidden].copy_from_slice(&grad[r * os + seq * hidden..][..hidden]);
    }
    {
        let a = Shared::new(dxp_t.try_storage_mut().expect("unique by construction"));
        let (dhs, dcs) = (Shared::new(&mut dh), Shared::new(&mut dc));
        // Phase `q` first finishes `dh` of the step processed in phase `q - 1` (its product
        // needs every unit's gate gradients), then runs the cell backward of the next step.
        lockstep(seq + 1, split.parts(), |phase, part| {
            let (rows, units) = split.part(part);
            let (u0, n) = (units.start, units.len());
            if phase > 0 {
                let t = dims.position(seq - phase, reverse);
                // dh[rows, units] = dA_t[rows] W_hh[.., units]. SAFETY: every unit's gate
                // gradients at `t` were written by the previous phase and are only read now;
                // this part alone writes its rows' units of `dh`.
                unsafe {
                    w_p.mul_units(
                        rows.len(),
                        a.at(rows.start * gs + t * g4).cast_const(),
                        gs,
                        dhs.at(rows.start * hidden),
                        hidden,
                        units.clone(),
                        false,
                    );
                }
            }
            if phase == seq {
                return;
            }
            let step = seq - 1 - phase;
            let t = dims.position(step, reverse);
            let prev = step.checked_sub(1).map(|s| dims.position(s, reverse));
            for r in rows {
                let c_prev = match prev {
                    Some(p) => &cells[r * cs + p * hidden + u0..][..n],
                    None => &c0[r * hidden + u0..][..n],
                };
                let gate = r * gs + t * g4 + u0;
                // SAFETY: this part alone touches its rows' units of `dh`, `dc` and of the gate
                // gradients at `t`.
                unsafe {
                    let dh = dhs.slice(r * hidden + u0, n);
                    for (d, g) in dh.iter_mut().zip(&grad[r * os + t * hidden + u0..][..n]) {
                        *d += g;
                    }
                    cell::backward(
                        [
                            a.slice(gate, n),
                            a.slice(gate + hidden, n),
                            a.slice(gate + 2 * hidden, n),
                            a.slice(gate + 3 * hidden, n),
                        ],
                        &cells[r * cs + t * hidden + u0..][..n],
                        c_prev,
                        dh,
                        dcs.slice(r * hidden + u0, n),
                    );
                }
            }
        });
    }

    // dW_hh = sum over (row, position) of dA^T h_prev: one [4H, B*T] x [B*T, H] product.
    let mut h_prev = vec![0.0f32; batch * seq * hidden];
    for b in 0..batch {
        for step in 0..seq {
            let t = dims.position(step, reverse);
            let src = match step.checked_sub(1).map(|s| dims.position(s, reverse)) {
                Some(p) => &out[b * os + p * hidden..][..hidden],
                None => &h0[b * hidden..][..hidden],
            };
            h_prev[(b * seq + t) * hidden..][..hidden].copy_from_slice(src);
        }
    }
    let dxp: &[f32] = dxp_t.try_storage_mut().expect("unique by construction");
    let dw = matmul_new(
        (g4, hidden, batch * seq),
        dxp,
        (1, g4),
        &h_prev,
        (hidden, 1),
    );
    Grads {
        xp: dxp_t,
        w: dw,
        h0: dh,
        c0: dc,
    }
}

/// The backward node of the fused LSTM.
#[derive(Debug)]
struct LstmBackward;

impl Backward<Flex, 4> for LstmBackward {
    type State = LstmState;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = contiguous(grads.consume::<Flex>(&ops.node));
        let state = ops.state;
        let Dims { batch, seq, hidden } = state.saved.dims;
        let g = backward(state, slice(&grad));
        let [xp, w, h0, c0] = ops.parents;
        if let Some(node) = xp {
            let dxp =
                g.xp.with_layout(Layout::contiguous([batch, seq, 4 * hidden].into()));
            grads.register::<Flex>(node.id, dxp);
        }
        if let Some(node) = w {
            grads.register::<Flex>(node.id, flex_tensor(g.w, [4 * hidden, hidden]));
        }
        if let Some(node) = h0 {
            grads.register::<Flex>(node.id, flex_tensor(g.h0, [batch, hidden]));
        }
        if let Some(node) = c0 {
            grads.register::<Flex>(node.id, flex_tensor(g.c0, [batch, hidden]));
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::tensor::{Device, Tensor, TensorData};
    use lmforge_device::Backend;
    use lmforge_device::testing::test_devices;

    use super::lstm_sequence;
    use crate::fused::test_support::{FLEX_REQUIRED, flex_device, max_abs_diff, values};
    use crate::rnn::recurrent::{Cell, DirState, RecurrentWeights};

    /// Deterministic values in about [-1, 1] (no RNG: the same numbers on every backend).
    fn pattern(n: usize, salt: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 37 + salt * 101) % 41) as f32 - 20.0) / 20.0)
            .collect()
    }

    fn tensor<const D: usize>(shape: [usize; D], salt: usize, device: &Device) -> Tensor<D> {
        let n = shape.iter().product();
        Tensor::from_data(TensorData::new(pattern(n, salt), shape), device)
    }

    fn weights(d_input: usize, d_hidden: usize, device: &Device) -> RecurrentWeights {
        let gh = 4 * d_hidden;
        let scaled = |t: Tensor<2>| t * 0.5;
        RecurrentWeights {
            weight_ih: Param::from_tensor(scaled(tensor([gh, d_input], 1, device))),
            weight_hh: Param::from_tensor(scaled(tensor([gh, d_hidden], 2, device))),
            bias_ih: Some(Param::from_tensor(tensor([gh], 3, device) * 0.1)),
            bias_hh: Some(Param::from_tensor(tensor([gh], 4, device) * 0.1)),
        }
    }

    /// Forward values and every gradient of one direction, through `run` (fused on flex) or
    /// through the composed steps.
    fn outputs(
        device: &Device,
        (batch_size, seq_length, d_hidden): (usize, usize, usize),
        reverse: bool,
        fused: bool,
    ) -> Vec<Vec<f32>> {
        let d_input = 3;
        let w = weights(d_input, d_hidden, device);
        let x: Tensor<3> = tensor([batch_size, seq_length, d_input], 5, device).require_grad();
        let h0: Tensor<2> = (tensor([batch_size, d_hidden], 6, device) * 0.5).require_grad();
        let c0: Tensor<2> = tensor([batch_size, d_hidden], 7, device).require_grad();
        let state = DirState {
            h: h0.clone(),
            c: Some(c0.clone()),
        };
        let (y, last) = if fused {
            w.run(Cell::Lstm, x.clone(), state, reverse)
        } else {
            let xp = w.project_input(Cell::Lstm, x.clone());
            w.run_steps(Cell::Lstm, xp, state, reverse)
        };
        let c = last.c.unwrap();
        // A loss that weighs every output element differently.
        let loss = (y.clone() * tensor([batch_size, seq_length, d_hidden], 8, device)).sum()
            + (last.h.clone() * tensor([batch_size, d_hidden], 9, device)).sum()
            + (c.clone() * tensor([batch_size, d_hidden], 10, device)).sum();
        let grads = loss.backward();
        vec![
            values(y),
            values(last.h),
            values(c),
            values(x.grad(&grads).unwrap()),
            values(h0.grad(&grads).unwrap()),
            values(c0.grad(&grads).unwrap()),
            values(w.weight_ih.grad(&grads).unwrap()),
            values(w.weight_hh.grad(&grads).unwrap()),
            values(w.bias_ih.as_ref().unwrap().grad(&grads).unwrap()),
            values(w.bias_hh.as_ref().unwrap().grad(&grads).unwrap()),
        ]
    }

    #[test]
    fn fused_path_runs_on_flex_only() {
        for selected in test_devices() {
            for device in [selected.device.clone(), selected.device.clone().autodiff()] {
                let xp: Tensor<3> = tensor([2, 3, 8], 1, &device);
                let w: Tensor<2> = tensor([8, 2], 2, &device);
                let h0: Tensor<2> = tensor([2, 2], 3, &device);
                let fused = lstm_sequence(xp, &w, &h0, &h0, false).ok();
                assert_eq!(
                    fused.is_some(),
                    selected.backend == Backend::Flex,
                    "fused LSTM on {selected}"
                );
                if let Some(out) = fused {
                    assert_eq!(out.dims(), [2, 4, 2]);
                }
            }
        }
    }

    /// The fused recurrence and its hand-written backward pass equal the composed ops (whose
    /// agreement with PyTorch `tests/rnn_reference.rs` checks), for both directions, a single
    /// step, and gradient checkpointing; on rayon's pool (two threads here), on one thread and
    /// on three. 5 hidden units split the batch rows unevenly (batch 3 and 5); 64 and 96 units
    /// split into whole weight panels, 40 into a whole panel and a partial one (with AVX-512),
    /// for batches that fill the step product's register tile (16), leave a partial one (13)
    /// or only a partial one (3, 4).
    #[test]
    fn fused_equals_composed_values_and_gradients() {
        let device = flex_device().expect(FLEX_REQUIRED);
        let names = [
            "y",
            "h_n",
            "c_n",
            "grad x",
            "grad h0",
            "grad c0",
            "grad weight_ih",
            "grad weight_hh",
            "grad bias_ih",
            "grad bias_hh",
        ];
        for device in [
            device.clone().autodiff(),
            device.clone().autodiff().gradient_checkpointing(),
        ] {
            for shape in [
                (1, 1, 5),
                (3, 4, 5),
                (5, 7, 5),
                (13, 6, 64),
                (3, 5, 64),
                (16, 5, 40),
                (4, 3, 96),
            ] {
                for (reverse, threads) in [(false, 0), (true, 0), (false, 1), (true, 3)] {
                    let fused = if threads == 0 {
                        outputs(&device, shape, reverse, true)
                    } else {
                        rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .build()
                            .unwrap()
                            .install(|| outputs(&device, shape, reverse, true))
                    };
                    let composed = outputs(&device, shape, reverse, false);
                    for ((name, a), b) in names.iter().zip(&fused).zip(&composed) {
                        let worst = max_abs_diff(a, b);
                        // 2e-6 absolute at 5 units; relative to the largest value at 64,
                        // where sums over 64 units and 78 positions reach about 10.
                        let scale = if shape.2 > 5 {
                            b.iter().fold(1.0f32, |s, v| s.max(v.abs()))
                        } else {
                            1.0
                        };
                        assert!(
                            worst <= 2e-6 * scale,
                            "{name} (shape {shape:?}, reverse {reverse}, {threads} threads): \
                             fused and composed differ by {worst}"
                        );
                        assert!(a.iter().any(|v| *v != 0.0), "{name} is all zeros");
                    }
                }
            }
        }
    }

    /// Without autodiff (inference) the fused forward equals the composed one.
    #[test]
    fn fused_inference_equals_composed() {
        let device = flex_device().expect(FLEX_REQUIRED);
        let w = weights(3, 4, &device);
        let x: Tensor<3> = tensor([3, 6, 3], 5, &device);
        let state = || DirState {
            h: tensor([3, 4], 6, &device),
            c: Some(tensor([3, 4], 7, &device)),
        };
        for reverse in [false, true] {
            let (y, last) = w.run(Cell::Lstm, x.clone(), state(), reverse);
            let xp = w.project_input(Cell::Lstm, x.clone());
            let (y2, last2) = w.run_steps(Cell::Lstm, xp, state(), reverse);
            let diff3 = |a: Tensor<3>, b: Tensor<3>| (a - b).abs().max().into_scalar::<f32>();
            let diff2 = |a: Tensor<2>, b: Tensor<2>| (a - b).abs().max().into_scalar::<f32>();
            assert!(diff3(y, y2) <= 2e-6);
            assert!(diff2(last.h, last2.h) <= 2e-6);
            assert!(diff2(last.c.unwrap(), last2.c.unwrap()) <= 2e-6);
        }
    }
}
