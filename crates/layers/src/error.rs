//! The error type of lmforge-layers.

use burn::tensor::TensorData;

/// What can go wrong when building or loading a layer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LayerError {
    /// A configuration value is out of range or inconsistent with another.
    #[error("invalid {layer} config: {reason}")]
    InvalidConfig {
        /// The config type, e.g. `LstmConfig`.
        layer: &'static str,
        /// What is wrong, with the offending values.
        reason: String,
    },
    /// A weight needed by the layer is absent from the given state dict.
    #[error("{layer}: missing weight `{name}`")]
    MissingWeight {
        /// The layer type.
        layer: &'static str,
        /// The state-dict key that was looked up.
        name: String,
    },
    /// A weight has a different shape from the one the layer's config implies.
    #[error("{layer}: weight `{name}` has shape {actual:?}, expected {expected:?}")]
    WeightShape {
        /// The layer type.
        layer: &'static str,
        /// The state-dict key.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape found.
        actual: Vec<usize>,
    },
    /// A state dict holds keys the layer does not use (listed).
    #[error("{layer}: unexpected weights {names:?}")]
    UnexpectedWeights {
        /// The layer type.
        layer: &'static str,
        /// The keys that were not used.
        names: Vec<String>,
    },
}

/// Looks `name` up and checks its shape against `expected`.
pub(crate) fn fetch(
    layer: &'static str,
    lookup: &mut impl FnMut(&str) -> Option<TensorData>,
    name: &str,
    expected: &[usize],
) -> Result<TensorData, LayerError> {
    let data = lookup(name).ok_or_else(|| LayerError::MissingWeight {
        layer,
        name: name.to_string(),
    })?;
    if data.shape().as_slice() != expected {
        return Err(LayerError::WeightShape {
            layer,
            name: name.to_string(),
            expected: expected.to_vec(),
            actual: data.shape().to_vec(),
        });
    }
    Ok(data)
}

/// Returns `Err(InvalidConfig)` with `reason` unless `ok`.
pub(crate) fn check(
    ok: bool,
    layer: &'static str,
    reason: impl FnOnce() -> String,
) -> Result<(), LayerError> {
    if ok {
        Ok(())
    } else {
        Err(LayerError::InvalidConfig {
            layer,
            reason: reason(),
        })
    }
}

/// Panics with a message naming the expected and actual shape of an input, unless they agree.
///
/// `expected` uses `None` for dimensions that may take any size.
#[track_caller]
pub(crate) fn assert_shape(layer: &str, input: &str, actual: &[usize], expected: &[Option<usize>]) {
    let agrees = actual.len() == expected.len()
        && actual
            .iter()
            .zip(expected)
            .all(|(a, e)| e.is_none_or(|e| e == *a));
    if !agrees {
        let expected: Vec<String> = expected
            .iter()
            .map(|e| e.map_or_else(|| "_".to_string(), |e| e.to_string()))
            .collect();
        panic!(
            "{layer}: `{input}` has shape {actual:?}, expected [{}]",
            expected.join(", ")
        );
    }
}
