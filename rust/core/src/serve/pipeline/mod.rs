//! The feed, end to end (DESIGN.md §1), as typed stages (`docs/pipeline.md` has the diagram):
//!
//! ```text
//! feed(user, request, n)
//!   1 Scorer      user state + user embedding (+ the user block of the features)
//!   2 Candidates  candidate sources (fresh pool, ANN or popularity, backfill) -> ids
//!                 + the exploration draw (pure function of the request key)
//!   3 Features    one window read for candidates ∪ exploration items (network I/O, if any,
//!                 without the item table's lock), then the item blocks
//!   4 Ranker      one call of the request's model over all rows; the value model
//!   5 Rerank      policy re-ranking of the candidates around the pinned exploration slots
//!   6 Mixer       slots in feed order; shadows score the served rows
//!   7 Log         freeze (impression cache, counters, seen set) and hand records to the log
//! ```
//!
//! One call does the whole request; the Python binding releases the GIL once around it.

mod catalog_sync;
mod feed;
mod freshness;
mod ingest;
mod records;
mod retrieval;
mod snapshot;
mod sources;
#[cfg(test)]
mod tests;

pub use self::catalog_sync::SyncReport;
pub use self::freshness::{TierFreshness, FRESHNESS_TIERS};
pub use self::ingest::impression_id;
pub use self::retrieval::Retrieval;
pub use self::snapshot::{LoadReport, SnapshotReport, SnapshotState};
pub use self::sources::{CandidateSet, CandidateSource, SourceContext};
pub use super::mixer::Source;

use self::freshness::Freshness;
use super::features::{feature_set_version, item_width, user_width};
use super::fresh::FreshPool;
use super::idhash::IdMap;
use super::redis_tier::{RedisOptions, RedisTier};
use super::scorer::ServingConfig;
use super::store::{BatchTier, ItemStore, UserStore};
use crate::ann::HnswIndex;
use crate::config::Value;
use crate::eventlog::{EventLog, FeatureEvent, FeatureEventKind, UserTokenizer};
use crate::rank::RankerSet;
use crate::rerank::Reranker;
use crate::split::TrafficSplit;
use crate::{invalid, Result};
use parking_lot::{Mutex, RwLock};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The stages of one request, in order; `FeedResponse::timings` is indexed by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Scorer = 0,
    Candidates = 1,
    Features = 2,
    Ranker = 3,
    Rerank = 4,
    Mixer = 5,
    Log = 6,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Scorer,
        Stage::Candidates,
        Stage::Features,
        Stage::Ranker,
        Stage::Rerank,
        Stage::Mixer,
        Stage::Log,
    ];
    pub fn name(self) -> &'static str {
        STAGES[self as usize]
    }
}

/// Stage names, in request order, as reported in `FeedResponse::timings`.
pub const STAGES: [&str; 7] = [
    "scorer",
    "candidates",
    "features",
    "ranker",
    "rerank",
    "mixer",
    "log",
];

/// The largest `n` one `feed` call serves (a feed page, not a catalogue dump).
pub const MAX_FEED_N: usize = 1000;

/// Construction-time settings (product config that changes at run time is `ServingConfig`).
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    pub history_len: usize,
    pub seen_len: usize,
    /// Widths in seconds of the short and long sliding windows of the engagement counters.
    pub counter_windows: [f64; 2],
    /// Impressions remembered for `engage` (FIFO).
    pub impression_capacity: usize,
    /// Newest fresh items scanned per request.
    pub fresh_scan: usize,
    /// Items sampled to refresh the popularity fallback.
    pub popular_sample: usize,
    pub popular_refresh_s: f64,
    /// Expected update cadence (seconds) of the real-time, near-real-time and batch tiers: a
    /// tier whose data is older than twice its cadence raises the freshness alert.
    pub tier_cadence_s: [f64; 3],
    /// A shared online tier (Redis): user histories and item/topic windows live there, so
    /// several serving processes share them; `None` = in-process only (the default).
    pub shared: Option<RedisOptions>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            history_len: 50,
            seen_len: 500,
            counter_windows: [3600.0, 86400.0],
            impression_capacity: 1_000_000,
            fresh_scan: 5000,
            popular_sample: 20_000,
            popular_refresh_s: 10.0,
            tier_cadence_s: [60.0, 300.0, 86400.0],
            shared: None,
        }
    }
}

