//! The position-wise feed-forward block of a Transformer.

use crate::rows::linear_rows;
use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};

use crate::Linear;
use burn::tensor::activation::{gelu, relu, sigmoid, silu};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::dense::{normal_linear, select_inputs, select_outputs};
use crate::error::{LayerError, check};

/// The non-linearity of a [`FeedForward`].
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum FeedForwardActivation {
    /// GELU with the exact error function (BERT).
    Gelu,
    /// GELU's tanh approximation (GPT-2's `gelu_new`).
    GeluTanh,
    /// ReLU (the original Transformer).
    Relu,
    /// SwiGLU (Shazeer 2020): `down(silu(gate(x)) ⊙ up(x))`, with a third projection.
    SwiGlu,
}

/// Configuration of a [`FeedForward`].
#[derive(Config, Debug)]
pub struct FeedForwardConfig {
    /// Model width.
    pub d_model: usize,
    /// Inner width.
    pub d_ff: usize,
    /// The non-linearity. Default: exact GELU.
    #[config(default = "FeedForwardActivation::Gelu")]
    pub activation: FeedForwardActivation,
    /// Dropout after the activation (training only). Default: 0.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Biases on the projections. Default: true.
    #[config(default = true)]
    pub bias: bool,
    /// Standard deviation of the normal weight initialisation (biases start at zero).
    /// Default: 0.02.
    #[config(default = 0.02)]
    pub init_std: f64,
}

impl FeedForwardActivation {
    /// Applies the activation element-wise (exact GELU keeps an exact gradient on every
    /// backend, see [`FeedForward`]).
    ///
    /// # Panics
    /// For [`FeedForwardActivation::SwiGlu`], which needs a gate projection: use
    /// [`FeedForward`].
    pub fn apply<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            FeedForwardActivation::Gelu => gelu_exact(x),
            FeedForwardActivation::GeluTanh => gelu_tanh(x),
            FeedForwardActivation::Relu => relu(x),
            FeedForwardActivation::SwiGlu => {
                panic!("SwiGLU needs a gate projection: use FeedForward")
            }
        }
    }
}

impl FeedForwardConfig {
    /// Builds the block.
    ///
    /// # Errors
    /// [`LayerError::InvalidConfig`] for a zero size or a dropout outside `[0, 1)`.
    pub fn init(&self, device: &Device) -> Result<FeedForward, LayerError> {
        let layer = "FeedForwardConfig";
        check(self.d_model > 0, layer, || "d_model must be > 0".into())?;
        check(self.d_ff > 0, layer, || "d_ff must be > 0".into())?;
        check((0.0..1.0).contains(&self.dropout), layer, || {
            format!("dropout must be in [0, 1), got {}", self.dropout)
        })?;
        let linear = |d_in, d_out| normal_linear(d_in, d_out, self.bias, self.init_std, device);
        Ok(FeedForward {
            up: linear(self.d_model, self.d_ff),
            gate: (self.activation == FeedForwardActivation::SwiGlu)
                .then(|| linear(self.d_model, self.d_ff)),
            down: linear(self.d_ff, self.d_model),
            dropout: DropoutConfig::new(self.dropout).init(),
            activation: self.activation,
        })
    }
}

/// Exact GELU, `x Φ(x) = x/2 (1 + erf(x/√2))`, with an exact gradient on every backend.
///
/// burn 0.22's fused `gelu` is exact forward everywhere, but its backward on the backends
/// that use burn's default (ndarray, wgpu) is the derivative of the tanh approximation (off by
/// ~1e-4 in BERT gradients; flex is exact). So when `x` is tracked by autodiff, GELU is composed
/// from `erf`, whose gradient is exact; inference keeps the fused op. On flex (with the `flex`
/// feature) it is one fused operation with its exact derivative.
pub(crate) fn gelu_exact<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if let Some(y) = crate::fused::activation::gelu_exact(&x) {
        return y;
    }
    gelu_exact_composed(x)
}

/// [`gelu_exact`] from burn's tensor ops.
pub(crate) fn gelu_exact_composed<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.is_tracked() {
        let half = x.clone().mul_scalar(0.5);
        half.clone() + half * x.mul_scalar(std::f64::consts::FRAC_1_SQRT_2).erf()
    } else {
        gelu(x)
    }
}

