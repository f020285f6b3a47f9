//! BERT checkpoints in HuggingFace's layout (`BertModel` and the `BertFor*` task classes).

use std::path::Path;

use burn::tensor::Device;
use lmforge_layers::transformer::FeedForwardActivation;
use serde_json::{Value, json};

use super::heads::{
    BertForMaskedLm, BertForNextSentencePrediction, BertForPreTraining, BertForQuestionAnswering,
    BertForSequenceClassification, BertForTokenClassification, MaskedLmHead,
};
use super::model::{Bert, BertConfig};
use crate::error::ModelError;
use crate::pretrained::weights::{embedding, linear, norm};
use crate::pretrained::{self, Exporter, HfConfig, Loader, Pretrained, Visitor, Weights};

impl BertConfig {
    /// Reads a HuggingFace BERT `config.json`.
    ///
    /// # Errors
    /// [`ModelError::ConfigField`] for a missing or invalid field, or a feature lmforge's BERT
    /// does not have (relative position embeddings, decoder mode).
    pub fn from_hf_config(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        Self::from_hf(&HfConfig::read(path.as_ref())?)
    }

    fn from_hf(hf: &HfConfig) -> Result<Self, ModelError> {
        let model_type = hf.str_or("model_type", "bert")?;
        if model_type != "bert" {
            return Err(hf.error(
                "model_type",
                format!("expected \"bert\", got \"{model_type}\""),
            ));
        }
        let positions = hf.str_or("position_embedding_type", "absolute")?;
        if positions != "absolute" {
            return Err(hf.error(
                "position_embedding_type",
                format!("only \"absolute\" is supported, got \"{positions}\""),
            ));
        }
        for field in ["is_decoder", "add_cross_attention"] {
            if hf.bool_or(field, false)? {
                return Err(hf.error(field, "not supported by lmforge's BERT"));
            }
        }
        let activation = match hf.str_or("hidden_act", "gelu")? {
            "gelu" => FeedForwardActivation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => FeedForwardActivation::GeluTanh,
            "relu" => FeedForwardActivation::Relu,
            other => return Err(hf.error("hidden_act", format!("unsupported: \"{other}\""))),
        };
        let d_model = hf.usize("hidden_size")?;
        let n_heads = hf.usize("num_attention_heads")?;
        if !d_model.is_multiple_of(n_heads) {
            return Err(hf.error(
                "num_attention_heads",
                format!(
                    "hidden_size ({d_model}) must be divisible by num_attention_heads ({n_heads})"
                ),
            ));
        }
        Ok(Self::new(hf.usize("vocab_size")?)
            .with_d_model(d_model)
            .with_n_layers(hf.usize("num_hidden_layers")?)
            .with_n_heads(n_heads)
            .with_d_ff(hf.usize("intermediate_size")?)
            .with_max_seq_length(hf.usize_opt("max_position_embeddings")?.unwrap_or(512))
            .with_type_vocab_size(hf.usize_opt("type_vocab_size")?.unwrap_or(2))
            .with_activation(activation)
            .with_dropout(hf.f64_or("hidden_dropout_prob", 0.1)?)
            .with_attention_dropout(hf.f64_or("attention_probs_dropout_prob", 0.1)?)
            .with_norm_epsilon(hf.f64_or("layer_norm_eps", 1e-12)?)
            .with_init_std(hf.f64_or("initializer_range", 0.02)?))
    }

    /// The HuggingFace `config.json` of this configuration for the class `architecture`
    /// (e.g. `"BertForMaskedLM"`), with `num_labels` for the classifiers.
    pub fn to_hf_config(&self, architecture: &str, num_labels: Option<usize>) -> Value {
        let activation = match self.activation {
            FeedForwardActivation::GeluTanh => "gelu_new",
            FeedForwardActivation::Relu => "relu",
            _ => "gelu",
        };
        let mut config = json!({
            "architectures": [architecture],
            "model_type": "bert",
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "intermediate_size": self.d_ff,
            "max_position_embeddings": self.max_seq_length,
            "type_vocab_size": self.type_vocab_size,
            "hidden_act": activation,
            "hidden_dropout_prob": self.dropout,
            "attention_probs_dropout_prob": self.attention_dropout,
            "layer_norm_eps": self.norm_epsilon,
            "initializer_range": self.init_std,
            "position_embedding_type": "absolute",
            "tie_word_embeddings": true,
        });
        if let Some(n) = num_labels {
            let labels: serde_json::Map<String, Value> = (0..n)
                .map(|i| (i.to_string(), Value::String(format!("LABEL_{i}"))))
                .collect();
            config["num_labels"] = json!(n);
            config["id2label"] = Value::Object(labels);
        }
        config
    }
}