impl PipelineOptions {
    fn validate(&self) -> Result<()> {
        let bounded = |name: &str, v: usize, max: usize| {
            if v == 0 || v > max {
                Err(invalid!("{name} must be in [1, {max}], got {v}"))
            } else {
                Ok(())
            }
        };
        bounded("history_len", self.history_len, 10_000)?;
        bounded("seen_len", self.seen_len, 1_000_000)?;
        bounded("impression_capacity", self.impression_capacity, 100_000_000)?;
        if !self
            .tier_cadence_s
            .iter()
            .all(|c| c.is_finite() && *c > 0.0)
        {
            return Err(invalid!(
                "tier_cadence_s must be three finite positive seconds, got {:?}",
                self.tier_cadence_s
            ));
        }
        Ok(())
    }
}

/// One served slot, frozen: what was shown, why, with which predictions and model version.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub item_id: u64,
    pub position: usize,
    pub source: Source,
    pub propensity: f64,
    pub impression_id: String,
    pub topic: u32,
    pub creator: u64,
    pub value: f32,
}

/// One shadow model's scores of the served rows (logged with `is_shadow = true`, never served).
#[derive(Debug, Clone)]
pub struct ShadowScores {
    pub version: String,
    /// `slots x tasks`.
    pub predictions: Vec<f32>,
    /// The value model applied to them (same product weights as the live model's).
    pub values: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct FeedResponse {
    pub request_id: String,
    pub user_token: String,
    /// The version that ranked this request (the live model, or the model an experiment
    /// layer routes this user to).
    pub model_version: String,
    /// The live model's version: it predicts the exploration slots of every request, routed or
    /// not (equal to `model_version` when the request is not routed).
    pub live_version: String,
    pub task_names: Vec<String>,
    pub slots: Vec<Slot>,
    /// `slots.len() x tasks` predictions, frozen before the response leaves.
    pub predictions: Vec<f32>,
    /// Shadow versions and their `slots.len() x tasks` predictions (logged, never served).
    pub shadows: Vec<ShadowScores>,
    /// Rules the re-ranker relaxed, with counts.
    pub relaxed: Vec<(&'static str, u32)>,
    pub n_candidates: usize,
    pub n_fresh_candidates: usize,
    pub cold_start: bool,
    /// Milliseconds per stage, indexed by [`Stage`].
    pub timings: [f64; 7],
}

impl FeedResponse {
    /// The version whose prediction slot `i` carries: the live model's for an exploration slot
    /// (a candidate never touches the exploration arm), else the request's model.
    pub fn slot_version(&self, i: usize) -> &str {
        if self.slots[i].source == Source::Exploration {
            &self.live_version
        } else {
            &self.model_version
        }
    }
}

#[derive(Debug, Clone)]
struct ImpressionRef {
    user_key: u64,
    user_token: String,
    item_id: u64,
}

#[derive(Default)]
struct ImpressionCache {
    map: IdMap<ImpressionRef>,
    order: VecDeque<u64>,
}

/// What a request reads of the run-time product config, swapped as one snapshot so a request
/// never sees half an update (the exploration setpoint lives in both).
#[derive(Debug)]
pub struct Serving {
    pub config: ServingConfig,
    pub split: TrafficSplit,
}

/// Counters for `stats()` and `/metrics`.
#[derive(Default)]
pub struct PipelineStats {
    pub requests: AtomicU64,
    pub slots: AtomicU64,
    pub exploration_slots: AtomicU64,
    pub fresh_slots: AtomicU64,
    pub cold_starts: AtomicU64,
    pub requests_with_fresh_candidates: AtomicU64,
    pub relaxed_responses: AtomicU64,
    /// Shared-tier reads that failed or were skipped (tier down): served from the in-process
    /// snapshot instead.
    pub shared_fallbacks: AtomicU64,
    /// Shared-tier reads answered.
    pub shared_reads: AtomicU64,
    /// Shared-tier writes that failed (the in-process store holds the events).
    pub shared_write_failures: AtomicU64,
    /// Log submissions the event log refused (invalid rows or a closed log): each one is a
    /// response or event whose rows are missing from the log.
    pub log_rejected: AtomicU64,
    /// Rows in those refused submissions.
    pub log_rows_rejected: AtomicU64,
    /// Engagements with an item taken down since it was served (history kept, counters not).
    pub engagements_on_removed: AtomicU64,
    /// Served items taken down while their request ran (their impression not counted).
    pub impressions_on_removed: AtomicU64,
    /// Requests answered by a model an experiment layer routes to (not the live one).
    pub routed_requests: AtomicU64,
    /// Shadow scorings skipped because the shadow predicts other tasks than the request's
    /// model (added to a shared `RankerSet` behind the pipeline's back).
    pub shadows_skipped: AtomicU64,
}

/// An experiment route: users in `variant` of `layer` are ranked by the model `version`
/// (a shadow of the ranker set) instead of the live one. Exploration slots never move.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub layer: String,
    pub variant: String,
    pub version: String,
}

pub struct Pipeline {
    pub items: ItemStore,
    pub users: UserStore,
    pub fresh: FreshPool,
    retrieval: RwLock<Arc<Retrieval>>,
    /// Serialises retrieval swaps with index writes (uploads, removals).
    retrieval_update: Mutex<()>,
    pub rankers: Arc<RankerSet>,
    pub reranker: Arc<Reranker>,
    serving: RwLock<Arc<Serving>>,
    /// Serialises config updates (read, change, publish).
    serving_update: Mutex<()>,
    routes: RwLock<Arc<Vec<Route>>>,
    log: Option<Arc<EventLog>>,
    tokens: UserTokenizer,
    opts: PipelineOptions,
    impressions: Mutex<ImpressionCache>,
    popular: sources::PopularCache,
    extra_sources: RwLock<Vec<sources::ExtraSource>>,
    batch: RwLock<Arc<BatchTier>>,
    /// Serialises batch updates (copy, change, publish), so two never lose each other's change;
    /// requests keep reading the published snapshot meanwhile.
    batch_update: Mutex<()>,
    /// Names this pipeline instance in the feature changelog; `seq` orders its events.
    stream: String,
    seq: AtomicU64,
    feature_set_version: String,
    freshness: Freshness,
    shared: Option<RedisTier>,
    catalog: catalog_sync::CatalogSync,
    /// Catalogue writers (uploads, removals, stream applies) share it; a snapshot takes it
    /// exclusively for its in-memory cut, so the cut holds no half-applied change.
    cut: RwLock<()>,
    snapshots: SnapshotState,
    pub stats: PipelineStats,
}

/// Seconds -> whole microseconds, rounded (so `micros(quantize_ts(t)) == micros(t)`).
pub fn micros(ts: f64) -> i64 {
    (ts * 1e6).round() as i64
}

/// Request times are whole microseconds, the event log's resolution, so an offline replay that
/// reads `ts` back computes the same `now` (and so the same features) bit for bit.
pub fn quantize_ts(ts: f64) -> f64 {
    micros(ts) as f64 / 1e6
}

fn stream_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let key = format!("{}:{nanos}", std::process::id());
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(key.as_bytes()))
}

