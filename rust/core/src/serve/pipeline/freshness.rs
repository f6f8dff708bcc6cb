//! How old each feature tier's data is, as requests see it (`FeedPipeline.freshness()` and the
//! `fyp_feature_age_seconds` metrics).

use super::super::store::BatchTier;
use super::Pipeline;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

/// Feature tiers whose freshness is tracked, in `tier_cadence_s` order.
pub const FRESHNESS_TIERS: [&str; 3] = ["real_time", "near_real_time", "batch"];
const FRESHNESS_SAMPLES: usize = 2048;

/// Age of each tier's data as seen by recent requests.
#[derive(Debug, Clone, PartialEq)]
pub struct TierFreshness {
    pub tier: &'static str,
    /// Age now: seconds since the tier's newest data (infinite if it never had any).
    pub age_s: f64,
    /// p99 of the age over the last requests.
    pub p99_age_s: f64,
    pub cadence_s: f64,
    /// `age_s > 2 x cadence_s`.
    pub alert: bool,
}

#[derive(Default)]
pub(super) struct Freshness {
    /// f64 bits of the newest event time absorbed by the real-time tier (user histories) and
    /// by the near-real-time windows; 0 = none yet.
    pub last_rt: AtomicU64,
    pub last_nrt: AtomicU64,
    samples: Mutex<[VecDeque<f32>; 3]>,
}

/// Raises `a` to `ts` when `ts` is newer (an atomic max over f64 bits).
pub(super) fn max_ts(a: &AtomicU64, ts: f64) {
    let mut old = a.load(Ordering::Relaxed);
    while old == 0 || ts > f64::from_bits(old) {
        match a.compare_exchange_weak(old, ts.to_bits(), Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(cur) => old = cur,
        }
    }
}

fn age(a: &AtomicU64, now: f64) -> f64 {
    match a.load(Ordering::Relaxed) {
        0 => f64::INFINITY,
        b => (now - f64::from_bits(b)).max(0.0),
    }
}

impl Pipeline {
    /// Ages of the three tiers at `now`; `batch` is the snapshot the caller reads.
    fn tier_ages(&self, batch: &BatchTier, now: f64) -> [f64; 3] {
        let f = &self.freshness;
        let b = if batch.as_of > 0.0 {
            (now - batch.as_of).max(0.0)
        } else {
            f64::INFINITY
        };
        [age(&f.last_rt, now), age(&f.last_nrt, now), b]
    }

    /// Records the ages a request saw (for the p99).
    pub(super) fn sample_freshness(&self, batch: &BatchTier, now: f64) {
        let ages = self.tier_ages(batch, now);
        let mut smp = self.freshness.samples.lock();
        for (q, a) in smp.iter_mut().zip(ages) {
            if q.len() == FRESHNESS_SAMPLES {
                q.pop_front();
            }
            q.push_back(a as f32);
        }
    }

    /// Age of each tier's data (now and p99 over recent requests) against its cadence.
    pub fn freshness(&self, now: f64) -> Vec<TierFreshness> {
        let ages = self.tier_ages(&self.batch(), now);
        let samples = self.freshness.samples.lock();
        (0..3)
            .map(|t| {
                let mut v: Vec<f32> = samples[t].iter().copied().collect();
                let p99 = if v.is_empty() {
                    ages[t]
                } else {
                    v.sort_by(f32::total_cmp);
                    f64::from(v[((v.len() - 1) as f64 * 0.99).round() as usize])
                };
                let cadence = self.opts.tier_cadence_s[t];
                TierFreshness {
                    tier: FRESHNESS_TIERS[t],
                    age_s: ages[t],
                    p99_age_s: p99,
                    cadence_s: cadence,
                    alert: ages[t] > 2.0 * cadence,
                }
            })
            .collect()
    }
}
