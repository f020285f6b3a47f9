//! Post-training weight quantization: int8 per channel and int4 per block.
//!
//! [`quantize`] rounds the weights of every `Linear` and `Embedding` (token and position
//! tables) of any lmforge model to symmetric integers with `f32` scales ([`QuantScheme`]),
//! and puts the values they stand for back into the model. [`QuantizedModel::save`] writes
//! the integers (one byte per int8 value, two int4 values per byte) and the scales;
//! [`load`] reads them into a model built from the same config.
//!
//! # What runs in integer arithmetic
//! Nothing: this is weight-only quantization. Weights are stored as integers and dequantized
//! once, when quantized or loaded, to `f32` (`w = q · scale`); every matrix product then runs
//! in `f32` on whatever backend the model is on, so speed and memory while running are those
//! of the float model, and the outputs are exactly those of the float model with the rounded
//! weights. What shrinks is the file (and a download or a disk cache): int8 to about 0.26x of
//! `f32`, int4 with blocks of 32 to about 0.17x. Biases, norms and any other parameter stay
//! `f32`.
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
//! assert_eq!(loaded.tensors.len(), quantized.tensors.len());
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod file;
mod tensor;

use std::collections::BTreeMap;

use burn::module::Module;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::error::CompressionError;
use crate::paths::{HostTransform, Site, map_host};

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

    fn selects(&self, site: &Site, skip: &[Regex]) -> bool {
        site.shape.len() == 2
            && site.path.ends_with("weight")
            && self.owners.iter().any(|o| o == &site.owner)
            && !skip.iter().any(|r| r.is_match(&site.path))
    }
}

/// A model whose weights were rounded by [`quantize`] (or read by [`load`]), with the
/// integers and scales that stand for them.
#[derive(Clone, Debug)]
pub struct QuantizedModel<M> {
    /// The model, computing with the dequantized weights.
    pub model: M,
    /// The quantized weights by parameter path.
    pub tensors: BTreeMap<String, QuantizedTensor>,
}

impl<M: Module> QuantizedModel<M> {
    /// Number of weight values stored as integers.
    pub fn quantized_values(&self) -> usize {
        self.tensors.values().map(|t| t.values.len()).sum()
    }
}

/// Quantizes the weights `config` selects and returns the model computing with their
/// dequantized values, along with the integers.
///
/// # Errors
/// [`CompressionError::InvalidConfig`] for a bad scheme or pattern, a pattern set that
/// selects no weight, or a non-finite weight.
pub fn quantize<M: Module>(
    model: M,
    config: &QuantizeConfig,
) -> Result<QuantizedModel<M>, CompressionError> {
    config.scheme.validate()?;
    let skip = compile(&config.skip)?;
    let mut rounding = Rounding {
        config,
        skip: &skip,
        tensors: BTreeMap::new(),
        error: None,
    };
    let model = map_host(model, &mut rounding);
    if let Some(error) = rounding.error {
        return Err(error);
    }
    if rounding.tensors.is_empty() {
        return Err(CompressionError::InvalidConfig(format!(
            "no weight of a module of type {:?} to quantize",
            config.owners
        )));
    }
    Ok(QuantizedModel {
        model,
        tensors: rounding.tensors,
    })
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

struct Rounding<'a> {
    config: &'a QuantizeConfig,
    skip: &'a [Regex],
    tensors: BTreeMap<String, QuantizedTensor>,
    error: Option<CompressionError>,
}

impl HostTransform for Rounding<'_> {
    fn select(&mut self, site: &Site) -> bool {
        self.error.is_none() && self.config.selects(site, self.skip)
    }

    fn transform(&mut self, site: &Site, values: Vec<f32>) -> Vec<f32> {
        let shape = [site.shape[0], site.shape[1]];
        let axis = QuantizeConfig::channel_axis(&site.owner);
        match QuantizedTensor::quantize(&values, shape, axis, self.config.scheme) {
            Ok(q) => {
                let back = q.dequantize();
                self.tensors.insert(site.path.clone(), q);
                back
            }
            Err(e) => {
                self.error = Some(CompressionError::InvalidConfig(format!(
                    "{}: {e}",
                    site.path
                )));
                values
            }
        }
    }
}
