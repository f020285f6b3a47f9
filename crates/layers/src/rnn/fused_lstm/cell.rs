//! The elementwise part of one LSTM step, for one batch row and a range of hidden units, written
//! as straight loops over the gate blocks so that the compiler vectorizes them (see
//! [`crate::fused::math`]).

use crate::fused::math::{sigmoid, simd_dispatch, tanh};

simd_dispatch! {
    /// Forward cell update of one row's units: the gate pre-activations `i, f, g, o` (one
    /// slice per gate, each of the units' length) are activated in place; writes the new cell
    /// state `c` and hidden state `h`.
    pub(super) fn forward(
        i: &mut [f32],
        f: &mut [f32],
        g: &mut [f32],
        o: &mut [f32],
        c_prev: &[f32],
        c: &mut [f32],
        h: &mut [f32],
    ) {
        let n = c.len();
        let (i, f, g, o) = (&mut i[..n], &mut f[..n], &mut g[..n], &mut o[..n]);
        let (c_prev, h) = (&c_prev[..n], &mut h[..n]);
        for j in 0..n {
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

simd_dispatch! {
    /// Backward cell update of one row's units, in place: the gate slices `[i, f, g, o]` hold
    /// the activated gates on entry and the gradient of the gate pre-activations on return.
    /// `c` and `c_prev` are the cell states after and before the step, `dh` the gradient of
    /// the step's hidden state; `dc` (the cell-state gradient from the later steps) becomes
    /// the gradient of `c_prev`.
    pub(super) fn backward(
        gates: [&mut [f32]; 4],
        c: &[f32],
        c_prev: &[f32],
        dh: &[f32],
        dc: &mut [f32],
    ) {
        let n = c.len();
        let [i, f, g, o] = gates;
        let (i, f, g, o) = (&mut i[..n], &mut f[..n], &mut g[..n], &mut o[..n]);
        let (c_prev, dh, dc) = (&c_prev[..n], &dh[..n], &mut dc[..n]);
        for j in 0..n {
            let (iv, fv, gv, ov) = (i[j], f[j], g[j], o[j]);
            let tc = tanh(c[j]);
            let dcv = dc[j] + dh[j] * ov * (1.0 - tc * tc);
            i[j] = dcv * gv * iv * (1.0 - iv);
            f[j] = dcv * c_prev[j] * fv * (1.0 - fv);
            g[j] = dcv * iv * (1.0 - gv * gv);
            o[j] = dh[j] * tc * ov * (1.0 - ov);
            dc[j] = dcv * fv;
        }
    }
}