/// The one mapping between lmforge's BERT encoder and HuggingFace's names.
fn visit_bert<V: Visitor>(bert: &mut Bert, v: &mut V, p: &str) -> Result<(), ModelError> {
    let e = &mut bert.embeddings;
    embedding(v, &format!("{p}embeddings.word_embeddings"), &mut e.word)?;
    embedding(
        v,
        &format!("{p}embeddings.position_embeddings"),
        &mut e.position,
    )?;
    embedding(
        v,
        &format!("{p}embeddings.token_type_embeddings"),
        &mut e.token_type,
    )?;
    norm(v, &format!("{p}embeddings.LayerNorm"), &mut e.norm)?;
    for (i, block) in bert.blocks.iter_mut().enumerate() {
        let l = format!("{p}encoder.layer.{i}");
        let a = &mut block.attention;
        linear(v, &format!("{l}.attention.self.query"), &mut a.query, true)?;
        linear(v, &format!("{l}.attention.self.key"), &mut a.key, true)?;
        linear(v, &format!("{l}.attention.self.value"), &mut a.value, true)?;
        linear(
            v,
            &format!("{l}.attention.output.dense"),
            &mut a.output,
            true,
        )?;
        norm(
            v,
            &format!("{l}.attention.output.LayerNorm"),
            &mut block.norm_attention,
        )?;
        linear(
            v,
            &format!("{l}.intermediate.dense"),
            &mut block.feed_forward.up,
            true,
        )?;
        linear(
            v,
            &format!("{l}.output.dense"),
            &mut block.feed_forward.down,
            true,
        )?;
        norm(
            v,
            &format!("{l}.output.LayerNorm"),
            &mut block.norm_feed_forward,
        )?;
    }
    if let Some(pooler) = bert.pooler.as_mut() {
        linear(v, &format!("{p}pooler.dense"), pooler, true)?;
    }
    Ok(())
}

fn visit_mlm<V: Visitor>(head: &mut MaskedLmHead, v: &mut V) -> Result<(), ModelError> {
    linear(
        v,
        "cls.predictions.transform.dense",
        &mut head.transform,
        true,
    )?;
    norm(v, "cls.predictions.transform.LayerNorm", &mut head.norm)?;
    v.param("cls.predictions.bias", &mut head.bias, false)
}

/// `"bert."` when the file's names carry it (task classes), else `""` (`BertModel`).
fn prefix(weights: &Weights) -> &'static str {
    if weights.has_prefix("bert.") {
        "bert."
    } else {
        ""
    }
}

/// Buffers HuggingFace may store that lmforge recomputes.
fn ignore_buffers(weights: &mut Weights, p: &str) {
    weights.ignore(&format!("{p}embeddings.position_ids"));
    weights.ignore(&format!("{p}embeddings.token_type_ids"));
}

/// The MLM decoder is tied to the word embeddings; its bias is `cls.predictions.bias`,
/// which some files store (also or only) as `cls.predictions.decoder.bias`.
fn prepare_mlm(weights: &mut Weights) {
    weights.ignore("cls.predictions.decoder.weight");
    if weights.contains("cls.predictions.bias") {
        weights.ignore("cls.predictions.decoder.bias");
    } else {
        weights.rename("cls.predictions.decoder.bias", "cls.predictions.bias");
    }
}

/// The parameters `config` describes, or `None` when the count overflows.
fn parameter_count(config: &BertConfig) -> Option<u128> {
    let rows =
        config.vocab_size as u128 + config.max_seq_length as u128 + config.type_vocab_size as u128;
    pretrained::transformer_parameters(
        rows,
        config.d_model as u128,
        config.d_ff as u128,
        config.n_layers as u128,
    )
}

/// Reads a folder, builds the encoder (with a pooler when `pooler`, else only if the file
/// has one) and loads it; `finish` loads the head and checks that nothing is left.
fn load<M>(
    dir: &Path,
    device: &Device,
    pooler: Option<bool>,
    finish: impl FnOnce(Bert, &HfConfig, &mut Weights) -> Result<M, ModelError>,
) -> Result<M, ModelError> {
    let hf = pretrained::read_config(dir)?;
    let config = BertConfig::from_hf(&hf)?;
    let mut weights = pretrained::read_weights(dir)?;
    let labels = hf.num_labels().unwrap_or(0) as u128 * config.d_model as u128;
    let parameters = parameter_count(&config).and_then(|n| n.checked_add(labels));
    pretrained::check_config_size("BertConfig", parameters, &weights)?;
    let p = prefix(&weights);
    let pooler = pooler.unwrap_or_else(|| weights.contains(&format!("{p}pooler.dense.weight")));
    let mut bert = config.init_encoder(pooler, device)?;
    ignore_buffers(&mut weights, p);
    visit_bert(&mut bert, &mut Loader::new(&mut weights), p)?;
    finish(bert, &hf, &mut weights)
}

