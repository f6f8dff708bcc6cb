//! Binding for `fyp_core.EventLog`, `fyp_core.UserTokenizer` and `fyp_core.user_token` (core:
//! `fyp_core::eventlog`). Batches arrive as column arrays; rows are built and handed over with
//! the GIL released. Every open log is closed at interpreter exit (atexit), so queued rows land.

use crate::convert::{
    bool_vector, f32_matrix, f32_vector, i32_vector, i64_vector, str_arg, str_list, u64_vector,
    StrArg,
};
use crate::errors::{run_detached, to_py};
use fyp_core::eventlog::{
    now_us, Engagement, EventLog, EventLogConfig, ExplorationEvent, Impression, RankerScore,
    Record, RequestRow, ServedFeatures, Source, StatsSnapshot, Table, UserTokenizer, N_TABLES,
};
use fyp_core::invalid;
use numpy::PyUntypedArrayMethods;
use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Open logs, closed by the atexit hook so a script that never calls close() loses nothing.
static OPEN_LOGS: Mutex<Vec<Weak<EventLog>>> = Mutex::new(Vec::new());

/// The non-blocking counterfactual event log: zstd Parquet under `root`, Hive-partitioned as
/// `<root>/<table>/dt=YYYY-MM-DD/hour=HH/part-*.parquet` (UTC); a file is visible only once
/// complete.
///
/// `sample_pct` in (0, 100]: share of requests whose firehose rows are kept (exploration rows
/// and engagements always are). `queue_capacity`: rows held in memory before firehose rows are
/// dropped and durable rows spill to the write-ahead file. Files rotate at `rotate_rows` rows,
/// about `rotate_bytes` bytes, or every `rotate_seconds`. `wal_path`: write-ahead directory
/// (default `<root>/_wal/<writer_id>`); `writer_id`: 1-64 of [A-Za-z0-9_.], one per process
/// writing into a root. `tasks`: ranker task names (`pred_<task>` columns). `zstd_level` in
/// 1..=22; `wal_sync` fsyncs every durable submit. The `log_*` methods take column arrays (a
/// scalar broadcasts), never wait for the writer, and return the rows accepted; `ts` is
/// microseconds since the epoch. Raises ValueError for bad settings or a write-ahead directory
/// another open log holds, OSError when `root` cannot be written. Safe to share between
/// threads; closed by `close()`, `with`, or at interpreter exit.
#[pyclass(name = "EventLog", module = "fyp_core", frozen)]
pub struct PyEventLog {
    pub inner: Arc<EventLog>,
}

/// A column: a scalar broadcast over the batch, or exactly one value per row.
fn check_len(name: &str, len: usize, n: usize) -> PyResult<()> {
    if len == n || len == 1 {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "{name} has {len} values, the batch has {n} rows (pass one value per row or a scalar)"
        )))
    }
}

#[inline]
fn at<T: Copy>(s: &[T], i: usize) -> T {
    if s.len() == 1 {
        s[0]
    } else {
        s[i]
    }
}

fn str_col(obj: &Bound<'_, PyAny>, name: &str, n: usize) -> PyResult<StrArg> {
    let a = str_arg(obj, name)?;
    if let StrArg::Many(v) = &a {
        check_len(name, v.len(), n)?;
    }
    Ok(a)
}

#[inline]
fn s_at(a: &StrArg, i: usize) -> String {
    match a {
        StrArg::One(s) => s.clone(),
        StrArg::Many(v) if v.len() == 1 => v[0].clone(),
        StrArg::Many(v) => v[i].clone(),
    }
}

/// `ts` in microseconds since the Unix epoch: None (now), one int, or one per row.
fn ts_col(obj: Option<&Bound<'_, PyAny>>, n: usize) -> PyResult<Vec<i64>> {
    match obj {
        None => Ok(vec![now_us()]),
        Some(o) if o.is_none() => Ok(vec![now_us()]),
        Some(o) => {
            let v = i64_vector(o, "ts")?;
            let s = v.as_slice()?;
            check_len("ts", s.len(), n)?;
            Ok(s.to_vec())
        }
    }
}

