//! Unit tests of multi-head attention: shapes, masks, the two computation paths, the cache,
//! errors and backend parity. (Agreement with PyTorch: the workspace's tests/.)

use burn::tensor::{Bool, Int, Tensor, TensorData};
use lmforge_device::testing::{
    Outputs, Tolerance, assert_parity, reference_device, to_test_device,
};

use super::*;
use crate::LayerError;

fn input(batch_size: usize, seq_length: usize, d: usize, salt: usize) -> Tensor<3> {
    let n = batch_size * seq_length * d;
    let values: Vec<f32> = (0..n)
        .map(|i| (((i + salt) * 29 % 31) as f32 - 15.0) / 8.0)
        .collect();
    Tensor::from_data(
        TensorData::new(values, [batch_size, seq_length, d]),
        reference_device(),
    )
}

fn mha(d_model: usize, n_heads: usize) -> MultiHeadAttention {
    reference_device().seed(11);
    MultiHeadAttentionConfig::new(d_model, n_heads)
        .with_init_std(0.3)
        .init(reference_device())
        .unwrap()
}

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

fn lengths_mask(lengths: &[i64], seq_length: usize) -> Tensor<2, Bool> {
    let lengths = Tensor::<1, Int>::from_data(
        TensorData::new(lengths.to_vec(), [lengths.len()]),
        reference_device(),
    );
    padding_mask(lengths, seq_length)
}

#[test]
fn shapes_for_self_and_cross_attention_including_batch_one() {
    for batch_size in [1, 3] {
        let layer = mha(8, 2);
        let out = layer
            .forward(AttentionInput::self_attention(input(batch_size, 5, 8, 0)).need_weights());
        assert_eq!(out.context.dims(), [batch_size, 5, 8]);
        assert_eq!(out.weights.unwrap().dims(), [batch_size, 2, 5, 5]);

        let cross = MultiHeadAttentionConfig::new(8, 4)
            .with_d_memory(Some(6))
            .init(reference_device())
            .unwrap();
        let out = cross.forward(
            AttentionInput::cross_attention(input(batch_size, 5, 8, 0), input(batch_size, 7, 6, 1))
                .need_weights(),
        );
        assert_eq!(out.context.dims(), [batch_size, 5, 8]);
        assert_eq!(out.weights.unwrap().dims(), [batch_size, 4, 5, 7]);
    }
}

/// The fused op (no probabilities asked) and the explicit path give the same context, with
/// and without masks.
#[test]
fn fused_and_explicit_paths_agree() {
    let layer = mha(8, 2);
    let x = input(2, 6, 8, 3);
    let pad = lengths_mask(&[6, 3], 6);
    for (causal, pad) in [
        (false, None),
        (true, None),
        (false, Some(pad.clone())),
        (true, Some(pad)),
    ] {
        let mut base = AttentionInput::self_attention(x.clone());
        base.causal = causal;
        base.mask_pad = pad;
        let fused = layer.forward(base.clone()).context;
        let explicit = layer.forward(base.need_weights()).context;
        assert!(max_abs_diff(fused, explicit) < 1e-5, "causal {causal}");
    }
}

