//! The online feature store (in-process tier): per item its embedding, topic, creator, category,
//! upload time and decayed engagement counters; per user the last-N interactions, a long-term
//! embedding and the recently served items. Reads for one request take one read lock on the
//! item table and one shard lock for the user.

use super::idhash::{IdMap, IdSet};
use super::window::Window;
use crate::{invalid, Error, Result};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

/// Static facts about one item, given at upload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItemInfo {
    pub id: u64,
    pub topic: u32,
    pub creator: u64,
    /// Policy category (0 = none); the re-ranker's blocked categories and caps refer to it.
    pub category: u32,
    /// Upload time, seconds since the Unix epoch.
    pub upload_ts: f64,
}

/// Topics and categories are `u32` in the core and `int32` in the event log's Parquet schema
/// (DESIGN §4): the values both can hold are `[0, 2**31)`.
pub const MAX_TOPIC: u32 = i32::MAX as u32;

impl ItemInfo {
    /// Refuses a topic or category the log could not record, and a non-finite upload time.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("topic", self.topic), ("category", self.category)] {
            if v > MAX_TOPIC {
                return Err(invalid!(
                    "item {}: {name} {v} is outside [0, 2**31) (the log stores it as int32)",
                    self.id
                ));
            }
        }
        if !self.upload_ts.is_finite() {
            return Err(invalid!(
                "item {}: upload_ts must be finite seconds since the epoch, got {}",
                self.id,
                self.upload_ts
            ));
        }
        Ok(())
    }
}

/// Event kinds counted per item and per topic: impressions, completions, likes.
pub const ITEM_KINDS: usize = 3;

/// Sliding-window estimates for one item (or topic) at one instant: index 0 is the short
/// window, 1 the long one (`PipelineOptions::counter_windows`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub impressions: [f32; 2],
    pub completions: [f32; 2],
    pub likes: [f32; 2],
}

/// The two windows (short, long) of one key.
pub type Windows<const K: usize> = [Window<K>; 2];

fn estimate3(w: &Windows<ITEM_KINDS>, now: f64, widths: [f64; 2]) -> Counters {
    let s = w[0].estimate(now, widths[0]);
    let l = w[1].estimate(now, widths[1]);
    Counters {
        impressions: [s[0], l[0]],
        completions: [s[1], l[1]],
        likes: [s[2], l[2]],
    }
}

/// What one item's near-real-time features read: the sliding-window counts of the item, of its
/// topic and of its creator's uploads, as of one instant. Built from the in-process windows
/// ([`Items::nrt_many`]) or from windows read from a shared store ([`NrtCounts::from_windows`]): the
/// same integer buckets give the same values either way.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NrtCounts {
    pub item: Counters,
    pub topic: Counters,
    pub creator_uploads: [f32; 2],
}

impl NrtCounts {
    /// Item and topic windows read elsewhere; the creator's uploads from [`Items::creator_uploads`].
    pub fn from_windows(
        item: &Windows<ITEM_KINDS>,
        topic: &Windows<ITEM_KINDS>,
        creator_uploads: [f32; 2],
        now: f64,
        widths: [f64; 2],
    ) -> NrtCounts {
        NrtCounts {
            item: estimate3(item, now, widths),
            topic: estimate3(topic, now, widths),
            creator_uploads,
        }
    }
}

fn add<const K: usize>(w: &mut Windows<K>, ts: f64, widths: [f64; 2], d: [u32; K]) {
    w[0].add(ts, widths[0], d);
    w[1].add(ts, widths[1], d);
}

