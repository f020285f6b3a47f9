//! lmforge tasks under burn-train's `Learner`: the same result as lmforge's own trainer, the
//! same parameters from two data-parallel replicas as from one device with the same global
//! batch, the schedule and metrics adapters, and the errors.
//!
//! The device's random generator is global and both trainers reseed it, so these tests take a
//! lock and run one at a time.
#![cfg(feature = "learner")]

use burn::data::dataloader::Progress;
use burn::lr_scheduler::LrScheduler;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use burn::train::metric::{Metric, MetricMetadata, Numeric};
use lmforge_models::gpt::{Gpt, GptConfig};
use lmforge_training::learner::{
    LearnerConfig, LearnerTrainer, LmAccuracy, LmPerplexity, LmStats, Parallelism, ScheduleLr,
};
use lmforge_training::tasks::CausalLmTask;
use lmforge_training::{
    Batches, OptimizerConfig, Progress as TrainProgress, Schedule, StepContext, StepOutput, Task,
    TaskError, TrainError, Trainer, TrainerConfig, evaluate,
};

mod common;

use common::{device, lock, tmp};

const VOCAB: usize = 19;

fn gpt(device: &Device) -> Gpt {
    GptConfig::tiny(VOCAB).init(device).unwrap()
}

/// 16 rows of 10 tokens following a simple rule, so the loss can fall.
fn rows() -> Vec<Vec<u32>> {
    (0..16u32)
        .map(|i| {
            (0..10u32)
                .map(|t| (i * 5 + t * (1 + i % 3)) % VOCAB as u32)
                .collect()
        })
        .collect()
}

