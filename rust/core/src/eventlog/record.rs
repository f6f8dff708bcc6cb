//! One row of one table, as the serving pipeline hands it over: validation on the caller's
//! thread (cheap field checks only), the durable/firehose split, and the compact binary form
//! used by the write-ahead file.

use super::columns::Dec;
use super::schema::Table;
use super::tables::{decode_row, LogRow};
pub use super::tables::{
    Engagement, ExplorationEvent, FeatureEvent, Impression, RankerScore, RequestRow, ServedFeatures,
};
use crate::{invalid, Error, Result};

/// Runs `$e` on the row inside a [`Record`], whatever its table.
macro_rules! dispatch {
    ($rec:expr, $r:ident => $e:expr) => {
        match $rec {
            Record::Impression($r) => $e,
            Record::Engagement($r) => $e,
            Record::Exploration($r) => $e,
            Record::Score($r) => $e,
            Record::Request($r) => $e,
            Record::Features($r) => $e,
            Record::FeatureEvent($r) => $e,
        }
    };
}

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
    pub(crate) fn from_u8(v: u8) -> Result<Source> {
        match v {
            0 => Ok(Source::Ranked),
            1 => Ok(Source::Exploration),
            2 => Ok(Source::Fresh),
            _ => Err(Error::Corrupt(format!("bad source code {v}"))),
        }
    }
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

    pub(crate) fn from_u8(v: u8) -> Result<FeatureEventKind> {
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

    /// What each kind of event must carry.
    fn check_kind(&self) -> Result<()> {
        use FeatureEventKind as K;
        let user = matches!(self.kind, K::Impression | K::Engagement | K::BatchUsers);
        if user {
            check_token(&self.user_token)?;
        } else if !self.user_token.is_empty() {
            return Err(invalid!("an item or batch event carries no user_token"));
        }
        let broken = match self.kind {
            K::Impression | K::Engagement if self.request_id.is_empty() => {
                "request_id must not be empty"
            }
            K::BatchUsers if self.embedding.is_empty() => "a batch_users event holds an embedding",
            K::BatchAuthority if self.item_ids.len() != self.embedding.len() => {
                "a batch_authority event holds one score per creator id"
            }
            K::BatchSwap if self.request_id.is_empty() || self.item_ids.len() != 1 => {
                "a batch_swap event holds the snapshot's version and checksum"
            }
            K::Upload if self.item_ids.len() != 1 || self.embedding.is_empty() => {
                "an upload event holds one item id and its embedding"
            }
            _ => return Ok(()),
        };
        Err(invalid!("{broken}"))
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

impl Record {
    pub fn table(&self) -> Table {
        fn table_of<T: LogRow>(_: &T) -> Table {
            T::TABLE
        }
        dispatch!(self, r => table_of(r))
    }

    pub fn ts_us(&self) -> i64 {
        dispatch!(self, r => r.ts_us)
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

    /// Field checks a caller controls; `n_tasks` is the log's task count. The per-column checks
    /// are declared with the tables (`tables.rs`); the rules across fields are here.
    pub fn validate(&self, n_tasks: usize) -> Result<()> {
        dispatch!(self, r => r.check_fields())?;
        match self {
            Record::Score(r) if r.preds.len() != n_tasks => Err(invalid!(
                "predictions has {} columns, the log has {n_tasks} tasks",
                r.preds.len()
            )),
            Record::Request(r) if r.candidate_scores.len() != r.candidate_item_ids.len() => {
                Err(invalid!(
                    "candidate_scores has {} values, candidate_item_ids has {}; they must match",
                    r.candidate_scores.len(),
                    r.candidate_item_ids.len()
                ))
            }
            Record::Request(r)
                if r.shadow_candidate_scores.len()
                    != r.shadow_versions.len() * r.candidate_item_ids.len() =>
            {
                Err(invalid!(
                    "shadow_candidate_scores has {} values; {} shadow(s) x {} candidates need {}",
                    r.shadow_candidate_scores.len(),
                    r.shadow_versions.len(),
                    r.candidate_item_ids.len(),
                    r.shadow_versions.len() * r.candidate_item_ids.len()
                ))
            }
            Record::FeatureEvent(r) => r.check_kind(),
            _ => Ok(()),
        }
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

// ---- binary form (write-ahead file payloads): the table code, then the row's fields in
// declaration order (`tables.rs`) ----

impl Record {
    /// Appends the binary form of this row to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.table() as u8);
        dispatch!(self, r => r.encode(out))
    }

    /// Inverse of [`Record::encode`]; `Corrupt` on anything that does not parse exactly.
    pub fn decode(b: &[u8]) -> Result<Record> {
        let mut d = Dec::new(b);
        let code = d.u8()?;
        let table = Table::from_index(code)
            .ok_or_else(|| Error::Corrupt(format!("write-ahead record has table code {code}")))?;
        let rec = decode_row(table, &mut d)?;
        if d.remaining() != 0 {
            return Err(Error::Corrupt(format!(
                "write-ahead record has {} trailing bytes",
                d.remaining()
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
            sample_impression(),
            sample_engagement(),
            sample_exploration(),
            sample_ranker_score(),
            sample_request_row(),
            sample_served_features(),
            sample_upload_event(),
            sample_engagement_event(),
        ]
    }

    /// An exploration-slot impression with extreme ids.
    fn sample_impression() -> Record {
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
        })
    }

    /// An engagement with mixed flags.
    fn sample_engagement() -> Record {
        Record::Engagement(Engagement {
            impression_id: "r1:0".into(),
            ts_us: 5,
            user_token: TOK.into(),
            watched_seconds: 3.5,
            completed: true,
            liked: false,
            shared: true,
            followed: false,
        })
    }

    /// An exploration event.
    fn sample_exploration() -> Record {
        Record::Exploration(ExplorationEvent {
            impression_id: "r1:0".into(),
            ts_us: 6,
            user_token: TOK.into(),
            item_id: 9,
            position: 0,
            topic: 1,
            propensity: 0.5,
            policy: "uniform".into(),
        })
    }

    /// A shadow ranker score of an exploration slot.
    fn sample_ranker_score() -> Record {
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
        })
    }

    /// A request row with shadow scores.
    fn sample_request_row() -> Record {
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
        })
    }

    /// Served features.
    fn sample_served_features() -> Record {
        Record::Features(ServedFeatures {
            request_id: "r1".into(),
            ts_us: 9,
            item_id: 3,
            features: vec![1.0, -2.0],
            feature_set_version: "fs1".into(),
            sampled_pct: 10.0,
        })
    }

    /// An upload feature event.
    fn sample_upload_event() -> Record {
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
        })
    }

    /// An engagement feature event.
    fn sample_engagement_event() -> Record {
        Record::FeatureEvent(FeatureEvent {
            request_id: "r1:0".into(),
            user_token: TOK.into(),
            item_ids: vec![12],
            watched_frac: 0.75,
            liked: true,
            long_term_weight: 0.5,
            recency_half_life: 10.0,
            ..FeatureEvent::new(FeatureEventKind::Engagement, 11, "s1", 5)
        })
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