/// The ranker's width must match the features; the log's task columns must match the ranker.
fn check_models(rankers: &RankerSet, dim: usize, log: Option<&EventLog>) -> Result<()> {
    let snap = rankers.snapshot();
    let want = user_width(dim) + item_width(dim);
    if snap.live.input_dim() != want {
        return Err(invalid!(
            "the live ranker takes {} inputs, the pipeline's features are {want} wide \
             (user block {} + item block {} for embedding dim {dim})",
            snap.live.input_dim(),
            user_width(dim),
            item_width(dim)
        ));
    }
    if let Some(log) = log {
        let tasks = log.config().tasks.len();
        for m in std::iter::once(&snap.live).chain(&snap.shadows) {
            if m.n_tasks() != tasks {
                return Err(invalid!(
                    "model {:?} predicts {} tasks, the event log records {tasks} ({:?}); \
                     open the EventLog with tasks= the ranker's task names",
                    m.version(),
                    m.n_tasks(),
                    log.config().tasks
                ));
            }
        }
    }
    Ok(())
}

fn check_task_weights(cfg: &ServingConfig, n_tasks: usize) -> Result<()> {
    if !cfg.task_weights.is_empty() && cfg.task_weights.len() != n_tasks {
        return Err(invalid!(
            "task_weights has {} entries, the live ranker has {n_tasks} tasks",
            cfg.task_weights.len()
        ));
    }
    Ok(())
}

