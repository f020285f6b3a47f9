//! lmforge's RNN, LSTM and GRU against PyTorch's `nn.RNN`/`nn.LSTM`/`nn.GRU`
//! (fixtures from `tests/fixtures/gen_layers.py`: 2 layers, bidirectional, non-zero initial
//! state), forward and backward, on every enabled device.

use burn::module::Param;
use burn::tensor::{Device, Tensor};
use lmforge::layers::rnn::{
    GruConfig, LstmConfig, LstmState, RecurrentStack, RnnActivation, RnnConfig,
};
use lmforge_device::testing::{
    Fixture, Outputs, Tolerance, assert_parity, reference_device, to_test_device,
};

const D_INPUT: usize = 4;
const D_HIDDEN: usize = 6;
const N_LAYERS: usize = 2;

/// Forward outputs must match PyTorch to 1e-5, gradients to 1e-4; devices agree to 1e-5.
const FORWARD: Tolerance = Tolerance {
    rel: 0.0,
    abs: 1e-5,
};
const GRADIENT: Tolerance = Tolerance {
    rel: 0.0,
    abs: 1e-4,
};
const PARITY: Tolerance = Tolerance {
    rel: 1e-4,
    abs: 1e-5,
};

fn fixture(name: &str) -> Fixture {
    Fixture::load(format!(
        "{}/tests/fixtures/layers/{name}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    ))
}

fn input<const D: usize>(fixture: &Fixture, name: &str, device: &Device) -> Tensor<D> {
    Tensor::from_data(fixture.get(&format!("input.{name}")), device)
}

/// `sum_k <output_k, g_k>`: the scalar whose gradients the fixture holds.
fn weighted_sum<const D: usize>(fixture: &Fixture, name: &str, output: Tensor<D>) -> Tensor<1> {
    let g: Tensor<D> = input(fixture, &format!("g_{name}"), &output.device());
    (output * g).sum()
}

/// Records every parameter gradient under PyTorch's name (`grad.param.weight_ih_l0_reverse`).
fn param_grads(
    mut outputs: Outputs,
    stack: &RecurrentStack,
    grads: &burn::tensor::Gradients,
) -> Outputs {
    let grad2 = |p: &Param<Tensor<2>>| p.grad(grads).expect("weight gradient");
    let grad1 = |p: &Param<Tensor<1>>| p.grad(grads).expect("bias gradient");
    for (index, layer) in stack.layers.iter().enumerate() {
        let mut directions = vec![(&layer.forward, "")];
        directions.extend(layer.reverse.as_ref().map(|r| (r, "_reverse")));
        for (w, suffix) in directions {
            let name = |base: &str| format!("grad.param.{base}_l{index}{suffix}");
            outputs = outputs
                .float(name("weight_ih"), grad2(&w.weight_ih))
                .float(name("weight_hh"), grad2(&w.weight_hh))
                .float(name("bias_ih"), grad1(w.bias_ih.as_ref().unwrap()))
                .float(name("bias_hh"), grad1(w.bias_hh.as_ref().unwrap()));
        }
    }
    outputs
}

fn check(fixture: &Fixture, reference: &Outputs) {
    fixture.assert_close(reference, "output.", FORWARD);
    fixture.assert_close(reference, "grad.", GRADIENT);
    // Every gradient is non-zero somewhere: each parameter takes part in the computation.
    for entry in reference
        .entries()
        .iter()
        .filter(|e| e.name.starts_with("grad."))
    {
        assert!(
            entry.values.iter().any(|v| v.abs() > 1e-7),
            "{} is zero",
            entry.name
        );
    }
}

fn keys(fixture: &Fixture) -> Vec<String> {
    fixture.with_prefix("param.")
}

fn lookup(fixture: &Fixture) -> impl FnMut(&str) -> Option<burn::tensor::TensorData> + '_ {
    |name| fixture.try_get(&format!("param.{name}"))
}

#[test]
fn lstm_matches_pytorch() {
    let fixture = fixture("lstm_2layer_bidirectional");
    let lstm = LstmConfig::new(D_INPUT, D_HIDDEN)
        .with_n_layers(N_LAYERS)
        .with_bidirectional(true)
        .init(reference_device())
        .unwrap()
        .load_pytorch(lookup(&fixture), keys(&fixture))
        .unwrap();
    let reference = assert_parity(PARITY, |device| {
        let lstm = to_test_device(&lstm, device);
        let x: Tensor<3> = input(&fixture, "x", device).require_grad();
        let h0: Tensor<3> = input(&fixture, "h0", device).require_grad();
        let c0: Tensor<3> = input(&fixture, "c0", device).require_grad();
        let (y, state) = lstm.forward(
            x.clone(),
            Some(LstmState {
                hidden: h0.clone(),
                cell: c0.clone(),
            }),
        );
        let loss = weighted_sum(&fixture, "y", y.clone())
            + weighted_sum(&fixture, "hn", state.hidden.clone())
            + weighted_sum(&fixture, "cn", state.cell.clone());
        let grads = loss.backward();
        let outputs = Outputs::new()
            .float("output.y", y)
            .float("output.hn", state.hidden)
            .float("output.cn", state.cell)
            .float("grad.x", x.grad(&grads).unwrap())
            .float("grad.h0", h0.grad(&grads).unwrap())
            .float("grad.c0", c0.grad(&grads).unwrap());
        param_grads(outputs, &lstm.stack, &grads)
    });
    check(&fixture, &reference);
}

fn hidden_only_case(
    name: &str,
    forward: impl Fn(&Device, Tensor<3>, Tensor<3>) -> (Tensor<3>, Tensor<3>, RecurrentStack),
) {
    let fixture = fixture(name);
    let reference = assert_parity(PARITY, |device| {
        let x: Tensor<3> = input(&fixture, "x", device).require_grad();
        let h0: Tensor<3> = input(&fixture, "h0", device).require_grad();
        let (y, hn, stack) = forward(device, x.clone(), h0.clone());
        let loss =
            weighted_sum(&fixture, "y", y.clone()) + weighted_sum(&fixture, "hn", hn.clone());
        let grads = loss.backward();
        let outputs = Outputs::new()
            .float("output.y", y)
            .float("output.hn", hn)
            .float("grad.x", x.grad(&grads).unwrap())
            .float("grad.h0", h0.grad(&grads).unwrap());
        param_grads(outputs, &stack, &grads)
    });
    check(&fixture, &reference);
}

#[test]
fn gru_matches_pytorch() {
    let fixture = fixture("gru_2layer_bidirectional");
    let gru = GruConfig::new(D_INPUT, D_HIDDEN)
        .with_n_layers(N_LAYERS)
        .with_bidirectional(true)
        .init(reference_device())
        .unwrap()
        .load_pytorch(lookup(&fixture), keys(&fixture))
        .unwrap();
    hidden_only_case("gru_2layer_bidirectional", |device, x, h0| {
        let gru = to_test_device(&gru, device);
        let (y, hn) = gru.forward(x, Some(h0));
        (y, hn, gru.stack)
    });
}

#[test]
fn rnn_tanh_and_relu_match_pytorch() {
    for (name, activation) in [
        ("rnn_tanh_2layer_bidirectional", RnnActivation::Tanh),
        ("rnn_relu_2layer_bidirectional", RnnActivation::Relu),
    ] {
        let fixture = fixture(name);
        let rnn = RnnConfig::new(D_INPUT, D_HIDDEN)
            .with_n_layers(N_LAYERS)
            .with_bidirectional(true)
            .with_activation(activation)
            .init(reference_device())
            .unwrap()
            .load_pytorch(lookup(&fixture), keys(&fixture))
            .unwrap();
        hidden_only_case(name, |device, x, h0| {
            let rnn = to_test_device(&rnn, device);
            let (y, hn) = rnn.forward(x, Some(h0));
            (y, hn, rnn.stack)
        });
    }
}

#[test]
fn loading_reports_missing_misshapen_and_unexpected_weights() {
    use lmforge::layers::LayerError;
    let fixture = fixture("lstm_2layer_bidirectional");
    let config = LstmConfig::new(D_INPUT, D_HIDDEN)
        .with_n_layers(N_LAYERS)
        .with_bidirectional(true);
    let device = reference_device();

    let fixture = &fixture;
    let without = |skip: &str| {
        let skip = skip.to_string();
        move |name: &str| {
            (name != skip)
                .then(|| fixture.try_get(&format!("param.{name}")))
                .flatten()
        }
    };
    let err = config
        .init(device)
        .unwrap()
        .load_pytorch(without("bias_hh_l1_reverse"), keys(fixture))
        .unwrap_err();
    assert_eq!(
        err,
        LayerError::MissingWeight {
            layer: "Lstm",
            name: "bias_hh_l1_reverse".into()
        }
    );

    // A one-directional model given a bidirectional state dict: the reverse weights are unused.
    let err = config
        .clone()
        .with_bidirectional(false)
        .init(device)
        .unwrap()
        .load_pytorch(lookup(fixture), keys(fixture))
        .unwrap_err();
    // Layer 1 of a one-directional stack takes d_hidden inputs, not 2 * d_hidden.
    assert_eq!(
        err,
        LayerError::WeightShape {
            layer: "Lstm",
            name: "weight_ih_l1".into(),
            expected: vec![4 * D_HIDDEN, D_HIDDEN],
            actual: vec![4 * D_HIDDEN, 2 * D_HIDDEN],
        }
    );
    let err = config
        .clone()
        .with_n_layers(1)
        .init(device)
        .unwrap()
        .load_pytorch(lookup(fixture), keys(fixture))
        .unwrap_err();
    let LayerError::UnexpectedWeights { names, .. } = err else {
        panic!("expected UnexpectedWeights, got {err:?}");
    };
    assert_eq!(names.len(), 8, "{names:?}"); // layer 1, both directions, 4 tensors each
    assert!(names.iter().all(|n| n.contains("_l1")), "{names:?}");
}
