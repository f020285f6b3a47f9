//! Llama, Mistral and Qwen2 checkpoints in HuggingFace's layout (`LlamaForCausalLM`,
//! `MistralForCausalLM`, `Qwen2ForCausalLM`).
//!
//! All projections are PyTorch `nn.Linear` weights, `[d_out, d_in]`, transposed into burn's
//! layout on import and back on export. `config.json` is read as transformers 4.x writes it
//! (top-level `rope_theta`, a `rope_scaling` object) and as 5.x writes it (`rope_parameters`).

use std::path::Path;

use burn::tensor::{DType, Device};
use serde_json::json;

use super::model::{Llama, LlamaConfig, LlamaFamily};
use crate::error::ModelError;
use crate::pretrained::weights::{embedding, linear, norm};
use crate::pretrained::{
    self, Exporter, HfConfig, Loader, ParamDtype, Pretrained, Visitor, Weights,
};
use lmforge_layers::position::RopeScaling;

impl LlamaFamily {
    /// HuggingFace's `model_type`.
    pub fn model_type(&self) -> &'static str {
        match self {
            LlamaFamily::Llama => "llama",
            LlamaFamily::Mistral => "mistral",
            LlamaFamily::Qwen2 => "qwen2",
        }
    }

    /// HuggingFace's class name of the causal-LM model.
    pub fn architecture(&self) -> &'static str {
        match self {
            LlamaFamily::Llama => "LlamaForCausalLM",
            LlamaFamily::Mistral => "MistralForCausalLM",
            LlamaFamily::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

impl LlamaConfig {
    /// Reads a HuggingFace Llama, Mistral or Qwen2 `config.json`.
    ///
    /// # Errors
    /// [`ModelError::ConfigField`] for a missing or invalid field, or a feature lmforge's
    /// Llama does not have (an activation other than SiLU, a rotary scaling other than
    /// `linear`/`llama3`, partial rotary embeddings, Qwen2's per-layer sliding windows).
    pub fn from_hf_config(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        Self::from_hf(&HfConfig::read(path.as_ref())?)
    }

    fn from_hf(hf: &HfConfig) -> Result<Self, ModelError> {
        let family = match hf.str_or("model_type", "")? {
            "llama" => LlamaFamily::Llama,
            "mistral" => LlamaFamily::Mistral,
            "qwen2" => LlamaFamily::Qwen2,
            other => {
                return Err(hf.error(
                    "model_type",
                    format!("expected \"llama\", \"mistral\" or \"qwen2\", got \"{other}\""),
                ));
            }
        };
        let activation = hf.str_or("hidden_act", "silu")?;
        if activation != "silu" {
            return Err(hf.error("hidden_act", format!("unsupported: \"{activation}\"")));
        }
        if hf.f64_or("partial_rotary_factor", 1.0)? != 1.0 {
            return Err(hf.error("partial_rotary_factor", "not supported by lmforge's Llama"));
        }
        let d_model = hf.usize("hidden_size")?;
        let n_heads = hf.usize("num_attention_heads")?;
        let n_kv_heads = hf.usize_opt("num_key_value_heads")?.unwrap_or(n_heads);
        let d_head = match hf.usize_opt("head_dim")? {
            Some(d_head) => d_head,
            None if d_model.is_multiple_of(n_heads) => d_model / n_heads,
            None => {
                return Err(hf.error(
                    "num_attention_heads",
                    format!(
                        "hidden_size ({d_model}) must be divisible by num_attention_heads \
                         ({n_heads}) when head_dim is not given"
                    ),
                ));
            }
        };
        if !n_heads.is_multiple_of(n_kv_heads) {
            return Err(hf.error(
                "num_key_value_heads",
                format!("{n_kv_heads} must divide num_attention_heads ({n_heads})"),
            ));
        }
        if !d_head.is_multiple_of(2) {
            return Err(hf.error("head_dim", format!("must be even, got {d_head}")));
        }
        let (rope_theta, rope_scaling) = rope(hf)?;
        let (qkv_bias, output_bias, mlp_bias) = match family {
            LlamaFamily::Llama => {
                let attention_bias = hf.bool_or("attention_bias", false)?;
                (
                    attention_bias,
                    attention_bias,
                    hf.bool_or("mlp_bias", false)?,
                )
            }
            LlamaFamily::Mistral => (false, false, false),
            LlamaFamily::Qwen2 => (true, false, false),
        };
        let sliding_window = match family {
            LlamaFamily::Llama => None,
            LlamaFamily::Mistral => hf.usize_opt("sliding_window")?,
            LlamaFamily::Qwen2 => {
                if hf.bool_or("use_sliding_window", false)? {
                    return Err(hf.error(
                        "use_sliding_window",
                        "Qwen2's per-layer sliding windows are not supported by lmforge's Llama",
                    ));
                }
                None
            }
        };
        Ok(Self::new(hf.usize("vocab_size")?)
            .with_family(family)
            .with_d_model(d_model)
            .with_n_layers(hf.usize("num_hidden_layers")?)
            .with_n_heads(n_heads)
            .with_n_kv_heads(Some(n_kv_heads))
            .with_d_head(Some(d_head))
            .with_d_ff(hf.usize("intermediate_size")?)
            .with_max_seq_length(hf.usize("max_position_embeddings")?)
            .with_rope_theta(rope_theta)
            .with_rope_scaling(rope_scaling)
            .with_norm_epsilon(hf.f64_or("rms_norm_eps", 1e-6)?)
            .with_qkv_bias(qkv_bias)
            .with_output_bias(output_bias)
            .with_mlp_bias(mlp_bias)
            .with_sliding_window(sliding_window)
            .with_tie_embeddings(hf.bool_or("tie_word_embeddings", false)?)
            .with_attention_dropout(hf.f64_or("attention_dropout", 0.0)?)
            .with_init_std(hf.f64_or("initializer_range", 0.02)?))
    }

    /// The HuggingFace `config.json` of this configuration, in the layout transformers 4.x
    /// writes (top-level `rope_theta`, a `rope_scaling` object), which 4.x and 5.x both read.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] when the family cannot express the configuration (for
    /// example biases on a Mistral model, or a sliding window on Llama).
    pub fn to_hf_config(&self) -> Result<serde_json::Value, ModelError> {
        let unsupported = |what: &str| ModelError::InvalidConfig {
            model: "LlamaConfig",
            reason: format!(
                "{what} cannot be written as a HuggingFace {} config",
                self.family.model_type()
            ),
        };
        let mut config = json!({
            "architectures": [self.family.architecture()],
            "model_type": self.family.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "intermediate_size": self.d_ff,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads(),
            "head_dim": self.d_head(),
            "max_position_embeddings": self.max_seq_length,
            "rms_norm_eps": self.norm_epsilon,
            "rope_theta": self.rope_theta,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie_embeddings,
            "attention_dropout": self.attention_dropout,
            "initializer_range": self.init_std,
        });
        let fields = config.as_object_mut().expect("an object");
        match self.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => {
                fields.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "linear", "factor": factor}),
                );
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                fields.insert(
                    "rope_scaling".into(),
                    json!({
                        "rope_type": "llama3",
                        "factor": factor,
                        "low_freq_factor": low_freq_factor,
                        "high_freq_factor": high_freq_factor,
                        "original_max_position_embeddings": original_max_position_embeddings,
                    }),
                );
            }
        }
        match self.family {
            LlamaFamily::Llama => {
                if self.qkv_bias != self.output_bias {
                    return Err(unsupported("different query/key/value and output biases"));
                }
                if self.sliding_window.is_some() {
                    return Err(unsupported("a sliding window"));
                }
                fields.insert("attention_bias".into(), json!(self.qkv_bias));
                fields.insert("mlp_bias".into(), json!(self.mlp_bias));
            }
            LlamaFamily::Mistral => {
                if self.qkv_bias || self.output_bias || self.mlp_bias {
                    return Err(unsupported("biases"));
                }
                fields.insert("sliding_window".into(), json!(self.sliding_window));
            }
            LlamaFamily::Qwen2 => {
                if !self.qkv_bias || self.output_bias || self.mlp_bias {
                    return Err(unsupported(
                        "biases other than on the query, key and value projections",
                    ));
                }
                if self.sliding_window.is_some() {
                    return Err(unsupported("a sliding window"));
                }
                fields.insert("use_sliding_window".into(), json!(false));
            }
        }
        Ok(config)
    }
}

