//! Linear layers and embedding tables whose weights can be kept quantized in memory.
//!
//! [`Linear`] and [`Embedding`] hold the same parameters as burn's layers of those names
//! (`weight`, `bias`, with the same paths, shapes and initialization), so checkpoints and
//! parameter paths are unchanged. Either can also be *packed*: its weight quantized to int8 or
//! int4 ([`PackedWeight`]) and kept in that form ([`Linear::pack`], [`Embedding::pack`], or
//! `lmforge_compression::quantize` for a whole model).
//!
//! # Packed layers
//! On flex, a packed layer holds only the integers and scales: its `weight` parameter becomes a
//! placeholder of the same shape that takes no memory and reads as NaN (so a product that does
//! not go through the layer's methods shows at once), and the layer's methods multiply with the
//! packed weight through lmforge's kernel, which widens the integers in registers (memory and
//! bytes read per product: about a quarter of `f32` for int8, an eighth for int4).
//!
//! On other devices (wgpu, ndarray) and under autodiff, packing keeps the dequantized weight in
//! `weight` as well (computed once), and the layer's methods run burn's ops with it: the same
//! numbers (to `f32` rounding), the float layer's memory and speed. A flex-packed layer moved to
//! another device (or used with autodiff inputs) dequantizes for each product.
//!
//! [`Linear::unpack`] / [`Embedding::unpack`] turn a packed layer back into a float one (the
//! HuggingFace export does this on its copy). Assigning `weight` directly on a packed layer
//! does not unpack it: the packed weight keeps being used; unpack first.

use std::sync::Arc;

use burn::module::{Module, Param, ParamId};
use burn::nn::Initializer;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::LayerError;
use crate::quant::{PackedWeight, QuantScheme};

/// The packed form of a layer's weight.
#[derive(Clone, Debug)]
struct Packing {
    weight: Arc<PackedWeight>,
    /// Whether the layer's `weight` parameter still holds the (dequantized) values; otherwise it
    /// is a placeholder.
    dense: bool,
}

impl Packing {
    /// Makes `packed` the weight behind `param` (`channels_are_columns`: the parameter is
    /// `[width, channels]`, a `Linear` weight; otherwise `[channels, width]`, a table): where
    /// the packed kernel runs, `param` becomes a placeholder; elsewhere it holds the
    /// dequantized values. The parameter keeps its id.
    fn install(
        param: &mut Param<Tensor<2>>,
        packed: Arc<PackedWeight>,
        channels_are_columns: bool,
    ) -> Self {
        let device = param.val().device();
        let packing = Self {
            weight: packed,
            dense: !runs_packed(&device),
        };
        let value = if packing.dense {
            packing.values_like(param, channels_are_columns)
        } else {
            placeholder(param.shape().dims(), &device)
        };
        *param = Param::initialized(param.id, value);
        packing
    }

    /// Puts the dequantized values back into `param` when it is a placeholder.
    fn uninstall(self, param: &mut Param<Tensor<2>>, channels_are_columns: bool) {
        if !self.dense {
            *param = Param::initialized(param.id, self.values_like(param, channels_are_columns));
        }
    }

    /// The dequantized values in `param`'s layout, on its device.
    fn values_like(&self, param: &Param<Tensor<2>>, channels_are_columns: bool) -> Tensor<2> {
        let values = if channels_are_columns {
            self.weight.dequantize_transposed()
        } else {
            self.weight.dequantize()
        };
        let shape = param.shape().dims::<2>();
        Tensor::<2>::from_data(TensorData::new(values, shape), &param.val().device())
    }

    /// The packed weight when the parameter is a placeholder (the kernel's input).
    fn kernel_input(packing: &Option<Self>) -> Option<&PackedWeight> {
        packing
            .as_ref()
            .filter(|p| !p.dense)
            .map(|p| p.weight.as_ref())
    }
}

/// Settings of a [`Linear`] layer: burn's `LinearConfig` with the same defaults (bias on,
/// Kaiming-uniform initialization as burn's).
#[derive(Clone, Debug)]
pub struct LinearConfig {
    inner: burn::nn::LinearConfig,
}

impl LinearConfig {
    /// A layer from `d_input` to `d_output` features.
    pub fn new(d_input: usize, d_output: usize) -> Self {
        Self {
            inner: burn::nn::LinearConfig::new(d_input, d_output),
        }
    }

