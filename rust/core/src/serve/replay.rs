//! Point-in-time feature replay: the offline half of "one code path".
//!
//! A [`Replayer`] starts from the batch state the pipeline started from (the catalogue's items
//! and the batch tier), then applies the pipeline's feature changelog (`feature_events`) in
//! order. At each impression event it first computes the served items' feature vectors with the
//! functions of `serve::features` and `serve::scorer` (the same ones `Pipeline::feed` calls), as
//! of that instant, and only then applies the impressions, exactly as `feed` does. Nothing that
//! happened later can leak into a row.

use super::features::{item_block, item_width, user_block, user_width};
use super::scorer::{user_embedding, ServingConfig};
use super::store::{BatchTier, Interaction, ItemInfo, ItemStore, UserStore};
use crate::cancel::Cancel;
use crate::eventlog::{FeatureEvent, FeatureEventKind};
use crate::{invalid, Result};
use parking_lot::RwLock;

/// Rows produced by a replay: one per served item of each impression event.
#[derive(Debug, Default, Clone)]
pub struct ReplayRows {
    /// `n x width` row-major: user block then item block, as logged in `served_features`.
    pub features: Vec<f32>,
    pub width: usize,
    /// Index of the impression event (in the order given) each row comes from.
    pub event: Vec<u32>,
    pub item_id: Vec<u64>,
    pub position: Vec<u32>,
    /// Served items the replayed state did not hold (their rows are NaN): a sign that the
    /// starting state or the event stream is not the one the pipeline had.
    pub missing_items: usize,
    /// Impressions and engagements of items taken down before the event (the pipeline counts
    /// them too: `impressions_on_removed`, `engagements_on_removed`).
    pub events_on_removed: usize,
}

/// Replays a feature changelog through the serving feature definitions.
pub struct Replayer {
    items: ItemStore,
    users: UserStore,
    batch: RwLock<BatchTier>,
    /// Batch snapshots the changelog may switch to (`batch_swap` events), by version.
    snapshots: Vec<BatchTier>,
    history_len: usize,
}

impl Replayer {
    /// `history_len` and `windows` must be the serving pipeline's (`PipelineOptions`).
    pub fn new(batch: BatchTier, history_len: usize, windows: [f64; 2]) -> Result<Self> {
        Ok(Replayer {
            items: ItemStore::new(batch.dim(), windows)?,
            users: UserStore::new(history_len, 1)?,
            batch: RwLock::new(batch),
            snapshots: Vec::new(),
            history_len,
        })
    }

    /// Batch snapshots a `batch_swap` event may name (besides the starting one).
    pub fn with_snapshots(mut self, snapshots: Vec<BatchTier>) -> Result<Self> {
        let dim = self.batch.read().dim();
        if let Some(b) = snapshots.iter().find(|b| b.dim() != dim) {
            return Err(invalid!(
                "batch snapshot {:?} has dim {}, the replay's embeddings have {dim}",
                b.version,
                b.dim()
            ));
        }
        self.snapshots = snapshots;
        Ok(self)
    }

    /// A `batch_swap` event: the snapshot it names (the current one when the checksum already
    /// matches, e.g. the starting catalogue), verified by checksum.
    fn swap_batch(&self, ev: &FeatureEvent) -> Result<()> {
        let want = ev.item_ids.first().copied().unwrap_or(0);
        if self.batch.read().checksum() == want {
            return Ok(());
        }
        let found = self.snapshots.iter().find(|b| b.version == ev.request_id);
        match found {
            Some(b) if b.checksum() == want => {
                *self.batch.write() = b.clone();
                Ok(())
            }
            Some(b) => Err(invalid!(
                "the batch snapshot given for version {:?} has checksum {:016x}; the log \
                 served {want:016x}: it is not the snapshot the pipeline loaded",
                ev.request_id,
                b.checksum()
            )),
            None => Err(invalid!(
                "the log switches to batch snapshot {:?} (checksum {want:016x}) at ts_us {}: \
                 pass it to the replay (training_set(batches={{version: catalogue}}))",
                ev.request_id,
                ev.ts_us
            )),
        }
    }

    /// The catalogue the pipeline started from (not in the changelog).
    pub fn load_items(&self, infos: &[ItemInfo], embeddings: &[f32]) -> Result<()> {
        self.items.upsert(infos, embeddings)
    }

