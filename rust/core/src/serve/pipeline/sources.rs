//! Candidate sources: where a request's candidates come from, behind one trait. The pipeline
//! runs the fresh pool, any sources a host added ([`Pipeline::add_source`]), the ANN index (or
//! the popularity list for a cold user) and a small popularity backfill, in that order, each
//! within its budget of the request's `candidates`.

use super::super::fresh::FreshPool;
use super::super::idhash::IdSet;
use super::super::scorer::ServingConfig;
use super::super::store::Items;
use super::Pipeline;
use crate::ann::distance::{select, DistFn};
use crate::ann::{HnswIndex, Metric};
use crate::{invalid, Result};
use parking_lot::RwLock;
use std::sync::Arc;

/// What a source sees of the request (read under the item table's read lock).
pub struct SourceContext<'a> {
    pub items: &'a Items,
    /// The user embedding (content space); `None` for a cold-start user.
    pub query: Option<&'a [f32]>,
    /// The ANN query: the user tower's output when one is loaded, else `query`.
    pub ann_query: Option<&'a [f32]>,
    /// The index of the request's retrieval snapshot.
    pub index: &'a HnswIndex,
    /// Items the user has already been shown.
    pub seen: &'a IdSet,
    pub now: f64,
    pub config: &'a ServingConfig,
}

