//! The parameters of a module by path: listing, global gradient norm and clipping, freezing.
//!
//! Paths are burn's: the module's field names joined by dots, ending in the parameter's own
//! field, e.g. `blocks.0.attention.query.weight` in a [`Gpt`](lmforge_models::gpt::Gpt).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use regex::Regex;

use crate::error::TrainError;

/// One float parameter of a module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamInfo {
    /// burn's id, which optimizer state is keyed by.
    pub id: ParamId,
    /// The dotted path of field names, e.g. `embeddings.word.weight`.
    pub path: String,
    /// The type name of the module that owns the parameter, e.g. `Embedding`.
    pub owner: String,
    /// The parameter's shape.
    pub shape: Vec<usize>,
    /// Whether the optimizer updates it (false once frozen).
    pub trainable: bool,
}

impl ParamInfo {
    /// Number of scalars in the parameter.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Every float parameter of `model`, in visiting order.
pub fn parameters<M: Module>(model: &M) -> Vec<ParamInfo> {
    let mut collector = Collector::default();
    model.visit(&mut collector);
    collector.params
}

#[derive(Default)]
struct Collector {
    path: Vec<String>,
    types: Vec<String>,
    params: Vec<ParamInfo>,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.types.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.types.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // The innermost entry is the parameter's own field; the one before it is its owner.
        let owner = self
            .types
            .iter()
            .rev()
            .find(|t| t.starts_with("Struct:"))
            .map(|t| t.trim_start_matches("Struct:").to_string())
            .unwrap_or_default();
        self.params.push(ParamInfo {
            id: param.id,
            path: self.path.join("."),
            owner,
            shape: param.lazy_shape().dims::<D>().to_vec(),
            trainable: param.val().is_require_grad(),
        });
    }
}

/// A [`ParamGroup`] of the parameters whose path matches any of the regular expressions.
///
/// # Errors
/// [`TrainError::InvalidConfig`] for a pattern that is not a valid regular expression.
pub fn group_matching<M: Module>(model: &M, patterns: &[String]) -> Result<ParamGroup, TrainError> {
    let regexes = compile(patterns)?;
    Ok(ParamGroup::from_ids(
        parameters(model)
            .into_iter()
            .filter(|p| regexes.iter().any(|r| r.is_match(&p.path)))
            .map(|p| p.id)
            .collect(),
    ))
}

pub(crate) fn compile(patterns: &[String]) -> Result<Vec<Regex>, TrainError> {
    patterns
        .iter()
        .map(|p| {
            Regex::new(p).map_err(|e| TrainError::InvalidConfig(format!("bad pattern `{p}`: {e}")))
        })
        .collect()
}

/// Freezes every parameter whose path matches one of `patterns` (regular expressions): they
/// stop receiving gradients, so no optimizer changes them. Returns the model and how many
/// parameter tensors were frozen.
///
/// ```text
/// "^embeddings\."            BERT's embeddings
/// "^blocks\.[0-3]\."         the first four encoder blocks of a BERT or GPT
/// ```
///
/// # Errors
/// [`TrainError::InvalidConfig`] for a bad pattern, or one that matches no parameter (a typo
/// would otherwise silently train everything).
pub fn freeze_matching<M: Module>(model: M, patterns: &[String]) -> Result<(M, usize), TrainError> {
    let regexes = compile(patterns)?;
    let params = parameters(&model);
    for (pattern, regex) in patterns.iter().zip(&regexes) {
        if !params.iter().any(|p| regex.is_match(&p.path)) {
            return Err(TrainError::InvalidConfig(format!(
                "freeze pattern `{pattern}` matches no parameter (paths look like `{}`)",
                params.first().map(|p| p.path.as_str()).unwrap_or("")
            )));
        }
    }
    let ids: Vec<ParamId> = params
        .iter()
        .filter(|p| regexes.iter().any(|r| r.is_match(&p.path)))
        .map(|p| p.id)
        .collect();
    let count = ids.len();
    let mut freezer = Freezer { ids };
    Ok((model.map(&mut freezer), count))
}

struct Freezer {
    ids: Vec<ParamId>,
}

impl ModuleMapper for Freezer {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.ids.contains(&param.id) {
            param.set_require_grad(false)
        } else {
            param
        }
    }
}

/// The pattern that matches the embeddings of any lmforge model: BERT's `embeddings.` (the
/// three tables and their LayerNorm), GPT's `token_embedding.` and `positions.`, the LSTM LM's
/// `embedding.`; also inside task models (`bert.embeddings.`).
pub fn embeddings_pattern() -> String {
    r"(^|\.)(embeddings|token_embedding|positions|embedding)\.".to_string()
}

/// The pattern that freezes the first `n` Transformer blocks of a BERT or GPT (also inside a
/// task model such as `BertForSequenceClassification`, whose encoder sits under `bert.`).
pub fn first_blocks_pattern(n: usize) -> Option<String> {
    (n > 0).then(|| {
        let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        format!(r"(^|\.)blocks\.({})\.", ids.join("|"))
    })
}

/// The L2 norm of all gradients together (PyTorch's `clip_grad_norm_` total norm), as a
/// one-element tensor on the gradients' device. `None` when there are no gradients.
pub fn global_grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
    let mut visitor = SquaredNorm { grads, total: None };
    model.visit(&mut visitor);
    visitor.total.map(|t| t.sqrt())
}

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            let squares = grad.square().sum();
            self.total = Some(match self.total.take() {
                Some(total) => total + squares,
                None => squares,
            });
        }
    }
}

/// Clips the gradients by their global L2 norm, as PyTorch's `clip_grad_norm_`: when the norm
/// exceeds `max_norm`, every gradient is multiplied by `max_norm / (norm + 1e-6)`. Returns the
/// norm before clipping (one read from the device).
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let Some(norm) = global_grad_norm(model, grads) else {
        return 0.0;
    };
    let norm = norm.into_scalar::<f64>();
    if norm > max_norm && norm.is_finite() {
        let mut scaler = Scale {
            grads,
            factor: max_norm / (norm + 1e-6),
        };
        model.visit(&mut scaler);
    }
    norm
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, grad.mul_scalar(self.factor));
        }
    }
}
