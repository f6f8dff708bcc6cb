//! Greedy DPP MAP inference of Chen, Zhang, Zhou (NeurIPS 2018, Algorithm 1): incremental
//! Cholesky rows, O(k^2 n) after the kernel rows. Used on its own (`dpp_greedy`) and, one step at
//! a time, inside the re-ranker where each step picks the best item the policy admits.
//!
//! Kernel: `L = Diag(q) S Diag(q)`, `S = E Eᵀ` of the L2-normalised embeddings,
//! `q_i = exp(alpha * s_i - m)` with `m = max_j alpha * s_j`. Subtracting `m` scales `L` by
//! `exp(-2m)`: every determinant of the same size scales alike, so the greedy order is unchanged,
//! and nothing overflows. The stopping rule compares the marginal gain `d_i^2` of this scaled
//! kernel (in which the best-scoring item's quality is 1) with `eps`: eps is relative to
//! `max_i q_i^2`, and equals the textbook absolute rule whenever `max alpha * s = 0`.

use super::kernel::{kernel_row, normalise_rows};
use super::mmr::Incumbent;
use super::scratch::with_scratch;
use crate::{invalid, Result};

/// Reusable state of one greedy DPP run (buffers are kept per thread between calls).
#[derive(Default)]
pub(crate) struct DppState {
    n: usize,
    dim: usize,
    /// Normalised embeddings, `n x dim`.
    e: Vec<f32>,
    q: Vec<f64>,
    /// Marginal gain of each item given the selected set; `-inf` once selected.
    d2: Vec<f64>,
    /// Cholesky rows: `c[t * n + i]` is entry t of item i's vector.
    c: Vec<f64>,
    row: Vec<f64>,
    steps: usize,
}