/// Refuses an encoder whose blocks lost heads or units: its HuggingFace config would lie.
fn check_unpruned(bert: &Bert) -> Result<(), ModelError> {
    let config = bert.config();
    pretrained::check_unpruned(
        "BertConfig",
        bert.blocks
            .iter()
            .map(|b| (b.attention.n_heads(), b.feed_forward.d_ff())),
        config.n_heads,
        config.d_ff,
    )
}

fn save(
    dir: &Path,
    config: Value,
    visit: impl FnOnce(&mut Exporter) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let mut exporter = Exporter::default();
    visit(&mut exporter)?;
    pretrained::write(dir, config, exporter)
}

impl Pretrained for Bert {
    /// Loads the encoder of any BERT folder. From a `BertModel` file every tensor must be
    /// used; from a `BertFor*` file (names under `bert.`) the task heads are left out, so a
    /// fine-tuned or pre-training checkpoint yields its encoder. The pooler is loaded when the
    /// file has one.
    fn from_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<Self, ModelError> {
        load(dir.as_ref(), device, None, |bert, _, weights| {
            if prefix(weights) == "bert." {
                let heads: Vec<String> = weights
                    .names()
                    .filter(|n| !n.starts_with("bert."))
                    .collect();
                for name in heads {
                    weights.ignore(&name);
                }
            }
            weights.finish()?;
            Ok(bert)
        })
    }

    /// Writes a `BertModel` folder (names without the `bert.` prefix).
    fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<(), ModelError> {
        check_unpruned(self)?;
        let config = self.config().to_hf_config("BertModel", None);
        save(dir.as_ref(), config, |e| {
            visit_bert(&mut self.clone(), e, "")
        })
    }
}

/// A BERT task class: the encoder (under `bert.`) plus a head, with HuggingFace's class
/// name. `visit_head` is the one mapping of the head's names, for import and export.
trait BertTask: Sized + Clone {
    /// HuggingFace's class name (`architectures` in `config.json`).
    const ARCHITECTURE: &'static str;
    /// Whether the encoder has a pooler.
    const POOLER: bool;

    /// Attaches a fresh head to a loaded encoder.
    fn build(bert: Bert, hf: &HfConfig, device: &Device) -> Result<Self, ModelError>;

    /// The encoder.
    fn encoder(&mut self) -> &mut Bert;

    /// The classifier width written to `config.json`, for classification heads.
    fn n_labels(&self) -> Option<usize> {
        None
    }

    /// Renames or drops tensors before loading (the tied MLM decoder).
    fn prepare(_weights: &mut Weights) {}

    /// Visits the head's parameters under their HuggingFace names.
    fn visit_head<V: Visitor>(&mut self, v: &mut V) -> Result<(), ModelError>;
}

fn load_task<M: BertTask>(dir: &Path, device: &Device) -> Result<M, ModelError> {
    load(dir, device, Some(M::POOLER), |bert, hf, weights| {
        M::prepare(weights);
        let mut model = M::build(bert, hf, device)?;
        model.visit_head(&mut Loader::new(weights))?;
        weights.finish()?;
        Ok(model)
    })
}

fn save_task<M: BertTask>(model: &M, dir: &Path) -> Result<(), ModelError> {
    let mut model = model.clone();
    check_unpruned(model.encoder())?;
    let n_labels = model.n_labels();
    let config = model
        .encoder()
        .config()
        .to_hf_config(M::ARCHITECTURE, n_labels);
    save(dir, config, |e| {
        visit_bert(model.encoder(), e, "bert.")?;
        model.visit_head(e)
    })
}

impl BertTask for BertForMaskedLm {
    const ARCHITECTURE: &'static str = "BertForMaskedLM";
    const POOLER: bool = false;

    fn build(bert: Bert, _: &HfConfig, device: &Device) -> Result<Self, ModelError> {
        Ok(Self::from_encoder(bert, device))
    }

    fn encoder(&mut self) -> &mut Bert {
        &mut self.bert
    }

    fn prepare(weights: &mut Weights) {
        prepare_mlm(weights);
    }

    fn visit_head<V: Visitor>(&mut self, v: &mut V) -> Result<(), ModelError> {
        visit_mlm(&mut self.mlm, v)
    }
}

