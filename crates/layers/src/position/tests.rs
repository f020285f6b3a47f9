//! Unit tests of the positional encodings, with hand-derived values.

use burn::tensor::{Tensor, TensorData};
use lmforge_device::testing::{
    Outputs, Tolerance, assert_parity, reference_device, to_test_device,
};

use super::*;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

/// PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...): for d = 4, position 2,
/// the angles are 2 and 2/100.
#[test]
fn sinusoidal_values_match_the_formula() {
    let table = SinusoidalPositionsConfig::new(8, 4)
        .init(reference_device())
        .unwrap();
    let row = values(table.forward(2, 1));
    let expected = [2f32.sin(), 2f32.cos(), 0.02f32.sin(), 0.02f32.cos()];
    for (got, want) in row.iter().zip(expected) {
        assert!((got - want).abs() < 1e-6, "{row:?}");
    }
    assert_eq!(table.forward(3, 4).dims(), [1, 4, 4]);
    assert!(
        SinusoidalPositionsConfig::new(8, 5)
            .init(reference_device())
            .is_err()
    );
}

#[test]
#[should_panic(expected = "positions 6..10 exceed max_seq_length 8")]
fn positions_past_the_table_panic() {
    let table = LearnedPositionsConfig::new(8, 4)
        .init(reference_device())
        .unwrap();
    let _ = table.forward(6, 4);
}

#[test]
fn learned_positions_start_at_the_offset() {
    let table = LearnedPositionsConfig::new(8, 4)
        .init(reference_device())
        .unwrap();
    let all = values(table.forward(0, 8));
    let tail = values(table.forward(5, 3));
    assert_eq!(&all[5 * 4..], tail.as_slice());
}

/// Hand derivation for d_head = 2 (one pair, frequency 1): position p rotates (a, b) by angle
/// p, giving (a cos p - b sin p, b cos p + a sin p).
#[test]
fn rotary_rotates_each_pair_by_the_position_angle() {
    for style in [RotaryStyle::HalfSplit, RotaryStyle::Interleaved] {
        let rope = RotaryEncodingConfig::new(8, 2)
            .with_style(style)
            .init(reference_device())
            .unwrap();
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![0.5f32, -2.0, 0.5, -2.0], [1, 1, 2, 2]),
            reference_device(),
        );
        let got = values(rope.apply(x, 3)); // positions 3 and 4
        for (row, p) in [3f32, 4.0].into_iter().enumerate() {
            let (a, b) = (0.5f32, -2.0f32);
            let want = [a * p.cos() - b * p.sin(), b * p.cos() + a * p.sin()];
            assert!((got[2 * row] - want[0]).abs() < 1e-5, "{style:?} {got:?}");
            assert!(
                (got[2 * row + 1] - want[1]).abs() < 1e-5,
                "{style:?} {got:?}"
            );
        }
    }
}

/// The point of RoPE: the dot product of a rotated query and key depends only on the distance
/// between their positions.
#[test]
fn rotary_scores_depend_only_on_relative_position() {
    let device = reference_device();
    let rope = RotaryEncodingConfig::new(32, 8).init(device).unwrap();
    let q = Tensor::<4>::from_data(
        TensorData::new(
            (0..8).map(|i| i as f32 * 0.3 - 1.0).collect::<Vec<_>>(),
            [1, 1, 1, 8],
        ),
        device,
    );
    let k = Tensor::<4>::from_data(
        TensorData::new(
            (0..8).map(|i| 0.7 - i as f32 * 0.2).collect::<Vec<_>>(),
            [1, 1, 1, 8],
        ),
        device,
    );
    let score = |m: usize, n: usize| {
        (rope.apply(q.clone(), m) * rope.apply(k.clone(), n))
            .sum()
            .into_scalar::<f32>()
    };
    assert!((score(5, 2) - score(13, 10)).abs() < 1e-4);
    assert!((score(0, 7) - score(20, 27)).abs() < 1e-4);
    assert!(
        (score(5, 2) - score(5, 3)).abs() > 1e-3,
        "distance must matter"
    );
}