/// The sampling key of a score row whose request_id was not given: the impression_id's prefix
/// before its last ':' (the default impression_id is `<request_id>:<position>`).
fn request_of(impression_id: &str) -> PyResult<String> {
    match impression_id.rsplit_once(':') {
        Some((r, _)) if !r.is_empty() => Ok(r.to_string()),
        _ => Err(PyValueError::new_err(format!(
            "cannot derive request_id from impression_id {impression_id:?} (expected '<request_id>:<position>'); pass request_ids"
        ))),
    }
}

fn table_dict<'py>(py: Python<'py>, v: &[u64; N_TABLES]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for t in Table::ALL {
        d.set_item(t.name(), v[t.index()])?;
    }
    Ok(d)
}

fn stats_dict<'py>(py: Python<'py>, s: &StatsSnapshot) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("enqueued", table_dict(py, &s.enqueued)?)?;
    d.set_item("written", table_dict(py, &s.written)?)?;
    d.set_item("dropped", table_dict(py, &s.dropped)?)?;
    d.set_item("sampled_out", table_dict(py, &s.sampled_out)?)?;
    d.set_item("spilled", s.spilled)?;
    d.set_item("replayed", s.replayed)?;
    d.set_item("replay_duplicates", s.replay_duplicates)?;
    d.set_item("queue_depth", s.queue_depth)?;
    d.set_item("spill_pending", s.spill_pending)?;
    d.set_item("files_written", s.files_written)?;
    d.set_item("bytes_written", s.bytes_written)?;
    d.set_item("write_errors", s.write_errors)?;
    d.set_item("wal_errors", s.wal_errors)?;
    d.set_item("wal_bad_tails", s.wal_bad_tails)?;
    d.set_item("wal_skipped_bytes", s.wal_skipped_bytes)?;
    d.set_item("not_durable", s.not_durable)?;
    d.set_item("wal_bytes", s.wal_bytes)?;
    d.set_item("checkpoints", s.checkpoints)?;
    d.set_item("last_error", s.last_error.clone())?;
    Ok(d)
}

impl PyEventLog {
    fn submit(&self, py: Python<'_>, rows: Vec<Record>) -> PyResult<usize> {
        let inner = &self.inner;
        run_detached(py, move || inner.submit_batch(rows))
    }
}

