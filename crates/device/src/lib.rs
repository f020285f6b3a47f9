//! Device selection for lmforge: which burn backend a program or test runs on.
//!
//! burn 0.22 picks the backend at run time from the [`Device`](burn::tensor::Device) a
//! tensor lives on, so lmforge's library crates never name a backend. Programs choose one here,
//! by name (`flex`, `ndarray`, `wgpu`, `wgpu:vulkan`, `wgpu:gl`, `cpu`) or through the
//! `LMFORGE_DEVICE` environment variable, and get a typed [`DeviceError`] (never a panic) when
//! the backend is not compiled in or no graphics adapter can be found.
//!
//! Which backends exist in a build is decided by this crate's cargo features, forwarded by the
//! `lmforge` facade: `flex` (the default CPU backend), `ndarray`, `wgpu`, plus `fusion` and
//! `autotune` for the GPU backends. This crate's `cpu` feature (burn's CubeCL LLVM backend) is
//! not forwarded: its build downloads LLVM, so it is neither built nor tested offline. With the `testing` feature, the `testing` module offers the
//! backend-parity harness every lmforge crate's tests use.
//!
//! ```
//! use lmforge_device::{Backend, DeviceError, device};
//!
//! // The default build has flex; an unknown name is an error that lists the valid ones.
//! let cpu = device("flex")?;
//! let err = device("tpu").unwrap_err();
//! assert!(matches!(err, DeviceError::Unknown { .. }));
//! assert!(Backend::compiled().contains(&Backend::Flex));
//! # Ok::<(), DeviceError>(())
//! ```
//!
//! A training program turns autodiff on with `device.autodiff()`.

#[cfg(feature = "testing")]
mod fixture;
mod select;
#[cfg(feature = "testing")]
pub mod testing;

pub use select::{
    Backend, DEVICE_ENV, DeviceError, GraphicsApi, SelectedDevice, device, device_from_env, select,
    select_from_env, select_named,
};
