//! The online feature store (in-process tier): per item its embedding, topic, creator, category,
//! upload time and decayed engagement counters; per user the last-N interactions, a long-term
//! embedding and the recently served items. Reads for one request take one read lock on the
//! item table and one shard lock for the user.

use super::idhash::{IdMap, IdSet};
use crate::{invalid, Error, Result};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

/// Static facts about one item, given at upload.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemInfo {
    pub id: u64,
    pub topic: u32,
    pub creator: u64,
    /// Policy category (0 = none); the re-ranker's blocked categories and caps refer to it.
    pub category: u32,
    /// Upload time, seconds since the Unix epoch.
    pub upload_ts: f64,
}

/// Exponentially decayed engagement counters at two half-lives (short, long), as of `last_ts`.
/// They stand in for sliding-window counts: O(1) memory per item and no bucket rotation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub last_ts: f64,
    pub impressions: [f32; 2],
    pub completions: [f32; 2],
    pub likes: [f32; 2],
}

impl Counters {
    fn decayed(&self, now: f64, half_lives: [f64; 2]) -> Counters {
        let dt = (now - self.last_ts).max(0.0);
        let f = [
            (-dt / half_lives[0]).exp2() as f32,
            (-dt / half_lives[1]).exp2() as f32,
        ];
        let m = |a: [f32; 2]| [a[0] * f[0], a[1] * f[1]];
        Counters {
            last_ts: now.max(self.last_ts),
            impressions: m(self.impressions),
            completions: m(self.completions),
            likes: m(self.likes),
        }
    }
}

/// The item table. Dense slots never move, so an index taken under one read lock stays valid
/// for the whole request; removed items keep their slot with `live = false`.
pub struct Items {
    dim: usize,
    half_lives: [f64; 2],
    index: IdMap<u32>,
    ids: Vec<u64>,
    emb: Vec<f32>,
    topic: Vec<u32>,
    creator: Vec<u64>,
    category: Vec<u32>,
    upload_ts: Vec<f64>,
    live: Vec<bool>,
    n_live: usize,
    live_per_category: IdMap<usize>,
    counters: Vec<Mutex<Counters>>,
    /// f64 bits of the first time the item entered a candidate set (0 = never): the fresh-item
    /// retrieval rate is measured from it.
    first_candidate: Vec<AtomicU64>,
}