/// Probabilities are a distribution over the visible keys: rows sum to 1, masked keys get 0.
#[test]
fn weights_are_zero_on_masked_keys_and_rows_sum_to_one() {
    let layer = mha(8, 2);
    let out = layer.forward(
        AttentionInput::self_attention(input(2, 5, 8, 0))
            .mask_pad(lengths_mask(&[5, 3], 5))
            .causal()
            .need_weights(),
    );
    let weights = out.weights.unwrap(); // [2, 2, 5, 5]
    let values = weights.clone().into_data().try_into_vec::<f32>().unwrap();
    for (row_index, row) in values.chunks(5).enumerate() {
        let batch = row_index / 10;
        let query = row_index % 5;
        let visible = |key: usize| key <= query && (batch == 0 || key < 3);
        for (key, p) in row.iter().enumerate() {
            if !visible(key) {
                assert_eq!(*p, 0.0, "batch {batch} query {query} key {key}");
            }
        }
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}

/// A query whose keys are all masked gets a zero context before the output projection (its
/// output is the output bias), never NaN.
#[test]
fn fully_masked_rows_give_zeros_not_nan() {
    let layer = mha(4, 1);
    let all_padding =
        Tensor::<2, Bool>::from_data(TensorData::new(vec![true; 3], [1, 3]), reference_device());
    for need_weights in [false, true] {
        let mut input =
            AttentionInput::self_attention(input(1, 3, 4, 0)).mask_pad(all_padding.clone());
        input.need_weights = need_weights;
        let context = layer.forward(input).context;
        let bias = layer
            .output
            .bias
            .as_ref()
            .unwrap()
            .val()
            .reshape([1, 1, 4])
            .expand([1, 3, 4]);
        assert!(
            max_abs_diff(context, bias) < 1e-6,
            "need_weights {need_weights}"
        );
    }
}

/// Feeding a sequence one position at a time through the cache equals one causal pass over
/// the whole sequence (20 steps, tolerance 1e-5), with the padding mask growing as it goes.
#[test]
fn cached_incremental_attention_equals_full_causal_forward() {
    let layer = mha(8, 2);
    let steps = 20;
    let x = input(2, steps, 8, 5);
    let pad = lengths_mask(&[20, 20], steps);
    let full = layer
        .forward(
            AttentionInput::self_attention(x.clone())
                .mask_pad(pad.clone())
                .causal(),
        )
        .context;
    let mut cache = KvCache::new();
    for t in 0..steps {
        let step = AttentionInput::self_attention(x.clone().narrow(1, t, 1))
            .mask_pad(pad.clone().narrow(1, 0, t + 1))
            .causal();
        let out = layer.forward_cached(step, &mut cache).context;
        assert_eq!(cache.len(), t + 1);
        let expected = full.clone().narrow(1, t, 1);
        assert!(max_abs_diff(out, expected) < 1e-5, "step {t}");
    }
    // A prompt of several positions at once, then single steps, gives the same result too.
    let mut cache = KvCache::new();
    let prompt = layer.forward_cached(
        AttentionInput::self_attention(x.clone().narrow(1, 0, 7)).causal(),
        &mut cache,
    );
    assert!(max_abs_diff(prompt.context, full.clone().narrow(1, 0, 7)) < 1e-5);
    let next = layer.forward_cached(
        AttentionInput::self_attention(x.narrow(1, 7, 1)).causal(),
        &mut cache,
    );
    assert!(max_abs_diff(next.context, full.narrow(1, 7, 1)) < 1e-5);
}

/// A cache that outgrows its buffers twice (a prompt of 3, then 140 single steps) keeps giving
/// the full causal forward's outputs, and a view taken before an append keeps its values.
#[test]
fn cache_growth_keeps_what_is_cached() {
    let layer = mha(8, 2);
    let steps = 143;
    let x = input(2, steps, 8, 3);
    let full = layer
        .forward(AttentionInput::self_attention(x.clone()).causal())
        .context;
    let mut cache = KvCache::new();
    let prompt = layer.forward_cached(
        AttentionInput::self_attention(x.clone().narrow(1, 0, 3)).causal(),
        &mut cache,
    );
    assert!(max_abs_diff(prompt.context, full.clone().narrow(1, 0, 3)) < 1e-5);
    let mut capacities = vec![cache.capacity()];
    let mut early_keys = cache.key();
    let early = early_keys.as_ref().unwrap().to_data();
    for t in 3..steps {
        let step = AttentionInput::self_attention(x.clone().narrow(1, t, 1)).causal();
        let out = layer.forward_cached(step, &mut cache).context;
        // Held across one append, then dropped so that the others write in place.
        if let Some(keys) = early_keys.take() {
            assert_eq!(keys.to_data(), early, "an earlier view was written over");
        }
        assert_eq!(cache.len(), t + 1);
        assert!(
            max_abs_diff(out, full.clone().narrow(1, t, 1)) < 1e-5,
            "step {t}"
        );
        if capacities.last() != Some(&cache.capacity()) {
            capacities.push(cache.capacity());
        }
    }
    assert_eq!(capacities, [67, 134, 268], "the buffers grow by doubling");
    let keys = cache.key().unwrap();
    assert_eq!(keys.dims(), [2, 2, steps, 4]);
    assert_eq!(
        keys.narrow(2, 0, 3).to_data(),
        early,
        "the prompt's keys moved or changed"
    );
}

/// `select_rows` keeps the chosen batch rows of the cached keys and values, in order, and later
/// appends extend every row.
#[test]
fn cache_select_rows_reorders_the_batch() {
    let layer = mha(8, 2);
    let x = input(2, 5, 8, 4);
    let mut cache = KvCache::new();
    layer.forward_cached(
        AttentionInput::self_attention(x.clone().narrow(1, 0, 4)).causal(),
        &mut cache,
    );
    let (key, value) = (cache.key().unwrap(), cache.value().unwrap());
    cache.select_rows(&[1, 1, 0]);
    let rows = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 1, 0], [3]), &key.device());
    assert_eq!(
        cache.key().unwrap().to_data(),
        key.select(0, rows.clone()).to_data()
    );
    assert_eq!(
        cache.value().unwrap().to_data(),
        value.select(0, rows).to_data()
    );
    let next = x.narrow(1, 4, 1);
    let next = Tensor::cat(
        vec![
            next.clone().narrow(0, 1, 1),
            next.clone().narrow(0, 1, 1),
            next.narrow(0, 0, 1),
        ],
        0,
    );
    layer.forward_cached(AttentionInput::self_attention(next).causal(), &mut cache);
    assert_eq!(cache.key().unwrap().dims(), [3, 2, 5, 4]);
}

