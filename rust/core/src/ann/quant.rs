//! Traversal codes: a compact copy of every stored vector that level-0 search reads instead of
//! the float row, then re-ranks its final candidates with the floats (so returned distances are
//! exact). Two codecs share this machinery (storage in `store.rs`, publication and search in
//! `graph.rs`): IEEE half precision (`f16.rs`; computed per insert, no fitting) and 8- or 4-bit
//! scalar codes (per-dimension offset and scale fitted once from the items present at
//! calibration, with a margin, then fixed, so the code of an inserted vector is computed on the
//! fly, clipped to the range; a rebuild re-fits). Both are asymmetric: the float query meets the
//! stored codes.
//! `Quantize::Auto` (the default) fits the 8-bit ranges at calibration and keeps them only if a
//! sample's nearest neighbours survive them (`Quant::agreement`), otherwise it takes fp16.

use super::distance::{DistFn, Metric};
use super::f16;

/// Which traversal codes an index keeps (`HnswParams::quantize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantize {
    /// Level-0 search on the float rows.
    Off,
    /// 8-bit scalar codes, fitted once the index holds `CALIBRATE_AT` items.
    Sq8,
    /// IEEE half-precision codes from the first insert on.
    Fp16,
    /// 4-bit scalar codes (half the bytes of 8-bit ones), fitted as `Sq8` is; ip and cosine
    /// only. For high-dimensional embeddings whose 8-bit codes do not fit the cache.
    Sq4,
    /// Chosen from the data once the index holds `CALIBRATE_AT` items: 8-bit codes when they
    /// keep a sample's nearest neighbours (`SQ8_MIN_AGREEMENT`), fp16 otherwise.
    #[default]
    Auto,
}

/// Share of the 10 nearest neighbours of sample rows the 8-bit codes must also rank in their 10
/// nearest for `Auto` to keep them (`Quant::agreement`).
pub const SQ8_MIN_AGREEMENT: f64 = 0.97;

/// The `agreement` check: this many query rows, each against up to `AGREEMENT_BASE` rows
/// (all of them when there are fewer: neighbours at the density the index will search).
const AGREEMENT_QUERIES: usize = 50;
const AGREEMENT_BASE: usize = 50_000;
const AGREEMENT_K: usize = 10;

impl Quantize {
    /// `"auto"`, `"fp16"`, `"sq8"`, `"sq4"`, or `"off"`.
    pub fn name(self) -> &'static str {
        match self {
            Quantize::Off => "off",
            Quantize::Sq8 => "sq8",
            Quantize::Sq4 => "sq4",
            Quantize::Fp16 => "fp16",
            Quantize::Auto => "auto",
        }
    }

    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "off" => Ok(Quantize::Off),
            "sq8" => Ok(Quantize::Sq8),
            "sq4" => Ok(Quantize::Sq4),
            "fp16" => Ok(Quantize::Fp16),
            "auto" => Ok(Quantize::Auto),
            _ => Err(crate::invalid!(
                "quantize must be one of \"auto\", \"fp16\", \"sq8\", \"sq4\", \"off\", got {s:?}"
            )),
        }
    }

    /// Whether the codec is fitted on the items at calibration (not set at construction).
    pub(crate) fn calibrated(self) -> bool {
        matches!(self, Quantize::Sq8 | Quantize::Sq4 | Quantize::Auto)
    }

    /// Whether this mode serves `metric` (4-bit codes have no l2 kernel).
    pub(crate) fn supports(self, metric: Metric) -> bool {
        self != Quantize::Sq4 || metric != Metric::L2
    }

    /// Whether inserts search on the codes once they exist (re-scoring with the floats before
    /// the neighbour selection): all but `Sq8`, whose codes are fitted whatever the data and
    /// may not order neighbours well enough to build on (`Auto` keeps them only where they do).
    pub(crate) fn builds_on_codes(self) -> bool {
        self != Quantize::Sq8
    }

    /// Bits per dimension of the scalar codes this mode fits (`Auto` tries 8).
    pub(crate) fn bits(self) -> u8 {
        if self == Quantize::Sq4 {
            4
        } else {
            8
        }
    }

    /// Stored in the file header (0 = off, so files from before the modes read as off).
    pub(crate) fn code(self) -> u8 {
        match self {
            Quantize::Off => 0,
            Quantize::Sq8 => 1,
            Quantize::Fp16 => 2,
            Quantize::Auto => 3,
            Quantize::Sq4 => 4,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        [
            Quantize::Off,
            Quantize::Sq8,
            Quantize::Fp16,
            Quantize::Auto,
            Quantize::Sq4,
        ]
        .into_iter()
        .find(|q| q.code() == c)
    }
}

