//! Hidden-layer activations and per-task output transforms of the heavy ranker.
//!
//! ReLU is fused into the GEMM tile; GELU (exact erf form, as PyTorch's and ONNX's default) and
//! SiLU run over each finished tile while it is still in L1, with branch-free approximations
//! (relative error ~1e-7) that the compiler vectorises.

use super::gemm::Kernel;
use crate::{invalid, Result};

/// Hidden-layer activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    Gelu,
    Silu,
}

impl Activation {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "relu" => Ok(Self::Relu),
            "gelu" => Ok(Self::Gelu),
            "silu" | "swish" => Ok(Self::Silu),
            _ => Err(invalid!(
                "unknown activation {s:?}; valid activations are \"relu\", \"gelu\", \"silu\""
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Relu => "relu",
            Self::Gelu => "gelu",
            Self::Silu => "silu",
        }
    }
}

/// Per-task transform of the last (linear) layer's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputTransform {
    Identity,
    Sigmoid,
    Softplus,
}

impl OutputTransform {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "identity" | "linear" => Ok(Self::Identity),
            "sigmoid" => Ok(Self::Sigmoid),
            "softplus" => Ok(Self::Softplus),
            _ => Err(invalid!(
                "unknown output transform {s:?}; valid transforms are \"identity\", \"sigmoid\", \"softplus\""
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Sigmoid => "sigmoid",
            Self::Softplus => "softplus",
        }
    }

    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Self::Identity => x,
            Self::Sigmoid => {
                if x >= 0.0 {
                    1.0 / (1.0 + (-x).exp())
                } else {
                    let e = x.exp();
                    e / (1.0 + e)
                }
            }
            Self::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
        }
    }
}

/// exp(x) for x in roughly [-87, 88] (clamped), Cephes-style polynomial, ~2 ulp.
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    let tiny = x < -87.0; // below f32's normal range: flush to 0
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let v = y * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if tiny {
        0.0
    } else {
        v
    }
}

/// erfc(z) for z >= 0 (Numerical Recipes `erfcc`, relative error < 1.2e-7 everywhere, so the
/// tail that GELU keeps for negative inputs stays accurate).
#[inline(always)]
fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_2 + t * 0.170_872_77))))))));
    t * exp_approx(-z * z + p)
}

/// GELU, exact erf form: `0.5 x erfc(-x / sqrt 2)`.
#[inline(always)]
fn gelu(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let e = erfc_pos(z.abs());
    let c = if x >= 0.0 { 2.0 - e } else { e };
    0.5 * x * c
}

#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + exp_approx(-x))
}

/// Sigmoid without overflow: `e = exp(-|x|)`, then `1 / (1 + e)` or `e / (1 + e)`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = exp_approx(-x.abs());
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 {
        s
    } else {
        e * s
    }
}

/// What runs over a finished tile or output column: a hidden activation or an output transform.
#[derive(Clone, Copy)]
enum Map {
    Act(Activation),
    Out(OutputTransform),
}

#[inline(always)]
fn apply_generic(f: Map, v: &mut [f32]) {
    match f {
        Map::Act(Activation::Relu) => v.iter_mut().for_each(|x| *x = x.max(0.0)),
        Map::Act(Activation::Gelu) => v.iter_mut().for_each(|x| *x = gelu(*x)),
        Map::Act(Activation::Silu) => v.iter_mut().for_each(|x| *x = silu(*x)),
        Map::Out(OutputTransform::Identity) => {}
        Map::Out(OutputTransform::Sigmoid) => v.iter_mut().for_each(|x| *x = sigmoid(*x)),
        Map::Out(o) => v.iter_mut().for_each(|x| *x = o.apply(*x)),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn apply_avx512(act: Map, v: &mut [f32]) {
    apply_generic(act, v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn apply_avx2(act: Map, v: &mut [f32]) {
    apply_generic(act, v)
}

/// Applies `act` in place, vectorised for `kernel`'s instruction set.
pub fn apply(kernel: Kernel, act: Activation, v: &mut [f32]) {
    apply_map(kernel, Map::Act(act), v)
}

/// Applies an output transform in place (sigmoid vectorised; softplus via libm).
pub fn apply_output(kernel: Kernel, o: OutputTransform, v: &mut [f32]) {
    apply_map(kernel, Map::Out(o), v)
}

fn apply_map(kernel: Kernel, act: Map, v: &mut [f32]) {
    match kernel {
        // SAFETY: the instruction set is checked at run time (`available`, cached by std): a
        // `Kernel` value a caller builds on a CPU without it takes the portable path.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 if kernel.available() => unsafe { apply_avx512(act, v) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 if kernel.available() => unsafe { apply_avx2(act, v) },
        _ => apply_generic(act, v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approximations_match_f64() {
        let mut worst = (0.0f64, 0.0f64, 0.0f64);
        for i in -3000..=3000 {
            let x = i as f32 * 0.05;
            let r = 1.0 / (1.0 + (-(x as f64)).exp());
            let e = (sigmoid(x) as f64 - r).abs() / r;
            assert!(
                e < 1e-6 || (x < -80.0 && sigmoid(x) < 1e-34),
                "sigmoid({x}) rel err {e}"
            );
        }
        for i in -4000..=4000 {
            let x = i as f32 * 0.005;
            let xd = x as f64;
            let e = (exp_approx(x) as f64 - xd.exp()).abs() / xd.exp();
            let s_ref = xd / (1.0 + (-xd).exp());
            let s = (silu(x) as f64 - s_ref).abs() / s_ref.abs().max(1e-3);
            // gelu via f64 erf from the series-free identity erf = 1 - erfc; use libm-free check
            let g_ref = 0.5 * xd * (1.0 + erf_f64(xd / std::f64::consts::SQRT_2));
            let g = (gelu(x) as f64 - g_ref).abs() / g_ref.abs().max(1e-3);
            worst = (worst.0.max(e), worst.1.max(s), worst.2.max(g));
        }
        assert!(worst.0 < 1e-6, "exp {worst:?}");
        assert!(worst.1 < 1e-6, "silu {worst:?}");
        assert!(worst.2 < 1e-5, "gelu {worst:?}");
    }

    /// erf in f64 by its Taylor series (|x| <= 3) and continued fraction tail: a reference only.
    fn erf_f64(x: f64) -> f64 {
        let a = x.abs();
        let r = if a < 3.0 {
            let mut sum = 0.0;
            let mut term = a;
            let mut n = 0.0;
            while term.abs() > 1e-17 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -a * a / n;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc continued fraction (Lentz), accurate for a >= 3
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt())
        };
        r.copysign(x)
    }

    #[test]
    fn output_transforms() {
        assert_eq!(OutputTransform::Identity.apply(3.0), 3.0);
        assert!((OutputTransform::Sigmoid.apply(0.0) - 0.5).abs() < 1e-7);
        assert!(OutputTransform::Sigmoid.apply(-200.0) >= 0.0);
        assert!((OutputTransform::Softplus.apply(100.0) - 100.0).abs() < 1e-5);
        assert!((OutputTransform::Softplus.apply(0.0) - 2f32.ln()).abs() < 1e-6);
    }
}
