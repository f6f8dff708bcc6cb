//! Binding for `fyp_core.FeedPipeline` and `fyp_core.FeedResponse` (core: `fyp_core::serve`).
//! One GIL release per request: `feed` converts its three arguments, runs the whole request
//! detached, then builds the response object.

use crate::convert::{config_value, f32_matrix, f32_vector, i64_vector, str_list, u64_vector};
use crate::errors::{run_detached, to_py};
use crate::eventlog::PyEventLog;
use crate::hnsw::PyHnswIndex;
use crate::ranker::{PyMlpRanker, PyRankerSet};
use crate::rerank::PyReranker;
use crate::split::PyTrafficSplit;
use fyp_core::config::Value;
use fyp_core::rank::RankerSet;
use fyp_core::serve::pipeline::{
    FeedResponse, Pipeline, PipelineOptions, Retrieval, SnapshotState, MAX_FEED_N, STAGES,
};
use fyp_core::serve::redis_tier::RedisOptions;
use fyp_core::serve::scorer::ServingConfig;
use fyp_core::serve::snapshot as snapfiles;
use fyp_core::serve::store::{ItemInfo, UserStore, MAX_TOPIC};
use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::PathBuf;
use std::sync::Arc;

/// A Python config dict -> (key, value) changes; the core checks keys, types and ranges.
fn config_changes(d: &Bound<'_, PyDict>) -> PyResult<Vec<(String, Value)>> {
    let mut out = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        let key: String = k
            .extract()
            .map_err(|_| PyTypeError::new_err("config keys must be str"))?;
        out.push((key, config_value(&v, 1)?));
    }
    Ok(out)
}

/// An integer argument of any size as Python gave it (`None` inside: not an int, a bool, or
/// beyond 128 bits), range-checked with the argument's name: a `ValueError`, never an
/// `OverflowError` or a panic.
#[derive(Clone, Copy)]
pub(crate) struct AnyInt(Option<i128>);

impl AnyInt {
    pub const fn of(v: i128) -> Self {
        AnyInt(Some(v))
    }

    pub fn bounded(self, name: &str, lo: i128, hi: i128) -> PyResult<i128> {
        match self.0 {
            Some(x) if (lo..=hi).contains(&x) => Ok(x),
            Some(x) => Err(PyValueError::new_err(format!(
                "{name} must be an integer in [{lo}, {hi}], got {x}"
            ))),
            None => Err(PyValueError::new_err(format!(
                "{name} must be an integer in [{lo}, {hi}]"
            ))),
        }
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for AnyInt {
    type Error = PyErr;
    fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if obj.is_instance_of::<pyo3::types::PyBool>() {
            return Ok(AnyInt(None));
        }
        Ok(AnyInt(obj.extract::<i128>().ok()))
    }
}

fn config_dict<'py>(py: Python<'py>, c: &ServingConfig) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("explore_rate", c.explore_rate)?;
    d.set_item("fresh_budget", c.fresh_budget)?;
    d.set_item("fresh_max_age_s", c.fresh_max_age_s)?;
    d.set_item("candidates", c.candidates)?;
    d.set_item("ef", c.ef)?;
    d.set_item("task_weights", c.task_weights.clone())?;
    d.set_item("long_term_weight", c.long_term_weight)?;
    d.set_item("recency_half_life", c.recency_half_life)?;
    d.set_item("shadow_candidates", c.shadow_candidates)?;
    Ok(d)
}

fn now_or(now: Option<f64>) -> PyResult<f64> {
    match now {
        Some(t) if t.is_finite() => Ok(t),
        Some(t) => Err(PyValueError::new_err(format!(
            "now must be finite seconds since the epoch, got {t}"
        ))),
        None => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)),
    }
}

/// One served feed, as `FeedPipeline.feed` returned it; immutable.
///
/// Per-slot fields are parallel sequences of `len(resp)` entries in feed order: `item_ids`,
/// `positions`, `sources`, `propensities`, `impression_ids`, `topics`, `creators`, `values`,
/// and the rows of `predictions` (`len(resp) x len(task_names)`). Every prediction was frozen
/// with `model_version` before the response left the pipeline; `relaxed` names the policy
/// rules the re-ranker had to relax, `timings` the milliseconds per stage. `to_dict()` gives
/// a JSON-ready form.
#[pyclass(name = "FeedResponse", module = "fyp_core", frozen)]
pub struct PyFeedResponse {
    inner: FeedResponse,
}

