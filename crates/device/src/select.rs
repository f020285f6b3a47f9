//! Turning a backend name (or `LMFORGE_DEVICE`) into a burn [`Device`].

#[cfg(feature = "wgpu")]
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
#[cfg(feature = "wgpu")]
use std::sync::{Mutex, OnceLock};

use burn::tensor::Device;

/// Environment variable read by [`device_from_env`]: a backend name such as `flex` or `wgpu`.
pub const DEVICE_ENV: &str = "LMFORGE_DEVICE";

/// A burn backend lmforge knows how to select by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// burn's pure-Rust CPU backend (`burn-flex`), SIMD kernels and rayon threads.
    Flex,
    /// burn's ndarray CPU backend (deprecated upstream, kept for comparison).
    Ndarray,
    /// burn's wgpu backend on one graphics API (or the one wgpu picks).
    Wgpu(GraphicsApi),
    /// burn's CubeCL CPU backend (LLVM; its build downloads LLVM, so it does not build offline).
    Cpu,
}

/// Graphics API for the [`Backend::Wgpu`] backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum GraphicsApi {
    /// Whichever API wgpu finds with an adapter (Vulkan, then DX12, then GL on Linux).
    #[default]
    Auto,
    /// Vulkan only.
    Vulkan,
    /// OpenGL (EGL) only.
    Gl,
    /// Metal only.
    Metal,
    /// DirectX 12 only.
    Dx12,
}

impl Backend {
    /// Every backend lmforge can name, compiled in or not: host backends first.
    pub const ALL: [Backend; 8] = [
        Backend::Flex,
        Backend::Ndarray,
        Backend::Cpu,
        Backend::Wgpu(GraphicsApi::Auto),
        Backend::Wgpu(GraphicsApi::Vulkan),
        Backend::Wgpu(GraphicsApi::Gl),
        Backend::Wgpu(GraphicsApi::Metal),
        Backend::Wgpu(GraphicsApi::Dx12),
    ];

    /// The name accepted by [`device`] and `LMFORGE_DEVICE`, e.g. `flex` or `wgpu:vulkan`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
            Backend::Wgpu(GraphicsApi::Auto) => "wgpu",
            Backend::Wgpu(GraphicsApi::Vulkan) => "wgpu:vulkan",
            Backend::Wgpu(GraphicsApi::Gl) => "wgpu:gl",
            Backend::Wgpu(GraphicsApi::Metal) => "wgpu:metal",
            Backend::Wgpu(GraphicsApi::Dx12) => "wgpu:dx12",
            Backend::Cpu => "cpu",
        }
    }

    /// The cargo feature of the `lmforge` package that compiles it in (the same name on
    /// `lmforge-device`). burn's `cpu` backend has no facade feature (its build downloads LLVM,
    /// see docs/backends.md): it is named through the device crate, `lmforge-device/cpu`.
    pub fn feature(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
            Backend::Wgpu(_) => "wgpu",
            Backend::Cpu => "lmforge-device/cpu",
        }
    }

    /// Whether this build contains the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            Backend::Flex => cfg!(feature = "flex"),
            Backend::Ndarray => cfg!(feature = "ndarray"),
            Backend::Wgpu(_) => cfg!(feature = "wgpu"),
            Backend::Cpu => cfg!(feature = "cpu"),
        }
    }

    /// Whether the backend runs on the host CPU (as opposed to a graphics adapter).
    pub fn is_host(self) -> bool {
        matches!(self, Backend::Flex | Backend::Ndarray | Backend::Cpu)
    }

    /// The backends compiled into this build, host backends first.
    ///
    /// Only the automatic-API form of wgpu is listed (`wgpu`, not `wgpu:vulkan` ...).
    pub fn compiled() -> Vec<Backend> {
        Backend::ALL
            .into_iter()
            .filter(|b| b.is_compiled())
            .filter(|b| !matches!(b, Backend::Wgpu(api) if *api != GraphicsApi::Auto))
            .collect()
    }

    /// The default backend of this build: `flex` when compiled in (the fastest CPU backend
    /// measured, see `docs/backends.md`), else the first compiled backend in [`Backend::ALL`].
    pub fn default_compiled() -> Option<Backend> {
        Backend::compiled().into_iter().next()
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = DeviceError;

    /// Parses a backend name, ignoring case and surrounding spaces.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let wanted = name.trim().to_ascii_lowercase();
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == wanted)
            .ok_or_else(|| DeviceError::Unknown {
                name: name.to_string(),
                choices: choices(),
            })
    }
}

