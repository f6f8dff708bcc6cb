//! Maximal marginal relevance (Carbonell & Goldstein 1998): each step picks the item maximising
//! `lambda * score_i - (1 - lambda) * max_{j placed} cos(e_i, e_j)`; with nothing placed the
//! penalty is 0, so the first pick is the best score. Used alone (`mmr_greedy`) and step by step
//! inside the re-ranker.

use super::dpp::check_inputs;
use super::kernel::{all_finite, dispatch_simd, normalise_into, Simd};
use super::lazy::Gain;
use super::scratch::with_scratch;
use crate::{invalid, Result};

const UNSEEN: u32 = u32::MAX;

/// Reusable MMR state (buffers kept per thread between calls). Items are brought up to date
/// lazily: `stamp[i]` is how many placed items `max_sim[i]` covers.
#[derive(Default)]
pub(crate) struct MmrState {
    dim: usize,
    e: Vec<f64>,
    /// Largest cosine to the placed items absorbed so far (`-inf` before any).
    max_sim: Vec<f64>,
    stamp: Vec<u32>,
    placed: Vec<usize>,
    lambda: f64,
}

impl MmrState {
    pub fn reset(&mut self, n: usize, emb: &[f32], dim: usize, lambda: f64) -> Result<()> {
        if !all_finite(emb) {
            return Err(invalid!("embeddings has a NaN or infinite value"));
        }
        self.dim = dim;
        self.lambda = lambda;
        self.placed.clear();
        if self.e.len() < n * dim {
            self.e.resize(n * dim, 0.0);
        }
        self.max_sim.clear();
        self.max_sim.resize(n, f64::NEG_INFINITY);
        self.stamp.clear();
        self.stamp.resize(n, UNSEEN);
        Ok(())
    }

    /// The exact objective before anything is placed (the queue's initial values).
    pub fn initial(&self, score: f32) -> f64 {
        self.lambda * score as f64
    }
}

/// MMR as a lazily updated objective.
pub(crate) struct MmrGain<'a> {
    pub state: &'a mut MmrState,
    pub emb: &'a [f32],
    pub scores: &'a [f32],
}

impl Gain for MmrGain<'_> {
    fn is_fresh(&self, i: usize) -> bool {
        let st = &self.state;
        st.placed.is_empty() || st.stamp[i] as usize == st.placed.len()
    }

    fn refresh(&mut self, i: usize) -> f64 {
        refresh(self.state, i, self.emb, self.scores)
    }

    fn select(&mut self, i: usize) -> f64 {
        let st = &mut *self.state;
        if st.stamp[i] == UNSEEN {
            let dim = st.dim;
            normalise_into(
                &self.emb[i * dim..(i + 1) * dim],
                &mut st.e[i * dim..(i + 1) * dim],
            );
            st.stamp[i] = 0;
        }
        st.placed.push(i);
        if st.placed.len() == 1 {
            // Until now the penalty was 0; from now on it is -(1 - lambda) * max cosine, which
            // can be as large as (1 - lambda) (cosine >= -1, plus float slack).
            (1.0 - st.lambda) * (1.0 + 1e-6)
        } else {
            0.0
        }
    }
}

/// Brings item i's largest similarity up to date and returns its objective.
#[inline(always)]
fn refresh_with<S: Simd>(st: &mut MmrState, i: usize, emb: &[f32], scores: &[f32]) -> f64 {
    let dim = st.dim;
    if st.stamp[i] == UNSEEN {
        normalise_into(
            &emb[i * dim..(i + 1) * dim],
            &mut st.e[i * dim..(i + 1) * dim],
        );
        st.stamp[i] = 0;
    }
    for t in st.stamp[i] as usize..st.placed.len() {
        let s = st.placed[t];
        let sim = S::dot(&st.e[s * dim..(s + 1) * dim], &st.e[i * dim..(i + 1) * dim]);
        if sim > st.max_sim[i] {
            st.max_sim[i] = sim;
        }
    }
    st.stamp[i] = st.placed.len() as u32;
    let rel = st.lambda * scores[i] as f64;
    if st.placed.is_empty() {
        rel
    } else {
        rel - (1.0 - st.lambda) * st.max_sim[i]
    }
}

dispatch_simd!(fn refresh, refresh_with, (st: &mut MmrState, i: usize, emb: &[f32], scores: &[f32]) -> f64);

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
        sc.mmr.reset(n, emb, dim, lambda)?;
        let mmr = &sc.mmr;
        sc.queue.build(scores, 0..n, |i| mmr.initial(scores[i]), k);
        let mut g = MmrGain {
            state: &mut sc.mmr,
            emb,
            scores,
        };
        let mut out = Vec::with_capacity(k);
        while out.len() < k {
            let Some(p) = sc.queue.pick(&mut g, |_| Some(0)) else {
                break;
            };
            out.push(p.i);
        }
        Ok(out)
    })
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
