//! lmforge's models beyond the reference numbers: backend parity forward and backward with a
//! gradient for every parameter, cached decoding, carried LSTM state, checkpoint round trips
//! (HuggingFace export -> import, burn format save -> load), typed import errors, and clear
//! panics for bad inputs.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};
use lmforge::models::ModelError;
use lmforge::models::Pretrained;
use lmforge::models::bert::{
    BertConfig, BertForMaskedLm, BertForNextSentencePrediction, BertForPreTraining,
    BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification, BertInput,
};
use lmforge::models::gpt::{Gpt, GptCache, GptConfig};
use lmforge::models::lstm_lm::LstmLmConfig;
use lmforge::models::pretrained;
use lmforge::models::seq2seq::{Seq2SeqCache, Seq2SeqConfig, Seq2SeqInput};
use lmforge_device::testing::{
    Outputs, Tolerance, assert_parity, reference_device, to_test_device,
};

const VOCAB: usize = 23;

fn ids(rows: &[&[i64]], device: &Device) -> Tensor<2, Int> {
    let width = rows[0].len();
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), width]), device)
}

/// Two rows of 7 tokens covering every id of the tiny vocabulary.
fn batch(device: &Device) -> Tensor<2, Int> {
    let a: Vec<i64> = (0..7).map(|i| (i * 5 % VOCAB) as i64).collect();
    let b: Vec<i64> = (0..7).map(|i| ((i * 3 + 7) % VOCAB) as i64).collect();
    ids(&[&a, &b], device)
}

/// Row 1 has two padding positions at the end.
fn padding(device: &Device) -> Tensor<2, Bool> {
    let mut flags = vec![false; 14];
    flags[12] = true;
    flags[13] = true;
    Tensor::from_data(TensorData::new(flags, [2, 7]), device)
}

/// A random upstream gradient (fixed on the host, so every device gets the same).
fn weighted_sum<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    let dims = t.dims();
    let n: usize = dims.iter().product();
    let w: Vec<f32> = (0..n).map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0).collect();
    let w = Tensor::<D>::from_data(TensorData::new(w, dims), &t.device());
    (t * w).sum()
}

/// Every gradient recorded under `grad.` has a non-zero element, except the names listed
/// (with the reason in the caller).
fn assert_every_gradient_nonzero(outputs: &Outputs, exempt: &[&str]) {
    let mut checked = 0;
    for entry in outputs
        .entries()
        .iter()
        .filter(|e| e.name.starts_with("grad."))
    {
        if exempt.iter().any(|x| entry.name.contains(x)) {
            continue;
        }
        let max = entry.values.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert!(max > 0.0, "{} is all zero", entry.name);
        checked += 1;
    }
    assert!(checked > 0, "no gradients recorded");
}

/// Key biases add the same score to every key of a query, which softmax ignores: their
/// gradient is exactly zero in any correct implementation.
const KEY_BIAS: &str = "attention.key.bias";

#[test]
fn gpt_parity_forward_backward_and_every_parameter_learns() {
    reference_device().seed(1);
    let gpt = GptConfig::tiny(VOCAB)
        .with_n_heads(2)
        .with_d_model(16)
        .init(reference_device())
        .unwrap();
    let outputs = assert_parity(Tolerance::rel_abs(1e-4, 1e-5), |device| {
        let gpt = to_test_device(&gpt, device);
        let logits = gpt.forward(batch(device), Some(padding(device)));
        let grads = weighted_sum(logits.clone()).backward();
        Outputs::new()
            .float("logits", logits)
            .grads("grad", &gpt, &grads)
    });
    assert_every_gradient_nonzero(&outputs, &[KEY_BIAS]);
}

#[test]
fn untied_gpt_has_its_own_head() {
    let device = reference_device();
    let gpt = GptConfig::tiny(VOCAB)
        .with_tie_embeddings(false)
        .init(device)
        .unwrap();
    assert!(gpt.lm_head.is_some());
    let tied = GptConfig::tiny(VOCAB).init(device).unwrap();
    assert_eq!(gpt.num_params() - tied.num_params(), 64 * VOCAB);
}