/// The item table. Dense slots never move, so an index taken under one read lock stays valid
/// for the whole request; removed items keep their slot with `live = false`.
pub struct Items {
    dim: usize,
    widths: [f64; 2],
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
    counters: Vec<Mutex<Windows<ITEM_KINDS>>>,
    /// Per topic: impressions, completions, likes (trending-topic signals).
    topics: IdMap<Mutex<Windows<ITEM_KINDS>>>,
    /// Per creator: uploads (creator upload rate).
    creators: IdMap<Mutex<Windows<1>>>,
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
    /// Records that the item reached a candidate set at `now`; only the first time counts, so
    /// it returns whether this call was the first (a later one leaves the time unchanged: that
    /// is the rule, not a failure).
    pub fn mark_candidate(&self, slot: usize, now: f64) -> bool {
        self.first_candidate[slot]
            .compare_exchange(
                0,
                now.to_bits().max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// When the item first reached a candidate set, if it has.
    pub fn first_candidate_ts(&self, slot: usize) -> Option<f64> {
        match self.first_candidate[slot].load(Ordering::Relaxed) {
            0 => None,
            b => Some(f64::from_bits(b)),
        }
    }

    /// Widths (seconds) of the short and long counter windows.
    pub fn windows(&self) -> [f64; 2] {
        self.widths
    }

    /// The item's sliding-window counts as of `now`.
    pub fn counters(&self, slot: usize, now: f64) -> Counters {
        estimate3(&self.counters[slot].lock(), now, self.widths)
    }

    /// The near-real-time counts (item, topic, creator uploads) of the items in `slots` at
    /// `now`, from the in-process windows. Topics and creators repeat across a request's
    /// candidates: each is looked up (and locked) once.
    pub fn nrt_many(&self, slots: &[usize], now: f64) -> Vec<NrtCounts> {
        let mut topics: IdMap<Counters> = IdMap::default();
        let mut creators = CreatorUploads::default();
        slots
            .iter()
            .map(|&s| NrtCounts {
                item: self.counters(s, now),
                topic: *topics
                    .entry(u64::from(self.topic[s]))
                    .or_insert_with(|| self.topic_counters(self.topic[s], now)),
                creator_uploads: creators.get(self, self.creator[s], now),
            })
            .collect()
    }

    /// The topic's sliding-window counts as of `now` (zeros for a topic never seen).
    pub fn topic_counters(&self, topic: u32, now: f64) -> Counters {
        self.topics
            .get(&u64::from(topic))
            .map(|w| estimate3(&w.lock(), now, self.widths))
            .unwrap_or_default()
    }

    /// Uploads by the creator in the short and long window up to `now`.
    pub fn creator_uploads(&self, creator: u64, now: f64) -> [f32; 2] {
        self.creators.get(&creator).map_or([0.0; 2], |w| {
            let w = w.lock();
            [
                w[0].estimate(now, self.widths[0])[0],
                w[1].estimate(now, self.widths[1])[0],
            ]
        })
    }
}

/// A per-request cache of [`Items::creator_uploads`] (one lock per distinct creator).
#[derive(Default)]
pub struct CreatorUploads(IdMap<[f32; 2]>);

impl CreatorUploads {
    pub fn get(&mut self, items: &Items, creator: u64, now: f64) -> [f32; 2] {
        *self
            .0
            .entry(creator)
            .or_insert_with(|| items.creator_uploads(creator, now))
    }
}

/// Concurrent item store: many readers, short exclusive sections for uploads and removals.
pub struct ItemStore {
    inner: RwLock<Items>,
}

impl ItemStore {
    /// `windows`: widths in seconds of the short and long sliding windows of the engagement
    /// counters (e.g. one hour and one day).
    pub fn new(dim: usize, windows: [f64; 2]) -> Result<Self> {
        if dim == 0 {
            return Err(invalid!("item embedding dim must be > 0"));
        }
        if !windows.iter().all(|h| h.is_finite() && *h > 0.0) {
            return Err(invalid!(
                "counter windows must be finite and > 0 seconds, got {windows:?}"
            ));
        }
        Ok(Self {
            inner: RwLock::new(Items {
                dim,
                widths: windows,
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
                topics: IdMap::default(),
                creators: IdMap::default(),
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
                    t.creators.entry(info.creator).or_default();
                    t.set_live(s, false); // re-counted under the (possibly new) category
                    t.emb[s * dim..(s + 1) * dim].copy_from_slice(e);
                    t.topic[s] = info.topic;
                    t.creator[s] = info.creator;
                    t.category[s] = info.category;
                    t.upload_ts[s] = info.upload_ts;
                    t.set_live(s, true);
                    t.topics.entry(u64::from(info.topic)).or_default();
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
                    t.topics.entry(u64::from(info.topic)).or_default();
                    t.counters.push(Mutex::new(Windows::default()));
                    t.first_candidate.push(AtomicU64::new(0));
                    // a new item is one upload by its creator (a re-upload is not)
                    let widths = t.widths;
                    let c = t.creators.entry(info.creator).or_default();
                    add(c.get_mut(), info.upload_ts, widths, [1]);
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

    /// Adds one impression (and optionally a completion and a like) at `now` to the counters of
    /// the item and of its topic.
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
        if !now.is_finite() {
            return Err(invalid!("event time must be finite, got {now}"));
        }
        let d = [impression, completed, liked].map(|b| u32::from(u8::from(b)));
        add(&mut t.counters[s].lock(), now, t.widths, d);
        if let Some(w) = t.topics.get(&u64::from(t.topic[s])) {
            add(&mut w.lock(), now, t.widths, d);
        }
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
    seen: VecDeque<u64>,
    seen_set: IdSet,
}

impl UserState {
    /// A state holding only `history` (most recent last), e.g. read from a shared tier.
    pub fn from_history(history: impl IntoIterator<Item = Interaction>) -> Self {
        UserState {
            history: history.into_iter().collect(),
            ..UserState::default()
        }
    }

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
}

impl UserStore {
    pub fn new(history_len: usize, seen_len: usize) -> Result<Self> {
        if history_len == 0 {
            return Err(invalid!("history_len must be > 0"));
        }
        Ok(Self {
            shards: (0..USER_SHARDS)
                .map(|_| RwLock::new(IdMap::default()))
                .collect(),
            history_len,
            seen_len,
        })
    }

    /// The store's key for a user id (xxh3-64 of its UTF-8 bytes).
    /// The one user key of every store (in process, Redis, batch tier, replay): xxh3_64 of the
    /// keyed user token (HMAC-SHA256 of the id, `eventlog::UserTokenizer`), never of a raw id,
    /// so nothing keyed by it can be linked to a user without the token secret.
    pub fn key_of_token(user_token: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(user_token.as_bytes())
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

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The batch feature tier: long-term user embeddings and creator authority, computed offline
/// and loaded from files. A pipeline holds one snapshot and replaces it as a whole (readers
/// keep the snapshot they started with), so a request never sees half of a load.
#[derive(Debug, Clone, Default)]
pub struct BatchTier {
    /// Names the snapshot (e.g. the catalogue's directory or date).
    pub version: String,
    /// The time the batch data describes, seconds since the epoch (its freshness).
    pub as_of: f64,
    dim: usize,
    users: IdMap<u32>,
    user_emb: Vec<f32>,
    authority: IdMap<f32>,
}

impl BatchTier {
    /// `user_keys[i]` (see [`UserStore::key_of_token`]) owns row i of `user_emb` (`n x dim`);
    /// `creators[j]` has authority `authority[j]`.
    pub fn new(
        version: &str,
        as_of: f64,
        dim: usize,
        user_keys: &[u64],
        user_emb: &[f32],
        creators: &[u64],
        authority: &[f32],
    ) -> Result<Self> {
        let mut b = BatchTier {
            version: version.to_owned(),
            as_of,
            dim,
            ..BatchTier::default()
        };
        if !as_of.is_finite() {
            return Err(invalid!("batch as_of must be finite, got {as_of}"));
        }
        b.add_users(user_keys, user_emb)?;
        b.set_authority(creators, authority)?;
        Ok(b)
    }

    /// An empty snapshot for embedding dim `dim`.
    pub fn empty(dim: usize) -> Self {
        BatchTier {
            version: "empty".into(),
            dim,
            ..BatchTier::default()
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn n_users(&self) -> usize {
        self.users.len()
    }

    pub fn n_creators(&self) -> usize {
        self.authority.len()
    }

    /// Adds or replaces long-term embeddings (a new snapshot is built from a copy by callers
    /// that publish it).
    pub fn add_users(&mut self, user_keys: &[u64], user_emb: &[f32]) -> Result<()> {
        let dim = self.dim;
        if user_emb.len() != user_keys.len() * dim {
            return Err(invalid!(
                "user embeddings have {} values for {} users; expected users x dim {dim}",
                user_emb.len(),
                user_keys.len()
            ));
        }
        if let Some(i) = user_emb.iter().position(|x| !x.is_finite()) {
            return Err(invalid!(
                "long-term embedding contains NaN or Inf (user row {})",
                i / dim.max(1)
            ));
        }
        for (&k, e) in user_keys.iter().zip(user_emb.chunks_exact(dim.max(1))) {
            match self.users.get(&k) {
                Some(&r) => {
                    let r = r as usize;
                    self.user_emb[r * dim..(r + 1) * dim].copy_from_slice(e);
                }
                None => {
                    let r = u32::try_from(self.users.len())
                        .map_err(|_| invalid!("batch tier is full (2^32 users)"))?;
                    self.users.insert(k, r);
                    self.user_emb.extend_from_slice(e);
                }
            }
        }
        Ok(())
    }

    /// Adds or replaces creator authority scores.
    pub fn set_authority(&mut self, creators: &[u64], authority: &[f32]) -> Result<()> {
        if creators.len() != authority.len() {
            return Err(invalid!(
                "{} creator ids but {} authority values",
                creators.len(),
                authority.len()
            ));
        }
        if let Some(i) = authority.iter().position(|x| !x.is_finite()) {
            return Err(invalid!(
                "authority of creator {} is NaN or Inf",
                creators[i]
            ));
        }
        self.authority
            .extend(creators.iter().copied().zip(authority.iter().copied()));
        Ok(())
    }

    /// The user's long-term embedding, if the batch has one.
    pub fn long_term(&self, user_key: u64) -> Option<&[f32]> {
        self.users.get(&user_key).map(|&r| {
            let r = r as usize;
            &self.user_emb[r * self.dim..(r + 1) * self.dim]
        })
    }

    /// The creator's authority (0 for a creator the batch does not know).
    pub fn authority(&self, creator: u64) -> f32 {
        self.authority.get(&creator).copied().unwrap_or(0.0)
    }

    /// The snapshot file form: "FYPBATCH", u32 format 1, u32 dim, f64 as_of, u32 version
    /// length + UTF-8 version, u64 users, then per user key u64 + dim f32, u64 creators, then
    /// per creator id u64 + authority f32 (little-endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(40 + self.user_emb.len() * 4 + self.users.len() * 8);
        b.extend_from_slice(b"FYPBATCH");
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&(self.dim as u32).to_le_bytes());
        b.extend_from_slice(&self.as_of.to_le_bytes());
        b.extend_from_slice(&(self.version.len() as u32).to_le_bytes());
        b.extend_from_slice(self.version.as_bytes());
        b.extend_from_slice(&(self.users.len() as u64).to_le_bytes());
        for (&k, &r) in &self.users {
            b.extend_from_slice(&k.to_le_bytes());
            let r = r as usize;
            for x in &self.user_emb[r * self.dim..(r + 1) * self.dim] {
                b.extend_from_slice(&x.to_le_bytes());
            }
        }
        b.extend_from_slice(&(self.authority.len() as u64).to_le_bytes());
        for (&c, &a) in &self.authority {
            b.extend_from_slice(&c.to_le_bytes());
            b.extend_from_slice(&a.to_le_bytes());
        }
        b
    }

    /// Parses [`BatchTier::encode`]'s bytes.
    pub fn decode(b: &[u8]) -> Result<Self> {
        let bad = || Error::Corrupt("snapshot batch tier is truncated or not a batch file".into());
        let mut pos = 0usize;
        let mut take = |n: usize| -> Result<&[u8]> {
            let s = b.get(pos..pos + n).ok_or_else(bad)?;
            pos += n;
            Ok(s)
        };
        let u32_at = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        let u64_of = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or_default());
        if take(8)? != b"FYPBATCH" || u32_at(take(4)?) != 1 {
            return Err(bad());
        }
        let dim = u32_at(take(4)?) as usize;
        let as_of = f64::from_bits(u64_of(take(8)?));
        let vlen = u32_at(take(4)?) as usize;
        let version = String::from_utf8(take(vlen)?.to_vec()).map_err(|_| bad())?;
        let n = u64_of(take(8)?) as usize;
        let rows = take(n.checked_mul(8 + 4 * dim).ok_or_else(bad)?)?;
        let mut keys = Vec::with_capacity(n);
        let mut emb = Vec::with_capacity(n * dim);
        for r in rows.chunks_exact(8 + 4 * dim) {
            keys.push(u64_of(&r[..8]));
            emb.extend(r[8..].chunks_exact(4).map(|x| f32::from_bits(u32_at(x))));
        }
        let nc = u64_of(take(8)?) as usize;
        let rows = take(nc.checked_mul(12).ok_or_else(bad)?)?;
        let creators: Vec<u64> = rows.chunks_exact(12).map(|r| u64_of(&r[..8])).collect();
        let auth: Vec<f32> = rows
            .chunks_exact(12)
            .map(|r| f32::from_bits(u32_at(&r[8..])))
            .collect();
        if pos != b.len() {
            return Err(bad());
        }
        BatchTier::new(&version, as_of, dim, &keys, &emb, &creators, &auth)
    }

    /// A checksum of what the features read (user keys and embeddings, creator authority),
    /// independent of insertion order: the feature changelog references a snapshot by version
    /// and checksum, and the replay refuses a snapshot whose checksum differs.
    pub fn checksum(&self) -> u64 {
        let mut users: Vec<(u64, u32)> = self.users.iter().map(|(&k, &r)| (k, r)).collect();
        users.sort_unstable();
        let mut auth: Vec<(u64, u32)> = self
            .authority
            .iter()
            .map(|(&c, &a)| (c, a.to_bits()))
            .collect();
        auth.sort_unstable();
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&(self.dim as u64).to_le_bytes());
        for (k, r) in users {
            h.update(&k.to_le_bytes());
            let r = r as usize;
            for x in &self.user_emb[r * self.dim..(r + 1) * self.dim] {
                h.update(&x.to_bits().to_le_bytes());
            }
        }
        for (c, a) in auth {
            h.update(&c.to_le_bytes());
            h.update(&a.to_le_bytes());
        }
        h.digest()
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
    fn counters_are_sliding_windows_of_item_topic_and_creator() {
        let s = ItemStore::new(1, [10.0, 100.0]).unwrap();
        s.upsert(&[info(1, 0.0), info(4, 95.0)], &[1.0, 1.0])
            .unwrap();
        s.record(1, 0.0, true, true, false).unwrap();
        s.record(1, 0.0, true, false, true).unwrap();
        let t = s.read();
        let c = t.counters(0, 15.0);
        // short window: bucket 0 is the previous bucket at t=15, weighted by 0.5
        assert_eq!(c.impressions, [1.0, 2.0]);
        assert_eq!(c.likes, [0.5, 1.0]);
        assert_eq!(t.counters(0, 25.0).impressions, [0.0, 2.0]);
        // item 4 shares topic 1 with item 1; creators: 1 -> 0 (id / 2), 4 -> 2
        assert_eq!(t.topic_counters(1, 5.0).completions, [1.0, 1.0]);
        assert_eq!(t.topic_counters(2, 5.0), Counters::default());
        assert_eq!(t.creator_uploads(2, 96.0), [1.0, 1.0]);
        assert_eq!(t.creator_uploads(0, 150.0), [0.0, 0.5]);
        drop(t);
        assert!(s.record(1, f64::NAN, true, false, false).is_err());
        assert!(matches!(
            s.record(7, 0.0, true, false, false),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn user_history_and_seen_are_bounded() {
        let u = UserStore::new(3, 4).unwrap();
        let k = UserStore::key_of_token("alice");
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
        assert!(u.with_user(UserStore::key_of_token("bob"), |s| s.is_none()));
    }

    #[test]
    fn batch_tier_lookups_and_validation() {
        let mut b =
            BatchTier::new("v1", 10.0, 2, &[7, 8], &[1.0, 0.0, 0.0, 1.0], &[3], &[0.5]).unwrap();
        assert_eq!(b.long_term(8), Some(&[0.0, 1.0][..]));
        assert_eq!(b.long_term(9), None);
        assert_eq!((b.authority(3), b.authority(4)), (0.5, 0.0));
        b.add_users(&[8, 9], &[2.0, 2.0, 3.0, 3.0]).unwrap();
        assert_eq!((b.long_term(8), b.n_users()), (Some(&[2.0, 2.0][..]), 3));
        assert!(b.add_users(&[1], &[1.0]).is_err());
        assert!(b.add_users(&[1], &[1.0, f32::NAN]).is_err());
        assert!(b.set_authority(&[1, 2], &[1.0]).is_err());
        assert!(BatchTier::new("v", f64::NAN, 2, &[], &[], &[], &[]).is_err());
    }
}
