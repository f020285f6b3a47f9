//! Helpers the training test binaries share.

use std::sync::Mutex;

use burn::tensor::Device;

/// The device's random generator is global and the trainers reseed it: tests that train take
/// this lock and run one at a time.
static DEVICE_RNG: Mutex<()> = Mutex::new(());

/// Takes the training lock (a panicking test does not poison it for the others).
pub fn lock() -> std::sync::MutexGuard<'static, ()> {
    DEVICE_RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// The reference test device, with autodiff.
pub fn device() -> Device {
    lmforge_device::testing::reference_device()
        .clone()
        .autodiff()
}

/// A fresh, empty folder for `name`, unique to this process.
pub fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lmforge-training-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
