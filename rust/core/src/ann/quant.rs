//! Traversal codes: a compact copy of every stored vector that level-0 search reads instead of
//! the float row, then re-ranks its final candidates with the floats (so returned distances are
//! exact). Two codecs share this machinery (storage in `store.rs`, publication and search in
//! `graph.rs`): IEEE half precision (`f16.rs`; computed per insert, no fitting) and 8-bit scalar
//! codes (per-dimension offset and scale fitted once from the items present at calibration, with a
//! margin, then fixed, so the code of an inserted vector is computed on the fly, clipped to the
//! range; a rebuild re-fits). Both are asymmetric: the float query meets the stored codes.

use super::distance::Metric;
use super::f16;

/// Which traversal codes an index keeps (`HnswParams::quantize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantize {
    /// Level-0 search on the float rows.
    Off,
    /// 8-bit scalar codes, fitted once the index holds `CALIBRATE_AT` items.
    Sq8,
    /// IEEE half-precision codes from the first insert on.
    #[default]
    Fp16,
}

impl Quantize {
    /// `"fp16"`, `"sq8"`, or `"off"`.
    pub fn name(self) -> &'static str {
        match self {
            Quantize::Off => "off",
            Quantize::Sq8 => "sq8",
            Quantize::Fp16 => "fp16",
        }
    }

    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "off" => Ok(Quantize::Off),
            "sq8" => Ok(Quantize::Sq8),
            "fp16" => Ok(Quantize::Fp16),
            _ => Err(crate::invalid!(
                "quantize must be one of \"fp16\", \"sq8\", \"off\", got {s:?}"
            )),
        }
    }

    /// Stored in the file header (0 = off, so files from before the modes read as off).
    pub(crate) fn code(self) -> u8 {
        match self {
            Quantize::Off => 0,
            Quantize::Sq8 => 1,
            Quantize::Fp16 => 2,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        [Quantize::Off, Quantize::Sq8, Quantize::Fp16]
            .into_iter()
            .find(|q| q.code() == c)
    }

    /// Bytes of code per node for rows of `stride` floats: whole cache lines from 64 bytes up
    /// (so a row never straddles one line more than it needs), 0 when off.
    pub(crate) fn code_bytes(self, stride: usize) -> usize {
        let raw = match self {
            Quantize::Off => return 0,
            Quantize::Sq8 => stride,
            Quantize::Fp16 => 2 * stride,
        };
        if raw <= 32 {
            raw
        } else {
            raw.div_ceil(64) * 64
        }
    }
}

/// The codes in use by a graph (set once; from then on every node has a code).
pub enum Codec {
    Sq8(Quant),
    Fp16,
}

impl Codec {
    /// The code of `v` (a stored, padded row) into `out`.
    pub fn encode(&self, v: &[f32], out: &mut [u8]) {
        match self {
            Codec::Sq8(q) => q.encode(v, out),
            Codec::Fp16 => f16::encode(v, out),
        }
    }

    /// The query prepared for `metric` against these codes.
    pub fn query(&self, metric: Metric, q: &[f32]) -> QueryCode {
        match self {
            Codec::Sq8(qz) => QueryCode::Sq8(qz.query(metric, q)),
            Codec::Fp16 => QueryCode::Fp16 {
                q: q.to_vec(),
                l2: metric == Metric::L2,
                simd: f16::has_f16c(),
            },
        }
    }
}

/// A query prepared for one codec.
pub enum QueryCode {
    Sq8(Sq8Query),
    /// `1 - q.h` (ip, cosine) or `|q - h|^2` (l2) against the halfs `h`.
    Fp16 {
        q: Vec<f32>,
        l2: bool,
        simd: bool,
    },
}

impl QueryCode {
    #[inline(always)]
    pub fn dist(&self, code: &[u8]) -> f32 {
        match self {
            QueryCode::Sq8(s) => s.dist(code),
            QueryCode::Fp16 { q, l2: true, simd } => f16::l2(q, code, *simd),
            QueryCode::Fp16 { q, l2: false, simd } => 1.0 - f16::dot(q, code, *simd),
        }
    }