    /// With or without a bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.inner = self.inner.with_bias(bias);
        self
    }

    /// The initializer of the weight and bias.
    pub fn with_initializer(mut self, initializer: Initializer) -> Self {
        self.inner = self.inner.with_initializer(initializer);
        self
    }

    /// Builds the layer on `device`.
    pub fn init(&self, device: &Device) -> Linear {
        Linear::from(self.inner.init(device))
    }
}

/// `y = x W + b` over the last dimension, with a weight that can be packed (module docs).
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use lmforge_layers::LinearConfig;
/// use lmforge_layers::quant::QuantScheme;
///
/// let device = Device::default();
/// let mut linear = LinearConfig::new(64, 3).init(&device);
/// let x = Tensor::<3>::ones([2, 5, 64], &device);
/// let float = linear.forward(x.clone());
/// linear.pack(QuantScheme::Int8PerChannel)?;
/// let int8 = linear.forward(x);
/// assert_eq!(int8.dims(), [2, 5, 3]);
/// assert!((float - int8).abs().max().into_scalar::<f32>() < 0.05);
/// # Ok::<(), lmforge_layers::LayerError>(())
/// ```
#[derive(Module, Debug)]
pub struct Linear {
    /// `[d_input, d_output]`. While the layer is packed on flex: a placeholder of that shape
    /// holding no memory (NaN).
    pub weight: Param<Tensor<2>>,
    /// `[d_output]`, when the layer has a bias.
    pub bias: Option<Param<Tensor<1>>>,
    #[module(skip)]
    packing: Option<Packing>,
}

impl From<burn::nn::Linear> for Linear {
    fn from(linear: burn::nn::Linear) -> Self {
        Self {
            weight: linear.weight,
            bias: linear.bias,
            packing: None,
        }
    }
}

impl Linear {
    /// A layer with the given parameters (`weight`: `[d_input, d_output]`).
    pub fn new(weight: Param<Tensor<2>>, bias: Option<Param<Tensor<1>>>) -> Self {
        Self {
            weight,
            bias,
            packing: None,
        }
    }

    /// Input features.
    pub fn d_input(&self) -> usize {
        self.weight.shape().dims::<2>()[0]
    }

    /// Output features.
    pub fn d_output(&self) -> usize {
        self.weight.shape().dims::<2>()[1]
    }

    /// `x W + b`, the leading dimensions of `x` folded into rows: one product (see
    /// [`crate::linear_rows`]); through the packed weight when the layer is packed.
    ///
    /// # Shapes
    /// - `x`: `[..., d_input]`
    /// - returns: `[..., d_output]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        crate::linear_rows(self, x)
    }

    /// The packed weight, when the layer is packed.
    pub fn packed(&self) -> Option<&Arc<PackedWeight>> {
        self.packing.as_ref().map(|p| &p.weight)
    }

    /// Quantizes the weight with `scheme` and keeps it packed (one channel per output
    /// feature, groups along the input).
    ///
    /// # Errors
    /// [`LayerError::InvalidConfig`] for a bad scheme or a non-finite weight.
    pub fn pack(&mut self, scheme: QuantScheme) -> Result<(), LayerError> {
        let [k, n] = self.weight.shape().dims();
        let values = host_values(self.weight.val().transpose());
        let packed = PackedWeight::quantize(&values, n, k, scheme)?;
        self.set_packed(Arc::new(packed))
    }

    /// Makes `packed` (`d_output` channels of `d_input` values) the layer's weight.
    ///
    /// # Errors
    /// [`LayerError::WeightShape`] when its shape disagrees with the layer's.
    pub fn set_packed(&mut self, packed: Arc<PackedWeight>) -> Result<(), LayerError> {
        let [k, n] = self.weight.shape().dims();
        check_packed_shape("Linear", &packed, n, k)?;
        self.packing = Some(Packing::install(&mut self.weight, packed, true));
        Ok(())
    }

    /// Turns a packed layer back into a float one: `weight` holds the dequantized values (the
    /// parameter keeps its id) and the packed form is dropped. No effect on a float layer.
    pub fn unpack(&mut self) {
        if let Some(packing) = self.packing.take() {
            packing.uninstall(&mut self.weight, true);
        }
    }

    /// The weight as `[d_input, d_output]` values for a product on `device`: the parameter, or
    /// the packed weight dequantized when the parameter is a placeholder.
    pub(crate) fn dense_weight(&self) -> Tensor<2> {
        match &self.packing {
            Some(p) if !p.dense => p.values_like(&self.weight, true),
            _ => self.weight.val(),
        }
    }

    /// The packed weight when the parameter is a placeholder (the kernel's input).
    pub(crate) fn packed_for_kernel(&self) -> Option<&PackedWeight> {
        Packing::kernel_input(&self.packing)
    }
}

