//! Bindings for the feature store's offline half (core: `fyp_core::serve::{features, replay}`):
//! the feature registry and the point-in-time replay behind `fyp_core.features.training_set`.

use crate::convert::{f32_matrix, f32_vector, str_list, u64_vector};
use crate::errors::{run_interruptible, to_py};
use crate::pipeline::item_infos;
use fyp_core::eventlog::{read_feature_events, UserTokenizer};
use fyp_core::serve::features::{columns, feature_set_version, registry};
use fyp_core::serve::pipeline::impression_id;
use fyp_core::serve::replay::{order_events, Replayer};
use fyp_core::serve::store::{BatchTier, UserStore};
use numpy::{IntoPyArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::collections::HashSet;
use std::path::PathBuf;

fn some<'py>(o: Option<&Bound<'py, PyAny>>) -> Option<Bound<'py, PyAny>> {
    o.filter(|o| !o.is_none()).cloned()
}

/// Optional batch-tier arrays -> a `BatchTier`; `key` maps a user id to the store's user key.
pub(crate) fn batch_from_py(
    version: &str,
    as_of: f64,
    dim: usize,
    user_ids: Option<&Bound<'_, PyAny>>,
    user_embeddings: Option<&Bound<'_, PyAny>>,
    creator_ids: Option<&Bound<'_, PyAny>>,
    creator_authority: Option<&Bound<'_, PyAny>>,
    key: impl Fn(&str) -> u64,
) -> PyResult<BatchTier> {
    let (users, emb) = match (some(user_ids), some(user_embeddings)) {
        (None, None) => (vec![], vec![]),
        (Some(u), Some(e)) => {
            let users = str_list(&u, "user_ids")?;
            let m = f32_matrix(&e, "user_embeddings")?;
            if m.shape()[0] != users.len() || (!users.is_empty() && m.shape()[1] != dim) {
                return Err(PyValueError::new_err(format!(
                    "user_embeddings is {:?}; expected ({}, {dim}): one row per user id, embedding dim {dim}",
                    m.shape(),
                    users.len()
                )));
            }
            let keys: Vec<u64> = users.iter().map(|u| key(u)).collect();
            (keys, m.as_slice()?.to_vec())
        }
        _ => {
            return Err(PyValueError::new_err(
                "pass user_ids and user_embeddings together",
            ))
        }
    };
    let (creators, auth) = match (some(creator_ids), some(creator_authority)) {
        (None, None) => (vec![], vec![]),
        (Some(c), Some(a)) => (
            u64_vector(&c, "creator_ids")?.as_slice()?.to_vec(),
            f32_vector(&a, "creator_authority")?.as_slice()?.to_vec(),
        ),
        _ => {
            return Err(PyValueError::new_err(
                "pass creator_ids and creator_authority together",
            ))
        }
    };
    BatchTier::new(version, as_of, dim, &users, &emb, &creators, &auth).map_err(to_py)
}

/// The feature registry: one dict per spec (name, tier, version, per_dim, categorical, doc).
#[pyfunction]
fn feature_registry<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for s in registry() {
        let d = PyDict::new(py);
        d.set_item("name", s.name)?;
        d.set_item("tier", s.tier.name())?;
        d.set_item("version", s.version)?;
        d.set_item("per_dim", s.per_dim)?;
        d.set_item("categorical", s.categorical)?;
        d.set_item("doc", s.doc)?;
        out.append(d)?;
    }
    Ok(out)
}

/// Column names for embedding dim `dim` with their spec name, tier and categorical flag.
#[pyfunction]
fn feature_columns(dim: usize) -> Vec<(String, &'static str, &'static str, bool)> {
    columns(dim)
        .into_iter()
        .map(|(n, s)| (n, s.name, s.tier.name(), s.categorical))
        .collect()
}

/// `feature_set_version(dim)`: the version string logged with served vectors.
#[pyfunction(name = "feature_set_version")]
fn py_feature_set_version(dim: usize) -> String {
    feature_set_version(dim)
}

/// The batch snapshots a changelog may switch to (`training_set(batches=...)`): dicts with a
/// `version` and the batch arrays, keyed like the pipeline (by the users' HMAC tokens).
fn batch_snapshots(
    batches: Vec<Bound<'_, PyDict>>,
    dim: usize,
    tokens: &UserTokenizer,
) -> PyResult<Vec<BatchTier>> {
    batches
        .iter()
        .map(|b| {
            let get = |k: &str| b.get_item(k).ok().flatten().filter(|v| !v.is_none());
            let version: String = get("version")
                .ok_or_else(|| PyValueError::new_err("each batch needs a 'version'"))?
                .extract()?;
            let (u, ue) = (get("user_ids"), get("user_embeddings"));
            let (c, ca) = (get("creator_ids"), get("creator_authority"));
            batch_from_py(
                &version,
                0.0,
                dim,
                u.as_ref(),
                ue.as_ref(),
                c.as_ref(),
                ca.as_ref(),
                |u| UserStore::key_of_token(&tokens.token(u)),
            )
        })
        .collect()
}

