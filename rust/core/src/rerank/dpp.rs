//! Greedy DPP MAP inference of Chen, Zhang, Zhou (NeurIPS 2018, Algorithm 1): incremental
//! Cholesky vectors `c_i` and marginal gains `d_i^2 = det(L_{Y+i}) / det(L_Y)`, O(k^2 n) at
//! worst. Used on its own (`dpp_greedy`) and, one step at a time, inside the re-ranker where each
//! step picks the best item the policy admits.
//!
//! Kernel: `L = Diag(q) S Diag(q)`, `S = E Eᵀ` of the L2-normalised embeddings,
//! `q_i = exp(alpha * s_i - m)` with `m = max_j alpha * s_j`. Subtracting `m` scales `L` by
//! `exp(-2m)`: every determinant of the same size scales alike, so the greedy order is unchanged,
//! and nothing overflows. The stopping rule compares the marginal gain `d_i^2` of this scaled
//! kernel (in which the best-scoring item's quality is 1) with `eps`: eps is relative to
//! `max_i L_ii`, and equals the textbook absolute rule whenever `max alpha * s = 0`.
//!
//! Algorithm 1 updates every item after every pick. Gains only ever decrease, so we update an
//! item only when its stale gain could still be the largest (lazy greedy, `lazy.rs`): the update
//! formulas are Chen et al.'s and the picks are those of the eager loop (up to last-bit rounding
//! in near-ties), while only the items near the top are touched.

use super::kernel::{all_finite, dispatch_simd, normalise_into, Simd};
use super::lazy::Gain;
use super::scratch::with_scratch;
use crate::{invalid, Result};

/// An item whose embedding has not been touched yet.
const UNSEEN: u32 = u32::MAX;

/// Reusable state of one greedy DPP run (buffers are kept per thread between calls). Items are
/// brought up to date lazily (see `lazy.rs`): `stamp[i]` is how many selections item i has
/// absorbed, and its embedding is normalised on first use.
#[derive(Default)]
pub(crate) struct DppState {
    dim: usize,
    /// Cholesky rows are stored item-major: `c[i * kcap + t]`, entry t of item i's vector.
    kcap: usize,
    /// Normalised embeddings, `n x dim` (row i valid once item i is seen).
    e: Vec<f64>,
    q: Vec<f64>,
    /// Marginal gain of each item given the selections it has absorbed.
    d2: Vec<f64>,
    c: Vec<f64>,
    stamp: Vec<u32>,
    /// Selected items and `1 / d_j` (`d_j = sqrt(d2_j)` at selection), by step.
    sel: Vec<usize>,
    inv_d: Vec<f64>,
    /// Per-refresh scratch: the pending numerators of the steps being absorbed.
    b: Vec<f64>,
}

/// `S_ii` of an unseen item, an upper bound: 1 (0 for a zero row, found when it is seen).
const UNIT_BOUND: f64 = 1.0;