/// Settings of an [`Embedding`] table: burn's `EmbeddingConfig` with the same defaults
/// (normal initialization).
#[derive(Clone, Debug)]
pub struct EmbeddingConfig {
    inner: burn::nn::EmbeddingConfig,
}

impl EmbeddingConfig {
    /// A table of `n_embedding` rows of width `d_model`.
    pub fn new(n_embedding: usize, d_model: usize) -> Self {
        Self {
            inner: burn::nn::EmbeddingConfig::new(n_embedding, d_model),
        }
    }

    /// The initializer of the table.
    pub fn with_initializer(mut self, initializer: Initializer) -> Self {
        self.inner = self.inner.with_initializer(initializer);
        self
    }

    /// Builds the table on `device`.
    pub fn init(&self, device: &Device) -> Embedding {
        Embedding::from(self.inner.init(device))
    }
}

/// A lookup table `[n_embedding, d_model]` whose rows can be packed (module docs); also the
/// output layer of a model with tied embeddings ([`Embedding::project`]).
#[derive(Module, Debug)]
pub struct Embedding {
    /// `[n_embedding, d_model]`. While the table is packed on flex: a placeholder of that
    /// shape holding no memory (NaN).
    pub weight: Param<Tensor<2>>,
    #[module(skip)]
    packing: Option<Packing>,
}

impl From<burn::nn::Embedding> for Embedding {
    fn from(embedding: burn::nn::Embedding) -> Self {
        Self {
            weight: embedding.weight,
            packing: None,
        }
    }
}

impl Embedding {
    /// A table with the given weight (`[n_embedding, d_model]`).
    pub fn new(weight: Param<Tensor<2>>) -> Self {
        Self {
            weight,
            packing: None,
        }
    }

    /// Rows of the table.
    pub fn n_embedding(&self) -> usize {
        self.weight.shape().dims::<2>()[0]
    }

    /// Width of a row.
    pub fn d_model(&self) -> usize {
        self.weight.shape().dims::<2>()[1]
    }

    /// The rows `ids` selects. Ids are not checked (the models check them first).
    ///
    /// # Shapes
    /// - `ids`: `[batch_size, seq_length]`
    /// - returns: `[batch_size, seq_length, d_model]`
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        #[cfg(feature = "flex")]
        if let Some(packing) = self.packing.as_ref().filter(|p| !p.dense) {
            let [batch_size, seq_length] = ids.dims();
            let device = ids.device();
            let host: Vec<usize> = ids
                .into_data()
                .iter::<i64>()
                .map(|id| usize::try_from(id).expect("token ids are non-negative"))
                .collect();
            let rows = crate::fused::packed::gather_rows(&packing.weight, &host);
            return Tensor::<3>::from_data(
                TensorData::new(rows, [batch_size, seq_length, self.d_model()]),
                &device,
            );
        }
        burn::tensor::module::embedding(self.dense_weight(), ids)
    }

    /// `hidden Eᵀ`: the table used as an output layer (tied embeddings), rows folded into one
    /// product; through the packed table when it is packed.
    ///
    /// # Shapes
    /// - `hidden`: `[..., d_model]`
    /// - returns: `[..., n_embedding]`
    pub fn project<const D: usize>(&self, hidden: Tensor<D>) -> Tensor<D> {
        match self.packed_for_kernel() {
            Some(packed) => crate::rows::project_packed_or(packed, hidden, None, |x| {
                crate::project_rows(x, &self.dense_weight(), None, true)
            }),
            None => crate::project_rows(hidden, &self.weight.val(), None, true),
        }
    }

    /// The packed table, when it is packed.
    pub fn packed(&self) -> Option<&Arc<PackedWeight>> {
        self.packing.as_ref().map(|p| &p.weight)
    }

    /// Quantizes the table with `scheme` (one channel per row) and keeps it packed.
    ///
    /// # Errors
    /// [`LayerError::InvalidConfig`] for a bad scheme or a non-finite value.
    pub fn pack(&mut self, scheme: QuantScheme) -> Result<(), LayerError> {
        let [rows, width] = self.weight.shape().dims();
        let values = host_values(self.weight.val());
        let packed = PackedWeight::quantize(&values, rows, width, scheme)?;
        self.set_packed(Arc::new(packed))
    }

    /// Makes `packed` (`n_embedding` channels of `d_model` values) the table.
    ///
    /// # Errors
    /// [`LayerError::WeightShape`] when its shape disagrees with the table's.
    pub fn set_packed(&mut self, packed: Arc<PackedWeight>) -> Result<(), LayerError> {
        let [rows, width] = self.weight.shape().dims();
        check_packed_shape("Embedding", &packed, rows, width)?;
        self.packing = Some(Packing::install(&mut self.weight, packed, false));
        Ok(())
    }

    /// Turns a packed table back into a float one: `weight` holds the dequantized values (the
    /// parameter keeps its id) and the packed form is dropped. No effect on a float table.
    pub fn unpack(&mut self) {
        if let Some(packing) = self.packing.take() {
            packing.uninstall(&mut self.weight, false);
        }
    }

    /// The table's values: the parameter, or the packed table dequantized when the parameter
    /// is a placeholder.
    pub fn dense_weight(&self) -> Tensor<2> {
        match &self.packing {
            Some(p) if !p.dense => p.values_like(&self.weight, false),
            _ => self.weight.val(),
        }
    }

    fn packed_for_kernel(&self) -> Option<&PackedWeight> {
        Packing::kernel_input(&self.packing)
    }
}