#[pymethods]
impl PyFeedResponse {
    /// The request id the caller passed to `feed`.
    #[getter]
    fn request_id(&self) -> &str {
        &self.inner.request_id
    }
    /// The user's 32-char hex HMAC token (logs hold it instead of the user id).
    #[getter]
    fn user_token(&self) -> &str {
        &self.inner.user_token
    }
    /// Version of the model that ranked this request (the live model, or the shadow an experiment
    /// route assigns this user).
    #[getter]
    fn model_version(&self) -> &str {
        &self.inner.model_version
    }
    /// Names of the prediction columns, in the order of `predictions`.
    #[getter]
    fn task_names(&self) -> Vec<String> {
        self.inner.task_names.clone()
    }
    /// Served item ids in feed order (uint64 array).
    #[getter]
    fn item_ids<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        self.inner
            .slots
            .iter()
            .map(|s| s.item_id)
            .collect::<Vec<_>>()
            .into_pyarray(py)
    }
    /// 0-based feed position of each slot (int64 array).
    #[getter]
    fn positions<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        self.inner
            .slots
            .iter()
            .map(|s| s.position as i64)
            .collect::<Vec<_>>()
            .into_pyarray(py)
    }
    /// Source of each slot: "ranked", "exploration" or "fresh".
    #[getter]
    fn sources(&self) -> Vec<&'static str> {
        self.inner.slots.iter().map(|s| s.source.as_str()).collect()
    }
    /// Logging propensity of each slot (float64): 1 for ranked and fresh slots, 1/|admissible
    /// items| for exploration slots.
    #[getter]
    fn propensities<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f64>> {
        self.inner
            .slots
            .iter()
            .map(|s| s.propensity)
            .collect::<Vec<_>>()
            .into_pyarray(py)
    }
    /// Impression id of each slot, `<request_id>:<first 16 hex of user_token>:<position>`; pass one
    /// to `FeedPipeline.engage`.
    #[getter]
    fn impression_ids(&self) -> Vec<String> {
        self.inner
            .slots
            .iter()
            .map(|s| s.impression_id.clone())
            .collect()
    }
    /// Topic id of each served item (int64 array).
    #[getter]
    fn topics<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        self.inner
            .slots
            .iter()
            .map(|s| i64::from(s.topic))
            .collect::<Vec<_>>()
            .into_pyarray(py)
    }
    /// Creator id of each served item (uint64 array).
    #[getter]
    fn creators<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u64>> {
        self.inner
            .slots
            .iter()
            .map(|s| s.creator)
            .collect::<Vec<_>>()
            .into_pyarray(py)
    }
    /// Value-model score of each slot (float32): the task-weighted sum of its predictions.
    #[getter]
    fn values<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        self.inner
            .slots
            .iter()
            .map(|s| s.value)
            .collect::<Vec<_>>()
            .into_pyarray(py)
    }
    /// Live predictions, `len(self) x tasks`, frozen when the response was built.
    #[getter]
    fn predictions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let t = self.inner.task_names.len();
        let n = self.inner.slots.len();
        self.inner
            .predictions
            .clone()
            .into_pyarray(py)
            .reshape([n, t])
    }
    /// `{shadow_version: predictions (len(self) x tasks)}`.
    #[getter]
    fn shadow_predictions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let t = self.inner.task_names.len();
        let n = self.inner.slots.len();
        for sh in &self.inner.shadows {
            d.set_item(
                &sh.version,
                sh.predictions.clone().into_pyarray(py).reshape([n, t])?,
            )?;
        }
        Ok(d)
    }
    /// `{rule: count}` for the policy rules the re-ranker relaxed in this response.
    #[getter]
    fn relaxed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (r, c) in &self.inner.relaxed {
            d.set_item(*r, *c)?;
        }
        Ok(d)
    }
    /// Milliseconds per stage.
    #[getter]
    fn timings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, ms) in STAGES.iter().zip(self.inner.timings) {
            d.set_item(*name, ms)?;
        }
        Ok(d)
    }
    /// Candidates gathered for this request by every candidate source (fresh pool, ANN or
    /// popularity, backfill); exploration draws not counted.
    #[getter]
    fn n_candidates(&self) -> usize {
        self.inner.n_candidates
    }
    /// How many of those candidates came from the fresh pool (recent uploads).
    #[getter]
    fn n_fresh_candidates(&self) -> usize {
        self.inner.n_fresh_candidates
    }
    /// True when the user had no embedding yet (no history and no long-term vector): popularity
    /// candidates.
    #[getter]
    fn cold_start(&self) -> bool {
        self.inner.cold_start
    }
    fn __len__(&self) -> usize {
        self.inner.slots.len()
    }
    /// Plain JSON-ready dict: the request fields plus one dict per slot.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = &self.inner;
        let t = r.task_names.len();
        let slots = PyList::empty(py);
        for (i, s) in r.slots.iter().enumerate() {
            let d = PyDict::new(py);
            d.set_item("item_id", s.item_id)?;
            d.set_item("position", s.position)?;
            d.set_item("source", s.source.as_str())?;
            d.set_item("propensity", s.propensity)?;
            d.set_item("impression_id", &s.impression_id)?;
            d.set_item("topic", s.topic)?;
            d.set_item("creator", s.creator)?;
            d.set_item("value", s.value)?;
            let preds = PyDict::new(py);
            for (k, name) in r.task_names.iter().enumerate() {
                preds.set_item(name, r.predictions[i * t + k])?;
            }
            d.set_item("predictions", preds)?;
            d.set_item("model_version", r.slot_version(i))?;
            slots.append(d)?;
        }
        let out = PyDict::new(py);
        out.set_item("request_id", &r.request_id)?;
        out.set_item("model_version", &r.model_version)?;
        out.set_item("slots", slots)?;
        out.set_item("relaxed", self.relaxed(py)?)?;
        out.set_item("timings_ms", self.timings(py)?)?;
        Ok(out)
    }
    fn __repr__(&self) -> String {
        format!(
            "FeedResponse(request_id={:?}, slots={}, model_version={:?})",
            self.inner.request_id,
            self.inner.slots.len(),
            self.inner.model_version
        )
    }
}

