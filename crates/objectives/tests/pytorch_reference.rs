//! Losses against PyTorch's `F.cross_entropy` (ignore_index −100, label smoothing 0 and 0.1,
//! reductions sum and mean) on the fixture written by `tests/fixtures/gen_objectives_data.py`.

use burn::tensor::{Device, Int, Tensor};
use lmforge_device::testing::{Fixture, Outputs, Tolerance, test_devices};
use lmforge_objectives::causal_lm::causal_lm_loss;
use lmforge_objectives::classification::{sequence_classification_loss, token_classification_loss};
use lmforge_objectives::{CrossEntropy, LossOutput};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/objectives/cross_entropy.safetensors"
);

/// Within 1e-5 of PyTorch (float32 on both sides), plus 1e-6 relative for the sums of up to
/// 18 per-token losses (float32 rounding grows with the number of terms).
const TOLERANCE: Tolerance = Tolerance {
    rel: 1e-6,
    abs: 1e-5,
};

fn float<const D: usize>(fixture: &Fixture, name: &str, device: &Device) -> Tensor<D> {
    Tensor::from_data(fixture.get(name), device)
}

fn int<const D: usize>(fixture: &Fixture, name: &str, device: &Device) -> Tensor<D, Int> {
    Tensor::from_data(fixture.get(name), device)
}

/// Records `sum_<eps>`, `mean_<eps>` (unless nothing counts: PyTorch's mean is NaN there) and
/// `count` under `output.<case>.`.
fn record(outputs: Outputs, case: &str, eps: &str, out: LossOutput) -> Outputs {
    let count = out.count_value();
    let mut outputs = outputs
        .float(format!("output.{case}.sum_{eps}"), out.sum)
        .int(format!("output.{case}.count"), out.count);
    if count > 0 {
        outputs = outputs.float(format!("output.{case}.mean_{eps}"), out.loss);
    }
    outputs
}

fn smoothing(eps: &str) -> CrossEntropy {
    match eps {
        "eps0" => CrossEntropy::new(),
        _ => CrossEntropy::new().with_label_smoothing(0.1).unwrap(),
    }
}

#[test]
fn causal_lm_loss_and_gradient_match_pytorch() {
    let fixture = Fixture::load(FIXTURE);
    for selected in test_devices() {
        let device = selected.device.clone().autodiff();
        let mut outputs = Outputs::new();
        for eps in ["eps0", "eps0.1"] {
            let logits = float::<3>(&fixture, "input.causal.logits", &device).require_grad();
            let targets = int::<2>(&fixture, "input.causal.targets", &device);
            let out = causal_lm_loss(logits.clone(), targets, &smoothing(eps));
            if eps == "eps0.1" {
                let grads = out.loss.backward();
                outputs = outputs.float(
                    "grad.causal.logits_mean_eps0.1",
                    logits.grad(&grads).expect("the loss reaches the logits"),
                );
            }
            outputs = record(outputs, "causal", eps, out);
        }
        fixture.assert_close(&outputs, "output.causal.", TOLERANCE);
        fixture.assert_close(&outputs, "grad.causal.", TOLERANCE);
    }
}

#[test]
fn classification_losses_match_pytorch() {
    let fixture = Fixture::load(FIXTURE);
    for selected in test_devices() {
        let device = &selected.device;
        let mut outputs = Outputs::new();
        for eps in ["eps0", "eps0.1"] {
            let loss = smoothing(eps);
            let out = token_classification_loss(
                float::<3>(&fixture, "input.token.logits", device),
                int::<2>(&fixture, "input.token.targets", device),
                &loss,
            );
            outputs = record(outputs, "token", eps, out);
            let out = sequence_classification_loss(
                float::<2>(&fixture, "input.sequence.logits", device),
                int::<1>(&fixture, "input.sequence.targets", device),
                &loss,
            );
            outputs = record(outputs, "sequence", eps, out);
        }
        fixture.assert_close(&outputs, "output.token.", TOLERANCE);
        fixture.assert_close(&outputs, "output.sequence.", TOLERANCE);
    }
}

/// Every target ignored: PyTorch's sum is 0 (its mean would be NaN); lmforge's mean is 0 with a
/// count of 0, and the gradient is zero, not NaN.
#[test]
fn all_ignored_batch_gives_zero_not_nan() {
    let fixture = Fixture::load(FIXTURE);
    for selected in test_devices() {
        let device = selected.device.clone().autodiff();
        let mut outputs = Outputs::new();
        for eps in ["eps0", "eps0.1"] {
            let logits = float::<3>(&fixture, "input.all_ignored.logits", &device).require_grad();
            let targets = int::<2>(&fixture, "input.all_ignored.targets", &device);
            let out = token_classification_loss(logits.clone(), targets, &smoothing(eps));
            assert_eq!(out.count_value(), 0);
            assert_eq!(out.loss_value(), 0.0);
            let grads = out.loss.clone().backward();
            let grad = logits.grad(&grads).unwrap().into_data();
            let grad = grad.try_into_vec_as::<f32>().unwrap();
            assert!(grad.iter().all(|&g| g == 0.0), "{grad:?}");
            outputs = record(outputs, "all_ignored", eps, out);
        }
        fixture.assert_close(&outputs, "output.all_ignored.", TOLERANCE);
    }
}

#[test]
fn fixture_targets_include_ignored_positions() {
    // Guards the fixture itself: the cases above would not test ignore_index otherwise.
    let fixture = Fixture::load(FIXTURE);
    for case in ["causal", "token", "sequence"] {
        let targets = fixture
            .get(&format!("input.{case}.targets"))
            .try_into_vec_as::<i64>()
            .unwrap();
        assert!(targets.contains(&-100), "{case}");
    }
}