/// A `Linear` with `N(0, std^2)` weights and zero bias (GPT-2 and BERT initialisation).
pub fn normal_linear(d_in: usize, d_out: usize, bias: bool, std: f64, device: &Device) -> Linear {
    let mut linear = LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device);
    if let Some(b) = linear.bias.take() {
        // A new parameter: `Param::map` with a fresh tensor would drop the gradient
        // requirement, and the bias would never train.
        linear.bias = Some(Param::from_tensor(b.val().zeros_like()));
    }
    linear
}

/// Keeps the output features `index` of `linear` (weight columns and bias entries).
pub(crate) fn select_outputs(linear: &mut Linear, index: Tensor<1, Int>) {
    linear.weight = reshaped(&linear.weight, |w| w.select(1, index.clone()));
    if let Some(bias) = &linear.bias {
        linear.bias = Some(reshaped(bias, |b| b.select(0, index)));
    }
}

/// Keeps the input features `index` of `linear` (weight rows).
pub(crate) fn select_inputs(linear: &mut Linear, index: Tensor<1, Int>) {
    linear.weight = reshaped(&linear.weight, |w| w.select(0, index));
}

/// A new parameter (a new id: optimizer state of the old shape does not apply) holding
/// `f(value)`, requiring gradients as the old one did.
fn reshaped<const D: usize>(
    param: &Param<Tensor<D>>,
    f: impl FnOnce(Tensor<D>) -> Tensor<D>,
) -> Param<Tensor<D>> {
    let (_, value, mapper) = param.clone().consume();
    let require_grad = value.is_require_grad();
    // `detach` after the selection: the new parameter is a leaf of no graph. The mapper keeps
    // the parameter's trainable setting (which a plain device's tensor flag does not show).
    let value = f(value).detach();
    let value = if require_grad {
        value.require_grad()
    } else {
        value
    };
    Param::from_mapped_value(ParamId::new(), value, mapper)
}

