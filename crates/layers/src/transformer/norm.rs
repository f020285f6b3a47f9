//! The normalisation used inside Transformer blocks.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig, RmsNorm, RmsNormConfig};
use burn::tensor::{Device, Tensor};

/// Which normalisation a block uses.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum NormKind {
    /// LayerNorm (Ba et al. 2016) with learned scale and shift.
    LayerNorm,
    /// RMSNorm (Zhang & Sennrich 2019): scale only, no mean subtraction.
    RmsNorm,
}

/// LayerNorm or RMSNorm over the last dimension (burn-nn's layers, chosen by config).
#[derive(Module, Debug)]
pub enum Norm {
    /// burn-nn's `LayerNorm`.
    Layer(LayerNorm),
    /// burn-nn's `RmsNorm`.
    Rms(RmsNorm),
}

impl Norm {
    /// A norm of width `d_model` with the given epsilon.
    pub fn new(kind: NormKind, d_model: usize, epsilon: f64, device: &Device) -> Self {
        match kind {
            NormKind::LayerNorm => Norm::Layer(
                LayerNormConfig::new(d_model)
                    .with_epsilon(epsilon)
                    .init(device),
            ),
            NormKind::RmsNorm => Norm::Rms(
                RmsNormConfig::new(d_model)
                    .with_epsilon(epsilon)
                    .init(device),
            ),
        }
    }

    /// # Shapes
    /// - `x`: `[..., d_model]`; returns the same shape
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Norm::Layer(norm) => norm.forward(x),
            Norm::Rms(norm) => norm.forward(x),
        }
    }
}