#[test]
fn parity_across_devices() {
    let device = reference_device();
    let rope = RotaryEncodingConfig::new(16, 4).init(device).unwrap();
    let learned = LearnedPositionsConfig::new(16, 4).init(device).unwrap();
    let sinusoidal = SinusoidalPositionsConfig::new(16, 4).init(device).unwrap();
    let x: Vec<f32> = (0..2 * 2 * 5 * 4).map(|i| (i % 7) as f32 - 3.0).collect();
    let x = TensorData::new(x, [2, 2, 5, 4]);
    assert_parity(Tolerance::rel_abs(1e-5, 1e-5), |device| {
        let rope = to_test_device(&rope, device);
        let learned = to_test_device(&learned, device);
        let x = Tensor::<4>::from_data(x.clone(), device).require_grad();
        let rotated = rope.apply(x.clone(), 3);
        let positions = learned.forward(2, 5);
        let loss = rotated.clone().powf_scalar(2.0).sum() + positions.clone().sin().sum();
        let grads = loss.backward();
        Outputs::new()
            .float("rotated", rotated)
            .float(
                "sinusoidal",
                to_test_device(&sinusoidal, device).forward(1, 6),
            )
            .float("dx", x.grad(&grads).unwrap())
            .grads("learned", &learned, &grads)
    });
}

/// RoPE encodes relative positions: the dot product of a query rotated to position `m` and
/// a key rotated to `n` depends on `m - n` only (a property of the rotation, checked at
/// three offsets of the same distance), and position 0 leaves vectors unchanged.
#[test]
fn rope_scores_depend_on_relative_position() {
    let device = reference_device();
    let rope = RopeConfig::new(8).init().unwrap();
    let vector = |salt: f32| {
        let v: Vec<f32> = (0..8).map(|i| ((i as f32 + salt) * 0.7).sin()).collect();
        Tensor::<4>::from_data(TensorData::new(v, [1, 1, 1, 8]), device)
    };
    let (q, k) = (vector(0.3), vector(1.9));
    let score = |m: usize, n: usize| {
        (rope.apply(q.clone(), &[m]) * rope.apply(k.clone(), &[n]))
            .sum()
            .into_scalar::<f32>()
    };
    let reference = score(5, 2);
    for (m, n) in [(3, 0), (10, 7), (40, 37)] {
        assert!((score(m, n) - reference).abs() < 1e-4, "{m},{n}");
    }
    assert!((score(5, 3) - reference).abs() > 1e-3, "distance 2 differs");
    assert_eq!(values(rope.apply(q.clone(), &[0])), values(q));
}

/// Llama 3's scaling by hand (factor 4, band factors 1 and 4, original context 128; base
/// 10000, d_head 8 gives frequencies 1, 0.1, 0.01, 0.001, wavelengths 2π/f): 6.28 is below
/// 128/4 = 32 and kept; 62.8 lies in [32, 128] and is smoothed with s = (128/62.8 - 1)/3 =
/// 0.346..., f' = (1 - s) f / 4 + s f; 628 and 6283 exceed 128 and are divided by 4.
/// Linear scaling divides every frequency.
#[test]
fn rope_scalings_follow_their_formulas() {
    let llama3 = RopeConfig::new(8)
        .with_scaling(Some(RopeScaling::Llama3 {
            factor: 4.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 128,
        }))
        .init()
        .unwrap();
    let f = llama3.inv_freq();
    let wavelen = 2.0 * std::f64::consts::PI / 0.1;
    let s = (128.0 / wavelen - 1.0) / 3.0;
    let smoothed = (1.0 - s) * 0.1 / 4.0 + s * 0.1;
    for (got, want) in f.iter().zip([1.0, smoothed, 0.0025, 0.00025]) {
        assert!(
            ((*got as f64) - want).abs() < 1e-6 * want.max(1e-3),
            "{f:?}"
        );
    }
    let linear = RopeConfig::new(8)
        .with_scaling(Some(RopeScaling::Linear { factor: 2.0 }))
        .init()
        .unwrap();
    assert!((linear.inv_freq()[1] - 0.05).abs() < 1e-8);
    assert!(RopeConfig::new(7).init().is_err());
    assert!(
        RopeConfig::new(8)
            .with_scaling(Some(RopeScaling::Linear { factor: 0.0 }))
            .init()
            .is_err()
    );
}
