//! One row of one table, as the serving pipeline hands it over: validation on the caller's
//! thread (cheap field checks only), the durable/firehose split, and the compact binary form
//! used by the write-ahead file.

use super::schema::Table;
use crate::{invalid, Error, Result};

/// Where the slot's item came from (the `source` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Ranked = 0,
    Exploration = 1,
    Fresh = 2,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Ranked => "ranked",
            Source::Exploration => "exploration",
            Source::Fresh => "fresh",
        }
    }
    pub fn parse(s: &str) -> Result<Source> {
        match s {
            "ranked" => Ok(Source::Ranked),
            "exploration" => Ok(Source::Exploration),
            "fresh" => Ok(Source::Fresh),
            _ => Err(invalid!(
                "source must be 'ranked', 'exploration' or 'fresh', got {s:?}"
            )),
        }
    }
    fn from_u8(v: u8) -> Result<Source> {
        match v {
            0 => Ok(Source::Ranked),
            1 => Ok(Source::Exploration),
            2 => Ok(Source::Fresh),
            _ => Err(Error::Corrupt(format!("bad source code {v}"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Impression {
    pub impression_id: String,
    pub ts_us: i64,
    pub request_id: String,
    pub user_token: String,
    pub item_id: u64,
    pub position: i32,
    pub source: Source,
    pub propensity: f64,
    pub model_version: String,
    /// JSON object `{"layer": "variant"}`, `{}` when none.
    pub experiments: String,
    pub topic: i32,
    pub creator_id: u64,
    /// Stamped by the log at submit time; what the caller sets is ignored.
    pub sampled_pct: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Engagement {
    pub impression_id: String,
    pub ts_us: i64,
    pub user_token: String,
    pub watched_seconds: f32,
    pub completed: bool,
    pub liked: bool,
    pub shared: bool,
    pub followed: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExplorationEvent {
    pub impression_id: String,
    pub ts_us: i64,
    pub user_token: String,
    pub item_id: u64,
    pub position: i32,
    pub topic: i32,
    pub propensity: f64,
    pub policy: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RankerScore {
    pub impression_id: String,
    pub ts_us: i64,
    pub model_version: String,
    pub is_shadow: bool,
    pub value_score: f32,
    /// One prediction per task of the log's task set, in that order.
    pub preds: Vec<f32>,
    /// The sampling key (not stored): the same request_id as the impression's, so a slot's
    /// impression and scores are kept or dropped together.
    pub request_id: String,
    /// True for the scores of an exploration slot: never sampled, never dropped.
    pub exploration: bool,
    pub sampled_pct: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RequestRow {
    pub request_id: String,
    pub ts_us: i64,
    pub user_token: String,
    pub candidate_item_ids: Vec<u64>,
    pub candidate_scores: Vec<f32>,
    pub served_item_ids: Vec<u64>,
    pub sampled_pct: f64,
    /// The shadow models that scored every candidate, in the order of
    /// `shadow_candidate_scores`' blocks.
    pub shadow_versions: Vec<String>,
    /// Each shadow's value score per candidate, shadow-major (`shadows x candidates`), so a
    /// shadow's ranking can be replayed offline on the logged candidate set (docs/ope.md).
    pub shadow_candidate_scores: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServedFeatures {
    pub request_id: String,
    pub ts_us: i64,
    pub item_id: u64,
    pub features: Vec<f32>,
    pub feature_set_version: String,
    pub sampled_pct: f64,
}

/// What a feature event changed in the online feature store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureEventKind {
    /// Items shown to a user by one request (`request_id`, `item_ids` in feed order).
    Impression = 0,
    /// A user's engagement with one item (`request_id` holds the impression_id).
    Engagement = 1,
    /// An item uploaded while serving (its metadata and embedding).
    Upload = 2,
    /// Items taken down.
    Remove = 3,
    /// Long-term (batch tier) embedding of one user set while serving (`user_token`,
    /// `embedding`).
    BatchUsers = 4,
    /// Creator authority set while serving (`item_ids` = creator ids, `embedding` = scores).
    BatchAuthority = 5,
    /// The batch tier replaced by a snapshot (`request_id` = its version, `item_ids` = its
    /// checksum): the snapshot lives in its files; the replay is handed it by version.
    BatchSwap = 6,
}

impl FeatureEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureEventKind::Impression => "impression",
            FeatureEventKind::Engagement => "engagement",
            FeatureEventKind::Upload => "upload",
            FeatureEventKind::Remove => "remove",
            FeatureEventKind::BatchUsers => "batch_users",
            FeatureEventKind::BatchAuthority => "batch_authority",
            FeatureEventKind::BatchSwap => "batch_swap",
        }
    }

    pub fn parse(s: &str) -> Result<FeatureEventKind> {
        Ok(match s {
            "impression" => FeatureEventKind::Impression,
            "engagement" => FeatureEventKind::Engagement,
            "upload" => FeatureEventKind::Upload,
            "remove" => FeatureEventKind::Remove,
            "batch_users" => FeatureEventKind::BatchUsers,
            "batch_authority" => FeatureEventKind::BatchAuthority,
            "batch_swap" => FeatureEventKind::BatchSwap,
            _ => {
                return Err(invalid!(
                    "unknown feature event kind {s:?} (impression, engagement, upload, remove, \
                     batch_users, batch_authority or batch_swap)"
                ))
            }
        })
    }

    fn from_u8(v: u8) -> Result<FeatureEventKind> {
        [
            FeatureEventKind::Impression,
            FeatureEventKind::Engagement,
            FeatureEventKind::Upload,
            FeatureEventKind::Remove,
            FeatureEventKind::BatchUsers,
            FeatureEventKind::BatchAuthority,
            FeatureEventKind::BatchSwap,
        ]
        .get(v as usize)
        .copied()
        .ok_or_else(|| Error::Corrupt(format!("feature event kind code {v}")))
    }
}

/// One change to the online feature store's state, in the order it was applied: the changelog
/// that `fyp_core.features.training_set` replays through the same feature definitions. Never
/// sampled, never dropped (durable). `(stream, seq)` orders the events of one pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureEvent {
    pub ts_us: i64,
    /// The producing pipeline instance.
    pub stream: String,
    pub seq: u64,
    pub kind: FeatureEventKind,
    pub request_id: String,
    /// Empty for uploads and removals.
    pub user_token: String,
    pub item_ids: Vec<u64>,
    pub watched_frac: f32,
    pub completed: bool,
    pub liked: bool,
    pub topic: i32,
    pub creator_id: u64,
    pub category: i32,
    pub upload_ts: f64,
    pub embedding: Vec<f32>,
    /// The request scorer's blend at the time (impressions), so a replay can rebuild the user
    /// embedding even if the config changed during the day.
    pub long_term_weight: f32,
    pub recency_half_life: f32,
}

impl FeatureEvent {
    /// An event of `kind` at `ts_us`, number `seq` of `stream`, with every payload field empty:
    /// callers fill in what their kind carries.
    pub fn new(kind: FeatureEventKind, ts_us: i64, stream: &str, seq: u64) -> FeatureEvent {
        FeatureEvent {
            ts_us,
            stream: stream.to_owned(),
            seq,
            kind,
            request_id: String::new(),
            user_token: String::new(),
            item_ids: vec![],
            watched_frac: 0.0,
            completed: false,
            liked: false,
            topic: 0,
            creator_id: 0,
            category: 0,
            upload_ts: 0.0,
            embedding: vec![],
            long_term_weight: 0.0,
            recency_half_life: 0.0,
        }
    }
}

/// One row of one table.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Impression(Impression),
    Engagement(Engagement),
    Exploration(ExplorationEvent),
    Score(RankerScore),
    Request(RequestRow),
    Features(ServedFeatures),
    FeatureEvent(FeatureEvent),
}

/// Everything one `feed()` response logs, handed over in one call (one queue entry), so the
/// request's firehose rows are kept or dropped together.
#[derive(Debug, Clone, Default)]
pub struct RequestRecords {
    pub impressions: Vec<Impression>,
    pub exploration: Vec<ExplorationEvent>,
    pub scores: Vec<RankerScore>,
    pub request: Option<RequestRow>,
    pub served_features: Vec<ServedFeatures>,
    /// The request's impression event for the feature store's changelog (durable).
    pub feature_event: Option<FeatureEvent>,
}

impl RequestRecords {
    pub fn into_records(self) -> Vec<Record> {
        let mut out = Vec::with_capacity(
            self.impressions.len()
                + self.exploration.len()
                + self.scores.len()
                + self.served_features.len()
                + 2,
        );
        out.extend(self.impressions.into_iter().map(Record::Impression));
        out.extend(self.exploration.into_iter().map(Record::Exploration));
        out.extend(self.scores.into_iter().map(Record::Score));
        out.extend(self.request.map(Record::Request));
        out.extend(self.served_features.into_iter().map(Record::Features));
        out.extend(self.feature_event.map(Record::FeatureEvent));
        out
    }
}

/// A user token is the 32-char lower-case hex HMAC of `token.rs`. Anything else is refused, so
/// a raw user id cannot reach a log file by mistake.
pub fn check_token(t: &str) -> Result<()> {
    if t.len() == 32
        && t.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(invalid!(
            "user_token must be a 32-character lower-case hex token from fyp_core.user_token(key, user_id), got a {}-character value; raw user ids must never be logged",
            t.len()
        ))
    }
}

fn check_prob(name: &str, p: f64) -> Result<()> {
    if p.is_finite() && p > 0.0 && p <= 1.0 {
        Ok(())
    } else {
        Err(invalid!("{name} must be in (0, 1], got {p}"))
    }
}

impl Record {
    pub fn table(&self) -> Table {
        match self {
            Record::Impression(_) => Table::Impressions,
            Record::Engagement(_) => Table::Engagements,
            Record::Exploration(_) => Table::ExplorationEvents,
            Record::Score(_) => Table::RankerScores,
            Record::Request(_) => Table::Requests,
            Record::Features(_) => Table::ServedFeatures,
            Record::FeatureEvent(_) => Table::FeatureEvents,
        }
    }

    pub fn ts_us(&self) -> i64 {
        match self {
            Record::Impression(r) => r.ts_us,
            Record::Engagement(r) => r.ts_us,
            Record::Exploration(r) => r.ts_us,
            Record::Score(r) => r.ts_us,
            Record::Request(r) => r.ts_us,
            Record::Features(r) => r.ts_us,
            Record::FeatureEvent(r) => r.ts_us,
        }
    }

    /// Durable rows are never sampled and never dropped: they are journaled to the write-ahead
    /// file and spill there when the queue is full. That is the exploration arm (exploration
    /// events, exploration slots' impressions and scores) and engagements (outcomes of both arms).
    pub fn is_durable(&self) -> bool {
        match self {
            Record::Impression(r) => r.source == Source::Exploration,
            Record::Engagement(_) | Record::Exploration(_) | Record::FeatureEvent(_) => true,
            Record::Score(r) => r.exploration,
            Record::Request(_) | Record::Features(_) => false,
        }
    }

    /// The key that decides sampling: rows of one request share it.
    pub fn sample_key(&self) -> &str {
        match self {
            Record::Impression(r) => &r.request_id,
            Record::Score(r) => &r.request_id,
            Record::Request(r) => &r.request_id,
            Record::Features(r) => &r.request_id,
            Record::Engagement(r) => &r.impression_id,
            Record::Exploration(r) => &r.impression_id,
            Record::FeatureEvent(r) => &r.stream,
        }
    }

    pub fn set_sampled_pct(&mut self, pct: f64) {
        match self {
            Record::Impression(r) => r.sampled_pct = pct,
            Record::Score(r) => r.sampled_pct = pct,
            Record::Request(r) => r.sampled_pct = pct,
            Record::Features(r) => r.sampled_pct = pct,
            Record::Engagement(_) | Record::Exploration(_) | Record::FeatureEvent(_) => {}
        }
    }

    /// A rough in-memory size, for size-based rotation.
    pub fn approx_bytes(&self) -> usize {
        match self {
            Record::Impression(r) => {
                80 + r.impression_id.len()
                    + r.request_id.len()
                    + r.model_version.len()
                    + r.experiments.len()
                    + 32
            }
            Record::Engagement(r) => 48 + r.impression_id.len() + 32,
            Record::Exploration(r) => 64 + r.impression_id.len() + r.policy.len() + 32,
            Record::Score(r) => {
                32 + r.impression_id.len() + r.model_version.len() + 4 * r.preds.len()
            }
            Record::Request(r) => {
                48 + r.request_id.len()
                    + 12 * r.candidate_item_ids.len()
                    + 8 * r.served_item_ids.len()
            }
            Record::Features(r) => 40 + r.request_id.len() + 4 * r.features.len(),
            Record::FeatureEvent(r) => {
                96 + r.stream.len()
                    + r.request_id.len()
                    + 8 * r.item_ids.len()
                    + 4 * r.embedding.len()
            }
        }
    }

    /// Field checks a caller controls; `n_tasks` is the log's task count.
    pub fn validate(&self, n_tasks: usize) -> Result<()> {
        let nonempty = |name: &str, v: &str| {
            if v.is_empty() {
                Err(invalid!("{name} must not be empty"))
            } else {
                Ok(())
            }
        };
        match self {
            Record::Impression(r) => {
                nonempty("impression_id", &r.impression_id)?;
                nonempty("request_id", &r.request_id)?;
                check_token(&r.user_token)?;
                check_prob("propensity", r.propensity)?;
                if r.position < 0 {
                    return Err(invalid!("position must be >= 0, got {}", r.position));
                }
            }
            Record::Engagement(r) => {
                nonempty("impression_id", &r.impression_id)?;
                check_token(&r.user_token)?;
                if !r.watched_seconds.is_finite() || r.watched_seconds < 0.0 {
                    return Err(invalid!(
                        "watched_seconds must be finite and >= 0, got {}",
                        r.watched_seconds
                    ));
                }
            }
            Record::Exploration(r) => {
                nonempty("impression_id", &r.impression_id)?;
                check_token(&r.user_token)?;
                check_prob("propensity", r.propensity)?;
                if r.position < 0 {
                    return Err(invalid!("position must be >= 0, got {}", r.position));
                }
            }
            Record::Score(r) => {
                nonempty("impression_id", &r.impression_id)?;
                nonempty("request_id", &r.request_id)?;
                if r.preds.len() != n_tasks {
                    return Err(invalid!(
                        "predictions has {} columns, the log has {n_tasks} tasks",
                        r.preds.len()
                    ));
                }
            }
            Record::Request(r) => {
                nonempty("request_id", &r.request_id)?;
                check_token(&r.user_token)?;
                if r.candidate_scores.len() != r.candidate_item_ids.len() {
                    return Err(invalid!(
                        "candidate_scores has {} values, candidate_item_ids has {}; they must match",
                        r.candidate_scores.len(),
                        r.candidate_item_ids.len()
                    ));
                }
                let want = r.shadow_versions.len() * r.candidate_item_ids.len();
                if r.shadow_candidate_scores.len() != want {
                    return Err(invalid!(
                        "shadow_candidate_scores has {} values; {} shadow(s) x {} candidates \
                         need {want}",
                        r.shadow_candidate_scores.len(),
                        r.shadow_versions.len(),
                        r.candidate_item_ids.len()
                    ));
                }
            }
            Record::Features(r) => {
                nonempty("request_id", &r.request_id)?;
            }
            Record::FeatureEvent(r) => {
                nonempty("stream", &r.stream)?;
                match r.kind {
                    FeatureEventKind::Impression | FeatureEventKind::Engagement => {
                        nonempty("request_id", &r.request_id)?;
                        check_token(&r.user_token)?;
                    }
                    FeatureEventKind::BatchUsers => {
                        check_token(&r.user_token)?;
                        if r.embedding.is_empty() {
                            return Err(invalid!("a batch_users event holds an embedding"));
                        }
                    }
                    FeatureEventKind::Upload
                    | FeatureEventKind::Remove
                    | FeatureEventKind::BatchAuthority
                    | FeatureEventKind::BatchSwap => {
                        if !r.user_token.is_empty() {
                            return Err(invalid!("an item or batch event carries no user_token"));
                        }
                    }
                }
                if r.kind == FeatureEventKind::BatchAuthority
                    && r.item_ids.len() != r.embedding.len()
                {
                    return Err(invalid!(
                        "a batch_authority event holds one score per creator id"
                    ));
                }
                if r.kind == FeatureEventKind::BatchSwap
                    && (r.request_id.is_empty() || r.item_ids.len() != 1)
                {
                    return Err(invalid!(
                        "a batch_swap event holds the snapshot's version and checksum"
                    ));
                }
                if r.kind == FeatureEventKind::Upload
                    && (r.item_ids.len() != 1 || r.embedding.is_empty())
                {
                    return Err(invalid!(
                        "an upload event holds one item id and its embedding"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Dedupe key of a durable row (see docs/eventlog.md): impression_id for impressions and
    /// exploration events, impression_id + model_version for scores, impression_id + ts for
    /// engagements.
    pub fn dedupe_key(&self) -> String {
        match self {
            Record::Impression(r) => r.impression_id.clone(),
            Record::Exploration(r) => r.impression_id.clone(),
            Record::Score(r) => format!("{}\u{1f}{}", r.impression_id, r.model_version),
            Record::Engagement(r) => format!("{}\u{1f}{}", r.impression_id, r.ts_us),
            Record::Request(r) => r.request_id.clone(),
            Record::Features(r) => format!("{}\u{1f}{}", r.request_id, r.item_id),
            Record::FeatureEvent(r) => format!("{}\u{1f}{}", r.stream, r.seq),
        }
    }
}

// ---- binary form (write-ahead file payloads) ----

struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f32(&mut self, v: f32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn f32s(&mut self, v: &[f32]) {
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        for x in v {
            self.f32(*x);
        }
    }
    fn u64s(&mut self, v: &[u64]) {
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        for x in v {
            self.u64(*x);
        }
    }
}

struct Dec<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| Error::Corrupt("write-ahead record is truncated".into()))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool> {
        Ok(self.u8()? != 0)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.arr()?))
    }
    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(self.arr()?))
    }
    fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_le_bytes(self.arr()?))
    }
    fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.arr()?))
    }
    fn str(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| Error::Corrupt("write-ahead record holds invalid UTF-8".into()))
    }
    fn f32s(&mut self) -> Result<Vec<f32>> {
        let n = self.u32()? as usize;
        let raw = self.take(n.saturating_mul(4))?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    fn u64s(&mut self) -> Result<Vec<u64>> {
        let n = self.u32()? as usize;
        let raw = self.take(n.saturating_mul(8))?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect())
    }
}

