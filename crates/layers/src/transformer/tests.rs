//! Unit tests of the Transformer blocks: shapes, cached decoding, errors, backend parity.
//! (Agreement with HuggingFace's GPT-2 and BERT blocks: the workspace's tests/.)

use burn::tensor::{Tensor, TensorData};
use lmforge_device::testing::{
    Outputs, Tolerance, assert_parity, reference_device, to_test_device,
};

use super::*;
use crate::LayerError;

fn input(batch_size: usize, seq_length: usize, d: usize, salt: usize) -> Tensor<3> {
    let n = batch_size * seq_length * d;
    let values: Vec<f32> = (0..n)
        .map(|i| (((i + salt) * 13 % 17) as f32 - 8.0) / 6.0)
        .collect();
    Tensor::from_data(
        TensorData::new(values, [batch_size, seq_length, d]),
        reference_device(),
    )
}

fn max_abs_diff(a: Tensor<3>, b: Tensor<3>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

fn config() -> BlockConfig {
    BlockConfig::new(8, 2, 16).with_init_std(0.2)
}

#[test]
fn every_block_variant_keeps_the_shape() {
    let device = reference_device();
    for norm_first in [true, false] {
        for activation in [
            FeedForwardActivation::Gelu,
            FeedForwardActivation::GeluTanh,
            FeedForwardActivation::Relu,
            FeedForwardActivation::SwiGlu,
        ] {
            for norm in [NormKind::LayerNorm, NormKind::RmsNorm] {
                let config = config()
                    .with_norm_first(norm_first)
                    .with_activation(activation)
                    .with_norm(norm);
                let encoder = config.init_encoder(device).unwrap();
                assert_eq!(encoder.forward(input(1, 4, 8, 0), None).dims(), [1, 4, 8]);
                let decoder = config
                    .clone()
                    .with_cross_attention(Some(6))
                    .init_decoder(device)
                    .unwrap();
                let memory = Memory {
                    memory: input(1, 3, 6, 1),
                    mask_pad: None,
                };
                let y = decoder.forward(input(1, 4, 8, 0), None, Some(&memory));
                assert_eq!(y.dims(), [1, 4, 8]);
            }
        }
    }
}

/// Decoding position by position through the caches equals the full decoder forward, with
/// cross-attention, for pre-LN and post-LN.
#[test]
fn cached_decoder_equals_full_forward() {
    let device = reference_device();
    for norm_first in [true, false] {
        device.seed(3);
        let block = config()
            .with_norm_first(norm_first)
            .with_cross_attention(Some(8))
            .init_decoder(device)
            .unwrap();
        let x = input(2, 9, 8, 2);
        let memory = Memory {
            memory: input(2, 4, 8, 7),
            mask_pad: None,
        };
        let full = block.forward(x.clone(), None, Some(&memory));
        let mut cache = DecoderBlockCache::default();
        for t in 0..9 {
            let y =
                block.forward_cached(x.clone().narrow(1, t, 1), None, Some(&memory), &mut cache);
            assert!(
                max_abs_diff(y, full.clone().narrow(1, t, 1)) < 1e-5,
                "step {t}"
            );
        }
    }
}

/// Pre-LN and post-LN are different computations: the flag is honoured.
#[test]
fn norm_placement_changes_the_result() {
    let device = reference_device();
    device.seed(5);
    let pre = config().init_encoder(device).unwrap();
    let mut post = pre.clone();
    post.norm_first = false;
    let x = input(1, 4, 8, 3);
    assert!(max_abs_diff(pre.forward(x.clone(), None), post.forward(x, None)) > 1e-3);
}

#[test]
fn bad_configs_are_errors() {
    let device = reference_device();
    let err = BlockConfig::new(10, 4, 16)
        .init_encoder(device)
        .unwrap_err();
    assert!(
        err.to_string().contains("must be divisible by n_heads"),
        "{err}"
    );
    let err = config()
        .with_cross_attention(Some(8))
        .init_encoder(device)
        .unwrap_err();
    assert_eq!(
        err,
        LayerError::InvalidConfig {
            layer: "BlockConfig",
            reason: "an encoder block has no cross-attention".into()
        }
    );
    assert!(FeedForwardConfig::new(8, 0).init(device).is_err());
}

#[test]
#[should_panic(expected = "memory must be given exactly when the block has cross-attention")]
fn decoder_without_memory_for_cross_attention_panics() {
    let block = config()
        .with_cross_attention(Some(8))
        .init_decoder(reference_device())
        .unwrap();
    let _ = block.forward(input(1, 3, 8, 0), None, None);
}

/// Backend parity of encoder (post-LN, SwiGLU) and decoder (pre-LN, RMSNorm, cross-attention)
/// blocks, forward and backward, with every gradient.
#[test]
fn parity_across_devices() {
    let device = reference_device();
    let encoder = config()
        .with_norm_first(false)
        .with_activation(FeedForwardActivation::SwiGlu)
        .init_encoder(device)
        .unwrap();
    let decoder = config()
        .with_norm(NormKind::RmsNorm)
        .with_cross_attention(Some(8))
        .init_decoder(device)
        .unwrap();
    let x = input(2, 5, 8, 1).into_data();
    let memory = input(2, 3, 8, 4).into_data();
    assert_parity(Tolerance::rel_abs(1e-4, 1e-5), |device| {
        let (encoder, decoder) = (
            to_test_device(&encoder, device),
            to_test_device(&decoder, device),
        );
        let x = Tensor::<3>::from_data(x.clone(), device).require_grad();
        let memory = Memory {
            memory: encoder.forward(Tensor::<3>::from_data(memory.clone(), device), None),
            mask_pad: None,
        };
        let y = decoder.forward(x.clone(), None, Some(&memory));
        let grads = y.clone().powf_scalar(2.0).sum().backward();
        Outputs::new()
            .float("y", y)
            .float("dx", x.grad(&grads).unwrap())
            .grads("encoder", &encoder, &grads)
            .grads("decoder", &decoder, &grads)
    });
}

/// Removing hidden units equals zeroing their rows of `down` (their outputs masked), for
/// every activation (SwiGLU's gate shrinks with `up`).
#[test]
fn pruned_neurons_equal_masked_neurons() {
    use crate::transformer::{FeedForwardActivation, FeedForwardConfig};
    let x = input(2, 3, 8, 1);
    for activation in [FeedForwardActivation::Gelu, FeedForwardActivation::SwiGlu] {
        reference_device().seed(5);
        let full = FeedForwardConfig::new(8, 12)
            .with_activation(activation)
            .with_init_std(0.3)
            .init(reference_device())
            .unwrap();
        let keep = [0, 3, 4, 9, 11];
        let rows: Vec<f32> = (0..12)
            .map(|r| if keep.contains(&r) { 1.0 } else { 0.0 })
            .collect();
        let row_mask = Tensor::<1>::from_data(TensorData::new(rows, [12]), reference_device())
            .unsqueeze_dim::<2>(1);
        let mut masked = full.clone();
        masked.down.weight = masked.down.weight.clone().map(|w| w * row_mask);
        let mut pruned = full.clone();
        pruned.prune_neurons(&keep).unwrap();
        assert_eq!(pruned.d_ff(), 5);
        let expected = masked.forward(x.clone());
        assert!(max_abs_diff(pruned.forward(x.clone()), expected.clone()) < 1e-5);
        assert!(max_abs_diff(full.forward(x.clone()), expected) > 1e-3);
        assert!(pruned.clone().prune_neurons(&[5]).is_err());
        assert!(pruned.prune_neurons(&[]).is_err());
    }
}

/// The tanh GELU (computed through a sigmoid) against the textbook formula and its
/// derivative, evaluated in f64 on the host.
#[test]
fn gelu_tanh_equals_the_tanh_formula_and_its_derivative() {
    let device = reference_device().clone().autodiff();
    let xs: Vec<f32> = (0..81).map(|i| (i as f32 - 40.0) / 8.0).collect();
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let reference = |x: f64| {
        let z = c * (x + 0.044715 * x.powi(3));
        let value = 0.5 * x * (1.0 + z.tanh());
        let dz = c * (1.0 + 3.0 * 0.044715 * x * x);
        let slope = 0.5 * (1.0 + z.tanh()) + 0.5 * x * (1.0 - z.tanh().powi(2)) * dz;
        (value, slope)
    };
    let x = Tensor::<1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &device).require_grad();
    let y = FeedForwardActivation::GeluTanh.apply(x.clone());
    let grads = y.clone().sum().backward();
    let values = y.into_data().try_to_vec::<f32>().expect("f32");
    let slopes = x
        .grad(&grads)
        .expect("grad")
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32");
    for ((&x, value), slope) in xs.iter().zip(values).zip(slopes) {
        let (want, want_slope) = reference(f64::from(x));
        assert!(
            (f64::from(value) - want).abs() < 1e-5,
            "gelu({x}) = {value}, want {want}"
        );
        assert!(
            (f64::from(slope) - want_slope).abs() < 1e-5,
            "gelu'({x}) = {slope}, want {want_slope}"
        );
    }
}