/// `rope_theta` and the scaling, from `rope_parameters` (transformers 5.x) or from the
/// top-level `rope_theta` and `rope_scaling` (4.x).
fn rope(hf: &HfConfig) -> Result<(f64, Option<RopeScaling>), ModelError> {
    let (theta, scaling) = match hf.object("rope_parameters")? {
        Some(parameters) => (parameters.f64_or("rope_theta", 10000.0)?, Some(parameters)),
        None => (
            hf.f64_or("rope_theta", 10000.0)?,
            hf.object("rope_scaling")?,
        ),
    };
    if !(theta > 0.0 && theta.is_finite()) {
        return Err(hf.error("rope_theta", format!("must be positive, got {theta}")));
    }
    let Some(scaling) = scaling else {
        return Ok((theta, None));
    };
    // 4.x files name the kind `type` in older configs, `rope_type` in newer ones.
    let kind = if scaling.has("rope_type") {
        scaling.str_or("rope_type", "default")?
    } else {
        scaling.str_or("type", "default")?
    };
    let positive = |field: &str| -> Result<f64, ModelError> {
        let value = scaling.f64_or(field, f64::NAN)?;
        if value > 0.0 && value.is_finite() {
            Ok(value)
        } else {
            Err(scaling.error(field, "missing, or not a positive number"))
        }
    };
    let scaling = match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: positive("factor")?,
        }),
        "llama3" => {
            let (low, high) = (positive("low_freq_factor")?, positive("high_freq_factor")?);
            if high <= low {
                return Err(scaling.error(
                    "high_freq_factor",
                    format!("must exceed low_freq_factor ({low}), got {high}"),
                ));
            }
            Some(RopeScaling::Llama3 {
                factor: positive("factor")?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: scaling
                    .usize("original_max_position_embeddings")?,
            })
        }
        other => {
            return Err(scaling.error(
                "rope_type",
                format!("\"{other}\" is not supported (lmforge reads default, linear, llama3)"),
            ));
        }
    };
    Ok((theta, scaling))
}

