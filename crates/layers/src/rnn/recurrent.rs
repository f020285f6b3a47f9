//! The engine shared by [`Rnn`](super::Rnn), [`Lstm`](super::Lstm) and [`Gru`](super::Gru):
//! PyTorch-layout weights, one stacked (optionally bidirectional) run over a sequence, and one
//! step of a cell.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Initializer};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{LayerError, assert_shape, check, fetch};

/// The recurrence a layer computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cell {
    /// Elman RNN with `tanh`.
    Tanh,
    /// Elman RNN with `relu`.
    Relu,
    /// LSTM, gates `i, f, g, o`.
    Lstm,
    /// GRU, gates `r, z, n`.
    Gru,
}

impl Cell {
    /// Gate blocks stacked in the weight matrices.
    pub(crate) fn n_gates(self) -> usize {
        match self {
            Cell::Tanh | Cell::Relu => 1,
            Cell::Lstm => 4,
            Cell::Gru => 3,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Cell::Tanh | Cell::Relu => "Rnn",
            Cell::Lstm => "Lstm",
            Cell::Gru => "Gru",
        }
    }

    fn config_name(self) -> &'static str {
        match self {
            Cell::Tanh | Cell::Relu => "RnnConfig",
            Cell::Lstm => "LstmConfig",
            Cell::Gru => "GruConfig",
        }
    }
}

/// The weights of one direction of one recurrent layer, in PyTorch's layout: the gate blocks
/// are stacked along the first dimension (LSTM `i, f, g, o`; GRU `r, z, n`).
#[derive(Module, Debug)]
pub struct RecurrentWeights {
    /// Input-to-hidden weights, `[n_gates * d_hidden, d_input]` (PyTorch `weight_ih_l{k}`).
    pub weight_ih: Param<Tensor<2>>,
    /// Hidden-to-hidden weights, `[n_gates * d_hidden, d_hidden]` (PyTorch `weight_hh_l{k}`).
    pub weight_hh: Param<Tensor<2>>,
    /// Input-to-hidden bias, `[n_gates * d_hidden]` (PyTorch `bias_ih_l{k}`).
    pub bias_ih: Option<Param<Tensor<1>>>,
    /// Hidden-to-hidden bias, `[n_gates * d_hidden]` (PyTorch `bias_hh_l{k}`).
    pub bias_hh: Option<Param<Tensor<1>>>,
}

/// One layer of a recurrent stack: a forward direction and, when bidirectional, a reverse one.
#[derive(Module, Debug)]
pub struct RecurrentLayer {
    /// Weights of the left-to-right direction.
    pub forward: RecurrentWeights,
    /// Weights of the right-to-left direction (bidirectional layers only).
    pub reverse: Option<RecurrentWeights>,
}

/// Sizes shared by the three recurrent configs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sizes {
    pub d_input: usize,
    pub d_hidden: usize,
    pub n_layers: usize,
    pub bidirectional: bool,
    pub bias: bool,
    pub dropout: f64,
}

impl Sizes {
    pub(crate) fn n_directions(&self) -> usize {
        if self.bidirectional { 2 } else { 1 }
    }

    pub(crate) fn validate(&self, cell: Cell) -> Result<(), LayerError> {
        let layer = cell.config_name();
        check(self.d_input > 0, layer, || "d_input must be > 0".into())?;
        check(self.d_hidden > 0, layer, || "d_hidden must be > 0".into())?;
        check(self.n_layers > 0, layer, || "n_layers must be > 0".into())?;
        check((0.0..1.0).contains(&self.dropout), layer, || {
            format!("dropout must be in [0, 1), got {}", self.dropout)
        })
    }