/// lmforge's LayerNorm against the formula computed in f64 per row (`ε = 1e-5`, scale one,
/// shift zero), in `f32` and in half precision (normalised in `f32`, as burn-nn's LayerNorm).
#[test]
fn layer_norm_is_the_formula_in_f32_and_f16() {
    use burn::tensor::DType;
    let norm = LayerNorm::new(6, 1e-5, reference_device());
    assert_eq!(norm.epsilon(), 1e-5);
    let x = input(2, 3, 6, 1);
    let rows = x.clone().into_data().try_to_vec::<f32>().expect("f32");
    let want: Vec<f64> = rows
        .chunks(6)
        .flat_map(|row| {
            let row: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
            let mean = row.iter().sum::<f64>() / 6.0;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 6.0;
            row.into_iter()
                .map(move |v| (v - mean) / (var + 1e-5).sqrt())
                .collect::<Vec<_>>()
        })
        .collect();
    for (dtype, tolerance) in [(DType::F32, 1e-5), (DType::F16, 1e-2)] {
        let y = norm.forward(x.clone().cast(dtype));
        assert_eq!(y.dtype(), dtype);
        let got = y
            .cast(DType::F32)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (f64::from(*g) - w).abs() < tolerance,
                "{dtype:?}: {g} vs {w}"
            );
        }
    }
}
