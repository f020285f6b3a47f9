//! GPT-2 checkpoints in HuggingFace's layout (`GPT2LMHeadModel`, `GPT2Model`).
//!
//! GPT-2 stores its projections as `Conv1D`, `[d_in, d_out]`, which is burn's `Linear`
//! layout (no transposes), and stacks query, key and value in one `c_attn` of width
//! `3 * d_model`, which is split here on import and joined on export.

use std::path::Path;

use burn::tensor::{DType, Device, TensorData};
use serde_json::json;

use super::model::{Gpt, GptConfig};
use crate::error::ModelError;
use crate::pretrained::weights::{embedding, linear, norm};
use crate::pretrained::{
    self, Exporter, HfConfig, Loader, ParamDtype, Pretrained, Visitor, Weights,
};
use lmforge_layers::transformer::FeedForwardActivation;

const QKV: [&str; 3] = ["q", "k", "v"];

impl GptConfig {
    /// Reads a HuggingFace GPT-2 `config.json`.
    ///
    /// # Errors
    /// [`ModelError::ConfigField`] for a missing or invalid field, or a feature lmforge's GPT
    /// does not have (cross-attention, per-layer attention scaling).
    pub fn from_hf_config(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        Self::from_hf(&HfConfig::read(path.as_ref())?)
    }

    fn from_hf(hf: &HfConfig) -> Result<Self, ModelError> {
        let model_type = hf.str_or("model_type", "gpt2")?;
        if model_type != "gpt2" {
            return Err(hf.error(
                "model_type",
                format!("expected \"gpt2\", got \"{model_type}\""),
            ));
        }
        for field in ["add_cross_attention", "scale_attn_by_inverse_layer_idx"] {
            if hf.bool_or(field, false)? {
                return Err(hf.error(field, "not supported by lmforge's GPT"));
            }
        }
        let activation = match hf.str_or("activation_function", "gelu_new")? {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => FeedForwardActivation::GeluTanh,
            "gelu" => FeedForwardActivation::Gelu,
            "relu" => FeedForwardActivation::Relu,
            other => {
                return Err(hf.error("activation_function", format!("unsupported: \"{other}\"")));
            }
        };
        let d_model = hf.usize("n_embd")?;
        let n_heads = hf.usize("n_head")?;
        if !d_model.is_multiple_of(n_heads) {
            return Err(hf.error(
                "n_head",
                format!("n_embd ({d_model}) must be divisible by n_head ({n_heads})"),
            ));
        }
        Ok(Self::new(hf.usize("vocab_size")?)
            .with_max_seq_length(hf.usize("n_positions")?)
            .with_d_model(d_model)
            .with_n_layers(hf.usize("n_layer")?)
            .with_n_heads(n_heads)
            .with_d_ff(hf.usize_opt("n_inner")?)
            .with_activation(activation)
            .with_dropout(hf.f64_or("resid_pdrop", 0.1)?)
            .with_attention_dropout(hf.f64_or("attn_pdrop", 0.1)?)
            .with_norm_epsilon(hf.f64_or("layer_norm_epsilon", 1e-5)?)
            .with_tie_embeddings(hf.bool_or("tie_word_embeddings", true)?)
            .with_init_std(hf.f64_or("initializer_range", 0.02)?))
    }

    /// The HuggingFace `config.json` of this configuration (`GPT2LMHeadModel`).
    pub fn to_hf_config(&self) -> serde_json::Value {
        let activation = match self.activation {
            FeedForwardActivation::Gelu => "gelu",
            FeedForwardActivation::Relu => "relu",
            _ => "gelu_new",
        };
        json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.max_seq_length,
            "n_embd": self.d_model,
            "n_layer": self.n_layers,
            "n_head": self.n_heads,
            "n_inner": self.d_ff,
            "activation_function": activation,
            "resid_pdrop": self.dropout,
            "embd_pdrop": self.dropout,
            "attn_pdrop": self.attention_dropout,
            "layer_norm_epsilon": self.norm_epsilon,
            "tie_word_embeddings": self.tie_embeddings,
            "initializer_range": self.init_std,
        })
    }
}