#[test]
fn bert_pretraining_parity_forward_backward_and_every_parameter_learns() {
    reference_device().seed(2);
    let config = BertConfig::tiny(VOCAB)
        .with_d_model(16)
        .with_n_heads(2)
        .with_d_ff(32);
    let model = config.init_pretraining(reference_device()).unwrap();
    let outputs = assert_parity(Tolerance::rel_abs(1e-4, 1e-5), |device| {
        let model = to_test_device(&model, device);
        let types = ids(&[&[0, 0, 0, 1, 1, 1, 1], &[0, 0, 0, 0, 1, 1, 1]], device);
        let out = model.forward(
            BertInput::new(batch(device))
                .with_token_types(types)
                .with_mask_pad(padding(device)),
        );
        let loss = weighted_sum(out.mlm_logits.clone()) + weighted_sum(out.nsp_logits.clone());
        let grads = loss.backward();
        Outputs::new()
            .float("mlm", out.mlm_logits)
            .float("nsp", out.nsp_logits)
            .grads("grad", &model, &grads)
    });
    assert_every_gradient_nonzero(&outputs, &[KEY_BIAS]);
}

#[test]
fn bert_task_models_have_the_documented_shapes() {
    let device = reference_device();
    let config = BertConfig::tiny(VOCAB)
        .with_d_model(16)
        .with_n_heads(2)
        .with_d_ff(32);
    let input = || BertInput::new(batch(device)).with_mask_pad(padding(device));
    let mlm = config.init_masked_lm(device).unwrap();
    assert!(mlm.bert.pooler.is_none());
    assert_eq!(mlm.forward(input()).logits.dims(), [2, 7, VOCAB]);
    let seq = config.init_sequence_classification(3, device).unwrap();
    assert_eq!(seq.forward(input()).logits.dims(), [2, 3]);
    let tok = config.init_token_classification(5, device).unwrap();
    assert_eq!(tok.forward(input()).logits.dims(), [2, 7, 5]);
    let qa = config
        .init_question_answering(device)
        .unwrap()
        .forward(input());
    assert_eq!(
        (qa.start_logits.dims(), qa.end_logits.dims()),
        ([2, 7], [2, 7])
    );
    assert!(matches!(
        config.init_sequence_classification(0, device),
        Err(ModelError::InvalidConfig { .. })
    ));
}

/// The MLM head at chosen positions gives the matching rows of the full logits, and the
/// same gradients for a loss that reads only those rows (for both models with the head).
#[test]
fn bert_mlm_logits_at_positions_equal_the_full_rows() {
    let device = &reference_device().clone().autodiff();
    device.seed(3);
    let config = BertConfig::tiny(VOCAB)
        .with_d_model(16)
        .with_n_heads(2)
        .with_d_ff(32);
    let input = || BertInput::new(batch(device)).with_mask_pad(padding(device));
    // Out of order, both rows, a padded position.
    let positions = [9usize, 0, 3, 13, 6];
    let picked = Tensor::<1, Int>::from_data(
        TensorData::new(positions.iter().map(|&p| p as i64).collect(), [5]),
        device,
    );
    let mlm = config.init_masked_lm(device).unwrap();
    let full = mlm
        .forward(input())
        .logits
        .reshape([14, VOCAB])
        .select(0, picked.clone());
    let at = mlm.forward_at(input(), &positions).logits;
    assert_eq!(at.dims(), [5, VOCAB]);
    assert!(max_diff(full.clone(), at.clone()) < 1e-6);
    let (g_full, g_at) = (weighted_sum(full).backward(), weighted_sum(at).backward());
    let g_full = Outputs::new().grads("grad", &mlm, &g_full);
    let g_at = Outputs::new().grads("grad", &mlm, &g_at);
    assert!(g_full.entries().len() > 10);
    let gaps = g_at.mismatches(&g_full, Tolerance::rel_abs(1e-5, 1e-6), "at", "full");
    assert!(gaps.is_empty(), "{gaps:#?}");

    let pre = config.init_pretraining(device).unwrap();
    let out = pre.forward(input());
    let full = out.mlm_logits.reshape([14, VOCAB]).select(0, picked);
    let (at, nsp) = pre.forward_at(input(), &positions);
    assert!(max_diff(full, at.logits) < 1e-6);
    assert!(max_diff(out.nsp_logits, nsp) < 1e-6);
}

#[test]
#[should_panic(expected = "position 14 is outside the 2 x 7 batch")]
fn bert_mlm_logits_at_a_position_outside_the_batch_panic() {
    let device = reference_device();
    let mlm = BertConfig::tiny(VOCAB)
        .with_d_model(16)
        .with_n_heads(2)
        .with_d_ff(32)
        .init_masked_lm(device)
        .unwrap();
    let _ = mlm.forward_at(BertInput::new(batch(device)), &[0, 14]);
}

