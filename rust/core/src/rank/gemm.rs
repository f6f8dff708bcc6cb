//! The f32 GEMM tile kernels behind the heavy ranker (DESIGN.md §1, "Ranker").
//!
//! Activations live feature-major in blocks of [`RB`] rows (`buf[feature * RB + row]`) and weights
//! are packed once, at model load, into panels of [`NR`] output columns (`panel[k * NR + j]`).
//! One tile computes `RB x NR` outputs of one layer with a single accumulator per output, summing
//! k in order from the bias: `acc = bias; acc = fma(x_k, w_k, acc)`. That fixed order is what makes
//! a row's result independent of its batch and `predict_request` bit-identical to `predict`.
//! The kernel is chosen at run time (AVX-512F, AVX2+FMA, or portable scalar).

use crate::{invalid, Result};

/// Rows per activation block (two 16-lane AVX-512 vectors, four 8-lane AVX2 vectors).
pub const RB: usize = 32;
/// Output columns per packed weight panel.
pub const NR: usize = 12;

/// Which micro-kernel computes the tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Portable Rust (no FMA: `a * b + c`), any CPU.
    Scalar,
    /// x86-64 AVX2 + FMA, 16 rows x 6 columns per micro-tile.
    Avx2,
    /// x86-64 AVX-512F, 32 rows x 12 columns per micro-tile.
    Avx512,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
        }
    }

    /// Parses "auto" (the best available), "scalar", "avx2" or "avx512"; errors when the CPU
    /// cannot run the requested kernel.
    pub fn parse(name: &str) -> Result<Kernel> {
        let k = match name {
            "auto" => return Ok(Kernel::best()),
            "scalar" => Kernel::Scalar,
            "avx2" => Kernel::Avx2,
            "avx512" => Kernel::Avx512,
            _ => {
                return Err(invalid!(
                    "unknown kernel {name:?}; valid kernels are \"auto\", \"avx512\", \"avx2\", \"scalar\""
                ))
            }
        };
        if !k.available() {
            return Err(invalid!("kernel {name:?} is not supported by this CPU"));
        }
        Ok(k)
    }

    pub fn available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest kernel this CPU runs (measured: AVX-512 beats AVX2 on this project's machine,
    /// see docs/ranker.md). `FYP_RANKER_KERNEL=avx2|scalar|avx512` overrides the default.
    pub fn best() -> Kernel {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            if let Ok(v) = std::env::var("FYP_RANKER_KERNEL") {
                if let Ok(k) = Kernel::parse_fixed(&v) {
                    if k.available() {
                        return k;
                    }
                }
            }
            [Kernel::Avx512, Kernel::Avx2]
                .into_iter()
                .find(|k| k.available())
                .unwrap_or(Kernel::Scalar)
        })
    }

    fn parse_fixed(name: &str) -> Result<Kernel> {
        match name {
            "scalar" => Ok(Kernel::Scalar),
            "avx2" => Ok(Kernel::Avx2),
            "avx512" => Ok(Kernel::Avx512),
            _ => Err(invalid!("unknown kernel {name:?}")),
        }
    }

    /// Every kernel this CPU can run, best first.
    pub fn all_available() -> Vec<Kernel> {
        [Kernel::Avx512, Kernel::Avx2, Kernel::Scalar]
            .into_iter()
            .filter(|k| k.available())
            .collect()
    }
}

/// What a tile does after the k loop.
#[derive(Clone, Copy)]
pub enum Epi {
    /// Store `bias + x W` as is.
    Linear,
    /// Store `max(bias + x W, 0)`.
    Relu,
    /// DCN-v2 cross layer: store `x0 * (bias + x W) + xl`, with `x0`/`xl` at the tile's origin in
    /// their own feature-major blocks (same layout as the output).
    Cross { x0: *const f32, xl: *const f32 },
}

/// Packs a row-major `(k, m)` weight matrix into `ceil(m / NR)` panels of `k x NR`, zero-padded.
pub fn pack_panels(w: &[f32], k: usize, m: usize) -> Vec<f32> {
    let panels = m.div_ceil(NR);
    let mut out = vec![0.0f32; panels * k * NR];
    for p in 0..panels {
        for kk in 0..k {
            for j in 0..NR {
                let c = p * NR + j;
                if c < m {
                    out[(p * k + kk) * NR + j] = w[kk * m + c];
                }
            }
        }
    }
    out
}

