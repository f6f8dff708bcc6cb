//! IEEE half-precision traversal codes: each stored vector is also kept as fp16 (half the bytes
//! of the float row, ~11 bits of mantissa, no calibration), and level-0 search compares the f32
//! query with them (AVX2 + F16C + FMA when the CPU has them, scalar otherwise). Conversion is
//! hand-written (round to nearest even, as F16C does) so no crate is needed for it.

/// Largest finite half (65504): larger magnitudes are clipped to it instead of becoming inf.
const MAX_HALF: u16 = 0x7bff;

/// `x` rounded to the nearest half (ties to even); beyond the half range, the largest finite
/// half of the same sign; NaN stays NaN (never stored: inputs are validated finite).
pub fn to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return if man != 0 {
            sign | 0x7e00
        } else {
            sign | MAX_HALF
        };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | MAX_HALF;
    }
    if e <= 0 {
        // Subnormal half (value = r * 2^-24) or zero.
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let (r, rem, half) = (m >> shift, m & ((1 << shift) - 1), 1u32 << (shift - 1));
        let r = r + u32::from(rem > half || (rem == half && r & 1 == 1));
        return sign | r as u16;
    }
    let r = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    // A carry out of the mantissa moves to the exponent, which is the right rounding.
    let r = r + u32::from(rem > 0x1000 || (rem == 0x1000 && r & 1 == 1));
    sign | (r as u16).min(MAX_HALF)
}

