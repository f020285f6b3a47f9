//! The trainer's guarantees, each checked so that breaking it fails a test: exact resume,
//! frozen parameters, global-norm clipping, weight-decay exclusions, per-group learning
//! rates, early stopping, NaN handling, checkpoint errors and the run's files.
//!
//! The device's random generator is global and the trainer reseeds it, so these tests take a
//! lock and run one at a time.

use std::path::Path;
use std::sync::Mutex;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use lmforge_models::bert::{BertConfig, BertForSequenceClassification};
use lmforge_models::gpt::{Gpt, GptConfig};
use lmforge_training::params::{
    clip_global_norm, embeddings_pattern, first_blocks_pattern, freeze_matching, global_grad_norm,
    parameters,
};
use lmforge_training::tasks::CausalLmTask;
use lmforge_training::{
    Batches, CheckpointError, OptimizerConfig, Progress, Record, Schedule, StepContext, StepOutput,
    Task, TaskError, TrainError, Trainer, TrainerConfig, files,
};

mod common;

use common::{device, lock, tmp};

const VOCAB: usize = 23;

fn gpt(device: &Device, dropout: f64) -> Gpt {
    GptConfig::tiny(VOCAB)
        .with_dropout(dropout)
        .with_attention_dropout(dropout)
        .init(device)
        .unwrap()
}

/// 40 rows of 12 tokens following a simple rule, so the loss can fall.
fn rows() -> Vec<Vec<u32>> {
    (0..40u32)
        .map(|i| {
            (0..12u32)
                .map(|t| (i * 3 + t * (1 + i % 4)) % VOCAB as u32)
                .collect()
        })
        .collect()
}

fn train_losses(history: &[Record]) -> Vec<f64> {
    history
        .iter()
        .filter_map(|r| match r {
            Record::Train { loss, .. } => Some(*loss),
            _ => None,
        })
        .collect()
}

fn values<M: Module>(model: &M) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    let mut collect = Collect(&mut out, Vec::new());
    model.visit(&mut collect);
    out
}

struct Collect<'a>(&'a mut Vec<(String, Vec<f32>)>, Vec<String>);

impl burn::module::ModuleVisitor for Collect<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.1.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.1.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        let v = param.val().into_data().iter::<f32>().collect();
        self.0.push((self.1.join("."), v));
    }
}

/// A causal-LM task that fails on its `fail_at`-th call, as a crash in the middle of a run.
struct Crashing {
    inner: CausalLmTask,
    calls: Mutex<usize>,
    fail_at: usize,
}

impl Task<Gpt> for Crashing {
    type Item = Vec<u32>;
    fn step(
        &self,
        model: &Gpt,
        items: &[Vec<u32>],
        ctx: &mut StepContext<'_>,
    ) -> Result<StepOutput, TaskError> {
        let mut calls = self.calls.lock().unwrap();
        *calls += 1;
        if *calls == self.fail_at {
            return Err("simulated crash".into());
        }
        self.inner.step(model, items, ctx)
    }
}

fn resume_config(steps: usize) -> TrainerConfig {
    TrainerConfig::new(steps, Schedule::warmup_cosine(3e-3, 3))
        .with_grad_accumulation(2)
        .with_max_grad_norm(0.5)
        .with_checkpoint_every(4)
        .with_log_every(1)
        .with_seed(17)
        .with_progress(Progress::Silent)
}

