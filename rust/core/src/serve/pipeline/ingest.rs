//! What flows into the pipeline besides requests: uploads and take-downs of items, and
//! engagements with served impressions. Each updates the stores, the shared tier when attached,
//! and the feature changelog, counting every write that fails.

use super::super::store::{Interaction, ItemInfo, ITEM_KINDS};
use super::freshness::max_ts;
use super::{micros, quantize_ts, Pipeline};
use crate::eventlog::{self as elog, FeatureEventKind};
use crate::{invalid, Error, Result};

/// The one impression id: unique per (user, request, position) by construction, so a request
/// id reused by another user never collides, and an identical retry (same user, same request
/// id) gets the same ids (idempotent). `user_token` is the keyed token, never a raw id.
pub fn impression_id(request_id: &str, user_token: &str, position: usize) -> String {
    let tok = &user_token[..user_token.len().min(16)];
    format!("{request_id}:{tok}:{position}")
}

/// Key of an impression id in the pipeline's impression cache: the log's integer join key.
pub(super) use crate::eventlog::impression_key;

impl Pipeline {
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
        self.upsert(infos, embeddings, index, log_events, log_events)
    }

    /// `publish`: send the upload to the other hosts (live uploads; not a bulk load, not an
    /// upload another host published).
    pub(super) fn upsert(
        &self,
        infos: &[ItemInfo],
        embeddings: &[f32],
        index: bool,
        log_events: bool,
        publish: bool,
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
        for i in infos {
            i.validate()?;
        }
        if let Some(p) = embeddings.iter().position(|x| !x.is_finite()) {
            return Err(invalid!(
                "embedding of item {} contains NaN or Inf",
                infos[p / dim.max(1)].id
            ));
        }
        // whole, or not at all, in a snapshot's cut (publication included)
        let _cut = self.cut.read();
        // published first: its stream id is known before the change is live here, so an
        // older entry of another host for the same item, read after, is superseded
        if publish && self.shared.is_some() {
            self.publish_changes(Self::upload_changes(infos, embeddings, dim));
        }
        // the item table first: a retrieval swap in between then sees the item and indexes it
        self.items.upsert(infos, embeddings)?;
        if index {
            let ids: Vec<u64> = infos.iter().map(|i| i.id).collect();
            self.index_items(&ids, embeddings)?;
        }
        for i in infos {
            self.fresh.insert(i.upload_ts, i.id);
        }
        if log_events && self.log.is_some() {
            let rows = infos
                .iter()
                .zip(embeddings.chunks_exact(dim))
                .map(|(i, e)| {
                    let mut ev = self.feature_event(FeatureEventKind::Upload, micros(i.upload_ts));
                    ev.item_ids = vec![i.id];
                    ev.topic = i.topic as i32;
                    ev.creator_id = i.creator;
                    ev.category = i.category as i32;
                    ev.upload_ts = i.upload_ts;
                    ev.embedding = e.to_vec();
                    elog::Record::FeatureEvent(ev)
                })
                .collect();
            self.submit(rows);
        }
        Ok(())
    }

    /// Takes items down everywhere at once (this host, and the others through the catalogue
    /// stream); returns how many were live here.
    pub fn remove_items(&self, ids: &[u64], now: f64) -> Result<usize> {
        self.remove(ids, now, true)
    }

    pub(super) fn remove(&self, ids: &[u64], now: f64, publish: bool) -> Result<usize> {
        if !now.is_finite() {
            return Err(invalid!(
                "now must be finite seconds since the epoch, got {now}"
            ));
        }
        let _cut = self.cut.read();
        if publish {
            let removal = super::super::redis_tier::CatalogChange::Removal {
                ids: ids.to_vec(),
                ts: now,
            };
            self.publish_changes(vec![removal]);
        }
        let n = self.items.remove(ids);
        self.unindex_items(ids)?;
        if self.log.is_some() {
            let mut ev = self.feature_event(FeatureEventKind::Remove, micros(now));
            ev.item_ids = ids.to_vec();
            self.submit(vec![elog::Record::FeatureEvent(ev)]);
        }
        Ok(n)
    }

    /// Adds item and topic events `(item, topic, counts)` to the shared tier in one pipeline.
    /// A failure is counted (the in-process store already holds the events). Called without
    /// the item table's lock.
    pub(super) fn shared_events(&self, events: &[(u64, u32, [u32; ITEM_KINDS])], now: f64) {
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
        if tier
            .add_events_many(&[("i", &ie), ("t", &te)], &widths)
            .is_err()
        {
            Self::count(&self.stats.shared_write_failures, 1);
        }
    }

    /// Feeds an engagement back: the user's history, the item's counters and the event log.
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
        let key = impression_key(impression_id);
        let imp = self
            .impressions
            .lock()
            .map
            .get(&key)
            .cloned()
            .ok_or_else(|| {
                Error::NotFound(format!(
                "unknown impression_id {impression_id:?}: not served by this pipeline, or older \
                 than the last {} impressions",
                self.opts.impression_capacity
            ))
            })?;
        // a fraction of a typical 30 s clip when the client did not report completion
        let frac = if completed {
            1.0
        } else {
            (watched_seconds / 30.0).min(1.0)
        };
        let it = Interaction {
            item_id: imp.item_id,
            watched_frac: frac,
            liked,
            ts: now,
        };
        self.users.record_interaction(imp.user_key, it);
        if self
            .items
            .record(imp.item_id, now, false, completed, liked)
            .is_err()
        {
            // taken down since it was served: its counters no longer matter
            Self::count(&self.stats.engagements_on_removed, 1);
        }
        self.engage_shared(imp.user_key, it, completed, liked, now);
        max_ts(&self.freshness.last_rt, now);
        max_ts(&self.freshness.last_nrt, now);
        if self.log.is_some() {
            let eng = elog::Engagement {
                impression_id: impression_id.to_owned(),
                ts_us: micros(now),
                user_token: imp.user_token,
                watched_seconds,
                completed,
                liked,
                shared,
                followed,
            };
            self.log_engagement(eng, imp.item_id, frac);
        }
        Ok(())
    }

    /// The engagement row and its feature changelog event, in one submission.
    fn log_engagement(&self, eng: elog::Engagement, item_id: u64, watched_frac: f32) {
        let mut ev = self.feature_event(FeatureEventKind::Engagement, eng.ts_us);
        ev.request_id = eng.impression_id.clone();
        ev.user_token = eng.user_token.clone();
        ev.item_ids = vec![item_id];
        ev.watched_frac = watched_frac;
        ev.completed = eng.completed;
        ev.liked = eng.liked;
        self.submit(vec![
            elog::Record::FeatureEvent(ev),
            elog::Record::Engagement(eng),
        ]);
    }

    /// The engagement in the shared tier: the user's history and the item/topic windows.
    fn engage_shared(
        &self,
        user_key: u64,
        it: Interaction,
        completed: bool,
        liked: bool,
        now: f64,
    ) {
        let Some(tier) = &self.shared else { return };
        if tier
            .push_interactions(&[(user_key, it)], self.opts.history_len)
            .is_err()
        {
            Self::count(&self.stats.shared_write_failures, 1);
        }
        let topic = {
            let items = self.items.read();
            items.slot_of(it.item_id).map(|s| items.topic(s))
        };
        if let Some(t) = topic {
            let d = [0, u32::from(completed), u32::from(liked)];
            self.shared_events(&[(it.item_id, t, d)], now);
        }
    }
}