/// Computes one `rows x cols` tile (`rows` is 16 or 32 and `cols` at most [`NR`], counted from
/// the tile origin). Columns past `cols` (rounded up to 2 or 4) of `out` are left untouched.
///
/// # Safety
/// `x` must be readable for `k * RB` floats, `w` for `k * NR`, `bias` for `NR`, `out` (and the
/// cross pointers) for `NR * RB` floats; `kernel` must be available on this CPU.
#[inline]
pub unsafe fn tile(
    kernel: Kernel,
    rows: usize,
    cols: usize,
    k: usize,
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    out: *mut f32,
    epi: Epi,
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => {
            macro_rules! go {
                ($v:literal) => {
                    match cols {
                        0..=4 => x86::tile_avx512::<$v, 4>(k, x, w, bias, out, epi),
                        5..=8 => x86::tile_avx512::<$v, 8>(k, x, w, bias, out, epi),
                        _ => x86::tile_avx512::<$v, 12>(k, x, w, bias, out, epi),
                    }
                };
            }
            if rows > 16 {
                go!(2)
            } else {
                go!(1)
            }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            let halves = if rows > 16 { 2 } else { 1 };
            for h in 0..halves {
                let r = h * 16;
                for c in [0, 6] {
                    if c >= cols {
                        break;
                    }
                    let epi = match epi {
                        Epi::Cross { x0, xl } => Epi::Cross {
                            x0: x0.add(c * RB + r),
                            xl: xl.add(c * RB + r),
                        },
                        e => e,
                    };
                    let (xs, ws, bs, os) = (x.add(r), w.add(c), bias.add(c), out.add(c * RB + r));
                    match cols - c {
                        1..=2 => x86::tile_avx2::<2>(k, xs, ws, bs, os, epi),
                        3..=4 => x86::tile_avx2::<4>(k, xs, ws, bs, os, epi),
                        _ => x86::tile_avx2::<6>(k, xs, ws, bs, os, epi),
                    }
                }
            }
        }
        _ => tile_scalar(rows, cols.min(NR), k, x, w, bias, out, epi),
    }
}

/// Portable tile with the same summation order as the SIMD kernels (but `a * b + c` rounding).
unsafe fn tile_scalar(
    rows: usize,
    cols: usize,
    k: usize,
    x: *const f32,
    w: *const f32,
    bias: *const f32,
    out: *mut f32,
    epi: Epi,
) {
    let rows = if rows > 16 { 32 } else { 16 };
    let x = std::slice::from_raw_parts(x, k * RB);
    let w = std::slice::from_raw_parts(w, k * NR);
    let mut acc = [[0.0f32; 32]; NR];
    for j in 0..NR {
        acc[j] = [*bias.add(j); 32];
    }
    for kk in 0..k {
        let xr = &x[kk * RB..kk * RB + RB];
        let wr = &w[kk * NR..kk * NR + NR];
        for j in 0..cols {
            let wj = wr[j];
            for r in 0..rows {
                acc[j][r] += xr[r] * wj;
            }
        }
    }
    for j in 0..cols {
        for r in 0..rows {
            let v = acc[j][r];
            let o = j * RB + r;
            *out.add(o) = match epi {
                Epi::Linear => v,
                Epi::Relu => v.max(0.0),
                Epi::Cross { x0, xl } => *x0.add(o) * v + *xl.add(o),
            };
        }
    }
}

