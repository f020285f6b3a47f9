//! Vectorizable single-precision math for the fused kernels.
//!
//! `exp` is a branch-free polynomial (Cephes' single-precision coefficients, about 1 ulp on the
//! reduced range); `sigmoid`, `tanh` and the normal CDF are built on it, with absolute errors
//! below 2e-7. Only explicit operations are used (no fused multiply-add contraction), so a loop gives
//! the same bits whether the compiler vectorizes it or not.
//!
//! [`simd_dispatch!`](crate::fused::math::simd_dispatch) compiles a loop three times, for
//! AVX-512, for AVX2 + FMA (the widest the CPU has is chosen at run time) and for the baseline
//! target; the environment variable `LMFORGE_KERNELS=portable` forces the baseline build
//! (`avx2`: at most AVX2).

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split so that `n * LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting `1.5 * 2^23` rounds an `f32` of magnitude below `2^22` to an integer.
const ROUND: f32 = 12_582_912.0;

/// `e^x` for `x` clamped to `[-87, 88]` (no overflow to infinity, no subnormal results; NaN
/// stays NaN).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // `k` holds the integer `n = round(x log2 e)` in its low mantissa bits: `k`'s bits are
    // `ROUND`'s plus `n`.
    let k = x * LOG2E + ROUND;
    let n = k - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let p = p * (r * r) + r + 1.0;
    // `2^n` built from `k`'s bits with integer lanes: a float-to-int conversion here would be
    // a saturating `as` cast, which the compiler cannot vectorize.
    let scale = f32::from_bits(k.to_bits().wrapping_sub(ROUND.to_bits() - 127) << 23);
    p * scale
}

#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (1.0 + exp(2.0 * x))
}

/// Defines `fn $name(args) $body`, with the body compiled three times: for AVX-512 (F + BW,
/// with AVX2 + FMA), for AVX2 + FMA, and for the baseline target; the widest the CPU has (and
/// `LMFORGE_KERNELS` allows) runs. The body may use only its arguments.
macro_rules! simd_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
                fn wide512($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn wide($($arg: $ty),*) {
                    body($($arg),*)
                }
                if $crate::fused::math::wide_simd_512() {
                    // SAFETY: the CPU supports the features `wide512` is compiled for.
                    return unsafe { wide512($($arg),*) };
                }
                if $crate::fused::math::wide_simd() {
                    // SAFETY: the CPU supports the features `wide` is compiled for.
                    return unsafe { wide($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use simd_dispatch;

/// Whether [`simd_dispatch!`] bodies run their AVX-512 build: [`wide_simd`], the CPU has
/// AVX-512 F and BW, and `LMFORGE_KERNELS` is not `avx2`. Read once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn wide_simd_512() -> bool {
    static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WIDE.get_or_init(|| {
        wide_simd()
            && kernel_cap() != "avx2"
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
    })
}

/// The widest instruction set the kernels may use, from the environment variable
/// `LMFORGE_KERNELS`: `portable` (the baseline build of every kernel), `avx2` (at most AVX2 +
/// FMA), unset or anything else: the best the CPU has. CI runs the kernel tests with each.
#[cfg(target_arch = "x86_64")]
fn kernel_cap() -> &'static str {
    static CAP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CAP.get_or_init(|| std::env::var("LMFORGE_KERNELS").unwrap_or_default())
}

/// Whether [`simd_dispatch!`] bodies run their AVX2 + FMA build: the CPU has both and
/// `LMFORGE_KERNELS` is not `portable`. Read once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn wide_simd() -> bool {
    static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WIDE.get_or_init(|| {
        kernel_cap() != "portable"
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    })
}

/// `erfc(a)` for `a >= 0`: the Chebyshev fit of Numerical Recipes (`erfcc`), relative error
/// below 1.2e-7 before rounding.
#[inline(always)]
fn erfc_nonnegative(a: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * a);
    let p = 0.170_872_77;
    let p = p * t - 0.822_152_23;
    let p = p * t + 1.488_515_9;
    let p = p * t - 1.135_204;
    let p = p * t + 0.278_868_07;
    let p = p * t - 0.186_288_06;
    let p = p * t + 0.096_784_18;
    let p = p * t + 0.374_091_96;
    let p = p * t + 1.000_023_7;
    let p = p * t - 1.265_512_2;
    t * exp(p - a * a)
}

/// The standard normal CDF `Φ(x) = erfc(-x/√2) / 2`, branch-free: `erfc(|x|/√2) / 2` for
/// negative `x` (accurate relative to the small value, no cancellation) and one minus it for
/// positive `x`. Absolute error below 2e-7; relative below 3e-6 on the lower tail (tested down
/// to `x = -4`).
#[inline(always)]
pub(crate) fn normal_cdf(x: f32) -> f32 {
    let half_tail = 0.5 * erfc_nonnegative(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    if x < 0.0 { half_tail } else { 1.0 - half_tail }
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

    #[test]
    fn normal_cdf_matches_the_series() {
        // Φ(x) = (1 + erf(x/√2)) / 2 with erf by its Taylor series in f64 (|x| <= 4 here).
        let erf = |x: f64| {
            let (mut term, mut sum) = (x, x);
            for n in 1..400 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        let (mut worst_abs, mut worst_rel) = (0.0f64, 0.0f64);
        for k in -4000..=4000 {
            let x = k as f64 * 1e-3;
            let want = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
            let err = (f64::from(super::normal_cdf(x as f32)) - want).abs();
            worst_abs = worst_abs.max(err);
            if x < 0.0 {
                worst_rel = worst_rel.max(err / want);
            }
        }
        assert!(worst_abs < 2e-7, "normal_cdf absolute error {worst_abs}");
        assert!(
            worst_rel < 3e-6,
            "normal_cdf relative error on the lower tail {worst_rel}"
        );
        assert_eq!(super::normal_cdf(10.0), 1.0);
        assert!(super::normal_cdf(-10.0) < 1e-22);
        assert!(super::normal_cdf(f32::NAN).is_nan());
    }
}