/// The parameters `config` describes, or `None` when the count overflows.
fn parameter_count(config: &LlamaConfig) -> Option<u128> {
    let d = config.d_model as u128;
    let d_head = config
        .d_head
        .map_or(d / config.n_heads.max(1) as u128, |h| h as u128);
    let q = (config.n_heads as u128).checked_mul(d_head)?;
    let kv = (config.n_kv_heads() as u128).checked_mul(d_head)?;
    let ff = config.d_ff as u128;
    let block = d
        .checked_mul(q.checked_mul(2)?.checked_add(kv.checked_mul(2)?)?)?
        .checked_add(d.checked_mul(ff)?.checked_mul(3)?)?;
    let heads = if config.tie_embeddings { 1 } else { 2 };
    (config.vocab_size as u128)
        .checked_mul(d)?
        .checked_mul(heads)?
        .checked_add(block.checked_mul(config.n_layers as u128)?)
}

/// The one mapping between lmforge's Llama and HuggingFace's names, for import and export.
fn visit<V: Visitor>(model: &mut Llama, v: &mut V) -> Result<(), ModelError> {
    embedding(v, "model.embed_tokens", &mut model.token_embedding)?;
    for (i, block) in model.blocks.iter_mut().enumerate() {
        let b = format!("model.layers.{i}");
        norm(
            v,
            &format!("{b}.input_layernorm"),
            &mut block.norm_self_attention,
        )?;
        let attention = &mut block.self_attention;
        linear(
            v,
            &format!("{b}.self_attn.q_proj"),
            &mut attention.query,
            true,
        )?;
        linear(
            v,
            &format!("{b}.self_attn.k_proj"),
            &mut attention.key,
            true,
        )?;
        linear(
            v,
            &format!("{b}.self_attn.v_proj"),
            &mut attention.value,
            true,
        )?;
        linear(
            v,
            &format!("{b}.self_attn.o_proj"),
            &mut attention.output,
            true,
        )?;
        norm(
            v,
            &format!("{b}.post_attention_layernorm"),
            &mut block.norm_feed_forward,
        )?;
        let mlp = &mut block.feed_forward;
        let gate = mlp.gate.as_mut().expect("SwiGLU has a gate projection");
        linear(v, &format!("{b}.mlp.gate_proj"), gate, true)?;
        linear(v, &format!("{b}.mlp.up_proj"), &mut mlp.up, true)?;
        linear(v, &format!("{b}.mlp.down_proj"), &mut mlp.down, true)?;
    }
    norm(v, "model.norm", &mut model.norm)?;
    if let Some(head) = model.lm_head.as_mut() {
        linear(v, "lm_head", head, true)?;
    }
    Ok(())
}

