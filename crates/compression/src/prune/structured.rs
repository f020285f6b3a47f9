//! Structured pruning: remove whole attention heads and feed-forward units, so the matrices
//! really shrink (fewer parameters, a faster forward).

use burn::module::Module;
use burn::tensor::Tensor;
use lmforge_layers::attention::MultiHeadAttention;
use lmforge_layers::transformer::FeedForward;
use lmforge_models::bert::{
    Bert, BertForMaskedLm, BertForNextSentencePrediction, BertForPreTraining,
    BertForQuestionAnswering, BertForSequenceClassification, BertForTokenClassification,
};
use lmforge_models::gpt::Gpt;

use crate::error::CompressionError;

/// A Transformer whose blocks can lose heads and units: each block's self-attention and
/// feed-forward layer, in order.
pub trait TransformerBlocks: Module {
    /// The (self-attention, feed-forward) pair of every block.
    fn blocks_mut(&mut self) -> Vec<(&mut MultiHeadAttention, &mut FeedForward)>;
}

impl TransformerBlocks for Gpt {
    fn blocks_mut(&mut self) -> Vec<(&mut MultiHeadAttention, &mut FeedForward)> {
        self.blocks
            .iter_mut()
            .map(|b| (&mut b.self_attention, &mut b.feed_forward))
            .collect()
    }
}

impl TransformerBlocks for Bert {
    fn blocks_mut(&mut self) -> Vec<(&mut MultiHeadAttention, &mut FeedForward)> {
        self.blocks
            .iter_mut()
            .map(|b| (&mut b.attention, &mut b.feed_forward))
            .collect()
    }
}

macro_rules! through_bert {
    ($($model:ty),*) => {$(
        impl TransformerBlocks for $model {
            fn blocks_mut(&mut self) -> Vec<(&mut MultiHeadAttention, &mut FeedForward)> {
                self.bert.blocks_mut()
            }
        }
    )*};
}

through_bert!(
    BertForMaskedLm,
    BertForPreTraining,
    BertForNextSentencePrediction,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertForQuestionAnswering
);

/// Importance of each head of each block, `[block][head]`, from the weights alone: the
/// Frobenius norm of the head's value-to-output map `W_v,h · W_o,h` (`[d_model, d_model]`),
/// which bounds how much the head can add to the residual stream per unit of attention.
pub fn head_importance<M: TransformerBlocks>(model: &M) -> Vec<Vec<f32>> {
    let mut model = model.clone();
    model
        .blocks_mut()
        .into_iter()
        .map(|(attention, _)| {
            let d_head = attention.d_head();
            let value = attention.value.weight.val();
            let output = attention.output.weight.val();
            let [d_model, _] = value.dims();
            (0..attention.n_heads())
                .map(|h| {
                    let columns = h * d_head..(h + 1) * d_head;
                    let v = value.clone().slice([0..d_model, columns.clone()]);
                    let o = output.clone().slice([columns, 0..d_model]);
                    frobenius(v.matmul(o))
                })
                .collect()
        })
        .collect()
}

/// Importance of each feed-forward unit of each block, `[block][unit]`: the norm of its
/// input weights times the norm of its output weights (how much it can pass on).
pub fn neuron_importance<M: TransformerBlocks>(model: &M) -> Vec<Vec<f32>> {
    let mut model = model.clone();
    model
        .blocks_mut()
        .into_iter()
        .map(|(_, feed_forward)| {
            let up = feed_forward
                .up
                .weight
                .val()
                .powi_scalar(2)
                .sum_dim(0)
                .sqrt();
            let down = feed_forward
                .down
                .weight
                .val()
                .powi_scalar(2)
                .sum_dim(1)
                .sqrt();
            let product = up.reshape([-1]) * down.reshape([-1]);
            product
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32 values")
        })
        .collect()
}

fn frobenius(x: Tensor<2>) -> f32 {
    x.powi_scalar(2).sum().sqrt().into_scalar::<f32>()
}