#[test]
fn lstm_lm_parity_and_state_carried_across_batches() {
    reference_device().seed(3);
    let lm = LstmLmConfig::new(VOCAB)
        .with_d_embedding(12)
        .with_d_hidden(12)
        .with_tie_weights(true)
        .with_dropout(0.0)
        .init(reference_device())
        .unwrap();
    let outputs = assert_parity(Tolerance::rel_abs(1e-4, 1e-5), |device| {
        let lm = to_test_device(&lm, device);
        let (logits, state) = lm.forward(batch(device), None);
        let grads = weighted_sum(logits.clone()).backward();
        Outputs::new()
            .float("logits", logits)
            .float("hidden", state.hidden)
            .grads("grad", &lm, &grads)
    });
    assert_every_gradient_nonzero(&outputs, &[]);

    // Seven tokens at once equal four then three with the state carried over.
    let device = reference_device();
    let lm = lm.valid();
    let tokens = batch(device);
    let (whole, _) = lm.forward(tokens.clone(), None);
    let (first, state) = lm.forward(tokens.clone().slice([0..2, 0..4]), None);
    let (second, _) = lm.forward(tokens.slice([0..2, 4..7]), Some(state));
    let split = Tensor::cat(vec![first, second], 1);
    let diff = (whole - split).abs().max().into_scalar::<f32>();
    assert!(diff < 1e-5, "carried state differs by {diff}");
}

#[test]
fn lstm_lm_tying_needs_equal_widths() {
    let err = LstmLmConfig::new(VOCAB)
        .with_d_embedding(8)
        .with_d_hidden(16)
        .with_tie_weights(true)
        .init(reference_device())
        .unwrap_err();
    assert!(
        err.to_string().contains("d_embedding (8) == d_hidden (16)"),
        "{err}"
    );
}

#[test]
fn seq2seq_parity_forward_backward_and_every_parameter_learns() {
    reference_device().seed(4);
    let model = Seq2SeqConfig::tiny(VOCAB)
        .with_d_model(16)
        .with_n_heads(2)
        .with_d_ff(32)
        .with_share_embeddings(false)
        .with_tie_output(false)
        .init(reference_device())
        .unwrap();
    let outputs = assert_parity(Tolerance::rel_abs(1e-4, 1e-5), |device| {
        let model = to_test_device(&model, device);
        let tgt = ids(&[&[1, 2, 3, 4], &[5, 6, 7, 8]], device);
        let tgt_pad = Tensor::from_data(
            TensorData::new(
                vec![false, false, false, false, false, false, true, true],
                [2, 4],
            ),
            device,
        );
        let logits = model
            .forward(Seq2SeqInput::new(batch(device), tgt).with_masks(padding(device), tgt_pad));
        let grads = weighted_sum(logits.clone()).backward();
        Outputs::new()
            .float("logits", logits)
            .grads("grad", &model, &grads)
    });
    assert_every_gradient_nonzero(&outputs, &[KEY_BIAS]);
}

/// Cached incremental decoding equals recomputing the whole prefix, over 20 steps.
#[test]
fn gpt_cached_decoding_equals_full_forward() {
    let device = reference_device();
    device.seed(5);
    let gpt = GptConfig::tiny(VOCAB).init(device).unwrap();
    let sequence: Vec<i64> = (0..24).map(|i| (i * 7 % VOCAB) as i64).collect();
    let full = gpt.forward(ids(&[&sequence], device), None);
    let mut cache = GptCache::default();
    let prompt = gpt.forward_cached(ids(&[&sequence[..4]], device), None, &mut cache);
    let mut steps = vec![prompt];
    for t in 4..24 {
        steps.push(gpt.forward_cached(ids(&[&sequence[t..t + 1]], device), None, &mut cache));
    }
    assert_eq!(cache.len(), 24);
    let cached = Tensor::cat(steps, 1);
    let diff = (full - cached).abs().max().into_scalar::<f32>();
    assert!(diff <= 1e-5, "cached logits differ by {diff}");
}

