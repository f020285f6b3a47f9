//! Layer throughput, printing tokens/s:
//! - a 2-layer LSTM (input 128, hidden 256) forward + backward on batch 16 x sequence 128,
//!   lmforge's [`Lstm`] against burn-nn's `Lstm` stacked twice (run `benches/lstm_torch.py` in
//!   the same session for PyTorch's figure);
//! - multi-head self-attention inference (d_model 256, 4 heads, causal, batch 16 x 128) through
//!   burn's fused attention op against the explicit softmax(QKᵀ)V path.
//!
//! ```sh
//! cargo bench --bench layers                  # default device (flex), or LMFORGE_DEVICE
//! ```

mod common;

use burn::nn::{Lstm as BurnLstm, LstmConfig as BurnLstmConfig};
use burn::tensor::{Device, Tensor, TensorData};
use lmforge::device::select_from_env;
use lmforge::layers::attention::{AttentionInput, MultiHeadAttentionConfig};
use lmforge::layers::rnn::{Lstm, LstmConfig};

const D_INPUT: usize = 128;
const D_HIDDEN: usize = 256;
const BATCH: usize = 16;
const SEQ: usize = 128;
const REPEATS: usize = 10;

fn measure(name: &str, device: &Device, step: impl FnMut()) {
    let (median, best) = common::time(device, REPEATS, step);
    println!(
        "{name}: median {:.1} ms, best {:.1} ms, {:.0} tokens/s",
        median * 1e3,
        best * 1e3,
        (BATCH * SEQ) as f64 / median
    );
}

fn main() {
    let selected = select_from_env().expect("device");
    println!("device: {selected}; 2-layer LSTM {D_INPUT}->{D_HIDDEN}, batch {BATCH} x seq {SEQ}");
    attention(&selected.device);
    let device = selected.device.autodiff();
    let values: Vec<f32> = (0..BATCH * SEQ * D_INPUT)
        .map(|i| ((i * 31 % 97) as f32 - 48.0) / 97.0)
        .collect();
    let x = Tensor::<3>::from_data(TensorData::new(values, [BATCH, SEQ, D_INPUT]), &device)
        .require_grad();

    let lstm: Lstm = LstmConfig::new(D_INPUT, D_HIDDEN)
        .with_n_layers(2)
        .init(&device)
        .expect("config");
    measure("lmforge Lstm fwd+bwd", &device, || {
        let (y, state) = lstm.forward(x.clone(), None);
        let loss = y.powf_scalar(2.0).mean() + state.hidden.sum() + state.cell.sum();
        let grads = loss.backward();
        let _ = x.grad(&grads).map(|g| g.sum().into_scalar::<f32>());
    });

    let burn_layers: [BurnLstm; 2] = [
        BurnLstmConfig::new(D_INPUT, D_HIDDEN, true).init(&device),
        BurnLstmConfig::new(D_HIDDEN, D_HIDDEN, true).init(&device),
    ];
    measure("burn-nn Lstm x2 fwd+bwd", &device, || {
        let (y1, s1) = burn_layers[0].forward(x.clone(), None);
        let (y2, s2) = burn_layers[1].forward(y1, None);
        let loss = y2.powf_scalar(2.0).mean() + s1.hidden.sum() + s2.hidden.sum();
        let grads = loss.backward();
        let _ = x.grad(&grads).map(|g| g.sum().into_scalar::<f32>());
    });
}

/// Causal self-attention inference, fused op vs explicit path (asking for the probabilities
/// forces the explicit path; the context is the same).
fn attention(device: &Device) {
    let (d_model, n_heads) = (256, 4);
    let layer = MultiHeadAttentionConfig::new(d_model, n_heads)
        .init(device)
        .expect("config");
    let values: Vec<f32> = (0..BATCH * SEQ * d_model)
        .map(|i| ((i * 17 % 89) as f32 - 44.0) / 89.0)
        .collect();
    let x = Tensor::<3>::from_data(TensorData::new(values, [BATCH, SEQ, d_model]), device);
    println!("attention d_model {d_model}, {n_heads} heads, causal, batch {BATCH} x seq {SEQ}:");
    measure("  fused attention op (inference)", device, || {
        let out = layer.forward(AttentionInput::self_attention(x.clone()).causal());
        let _ = out.context.sum().into_scalar::<f32>();
    });
    measure("  explicit softmax(QK^T)V (inference)", device, || {
        let out = layer.forward(
            AttentionInput::self_attention(x.clone())
                .causal()
                .need_weights(),
        );
        let _ = out.context.sum().into_scalar::<f32>();
    });
}
