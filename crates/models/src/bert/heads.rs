//! BERT's task heads and the task models (encoder + head) HuggingFace names `BertFor*`.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use lmforge_layers::transformer::{FeedForwardActivation, Norm};
use lmforge_layers::{Embedding, Linear};

use super::model::{Bert, BertConfig, BertInput, BertOutput};
use crate::error::{ModelError, check};
use crate::tokens::tied_logits;

/// The masked-LM head (HuggingFace `cls.predictions`): `dense -> activation -> LayerNorm`,
/// then the decoder, whose weight is the word embedding (tied) plus its own bias.
#[derive(Module, Debug)]
pub struct MaskedLmHead {
    /// The transform's dense layer `d_model -> d_model`.
    pub transform: Linear,
    /// The transform's LayerNorm.
    pub norm: Norm,
    /// Output bias `[vocab_size]`.
    pub bias: Param<Tensor<1>>,
    #[module(skip)]
    activation: FeedForwardActivation,
}

impl MaskedLmHead {
    /// A head for `config` (bias at zero).
    pub fn new(config: &BertConfig, device: &Device) -> Self {
        Self {
            transform: config.linear(config.d_model, device),
            norm: config.norm(device),
            bias: Param::from_tensor(Tensor::zeros([config.vocab_size], device)),
            activation: config.activation,
        }
    }

    /// Vocabulary logits, decoding with the (tied) word embedding.
    ///
    /// # Shapes
    /// - `hidden`: `[batch_size, seq_length, d_model]`
    /// - returns: `[batch_size, seq_length, vocab_size]`
    pub fn forward(&self, hidden: Tensor<3>, word_embeddings: &Embedding) -> Tensor<3> {
        let h = self.norm.forward(
            self.activation
                .apply(lmforge_layers::linear_rows(&self.transform, hidden)),
        );
        tied_logits(h, word_embeddings) + self.bias.val().unsqueeze::<3>()
    }

    /// Vocabulary logits at the chosen positions only: the encoder's rows are gathered
    /// before the head, so the transform, the decoder product and the bias cost a
    /// `positions.len()`-row pass instead of a `batch_size * seq_length`-row one. Each
    /// returned row equals the matching row of [`forward`](Self::forward).
    ///
    /// # Shapes
    /// - `hidden`: `[batch_size, seq_length, d_model]`
    /// - `positions`: flat indices `b * seq_length + s`, `n` of them
    /// - returns: `[n, vocab_size]`
    ///
    /// # Panics
    /// When `positions` is empty or an index is not below `batch_size * seq_length`.
    pub fn forward_at(
        &self,
        hidden: Tensor<3>,
        positions: &[usize],
        word_embeddings: &Embedding,
    ) -> Tensor<2> {
        let [batch_size, seq_length, d_model] = hidden.dims();
        let rows = batch_size * seq_length;
        assert!(
            !positions.is_empty(),
            "MaskedLmHead::forward_at: no positions"
        );
        if let Some(&p) = positions.iter().find(|&&p| p >= rows) {
            panic!(
                "MaskedLmHead::forward_at: position {p} is outside the {batch_size} x \
                 {seq_length} batch"
            );
        }
        let n = positions.len();
        let indices: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
        let indices = Tensor::<1, Int>::from_data(TensorData::new(indices, [n]), &hidden.device());
        let chosen = hidden.reshape([rows, d_model]).select(0, indices);
        let vocab_size = self.bias.dims()[0];
        self.forward(chosen.reshape([1, n, d_model]), word_embeddings)
            .reshape([n, vocab_size])
    }
}

fn dropout(config: &BertConfig) -> Dropout {
    DropoutConfig::new(config.dropout).init()
}

fn check_labels(n_labels: usize) -> Result<(), ModelError> {
    check(n_labels > 0, "BertConfig", || "n_labels must be > 0".into())
}

/// BERT with the masked-LM head (HuggingFace `BertForMaskedLM`; no pooler).
#[derive(Module, Debug)]
pub struct BertForMaskedLm {
    /// The encoder.
    pub bert: Bert,
    /// The MLM head.
    pub mlm: MaskedLmHead,
}

/// Output of [`BertForMaskedLm::forward`].
#[derive(Clone, Debug)]
pub struct MaskedLmOutput {
    /// `[batch_size, seq_length, vocab_size]`.
    pub logits: Tensor<3>,
    /// The encoder's output.
    pub encoder: BertOutput,
}

impl BertForMaskedLm {
    /// Attaches a new MLM head to an encoder.
    pub fn from_encoder(bert: Bert, device: &Device) -> Self {
        let mlm = MaskedLmHead::new(bert.config(), device);
        Self { bert, mlm }
    }