/// A run interrupted after its step-8 checkpoint and resumed from it (into a model with other
/// initial weights) gives the same loss at every step, and the same final weights, as a run
/// that was never interrupted. Dropout, accumulation, clipping, AdamW state and the schedule
/// all have to be restored for this to hold.
#[test]
fn resume_continues_exactly() {
    let _guard = lock();
    let device = device();
    let task = CausalLmTask::new(0);
    let data = Batches::new(rows(), 4).with_seed(3);

    device.seed(1);
    let whole = Trainer::new(resume_config(14))
        .fit(gpt(&device, 0.1), &task, &data, None)
        .unwrap();

    let dir = tmp("resume");
    device.seed(1);
    // Two batches per step: the 21st batch is read in step 11, after the step-8 checkpoint.
    let crashing = Crashing {
        inner: task.clone(),
        calls: Mutex::new(0),
        fail_at: 21,
    };
    let err = Trainer::new(resume_config(14))
        .with_output_dir(&dir)
        .fit(gpt(&device, 0.1), &crashing, &data, None)
        .err()
        .expect("the crash stops the run");
    assert!(matches!(err, TrainError::Task { step: 10, .. }), "{err}");

    device.seed(99); // different initial weights: everything must come from the checkpoint
    let resumed = Trainer::new(resume_config(14))
        .with_output_dir(&dir)
        .resume_from(dir.join(files::CHECKPOINT))
        .fit(gpt(&device, 0.1), &task, &data, None)
        .unwrap();

    let (a, b) = (train_losses(&whole.history), train_losses(&resumed.history));
    assert_eq!(a.len(), 14);
    // Steps 1-8 come back from the checkpoint's JSON, which may round the last bit.
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-12 * x.abs(),
            "step {}: {x} vs {y}",
            step + 1
        );
    }
    assert_eq!(values(&whole.model), values(&resumed.model));
    // The metrics file holds each step once, even though the crashed run logged steps 9 and 10.
    let lines = std::fs::read_to_string(dir.join(files::METRICS)).unwrap();
    assert_eq!(lines.lines().count(), 14);
}