    /// Applies `events` in the order given; `emit[i]` says whether impression event i yields
    /// rows (events not emitted still change the state).
    pub fn run(&self, events: &[FeatureEvent], emit: &[bool]) -> Result<ReplayRows> {
        self.run_until(events, emit, &Cancel::new())
    }

    /// [`Replayer::run`], stopping with `Interrupted` soon after `cancel` is set (checked every
    /// 4096 events).
    pub fn run_until(
        &self,
        events: &[FeatureEvent],
        emit: &[bool],
        cancel: &Cancel,
    ) -> Result<ReplayRows> {
        if emit.len() != events.len() {
            return Err(invalid!(
                "emit has {} flags for {} events",
                emit.len(),
                events.len()
            ));
        }
        let dim = self.batch.read().dim();
        let (uw, iw) = (user_width(dim), item_width(dim));
        let mut out = ReplayRows {
            width: uw + iw,
            ..ReplayRows::default()
        };
        let mut ublock = vec![0.0f32; uw];
        for (e, (ev, &emit)) in events.iter().zip(emit).enumerate() {
            if e % 4096 == 0 {
                cancel.check("the replay")?;
            }
            // the same quantised instant the pipeline used (whole microseconds)
            let now = ev.ts_us as f64 / 1e6;
            match ev.kind {
                FeatureEventKind::Impression => {
                    if emit {
                        self.emit_rows(ev, e, now, &mut ublock, &mut out)?;
                    }
                    for &id in &ev.item_ids {
                        // an item taken down meanwhile: the pipeline counts it too
                        if self.items.record(id, now, true, false, false).is_err() {
                            out.events_on_removed += 1;
                        }
                    }
                }
                FeatureEventKind::Engagement => self.apply_engagement(ev, e, now, &mut out)?,
                FeatureEventKind::Upload => self.apply_upload(ev, e)?,
                FeatureEventKind::Remove => {
                    self.items.remove(&ev.item_ids);
                }
                FeatureEventKind::BatchUsers => {
                    let key = UserStore::key_of_token(&ev.user_token);
                    self.batch.write().add_users(&[key], &ev.embedding)?;
                }
                FeatureEventKind::BatchAuthority => {
                    self.batch
                        .write()
                        .set_authority(&ev.item_ids, &ev.embedding)?;
                }
                FeatureEventKind::BatchSwap => self.swap_batch(ev)?,
            }
        }
        Ok(out)
    }

    fn apply_engagement(
        &self,
        ev: &FeatureEvent,
        e: usize,
        now: f64,
        out: &mut ReplayRows,
    ) -> Result<()> {
        let &[item] = ev.item_ids.as_slice() else {
            return Err(invalid!(
                "engagement event {} (seq {}) has {} item ids; expected 1",
                e,
                ev.seq,
                ev.item_ids.len()
            ));
        };
        self.users.record_interaction(
            UserStore::key_of_token(&ev.user_token),
            Interaction {
                item_id: item,
                watched_frac: ev.watched_frac,
                liked: ev.liked,
                ts: now,
            },
        );
        // an item taken down meanwhile: the pipeline counts it too
        if self
            .items
            .record(item, now, false, ev.completed, ev.liked)
            .is_err()
        {
            out.events_on_removed += 1;
        }
        Ok(())
    }

    fn apply_upload(&self, ev: &FeatureEvent, e: usize) -> Result<()> {
        let &[id] = ev.item_ids.as_slice() else {
            return Err(invalid!(
                "upload event {e} has {} item ids",
                ev.item_ids.len()
            ));
        };
        let info = ItemInfo {
            id,
            topic: u32::try_from(ev.topic)
                .map_err(|_| invalid!("upload event {e}: negative topic"))?,
            creator: ev.creator_id,
            category: u32::try_from(ev.category)
                .map_err(|_| invalid!("upload event {e}: negative category"))?,
            upload_ts: ev.upload_ts,
        };
        self.items.upsert(&[info], &ev.embedding)
    }