    /// # Shapes
    /// See [`BertInput`] and [`MaskedLmOutput`].
    pub fn forward(&self, input: BertInput) -> MaskedLmOutput {
        let encoder = self.bert.forward(input);
        let logits = self
            .mlm
            .forward(encoder.hidden.clone(), &self.bert.embeddings.word);
        MaskedLmOutput { logits, encoder }
    }

    /// The encoder, then the MLM head at the chosen positions only (see
    /// [`MaskedLmHead::forward_at`]): what a masked-LM loss needs, without the logits of the
    /// positions it ignores.
    ///
    /// # Shapes
    /// See [`BertInput`]; `positions` are flat indices `b * seq_length + s`, `n` of them;
    /// `logits`: `[n, vocab_size]`.
    ///
    /// # Panics
    /// As [`forward`](Self::forward), and when `positions` is empty or out of range.
    pub fn forward_at(&self, input: BertInput, positions: &[usize]) -> MaskedLmOutputAt {
        let encoder = self.bert.forward(input);
        let logits = self.mlm.forward_at(
            encoder.hidden.clone(),
            positions,
            &self.bert.embeddings.word,
        );
        MaskedLmOutputAt { logits, encoder }
    }
}

/// Output of [`BertForMaskedLm::forward_at`] and [`BertForPreTraining::forward_at`]'s MLM
/// part.
#[derive(Clone, Debug)]
pub struct MaskedLmOutputAt {
    /// `[n, vocab_size]`: one row per requested position, in the order given.
    pub logits: Tensor<2>,
    /// The encoder's output.
    pub encoder: BertOutput,
}

/// BERT with the pre-training heads, masked LM and next-sentence prediction
/// (HuggingFace `BertForPreTraining`).
#[derive(Module, Debug)]
pub struct BertForPreTraining {
    /// The encoder (with pooler).
    pub bert: Bert,
    /// The MLM head.
    pub mlm: MaskedLmHead,
    /// Next-sentence classifier over the pooled output, `d_model -> 2`
    /// (`cls.seq_relationship`; class 0 = "is next").
    pub nsp: Linear,
}

/// Output of [`BertForPreTraining::forward`].
#[derive(Clone, Debug)]
pub struct PreTrainingOutput {
    /// `[batch_size, seq_length, vocab_size]`.
    pub mlm_logits: Tensor<3>,
    /// `[batch_size, 2]`.
    pub nsp_logits: Tensor<2>,
    /// The encoder's output.
    pub encoder: BertOutput,
}

impl BertForPreTraining {
    /// Attaches new heads to an encoder (which needs a pooler).
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] when the encoder has no pooler.
    pub fn from_encoder(bert: Bert, device: &Device) -> Result<Self, ModelError> {
        check(bert.pooler.is_some(), "BertForPreTraining", || {
            "next-sentence prediction needs an encoder with a pooler".into()
        })?;
        let config = bert.config().clone();
        Ok(Self {
            mlm: MaskedLmHead::new(&config, device),
            nsp: config.linear(2, device),
            bert,
        })
    }

    /// # Shapes
    /// See [`BertInput`] and [`PreTrainingOutput`].
    pub fn forward(&self, input: BertInput) -> PreTrainingOutput {
        let encoder = self.bert.forward(input);
        let mlm_logits = self
            .mlm
            .forward(encoder.hidden.clone(), &self.bert.embeddings.word);
        let pooled = encoder.pooled.clone().expect("checked at construction");
        PreTrainingOutput {
            mlm_logits,
            nsp_logits: self.nsp.forward(pooled),
            encoder,
        }
    }

    /// As [`forward`](Self::forward), with the MLM logits at the chosen positions only (see
    /// [`MaskedLmHead::forward_at`]). Returns the MLM output and the NSP logits
    /// `[batch_size, 2]`.
    ///
    /// # Panics
    /// As [`forward`](Self::forward), and when `positions` is empty or out of range.
    pub fn forward_at(
        &self,
        input: BertInput,
        positions: &[usize],
    ) -> (MaskedLmOutputAt, Tensor<2>) {
        let encoder = self.bert.forward(input);
        let logits = self.mlm.forward_at(
            encoder.hidden.clone(),
            positions,
            &self.bert.embeddings.word,
        );
        let pooled = encoder.pooled.clone().expect("checked at construction");
        let nsp_logits = self.nsp.forward(pooled);
        (MaskedLmOutputAt { logits, encoder }, nsp_logits)
    }
}

