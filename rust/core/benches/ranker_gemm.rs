//! Our tile kernels vs the `matrixmultiply` crate on the ranker network (256-512-256-128-6),
//! one thread. `cargo bench -p fyp-core --bench ranker_gemm` (or `--profile dev-opt`).

use std::time::Instant;

use fyp_core::rank::{gemm, Kernel, LayerSpec, Mlp, MlpConfig};

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Best of `reps` (the machine is shared; the minimum is the least disturbed run).
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    if std::env::var("BENCH_MEDIAN").is_err() {
        return (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min);
    }
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Layer by layer with `matrixmultiply::sgemm`, then a bias + ReLU pass: the "use a crate" option.
fn mm_forward(layers: &[LayerSpec], x: &[f32], n: usize, bufs: &mut [Vec<f32>; 2]) {
    let mut src: &[f32] = x;
    let mut which = 0;
    for (i, l) in layers.iter().enumerate() {
        let (k, m) = (l.in_dim, l.out_dim);
        let dst = &mut bufs[which];
        dst.resize(n * m, 0.0);
        for r in 0..n {
            dst[r * m..(r + 1) * m].copy_from_slice(&l.bias);
        }
        unsafe {
            matrixmultiply::sgemm(
                n,
                k,
                m,
                1.0,
                src.as_ptr(),
                k as isize,
                1,
                l.weight.as_ptr(),
                m as isize,
                1,
                1.0,
                dst.as_mut_ptr(),
                m as isize,
                1,
            );
        }
        if i + 1 < layers.len() {
            dst.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        src = unsafe { std::slice::from_raw_parts(dst.as_ptr(), dst.len()) };
        which ^= 1;
    }
}

fn main() {
    let dims = [256usize, 512, 256, 128, 6];
    let mut seed = 1u64;
    let layers: Vec<LayerSpec> = dims
        .windows(2)
        .map(|w| LayerSpec {
            weight: (0..w[0] * w[1]).map(|_| lcg(&mut seed) * 0.1).collect(),
            in_dim: w[0],
            out_dim: w[1],
            bias: (0..w[1]).map(|_| lcg(&mut seed) * 0.1).collect(),
        })
        .collect();
    let flops_row: usize = dims.windows(2).map(|w| 2 * w[0] * w[1]).sum();
    for k in Kernel::all_available() {
        println!(
            "peak {:>7}: {:7.1} GFLOP/s",
            k.name(),
            gemm::peak_gflops(k, 0.2)
        );
    }
    for n in [200usize, 500, 1000] {
        let x: Vec<f32> = (0..n * 256).map(|_| lcg(&mut seed)).collect();
        let mut out = vec![0.0f32; n * 6];
        for k in Kernel::all_available() {
            let mut cfg = MlpConfig::new(layers.clone(), "b");
            cfg.kernel = Some(k);
            let m = Mlp::new(cfg).unwrap();
            let t = time(30, || m.predict_into(&x, n, &mut out).unwrap());
            let user = &x[..128];
            let items: Vec<f32> = (0..n * 128).map(|_| lcg(&mut seed)).collect();
            let tr = time(30, || {
                m.predict_request_into(user, &items, n, &mut out).unwrap()
            });
            println!(
                "n={n:5} {:>7}: dense {:7.3} ms {:6.1} GFLOP/s | request (128 user) {:7.3} ms",
                k.name(),
                t * 1e3,
                (flops_row * n) as f64 / t / 1e9,
                tr * 1e3
            );
        }
        let mut bufs = [vec![], vec![]];
        let t = time(30, || mm_forward(&layers, &x, n, &mut bufs));
        println!(
            "n={n:5} matrixmultiply: {:7.3} ms {:6.1} GFLOP/s",
            t * 1e3,
            (flops_row * n) as f64 / t / 1e9
        );
    }
}