/// `out[j] = bias[j] + sum_k u[k] * w[k, j]` over a row-major `(k, m)` slice of rows, summed in
/// the same order and with the same rounding as `kernel`'s tiles, so a precomputed user prefix
/// reproduces the dense path bit for bit.
pub fn prefix_bias(kernel: Kernel, u: &[f32], w: &[f32], m: usize, bias: &[f32], out: &mut [f32]) {
    out[..m].copy_from_slice(&bias[..m]);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `prefix_fma` needs AVX2 + FMA, checked here at run time (cached by std), so
        // a `Kernel` value built by a caller on a CPU without them falls back to the scalar
        // loop instead of executing unsupported instructions.
        Kernel::Avx512 | Kernel::Avx2 if Kernel::Avx2.available() => unsafe {
            x86::prefix_fma(u, w, m, out)
        },
        _ => {
            for (kk, &uk) in u.iter().enumerate() {
                let wr = &w[kk * m..kk * m + m];
                for j in 0..m {
                    out[j] += uk * wr[j];
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Epi, NR, RB};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile_avx512<const V: usize, const C: usize>(
        k: usize,
        x: *const f32,
        w: *const f32,
        bias: *const f32,
        out: *mut f32,
        epi: Epi,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; V];
        for j in 0..C {
            let b = _mm512_set1_ps(*bias.add(j));
            for v in 0..V {
                acc[v][j] = b;
            }
        }
        let mut xp = x;
        let mut wp = w;
        for _ in 0..k {
            let mut xv = [_mm512_setzero_ps(); V];
            for v in 0..V {
                xv[v] = _mm512_loadu_ps(xp.add(16 * v));
            }
            for j in 0..C {
                let wb = _mm512_set1_ps(*wp.add(j));
                for v in 0..V {
                    acc[v][j] = _mm512_fmadd_ps(xv[v], wb, acc[v][j]);
                }
            }
            xp = xp.add(RB);
            wp = wp.add(NR);
        }
        let zero = _mm512_setzero_ps();
        for j in 0..C {
            for v in 0..V {
                let o = j * RB + 16 * v;
                let r = match epi {
                    Epi::Linear => acc[v][j],
                    Epi::Relu => _mm512_max_ps(acc[v][j], zero),
                    Epi::Cross { x0, xl } => _mm512_fmadd_ps(
                        _mm512_loadu_ps(x0.add(o)),
                        acc[v][j],
                        _mm512_loadu_ps(xl.add(o)),
                    ),
                };
                _mm512_storeu_ps(out.add(o), r);
            }
        }
    }

    /// 16 rows x `C` (<= 6) columns; `w` points at the sub-panel's first column (row stride `NR`).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile_avx2<const C: usize>(
        k: usize,
        x: *const f32,
        w: *const f32,
        bias: *const f32,
        out: *mut f32,
        epi: Epi,
    ) {
        let mut acc = [[_mm256_setzero_ps(); C]; 2];
        for j in 0..C {
            let b = _mm256_set1_ps(*bias.add(j));
            acc[0][j] = b;
            acc[1][j] = b;
        }
        let mut xp = x;
        let mut wp = w;
        for _ in 0..k {
            let x0 = _mm256_loadu_ps(xp);
            let x1 = _mm256_loadu_ps(xp.add(8));
            for j in 0..C {
                let wb = _mm256_broadcast_ss(&*wp.add(j));
                acc[0][j] = _mm256_fmadd_ps(x0, wb, acc[0][j]);
                acc[1][j] = _mm256_fmadd_ps(x1, wb, acc[1][j]);
            }
            xp = xp.add(RB);
            wp = wp.add(NR);
        }
        let zero = _mm256_setzero_ps();
        for j in 0..C {
            for v in 0..2 {
                let o = j * RB + 8 * v;
                let r = match epi {
                    Epi::Linear => acc[v][j],
                    Epi::Relu => _mm256_max_ps(acc[v][j], zero),
                    Epi::Cross { x0, xl } => _mm256_fmadd_ps(
                        _mm256_loadu_ps(x0.add(o)),
                        acc[v][j],
                        _mm256_loadu_ps(xl.add(o)),
                    ),
                };
                _mm256_storeu_ps(out.add(o), r);
            }
        }
    }

    /// `out[j] = fma(u[k], w[k, j], out[j])` for k in order (correctly rounded, like the tiles).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn prefix_fma(u: &[f32], w: &[f32], m: usize, out: &mut [f32]) {
        let out = &mut out[..m];
        for (kk, &uk) in u.iter().enumerate() {
            let wr = &w[kk * m..kk * m + m];
            for j in 0..m {
                out[j] = uk.mul_add(wr[j], out[j]);
            }
        }
    }

    /// A register-only FMA loop: the core's sustained f32 FMA throughput in GFLOP/s.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn peak_avx512(iters: u64) -> f32 {
        let mut acc = [_mm512_set1_ps(0.5); 24];
        let a = _mm512_set1_ps(0.999_999);
        let b = _mm512_set1_ps(1e-7);
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm512_fmadd_ps(*r, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for r in acc {
            s = _mm512_add_ps(s, r);
        }
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn peak_avx2(iters: u64) -> f32 {
        let mut acc = [_mm256_set1_ps(0.5); 12];
        let a = _mm256_set1_ps(0.999_999);
        let b = _mm256_set1_ps(1e-7);
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm256_fmadd_ps(*r, a, b);
            }
        }
        let mut s = _mm256_setzero_ps();
        for r in acc {
            s = _mm256_add_ps(s, r);
        }
        let mut t = [0.0f32; 8];
        _mm256_storeu_ps(t.as_mut_ptr(), s);
        t.iter().sum()
    }
}

/// Measures the sustained single-core f32 FMA throughput of `kernel` (GFLOP/s, 2 flops per FMA
/// lane) with a register-only loop: the best of 5 trials within about `seconds`, so a busy
/// machine understates the peak as little as possible.
pub fn peak_gflops(kernel: Kernel, seconds: f64) -> f64 {
    let (lanes_x_regs, run): (u64, fn(u64) -> f32) = match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 if kernel.available() => (16 * 24, |n| unsafe { x86::peak_avx512(n) }),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 if kernel.available() => (8 * 12, |n| unsafe { x86::peak_avx2(n) }),
        _ => return 0.0,
    };
    let trial = |iters: u64| {
        let t = std::time::Instant::now();
        std::hint::black_box(run(std::hint::black_box(iters)));
        t.elapsed().as_secs_f64()
    };
    let mut iters = 1u64 << 12;
    while trial(iters) < seconds / 5.0 && iters < 1 << 40 {
        iters *= 2;
    }
    let best = (0..5).map(|_| trial(iters)).fold(f64::MAX, f64::min);
    (2 * lanes_x_regs * iters) as f64 / best / 1e9
}