    /// Weights drawn as PyTorch does: every parameter from `U(-1/sqrt(d_hidden), 1/sqrt(d_hidden))`.
    pub(crate) fn init_layers(&self, cell: Cell, device: &Device) -> Vec<RecurrentLayer> {
        let bound = 1.0 / (self.d_hidden as f64).sqrt();
        let init = Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        let gh = cell.n_gates() * self.d_hidden;
        let direction = |d_in: usize| RecurrentWeights {
            weight_ih: init.init([gh, d_in], device),
            weight_hh: init.init([gh, self.d_hidden], device),
            bias_ih: self.bias.then(|| init.init([gh], device)),
            bias_hh: self.bias.then(|| init.init([gh], device)),
        };
        (0..self.n_layers)
            .map(|layer| {
                let d_in = if layer == 0 {
                    self.d_input
                } else {
                    self.d_hidden * self.n_directions()
                };
                RecurrentLayer {
                    forward: direction(d_in),
                    reverse: self.bidirectional.then(|| direction(d_in)),
                }
            })
            .collect()
    }
}

/// Hidden (and, for LSTM, cell) state of one direction of one layer, `[batch_size, d_hidden]`.
#[derive(Clone, Debug)]
pub(crate) struct DirState {
    pub h: Tensor<2>,
    pub c: Option<Tensor<2>>,
}

/// Splits `[batch_size, seq_length, n]` into `seq_length` tensors `[batch_size, n]`.
///
/// The split is binary (halves of halves): burn's autodiff turns each slice's gradient into a
/// zero tensor the size of the sliced tensor, so slicing every step from the whole sequence
/// would cost `O(seq_length^2)` in the backward pass; halving costs `O(seq_length log seq_length)`.
pub(crate) fn split_steps(x: Tensor<3>) -> Vec<Tensor<2>> {
    fn go(x: Tensor<3>, out: &mut Vec<Tensor<2>>) {
        let [batch_size, seq_length, n] = x.dims();
        if seq_length == 1 {
            out.push(x.reshape([batch_size, n]));
            return;
        }
        let half = seq_length / 2;
        go(x.clone().narrow(1, 0, half), out);
        go(x.narrow(1, half, seq_length - half), out);
    }
    let mut out = Vec::with_capacity(x.dims()[1]);
    go(x, &mut out);
    out
}

impl RecurrentWeights {
    /// Input projection of a whole sequence in one matmul, with the biases that can be folded
    /// in (both for RNN/LSTM; for GRU the hidden bias stays in the step, inside `r * (...)`).
    ///
    /// `x`: `[batch_size, seq_length, d_input]` -> `[batch_size, seq_length, n_gates * d_hidden]`
    pub(crate) fn project_input(&self, cell: Cell, x: Tensor<3>) -> Tensor<3> {
        let weight = self.weight_ih.val(); // [gh, d_input]
        let bias = match (cell, &self.bias_ih, &self.bias_hh) {
            (Cell::Gru, Some(b_ih), _) => Some(b_ih.val()),
            (_, Some(b_ih), Some(b_hh)) => Some(b_ih.val() + b_hh.val()),
            (_, Some(b), None) | (_, None, Some(b)) => Some(b.val()),
            (_, None, None) => None,
        };
        // One product over every row of the batch, the bias folded in (one flex op with its
        // own backward on flex).
        crate::rows::project_rows(x, &weight, bias.as_ref(), true)
    }