/// The value of a half (exact: every half is a float).
#[inline(always)]
pub fn from_f16(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match exp {
        0 => {
            let v = man as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        0x1f => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// Encode `v` into `out` (2 bytes per value, little-endian; zero past `v`).
pub fn encode(v: &[f32], out: &mut [u8]) {
    for (j, c) in out.chunks_exact_mut(2).enumerate() {
        let h = v.get(j).map_or(0, |&x| to_f16(x));
        c.copy_from_slice(&h.to_le_bytes());
    }
}

/// An upper bound on |code distance - float distance| for the f32 query `q` (padded row) and
/// any stored row of Euclidean norm at most `max_norm`: `1 - q.h` vs `1 - q.v` (`l2` false) or
/// `|q - h|^2` vs `|q - v|^2`. Each half is within `2^-11 |v_i|` of its value (normal range)
/// or `2^-25` (subnormal), so `|q.(h - v)| <= 2^-11 |q| |v| + 2^-25 |q|_1`; for l2,
/// `|q - h|^2 - |q - v|^2 = e.(e - 2(q - v))` with `|e| <= E = 2^-11 |v| + 2^-25 sqrt(n)`, so
/// at most `2E(|q| + |v|) + E^2`. Both kernels accumulate in f32 (`n 2^-24` relative each),
/// and the total is doubled for margin. Infinite when a value may have been clipped (a norm
/// beyond the half range): then no bound holds and the caller re-ranks everything.
pub fn error_bound(q: &[f32], l2: bool, max_norm: f32) -> f32 {
    if max_norm.is_nan() || max_norm > 65504.0 {
        return f32::INFINITY;
    }
    let (rel, sub) = (2f32.powi(-11), 2f32.powi(-25));
    let n = q.len() as f32;
    let acc = n * 2f32.powi(-23);
    let qn = q.iter().map(|x| x * x).sum::<f32>().sqrt();
    let b = if l2 {
        let e = rel * max_norm + sub * n.sqrt();
        let span = qn + max_norm;
        2.0 * e * span + e * e + acc * span * span
    } else {
        let q1 = q.iter().map(|x| x.abs()).sum::<f32>();
        rel * qn * max_norm + sub * q1 + acc * qn * max_norm
    };
    2.0 * b
}

/// AVX2, FMA and F16C present (std caches the CPUID result).
pub fn has_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The halfs of a code row (`code` holds `2 n` bytes, 2-byte aligned as every row is).
#[inline(always)]
fn halfs(code: &[u8]) -> &[u16] {
    debug_assert_eq!(code.as_ptr() as usize % 2, 0);
    // SAFETY: rows start at multiples of 16 bytes of a 64-byte aligned buffer; any bit
    // pattern is a valid u16.
    unsafe { std::slice::from_raw_parts(code.as_ptr() as *const u16, code.len() / 2) }
}

/// `sum q_j h_j` over `min(q.len(), code.len() / 2)` values.
#[inline(always)]
pub fn dot(q: &[f32], code: &[u8], simd: bool) -> f32 {
    let h = halfs(code);
    #[cfg(target_arch = "x86_64")]
    {
        if simd {
            // SAFETY: the caller passes `simd` only from `has_f16c()`.
            return unsafe { x86::dot(q, h) };
        }
    }
    let _ = simd;
    q.iter().zip(h).map(|(a, &b)| a * from_f16(b)).sum()
}

/// `sum (q_j - h_j)^2` over `min(q.len(), code.len() / 2)` values.
#[inline(always)]
pub fn l2(q: &[f32], code: &[u8], simd: bool) -> f32 {
    let h = halfs(code);
    #[cfg(target_arch = "x86_64")]
    {
        if simd {
            // SAFETY: as above.
            return unsafe { x86::l2(q, h) };
        }
    }
    let _ = simd;
    q.iter()
        .zip(h)
        .map(|(a, &b)| (a - from_f16(b)) * (a - from_f16(b)))
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::from_f16;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// 8 halfs widened to floats.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    /// Safety: AVX2, FMA and F16C are available.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot(q: &[f32], h: &[u16]) -> f32 {
        let n = q.len().min(h.len());
        let (pq, ph) = (q.as_ptr(), h.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i)), load8(ph.add(i)), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i + 8)), load8(ph.add(i + 8)), s1);
            i += 16;
        }
        if i + 8 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i)), load8(ph.add(i)), s0);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(s0, s1));
        while i < n {
            s += *pq.add(i) * from_f16(*ph.add(i));
            i += 1;
        }
        s
    }

    /// Safety: AVX2, FMA and F16C are available.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn l2(q: &[f32], h: &[u16]) -> f32 {
        let n = q.len().min(h.len());
        let (pq, ph) = (q.as_ptr(), h.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            let d0 = _mm256_sub_ps(_mm256_loadu_ps(pq.add(i)), load8(ph.add(i)));
            let d1 = _mm256_sub_ps(_mm256_loadu_ps(pq.add(i + 8)), load8(ph.add(i + 8)));
            s0 = _mm256_fmadd_ps(d0, d0, s0);
            s1 = _mm256_fmadd_ps(d1, d1, s1);
            i += 16;
        }
        if i + 8 <= n {
            let d0 = _mm256_sub_ps(_mm256_loadu_ps(pq.add(i)), load8(ph.add(i)));
            s0 = _mm256_fmadd_ps(d0, d0, s0);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(s0, s1));
        while i < n {
            let d = *pq.add(i) - from_f16(*ph.add(i));
            s += d * d;
            i += 1;
        }
        s
    }

    /// Hardware conversion, for the tests of the hand-written one.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn hw(x: [f32; 8]) -> [u16; 8] {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(x.as_ptr()));
        let mut out = [0u16; 8];
        _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, h);
        out
    }

    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn hw_back(h: [u16; 8]) -> [f32; 8] {
        let mut out = [0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), load8(h.as_ptr()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ann::distance::tests::data;

    #[test]
    fn kernels_match_float64_reference_for_every_length() {
        for n in 0..70 {
            let (a, b) = (data(n, 1), data(n, 7));
            // The row is padded like a stored one (zeros past n) and also given unpadded.
            let mut buf = vec![0u16; n.div_ceil(16) * 16];
            // SAFETY: the u16 buffer viewed as its bytes (2-byte aligned, as stored rows are).
            let code = unsafe {
                std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, buf.len() * 2)
            };
            encode(&b, code);
            let bh: Vec<f64> = b.iter().map(|&x| from_f16(to_f16(x)) as f64).collect();
            let dot64: f64 = a.iter().zip(&bh).map(|(x, y)| *x as f64 * y).sum();
            let l264: f64 = a
                .iter()
                .zip(&bh)
                .map(|(x, y)| (*x as f64 - y).powi(2))
                .sum();
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            for simd in [false, has_f16c()] {
                for c in [&code[..], &code[..2 * n]] {
                    let (d, l) = (dot(&a, c, simd) as f64, l2(&a, c, simd) as f64);
                    assert!(
                        (d - dot64).abs() < 1e-5,
                        "n={n} simd={simd} dot {d} vs {dot64}"
                    );
                    assert!(
                        (l - l264).abs() < 1e-5,
                        "n={n} simd={simd} l2 {l} vs {l264}"
                    );
                    // fp16 rounding: half an ulp (2^-11 relative) per value at most.
                    let bound = a
                        .iter()
                        .zip(&b)
                        .map(|(x, y)| (x * y).abs() as f64)
                        .sum::<f64>();
                    assert!(
                        (d - exact).abs() <= bound / 2048.0 + 1e-6,
                        "n={n} {d} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn conversion_round_trips_every_half() {
        for h in 0..=u16::MAX {
            let x = from_f16(h);
            if x.is_nan() {
                assert!(to_f16(x) & 0x7c00 == 0x7c00 && to_f16(x) & 0x3ff != 0);
            } else if x.is_infinite() {
                assert_eq!(to_f16(x), (h & 0x8000) | MAX_HALF, "inf clips");
            } else {
                assert_eq!(to_f16(x), h, "{h:#x} {x}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn conversion_matches_f16c() {
        if !has_f16c() {
            return;
        }
        let mut x = 0x9e37_79b9u32;
        let mut vals: Vec<f32> = vec![0.0, -0.0, 1.0, 65504.0, 65519.0, 5.96e-8, 2.98e-8, 1e-10];
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Random bit patterns restricted to the half range, plus subnormals.
            let f = f32::from_bits(x);
            if f.is_finite() && f.abs() < 65504.0 {
                vals.push(f);
            }
            vals.push((x as f32 / u32::MAX as f32 - 0.5) * 1e-4);
        }
        for ch in vals.chunks(8) {
            let mut a = [0f32; 8];
            a[..ch.len()].copy_from_slice(ch);
            // SAFETY: F16C detected above.
            let (hw, back) = unsafe { (x86::hw(a), x86::hw_back(x86::hw(a))) };
            for j in 0..8 {
                assert_eq!(to_f16(a[j]), hw[j], "{}", a[j]);
                assert_eq!(from_f16(hw[j]).to_bits(), back[j].to_bits());
            }
        }
    }

    #[test]
    fn error_bound_holds_on_random_rows() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        for (n, scale) in [(50usize, 1.0f32), (96, 0.01), (96, 300.0), (7, 1e-6)] {
            let stride = n.div_ceil(16) * 16;
            let mut q = vec![0f32; stride];
            q[..n].iter_mut().for_each(|x| *x = next() * scale);
            for l2 in [false, true] {
                let mut worst = 0f32;
                let mut max_norm = 0f32;
                let rows: Vec<Vec<f32>> = (0..300)
                    .map(|_| {
                        let mut v = vec![0f32; stride];
                        v[..n].iter_mut().for_each(|x| *x = next() * scale);
                        max_norm = max_norm.max(v.iter().map(|x| x * x).sum::<f32>().sqrt());
                        v
                    })
                    .collect();
                for v in &rows {
                    let mut code = vec![0u8; stride * 2];
                    encode(v, &mut code);
                    let h: Vec<f64> = (0..stride)
                        .map(|j| {
                            from_f16(u16::from_le_bytes([code[2 * j], code[2 * j + 1]])) as f64
                        })
                        .collect();
                    let (cd, fd) = if l2 {
                        let c: f64 = q.iter().zip(&h).map(|(a, b)| (*a as f64 - b).powi(2)).sum();
                        let f: f64 = q
                            .iter()
                            .zip(v)
                            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                            .sum();
                        (c, f)
                    } else {
                        let c: f64 = q.iter().zip(&h).map(|(a, b)| *a as f64 * b).sum();
                        let f: f64 = q.iter().zip(v).map(|(a, b)| *a as f64 * *b as f64).sum();
                        (c, f)
                    };
                    worst = worst.max((cd - fd).abs() as f32);
                }
                let b = error_bound(&q, l2, max_norm);
                assert!(
                    worst <= b,
                    "n {n} scale {scale} l2 {l2}: error {worst} > bound {b}"
                );
                // Not uselessly loose: within 200x of the worst error seen.
                assert!(
                    b < 200.0 * worst.max(1e-30) || b < 1e-9,
                    "bound {b} vs {worst}"
                );
            }
        }
        assert!(error_bound(&[1.0; 16], false, 1e6).is_infinite());
    }
}