/// The indices to keep per block after removing the `fraction` least important entries over
/// all blocks together, keeping at least one per block. Each list is sorted.
///
/// # Errors
/// [`CompressionError::InvalidConfig`] for a fraction outside `[0, 1)`.
pub fn keep_most_important(
    importance: &[Vec<f32>],
    fraction: f64,
) -> Result<Vec<Vec<usize>>, CompressionError> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(CompressionError::InvalidConfig(format!(
            "the fraction removed must be in [0, 1), got {fraction}"
        )));
    }
    let total: usize = importance.iter().map(Vec::len).sum();
    let mut remove = (fraction * total as f64).round() as usize;
    let mut order: Vec<(usize, usize)> = importance
        .iter()
        .enumerate()
        .flat_map(|(b, row)| (0..row.len()).map(move |i| (b, i)))
        .collect();
    order.sort_by(|a, b| {
        importance[a.0][a.1]
            .total_cmp(&importance[b.0][b.1])
            .then(a.cmp(b))
    });
    let mut keep: Vec<Vec<bool>> = importance.iter().map(|r| vec![true; r.len()]).collect();
    let mut left: Vec<usize> = importance.iter().map(Vec::len).collect();
    for (b, i) in order {
        if remove == 0 {
            break;
        }
        if left[b] > 1 {
            keep[b][i] = false;
            left[b] -= 1;
            remove -= 1;
        }
    }
    Ok(keep
        .into_iter()
        .map(|row| (0..row.len()).filter(|&i| row[i]).collect())
        .collect())
}

/// Removes attention heads: `keep[b]` lists the heads block `b` keeps (e.g. from
/// [`keep_most_important`] over [`head_importance`]).
///
/// The pruned model computes what the full model computes with the other heads masked out.
/// It runs and fine-tunes like any model; its config still names the original head count,
/// so save it with burn's records ([`lmforge_models::pretrained::save`]) and rebuild it by
/// pruning a fresh model the same way before loading, not through the HuggingFace export.
///
/// # Errors
/// [`CompressionError::InvalidConfig`] when `keep` has another number of blocks than the
/// model, or a list is empty, repeats a head or names one that does not exist.
pub fn prune_heads<M: TransformerBlocks>(
    mut model: M,
    keep: &[Vec<usize>],
) -> Result<M, CompressionError> {
    let blocks = model.blocks_mut();
    check_blocks(blocks.len(), keep.len())?;
    for (b, ((attention, _), keep)) in blocks.into_iter().zip(keep).enumerate() {
        attention
            .prune_heads(keep)
            .map_err(|e| CompressionError::InvalidConfig(format!("block {b}: {e}")))?;
    }
    Ok(model)
}

/// Removes feed-forward units: `keep[b]` lists the units block `b` keeps.
///
/// # Errors
/// As [`prune_heads`].
pub fn prune_neurons<M: TransformerBlocks>(
    mut model: M,
    keep: &[Vec<usize>],
) -> Result<M, CompressionError> {
    let blocks = model.blocks_mut();
    check_blocks(blocks.len(), keep.len())?;
    for (b, ((_, feed_forward), keep)) in blocks.into_iter().zip(keep).enumerate() {
        feed_forward
            .prune_neurons(keep)
            .map_err(|e| CompressionError::InvalidConfig(format!("block {b}: {e}")))?;
    }
    Ok(model)
}

fn check_blocks(model: usize, given: usize) -> Result<(), CompressionError> {
    if model == given {
        Ok(())
    } else {
        Err(CompressionError::InvalidConfig(format!(
            "{given} lists of indices for a model with {model} blocks"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 6 entries, remove half: the three smallest overall would be all of block 0 (0.1, 0.2,
    /// 0.3), but one must stay there, so block 1's smallest (0.4) goes instead.
    #[test]
    fn keeps_one_per_block() {
        let importance = vec![vec![0.3, 0.1, 0.2], vec![0.9, 0.4, 0.8]];
        let keep = keep_most_important(&importance, 0.5).unwrap();
        assert_eq!(keep, vec![vec![0], vec![0, 2]]);
        assert_eq!(
            keep_most_important(&importance, 0.0).unwrap(),
            vec![vec![0, 1, 2], vec![0, 1, 2]]
        );
        assert!(keep_most_important(&importance, 1.0).is_err());
    }
}