impl Pipeline {
    pub fn new(
        index: Arc<HnswIndex>,
        rankers: Arc<RankerSet>,
        reranker: Arc<Reranker>,
        split: TrafficSplit,
        log: Option<Arc<EventLog>>,
        config: ServingConfig,
        token_key: &[u8],
        opts: PipelineOptions,
    ) -> Result<Self> {
        config.validate()?;
        opts.validate()?;
        let dim = index.dim();
        check_models(&rankers, dim, log.as_deref())?;
        check_task_weights(&config, rankers.snapshot().live.n_tasks())?;
        let split = TrafficSplit::new(config.explore_rate, split.salt(), split.layers().to_vec())?;
        let shared = opts.shared.clone().map(RedisTier::connect).transpose()?;
        Ok(Self {
            items: ItemStore::new(dim, opts.counter_windows)?,
            users: UserStore::new(opts.history_len, opts.seen_len)?,
            fresh: FreshPool::new(config.fresh_max_age_s.max(86400.0)),
            retrieval: RwLock::new(Arc::new(Retrieval {
                version: "content".into(),
                user_tower: None,
                item_tower: None,
                index,
            })),
            retrieval_update: Mutex::new(()),
            rankers,
            reranker,
            serving: RwLock::new(Arc::new(Serving { config, split })),
            serving_update: Mutex::new(()),
            routes: RwLock::new(Arc::new(Vec::new())),
            log,
            tokens: UserTokenizer::new(token_key)?,
            popular: sources::PopularCache::default(),
            extra_sources: RwLock::new(Vec::new()),
            opts,
            impressions: Mutex::new(ImpressionCache::default()),
            batch: RwLock::new(Arc::new(BatchTier::empty(dim))),
            batch_update: Mutex::new(()),
            stream: stream_id(),
            seq: AtomicU64::new(0),
            feature_set_version: feature_set_version(dim),
            freshness: Freshness::default(),
            shared,
            catalog: catalog_sync::CatalogSync::default(),
            cut: RwLock::new(()),
            snapshots: SnapshotState::default(),
            stats: PipelineStats::default(),
        })
    }

    /// The run-time config and traffic split, as one snapshot.
    pub fn serving(&self) -> Arc<Serving> {
        self.serving.read().clone()
    }

    pub fn config(&self) -> ServingConfig {
        self.serving().config.clone()
    }

    pub fn split(&self) -> TrafficSplit {
        self.serving().split.clone()
    }

    /// Swaps the product config atomically; the exploration setpoint moves with it.
    pub fn set_config(&self, cfg: ServingConfig) -> Result<()> {
        self.update_config(&[], Some(cfg))
    }

    /// Applies `changes` (validated, all or nothing) to the config and publishes it with the
    /// traffic split in one snapshot. Concurrent updates are serialised, so none is lost.
    pub fn update_config(
        &self,
        changes: &[(String, Value)],
        replace: Option<ServingConfig>,
    ) -> Result<()> {
        let _g = self.serving_update.lock();
        let old = self.serving();
        let mut cfg = replace.unwrap_or_else(|| old.config.clone());
        for (k, v) in changes {
            cfg.set(k, v)?;
        }
        cfg.validate()?;
        check_task_weights(&cfg, self.rankers.snapshot().live.n_tasks())?;
        let split = TrafficSplit::new(
            cfg.explore_rate,
            old.split.salt(),
            old.split.layers().to_vec(),
        )?;
        *self.serving.write() = Arc::new(Serving { config: cfg, split });
        Ok(())
    }

