//! Test harness for backend parity: the devices a test runs on, and an assertion that runs one
//! closure on each of them and compares outputs and gradients.
//!
//! Every lmforge crate's tests use it through a dev-dependency on `lmforge-device` with the
//! `testing` feature. Which devices take part is decided by the cargo features of the build
//! (`flex`, `ndarray`, `wgpu`, ...), optionally narrowed by `LMFORGE_TEST_DEVICES`. A backend
//! that is compiled in but cannot start (wgpu without an adapter) fails the test: it is never
//! skipped silently.
//!
//! ```
//! use burn::tensor::{Tensor, TensorData};
//! use lmforge_device::testing::{assert_parity, Outputs, Tolerance};
//!
//! assert_parity(Tolerance::absolute(1e-5), |device| {
//!     let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, -2.0, 3.0, 0.5], [2, 2]), device)
//!         .require_grad();
//!     let y = burn::tensor::activation::softmax(x.clone(), 1);
//!     let grads = (y.clone() * y.clone()).sum().backward();
//!     Outputs::new().float("y", y).float("dx", x.grad(&grads).unwrap())
//! });
//! ```

use std::fmt;
use std::sync::OnceLock;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Gradients, Int, Tensor, TensorData};

pub use crate::fixture::Fixture;
use crate::select::{Backend, SelectedDevice, select};

/// Environment variable that narrows the test devices: a comma-separated list of backend
/// names (e.g. `flex,wgpu`). Unset: every backend compiled into the build.
pub const TEST_DEVICES_ENV: &str = "LMFORGE_TEST_DEVICES";

/// Every device the tests of this build run on, host devices first.
///
/// The list is computed once per test binary and printed to standard error, past the test
/// harness's capture, so every test log shows the devices (and the wgpu adapter) used.
///
/// # Panics
/// When a requested backend is unknown, not compiled in, or cannot start (e.g. wgpu with no
/// adapter): a parity test must fail rather than skip a backend it was built for.
pub fn test_devices() -> &'static [SelectedDevice] {
    static DEVICES: OnceLock<Vec<SelectedDevice>> = OnceLock::new();
    DEVICES.get_or_init(|| {
        let backends: Vec<Backend> = match std::env::var(TEST_DEVICES_ENV) {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .map(|name| {
                    name.parse()
                        .unwrap_or_else(|e| panic!("{TEST_DEVICES_ENV}: {e}"))
                })
                .collect(),
            _ => Backend::compiled(),
        };
        assert!(
            !backends.is_empty(),
            "no burn backend compiled in: enable the feature `flex`, `ndarray` or `wgpu`"
        );
        let devices: Vec<SelectedDevice> = backends
            .into_iter()
            .map(|backend| {
                select(backend).unwrap_or_else(|e| {
                    panic!(
                        "test device `{backend}` is unavailable: {e}\n(set {TEST_DEVICES_ENV} \
                         to choose the devices explicitly)"
                    )
                })
            })
            .collect();
        let names: Vec<String> = devices.iter().map(ToString::to_string).collect();
        // Written past the test harness's output capture, so every test log names its devices.
        let line = format!("lmforge test devices: {}\n", names.join("; "));
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        devices
    })
}

/// The first test device (a host CPU device in every build that has one): where parity tests
/// initialise parameters before moving them to the other devices, so every device starts from
/// the same numbers.
pub fn reference_device() -> &'static Device {
    &test_devices()[0].device
}

/// A copy of `module` on `device`, ready to train: parameters tracked by autodiff (when the
/// device has it) and requiring gradients, with their own graph.
///
/// Parity tests build a module once on [`reference_device`] (a plain device, where nothing is
/// tracked) and call this inside the [`assert_parity`] closure.
pub fn to_test_device<M: Module>(module: &M, device: &Device) -> M {
    module.clone().train().fork(device)
}

/// Comparison bound for [`assert_parity`]: `|a - b| <= abs + rel * |b|` elementwise.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Relative part of the bound.
    pub rel: f64,
    /// Absolute part of the bound.
    pub abs: f64,
}

impl Tolerance {
    /// A purely absolute bound.
    pub fn absolute(abs: f64) -> Self {
        Self { rel: 0.0, abs }
    }

    /// A combined relative and absolute bound.
    pub fn rel_abs(rel: f64, abs: f64) -> Self {
        Self { rel, abs }
    }

    fn allows(&self, actual: f64, expected: f64) -> bool {
        // NaN never compares equal, infinities must match exactly.
        if actual == expected {
            return true;
        }
        (actual - expected).abs() <= self.abs + self.rel * expected.abs()
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "|a - b| <= {:e} + {:e} * |b|", self.abs, self.rel)
    }
}

