//! The feed, end to end (DESIGN.md §1): request scorer -> candidates (HNSW + fresh pool, or a
//! popularity + fresh fallback for cold users) -> features -> live and shadow ranking -> policy
//! re-ranking around the exploration slots -> mixer -> frozen response + counterfactual records.
//! One call does the whole request; the Python binding releases the GIL once around it.

use super::features::{feature_set_version, item_block, item_width, user_block, user_width};
use super::fresh::FreshPool;
use super::idhash::{IdMap, IdSet};
use super::mixer::{draw_exploration, Source};
use super::redis_tier::{RedisOptions, RedisTier};
use super::scorer::{user_embedding, ServingConfig};
use super::store::{
    BatchTier, CreatorUploads, Interaction, ItemInfo, ItemStore, Items, NrtCounts, UserState,
    UserStore, ITEM_KINDS,
};
use crate::ann::HnswIndex;
use crate::eventlog::{
    self as elog, json_str, keep_request, EventLog, FeatureEvent, FeatureEventKind, RequestRecords,
    UserTokenizer,
};
use crate::rank::{value_with, RankerSet};
use crate::rerank::{Candidates, Pinned, Reranker};
use crate::split::{Keys, TrafficSplit};
use crate::{invalid, Error, Result};
use parking_lot::{Mutex, RwLock};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

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
    pub model_version: String,
    pub task_names: Vec<String>,
    pub slots: Vec<Slot>,
    /// `slots.len() x tasks` live predictions, frozen before the response leaves.
    pub predictions: Vec<f32>,
    /// Shadow versions and their `slots.len() x tasks` predictions (logged, never served).
    pub shadows: Vec<ShadowScores>,
    /// Rules the re-ranker relaxed, with counts.
    pub relaxed: Vec<(&'static str, u32)>,
    pub n_candidates: usize,
    pub n_fresh_candidates: usize,
    pub cold_start: bool,
    /// Milliseconds per stage, in `STAGES` order.
    pub timings: [f64; 7],
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

#[derive(Default)]
struct Popular {
    at: f64,
    items: Vec<u64>,
}

/// Counters for /metrics.
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
struct Freshness {
    /// f64 bits of the newest event time absorbed by the real-time tier (user histories) and
    /// by the near-real-time windows; 0 = none yet.
    last_rt: AtomicU64,
    last_nrt: AtomicU64,
    samples: Mutex<[VecDeque<f32>; 3]>,
}

fn max_ts(a: &AtomicU64, ts: f64) {
    let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        (old == 0 || ts > f64::from_bits(old)).then_some(ts.to_bits())
    });
}

fn age(a: &AtomicU64, now: f64) -> f64 {
    match a.load(Ordering::Relaxed) {
        0 => f64::INFINITY,
        b => (now - f64::from_bits(b)).max(0.0),
    }
}

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
}

pub struct Pipeline {
    pub items: ItemStore,
    pub users: UserStore,
    pub fresh: FreshPool,
    pub index: Arc<HnswIndex>,
    pub rankers: Arc<RankerSet>,
    pub reranker: Arc<Reranker>,
    split: RwLock<Arc<TrafficSplit>>,
    config: RwLock<Arc<ServingConfig>>,
    log: Option<Arc<EventLog>>,
    tokens: UserTokenizer,
    opts: PipelineOptions,
    impressions: Mutex<ImpressionCache>,
    popular: RwLock<Popular>,
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
    pub stats: PipelineStats,
}

