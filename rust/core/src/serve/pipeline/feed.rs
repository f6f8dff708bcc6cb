//! `Pipeline::feed` and its stages, in request order. Each stage is one function taking the
//! request and what earlier stages produced; network I/O (the shared tier) never runs while the
//! item table's lock is held.

use super::super::features::{item_block, item_width, user_block, user_width};
use super::super::idhash::IdSet;
use super::super::mixer::draw_exploration;
use super::super::store::{
    BatchTier, CreatorUploads, Items, NrtCounts, UserState, UserStore, ITEM_KINDS,
};
use super::ingest::{impression_id, impression_key};
use super::records::request_records;
use super::sources::{CandidateSet, SourceContext};
use super::{
    freshness::max_ts, micros, quantize_ts, FeedResponse, ImpressionRef, Pipeline, Serving,
    ShadowScores, Slot, Source, Stage, MAX_FEED_N,
};
use crate::eventlog::{self as elog, keep_request, FeatureEventKind};
use crate::rank::{value_with, Mlp, RankerSnapshot};
use crate::rerank::{Candidates, Pinned, RerankOutcome};
use crate::split::Keys;
use crate::{invalid, Result};
use std::sync::Arc;
use std::time::Instant;

/// The longest user or request id accepted (bytes).
const MAX_ID_BYTES: usize = 1024;

/// Everything a request reads once at its start: config snapshot, models, the user's keys.
struct Request<'a> {
    request_id: &'a str,
    n: usize,
    now: f64,
    serving: Arc<Serving>,
    snap: Arc<RankerSnapshot>,
    /// The model that ranks this request: the live one, or the one its experiment routes to.
    model: Arc<Mlp>,
    routed: bool,
    token: String,
    user_key: u64,
    batch: Arc<BatchTier>,
    retrieval: Arc<super::Retrieval>,
    /// Value model weights (product config, or the live model's defaults).
    weights: Vec<f32>,
}

/// The user side: embedding (None = cold start), the user block of the features, seen items.
struct UserSide {
    emb: Option<Vec<f32>>,
    /// The user tower's output (the ANN query) when the retrieval snapshot has one.
    tower: Option<Vec<f32>>,
    block: Vec<f32>,
    seen: IdSet,
}

/// The exploration slots: (position, item slot, propensity), and the same as re-ranker pins.
#[derive(Default)]
struct Pins {
    draws: Vec<(usize, usize, f64)>,
    pinned: Vec<Pinned>,
}

/// Each shadow's value score of every candidate (shadow-major), for the `requests` row.
#[derive(Default)]
struct ShadowCandidates {
    versions: Vec<String>,
    values: Vec<f32>,
}

/// The rows the ranker scores: the candidates, then the exploration items.
struct Rows {
    slots: Vec<usize>,
    n_candidates: usize,
    fresh: Vec<bool>,
    ids: Vec<u64>,
    topics: Vec<u32>,
    creators: Vec<u64>,
    categories: Vec<u64>,
    /// `rows x dim` item embeddings (the re-ranker's diversity kernel).
    emb: Vec<f32>,
    /// `rows x item_width` item blocks.
    block: Vec<f32>,
}

struct Scored {
    preds: Vec<f32>,
    values: Vec<f32>,
}

struct Timer {
    clock: Instant,
    ms: [f64; 7],
}

impl Timer {
    fn start() -> Self {
        Timer {
            clock: Instant::now(),
            ms: [0.0; 7],
        }
    }
    fn lap(&mut self, stage: Stage) {
        let t = Instant::now();
        self.ms[stage as usize] = (t - self.clock).as_secs_f64() * 1e3;
        self.clock = t;
    }
}

