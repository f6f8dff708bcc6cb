//! Cosine similarities for MMR and DPP: embeddings are L2-normalised into float64 on first use,
//! and every dot product sums in one fixed order with fused multiply-adds, so the AVX2 path and
//! the portable path round identically and the output never depends on the CPU.

/// Whether every value is finite (one pass, no early exit, so it vectorises).
#[inline(always)]
fn all_finite_with<S: Simd>(x: &[f32]) -> bool {
    x.iter().fold(0u32, |acc, v| {
        acc | ((v.to_bits() & 0x7f80_0000 == 0x7f80_0000) as u32)
    }) == 0
}

dispatch_simd!(pub fn all_finite, all_finite_with, (x: &[f32]) -> bool);

/// Writes the L2-normalised `row` into `out` (same length) and returns its self-similarity:
/// exactly 1, or 0 for a zero row (which stays zero: its similarity to everything is 0).
#[inline(always)]
pub fn normalise_into(row: &[f32], out: &mut [f64]) -> f64 {
    let mut ss = 0.0f64;
    for &x in row {
        ss += x as f64 * x as f64;
    }
    let norm = if ss > 0.0 { ss.sqrt() } else { 1.0 };
    for (o, &x) in out.iter_mut().zip(row) {
        *o = x as f64 / norm;
    }
    if ss > 0.0 {
        1.0
    } else {
        0.0
    }
}

/// `<a, b>` in the one summation order every path uses: 16 lane accumulators (element t goes to
/// lane t % 16) over whole chunks of 16, fused multiply-adds, reduced as below, then the tail in
/// order. Fused multiply-add rounds once on every CPU, so the AVX2 path and the portable path
/// give bit-identical results. (The hot loops call [`Simd::dot`] instead, compiled per set.)
#[cfg(test)]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2() {
            // SAFETY: the CPU supports AVX2 and FMA.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

fn dot_portable(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..16 {
            acc[j] = x[j].mul_add(y[j], acc[j]);
        }
    }
    let mut w = [0.0f64; 4];
    for l in 0..4 {
        w[l] = (acc[l] + acc[4 + l]) + (acc[8 + l] + acc[12 + l]);
    }
    let mut tail = 0.0f64;
    for (x, y) in ra.iter().zip(rb) {
        tail = x.mul_add(*y, tail);
    }
    ((w[0] + w[1]) + (w[2] + w[3])) + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_avx2(a: &[f64], b: &[f64]) -> f64 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let chunks = n / 16;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_pd(); 4];
    for c in 0..chunks {
        for (v, acc) in acc.iter_mut().enumerate() {
            let off = c * 16 + v * 4;
            *acc = _mm256_fmadd_pd(
                _mm256_loadu_pd(pa.add(off)),
                _mm256_loadu_pd(pb.add(off)),
                *acc,
            );
        }
    }
    let w = _mm256_add_pd(_mm256_add_pd(acc[0], acc[1]), _mm256_add_pd(acc[2], acc[3]));
    let mut lanes = [0.0f64; 4];
    _mm256_storeu_pd(lanes.as_mut_ptr(), w);
    let mut tail = 0.0f64;
    for t in chunks * 16..n {
        tail = _mm_cvtsd_f64(_mm_fmadd_sd(
            _mm_set_sd(a[t]),
            _mm_set_sd(b[t]),
            _mm_set_sd(tail),
        ));
    }
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + tail
}

/// `<a, b>` for short vectors (Cholesky rows, length < k): 8 lane accumulators over whole chunks
/// of 8, reduced pairwise, then the tail in order; fused multiply-adds as in [`dot_portable`].
#[inline(always)]
fn dot_short_portable(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] = x[j].mul_add(y[j], acc[j]);
        }
    }
    let w = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    let mut tail = 0.0f64;
    for (x, y) in ra.iter().zip(rb) {
        tail = x.mul_add(*y, tail);
    }
    ((w[0] + w[1]) + (w[2] + w[3])) + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_short_avx2(a: &[f64], b: &[f64]) -> f64 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let chunks = n / 8;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut a0 = _mm256_setzero_pd();
    let mut a1 = _mm256_setzero_pd();
    for c in 0..chunks {
        let off = c * 8;
        a0 = _mm256_fmadd_pd(
            _mm256_loadu_pd(pa.add(off)),
            _mm256_loadu_pd(pb.add(off)),
            a0,
        );
        a1 = _mm256_fmadd_pd(
            _mm256_loadu_pd(pa.add(off + 4)),
            _mm256_loadu_pd(pb.add(off + 4)),
            a1,
        );
    }
    let mut lanes = [0.0f64; 4];
    _mm256_storeu_pd(lanes.as_mut_ptr(), _mm256_add_pd(a0, a1));
    let mut tail = 0.0f64;
    for t in chunks * 8..n {
        tail = _mm_cvtsd_f64(_mm_fmadd_sd(
            _mm_set_sd(a[t]),
            _mm_set_sd(b[t]),
            _mm_set_sd(tail),
        ));
    }
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + tail
}

