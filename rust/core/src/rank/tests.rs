//! The ranker against a float64 forward pass, on every kernel this CPU runs.

use super::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

fn layer(rng: &mut Rng, k: usize, m: usize) -> LayerSpec {
    LayerSpec {
        weight: rng.vec(k * m, (1.0 / k as f32).sqrt() * 1.7),
        in_dim: k,
        out_dim: m,
        bias: rng.vec(m, 0.1),
    }
}

fn act64(a: Activation, x: f64) -> f64 {
    match a {
        Activation::Relu => x.max(0.0),
        Activation::Silu => x / (1.0 + (-x).exp()),
        Activation::Gelu => {
            // erf by Taylor series (inputs here are small): a reference, not a fast path
            let z = x / std::f64::consts::SQRT_2;
            let (mut sum, mut term, mut n) = (0.0, z, 0.0);
            while term.abs() > 1e-18 && n < 200.0 {
                sum += term / (2.0 * n + 1.0);
                n += 1.0;
                term *= -z * z / n;
            }
            0.5 * x * (1.0 + sum * 2.0 / std::f64::consts::PI.sqrt())
        }
    }
}

fn reference(cfg: &MlpConfig, x: &[f32], n: usize) -> Vec<f64> {
    let d = cfg.cross.first().unwrap_or(&cfg.layers[0]).in_dim;
    let mut out = vec![];
    for r in 0..n {
        let x0: Vec<f64> = x[r * d..(r + 1) * d].iter().map(|&v| v as f64).collect();
        let mut h = x0.clone();
        for c in &cfg.cross {
            let mut y = vec![0.0; d];
            for j in 0..d {
                let mut s = c.bias[j] as f64;
                for k in 0..d {
                    s += h[k] * c.weight[k * d + j] as f64;
                }
                y[j] = x0[j] * s + h[j];
            }
            h = y;
        }
        for (i, l) in cfg.layers.iter().enumerate() {
            let mut y = vec![0.0; l.out_dim];
            for j in 0..l.out_dim {
                let mut s = l.bias[j] as f64;
                for k in 0..l.in_dim {
                    s += h[k] * l.weight[k * l.out_dim + j] as f64;
                }
                y[j] = if i + 1 < cfg.layers.len() {
                    act64(cfg.activation, s)
                } else {
                    s
                };
            }
            h = y;
        }
        let outs = cfg
            .outputs
            .clone()
            .unwrap_or(vec![OutputTransform::Identity; h.len()]);
        for (t, v) in h.iter().enumerate() {
            out.push(match outs[t] {
                OutputTransform::Identity => *v,
                OutputTransform::Sigmoid => 1.0 / (1.0 + (-v).exp()),
                OutputTransform::Softplus => v.max(0.0) + (-v.abs()).exp().ln_1p(),
            });
        }
    }
    out
}

fn max_rel(got: &[f32], want: &[f64]) -> f64 {
    let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs() / scale.max(w.abs()))
        .fold(0.0, f64::max)
}