impl Items {
    /// Live items whose category is `category`.
    pub fn live_in_category(&self, category: u32) -> usize {
        self.live_per_category
            .get(&u64::from(category))
            .copied()
            .unwrap_or(0)
    }
    fn set_live(&mut self, slot: usize, live: bool) {
        if self.live[slot] == live {
            return;
        }
        self.live[slot] = live;
        let c = self
            .live_per_category
            .entry(u64::from(self.category[slot]))
            .or_default();
        if live {
            self.n_live += 1;
            *c += 1;
        } else {
            self.n_live -= 1;
            *c -= 1;
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Dense slots, removed ones included (upper bound for `slot` arguments).
    pub fn slots(&self) -> usize {
        self.ids.len()
    }
    pub fn n_live(&self) -> usize {
        self.n_live
    }
    /// The dense slot of a live item.
    pub fn slot_of(&self, id: u64) -> Option<usize> {
        self.index
            .get(&id)
            .map(|&s| s as usize)
            .filter(|&s| self.live[s])
    }
    pub fn is_live(&self, slot: usize) -> bool {
        self.live[slot]
    }
    pub fn id(&self, slot: usize) -> u64 {
        self.ids[slot]
    }
    pub fn embedding(&self, slot: usize) -> &[f32] {
        &self.emb[slot * self.dim..(slot + 1) * self.dim]
    }
    pub fn topic(&self, slot: usize) -> u32 {
        self.topic[slot]
    }
    pub fn creator(&self, slot: usize) -> u64 {
        self.creator[slot]
    }
    pub fn category(&self, slot: usize) -> u32 {
        self.category[slot]
    }
    pub fn upload_ts(&self, slot: usize) -> f64 {
        self.upload_ts[slot]
    }
    /// Records that the item reached a candidate set at `now` (only the first time counts).
    pub fn mark_candidate(&self, slot: usize, now: f64) {
        let _ = self.first_candidate[slot].compare_exchange(
            0,
            now.to_bits().max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// When the item first reached a candidate set, if it has.
    pub fn first_candidate_ts(&self, slot: usize) -> Option<f64> {
        match self.first_candidate[slot].load(Ordering::Relaxed) {
            0 => None,
            b => Some(f64::from_bits(b)),
        }
    }

    /// The item's counters decayed to `now`.
    pub fn counters(&self, slot: usize, now: f64) -> Counters {
        self.counters[slot].lock().decayed(now, self.half_lives)
    }
}

/// Concurrent item store: many readers, short exclusive sections for uploads and removals.
pub struct ItemStore {
    inner: RwLock<Items>,
}

impl ItemStore {
    /// `half_lives` of the decayed counters, in seconds (e.g. one hour and one day).
    pub fn new(dim: usize, half_lives: [f64; 2]) -> Result<Self> {
        if dim == 0 {
            return Err(invalid!("item embedding dim must be > 0"));
        }
        if !half_lives.iter().all(|h| h.is_finite() && *h > 0.0) {
            return Err(invalid!(
                "counter half-lives must be finite and > 0, got {half_lives:?}"
            ));
        }
        Ok(Self {
            inner: RwLock::new(Items {
                dim,
                half_lives,
                index: IdMap::default(),
                ids: Vec::new(),
                emb: Vec::new(),
                topic: Vec::new(),
                creator: Vec::new(),
                category: Vec::new(),
                upload_ts: Vec::new(),
                live: Vec::new(),
                n_live: 0,
                live_per_category: IdMap::default(),
                counters: Vec::new(),
                first_candidate: Vec::new(),
            }),
        })
    }

    pub fn dim(&self) -> usize {
        self.inner.read().dim
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Items> {
        self.inner.read()
    }

    /// Inserts or replaces items (`embeddings` is `infos.len() x dim`, row-major). A replaced
    /// item keeps its counters; a re-uploaded removed item comes back to life.
    pub fn upsert(&self, infos: &[ItemInfo], embeddings: &[f32]) -> Result<()> {
        let mut t = self.inner.write();
        let dim = t.dim;
        if embeddings.len() != infos.len() * dim {
            return Err(invalid!(
                "embeddings has {} values for {} items; expected {} (items x dim {dim})",
                embeddings.len(),
                infos.len(),
                infos.len() * dim
            ));
        }
        if let Some(i) = embeddings.iter().position(|x| !x.is_finite()) {
            return Err(invalid!(
                "embeddings contain NaN or Inf (item row {})",
                i / dim
            ));
        }
        if let Some(info) = infos.iter().find(|i| !i.upload_ts.is_finite()) {
            return Err(invalid!("item {} has a non-finite upload_ts", info.id));
        }
        for (info, e) in infos.iter().zip(embeddings.chunks_exact(dim)) {
            match t.index.get(&info.id).copied() {
                Some(s) => {
                    let s = s as usize;
                    t.set_live(s, false); // re-counted under the (possibly new) category
                    t.emb[s * dim..(s + 1) * dim].copy_from_slice(e);
                    t.topic[s] = info.topic;
                    t.creator[s] = info.creator;
                    t.category[s] = info.category;
                    t.upload_ts[s] = info.upload_ts;
                    t.set_live(s, true);
                }
                None => {
                    let s = u32::try_from(t.ids.len())
                        .map_err(|_| invalid!("item store is full (2^32 slots)"))?;
                    t.index.insert(info.id, s);
                    t.ids.push(info.id);
                    t.emb.extend_from_slice(e);
                    t.topic.push(info.topic);
                    t.creator.push(info.creator);
                    t.category.push(info.category);
                    t.upload_ts.push(info.upload_ts);
                    t.live.push(false);
                    t.set_live(s as usize, true);
                    t.counters.push(Mutex::new(Counters {
                        last_ts: info.upload_ts,
                        ..Counters::default()
                    }));
                    t.first_candidate.push(AtomicU64::new(0));
                }
            }
        }
        Ok(())
    }

    /// Marks items removed; returns how many were live.
    pub fn remove(&self, ids: &[u64]) -> usize {
        let mut t = self.inner.write();
        let mut n = 0;
        for id in ids {
            if let Some(&s) = t.index.get(id) {
                if t.live[s as usize] {
                    t.set_live(s as usize, false);
                    n += 1;
                }
            }
        }
        n
    }

    /// Adds one impression (and optionally a completion and a like) to an item's counters.
    pub fn record(
        &self,
        id: u64,
        now: f64,
        impression: bool,
        completed: bool,
        liked: bool,
    ) -> Result<()> {
        let t = self.inner.read();
        let s = *t
            .index
            .get(&id)
            .ok_or_else(|| Error::NotFound(format!("unknown item id {id}")))?
            as usize;
        let mut c = t.counters[s].lock();
        let mut d = c.decayed(now, t.half_lives);
        for k in 0..2 {
            d.impressions[k] += f32::from(u8::from(impression));
            d.completions[k] += f32::from(u8::from(completed));
            d.likes[k] += f32::from(u8::from(liked));
        }
        *c = d;
        Ok(())
    }
}

/// One thing a user did with an item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interaction {
    pub item_id: u64,
    pub watched_frac: f32,
    pub liked: bool,
    pub ts: f64,
}

/// What the store knows about one user.
#[derive(Debug, Default, Clone)]
pub struct UserState {
    /// Most recent last; at most `history_len` entries.
    pub history: VecDeque<Interaction>,
    pub long_term: Option<Vec<f32>>,
    seen: VecDeque<u64>,
    seen_set: IdSet,
}

impl UserState {
    pub fn has_seen(&self, item: u64) -> bool {
        self.seen_set.contains(&item)
    }
    pub fn seen(&self) -> &IdSet {
        &self.seen_set
    }
}

const USER_SHARDS: usize = 64;

/// Users in 64 independently locked shards, so concurrent requests rarely contend.
pub struct UserStore {
    shards: Vec<RwLock<IdMap<UserState>>>,
    history_len: usize,
    seen_len: usize,
    dim: usize,
}

impl UserStore {
    pub fn new(dim: usize, history_len: usize, seen_len: usize) -> Result<Self> {
        if history_len == 0 {
            return Err(invalid!("history_len must be > 0"));
        }
        Ok(Self {
            shards: (0..USER_SHARDS)
                .map(|_| RwLock::new(IdMap::default()))
                .collect(),
            history_len,
            seen_len,
            dim,
        })
    }

    /// The store's key for a user id (xxh3-64 of its UTF-8 bytes).
    pub fn key(user_id: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(user_id.as_bytes())
    }

    fn shard(&self, key: u64) -> &RwLock<IdMap<UserState>> {
        &self.shards[(key % USER_SHARDS as u64) as usize]
    }

    /// Runs `f` on the user's state (None for a user never seen) under the shard's read lock.
    pub fn with_user<R>(&self, key: u64, f: impl FnOnce(Option<&UserState>) -> R) -> R {
        f(self.shard(key).read().get(&key))
    }

    pub fn record_interaction(&self, key: u64, it: Interaction) {
        let mut shard = self.shard(key).write();
        let u = shard.entry(key).or_default();
        if u.history.len() == self.history_len {
            u.history.pop_front();
        }
        u.history.push_back(it);
    }

    /// Remembers items served to the user (bounded FIFO of `seen_len`), excluded from later retrieval.
    pub fn mark_seen(&self, key: u64, items: &[u64]) {
        if self.seen_len == 0 {
            return;
        }
        let mut shard = self.shard(key).write();
        let u = shard.entry(key).or_default();
        for &id in items {
            if u.seen_set.insert(id) {
                u.seen.push_back(id);
                if u.seen.len() > self.seen_len {
                    if let Some(old) = u.seen.pop_front() {
                        u.seen_set.remove(&old);
                    }
                }
            }
        }
    }

    pub fn set_long_term(&self, key: u64, emb: &[f32]) -> Result<()> {
        if emb.len() != self.dim {
            return Err(invalid!(
                "long-term embedding has {} values, the store's dim is {}",
                emb.len(),
                self.dim
            ));
        }
        if emb.iter().any(|x| !x.is_finite()) {
            return Err(invalid!("long-term embedding contains NaN or Inf"));
        }
        self.shard(key).write().entry(key).or_default().long_term = Some(emb.to_vec());
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u64, ts: f64) -> ItemInfo {
        ItemInfo {
            id,
            topic: (id % 3) as u32,
            creator: id / 2,
            category: 0,
            upload_ts: ts,
        }
    }

    #[test]
    fn upsert_replace_remove() {
        let s = ItemStore::new(2, [3600.0, 86400.0]).unwrap();
        s.upsert(&[info(10, 0.0), info(11, 1.0)], &[1.0, 0.0, 0.0, 1.0])
            .unwrap();
        assert_eq!(s.read().n_live(), 2);
        s.upsert(&[info(10, 5.0)], &[0.5, 0.5]).unwrap();
        let t = s.read();
        let slot = t.slot_of(10).unwrap();
        assert_eq!(t.embedding(slot), &[0.5, 0.5]);
        assert_eq!(t.upload_ts(slot), 5.0);
        drop(t);
        assert_eq!(s.remove(&[10, 99]), 1);
        assert!(s.read().slot_of(10).is_none());
        assert_eq!(s.read().n_live(), 1);
        assert!(s.upsert(&[info(1, 0.0)], &[f32::NAN, 0.0]).is_err());
        assert!(s.upsert(&[info(1, 0.0)], &[0.0]).is_err());
    }

    #[test]
    fn counters_decay_with_half_life() {
        let s = ItemStore::new(1, [10.0, 100.0]).unwrap();
        s.upsert(&[info(1, 0.0)], &[1.0]).unwrap();
        s.record(1, 0.0, true, true, false).unwrap();
        s.record(1, 0.0, true, false, true).unwrap();
        let c = s.read().counters(0, 10.0);
        assert!((c.impressions[0] - 1.0).abs() < 1e-6); // 2 * 0.5
        assert!((c.impressions[1] - 2.0 * 0.5f32.powf(0.1)).abs() < 1e-5);
        assert!((c.likes[0] - 0.5).abs() < 1e-6);
        assert!(matches!(
            s.record(7, 0.0, true, false, false),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn user_history_and_seen_are_bounded() {
        let u = UserStore::new(2, 3, 4).unwrap();
        let k = UserStore::key("alice");
        for i in 0..5 {
            u.record_interaction(
                k,
                Interaction {
                    item_id: i,
                    watched_frac: 1.0,
                    liked: false,
                    ts: i as f64,
                },
            );
        }
        u.mark_seen(k, &[1, 2, 3, 4, 5, 5]);
        u.with_user(k, |s| {
            let s = s.unwrap();
            assert_eq!(
                s.history.iter().map(|i| i.item_id).collect::<Vec<_>>(),
                vec![2, 3, 4]
            );
            assert!(!s.has_seen(1) && s.has_seen(5) && s.seen().len() == 4);
        });
        assert!(u.with_user(UserStore::key("bob"), |s| s.is_none()));
        assert!(u.set_long_term(k, &[1.0]).is_err());
    }
}