/// A place candidates come from. `fetch` returns up to `budget` item slots, best first;
/// `taken(id)` says whether an earlier source already supplied the item (the pipeline also
/// drops duplicates and seen items, so a source may ignore both).
pub trait CandidateSource: Send + Sync {
    fn name(&self) -> &str;
    fn fetch(
        &self,
        ctx: &SourceContext<'_>,
        budget: usize,
        taken: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<Vec<usize>>;
}

/// The request's candidate set: dense item slots, and which came from the fresh pool.
#[derive(Default)]
pub struct CandidateSet {
    pub slots: Vec<usize>,
    pub fresh: Vec<bool>,
    taken: IdSet,
}

impl CandidateSet {
    fn with_capacity(n: usize) -> Self {
        CandidateSet {
            slots: Vec::with_capacity(n),
            fresh: Vec::with_capacity(n),
            taken: IdSet::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Adds up to `budget` of `slots` that are live, unseen and not yet taken.
    fn extend(&mut self, ctx: &SourceContext<'_>, slots: Vec<usize>, fresh: bool, budget: usize) {
        let mut added = 0;
        for s in slots {
            if added == budget {
                break;
            }
            let id = ctx.items.id(s);
            if !ctx.items.is_live(s) || ctx.seen.contains(&id) || !self.taken.insert(id) {
                continue;
            }
            if fresh {
                ctx.items.mark_candidate(s, ctx.now);
            }
            self.slots.push(s);
            self.fresh.push(fresh);
            added += 1;
        }
    }
}

/// The newest items (younger than `fresh_max_age_s`), nearest to the user first (newest first
/// for a cold user): new uploads reach candidate sets without waiting for the index.
pub struct FreshSource<'a> {
    pub pool: &'a FreshPool,
    pub scan: usize,
}

impl CandidateSource for FreshSource<'_> {
    fn name(&self) -> &str {
        "fresh"
    }
    fn fetch(
        &self,
        ctx: &SourceContext<'_>,
        budget: usize,
        _taken: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<Vec<usize>> {
        let ip = select(Metric::Ip);
        let mut scored: Vec<(f32, usize)> = Vec::new();
        let max_age = ctx.config.fresh_max_age_s;
        self.pool
            .for_each_fresh(ctx.now, max_age, self.scan, |id, ts| {
                if ctx.seen.contains(&id) {
                    return;
                }
                if let Some(s) = ctx.items.slot_of(id) {
                    let score = match ctx.query {
                        Some(q) => dot(ip, q, ctx.items.embedding(s)),
                        None => ts as f32,
                    };
                    scored.push((score, s));
                }
            });
        let order = |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if scored.len() > budget {
            scored.select_nth_unstable_by(budget, order);
            scored.truncate(budget);
        }
        Ok(scored.into_iter().map(|(_, s)| s).collect())
    }
}

/// HNSW top-K on the user's ANN query, excluding seen and taken items.
pub struct AnnSource;

impl CandidateSource for AnnSource {
    fn name(&self) -> &str {
        "ann"
    }
    fn fetch(
        &self,
        ctx: &SourceContext<'_>,
        budget: usize,
        taken: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<Vec<usize>> {
        let Some(q) = ctx.ann_query else {
            return Ok(vec![]);
        };
        if ctx.index.is_empty() || budget == 0 {
            return Ok(vec![]);
        }
        let k = budget.min(ctx.index.len());
        let excl = |id: u64| ctx.seen.contains(&id) || taken(id);
        let ef = (ctx.config.ef != 0).then_some(ctx.config.ef);
        let hits = ctx.index.search_one(q, k, ef, Some(&excl))?;
        Ok(hits
            .into_iter()
            .filter_map(|(id, _)| ctx.items.slot_of(id))
            .collect())
    }
}

/// The most engaged items (sampled, refreshed every `popular_refresh_s`): the cold-start
/// source, and a small backfill that spans topics so the topic cap can be met even for a user
/// whose ANN neighbourhood is a single topic.
pub struct PopularSource<'a> {
    pub cache: &'a PopularCache,
    pub sample: usize,
    pub refresh_s: f64,
}

impl CandidateSource for PopularSource<'_> {
    fn name(&self) -> &str {
        "popular"
    }
    fn fetch(
        &self,
        ctx: &SourceContext<'_>,
        budget: usize,
        taken: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<Vec<usize>> {
        let ids = self
            .cache
            .get(ctx.items, ctx.now, self.sample, self.refresh_s);
        // walk the list only as far as the budget needs (usually a few dozen of 2000)
        Ok(ids
            .iter()
            .filter(|&&id| !ctx.seen.contains(&id) && !taken(id))
            .filter_map(|&id| ctx.items.slot_of(id))
            .filter(|&s| ctx.items.is_live(s))
            .take(budget)
            .collect())
    }
}

#[derive(Default)]
struct Popular {
    at: Option<f64>,
    items: Arc<Vec<u64>>,
}

/// The popularity list shared by requests.
#[derive(Default)]
pub struct PopularCache(RwLock<Popular>);

impl PopularCache {
    /// The cached list, recomputed from a strided sample of the item table when older than
    /// `refresh_s`. Takes the item table the caller already holds: re-locking it here could
    /// deadlock behind a waiting writer.
    fn get(&self, items: &Items, now: f64, sample: usize, refresh_s: f64) -> Arc<Vec<u64>> {
        {
            let p = self.0.read();
            if p.at.is_some_and(|at| now - at < refresh_s) && !p.items.is_empty() {
                return p.items.clone();
            }
        }
        let n = items.slots();
        let stride = (n / sample.max(1)).max(1);
        let mut scored: Vec<(f32, u64)> = (0..n)
            .step_by(stride)
            .filter(|&s| items.is_live(s))
            .map(|s| {
                let c = items.counters(s, now);
                (c.completions[1] + 0.1 * c.likes[1], items.id(s))
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.truncate(2000);
        let out = Arc::new(scored.into_iter().map(|(_, id)| id).collect::<Vec<_>>());
        *self.0.write() = Popular {
            at: Some(now),
            items: out.clone(),
        };
        out
    }
}

/// Inner product with the index's SIMD kernel (its "ip" distance is 1 - dot).
#[inline]
fn dot(ip_distance: DistFn, a: &[f32], b: &[f32]) -> f32 {
    1.0 - ip_distance(a, b)
}

/// A host-added source and its share of the candidate budget.
pub(super) struct ExtraSource {
    pub source: Arc<dyn CandidateSource>,
    pub share: f64,
}

impl Pipeline {
    /// Adds a candidate source (following, trending, a second tower ...) that runs after the
    /// fresh pool and before the ANN search, with `share` of the candidate budget.
    pub fn add_source(&self, source: Arc<dyn CandidateSource>, share: f64) -> Result<()> {
        if !(share.is_finite() && share > 0.0 && share <= 1.0) {
            return Err(invalid!("a source's share must be in (0, 1], got {share}"));
        }
        self.extra_sources
            .write()
            .push(ExtraSource { source, share });
        Ok(())
    }

    /// Runs the candidate sources within their budgets (`config.candidates` in all).
    pub(super) fn candidates(&self, ctx: &SourceContext<'_>) -> Result<CandidateSet> {
        let k = ctx.config.candidates;
        let mut c = CandidateSet::with_capacity(k);
        let fresh = FreshSource {
            pool: &self.fresh,
            scan: self.opts.fresh_scan,
        };
        let k_fresh = ((k as f64) * ctx.config.fresh_budget).round() as usize;
        self.run_source(&fresh, ctx, &mut c, k_fresh, true)?;
        for extra in self.extra_sources.read().iter() {
            let budget = ((k as f64) * extra.share).round() as usize;
            let budget = budget.min(k.saturating_sub(c.len()));
            self.run_source(extra.source.as_ref(), ctx, &mut c, budget, false)?;
        }
        let popular = PopularSource {
            cache: &self.popular,
            sample: self.opts.popular_sample,
            refresh_s: self.opts.popular_refresh_s,
        };
        let cold = ctx.query.is_none();
        let k_backfill = if cold {
            0
        } else {
            (k / 20).min(k.saturating_sub(c.len()))
        };
        let k_main = k.saturating_sub(c.len() + k_backfill);
        if cold || ctx.index.is_empty() {
            self.run_source(&popular, ctx, &mut c, k_main, false)?;
        } else {
            self.run_source(&AnnSource, ctx, &mut c, k_main, false)?;
        }
        self.run_source(&popular, ctx, &mut c, k_backfill, false)?;
        Ok(c)
    }

    fn run_source(
        &self,
        src: &dyn CandidateSource,
        ctx: &SourceContext<'_>,
        c: &mut CandidateSet,
        budget: usize,
        fresh: bool,
    ) -> Result<()> {
        if budget == 0 {
            return Ok(());
        }
        let taken = |id: u64| c.taken.contains(&id);
        let slots = src.fetch(ctx, budget, &taken)?;
        c.extend(ctx, slots, fresh, budget);
        Ok(())
    }
}