/// The parameters `config` describes, or `None` when the count overflows.
fn parameter_count(config: &GptConfig) -> Option<u128> {
    let d = config.d_model as u128;
    // Not `config.d_ff()`: `4 * d_model` may overflow `usize` for a hostile config.
    let d_ff = config.d_ff.map_or(4 * d, |d_ff| d_ff as u128);
    let rows = config.vocab_size as u128 + config.max_seq_length as u128;
    pretrained::transformer_parameters(rows, d, d_ff, config.n_layers as u128)
}

/// The one mapping between lmforge's GPT and GPT-2's names, for import and export.
fn visit<V: Visitor>(gpt: &mut Gpt, v: &mut V, prefix: &str) -> Result<(), ModelError> {
    embedding(v, &format!("{prefix}wte"), &mut gpt.token_embedding)?;
    embedding(v, &format!("{prefix}wpe"), &mut gpt.positions.embedding)?;
    for (i, block) in gpt.blocks.iter_mut().enumerate() {
        let b = format!("{prefix}h.{i}");
        norm(v, &format!("{b}.ln_1"), &mut block.norm_self_attention)?;
        let attention = &mut block.self_attention;
        let parts = [
            &mut attention.query,
            &mut attention.key,
            &mut attention.value,
        ];
        for (part, name) in parts.into_iter().zip(QKV) {
            linear(v, &format!("{b}.attn.c_attn[{name}]"), part, false)?;
        }
        linear(v, &format!("{b}.attn.c_proj"), &mut attention.output, false)?;
        norm(v, &format!("{b}.ln_2"), &mut block.norm_feed_forward)?;
        linear(
            v,
            &format!("{b}.mlp.c_fc"),
            &mut block.feed_forward.up,
            false,
        )?;
        linear(
            v,
            &format!("{b}.mlp.c_proj"),
            &mut block.feed_forward.down,
            false,
        )?;
    }
    norm(v, &format!("{prefix}ln_f"), &mut gpt.norm)?;
    if let Some(head) = gpt.lm_head.as_mut() {
        linear(v, "lm_head", head, true)?;
    }
    Ok(())
}

/// Splits every `c_attn` (`[d, 3d]` weight, `[3d]` bias) into the `[q]`, `[k]`, `[v]` parts
/// [`visit`] reads, checking the stacked shape first so errors name the real tensor.
fn split_qkv(
    weights: &mut Weights,
    prefix: &str,
    n_layers: usize,
    d_model: usize,
) -> Result<(), ModelError> {
    for i in 0..n_layers {
        for (suffix, expected) in [
            ("weight", vec![d_model, 3 * d_model]),
            ("bias", vec![3 * d_model]),
        ] {
            let name = format!("{prefix}h.{i}.attn.c_attn.{suffix}");
            let Some(shape) = weights.shape(&name) else {
                return Err(ModelError::MissingKey {
                    path: weights.path().to_path_buf(),
                    name,
                });
            };
            weights.check_shape(&name, &shape, &expected)?;
            let data = weights.remove(&name).expect("present");
            weights.check_float(&name, &data)?;
            for (part, qkv) in split_last_dim(data, 3).into_iter().zip(QKV) {
                weights.insert(format!("{prefix}h.{i}.attn.c_attn[{qkv}].{suffix}"), part);
            }
        }
    }
    Ok(())
}

/// Joins the `[q]`, `[k]`, `[v]` parts back into `c_attn` tensors.
fn join_qkv(exporter: &mut Exporter, prefix: &str, n_layers: usize) {
    for i in 0..n_layers {
        for suffix in ["weight", "bias"] {
            let parts: Vec<TensorData> = QKV
                .iter()
                .map(|qkv| {
                    exporter
                        .tensors
                        .remove(&format!("{prefix}h.{i}.attn.c_attn[{qkv}].{suffix}"))
                        .expect("exported by visit")
                })
                .collect();
            exporter.tensors.insert(
                format!("{prefix}h.{i}.attn.c_attn.{suffix}"),
                join_last_dim(&parts),
            );
        }
    }
}

