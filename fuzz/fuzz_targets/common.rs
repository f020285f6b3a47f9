//! Shared by the fuzz targets: a scratch folder per process, and the valid seed input each
//! target writes into its corpus folder at start (so a fresh `cargo fuzz run` begins from a
//! real file rather than from nothing).

#![allow(dead_code)]

use std::path::PathBuf;

/// A scratch folder for this process's files.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lmforge-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// Writes `bytes` as `seed-<name>` into the corpus folder libFuzzer was given (its first
/// folder argument), unless that file exists.
pub fn write_seed(name: &str, bytes: &[u8]) {
    let corpus = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(PathBuf::from)
        .find(|p| p.is_dir());
    if let Some(dir) = corpus {
        let path = dir.join(format!("seed-{name}"));
        if !path.exists() {
            std::fs::write(path, bytes).expect("seed");
        }
    }
}

/// The flex device.
pub fn device() -> lmforge::burn::tensor::Device {
    lmforge::device::device("flex").expect("flex")
}
