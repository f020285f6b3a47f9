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
