//! Binding for `fyp_core.TrafficSplit` (core: `fyp_core::split`).

use crate::convert::{config_value, i64_vector, str_arg};
use crate::errors::{run_detached, to_py};
use fyp_core::split::{layers_from_value, Layer, TrafficSplit};
use numpy::{IntoPyArray, PyArray1};

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Deterministic traffic assignment: which feed slots explore, and experiment buckets.
///
/// `explore_rate` in [0, 1] is the share of slots given to uniform exploration; `salt`
/// (non-empty) keys every hash; `layers` (optional) are experiments, either
/// `{layer: {variant: (start, end)}}` or `[{"name": layer, "variants": {variant: (start, end)}}]`,
/// with bucket ranges `0 <= start < end <= 10000` that do not overlap within a layer.
/// A slot is exploration when `unit(user_token, request_id, slot) < explore_rate`.
/// Exploration is carved first; layers partition the ranked traffic only.
/// Raises ValueError for a rate outside [0, 1], an empty salt, or malformed, duplicate or
/// overlapping layers. Immutable: safe to share between threads.
#[pyclass(name = "TrafficSplit", module = "fyp_core", frozen)]
pub struct PyTrafficSplit {
    pub inner: TrafficSplit,
}

/// Layers as the core parses them (`fyp_core::split::layers_from_value`).
fn parse_layers(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Layer>> {
    let Some(obj) = obj else { return Ok(vec![]) };
    layers_from_value(&config_value(obj, 0)?).map_err(to_py)
}

#[pymethods]
impl PyTrafficSplit {
    #[new]
    #[pyo3(signature = (explore_rate=0.05, salt="fyp", layers=None))]
    fn new(explore_rate: f64, salt: &str, layers: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let layers = parse_layers(layers)?;
        TrafficSplit::new(explore_rate, salt, layers)
            .map(|inner| Self { inner })
            .map_err(to_py)
    }

    /// Share of slots that are exploration, in [0, 1].
    #[getter]
    fn explore_rate(&self) -> f64 {
        self.inner.explore_rate()
    }

    /// The salt that keys every exploration and bucket hash.
    #[getter]
    fn salt(&self) -> &str {
        self.inner.salt()
    }

    /// The configured layers as `{layer: {variant: (start, end)}}`.
    #[getter]
    fn layers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for l in self.inner.layers() {
            let d = PyDict::new(py);
            for v in &l.variants {
                d.set_item(&v.name, (v.start, v.end))?;
            }
            out.set_item(&l.name, d)?;
        }
        Ok(out)
    }

    /// The uniform number in [0, 1) that decides one slot.
    ///
    /// `user_token` is the (HMAC) user token, `request_id` the request, `slot` the 0-based
    /// position in the feed. Returns `(xxh3_64(key) >> 11) * 2**-53` with
    /// `key = salt + "\x1f" + user_token + "\x1f" + request_id + "\x1f" + str(slot)` (seed 0):
    /// a pure function of its arguments and the salt.
    fn unit(&self, user_token: &str, request_id: &str, slot: i64) -> f64 {
        self.inner.unit(user_token, request_id, slot)
    }

    /// True when this slot is an exploration slot: `unit(user_token, request_id, slot) < explore_rate`.
    ///
    /// Deterministic (same arguments, same answer, in any process); no experiment layer
    /// changes it. For many slots at once use `assign_batch`.
    fn is_exploration(&self, user_token: &str, request_id: &str, slot: i64) -> bool {
        self.inner.is_exploration(user_token, request_id, slot)
    }

    /// Vectorised `is_exploration`: each argument is one value (broadcast) or one per row.
    fn assign_batch<'py>(
        &self,
        py: Python<'py>,
        user_tokens: &Bound<'py, PyAny>,
        request_ids: &Bound<'py, PyAny>,
        slots: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<bool>>> {
        let users = str_arg(user_tokens, "user_tokens")?;
        let reqs = str_arg(request_ids, "request_ids")?;
        let slots = i64_vector(slots, "slots")?;
        let slots = slots.as_slice()?;
        let inner = &self.inner;
        let out = run_detached(py, || {
            inner.assign_batch(users.as_keys(), reqs.as_keys(), slots)
        })?;
        Ok(out.into_pyarray(py))
    }

    /// The user's experiment bucket in `layer`: an int in [0, 10000).
    ///
    /// `xxh3_64(salt + "\x1f" + "layer" + "\x1f" + layer + "\x1f" + user_token) % 10000`:
    /// sticky per user, independent of request and slot. The layer need not be configured.
    fn bucket(&self, layer: &str, user_token: &str) -> u32 {
        self.inner.bucket(layer, user_token)
    }

    /// The user's variant in a configured layer, or None outside every range (KeyError for an
    /// unknown layer). Applies to ranked slots only.
    fn variant(&self, layer: &str, user_token: &str) -> PyResult<Option<String>> {
        self.inner
            .variant(layer, user_token)
            .map(|v| v.map(str::to_owned))
            .map_err(to_py)
    }

    /// `{layer: variant or None}` for every configured layer.
    fn variants<'py>(&self, py: Python<'py>, user_token: &str) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (l, v) in self.inner.variants(user_token) {
            out.set_item(l, v)?;
        }
        Ok(out)
    }

    fn __repr__(&self) -> String {
        format!(
            "TrafficSplit(explore_rate={}, salt={:?}, layers={})",
            self.inner.explore_rate(),
            self.inner.salt(),
            self.inner.layers().len()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTrafficSplit>()
}