/// What can go wrong when choosing a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The name matches no backend lmforge knows.
    #[error("unknown device `{name}`; valid choices: {choices}")]
    Unknown {
        /// The name as given.
        name: String,
        /// The valid names, with the ones not compiled into this build marked.
        choices: String,
    },
    /// The backend exists but this build was compiled without it.
    #[error(
        "device `{name}` is not compiled into this build; rebuild with the cargo feature \
         `{feature}` (e.g. `--features {feature}`); compiled in: {compiled}"
    )]
    NotCompiled {
        /// The requested backend's name.
        name: String,
        /// The cargo feature that would compile it in.
        feature: String,
        /// The backends this build has.
        compiled: String,
    },
    /// wgpu is compiled in but no adapter could be acquired on the requested graphics API.
    #[error(
        "device `{name}`: no graphics adapter could be initialised ({reason}); on a machine \
         without a GPU install a software driver (Debian: `apt-get install mesa-vulkan-drivers`)"
    )]
    NoAdapter {
        /// The requested backend's name.
        name: String,
        /// The error reported by wgpu.
        reason: String,
    },
    /// The build contains no backend at all.
    #[error(
        "no burn backend is compiled into this build; enable one of the cargo features \
         `flex`, `ndarray` or `wgpu`"
    )]
    NoBackend,
}

/// A selected device with what is known about it.
#[derive(Clone, Debug)]
pub struct SelectedDevice {
    /// The backend that was chosen.
    pub backend: Backend,
    /// The burn device (without autodiff; call `.autodiff()` to train on it).
    pub device: Device,
    /// A human-readable description: the adapter name and graphics API for wgpu, the CPU
    /// backend otherwise.
    pub description: String,
}

impl fmt::Display for SelectedDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.backend, self.description)
    }
}