/// Splits an `f32` tensor into `n` equal parts along its last dimension.
fn split_last_dim(data: TensorData, n: usize) -> Vec<TensorData> {
    let shape = data.shape().to_vec();
    let width = shape[shape.len() - 1] / n;
    // Half-precision tensors (kept as read) are split in f32 and narrowed again by the loader
    // (exactly: widening and narrowing back changes no value).
    let data = if data.dtype() == DType::F32 {
        data
    } else {
        data.convert_dtype(DType::F32)
    };
    let values = data.try_to_vec::<f32>().expect("weights are f32");
    let mut part_shape = shape.clone();
    *part_shape.last_mut().expect("rank >= 1") = width;
    (0..n)
        .map(|k| {
            let part: Vec<f32> = values
                .chunks(width * n)
                .flat_map(|row| row[k * width..(k + 1) * width].iter().copied())
                .collect();
            TensorData::new(part, part_shape.clone())
        })
        .collect()
}

/// Concatenates `f32` tensors of equal shape along their last dimension.
fn join_last_dim(parts: &[TensorData]) -> TensorData {
    let mut shape = parts[0].shape().to_vec();
    let width = shape[shape.len() - 1];
    let values: Vec<Vec<f32>> = parts
        .iter()
        .map(|p| p.try_to_vec::<f32>().expect("weights are f32"))
        .collect();
    let rows = values[0].len() / width;
    let mut joined = Vec::with_capacity(values[0].len() * parts.len());
    for r in 0..rows {
        for part in &values {
            joined.extend_from_slice(&part[r * width..(r + 1) * width]);
        }
    }
    *shape.last_mut().expect("rank >= 1") = width * parts.len();
    TensorData::new(joined, shape)
}

impl Gpt {
    /// [`Pretrained::from_pretrained`] with the parameters kept in `dtype`
    /// ([`ParamDtype::File`]: the file's own; see [`ParamDtype`] for what each device does).
    ///
    /// # Errors
    /// As [`Pretrained::from_pretrained`], and [`ModelError::DtypeNotSupported`] when
    /// `device` cannot hold the dtype.
    pub fn from_pretrained_as(
        dir: impl AsRef<Path>,
        device: &Device,
        dtype: ParamDtype,
    ) -> Result<Self, ModelError> {
        let dir = dir.as_ref();
        let config = GptConfig::from_hf(&pretrained::read_config(dir)?)?;
        let (mut weights, dtype) = pretrained::read_weights_as(dir, device, dtype)?;
        load(config, &mut weights, device, dtype)
    }
}

/// Builds the model of `config` and sets its parameters (as `dtype`) from `weights`.
fn load(
    config: GptConfig,
    weights: &mut Weights,
    device: &Device,
    dtype: DType,
) -> Result<Gpt, ModelError> {
    pretrained::check_config_size("GptConfig", parameter_count(&config), weights)?;
    let mut gpt = config.init(device)?;
    let prefix = if weights.has_prefix("transformer.") {
        "transformer."
    } else {
        ""
    };
    split_qkv(weights, prefix, config.n_layers, config.d_model)?;
    for i in 0..config.n_layers {
        // Causal-mask buffers of older checkpoints: lmforge builds its own mask.
        weights.ignore(&format!("{prefix}h.{i}.attn.bias"));
        weights.ignore(&format!("{prefix}h.{i}.attn.masked_bias"));
    }
    if config.tie_embeddings {
        // Some files store the tied head anyway; it is the token embedding.
        weights.ignore("lm_head.weight");
    }
    visit(&mut gpt, &mut Loader::with_dtype(weights, dtype), prefix)?;
    weights.finish()?;
    Ok(gpt)
}

impl Pretrained for Gpt {
    /// Loads a `GPT2LMHeadModel` (`transformer.` prefix) or `GPT2Model` (no prefix) folder,
    /// parameters in `f32` ([`Gpt::from_pretrained_as`] keeps half precision).
    fn from_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<Self, ModelError> {
        Gpt::from_pretrained_as(dir, device, ParamDtype::F32)
    }

    /// Writes a `GPT2LMHeadModel` folder.
    fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<(), ModelError> {
        let config = self.config();
        pretrained::check_unpruned(
            "GptConfig",
            self.blocks
                .iter()
                .map(|b| (b.self_attention.n_heads(), b.feed_forward.d_ff())),
            config.n_heads,
            config.d_ff(),
        )?;
        let mut exporter = Exporter::default();
        let mut gpt = self.clone();
        visit(&mut gpt, &mut exporter, "transformer.")?;
        join_qkv(&mut exporter, "transformer.", self.blocks.len());
        pretrained::write(dir.as_ref(), self.config().to_hf_config(), exporter)
    }
}
