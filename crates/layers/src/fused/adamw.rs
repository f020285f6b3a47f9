//! One AdamW update of a parameter as a single pass: the two moment updates, their bias
//! corrections, the decoupled weight decay and the step, element by element, spread over
//! rayon's threads and vectorized. Composed from tensor operations the same update is about
//! fourteen passes over the parameter, several of them on one thread.

use burn::tensor::{DType, Tensor};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::math::simd_dispatch;
use super::{contiguous, flex_tensor, slice};

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// The scalars of one AdamW step (see [`crate::adamw_step`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Step {
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    /// `1 - beta_1^t`, `1 - beta_2^t` for the step's time `t`.
    pub correction_1: f32,
    pub correction_2: f32,
    /// `1 - lr * weight_decay`, or `None` without decay.
    pub decay: Option<f32>,
    pub lr: f32,
}

simd_dispatch! {
    /// Updates `m`, `v` and `p` in place from `g`; `s` holds the step's scalars in the order
    /// `beta_1, beta_2, epsilon, correction_1, correction_2, decay (1 = none), lr, first` (1 on
    /// the first step, when `m` and `v` hold nothing yet).
    fn update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &[f32]) {
        let (b1, b2, eps, c1, c2, decay, lr) = (s[0], s[1], s[2], s[3], s[4], s[5], s[6]);
        let (f1, f2) = (1.0 - b1, 1.0 - b2);
        let first = s[7] != 0.0;
        let n = p.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            let gi = g[i];
            // Each operation rounds as the composed tensor operations do.
            let (mi, vi) = if first {
                (gi * f1, (gi * gi) * f2)
            } else {
                (m[i] * b1 + gi * f1, v[i] * b2 + (gi * gi) * f2)
            };
            m[i] = mi;
            v[i] = vi;
            let delta = (mi / c1) / ((vi / c2).sqrt() + eps);
            p[i] = p[i] * decay - delta * lr;
        }
    }
}

/// The updated parameter and moments, or `None` when the tensors are not `f32` on flex.
pub(crate) fn adamw<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    moments: Option<(Tensor<D>, Tensor<D>)>,
    step: Step,
) -> Option<(Tensor<D>, Tensor<D>, Tensor<D>)> {
    let is_f32 = |t: &Tensor<D>| t.dtype() == DType::F32;
    if !is_f32(&param) || !is_f32(&grad) {
        return None;
    }
    let flex = |t: Tensor<D>| t.try_into_primitive::<Flex>().ok().map(contiguous);
    let p = flex(param)?;
    let g = flex(grad)?;
    let shape = p.layout().shape().clone();
    let mut params = slice(&p).to_vec();
    let first = moments.is_none();
    let (mut m, mut v) = match moments {
        Some((m, v)) => {
            let (m, v): (FlexTensor, FlexTensor) = (flex(m)?, flex(v)?);
            (slice(&m).to_vec(), slice(&v).to_vec())
        }
        None => (vec![0.0f32; params.len()], vec![0.0f32; params.len()]),
    };
    let g = slice(&g);
    let n = params.len();
    assert!(
        g.len() == n && m.len() == n && v.len() == n,
        "AdamW: the gradient and moments must have the parameter's size"
    );
    let scalars = [
        step.beta_1,
        step.beta_2,
        step.epsilon,
        step.correction_1,
        step.correction_2,
        step.decay.unwrap_or(1.0),
        step.lr,
        if first { 1.0 } else { 0.0 },
    ];
    if n <= CHUNK {
        update(&mut params, g, &mut m, &mut v, &scalars);
    } else {
        params
            .par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| update(p, g, m, v, &scalars));
    }
    let tensor = |data: Vec<f32>| Tensor::from_primitive::<Flex>(flex_tensor(data, shape.clone()));
    Some((tensor(params), tensor(m), tensor(v)))
}
