//! HuggingFace `config.json` import: a fuzzed config beside a valid `model.safetensors` of a
//! tiny BERT (first input byte even) or GPT-2 (odd). Any input must give a model or a typed
//! `ModelError`, never a panic or an allocation the weights file does not back.

#![no_main]

#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lmforge::models::Pretrained;
use lmforge::models::bert::{BertConfig, BertForMaskedLm};
use lmforge::models::gpt::{Gpt, GptConfig};

/// Folders holding a valid tiny BERT and GPT-2 checkpoint; their config.json is overwritten
/// by each input.
fn folders() -> &'static (PathBuf, PathBuf) {
    static FOLDERS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    FOLDERS.get_or_init(|| {
        let device = common::device();
        let bert = common::scratch("config-bert");
        BertConfig::tiny(40)
            .init_masked_lm(&device)
            .expect("bert")
            .save_pretrained(&bert)
            .expect("save bert");
        let gpt = common::scratch("config-gpt");
        GptConfig::tiny(40)
            .init(&device)
            .expect("gpt")
            .save_pretrained(&gpt)
            .expect("save gpt");
        (bert, gpt)
    })
}

fuzz_target!(
    init: {
        let (bert, gpt) = folders();
        let mut seed = vec![0u8];
        seed.extend(std::fs::read(bert.join("config.json")).expect("config"));
        common::write_seed("bert", &seed);
        let mut seed = vec![1u8];
        seed.extend(std::fs::read(gpt.join("config.json")).expect("config"));
        common::write_seed("gpt", &seed);
    },
    |data: &[u8]| {
        let Some((&kind, config)) = data.split_first() else { return };
        let (bert, gpt) = folders();
        let device = common::device();
        if kind % 2 == 0 {
            std::fs::write(bert.join("config.json"), config).expect("write");
            let _ = BertForMaskedLm::from_pretrained(bert, &device);
        } else {
            std::fs::write(gpt.join("config.json"), config).expect("write");
            let _ = Gpt::from_pretrained(gpt, &device);
        }
    }
);
