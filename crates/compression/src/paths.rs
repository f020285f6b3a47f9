//! Rewriting a module's float parameters by path, on the host.
//!
//! Paths are burn's dotted field names (`blocks.0.attention.query.weight`); the owner is the
//! type of the module that holds the parameter (`Linear`, `Embedding`, `Norm`, ...).

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Tensor, TensorData};

/// Where a parameter sits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Site {
    /// Dotted path of field names.
    pub path: String,
    /// Type name of the module holding the parameter.
    pub owner: String,
    /// The parameter's shape.
    pub shape: Vec<usize>,
}

/// What to do with the parameters of a module, one at a time.
pub(crate) trait HostTransform {
    /// Whether to read and rewrite this parameter.
    fn select(&mut self, site: &Site) -> bool;
    /// The new values (same length) for a selected parameter, row-major.
    fn transform(&mut self, site: &Site, values: Vec<f32>) -> Vec<f32>;
}

/// Applies `transform` to every selected float parameter of `model`. Parameter ids and
/// whether they require gradients are kept, so optimizer state still applies.
pub(crate) fn map_host<M: Module>(model: M, transform: &mut dyn HostTransform) -> M {
    let mut mapper = HostMapper {
        path: Vec::new(),
        types: Vec::new(),
        transform,
    };
    model.map(&mut mapper)
}

struct HostMapper<'a> {
    path: Vec<String>,
    types: Vec<String>,
    transform: &'a mut dyn HostTransform,
}

impl ModuleMapper for HostMapper<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.types.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.types.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let owner = self
            .types
            .iter()
            .rev()
            .find_map(|t| t.strip_prefix("Struct:"))
            .unwrap_or_default()
            .to_string();
        let shape = param.lazy_shape().dims::<D>().to_vec();
        let site = Site {
            path: self.path.join("."),
            owner,
            shape: shape.clone(),
        };
        if !self.transform.select(&site) {
            return param;
        }
        let require_grad = param.val().is_require_grad();
        let transform = &mut *self.transform;
        param.map(|tensor| {
            let device = tensor.device();
            let values = tensor
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("float parameters read as f32");
            let len = values.len();
            let values = transform.transform(&site, values);
            assert_eq!(values.len(), len, "a transform must keep the shape");
            // `Param::map` keeps the parameter's trainable setting; the new tensor only
            // needs the old one's gradient flag.
            let tensor = Tensor::from_data(TensorData::new(values, shape), &device);
            if require_grad {
                tensor.require_grad()
            } else {
                tensor
            }
        })
    }
}