/// Resuming into a model of another shape, or with another seed, is refused with a typed
/// error naming the file.
#[test]
fn resume_refuses_mismatches() {
    let _guard = lock();
    let device = device();
    let dir = tmp("mismatch");
    let task = CausalLmTask::new(0);
    let data = Batches::new(rows(), 4);
    let config = resume_config(4);
    Trainer::new(config.clone())
        .with_output_dir(&dir)
        .fit(gpt(&device, 0.0), &task, &data, None)
        .unwrap();
    let path = dir.join(files::CHECKPOINT);

    let wider = GptConfig::tiny(VOCAB)
        .with_d_model(48)
        .init(&device)
        .unwrap();
    let err = Trainer::new(config.clone())
        .resume_from(&path)
        .fit(wider, &task, &data, None)
        .err()
        .unwrap();
    assert!(
        matches!(
            &err,
            TrainError::Checkpoint {
                cause: CheckpointError::ModelMismatch(_),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("checkpoint.lmf"), "{err}");

    let err = Trainer::new(config.with_seed(1))
        .resume_from(&path)
        .fit(gpt(&device, 0.0), &task, &data, None)
        .err()
        .unwrap();
    assert!(
        matches!(
            &err,
            TrainError::Checkpoint {
                cause: CheckpointError::RunMismatch(_),
                ..
            }
        ),
        "{err}"
    );
}

/// Damaged files give the matching [`CheckpointError`].
#[test]
fn corrupt_checkpoints_are_named_and_explained() {
    let _guard = lock();
    let device = device();
    let dir = tmp("corrupt");
    let task = CausalLmTask::new(0);
    let data = Batches::new(rows(), 4);
    let config = resume_config(2);
    Trainer::new(config.clone())
        .with_output_dir(&dir)
        .fit(gpt(&device, 0.0), &task, &data, None)
        .unwrap();
    let good = std::fs::read(dir.join(files::CHECKPOINT)).unwrap();

    let resume = |bytes: Option<&[u8]>| {
        let path = dir.join("edited.lmf");
        let _ = std::fs::remove_file(&path);
        if let Some(bytes) = bytes {
            std::fs::write(&path, bytes).unwrap();
        }
        let err = Trainer::new(config.clone())
            .resume_from(&path)
            .fit(gpt(&device, 0.0), &task, &data, None)
            .err()
            .expect("a damaged checkpoint is refused");
        assert!(err.to_string().contains("edited.lmf"), "{err}");
        match err {
            TrainError::Checkpoint { cause, .. } => cause,
            other => panic!("unexpected error {other}"),
        }
    };
    assert!(matches!(resume(None), CheckpointError::Missing));
    assert!(matches!(
        resume(Some(b"hello, world")),
        CheckpointError::NotACheckpoint
    ));
    assert!(matches!(
        resume(Some(&good[..good.len() / 2])),
        CheckpointError::Truncated(_)
    ));
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    assert!(matches!(
        resume(Some(&flipped)),
        CheckpointError::Checksum { .. }
    ));
    let mut version = good.clone();
    version[8] = 9;
    assert!(matches!(
        resume(Some(&version)),
        CheckpointError::Version { found: 9, .. }
    ));
    // Found by the `checkpoint` fuzz target: a section length that makes the section end
    // within 4 bytes of `usize::MAX` wrapped the bounds check around and panicked on slicing.
    for bytes_from_end in [1u64, 2, 3, 4] {
        let mut huge = good.clone();
        let length = u64::MAX - 20 - bytes_from_end; // the first section starts at byte 20
        huge[12..20].copy_from_slice(&length.to_le_bytes());
        assert!(matches!(resume(Some(&huge)), CheckpointError::Truncated(_)));
    }
}

/// A task whose loss turns NaN on its `nan_at`-th call.
struct NanAt {
    inner: CausalLmTask,
    calls: Mutex<usize>,
    nan_at: usize,
}

impl Task<Gpt> for NanAt {
    type Item = Vec<u32>;
    fn step(
        &self,
        model: &Gpt,
        items: &[Vec<u32>],
        ctx: &mut StepContext<'_>,
    ) -> Result<StepOutput, TaskError> {
        let mut calls = self.calls.lock().unwrap();
        *calls += 1;
        let mut out = self.inner.step(model, items, ctx)?;
        if *calls == self.nan_at {
            out.loss = out.loss * f32::NAN;
        }
        Ok(out)
    }
}

/// A NaN loss stops the run with the step and the last good checkpoint, which is left intact
/// (it still resumes at the step it was written).
#[test]
fn nan_loss_stops_and_keeps_the_last_checkpoint() {
    let _guard = lock();
    let device = device();
    let dir = tmp("nan");
    let task = NanAt {
        inner: CausalLmTask::new(0),
        calls: Mutex::new(0),
        nan_at: 10,
    };
    let data = Batches::new(rows(), 4);
    let config = resume_config(10).with_grad_accumulation(1);
    let err = Trainer::new(config)
        .with_output_dir(&dir)
        .fit(gpt(&device, 0.0), &task, &data, None)
        .err()
        .unwrap();
    let path = dir.join(files::CHECKPOINT);
    match &err {
        TrainError::NonFiniteLoss {
            step,
            loss,
            last_checkpoint,
        } => {
            assert_eq!(*step, 9);
            assert!(loss.is_nan());
            assert_eq!(last_checkpoint.as_deref(), Some(path.as_path()));
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("NaN"), "{err}");
    let checkpoint = lmforge_training::checkpoint::Checkpoint::read(&path).unwrap();
    assert_eq!(checkpoint.state.step, 8);
}

/// The global norm is the L2 norm over all gradients together (checked against a host-side
/// sum of squares), and after clipping it is `max_norm` (up to PyTorch's 1e-6 guard), with
/// every gradient scaled by the same factor.
#[test]
fn clipping_bounds_the_global_norm() {
    let _guard = lock();
    let device = device();
    let model = gpt(&device, 0.0);
    let tokens = Tensor::from_data(TensorData::new(vec![1i64, 5, 9, 2, 7, 3], [1, 6]), &device);
    let loss = model.forward(tokens, None).powf_scalar(2.0).sum() * 100.0;
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);

    let mut host_sum = 0.0f64;
    let mut first = None;
    for p in parameters(&model) {
        let grad: Option<Vec<f32>> = match p.shape.len() {
            1 => grads
                .get::<1>(p.id)
                .map(|g| g.into_data().iter::<f32>().collect()),
            2 => grads
                .get::<2>(p.id)
                .map(|g| g.into_data().iter::<f32>().collect()),
            _ => None,
        };
        if let Some(g) = grad {
            host_sum += g.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>();
            if first.is_none() && p.shape.len() == 2 {
                first = Some((p.id, g));
            }
        }
    }
    let host_norm = host_sum.sqrt();
    let before = clip_global_norm(&model, &mut grads, 0.5);
    assert!(
        before > 5.0,
        "the test needs large gradients, got norm {before}"
    );
    assert!(
        (before - host_norm).abs() <= 1e-4 * host_norm,
        "{before} vs {host_norm}"
    );

    let after = global_grad_norm(&model, &grads)
        .unwrap()
        .into_scalar::<f64>();
    assert!(
        after <= 0.5 + 1e-5 && after > 0.5 - 1e-4,
        "norm after clipping {after}"
    );
    let (id, original) = first.unwrap();
    let clipped: Vec<f32> = grads
        .get::<2>(id)
        .unwrap()
        .into_data()
        .iter::<f32>()
        .collect();
    let factor = 0.5 / (before + 1e-6);
    for (o, c) in original.iter().zip(&clipped) {
        assert!((f64::from(*o) * factor - f64::from(*c)).abs() <= 1e-6 + 1e-5 * f64::from(c.abs()));
    }

    // Under the limit nothing changes.
    let mut small = GradientsParams::from_grads(
        (model
            .forward(
                Tensor::from_data(TensorData::new(vec![1i64, 2], [1, 2]), &device),
                None,
            )
            .sum()
            * 1e-6)
            .backward(),
        &model,
    );
    let norm = clip_global_norm(&model, &mut small, 10.0);
    let again = global_grad_norm(&model, &small)
        .unwrap()
        .into_scalar::<f64>();
    assert!(
        (norm - again).abs() <= 1e-6 * norm.max(1e-12),
        "{norm} vs {again}"
    );
}

/// A task whose gradients are all zero: with AdamW, only weight decay moves parameters.
struct ZeroGrad;

impl Task<Gpt> for ZeroGrad {
    type Item = Vec<u32>;
    fn step(
        &self,
        model: &Gpt,
        items: &[Vec<u32>],
        ctx: &mut StepContext<'_>,
    ) -> Result<StepOutput, TaskError> {
        let mut out = CausalLmTask::new(0).step(model, items, ctx)?;
        out.loss = out.loss * 0.0;
        Ok(out)
    }
}

/// With zero gradients an AdamW step is pure decoupled decay `w *= 1 - lr * wd`: the weights
/// of linear layers shrink by exactly that factor, while biases, norms and embeddings (the
/// default exclusions) stay the same.
#[test]
fn weight_decay_skips_biases_norms_and_embeddings() {
    let _guard = lock();
    let device = device();
    let model = gpt(&device, 0.0);
    let before = values(&model);
    let params = parameters(&model);
    let config = TrainerConfig::new(1, Schedule::constant(0.1))
        .with_optimizer(OptimizerConfig::adamw().with_weight_decay(0.5))
        .with_progress(Progress::Silent);
    let out = Trainer::new(config)
        .fit(model, &ZeroGrad, &Batches::new(rows(), 4), None)
        .unwrap();
    let after = values(&out.model);
    let (mut decayed, mut kept) = (0, 0);
    for ((path, b), ((_, a), info)) in before.iter().zip(after.iter().zip(&params)) {
        let excluded = info.shape.len() == 1 || info.owner.ends_with("Embedding");
        let factor = if excluded { 1.0 } else { 1.0 - 0.1 * 0.5 };
        for (x, y) in b.iter().zip(a) {
            assert!(
                (x * factor - y).abs() <= 1e-6,
                "{path}: {x} * {factor} != {y}"
            );
        }
        if excluded { kept += 1 } else { decayed += 1 }
    }
    assert!(decayed >= 4 && kept >= 4, "decayed {decayed}, kept {kept}");
    assert!(
        params
            .iter()
            .any(|p| p.path == "token_embedding.weight" && p.owner == "Embedding")
    );
}

fn classifier(device: &Device) -> BertForSequenceClassification {
    BertConfig::tiny(VOCAB)
        .init_sequence_classification(2, device)
        .unwrap()
}

/// Sentence classification items: rows of ids, labelled by whether they contain token 3.
fn labelled() -> Vec<(lmforge_data::tokenizer::Encoding, i64)> {
    rows()
        .into_iter()
        .map(|ids| {
            let label = i64::from(ids.contains(&3));
            let n = ids.len();
            let encoding = lmforge_data::tokenizer::Encoding {
                ids,
                type_ids: vec![0; n],
                word_ids: vec![None; n],
                special_tokens_mask: vec![false; n],
            };
            (encoding, label)
        })
        .collect()
}

fn classification_task() -> lmforge_training::tasks::SequenceClassificationTask {
    let batcher = lmforge_data::batcher::BatcherConfig::new(0)
        .with_vocab_size(VOCAB)
        .init()
        .unwrap();
    lmforge_training::tasks::SequenceClassificationTask::new(batcher)
}

/// Frozen parameters (embeddings and the first block) are bit-for-bit unchanged after
/// training steps; the others change.
#[test]
fn frozen_parameters_do_not_change() {
    let _guard = lock();
    let device = device();
    let patterns = [embeddings_pattern(), first_blocks_pattern(1).unwrap()];
    let (model, count) = freeze_matching(classifier(&device), &patterns).unwrap();
    assert!(count >= 8, "froze {count} tensors");
    let before = values(&model);
    let frozen: Vec<bool> = parameters(&model).iter().map(|p| !p.trainable).collect();
    assert_eq!(frozen.iter().filter(|f| **f).count(), count);

    let config = TrainerConfig::new(3, Schedule::constant(1e-2)).with_progress(Progress::Silent);
    let out = Trainer::new(config)
        .fit(
            model,
            &classification_task(),
            &Batches::new(labelled(), 8),
            None,
        )
        .unwrap();
    let after = values(&out.model);
    for (((path, b), (_, a)), frozen) in before.iter().zip(&after).zip(&frozen) {
        if *frozen {
            assert_eq!(b, a, "{path} is frozen but changed");
            assert!(
                path.contains("embeddings.") || path.contains("blocks.0."),
                "{path}"
            );
        } else {
            assert_ne!(b, a, "{path} trains but did not change");
        }
    }
    // A pattern that matches nothing is an error, not a silent no-op.
    let err = freeze_matching(classifier(&device), &["^encoder\\.".to_string()])
        .err()
        .unwrap();
    assert!(err.to_string().contains("matches no parameter"), "{err}");
}

/// A learning-rate group with factor 0 holds the encoder still while the head (factor 1)
/// trains: the group reaches burn's optimizer.
#[test]
fn learning_rate_groups_apply_per_parameter() {
    let _guard = lock();
    let device = device();
    let model = classifier(&device);
    let before = values(&model);
    let optimizer = OptimizerConfig::adamw().with_lr_group(r"^bert\.", 0.0);
    let config = TrainerConfig::new(2, Schedule::constant(1e-2))
        .with_optimizer(optimizer)
        .with_progress(Progress::Silent);
    let out = Trainer::new(config)
        .fit(
            model,
            &classification_task(),
            &Batches::new(labelled(), 8),
            None,
        )
        .unwrap();
    for ((path, b), (_, a)) in before.iter().zip(&values(&out.model)) {
        if path.starts_with("bert.") {
            assert_eq!(b, a, "{path} has learning rate 0 but changed");
        } else {
            assert_ne!(b, a, "{path} should train");
        }
    }
}

/// With a zero learning rate nothing improves, so patience 2 stops the run at the third
/// evaluation; the run's files are written and well-formed.
#[test]
fn early_stopping_and_run_files() {
    let _guard = lock();
    let device = device();
    let dir = tmp("files");
    let data = Batches::new(rows(), 4);
    let valid = Batches::new(rows()[..8].to_vec(), 4).in_order();
    let config = TrainerConfig::new(100, Schedule::constant(0.0))
        .with_eval(2, None)
        .with_early_stopping(2)
        .with_keep_best(true)
        .with_log_every(1)
        .with_progress(Progress::Lines);
    let out = Trainer::new(config)
        .with_output_dir(&dir)
        .fit(
            gpt(&device, 0.0),
            &CausalLmTask::new(0),
            &data,
            Some(&valid),
        )
        .unwrap();
    assert!(out.stopped_early);
    assert_eq!(out.steps, 6);
    assert!(out.best_model.is_some());

    let metrics = std::fs::read_to_string(dir.join(files::METRICS)).unwrap();
    let records: Vec<Record> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), out.history.len());
    for (r, h) in records.iter().zip(&out.history) {
        assert_eq!(r.step(), h.step());
    }
    assert_eq!(
        records
            .iter()
            .filter(|r| matches!(r, Record::Eval { .. }))
            .count(),
        3
    );
    let svg = std::fs::read_to_string(dir.join(files::LOSS_CURVE)).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("polyline"),
        "{}",
        &svg[..100.min(svg.len())]
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(files::CONFIG)).unwrap()).unwrap();
    assert_eq!(config["steps"], 100);
    assert!(Path::new(&dir.join(files::BEST_MODEL)).exists());
    assert!(Path::new(&dir.join(files::CHECKPOINT)).exists());
}