impl DppState {
    /// Starts a run over `n = scores.len()` items (`emb` is `n x dim`, lengths validated by the
    /// caller) with room for `kcap` selections. Returns the initial upper bounds.
    pub fn reset(
        &mut self,
        scores: &[f32],
        emb: &[f32],
        dim: usize,
        alpha: f64,
        kcap: usize,
    ) -> Result<()> {
        if !all_finite(emb) {
            return Err(invalid!("embeddings has a NaN or infinite value"));
        }
        let n = scores.len();
        self.dim = dim;
        self.kcap = kcap;
        let m = scores
            .iter()
            .map(|&s| alpha * s as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        self.q.clear();
        self.q
            .extend(scores.iter().map(|&s| (alpha * s as f64 - m).exp()));
        self.d2.clear();
        self.d2.extend(self.q.iter().map(|q| q * q * UNIT_BOUND));
        self.stamp.clear();
        self.stamp.resize(n, UNSEEN);
        // Written before read: grow without clearing.
        if self.e.len() < n * dim {
            self.e.resize(n * dim, 0.0);
        }
        if self.c.len() < n * kcap {
            self.c.resize(n * kcap, 0.0);
        }
        self.sel.clear();
        self.inv_d.clear();
        self.b.clear();
        self.b.resize(kcap, 0.0);
        Ok(())
    }

    /// Upper bound (exact once fresh) of every item's gain, for building the queue.
    pub fn bound(&self, i: usize) -> f64 {
        self.d2[i]
    }
}

/// Normalises item i's embedding and sets its gain before any selection: `L_ii`.
#[inline(always)]
fn see(st: &mut DppState, i: usize, emb: &[f32]) {
    let dim = st.dim;
    let row = &mut st.e[i * dim..(i + 1) * dim];
    // S_ii is 1 by definition (0 for a zero row): rounding must not break ties between items.
    let s_ii = normalise_into(&emb[i * dim..(i + 1) * dim], row);
    st.d2[i] = st.q[i] * st.q[i] * s_ii;
    st.stamp[i] = 0;
}

/// Chen et al.'s update of item i for every selection t it has not absorbed yet:
/// `e_i = (L_{s_t,i} - <c_{s_t}, c_i>) / d_{s_t}`, `c_i <- [c_i, e_i]`, `d_i^2 -= e_i^2`.
/// The inner product splits into the entries item i already had (one vectorised dot per
/// pending step, independent of each other) and the entries computed in this catch-up (a short
/// forward substitution).
#[inline(always)]
fn refresh_with<S: Simd>(st: &mut DppState, i: usize, emb: &[f32]) -> f64 {
    if st.stamp[i] == UNSEEN {
        see(st, i, emb);
    }
    let (dim, kc) = (st.dim, st.kcap);
    let (t0, tn) = (st.stamp[i] as usize, st.sel.len());
    if t0 == tn {
        return st.d2[i];
    }
    let ei = &st.e[i * dim..(i + 1) * dim];
    let qi = st.q[i];
    let c = &mut st.c;
    for t in t0..tn {
        let s = st.sel[t];
        let l_si = st.q[s] * qi * S::dot(&st.e[s * dim..(s + 1) * dim], ei);
        let known = S::dot_short(&c[s * kc..s * kc + t0], &c[i * kc..i * kc + t0]);
        st.b[t] = l_si - known;
    }
    let mut d2 = st.d2[i];
    for t in t0..tn {
        let s = st.sel[t];
        let mut acc = st.b[t];
        for tau in t0..t {
            acc = (-c[s * kc + tau]).mul_add(c[i * kc + tau], acc);
        }
        let x = acc * st.inv_d[t];
        c[i * kc + t] = x;
        d2 -= x * x;
    }
    st.d2[i] = d2;
    st.stamp[i] = tn as u32;
    d2
}

dispatch_simd!(fn refresh, refresh_with, (st: &mut DppState, i: usize, emb: &[f32]) -> f64);

/// The DPP gain as a lazily updated objective over the embeddings `emb`.
pub(crate) struct DppGain<'a> {
    pub state: &'a mut DppState,
    pub emb: &'a [f32],
}

impl Gain for DppGain<'_> {
    fn is_fresh(&self, i: usize) -> bool {
        self.state.stamp[i] as usize == self.state.sel.len()
    }

    fn refresh(&mut self, i: usize) -> f64 {
        refresh(self.state, i, self.emb)
    }

    fn select(&mut self, i: usize) -> f64 {
        let st = &mut *self.state;
        let d = st.d2[i].max(0.0).sqrt();
        st.inv_d.push(if d > 0.0 { 1.0 / d } else { 0.0 });
        st.sel.push(i);
        st.d2[i] = f64::NEG_INFINITY;
        0.0
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
    if !(alpha.is_finite() && alpha >= 0.0) {
        return Err(invalid!("alpha must be finite and >= 0, got {alpha}"));
    }
    if eps.is_nan() {
        return Err(invalid!("eps must be a number, got NaN"));
    }
    let n = scores.len();
    let k = k.min(n);
    with_scratch(|sc| {
        sc.dpp.reset(scores, emb, dim, alpha, k)?;
        let dpp = &sc.dpp;
        sc.queue.build(scores, 0..n, |i| dpp.bound(i), k);
        let mut g = DppGain {
            state: &mut sc.dpp,
            emb,
        };
        let mut out = Vec::with_capacity(k);
        while out.len() < k {
            let Some(p) = sc.queue.pick(&mut g, |_| Some(0)) else {
                break;
            };
            if p.value < eps {
                break;
            }
            out.push(p.i);
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
        let mut e = vec![0.0f64; emb.len()];
        for (r, o) in emb.chunks(dim).zip(e.chunks_mut(dim)) {
            normalise_into(r, o);
        }
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
                    if best.is_none_or(|(_, b)| v > b) {
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
