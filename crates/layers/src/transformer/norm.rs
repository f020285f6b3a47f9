//! The normalisation used inside Transformer blocks.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Initializer, RmsNorm, RmsNormConfig};
use burn::tensor::{DType, Device, Tensor};

/// Which normalisation a block uses.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum NormKind {
    /// LayerNorm (Ba et al. 2016) with learned scale and shift.
    LayerNorm,
    /// RMSNorm (Zhang & Sennrich 2019): scale only, no mean subtraction.
    RmsNorm,
}

/// Layer normalisation over the last dimension (Ba et al. 2016): `γ (x - mean) / √(var + ε) + β`
/// per row, with the biased variance, as PyTorch's `nn.LayerNorm` and burn-nn's `LayerNorm`
/// (same parameter names, `gamma` and `beta`, and the same numbers).
///
/// lmforge's own type so that it can run as one fused operation with a hand-written backward
/// pass on flex (see the crate's `flex` feature); elsewhere it is burn's `layer_norm`.
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// The learned scale `γ`, `[d_model]`, initialised to ones.
    pub gamma: Param<Tensor<1>>,
    /// The learned shift `β`, `[d_model]`, initialised to zeros.
    pub beta: Option<Param<Tensor<1>>>,
    epsilon: f64,
}

impl LayerNorm {
    /// A LayerNorm of width `d_model` with scale and shift.
    pub fn new(d_model: usize, epsilon: f64, device: &Device) -> Self {
        Self {
            gamma: Initializer::Ones.init([d_model], device),
            beta: Some(Initializer::Zeros.init([d_model], device)),
            epsilon,
        }
    }

    /// The `ε` added to the variance.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

    /// # Shapes
    /// - `x`: `[..., d_model]`; returns the same shape
    ///
    /// # Panics
    /// When the last dimension of `x` is not `d_model`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let gamma = self.gamma.val();
        let d_model = gamma.dims()[0];
        crate::error::assert_shape(
            "LayerNorm",
            "x",
            &x.dims(),
            &[vec![None; D - 1], vec![Some(d_model)]].concat(),
        );
        let beta = self.beta.as_ref().map(|b| b.val());
        // Parameters kept in another dtype than the activations (half-precision weights, f32
        // activations): the scale and shift are cast to the activations' dtype.
        let (gamma, beta) = if gamma.dtype() == x.dtype() {
            (gamma, beta)
        } else {
            let dtype = x.dtype();
            (gamma.cast(dtype), beta.map(|b| b.cast(dtype)))
        };
        #[cfg(feature = "flex")]
        if let Some(beta) = &beta
            && let Some(y) = crate::fused::layer_norm::layer_norm(&x, &gamma, beta, self.epsilon)
        {
            return y;
        }
        // As burn-nn's LayerNorm: half precision accumulates in f32.
        if x.dtype() == DType::F16 {
            let dtype = x.dtype();
            let f32 = |t: Tensor<1>| t.cast(DType::F32);
            return burn::tensor::module::layer_norm(
                x.cast(DType::F32),
                f32(gamma),
                beta.map(f32),
                self.epsilon,
            )
            .cast(dtype);
        }
        burn::tensor::module::layer_norm(x, gamma, beta, self.epsilon)
    }
}

/// LayerNorm or RMSNorm over the last dimension, chosen by config.
#[derive(Module, Debug)]
pub enum Norm {
    /// lmforge's [`LayerNorm`].
    Layer(LayerNorm),
    /// burn-nn's `RmsNorm`.
    Rms(RmsNorm),
}

impl Norm {
    /// A norm of width `d_model` with the given epsilon.
    pub fn new(kind: NormKind, d_model: usize, epsilon: f64, device: &Device) -> Self {
        match kind {
            NormKind::LayerNorm => Norm::Layer(LayerNorm::new(d_model, epsilon, device)),
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
            Norm::Rms(norm) => {
                let gamma = norm.gamma.val();
                if gamma.dtype() == x.dtype() {
                    return norm.forward(x);
                }
                // Parameters kept in another dtype than the activations (half-precision
                // weights, f32 activations): burn-nn's formula with the scale cast.
                let dtype = x.dtype();
                let rms =
                    (x.clone().cast(DType::F32).square().mean_dim(D - 1) + norm.epsilon).sqrt();
                (x / rms.cast(dtype)) * gamma.cast(dtype).unsqueeze()
            }
        }
    }
}