fn check_request(user_id: &str, request_id: &str, n: usize, now: f64) -> Result<f64> {
    if !(1..=MAX_FEED_N).contains(&n) {
        return Err(invalid!("n must be in [1, {MAX_FEED_N}], got {n}"));
    }
    for (name, v) in [("user_id", user_id), ("request_id", request_id)] {
        if v.is_empty() || v.len() > MAX_ID_BYTES {
            return Err(invalid!(
                "{name} must be a non-empty string of at most {MAX_ID_BYTES} bytes, got {} bytes",
                v.len()
            ));
        }
    }
    if !now.is_finite() {
        return Err(invalid!(
            "now must be finite seconds since the epoch, got {now}"
        ));
    }
    Ok(quantize_ts(now))
}

impl Pipeline {
    /// Serves one feed request. `now` is seconds since the epoch.
    pub fn feed(
        &self,
        user_id: &str,
        request_id: &str,
        n: usize,
        now: f64,
    ) -> Result<FeedResponse> {
        let now = check_request(user_id, request_id, n, now)?;
        let mut t = Timer::start();
        let req = self.request(user_id, request_id, n, now);
        let shared_user = self.shared_history(req.user_key);
        let (user, mut rows, pins) = {
            let items = self.items.read();
            let user = self.score_user(&req, &items, shared_user)?;
            t.lap(Stage::Scorer);
            let cands = self.candidates(&self.source_context(&req, &items, &user))?;
            let pins = self.draw_pins(&req, &items)?;
            let rows = Rows::gather(&items, cands, &pins);
            t.lap(Stage::Candidates);
            (user, rows, pins)
        };
        self.item_features(&req, &user, &mut rows);
        t.lap(Stage::Features);
        let scored = self.rank(&req, &user, &rows)?;
        t.lap(Stage::Ranker);
        let outcome = self.rerank(&req, &rows, &scored, &pins)?;
        t.lap(Stage::Rerank);
        let (slots, slot_rows) = self.mix(&req, &rows, &scored, &pins, &outcome);
        let served_block = rows.served_block(&slot_rows);
        let (shadows, shadow_cands) =
            self.shadow_scores(&req, &user, &rows, &slot_rows, &served_block)?;
        t.lap(Stage::Mixer);
        let mut resp = FeedResponse {
            request_id: request_id.to_owned(),
            user_token: req.token.clone(),
            model_version: req.model.version().to_owned(),
            live_version: req.snap.live.version().to_owned(),
            task_names: req.model.task_names().to_vec(),
            predictions: gather_rows(&scored.preds, &slot_rows, req.model.n_tasks()),
            slots,
            shadows,
            relaxed: outcome.relaxed.iter().map(|(r, c)| (r.name(), c)).collect(),
            n_candidates: rows.n_candidates,
            n_fresh_candidates: rows.fresh.iter().filter(|&&f| f).count(),
            cold_start: user.emb.is_none(),
            timings: [0.0; 7],
        };
        self.freeze(&req, &resp);
        let cands = (&rows, &scored, shadow_cands);
        self.log_request(&req, &resp, cands, &user, &served_block);
        self.count_response(&resp, req.routed);
        t.lap(Stage::Log);
        resp.timings = t.ms;
        Ok(resp)
    }