#[pymethods]
impl PyEventLog {
    #[new]
    #[pyo3(signature = (root, *, sample_pct=100.0, queue_capacity=1_000_000, rotate_rows=500_000,
        rotate_bytes=134_217_728, rotate_seconds=60.0, wal_path=None, writer_id="w0", tasks=None,
        feature_names=None, zstd_level=1, wal_sync=false, _debug_write_delay_ms=0))]
    fn new(
        py: Python<'_>,
        root: PathBuf,
        sample_pct: f64,
        queue_capacity: usize,
        rotate_rows: usize,
        rotate_bytes: usize,
        rotate_seconds: f64,
        wal_path: Option<PathBuf>,
        writer_id: &str,
        tasks: Option<&Bound<'_, PyAny>>,
        feature_names: Option<&Bound<'_, PyAny>>,
        zstd_level: i32,
        wal_sync: bool,
        _debug_write_delay_ms: u64,
    ) -> PyResult<Self> {
        let mut cfg = EventLogConfig::new(root);
        cfg.sample_pct = sample_pct;
        cfg.queue_capacity = queue_capacity;
        cfg.rotate_rows = rotate_rows;
        cfg.rotate_bytes = rotate_bytes;
        cfg.rotate_seconds = rotate_seconds;
        cfg.wal_path = wal_path;
        cfg.writer_id = writer_id.to_string();
        if let Some(t) = tasks.filter(|t| !t.is_none()) {
            cfg.tasks = str_list(t, "tasks")?;
        }
        if let Some(f) = feature_names.filter(|f| !f.is_none()) {
            cfg.feature_names = Some(str_list(f, "feature_names")?);
        }
        cfg.zstd_level = zstd_level;
        cfg.wal_sync = wal_sync;
        cfg.debug_write_delay_ms = _debug_write_delay_ms;
        let inner = run_detached(py, move || EventLog::open(cfg))?;
        let mut open = OPEN_LOGS.lock();
        open.retain(|w| w.strong_count() > 0);
        open.push(Arc::downgrade(&inner));
        Ok(Self { inner })
    }

    /// The log root directory (tables are subdirectories).
    #[getter]
    fn root(&self) -> PathBuf {
        self.inner.config().root.clone()
    }
    /// The write-ahead directory this log uses (default `<root>/_wal/<writer_id>`).
    #[getter]
    fn wal_path(&self) -> PathBuf {
        self.inner.wal_dir().to_path_buf()
    }
    /// Percentage (0, 100] of requests whose firehose rows are kept.
    #[getter]
    fn sample_pct(&self) -> f64 {
        self.inner.config().sample_pct
    }
    /// Rows the in-memory queue holds before firehose rows are dropped and durable rows spill.
    #[getter]
    fn queue_capacity(&self) -> usize {
        self.inner.config().queue_capacity
    }
    /// This writer's id: it names its files (`part-<writer_id>-...`) and default write-ahead
    /// directory.
    #[getter]
    fn writer_id(&self) -> String {
        self.inner.config().writer_id.clone()
    }
    /// Ranker task names: `ranker_scores` has one `pred_<task>` column each.
    #[getter]
    fn tasks(&self) -> Vec<String> {
        self.inner.config().tasks.clone()
    }
    /// True once `close()` has run (logging then raises ValueError).
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// One row per slot shown. Returns the rows accepted (after sampling and backpressure).
    #[pyo3(signature = (impression_ids, request_ids, user_tokens, item_ids, positions, sources,
        propensities, model_versions, topics, creator_ids, experiments=None, ts=None))]
    fn log_impressions(
        &self,
        py: Python<'_>,
        impression_ids: &Bound<'_, PyAny>,
        request_ids: &Bound<'_, PyAny>,
        user_tokens: &Bound<'_, PyAny>,
        item_ids: &Bound<'_, PyAny>,
        positions: &Bound<'_, PyAny>,
        sources: &Bound<'_, PyAny>,
        propensities: &Bound<'_, PyAny>,
        model_versions: &Bound<'_, PyAny>,
        topics: &Bound<'_, PyAny>,
        creator_ids: &Bound<'_, PyAny>,
        experiments: Option<&Bound<'_, PyAny>>,
        ts: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let ids = str_list(impression_ids, "impression_ids")?;
        let n = ids.len();
        let reqs = str_col(request_ids, "request_ids", n)?;
        let users = str_col(user_tokens, "user_tokens", n)?;
        let srcs = str_col(sources, "sources", n)?;
        let models = str_col(model_versions, "model_versions", n)?;
        let exps = match experiments.filter(|e| !e.is_none()) {
            Some(e) => str_col(e, "experiments", n)?,
            None => StrArg::One("{}".into()),
        };
        let items = u64_vector(item_ids, "item_ids")?;
        let pos = i32_vector(positions, "positions")?;
        let props = f64_vec(propensities, "propensities")?;
        let tops = i32_vector(topics, "topics")?;
        let creators = u64_vector(creator_ids, "creator_ids")?;
        let (items, pos, tops, creators) = (
            items.as_slice()?,
            pos.as_slice()?,
            tops.as_slice()?,
            creators.as_slice()?,
        );
        check_len("item_ids", items.len(), n)?;
        check_len("positions", pos.len(), n)?;
        check_len("propensities", props.len(), n)?;
        check_len("topics", tops.len(), n)?;
        check_len("creator_ids", creators.len(), n)?;
        let ts = ts_col(ts, n)?;
        let inner = &self.inner;
        run_detached(py, move || {
            let mut rows = Vec::with_capacity(n);
            for (i, id) in ids.into_iter().enumerate() {
                rows.push(Record::Impression(Impression {
                    impression_id: id,
                    ts_us: at(&ts, i),
                    request_id: s_at(&reqs, i),
                    user_token: s_at(&users, i),
                    item_id: at(items, i),
                    position: at(pos, i),
                    source: Source::parse(&s_at(&srcs, i))
                        .map_err(|e| invalid!("sources[{i}]: {e}"))?,
                    propensity: at(&props, i),
                    model_version: s_at(&models, i),
                    experiments: s_at(&exps, i),
                    topic: at(tops, i),
                    creator_id: at(creators, i),
                    sampled_pct: 100.0,
                }));
            }
            inner.submit_batch(rows)
        })
    }

    /// One row per engagement event (never sampled, never dropped).
    #[pyo3(signature = (impression_ids, user_tokens, watched_seconds=None, completed=None,
        liked=None, shared=None, followed=None, ts=None))]
    fn log_engagements(
        &self,
        py: Python<'_>,
        impression_ids: &Bound<'_, PyAny>,
        user_tokens: &Bound<'_, PyAny>,
        watched_seconds: Option<&Bound<'_, PyAny>>,
        completed: Option<&Bound<'_, PyAny>>,
        liked: Option<&Bound<'_, PyAny>>,
        shared: Option<&Bound<'_, PyAny>>,
        followed: Option<&Bound<'_, PyAny>>,
        ts: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let ids = str_list(impression_ids, "impression_ids")?;
        let n = ids.len();
        let users = str_col(user_tokens, "user_tokens", n)?;
        let watched: Vec<f32> = match watched_seconds.filter(|w| !w.is_none()) {
            Some(w) => f32_vector(w, "watched_seconds")?.as_slice()?.to_vec(),
            None => vec![0.0],
        };
        let flags: Vec<Vec<bool>> = [
            (completed, "completed"),
            (liked, "liked"),
            (shared, "shared"),
            (followed, "followed"),
        ]
        .iter()
        .map(|(o, name)| opt_bools(*o, name, n))
        .collect::<PyResult<_>>()?;
        check_len("watched_seconds", watched.len(), n)?;
        let ts = ts_col(ts, n)?;
        let inner = &self.inner;
        run_detached(py, move || {
            let rows = ids
                .into_iter()
                .enumerate()
                .map(|(i, id)| {
                    Record::Engagement(Engagement {
                        impression_id: id,
                        ts_us: at(&ts, i),
                        user_token: s_at(&users, i),
                        watched_seconds: at(&watched, i),
                        completed: at(&flags[0], i),
                        liked: at(&flags[1], i),
                        shared: at(&flags[2], i),
                        followed: at(&flags[3], i),
                    })
                })
                .collect();
            inner.submit_batch(rows)
        })
    }

    /// One row per exploration slot (never sampled, never dropped).
    #[pyo3(signature = (impression_ids, user_tokens, item_ids, positions, topics, propensities,
        policy=None, ts=None))]
    fn log_exploration(
        &self,
        py: Python<'_>,
        impression_ids: &Bound<'_, PyAny>,
        user_tokens: &Bound<'_, PyAny>,
        item_ids: &Bound<'_, PyAny>,
        positions: &Bound<'_, PyAny>,
        topics: &Bound<'_, PyAny>,
        propensities: &Bound<'_, PyAny>,
        policy: Option<&Bound<'_, PyAny>>,
        ts: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let ids = str_list(impression_ids, "impression_ids")?;
        let n = ids.len();
        let users = str_col(user_tokens, "user_tokens", n)?;
        let policies = match policy.filter(|p| !p.is_none()) {
            Some(p) => str_col(p, "policy", n)?,
            None => StrArg::One("uniform".into()),
        };
        let items = u64_vector(item_ids, "item_ids")?;
        let pos = i32_vector(positions, "positions")?;
        let tops = i32_vector(topics, "topics")?;
        let props = f64_vec(propensities, "propensities")?;
        let (items, pos, tops) = (items.as_slice()?, pos.as_slice()?, tops.as_slice()?);
        check_len("item_ids", items.len(), n)?;
        check_len("positions", pos.len(), n)?;
        check_len("topics", tops.len(), n)?;
        check_len("propensities", props.len(), n)?;
        let ts = ts_col(ts, n)?;
        let inner = &self.inner;
        run_detached(py, move || {
            let rows = ids
                .into_iter()
                .enumerate()
                .map(|(i, id)| {
                    Record::Exploration(ExplorationEvent {
                        impression_id: id,
                        ts_us: at(&ts, i),
                        user_token: s_at(&users, i),
                        item_id: at(items, i),
                        position: at(pos, i),
                        topic: at(tops, i),
                        propensity: at(&props, i),
                        policy: s_at(&policies, i),
                    })
                })
                .collect();
            inner.submit_batch(rows)
        })
    }

    /// One row per (impression, model_version); `predictions` is float32[n, len(tasks)].
    /// `exploration` marks scores of exploration slots (never sampled); `request_ids` is the
    /// sampling key (default: the impression_id's prefix before its last ':').
    #[pyo3(signature = (impression_ids, model_versions, value_scores, predictions,
        is_shadow=None, exploration=None, request_ids=None, ts=None))]
    fn log_ranker_scores(
        &self,
        py: Python<'_>,
        impression_ids: &Bound<'_, PyAny>,
        model_versions: &Bound<'_, PyAny>,
        value_scores: &Bound<'_, PyAny>,
        predictions: &Bound<'_, PyAny>,
        is_shadow: Option<&Bound<'_, PyAny>>,
        exploration: Option<&Bound<'_, PyAny>>,
        request_ids: Option<&Bound<'_, PyAny>>,
        ts: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let ids = str_list(impression_ids, "impression_ids")?;
        let n = ids.len();
        let models = str_col(model_versions, "model_versions", n)?;
        let values = f32_vector(value_scores, "value_scores")?;
        let values = values.as_slice()?;
        check_len("value_scores", values.len(), n)?;
        let preds = f32_matrix(predictions, "predictions")?;
        let shape = preds.shape();
        let n_tasks = self.inner.config().tasks.len();
        if shape[0] != n || shape[1] != n_tasks {
            return Err(PyValueError::new_err(format!(
                "predictions has shape ({}, {}), expected ({n}, {n_tasks}) = (rows, tasks {:?})",
                shape[0],
                shape[1],
                self.inner.config().tasks
            )));
        }
        let preds = preds.as_slice()?;
        let shadow = opt_bools(is_shadow, "is_shadow", n)?;
        let expl = opt_bools(exploration, "exploration", n)?;
        let reqs = match request_ids.filter(|r| !r.is_none()) {
            Some(r) => str_col(r, "request_ids", n)?,
            None => StrArg::Many(ids.iter().map(|i| request_of(i)).collect::<PyResult<_>>()?),
        };
        let ts = ts_col(ts, n)?;
        let inner = &self.inner;
        run_detached(py, move || {
            let rows = ids
                .into_iter()
                .enumerate()
                .map(|(i, id)| {
                    Record::Score(RankerScore {
                        impression_id: id,
                        ts_us: at(&ts, i),
                        model_version: s_at(&models, i),
                        is_shadow: at(&shadow, i),
                        value_score: at(values, i),
                        preds: preds[i * n_tasks..(i + 1) * n_tasks].to_vec(),
                        request_id: s_at(&reqs, i),
                        exploration: at(&expl, i),
                        sampled_pct: 100.0,
                    })
                })
                .collect();
            inner.submit_batch(rows)
        })
    }

    /// One request's row: its candidate set with their value scores, and the served order;
    /// optionally each shadow's value score per candidate (`shadow_candidate_scores` is
    /// float32[len(shadow_versions), len(candidate_item_ids)]).
    #[pyo3(signature = (request_id, user_token, candidate_item_ids, candidate_scores,
        served_item_ids, ts=None, shadow_versions=None, shadow_candidate_scores=None))]
    fn log_request(
        &self,
        py: Python<'_>,
        request_id: String,
        user_token: String,
        candidate_item_ids: &Bound<'_, PyAny>,
        candidate_scores: &Bound<'_, PyAny>,
        served_item_ids: &Bound<'_, PyAny>,
        ts: Option<i64>,
        shadow_versions: Option<Vec<String>>,
        shadow_candidate_scores: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let cand = u64_vector(candidate_item_ids, "candidate_item_ids")?;
        let scores = f32_vector(candidate_scores, "candidate_scores")?;
        let served = u64_vector(served_item_ids, "served_item_ids")?;
        let shadow_versions = shadow_versions.unwrap_or_default();
        let shadow_scores = match shadow_candidate_scores {
            Some(s) => {
                let m = f32_matrix(s, "shadow_candidate_scores")?;
                if m.shape()[0] != shadow_versions.len() || m.shape()[1] != cand.len() {
                    return Err(PyValueError::new_err(format!(
                        "shadow_candidate_scores has shape {:?}; it must be \
                         (len(shadow_versions), len(candidate_item_ids)) = ({}, {})",
                        m.shape(),
                        shadow_versions.len(),
                        cand.len()
                    )));
                }
                m.as_slice()?.to_vec()
            }
            None => Vec::new(),
        };
        let row = Record::Request(RequestRow {
            request_id,
            ts_us: ts.unwrap_or_else(now_us),
            user_token,
            candidate_item_ids: cand.as_slice()?.to_vec(),
            candidate_scores: scores.as_slice()?.to_vec(),
            served_item_ids: served.as_slice()?.to_vec(),
            sampled_pct: 100.0,
            shadow_versions,
            shadow_candidate_scores: shadow_scores,
        });
        self.submit(py, vec![row])
    }

    /// Feature vectors as served: `features` is float32[n, d], one row per item.
    #[pyo3(signature = (request_ids, item_ids, features, feature_set_version=None, ts=None))]
    fn log_served_features(
        &self,
        py: Python<'_>,
        request_ids: &Bound<'_, PyAny>,
        item_ids: &Bound<'_, PyAny>,
        features: &Bound<'_, PyAny>,
        feature_set_version: Option<&Bound<'_, PyAny>>,
        ts: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let items = u64_vector(item_ids, "item_ids")?;
        let items = items.as_slice()?;
        let n = items.len();
        let reqs = str_col(request_ids, "request_ids", n)?;
        let versions = match feature_set_version.filter(|v| !v.is_none()) {
            Some(v) => str_col(v, "feature_set_version", n)?,
            None => StrArg::One("v0".into()),
        };
        let feats = f32_matrix(features, "features")?;
        let shape = feats.shape();
        if shape[0] != n {
            return Err(PyValueError::new_err(format!(
                "features has {} rows, item_ids has {n}; they must match",
                shape[0]
            )));
        }
        let d = shape[1];
        let feats = feats.as_slice()?;
        let ts = ts_col(ts, n)?;
        let inner = &self.inner;
        run_detached(py, move || {
            let rows = (0..n)
                .map(|i| {
                    Record::Features(ServedFeatures {
                        request_id: s_at(&reqs, i),
                        ts_us: at(&ts, i),
                        item_id: items[i],
                        features: feats[i * d..(i + 1) * d].to_vec(),
                        feature_set_version: s_at(&versions, i),
                        sampled_pct: 100.0,
                    })
                })
                .collect();
            inner.submit_batch(rows)
        })
    }

    /// Generic form: `log("impressions", impression_ids=..., ...)` calls the table's method.
    #[pyo3(signature = (table, **columns))]
    fn log(
        slf: &Bound<'_, Self>,
        table: &str,
        columns: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<usize> {
        let t = EventLog::table(table).map_err(to_py)?;
        let method = match t {
            Table::Impressions => "log_impressions",
            Table::Engagements => "log_engagements",
            Table::ExplorationEvents => "log_exploration",
            Table::RankerScores => "log_ranker_scores",
            Table::Requests => "log_request",
            Table::ServedFeatures => "log_served_features",
            Table::FeatureEvents => {
                return Err(PyValueError::new_err(
                    "feature_events is written by FeedPipeline (the feature store's changelog), not by hand",
                ))
            }
        };
        slf.call_method(method, PyTuple::empty(slf.py()), columns)?
            .extract()
    }

    /// Blocks until everything logged before the call is in visible files. OSError on a write
    /// failure or when `timeout` (seconds) passes.
    #[pyo3(signature = (timeout=None))]
    fn flush(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let t = match timeout {
            Some(s) if !(s.is_finite() && s >= 0.0) => {
                return Err(PyValueError::new_err(format!(
                    "timeout must be >= 0 seconds, got {s}"
                )))
            }
            Some(s) => Some(Duration::from_secs_f64(s)),
            None => None,
        };
        let inner = &self.inner;
        run_detached(py, move || inner.flush(t))
    }

    /// Flushes and stops the writer; idempotent. Logging afterwards raises ValueError.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let inner = &self.inner;
        run_detached(py, move || inner.close())
    }

    /// Counters: per-table `enqueued`, `written`, `dropped`, `sampled_out`; `spilled`,
    /// `replayed`, `queue_depth`, `files_written`, ... and `last_error`.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, &self.inner.stats())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "EventLog(root={:?}, sample_pct={}, writer_id={:?}, closed={})",
            c.root.display().to_string(),
            c.sample_pct,
            c.writer_id,
            self.inner.is_closed()
        )
    }
}

