//! The elementwise part of one LSTM step, for one batch row, written as straight loops over
//! the gate blocks so that the compiler vectorizes them (8 lanes with AVX2 + FMA, chosen at run
//! time; 4 lanes with the baseline SSE2 otherwise).
//!
//! `exp` is a branch-free polynomial (Cephes' single-precision coefficients, about 1 ulp on the
//! reduced range); `sigmoid` and `tanh` are built on it, with absolute errors below 1e-7. Only
//! explicit operations are used (no fused multiply-add contraction), so the vector and scalar
//! paths give the same bits.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split so that `n * LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting `1.5 * 2^23` rounds an `f32` of magnitude below `2^22` to an integer.
const ROUND: f32 = 12_582_912.0;

/// `e^x` for `x` clamped to `[-87, 88]` (no overflow to infinity, no subnormal results; NaN
/// stays NaN).
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let p = p * (r * r) + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    p * scale
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (1.0 + exp(2.0 * x))
}

/// Runs `$body` (a block using only its arguments) compiled for AVX2 + FMA when the CPU has
/// them, and for the baseline target otherwise.
macro_rules! dispatch {
    ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        pub(super) fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn wide($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports the features `wide` is compiled for.
                    return unsafe { wide($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

dispatch! {
    /// Forward cell update of one row: `gates` (`[4 * hidden]`, pre-activations `i, f, g, o`)
    /// are activated in place; writes the new cell state `c` and hidden state `h`.
    fn forward(gates: &mut [f32], c_prev: &[f32], c: &mut [f32], h: &mut [f32]) {
        let hidden = c.len();
        let (i, rest) = gates.split_at_mut(hidden);
        let (f, rest) = rest.split_at_mut(hidden);
        let (g, o) = rest.split_at_mut(hidden);
        let (c_prev, h) = (&c_prev[..hidden], &mut h[..hidden]);
        for j in 0..hidden {
            let (iv, fv, gv, ov) = (sigmoid(i[j]), sigmoid(f[j]), tanh(g[j]), sigmoid(o[j]));
            let cv = fv * c_prev[j] + iv * gv;
            i[j] = iv;
            f[j] = fv;
            g[j] = gv;
            o[j] = ov;
            c[j] = cv;
            h[j] = ov * tanh(cv);
        }
    }
}

dispatch! {
    /// Backward cell update of one row. `gates` holds the activated gates, `c` and `c_prev` the
    /// cell states after and before the step, `dh` the gradient of the step's hidden state.
    /// `dc` (the cell-state gradient from the later steps) becomes the gradient of `c_prev`;
    /// `da` receives the gradient of the gate pre-activations.
    fn backward(
        gates: &[f32],
        c: &[f32],
        c_prev: &[f32],
        dh: &[f32],
        dc: &mut [f32],
        da: &mut [f32],
    ) {
        let hidden = c.len();
        let (i, rest) = gates.split_at(hidden);
        let (f, rest) = rest.split_at(hidden);
        let (g, o) = rest.split_at(hidden);
        let (da_i, rest) = da.split_at_mut(hidden);
        let (da_f, rest) = rest.split_at_mut(hidden);
        let (da_g, da_o) = rest.split_at_mut(hidden);
        let (c_prev, dh, dc) = (&c_prev[..hidden], &dh[..hidden], &mut dc[..hidden]);
        for j in 0..hidden {
            let (iv, fv, gv, ov) = (i[j], f[j], g[j], o[j]);
            let tc = tanh(c[j]);
            let dcv = dc[j] + dh[j] * ov * (1.0 - tc * tc);
            da_i[j] = dcv * gv * iv * (1.0 - iv);
            da_f[j] = dcv * c_prev[j] * fv * (1.0 - fv);
            da_g[j] = dcv * iv * (1.0 - gv * gv);
            da_o[j] = dh[j] * tc * ov * (1.0 - ov);
            dc[j] = dcv * fv;
        }
    }
}

#[cfg(test)]
mod tests {
    /// The polynomial activations against the standard library's, over the range that matters.
    #[test]
    fn activations_match_libm() {
        let mut worst = [0.0f32; 3];
        for k in -200_000..=200_000 {
            let x = k as f32 * 1e-4;
            let errors = [
                (super::exp(x) - x.exp()).abs() / x.exp(),
                (super::sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs(),
                (super::tanh(x) - x.tanh()).abs(),
            ];
            for (w, e) in worst.iter_mut().zip(errors) {
                *w = w.max(e);
            }
        }
        assert!(worst[0] < 3e-7, "exp relative error {}", worst[0]);
        assert!(worst[1] < 1.5e-7, "sigmoid absolute error {}", worst[1]);
        assert!(worst[2] < 2e-7, "tanh absolute error {}", worst[2]);
        // Saturation without infinities or NaN.
        for x in [-1e4f32, -100.0, 100.0, 1e4] {
            assert!(super::sigmoid(x).is_finite() && super::tanh(x).is_finite());
        }
        assert_eq!(super::tanh(100.0), 1.0);
        assert_eq!(super::tanh(-100.0), -1.0);
        assert_eq!(super::sigmoid(100.0), 1.0);
        // A diverged value stays visible.
        assert!(super::sigmoid(f32::NAN).is_nan() && super::tanh(f32::NAN).is_nan());
    }
}