fn key_of(impression_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(impression_id.as_bytes())
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
        let dim = index.dim();
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
        if !config.task_weights.is_empty() && config.task_weights.len() != snap.live.n_tasks() {
            return Err(invalid!(
                "task_weights has {} entries, the live ranker has {} tasks",
                config.task_weights.len(),
                snap.live.n_tasks()
            ));
        }
        let split = TrafficSplit::new(config.explore_rate, split.salt(), split.layers().to_vec())?;
        let shared = opts.shared.clone().map(RedisTier::connect).transpose()?;
        Ok(Self {
            items: ItemStore::new(dim, opts.counter_windows)?,
            users: UserStore::new(opts.history_len, opts.seen_len)?,
            fresh: FreshPool::new(config.fresh_max_age_s.max(86400.0)),
            index,
            rankers,
            reranker,
            split: RwLock::new(Arc::new(split)),
            config: RwLock::new(Arc::new(config)),
            log,
            tokens: UserTokenizer::new(token_key)?,
            opts,
            impressions: Mutex::new(ImpressionCache::default()),
            popular: RwLock::new(Popular {
                at: f64::NEG_INFINITY,
                items: vec![],
            }),
            batch: RwLock::new(Arc::new(BatchTier::empty(dim))),
            batch_update: Mutex::new(()),
            stream: stream_id(),
            seq: AtomicU64::new(0),
            feature_set_version: feature_set_version(dim),
            freshness: Freshness::default(),
            shared,
            stats: PipelineStats::default(),
        })
    }

    pub fn config(&self) -> Arc<ServingConfig> {
        self.config.read().clone()
    }

    /// Swaps the product config atomically; the exploration setpoint moves with it.
    pub fn set_config(&self, cfg: ServingConfig) -> Result<()> {
        cfg.validate()?;
        let n_tasks = self.rankers.snapshot().live.n_tasks();
        if !cfg.task_weights.is_empty() && cfg.task_weights.len() != n_tasks {
            return Err(invalid!(
                "task_weights has {} entries, the live ranker has {n_tasks} tasks",
                cfg.task_weights.len()
            ));
        }
        let old = self.split.read().clone();
        let split = TrafficSplit::new(cfg.explore_rate, old.salt(), old.layers().to_vec())?;
        *self.split.write() = Arc::new(split);
        *self.config.write() = Arc::new(cfg);
        Ok(())
    }

    pub fn split(&self) -> Arc<TrafficSplit> {
        self.split.read().clone()
    }

    pub fn event_log(&self) -> Option<&Arc<EventLog>> {
        self.log.as_ref()
    }

    pub fn user_token(&self, user_id: &str) -> String {
        self.tokens.token(user_id)
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
    pub fn set_batch(&self, batch: BatchTier) -> Result<()> {
        if batch.dim() != self.items.dim() {
            return Err(invalid!(
                "batch tier dim {} differs from the pipeline's embedding dim {}",
                batch.dim(),
                self.items.dim()
            ));
        }
        let _g = self.batch_update.lock();
        *self.batch.write() = Arc::new(batch);
        Ok(())
    }

    /// Applies `change` to a copy of the batch snapshot and publishes the copy (updates are
    /// serialised; requests read the old snapshot until the new one is published).
    fn update_batch(&self, change: impl FnOnce(&mut BatchTier) -> Result<()>) -> Result<()> {
        let _g = self.batch_update.lock();
        let mut b = (*self.batch()).clone();
        change(&mut b)?;
        *self.batch.write() = Arc::new(b);
        Ok(())
    }

    /// Adds long-term embeddings to a copy of the batch snapshot and publishes the copy.
    pub fn set_user_embeddings(&self, user_ids: &[&str], emb: &[f32]) -> Result<()> {
        let keys: Vec<u64> = user_ids.iter().map(|u| UserStore::key(u)).collect();
        self.update_batch(|b| b.add_users(&keys, emb))
    }

    /// Sets creator authority scores in a copy of the batch snapshot and publishes the copy.
    pub fn set_creator_authority(&self, creators: &[u64], authority: &[f32]) -> Result<()> {
        self.update_batch(|b| b.set_authority(creators, authority))
    }

    /// The shared (Redis) tier, when one is attached.
    pub fn shared_tier(&self) -> Option<&RedisTier> {
        self.shared.as_ref()
    }

    fn shared_fallback(&self) {
        self.stats.shared_fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// Near-real-time counts of the items in `slots` at `now`: item and topic windows from the
    /// shared tier when it is attached and answers (one round trip for items and topics), else
    /// the in-process windows (the stale-but-served snapshot). Creator uploads follow the
    /// items each process holds, so they are always in-process.
    fn nrt_counts(&self, items: &Items, slots: &[usize], now: f64) -> Vec<NrtCounts> {
        let local = || items.nrt_many(slots, now);
        let Some(tier) = &self.shared else {
            return local();
        };
        if slots.is_empty() {
            return vec![];
        }
        let widths = items.windows();
        let ids: Vec<u64> = slots.iter().map(|&s| items.id(s)).collect();
        let mut topics: Vec<u64> = slots.iter().map(|&s| u64::from(items.topic(s))).collect();
        topics.sort_unstable();
        topics.dedup();
        let read =
            tier.read_windows_many::<ITEM_KINDS>(&[("i", &ids), ("t", &topics)], now, &widths);
        match read {
            Ok(mut r) if r.len() == 2 => {
                let (tw, iw) = (r.pop().unwrap_or_default(), r.pop().unwrap_or_default());
                self.stats.shared_reads.fetch_add(1, Ordering::Relaxed);
                let mut creators = CreatorUploads::default();
                slots
                    .iter()
                    .zip(&iw)
                    .map(|(&s, w)| {
                        let t = topics
                            .binary_search(&u64::from(items.topic(s)))
                            .map_or([Default::default(); 2], |i| [tw[i][0], tw[i][1]]);
                        let c = creators.get(items, items.creator(s), now);
                        NrtCounts::from_windows(&[w[0], w[1]], &t, c, now, widths)
                    })
                    .collect()
            }
            _ => {
                self.shared_fallback();
                local()
            }
        }
    }

    /// Adds item and topic events `(item, topic, counts)` to the shared tier in one pipeline
    /// (failures are counted by the tier; the in-process store already holds the events).
    /// Called without the item table's lock.
    fn shared_events(&self, events: &[(u64, u32, [u32; ITEM_KINDS])], now: f64) {
        let Some(tier) = &self.shared else { return };
        if events.is_empty() {
            return;
        }
        let widths = self.opts.counter_windows;
        let ie: Vec<(u64, f64, [u32; ITEM_KINDS])> =
            events.iter().map(|&(id, _, d)| (id, now, d)).collect();
        let te: Vec<(u64, f64, [u32; ITEM_KINDS])> = events
            .iter()
            .map(|&(_, t, d)| (u64::from(t), now, d))
            .collect();
        let _ = tier.add_events_many(&[("i", &ie), ("t", &te)], &widths);
    }

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

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn feature_event(&self, kind: FeatureEventKind, ts_us: i64) -> FeatureEvent {
        FeatureEvent::new(kind, ts_us, &self.stream, self.next_seq())
    }

    /// Adds items to the feature store and fresh pool, and (when `index` is true) to the ANN
    /// index. `embeddings` is `infos.len() x dim`.
    /// `log_events`: write each item to the feature changelog (live uploads); a bulk catalogue
    /// load is the batch tier's starting state and is not logged.
    pub fn upsert_items(
        &self,
        infos: &[ItemInfo],
        embeddings: &[f32],
        index: bool,
        log_events: bool,
    ) -> Result<()> {
        let dim = self.items.dim();
        if embeddings.len() != infos.len() * dim {
            return Err(invalid!(
                "embeddings has {} values for {} items; expected {} (items x dim {dim})",
                embeddings.len(),
                infos.len(),
                infos.len() * dim
            ));
        }
        if index {
            let ids: Vec<u64> = infos.iter().map(|i| i.id).collect();
            self.index.add(&ids, embeddings)?;
        }
        self.items.upsert(infos, embeddings)?;
        for i in infos {
            self.fresh.insert(i.upload_ts, i.id);
        }
        if let (Some(log), true) = (&self.log, log_events) {
            for (i, e) in infos.iter().zip(embeddings.chunks_exact(dim)) {
                let mut ev = self.feature_event(FeatureEventKind::Upload, micros(i.upload_ts));
                ev.item_ids = vec![i.id];
                ev.topic = i.topic as i32;
                ev.creator_id = i.creator;
                ev.category = i.category as i32;
                ev.upload_ts = i.upload_ts;
                ev.embedding = e.to_vec();
                let _ = log.submit(elog::Record::FeatureEvent(ev));
            }
        }
        Ok(())
    }

    /// Takes items down everywhere at once; returns how many were live.
    pub fn remove_items(&self, ids: &[u64], now: f64) -> Result<usize> {
        self.index.remove(ids)?;
        let n = self.items.remove(ids);
        if let Some(log) = &self.log {
            let mut ev = self.feature_event(FeatureEventKind::Remove, micros(now));
            ev.item_ids = ids.to_vec();
            let _ = log.submit(elog::Record::FeatureEvent(ev));
        }
        Ok(n)
    }

    /// The popularity list (sampled, refreshed every `popular_refresh_s`). Takes the item table
    /// the caller already holds: re-locking it here could deadlock behind a waiting writer.
    fn popular_items(&self, items: &Items, now: f64) -> Vec<u64> {
        {
            let p = self.popular.read();
            if now - p.at < self.opts.popular_refresh_s && !p.items.is_empty() {
                return p.items.clone();
            }
        }
        let n = items.slots();
        let mut scored: Vec<(f32, u64)> = Vec::with_capacity(self.opts.popular_sample.min(n));
        let stride = (n / self.opts.popular_sample.max(1)).max(1);
        let mut s = 0;
        while s < n {
            if items.is_live(s) {
                let c = items.counters(s, now);
                scored.push((c.completions[1] + 0.1 * c.likes[1], items.id(s)));
            }
            s += stride;
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        scored.truncate(2000);
        let out: Vec<u64> = scored.into_iter().map(|(_, id)| id).collect();
        *self.popular.write() = Popular {
            at: now,
            items: out.clone(),
        };
        out
    }

    /// Serves one feed request. `now` is seconds since the epoch.
    pub fn feed(
        &self,
        user_id: &str,
        request_id: &str,
        n: usize,
        now: f64,
    ) -> Result<FeedResponse> {
        if n == 0 {
            return Err(invalid!("n must be >= 1"));
        }
        if request_id.is_empty() {
            return Err(invalid!("request_id must be a non-empty string"));
        }
        if !now.is_finite() {
            return Err(invalid!(
                "now must be finite seconds since the epoch, got {now}"
            ));
        }
        let now = quantize_ts(now);
        let mut timings = [0.0f64; 7];
        let mut clock = Instant::now();
        let mut lap = |i: usize| {
            let t = Instant::now();
            timings[i] = (t - clock).as_secs_f64() * 1e3;
            clock = t;
        };
        let cfg = self.config();
        let split = self.split();
        let snap = self.rankers.snapshot();
        let user_key = UserStore::key(user_id);
        let token = self.tokens.token(user_id);
        // the shared tier's history when attached and up; the in-process one otherwise (read
        // before the item table's lock: no network wait while holding it)
        let shared_user: Option<Option<UserState>> =
            self.shared
                .as_ref()
                .and_then(|t| match t.user_history(user_key) {
                    Ok(h) if h.is_empty() => Some(None),
                    Ok(h) => Some(Some(UserState::from_history(h))),
                    Err(_) => {
                        self.shared_fallback();
                        None
                    }
                });
        let batch = self.batch();
        let items = self.items.read();
        let dim = items.dim();

        // -- request scorer
        let uw = user_width(dim);
        let mut ublock = vec![0.0f32; uw];
        let long_term = batch.long_term(user_key);
        let (uemb, seen) = self.users.with_user(user_key, |local| {
            let u = match &shared_user {
                Some(s) => s.as_ref(),
                None => local,
            };
            let e = user_embedding(u, long_term, &items, &cfg);
            user_block(
                u,
                long_term,
                e.as_deref().unwrap_or(&vec![0.0; dim]),
                self.opts.history_len,
                &mut ublock,
            );
            (e, local.map(|u| u.seen().clone()).unwrap_or_default())
        });
        let cold = uemb.is_none();
        let zero = vec![0.0f32; dim];
        let qvec: &[f32] = uemb.as_deref().unwrap_or(&zero);
        lap(0);

        // -- candidates: fresh pool first (reserved budget), then ANN (or popularity when cold)
        let k_total = cfg.candidates;
        let k_fresh = ((k_total as f64) * cfg.fresh_budget).round() as usize;
        let mut cand_slots: Vec<usize> = Vec::with_capacity(k_total);
        let mut cand_fresh: Vec<bool> = Vec::with_capacity(k_total);
        let mut taken = IdSet::default();
        if k_fresh > 0 {
            let mut fresh: Vec<(f32, usize)> = Vec::new();
            let ip = crate::ann::distance::select(crate::ann::Metric::Ip);
            self.fresh
                .for_each_fresh(now, cfg.fresh_max_age_s, self.opts.fresh_scan, |id, ts| {
                    if seen.contains(&id) {
                        return;
                    }
                    if let Some(s) = items.slot_of(id) {
                        let score = if cold {
                            ts as f32
                        } else {
                            dot(ip, qvec, items.embedding(s))
                        };
                        fresh.push((score, s));
                    }
                });
            if fresh.len() > k_fresh {
                fresh.select_nth_unstable_by(k_fresh, |a, b| {
                    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
                });
                fresh.truncate(k_fresh);
            }
            for (_, s) in fresh {
                if taken.insert(items.id(s)) {
                    items.mark_candidate(s, now);
                    cand_slots.push(s);
                    cand_fresh.push(true);
                }
            }
        }
        let n_fresh = cand_slots.len();
        // A small popularity backfill spans topics, so the re-ranker can meet its topic cap
        // even for a user whose ANN neighbourhood is a single topic.
        let k_backfill = if cold {
            0
        } else {
            (k_total / 20).min(k_total.saturating_sub(n_fresh))
        };
        let k_rest = k_total.saturating_sub(n_fresh + k_backfill);
        if k_rest > 0 {
            let ids: Vec<u64> = if let (Some(q), false) = (uemb.as_deref(), self.index.is_empty()) {
                let k = k_rest.min(self.index.len());
                let excl = |id: u64| seen.contains(&id) || taken.contains(&id);
                let ef = if cfg.ef == 0 { None } else { Some(cfg.ef) };
                self.index
                    .search_one(q, k, ef, Some(&excl))?
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect()
            } else {
                self.popular_items(&items, now)
            };
            for id in ids {
                if cand_slots.len() >= k_total - k_backfill {
                    break;
                }
                if seen.contains(&id) || !taken.insert(id) {
                    continue;
                }
                if let Some(s) = items.slot_of(id) {
                    cand_slots.push(s);
                    cand_fresh.push(false);
                }
            }
        }
        if k_backfill > 0 {
            let mut added = 0;
            for id in self.popular_items(&items, now) {
                if added == k_backfill {
                    break;
                }
                if seen.contains(&id) || !taken.insert(id) {
                    continue;
                }
                if let Some(s) = items.slot_of(id) {
                    cand_slots.push(s);
                    cand_fresh.push(false);
                    added += 1;
                }
            }
        }
        let nc = cand_slots.len();
        lap(1);

        // -- features (the one code path of serve/features.rs)
        let iw = item_width(dim);
        let mut iblock = vec![0.0f32; nc * iw];
        let nrt = self.nrt_counts(&items, &cand_slots, now);
        for (r, &s) in cand_slots.iter().enumerate() {
            item_block(
                &items,
                &batch,
                s,
                qvec,
                now,
                &nrt[r],
                &mut iblock[r * iw..(r + 1) * iw],
            );
        }
        lap(2);

        // -- ranker: live + shadows on the same rows, value model
        let tasks = snap.live.n_tasks();
        let weights: Vec<f32> = if cfg.task_weights.is_empty() {
            snap.live.task_weights().to_vec()
        } else {
            cfg.task_weights.clone()
        };
        let mut preds = vec![0.0f32; nc * tasks];
        let mut values = vec![0.0f32; nc];
        if nc > 0 {
            snap.live
                .predict_request_into(&ublock, &iblock, nc, &mut preds)?;
            value_with(&preds, nc, &weights, &mut values)?;
        }
        lap(3);

        // -- exploration slots are carved first (pure function of the key), then the re-ranker
        //    fills the other slots around them, counting them in its windows
        let slot_ids: Vec<i64> = (0..n as i64).collect();
        let explore = split.assign_batch(Keys::One(&token), Keys::One(request_id), &slot_ids)?;
        let policy = self.reranker.policy();
        let blocked: Vec<u32> = policy
            .blocked_categories
            .iter()
            .filter_map(|&c| u32::try_from(c).ok())
            .collect();
        let mut chosen = IdSet::default();
        let mut explore_items: Vec<(usize, usize, f64)> = Vec::new(); // (position, item slot, propensity)
        for (pos, &e) in explore.iter().enumerate() {
            if !e {
                continue;
            }
            let seed = split.exploration_seed(&token, request_id, pos as i64);
            if let Some((s, p)) = draw_exploration(&items, seed, &blocked, &chosen, 256) {
                chosen.insert(items.id(s));
                explore_items.push((pos, s, p));
            }
        }
        let topics: Vec<u64> = cand_slots
            .iter()
            .map(|&s| u64::from(items.topic(s)))
            .collect();
        let creators: Vec<u64> = cand_slots.iter().map(|&s| items.creator(s)).collect();
        let cats: Vec<u64> = cand_slots
            .iter()
            .map(|&s| u64::from(items.category(s)))
            .collect();
        let mut cemb = vec![0.0f32; nc * dim];
        for (r, &s) in cand_slots.iter().enumerate() {
            cemb[r * dim..(r + 1) * dim].copy_from_slice(items.embedding(s));
        }
        // exploration items never repeat a candidate
        let pinned: Vec<Pinned> = explore_items
            .iter()
            .map(|&(pos, s, _)| Pinned {
                position: pos,
                topic: u64::from(items.topic(s)),
                creator: items.creator(s),
                category: u64::from(items.category(s)),
                fresh: now - items.upload_ts(s) <= cfg.fresh_max_age_s,
            })
            .collect();
        let exclude: Vec<bool> = cand_slots
            .iter()
            .map(|&s| chosen.contains(&items.id(s)))
            .collect();
        let outcome = self.reranker.rerank_pinned(
            &Candidates {
                scores: &values,
                topics: &topics,
                creators: &creators,
                embeddings: Some((&cemb, dim)),
                categories: Some(&cats),
                is_fresh: Some(&cand_fresh),
            },
            n,
            &pinned,
            Some(&exclude),
        )?;
        lap(4);

        // -- mixer: zip exploration slots and the re-ranked order; score exploration items too,
        //    so every slot carries frozen predictions
        let mut slots: Vec<Slot> = Vec::with_capacity(n);
        let mut slot_rows: Vec<Option<usize>> = Vec::with_capacity(n);
        let mut ranked_iter = outcome.indices.iter();
        let mut explore_iter = explore_items.iter().peekable();
        let mut ex_rows: Vec<usize> = Vec::new();
        for pos in 0..n {
            if let Some(&&(p, s, prop)) = explore_iter.peek() {
                if p == pos {
                    explore_iter.next();
                    ex_rows.push(slots.len());
                    slots.push(self.slot(
                        &items,
                        s,
                        slots.len(),
                        Source::Exploration,
                        prop,
                        request_id,
                        0.0,
                    ));
                    slot_rows.push(None);
                    continue;
                }
            }
            match ranked_iter.next() {
                Some(&c) => {
                    let source = if cand_fresh[c] {
                        Source::Fresh
                    } else {
                        Source::Ranked
                    };
                    slots.push(self.slot(
                        &items,
                        cand_slots[c],
                        slots.len(),
                        source,
                        1.0,
                        request_id,
                        values[c],
                    ));
                    slot_rows.push(Some(c));
                }
                None => break,
            }
        }
        let ns = slots.len();
        let mut slot_preds = vec![0.0f32; ns * tasks];
        for (i, r) in slot_rows.iter().enumerate() {
            if let Some(c) = r {
                slot_preds[i * tasks..(i + 1) * tasks]
                    .copy_from_slice(&preds[c * tasks..(c + 1) * tasks]);
            }
        }
        // exploration items: assemble and score them with the same code path
        let mut ex_block = vec![0.0f32; ex_rows.len() * iw];
        if !ex_rows.is_empty() {
            let ex_slots = ex_rows
                .iter()
                .map(|&i| {
                    items
                        .slot_of(slots[i].item_id)
                        .ok_or_else(|| Error::NotFound("exploration item vanished".into()))
                })
                .collect::<Result<Vec<usize>>>()?;
            let ex_nrt = self.nrt_counts(&items, &ex_slots, now);
            for (j, &s) in ex_slots.iter().enumerate() {
                item_block(
                    &items,
                    &batch,
                    s,
                    qvec,
                    now,
                    &ex_nrt[j],
                    &mut ex_block[j * iw..(j + 1) * iw],
                );
            }
            let ex_preds = snap
                .live
                .predict_request(&ublock, &ex_block, ex_rows.len())?;
            let mut ex_vals = vec![0.0f32; ex_rows.len()];
            value_with(&ex_preds, ex_rows.len(), &weights, &mut ex_vals)?;
            for (j, &i) in ex_rows.iter().enumerate() {
                slot_preds[i * tasks..(i + 1) * tasks]
                    .copy_from_slice(&ex_preds[j * tasks..(j + 1) * tasks]);
                slots[i].value = ex_vals[j];
            }
        }
        // the served rows (ranked rows + exploration rows): shadows score exactly these, and a
        // sampled request logs them as served features
        let log_features = self
            .log
            .as_ref()
            .is_some_and(|l| keep_request(request_id, l.config().sample_pct));
        let mut shadows = Vec::with_capacity(snap.shadows.len());
        let mut rows = Vec::new();
        if (!snap.shadows.is_empty() || log_features) && ns > 0 {
            rows = vec![0.0f32; ns * iw];
            let mut j = 0;
            for (i, r) in slot_rows.iter().enumerate() {
                let src = match r {
                    Some(c) => &iblock[c * iw..(c + 1) * iw],
                    None => {
                        j += 1;
                        &ex_block[(j - 1) * iw..j * iw]
                    }
                };
                rows[i * iw..(i + 1) * iw].copy_from_slice(src);
            }
        }
        if !rows.is_empty() {
            for m in &snap.shadows {
                let predictions = m.predict_request(&ublock, &rows, ns)?;
                let own;
                let w: &[f32] = if m.n_tasks() == weights.len() {
                    &weights
                } else {
                    own = m.task_weights();
                    &own
                };
                let mut values = vec![0.0f32; ns];
                value_with(&predictions, ns, w, &mut values)?;
                shadows.push(ShadowScores {
                    version: m.version().to_owned(),
                    predictions,
                    values,
                });
            }
        }
        lap(5);

        // -- freeze: remember impressions, update counters and the seen set, hand records to the log
        let served: Vec<u64> = slots.iter().map(|s| s.item_id).collect();
        {
            let mut cache = self.impressions.lock();
            for s in &slots {
                let k = key_of(&s.impression_id);
                if cache
                    .map
                    .insert(
                        k,
                        ImpressionRef {
                            user_key,
                            user_token: token.clone(),
                            item_id: s.item_id,
                        },
                    )
                    .is_none()
                {
                    cache.order.push_back(k);
                }
                while cache.order.len() > self.opts.impression_capacity {
                    if let Some(old) = cache.order.pop_front() {
                        cache.map.remove(&old);
                    }
                }
            }
        }
        let cand_ids: Vec<u64> = if self.log.is_some() {
            cand_slots.iter().map(|&s| items.id(s)).collect()
        } else {
            vec![]
        };
        let shared_ev: Vec<(u64, u32, [u32; ITEM_KINDS])> = if self.shared.is_some() {
            served
                .iter()
                .filter_map(|&id| items.slot_of(id).map(|s| (id, items.topic(s), [1, 0, 0])))
                .collect()
        } else {
            vec![]
        };
        drop(items);
        self.shared_events(&shared_ev, now);
        for &id in &served {
            let _ = self.items.record(id, now, true, false, false);
        }
        {
            let ages = self.tier_ages(&batch, now);
            let mut smp = self.freshness.samples.lock();
            for (q, a) in smp.iter_mut().zip(ages) {
                if q.len() == FRESHNESS_SAMPLES {
                    q.pop_front();
                }
                q.push_back(a as f32);
            }
        }
        max_ts(&self.freshness.last_nrt, now);
        self.users.mark_seen(user_key, &served);
        let relaxed: Vec<(&'static str, u32)> =
            outcome.relaxed.iter().map(|(r, c)| (r.name(), c)).collect();
        let resp = FeedResponse {
            request_id: request_id.to_owned(),
            user_token: token,
            model_version: snap.live_version().to_owned(),
            task_names: snap.live.task_names().to_vec(),
            slots,
            predictions: slot_preds,
            shadows,
            relaxed,
            n_candidates: nc,
            n_fresh_candidates: n_fresh,
            cold_start: cold,
            timings,
        };
        if let Some(log) = &self.log {
            let mut rec = self.records(&resp, &split, &cand_ids, &values, now);
            if log_features {
                let ts_us = micros(now);
                rec.served_features = resp
                    .slots
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let mut f = Vec::with_capacity(uw + iw);
                        f.extend_from_slice(&ublock);
                        f.extend_from_slice(&rows[i * iw..(i + 1) * iw]);
                        elog::ServedFeatures {
                            request_id: request_id.to_owned(),
                            ts_us,
                            item_id: s.item_id,
                            features: f,
                            feature_set_version: self.feature_set_version.clone(),
                            sampled_pct: 100.0,
                        }
                    })
                    .collect();
            }
            let mut ev = self.feature_event(FeatureEventKind::Impression, micros(now));
            ev.request_id = request_id.to_owned();
            ev.user_token = resp.user_token.clone();
            ev.item_ids = served.clone();
            ev.long_term_weight = cfg.long_term_weight;
            ev.recency_half_life = cfg.recency_half_life;
            rec.feature_event = Some(ev);
            // never blocks; a full queue drops sampled rows and spills durable rows (eventlog)
            let _ = log.submit_request(rec);
        }
        let st = &self.stats;
        st.requests.fetch_add(1, Ordering::Relaxed);
        st.slots
            .fetch_add(resp.slots.len() as u64, Ordering::Relaxed);
        let ex = resp
            .slots
            .iter()
            .filter(|s| s.source == Source::Exploration)
            .count();
        st.exploration_slots.fetch_add(ex as u64, Ordering::Relaxed);
        let fr = resp
            .slots
            .iter()
            .filter(|s| s.source == Source::Fresh)
            .count();
        st.fresh_slots.fetch_add(fr as u64, Ordering::Relaxed);
        st.cold_starts.fetch_add(u64::from(cold), Ordering::Relaxed);
        st.requests_with_fresh_candidates
            .fetch_add(u64::from(n_fresh > 0), Ordering::Relaxed);
        st.relaxed_responses
            .fetch_add(u64::from(!resp.relaxed.is_empty()), Ordering::Relaxed);
        let mut resp = resp;
        let t = Instant::now();
        resp.timings[6] = (t - clock).as_secs_f64() * 1e3;
        Ok(resp)
    }

    #[allow(clippy::too_many_arguments)]
    fn slot(
        &self,
        items: &super::store::Items,
        s: usize,
        position: usize,
        source: Source,
        propensity: f64,
        request_id: &str,
        value: f32,
    ) -> Slot {
        Slot {
            item_id: items.id(s),
            position,
            source,
            propensity,
            impression_id: format!("{request_id}:{position}"),
            topic: items.topic(s),
            creator: items.creator(s),
            value,
        }
    }

    fn records(
        &self,
        r: &FeedResponse,
        split: &TrafficSplit,
        cand_ids: &[u64],
        values: &[f32],
        now: f64,
    ) -> RequestRecords {
        let ts_us = micros(now);
        let experiments = {
            let v = split.variants(&r.user_token);
            let parts: Vec<String> = v
                .iter()
                .filter_map(|(l, v)| v.map(|v| format!("{}:{}", json_str(l), json_str(v))))
                .collect();
            format!("{{{}}}", parts.join(","))
        };
        let tasks = r.task_names.len();
        let mut out = RequestRecords::default();
        for (i, s) in r.slots.iter().enumerate() {
            let source = match s.source {
                Source::Ranked => elog::Source::Ranked,
                Source::Exploration => elog::Source::Exploration,
                Source::Fresh => elog::Source::Fresh,
            };
            let exploration = s.source == Source::Exploration;
            out.impressions.push(elog::Impression {
                impression_id: s.impression_id.clone(),
                ts_us,
                request_id: r.request_id.clone(),
                user_token: r.user_token.clone(),
                item_id: s.item_id,
                position: s.position as i32,
                source,
                propensity: s.propensity,
                model_version: r.model_version.clone(),
                experiments: if exploration {
                    "{}".to_owned()
                } else {
                    experiments.clone()
                },
                topic: s.topic as i32,
                creator_id: s.creator,
                sampled_pct: 100.0,
            });
            if exploration {
                out.exploration.push(elog::ExplorationEvent {
                    impression_id: s.impression_id.clone(),
                    ts_us,
                    user_token: r.user_token.clone(),
                    item_id: s.item_id,
                    position: s.position as i32,
                    topic: s.topic as i32,
                    propensity: s.propensity,
                    policy: "uniform".to_owned(),
                });
            }
            out.scores.push(elog::RankerScore {
                impression_id: s.impression_id.clone(),
                ts_us,
                model_version: r.model_version.clone(),
                is_shadow: false,
                value_score: s.value,
                preds: r.predictions[i * tasks..(i + 1) * tasks].to_vec(),
                request_id: r.request_id.clone(),
                exploration,
                sampled_pct: 100.0,
            });
            for sh in &r.shadows {
                let t = sh.predictions.len() / r.slots.len().max(1);
                out.scores.push(elog::RankerScore {
                    impression_id: s.impression_id.clone(),
                    ts_us,
                    model_version: sh.version.clone(),
                    is_shadow: true,
                    value_score: sh.values[i],
                    preds: sh.predictions[i * t..(i + 1) * t].to_vec(),
                    request_id: r.request_id.clone(),
                    exploration,
                    sampled_pct: 100.0,
                });
            }
        }
        out.request = Some(elog::RequestRow {
            request_id: r.request_id.clone(),
            ts_us,
            user_token: r.user_token.clone(),
            candidate_item_ids: cand_ids.to_vec(),
            candidate_scores: values.to_vec(),
            served_item_ids: r.slots.iter().map(|s| s.item_id).collect(),
            sampled_pct: 100.0,
        });
        out
    }

    /// Feeds an engagement back: the user's history, the item's counters and the event log.
    #[allow(clippy::too_many_arguments)]
    pub fn engage(
        &self,
        impression_id: &str,
        watched_seconds: f32,
        completed: bool,
        liked: bool,
        shared: bool,
        followed: bool,
        now: f64,
    ) -> Result<()> {
        if !(watched_seconds.is_finite() && watched_seconds >= 0.0) {
            return Err(invalid!(
                "watched_seconds must be finite and >= 0, got {watched_seconds}"
            ));
        }
        if !now.is_finite() {
            return Err(invalid!(
                "now must be finite seconds since the epoch, got {now}"
            ));
        }
        let now = quantize_ts(now);
        let imp = self.impressions.lock().map.get(&key_of(impression_id)).cloned().ok_or_else(|| {
            Error::NotFound(format!(
                "unknown impression_id {impression_id:?}: not served by this pipeline, or older than the last {} impressions",
                self.opts.impression_capacity
            ))
        })?;
        // a fraction of a typical 30 s clip when the client did not report completion
        let frac = if completed {
            1.0
        } else {
            (watched_seconds / 30.0).min(1.0)
        };
        self.users.record_interaction(
            imp.user_key,
            Interaction {
                item_id: imp.item_id,
                watched_frac: frac,
                liked,
                ts: now,
            },
        );
        // the item may have been taken down since: its counters no longer matter
        let _ = self.items.record(imp.item_id, now, false, completed, liked);
        if let Some(tier) = &self.shared {
            let it = Interaction {
                item_id: imp.item_id,
                watched_frac: frac,
                liked,
                ts: now,
            };
            let _ = tier.push_interactions(&[(imp.user_key, it)], self.opts.history_len);
            let topic = {
                let items = self.items.read();
                items.slot_of(imp.item_id).map(|s| items.topic(s))
            };
            if let Some(t) = topic {
                let d = [0, u32::from(completed), u32::from(liked)];
                self.shared_events(&[(imp.item_id, t, d)], now);
            }
        }
        max_ts(&self.freshness.last_rt, now);
        max_ts(&self.freshness.last_nrt, now);
        if let Some(log) = &self.log {
            let mut ev = self.feature_event(FeatureEventKind::Engagement, micros(now));
            ev.request_id = impression_id.to_owned();
            ev.user_token = imp.user_token.clone();
            ev.item_ids = vec![imp.item_id];
            ev.watched_frac = frac;
            ev.completed = completed;
            ev.liked = liked;
            let _ = log.submit(elog::Record::FeatureEvent(ev));
            let _ = log.submit(elog::Record::Engagement(elog::Engagement {
                impression_id: impression_id.to_owned(),
                ts_us: micros(now),
                user_token: imp.user_token,
                watched_seconds,
                completed,
                liked,
                shared,
                followed,
            }));
        }
        Ok(())
    }
}

/// Inner product with the index's SIMD kernel (its "ip" distance is 1 - dot).
#[inline]
fn dot(ip_distance: crate::ann::distance::DistFn, a: &[f32], b: &[f32]) -> f32 {
    1.0 - ip_distance(a, b)
}
