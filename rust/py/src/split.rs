//! Binding for `fyp_core.TrafficSplit` (core: `fyp_core::split`).

use crate::convert::{i64_vector, str_arg};
use crate::errors::{run_detached, to_py};
use fyp_core::split::{Layer, TrafficSplit, Variant};
use numpy::{IntoPyArray, PyArray1};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

#[pyclass(name = "TrafficSplit", module = "fyp_core", frozen)]
pub struct PyTrafficSplit {
    pub inner: TrafficSplit,
}

fn parse_variant(layer: &str, name: String, range: &Bound<'_, PyAny>) -> PyResult<Variant> {
    let pair: Vec<i64> = range.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "layer {layer:?} variant {name:?}: range must be a pair [start, end) of ints"
        ))
    })?;
    let [start, end] = pair[..] else {
        return Err(PyValueError::new_err(format!(
            "layer {layer:?} variant {name:?}: range must have exactly 2 ints [start, end), got {}",
            pair.len()
        )));
    };
    let ok = |x: i64| u32::try_from(x).ok();
    match (ok(start), ok(end)) {
        (Some(start), Some(end)) => Ok(Variant { name, start, end }),
        _ => Err(PyValueError::new_err(format!(
            "layer {layer:?} variant {name:?} has bucket range [{start}, {end}); ranges must satisfy 0 <= start < end <= 10000"
        ))),
    }
}

/// Layers as `[{"name": str, "variants": {variant: [start, end), ...}}, ...]`, or a dict
/// `{layer: {variant: [start, end)}}`.
fn parse_layers(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Layer>> {
    let Some(obj) = obj else { return Ok(vec![]) };
    if obj.is_none() {
        return Ok(vec![]);
    }
    let mut out = Vec::new();
    let parse_variants = |lname: &str, v: &Bound<'_, PyAny>| -> PyResult<Vec<Variant>> {
        let d = v.cast::<PyDict>().map_err(|_| {
            PyTypeError::new_err(format!(
                "layer {lname:?}: variants must be a dict {{variant_name: [start, end)}}"
            ))
        })?;
        d.iter()
            .map(|(k, r)| {
                let name: String = k.extract().map_err(|_| {
                    PyTypeError::new_err(format!("layer {lname:?}: variant names must be str"))
                })?;
                parse_variant(lname, name, &r)
            })
            .collect()
    };
    if let Ok(d) = obj.cast::<PyDict>() {
        for (k, v) in d.iter() {
            let name: String = k
                .extract()
                .map_err(|_| PyTypeError::new_err("layer names must be str"))?;
            let variants = parse_variants(&name, &v)?;
            out.push(Layer { name, variants });
        }
        return Ok(out);
    }
    let list = obj.cast::<PyList>().map_err(|_| {
        PyTypeError::new_err(
            "layers must be a list of {'name': str, 'variants': {name: [start, end)}} or a dict",
        )
    })?;
    for item in list.iter() {
        let d = item.cast::<PyDict>().map_err(|_| {
            PyTypeError::new_err("each layer must be a dict with keys 'name' and 'variants'")
        })?;
        for key in d.keys() {
            let k: String = key.extract().unwrap_or_default();
            if k != "name" && k != "variants" {
                return Err(PyValueError::new_err(format!(
                    "unknown layer key {k:?}; valid keys are 'name' and 'variants'"
                )));
            }
        }
        let name: String = match d.get_item("name")? {
            Some(n) => n
                .extract()
                .map_err(|_| PyTypeError::new_err("layer 'name' must be str"))?,
            None => return Err(PyValueError::new_err("a layer is missing its 'name'")),
        };
        let variants = match d.get_item("variants")? {
            Some(v) => parse_variants(&name, &v)?,
            None => {
                return Err(PyValueError::new_err(format!(
                    "layer {name:?} is missing 'variants'"
                )))
            }
        };
        out.push(Layer { name, variants });
    }
    Ok(out)
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

    #[getter]
    fn explore_rate(&self) -> f64 {
        self.inner.explore_rate()
    }

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

    fn unit(&self, user_token: &str, request_id: &str, slot: i64) -> f64 {
        self.inner.unit(user_token, request_id, slot)
    }

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