/// Replays `feature_events` files through the serving feature definitions (see
/// `fyp_core.features.training_set`, which calls this). Returns a dict of numpy arrays.
#[pyfunction]
#[pyo3(signature = (paths, user_token_key, item_ids, item_embeddings, topics, creators,
                    categories=None, upload_ts=None, user_ids=None, user_embeddings=None,
                    creator_ids=None, creator_authority=None, history_len=50,
                    counter_windows=(3600.0, 86400.0), request_ids=None, batches=None))]
fn replay_features<'py>(
    py: Python<'py>,
    paths: Vec<PathBuf>,
    user_token_key: &[u8],
    item_ids: &Bound<'py, PyAny>,
    item_embeddings: &Bound<'py, PyAny>,
    topics: &Bound<'py, PyAny>,
    creators: &Bound<'py, PyAny>,
    categories: Option<&Bound<'py, PyAny>>,
    upload_ts: Option<&Bound<'py, PyAny>>,
    user_ids: Option<&Bound<'py, PyAny>>,
    user_embeddings: Option<&Bound<'py, PyAny>>,
    creator_ids: Option<&Bound<'py, PyAny>>,
    creator_authority: Option<&Bound<'py, PyAny>>,
    history_len: usize,
    counter_windows: (f64, f64),
    request_ids: Option<&Bound<'py, PyAny>>,
    batches: Option<Vec<Bound<'py, PyDict>>>,
) -> PyResult<Bound<'py, PyDict>> {
    let emb = f32_matrix(item_embeddings, "item_embeddings")?;
    let dim = emb.shape()[1];
    let infos = item_infos(item_ids, topics, creators, categories, upload_ts, 0.0)?;
    if emb.shape()[0] != infos.len() {
        return Err(PyValueError::new_err(format!(
            "item_embeddings has {} rows, item_ids has {}",
            emb.shape()[0],
            infos.len()
        )));
    }
    // the log keys users by their HMAC token: the batch tier is keyed the same way here
    let tokens = UserTokenizer::new(user_token_key).map_err(to_py)?;
    let batch = batch_from_py(
        "replay",
        0.0,
        dim,
        user_ids,
        user_embeddings,
        creator_ids,
        creator_authority,
        |u| UserStore::key_of_token(&tokens.token(u)),
    )?;
    let snapshots = batch_snapshots(batches.unwrap_or_default(), dim, &tokens)?;
    let wanted: Option<HashSet<String>> = request_ids
        .filter(|r| !r.is_none())
        .map(|r| str_list(r, "request_ids").map(|v| v.into_iter().collect()))
        .transpose()?;
    let e = emb.as_slice()?;
    let windows = [counter_windows.0, counter_windows.1];
    let (rows, events) = run_interruptible(py, |cancel| {
        let mut events = Vec::new();
        for p in &paths {
            cancel.check("reading the feature events")?;
            events.extend(read_feature_events(p)?);
        }
        order_events(&mut events);
        let r = Replayer::new(batch, history_len, windows)?.with_snapshots(snapshots)?;
        r.load_items(&infos, e)?;
        let emit: Vec<bool> = events
            .iter()
            .map(|ev| wanted.as_ref().is_none_or(|w| w.contains(&ev.request_id)))
            .collect();
        Ok((r.run_until(&events, &emit, cancel)?, events))
    })?;
    rows_dict(py, rows, &events, dim)
}

/// The replayed rows as the dict `training_set` reads (numpy arrays and lists).
fn rows_dict<'py>(
    py: Python<'py>,
    rows: fyp_core::serve::replay::ReplayRows,
    events: &[fyp_core::eventlog::FeatureEvent],
    dim: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let n = rows.item_id.len();
    let d = PyDict::new(py);
    let feats = numpy::ndarray::Array2::from_shape_vec((n, rows.width), rows.features)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    d.set_item("features", feats.into_pyarray(py))?;
    let ev = |f: &dyn Fn(&fyp_core::eventlog::FeatureEvent) -> String| -> Vec<String> {
        rows.event.iter().map(|&i| f(&events[i as usize])).collect()
    };
    d.set_item("request_id", ev(&|e| e.request_id.clone()))?;
    d.set_item("user_token", ev(&|e| e.user_token.clone()))?;
    let imp: Vec<String> = rows
        .event
        .iter()
        .zip(&rows.position)
        .map(|(&i, &p)| {
            let e = &events[i as usize];
            impression_id(&e.request_id, &e.user_token, p as usize)
        })
        .collect();
    d.set_item("impression_id", imp)?;
    let ts: Vec<i64> = rows
        .event
        .iter()
        .map(|&i| events[i as usize].ts_us)
        .collect();
    d.set_item("ts_us", ts.into_pyarray(py))?;
    d.set_item("item_id", rows.item_id.into_pyarray(py))?;
    d.set_item("position", rows.position.into_pyarray(py))?;
    d.set_item("missing_items", rows.missing_items)?;
    d.set_item("events_on_removed", rows.events_on_removed)?;
    d.set_item("n_events", events.len())?;
    d.set_item(
        "feature_names",
        fyp_core::serve::features::feature_names(dim),
    )?;
    d.set_item("feature_set_version", feature_set_version(dim))?;
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(feature_registry, m)?)?;
    m.add_function(wrap_pyfunction!(feature_columns, m)?)?;
    m.add_function(wrap_pyfunction!(py_feature_set_version, m)?)?;
    m.add_function(wrap_pyfunction!(replay_features, m)?)
}