/// Bad settings are refused before any work.
#[test]
fn invalid_configs_are_refused() {
    let _guard = lock();
    let device = device();
    let data = Batches::new(rows(), 4);
    let task = CausalLmTask::new(0);
    let fit = |config: TrainerConfig| {
        Trainer::new(config.with_progress(Progress::Silent))
            .fit(gpt(&device, 0.0), &task, &data, None)
            .err()
            .expect("refused")
    };
    let base = TrainerConfig::new(2, Schedule::constant(1e-3));
    assert!(matches!(
        fit(base.clone().with_grad_accumulation(0)),
        TrainError::InvalidConfig(_)
    ));
    assert!(matches!(
        fit(base.clone().with_max_grad_norm(-1.0)),
        TrainError::InvalidConfig(_)
    ));
    assert!(matches!(
        fit(base.clone().with_eval(1, None)),
        TrainError::InvalidConfig(_)
    ));
    assert!(matches!(
        fit(TrainerConfig::new(2, Schedule::constant(-1.0))),
        TrainError::InvalidConfig(_)
    ));
    let bad_group = base.with_optimizer(OptimizerConfig::adamw().with_lr_group("(", 2.0));
    assert!(matches!(fit(bad_group), TrainError::InvalidConfig(_)));
    let plain = gpt(&device.clone().without_autodiff(), 0.0);
    let err = Trainer::new(TrainerConfig::new(1, Schedule::constant(1e-3)))
        .fit(plain, &task, &data, None)
        .err()
        .unwrap();
    assert!(matches!(err, TrainError::NotAutodiff));
}

