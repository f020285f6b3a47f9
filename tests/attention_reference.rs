//! lmforge's multi-head attention against PyTorch's `nn.MultiheadAttention` (fixture from
//! `tests/fixtures/gen_layers.py`): key padding mask + causal mask, probabilities returned,
//! forward and backward, on every enabled device.

use burn::tensor::{Bool, Int, Tensor};
use lmforge::layers::attention::{AttentionInput, MultiHeadAttentionConfig, padding_mask};
use lmforge_device::testing::{
    Fixture, Outputs, Tolerance, assert_parity, reference_device, to_test_device,
};

#[test]
fn attention_with_padding_and_causal_masks_matches_pytorch() {
    let fixture = Fixture::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/layers/mha_pad_causal.safetensors"
    ));
    let layer = MultiHeadAttentionConfig::new(8, 2)
        .init(reference_device())
        .unwrap()
        .load_pytorch(
            |name| fixture.try_get(&format!("param.{name}")),
            fixture.with_prefix("param."),
        )
        .unwrap();
    let reference = assert_parity(Tolerance::rel_abs(1e-4, 1e-5), |device| {
        let layer = to_test_device(&layer, device);
        let x = Tensor::<3>::from_data(fixture.get("input.x"), device).require_grad();
        let lengths = Tensor::<1, Int>::from_data(fixture.get("input.lengths"), device);
        let mask_pad: Tensor<2, Bool> = padding_mask(lengths, 6);
        let out = layer.forward(
            AttentionInput::self_attention(x.clone())
                .mask_pad(mask_pad)
                .causal()
                .need_weights(),
        );
        let weights = out.weights.unwrap();
        let g_context = Tensor::<3>::from_data(fixture.get("input.g_context"), device);
        let g_weights = Tensor::<4>::from_data(fixture.get("input.g_weights"), device);
        let loss = (out.context.clone() * g_context).sum() + (weights.clone() * g_weights).sum();
        let grads = loss.backward();
        // PyTorch layout: in_proj stacks q, k, v as [3 d_model, d_model]; burn's Linear stores
        // [d_in, d_out], hence the transposes.
        let grad_w = |l: &lmforge::layers::Linear| l.weight.grad(&grads).unwrap().transpose();
        let grad_b = |l: &lmforge::layers::Linear| l.bias.as_ref().unwrap().grad(&grads).unwrap();
        Outputs::new()
            .float("output.context", out.context)
            .float("output.weights", weights)
            .float("grad.x", x.grad(&grads).unwrap())
            .float(
                "grad.param.in_proj_weight",
                Tensor::cat(
                    vec![
                        grad_w(&layer.query),
                        grad_w(&layer.key),
                        grad_w(&layer.value),
                    ],
                    0,
                ),
            )
            .float(
                "grad.param.in_proj_bias",
                Tensor::cat(
                    vec![
                        grad_b(&layer.query),
                        grad_b(&layer.key),
                        grad_b(&layer.value),
                    ],
                    0,
                ),
            )
            .float("grad.param.out_proj.weight", grad_w(&layer.output))
            .float("grad.param.out_proj.bias", grad_b(&layer.output))
    });
    fixture.assert_close(&reference, "output.", Tolerance::absolute(1e-5));
    fixture.assert_close(&reference, "grad.", Tolerance::absolute(1e-4));
}

/// Rotary positions against HuggingFace's own code (fixture from
/// `tests/fixtures/gen_rotary.py`): the half-split pairing as Llama rotates (bases 10000 and
/// 500000) and the interleaved pairing as GPT-J rotates, at `d_head` 16 and positions 5..12,
/// through both [`RotaryEncoding`](lmforge::layers::position::RotaryEncoding) (precomputed
/// table) and [`Rope`](lmforge::layers::position::Rope) (angles per call), on every enabled
/// device; the largest difference measured is printed.
#[test]
fn rotary_positions_match_huggingface_llama_and_gptj() {
    use lmforge::layers::position::{RopeConfig, RotaryEncodingConfig, RotaryStyle};
    let fixture = Fixture::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/layers/rotary.safetensors"
    ));
    let (start, seq) = (5, 7);
    let cases = [
        ("half.base10000", RotaryStyle::HalfSplit, 10000.0),
        ("half.base500000", RotaryStyle::HalfSplit, 500000.0),
        ("interleaved", RotaryStyle::Interleaved, 10000.0),
    ];
    let positions: Vec<usize> = (start..start + seq).collect();
    let reference = assert_parity(Tolerance::rel_abs(1e-5, 1e-5), |device| {
        let x = Tensor::<4>::from_data(fixture.get("input.x"), device);
        let mut outputs = Outputs::new();
        for (key, style, base) in cases {
            let table = RotaryEncodingConfig::new(16, 16)
                .with_base(base)
                .with_style(style)
                .init(device)
                .unwrap();
            let rope = RopeConfig::new(16)
                .with_base(base)
                .with_style(style)
                .init()
                .unwrap();
            outputs = outputs
                .float(format!("table.{key}"), table.apply(x.clone(), start))
                .float(format!("rope.{key}"), rope.apply(x.clone(), &positions));
        }
        outputs
    });
    let mut worst = 0.0f32;
    for entry in reference.entries() {
        let (_, key) = entry.name.split_once('.').unwrap();
        let want: Vec<f32> = fixture.get(key).iter::<f32>().collect();
        let got = &entry.values;
        assert_eq!(got.len(), want.len(), "{}", entry.name);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let d = (g - w as f64).abs() as f32;
            worst = worst.max(d);
            assert!(d <= 1e-6, "{} [{i}]: {g} vs HuggingFace {w}", entry.name);
        }
    }
    assert_eq!(
        reference.entries().len(),
        6,
        "every style ran through both layers"
    );
    println!("largest difference from HuggingFace: {worst:e}");
}