/// Reaches every [`Linear`] and [`Embedding`] inside a module, with its parameter path (the
/// path of its `weight` without the `.weight`), in declaration order.
///
/// Implemented by lmforge's layers and models; a model of your own implements it with
/// [`pack_layers!`](crate::pack_layers), listing the fields that hold layers.
pub trait PackLayers {
    /// Calls `f` with each layer inside `self` and its path under `prefix`.
    fn for_each_layer(&mut self, prefix: &str, f: &mut dyn FnMut(&str, LayerMut<'_>));
}

/// A layer [`PackLayers`] reaches.
pub enum LayerMut<'a> {
    /// A linear layer.
    Linear(&'a mut Linear),
    /// An embedding table.
    Embedding(&'a mut Embedding),
}

/// `prefix.name`, or `name` at the root.
pub fn join_path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl PackLayers for Linear {
    fn for_each_layer(&mut self, prefix: &str, f: &mut dyn FnMut(&str, LayerMut<'_>)) {
        f(prefix, LayerMut::Linear(self));
    }
}

impl PackLayers for Embedding {
    fn for_each_layer(&mut self, prefix: &str, f: &mut dyn FnMut(&str, LayerMut<'_>)) {
        f(prefix, LayerMut::Embedding(self));
    }
}

impl<T: PackLayers> PackLayers for Option<T> {
    fn for_each_layer(&mut self, prefix: &str, f: &mut dyn FnMut(&str, LayerMut<'_>)) {
        if let Some(inner) = self {
            inner.for_each_layer(prefix, f);
        }
    }
}

impl<T: PackLayers> PackLayers for Vec<T> {
    fn for_each_layer(&mut self, prefix: &str, f: &mut dyn FnMut(&str, LayerMut<'_>)) {
        for (i, inner) in self.iter_mut().enumerate() {
            inner.for_each_layer(&join_path(prefix, &i.to_string()), f);
        }
    }
}

/// Implements [`PackLayers`] for a struct by listing its fields that hold layers (each field
/// a [`Linear`], an [`Embedding`], an `Option`/`Vec` of them, or a type implementing
/// [`PackLayers`]). Paths are the field names, as burn names parameters.
///
/// ```
/// use burn::module::Module;
/// use lmforge_layers::{Linear, LinearConfig, PackLayers, pack_layers};
///
/// #[derive(Module, Debug)]
/// struct Head {
///     hidden: Linear,
///     out: Option<Linear>,
/// }
/// pack_layers!(Head { hidden, out });
///
/// let device = burn::tensor::Device::default();
/// let mut head = Head {
///     hidden: LinearConfig::new(4, 4).init(&device),
///     out: Some(LinearConfig::new(4, 2).init(&device)),
/// };
/// let mut paths = Vec::new();
/// head.for_each_layer("", &mut |path, _| paths.push(path.to_string()));
/// assert_eq!(paths, ["hidden", "out"]);
/// ```
#[macro_export]
macro_rules! pack_layers {
    ($ty:ty { $($field:ident),* $(,)? }) => {
        impl $crate::PackLayers for $ty {
            fn for_each_layer(
                &mut self,
                prefix: &str,
                f: &mut dyn FnMut(&str, $crate::LayerMut<'_>),
            ) {
                $(
                    $crate::PackLayers::for_each_layer(
                        &mut self.$field,
                        &$crate::join_path(prefix, stringify!($field)),
                        f,
                    );
                )*
            }
        }
    };
}

fn check_packed_shape(
    layer: &'static str,
    packed: &PackedWeight,
    channels: usize,
    width: usize,
) -> Result<(), LayerError> {
    if packed.channels() == channels && packed.width() == width {
        return Ok(());
    }
    Err(LayerError::WeightShape {
        layer,
        name: "packed weight (channels, width)".into(),
        expected: vec![channels, width],
        actual: vec![packed.channels(), packed.width()],
    })
}

/// A tensor's values on the host, row-major `f32`.
fn host_values(tensor: Tensor<2>) -> Vec<f32> {
    tensor
        .cast(burn::tensor::DType::F32)
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 values")
}

/// A `shape` tensor that holds one value (NaN) broadcast to every position.
fn placeholder(shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::<2>::full([1, 1], f32::NAN, device).expand(shape)
}

/// Whether a layer packed on `device` multiplies through the packed kernel (flex without
/// autodiff).
fn runs_packed(device: &Device) -> bool {
    #[cfg(feature = "flex")]
    {
        Tensor::<1>::zeros([1], device)
            .try_into_primitive::<burn_flex::Flex>()
            .is_ok()
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = device;
        false
    }
}

#[cfg(test)]
mod tests {
    use crate::test_values::pseudo_random;
    use burn::tensor::{Int, Tensor, TensorData};
    use lmforge_device::testing::test_devices;

    use super::*;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn assert_close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    /// On every test device, a packed Linear computes `x Wq + b` with the dequantized weight
    /// (f64 reference on the host), for a decoding-size input (few rows) and a prompt-size one
    /// (many rows); on flex the weight parameter no longer holds the values.
    #[test]
    fn packed_linear_multiplies_with_the_dequantized_weight() {
        let (k, n) = (70, 45);
        for selected in test_devices() {
            let device = &selected.device;
            for scheme in [QuantScheme::Int8PerChannel, QuantScheme::int4()] {
                let mut linear = LinearConfig::new(k, n).init(device);
                linear.pack(scheme).unwrap();
                let packed = linear.packed().unwrap().clone();
                let wq = packed.dequantize(); // channel-major [n, k]
                let bias = values(linear.bias.as_ref().unwrap().val());
                let weight_values = values(linear.weight.val());
                assert_eq!(
                    weight_values.iter().all(|v| v.is_nan()),
                    linear.packed_for_kernel().is_some(),
                    "{:?}: placeholder iff packed kernel",
                    selected.backend
                );
                for rows in [1, 3, 40] {
                    let x = pseudo_random(rows * k, rows as u64);
                    let xt =
                        Tensor::<3>::from_data(TensorData::new(x.clone(), [1, rows, k]), device);
                    let got = values(linear.forward(xt));
                    let mut want = vec![0f64; rows * n];
                    for r in 0..rows {
                        for j in 0..n {
                            want[r * n + j] = f64::from(bias[j])
                                + (0..k)
                                    .map(|i| f64::from(x[r * k + i]) * f64::from(wq[j * k + i]))
                                    .sum::<f64>();
                        }
                    }
                    assert_close(
                        &got,
                        &want,
                        &format!("{:?} {scheme:?} rows {rows}", selected.backend),
                    );
                }
            }
        }
    }

    /// A packed table looks rows up and projects (tied output layer) with its dequantized
    /// values on every test device.
    #[test]
    fn packed_embedding_looks_up_and_projects() {
        let (rows, width) = (37, 40);
        for selected in test_devices() {
            let device = &selected.device;
            let mut table = EmbeddingConfig::new(rows, width).init(device);
            table.pack(QuantScheme::int4()).unwrap();
            let wq = table.packed().unwrap().dequantize();
            let ids =
                Tensor::<2, Int>::from_data(TensorData::new(vec![3i64, 0, 36, 3], [2, 2]), device);
            let got = values(table.forward(ids));
            let want: Vec<f64> = [3usize, 0, 36, 3]
                .iter()
                .flat_map(|&r| wq[r * width..(r + 1) * width].iter().map(|&v| f64::from(v)))
                .collect();
            assert_close(&got, &want, &format!("{:?} lookup", selected.backend));
            let h = pseudo_random(2 * width, 9);
            let ht = Tensor::<2>::from_data(TensorData::new(h.clone(), [2, width]), device);
            let got = values(table.project(ht));
            let want: Vec<f64> = (0..2)
                .flat_map(|r| {
                    let h = &h;
                    let wq = &wq;
                    (0..rows).map(move |j| {
                        (0..width)
                            .map(|i| f64::from(h[r * width + i]) * f64::from(wq[j * width + i]))
                            .sum::<f64>()
                    })
                })
                .collect();
            assert_close(&got, &want, &format!("{:?} project", selected.backend));
        }
    }

    /// `unpack` gives a float layer computing the same function from the dequantized weight.
    #[test]
    fn unpack_restores_a_float_layer() {
        for selected in test_devices() {
            let device = &selected.device;
            let mut linear = LinearConfig::new(40, 7).init(device);
            linear.pack(QuantScheme::int4()).unwrap();
            let x = Tensor::<2>::from_data(TensorData::new(pseudo_random(80, 3), [2, 40]), device);
            let packed = values(linear.forward(x.clone()));
            let want = linear.packed().unwrap().dequantize_transposed();
            linear.unpack();
            assert!(linear.packed().is_none());
            assert_eq!(values(linear.weight.val()), want);
            let float = values(linear.forward(x));
            let diff = packed
                .iter()
                .zip(&float)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "{:?}: {diff}", selected.backend);
        }
    }

    /// A packed weight of another shape is refused; paths follow burn's parameter paths.
    #[test]
    fn wrong_shapes_are_refused_and_paths_match_burn() {
        let device = &test_devices()[0].device;
        let mut linear = LinearConfig::new(4, 3).init(device);
        let wrong = PackedWeight::quantize(&[0.5; 12], 4, 3, QuantScheme::Int8PerChannel).unwrap();
        assert!(matches!(
            linear.set_packed(Arc::new(wrong)),
            Err(LayerError::WeightShape { .. })
        ));
        let mut layers: Vec<Option<Linear>> = vec![None, Some(linear)];
        let mut paths = Vec::new();
        layers.for_each_layer("blocks", &mut |p, _| paths.push(p.to_string()));
        assert_eq!(paths, ["blocks.1"]);
    }
}
