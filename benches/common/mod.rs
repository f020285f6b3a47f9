//! Timing shared by the benchmark binaries.

use std::time::Instant;

use burn::tensor::Device;

/// Median and best seconds of `repeats` runs of `f`, after two warm-up runs, waiting for the
/// device to finish each run before stopping the clock.
pub fn time(device: &Device, repeats: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..2 {
        f();
    }
    device.sync().expect("device sync");
    let mut seconds: Vec<f64> = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            f();
            device.sync().expect("device sync");
            start.elapsed().as_secs_f64()
        })
        .collect();
    seconds.sort_by(f64::total_cmp);
    (seconds[repeats / 2], seconds[0])
}
