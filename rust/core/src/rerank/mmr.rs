//! Maximal marginal relevance (Carbonell & Goldstein 1998): each step picks the item maximising
//! `lambda * score_i - (1 - lambda) * max_{j placed} cos(e_i, e_j)`; with nothing placed the
//! penalty is 0, so the first pick is the best score. Used alone (`mmr_greedy`) and step by step
//! inside the re-ranker.

use super::dpp::check_inputs;
use super::kernel::{kernel_row, normalise_rows};
use super::scratch::with_scratch;
use crate::{invalid, Result};

/// Reusable MMR state (buffers kept per thread between calls).
#[derive(Default)]
pub(crate) struct MmrState {
    dim: usize,
    e: Vec<f32>,
    /// Largest cosine to any placed item (`-inf` before the first placement).
    max_sim: Vec<f64>,
    row: Vec<f64>,
    placed: usize,
    lambda: f64,
}

impl MmrState {
    pub fn reset(&mut self, n: usize, emb: &[f32], dim: usize, lambda: f64) -> Result<()> {
        self.dim = dim;
        self.placed = 0;
        self.lambda = lambda;
        normalise_rows(emb, dim, &mut self.e)?;
        self.max_sim.clear();
        self.max_sim.resize(n, f64::NEG_INFINITY);
        self.row.clear();
        self.row.resize(n, 0.0);
        Ok(())
    }

    /// The MMR objective of item `i` with score `score`.
    #[inline]
    pub fn objective(&self, i: usize, score: f32) -> f64 {
        let rel = self.lambda * score as f64;
        if self.placed == 0 {
            rel
        } else {
            rel - (1.0 - self.lambda) * self.max_sim[i]
        }
    }

    /// Records item `s` as placed; `update == false` skips the similarity row (last pick).
    pub fn select(&mut self, s: usize, update: bool) {
        self.placed += 1;
        if update {
            let dim = self.dim;
            kernel_row(&self.e, dim, &self.e[s * dim..(s + 1) * dim], &mut self.row);
            for (m, &r) in self.max_sim.iter_mut().zip(&self.row) {
                if r > *m {
                    *m = r;
                }
            }
        }
    }
}

/// MMR selection of at most `k` items (all of them when `k >= n`), in pick order; ties go to the
/// lower index. `emb` is `n x dim` row-major, `lambda` in [0, 1].
pub fn mmr_greedy(
    scores: &[f32],
    emb: &[f32],
    dim: usize,
    k: usize,
    lambda: f64,
) -> Result<Vec<usize>> {
    check_inputs(scores, emb, dim, k)?;
    if !(0.0..=1.0).contains(&lambda) {
        return Err(invalid!("mmr_lambda must be in [0, 1], got {lambda}"));
    }
    let n = scores.len();
    let k = k.min(n);
    with_scratch(|sc| {
        let mmr = &mut sc.mmr;
        mmr.reset(n, emb, dim, lambda)?;
        let used = &mut sc.used;
        used.clear();
        used.resize(n, false);
        let mut out = Vec::with_capacity(k);
        while out.len() < k {
            let mut best: Option<(usize, f64)> = None;
            for i in 0..n {
                if used[i] {
                    continue;
                }
                let v = mmr.objective(i, scores[i]);
                if best.is_none_or_lower(v) {
                    best = Some((i, v));
                }
            }
            let Some((j, _)) = best else { break };
            used[j] = true;
            out.push(j);
            mmr.select(j, out.len() < k);
        }
        Ok(out)
    })
}

/// "Is `v` strictly better than the incumbent?" for argmax scans in ascending index order, so
/// the first of equal values wins.
pub(crate) trait Incumbent {
    fn is_none_or_lower(&self, v: f64) -> bool;
}

impl Incumbent for Option<(usize, f64)> {
    #[inline]
    fn is_none_or_lower(&self, v: f64) -> bool {
        match self {
            None => true,
            Some((_, b)) => v > *b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(scores: &[f32], emb: &[f32], dim: usize, k: usize, lambda: f64) -> Vec<usize> {
        let n = scores.len();
        let norm: Vec<Vec<f64>> = emb
            .chunks(dim)
            .map(|r| {
                let s: f64 = r.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                r.iter().map(|x| *x as f64 / s).collect()
            })
            .collect();
        let cos = |a: usize, b: usize| -> f64 { (0..dim).map(|t| norm[a][t] * norm[b][t]).sum() };
        let mut sel: Vec<usize> = Vec::new();
        while sel.len() < k.min(n) {
            let mut best = (usize::MAX, f64::NEG_INFINITY);
            for i in (0..n).filter(|i| !sel.contains(i)) {
                let pen = sel
                    .iter()
                    .map(|&j| cos(i, j))
                    .fold(f64::NEG_INFINITY, f64::max);
                let pen = if sel.is_empty() { 0.0 } else { pen };
                let v = lambda * scores[i] as f64 - (1.0 - lambda) * pen;
                if best.0 == usize::MAX || v > best.1 {
                    best = (i, v);
                }
            }
            sel.push(best.0);
        }
        sel
    }

    #[test]
    fn matches_reference() {
        let mut seed = 11u64;
        let mut r = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for trial in 0..20 {
            let (n, dim) = (5 + trial % 20, 2 + trial % 7);
            let scores: Vec<f32> = (0..n).map(|_| r()).collect();
            let emb: Vec<f32> = (0..n * dim).map(|_| r()).collect();
            let lambda = (trial % 5) as f64 / 4.0;
            let k = 1 + trial % n;
            assert_eq!(
                mmr_greedy(&scores, &emb, dim, k, lambda).unwrap(),
                reference(&scores, &emb, dim, k, lambda),
                "trial {trial}"
            );
        }
    }

    #[test]
    fn lambda_one_is_score_order() {
        let emb = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        assert_eq!(
            mmr_greedy(&[0.5, 0.9, 0.1], &emb, 2, 3, 1.0).unwrap(),
            vec![1, 0, 2]
        );
        // lambda 0.5: the duplicate of the first pick loses to the orthogonal item.
        assert_eq!(
            mmr_greedy(&[0.5, 0.9, 0.1], &emb, 2, 2, 0.5).unwrap(),
            vec![1, 2]
        );
    }
}
