//! Unit tests of the recurrent layers: shapes, state carrying, single steps, errors.
//! (Numerical agreement with PyTorch is tested against fixtures in the workspace's tests/.)

use burn::tensor::{Tensor, TensorData};
use lmforge_device::testing::{
    Outputs, Tolerance, assert_parity, reference_device, to_test_device,
};

use super::*;
use crate::LayerError;

fn sequence(batch_size: usize, seq_length: usize, d_input: usize) -> Tensor<3> {
    let n = batch_size * seq_length * d_input;
    let values: Vec<f32> = (0..n)
        .map(|i| ((i * 17 % 23) as f32 - 11.0) / 10.0)
        .collect();
    Tensor::from_data(
        TensorData::new(values, [batch_size, seq_length, d_input]),
        reference_device(),
    )
}

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

#[test]
fn output_and_state_shapes_including_batch_one() {
    let device = reference_device();
    for batch_size in [1, 3] {
        let lstm = LstmConfig::new(4, 5)
            .with_n_layers(3)
            .with_bidirectional(true)
            .init(device)
            .unwrap();
        let (y, state) = lstm.forward(sequence(batch_size, 7, 4), None);
        assert_eq!(y.dims(), [batch_size, 7, 10]);
        assert_eq!(state.hidden.dims(), [6, batch_size, 5]);
        assert_eq!(state.cell.dims(), [6, batch_size, 5]);

        let gru = GruConfig::new(4, 5).init(device).unwrap();
        let (y, hidden) = gru.forward(sequence(batch_size, 7, 4), None);
        assert_eq!(
            (y.dims(), hidden.dims()),
            ([batch_size, 7, 5], [1, batch_size, 5])
        );

        let rnn = RnnConfig::new(4, 5).with_n_layers(2).init(device).unwrap();
        let (y, hidden) = rnn.forward(sequence(batch_size, 1, 4), None);
        assert_eq!(
            (y.dims(), hidden.dims()),
            ([batch_size, 1, 5], [2, batch_size, 5])
        );
    }
}

/// Carrying the state across two halves of a sequence gives the same result as one pass over
/// the whole sequence: what truncated backpropagation through time relies on.
#[test]
fn carried_state_equals_one_pass() {
    let device = reference_device();
    let x = sequence(2, 9, 3);
    let (first, rest) = (x.clone().narrow(1, 0, 4), x.clone().narrow(1, 4, 5));

    let lstm = LstmConfig::new(3, 4).with_n_layers(2).init(device).unwrap();
    let (y_all, s_all) = lstm.forward(x.clone(), None);
    let (_, s_half) = lstm.forward(first.clone(), None);
    let (y_rest, s_rest) = lstm.forward(rest.clone(), Some(s_half.detach()));
    assert!(max_abs_diff(y_all.narrow(1, 4, 5), y_rest) < 1e-6);
    assert!(max_abs_diff(s_all.cell, s_rest.cell) < 1e-6);

    let gru = GruConfig::new(3, 4).with_n_layers(2).init(device).unwrap();
    let (y_all, h_all) = gru.forward(x, None);
    let (_, h_half) = gru.forward(first, None);
    let (y_rest, h_rest) = gru.forward(rest, Some(h_half));
    assert!(max_abs_diff(y_all.narrow(1, 4, 5), y_rest) < 1e-6);
    assert!(max_abs_diff(h_all, h_rest) < 1e-6);
}

#[test]
fn single_steps_equal_the_full_forward() {
    let device = reference_device();
    let x = sequence(2, 6, 3);
    let lstm = LstmConfig::new(3, 4).with_n_layers(2).init(device).unwrap();
    let rnn = RnnConfig::new(3, 4)
        .with_activation(RnnActivation::Relu)
        .init(device)
        .unwrap();
    let (y_lstm, _) = lstm.forward(x.clone(), None);
    let (y_rnn, _) = rnn.forward(x.clone(), None);
    let (mut lstm_state, mut rnn_state) = (None, None);
    for t in 0..6 {
        let x_t = x.clone().narrow(1, t, 1).reshape([2, 3]);
        let (y, s) = lstm.step(x_t.clone(), lstm_state);
        lstm_state = Some(s);
        assert!(max_abs_diff(y, y_lstm.clone().narrow(1, t, 1).reshape([2, 4])) < 1e-6);
        let (y, h) = rnn.step(x_t, rnn_state);
        rnn_state = Some(h);
        assert!(max_abs_diff(y, y_rnn.clone().narrow(1, t, 1).reshape([2, 4])) < 1e-6);
    }
}

