//! BERT (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for
//! Language Understanding"): the encoder, its pre-training heads (masked LM, next-sentence
//! prediction) and fine-tuning heads (sequence classification, token classification,
//! question answering), with HuggingFace import/export.
//!
//! Every task model is an encoder plus a head, built from a [`BertConfig`]
//! (`init_masked_lm`, `init_sequence_classification`, ...) or attached to a loaded encoder
//! with `from_encoder`, the usual way to fine-tune a pre-trained checkpoint:
//!
//! ```no_run
//! use lmforge_models::bert::{Bert, BertForSequenceClassification};
//! use lmforge_models::Pretrained;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let device = lmforge_device::device_from_env()?;
//! let encoder = Bert::from_pretrained("path/to/bert-folder", &device)?;
//! let classifier = BertForSequenceClassification::from_encoder(encoder, 2, &device)?;
//! # Ok(())
//! # }
//! ```

mod heads;
mod model;
mod pretrained;

pub use heads::{
    BertForMaskedLm, BertForNextSentencePrediction, BertForPreTraining, BertForQuestionAnswering,
    BertForSequenceClassification, BertForTokenClassification, ClassificationOutput, MaskedLmHead,
    MaskedLmOutput, MaskedLmOutputAt, PreTrainingOutput, QuestionAnsweringOutput,
};
pub use model::{Bert, BertConfig, BertEmbeddings, BertInput, BertOutput};
