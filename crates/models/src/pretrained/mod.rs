//! HuggingFace checkpoints: import (`config.json` + `model.safetensors`) and export with
//! HuggingFace's tensor names, and lmforge's own checkpoint format.
//!
//! Supported classes: GPT-2 (`GPT2LMHeadModel`, `GPT2Model`) into [`crate::gpt::Gpt`],
//! `LlamaForCausalLM`, `MistralForCausalLM` and `Qwen2ForCausalLM` into
//! [`crate::llama::Llama`], and
//! BERT (`BertModel`, `BertForMaskedLM`, `BertForPreTraining`, `BertForNextSentencePrediction`,
//! `BertForSequenceClassification`, `BertForTokenClassification`,
//! `BertForQuestionAnswering`, names with or without the `bert.` prefix) into the types of
//! [`crate::bert`]. Tied weights absent from the file (GPT-2's `lm_head`, BERT's MLM decoder)
//! are taken from the embedding they are tied to. Half-precision files are widened to `f32`,
//! or, for the decoders (GPT-2 and the Llama family), kept in half precision ([`ParamDtype`],
//! [`crate::llama::Llama::from_pretrained_as`], [`crate::gpt::Gpt::from_pretrained_as`]).
//! Weights come from one `model.safetensors` or from the shards a
//! `model.safetensors.index.json` lists.
//!
//! Import is strict: every weight the model needs must be present with the shape its config
//! implies, and every tensor in the file must be used (known buffers such as BERT's
//! `position_ids` excepted), or a [`ModelError`] names the file, the tensor and both shapes.

mod config;
mod store;
pub(crate) mod weights;

use std::path::Path;

use burn::tensor::{DType, Device};

pub(crate) use config::HfConfig;
pub use store::{load, save};
pub(crate) use weights::{Exporter, Loader, Visitor, Weights};

use crate::error::ModelError;

/// File names inside a HuggingFace model folder.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file inside a HuggingFace model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The index of a sharded checkpoint (`weight_map`: tensor name -> shard file), read when
/// [`WEIGHTS_FILE`] is absent.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";

/// The dtype a loaded model keeps its parameters in (the activations are `f32` in every case).
///
/// Half-precision parameters halve the model's memory. On flex, the products of `f32`
/// activations with `f16`/`bf16` weights read the half-size weights directly (widened in
/// registers), so decoding, which is bound by reading the weights, runs close to twice as fast
/// as with `f32` parameters. On other devices each product widens its weight with burn ops.
/// Devices that cannot store a dtype (ndarray: neither `f16` nor `bf16`) are refused with
/// [`ModelError::DtypeNotSupported`] before anything is loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ParamDtype {
    /// `f32`, whatever the file holds (what [`Pretrained::from_pretrained`] loads).
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// The file's own dtype when all its floating-point tensors share `f16` or `bf16`;
    /// otherwise `f32`.
    File,
}

impl ParamDtype {
    /// The burn dtype for a checkpoint whose floating-point tensors share `file` (if they do).
    pub fn resolve(self, file: Option<DType>) -> DType {
        match self {
            ParamDtype::F32 => DType::F32,
            ParamDtype::F16 => DType::F16,
            ParamDtype::Bf16 => DType::BF16,
            ParamDtype::File => match file {
                Some(d @ (DType::F16 | DType::BF16)) => d,
                _ => DType::F32,
            },
        }
    }
}

impl std::str::FromStr for ParamDtype {
    type Err = String;

    /// `f32`, `f16`, `bf16` or `file` (also `auto`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(ParamDtype::F32),
            "f16" | "float16" | "half" => Ok(ParamDtype::F16),
            "bf16" | "bfloat16" => Ok(ParamDtype::Bf16),
            "file" | "auto" => Ok(ParamDtype::File),
            other => Err(format!(
                "unknown dtype `{other}`: expected f32, f16, bf16 or file"
            )),
        }
    }
}

/// The weights of the folder `dir` for parameters kept in `dtype`, and the dtype that
/// resolves to: half-precision tensors are kept as read unless `dtype` is `F32`. An explicit
/// half dtype the device cannot hold is refused before the file is read; the file's own
/// dtype once it is known.
pub(crate) fn read_weights_as(
    dir: &Path,
    device: &Device,
    dtype: ParamDtype,
) -> Result<(Weights, DType), ModelError> {
    if let ParamDtype::F16 | ParamDtype::Bf16 = dtype {
        check_dtype(dtype.resolve(None), device)?;
    }
    let weights = read_weights_keeping(dir, dtype != ParamDtype::F32)?;
    let resolved = dtype.resolve(weights.float_dtype());
    check_dtype(resolved, device)?;
    Ok((weights, resolved))
}

/// `Err(DtypeNotSupported)` unless `device` can store and compute with `dtype`.
pub(crate) fn check_dtype(dtype: DType, device: &Device) -> Result<(), ModelError> {
    if device.supports_dtype(dtype) {
        return Ok(());
    }
    let supported: Vec<&str> = [
        (DType::F32, "f32"),
        (DType::F16, "f16"),
        (DType::BF16, "bf16"),
    ]
    .into_iter()
    .filter(|(d, _)| device.supports_dtype(*d))
    .map(|(_, name)| name)
    .collect();
    Err(ModelError::DtypeNotSupported {
        dtype: format!("{dtype:?}").to_lowercase(),
        device: format!("{device:?}"),
        supported: supported.join(", "),
    })
}