/// BERT with the next-sentence-prediction head alone
/// (HuggingFace `BertForNextSentencePrediction`).
#[derive(Module, Debug)]
pub struct BertForNextSentencePrediction {
    /// The encoder (with pooler).
    pub bert: Bert,
    /// Next-sentence classifier over the pooled output, `d_model -> 2`
    /// (`cls.seq_relationship`; class 0 = "is next").
    pub nsp: Linear,
}

impl BertForNextSentencePrediction {
    /// Attaches a new head to an encoder (which needs a pooler).
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] when the encoder has no pooler.
    pub fn from_encoder(bert: Bert, device: &Device) -> Result<Self, ModelError> {
        check(
            bert.pooler.is_some(),
            "BertForNextSentencePrediction",
            || "next-sentence prediction needs an encoder with a pooler".into(),
        )?;
        let nsp = bert.config().linear(2, device);
        Ok(Self { bert, nsp })
    }

    /// # Shapes
    /// See [`BertInput`]; `logits`: `[batch_size, 2]`.
    pub fn forward(&self, input: BertInput) -> ClassificationOutput<2> {
        let encoder = self.bert.forward(input);
        let pooled = encoder.pooled.clone().expect("checked at construction");
        ClassificationOutput {
            logits: self.nsp.forward(pooled),
            encoder,
        }
    }
}

/// BERT with a classifier over the pooled output
/// (HuggingFace `BertForSequenceClassification`).
#[derive(Module, Debug)]
pub struct BertForSequenceClassification {
    /// The encoder (with pooler).
    pub bert: Bert,
    /// `d_model -> n_labels`.
    pub classifier: Linear,
    dropout: Dropout,
}

/// Logits of a sequence- or token-level classifier.
#[derive(Clone, Debug)]
pub struct ClassificationOutput<const D: usize> {
    /// `[batch_size, n_labels]` (sequences) or `[batch_size, seq_length, n_labels]` (tokens).
    pub logits: Tensor<D>,
    /// The encoder's output.
    pub encoder: BertOutput,
}

impl BertForSequenceClassification {
    /// Attaches a new classifier to an encoder (which needs a pooler).
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] when `n_labels` is 0 or the encoder has no pooler.
    pub fn from_encoder(bert: Bert, n_labels: usize, device: &Device) -> Result<Self, ModelError> {
        check_labels(n_labels)?;
        check(
            bert.pooler.is_some(),
            "BertForSequenceClassification",
            || "sequence classification needs an encoder with a pooler".into(),
        )?;
        let config = bert.config().clone();
        Ok(Self {
            classifier: config.linear(n_labels, device),
            dropout: dropout(&config),
            bert,
        })
    }

    /// Number of classes.
    pub fn n_labels(&self) -> usize {
        self.classifier.weight.dims()[1]
    }

    /// # Shapes
    /// See [`BertInput`]; `logits`: `[batch_size, n_labels]`.
    pub fn forward(&self, input: BertInput) -> ClassificationOutput<2> {
        let encoder = self.bert.forward(input);
        let pooled = encoder.pooled.clone().expect("checked at construction");
        ClassificationOutput {
            logits: self.classifier.forward(self.dropout.forward(pooled)),
            encoder,
        }
    }
}

/// BERT with a classifier at every position (HuggingFace `BertForTokenClassification`; no
/// pooler), for tagging tasks such as named-entity recognition.
#[derive(Module, Debug)]
pub struct BertForTokenClassification {
    /// The encoder.
    pub bert: Bert,
    /// `d_model -> n_labels`.
    pub classifier: Linear,
    dropout: Dropout,
}

impl BertForTokenClassification {
    /// Attaches a new classifier to an encoder.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] when `n_labels` is 0.
    pub fn from_encoder(bert: Bert, n_labels: usize, device: &Device) -> Result<Self, ModelError> {
        check_labels(n_labels)?;
        let config = bert.config().clone();
        Ok(Self {
            classifier: config.linear(n_labels, device),
            dropout: dropout(&config),
            bert,
        })
    }

    /// Number of tag classes.
    pub fn n_labels(&self) -> usize {
        self.classifier.weight.dims()[1]
    }

    /// # Shapes
    /// See [`BertInput`]; `logits`: `[batch_size, seq_length, n_labels]`.
    pub fn forward(&self, input: BertInput) -> ClassificationOutput<3> {
        let encoder = self.bert.forward(input);
        let hidden = self.dropout.forward(encoder.hidden.clone());
        ClassificationOutput {
            logits: self.classifier.forward(hidden),
            encoder,
        }
    }
}

