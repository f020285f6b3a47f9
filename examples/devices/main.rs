//! Lists the backends compiled into this build, selects one, and runs a small computation on
//! it, printing the device (for wgpu: the adapter and graphics API) and the result.
//!
//! ```sh
//! cargo run --release --example devices                         # default backend (flex)
//! LMFORGE_DEVICE=ndarray cargo run --release --example devices --features ndarray
//! cargo run --release --example devices --features wgpu -- --device wgpu
//! ```

use anyhow::Result;
use burn::tensor::activation::softmax;
use clap::Parser;
use lmforge::device::{Backend, SelectedDevice, select_named};
use lmforge::prelude::*;

/// Show and exercise the burn backends lmforge can run on.
#[derive(Parser, Debug)]
struct Args {
    /// Backend to run on: flex, ndarray, wgpu, wgpu:vulkan, wgpu:gl, cpu. Default: the
    /// `LMFORGE_DEVICE` variable, else the build's default backend.
    #[arg(long)]
    device: Option<String>,
    /// Side of the square matrices multiplied.
    #[arg(long, default_value_t = 256)]
    size: usize,
}

/// Multiplies two `size x size` matrices built from host data, takes a row softmax and
/// returns the sum of the result (which is `size`, one per row) and the first row's maximum.
fn run(selected: &SelectedDevice, size: usize) -> (f32, f32) {
    let device = &selected.device;
    let values: Vec<f32> = (0..size * size)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 500.0)
        .collect();
    let a = Tensor::<2>::from_data(TensorData::new(values.clone(), [size, size]), device);
    let b = a.clone().transpose();
    let probs = softmax(a.matmul(b), 1);
    let first_row_max = probs
        .clone()
        .slice([0..1, 0..size])
        .max()
        .into_scalar::<f32>();
    (probs.sum().into_scalar::<f32>(), first_row_max)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let compiled: Vec<&str> = Backend::compiled().into_iter().map(Backend::name).collect();
    println!("compiled backends: {}", compiled.join(", "));
    let selected = select_named(args.device.as_deref())?;
    println!("device: {selected}");
    let (total, first_row_max) = run(&selected, args.size);
    println!(
        "softmax(A·Aᵀ) over {n}x{n}: sum {total:.4} (expected {n}), first-row max {first_row_max:.6}",
        n = args.size
    );
    Ok(())
}