/// The binary time split returns every step, in order, for odd and even lengths.
#[test]
fn split_steps_keeps_order() {
    for seq_length in [1, 2, 5, 8] {
        let x = sequence(2, seq_length, 3);
        let steps = recurrent::split_steps(x.clone());
        assert_eq!(steps.len(), seq_length);
        for (t, step) in steps.into_iter().enumerate() {
            assert_eq!(
                max_abs_diff(step, x.clone().narrow(1, t, 1).reshape([2, 3])),
                0.0
            );
        }
    }
}

#[test]
fn bad_configs_are_errors_naming_the_problem() {
    let device = reference_device();
    let err = LstmConfig::new(0, 4).init(device).unwrap_err();
    assert_eq!(
        err,
        LayerError::InvalidConfig {
            layer: "LstmConfig",
            reason: "d_input must be > 0".into()
        }
    );
    let err = GruConfig::new(3, 4)
        .with_n_layers(0)
        .init(device)
        .unwrap_err();
    assert!(err.to_string().contains("n_layers must be > 0"), "{err}");
    let err = RnnConfig::new(3, 4)
        .with_dropout(1.0)
        .init(device)
        .unwrap_err();
    assert!(
        err.to_string().contains("dropout must be in [0, 1), got 1"),
        "{err}"
    );
}

#[test]
#[should_panic(expected = "Lstm: `x` has shape [2, 5, 7], expected [_, _, 3]")]
fn wrong_input_width_panics_with_both_shapes() {
    let lstm = LstmConfig::new(3, 4).init(reference_device()).unwrap();
    let _ = lstm.forward(sequence(2, 5, 7), None);
}

#[test]
#[should_panic(expected = "Gru: `state.hidden` has shape [1, 3, 4], expected [2, 3, 4]")]
fn wrong_state_shape_panics_with_both_shapes() {
    let gru = GruConfig::new(3, 4)
        .with_n_layers(2)
        .init(reference_device())
        .unwrap();
    let h0 = Tensor::zeros([1, 3, 4], reference_device());
    let _ = gru.forward(sequence(3, 5, 3), Some(h0));
}

#[test]
#[should_panic(expected = "bidirectional layer cannot run one step at a time")]
fn bidirectional_step_panics() {
    let gru = GruConfig::new(3, 4)
        .with_bidirectional(true)
        .init(reference_device())
        .unwrap();
    let _ = gru.step(Tensor::zeros([1, 3], reference_device()), None);
}

/// Backend parity of all three layers (stacked, bidirectional, with dropout off), forward and
/// backward, with every parameter's gradient.
#[test]
fn parity_across_devices() {
    let device = reference_device();
    let lstm = LstmConfig::new(3, 4)
        .with_n_layers(2)
        .with_bidirectional(true)
        .init(device)
        .unwrap();
    let gru = GruConfig::new(3, 4).with_n_layers(2).init(device).unwrap();
    let rnn = RnnConfig::new(3, 4)
        .with_bidirectional(true)
        .init(device)
        .unwrap();
    let x = sequence(2, 5, 3).into_data();
    assert_parity(Tolerance::rel_abs(1e-4, 1e-5), |device| {
        let (lstm, gru, rnn) = (
            to_test_device(&lstm, device),
            to_test_device(&gru, device),
            to_test_device(&rnn, device),
        );
        let x = Tensor::<3>::from_data(x.clone(), device).require_grad();
        let (y_lstm, s) = lstm.forward(x.clone(), None);
        let (y_gru, h_gru) = gru.forward(x.clone(), None);
        let (y_rnn, h_rnn) = rnn.forward(x.clone(), None);
        let loss = (y_lstm.clone().powf_scalar(2.0).sum() + s.cell.clone().sum())
            + (y_gru.clone() * y_gru.clone()).sum()
            + h_gru.sum()
            + y_rnn.clone().sin().sum()
            + h_rnn.sum();
        let grads = loss.backward();
        Outputs::new()
            .float("lstm.y", y_lstm)
            .float("gru.y", y_gru)
            .float("rnn.y", y_rnn)
            .float("dx", x.grad(&grads).unwrap())
            .grads("lstm", &lstm, &grads)
            .grads("gru", &gru, &grads)
            .grads("rnn", &rnn, &grads)
    });
}