/// An optional bool column (None: all false).
fn opt_bools(obj: Option<&Bound<'_, PyAny>>, name: &str, n: usize) -> PyResult<Vec<bool>> {
    match obj.filter(|o| !o.is_none()) {
        None => Ok(vec![false]),
        Some(o) => {
            let v = bool_vector(o, name)?;
            let s = v.as_slice()?;
            check_len(name, s.len(), n)?;
            Ok(s.to_vec())
        }
    }
}

fn f64_vec(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<f64>> {
    let np = obj.py().import("numpy")?;
    let arr = np.call_method1("asarray", (obj,))?;
    let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    if !matches!(kind.as_str(), "f" | "i" | "u") {
        return Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "{name} must be numeric, got an array of dtype kind {kind:?}"
        )));
    }
    let v = np
        .call_method1("ascontiguousarray", (arr, "float64"))?
        .call_method1("reshape", (-1i64,))?;
    let a = v.cast_into::<numpy::PyArray1<f64>>()?;
    let r = numpy::PyArrayMethods::readonly(&a);
    Ok(r.as_slice()?.to_vec())
}

/// Pseudonymous user tokens under one secret key: `hex(HMAC-SHA256(key, user_id)[:16])`.
///
/// `key`: bytes, at least 16 (e.g. `os.urandom(32)`); shorter raises ValueError. Logs hold
/// only tokens; the token -> id map lives in the vault (`fyp_core.vault`). The key is never
/// shown (`repr` hides it). Immutable: safe to share between threads.
#[pyclass(name = "UserTokenizer", module = "fyp_core", frozen)]
pub struct PyUserTokenizer {
    pub inner: Arc<UserTokenizer>,
}

