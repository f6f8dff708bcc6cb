//! The request scorer: the user side of the two-tower model (a blend of the long-term embedding
//! and a recency-weighted mean of the last-N item embeddings) and the explore/exploit setpoint,
//! which is product config that can change at run time.

use super::store::{Items, UserState};
use crate::config::Value;
use crate::{invalid, Result};

/// Product configuration of the serving path. Swapped atomically as a whole by the pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct ServingConfig {
    /// Exploration share of slots (the TrafficSplit setpoint).
    pub explore_rate: f64,
    /// Share of the candidate set reserved for fresh items, bypassing the ANN.
    pub fresh_budget: f64,
    /// An item is fresh while younger than this many seconds.
    pub fresh_max_age_s: f64,
    /// ANN candidates per request (K).
    pub candidates: usize,
    /// HNSW search breadth (0 = the index default).
    pub ef: usize,
    /// Value model: value = sum_t task_weights[t] * prediction[t].
    pub task_weights: Vec<f32>,
    /// Weight of the long-term embedding against the recent-history mean, in [0, 1].
    pub long_term_weight: f32,
    /// Recency half-life of the history mean, in interactions.
    pub recency_half_life: f32,
    /// Share of the logged requests (the `requests` table's sample) whose shadows score every
    /// candidate, so their ranking can be replayed offline (docs/ope.md); in [0, 1]. A shadow
    /// costs about one more ranker call over the candidates in those requests; elsewhere it
    /// scores only the served rows. Nested in the log's sampling by the same request hash.
    pub shadow_candidates: f64,
}

impl Default for ServingConfig {
    fn default() -> Self {
        Self {
            explore_rate: 0.05,
            fresh_budget: 0.1,
            fresh_max_age_s: 6.0 * 3600.0,
            candidates: 1000,
            ef: 0,
            task_weights: Vec::new(),
            long_term_weight: 0.5,
            recency_half_life: 10.0,
            shadow_candidates: 1.0,
        }
    }
}

/// The largest candidate set and HNSW search breadth a config may ask for.
pub const MAX_CANDIDATES: usize = 100_000;

impl ServingConfig {
    /// The keys `set` accepts.
    pub const KEYS: [&'static str; 9] = [
        "explore_rate",
        "fresh_budget",
        "fresh_max_age_s",
        "candidates",
        "ef",
        "task_weights",
        "long_term_weight",
        "recency_half_life",
        "shadow_candidates",
    ];