/// Every parameter's values, in visiting order.
fn values<M: Module>(model: &M) -> Vec<Vec<f32>> {
    struct Collect(Vec<Vec<f32>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0
                .push(param.val().into_data().try_to_vec::<f32>().unwrap());
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    collect.0
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "different parameter counts");
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

#[test]
fn the_learner_reaches_the_same_model_and_loss_as_lmforges_trainer() {
    let _guard = lock();
    let device = device();
    let start = gpt(&device);
    let schedule = Schedule::warmup_cosine(1e-2, 2);
    let optimizer = OptimizerConfig::adamw().with_weight_decay(0.1);
    let task = CausalLmTask::new(0);
    let (epochs, batch) = (2, 4);

    let config = LearnerConfig::new(epochs, batch, schedule.clone())
        .with_optimizer(optimizer.clone())
        .with_max_grad_norm(0.5)
        .with_seed(7);
    let dir = tmp("same-as-trainer");
    let learned = LearnerTrainer::new(config)
        .fit(start.clone(), &task, rows(), rows(), &dir)
        .unwrap();
    assert_eq!(learned.steps, 8);
    // burn-train wrote its run directory.
    assert!(dir.join("experiment.log").is_file());

    let trainer_config = TrainerConfig::new(learned.steps, schedule)
        .with_optimizer(optimizer)
        .with_max_grad_norm(0.5)
        .with_seed(7)
        .with_progress(TrainProgress::Silent);
    let data = Batches::new(rows(), batch).in_order();
    let trained = Trainer::new(trainer_config)
        .fit(start.clone(), &task, &data, None)
        .unwrap()
        .model;

    let before = evaluate(&start, &task, &data, None).unwrap().loss;
    let by_learner = evaluate(&learned.model, &task, &data, None).unwrap().loss;
    let by_trainer = evaluate(&trained, &task, &data, None).unwrap().loss;
    assert!(
        by_trainer < before - 0.1,
        "training must move the loss: {before} -> {by_trainer}"
    );
    assert!(
        (by_learner - by_trainer).abs() < 1e-4,
        "loss after burn-train {by_learner} vs lmforge's trainer {by_trainer}"
    );
    let diff = max_abs_diff(&values(&learned.model), &values(&trained));
    eprintln!(
        "loss {before} -> {by_learner} (Learner) / {by_trainer} (trainer); parameters differ by \
         up to {diff}"
    );
    assert!(diff < 1e-4, "parameters differ by up to {diff}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two replicas, each reading a batch of 4 from its half of the data, against one device
/// reading the same 8 rows as one batch. SGD with momentum: its update is linear in the
/// gradient, so the replicas' summed gradients (rounded in another order) change the
/// parameters by rounding only (measured: 1e-7 after 4 steps that move them by 0.2). Adam
/// divides by the root of its second moment, which turns rounding-level differences in
/// near-zero gradient components into visible ones (5e-4 after 4 steps at lr 0.02).
fn data_parallel_matches_one_device(second: Device, extra_rows: usize) {
    let device = device();
    let start = gpt(&device);
    let schedule = Schedule::warmup_linear(0.5, 1);
    let task = CausalLmTask::new(0);
    let (epochs, batch) = (2, 4);

    let config = LearnerConfig::new(epochs, batch, schedule.clone())
        .with_optimizer(OptimizerConfig::sgd(0.9))
        .with_parallelism(Parallelism::DataParallel);
    let dir = tmp("data-parallel");
    // Rows beyond a multiple of 2 devices x 4 are left out, so both shards stay 0..8 and 8..16.
    let mut train = rows();
    train.extend(rows().into_iter().take(extra_rows));
    let parallel = LearnerTrainer::new(config)
        .with_devices(vec![device.clone(), second])
        .quiet(true)
        .fit(start.clone(), &task, train, rows(), &dir)
        .unwrap();
    assert_eq!(parallel.steps, 4);

    // burn splits the 16 rows into shards 0..8 and 8..16; step k reads rows 4k..4k+4 of each.
    let all = rows();
    let global: Vec<Vec<u32>> = (0..2)
        .flat_map(|k| {
            let first = all[4 * k..4 * k + 4].to_vec();
            let second = all[8 + 4 * k..8 + 4 * k + 4].to_vec();
            first.into_iter().chain(second)
        })
        .collect();
    let trainer_config = TrainerConfig::new(parallel.steps, schedule)
        .with_optimizer(OptimizerConfig::sgd(0.9))
        .with_progress(TrainProgress::Silent);
    let single = Trainer::new(trainer_config)
        .fit(
            start.clone(),
            &task,
            &Batches::new(global, 2 * batch).in_order(),
            None,
        )
        .unwrap()
        .model;

    let moved = max_abs_diff(&values(&single), &values(&start));
    assert!(moved > 1e-2, "training must move the parameters ({moved})");
    let diff = max_abs_diff(&values(&parallel.model), &values(&single));
    eprintln!("parameters moved by up to {moved}; replicas vs one device: {diff}");
    assert!(
        diff < 1e-5,
        "two replicas vs one device: parameters differ by up to {diff}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_data_parallel_replicas_match_one_device_with_the_same_global_batch() {
    let _guard = lock();
    // flex has one device; two replicas share it, each in its own worker thread. Two rows
    // too many for full batches on both devices are left out.
    data_parallel_matches_one_device(device(), 2);
}

#[test]
fn data_parallel_across_backends_matches_one_device() {
    let _guard = lock();
    // Replica 0 on the reference device (flex), replica 1 on each other compiled test device
    // (ndarray, and wgpu on the software adapter in CI).
    let others = &lmforge_device::testing::test_devices()[1..];
    if others.is_empty() {
        eprintln!("one backend compiled: nothing to compare across");
    }
    for other in others {
        eprintln!("second replica on {other}");
        data_parallel_matches_one_device(other.device.clone().autodiff(), 0);
    }
}

/// The last value burn-train logged for `metric` in `split` ("train"/"valid") of `epoch`.
fn logged(dir: &std::path::Path, split: &str, epoch: usize, metric: &str) -> f64 {
    let path = dir
        .join(split)
        .join(format!("epoch-{epoch}"))
        .join(format!("{metric}.log"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let last = text.lines().last().expect("a logged value");
    last.split(',').next().unwrap().parse().unwrap()
}

/// BERT masked-LM pre-training under the Learner on two replicas: the masking runs inside
/// the task on each replica, and the validation perplexity and accuracy burn-train logs are
/// the ones lmforge's `evaluate` computes for the trained model (one validation batch, so
/// both draw the same masks).
#[test]
fn bert_masked_lm_trains_under_the_learner_and_logs_lmforge_metrics() {
    use lmforge_data::tokenizer::Encoding;
    use lmforge_models::bert::BertConfig;
    use lmforge_objectives::masked_lm::MaskingConfig;
    use lmforge_training::tasks::MaskedLmTask;

    let _guard = lock();
    let device = device();
    let encodings: Vec<Encoding> = rows()
        .into_iter()
        .map(|ids| {
            let ids: Vec<u32> = ids.into_iter().map(|id| id + 2).collect();
            let n = ids.len();
            Encoding {
                ids,
                type_ids: vec![0; n],
                word_ids: (0..n as u32).map(Some).collect(),
                special_tokens_mask: vec![false; n],
            }
        })
        .collect();
    let vocab = VOCAB + 2;
    let batcher = lmforge_data::batcher::BatcherConfig::new(0)
        .with_vocab_size(vocab)
        .init()
        .unwrap();
    // Mask half the tokens so a 4-row batch has plenty of targets.
    let masking = MaskingConfig::new(1, vocab, vec![0, 1]).with_probability(0.5);
    let task = MaskedLmTask::new(batcher, masking);
    let model = BertConfig::tiny(vocab).init_masked_lm(&device).unwrap();
    let valid = encodings[..4].to_vec();

    let dir = tmp("bert-mlm");
    let config = LearnerConfig::new(2, 4, Schedule::warmup_cosine(5e-3, 1)).with_seed(3);
    let out = LearnerTrainer::new(config)
        .with_devices(vec![device.clone(), device.clone()])
        .quiet(true)
        .fit(model, &task, encodings, valid.clone(), &dir)
        .unwrap();
    assert_eq!(out.steps, 4);

    let evaluation = evaluate(&out.model, &task, &Batches::new(valid, 4).in_order(), None).unwrap();
    let perplexity = logged(&dir, "valid", 2, "Perplexity");
    let accuracy = logged(&dir, "valid", 2, "Accuracy");
    let loss = logged(&dir, "valid", 2, "Loss");
    eprintln!("logged perplexity {perplexity}, accuracy {accuracy}, loss {loss}; {evaluation:?}");
    assert!(evaluation.count > 0);
    assert!((perplexity - evaluation.perplexity).abs() < 1e-3 * evaluation.perplexity);
    assert!((loss - evaluation.loss).abs() < 1e-4);
    assert!((accuracy - evaluation.accuracy.unwrap()).abs() < 1e-9);
    // Training metrics were logged for both epochs.
    assert!(logged(&dir, "train", 1, "Perplexity").is_finite());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ddp_on_devices_without_collectives_is_refused() {
    let _guard = lock();
    let device = device();
    let config =
        LearnerConfig::new(1, 4, Schedule::constant(1e-3)).with_parallelism(Parallelism::Ddp);
    let err = LearnerTrainer::new(config)
        .with_devices(vec![device.clone(), device.clone()])
        .fit(
            gpt(&device),
            &CausalLmTask::new(0),
            rows(),
            rows(),
            tmp("ddp"),
        )
        .unwrap_err();
    assert!(
        matches!(&err, TrainError::InvalidConfig(m) if m.contains("DDP") && m.contains("collective")),
        "{err}"
    );
}

/// Runs `f` and counts the panics raised meanwhile (on any thread). The tests calling it
/// hold `lock()`, so no other test of this file panics at the same time.
fn panics_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    PANICS.store(0, Ordering::SeqCst);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {
        PANICS.fetch_add(1, Ordering::SeqCst);
    }));
    let result = f();
    std::panic::set_hook(previous);
    (result, PANICS.load(Ordering::SeqCst))
}

/// Fits GPT on one-token rows (nothing to predict) through `trainer` and asserts the task's
/// failure comes back as a typed error without a panic anywhere (so it holds under
/// `panic = "abort"` too).
fn assert_short_rows_fail_without_panic(trainer: LearnerTrainer, device: &Device, dir: &str) {
    let short = vec![vec![1u32]; 4];
    let (result, panics) =
        panics_during(|| trainer.fit(gpt(device), &CausalLmTask::new(0), short, rows(), tmp(dir)));
    let err = result.unwrap_err();
    assert_eq!(panics, 0, "the failure went through a panic");
    assert!(
        matches!(&err, TrainError::Learner(m) if m.contains("at least 2 tokens")),
        "{err}"
    );
}

/// A task error under the Learner stops the run and comes back typed.
#[test]
fn a_failing_task_step_is_a_typed_error() {
    let _guard = lock();
    let device = device();
    let config = LearnerConfig::new(1, 2, Schedule::constant(1e-3));
    assert_short_rows_fail_without_panic(LearnerTrainer::new(config), &device, "failing");
}

/// Each replica reports to the one interrupter; the first failure comes back.
#[test]
fn a_failing_step_on_a_replica_is_a_typed_error() {
    let _guard = lock();
    let device = device();
    let config = LearnerConfig::new(1, 2, Schedule::constant(1e-3));
    let trainer = LearnerTrainer::new(config)
        .with_devices(vec![device.clone(), device.clone()])
        .quiet(true);
    assert_short_rows_fail_without_panic(trainer, &device, "failing-replica");
}

#[test]
fn bad_configs_are_refused_before_training() {
    let device = device();
    let fit = |config: LearnerConfig, train: Vec<Vec<u32>>, devices: usize| {
        LearnerTrainer::new(config)
            .with_devices(vec![device.clone(); devices])
            .fit(
                gpt(&device),
                &CausalLmTask::new(0),
                train,
                rows(),
                tmp("bad"),
            )
            .unwrap_err()
    };
    let ok = || LearnerConfig::new(1, 2, Schedule::constant(1e-3));
    for (err, what) in [
        (
            fit(LearnerConfig { epochs: 0, ..ok() }, rows(), 1),
            "epochs",
        ),
        (
            fit(
                LearnerConfig {
                    batch_size: 0,
                    ..ok()
                },
                rows(),
                1,
            ),
            "batch_size",
        ),
        (
            fit(ok().with_grad_accumulation(0), rows(), 1),
            "grad_accumulation",
        ),
        (
            fit(ok().with_max_grad_norm(f64::NAN), rows(), 1),
            "max_grad_norm",
        ),
        (fit(ok(), Vec::new(), 1), "at least one example"),
        (
            fit(ok(), rows()[..5].to_vec(), 3),
            "do not fill one step of 3 device(s)",
        ),
    ] {
        assert!(
            matches!(&err, TrainError::InvalidConfig(m) if m.contains(what)),
            "expected `{what}`: {err}"
        );
    }
}

/// Gradient accumulation: burn-train sums the gradients of the accumulated batches, lmforge
/// scales each batch's loss by 1 / accumulation, so two batches of 4 per step give the
/// trainer's step on the same two batches.
#[test]
fn accumulated_batches_give_the_trainers_steps() {
    let _guard = lock();
    let device = device();
    let start = gpt(&device);
    let schedule = Schedule::warmup_linear(0.5, 1);
    let optimizer = OptimizerConfig::sgd(0.9);
    let task = CausalLmTask::new(0);
    let config = LearnerConfig::new(1, 4, schedule.clone())
        .with_optimizer(optimizer.clone())
        .with_grad_accumulation(2);
    let dir = tmp("accumulation");
    let learned = LearnerTrainer::new(config)
        .quiet(true)
        .fit(start.clone(), &task, rows(), rows(), &dir)
        .unwrap();
    assert_eq!(learned.steps, 2);
    let trainer_config = TrainerConfig::new(2, schedule)
        .with_optimizer(optimizer)
        .with_grad_accumulation(2)
        .with_progress(TrainProgress::Silent);
    let trained = Trainer::new(trainer_config)
        .fit(
            start.clone(),
            &task,
            &Batches::new(rows(), 4).in_order(),
            None,
        )
        .unwrap()
        .model;
    let moved = max_abs_diff(&values(&trained), &values(&start));
    let diff = max_abs_diff(&values(&learned.model), &values(&trained));
    eprintln!("parameters moved by up to {moved}; Learner vs trainer: {diff}");
    assert!(moved > 1e-2, "training must move the parameters ({moved})");
    assert!(diff < 1e-5, "parameters differ by up to {diff}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A task whose constraint must run after every optimizer step.
#[derive(Clone, Debug)]
struct Constrained(CausalLmTask);

impl Task<Gpt> for Constrained {
    type Item = Vec<u32>;

    fn step(
        &self,
        model: &Gpt,
        items: &[Vec<u32>],
        context: &mut StepContext<'_>,
    ) -> Result<StepOutput, TaskError> {
        self.0.step(model, items, context)
    }

    fn constrain(&self, model: Gpt, _step: usize) -> Result<Gpt, TaskError> {
        Ok(model)
    }

    fn constrains(&self) -> bool {
        true
    }
}

#[test]
fn tasks_that_constrain_the_model_are_refused() {
    let device = device();
    let err = LearnerTrainer::new(LearnerConfig::new(1, 4, Schedule::constant(1e-3)))
        .fit(
            gpt(&device),
            &Constrained(CausalLmTask::new(0)),
            rows(),
            rows(),
            tmp("constrained"),
        )
        .unwrap_err();
    assert!(
        matches!(&err, TrainError::InvalidConfig(m) if m.contains("constrains the model")),
        "{err}"
    );
}

#[test]
fn schedule_lr_answers_the_trainers_rates_and_resumes_from_its_record() {
    let schedule = Schedule::warmup_cosine(1e-3, 3).with_final_lr(1e-5);
    let mut lr = ScheduleLr::new(schedule.clone(), 10, 0.5);
    for step in 0..4 {
        assert_eq!(lr.step(), 0.5 * schedule.lr(step, 10));
    }
    let record = lr.to_record();
    let mut resumed = ScheduleLr::new(schedule.clone(), 10, 0.5);
    resumed.load_record(record);
    assert_eq!(resumed.step(), 0.5 * schedule.lr(4, 10));
    assert_eq!(lr.step(), 0.5 * schedule.lr(4, 10));
}

#[test]
fn perplexity_and_accuracy_pool_the_sums_of_an_epoch() {
    let meta = MetricMetadata {
        progress: Progress::new(1, 2, None),
        iteration: Some(1),
        lr: None,
    };
    let batches = [
        LmStats {
            nll_sum: 6.0,
            count: 3,
            correct: Some(1),
        },
        LmStats {
            nll_sum: 1.0,
            count: 1,
            correct: Some(1),
        },
    ];
    let mut perplexity = LmPerplexity::new();
    let mut accuracy = LmAccuracy::new();
    for batch in &batches {
        perplexity.update(batch, &meta).unwrap();
        accuracy.update(batch, &meta).unwrap();
    }
    // exp((6 + 1) / (3 + 1)), not the mean of exp(2) and exp(1).
    let expected = (7.0f64 / 4.0).exp();
    assert!((perplexity.final_value().current() - expected).abs() < 1e-12);
    assert!((perplexity.value().unwrap().current() - 1.0f64.exp()).abs() < 1e-12);
    assert_eq!(accuracy.final_value().current(), 0.5);
    perplexity.clear();
    assert!(perplexity.final_value().current().is_infinite());
}
