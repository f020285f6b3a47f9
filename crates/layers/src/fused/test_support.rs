//! What the fused kernels' tests share: the flex device, tensor values, the largest difference.

use burn::tensor::{Device, Tensor};
use lmforge_device::Backend;
use lmforge_device::testing::test_devices;

/// Why a fused-kernel test fails without flex: the kernels run only there, so a test run
/// that leaves flex out (`LMFORGE_TEST_DEVICES` without it) must not pass them silently.
pub(crate) const FLEX_REQUIRED: &str =
    "the fused kernels are tested on flex: LMFORGE_TEST_DEVICES must include flex";

/// The flex test device, when this build tests on flex.
pub(crate) fn flex_device() -> Option<Device> {
    test_devices()
        .iter()
        .find(|d| d.backend == Backend::Flex)
        .map(|d| d.device.clone())
}

/// A tensor's values, row-major.
pub(crate) fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor.into_data().try_to_vec::<f32>().expect("f32 values")
}

/// The largest elementwise `|a - b|`.
///
/// # Panics
/// When the lengths differ.
pub(crate) fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared outputs differ in length");
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}
