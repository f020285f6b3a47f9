//! Post-training weight quantization that keeps the weights packed: int8 per channel and int4
//! per block.
//!
//! [`quantize`] rounds the weight of every [`Linear`](lmforge_layers::Linear) and
//! [`Embedding`](lmforge_layers::Embedding) of an lmforge model (token, position and segment
//! tables, every projection and head) to symmetric integers with `f32` scales
//! ([`QuantScheme`]) and packs the layer in place ([`lmforge_layers::quant`]).
//! [`QuantizedModel::save`] writes the integers (one byte per int8 value, two int4 values per
//! byte) and the scales; [`load`] reads them into a model built from the same config.
//!
//! # What runs packed
//! On flex (without autodiff), a packed layer keeps only the integers and scales in memory,
//! and its products run through lmforge's kernel, which widens the integers to `f32` in
//! registers: the weights take about 0.25x (int8) or 0.14x (int4, blocks of 32) of their `f32`
//! memory, and decoding, which is bound by reading the weights, speeds up accordingly
//! (docs/compression.md has the measured table). Activations, accumulation, biases, norms and
//! every other parameter stay `f32`; the outputs are those of the float model with the rounded
//! weights, to `f32` rounding.
//!
//! On other devices (and under autodiff) the layers keep the dequantized weight as well,
//! computed once, and run burn's ops with it: the same numbers, the float model's memory and
//! speed.
//!
//! ```
//! use lmforge_compression::quantize::{self, QuantScheme, QuantizeConfig};
//! use lmforge_models::gpt::GptConfig;
//!
//! # let device = lmforge_device::device_from_env().unwrap();
//! let config = GptConfig::tiny(96);
//! let model = config.init(&device)?;
//! let quantized = quantize::quantize(model, &QuantizeConfig::new(QuantScheme::Int8PerChannel))?;
//! # let dir = std::env::temp_dir().join(format!("lmforge-quant-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! let file = dir.join("gpt.int8.safetensors");
//! quantized.save(&file)?;
//! let loaded = quantize::load(config.init(&device)?, &file)?;
//! assert_eq!(loaded.tensors, quantized.tensors);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod file;
mod tensor;

use std::collections::BTreeMap;

use burn::module::Module;
use lmforge_layers::{LayerMut, PackLayers};
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::CompressionError;

pub use file::load;
pub use tensor::{QuantScheme, QuantizedTensor};

/// Which weights [`quantize`] rounds, and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizeConfig {
    /// The integer format.
    pub scheme: QuantScheme,
    /// Types of the modules whose 2-D `weight` is quantized. Default: `Linear` (channels are
    /// the output columns) and `Embedding` (channels are the rows).
    pub owners: Vec<String>,
    /// Regular expressions over parameter paths to leave in `f32` (e.g. `^lm_head\.`).
    pub skip: Vec<String>,
}

impl QuantizeConfig {
    /// Every `Linear` and `Embedding` weight with `scheme`.
    pub fn new(scheme: QuantScheme) -> Self {
        Self {
            scheme,
            owners: vec!["Linear".into(), "Embedding".into()],
            skip: Vec::new(),
        }
    }

    /// Leaves the parameters whose path matches `pattern` in `f32`.
    pub fn with_skip(mut self, pattern: impl Into<String>) -> Self {
        self.skip.push(pattern.into());
        self
    }

    /// The axis of the output channels of a weight owned by `owner`: 1 for `Linear`
    /// (`[d_input, d_output]`), 0 otherwise (tables, `[entries, width]`).
    pub fn channel_axis(owner: &str) -> usize {
        usize::from(owner == "Linear")
    }

    fn selects(&self, owner: &str, path: &str, skip: &[Regex]) -> bool {
        self.owners.iter().any(|o| o == owner) && !skip.iter().any(|r| r.is_match(path))
    }
}

/// A model whose `Linear`/`Embedding` weights were quantized and packed by [`quantize`] (or
/// read by [`load`]), with the quantized weights by parameter path.
#[derive(Clone, Debug)]
pub struct QuantizedModel<M> {
    /// The model, its quantized layers packed.
    pub model: M,
    /// The quantized weights by parameter path (`....weight`), sharing their packed integers
    /// with the layers.
    pub tensors: BTreeMap<String, QuantizedTensor>,
}

impl<M: Module> QuantizedModel<M> {
    /// Number of weight values stored as integers.
    pub fn quantized_values(&self) -> usize {
        self.tensors.values().map(QuantizedTensor::numel).sum()
    }

    /// Bytes the packed weights take in memory (integers and scales).
    pub fn packed_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.packed.memory_bytes()).sum()
    }
}

/// Quantizes the weights `config` selects, packing their layers in place (module docs).
///
/// # Errors
/// [`CompressionError::InvalidConfig`] for a bad scheme or pattern, a pattern set that
/// selects no weight, or a non-finite weight.
pub fn quantize<M: Module + PackLayers>(
    mut model: M,
    config: &QuantizeConfig,
) -> Result<QuantizedModel<M>, CompressionError> {
    config
        .scheme
        .validate()
        .map_err(|e| CompressionError::InvalidConfig(e.to_string()))?;
    let skip = compile(&config.skip)?;
    let mut tensors = BTreeMap::new();
    let mut error = None;
    model.for_each_layer("", &mut |path, layer| {
        let path = format!("{path}.weight");
        let owner = match layer {
            LayerMut::Linear(_) => "Linear",
            LayerMut::Embedding(_) => "Embedding",
        };
        if error.is_some() || !config.selects(owner, &path, &skip) {
            return;
        }
        let packed = match layer {
            LayerMut::Linear(linear) => linear.pack(config.scheme).map(|()| {
                (
                    linear.packed().cloned(),
                    linear.weight.shape().dims::<2>(),
                    1,
                )
            }),
            LayerMut::Embedding(table) => table
                .pack(config.scheme)
                .map(|()| (table.packed().cloned(), table.weight.shape().dims::<2>(), 0)),
        };
        match packed {
            Ok((Some(packed), shape, channel_axis)) => {
                tensors.insert(
                    path,
                    QuantizedTensor {
                        shape,
                        channel_axis,
                        packed,
                    },
                );
            }
            Ok((None, ..)) => unreachable!("a packed layer has a packed weight"),
            Err(e) => error = Some(CompressionError::InvalidConfig(format!("{path}: {e}"))),
        }
    });
    if let Some(error) = error {
        return Err(error);
    }
    if tensors.is_empty() {
        return Err(CompressionError::InvalidConfig(format!(
            "no weight of a module of type {:?} to quantize",
            config.owners
        )));
    }
    Ok(QuantizedModel { model, tensors })
}

pub(crate) fn compile(patterns: &[String]) -> Result<Vec<Regex>, CompressionError> {
    patterns
        .iter()
        .map(|p| {
            Regex::new(p)
                .map_err(|e| CompressionError::InvalidConfig(format!("bad pattern `{p}`: {e}")))
        })
        .collect()
}