    /// How far a code distance can be from the float distance, for stored rows of norm at most
    /// `max_norm` (`f16::error_bound`); infinite for 8-bit codes (clipping to the fitted range
    /// has no bound), so those are always re-ranked in full.
    pub fn error_bound(&self, max_norm: f32) -> f32 {
        match self {
            QueryCode::Sq8(_) => f32::INFINITY,
            QueryCode::Fp16 { q, l2, .. } => f16::error_bound(q, *l2, max_norm),
        }
    }
}

/// Fitted per-dimension ranges; codes are `stride` bytes (zero in the padding).
pub struct Quant {
    offset: Vec<f32>,
    scale: Vec<f32>,
    dim: usize,
    pub stride: usize,
}

/// A query prepared for one metric: `dist(code) = bias + kernel(a, w, code)`.
pub struct Sq8Query {
    pub a: Vec<f32>,
    pub w: Vec<f32>,
    pub bias: f32,
    pub l2: bool,
    /// AVX2+FMA present (checked once per query, not per distance).
    simd: bool,
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl Quant {
    /// Fit on `rows` (each at least `dim` long). Ranges get a 2% margin on each side so
    /// later inserts from the same distribution rarely clip.
    pub fn fit<'a>(rows: impl Iterator<Item = &'a [f32]>, dim: usize, stride: usize) -> Self {
        let mut lo = vec![f32::INFINITY; dim];
        let mut hi = vec![f32::NEG_INFINITY; dim];
        for r in rows {
            for j in 0..dim {
                lo[j] = lo[j].min(r[j]);
                hi[j] = hi[j].max(r[j]);
            }
        }
        let mut offset = vec![0f32; stride];
        let mut scale = vec![0f32; stride];
        for j in 0..dim {
            if !lo[j].is_finite() {
                continue;
            }
            let m = 0.02 * (hi[j] - lo[j]);
            offset[j] = lo[j] - m;
            scale[j] = (hi[j] - lo[j] + 2.0 * m) / 255.0;
        }
        Quant {
            offset,
            scale,
            dim,
            stride,
        }
    }

    pub fn encode(&self, v: &[f32], out: &mut [u8]) {
        for j in 0..self.stride {
            out[j] = if j < self.dim && self.scale[j] > 0.0 {
                ((v[j] - self.offset[j]) / self.scale[j])
                    .round()
                    .clamp(0.0, 255.0) as u8
            } else {
                0
            };
        }
    }

    /// The query terms for `metric` (see `Sq8Query`).
    pub fn query(&self, metric: Metric, q: &[f32]) -> Sq8Query {
        let n = self.stride;
        let (mut a, mut w) = (vec![0f32; n], vec![0f32; n]);
        let mut bias = 0f32;
        let l2 = metric == Metric::L2;
        for j in 0..self.dim {
            let (o, s) = (self.offset[j], self.scale[j]);
            if l2 {
                // (q - o - s c)^2 = s^2 (t - c)^2 with t = (q - o) / s
                if s > 0.0 {
                    a[j] = (q[j] - o) / s;
                    w[j] = s * s;
                } else {
                    bias += (q[j] - o) * (q[j] - o);
                }
            } else {
                // 1 - q.(o + s c) = (1 - q.o) - sum (q s) c
                a[j] = -q[j] * s;
                bias -= q[j] * o;
            }
        }
        if !l2 {
            bias += 1.0;
        }
        Sq8Query {
            a,
            w,
            bias,
            l2,
            simd: has_avx2(),
        }
    }
}

impl Sq8Query {
    #[inline(always)]
    pub fn dist(&self, code: &[u8]) -> f32 {
        if self.l2 {
            self.bias + wl2_u8(&self.a, &self.w, code, self.simd)
        } else {
            self.bias + dot_u8(&self.a, code, self.simd)
        }
    }
}