/// One named tensor read back to the host.
#[derive(Clone, Debug)]
pub struct Output {
    /// Name given when recording (a parameter path for gradients).
    pub name: String,
    /// Shape of the tensor.
    pub shape: Vec<usize>,
    /// Values, converted to `f64`.
    pub values: Vec<f64>,
}

/// Named tensors produced by one run of a parity closure: forward outputs and gradients.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    entries: Vec<Output>,
}

impl Outputs {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a float tensor under `name`.
    pub fn float<const D: usize>(self, name: impl Into<String>, tensor: Tensor<D>) -> Self {
        self.data(name, tensor.into_data())
    }

    /// Records an integer tensor under `name`.
    pub fn int<const D: usize>(self, name: impl Into<String>, tensor: Tensor<D, Int>) -> Self {
        self.data(name, tensor.into_data())
    }

    /// Records host data under `name`.
    pub fn data(mut self, name: impl Into<String>, data: TensorData) -> Self {
        let name = name.into();
        let shape = data.shape().to_vec();
        let values = data
            .try_into_vec_as::<f64>()
            .unwrap_or_else(|e| panic!("output `{name}`: cannot read values: {e:?}"));
        self.entries.push(Output {
            name,
            shape,
            values,
        });
        self
    }

    /// Records the gradient of every float parameter of `module`, named `prefix.path.to.param`.
    ///
    /// # Panics
    /// When a parameter that requires a gradient has none in `grads` (the backward pass did not
    /// reach it).
    pub fn grads<M: Module>(mut self, prefix: &str, module: &M, grads: &Gradients) -> Self {
        let mut visitor = GradVisitor {
            path: vec![prefix.to_string()],
            grads,
            found: Vec::new(),
        };
        module.visit(&mut visitor);
        for (name, data) in visitor.found {
            self = self.data(name, data);
        }
        self
    }

    /// The recorded tensors, in recording order.
    pub fn entries(&self) -> &[Output] {
        &self.entries
    }

    /// The tensor recorded under `name`.
    pub fn get(&self, name: &str) -> Option<&Output> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Compares `self` (from `device`) with `reference` (from `reference_device`) and returns a
    /// description of every mismatch, empty when all entries agree within `tolerance`.
    pub fn mismatches(
        &self,
        reference: &Outputs,
        tolerance: Tolerance,
        device: &str,
        reference_device: &str,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let names = |o: &Outputs| o.entries.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
        if names(self) != names(reference) {
            problems.push(format!(
                "recorded names differ: {device} {:?} vs {reference_device} {:?}",
                names(self),
                names(reference)
            ));
            return problems;
        }
        for (got, want) in self.entries.iter().zip(&reference.entries) {
            if got.shape != want.shape {
                problems.push(format!(
                    "`{}`: shape {:?} on {device} vs {:?} on {reference_device}",
                    got.name, got.shape, want.shape
                ));
                continue;
            }
            let bad: Vec<usize> = (0..got.values.len())
                .filter(|&i| !tolerance.allows(got.values[i], want.values[i]))
                .collect();
            if let Some(&worst) = bad.iter().max_by(|&&a, &&b| {
                let da = (got.values[a] - want.values[a]).abs();
                let db = (got.values[b] - want.values[b]).abs();
                da.total_cmp(&db)
            }) {
                problems.push(format!(
                    "`{}`: {} of {} values outside {tolerance}; worst at flat index {worst}: \
                     {} on {device} vs {} on {reference_device}",
                    got.name,
                    bad.len(),
                    got.values.len(),
                    got.values[worst],
                    want.values[worst]
                ));
            }
        }
        problems
    }
}

struct GradVisitor<'a> {
    path: Vec<String>,
    grads: &'a Gradients,
    found: Vec<(String, TensorData)>,
}

impl ModuleVisitor for GradVisitor<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let name = self.path.join(".");
        if !param.is_require_grad() {
            return;
        }
        let grad = param
            .grad(self.grads)
            .unwrap_or_else(|| panic!("parameter `{name}` received no gradient"));
        self.found.push((name, grad.into_data()));
    }
}

/// The environment variable that sets how many devices [`assert_parity`] must compare (CI sets
/// it to the number of backends it builds, so a parity test cannot silently run on one).
pub const MIN_DEVICES_ENV: &str = "LMFORGE_PARITY_MIN_DEVICES";