/// GELU's tanh approximation, `x/2 (1 + tanh(√(2/π) (x + 0.044715 x³)))`, computed as the
/// equal `x σ(2√(2/π) (x + 0.044715 x³))` (since `(1 + tanh z)/2 = σ(2z)`): one sigmoid and
/// products instead of a cube through `powf` and a `tanh`, which on the CPU backends are the
/// slow scalar library calls. This roughly halves the activation's cost in GPT training.
/// On flex (with the `flex` feature) it is one fused operation with its derivative.
pub(crate) fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    #[cfg(feature = "flex")]
    if let Some(y) = crate::fused::activation::gelu_tanh(&x) {
        return y;
    }
    gelu_tanh_composed(x)
}

/// [`gelu_tanh`] from burn's tensor ops.
pub(crate) fn gelu_tanh_composed<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    // 2 √(2/π)
    const SCALE: f64 = 1.595_769_121_605_730_8;
    let inner = (x.clone() * x.clone())
        .mul_scalar(SCALE * 0.044_715)
        .add_scalar(SCALE)
        * x.clone();
    x * sigmoid(inner)
}

/// `down(dropout(act(up(x))))`, applied at every position; with SwiGLU,
/// `down(dropout(silu(gate(x)) ⊙ up(x)))`.
///
/// A thin composition of burn-nn `Linear` layers; its own type so the activation (exact or
/// tanh GELU, ReLU, SwiGLU) is a config choice and the weights keep GPT-2/BERT-style names.
#[derive(Module, Debug)]
pub struct FeedForward {
    /// `d_model -> d_ff`.
    pub up: Linear,
    /// `d_model -> d_ff` gate (SwiGLU only).
    pub gate: Option<Linear>,
    /// `d_ff -> d_model`.
    pub down: Linear,
    dropout: Dropout,
    #[module(skip)]
    activation: FeedForwardActivation,
}

impl FeedForward {
    /// Hidden width, `d_ff`.
    pub fn d_ff(&self) -> usize {
        self.up.weight.dims()[1]
    }

    /// Removes every hidden unit not in `keep` (indices into `0..d_ff`, each at most once):
    /// `up` (and `gate`) lose those output columns and `down` those input rows, so the layer
    /// computes exactly what the full layer computes with those units' outputs zeroed.
    ///
    /// # Errors
    /// [`LayerError::InvalidConfig`] when `keep` is empty, repeats a unit or names one that
    /// does not exist.
    pub fn prune_neurons(&mut self, keep: &[usize]) -> Result<(), LayerError> {
        let layer = "FeedForward::prune_neurons";
        let d_ff = self.d_ff();
        check(!keep.is_empty(), layer, || {
            "at least one unit must stay".into()
        })?;
        let mut sorted = keep.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        check(sorted.len() == keep.len(), layer, || {
            "a unit is listed twice".into()
        })?;
        check(sorted.iter().all(|&u| u < d_ff), layer, || {
            format!("a unit index is >= d_ff ({d_ff})")
        })?;
        let index: Vec<i64> = sorted.iter().map(|&u| u as i64).collect();
        let index = Tensor::<1, Int>::from_data(
            TensorData::new(index, [sorted.len()]),
            &self.up.weight.device(),
        );
        select_outputs(&mut self.up, index.clone());
        if let Some(gate) = &mut self.gate {
            select_outputs(gate, index.clone());
        }
        select_inputs(&mut self.down, index);
        Ok(())
    }

    /// # Shapes
    /// - `x`: `[batch_size, seq_length, d_model]`
    /// - returns: `[batch_size, seq_length, d_model]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let up = linear_rows(&self.up, x.clone());
        let hidden = match self.activation {
            FeedForwardActivation::Gelu => gelu_exact(up),
            FeedForwardActivation::GeluTanh => gelu_tanh(up),
            FeedForwardActivation::Relu => relu(up),
            FeedForwardActivation::SwiGlu => {
                let gate = self.gate.as_ref().expect("SwiGLU has a gate projection");
                silu(linear_rows(gate, x)) * up
            }
        };
        linear_rows(&self.down, self.dropout.forward(hidden))
    }
}

crate::pack_layers!(FeedForward { up, gate, down });