/// Cross-attention through the cache projects the memory once and equals the uncached result.
#[test]
fn cached_cross_attention_reuses_the_memory() {
    let layer = mha(8, 2);
    let memory = input(2, 4, 8, 9);
    let queries = input(2, 3, 8, 2);
    let full = layer
        .forward(AttentionInput::cross_attention(
            queries.clone(),
            memory.clone(),
        ))
        .context;
    let mut cache = KvCache::new();
    for t in 0..3 {
        let out = layer.forward_cached(
            AttentionInput::cross_attention(queries.clone().narrow(1, t, 1), memory.clone()),
            &mut cache,
        );
        assert_eq!(cache.len(), 4);
        assert!(max_abs_diff(out.context, full.clone().narrow(1, t, 1)) < 1e-5);
    }
}

#[test]
fn bad_configs_are_errors() {
    let err = MultiHeadAttentionConfig::new(10, 3)
        .init(reference_device())
        .unwrap_err();
    assert_eq!(
        err,
        LayerError::InvalidConfig {
            layer: "MultiHeadAttentionConfig",
            reason: "d_model (10) must be divisible by n_heads (3)".into()
        }
    );
    let err = MultiHeadAttentionConfig::new(8, 0)
        .init(reference_device())
        .unwrap_err();
    assert!(err.to_string().contains("n_heads must be > 0"), "{err}");
}

#[test]
#[should_panic(expected = "MultiHeadAttention: `mask_pad` has shape [2, 4], expected [2, 5]")]
fn mismatched_mask_panics_with_both_shapes() {
    let layer = mha(8, 2);
    let _ = layer.forward(
        AttentionInput::self_attention(input(2, 5, 8, 0)).mask_pad(lengths_mask(&[4, 4], 4)),
    );
}

#[test]
#[should_panic(expected = "MultiHeadAttention: `query` has shape [2, 5, 6], expected [_, _, 8]")]
fn wrong_width_panics_with_both_shapes() {
    let _ = mha(8, 2).forward(AttentionInput::self_attention(input(2, 5, 6, 0)));
}

/// Backend parity, forward and backward, with masks, probabilities and every gradient.
#[test]
fn parity_across_devices() {
    let layer = mha(8, 2);
    let x = input(2, 5, 8, 4).into_data();
    let memory = input(2, 3, 8, 6).into_data();
    let pad = lengths_mask(&[5, 2], 5).into_data();
    assert_parity(Tolerance::rel_abs(1e-4, 1e-5), |device| {
        let layer = to_test_device(&layer, device);
        let x = Tensor::<3>::from_data(x.clone(), device).require_grad();
        let memory = Tensor::<3>::from_data(memory.clone(), device).require_grad();
        let pad = Tensor::<2, Bool>::from_data(pad.clone(), device);
        let fused = layer.forward(
            AttentionInput::self_attention(x.clone())
                .mask_pad(pad.clone())
                .causal(),
        );
        let explicit = layer.forward(
            AttentionInput::self_attention(x.clone())
                .mask_pad(pad)
                .causal()
                .need_weights(),
        );
        let cross = layer.forward(AttentionInput::cross_attention(x.clone(), memory.clone()));
        let weights = explicit.weights.unwrap();
        let loss = fused.context.clone().powf_scalar(2.0).sum()
            + explicit.context.clone().sin().sum()
            + (weights.clone() * weights.clone()).sum()
            + cross.context.clone().sum();
        let grads = loss.backward();
        Outputs::new()
            .float("fused", fused.context)
            .float("explicit", explicit.context)
            .float("weights", weights)
            .float("cross", cross.context)
            .float("dx", x.grad(&grads).unwrap())
            .float("dmemory", memory.grad(&grads).unwrap())
            .grads("mha", &layer, &grads)
    });
}

