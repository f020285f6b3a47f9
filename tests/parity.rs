//! Backend parity of the basic operations every lmforge model is made of.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use lmforge_device::testing::{
    Outputs, Tolerance, assert_parity, reference_device, to_test_device,
};

const VOCAB: usize = 11;
const D_MODEL: usize = 8;
const N_CLASSES: usize = 6;

/// Embedding -> Linear -> LayerNorm: the smallest stack with the ops every model uses.
#[derive(Module, Debug)]
struct TinyStack {
    embedding: Embedding,
    linear: Linear,
    norm: LayerNorm,
}

impl TinyStack {
    fn new(device: &Device) -> Self {
        Self {
            embedding: EmbeddingConfig::new(VOCAB, D_MODEL).init(device),
            linear: LinearConfig::new(D_MODEL, N_CLASSES).init(device),
            norm: LayerNormConfig::new(N_CLASSES).init(device),
        }
    }

    /// # Shapes
    /// - `ids`: `[batch_size, seq_length]`
    /// - returns: `[batch_size, seq_length, N_CLASSES]`
    fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.norm
            .forward(self.linear.forward(self.embedding.forward(ids)))
    }
}

/// Token ids and targets covering every id at least once (so every embedding row gets a
/// gradient), with repeats.
fn batch(device: &Device) -> (Tensor<2, Int>, Tensor<1, Int>) {
    let ids: Vec<i64> = (0..14).map(|i| (i * 7 % VOCAB) as i64).collect();
    let targets: Vec<i64> = (0..14).map(|i| (i * 5 % N_CLASSES) as i64).collect();
    (
        Tensor::from_data(TensorData::new(ids, [2, 7]), device),
        Tensor::from_data(TensorData::new(targets, [14]), device),
    )
}

#[test]
fn embedding_linear_norm_softmax_cross_entropy_forward_and_backward() {
    reference_device().seed(7);
    let module = TinyStack::new(reference_device());
    let reference = assert_parity(Tolerance::absolute(1e-4), |device| {
        let module = to_test_device(&module, device);
        let (ids, targets) = batch(device);
        let logits = module.forward(ids); // [2, 7, N_CLASSES]
        let probs = softmax(logits.clone(), 2);
        let loss = CrossEntropyLossConfig::new()
            .init(device)
            .forward(logits.clone().reshape([14, N_CLASSES]), targets);
        let grads = loss.backward();
        Outputs::new()
            .float("logits", logits)
            .float("probs", probs)
            .float("loss", loss)
            .grads("model", &module, &grads)
    });

    // The record holds what the test claims to compare: forward values and every gradient.
    let names: Vec<&str> = reference
        .entries()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "logits",
            "probs",
            "loss",
            "model.embedding.weight",
            "model.linear.weight",
            "model.linear.bias",
            "model.norm.gamma",
            "model.norm.beta",
        ]
    );
    // Softmax rows sum to one; the loss is a finite positive number; gradients are not all 0.
    let probs = &reference.get("probs").unwrap().values;
    for row in probs.chunks(N_CLASSES) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    }
    let loss = reference.get("loss").unwrap().values[0];
    assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
    for entry in &reference.entries()[3..] {
        assert!(
            entry.values.iter().any(|v| v.abs() > 1e-6),
            "{} is all zeros",
            entry.name
        );
    }
}

/// Hand-derived check that the harness and backends agree with arithmetic, not only with each
/// other: for logits z = [0, ln 3] and target 1, softmax = [1/4, 3/4], the cross-entropy is
/// -ln(3/4) and its gradient with respect to z is softmax - onehot = [1/4, -1/4].
#[test]
fn cross_entropy_matches_a_hand_derivation_on_every_device() {
    let reference = assert_parity(Tolerance::absolute(1e-6), |device| {
        let z = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 3f32.ln()], [1, 2]), device)
            .require_grad();
        let target = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64], [1]), device);
        let loss = CrossEntropyLossConfig::new()
            .init(device)
            .forward(z.clone(), target);
        let grads = loss.backward();
        Outputs::new()
            .float("loss", loss)
            .float("dz", z.grad(&grads).expect("z requires grad"))
    });
    let loss = reference.get("loss").unwrap().values[0];
    assert!((loss - -(0.75f64).ln()).abs() < 1e-6, "loss {loss}");
    let dz = &reference.get("dz").unwrap().values;
    assert!(
        (dz[0] - 0.25).abs() < 1e-6 && (dz[1] + 0.25).abs() < 1e-6,
        "{dz:?}"
    );
}