/// BERT with span start/end logits for extractive question answering
/// (HuggingFace `BertForQuestionAnswering`; no pooler).
#[derive(Module, Debug)]
pub struct BertForQuestionAnswering {
    /// The encoder.
    pub bert: Bert,
    /// `d_model -> 2` (start, end) (`qa_outputs`).
    pub qa: Linear,
}

/// Output of [`BertForQuestionAnswering::forward`].
#[derive(Clone, Debug)]
pub struct QuestionAnsweringOutput {
    /// Span-start logits `[batch_size, seq_length]`.
    pub start_logits: Tensor<2>,
    /// Span-end logits `[batch_size, seq_length]`.
    pub end_logits: Tensor<2>,
    /// The encoder's output.
    pub encoder: BertOutput,
}

impl BertForQuestionAnswering {
    /// Attaches a new span head to an encoder.
    pub fn from_encoder(bert: Bert, device: &Device) -> Self {
        let qa = bert.config().linear(2, device);
        Self { bert, qa }
    }

    /// # Shapes
    /// See [`BertInput`] and [`QuestionAnsweringOutput`].
    pub fn forward(&self, input: BertInput) -> QuestionAnsweringOutput {
        let encoder = self.bert.forward(input);
        let [batch_size, seq_length, _] = encoder.hidden.dims();
        let logits = self.qa.forward(encoder.hidden.clone());
        let mut parts = logits
            .chunk(2, 2)
            .into_iter()
            .map(|t| t.reshape([batch_size, seq_length]));
        QuestionAnsweringOutput {
            start_logits: parts.next().expect("two chunks"),
            end_logits: parts.next().expect("two chunks"),
            encoder,
        }
    }
}

impl BertConfig {
    /// Builds a [`BertForMaskedLm`].
    ///
    /// # Errors
    /// As [`BertConfig::init`].
    pub fn init_masked_lm(&self, device: &Device) -> Result<BertForMaskedLm, ModelError> {
        Ok(BertForMaskedLm::from_encoder(
            self.init_encoder(false, device)?,
            device,
        ))
    }

    /// Builds a [`BertForPreTraining`].
    ///
    /// # Errors
    /// As [`BertConfig::init`].
    pub fn init_pretraining(&self, device: &Device) -> Result<BertForPreTraining, ModelError> {
        BertForPreTraining::from_encoder(self.init(device)?, device)
    }

    /// Builds a [`BertForNextSentencePrediction`].
    ///
    /// # Errors
    /// As [`BertConfig::init`].
    pub fn init_next_sentence_prediction(
        &self,
        device: &Device,
    ) -> Result<BertForNextSentencePrediction, ModelError> {
        BertForNextSentencePrediction::from_encoder(self.init(device)?, device)
    }

    /// Builds a [`BertForSequenceClassification`] with `n_labels` classes.
    ///
    /// # Errors
    /// As [`BertConfig::init`], or `n_labels` = 0.
    pub fn init_sequence_classification(
        &self,
        n_labels: usize,
        device: &Device,
    ) -> Result<BertForSequenceClassification, ModelError> {
        BertForSequenceClassification::from_encoder(self.init(device)?, n_labels, device)
    }

    /// Builds a [`BertForTokenClassification`] with `n_labels` tags.
    ///
    /// # Errors
    /// As [`BertConfig::init`], or `n_labels` = 0.
    pub fn init_token_classification(
        &self,
        n_labels: usize,
        device: &Device,
    ) -> Result<BertForTokenClassification, ModelError> {
        BertForTokenClassification::from_encoder(
            self.init_encoder(false, device)?,
            n_labels,
            device,
        )
    }

    /// Builds a [`BertForQuestionAnswering`].
    ///
    /// # Errors
    /// As [`BertConfig::init`].
    pub fn init_question_answering(
        &self,
        device: &Device,
    ) -> Result<BertForQuestionAnswering, ModelError> {
        Ok(BertForQuestionAnswering::from_encoder(
            self.init_encoder(false, device)?,
            device,
        ))
    }
}

lmforge_layers::pack_layers!(MaskedLmHead { transform });
lmforge_layers::pack_layers!(BertForMaskedLm { bert, mlm });
lmforge_layers::pack_layers!(BertForPreTraining { bert, mlm, nsp });
lmforge_layers::pack_layers!(BertForNextSentencePrediction { bert, nsp });
lmforge_layers::pack_layers!(BertForSequenceClassification { bert, classifier });
lmforge_layers::pack_layers!(BertForTokenClassification { bert, classifier });
lmforge_layers::pack_layers!(BertForQuestionAnswering { bert, qa });