impl BertTask for BertForPreTraining {
    const ARCHITECTURE: &'static str = "BertForPreTraining";
    const POOLER: bool = true;

    fn build(bert: Bert, _: &HfConfig, device: &Device) -> Result<Self, ModelError> {
        Self::from_encoder(bert, device)
    }

    fn encoder(&mut self) -> &mut Bert {
        &mut self.bert
    }

    fn prepare(weights: &mut Weights) {
        prepare_mlm(weights);
    }

    fn visit_head<V: Visitor>(&mut self, v: &mut V) -> Result<(), ModelError> {
        visit_mlm(&mut self.mlm, v)?;
        linear(v, "cls.seq_relationship", &mut self.nsp, true)
    }
}

impl BertTask for BertForNextSentencePrediction {
    const ARCHITECTURE: &'static str = "BertForNextSentencePrediction";
    const POOLER: bool = true;

    fn build(bert: Bert, _: &HfConfig, device: &Device) -> Result<Self, ModelError> {
        Self::from_encoder(bert, device)
    }

    fn encoder(&mut self) -> &mut Bert {
        &mut self.bert
    }

    fn visit_head<V: Visitor>(&mut self, v: &mut V) -> Result<(), ModelError> {
        linear(v, "cls.seq_relationship", &mut self.nsp, true)
    }
}

impl BertTask for BertForSequenceClassification {
    const ARCHITECTURE: &'static str = "BertForSequenceClassification";
    const POOLER: bool = true;

    fn build(bert: Bert, hf: &HfConfig, device: &Device) -> Result<Self, ModelError> {
        Self::from_encoder(bert, hf.num_labels()?, device)
    }

    fn encoder(&mut self) -> &mut Bert {
        &mut self.bert
    }

    fn n_labels(&self) -> Option<usize> {
        Some(BertForSequenceClassification::n_labels(self))
    }

    fn visit_head<V: Visitor>(&mut self, v: &mut V) -> Result<(), ModelError> {
        linear(v, "classifier", &mut self.classifier, true)
    }
}

impl BertTask for BertForTokenClassification {
    const ARCHITECTURE: &'static str = "BertForTokenClassification";
    const POOLER: bool = false;

    fn build(bert: Bert, hf: &HfConfig, device: &Device) -> Result<Self, ModelError> {
        Self::from_encoder(bert, hf.num_labels()?, device)
    }

    fn encoder(&mut self) -> &mut Bert {
        &mut self.bert
    }

    fn n_labels(&self) -> Option<usize> {
        Some(BertForTokenClassification::n_labels(self))
    }

    fn visit_head<V: Visitor>(&mut self, v: &mut V) -> Result<(), ModelError> {
        linear(v, "classifier", &mut self.classifier, true)
    }
}

impl BertTask for BertForQuestionAnswering {
    const ARCHITECTURE: &'static str = "BertForQuestionAnswering";
    const POOLER: bool = false;

    fn build(bert: Bert, _: &HfConfig, device: &Device) -> Result<Self, ModelError> {
        Ok(Self::from_encoder(bert, device))
    }

    fn encoder(&mut self) -> &mut Bert {
        &mut self.bert
    }

    fn visit_head<V: Visitor>(&mut self, v: &mut V) -> Result<(), ModelError> {
        linear(v, "qa_outputs", &mut self.qa, true)
    }
}

/// `Pretrained` for the task classes, through [`BertTask`]; the doc names the class read.
macro_rules! pretrained_task {
    ($($model:ty => $doc:literal),* $(,)?) => {$(
        impl Pretrained for $model {
            #[doc = $doc]
            fn from_pretrained(dir: impl AsRef<Path>, device: &Device) -> Result<Self, ModelError> {
                load_task(dir.as_ref(), device)
            }

            /// Writes a folder of this HuggingFace class (names under `bert.`).
            fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<(), ModelError> {
                save_task(self, dir.as_ref())
            }
        }
    )*};
}

pretrained_task! {
    BertForMaskedLm => "Loads a `BertForMaskedLM` folder (the decoder is the tied word embedding).",
    BertForPreTraining => "Loads a `BertForPreTraining` folder.",
    BertForNextSentencePrediction => "Loads a `BertForNextSentencePrediction` folder.",
    BertForSequenceClassification => "Loads a `BertForSequenceClassification` folder (classes: `num_labels` or the size of `id2label`).",
    BertForTokenClassification => "Loads a `BertForTokenClassification` folder.",
    BertForQuestionAnswering => "Loads a `BertForQuestionAnswering` folder.",
}
