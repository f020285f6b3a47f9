//! Before-and-after reports: parameters, bytes on disk and in memory, quality and forward
//! latency of each compressed variant of a model, as a Markdown table.

use std::path::Path;
use std::time::{Duration, Instant};

use burn::module::Module;
use serde::{Deserialize, Serialize};

use crate::paths::{HostTransform, Site, map_host};

/// One variant of the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    /// What was done (`float32`, `int8 per channel`, `50% magnitude`, ...).
    pub method: String,
    /// Number of parameters.
    pub parameters: usize,
    /// Number of parameters that are not exactly zero.
    pub nonzero: usize,
    /// Size of the saved model file.
    pub file_bytes: u64,
    /// The quality metric (perplexity, accuracy, ...).
    pub quality: f64,
    /// Median forward latency, milliseconds.
    pub latency_ms: f64,
    /// Resident memory the variant's weights take, measured ([`measure_resident`]) when the
    /// variant was built or loaded; `None` when not measured.
    #[serde(default)]
    pub weights_bytes: Option<u64>,
}

/// A table of variants; the first row is the baseline the others are compared with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Name of the quality metric, e.g. `validation perplexity`.
    pub quality_name: String,
    /// Whether a lower quality value is better (perplexity) or worse (accuracy).
    pub lower_is_better: bool,
    /// What the latency measures, e.g. `forward, batch 8 x 64 tokens, flex`.
    pub latency_setting: String,
    /// The variants, baseline first.
    pub rows: Vec<ReportRow>,
}

impl Report {
    /// An empty report.
    pub fn new(
        quality_name: impl Into<String>,
        lower_is_better: bool,
        latency_setting: impl Into<String>,
    ) -> Self {
        Self {
            quality_name: quality_name.into(),
            lower_is_better,
            latency_setting: latency_setting.into(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn push(&mut self, row: ReportRow) {
        self.rows.push(row);
    }

    /// The relative change of a row's quality against the baseline, signed so that positive
    /// is worse (`+0.8%` perplexity, or `+0.8%` accuracy lost).
    pub fn quality_loss(&self, row: &ReportRow) -> f64 {
        let base = self.rows.first().map_or(f64::NAN, |r| r.quality);
        let change = (row.quality - base) / base;
        if self.lower_is_better {
            change
        } else {
            -change
        }
    }

    /// The report as a Markdown table: each row's values and their ratio to the baseline.
    pub fn table(&self) -> String {
        let Some(base) = self.rows.first() else {
            return String::new();
        };
        let mut out = format!(
            "| method | parameters | non-zero | file | file vs base | weights in memory | memory vs base | {} | quality loss | latency (ms) | speed-up |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            self.quality_name
        );
        for row in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} ({:.0}%) | {} | {:.3}x | {} | {} | {:.4} | {:+.2}% | {:.2} | {:.2}x |\n",
                row.method,
                row.parameters,
                row.nonzero,
                100.0 * row.nonzero as f64 / row.parameters.max(1) as f64,
                human_bytes(row.file_bytes),
                row.file_bytes as f64 / base.file_bytes.max(1) as f64,
                row.weights_bytes.map_or("-".into(), human_bytes),
                match (row.weights_bytes, base.weights_bytes) {
                    (Some(w), Some(b)) if b > 0 => format!("{:.3}x", w as f64 / b as f64),
                    _ => "-".into(),
                },
                row.quality,
                100.0 * self.quality_loss(row),
                row.latency_ms,
                base.latency_ms / row.latency_ms,
            ));
        }
        out.push_str(&format!("\nlatency: {}\n", self.latency_setting));
        out
    }
}

/// The process's resident memory in bytes (Linux `VmRSS`), after returning freed heap memory
/// to the system where the allocator allows it (glibc's `malloc_trim`); `None` elsewhere.
pub fn resident_bytes() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        #[cfg(target_env = "gnu")]
        {
            unsafe extern "C" {
                fn malloc_trim(pad: usize) -> i32;
            }
            // SAFETY: glibc's malloc_trim only releases free memory; any argument is valid.
            unsafe {
                malloc_trim(0);
            }
        }
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
    #[cfg(not(target_os = "linux"))]
    None
}