impl Record {
    /// Appends the binary form of this row to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut e = Enc(out);
        e.u8(self.table() as u8);
        match self {
            Record::Impression(r) => {
                e.str(&r.impression_id);
                e.i64(r.ts_us);
                e.str(&r.request_id);
                e.str(&r.user_token);
                e.u64(r.item_id);
                e.i32(r.position);
                e.u8(r.source as u8);
                e.f64(r.propensity);
                e.str(&r.model_version);
                e.str(&r.experiments);
                e.i32(r.topic);
                e.u64(r.creator_id);
                e.f64(r.sampled_pct);
            }
            Record::Engagement(r) => {
                e.str(&r.impression_id);
                e.i64(r.ts_us);
                e.str(&r.user_token);
                e.f32(r.watched_seconds);
                e.u8(r.completed as u8);
                e.u8(r.liked as u8);
                e.u8(r.shared as u8);
                e.u8(r.followed as u8);
            }
            Record::Exploration(r) => {
                e.str(&r.impression_id);
                e.i64(r.ts_us);
                e.str(&r.user_token);
                e.u64(r.item_id);
                e.i32(r.position);
                e.i32(r.topic);
                e.f64(r.propensity);
                e.str(&r.policy);
            }
            Record::Score(r) => {
                e.str(&r.impression_id);
                e.i64(r.ts_us);
                e.str(&r.model_version);
                e.u8(r.is_shadow as u8);
                e.f32(r.value_score);
                e.f32s(&r.preds);
                e.str(&r.request_id);
                e.u8(r.exploration as u8);
                e.f64(r.sampled_pct);
            }
            Record::Request(r) => {
                e.str(&r.request_id);
                e.i64(r.ts_us);
                e.str(&r.user_token);
                e.u64s(&r.candidate_item_ids);
                e.f32s(&r.candidate_scores);
                e.u64s(&r.served_item_ids);
                e.f64(r.sampled_pct);
                e.u32(r.shadow_versions.len() as u32);
                for v in &r.shadow_versions {
                    e.str(v);
                }
                e.f32s(&r.shadow_candidate_scores);
            }
            Record::Features(r) => {
                e.str(&r.request_id);
                e.i64(r.ts_us);
                e.u64(r.item_id);
                e.f32s(&r.features);
                e.str(&r.feature_set_version);
                e.f64(r.sampled_pct);
            }
            Record::FeatureEvent(r) => {
                e.i64(r.ts_us);
                e.str(&r.stream);
                e.u64(r.seq);
                e.u8(r.kind as u8);
                e.str(&r.request_id);
                e.str(&r.user_token);
                e.u64s(&r.item_ids);
                e.f32(r.watched_frac);
                e.u8(r.completed as u8);
                e.u8(r.liked as u8);
                e.i32(r.topic);
                e.u64(r.creator_id);
                e.i32(r.category);
                e.f64(r.upload_ts);
                e.f32s(&r.embedding);
                e.f32(r.long_term_weight);
                e.f32(r.recency_half_life);
            }
        }
    }

    /// Inverse of [`Record::encode`]; `Corrupt` on anything that does not parse exactly.
    pub fn decode(b: &[u8]) -> Result<Record> {
        let mut d = Dec { b, at: 0 };
        let code = d.u8()?;
        let table = Table::from_index(code)
            .ok_or_else(|| Error::Corrupt(format!("write-ahead record has table code {code}")))?;
        let rec = match table {
            Table::Impressions => Record::Impression(Impression {
                impression_id: d.str()?,
                ts_us: d.i64()?,
                request_id: d.str()?,
                user_token: d.str()?,
                item_id: d.u64()?,
                position: d.i32()?,
                source: Source::from_u8(d.u8()?)?,
                propensity: d.f64()?,
                model_version: d.str()?,
                experiments: d.str()?,
                topic: d.i32()?,
                creator_id: d.u64()?,
                sampled_pct: d.f64()?,
            }),
            Table::Engagements => Record::Engagement(Engagement {
                impression_id: d.str()?,
                ts_us: d.i64()?,
                user_token: d.str()?,
                watched_seconds: d.f32()?,
                completed: d.bool()?,
                liked: d.bool()?,
                shared: d.bool()?,
                followed: d.bool()?,
            }),
            Table::ExplorationEvents => Record::Exploration(ExplorationEvent {
                impression_id: d.str()?,
                ts_us: d.i64()?,
                user_token: d.str()?,
                item_id: d.u64()?,
                position: d.i32()?,
                topic: d.i32()?,
                propensity: d.f64()?,
                policy: d.str()?,
            }),
            Table::RankerScores => Record::Score(RankerScore {
                impression_id: d.str()?,
                ts_us: d.i64()?,
                model_version: d.str()?,
                is_shadow: d.bool()?,
                value_score: d.f32()?,
                preds: d.f32s()?,
                request_id: d.str()?,
                exploration: d.bool()?,
                sampled_pct: d.f64()?,
            }),
            Table::Requests => Record::Request(RequestRow {
                request_id: d.str()?,
                ts_us: d.i64()?,
                user_token: d.str()?,
                candidate_item_ids: d.u64s()?,
                candidate_scores: d.f32s()?,
                served_item_ids: d.u64s()?,
                sampled_pct: d.f64()?,
                shadow_versions: {
                    let n = d.u32()? as usize;
                    (0..n).map(|_| d.str()).collect::<Result<_>>()?
                },
                shadow_candidate_scores: d.f32s()?,
            }),
            Table::ServedFeatures => Record::Features(ServedFeatures {
                request_id: d.str()?,
                ts_us: d.i64()?,
                item_id: d.u64()?,
                features: d.f32s()?,
                feature_set_version: d.str()?,
                sampled_pct: d.f64()?,
            }),
            Table::FeatureEvents => Record::FeatureEvent(FeatureEvent {
                ts_us: d.i64()?,
                stream: d.str()?,
                seq: d.u64()?,
                kind: FeatureEventKind::from_u8(d.u8()?)?,
                request_id: d.str()?,
                user_token: d.str()?,
                item_ids: d.u64s()?,
                watched_frac: d.f32()?,
                completed: d.bool()?,
                liked: d.bool()?,
                topic: d.i32()?,
                creator_id: d.u64()?,
                category: d.i32()?,
                upload_ts: d.f64()?,
                embedding: d.f32s()?,
                long_term_weight: d.f32()?,
                recency_half_life: d.f32()?,
            }),
        };
        if d.at != b.len() {
            return Err(Error::Corrupt(format!(
                "write-ahead record has {} trailing bytes",
                b.len() - d.at
            )));
        }
        Ok(rec)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const TOK: &str = "0123456789abcdef0123456789abcdef";

    pub fn samples() -> Vec<Record> {
        vec![
            Record::Impression(Impression {
                impression_id: "r1:0".into(),
                ts_us: 1_700_000_000_123_456,
                request_id: "r1".into(),
                user_token: TOK.into(),
                item_id: u64::MAX,
                position: 0,
                source: Source::Exploration,
                propensity: 0.001,
                model_version: "m1".into(),
                experiments: "{\"a\":\"b\"}".into(),
                topic: -3,
                creator_id: 7,
                sampled_pct: 100.0,
            }),
            Record::Engagement(Engagement {
                impression_id: "r1:0".into(),
                ts_us: 5,
                user_token: TOK.into(),
                watched_seconds: 3.5,
                completed: true,
                liked: false,
                shared: true,
                followed: false,
            }),
            Record::Exploration(ExplorationEvent {
                impression_id: "r1:0".into(),
                ts_us: 6,
                user_token: TOK.into(),
                item_id: 9,
                position: 0,
                topic: 1,
                propensity: 0.5,
                policy: "uniform".into(),
            }),
            Record::Score(RankerScore {
                impression_id: "r1:0".into(),
                ts_us: 7,
                model_version: "m2".into(),
                is_shadow: true,
                value_score: 0.25,
                preds: vec![0.1, 0.2, 0.3, 0.4, 5.0],
                request_id: "r1".into(),
                exploration: true,
                sampled_pct: 100.0,
            }),
            Record::Request(RequestRow {
                request_id: "r1".into(),
                ts_us: 8,
                user_token: TOK.into(),
                candidate_item_ids: vec![1, 2, 3],
                candidate_scores: vec![0.5, 0.25, 0.125],
                served_item_ids: vec![3, 1],
                sampled_pct: 10.0,
                shadow_versions: vec!["s1".into(), "s2".into()],
                shadow_candidate_scores: vec![0.1, 0.2, 0.3, -1.0, -2.0, -3.0],
            }),
            Record::Features(ServedFeatures {
                request_id: "r1".into(),
                ts_us: 9,
                item_id: 3,
                features: vec![1.0, -2.0],
                feature_set_version: "fs1".into(),
                sampled_pct: 10.0,
            }),
            Record::FeatureEvent(FeatureEvent {
                item_ids: vec![12],
                topic: 3,
                creator_id: 9,
                category: 1,
                upload_ts: 1.5,
                embedding: vec![0.5, 0.25],
                long_term_weight: 0.5,
                recency_half_life: 10.0,
                ..FeatureEvent::new(FeatureEventKind::Upload, 10, "s1", 4)
            }),
            Record::FeatureEvent(FeatureEvent {
                request_id: "r1:0".into(),
                user_token: TOK.into(),
                item_ids: vec![12],
                watched_frac: 0.75,
                liked: true,
                long_term_weight: 0.5,
                recency_half_life: 10.0,
                ..FeatureEvent::new(FeatureEventKind::Engagement, 11, "s1", 5)
            }),
        ]
    }

    #[test]
    fn encode_decode_round_trip_every_table() {
        for r in samples() {
            let mut b = Vec::new();
            r.encode(&mut b);
            assert_eq!(Record::decode(&b).unwrap(), r);
            // every strict prefix fails cleanly
            for cut in 0..b.len() {
                assert!(matches!(Record::decode(&b[..cut]), Err(Error::Corrupt(_))));
            }
        }
    }

    #[test]
    fn token_check_refuses_raw_ids() {
        assert!(check_token(TOK).is_ok());
        assert!(check_token("alice@example.com").is_err());
        assert!(check_token(&TOK.to_uppercase()).is_err());
        assert!(check_token(&TOK[..31]).is_err());
    }

    #[test]
    fn durable_classification() {
        let s = samples();
        let d: Vec<bool> = s.iter().map(|r| r.is_durable()).collect();
        assert_eq!(d, vec![true, true, true, true, false, false, true, true]);
    }
}
