//! lmforge's Transformer blocks against HuggingFace's own modules (fixtures from
//! `tests/fixtures/gen_layers.py`): a GPT-2 block (pre-LN, causal, GELU-tanh) and a BERT layer
//! (post-LN, exact GELU, eps 1e-12), both with a padded row, forward and backward, on every
//! enabled device.

use burn::module::Param;
use burn::tensor::{Device, Gradients, Int, Tensor};
use lmforge::layers::Linear;
use lmforge::layers::attention::padding_mask;
use lmforge::layers::transformer::{BlockConfig, FeedForwardActivation, Norm};
use lmforge_device::testing::{
    Fixture, Outputs, Tolerance, assert_parity, reference_device, to_test_device,
};

const D_MODEL: usize = 8;
const N_HEADS: usize = 2;
const D_FF: usize = 16;

fn fixture(name: &str) -> Fixture {
    Fixture::load(format!(
        "{}/tests/fixtures/layers/{name}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    ))
}

fn param<const D: usize>(fixture: &Fixture, name: &str) -> Tensor<D> {
    Tensor::from_data(fixture.get(&format!("param.{name}")), reference_device())
}

/// Sets a Linear from a weight in burn's `[d_in, d_out]` layout and a bias.
fn set_linear(linear: &mut Linear, weight: Tensor<2>, bias: Tensor<1>) {
    linear.weight = Param::from_tensor(weight);
    linear.bias = Some(Param::from_tensor(bias));
}

fn set_norm(norm: &mut Norm, gamma: Tensor<1>, beta: Tensor<1>) {
    let Norm::Layer(norm) = norm else {
        panic!("blocks here use LayerNorm")
    };
    norm.gamma = Param::from_tensor(gamma);
    norm.beta = Some(Param::from_tensor(beta));
}

fn grad_w(linear: &Linear, grads: &Gradients) -> Tensor<2> {
    linear.weight.grad(grads).expect("weight gradient")
}

fn grad_b(linear: &Linear, grads: &Gradients) -> Tensor<1> {
    linear
        .bias
        .as_ref()
        .unwrap()
        .grad(grads)
        .expect("bias gradient")
}

fn norm_grads(norm: &Norm, grads: &Gradients) -> (Tensor<1>, Tensor<1>) {
    let Norm::Layer(norm) = norm else {
        unreachable!()
    };
    (
        norm.gamma.grad(grads).unwrap(),
        norm.beta.as_ref().unwrap().grad(grads).unwrap(),
    )
}

/// Every parameter takes part: each gradient is non-zero somewhere, except the key bias, which
/// adds the same amount to all of a query's scores (softmax ignores it), so its gradient is
/// exactly zero here and in PyTorch.
fn assert_gradients_reach_every_parameter(reference: &Outputs) {
    for entry in reference
        .entries()
        .iter()
        .filter(|e| e.name.starts_with("grad.param."))
    {
        let max = entry.values.iter().fold(0f64, |m, v| m.max(v.abs()));
        if entry.name.ends_with("key.bias") {
            assert!(max < 1e-6, "{}: {max}", entry.name);
        } else {
            assert!(max > 1e-6, "{} is zero", entry.name);
        }
    }
}

fn inputs(
    fixture: &Fixture,
    device: &Device,
) -> (Tensor<3>, burn::tensor::Tensor<2, burn::tensor::Bool>) {
    let x = Tensor::<3>::from_data(fixture.get("input.x"), device).require_grad();
    let lengths = Tensor::<1, Int>::from_data(fixture.get("input.lengths"), device);
    (x, padding_mask(lengths, 5))
}

#[test]
fn gpt2_block_matches_huggingface() {
    let fixture = fixture("gpt2_block");
    let mut block = BlockConfig::new(D_MODEL, N_HEADS, D_FF)
        .with_activation(FeedForwardActivation::GeluTanh)
        .init_decoder(reference_device())
        .unwrap();
    // GPT-2's Conv1D stores [d_in, d_out], burn's layout: no transposes. c_attn stacks q, k, v
    // along the output dimension.
    let c_attn_w = param::<2>(&fixture, "attn.c_attn.weight").chunk(3, 1);
    let c_attn_b = param::<1>(&fixture, "attn.c_attn.bias").chunk(3, 0);
    let attention = &mut block.self_attention;
    for ((linear, w), b) in [
        &mut attention.query,
        &mut attention.key,
        &mut attention.value,
    ]
    .into_iter()
    .zip(c_attn_w)
    .zip(c_attn_b)
    {
        set_linear(linear, w, b);
    }
    set_linear(
        &mut attention.output,
        param(&fixture, "attn.c_proj.weight"),
        param(&fixture, "attn.c_proj.bias"),
    );
    set_linear(
        &mut block.feed_forward.up,
        param(&fixture, "mlp.c_fc.weight"),
        param(&fixture, "mlp.c_fc.bias"),
    );
    set_linear(
        &mut block.feed_forward.down,
        param(&fixture, "mlp.c_proj.weight"),
        param(&fixture, "mlp.c_proj.bias"),
    );
    set_norm(
        &mut block.norm_self_attention,
        param(&fixture, "ln_1.weight"),
        param(&fixture, "ln_1.bias"),
    );
    set_norm(
        &mut block.norm_feed_forward,
        param(&fixture, "ln_2.weight"),
        param(&fixture, "ln_2.bias"),
    );

    let reference = assert_parity(Tolerance::rel_abs(1e-4, 1e-5), |device| {
        let block = to_test_device(&block, device);
        let (x, mask_pad) = inputs(&fixture, device);
        let y = block.forward(x.clone(), Some(mask_pad), None);
        let g = Tensor::<3>::from_data(fixture.get("input.g_y"), device);
        let grads = (y.clone() * g).sum().backward();
        let a = &block.self_attention;
        let (ln1_g, ln1_b) = norm_grads(&block.norm_self_attention, &grads);
        let (ln2_g, ln2_b) = norm_grads(&block.norm_feed_forward, &grads);
        Outputs::new()
            .float("output.y", y)
            .float("grad.x", x.grad(&grads).unwrap())
            .float(
                "grad.param.attn.c_attn.weight",
                Tensor::cat(
                    vec![
                        grad_w(&a.query, &grads),
                        grad_w(&a.key, &grads),
                        grad_w(&a.value, &grads),
                    ],
                    1,
                ),
            )
            .float(
                "grad.param.attn.c_attn.bias",
                Tensor::cat(
                    vec![
                        grad_b(&a.query, &grads),
                        grad_b(&a.key, &grads),
                        grad_b(&a.value, &grads),
                    ],
                    0,
                ),
            )
            .float("grad.param.attn.c_proj.weight", grad_w(&a.output, &grads))
            .float("grad.param.attn.c_proj.bias", grad_b(&a.output, &grads))
            .float(
                "grad.param.mlp.c_fc.weight",
                grad_w(&block.feed_forward.up, &grads),
            )
            .float(
                "grad.param.mlp.c_fc.bias",
                grad_b(&block.feed_forward.up, &grads),
            )
            .float(
                "grad.param.mlp.c_proj.weight",
                grad_w(&block.feed_forward.down, &grads),
            )
            .float(
                "grad.param.mlp.c_proj.bias",
                grad_b(&block.feed_forward.down, &grads),
            )
            .float("grad.param.ln_1.weight", ln1_g)
            .float("grad.param.ln_1.bias", ln1_b)
            .float("grad.param.ln_2.weight", ln2_g)
            .float("grad.param.ln_2.bias", ln2_b)
    });
    fixture.assert_close(&reference, "output.", Tolerance::absolute(1e-5));
    fixture.assert_close(&reference, "grad.", Tolerance::absolute(1e-4));
    assert_gradients_reach_every_parameter(&reference);
}

#[test]
fn bert_layer_matches_huggingface() {
    let fixture = fixture("bert_layer");
    let mut block = BlockConfig::new(D_MODEL, N_HEADS, D_FF)
        .with_norm_first(false)
        .with_norm_epsilon(1e-12)
        .init_encoder(reference_device())
        .unwrap();
    // BERT uses nn.Linear ([d_out, d_in]): transpose into burn's layout.
    let linear = |name: &str| {
        (
            param::<2>(&fixture, &format!("{name}.weight")).transpose(),
            param::<1>(&fixture, &format!("{name}.bias")),
        )
    };
    let a = &mut block.attention;
    for (target, name) in [
        (&mut a.query, "attention.self.query"),
        (&mut a.key, "attention.self.key"),
        (&mut a.value, "attention.self.value"),
        (&mut a.output, "attention.output.dense"),
        (&mut block.feed_forward.up, "intermediate.dense"),
        (&mut block.feed_forward.down, "output.dense"),
    ] {
        let (w, b) = linear(name);
        set_linear(target, w, b);
    }
    set_norm(
        &mut block.norm_attention,
        param(&fixture, "attention.output.LayerNorm.weight"),
        param(&fixture, "attention.output.LayerNorm.bias"),
    );
    set_norm(
        &mut block.norm_feed_forward,
        param(&fixture, "output.LayerNorm.weight"),
        param(&fixture, "output.LayerNorm.bias"),
    );

    let reference = assert_parity(Tolerance::rel_abs(1e-4, 1e-5), |device| {
        let block = to_test_device(&block, device);
        let (x, mask_pad) = inputs(&fixture, device);
        let y = block.forward(x.clone(), Some(mask_pad));
        let g = Tensor::<3>::from_data(fixture.get("input.g_y"), device);
        let grads = (y.clone() * g).sum().backward();
        let a = &block.attention;
        let mut outputs = Outputs::new()
            .float("output.y", y)
            .float("grad.x", x.grad(&grads).unwrap());
        for (linear, name) in [
            (&a.query, "attention.self.query"),
            (&a.key, "attention.self.key"),
            (&a.value, "attention.self.value"),
            (&a.output, "attention.output.dense"),
            (&block.feed_forward.up, "intermediate.dense"),
            (&block.feed_forward.down, "output.dense"),
        ] {
            outputs = outputs
                .float(
                    format!("grad.param.{name}.weight"),
                    grad_w(linear, &grads).transpose(),
                )
                .float(format!("grad.param.{name}.bias"), grad_b(linear, &grads));
        }
        for (norm, name) in [
            (&block.norm_attention, "attention.output.LayerNorm"),
            (&block.norm_feed_forward, "output.LayerNorm"),
        ] {
            let (g, b) = norm_grads(norm, &grads);
            outputs = outputs
                .float(format!("grad.param.{name}.weight"), g)
                .float(format!("grad.param.{name}.bias"), b);
        }
        outputs
    });
    fixture.assert_close(&reference, "output.", Tolerance::absolute(1e-5));
    fixture.assert_close(&reference, "grad.", Tolerance::absolute(1e-4));
    assert_gradients_reach_every_parameter(&reference);
}

/// RMSNorm (lmforge's `Norm::Rms`) and the SwiGLU feed-forward (`FeedForward` with
/// `FeedForwardActivation::SwiGlu`, no biases) against HuggingFace's `LlamaRMSNorm` and
/// `LlamaMLP` with the same weights (fixture from `tests/fixtures/gen_rmsnorm_swiglu.py`):
/// outputs, the input's gradient and every weight's gradient, on every enabled device.
#[test]
fn rmsnorm_and_swiglu_match_huggingface_llama() {
    use lmforge::layers::transformer::{FeedForwardConfig, NormKind};
    let fixture = fixture("rmsnorm_swiglu");
    let reference = assert_parity(Tolerance::rel_abs(1e-5, 1e-6), |device| {
        let x = Tensor::<3>::from_data(fixture.get("input.x"), device).require_grad();
        let g = Tensor::<3>::from_data(fixture.get("input.g"), device);

        let mut rms = Norm::new(NormKind::RmsNorm, 16, 1e-6, device);
        let Norm::Rms(inner) = &mut rms else {
            unreachable!("an RMSNorm was asked for")
        };
        inner.gamma =
            Param::from_tensor(Tensor::from_data(fixture.get("rms.param.weight"), device));
        let out = rms.forward(x.clone());
        let grads = (out.clone() * g.clone()).sum().backward();
        let Norm::Rms(inner) = &rms else {
            unreachable!()
        };
        let mut outputs = Outputs::new()
            .float("rms.output", out)
            .float("rms.grad.x", x.grad(&grads).unwrap())
            .float("rms.grad.weight", inner.gamma.grad(&grads).unwrap());

        let x = Tensor::<3>::from_data(fixture.get("input.x"), device).require_grad();
        let mut mlp = FeedForwardConfig::new(16, 40)
            .with_activation(FeedForwardActivation::SwiGlu)
            .with_bias(false)
            .init(device)
            .unwrap();
        // PyTorch stores `[out, in]`, burn's Linear `[in, out]`.
        let weight = |name: &str| {
            Param::from_tensor(
                Tensor::<2>::from_data(fixture.get(&format!("mlp.param.{name}.weight")), device)
                    .transpose(),
            )
        };
        mlp.gate.as_mut().unwrap().weight = weight("gate_proj");
        mlp.up.weight = weight("up_proj");
        mlp.down.weight = weight("down_proj");
        let out = mlp.forward(x.clone());
        let grads = (out.clone() * g).sum().backward();
        let grad = |l: &Linear| l.weight.grad(&grads).unwrap().transpose();
        outputs = outputs
            .float("mlp.output", out)
            .float("mlp.grad.x", x.grad(&grads).unwrap())
            .float(
                "mlp.grad.gate_proj.weight",
                grad(mlp.gate.as_ref().unwrap()),
            )
            .float("mlp.grad.up_proj.weight", grad(&mlp.up))
            .float("mlp.grad.down_proj.weight", grad(&mlp.down));
        outputs
    });
    for prefix in ["rms.output", "rms.grad.", "mlp.output", "mlp.grad."] {
        fixture.assert_close(&reference, prefix, Tolerance::rel_abs(1e-5, 1e-6));
    }
}