/// The codes in use by a graph (set once; from then on every node has a code).
pub enum Codec {
    /// Scalar codes, 8 or 4 bits a dimension (`Quant::bits`).
    Sq(Quant),
    Fp16,
}

impl Codec {
    /// The code of `v` (a stored, padded row) into `out`; true if a scalar code was clipped
    /// to the fitted range (fp16 clipping is caught by the norm instead, `f16::error_bound`).
    pub fn encode(&self, v: &[f32], out: &mut [u8]) -> bool {
        match self {
            Codec::Sq(q) => q.encode(v, out),
            Codec::Fp16 => {
                f16::encode(v, out);
                false
            }
        }
    }

    /// Bytes of code per node for rows of `stride` floats: whole cache lines from 64 bytes up
    /// (so a row never straddles one line more than it needs).
    pub fn code_bytes(&self, stride: usize) -> usize {
        let raw = match self {
            Codec::Sq(q) => q.code_len(),
            Codec::Fp16 => 2 * stride,
        };
        if raw <= 32 {
            raw
        } else {
            raw.div_ceil(64) * 64
        }
    }

    /// `"sq8"`, `"sq4"` or `"fp16"`.
    pub fn name(&self) -> &'static str {
        match self {
            Codec::Sq(q) if q.bits == 4 => "sq4",
            Codec::Sq(_) => "sq8",
            Codec::Fp16 => "fp16",
        }
    }

    /// The query prepared for `metric` against these codes.
    pub fn query(&self, metric: Metric, q: &[f32]) -> QueryCode {
        match self {
            Codec::Sq(qz) => QueryCode::Sq(qz.query(metric, q)),
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
    Sq(SqQuery),
    /// `1 - q.h` (ip, cosine) or `|q - h|^2` (l2) against the halfs `h`.
    Fp16 {
        q: Vec<f32>,
        l2: bool,
        simd: bool,
    },
}

impl QueryCode {
    /// A code search re-ranks `ef / rerank_slack() + 2` scored candidates beyond its beam:
    /// an eighth, a quarter with 4-bit codes (MiniLM K=1000 at ef 1000: recall@1000 0.972 ->
    /// 0.980 at the same speed; a half or all of `ef` more found no more).
    pub fn rerank_slack(&self) -> usize {
        match self {
            QueryCode::Sq(s) if s.bits == 4 => 4,
            _ => 8,
        }
    }

    #[inline(always)]
    pub fn dist(&self, code: &[u8]) -> f32 {
        match self {
            QueryCode::Sq(s) => s.dist(code),
            QueryCode::Fp16 { q, l2: true, simd } => f16::l2(q, code, *simd),
            QueryCode::Fp16 { q, l2: false, simd } => 1.0 - f16::dot(q, code, *simd),
        }
    }

    /// How far a code distance can be from the float distance, for stored rows of norm at most
    /// `max_norm` (`f16::error_bound`, `SqQuery::error_bound`); infinite for 8-bit codes once
    /// any value was clipped (`clipped`), so then those are re-ranked in full.
    pub fn error_bound(&self, max_norm: f32, clipped: bool) -> f32 {
        match self {
            QueryCode::Sq(_) if clipped => f32::INFINITY,
            QueryCode::Sq(s) => s.error_bound(max_norm),
            QueryCode::Fp16 { q, l2, .. } => f16::error_bound(q, *l2, max_norm),
        }
    }
}

/// Per-dimension minimum and maximum of the rows seen (what `Quant` is fitted on).
#[derive(Debug, Clone)]
pub struct Ranges {
    lo: Vec<f32>,
    hi: Vec<f32>,
}

impl Ranges {
    pub fn new(dim: usize) -> Self {
        Ranges {
            lo: vec![f32::INFINITY; dim],
            hi: vec![f32::NEG_INFINITY; dim],
        }
    }

    /// Widen to cover `v` (at least `dim` long).
    pub fn add(&mut self, v: &[f32]) {
        for ((lo, hi), &x) in self.lo.iter_mut().zip(&mut self.hi).zip(v) {
            *lo = lo.min(x);
            *hi = hi.max(x);
        }
    }

    /// Widen to cover `other` as well.
    pub fn merge(&mut self, other: &Ranges) {
        for (a, &b) in self.lo.iter_mut().zip(&other.lo) {
            *a = a.min(b);
        }
        for (a, &b) in self.hi.iter_mut().zip(&other.hi) {
            *a = a.max(b);
        }
    }
}

/// Rows about to be inserted (the rest of a batch), as the calibration sees them: their ranges,
/// and `row(j, buf)` writing prepared row `j` (of `len`) into `buf`.
pub struct Pending<'a> {
    pub ranges: Ranges,
    pub len: usize,
    pub row: &'a dyn Fn(usize, &mut Vec<f32>),
}