#[test]
fn matches_f64_on_random_shapes_every_kernel() {
    let mut rng = Rng(7);
    let acts = [Activation::Relu, Activation::Gelu, Activation::Silu];
    for case in 0..24 {
        let d = 1 + (rng.next().abs() * 70.0) as usize;
        let depth = 1 + case % 4;
        let mut dims = vec![d];
        for _ in 0..depth {
            dims.push(1 + (rng.next().abs() * 60.0) as usize);
        }
        let n = [1, 7, 16, 17, 31, 32, 33, 65, 100][case % 9];
        let layers = (0..depth)
            .map(|i| layer(&mut rng, dims[i], dims[i + 1]))
            .collect();
        let mut cfg = MlpConfig::new(layers, "t");
        cfg.activation = acts[case % 3];
        let tasks = dims[depth];
        cfg.outputs = Some(
            (0..tasks)
                .map(|t| {
                    [
                        OutputTransform::Identity,
                        OutputTransform::Sigmoid,
                        OutputTransform::Softplus,
                    ][t % 3]
                })
                .collect(),
        );
        if case % 5 == 0 {
            cfg.cross = (0..2).map(|_| layer(&mut rng, d, d)).collect();
        }
        let x = rng.vec(n * d, 1.0);
        let want = reference(&cfg, &x, n);
        for k in Kernel::all_available() {
            let mut c = cfg.clone();
            c.kernel = Some(k);
            let m = Mlp::new(c).unwrap();
            let got = m.predict(&x, n).unwrap();
            let err = max_rel(&got, &want);
            assert!(
                err < 1e-4,
                "case {case} kernel {k:?} dims {dims:?} n {n}: rel err {err}"
            );
            // a row's result does not depend on its batch
            let one = m.predict(&x[(n - 1) * d..], 1).unwrap();
            assert_eq!(one, got[(n - 1) * tasks..].to_vec(), "case {case} {k:?}");
        }
    }
}

#[test]
fn predict_request_is_bit_identical() {
    let mut rng = Rng(11);
    for (d, du, cross) in [
        (40, 13, false),
        (64, 32, false),
        (20, 20, false),
        (30, 1, true),
        (25, 0, false),
    ] {
        let mut cfg = MlpConfig::new(vec![layer(&mut rng, d, 37), layer(&mut rng, 37, 5)], "t");
        if cross {
            cfg.cross = vec![layer(&mut rng, d, d)];
        }
        let n = 45;
        let user = rng.vec(du, 1.0);
        let items = rng.vec(n * (d - du), 1.0);
        let mut full = vec![];
        for r in 0..n {
            full.extend_from_slice(&user);
            full.extend_from_slice(&items[r * (d - du)..(r + 1) * (d - du)]);
        }
        for k in Kernel::all_available() {
            let mut c = cfg.clone();
            c.kernel = Some(k);
            let m = Mlp::new(c).unwrap();
            assert_eq!(
                m.predict_request(&user, &items, n).unwrap(),
                m.predict(&full, n).unwrap(),
                "d {d} du {du} {k:?}"
            );
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let mut rng = Rng(3);
    let m = Mlp::new(MlpConfig::new(vec![layer(&mut rng, 4, 2)], "v")).unwrap();
    assert!(m.predict(&[0.0; 7], 2).is_err());
    assert!(m.predict(&[0.0, 1.0, f32::NAN, 0.0], 1).is_err());
    assert_eq!(m.predict(&[], 0).unwrap(), Vec::<f32>::new());
    assert!(m.predict_request(&[0.0; 5], &[], 0).is_err());
    let bad = LayerSpec {
        weight: vec![0.0; 8],
        in_dim: 4,
        out_dim: 2,
        bias: vec![0.0; 3],
    };
    assert!(Mlp::new(MlpConfig::new(vec![bad], "v")).is_err());
    let chain = vec![layer(&mut rng, 4, 3), layer(&mut rng, 4, 2)];
    assert!(Mlp::new(MlpConfig::new(chain, "v")).is_err());
}

#[test]
fn value_model_weights_change_without_reload() {
    let mut rng = Rng(5);
    let m = Mlp::new(MlpConfig::new(vec![layer(&mut rng, 3, 2)], "v")).unwrap();
    let preds = [1.0, 2.0, 3.0, 4.0];
    let mut out = [0.0; 2];
    m.value_into(&preds, 2, &mut out).unwrap();
    assert_eq!(out, [3.0, 7.0]);
    m.set_task_weights(vec![0.5, -1.0]).unwrap();
    m.value_into(&preds, 2, &mut out).unwrap();
    assert_eq!(out, [-1.5, -2.5]);
    assert!(m.set_task_weights(vec![1.0]).is_err());
}

#[test]
fn shared_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Mlp>();
    check::<RankerSet>();
    check::<RankerSnapshot>();
}
