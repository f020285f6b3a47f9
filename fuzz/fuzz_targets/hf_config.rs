//! HuggingFace `config.json` import: a fuzzed config beside a valid `model.safetensors` of a
//! tiny BERT (first input byte even) or GPT-2 (odd). Any input must give a model or a typed
//! `ModelError`, never a panic or an allocation the weights file does not back.

#![no_main]

#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn folders() -> &'static (PathBuf, PathBuf) {
    static FOLDERS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    FOLDERS.get_or_init(|| common::hf_folders("config"))
}

fuzz_target!(
    init: {
        common::seed_hf("config.json", folders());
    },
    |data: &[u8]| {
        common::load_hf(data, "config.json", folders());
    }
);