/// The dot products of one instruction set, so that a hot loop can be compiled once per set
/// (`Portable`, and `Avx2` inside a `#[target_feature(enable = "avx2,fma")]` function) with its
/// dot products inlined.
pub(crate) trait Simd {
    fn dot(a: &[f64], b: &[f64]) -> f64;
    fn dot_short(a: &[f64], b: &[f64]) -> f64;
}

pub(crate) struct Portable;

impl Simd for Portable {
    #[inline(always)]
    fn dot(a: &[f64], b: &[f64]) -> f64 {
        dot_portable(a, b)
    }
    #[inline(always)]
    fn dot_short(a: &[f64], b: &[f64]) -> f64 {
        dot_short_portable(a, b)
    }
}

/// Only use inside code that runs after [`has_avx2`] returned true.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    #[inline(always)]
    fn dot(a: &[f64], b: &[f64]) -> f64 {
        // SAFETY: `Avx2` is only used after `has_avx2()` (see the dispatching callers).
        unsafe { dot_avx2(a, b) }
    }
    #[inline(always)]
    fn dot_short(a: &[f64], b: &[f64]) -> f64 {
        // SAFETY: as above.
        unsafe { dot_short_avx2(a, b) }
    }
}

/// Defines `fn $name(args) -> ret` that runs `$generic::<Avx2>` compiled with AVX2 + FMA when
/// the CPU has them, and `$generic::<Portable>` otherwise.
macro_rules! dispatch_simd {
    ($vis:vis fn $name:ident, $generic:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn fast($($arg: $ty),*) -> $ret {
                    $generic::<$crate::rerank::kernel::Avx2>($($arg),*)
                }
                if $crate::rerank::kernel::has_avx2() {
                    // SAFETY: the CPU supports the features `fast` is compiled for.
                    return unsafe { fast($($arg),*) };
                }
            }
            $generic::<$crate::rerank::kernel::Portable>($($arg),*)
        }
    };
}
pub(crate) use dispatch_simd;

/// Whether the AVX2 + FMA kernels may run on this CPU (cached by std).
#[inline]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_paths_agree_bitwise_and_match_a_plain_sum() {
        for dim in [1, 13, 16, 64, 70, 300] {
            let a: Vec<f64> = (0..dim).map(|i| ((i * 37 % 11) as f64) - 5.3).collect();
            let b: Vec<f64> = (0..dim).map(|i| (i as f64) * 0.25 - 1.1).collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert_eq!(dot_portable(&a, &b), dot(&a, &b), "dim {dim}");
            let short = if has_avx2() {
                unsafe { dot_short_avx2(&a, &b) }
            } else {
                dot_short_portable(&a, &b)
            };
            assert_eq!(short, dot_short_portable(&a, &b), "dim {dim}");
            assert!((short - plain).abs() < 1e-9);
            assert!((dot(&a, &b) - plain).abs() < 1e-9);
        }
    }

    #[test]
    fn normalise_keeps_zero_rows() {
        let mut out = [1.0f64; 2];
        normalise_into(&[3.0, 4.0], &mut out);
        assert_eq!(out, [0.6, 0.8]);
        normalise_into(&[0.0, 0.0], &mut out);
        assert_eq!(out, [0.0, 0.0]);
        assert!(all_finite(&[1.0, -2.0]));
        assert!(!all_finite(&[1.0, f32::NAN]));
        assert!(!all_finite(&[f32::INFINITY]));
    }
}