/// The minimum number of devices from [`MIN_DEVICES_ENV`] (1 when unset or unreadable).
fn min_parity_devices() -> usize {
    std::env::var(MIN_DEVICES_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1)
}

/// Runs `run` on every [`test_devices`] entry, with autodiff enabled, and asserts that every
/// recorded output and gradient equals the first device's within `tolerance`.
///
/// The closure must build its inputs from host data (`TensorData`) and initialise modules on
/// [`reference_device`] before moving them with [`to_test_device`], since random streams differ
/// between backends. Returns the reference device's outputs, for further checks.
///
/// # Panics
/// On any mismatch, listing each differing output with its worst element; when fewer devices
/// take part than [`MIN_DEVICES_ENV`] asks for.
pub fn assert_parity<F>(tolerance: Tolerance, run: F) -> Outputs
where
    F: Fn(&Device) -> Outputs,
{
    let devices = test_devices();
    let required = min_parity_devices();
    assert!(
        devices.len() >= required,
        "backend parity ran on {} device(s) ({}), and {MIN_DEVICES_ENV} requires {required}: \
         a parity test that compares nothing must not pass",
        devices.len(),
        devices
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let reference_name = devices[0].to_string();
    let reference = run(&devices[0].device.clone().autodiff());
    assert!(
        !reference.entries.is_empty(),
        "the parity closure recorded no outputs: nothing would be compared"
    );
    let mut problems = Vec::new();
    for other in &devices[1..] {
        let outputs = run(&other.device.clone().autodiff());
        problems.extend(outputs.mismatches(
            &reference,
            tolerance,
            &other.to_string(),
            &reference_name,
        ));
    }
    assert!(
        problems.is_empty(),
        "backend parity failed:\n  {}",
        problems.join("\n  ")
    );
    if devices.len() == 1 {
        eprintln!("parity: only {reference_name} is enabled; nothing to compare against");
    }
    reference
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(values: Vec<f32>) -> Outputs {
        let n = values.len();
        Outputs::new().data("x", TensorData::new(values, [n]))
    }

    #[test]
    fn tolerance_is_relative_plus_absolute() {
        let t = Tolerance::rel_abs(1e-3, 1e-6);
        assert!(t.allows(1000.5, 1000.0));
        assert!(!t.allows(1001.5, 1000.0));
        assert!(t.allows(1e-7, 0.0));
        assert!(!t.allows(1e-5, 0.0));
        assert!(!t.allows(f64::NAN, f64::NAN));
        assert!(t.allows(f64::INFINITY, f64::INFINITY));
    }

    #[test]
    fn mismatches_name_the_output_and_worst_element() {
        let a = record(vec![1.0, 2.0, 3.0]);
        let b = record(vec![1.0, 2.5, 3.1]);
        let problems = b.mismatches(&a, Tolerance::absolute(0.01), "B", "A");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("`x`: 2 of 3"), "{}", problems[0]);
        assert!(problems[0].contains("flat index 1"), "{}", problems[0]);
        assert!(
            b.mismatches(&a, Tolerance::absolute(0.6), "B", "A")
                .is_empty()
        );
    }

    #[test]
    fn shape_and_name_differences_are_reported() {
        let a = record(vec![1.0, 2.0]);
        let b = Outputs::new().data("x", TensorData::new(vec![1.0f32, 2.0], [1, 2]));
        assert!(b.mismatches(&a, Tolerance::absolute(1.0), "B", "A")[0].contains("shape"));
        let c = Outputs::new().data("y", TensorData::new(vec![1.0f32, 2.0], [2]));
        assert!(c.mismatches(&a, Tolerance::absolute(1.0), "B", "A")[0].contains("names"));
    }

    #[test]
    fn grads_cover_every_parameter_and_fail_when_one_is_missing() {
        use burn::nn::LinearConfig;
        let device = reference_device().clone().autodiff();
        let linear = LinearConfig::new(3, 2).init(&device);
        let x = Tensor::<2>::ones([4, 3], &device);
        let grads = linear.forward(x).sum().backward();
        let outputs = Outputs::new().grads("lin", &linear, &grads);
        let names: Vec<_> = outputs.entries().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["lin.weight", "lin.bias"]);
        // d(sum(xW + b))/db = batch size for every output unit.
        assert_eq!(outputs.get("lin.bias").unwrap().values, [4.0, 4.0]);

        let other = LinearConfig::new(3, 2).init(&device);
        let missing = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Outputs::new().grads("other", &other, &grads)
        }));
        assert!(
            missing.is_err(),
            "a parameter outside the graph must be reported"
        );
    }
}
