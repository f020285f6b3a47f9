//! The quantized model file: a safetensors file any safetensors reader can list.
//!
//! - a quantized weight `p` is two tensors: `p.qvalues` (`I8` `[rows, cols]` for int8; `U8`
//!   `[bytes]` with two int4 values per byte for int4) and `p.qscales` (`F32`
//!   `[channels, groups per channel]`);
//! - every other float parameter `p` is `p` itself, `F32`;
//! - the header's metadata holds `format = lmforge-quantized`, `version = 1`, and `quantized`:
//!   a JSON map from path to `{scheme, channel_axis, shape}`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::Module;
use lmforge_layers::{LayerMut, PackLayers};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use super::{QuantScheme, QuantizedModel, QuantizedTensor};
use crate::error::CompressionError;
use crate::paths::{HostTransform, Site, map_host};

const FORMAT: &str = "lmforge-quantized";
const VERSION: &str = "1";

#[derive(Serialize, Deserialize)]
struct Entry {
    scheme: QuantScheme,
    channel_axis: usize,
    shape: [usize; 2],
}

impl<M: Module> QuantizedModel<M> {
    /// Writes the model to `path` (atomically: a temporary file, then a rename): integers
    /// and scales for the quantized weights, `f32` for every other parameter.
    ///
    /// # Errors
    /// [`CompressionError::Io`] when the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), CompressionError> {
        let path = path.as_ref();
        let mut floats = Floats {
            skip: &self.tensors,
            params: Vec::new(),
        };
        let _ = map_host(self.model.clone(), &mut floats);
        let mut buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut entries = BTreeMap::new();
        for (path, q) in &self.tensors {
            let values_shape = match q.scheme() {
                QuantScheme::Int8PerChannel => q.shape.to_vec(),
                QuantScheme::Int4Block { .. } => vec![q.numel().div_ceil(2)],
            };
            let dtype = match q.scheme() {
                QuantScheme::Int8PerChannel => Dtype::I8,
                QuantScheme::Int4Block { .. } => Dtype::U8,
            };
            buffers.push((
                format!("{path}.qvalues"),
                dtype,
                values_shape,
                q.packed_values(),
            ));
            buffers.push((
                format!("{path}.qscales"),
                Dtype::F32,
                vec![q.channels(), q.groups_per_channel()],
                f32_bytes(&q.scales()),
            ));
            entries.insert(
                path.clone(),
                Entry {
                    scheme: q.scheme(),
                    channel_axis: q.channel_axis,
                    shape: q.shape,
                },
            );
        }
        for (site, values) in floats.params {
            buffers.push((site.path, Dtype::F32, site.shape, f32_bytes(&values)));
        }
        let format_error = |reason: String| CompressionError::Format {
            path: path.to_path_buf(),
            reason,
        };
        let views = buffers
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|view| (name.clone(), view))
                    .map_err(|e| format_error(format!("`{name}`: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("version".to_string(), VERSION.to_string()),
            (
                "quantized".to_string(),
                serde_json::to_string(&entries).expect("entries serialize"),
            ),
        ]);
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|e| format_error(e.to_string()))?;
        write_atomic(path, &bytes)
    }
}