/// Fitted per-dimension ranges and the codes over them: 8 bits a dimension (`stride` bytes,
/// zero in the padding) or 4 (`code_len`: two dimensions a byte, `stride` rounded up to 64
/// dimensions; in each 32-byte group, byte `i` holds dimension `i` in its low nibble and `32 + i`
/// in its high one, so one mask and one shift unpack 32 codes in order).
pub struct Quant {
    offset: Vec<f32>,
    scale: Vec<f32>,
    dim: usize,
    pub stride: usize,
    /// 8 or 4.
    pub bits: u8,
}

/// A query prepared for one metric: `dist(code) = bias + kernel(a, w, code)`.
pub struct SqQuery {
    pub a: Vec<f32>,
    /// `a` (ip only) in 16-bit integers, `a_j ~ a_scale * a_int_j`, for the 8-bit kernel.
    a_int: Vec<i16>,
    /// `a` (ip only) in 8-bit integers, `a_j ~ a_scale * a_i8_j`, for the 4-bit kernel.
    a_i8: Vec<i8>,
    a_scale: f32,
    bits: u8,
    pub w: Vec<f32>,
    pub bias: f32,
    pub l2: bool,
    /// AVX2+FMA present (checked once per query, not per distance).
    simd: bool,
    /// The code rounding's share of the error bound (`Quant::query`).
    rounding: f32,
    /// Sum of the absolute terms the ip kernel accumulates (f32 rounding of the sum).
    magnitude: f32,
    /// |q|.
    qn: f32,
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
    /// Fit on `rows` (each at least `dim` long).
    #[cfg(test)]
    pub fn fit<'a>(
        rows: impl Iterator<Item = &'a [f32]>,
        dim: usize,
        stride: usize,
        bits: u8,
    ) -> Self {
        let mut r = Ranges::new(dim);
        rows.for_each(|v| r.add(v));
        Self::from_ranges(&r, stride, bits)
    }

    /// `bits`-bit codes over the ranges `r`, each with a 2% margin on either side so later
    /// inserts from the same distribution rarely clip.
    pub fn from_ranges(r: &Ranges, stride: usize, bits: u8) -> Self {
        let top = levels(bits);
        let dim = r.lo.len();
        let mut offset = vec![0f32; stride];
        let mut scale = vec![0f32; stride];
        for j in 0..dim {
            let (lo, hi) = (r.lo[j], r.hi[j]);
            if !lo.is_finite() {
                continue;
            }
            let m = 0.02 * (hi - lo);
            offset[j] = lo - m;
            scale[j] = (hi - lo + 2.0 * m) / top;
        }
        Quant {
            offset,
            scale,
            dim,
            stride,
            bits,
        }
    }

    /// Bytes of one code.
    pub fn code_len(&self) -> usize {
        self.code_dims() * self.bits as usize / 8
    }

    /// Dimensions a code spans (the padded row; 4-bit codes in whole groups of 64).
    fn code_dims(&self) -> usize {
        if self.bits == 4 {
            self.stride.div_ceil(64) * 64
        } else {
            self.stride
        }
    }

    /// The fitted ranges, for the index file: (offset, scale), `dim` each.
    pub fn parts(&self) -> (&[f32], &[f32]) {
        (&self.offset[..self.dim], &self.scale[..self.dim])
    }

    /// Codes from saved `parts` (`None` unless both have `dim` finite values, scales >= 0).
    pub fn from_parts(offset: &[f32], scale: &[f32], stride: usize, bits: u8) -> Option<Self> {
        let dim = offset.len();
        let ok = scale.len() == dim
            && dim <= stride
            && offset.iter().all(|x| x.is_finite())
            && scale.iter().all(|x| x.is_finite() && *x >= 0.0);
        ok.then(|| {
            let pad = |v: &[f32]| {
                let mut v = v.to_vec();
                v.resize(stride, 0.0);
                v
            };
            Quant {
                offset: pad(offset),
                scale: pad(scale),
                dim,
                stride,
                bits,
            }
        })
    }

    /// Whether encoding `v` clips a value to the fitted range.
    #[cfg(test)]
    pub fn clips(&self, v: &[f32]) -> bool {
        (0..self.dim).any(|j| {
            let t = (v[j] - self.offset[j]) / self.scale[j];
            self.scale[j] > 0.0 && !(-0.5..=levels(self.bits) + 0.5).contains(&t)
        })
    }

    /// The code of `v`; true if a value lay beyond half a step outside the fitted range (or
    /// differed from a constant dimension's value), i.e. was clipped.
    pub fn encode(&self, v: &[f32], out: &mut [u8]) -> bool {
        let (mut clipped, top) = (false, levels(self.bits));
        let mut code = |j: usize| {
            if j < self.dim && self.scale[j] > 0.0 {
                let t = (v[j] - self.offset[j]) / self.scale[j];
                clipped |= !(-0.5..=top + 0.5).contains(&t);
                t.round().clamp(0.0, top) as u8
            } else {
                clipped |= j < self.dim && v[j] != self.offset[j];
                0
            }
        };
        if self.bits == 4 {
            for (g, bytes) in out[..self.code_len()].chunks_exact_mut(32).enumerate() {
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = code(64 * g + i) | code(64 * g + 32 + i) << 4;
                }
            }
        } else {
            for (j, b) in out[..self.stride].iter_mut().enumerate() {
                *b = code(j);
            }
        }
        clipped
    }

    /// Share of the `AGREEMENT_K` nearest neighbours (by `dist`) of `AGREEMENT_QUERIES` rows,
    /// picked evenly from `n`, that the codes also rank in their `AGREEMENT_K` nearest, among
    /// every `n / AGREEMENT_BASE`-th row (all rows up to that many). `row(i, buf)` writes row
    /// `i` into `buf`. One pass over the rows, one row and one code in memory at a time.
    /// 1.0 with too few rows to judge.
    pub fn agreement(
        &self,
        n: usize,
        mut row: impl FnMut(usize, &mut Vec<f32>),
        metric: Metric,
        dist: DistFn,
    ) -> f64 {
        let nq = AGREEMENT_QUERIES.min(n / (4 * AGREEMENT_K));
        if nq == 0 {
            return 1.0;
        }
        let queries: Vec<(usize, Vec<f32>, SqQuery)> = (0..nq)
            .map(|j| {
                let (i, mut v) = (j * n / nq + n / (2 * nq), Vec::new());
                row(i, &mut v);
                let qc = self.query(metric, &v);
                (i, v, qc)
            })
            .collect();
        let mut exact = vec![Nearest::default(); nq];
        let mut coded = vec![Nearest::default(); nq];
        let (mut v, mut code) = (Vec::new(), vec![0u8; self.code_len()]);
        for i in (0..n).step_by(n.div_ceil(AGREEMENT_BASE)) {
            row(i, &mut v);
            self.encode(&v, &mut code);
            for (j, (qi, q, qc)) in queries.iter().enumerate() {
                if *qi != i {
                    exact[j].offer(dist(q, &v), i);
                    coded[j].offer(qc.dist(&code), i);
                }
            }
        }
        let hits: usize = exact
            .iter()
            .zip(&coded)
            .map(|(e, c)| {
                e.0.iter()
                    .filter(|x| c.0.iter().any(|y| y.1 == x.1))
                    .count()
            })
            .sum();
        let total: usize = exact.iter().map(|e| e.0.len()).sum();
        hits as f64 / total.max(1) as f64
    }

    /// The query terms for `metric` (see `SqQuery`), and its error bound's terms: an
    /// unclipped value is within half a step `s_j / 2` of its code's value, so for ip
    /// `|q.(v - c)| <= sum |q_j| s_j / 2` (plus the 16-bit query's own rounding, `to_i16`),
    /// and for l2 the error vector's norm is at most `E = sqrt(sum s_j^2) / 2`; `magnitude`
    /// sums the absolute terms the ip kernel accumulates (for the f32 rounding of the sum).
    /// 4-bit codes serve ip and cosine only (`HnswIndex::new` refuses l2 with them).
    pub fn query(&self, metric: Metric, q: &[f32]) -> SqQuery {
        let (n, top) = (self.code_dims(), levels(self.bits));
        debug_assert!(self.bits == 8 || metric != Metric::L2);
        let l2 = metric == Metric::L2;
        let (mut a, mut w) = (vec![0f32; n], vec![0f32; if l2 { n } else { 0 }]);
        let (mut bias, mut qq, mut rounding, mut magnitude) = (0f32, 0f32, 0f32, 1f32);
        for j in 0..self.dim {
            let (o, s) = (self.offset[j], self.scale[j]);
            qq += q[j] * q[j];
            if l2 {
                // (q - o - s c)^2 = s^2 (t - c)^2 with t = (q - o) / s
                if s > 0.0 {
                    a[j] = (q[j] - o) / s;
                    w[j] = s * s;
                } else {
                    bias += (q[j] - o) * (q[j] - o);
                }
                rounding += s * s;
            } else {
                // 1 - q.(o + s c) = (1 - q.o) - sum (q s) c
                a[j] = -q[j] * s;
                bias -= q[j] * o;
                rounding += 0.5 * q[j].abs() * s;
                magnitude += q[j].abs() * (o.abs() + (top + 1.0) * s);
            }
        }
        let (mut a_int, mut a_i8, mut a_scale) = (Vec::new(), Vec::new(), 0.0);
        if l2 {
            rounding = 0.5 * rounding.sqrt();
        } else {
            bias += 1.0;
            if self.bits == 4 {
                (a_i8, a_scale) = to_i8(&a);
                rounding += top * int_rounding(&a, &a_i8, a_scale);
            } else {
                (a_int, a_scale) = to_i16(&a);
                rounding += top * int_rounding(&a, &a_int, a_scale);
            }
        }
        SqQuery {
            a,
            a_int,
            a_i8,
            a_scale,
            bits: self.bits,
            w,
            bias,
            l2,
            simd: has_avx2(),
            rounding,
            magnitude,
            qn: qq.sqrt(),
        }
    }
}

