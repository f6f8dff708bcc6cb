//! Cosine kernel rows for MMR and DPP: L2-normalised float32 embeddings, dot products accumulated
//! in float64. A float32 x float32 product is exact in float64, so the FMA (AVX2) path and the
//! portable path give bit-identical results: the output never depends on the CPU's features.

use crate::{invalid, Result};

/// Writes the L2-normalised rows of `emb` (`n x dim`, row-major) into `out`. A zero row stays
/// zero (its similarity to everything, itself included, is 0). Non-finite values are an error.
pub fn normalise_rows(emb: &[f32], dim: usize, out: &mut Vec<f32>) -> Result<()> {
    out.clear();
    out.reserve(emb.len());
    for (r, row) in emb.chunks_exact(dim).enumerate() {
        let mut ss = 0.0f64;
        for &x in row {
            ss += x as f64 * x as f64;
        }
        if !ss.is_finite() {
            return Err(invalid!("embeddings row {r} has a NaN or infinite value"));
        }
        let inv = if ss > 0.0 { 1.0 / ss.sqrt() } else { 0.0 };
        out.extend(row.iter().map(|&x| (x as f64 * inv) as f32));
    }
    Ok(())
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f64 {
    // Eight independent accumulators: no loop-carried latency chain, and LLVM packs them into
    // vector registers. The order of additions is fixed, so results are reproducible.
    let mut acc = [0.0f64; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] as f64 * y[j] as f64;
        }
    }
    let mut tail = 0.0f64;
    for (x, y) in ra.iter().zip(rb) {
        tail += *x as f64 * *y as f64;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[inline(always)]
fn row_body(rows: &[f32], dim: usize, x: &[f32], out: &mut [f64]) {
    for (o, r) in out.iter_mut().zip(rows.chunks_exact(dim)) {
        *o = dot_body(r, x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(rows: &[f32], dim: usize, x: &[f32], out: &mut [f64]) {
    row_body(rows, dim, x, out)
}

/// `out[i] = <rows[i], x>` for every row of `rows` (`out.len()` rows of `dim`).
pub fn kernel_row(rows: &[f32], dim: usize, x: &[f32], out: &mut [f64]) {
    debug_assert_eq!(rows.len(), out.len() * dim);
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { row_avx2(rows, dim, x, out) };
            return;
        }
    }
    row_body(rows, dim, x, out)
}

/// One dot product (same arithmetic as [`kernel_row`]).
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    dot_body(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_row_matches_dot_and_f64_reference() {
        let dim = 13;
        let n = 7;
        let rows: Vec<f32> = (0..n * dim).map(|i| ((i * 37 % 11) as f32) - 5.0).collect();
        let x: Vec<f32> = (0..dim).map(|i| (i as f32) * 0.25 - 1.0).collect();
        let mut out = vec![0.0; n];
        kernel_row(&rows, dim, &x, &mut out);
        for i in 0..n {
            let r = &rows[i * dim..(i + 1) * dim];
            let exact: f64 = r.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert_eq!(out[i], dot(r, &x));
            assert!((out[i] - exact).abs() < 1e-12);
        }
    }

    #[test]
    fn normalise_keeps_zero_rows_and_rejects_nan() {
        let mut out = Vec::new();
        normalise_rows(&[3.0, 4.0, 0.0, 0.0], 2, &mut out).unwrap();
        assert_eq!(out, vec![0.6, 0.8, 0.0, 0.0]);
        assert!(normalise_rows(&[f32::NAN, 1.0], 2, &mut out).is_err());
    }
}