impl DppState {
    /// Starts a run over `n = scores.len()` items (`emb` is `n x dim`, validated by the caller).
    pub fn reset(&mut self, scores: &[f32], emb: &[f32], dim: usize, alpha: f64) -> Result<()> {
        let n = scores.len();
        self.n = n;
        self.dim = dim;
        self.steps = 0;
        normalise_rows(emb, dim, &mut self.e)?;
        let m = scores
            .iter()
            .map(|&s| alpha * s as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        self.q.clear();
        self.q
            .extend(scores.iter().map(|&s| (alpha * s as f64 - m).exp()));
        self.d2.clear();
        self.d2.resize(n, 0.0);
        self.row.clear();
        self.row.resize(n, 0.0);
        for i in 0..n {
            let ei = &self.e[i * dim..(i + 1) * dim];
            self.d2[i] = self.q[i] * self.q[i] * super::kernel::dot(ei, ei);
        }
        Ok(())
    }

    /// The marginal gain `d_i^2 = det(L_{Y+i}) / det(L_Y)` of item `i` (`-inf` if selected).
    #[inline]
    pub fn gain(&self, i: usize) -> f64 {
        self.d2[i]
    }

    /// The first item with the largest gain (ties go to the lower index), if any is unselected.
    pub fn argmax(&self) -> Option<(usize, f64)> {
        let mut best: Option<(usize, f64)> = None;
        for (i, &g) in self.d2.iter().enumerate() {
            if g != f64::NEG_INFINITY && best.is_none_or_lower(g) {
                best = Some((i, g));
            }
        }
        best
    }

    /// Adds item `s` to the selected set. With `update == false` only marks it (the last pick
    /// needs no Cholesky row).
    pub fn select(&mut self, s: usize, update: bool) {
        let (n, dim) = (self.n, self.dim);
        if update {
            let ds = self.d2[s].max(0.0).sqrt();
            let t = self.steps;
            if self.c.len() < (t + 1) * n {
                self.c.resize((t + 1) * n, 0.0);
            }
            let es = &self.e[s * dim..(s + 1) * dim];
            kernel_row(&self.e, dim, es, &mut self.row);
            let qs = self.q[s];
            for (r, &qi) in self.row.iter_mut().zip(&self.q) {
                *r *= qs * qi;
            }
            // row_i <- L_si - <c_s, c_i>, as axpys over the stored Cholesky rows.
            let (prev, cur) = self.c.split_at_mut(t * n);
            for ct in prev.chunks_exact(n) {
                let coef = ct[s];
                for (r, &ci) in self.row.iter_mut().zip(ct) {
                    *r -= coef * ci;
                }
            }
            let inv = if ds > 0.0 { 1.0 / ds } else { 0.0 };
            let cur = &mut cur[..n];
            for ((c, d), &r) in cur.iter_mut().zip(self.d2.iter_mut()).zip(&self.row) {
                let e = r * inv;
                *c = e;
                *d -= e * e;
            }
            self.steps += 1;
        }
        self.d2[s] = f64::NEG_INFINITY;
    }
}

/// Validates the shared inputs of `dpp_greedy` / `mmr_greedy`.
pub(crate) fn check_inputs(scores: &[f32], emb: &[f32], dim: usize, k: usize) -> Result<()> {
    if k == 0 {
        return Err(invalid!("k must be >= 1, got 0"));
    }
    if dim == 0 {
        return Err(invalid!("embeddings must have at least one column"));
    }
    if emb.len() != scores.len() * dim {
        return Err(invalid!(
            "embeddings has {} rows, scores has {}: they must be one row per candidate",
            emb.len() / dim,
            scores.len()
        ));
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(invalid!(
            "scores[{i}] is {}: scores must be finite",
            scores[i]
        ));
    }
    Ok(())
}

/// Greedy MAP of the DPP with kernel `Diag(q) S Diag(q)` (see the module docs): at most `k`
/// indices in selection order, fewer when the best marginal gain falls below `eps` (relative to
/// the best item's quality) or the items run out. `emb` is `n x dim` row-major.
pub fn dpp_greedy(
    scores: &[f32],
    emb: &[f32],
    dim: usize,
    k: usize,
    alpha: f64,
    eps: f64,
) -> Result<Vec<usize>> {
    check_inputs(scores, emb, dim, k)?;
    if !alpha.is_finite() {
        return Err(invalid!("alpha must be finite, got {alpha}"));
    }
    if eps.is_nan() {
        return Err(invalid!("eps must be a number, got NaN"));
    }
    let k = k.min(scores.len());
    with_scratch(|sc| {
        let dpp = &mut sc.dpp;
        dpp.reset(scores, emb, dim, alpha)?;
        let mut out = Vec::with_capacity(k);
        while out.len() < k {
            let Some((j, g)) = dpp.argmax() else { break };
            if g < eps {
                break;
            }
            out.push(j);
            dpp.select(j, out.len() < k);
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// log det of a small symmetric matrix by Cholesky (None if not positive definite).
    fn logdet(m: &[f64], n: usize) -> Option<f64> {
        let mut l = vec![0.0; n * n];
        let mut ld = 0.0;
        for i in 0..n {
            for j in 0..=i {
                let mut s = m[i * n + j];
                for t in 0..j {
                    s -= l[i * n + t] * l[j * n + t];
                }
                if i == j {
                    if s <= 0.0 {
                        return None;
                    }
                    l[i * n + i] = s.sqrt();
                    ld += s.ln();
                } else {
                    l[i * n + j] = s / l[j * n + j];
                }
            }
        }
        Some(ld)
    }

    fn brute(scores: &[f32], emb: &[f32], dim: usize, k: usize, alpha: f64) -> Vec<usize> {
        let n = scores.len();
        let mut e = Vec::new();
        normalise_rows(emb, dim, &mut e).unwrap();
        let q: Vec<f64> = scores.iter().map(|&s| (alpha * s as f64).exp()).collect();
        let lk = |a: usize, b: usize| {
            let d: f64 = (0..dim)
                .map(|t| e[a * dim + t] as f64 * e[b * dim + t] as f64)
                .sum();
            q[a] * q[b] * d
        };
        let mut sel: Vec<usize> = Vec::new();
        for _ in 0..k {
            let mut best: Option<(usize, f64)> = None;
            for i in 0..n {
                if sel.contains(&i) {
                    continue;
                }
                let mut y = sel.clone();
                y.push(i);
                let m: Vec<f64> = y
                    .iter()
                    .flat_map(|&a| y.iter().map(move |&b| (a, b)))
                    .map(|(a, b)| lk(a, b))
                    .collect();
                if let Some(v) = logdet(&m, y.len()) {
                    if best.is_none_or_lower(v) {
                        best = Some((i, v));
                    }
                }
            }
            match best {
                Some((i, _)) => sel.push(i),
                None => break,
            }
        }
        sel
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn matches_brute_force_log_det_greedy() {
        let mut seed = 7u64;
        for trial in 0..30 {
            let n = 4 + trial % 9;
            let dim = 3 + trial % 6;
            let k = 1 + trial % dim.min(n);
            let scores: Vec<f32> = (0..n).map(|_| lcg(&mut seed)).collect();
            let emb: Vec<f32> = (0..n * dim).map(|_| lcg(&mut seed)).collect();
            let got = dpp_greedy(&scores, &emb, dim, k, 1.5, 1e-10).unwrap();
            assert_eq!(got, brute(&scores, &emb, dim, k, 1.5), "trial {trial}");
        }
    }

    #[test]
    fn stops_at_the_rank_of_the_embeddings() {
        // Four items in a 2-D space: after two picks every gain is ~0.
        let emb = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, -0.5];
        let got = dpp_greedy(&[0.0, 0.1, 0.2, 0.3], &emb, 2, 4, 1.0, 1e-10).unwrap();
        assert_eq!(got.len(), 2);
        // Exact duplicates are never picked twice.
        let dup = [0.3, 0.4, 0.3, 0.4, 0.3, 0.4];
        assert_eq!(
            dpp_greedy(&[1.0, 1.0, 1.0], &dup, 2, 3, 1.0, 1e-10).unwrap(),
            vec![0]
        );
    }

    #[test]
    fn huge_scores_do_not_overflow() {
        let emb = [1.0, 0.0, 0.0, 1.0, 0.7, 0.7];
        let got = dpp_greedy(&[1e30, 1e30, -1e30], &emb, 2, 3, 1.0, 1e-10).unwrap();
        assert_eq!(got, vec![0, 1]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(dpp_greedy(&[1.0], &[1.0, 2.0], 2, 0, 1.0, 1e-10).is_err());
        assert!(dpp_greedy(&[1.0, 2.0], &[1.0, 2.0], 2, 1, 1.0, 1e-10).is_err());
        assert!(dpp_greedy(&[f32::NAN], &[1.0, 2.0], 2, 1, 1.0, 1e-10).is_err());
    }
}