#[test]
fn seq2seq_cached_decoding_equals_full_decode() {
    let device = reference_device();
    device.seed(6);
    let model = Seq2SeqConfig::tiny(VOCAB).init(device).unwrap();
    let memory = model.encode(batch(device), Some(padding(device)));
    let tgt: Vec<i64> = (0..10).map(|i| (i * 3 % VOCAB) as i64).collect();
    let tgt2: Vec<i64> = (0..10).map(|i| (i * 5 % VOCAB) as i64).collect();
    let full = model.decode(ids(&[&tgt, &tgt2], device), None, &memory);
    let mut cache = Seq2SeqCache::default();
    let steps: Vec<Tensor<3>> = (0..10)
        .map(|t| {
            model.decode_cached(
                ids(&[&tgt[t..t + 1], &tgt2[t..t + 1]], device),
                None,
                &memory,
                &mut cache,
            )
        })
        .collect();
    let diff = (full - Tensor::cat(steps, 1))
        .abs()
        .max()
        .into_scalar::<f32>();
    assert!(diff <= 1e-5, "cached decoding differs by {diff}");
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lmforge-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

/// Export with HuggingFace names, import again: identical logits, for every class.
#[test]
fn huggingface_export_then_import_round_trips() {
    let device = reference_device();
    device.seed(7);
    let dir = scratch("export");
    let input = || BertInput::new(batch(device)).with_mask_pad(padding(device));

    let gpt = GptConfig::tiny(VOCAB).init(device).unwrap();
    gpt.save_pretrained(dir.join("gpt")).unwrap();
    let back = Gpt::from_pretrained(dir.join("gpt"), device).unwrap();
    assert_eq!(
        max_diff(
            gpt.forward(batch(device), None),
            back.forward(batch(device), None)
        ),
        0.0
    );

    let config = BertConfig::tiny(VOCAB);
    let mlm = config.init_masked_lm(device).unwrap();
    mlm.save_pretrained(dir.join("mlm")).unwrap();
    let back = BertForMaskedLm::from_pretrained(dir.join("mlm"), device).unwrap();
    assert_eq!(
        max_diff(mlm.forward(input()).logits, back.forward(input()).logits),
        0.0
    );

    let pre = config.init_pretraining(device).unwrap();
    pre.save_pretrained(dir.join("pre")).unwrap();
    let back = BertForPreTraining::from_pretrained(dir.join("pre"), device).unwrap();
    assert_eq!(
        max_diff(
            pre.forward(input()).nsp_logits,
            back.forward(input()).nsp_logits
        ),
        0.0
    );

    let nsp = config.init_next_sentence_prediction(device).unwrap();
    nsp.save_pretrained(dir.join("nsp")).unwrap();
    let back = BertForNextSentencePrediction::from_pretrained(dir.join("nsp"), device).unwrap();
    assert_eq!(
        max_diff(nsp.forward(input()).logits, back.forward(input()).logits),
        0.0
    );

    let seq = config.init_sequence_classification(3, device).unwrap();
    seq.save_pretrained(dir.join("seq")).unwrap();
    let back = BertForSequenceClassification::from_pretrained(dir.join("seq"), device).unwrap();
    assert_eq!(
        max_diff(seq.forward(input()).logits, back.forward(input()).logits),
        0.0
    );

    let tok = config.init_token_classification(5, device).unwrap();
    tok.save_pretrained(dir.join("tok")).unwrap();
    let back = BertForTokenClassification::from_pretrained(dir.join("tok"), device).unwrap();
    assert_eq!(
        max_diff(tok.forward(input()).logits, back.forward(input()).logits),
        0.0
    );

    let qa = config.init_question_answering(device).unwrap();
    qa.save_pretrained(dir.join("qa")).unwrap();
    let back = BertForQuestionAnswering::from_pretrained(dir.join("qa"), device).unwrap();
    assert_eq!(
        max_diff(
            qa.forward(input()).end_logits,
            back.forward(input()).end_logits
        ),
        0.0
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Save in burn's format, load into a freshly initialised model: identical logits; a file
/// from another configuration is refused with an error naming it.
#[test]
fn burn_format_save_then_load_round_trips() {
    let device = reference_device();
    device.seed(8);
    let dir = scratch("burn");
    let path = dir.join("gpt.bpk");
    let gpt = GptConfig::tiny(VOCAB).init(device).unwrap();
    pretrained::save(&gpt, &path).unwrap();
    let fresh = GptConfig::tiny(VOCAB).init(device).unwrap();
    assert!(
        max_diff(
            gpt.forward(batch(device), None),
            fresh.forward(batch(device), None)
        ) > 0.0
    );
    let loaded = pretrained::load(fresh, &path).unwrap();
    assert_eq!(
        max_diff(
            gpt.forward(batch(device), None),
            loaded.forward(batch(device), None)
        ),
        0.0
    );

    let wider = GptConfig::tiny(VOCAB)
        .with_d_model(32)
        .init(device)
        .unwrap();
    let err = pretrained::load(wider, &path).unwrap_err();
    assert!(matches!(err, ModelError::Record { .. }), "{err}");
    assert!(err.to_string().contains("gpt.bpk"), "{err}");
    let missing = pretrained::load(gpt, dir.join("absent.bpk")).unwrap_err();
    assert!(
        matches!(missing, ModelError::FileMissing { .. }),
        "{missing}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn fixture_folder(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/models/{case}"))
}

/// A copy of a fixture checkpoint whose tensors `edit` may change.
fn edited_checkpoint(
    name: &str,
    case: &str,
    edit: impl FnOnce(&mut Vec<(String, TensorData)>),
) -> PathBuf {
    let dir = scratch(name);
    let source = fixture_folder(case);
    std::fs::copy(source.join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, TensorData)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values: Vec<f32> = view
                .data()
                .chunks(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, TensorData::new(values, view.shape().to_vec()))
        })
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(name, data)| {
            let dtype = match data.dtype() {
                DType::I64 => safetensors::Dtype::I64,
                DType::I32 => safetensors::Dtype::I32,
                _ => safetensors::Dtype::F32,
            };
            let view =
                safetensors::tensor::TensorView::new(dtype, data.shape().to_vec(), data.as_bytes())
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    dir
}

fn gpt_error(dir: &Path) -> ModelError {
    Gpt::from_pretrained(dir, reference_device()).unwrap_err()
}

#[test]
fn import_errors_are_typed_and_name_the_problem() {
    // No folder at all.
    let err = gpt_error(Path::new("/nonexistent/lmforge"));
    assert!(
        matches!(&err, ModelError::FileMissing { path } if path.ends_with("config.json")),
        "{err}"
    );

    // Weights that are not safetensors.
    let dir = scratch("garbage");
    std::fs::copy(
        fixture_folder("gpt2_lm").join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    std::fs::write(dir.join("model.safetensors"), b"definitely not safetensors").unwrap();
    assert!(matches!(gpt_error(&dir), ModelError::NotSafetensors { .. }));

    // A config without a required field, and one with inconsistent fields.
    let config = std::fs::read_to_string(fixture_folder("gpt2_lm").join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&config).unwrap();
    json.as_object_mut().unwrap().remove("n_embd");
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    let err = gpt_error(&dir);
    assert!(
        matches!(&err, ModelError::ConfigField { field, .. } if field == "n_embd"),
        "{err}"
    );
    json["n_embd"] = 15.into();
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    let err = gpt_error(&dir);
    assert!(
        matches!(&err, ModelError::ConfigField { field, .. } if field == "n_head"),
        "{err}"
    );

    // Found by the `hf_config` fuzz target: a config far larger than its weights file is
    // refused before the model is allocated (this one would need hundreds of gigabytes).
    let dir = scratch("huge-config");
    std::fs::copy(
        fixture_folder("gpt2_lm").join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    json["n_embd"] = 44_444_444_464u64.into();
    json["n_head"] = 4.into();
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    let err = gpt_error(&dir);
    assert!(
        matches!(&err, ModelError::InvalidConfig { reason, .. } if reason.contains("parameters")),
        "{err}"
    );
    let config = std::fs::read_to_string(fixture_folder("bert_mlm").join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&config).unwrap();
    json["num_hidden_layers"] = 1_000_000_000u64.into();
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    std::fs::copy(
        fixture_folder("bert_mlm").join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let err = BertForMaskedLm::from_pretrained(&dir, reference_device()).unwrap_err();
    assert!(
        matches!(&err, ModelError::InvalidConfig { reason, .. } if reason.contains("parameters")),
        "{err}"
    );

    // A missing tensor.
    let dir = edited_checkpoint("missing", "gpt2_lm", |t| {
        t.retain(|(n, _)| n != "transformer.h.1.ln_2.bias")
    });
    let err = gpt_error(&dir);
    assert!(
        matches!(&err, ModelError::MissingKey { name, .. } if name == "transformer.h.1.ln_2.bias"),
        "{err}"
    );

    // An extra tensor.
    let dir = edited_checkpoint("extra", "gpt2_lm", |t| {
        t.push((
            "transformer.h.0.surprise".into(),
            TensorData::new(vec![1f32], [1]),
        ))
    });
    let err = gpt_error(&dir);
    assert!(
        matches!(&err, ModelError::UnexpectedKeys { names, .. } if names == &["transformer.h.0.surprise".to_string()]),
        "{err}"
    );

    // A tensor of the wrong shape.
    let dir = edited_checkpoint("shape", "gpt2_lm", |t| {
        let entry = t
            .iter_mut()
            .find(|(n, _)| n == "transformer.wpe.weight")
            .unwrap();
        entry.1 = TensorData::new(vec![0f32; 8 * 16], [8, 16]);
    });
    let err = gpt_error(&dir);
    match &err {
        ModelError::ShapeMismatch {
            name,
            expected,
            actual,
            ..
        } => {
            assert_eq!(name, "transformer.wpe.weight");
            assert_eq!(
                (expected.as_slice(), actual.as_slice()),
                (&[16, 16][..], &[8, 16][..])
            );
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
    assert!(err.to_string().contains("[8, 16]") && err.to_string().contains("[16, 16]"));

    // An integer tensor where a float weight is expected (a weight, and the stacked
    // attention tensor GPT-2 splits): refused, naming the tensor, not converted.
    for name in [
        "transformer.h.0.ln_1.weight",
        "transformer.h.1.attn.c_attn.weight",
    ] {
        let dir = edited_checkpoint("int-weight", "gpt2_lm", |t| {
            let entry = t.iter_mut().find(|(n, _)| n == name).unwrap();
            let shape = entry.1.shape().to_vec();
            let count = shape.iter().product::<usize>();
            entry.1 = TensorData::new(vec![1i64; count], shape);
        });
        let err = gpt_error(&dir);
        assert!(
            matches!(&err, ModelError::UnsupportedDtype { name: n, dtype, .. } if n == name && dtype == "I64"),
            "{err}"
        );
    }

    // A stacked attention tensor of the wrong shape names the stacked tensor.
    let dir = edited_checkpoint("qkv", "gpt2_lm", |t| {
        let entry = t
            .iter_mut()
            .find(|(n, _)| n == "transformer.h.0.attn.c_attn.bias")
            .unwrap();
        entry.1 = TensorData::new(vec![0f32; 16], [16]);
    });
    let err = gpt_error(&dir);
    assert!(
        matches!(&err, ModelError::ShapeMismatch { name, .. } if name == "transformer.h.0.attn.c_attn.bias"),
        "{err}"
    );

    // A BERT head checkpoint is not a GPT-2 one.
    let err = gpt_error(&fixture_folder("bert_mlm"));
    assert!(
        matches!(&err, ModelError::ConfigField { field, .. } if field == "model_type"),
        "{err}"
    );
}

#[test]
#[should_panic(expected = "Gpt: token id 23 is out of range for vocab_size 23")]
fn gpt_rejects_token_ids_outside_the_vocabulary() {
    let device = reference_device();
    let gpt = GptConfig::tiny(VOCAB).init(device).unwrap();
    gpt.forward(ids(&[&[1, 2, 23]], device), None);
}

#[test]
#[should_panic(expected = "exceeds max_seq_length 8")]
fn gpt_rejects_sequences_longer_than_its_context() {
    let device = reference_device();
    let gpt = GptConfig::tiny(VOCAB)
        .with_max_seq_length(8)
        .init(device)
        .unwrap();
    gpt.forward(ids(&[&[1; 9]], device), None);
}

#[test]
#[should_panic(expected = "Bert: `mask_pad` has shape [2, 6], expected [2, 7]")]
fn bert_rejects_a_mask_of_the_wrong_shape() {
    let device = reference_device();
    let bert = BertConfig::tiny(VOCAB).init(device).unwrap();
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(vec![false; 12], [2, 6]), device);
    bert.forward(BertInput::new(batch(device)).with_mask_pad(mask));
}

#[test]
fn configs_reject_bad_values_with_clear_errors() {
    let device = reference_device();
    let err = GptConfig::tiny(VOCAB)
        .with_n_heads(3)
        .init(device)
        .unwrap_err();
    assert!(err.to_string().contains("divisible"), "{err}");
    let err = BertConfig::tiny(0).init(device).unwrap_err();
    assert!(err.to_string().contains("vocab_size must be > 0"), "{err}");
    let err = Seq2SeqConfig::tiny(VOCAB)
        .with_tgt_vocab_size(Some(9))
        .init(device)
        .unwrap_err();
    assert!(err.to_string().contains("share_embeddings"), "{err}");
}