impl Llama {
    /// [`Pretrained::from_pretrained`] with the parameters kept in `dtype`
    /// ([`ParamDtype::File`]: the file's own; see [`ParamDtype`] for what each device does).
    /// Half-precision tensors are read as they are and never held in `f32`.
    ///
    /// # Errors
    /// As [`Pretrained::from_pretrained`], and [`ModelError::DtypeNotSupported`] when
    /// `device` cannot hold the dtype (checked before the weights are read).
    ///
    /// ```no_run
    /// use lmforge_models::llama::Llama;
    /// use lmforge_models::pretrained::ParamDtype;
    ///
    /// let device = burn::tensor::Device::default();
    /// let model = Llama::from_pretrained_as("path/to/SmolLM2-135M", &device, ParamDtype::File)?;
    /// println!("parameters in {:?}", model.param_dtype());
    /// # Ok::<(), lmforge_models::ModelError>(())
    /// ```
    pub fn from_pretrained_as(
        dir: impl AsRef<Path>,
        device: &Device,
        dtype: ParamDtype,
    ) -> Result<Self, ModelError> {
        let dir = dir.as_ref();
        let config = LlamaConfig::from_hf(&pretrained::read_config(dir)?)?;
        let (mut weights, dtype) = pretrained::read_weights_as(dir, device, dtype)?;
        load(config, &mut weights, device, dtype)
    }
}

/// Builds the model of `config` and sets its parameters (as `dtype`) from `weights`.
fn load(
    config: LlamaConfig,
    weights: &mut Weights,
    device: &Device,
    dtype: DType,
) -> Result<Llama, ModelError> {
    pretrained::check_config_size("LlamaConfig", parameter_count(&config), weights)?;
    let mut model = config.init(device)?;
    for i in 0..config.n_layers {
        // The rotary frequencies of older checkpoints: lmforge computes its own.
        weights.ignore(&format!("model.layers.{i}.self_attn.rotary_emb.inv_freq"));
    }
    if config.tie_embeddings {
        // Some files store the tied head anyway; it is the token embedding.
        weights.ignore("lm_head.weight");
    }
    visit(&mut model, &mut Loader::with_dtype(weights, dtype))?;
    weights.finish()?;
    Ok(model)
}

impl Pretrained for Llama {
    /// Loads a `LlamaForCausalLM`, `MistralForCausalLM` or `Qwen2ForCausalLM` folder (one
    /// `model.safetensors` or shards with an index), parameters in `f32`
    /// ([`Llama::from_pretrained_as`] keeps half precision).
    fn from_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<Self, ModelError> {
        Llama::from_pretrained_as(dir, device, ParamDtype::F32)
    }

    /// Writes a folder of the model's family (`config.json`, one `model.safetensors`).
    fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<(), ModelError> {
        let config = self.config();
        let hf_config = config.to_hf_config()?;
        pretrained::check_unpruned(
            "LlamaConfig",
            self.blocks
                .iter()
                .map(|b| (b.self_attention.n_heads(), b.feed_forward.d_ff())),
            config.n_heads,
            config.d_ff,
        )?;
        let mut exporter = Exporter::default();
        let mut model = self.clone();
        visit(&mut model, &mut exporter)?;
        pretrained::write(dir.as_ref(), hf_config, exporter)
    }
}