/// The serving pipeline: index, feature store, rankers, re-ranker, split and event log;
/// answers `feed`, `engage` and `upload`.
///
/// `index` (HnswIndex of item embeddings), `ranker` (MlpRanker or RankerSet; its input width
/// must be the pipeline's feature width for the index's dim), `reranker` (Reranker policy),
/// `split` (TrafficSplit: salt and layers; the exploration rate comes from `config`, default
/// the split's), `event_log` (optional EventLog with as many `tasks` as the ranker has),
/// `config` (dict of product config: `explore_rate`, `fresh_budget`, `fresh_max_age_s`,
/// `candidates`, `ef`, `task_weights`, `long_term_weight`, `recency_half_life`),
/// `user_token_key` (required secret bytes, >= 16, for HMAC user tokens), sizes
/// `history_len`, `seen_len`, `impression_capacity`, `tier_cadence_s` (expected update
/// cadence of the real-time, near-real-time and batch tiers, seconds), and `redis_url` /
/// `redis_namespace` / `redis_timeout_ms` / `redis_retry_after_ms` for a shared online tier
/// (an unreachable Redis is not an error: requests fall back to the in-process state).
/// Raises ValueError for a missing key, bad config, a ranker whose width or task count does
/// not fit, or sizes out of range; TypeError for a `ranker` of another type. Safe to share
/// between threads; every call with real work releases the GIL.
#[pyclass(name = "FeedPipeline", module = "fyp_core", frozen)]
pub struct PyFeedPipeline {
    inner: Arc<Pipeline>,
    /// Holds the Python EventLog the caller passed, so it lives as long as the pipeline.
    _log: Option<Py<PyEventLog>>,
}

fn ranker_set(obj: &Bound<'_, PyAny>) -> PyResult<Arc<RankerSet>> {
    if let Ok(s) = obj.cast::<PyRankerSet>() {
        return Ok(s.get().inner.clone());
    }
    if let Ok(m) = obj.cast::<PyMlpRanker>() {
        return Ok(Arc::new(RankerSet::new(m.get().inner.clone())));
    }
    Err(PyTypeError::new_err(
        "ranker must be an MlpRanker or a RankerSet",
    ))
}

/// Item metadata arrays -> `ItemInfo`s (one per id), with messages naming the bad argument.
pub(crate) fn item_infos(
    ids: &Bound<'_, PyAny>,
    topics: &Bound<'_, PyAny>,
    creators: &Bound<'_, PyAny>,
    categories: Option<&Bound<'_, PyAny>>,
    upload_ts: Option<&Bound<'_, PyAny>>,
    now: f64,
) -> PyResult<Vec<ItemInfo>> {
    let ids = u64_vector(ids, "ids")?;
    let ids = ids.as_slice()?;
    let n = ids.len();
    let topics = i64_vector(topics, "topics")?;
    let creators = u64_vector(creators, "creators")?;
    let cats = categories
        .map(|c| i64_vector(c, "categories"))
        .transpose()?;
    let ts = upload_ts
        .map(|t| crate::convert::f64_vector(t, "upload_ts"))
        .transpose()?;
    let len_err = |name: &str, len: usize| {
        PyValueError::new_err(format!(
            "{name} has {len} entries, ids has {n}: pass one per item"
        ))
    };
    let topics = topics.as_slice()?;
    let creators = creators.as_slice()?;
    if topics.len() != n {
        return Err(len_err("topics", topics.len()));
    }
    if creators.len() != n {
        return Err(len_err("creators", creators.len()));
    }
    let cats = cats.as_ref().map(|c| c.as_slice()).transpose()?;
    let ts = ts.as_ref().map(|t| t.as_slice()).transpose()?;
    if let Some(c) = cats {
        if c.len() != n {
            return Err(len_err("categories", c.len()));
        }
    }
    if let Some(t) = ts {
        if t.len() != n {
            return Err(len_err("upload_ts", t.len()));
        }
    }
    let u32_of = |name: &str, i: usize, x: i64| {
        u32::try_from(x)
            .ok()
            .filter(|&v| v <= MAX_TOPIC)
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "{name}[{i}] = {x} is outside [0, 2**31) (the log stores it as int32)"
                ))
            })
    };
    let mut infos = Vec::with_capacity(n);
    for i in 0..n {
        infos.push(ItemInfo {
            id: ids[i],
            topic: u32_of("topics", i, topics[i])?,
            creator: creators[i],
            category: match cats {
                Some(c) => u32_of("categories", i, c[i])?,
                None => 0,
            },
            upload_ts: ts.map_or(now, |t| t[i]),
        });
    }
    Ok(infos)
}