    /// One step of the cell from a projected input `xp_t` (`[batch_size, n_gates * d_hidden]`),
    /// given `w_hh_t`, the transposed hidden weights `[d_hidden, n_gates * d_hidden]`.
    pub(crate) fn step(
        &self,
        cell: Cell,
        xp_t: Tensor<2>,
        w_hh_t: &Tensor<2>,
        state: DirState,
    ) -> DirState {
        let hh = state.h.clone().matmul(w_hh_t.clone());
        match cell {
            Cell::Tanh => DirState {
                h: (xp_t + hh).tanh(),
                c: None,
            },
            Cell::Relu => DirState {
                h: relu(xp_t + hh),
                c: None,
            },
            Cell::Lstm => {
                let mut gates = (xp_t + hh).chunk(4, 1).into_iter();
                let (i, f, g, o) = (
                    gates.next().unwrap(),
                    gates.next().unwrap(),
                    gates.next().unwrap(),
                    gates.next().unwrap(),
                );
                let c_prev = state.c.expect("LSTM state carries a cell state");
                let c = sigmoid(f) * c_prev + sigmoid(i) * g.tanh();
                let h = sigmoid(o) * c.clone().tanh();
                DirState { h, c: Some(c) }
            }
            Cell::Gru => {
                let hh = match &self.bias_hh {
                    Some(b_hh) => hh + b_hh.val().unsqueeze::<2>(),
                    None => hh,
                };
                let mut xs = xp_t.chunk(3, 1).into_iter();
                let mut hs = hh.chunk(3, 1).into_iter();
                let r = sigmoid(xs.next().unwrap() + hs.next().unwrap());
                let z = sigmoid(xs.next().unwrap() + hs.next().unwrap());
                let n = (xs.next().unwrap() + r * hs.next().unwrap()).tanh();
                // h' = (1 - z) * n + z * h = n + z * (h - n)
                let h = n.clone() + z * (state.h - n);
                DirState { h, c: None }
            }
        }
    }

    /// Runs one direction over a sequence.
    ///
    /// `x`: `[batch_size, seq_length, d_input]`; returns the hidden states in time order,
    /// `[batch_size, seq_length, d_hidden]`, and the final state (after the last step taken:
    /// position 0 for the reverse direction).
    pub(crate) fn run(
        &self,
        cell: Cell,
        x: Tensor<3>,
        state: DirState,
        reverse: bool,
    ) -> (Tensor<3>, DirState) {
        let xp = self.project_input(cell, x);
        #[cfg(feature = "flex")]
        let xp = match (cell, &state.c) {
            (Cell::Lstm, Some(c0)) => {
                match super::fused_lstm::lstm_sequence(
                    xp,
                    &self.weight_hh.val(),
                    &state.h,
                    c0,
                    reverse,
                ) {
                    Ok(packed) => return unpack_lstm(packed, reverse),
                    Err(xp) => xp,
                }
            }
            _ => xp,
        };
        self.run_steps(cell, xp, state, reverse)
    }

    /// [`Self::run`] from the projected input, one composed [`Self::step`] per position.
    pub(crate) fn run_steps(
        &self,
        cell: Cell,
        xp: Tensor<3>,
        state: DirState,
        reverse: bool,
    ) -> (Tensor<3>, DirState) {
        let mut steps = split_steps(xp);
        if reverse {
            steps.reverse();
        }
        let w_hh_t = self.weight_hh.val().transpose();
        let mut state = state;
        let mut outputs = Vec::with_capacity(steps.len());
        for xp_t in steps {
            state = self.step(cell, xp_t, &w_hh_t, state);
            outputs.push(state.h.clone());
        }
        if reverse {
            outputs.reverse();
        }
        (Tensor::stack(outputs, 1), state)
    }
}

/// Splits the fused LSTM's packed output `[batch_size, seq_length + 1, d_hidden]` into the
/// hidden states and the final state (the last step taken: position 0 when `reverse`).
#[cfg(feature = "flex")]
fn unpack_lstm(packed: Tensor<3>, reverse: bool) -> (Tensor<3>, DirState) {
    let [batch_size, positions, d_hidden] = packed.dims();
    let seq_length = positions - 1;
    let hidden = packed.clone().narrow(1, 0, seq_length);
    let c = packed
        .narrow(1, seq_length, 1)
        .reshape([batch_size, d_hidden]);
    let last = if reverse { 0 } else { seq_length - 1 };
    let h = hidden
        .clone()
        .narrow(1, last, 1)
        .reshape([batch_size, d_hidden]);
    (hidden, DirState { h, c: Some(c) })
}

/// A stack of recurrent layers: the part [`Rnn`](super::Rnn), [`Lstm`](super::Lstm) and
/// [`Gru`](super::Gru) share. Use those types; this one is public so that parameter paths
/// (`stack.layers.0.forward.weight_ih`) can be named and visited.
#[derive(Module, Debug)]
pub struct RecurrentStack {
    /// The stacked layers, first to last.
    pub layers: Vec<RecurrentLayer>,
    dropout: Dropout,
    #[module(skip)]
    cell: Cell,
    d_input: usize,
    d_hidden: usize,
    bidirectional: bool,
}