/// The `AGREEMENT_K` smallest (distance, row) offered, sorted.
#[derive(Clone, Default)]
struct Nearest(Vec<(f32, usize)>);

impl Nearest {
    fn offer(&mut self, d: f32, i: usize) {
        if self.0.len() == AGREEMENT_K {
            if d >= self.0[AGREEMENT_K - 1].0 {
                return;
            }
            self.0.pop();
        }
        let at = self.0.partition_point(|x| x.0 <= d);
        self.0.insert(at, (d, i));
    }
}

impl SqQuery {
    /// An upper bound on |code distance - float distance| for unclipped stored rows of norm at
    /// most `max_norm`: ip `R + n 2^-23 (M + |q| max_norm)` with `R = sum |q_j| s_j / 2` and
    /// `M` the kernel's absolute terms; l2 `|q - c|^2 - |q - v|^2 = e.(e - 2(q - v))` with
    /// `|e| <= E`, so at most `2E(|q| + max_norm) + E^2`, plus `4 n 2^-23 (|q| + max_norm +
    /// E)^2` for the f32 sums. Doubled for margin, as `f16::error_bound`.
    pub fn error_bound(&self, max_norm: f32) -> f32 {
        let acc = self.a.len() as f32 * 2f32.powi(-23);
        let b = if self.l2 {
            let (e, span) = (self.rounding, self.qn + max_norm);
            2.0 * e * span + e * e + 4.0 * acc * (span + e) * (span + e)
        } else {
            self.rounding + acc * (self.magnitude + self.qn * max_norm)
        };
        if b.is_finite() {
            2.0 * b
        } else {
            f32::INFINITY
        }
    }