    fn request<'a>(&self, user_id: &str, request_id: &'a str, n: usize, now: f64) -> Request<'a> {
        let serving = self.serving();
        let snap = self.rankers.snapshot();
        let token = self.tokens.token(user_id);
        let (model, routed) = self.route(&serving, &snap, &token);
        let weights = if serving.config.task_weights.is_empty() {
            snap.live.task_weights().to_vec()
        } else {
            serving.config.task_weights.clone()
        };
        Request {
            request_id,
            n,
            now,
            model,
            routed,
            user_key: UserStore::key_of_token(&token),
            token,
            batch: self.batch(),
            retrieval: self.retrieval(),
            serving,
            snap,
            weights,
        }
    }

    /// The model an experiment route assigns this user, else the live model.
    fn route(&self, serving: &Serving, snap: &RankerSnapshot, token: &str) -> (Arc<Mlp>, bool) {
        for r in self.routes().iter() {
            let v = serving.split.variant(&r.layer, token).ok().flatten();
            if v == Some(r.variant.as_str()) {
                if let Some(m) = snap.shadows.iter().find(|m| m.version() == r.version) {
                    return (m.clone(), true);
                }
            }
        }
        (snap.live.clone(), false)
    }

    /// The user's history from the shared tier when attached and up (read before any lock:
    /// no network wait while holding the item table); `None` = use the in-process one.
    fn shared_history(&self, user_key: u64) -> Option<Option<UserState>> {
        let tier = self.shared.as_ref()?;
        match tier.user_history(user_key) {
            Ok(h) if h.is_empty() => Some(None),
            Ok(h) => Some(Some(UserState::from_history(h))),
            Err(_) => {
                Self::count(&self.stats.shared_fallbacks, 1);
                None
            }
        }
    }

    /// Stage 1: the user embedding, the user block of the features, and the user tower's
    /// ANN query (a cold user stays cold: no history, no long-term vector, no query).
    fn score_user(
        &self,
        req: &Request<'_>,
        items: &Items,
        shared: Option<Option<UserState>>,
    ) -> Result<UserSide> {
        let dim = items.dim();
        let mut block = vec![0.0f32; user_width(dim)];
        let long_term = req.batch.long_term(req.user_key);
        let cfg = &req.serving.config;
        let (emb, seen) = self.users.with_user(req.user_key, |local| {
            let u = match &shared {
                Some(s) => s.as_ref(),
                None => local,
            };
            let e = super::super::scorer::user_embedding(u, long_term, items, cfg);
            let zero = vec![0.0f32; dim];
            let q = e.as_deref().unwrap_or(&zero);
            user_block(u, long_term, q, self.opts.history_len, &mut block);
            (e, local.map(|u| u.seen().clone()).unwrap_or_default())
        });
        let tower = match emb {
            Some(_) => req.retrieval.user_query(&block)?,
            None => None,
        };
        Ok(UserSide {
            emb,
            tower,
            block,
            seen,
        })
    }

    fn source_context<'a>(
        &self,
        req: &'a Request<'_>,
        items: &'a Items,
        user: &'a UserSide,
    ) -> SourceContext<'a> {
        SourceContext {
            items,
            query: user.emb.as_deref(),
            ann_query: user.tower.as_deref().or(user.emb.as_deref()),
            index: &req.retrieval.index,
            seen: &user.seen,
            now: req.now,
            config: &req.serving.config,
        }
    }

    /// Stage 2b: exploration slots, carved first as a pure function of the request key; each
    /// shows an item drawn uniformly from those admissible under the policy's caps given the
    /// items pinned before it.
    fn draw_pins(&self, req: &Request<'_>, items: &Items) -> Result<Pins> {
        let split = &req.serving.split;
        let slot_ids: Vec<i64> = (0..req.n as i64).collect();
        let explore =
            split.assign_batch(Keys::One(&req.token), Keys::One(req.request_id), &slot_ids)?;
        let caps = self.reranker.pinned_caps();
        let blocked: Vec<u32> = caps
            .blocked_categories()
            .iter()
            .filter_map(|&c| u32::try_from(c).ok())
            .collect();
        let fresh_age = req.serving.config.fresh_max_age_s;
        let mut pins = Pins::default();
        let mut chosen = IdSet::default();
        for pos in (0..req.n).filter(|&p| explore.get(p) == Some(&true)) {
            let seed = split.exploration_seed(&req.token, req.request_id, pos as i64);
            let full = caps.full(&pins.pinned, pos);
            if let Some((s, p)) = draw_exploration(items, seed, &blocked, &chosen, &full, 256) {
                chosen.insert(items.id(s));
                pins.draws.push((pos, s, p));
                pins.pinned.push(Pinned {
                    position: pos,
                    topic: u64::from(items.topic(s)),
                    creator: items.creator(s),
                    category: u64::from(items.category(s)),
                    fresh: req.now - items.upload_ts(s) <= fresh_age,
                });
            }
        }
        Ok(pins)
    }

    /// Stage 3: near-real-time counts for every row in one read (the shared tier's, fetched
    /// without the item table's lock, or the in-process windows), then the item blocks.
    fn item_features(&self, req: &Request<'_>, user: &UserSide, rows: &mut Rows) {
        let shared = self.shared_windows(rows, req.now);
        let items = self.items.read();
        let dim = items.dim();
        let nrt = match shared {
            Some(w) => w.counts(&items, rows, req.now),
            None => items.nrt_many(&rows.slots, req.now),
        };
        let iw = item_width(dim);
        rows.block = vec![0.0f32; rows.slots.len() * iw];
        let zero = vec![0.0f32; dim];
        let q = user.emb.as_deref().unwrap_or(&zero);
        for (r, (&s, out)) in rows
            .slots
            .iter()
            .zip(rows.block.chunks_exact_mut(iw))
            .enumerate()
        {
            item_block(&items, &req.batch, s, q, req.now, &nrt[r], out);
        }
    }

    /// Item and topic windows of the rows from the shared tier (one round trip), or `None`
    /// when no tier is attached or it did not answer (counted).
    fn shared_windows(&self, rows: &Rows, now: f64) -> Option<SharedWindows> {
        let tier = self.shared.as_ref()?;
        if rows.ids.is_empty() {
            return None;
        }
        let mut topics: Vec<u64> = rows.topics.iter().map(|&t| u64::from(t)).collect();
        topics.sort_unstable();
        topics.dedup();
        let widths = self.opts.counter_windows;
        let read =
            tier.read_windows_many::<ITEM_KINDS>(&[("i", &rows.ids), ("t", &topics)], now, &widths);
        match read {
            Ok(mut r) if r.len() == 2 => {
                Self::count(&self.stats.shared_reads, 1);
                let topic_w = r.pop().unwrap_or_default();
                let item_w = r.pop().unwrap_or_default();
                Some(SharedWindows {
                    topics,
                    topic_w,
                    item_w,
                })
            }
            _ => {
                Self::count(&self.stats.shared_fallbacks, 1);
                None
            }
        }
    }

    /// Stage 4: one call of the request's model over every row, then the value model. In a
    /// routed request the exploration rows keep the live model's predictions: a candidate
    /// model never touches the exploration arm.
    fn rank(&self, req: &Request<'_>, user: &UserSide, rows: &Rows) -> Result<Scored> {
        let n = rows.slots.len();
        let tasks = req.model.n_tasks();
        let mut preds = vec![0.0f32; n * tasks];
        let mut values = vec![0.0f32; n];
        if n == 0 {
            return Ok(Scored { preds, values });
        }
        req.model
            .predict_request_into(&user.block, &rows.block, n, &mut preds)?;
        let nc = rows.n_candidates;
        if req.routed && n > nc {
            let iw = rows.block.len() / n;
            let live = &req.snap.live;
            let ex = live.predict_request(&user.block, &rows.block[nc * iw..], n - nc)?;
            preds[nc * tasks..].copy_from_slice(&ex);
        }
        value_with(&preds, n, &req.weights, &mut values)?;
        Ok(Scored { preds, values })
    }

    /// Stage 5: the policy re-ranker fills the non-exploration slots around the pins.
    fn rerank(
        &self,
        req: &Request<'_>,
        rows: &Rows,
        scored: &Scored,
        pins: &Pins,
    ) -> Result<RerankOutcome> {
        let nc = rows.n_candidates;
        let dim = self.items.dim();
        let pinned_ids: IdSet = rows.ids[nc..].iter().copied().collect();
        let exclude: Vec<bool> = rows.ids[..nc]
            .iter()
            .map(|id| pinned_ids.contains(id))
            .collect();
        let topics: Vec<u64> = rows.topics[..nc].iter().map(|&t| u64::from(t)).collect();
        self.reranker.rerank_pinned(
            &Candidates {
                scores: &scored.values[..nc],
                topics: &topics,
                creators: &rows.creators[..nc],
                embeddings: Some((&rows.emb[..nc * dim], dim)),
                categories: Some(&rows.categories[..nc]),
                is_fresh: Some(&rows.fresh[..nc]),
            },
            req.n,
            &pins.pinned,
            Some(&exclude),
        )
    }

    /// Stage 6: the slots in feed order (exploration at its positions, the re-ranked order
    /// around them) and the row each slot shows.
    fn mix(
        &self,
        req: &Request<'_>,
        rows: &Rows,
        scored: &Scored,
        pins: &Pins,
        outcome: &RerankOutcome,
    ) -> (Vec<Slot>, Vec<usize>) {
        let nc = rows.n_candidates;
        let mut slots = Vec::with_capacity(req.n);
        let mut slot_rows = Vec::with_capacity(req.n);
        let mut ranked = outcome.indices.iter();
        let mut draws = pins.draws.iter().enumerate().peekable();
        for pos in 0..req.n {
            let (row, source, propensity) = match draws.peek() {
                Some(&(j, &(p, _, prop))) if p == pos => {
                    draws.next();
                    (nc + j, Source::Exploration, prop)
                }
                _ => match ranked.next() {
                    Some(&c) if rows.fresh[c] => (c, Source::Fresh, 1.0),
                    Some(&c) => (c, Source::Ranked, 1.0),
                    None => break,
                },
            };
            let position = slots.len();
            slots.push(Slot {
                item_id: rows.ids[row],
                position,
                source,
                propensity,
                impression_id: impression_id(req.request_id, &req.token, position),
                topic: rows.topics[row],
                creator: rows.creators[row],
                value: scored.values[row],
            });
            slot_rows.push(row);
        }
        (slots, slot_rows)
    }

    /// Every shadow scores the served rows (never served, logged). In the share
    /// `shadow_candidates` of the requests whose row is logged, each shadow scores every
    /// candidate too (one call over all rows), and its candidate values go to the `requests`
    /// row, so its ranking can be replayed offline on the logged candidate set (docs/ope.md).
    fn shadow_scores(
        &self,
        req: &Request<'_>,
        user: &UserSide,
        rows: &Rows,
        slot_rows: &[usize],
        served_block: &[f32],
    ) -> Result<(Vec<ShadowScores>, ShadowCandidates)> {
        let mut out = Vec::new();
        let mut cands = ShadowCandidates::default();
        let ns = slot_rows.len();
        if ns == 0 {
            return Ok((out, cands));
        }
        // the same hash as the log's request sampling, so these requests are logged ones
        let share = req.serving.config.shadow_candidates;
        let all_rows = share > 0.0
            && self
                .log
                .as_ref()
                .is_some_and(|log| keep_request(req.request_id, log.config().sample_pct * share));
        let n_all = rows.slots.len();
        for m in req
            .snap
            .shadows
            .iter()
            .filter(|m| m.version() != req.model.version())
        {
            if m.n_tasks() != req.model.n_tasks() {
                Self::count(&self.stats.shadows_skipped, 1);
                continue;
            }
            let tasks = m.n_tasks();
            let (predictions, values) = if all_rows {
                let p = m.predict_request(&user.block, &rows.block, n_all)?;
                let mut v = vec![0.0f32; n_all];
                value_with(&p, n_all, &req.weights, &mut v)?;
                cands.versions.push(m.version().to_owned());
                cands.values.extend_from_slice(&v[..rows.n_candidates]);
                let served_v = slot_rows.iter().map(|&r| v[r]).collect();
                (gather_rows(&p, slot_rows, tasks), served_v)
            } else {
                let p = m.predict_request(&user.block, served_block, ns)?;
                let mut v = vec![0.0f32; ns];
                value_with(&p, ns, &req.weights, &mut v)?;
                (p, v)
            };
            out.push(ShadowScores {
                version: m.version().to_owned(),
                predictions,
                values,
            });
        }
        Ok((out, cands))
    }

    /// Stage 7a: freeze what was served: impressions for `engage`, item counters, the seen set.
    fn freeze(&self, req: &Request<'_>, resp: &FeedResponse) {
        {
            let mut cache = self.impressions.lock();
            for s in &resp.slots {
                let k = impression_key(&s.impression_id);
                let r = ImpressionRef {
                    user_key: req.user_key,
                    user_token: req.token.clone(),
                    item_id: s.item_id,
                };
                if cache.map.insert(k, r).is_none() {
                    cache.order.push_back(k);
                }
                while cache.order.len() > self.opts.impression_capacity {
                    if let Some(old) = cache.order.pop_front() {
                        cache.map.remove(&old);
                    }
                }
            }
        }
        let served: Vec<u64> = resp.slots.iter().map(|s| s.item_id).collect();
        if self.shared.is_some() {
            let events: Vec<(u64, u32, [u32; ITEM_KINDS])> = resp
                .slots
                .iter()
                .map(|s| (s.item_id, s.topic, [1, 0, 0]))
                .collect();
            self.shared_events(&events, req.now);
        }
        for &id in &served {
            if self.items.record(id, req.now, true, false, false).is_err() {
                // taken down while the request ran
                Self::count(&self.stats.impressions_on_removed, 1);
            }
        }
        self.sample_freshness(&req.batch, req.now);
        max_ts(&self.freshness.last_nrt, req.now);
        self.users.mark_seen(req.user_key, &served);
    }

    /// Stage 7b: hand the response's records to the log (never blocks; a refusal is counted).
    /// `cands`: the rows, the request model's scores and the shadows' candidate values.
    fn log_request(
        &self,
        req: &Request<'_>,
        resp: &FeedResponse,
        cands: (&Rows, &Scored, ShadowCandidates),
        user: &UserSide,
        served_block: &[f32],
    ) {
        let Some(log) = &self.log else { return };
        let (rows, scored, shadows) = cands;
        let nc = rows.n_candidates;
        let mut rec = request_records(
            resp,
            &req.serving.split,
            rows.ids[..nc].to_vec(),
            scored.values[..nc].to_vec(),
            req.now,
        );
        if let Some(row) = rec.request.as_mut() {
            row.shadow_versions = shadows.versions;
            row.shadow_candidate_scores = shadows.values;
        }
        if keep_request(req.request_id, log.config().sample_pct) {
            rec.served_features = self.served_features(req, resp, user, served_block);
        }
        let mut ev = self.feature_event(FeatureEventKind::Impression, micros(req.now));
        ev.request_id = req.request_id.to_owned();
        ev.user_token = resp.user_token.clone();
        ev.item_ids = resp.slots.iter().map(|s| s.item_id).collect();
        ev.long_term_weight = req.serving.config.long_term_weight;
        ev.recency_half_life = req.serving.config.recency_half_life;
        rec.feature_event = Some(ev);
        self.submit(rec.into_records());
    }

    /// The served rows exactly as the ranker saw them (user block + item block).
    fn served_features(
        &self,
        req: &Request<'_>,
        resp: &FeedResponse,
        user: &UserSide,
        served_block: &[f32],
    ) -> Vec<elog::ServedFeatures> {
        let iw = served_block.len() / resp.slots.len().max(1);
        resp.slots
            .iter()
            .zip(served_block.chunks_exact(iw.max(1)))
            .map(|(s, item)| {
                let mut f = Vec::with_capacity(user.block.len() + iw);
                f.extend_from_slice(&user.block);
                f.extend_from_slice(item);
                elog::ServedFeatures {
                    request_id: req.request_id.to_owned(),
                    ts_us: micros(req.now),
                    item_id: s.item_id,
                    features: f,
                    feature_set_version: self.feature_set_version.clone(),
                    sampled_pct: 100.0,
                }
            })
            .collect()
    }

    fn count_response(&self, resp: &FeedResponse, routed: bool) {
        let st = &self.stats;
        let by_source = |src| resp.slots.iter().filter(|s| s.source == src).count() as u64;
        Self::count(&st.requests, 1);
        Self::count(&st.slots, resp.slots.len() as u64);
        Self::count(&st.exploration_slots, by_source(Source::Exploration));
        Self::count(&st.fresh_slots, by_source(Source::Fresh));
        Self::count(&st.cold_starts, u64::from(resp.cold_start));
        Self::count(
            &st.requests_with_fresh_candidates,
            u64::from(resp.n_fresh_candidates > 0),
        );
        Self::count(&st.relaxed_responses, u64::from(!resp.relaxed.is_empty()));
        Self::count(&st.routed_requests, u64::from(routed));
    }
}