/// The layer with heads 0 and 2 of 4 removed computes what the full layer computes when the
/// removed heads' rows of the output projection are zero (their contribution masked out),
/// with the cache too; the inner width shrinks and the model width does not.
#[test]
fn pruned_heads_equal_masked_heads() {
    let full = mha(16, 4);
    let x = input(2, 5, 16, 3);
    let d_head = 4;
    let mut masked = full.clone();
    let rows: Vec<f32> = (0..16)
        .map(|r| {
            if [0, 2].contains(&(r / d_head)) {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    let row_mask = Tensor::<1>::from_data(TensorData::new(rows, [16]), reference_device())
        .unsqueeze_dim::<2>(1);
    masked.output.weight = masked.output.weight.clone().map(|w| w * row_mask);
    let mut pruned = full.clone();
    pruned.prune_heads(&[3, 1]).unwrap();
    assert_eq!(
        (pruned.n_heads(), pruned.d_inner(), pruned.d_model()),
        (2, 8, 16)
    );
    assert_eq!(pruned.query.weight.dims(), [16, 8]);
    assert_eq!(pruned.output.weight.dims(), [8, 16]);
    let run = |layer: &MultiHeadAttention| {
        layer
            .forward(AttentionInput::self_attention(x.clone()).causal())
            .context
    };
    let expected = run(&masked);
    assert!(max_abs_diff(run(&pruned), expected.clone()) < 1e-5);
    assert!(max_abs_diff(run(&full), expected.clone()) > 1e-2);
    let mut cache = KvCache::default();
    let cached = Tensor::cat(
        (0..5)
            .map(|t| {
                let step = x.clone().slice([0..2, t..t + 1, 0..16]);
                pruned
                    .forward_cached(AttentionInput::self_attention(step).causal(), &mut cache)
                    .context
            })
            .collect(),
        1,
    );
    assert!(max_abs_diff(cached, expected) < 1e-5);
}

#[test]
fn pruning_heads_checks_its_input() {
    let mut layer = mha(16, 4);
    for keep in [&[][..], &[1, 1], &[4]] {
        assert!(matches!(
            layer.prune_heads(keep),
            Err(LayerError::InvalidConfig { .. })
        ));
    }
    assert_eq!(layer.n_heads(), 4);
    // A layer that lost heads cannot take a full PyTorch state dict: refused before any
    // weight is read.
    layer.prune_heads(&[0, 1]).unwrap();
    let error = layer
        .load_pytorch(|_| None, Vec::<String>::new())
        .unwrap_err();
    assert!(error.to_string().contains("pruned heads"), "{error}");
}

/// Grouped-query attention is multi-head attention whose key/value heads are shared: a GQA
/// layer (4 query heads, 2 key/value heads) computes what a full layer computes when its key
/// and value projections repeat each KV head's columns for the 2 query heads of its group.
/// Also through the cache, with rotary positions on, on every path (fused and explicit).
#[test]
fn grouped_query_attention_equals_repeated_key_value_heads() {
    reference_device().seed(5);
    let rope = crate::position::RopeConfig::new(4);
    let gqa = MultiHeadAttentionConfig::new(16, 4)
        .with_n_kv_heads(Some(2))
        .with_rotary(Some(rope.clone()))
        .with_init_std(0.3)
        .init(reference_device())
        .unwrap();
    assert_eq!(gqa.key.weight.dims(), [16, 8]);
    let mut full = MultiHeadAttentionConfig::new(16, 4)
        .with_rotary(Some(rope))
        .init(reference_device())
        .unwrap();
    full.query = gqa.query.clone();
    full.output = gqa.output.clone();
    // Columns of KV head h (width 4) serve query heads 2h and 2h + 1.
    let columns: Vec<i64> = (0..4)
        .flat_map(|q_head| (0..4).map(move |c| (q_head / 2 * 4 + c) as i64))
        .collect();
    let index = Tensor::<1, Int>::from_data(TensorData::new(columns, [16]), reference_device());
    for (target, source) in [(&mut full.key, &gqa.key), (&mut full.value, &gqa.value)] {
        let mut repeated = source.clone();
        select_outputs(&mut repeated, index.clone());
        *target = repeated;
    }
    let x = input(2, 6, 16, 3);
    for weights in [false, true] {
        let mut a = AttentionInput::self_attention(x.clone()).causal();
        a.need_weights = weights;
        let got = gqa.forward(a.clone()).context;
        let want = full.forward(a).context;
        assert!(max_abs_diff(got, want) < 1e-5, "need_weights {weights}");
    }
    let mut cache = KvCache::new();
    let first = gqa.forward_cached(
        AttentionInput::self_attention(x.clone().narrow(1, 0, 4)).causal(),
        &mut cache,
    );
    let rest = gqa.forward_cached(
        AttentionInput::self_attention(x.clone().narrow(1, 4, 2)).causal(),
        &mut cache,
    );
    assert_eq!(cache.key().unwrap().dims(), [2, 2, 6, 4]);
    let whole = full
        .forward(AttentionInput::self_attention(x).causal())
        .context;
    assert!(max_abs_diff(Tensor::cat(vec![first.context, rest.context], 1), whole) < 1e-5);
}

/// A sliding window of `w` is a mask: attention over the whole sequence with window 3
/// equals attention where each query's keys outside `(i - 3, i]` are padding, computed row
/// by row; a window at least the sequence length changes nothing.
#[test]
fn sliding_window_hides_keys_outside_the_window() {
    let plain = mha(8, 2);
    // The same weights with a window (tests run in parallel: copy, do not reseed).
    let window = |w| {
        let mut layer = MultiHeadAttentionConfig::new(8, 2)
            .with_sliding_window(Some(w))
            .init(reference_device())
            .unwrap();
        layer.query = plain.query.clone();
        layer.key = plain.key.clone();
        layer.value = plain.value.clone();
        layer.output = plain.output.clone();
        layer
    };
    let (layer, wide) = (window(3), window(6));
    let x = input(1, 6, 8, 1);
    let got = layer
        .forward(AttentionInput::self_attention(x.clone()).causal())
        .context;
    for i in 0..6usize {
        // Query i alone over keys max(0, i - 2)..=i.
        let start = i.saturating_sub(2);
        let keys = x.clone().narrow(1, start, i + 1 - start);
        let alone = plain
            .forward(AttentionInput::self_attention(keys).causal())
            .context
            .narrow(1, i - start, 1);
        assert!(
            max_abs_diff(got.clone().narrow(1, i, 1), alone) < 1e-5,
            "query {i}"
        );
    }
    let a = wide
        .forward(AttentionInput::self_attention(x.clone()).causal())
        .context;
    let b = plain
        .forward(AttentionInput::self_attention(x).causal())
        .context;
    assert!(max_abs_diff(a, b) < 1e-6);
}

#[test]
fn grouped_query_configs_are_checked() {
    let device = reference_device();
    let config = |kv| MultiHeadAttentionConfig::new(16, 4).with_n_kv_heads(Some(kv));
    assert!(config(3).init(device).is_err());
    assert!(config(0).init(device).is_err());
    assert!(config(1).init(device).is_ok());
    let rotary =
        MultiHeadAttentionConfig::new(16, 4).with_rotary(Some(crate::position::RopeConfig::new(8)));
    assert!(matches!(
        rotary.init(device),
        Err(LayerError::InvalidConfig { .. })
    ));
    let explicit = MultiHeadAttentionConfig::new(16, 3)
        .with_d_head(Some(6))
        .init(device)
        .unwrap();
    assert_eq!((explicit.d_inner(), explicit.d_model()), (18, 16));
}
