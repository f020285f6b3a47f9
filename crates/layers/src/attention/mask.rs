//! Building attention masks (`true` = masked out, as everywhere in burn).

use burn::tensor::{Bool, Device, Int, Tensor};

/// A padding mask from sequence lengths: `[batch_size, seq_length]`, `true` at positions
/// `>= lengths[b]`.
///
/// # Shapes
/// - `lengths`: `[batch_size]`
/// - returns: `[batch_size, seq_length]`
pub fn padding_mask(lengths: Tensor<1, Int>, seq_length: usize) -> Tensor<2, Bool> {
    let [batch_size] = lengths.dims();
    let device = lengths.device();
    let positions = Tensor::<1, Int>::arange(0..seq_length as i64, &device)
        .unsqueeze::<2>()
        .expand([batch_size, seq_length]);
    positions.greater_equal(
        lengths
            .unsqueeze_dim::<2>(1)
            .expand([batch_size, seq_length]),
    )
}

/// A causal mask `[seq_q, seq_k]` aligned to the end: query `i` may see keys
/// `0..=i + seq_k - seq_q` (so with `seq_k - seq_q` cached positions it sees all of them).
pub fn causal_mask(seq_q: usize, seq_k: usize, device: &Device) -> Tensor<2, Bool> {
    // `tril_mask` leaves the lower triangle up to the offset diagonal `false` and marks the
    // rest `true`: exactly the future positions.
    Tensor::<2, Bool>::tril_mask([seq_q, seq_k], seq_k as i64 - seq_q as i64, device)
}

/// Combines an optional key padding mask `[batch_size, seq_k]` and an optional causal mask
/// into one `[batch_size, n_heads, seq_q, seq_k]` mask; `None` when nothing is masked.
pub(crate) fn attention_mask(
    mask_pad: Option<Tensor<2, Bool>>,
    causal: bool,
    [batch_size, n_heads, seq_q, seq_k]: [usize; 4],
    device: &Device,
) -> Option<Tensor<4, Bool>> {
    let shape = [batch_size, n_heads, seq_q, seq_k];
    let pad = mask_pad.map(|m| m.reshape([batch_size, 1, 1, seq_k]).expand(shape));
    let causal = causal.then(|| {
        causal_mask(seq_q, seq_k, device)
            .reshape([1, 1, seq_q, seq_k])
            .expand(shape)
    });
    match (pad, causal) {
        (Some(pad), Some(causal)) => Some(pad.bool_or(causal)),
        (pad, causal) => pad.or(causal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use lmforge_device::testing::reference_device;

    fn rows(mask: Tensor<2, Bool>) -> Vec<Vec<bool>> {
        let [_, n] = mask.dims();
        let values = mask
            .into_data()
            .convert::<bool>()
            .try_into_vec::<bool>()
            .unwrap();
        values.chunks(n).map(<[bool]>::to_vec).collect()
    }

    #[test]
    fn causal_mask_hides_the_future_and_aligns_to_the_end() {
        let device = reference_device();
        assert_eq!(
            rows(causal_mask(3, 3, device)),
            [
                [false, true, true],
                [false, false, true],
                [false, false, false]
            ]
        );
        // Two cached positions, one new query: it sees everything.
        assert_eq!(rows(causal_mask(1, 3, device)), [[false, false, false]]);
        assert_eq!(
            rows(causal_mask(2, 4, device)),
            [[false, false, false, true], [false, false, false, false]]
        );
    }

    #[test]
    fn padding_mask_marks_positions_past_each_length() {
        let device = reference_device();
        let lengths = Tensor::<1, Int>::from_data(TensorData::new(vec![2i64, 4], [2]), device);
        assert_eq!(
            rows(padding_mask(lengths, 4)),
            [[false, false, true, true], [false, false, false, false]]
        );
    }

    /// A position is hidden when either mask hides it.
    #[test]
    fn combined_mask_is_the_union() {
        let device = reference_device();
        let pad =
            Tensor::<2, Bool>::from_data(TensorData::new(vec![false, false, true], [1, 3]), device);
        let mask = attention_mask(Some(pad), true, [1, 2, 3, 3], device).unwrap();
        assert_eq!(mask.dims(), [1, 2, 3, 3]);
        let head = mask.narrow(1, 1, 1).reshape([3, 3]);
        assert_eq!(
            rows(head),
            [
                [false, true, true],
                [false, false, true],
                [false, false, true]
            ]
        );
        assert!(attention_mask(None, false, [1, 2, 3, 3], device).is_none());
    }
}