    /// Routes users of `variant` in experiment `layer` to the shadow model `version` (`None`
    /// removes the route). The model must be in the ranker set; the layer and variant must
    /// exist in the traffic split. Exploration slots are carved before any routing.
    pub fn set_route(&self, layer: &str, variant: &str, version: Option<&str>) -> Result<()> {
        let split = self.split();
        let l = split
            .layers()
            .iter()
            .find(|l| l.name == layer)
            .ok_or_else(|| invalid!("no experiment layer named {layer:?} in the traffic split"))?;
        if !l.variants.iter().any(|v| v.name == variant) {
            return Err(invalid!("layer {layer:?} has no variant {variant:?}"));
        }
        let mut routes: Vec<Route> = (*self.routes()).clone();
        routes.retain(|r| !(r.layer == layer && r.variant == variant));
        if let Some(v) = version {
            let snap = self.rankers.snapshot();
            if !snap.shadows.iter().any(|m| m.version() == v) {
                return Err(invalid!(
                    "no shadow model {v:?} in the ranker set (add_shadow it first); shadows: {:?}",
                    snap.shadow_versions()
                ));
            }
            routes.push(Route {
                layer: layer.to_owned(),
                variant: variant.to_owned(),
                version: v.to_owned(),
            });
        }
        *self.routes.write() = Arc::new(routes);
        Ok(())
    }

    pub fn routes(&self) -> Arc<Vec<Route>> {
        self.routes.read().clone()
    }

    /// A model this pipeline can serve and log: the live model's task count, which is also
    /// the event log's.
    fn check_tasks(&self, m: &crate::rank::Mlp) -> Result<()> {
        let live = self.rankers.snapshot().live.clone();
        let want = self
            .log
            .as_ref()
            .map_or(live.n_tasks(), |l| l.config().tasks.len());
        if m.n_tasks() != want || m.input_dim() != live.input_dim() {
            return Err(invalid!(
                "model {:?} predicts {} tasks from {} inputs; this pipeline serves and logs {want} \
                 tasks from {} inputs (live model {:?})",
                m.version(),
                m.n_tasks(),
                m.input_dim(),
                live.input_dim(),
                live.version()
            ));
        }
        Ok(())
    }

    /// Adds a shadow, refusing one whose scores could not be logged next to the live model's.
    pub fn add_shadow(&self, m: Arc<crate::rank::Mlp>) -> Result<()> {
        self.check_tasks(&m)?;
        self.rankers.add_shadow(m)
    }

    /// Removes a shadow (a judged candidate that was not promoted) and every experiment
    /// route to it.
    pub fn remove_shadow(&self, version: &str) -> Result<()> {
        self.rankers.remove_shadow(version)?;
        let mut routes: Vec<Route> = (*self.routes()).clone();
        routes.retain(|r| r.version != version);
        *self.routes.write() = Arc::new(routes);
        Ok(())
    }

    /// Promotes a shadow to live, refusing one this pipeline could not serve and log.
    pub fn promote(&self, version: &str) -> Result<()> {
        let snap = self.rankers.snapshot();
        if let Some(m) = snap.shadows.iter().find(|m| m.version() == version) {
            self.check_tasks(m)?;
        }
        self.rankers.promote(version)
    }

    pub fn event_log(&self) -> Option<&Arc<EventLog>> {
        self.log.as_ref()
    }

    pub fn user_token(&self, user_id: &str) -> String {
        self.tokens.token(user_id)
    }

    /// The one user key: derived from the keyed user token, never from the raw id, so no
    /// store (in process, Redis, replay) is keyed by anything computable without the secret.
    pub fn user_key(&self, user_id: &str) -> u64 {
        UserStore::key_of_token(&self.tokens.token(user_id))
    }

    pub fn options(&self) -> &PipelineOptions {
        &self.opts
    }

    /// The version of the feature definitions this pipeline serves (`serve::features`).
    pub fn feature_set_version(&self) -> &str {
        &self.feature_set_version
    }

    /// The batch tier snapshot requests read now.
    pub fn batch(&self) -> Arc<BatchTier> {
        self.batch.read().clone()
    }

    /// Replaces the batch tier as a whole: requests already running keep the old snapshot.
    /// The switch is recorded in the feature changelog (version and checksum), in order with
    /// the requests around it, so the replay switches at the same point.
    pub fn set_batch(&self, batch: BatchTier) -> Result<()> {
        if batch.dim() != self.items.dim() {
            return Err(invalid!(
                "batch tier dim {} differs from the pipeline's embedding dim {}",
                batch.dim(),
                self.items.dim()
            ));
        }
        let _g = self.batch_update.lock();
        let mut ev = self.feature_event(FeatureEventKind::BatchSwap, self.event_ts());
        ev.request_id = batch.version.clone();
        ev.item_ids = vec![batch.checksum()];
        *self.batch.write() = Arc::new(batch);
        self.submit(vec![crate::eventlog::Record::FeatureEvent(ev)]);
        Ok(())
    }

