//! # lmforge
//!
//! Build, train, fine-tune, compress and run language models on [burn](https://burn.dev).
//!
//! This facade crate re-exports lmforge's member crates under short names and gathers the
//! items most programs need in a [`prelude`]:
//!
//! | module | crate | what it holds |
//! |---|---|---|
//! | [`device`] | `lmforge-device` | choosing a burn backend by name or `LMFORGE_DEVICE` |
//! | [`layers`] | `lmforge-layers` | RNN/LSTM/GRU, attention, positional encodings, Transformer blocks |
//! | [`models`] | `lmforge-models` | LSTM LM, GPT, BERT and its heads, encoder-decoder, generation |
//! | [`objectives`] | `lmforge-objectives` | causal-LM, masked-LM, classification losses; metrics |
//! | [`data`] | `lmforge-data` | tokenizers, datasets, batching |
//! | [`training`] | `lmforge-training` | trainer, schedules, checkpoints, fine-tuning |
//! | [`compression`] | `lmforge-compression` | quantization, pruning, distillation |
//!
//! Backends are cargo features of this crate: `flex` (default, pure-Rust CPU), `ndarray`,
//! `wgpu` (any GPU, or a software Vulkan/GL driver), plus `fusion` and `autotune` for GPU
//! runs. The same model code runs on each; the [`Device`](burn::tensor::Device) decides.
//!
//! ```
//! use lmforge::prelude::*;
//!
//! // `LMFORGE_DEVICE=wgpu` (in a build with the `wgpu` feature) moves this onto a GPU.
//! let device = lmforge::device::device_from_env()?;
//! let x = Tensor::<2>::ones([2, 3], &device);
//! assert_eq!(x.sum().into_scalar::<f32>(), 6.0);
//! # Ok::<(), lmforge::device::DeviceError>(())
//! ```

pub use burn;
pub use lmforge_compression as compression;
pub use lmforge_data as data;
pub use lmforge_device as device;
pub use lmforge_layers as layers;
pub use lmforge_models as models;
pub use lmforge_objectives as objectives;
pub use lmforge_training as training;

/// The names most lmforge programs use: burn's tensor types and lmforge's device selection.
pub mod prelude {
    pub use burn::module::Module;
    pub use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
    pub use lmforge_device::{Backend, DeviceError, device, device_from_env, select_named};
}

/// The guide in `docs/` and the README, compiled and run as doctests so that every Rust block
/// in them keeps building against the current API.
#[cfg(doctest)]
pub mod guide {
    #[doc = include_str!("../README.md")]
    pub struct Readme;
    #[doc = include_str!("../docs/getting-started.md")]
    pub struct GettingStarted;
    #[doc = include_str!("../docs/building-models.md")]
    pub struct BuildingModels;
    #[doc = include_str!("../docs/pretraining-bert.md")]
    pub struct PretrainingBert;
    #[doc = include_str!("../docs/gpt.md")]
    pub struct Gpt;
    #[doc = include_str!("../docs/fine-tuning.md")]
    pub struct FineTuning;
    #[doc = include_str!("../docs/training.md")]
    pub struct Training;
    #[doc = include_str!("../docs/compression.md")]
    pub struct Compression;
    #[doc = include_str!("../docs/decoder-models.md")]
    pub struct DecoderModels;
    #[cfg(feature = "learner")]
    #[doc = include_str!("../docs/scaling.md")]
    pub struct Scaling;
}