impl RecurrentStack {
    pub(crate) fn new(cell: Cell, sizes: Sizes, device: &Device) -> Result<Self, LayerError> {
        sizes.validate(cell)?;
        Ok(Self {
            layers: sizes.init_layers(cell, device),
            dropout: DropoutConfig::new(sizes.dropout).init(),
            cell,
            d_input: sizes.d_input,
            d_hidden: sizes.d_hidden,
            bidirectional: sizes.bidirectional,
        })
    }

    /// Number of directions: 2 when bidirectional, else 1.
    pub fn n_directions(&self) -> usize {
        if self.bidirectional { 2 } else { 1 }
    }

    /// Size of each output vector: `n_directions * d_hidden`.
    pub fn d_output(&self) -> usize {
        self.n_directions() * self.d_hidden
    }

    /// Size of each input vector.
    pub fn d_input(&self) -> usize {
        self.d_input
    }

    /// Size of the hidden state of one direction.
    pub fn d_hidden(&self) -> usize {
        self.d_hidden
    }

    /// Number of stacked layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Whether every layer also runs right to left.
    pub fn is_bidirectional(&self) -> bool {
        self.bidirectional
    }

    /// Shape of one state tensor: `[n_layers * n_directions, batch_size, d_hidden]`.
    pub(crate) fn state_shape(&self, batch_size: usize) -> [usize; 3] {
        [
            self.n_layers() * self.n_directions(),
            batch_size,
            self.d_hidden,
        ]
    }

    /// Runs the stack. `h0` (and `c0` for LSTM) are `[n_layers * n_directions, batch_size,
    /// d_hidden]` in PyTorch's order (layer-major, forward before reverse); `None` is zeros.
    ///
    /// Returns the last layer's output `[batch_size, seq_length, n_directions * d_hidden]` and
    /// the final states in the same layout as `h0`/`c0`.
    pub(crate) fn run(
        &self,
        x: Tensor<3>,
        h0: Option<Tensor<3>>,
        c0: Option<Tensor<3>>,
    ) -> (Tensor<3>, Tensor<3>, Option<Tensor<3>>) {
        let layer = self.cell.name();
        let [batch_size, seq_length, _] = x.dims();
        assert_shape(layer, "x", &x.dims(), &[None, None, Some(self.d_input)]);
        assert!(
            seq_length > 0,
            "{layer}: `x` has an empty sequence dimension"
        );
        let shape = self.state_shape(batch_size);
        let expected = shape.map(Some);
        let device = x.device();
        let h0 = h0.unwrap_or_else(|| Tensor::zeros(shape, &device));
        assert_shape(layer, "state.hidden", &h0.dims(), &expected);
        let c0 =
            (self.cell == Cell::Lstm).then(|| c0.unwrap_or_else(|| Tensor::zeros(shape, &device)));
        if let Some(c0) = &c0 {
            assert_shape(layer, "state.cell", &c0.dims(), &expected);
        }

        let n_states = shape[0];
        let h0 = h0.chunk(n_states, 0);
        let c0 = c0.map(|c0| c0.chunk(n_states, 0));
        let initial = |i: usize| DirState {
            h: h0[i].clone().squeeze_dim(0),
            c: c0.as_ref().map(|c0| c0[i].clone().squeeze_dim(0)),
        };
        let n_directions = self.n_directions();
        let (mut h_n, mut c_n) = (Vec::new(), Vec::new());
        let mut x = x;
        for (index, layer) in self.layers.iter().enumerate() {
            if index > 0 {
                x = self.dropout.forward(x);
            }
            let (y, last) =
                layer
                    .forward
                    .run(self.cell, x.clone(), initial(index * n_directions), false);
            h_n.push(last.h);
            c_n.extend(last.c);
            x = match &layer.reverse {
                Some(reverse) => {
                    let (y_rev, last) =
                        reverse.run(self.cell, x, initial(index * n_directions + 1), true);
                    h_n.push(last.h);
                    c_n.extend(last.c);
                    Tensor::cat(vec![y, y_rev], 2)
                }
                None => y,
            };
        }
        let c_n = (!c_n.is_empty()).then(|| Tensor::stack(c_n, 0));
        (x, Tensor::stack(h_n, 0), c_n)
    }