    #[inline(always)]
    pub fn dist(&self, code: &[u8]) -> f32 {
        if self.l2 {
            return self.bias + wl2_u8(&self.a, &self.w, code, self.simd);
        }
        #[cfg(target_arch = "x86_64")]
        if self.simd {
            // SAFETY: AVX2 detected for this query (`simd`); lengths checked inside.
            let s = unsafe {
                if self.bits == 4 {
                    x86::dot_u4_i8(&self.a_i8, code)
                } else {
                    x86::dot_u8_i16(&self.a_int, code)
                }
            };
            return self.bias + self.a_scale * s as f32;
        }
        if self.bits == 4 {
            self.bias + dot_u4(&self.a, code)
        } else {
            self.bias + dot_u8(&self.a, code, self.simd)
        }
    }
}

/// `sum |a_j - scale ai_j|`: with codes at most `top`, the integer query's own rounding moves
/// a code distance by at most `top` times this.
fn int_rounding<T: Copy + Into<f32>>(a: &[f32], ai: &[T], scale: f32) -> f32 {
    a.iter()
        .zip(ai)
        .map(|(&x, &y)| (x - scale * y.into()).abs())
        .sum()
}

/// The largest code of `bits`-bit codes (255 or 15).
fn levels(bits: u8) -> f32 {
    ((1u32 << bits) - 1) as f32
}