/// `module` with every float parameter cast to `dtype` (`F32`, `F16` or `BF16`), after
/// checking that `device` (the module's) can hold it.
pub(crate) fn cast_params<M: burn::module::Module>(
    module: M,
    device: &Device,
    dtype: DType,
    model: &'static str,
) -> Result<M, ModelError> {
    use burn::module::{ModuleMapper, Param};
    use burn::tensor::Tensor;
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(ModelError::InvalidConfig {
            model,
            reason: format!("parameters in {dtype:?}: expected F32, F16 or BF16"),
        });
    }
    check_dtype(dtype, device)?;
    struct Cast(DType);
    impl ModuleMapper for Cast {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let dtype = self.0;
            param.map(|t| if t.dtype() == dtype { t } else { t.cast(dtype) })
        }
    }
    Ok(module.map(&mut Cast(dtype)))
}

/// A model that reads and writes HuggingFace model folders.
pub trait Pretrained: Sized {
    /// Builds the model from `dir/config.json` and loads `dir/model.safetensors` (or the
    /// shards listed in `dir/model.safetensors.index.json`).
    ///
    /// # Errors
    /// [`ModelError::FileMissing`], [`ModelError::NotSafetensors`],
    /// [`ModelError::ConfigField`], [`ModelError::MissingKey`],
    /// [`ModelError::UnexpectedKeys`], [`ModelError::ShapeMismatch`] and the like.
    fn from_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<Self, ModelError>;

    /// Writes `dir/config.json` and `dir/model.safetensors` with HuggingFace's names and
    /// layout (tied weights left out, as `save_pretrained` does), creating `dir` if needed.
    ///
    /// # Errors
    /// [`ModelError::Io`] when a file cannot be written.
    fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<(), ModelError>;
}

/// Refuses to export a model whose blocks lost heads or feed-forward units: a HuggingFace
/// config states one head count and one `d_ff` for all blocks. `blocks` yields each block's
/// `(n_heads, d_ff)`; `n_heads` and `d_ff` are the config's.
pub(crate) fn check_unpruned(
    model: &'static str,
    blocks: impl IntoIterator<Item = (usize, usize)>,
    n_heads: usize,
    d_ff: usize,
) -> Result<(), ModelError> {
    for (i, (block_heads, block_d_ff)) in blocks.into_iter().enumerate() {
        crate::error::check(block_heads == n_heads && block_d_ff == d_ff, model, || {
            format!(
                "block {i} has {block_heads} heads and d_ff {block_d_ff} (pruned), the config \
                 {n_heads} and {d_ff}: a HuggingFace config cannot describe it; save with \
                 pretrained::save"
            )
        })?;
    }
    Ok(())
}

/// Reads `dir/config.json`.
pub(crate) fn read_config(dir: &Path) -> Result<HfConfig, ModelError> {
    HfConfig::read(&dir.join(CONFIG_FILE))
}

/// The parameters of `embedding_rows` embedding rows of width `d_model` under `n_layers`
/// Transformer blocks (attention `4 d_model²`, feed-forward `2 d_model d_ff`; biases and norms
/// are a negligible part), or `None` when the count overflows. The size
/// [`check_config_size`] compares with the weights file.
pub(crate) fn transformer_parameters(
    embedding_rows: u128,
    d_model: u128,
    d_ff: u128,
    n_layers: u128,
) -> Option<u128> {
    let block = d_model
        .checked_mul(d_model)?
        .checked_mul(4)?
        .checked_add(d_model.checked_mul(d_ff)?.checked_mul(2)?)?;
    embedding_rows
        .checked_mul(d_model)?
        .checked_add(block.checked_mul(n_layers)?)
}

/// Refuses a `config.json` that describes a model far larger than `model.safetensors` holds,
/// before anything is allocated: a damaged or hostile config (`"n_embd": 44444444464`, found
/// by the `hf_config` fuzz target) would otherwise ask for hundreds of gigabytes and abort the
/// process. `parameters` is the size the config implies (`None` when it overflows); up to twice
/// the file's values plus a million are accepted (tied or recomputed tensors are absent from
/// files), and any real mismatch is reported by name when the weights are loaded.
pub(crate) fn check_config_size(
    model: &'static str,
    parameters: Option<u128>,
    weights: &Weights,
) -> Result<(), ModelError> {
    let values = weights.n_values() as u128;
    match parameters {
        Some(n) if n <= 2 * values + 1_000_000 => Ok(()),
        _ => Err(ModelError::InvalidConfig {
            model,
            reason: format!(
                "{CONFIG_FILE} describes a model of {} parameters, but {} holds {values} values",
                parameters.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                weights.path().display()
            ),
        }),
    }
}

/// Reads `dir/model.safetensors`, or the shards listed by `dir/model.safetensors.index.json`
/// when there is no single file (LayerNorm `gamma`/`beta` renamed to `weight`/`bias`).
pub(crate) fn read_weights(dir: &Path) -> Result<Weights, ModelError> {
    read_weights_keeping(dir, false)
}

/// [`read_weights`], keeping F16/BF16 tensors in their dtype with `keep_half`.
pub(crate) fn read_weights_keeping(dir: &Path, keep_half: bool) -> Result<Weights, ModelError> {
    let single = dir.join(WEIGHTS_FILE);
    let index = dir.join(WEIGHTS_INDEX_FILE);
    let mut weights = if !single.exists() && index.exists() {
        Weights::read_sharded(&index, keep_half)?
    } else {
        Weights::read(&single, keep_half)?
    };
    weights::rename_legacy_norms(&mut weights);
    Ok(weights)
}

/// Writes a model folder.
pub(crate) fn write(
    dir: &Path,
    config: serde_json::Value,
    exporter: Exporter,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|source| weights::io_error(dir, source))?;
    let json = serde_json::to_vec_pretty(&config).expect("a JSON value serialises");
    weights::write_atomic(&dir.join(CONFIG_FILE), &json)?;
    weights::write_safetensors(&dir.join(WEIGHTS_FILE), &exporter.tensors)
}