#[pymethods]
impl PyUserTokenizer {
    #[new]
    fn new(key: &[u8]) -> PyResult<Self> {
        UserTokenizer::new(key)
            .map(|t| Self { inner: Arc::new(t) })
            .map_err(to_py)
    }

    /// `hex(HMAC-SHA256(key, user_id)[:16])`.
    fn token(&self, user_id: &str) -> String {
        self.inner.token(user_id)
    }

    /// One token per user id, in order.
    fn tokens(&self, py: Python<'_>, user_ids: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        let ids = str_list(user_ids, "user_ids")?;
        let inner = &self.inner;
        run_detached(py, move || Ok(inner.tokens(&ids)))
    }

    fn __repr__(&self) -> &'static str {
        "UserTokenizer(<key hidden>)"
    }
}

/// `user_token(key, user_id)`: the 32-char hex HMAC-SHA256 token logs hold instead of user ids.
#[pyfunction]
fn user_token(key: &[u8], user_id: &str) -> PyResult<String> {
    fyp_core::eventlog::user_token(key, user_id).map_err(to_py)
}

/// `_eventlog_schema_ipc(table, tasks)`: the Arrow schema of one log table as an Arrow IPC
/// stream (read by `fyp_core.eventlog.schema`). `tasks` names `ranker_scores`' prediction columns.
#[pyfunction]
fn _eventlog_schema_ipc(py: Python<'_>, table: &str, tasks: Vec<String>) -> PyResult<Py<PyBytes>> {
    let t = Table::from_name(table).ok_or_else(|| {
        let names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
        PyValueError::new_err(format!(
            "unknown event-log table {table:?}; the tables are {}",
            names.join(", ")
        ))
    })?;
    let bytes = fyp_core::eventlog::schema_ipc(t, &tasks).map_err(to_py)?;
    Ok(PyBytes::new(py, &bytes).unbind())
}