/// `a` as 8-bit integers and their scale (`a_j ~ scale * out_j`, `|out_j| <= 127`): with
/// 4-bit codes a pair of products is at most `2 * 15 * 127`, within `vpmaddubsw`'s 16 bits.
fn to_i8(a: &[f32]) -> (Vec<i8>, f32) {
    to_ints(a, 127.0, |x| x as i8)
}

/// `a` as integers of magnitude at most `top` (`cast` from the rounded `i32`) and their scale,
/// `a_j ~ scale * out_j`, the largest `|a_j|` at `top`; all zero (scale 0) when `a` is zero or
/// not finite.
fn to_ints<T: Clone + Default>(a: &[f32], top: f32, cast: fn(i32) -> T) -> (Vec<T>, f32) {
    let max = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        return (vec![T::default(); a.len()], 0.0);
    }
    let scale = max / top;
    (
        a.iter().map(|&x| cast(to_int(x / scale, top))).collect(),
        scale,
    )
}

/// `y` rounded to the nearest integer and clamped to `+-top`, without a libm call (`round` is
/// one per dimension per query otherwise). Half-way cases may go either way: the query's
/// rounding term in the error bound is computed from the values this returns.
#[inline(always)]
fn to_int(y: f32, top: f32) -> i32 {
    (y.clamp(-top, top) + 0.5f32.copysign(y)) as i32
}

/// `sum a_j c_j` over 4-bit codes (`a.len()` a multiple of 64, in `Quant`'s nibble order).
pub fn dot_u4(a: &[f32], code: &[u8]) -> f32 {
    a.chunks_exact(64)
        .zip(code.chunks_exact(32))
        .map(|(a, c)| {
            c.iter()
                .enumerate()
                .map(|(i, &b)| a[i] * (b & 15) as f32 + a[32 + i] * (b >> 4) as f32)
                .sum::<f32>()
        })
        .sum()
}