/// Reads a file written by [`QuantizedModel::save`] into `model`, which must be built from
/// the same config (same parameter paths and shapes).
///
/// # Errors
/// [`CompressionError::Io`] (a missing file included), [`CompressionError::Format`] for a
/// file that is not a quantized lmforge model or is damaged, [`CompressionError::Mismatch`]
/// naming the first parameter that is missing from the file, has another shape, or is in the
/// file but not in the model.
pub fn load<M: Module + PackLayers>(
    model: M,
    path: impl AsRef<Path>,
) -> Result<QuantizedModel<M>, CompressionError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| CompressionError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let format = |reason: String| CompressionError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let mismatch = |reason: String| CompressionError::Mismatch {
        path: path.to_path_buf(),
        reason,
    };
    let (_, header) =
        SafeTensors::read_metadata(&bytes).map_err(|e| format(format!("not safetensors: {e}")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    if metadata.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(format(format!("no `format = {FORMAT}` in the header")));
    }
    if metadata.get("version").map(String::as_str) != Some(VERSION) {
        return Err(format(format!(
            "version {:?}, this build reads {VERSION}",
            metadata.get("version")
        )));
    }
    let entries: BTreeMap<String, Entry> = serde_json::from_str(
        metadata
            .get("quantized")
            .ok_or_else(|| format("no `quantized` map in the header".into()))?,
    )
    .map_err(|e| format(format!("bad `quantized` map: {e}")))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| format(e.to_string()))?;

    let mut values = BTreeMap::new();
    let mut tensors = BTreeMap::new();
    let mut used = 0;
    for site in lmforge_training::params::parameters(&model) {
        let numel: usize = site.shape.iter().product();
        if let Some(entry) = entries.get(&site.path) {
            if site.shape != entry.shape {
                return Err(mismatch(format!(
                    "`{}` is {:?} in the file, {:?} in the model",
                    site.path, entry.shape, site.shape
                )));
            }
            let q = read_quantized(&file, &site.path, entry, numel).map_err(&format)?;
            tensors.insert(site.path.clone(), q);
            used += 2;
        } else {
            let view = file.tensor(&site.path).map_err(|_| {
                mismatch(format!(
                    "`{}` {:?} is not in the file",
                    site.path, site.shape
                ))
            })?;
            if view.dtype() != Dtype::F32 || view.shape() != site.shape.as_slice() {
                return Err(mismatch(format!(
                    "`{}` is {:?} {:?} in the file, F32 {:?} in the model",
                    site.path,
                    view.dtype(),
                    view.shape(),
                    site.shape
                )));
            }
            values.insert(site.path.clone(), read_f32(view.data()));
            used += 1;
        }
    }
    if used != file.len() {
        let known: Vec<String> = values
            .keys()
            .chain(tensors.keys())
            .flat_map(|p| [p.clone(), format!("{p}.qvalues"), format!("{p}.qscales")])
            .collect();
        let extra = file
            .names()
            .into_iter()
            .find(|name| !known.iter().any(|k| k == name))
            .unwrap_or_default()
            .to_string();
        return Err(mismatch(format!(
            "`{extra}` is in the file but not in the model"
        )));
    }
    let mut fill = Fill { values };
    let mut model = map_host(model, &mut fill);
    let mut pending: BTreeMap<&str, &QuantizedTensor> =
        tensors.iter().map(|(p, q)| (p.as_str(), q)).collect();
    let mut error = None;
    model.for_each_layer("", &mut |path, layer| {
        let path = format!("{path}.weight");
        let Some(q) = pending.remove(path.as_str()) else {
            return;
        };
        let expected_axis = match layer {
            LayerMut::Linear(_) => 1,
            LayerMut::Embedding(_) => 0,
        };
        let result = if q.channel_axis != expected_axis {
            Err(format!(
                "`{path}` has channel axis {} in the file, {expected_axis} in the model",
                q.channel_axis
            ))
        } else {
            match layer {
                LayerMut::Linear(linear) => linear.set_packed(q.packed.clone()),
                LayerMut::Embedding(table) => table.set_packed(q.packed.clone()),
            }
            .map_err(|e| format!("`{path}`: {e}"))
        };
        if let (Err(e), None) = (result, &error) {
            error = Some(e);
        }
    });
    if let Some(reason) = error {
        return Err(mismatch(reason));
    }
    if let Some(path) = pending.keys().next() {
        return Err(mismatch(format!(
            "`{path}` is quantized in the file but is not a Linear or Embedding weight of the model"
        )));
    }
    Ok(QuantizedModel { model, tensors })
}

fn read_quantized(
    file: &SafeTensors<'_>,
    name: &str,
    entry: &Entry,
    numel: usize,
) -> Result<QuantizedTensor, String> {
    entry.scheme.validate().map_err(|e| e.to_string())?;
    let values = file
        .tensor(&format!("{name}.qvalues"))
        .map_err(|e| format!("`{name}.qvalues`: {e}"))?;
    let scales = file
        .tensor(&format!("{name}.qscales"))
        .map_err(|e| format!("`{name}.qscales`: {e}"))?;
    let expected_dtype = match entry.scheme {
        QuantScheme::Int8PerChannel => Dtype::I8,
        QuantScheme::Int4Block { .. } => Dtype::U8,
    };
    if values.dtype() != expected_dtype {
        return Err(format!(
            "`{name}.qvalues` is {:?}, {:?} stores {expected_dtype:?}",
            values.dtype(),
            entry.scheme
        ));
    }
    let values = QuantizedTensor::unpack_values(values.data(), entry.scheme, numel)
        .map_err(|e| format!("`{name}.qvalues`: {e}"))?;
    if entry.channel_axis > 1 {
        return Err(format!("`{name}`: channel axis {}", entry.channel_axis));
    }
    let [rows, cols] = entry.shape;
    let (channels, width) = if entry.channel_axis == 0 {
        (rows, cols)
    } else {
        (cols, rows)
    };
    let expected = channels * width.div_ceil(entry.scheme.group_len(width));
    if scales.dtype() != Dtype::F32 || scales.data().len() != 4 * expected {
        return Err(format!(
            "`{name}.qscales`: {:?} {:?}, expected F32 with {expected} values",
            scales.dtype(),
            scales.shape()
        ));
    }
    QuantizedTensor::from_values(
        &values,
        read_f32(scales.data()),
        entry.shape,
        entry.channel_axis,
        entry.scheme,
    )
    .map_err(|e| format!("`{name}`: {e}"))
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn read_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CompressionError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CompressionError::Io { path, source }
    };
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Reads every float parameter but the quantized ones.
struct Floats<'a> {
    skip: &'a BTreeMap<String, QuantizedTensor>,
    params: Vec<(Site, Vec<f32>)>,
}

impl HostTransform for Floats<'_> {
    fn select(&mut self, site: &Site) -> bool {
        !self.skip.contains_key(&site.path)
    }
    fn transform(&mut self, site: &Site, values: Vec<f32>) -> Vec<f32> {
        self.params.push((site.clone(), values.clone()));
        values
    }
}

/// Sets every float parameter from a map by path.
struct Fill {
    values: BTreeMap<String, Vec<f32>>,
}

impl HostTransform for Fill {
    fn select(&mut self, site: &Site) -> bool {
        self.values.contains_key(&site.path)
    }
    fn transform(&mut self, site: &Site, _: Vec<f32>) -> Vec<f32> {
        self.values.remove(&site.path).expect("selected")
    }
}