/// `impression_keys(impression_ids)`: the log's integer join key of each impression id
/// (`xxh3_64`, seed 0, of its UTF-8 bytes; docs/eventlog_schema.md), as a uint64 array.
#[pyfunction]
fn impression_keys<'py>(
    py: Python<'py>,
    impression_ids: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, numpy::PyArray1<u64>>> {
    let ids = str_list(impression_ids, "impression_ids")?;
    let keys: Vec<u64> = py.detach(|| {
        ids.iter()
            .map(|s| fyp_core::eventlog::impression_key(s))
            .collect()
    });
    Ok(numpy::PyArray1::from_vec(py, keys))
}

/// `impression_ids(request_ids, user_tokens, positions)`: the pipeline's impression id of each
/// slot, `<request_id>:<first 16 chars of user_token>:<position>` (the one derivation, also used
/// by `FeedPipeline.feed`), for simulators and tools that write logs the pipeline's way.
/// The three sequences must have one entry per slot; positions must be >= 0.
#[pyfunction]
fn impression_ids(
    request_ids: &Bound<'_, PyAny>,
    user_tokens: &Bound<'_, PyAny>,
    positions: &Bound<'_, PyAny>,
) -> PyResult<Vec<String>> {
    let req = str_list(request_ids, "request_ids")?;
    let tok = str_list(user_tokens, "user_tokens")?;
    let pos = i64_vector(positions, "positions")?;
    let pos = pos.as_slice()?;
    if tok.len() != req.len() || pos.len() != req.len() {
        return Err(PyValueError::new_err(format!(
            "request_ids, user_tokens and positions must have one entry per slot, got {}, {} and {}",
            req.len(),
            tok.len(),
            pos.len()
        )));
    }
    req.iter()
        .zip(&tok)
        .zip(pos)
        .map(|((r, t), &p)| {
            let p = usize::try_from(p)
                .map_err(|_| PyValueError::new_err(format!("positions must be >= 0, got {p}")))?;
            Ok(fyp_core::serve::pipeline::impression_id(r, t, p))
        })
        .collect()
}