/// The list of names shown in error messages, marking those this build lacks.
fn choices() -> String {
    Backend::ALL
        .into_iter()
        .map(|b| {
            if b.is_compiled() {
                b.name().to_string()
            } else {
                format!("{} (not compiled)", b.name())
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn compiled_names() -> String {
    let names: Vec<_> = Backend::compiled().into_iter().map(Backend::name).collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Returns the device for a backend name: `flex`, `ndarray`, `wgpu` (or `wgpu:vulkan`,
/// `wgpu:gl`, `wgpu:metal`, `wgpu:dx12` to pin the graphics API) or `cpu`.
///
/// A wgpu device is initialised eagerly, so a machine without an adapter gives
/// [`DeviceError::NoAdapter`] here instead of a panic at the first tensor operation. Asking
/// twice for the same name returns the same device.
///
/// # Errors
/// [`DeviceError::Unknown`] for a name that is not a backend, [`DeviceError::NotCompiled`]
/// when the backend's cargo feature is off, [`DeviceError::NoAdapter`] when wgpu finds no
/// adapter.
pub fn device(name: &str) -> Result<Device, DeviceError> {
    select(name.parse()?).map(|selected| selected.device)
}

/// Returns the device named by `LMFORGE_DEVICE`, or [`Backend::default_compiled`] when the
/// variable is unset or empty.
///
/// # Errors
/// As [`device`]; [`DeviceError::NoBackend`] when the build has no backend at all.
pub fn device_from_env() -> Result<Device, DeviceError> {
    select_from_env().map(|selected| selected.device)
}

/// Like [`device_from_env`], also returning the backend and a description of the device.
///
/// # Errors
/// As [`device_from_env`].
pub fn select_from_env() -> Result<SelectedDevice, DeviceError> {
    select_named(std::env::var(DEVICE_ENV).ok().as_deref())
}

/// Selects a device by an optional name: `Some(name)` as [`device`]; `None` or an empty name
/// picks `LMFORGE_DEVICE`'s value if set, else the build's default backend. This is what a
/// `--device` command-line flag maps to.
///
/// # Errors
/// As [`device`]; [`DeviceError::NoBackend`] when the build has no backend at all.
pub fn select_named(name: Option<&str>) -> Result<SelectedDevice, DeviceError> {
    let name = name
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .or_else(|| {
            std::env::var(DEVICE_ENV)
                .ok()
                .filter(|n| !n.trim().is_empty())
        });
    match name {
        Some(name) => select(name.parse()?),
        None => select(Backend::default_compiled().ok_or(DeviceError::NoBackend)?),
    }
}

/// Returns the device of a [`Backend`], with a description of it.
///
/// # Errors
/// [`DeviceError::NotCompiled`] when the backend's cargo feature is off,
/// [`DeviceError::NoAdapter`] when wgpu finds no adapter.
pub fn select(backend: Backend) -> Result<SelectedDevice, DeviceError> {
    if !backend.is_compiled() {
        return Err(DeviceError::NotCompiled {
            name: backend.name().to_string(),
            feature: backend.feature().to_string(),
            compiled: compiled_names(),
        });
    }
    let (device, description) = match backend {
        #[cfg(feature = "flex")]
        Backend::Flex => (Device::flex(), "pure-Rust CPU".to_string()),
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        // deprecated upstream in favour of flex; still selectable on purpose
        Backend::Ndarray => (Device::ndarray(), "ndarray CPU".to_string()),
        #[cfg(feature = "cpu")]
        Backend::Cpu => (Device::cpu(), "CubeCL LLVM CPU".to_string()),
        #[cfg(feature = "wgpu")]
        Backend::Wgpu(api) => wgpu_device(backend, api)?,
        #[allow(unreachable_patterns)] // every arm above may be compiled out
        _ => unreachable!("{backend} is compiled in but has no constructor"),
    };
    Ok(SelectedDevice {
        backend,
        device,
        description,
    })
}

/// wgpu runtimes can be initialised once per API; later requests reuse the first outcome.
#[cfg(feature = "wgpu")]
type WgpuCache = Mutex<HashMap<GraphicsApi, Result<(Device, String), String>>>;

#[cfg(feature = "wgpu")]
fn wgpu_device(backend: Backend, api: GraphicsApi) -> Result<(Device, String), DeviceError> {
    use burn::tensor::wgpu::WgpuBackend;

    static CACHE: OnceLock<WgpuCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let outcome = cache.entry(api).or_insert_with(|| {
        let wgpu_api = match api {
            GraphicsApi::Auto => WgpuBackend::Auto,
            GraphicsApi::Vulkan => WgpuBackend::Vulkan,
            GraphicsApi::Gl => WgpuBackend::Gl,
            GraphicsApi::Metal => WgpuBackend::Metal,
            GraphicsApi::Dx12 => WgpuBackend::Dx12,
        };
        let options = Device::wgpu_options();
        let options = if api == GraphicsApi::Auto {
            options
        } else {
            options.graphics_api(wgpu_api)
        };
        options
            .init_with_setup()
            .map(|(device, setup)| {
                let info = setup.adapter.get_info();
                let description = format!(
                    "{} on {:?}, {:?} adapter, driver {} {}",
                    info.name, info.backend, info.device_type, info.driver, info.driver_info
                );
                (device, description.trim_end().to_string())
            })
            .map_err(|e| e.to_string())
    });
    outcome.clone().map_err(|reason| DeviceError::NoAdapter {
        name: backend.name().to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_parsing() {
        for backend in Backend::ALL {
            assert_eq!(backend.name().parse::<Backend>(), Ok(backend));
        }
        assert_eq!(" FLEX ".parse::<Backend>(), Ok(Backend::Flex));
        assert_eq!(
            "Wgpu:Vulkan".parse::<Backend>(),
            Ok(Backend::Wgpu(GraphicsApi::Vulkan))
        );
    }

    #[test]
    fn unknown_name_lists_every_choice() {
        let err = device("bogus").unwrap_err();
        let DeviceError::Unknown { name, choices } = &err else {
            panic!("expected Unknown, got {err:?}");
        };
        assert_eq!(name, "bogus");
        for backend in Backend::ALL {
            assert!(choices.contains(backend.name()), "{choices}");
        }
        assert!(err.to_string().contains("valid choices"), "{err}");
    }

    #[test]
    fn missing_backend_is_a_typed_error_naming_the_feature() {
        for backend in Backend::ALL.into_iter().filter(|b| !b.is_compiled()) {
            match select(backend) {
                Err(DeviceError::NotCompiled { name, feature, .. }) => {
                    assert_eq!(name, backend.name());
                    assert_eq!(feature, backend.feature());
                }
                other => panic!("{backend}: expected NotCompiled, got {other:?}"),
            }
        }
    }

    /// The feature each backend names exists where it says: on the `lmforge` package, or on
    /// the crate before the `/`.
    #[test]
    fn every_named_feature_exists() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let features = |manifest: &std::path::Path| {
            let text = std::fs::read_to_string(manifest).unwrap();
            let section = text.split("[features]").nth(1).unwrap().to_string();
            section.split("\n[").next().unwrap().to_string()
        };
        let facade = features(&dir.join("../../Cargo.toml"));
        let device = features(&dir.join("Cargo.toml"));
        for backend in Backend::ALL {
            let (table, name) = match backend.feature().split_once('/') {
                Some(("lmforge-device", name)) => (&device, name),
                Some((other, _)) => panic!("{backend}: unexpected crate {other}"),
                None => (&facade, backend.feature()),
            };
            assert!(
                table.lines().any(|l| l.starts_with(&format!("{name} ="))),
                "{backend}: feature `{}` not found",
                backend.feature()
            );
        }
    }

    #[test]
    fn compiled_host_backends_come_first_and_select() {
        let compiled = Backend::compiled();
        let first_device = compiled.iter().position(|b| !b.is_host());
        if let Some(first_device) = first_device {
            assert!(compiled[first_device..].iter().all(|b| !b.is_host()));
        }
        for backend in compiled.into_iter().filter(|b| b.is_host()) {
            let selected = select(backend).expect("host backends always initialise");
            assert_eq!(selected.backend, backend);
        }
    }

    #[cfg(feature = "flex")]
    #[test]
    fn flex_is_the_default_when_compiled() {
        assert_eq!(Backend::default_compiled(), Some(Backend::Flex));
        let selected = select_named(Some("flex")).unwrap();
        assert_eq!(selected.backend, Backend::Flex);
    }
}