    /// Sets one key (the value is range-checked by `validate`).
    pub fn set(&mut self, key: &str, v: &Value) -> Result<()> {
        let count = |v: &Value| {
            let n = v.count(key)?;
            if n > MAX_CANDIDATES {
                return Err(invalid!("{key} must be in [0, {MAX_CANDIDATES}], got {n}"));
            }
            Ok(n)
        };
        match key {
            "explore_rate" => self.explore_rate = v.float(key)?,
            "fresh_budget" => self.fresh_budget = v.float(key)?,
            "fresh_max_age_s" => self.fresh_max_age_s = v.float(key)?,
            "candidates" => self.candidates = count(v)?,
            "ef" => self.ef = count(v)?,
            "long_term_weight" => self.long_term_weight = v.float(key)? as f32,
            "recency_half_life" => self.recency_half_life = v.float(key)? as f32,
            "shadow_candidates" => self.shadow_candidates = v.float(key)?,
            "task_weights" => match v {
                Value::List(w) => {
                    self.task_weights = w
                        .iter()
                        .map(|x| x.float("task_weights").map(|f| f as f32))
                        .collect::<Result<_>>()?
                }
                _ => {
                    return Err(invalid!(
                        "config \"task_weights\" must be a list of numbers"
                    ))
                }
            },
            other => {
                return Err(invalid!(
                    "unknown config key {other:?}; valid keys: {}",
                    Self::KEYS.join(", ")
                ))
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.shadow_candidates) {
            return Err(invalid!(
                "shadow_candidates must be in [0, 1] (a share of the logged requests), got {}",
                self.shadow_candidates
            ));
        }
        if !(0.0..=1.0).contains(&self.explore_rate) {
            return Err(invalid!(
                "explore_rate must be in [0, 1], got {}",
                self.explore_rate
            ));
        }
        if !(0.0..=1.0).contains(&self.fresh_budget) {
            return Err(invalid!(
                "fresh_budget must be in [0, 1], got {}",
                self.fresh_budget
            ));
        }
        if !(self.fresh_max_age_s.is_finite() && self.fresh_max_age_s >= 0.0) {
            return Err(invalid!(
                "fresh_max_age_s must be finite and >= 0, got {}",
                self.fresh_max_age_s
            ));
        }
        if self.candidates == 0 || self.candidates > MAX_CANDIDATES {
            return Err(invalid!(
                "candidates must be in [1, {MAX_CANDIDATES}], got {}",
                self.candidates
            ));
        }
        if self.ef > MAX_CANDIDATES {
            return Err(invalid!(
                "ef must be in [0, {MAX_CANDIDATES}], got {}",
                self.ef
            ));
        }
        if self.task_weights.len() > 64 {
            return Err(invalid!(
                "task_weights has {} entries (at most 64)",
                self.task_weights.len()
            ));
        }
        if self.task_weights.iter().any(|w| !w.is_finite()) {
            return Err(invalid!("task_weights must be finite"));
        }
        if !(0.0..=1.0).contains(&self.long_term_weight) {
            return Err(invalid!(
                "long_term_weight must be in [0, 1], got {}",
                self.long_term_weight
            ));
        }
        if !(self.recency_half_life.is_finite() && self.recency_half_life > 0.0) {
            return Err(invalid!(
                "recency_half_life must be > 0, got {}",
                self.recency_half_life
            ));
        }
        Ok(())
    }
}

fn normalise(v: &mut [f32]) -> bool {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 1e-12 && n.is_finite() {
        v.iter_mut().for_each(|x| *x /= n);
        true
    } else {
        false
    }
}

/// The user embedding for retrieval, L2-normalised, or `None` for a user with neither a
/// long-term embedding nor any history whose items still exist (cold start).
///
/// History item j (0 = most recent) weighs `0.5^(j / half_life) * (0.25 + watched_frac + liked)`,
/// so items the user finished or liked pull harder than skipped ones.
pub fn user_embedding(
    user: Option<&UserState>,
    long_term: Option<&[f32]>,
    items: &Items,
    cfg: &ServingConfig,
) -> Option<Vec<f32>> {
    let dim = items.dim();
    let mut recent = vec![0.0f32; dim];
    let mut any_recent = false;
    let history = user.map(|u| &u.history).into_iter().flatten();
    for (j, it) in history.rev().enumerate() {
        let Some(slot) = items.slot_of(it.item_id) else {
            continue;
        };
        let w = 0.5f32.powf(j as f32 / cfg.recency_half_life)
            * (0.25 + it.watched_frac.clamp(0.0, 1.0) + f32::from(u8::from(it.liked)));
        for (r, e) in recent.iter_mut().zip(items.embedding(slot)) {
            *r += w * e;
        }
        any_recent = true;
    }
    let any_recent = any_recent && normalise(&mut recent);
    let mut long = long_term.map(<[f32]>::to_vec).unwrap_or_default();
    let any_long = long.len() == dim && normalise(&mut long);
    let mut out = match (any_long, any_recent) {
        (false, false) => return None,
        (true, false) => long,
        (false, true) => recent,
        (true, true) => {
            let a = cfg.long_term_weight;
            long.iter()
                .zip(&recent)
                .map(|(l, r)| a * l + (1.0 - a) * r)
                .collect()
        }
    };
    if !normalise(&mut out) {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::super::store::{Interaction, ItemInfo, ItemStore, UserStore};
    use super::*;

    #[test]
    fn blends_long_term_and_recent() {
        let items = ItemStore::new(2, [60.0, 600.0]).unwrap();
        let info = |id| ItemInfo {
            id,
            topic: 0,
            creator: 0,
            category: 0,
            upload_ts: 0.0,
        };
        items
            .upsert(&[info(1), info(2)], &[1.0, 0.0, 0.0, 1.0])
            .unwrap();
        let users = UserStore::new(10, 10).unwrap();
        let k = UserStore::key_of_token("u");
        let cfg = ServingConfig::default();
        assert!(users
            .with_user(k, |u| user_embedding(u, None, &items.read(), &cfg))
            .is_none());
        users.record_interaction(
            k,
            Interaction {
                item_id: 1,
                watched_frac: 1.0,
                liked: true,
                ts: 0.0,
            },
        );
        let e = users
            .with_user(k, |u| user_embedding(u, None, &items.read(), &cfg))
            .unwrap();
        assert!((e[0] - 1.0).abs() < 1e-6 && e[1].abs() < 1e-6);
        let long = [0.0, 3.0];
        let e = users
            .with_user(k, |u| user_embedding(u, Some(&long), &items.read(), &cfg))
            .unwrap();
        // a user known only to the batch tier is not cold
        let only_long = user_embedding(None, Some(&long), &items.read(), &cfg).unwrap();
        assert_eq!(only_long, vec![0.0, 1.0]);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((e[0] - s).abs() < 1e-6 && (e[1] - s).abs() < 1e-6);
        let bad = ServingConfig {
            explore_rate: 2.0,
            ..ServingConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