    /// Applies `change` to a copy of the batch snapshot and publishes the copy (updates are
    /// serialised; requests read the old snapshot until the new one is published), then logs
    /// `events` (the change itself) to the feature changelog.
    fn update_batch(
        &self,
        change: impl FnOnce(&mut BatchTier) -> Result<()>,
        events: impl FnOnce() -> Vec<FeatureEvent>,
    ) -> Result<()> {
        let _g = self.batch_update.lock();
        let mut b = (*self.batch()).clone();
        change(&mut b)?;
        let rows = if self.log.is_some() { events() } else { vec![] };
        *self.batch.write() = Arc::new(b);
        let rows = rows
            .into_iter()
            .map(crate::eventlog::Record::FeatureEvent)
            .collect();
        self.submit(rows);
        Ok(())
    }

    /// The changelog time of a batch change: the newest event time the pipeline has seen (its
    /// clock is the requests' `now`), so merged changelogs keep it among its neighbours.
    fn event_ts(&self) -> i64 {
        let f = &self.freshness;
        let t = [&f.last_rt, &f.last_nrt]
            .iter()
            .map(|a| f64::from_bits(a.load(Ordering::Relaxed)))
            .fold(0.0, f64::max);
        micros(t)
    }

    /// Adds long-term embeddings to a copy of the batch snapshot and publishes the copy.
    pub fn set_user_embeddings(&self, user_ids: &[&str], emb: &[f32]) -> Result<()> {
        let tokens: Vec<String> = user_ids.iter().map(|u| self.tokens.token(u)).collect();
        let keys: Vec<u64> = tokens.iter().map(|t| UserStore::key_of_token(t)).collect();
        let dim = self.items.dim();
        let events = || {
            let ts = self.event_ts();
            tokens
                .iter()
                .zip(emb.chunks_exact(dim))
                .map(|(t, e)| {
                    let mut ev = self.feature_event(FeatureEventKind::BatchUsers, ts);
                    ev.user_token = t.clone();
                    ev.embedding = e.to_vec();
                    ev
                })
                .collect()
        };
        self.update_batch(|b| b.add_users(&keys, emb), events)
    }

    /// Sets creator authority scores in a copy of the batch snapshot and publishes the copy.
    pub fn set_creator_authority(&self, creators: &[u64], authority: &[f32]) -> Result<()> {
        let events = || {
            let mut ev = self.feature_event(FeatureEventKind::BatchAuthority, self.event_ts());
            ev.item_ids = creators.to_vec();
            ev.embedding = authority.to_vec();
            vec![ev]
        };
        self.update_batch(|b| b.set_authority(creators, authority), events)
    }

    /// The shared (Redis) tier, when one is attached.
    pub fn shared_tier(&self) -> Option<&RedisTier> {
        self.shared.as_ref()
    }

    /// Catalogue replication counters: (published, publish failures, applied, gaps,
    /// superseded, republished after an outage, pending changes dropped over the bound).
    pub fn catalog_stats(&self) -> [u64; 7] {
        let c = &self.catalog;
        [
            &c.published,
            &c.publish_failures,
            &c.applied,
            &c.gaps,
            &c.superseded,
            &c.republished,
            &c.pending_dropped,
        ]
        .map(|a| a.load(Ordering::Relaxed))
    }

    fn count(c: &AtomicU64, by: u64) {
        c.fetch_add(by, Ordering::Relaxed);
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn feature_event(&self, kind: FeatureEventKind, ts_us: i64) -> FeatureEvent {
        FeatureEvent::new(kind, ts_us, &self.stream, self.next_seq())
    }

    /// Hands rows to the log; a refusal (invalid rows, closed log) is counted, never dropped
    /// silently: `stats()["log_rejected"]` and `/metrics` show it.
    fn submit(&self, rows: Vec<crate::eventlog::Record>) {
        let Some(log) = &self.log else { return };
        let n = rows.len() as u64;
        if log.submit_batch(rows).is_err() {
            Self::count(&self.stats.log_rejected, 1);
            Self::count(&self.stats.log_rows_rejected, n);
        }
    }
}