    fn emit_rows(
        &self,
        ev: &FeatureEvent,
        e: usize,
        now: f64,
        ublock: &mut [f32],
        out: &mut ReplayRows,
    ) -> Result<()> {
        let dim = self.batch.read().dim();
        let (uw, iw) = (user_width(dim), item_width(dim));
        let cfg = ServingConfig {
            long_term_weight: ev.long_term_weight,
            recency_half_life: ev.recency_half_life,
            ..ServingConfig::default()
        };
        let items = self.items.read();
        let batch = self.batch.read();
        let key = UserStore::key_of_token(&ev.user_token);
        let long_term = batch.long_term(key);
        let uemb = self.users.with_user(key, |u| {
            let e = user_embedding(u, long_term, &items, &cfg);
            let zero = vec![0.0; dim];
            user_block(
                u,
                long_term,
                e.as_deref().unwrap_or(&zero),
                self.history_len,
                ublock,
            );
            e
        });
        let zero = vec![0.0f32; dim];
        let q = uemb.as_deref().unwrap_or(&zero);
        let e32 = u32::try_from(e).map_err(|_| invalid!("more than 2^32 events"))?;
        let slots: Vec<Option<usize>> = ev.item_ids.iter().map(|&id| items.slot_of(id)).collect();
        let live: Vec<usize> = slots.iter().flatten().copied().collect();
        let mut nrt = items.nrt_many(&live, now).into_iter();
        for (pos, (&id, slot)) in ev.item_ids.iter().zip(&slots).enumerate() {
            let start = out.features.len();
            out.features.extend_from_slice(ublock);
            out.features.resize(start + uw + iw, f32::NAN);
            match (*slot, nrt.next()) {
                (Some(s), Some(n)) => item_block(
                    &items,
                    &batch,
                    s,
                    q,
                    now,
                    &n,
                    &mut out.features[start + uw..],
                ),
                _ => out.missing_items += 1,
            }
            out.event.push(e32);
            out.item_id.push(id);
            out.position.push(pos as u32);
        }
        Ok(())
    }
}

/// Puts a changelog in application order: one pipeline's events by `seq` (the order its store
/// applied them); several pipelines' events merged by time, then stream, then `seq`.
pub fn order_events(events: &mut [FeatureEvent]) {
    let one_stream = events.windows(2).all(|w| w[0].stream == w[1].stream);
    if one_stream {
        events.sort_by_key(|e| e.seq);
    } else {
        events.sort_by(|a, b| (a.ts_us, &a.stream, a.seq).cmp(&(b.ts_us, &b.stream, b.seq)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, ts_us: i64, kind: FeatureEventKind, items: Vec<u64>) -> FeatureEvent {
        FeatureEvent {
            request_id: format!("r{seq}"),
            user_token: "0123456789abcdef0123456789abcdef".into(),
            item_ids: items,
            watched_frac: 1.0,
            completed: true,
            long_term_weight: 0.5,
            recency_half_life: 10.0,
            ..FeatureEvent::new(kind, ts_us, "s", seq)
        }
    }

    #[test]
    fn rows_see_the_state_before_their_own_impressions() {
        let batch = BatchTier::empty(2);
        let r = Replayer::new(batch, 10, [60.0, 600.0]).unwrap();
        let info = |id| ItemInfo {
            id,
            topic: 0,
            creator: 1,
            category: 0,
            upload_ts: 0.0,
        };
        r.load_items(&[info(1), info(2)], &[1.0, 0.0, 0.0, 1.0])
            .unwrap();
        let mut events = vec![
            ev(2, 2_000_000, FeatureEventKind::Impression, vec![1]),
            ev(0, 1_000_000, FeatureEventKind::Impression, vec![1, 2]),
            ev(1, 1_500_000, FeatureEventKind::Engagement, vec![1]),
        ];
        order_events(&mut events);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2]);
        let rows = r.run(&events, &[true, false, true]).unwrap();
        let w = rows.width;
        assert_eq!(
            (rows.item_id.clone(), rows.position.clone()),
            (vec![1, 2, 1], vec![0, 1, 0])
        );
        assert_eq!(rows.missing_items, 0);
        let uw = user_width(2);
        // first request: cold user (zeros), item 1 never shown before
        assert_eq!(&rows.features[..2], &[0.0, 0.0]);
        assert_eq!(rows.features[uw + 4], 0.0); // i_log_imp_s
                                                // third row: the user engaged with item 1, which was shown once and completed once
        let third = &rows.features[2 * w..3 * w];
        assert_eq!(&third[..2], &[1.0, 0.0]); // u_emb from the history
        assert_eq!(third[2 * 2], 0.1); // u_hist_fill: 1 of 10
        assert_eq!(third[uw + 4], 2f32.ln()); // one impression
        assert_eq!(third[uw + 6], 2.0 / 5.0); // one completion in one impression
        assert!(r.run(&events, &[true]).is_err());
    }
}