    /// One time step of a unidirectional stack: [`Self::run`] on a length-1 sequence, with
    /// `x` `[batch_size, d_input]` and an output `[batch_size, d_hidden]`.
    pub(crate) fn step(
        &self,
        x: Tensor<2>,
        h0: Option<Tensor<3>>,
        c0: Option<Tensor<3>>,
    ) -> (Tensor<2>, Tensor<3>, Option<Tensor<3>>) {
        assert!(
            !self.bidirectional,
            "{}::step: a bidirectional layer cannot run one step at a time",
            self.cell.name()
        );
        let [batch_size, d_input] = x.dims();
        let (y, h_n, c_n) = self.run(x.reshape([batch_size, 1, d_input]), h0, c0);
        (y.reshape([batch_size, self.d_hidden]), h_n, c_n)
    }

    /// Loads PyTorch state-dict entries; see [`load_pytorch`].
    pub(crate) fn load_pytorch(
        &mut self,
        lookup: impl FnMut(&str) -> Option<TensorData>,
        keys: impl IntoIterator<Item = String>,
    ) -> Result<(), LayerError> {
        load_pytorch(self.cell, &mut self.layers, lookup, keys)
    }
}

/// Loads PyTorch `nn.RNN`/`nn.LSTM`/`nn.GRU` state-dict entries (`weight_ih_l0`,
/// `bias_hh_l1_reverse`, ...) into `layers`, checking every shape and reporting unused keys.
fn load_pytorch(
    cell: Cell,
    layers: &mut [RecurrentLayer],
    mut lookup: impl FnMut(&str) -> Option<TensorData>,
    keys: impl IntoIterator<Item = String>,
) -> Result<(), LayerError> {
    let layer_name = cell.name();
    let mut used = Vec::new();
    for (index, layer) in layers.iter_mut().enumerate() {
        let mut directions = vec![(&mut layer.forward, String::new())];
        if let Some(reverse) = layer.reverse.as_mut() {
            directions.push((reverse, "_reverse".to_string()));
        }
        for (weights, suffix) in directions {
            let mut load2 = |param: &mut Param<Tensor<2>>, base: &str| {
                let name = format!("{base}_l{index}{suffix}");
                let tensor = fetch(layer_name, &mut lookup, &name, &param.dims())?;
                *param = Param::from_tensor(tensor_like::<2>(tensor, param));
                used.push(name);
                Ok::<_, LayerError>(())
            };
            load2(&mut weights.weight_ih, "weight_ih")?;
            load2(&mut weights.weight_hh, "weight_hh")?;
            for (bias, base) in [
                (&mut weights.bias_ih, "bias_ih"),
                (&mut weights.bias_hh, "bias_hh"),
            ] {
                let name = format!("{base}_l{index}{suffix}");
                if let Some(param) = bias {
                    let tensor = fetch(layer_name, &mut lookup, &name, &param.dims())?;
                    *param = Param::from_tensor(tensor_like::<1>(tensor, param));
                    used.push(name);
                }
            }
        }
    }
    let unexpected: Vec<String> = keys.into_iter().filter(|k| !used.contains(k)).collect();
    if unexpected.is_empty() {
        Ok(())
    } else {
        Err(LayerError::UnexpectedWeights {
            layer: layer_name,
            names: unexpected,
        })
    }
}

/// A tensor from `data` on the parameter's device and dtype.
fn tensor_like<const D: usize>(data: TensorData, param: &Param<Tensor<D>>) -> Tensor<D> {
    Tensor::<D>::from_data(data.convert_dtype(param.dtype()), &param.device())
}