/// `sum a_j c_j` over `a.len()` (a multiple of 16; `code` at least as long).
#[inline(always)]
pub fn dot_u8(a: &[f32], code: &[u8], simd: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if simd && has_avx2() {
            // SAFETY: AVX2+FMA detected (std caches the CPUID result); lengths checked inside.
            return unsafe { x86::dot_u8(a, code) };
        }
    }
    a.iter().zip(code).map(|(x, &c)| x * c as f32).sum()
}

/// `sum w_j (a_j - c_j)^2`.
#[inline(always)]
pub fn wl2_u8(a: &[f32], w: &[f32], code: &[u8], simd: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if simd && has_avx2() {
            // SAFETY: as above.
            return unsafe { x86::wl2_u8(a, w, code) };
        }
    }
    a.iter()
        .zip(w)
        .zip(code)
        .map(|((x, y), &c)| y * (x - c as f32) * (x - c as f32))
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// 8 codes widened to floats.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load8(p: *const u8) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)))
    }

    /// Safety: AVX2 and FMA are available.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_u8(a: &[f32], code: &[u8]) -> f32 {
        let n = a.len().min(code.len()) / 16 * 16;
        let (pa, pc) = (a.as_ptr(), code.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i < n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), load8(pc.add(i)), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), load8(pc.add(i + 8)), s1);
            i += 16;
        }
        hsum(_mm256_add_ps(s0, s1))
    }

    /// Safety: AVX2 and FMA are available.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn wl2_u8(a: &[f32], w: &[f32], code: &[u8]) -> f32 {
        let n = a.len().min(w.len()).min(code.len()) / 16 * 16;
        let (pa, pw, pc) = (a.as_ptr(), w.as_ptr(), code.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i < n {
            let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), load8(pc.add(i)));
            let d1 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i + 8)), load8(pc.add(i + 8)));
            s0 = _mm256_fmadd_ps(_mm256_mul_ps(d0, _mm256_loadu_ps(pw.add(i))), d0, s0);
            s1 = _mm256_fmadd_ps(_mm256_mul_ps(d1, _mm256_loadu_ps(pw.add(i + 8))), d1, s1);
            i += 16;
        }
        hsum(_mm256_add_ps(s0, s1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_distances_track_float_distances() {
        let (dim, stride) = (50, 64);
        let mut x = 0x1234_5678u32;
        let mut r = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) - 0.5
        };
        let rows: Vec<Vec<f32>> = (0..200)
            .map(|_| {
                let mut v: Vec<f32> = (0..dim).map(|_| r()).collect();
                v.resize(stride, 0.0);
                v
            })
            .collect();
        let qz = Quant::fit(rows.iter().map(|v| v.as_slice()), dim, stride);
        let mut code = vec![0u8; stride];
        for metric in [Metric::Ip, Metric::L2] {
            let exact = super::super::distance::scalar(metric);
            let qc = qz.query(metric, &rows[0]);
            for v in &rows[1..] {
                qz.encode(v, &mut code);
                let (e, a) = (exact(&rows[0], v), qc.dist(&code));
                // half a step per dimension at most: |err| well below the spread of distances
                assert!(
                    (e - a).abs() < 0.02 * e.abs().max(1.0),
                    "{metric:?} {e} vs {a}"
                );
                let s: f32 = if metric == Metric::L2 {
                    wl2_u8(&qc.a, &qc.w, &code, true)
                } else {
                    dot_u8(&qc.a, &code, true)
                };
                let want: f32 = if metric == Metric::L2 {
                    qc.a.iter()
                        .zip(&qc.w)
                        .zip(&code)
                        .map(|((a, w), &c)| w * (a - c as f32).powi(2))
                        .sum()
                } else {
                    qc.a.iter().zip(&code).map(|(a, &c)| a * c as f32).sum()
                };
                assert!(
                    (s - want).abs() <= 1e-3 * want.abs().max(1.0),
                    "kernel {s} vs {want}"
                );
            }
        }
    }
}