#[pymethods]
impl PyFeedPipeline {
    #[new]
    #[pyo3(signature = (index, ranker, reranker, split, event_log=None, config=None, user_token_key=None,
                        history_len=AnyInt::of(50), seen_len=AnyInt::of(500),
                        impression_capacity=AnyInt::of(1_000_000),
                        tier_cadence_s=(60.0, 300.0, 86400.0), redis_url=None,
                        redis_namespace="default", redis_timeout_ms=25, redis_retry_after_ms=1000),
           text_signature = "(index, ranker, reranker, split, event_log=None, config=None, \
                             user_token_key=None, history_len=50, seen_len=500, \
                             impression_capacity=1000000, tier_cadence_s=(60.0, 300.0, 86400.0), \
                             redis_url=None, redis_namespace='default', redis_timeout_ms=25, \
                             redis_retry_after_ms=1000)")]
    fn new(
        py: Python<'_>,
        index: &Bound<'_, PyHnswIndex>,
        ranker: &Bound<'_, PyAny>,
        reranker: &Bound<'_, PyReranker>,
        split: &Bound<'_, PyTrafficSplit>,
        event_log: Option<Bound<'_, PyEventLog>>,
        config: Option<&Bound<'_, PyDict>>,
        user_token_key: Option<&[u8]>,
        history_len: AnyInt,
        seen_len: AnyInt,
        impression_capacity: AnyInt,
        tier_cadence_s: (f64, f64, f64),
        redis_url: Option<String>,
        redis_namespace: &str,
        redis_timeout_ms: u64,
        redis_retry_after_ms: u64,
    ) -> PyResult<Self> {
        let cadence = [tier_cadence_s.0, tier_cadence_s.1, tier_cadence_s.2];
        let split_ref = &split.get().inner;
        let mut cfg = ServingConfig {
            explore_rate: split_ref.explore_rate(),
            ..ServingConfig::default()
        };
        if let Some(d) = config {
            for (k, v) in config_changes(d)? {
                cfg.set(&k, &v).map_err(to_py)?;
            }
        }
        let key: Vec<u8> = match user_token_key {
            Some(k) => k.to_vec(),
            None => return Err(PyValueError::new_err(
                "user_token_key is required: the secret bytes for HMAC user tokens (keep it out of the logs)",
            )),
        };
        let opts = PipelineOptions {
            history_len: history_len.bounded("history_len", 1, 10_000)? as usize,
            seen_len: seen_len.bounded("seen_len", 1, 1_000_000)? as usize,
            impression_capacity: impression_capacity.bounded(
                "impression_capacity",
                1,
                100_000_000,
            )? as usize,
            tier_cadence_s: cadence,
            shared: redis_url.map(|url| RedisOptions {
                url,
                namespace: redis_namespace.to_owned(),
                io_timeout_ms: redis_timeout_ms,
                retry_after_ms: redis_retry_after_ms,
                ..RedisOptions::default()
            }),
            ..PipelineOptions::default()
        };
        let log = event_log.as_ref().map(|l| l.get().inner.clone());
        let (index, rankers) = (index.get().inner.clone(), ranker_set(ranker)?);
        let (reranker, split) = (reranker.get().inner.clone(), split_ref.clone());
        // may connect to Redis: off the GIL
        let p = run_detached(py, move || {
            Pipeline::new(index, rankers, reranker, split, log, cfg, &key, opts)
        })?;
        Ok(Self {
            inner: Arc::new(p),
            _log: event_log.map(|l| l.unbind()),
        })
    }

    /// Serves one feed request; returns a `FeedResponse`.
    ///
    /// `user_id`: the caller's raw user id (hashed to an HMAC token at once; never logged).
    /// `request_id`: the request's id; with the user it keys the exploration draw, so a retry with
    /// the same ids gets the same exploration slots. Both must be non-empty and at most 1024 bytes.
    /// `n`: slots to serve, an int in [1, 1000] (default 20). `now`: the request time in seconds
    /// since the epoch (float, default the wall clock; rounded to whole microseconds).
    /// Retrieves, ranks, re-ranks and mixes, freezes every slot's predictions, then queues the
    /// log records (never waits for the event log). Raises ValueError for an out-of-range `n`, an
    /// empty or over-long id, or a non-finite `now`. Releases the GIL once for the whole request;
    /// call it from many threads at once.
    #[pyo3(signature = (user_id, request_id, n=AnyInt::of(20), now=None),
           text_signature = "($self, user_id, request_id, n=20, now=None)")]
    fn feed(
        &self,
        py: Python<'_>,
        user_id: &str,
        request_id: &str,
        n: AnyInt,
        now: Option<f64>,
    ) -> PyResult<PyFeedResponse> {
        let n = n.bounded("n", 1, MAX_FEED_N as i128)? as usize;
        let now = now_or(now)?;
        let p = &self.inner;
        let inner = run_detached(py, || p.feed(user_id, request_id, n, now))?;
        Ok(PyFeedResponse { inner })
    }

    /// One new item: into the index, the feature store and the fresh pool (servable at once).
    ///
    /// `item_id` and `creator`: ints in [0, 2**64); `embedding`: float32 `[dim]` of the index,
    /// finite; `topic` and `category`: ints in [0, 2**31); `ts`: upload time in seconds since
    /// the epoch (default now). An existing id is replaced. With an event log the upload goes
    /// to the feature changelog; with `redis_url` it is published to the other hosts.
    /// Raises ValueError naming the argument that is out of range, the wrong length or not
    /// finite. Releases the GIL.
    #[pyo3(signature = (item_id, embedding, topic, creator, category=AnyInt::of(0), ts=None),
           text_signature = "($self, item_id, embedding, topic, creator, category=0, ts=None)")]
    fn upload(
        &self,
        py: Python<'_>,
        item_id: AnyInt,
        embedding: &Bound<'_, PyAny>,
        topic: AnyInt,
        creator: AnyInt,
        category: AnyInt,
        ts: Option<f64>,
    ) -> PyResult<()> {
        let e = f32_vector(embedding, "embedding")?;
        let e = e.as_slice()?;
        let u64_max = i128::from(u64::MAX);
        let info = [ItemInfo {
            id: item_id.bounded("item_id", 0, u64_max)? as u64,
            topic: topic.bounded("topic", 0, i128::from(MAX_TOPIC))? as u32,
            creator: creator.bounded("creator", 0, u64_max)? as u64,
            category: category.bounded("category", 0, i128::from(MAX_TOPIC))? as u32,
            upload_ts: now_or(ts)?,
        }];
        let p = &self.inner;
        run_detached(py, || p.upsert_items(&info, e, true, true))
    }

    /// Bulk load: `ids`, `embeddings (n x dim)`, `topics`, `creators`, optional `categories` and
    /// `upload_ts` (default now). `index=False` when the index already holds these vectors.
    #[pyo3(signature = (ids, embeddings, topics, creators, categories=None, upload_ts=None, index=true))]
    fn load_items(
        &self,
        py: Python<'_>,
        ids: &Bound<'_, PyAny>,
        embeddings: &Bound<'_, PyAny>,
        topics: &Bound<'_, PyAny>,
        creators: &Bound<'_, PyAny>,
        categories: Option<&Bound<'_, PyAny>>,
        upload_ts: Option<&Bound<'_, PyAny>>,
        index: bool,
    ) -> PyResult<()> {
        let emb = f32_matrix(embeddings, "embeddings")?;
        let infos = item_infos(ids, topics, creators, categories, upload_ts, now_or(None)?)?;
        if emb.shape()[0] != infos.len() {
            return Err(PyValueError::new_err(format!(
                "embeddings has {} rows, ids has {}: pass one row per item",
                emb.shape()[0],
                infos.len()
            )));
        }
        let e = emb.as_slice()?;
        let p = &self.inner;
        run_detached(py, || p.upsert_items(&infos, e, index, false))
    }

    /// Takes items down from the index, the store and every later response; returns how many were live.
    #[pyo3(signature = (ids, now=None))]
    fn remove(&self, py: Python<'_>, ids: &Bound<'_, PyAny>, now: Option<f64>) -> PyResult<usize> {
        let ids = u64_vector(ids, "ids")?;
        let ids = ids.as_slice()?;
        let now = now_or(now)?;
        let p = &self.inner;
        run_detached(py, || p.remove_items(ids, now))
    }

    /// Records one engagement with a served slot.
    ///
    /// `impression_id`: from `FeedResponse.impression_ids` (the pipeline remembers the last
    /// `impression_capacity` of them). `watched_seconds`: finite, >= 0; unless `completed`, it
    /// counts as a watched fraction of a 30 s clip. `completed`, `liked`, `shared`, `followed`:
    /// flags. `now`: seconds since the epoch (default the wall clock).
    /// Updates the user's history and the item's engagement counters and, with an event log,
    /// queues an `engagements` row. Raises KeyError for an impression id this pipeline did not
    /// serve (or has forgotten), ValueError for negative or non-finite `watched_seconds` or
    /// `now`. Releases the GIL.
    #[pyo3(signature = (impression_id, watched_seconds=0.0, completed=false, liked=false, shared=false, followed=false, now=None))]
    fn engage(
        &self,
        py: Python<'_>,
        impression_id: &str,
        watched_seconds: f32,
        completed: bool,
        liked: bool,
        shared: bool,
        followed: bool,
        now: Option<f64>,
    ) -> PyResult<()> {
        let now = now_or(now)?;
        let p = &self.inner;
        run_detached(py, || {
            p.engage(
                impression_id,
                watched_seconds,
                completed,
                liked,
                shared,
                followed,
                now,
            )
        })
    }

    /// Adds long-term (batch tier) user embeddings, one row per user id, to a copy of the batch
    /// snapshot and publishes it. For a whole new snapshot use `load_batch`.
    fn set_user_embeddings(
        &self,
        py: Python<'_>,
        user_ids: &Bound<'_, PyAny>,
        embeddings: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let users = str_list(user_ids, "user_ids")?;
        let emb = f32_matrix(embeddings, "embeddings")?;
        if emb.shape()[0] != users.len() {
            return Err(PyValueError::new_err(format!(
                "embeddings has {} rows, user_ids has {}",
                emb.shape()[0],
                users.len()
            )));
        }
        let e = emb.as_slice()?;
        let refs: Vec<&str> = users.iter().map(String::as_str).collect();
        let p = &self.inner;
        run_detached(py, || p.set_user_embeddings(&refs, e))
    }

    /// Replaces the batch tier as a whole (atomically: running requests keep the old snapshot):
    /// long-term user embeddings and creator authority, computed offline. `as_of` is the time
    /// the batch data describes (its freshness), seconds since the epoch.
    #[pyo3(signature = (version, as_of, user_ids=None, user_embeddings=None, creator_ids=None, creator_authority=None))]
    fn load_batch(
        &self,
        py: Python<'_>,
        version: &str,
        as_of: f64,
        user_ids: Option<&Bound<'_, PyAny>>,
        user_embeddings: Option<&Bound<'_, PyAny>>,
        creator_ids: Option<&Bound<'_, PyAny>>,
        creator_authority: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let dim = self.inner.items.dim();
        let batch = crate::features::batch_from_py(
            version,
            as_of,
            dim,
            user_ids,
            user_embeddings,
            creator_ids,
            creator_authority,
            |u| UserStore::key_of_token(&self.inner.user_token(u)),
        )?;
        let p = &self.inner;
        run_detached(py, || p.set_batch(batch))
    }

    /// Sets creator authority scores in a copy of the batch snapshot and publishes it.
    fn set_creator_authority(
        &self,
        py: Python<'_>,
        creator_ids: &Bound<'_, PyAny>,
        authority: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let ids = u64_vector(creator_ids, "creator_ids")?;
        let a = f32_vector(authority, "authority")?;
        let (ids, a) = (ids.as_slice()?, a.as_slice()?);
        let p = &self.inner;
        run_detached(py, || p.set_creator_authority(ids, a))
    }

    /// The batch snapshot served now: version, as_of, n_users, n_creators.
    #[getter]
    fn batch_info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let b = self.inner.batch();
        let d = PyDict::new(py);
        d.set_item("version", b.version.clone())?;
        d.set_item("as_of", b.as_of)?;
        d.set_item("n_users", b.n_users())?;
        d.set_item("n_creators", b.n_creators())?;
        Ok(d)
    }

    /// Age of each feature tier's data: {tier: {age_s, p99_age_s, cadence_s, alert}}. The
    /// alert fires when a tier's data is older than twice its expected cadence.
    #[pyo3(signature = (now=None))]
    fn freshness<'py>(&self, py: Python<'py>, now: Option<f64>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for t in self.inner.freshness(now_or(now)?) {
            let d = PyDict::new(py);
            d.set_item("age_s", t.age_s)?;
            d.set_item("p99_age_s", t.p99_age_s)?;
            d.set_item("cadence_s", t.cadence_s)?;
            d.set_item("alert", t.alert)?;
            out.set_item(t.tier, d)?;
        }
        Ok(out)
    }

    /// The version of the feature definitions served (logged with every served vector).
    #[getter]
    fn feature_set_version(&self) -> String {
        self.inner.feature_set_version().to_owned()
    }

    /// Column names of the served feature vectors (user block, then item block).
    #[getter]
    fn feature_names(&self) -> Vec<String> {
        fyp_core::serve::features::feature_names(self.inner.items.dim())
    }

    /// The product config (explore/exploit setpoint, budgets, task weights) as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        config_dict(py, &self.inner.config())
    }

    /// Changes some config keys at run time (atomic; later requests see all of them).
    fn update_config(&self, changes: &Bound<'_, PyDict>) -> PyResult<()> {
        let changes = config_changes(changes)?;
        self.inner.update_config(&changes, None).map_err(to_py)
    }

    /// Swaps in a new retrieval snapshot (atomically, with its version): `index` holds the
    /// item tower's vectors of the catalogue, built offline; `user_tower` maps the user block of
    /// the features (`2*dim+4`) to the index space and runs per request; `item_tower` maps an
    /// item's content embedding (`dim`) to the index space and embeds every later upload. Pass
    /// both towers or neither (then the index holds content embeddings). Items uploaded or
    /// taken down since the index was built are reconciled before the swap.
    #[pyo3(signature = (version, index, user_tower=None, item_tower=None))]
    fn set_retrieval(
        &self,
        py: Python<'_>,
        version: &str,
        index: &Bound<'_, PyHnswIndex>,
        user_tower: Option<&Bound<'_, PyMlpRanker>>,
        item_tower: Option<&Bound<'_, PyMlpRanker>>,
    ) -> PyResult<()> {
        if version.is_empty() {
            return Err(PyValueError::new_err("version must be a non-empty string"));
        }
        let next = Retrieval {
            version: version.to_owned(),
            user_tower: user_tower.map(|t| t.get().inner.clone()),
            item_tower: item_tower.map(|t| t.get().inner.clone()),
            index: index.get().inner.clone(),
        };
        let p = &self.inner;
        run_detached(py, move || p.set_retrieval(next))
    }

    /// The models served now: ``{"live": version, "shadows": [versions], "history": [versions
    /// rollback would restore, oldest first]}``.
    #[getter]
    fn model_versions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let snap = self.inner.rankers.snapshot();
        let d = PyDict::new(py);
        d.set_item("live", snap.live_version())?;
        d.set_item("shadows", snap.shadow_versions())?;
        d.set_item("history", self.inner.rankers.history())?;
        Ok(d)
    }

    /// Applies up to `max_entries` catalogue changes (uploads, take-downs) that other hosts
    /// sharing the Redis namespace published since the last call; returns ``{"applied", "own",
    /// "gap", "reloaded", "position"}``. ``gap`` is True when entries were trimmed from the
    /// stream before this host read them. With ``snapshot_dir``, such a gap reloads the newest
    /// snapshot there that includes them (``reloaded``) and the entries after it are applied.
    /// Without ``redis_url`` it does nothing. Raises ``OSError`` while Redis is unreachable
    /// (the position does not move).
    #[pyo3(signature = (max_entries=AnyInt::of(10_000), snapshot_dir=None),
           text_signature = "($self, max_entries=10000, snapshot_dir=None)")]
    fn sync_catalog<'py>(
        &self,
        py: Python<'py>,
        max_entries: AnyInt,
        snapshot_dir: Option<PathBuf>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let max = max_entries.bounded("max_entries", 1, 100_000)? as usize;
        let p = &self.inner;
        let r = run_detached(py, || p.sync_catalog(max, snapshot_dir.as_deref()))?;
        let d = PyDict::new(py);
        d.set_item("applied", r.applied)?;
        d.set_item("own", r.own)?;
        d.set_item("gap", r.gap)?;
        d.set_item("reloaded", r.reloaded)?;
        d.set_item("superseded", r.superseded)?;
        d.set_item("position", r.position)?;
        Ok(d)
    }

    /// Writes a host snapshot (index, item table, batch tier, catalogue-stream position) as a
    /// new directory under `dir`, atomically and checksummed, keeping the newest `keep`.
    /// Requests are served meanwhile; uploads wait only for the in-memory cut (``cut_ms``).
    #[pyo3(signature = (dir, keep=AnyInt::of(3)), text_signature = "($self, dir, keep=3)")]
    fn save_snapshot<'py>(
        &self,
        py: Python<'py>,
        dir: PathBuf,
        keep: AnyInt,
    ) -> PyResult<Bound<'py, PyDict>> {
        let keep = keep.bounded("keep", 1, 1000)? as usize;
        let p = &self.inner;
        let r = run_detached(py, || p.save_snapshot(&dir, keep))?;
        let d = PyDict::new(py);
        d.set_item("path", r.path.to_string_lossy())?;
        d.set_item("items", r.items)?;
        d.set_item("position", r.position)?;
        d.set_item("bytes", r.bytes)?;
        d.set_item("cut_ms", r.cut_ms)?;
        d.set_item("total_ms", r.total_ms)?;
        d.set_item("pruned", r.pruned)?;
        Ok(d)
    }

    /// Installs the newest snapshot under `dir` that verifies (older ones are tried when a
    /// newer one is corrupt or truncated: ``skipped`` lists why, ``stats()["snapshots"]``
    /// counts them) and sets the catalogue position to it; `sync_catalog` then replays the
    /// stream from there. ``KeyError`` when `dir` holds no snapshot, ``CorruptFileError`` when
    /// none verifies.
    fn load_snapshot<'py>(&self, py: Python<'py>, dir: PathBuf) -> PyResult<Bound<'py, PyDict>> {
        let p = &self.inner;
        let r = run_detached(py, || p.load_snapshot(&dir))?;
        let d = PyDict::new(py);
        d.set_item("path", r.path.to_string_lossy())?;
        d.set_item("items", r.items)?;
        d.set_item("position", r.position)?;
        d.set_item("consumed", r.consumed)?;
        d.set_item("skipped", r.skipped)?;
        d.set_item("load_ms", r.load_ms)?;
        Ok(d)
    }

    /// The manifest of the newest snapshot under `dir` (``None`` if there is none): path,
    /// dim, items, position, created_ms, retrieval_version. Its data files are verified only
    /// by `load_snapshot`.
    #[staticmethod]
    fn latest_snapshot<'py>(py: Python<'py>, dir: PathBuf) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some((path, m)) = run_detached(py, || snapfiles::newest_manifest(&dir))? else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("path", path.to_string_lossy())?;
        d.set_item("dim", m.dim)?;
        d.set_item("items", m.items)?;
        d.set_item("position", m.position)?;
        d.set_item("consumed", m.consumed)?;
        d.set_item("created_ms", m.created_ms)?;
        d.set_item("origin", m.origin)?;
        d.set_item("retrieval_version", m.retrieval_version)?;
        Ok(Some(d))
    }

    /// ``(live items, digest)``: an order-independent xxh3 digest of the live catalogue (ids,
    /// topics, creators); two hosts with equal pairs serve the same item set.
    fn catalog_digest(&self, py: Python<'_>) -> (usize, u64) {
        let p = &self.inner;
        py.detach(|| p.catalog_digest())
    }

    /// The version of the retrieval snapshot served ("content" until `set_retrieval`).
    #[getter]
    fn retrieval_version(&self) -> String {
        self.inner.retrieval().version.clone()
    }

    /// Routes the users of `variant` in experiment `layer` to the shadow model `version`
    /// (``None`` removes the route). Exploration slots are untouched: they are carved before
    /// routing, and their frozen predictions stay the live model's.
    #[pyo3(signature = (layer, variant, version=None))]
    fn set_route(&self, layer: &str, variant: &str, version: Option<&str>) -> PyResult<()> {
        self.inner.set_route(layer, variant, version).map_err(to_py)
    }

    /// The experiment routes: a list of ``(layer, variant, version)``.
    #[getter]
    fn routes(&self) -> Vec<(String, String, String)> {
        self.inner
            .routes()
            .iter()
            .map(|r| (r.layer.clone(), r.variant.clone(), r.version.clone()))
            .collect()
    }

    /// Adds a shadow model: it scores every served row (logged, never served). Refused when
    /// it predicts other tasks than the live model and the event log record.
    fn add_shadow(&self, ranker: &Bound<'_, PyMlpRanker>) -> PyResult<()> {
        self.inner
            .add_shadow(ranker.get().inner.clone())
            .map_err(to_py)
    }

    /// Removes shadow `version` (it stops scoring) and any experiment route to it.
    fn remove_shadow(&self, version: &str) -> PyResult<()> {
        self.inner.remove_shadow(version).map_err(to_py)
    }

    /// Makes shadow `version` the live model (the old live model is kept for `rollback`).
    fn promote(&self, version: &str) -> PyResult<()> {
        self.inner.promote(version).map_err(to_py)
    }

    /// Undoes the last `promote`; returns the version that is live again.
    ///
    /// The demoted model becomes a shadow again (it keeps being scored and logged). Atomic:
    /// running requests finish on the models they started with. Raises ValueError when no model
    /// has been promoted ("nothing to roll back").
    fn rollback(&self) -> PyResult<String> {
        self.inner.rankers.rollback().map_err(to_py)
    }

    /// The user's token: `hex(HMAC-SHA256(user_token_key, user_id)[:16])`, 32 hex chars.
    ///
    /// The same token this pipeline writes to `FeedResponse.user_token` and to every log row;
    /// join it to a raw id only through the vault (`fyp_core.vault`).
    fn user_token(&self, user_id: &str) -> String {
        self.inner.user_token(user_id)
    }

    /// For each item id, when it first reached a candidate set (seconds), or None.
    fn first_candidate_times(&self, ids: &Bound<'_, PyAny>) -> PyResult<Vec<Option<f64>>> {
        let ids = u64_vector(ids, "ids")?;
        let items = self.inner.items.read();
        Ok(ids
            .as_slice()?
            .iter()
            .map(|&id| items.slot_of(id).and_then(|s| items.first_candidate_ts(s)))
            .collect())
    }

    /// Counters since construction, as a dict.
    ///
    /// `requests`, `slots`, `exploration_slots`, `fresh_slots`, `cold_starts`,
    /// `relaxed_responses`, `fresh_retrieval_rate` (share of requests with a fresh candidate),
    /// `index_items`, `store_items`, `users`, `log_rejected` / `log_rows_rejected` (submissions
    /// and rows the event log refused), `engagements_on_removed`, `impressions_on_removed`,
    /// `routed_requests`, `shadows_skipped`; with an event log also `log_queue_depth`,
    /// `log_dropped`, `log_not_durable`; with `redis_url` a `redis` dict (reads, errors,
    /// fallbacks, catalogue sync counters).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.inner.stats;
        let d = PyDict::new(py);
        let req = s.requests.load(Relaxed);
        let slots = s.slots.load(Relaxed);
        d.set_item("requests", req)?;
        d.set_item("slots", slots)?;
        d.set_item("exploration_slots", s.exploration_slots.load(Relaxed))?;
        d.set_item("fresh_slots", s.fresh_slots.load(Relaxed))?;
        d.set_item("cold_starts", s.cold_starts.load(Relaxed))?;
        d.set_item("relaxed_responses", s.relaxed_responses.load(Relaxed))?;
        let fr = s.requests_with_fresh_candidates.load(Relaxed) as f64 / (req.max(1)) as f64;
        d.set_item("fresh_retrieval_rate", fr)?;
        d.set_item("index_items", self.inner.index().len())?;
        d.set_item("store_items", self.inner.items.read().n_live())?;
        d.set_item("users", self.inner.users.len())?;
        d.set_item("log_rejected", s.log_rejected.load(Relaxed))?;
        d.set_item("log_rows_rejected", s.log_rows_rejected.load(Relaxed))?;
        d.set_item(
            "engagements_on_removed",
            s.engagements_on_removed.load(Relaxed),
        )?;
        d.set_item(
            "impressions_on_removed",
            s.impressions_on_removed.load(Relaxed),
        )?;
        d.set_item("routed_requests", s.routed_requests.load(Relaxed))?;
        d.set_item("shadows_skipped", s.shadows_skipped.load(Relaxed))?;
        if let Some(log) = self.inner.event_log() {
            let st = log.stats();
            d.set_item("log_queue_depth", st.queue_depth)?;
            d.set_item("log_dropped", st.dropped.iter().sum::<u64>())?;
            d.set_item("log_not_durable", st.not_durable)?;
        }
        d.set_item(
            "snapshots",
            snapshot_stats(py, self.inner.snapshot_state())?,
        )?;
        if let Some(t) = self.inner.shared_tier() {
            let st = t.stats();
            let r = PyDict::new(py);
            r.set_item("available", st.available)?;
            r.set_item("reads", st.reads)?;
            r.set_item("read_errors", st.read_errors)?;
            r.set_item("writes", st.writes)?;
            r.set_item("write_errors", st.write_errors)?;
            r.set_item("skipped_while_down", st.skipped_while_down)?;
            r.set_item("fallbacks", s.shared_fallbacks.load(Relaxed))?;
            r.set_item("write_failures", s.shared_write_failures.load(Relaxed))?;
            let [published, publish_failures, applied, gaps, superseded, republished, dropped] =
                self.inner.catalog_stats();
            r.set_item("catalog_pending", self.inner.catalog_pending())?;
            r.set_item("catalog_republished", republished)?;
            r.set_item("catalog_pending_dropped", dropped)?;
            r.set_item("catalog_published", published)?;
            r.set_item("catalog_publish_failures", publish_failures)?;
            r.set_item("catalog_applied", applied)?;
            r.set_item("catalog_gaps", gaps)?;
            r.set_item("catalog_superseded", superseded)?;
            r.set_item("served_from_shared", s.shared_reads.load(Relaxed))?;
            d.set_item("redis", r)?;
        }
        Ok(d)
    }

    /// Flushes and closes the attached event log (if any); safe to call twice.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(log) = self.inner.event_log() {
            let log = log.clone();
            run_detached(py, move || log.close())?;
        }
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "FeedPipeline(items={}, index={})",
            self.inner.items.read().n_live(),
            self.inner.index().len()
        )
    }
}

fn snapshot_stats<'py>(py: Python<'py>, s: &SnapshotState) -> PyResult<Bound<'py, PyDict>> {
    use std::sync::atomic::Ordering::Relaxed;
    let d = PyDict::new(py);
    d.set_item("written", s.written.load(Relaxed))?;
    d.set_item("write_failures", s.write_failures.load(Relaxed))?;
    d.set_item("loads", s.loads.load(Relaxed))?;
    d.set_item("fallbacks", s.fallbacks.load(Relaxed))?;
    d.set_item("gap_reloads", s.gap_reloads.load(Relaxed))?;
    d.set_item("gap_reload_failures", s.gap_reload_failures.load(Relaxed))?;
    d.set_item("last_cut_ms", f64::from_bits(s.last_cut_ms.load(Relaxed)))?;
    d.set_item("last_error", s.last_error.lock().clone())?;
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyFeedPipeline>()?;
    m.add_class::<PyFeedResponse>()
}