/// Every parameter of lmforge's trainable models requires a gradient on an autodiff device
/// (a parameter rebuilt without it would silently never train).
#[test]
fn every_model_parameter_trains() {
    let _guard = lock();
    let device = device();
    let check = |name: &str, params: Vec<lmforge_training::params::ParamInfo>| {
        let fixed: Vec<&str> = params
            .iter()
            .filter(|p| !p.trainable)
            .map(|p| p.path.as_str())
            .collect();
        assert!(
            fixed.is_empty(),
            "{name}: parameters without gradients: {fixed:?}"
        );
    };
    check("Gpt", parameters(&gpt(&device, 0.0)));
    check(
        "BertForSequenceClassification",
        parameters(&classifier(&device)),
    );
    check(
        "BertForPreTraining",
        parameters(&BertConfig::tiny(VOCAB).init_pretraining(&device).unwrap()),
    );
    let lstm = lmforge_models::lstm_lm::LstmLmConfig::new(VOCAB)
        .with_d_embedding(8)
        .with_d_hidden(8);
    check("LstmLm", parameters(&lstm.init(&device).unwrap()));
}

/// The stateful LSTM task carries the state between batches (its losses differ from the same
/// run restarting every batch from zero), and a run stopped at a checkpoint that is a reset
/// point and resumed ends with bit-identical weights.
#[test]
fn stateful_lstm_carries_state_and_resumes_exactly() {
    use lmforge_models::lstm_lm::{LstmLm, LstmLmConfig};
    use lmforge_training::tasks::{StatefulLstmTask, stream_windows};
    let _lock = lock();
    let device = device();
    let tokens: Vec<u32> = (0..400u32)
        .map(|i| (i * 7 + i / 3) % VOCAB as u32)
        .collect();
    let items = stream_windows(&tokens, 4, 5);
    let train = Batches::new(items, 4).in_order();
    assert_eq!(train.len(), 19);
    let model = |device: &Device| -> LstmLm {
        device.seed(12);
        LstmLmConfig::new(VOCAB)
            .with_d_embedding(8)
            .with_d_hidden(8)
            .with_n_layers(1)
            .with_dropout(0.0)
            .init(device)
            .unwrap()
    };
    let fit = |steps: usize, reset_every: usize, out: Option<&Path>, resume: bool| {
        let task = StatefulLstmTask::new(train.len(), reset_every);
        let config = TrainerConfig::new(steps, Schedule::constant(1e-2))
            .with_checkpoint_every(4)
            .with_log_every(1)
            .with_progress(Progress::Silent);
        let mut trainer = Trainer::new(config);
        if let Some(dir) = out {
            trainer = trainer.with_output_dir(dir);
            if resume {
                trainer = trainer.resume_from(dir.join(files::CHECKPOINT));
            }
        }
        trainer.fit(model(&device), &task, &train, None).unwrap()
    };
    let carried = fit(12, 4, None, false);
    let restarted = fit(12, 1, None, false);
    let (a, b) = (
        train_losses(&carried.history),
        train_losses(&restarted.history),
    );
    assert_eq!(a[0], b[0], "the first batch starts from zero either way");
    assert!(
        a.iter().zip(&b).skip(1).any(|(x, y)| x != y),
        "state not carried"
    );

    let dir = tmp("stateful");
    let _ = fit(8, 4, Some(&dir), false);
    let resumed = fit(12, 4, Some(&dir), true);
    assert_eq!(values(&resumed.model), values(&carried.model));
}