/// Initializes every parameter of `model` that is not yet: burn creates a parameter's values
/// lazily, at its first use, so a model's memory is measured after this.
pub fn initialize_parameters<M: Module>(model: &M) {
    struct Touch;
    impl burn::module::ModuleVisitor for Touch {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            let _ = param.val();
        }
    }
    model.visit(&mut Touch);
}

/// Runs `f` and returns its result with the growth of the process's resident memory over the
/// call ([`resident_bytes`] after minus before, at least 0): for a call that builds or loads a
/// model (and [initializes](initialize_parameters) its parameters), the memory the model
/// holds (what `f` frees before returning is not counted).
pub fn measure_resident<T>(f: impl FnOnce() -> T) -> (T, Option<u64>) {
    let before = resident_bytes();
    let out = f();
    let after = resident_bytes();
    (out, after.zip(before).map(|(a, b)| a.saturating_sub(b)))
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Number of float parameters of `model` that are not exactly zero.
pub fn nonzero_parameters<M: Module>(model: &M) -> usize {
    struct Count(usize);
    impl HostTransform for Count {
        fn select(&mut self, _: &Site) -> bool {
            true
        }
        fn transform(&mut self, _: &Site, values: Vec<f32>) -> Vec<f32> {
            self.0 += values.iter().filter(|&&v| v != 0.0).count();
            values
        }
    }
    let mut count = Count(0);
    let _ = map_host(model.clone(), &mut count);
    count.0
}

/// Size of a file in bytes (0 when it cannot be read).
pub fn file_bytes(path: impl AsRef<Path>) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Median wall time of `run` over `repeats` calls, after `warmup` calls that are not timed.
/// `run` must wait for its result (read it back from the device), or only the launch is
/// timed.
pub fn median_latency(warmup: usize, repeats: usize, mut run: impl FnMut()) -> Duration {
    for _ in 0..warmup {
        run();
    }
    let mut times: Vec<Duration> = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// Median wall time of `run` on each of `items`: one untimed call each, then `repeats` timed
/// rounds over all items in turn, so that a busy machine slows every item alike. `run` must
/// wait for its result (read it back from the device).
pub fn interleaved_latencies<T>(
    items: &[T],
    repeats: usize,
    mut run: impl FnMut(&T),
) -> Vec<Duration> {
    items.iter().for_each(&mut run);
    let mut times = vec![Vec::with_capacity(repeats); items.len()];
    for _ in 0..repeats.max(1) {
        for (item, times) in items.iter().zip(&mut times) {
            let start = Instant::now();
            run(item);
            times.push(start.elapsed());
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort();
            t[t.len() / 2]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each item runs once untimed and then once per round; a slower item has the larger
    /// median.
    #[test]
    fn interleaved_latencies_time_every_item_in_turn() {
        let mut calls = Vec::new();
        let times = interleaved_latencies(&[0u64, 3], 4, |&ms| {
            calls.push(ms);
            std::thread::sleep(Duration::from_millis(ms));
        });
        assert_eq!(calls, vec![0, 3, 0, 3, 0, 3, 0, 3, 0, 3]);
        assert!(times[1] >= Duration::from_millis(3) && times[0] < times[1]);
    }

    #[test]
    fn table_compares_with_the_first_row() {
        let mut report = Report::new("perplexity", true, "test");
        let row = |method: &str, file_bytes, quality, latency_ms| ReportRow {
            method: method.into(),
            parameters: 100,
            nonzero: 50,
            file_bytes,
            quality,
            latency_ms,
            weights_bytes: Some(file_bytes),
        };
        report.push(row("float32", 4000, 2.0, 10.0));
        report.push(row("int8", 1000, 2.02, 5.0));
        let table = report.table();
        assert!(
            table.contains(
                "| int8 | 100 | 50 (50%) | 1000 B | 0.250x | 1000 B | 0.250x | 2.0200 | +1.00% | 5.00 | 2.00x |"
            ),
            "{table}"
        );
        assert!((report.quality_loss(&report.rows[1]) - 0.01).abs() < 1e-12);
        let mut accuracy = Report::new("accuracy", false, "test");
        accuracy.push(row("float32", 1, 0.9, 1.0));
        accuracy.push(row("pruned", 1, 0.81, 1.0));
        assert!((accuracy.quality_loss(&accuracy.rows[1]) - 0.1).abs() < 1e-12);
    }
}