/// atexit hook: closes every EventLog still open, so queued rows become visible.
#[pyfunction]
fn _close_all_event_logs(py: Python<'_>) {
    let logs: Vec<Arc<EventLog>> = OPEN_LOGS
        .lock()
        .drain(..)
        .filter_map(|w| w.upgrade())
        .collect();
    py.detach(move || {
        for l in logs {
            if let Err(e) = l.close() {
                eprintln!("fyp_core: EventLog.close at exit: {e} (the write-ahead file keeps its rows for the next session)");
            }
        }
    });
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEventLog>()?;
    m.add_class::<PyUserTokenizer>()?;
    m.add_function(wrap_pyfunction!(user_token, m)?)?;
    m.add_function(wrap_pyfunction!(_eventlog_schema_ipc, m)?)?;
    m.add_function(wrap_pyfunction!(impression_keys, m)?)?;
    m.add_function(wrap_pyfunction!(impression_ids, m)?)?;
    m.add(
        "EVENTLOG_SCHEMA_VERSION",
        fyp_core::eventlog::SCHEMA_VERSION,
    )?;
    let tasks: Vec<&str> = fyp_core::eventlog::DEFAULT_TASKS.to_vec();
    m.add("EVENTLOG_DEFAULT_TASKS", PyTuple::new(m.py(), tasks)?)?;
    // the log's own table list: retention and readers derive theirs from it
    let names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
    m.add("EVENTLOG_TABLES", PyTuple::new(m.py(), names)?)?;
    let hook = wrap_pyfunction!(_close_all_event_logs, m)?;
    m.add_function(hook.clone())?;
    m.py().import("atexit")?.call_method1("register", (hook,))?;
    Ok(())
}
