//! Training checkpoints (`checkpoint.lmf`): a fuzzed file loaded into a tiny GPT with
//! `load_checkpoint_model`. Any input must give a model or a typed `TrainError`, never a
//! panic.

#![no_main]

#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lmforge::models::gpt::Gpt;
use lmforge::training::tasks::CausalLmTask;
use lmforge::training::{
    Batches, Progress, Schedule, Trainer, TrainerConfig, load_checkpoint_model,
};

fn model() -> Gpt {
    common::tiny_gpt()
        .init(&common::device().autodiff())
        .expect("gpt")
}

/// The tiny model the inputs load into, and the file they are written to.
fn state() -> &'static (Gpt, PathBuf) {
    static STATE: OnceLock<(Gpt, PathBuf)> = OnceLock::new();
    STATE.get_or_init(|| (model(), common::scratch("checkpoint").join("input.lmf")))
}

/// A real checkpoint: two training steps of the tiny model.
fn seed() -> Vec<u8> {
    let dir = common::scratch("checkpoint-seed");
    let rows: Vec<Vec<u32>> = (0..8)
        .map(|i| (0..6).map(|t| (i + t) % 12).collect())
        .collect();
    let config = TrainerConfig::new(2, Schedule::constant(1e-3))
        .with_checkpoint_every(2)
        .with_progress(Progress::Silent);
    Trainer::new(config)
        .with_output_dir(&dir)
        .fit(model(), &CausalLmTask::new(0), &Batches::new(rows, 4), None)
        .expect("train");
    std::fs::read(dir.join("checkpoint.lmf")).expect("checkpoint")
}

fuzz_target!(
    init: {
        common::write_seed("gpt", &seed());
    },
    |data: &[u8]| {
        let (model, path) = state();
        std::fs::write(path, data).expect("write");
        let _ = load_checkpoint_model(model.clone(), path);
    }
);