/// `rows x width` values of the chosen rows, in order.
fn gather_rows(data: &[f32], rows: &[usize], width: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * width);
    for &r in rows {
        out.extend_from_slice(&data[r * width..(r + 1) * width]);
    }
    out
}

impl Rows {
    /// The candidates' and exploration items' metadata, read under the item table's lock.
    fn gather(items: &Items, cands: CandidateSet, pins: &Pins) -> Rows {
        let n_candidates = cands.len();
        let mut slots = cands.slots;
        let mut fresh = cands.fresh;
        slots.extend(pins.draws.iter().map(|d| d.1));
        fresh.resize(slots.len(), false);
        let dim = items.dim();
        let mut emb = Vec::with_capacity(n_candidates * dim);
        for &s in &slots[..n_candidates] {
            emb.extend_from_slice(items.embedding(s));
        }
        Rows {
            ids: slots.iter().map(|&s| items.id(s)).collect(),
            topics: slots.iter().map(|&s| items.topic(s)).collect(),
            creators: slots.iter().map(|&s| items.creator(s)).collect(),
            categories: slots
                .iter()
                .map(|&s| u64::from(items.category(s)))
                .collect(),
            slots,
            n_candidates,
            fresh,
            emb,
            block: Vec::new(),
        }
    }

    /// The item blocks of the served rows, in slot order.
    fn served_block(&self, slot_rows: &[usize]) -> Vec<f32> {
        let iw = if self.slots.is_empty() {
            0
        } else {
            self.block.len() / self.slots.len()
        };
        gather_rows(&self.block, slot_rows, iw)
    }
}

/// Windows read from the shared tier for a request's rows.
struct SharedWindows {
    topics: Vec<u64>,
    topic_w: Vec<Vec<crate::serve::window::Window<ITEM_KINDS>>>,
    item_w: Vec<Vec<crate::serve::window::Window<ITEM_KINDS>>>,
}

impl SharedWindows {
    /// Near-real-time counts per row: item and topic windows from the tier, creator uploads
    /// from the items this process holds.
    fn counts(&self, items: &Items, rows: &Rows, now: f64) -> Vec<NrtCounts> {
        let widths = items.windows();
        let mut creators = CreatorUploads::default();
        rows.slots
            .iter()
            .enumerate()
            .map(|(r, &s)| {
                let w = &self.item_w[r];
                let t = self
                    .topics
                    .binary_search(&u64::from(rows.topics[r]))
                    .map_or([Default::default(); 2], |i| {
                        [self.topic_w[i][0], self.topic_w[i][1]]
                    });
                let c = creators.get(items, items.creator(s), now);
                NrtCounts::from_windows(&[w[0], w[1]], &t, c, now, widths)
            })
            .collect()
    }
}