/// `a` as 16-bit integers and their scale (`a_j ~ scale * out_j`), as large as keeps
/// `sum out_j c_j` over 8-bit codes within an `i32`: `|out_j| <= (2^31 - 1) / (255 n)`, at most
/// 32767 (16 bits up to n = 256, 14 at 384).
fn to_i16(a: &[f32]) -> (Vec<i16>, f32) {
    let top = ((i32::MAX as usize) / (255 * a.len().max(1))).min(i16::MAX as usize) as f32;
    to_ints(a, top, |x| x as i16)
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

    /// `sum a_j c_j` in integers over `a.len()` (a multiple of 16). Sixteen codes widened to
    /// 16 bits meet sixteen query values in one multiply-add of pairs (`vpmaddwd`), where the
    /// float kernel widens to 32 bits, converts and multiplies eight at a time.
    /// Safety: AVX2 is available.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot_u8_i16(a: &[i16], code: &[u8]) -> i32 {
        let n = a.len().min(code.len()) / 16 * 16;
        let (pa, pc) = (a.as_ptr(), code.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let codes16 = |i: usize| _mm256_cvtepu8_epi16(_mm_loadu_si128(pc.add(i) as *const __m128i));
        let query16 = |i: usize| _mm256_loadu_si256(pa.add(i) as *const __m256i);
        let mut i = 0;
        while i + 32 <= n {
            s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(codes16(i), query16(i)));
            s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(codes16(i + 16), query16(i + 16)));
            i += 32;
        }
        if i < n {
            s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(codes16(i), query16(i)));
        }
        hsum_i32(_mm256_add_epi32(s0, s1))
    }

    /// `sum a_j c_j` over 4-bit codes in integers (`a.len()` a multiple of 64, in `Quant`'s
    /// nibble order): per 32 bytes one mask and one shift unpack 64 codes, which meet the 8-bit
    /// query in two `vpmaddubsw` (pairs of products, at most `2 * 15 * 127` each, so neither
    /// they nor their 16-bit sum saturate), widened to 32 bits by one `vpmaddwd`.
    /// Safety: AVX2 is available.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot_u4_i8(a: &[i8], code: &[u8]) -> i32 {
        let groups = (a.len() / 64).min(code.len() / 32);
        let (pa, pc) = (a.as_ptr(), code.as_ptr());
        let (mask, ones) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi16(1));
        let load = |p: *const u8| _mm256_loadu_si256(p as *const __m256i);
        let mut s = _mm256_setzero_si256();
        for g in 0..groups {
            let v = load(pc.add(32 * g));
            let lo = _mm256_and_si256(v, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
            let plo = _mm256_maddubs_epi16(lo, load(pa.add(64 * g) as *const u8));
            let phi = _mm256_maddubs_epi16(hi, load(pa.add(64 * g + 32) as *const u8));
            s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_add_epi16(plo, phi), ones));
        }
        hsum_i32(s)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn hsum_i32(s: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
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
    use crate::ann::tests::rng;

    #[test]
    fn scalar_error_bounds_hold_and_clipping_is_reported() {
        for bits in [8, 4] {
            error_bound_holds(bits);
        }
    }

    fn error_bound_holds(bits: u8) {
        let (dim, stride) = (50, 64);
        let mut half = rng(11);
        let rows = padded_rows(&mut || 2.0 * half(), 300, dim, stride);
        let qz = Quant::fit(rows.iter().map(|v| v.as_slice()), dim, stride, bits);
        let max_norm = rows
            .iter()
            .map(|v| v.iter().map(|x| x * x).sum::<f32>().sqrt())
            .fold(0f32, f32::max);
        let mut code = vec![0u8; qz.code_len()];
        let mut worst = 0f64;
        let metrics: &[Metric] = if bits == 4 {
            &[Metric::Ip]
        } else {
            &[Metric::Ip, Metric::L2]
        };
        for &metric in metrics {
            for q in rows.iter().step_by(7) {
                let mut q = q.clone();
                q.iter_mut().for_each(|x| *x *= 1.3);
                let qc = qz.query(metric, &q);
                let b = qc.error_bound(max_norm) as f64;
                for v in &rows {
                    assert!(!qz.encode(v, &mut code), "fitted rows never clip");
                    let exact: f64 = if metric == Metric::L2 {
                        q.iter()
                            .zip(v)
                            .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                            .sum()
                    } else {
                        1.0 - q
                            .iter()
                            .zip(v)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                    };
                    let err = (qc.dist(&code) as f64 - exact).abs();
                    assert!(
                        err <= b,
                        "{bits} bits {metric:?}: error {err} beyond the bound {b}"
                    );
                    worst = worst.max(err / b);
                }
            }
        }
        assert!(
            worst > 0.01,
            "{bits} bits: the bound is not vacuous: worst error / bound {worst}"
        );
        let mut far = rows[0].clone();
        far[3] = 5.0;
        assert!(qz.encode(&far, &mut code), "a value beyond the range clips");
    }

    /// The integer ip kernel equals the exact integer sum (no i32 overflow) at every width up
    /// to 4096, with the largest codes and query values (all of one sign), and the 16-bit query
    /// stays within half a step of the float one.
    #[test]
    fn integer_kernel_is_exact_and_cannot_overflow() {
        let mut r = rng(13);
        for n in [16usize, 48, 64, 384, 1024, 4096] {
            for extreme in [false, true] {
                let a: Vec<f32> = (0..n)
                    .map(|_| match (extreme, n % 3) {
                        // One sign throughout: the largest sum the scale must allow.
                        (true, 0) => -3.0,
                        (true, _) => 3.0,
                        _ => r() * 0.2,
                    })
                    .collect();
                let (ai, scale) = to_i16(&a);
                for (x, &y) in a.iter().zip(&ai) {
                    assert!((x - scale * y as f32).abs() <= 0.5 * scale * 1.0001);
                }
                let codes: Vec<u8> = (0..n)
                    .map(|j| if extreme { 255 } else { (j * 37 % 256) as u8 })
                    .collect();
                let exact: i64 = ai
                    .iter()
                    .zip(&codes)
                    .map(|(&x, &c)| x as i64 * c as i64)
                    .sum();
                assert!(
                    exact.abs() < i32::MAX as i64,
                    "n {n}: the scale keeps the sum in i32"
                );
                #[cfg(target_arch = "x86_64")]
                if has_avx2() {
                    // SAFETY: AVX2 detected.
                    let got = unsafe { x86::dot_u8_i16(&ai, &codes) };
                    assert_eq!(got as i64, exact, "n {n} extreme {extreme}");
                }
            }
        }
    }

    /// `n` rows of `dim` values from `r`, zero-padded to `stride`.
    fn padded_rows(
        r: &mut impl FnMut() -> f32,
        n: usize,
        dim: usize,
        stride: usize,
    ) -> Vec<Vec<f32>> {
        (0..n)
            .map(|_| {
                let mut v: Vec<f32> = (0..dim).map(|_| r()).collect();
                v.resize(stride, 0.0);
                v
            })
            .collect()
    }

    /// The 4-bit code of dimension `j` in `Quant`'s nibble layout.
    fn nibble(code: &[u8], j: usize) -> u8 {
        let b = code[j / 64 * 32 + j % 32];
        if j % 64 < 32 {
            b & 15
        } else {
            b >> 4
        }
    }

    /// 4-bit codes: every dimension's code is where the kernels read it (the nibble layout),
    /// equal to its 8-bit code at 1/17 the resolution; the integer kernel equals the exact sum
    /// at every width (no saturation, the largest codes and query values of one sign), and the
    /// float fallback equals the unpacked sum.
    #[test]
    fn four_bit_codes_pack_and_the_kernels_are_exact() {
        let mut r = rng(17);
        for (dim, stride) in [(50usize, 64usize), (96, 96), (384, 384), (1000, 1008)] {
            let rows = padded_rows(&mut r, 40, dim, stride);
            let q4 = Quant::fit(rows.iter().map(|v| v.as_slice()), dim, stride, 4);
            let q8 = Quant::fit(rows.iter().map(|v| v.as_slice()), dim, stride, 8);
            assert_eq!(q4.code_len(), stride.div_ceil(64) * 32);
            let (mut c4, mut c8) = (vec![0u8; q4.code_len()], vec![0u8; stride]);
            for v in &rows {
                q4.encode(v, &mut c4);
                q8.encode(v, &mut c8);
                for j in 0..q4.code_dims() {
                    let want = if j < dim {
                        (c8[j] as f32 / 17.0).round()
                    } else {
                        0.0
                    };
                    assert!(
                        (nibble(&c4, j) as f32 - want).abs() <= 1.0,
                        "dim {dim} j {j}"
                    );
                }
                let qc = q4.query(Metric::Ip, &rows[0]);
                let unpacked: f32 = (0..q4.code_dims())
                    .map(|j| qc.a[j] * nibble(&c4, j) as f32)
                    .sum();
                let got = dot_u4(&qc.a, &c4);
                assert!((got - unpacked).abs() <= 1e-4 * unpacked.abs().max(1.0));
            }
        }
        for n in [64usize, 384, 1024, 4096, 65536] {
            for extreme in [false, true] {
                let a: Vec<i8> = (0..n)
                    .map(|j| if extreme { -127 } else { (j * 29 % 255) as i8 })
                    .collect();
                let code: Vec<u8> = (0..n / 2)
                    .map(|j| if extreme { 0xff } else { (j * 37 % 256) as u8 })
                    .collect();
                let exact: i64 = (0..n).map(|j| a[j] as i64 * nibble(&code, j) as i64).sum();
                #[cfg(target_arch = "x86_64")]
                if has_avx2() {
                    // SAFETY: AVX2 detected.
                    let got = unsafe { x86::dot_u4_i8(&a, &code) };
                    assert_eq!(got as i64, exact, "n {n} extreme {extreme}");
                }
                assert!(exact.abs() < i32::MAX as i64);
            }
        }
    }

    #[test]
    fn ranges_merge_and_ignore_empty() {
        let mut a = Ranges::new(2);
        a.add(&[1.0, -2.0]);
        a.merge(&Ranges::new(2));
        assert_eq!(
            (a.lo.clone(), a.hi.clone()),
            (vec![1.0, -2.0], vec![1.0, -2.0])
        );
        let mut b = Ranges::new(2);
        b.add(&[3.0, -5.0]);
        a.merge(&b);
        assert_eq!((a.lo, a.hi), (vec![1.0, -5.0], vec![3.0, -2.0]));
    }

    #[test]
    fn code_distances_track_float_distances() {
        let (dim, stride) = (50, 64);
        let rows = padded_rows(&mut rng(12), 200, dim, stride);
        let qz = Quant::fit(rows.iter().map(|v| v.as_slice()), dim, stride, 8);
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