/// lmforge's AdamW (one fused pass per parameter on flex) against burn's composed `AdamW` with
/// the same decay exclusions: after four steps (the first one creates the moments; the step's
/// time enters the bias corrections) every parameter agrees within 2e-7 relative (measured:
/// bit for bit equal, as the fused pass repeats the composed operations in order), with weight
/// decay on the matrices and none on biases, norms and embeddings. The update moves the
/// parameters far more than that.
#[test]
fn fused_adamw_matches_burns_composed_adamw() {
    use burn::optim::AdamWConfig;
    let _guard = lock();
    let device = device();
    let model = gpt(&device, 0.0);
    let config = OptimizerConfig::adamw().with_weight_decay(0.1);
    let mut ours = config.init(&model).unwrap();
    let composed = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8);
    let mut theirs = composed.clone().with_weight_decay(0.1).init().with_group(
        config.no_decay_group(&model).unwrap(),
        composed.with_weight_decay(0.0).build(),
        None,
    );
    // The fused pass runs on the reference device (flex), or this test compares burn with
    // itself.
    // (The optimizer sees the parameters without autodiff, as here.)
    let probe = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, -2.0], [2]), &device).inner();
    let step = lmforge_layers::AdamWStep {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-8,
        time: 1,
        lr: 1e-2,
        weight_decay: 0.1,
    };
    assert!(lmforge_layers::adamw_step(probe.clone(), probe, None, step).is_some());
    let start = values(&model);
    let (mut a, mut b) = (model.clone(), model);
    let tokens = |device: &Device| {
        Tensor::from_data(TensorData::new(vec![1i64, 5, 9, 2, 7, 3], [1, 6]), device)
    };
    for _ in 0..4 {
        let grads = |m: &Gpt| {
            let loss = m.forward(tokens(&device), None).powf_scalar(2.0).mean();
            GradientsParams::from_grads(loss.backward(), m)
        };
        let (ga, gb) = (grads(&a), grads(&b));
        a = ours.step(1e-2, a, ga);
        b = theirs.step(1e-2, b, gb);
    }
    let (va, vb) = (values(&a), values(&b));
    assert_eq!(va.len(), vb.len());
    let mut moved = 0.0f32;
    for (((path, x), (_, y)), (_, s)) in va.iter().zip(&vb).zip(&start) {
        for ((x, y), s) in x.iter().zip(y).zip(s) {
            assert!(
                (x - y).abs() <= 2e-7 * y.abs().max(1e-3),
                "{path}: fused {x} vs composed {y}"
            );
            moved = moved.max((y - s).abs());
        }
    }
    assert!(
        moved > 1e-3,
        "the steps barely moved the parameters ({moved})"
    );
}
