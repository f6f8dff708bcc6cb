//! Binding for `fyp_core.Reranker`, `RerankPolicy`, `RerankResult`, `dpp_greedy` and
//! `mmr_greedy` (core: `fyp_core::rerank`). Policies arrive as dicts or TOML, are converted to
//! the core's config `Value` and parsed and validated by the core (`Policy::apply`).

use crate::convert::{bool_vector, config_value, f32_matrix, f32_vector, u64_vector};
use crate::errors::{run_detached, to_py};
use fyp_core::rerank::{dpp_greedy, mmr_greedy, Candidates, Policy, Relaxed, Reranker};
use numpy::PyUntypedArrayMethods;
use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::Arc;

fn bad(msg: String) -> PyErr {
    PyValueError::new_err(msg)
}

/// Applies the keys of a mapping to `p` (parsed and validated in the core).
fn apply(p: &mut Policy, d: &Bound<'_, PyAny>) -> PyResult<()> {
    if !d.hasattr("items")? {
        return Err(PyTypeError::new_err(
            "a policy must be a dict (or RerankPolicy)",
        ));
    }
    p.apply(&config_value(d, 0)?).map_err(to_py)
}

/// A dict, a mapping or a RerankPolicy, as a validated core policy.
fn to_policy(obj: &Bound<'_, PyAny>) -> PyResult<Policy> {
    if let Ok(p) = obj.cast::<PyRerankPolicy>() {
        return Ok(p.get().inner.clone());
    }
    let mut p = Policy::default();
    apply(&mut p, obj)?;
    Ok(p)
}

fn toml_module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    py.import("tomllib").or_else(|_| {
        py.import("tomli").map_err(|_| {
            PyValueError::new_err(
                "reading TOML needs Python >= 3.11 (tomllib) or the tomli package",
            )
        })
    })
}

fn from_toml_text(py: Python<'_>, text: &str, table: Option<&str>) -> PyResult<Policy> {
    let mut doc = toml_module(py)?.call_method1("loads", (text,))?;
    if let Some(table) = table {
        for part in table.split('.') {
            doc = doc
                .cast::<PyDict>()
                .ok()
                .and_then(|d| d.get_item(part).ok().flatten())
                .ok_or_else(|| bad(format!("the TOML document has no table [{table}]")))?;
        }
    }
    if !doc.is_instance_of::<PyDict>() {
        return Err(bad(format!(
            "[{}] is not a TOML table",
            table.unwrap_or_default()
        )));
    }
    to_policy(&doc)
}

/// A validated re-ranking policy (immutable; build a new one to change it).
#[pyclass(name = "RerankPolicy", module = "fyp_core", frozen)]
pub struct PyRerankPolicy {
    pub inner: Policy,
}

#[pymethods]
impl PyRerankPolicy {
    #[new]
    #[pyo3(signature = (policy=None, /, **keys))]
    fn new(policy: Option<&Bound<'_, PyAny>>, keys: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let mut p = match policy {
            Some(obj) if !obj.is_none() => to_policy(obj)?,
            _ => Policy::default(),
        };
        if let Some(keys) = keys {
            apply(&mut p, keys.as_any())?;
        }
        p.validate().map_err(to_py)?;
        Ok(Self { inner: p })
    }

    /// Parses a TOML document (the policy keys at top level, or in the table named by
    /// `table`, dotted for nesting).
    #[staticmethod]
    #[pyo3(signature = (text, table=None))]
    fn from_toml(py: Python<'_>, text: &str, table: Option<&str>) -> PyResult<Self> {
        Ok(Self {
            inner: from_toml_text(py, text, table)?,
        })
    }

    /// Reads a TOML file (see `from_toml`).
    #[staticmethod]
    #[pyo3(signature = (path, table=None))]
    fn load(py: Python<'_>, path: std::path::PathBuf, table: Option<&str>) -> PyResult<Self> {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| to_py(fyp_core::Error::Io(format!("{}: {e}", path.display()))))?;
        Self::from_toml(py, &text, table)
    }

    /// Every key with its value (defaults filled in), as accepted by the constructor.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let p = &self.inner;
        let d = PyDict::new(py);
        d.set_item("window", p.window)?;
        d.set_item("max_topic_share", p.max_topic_share)?;
        d.set_item("max_per_creator", p.max_per_creator)?;
        d.set_item("blocked_categories", p.blocked_categories.clone())?;
        let caps = PyDict::new(py);
        for c in &p.category_caps {
            let spec = PyDict::new(py);
            spec.set_item("share", c.share)?;
            spec.set_item("safety", c.safety)?;
            caps.set_item(c.category, spec)?;
        }
        d.set_item("category_caps", caps)?;
        d.set_item("fresh_floor", p.fresh_floor)?;
        d.set_item("diversity", p.diversity.as_str())?;
        d.set_item("mmr_lambda", p.mmr_lambda)?;
        d.set_item("dpp_alpha", p.dpp_alpha)?;
        Ok(d)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("RerankPolicy({})", self.to_dict(py)?.repr()?))
    }
}

/// What a re-rank produced: the feed order and which rules gave way.
#[pyclass(name = "RerankResult", module = "fyp_core", frozen)]
pub struct PyRerankResult {
    indices: Py<PyArray1<i64>>,
    relaxed: Relaxed,
    shortfall: usize,
    diversity_fallback: Option<usize>,
}

#[pymethods]
impl PyRerankResult {
    /// Indices into the candidates, in feed order (int64).
    #[getter]
    fn indices<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        self.indices.bind(py).clone()
    }

    /// `{rule: count}` for each rule that gave way (empty when every rule held).
    #[getter]
    fn relaxed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (rule, count) in self.relaxed.iter() {
            d.set_item(rule.name(), count)?;
        }
        Ok(d)
    }

    /// `k - len(indices)`.
    #[getter]
    fn shortfall(&self) -> usize {
        self.shortfall
    }

    /// With DPP: the first slot filled by score once diversity was exhausted, else None.
    #[getter]
    fn diversity_fallback(&self) -> Option<usize> {
        self.diversity_fallback
    }

    fn __len__(&self, py: Python<'_>) -> usize {
        self.indices.bind(py).len()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "RerankResult(indices={}, relaxed={}, shortfall={}, diversity_fallback={:?})",
            self.indices.bind(py).repr()?,
            self.relaxed(py)?.repr()?,
            self.shortfall,
            self.diversity_fallback
        ))
    }
}

/// The policy re-ranker; share one between threads. `set_policy` swaps atomically.
#[pyclass(name = "Reranker", module = "fyp_core", frozen)]
pub struct PyReranker {
    pub inner: Arc<Reranker>,
}

/// The borrowed numpy inputs of one re-rank.
struct Inputs<'py> {
    scores: PyReadonlyArray1<'py, f32>,
    topics: PyReadonlyArray1<'py, u64>,
    creators: PyReadonlyArray1<'py, u64>,
    embeddings: Option<PyReadonlyArray2<'py, f32>>,
    categories: Option<PyReadonlyArray1<'py, u64>>,
    is_fresh: Option<PyReadonlyArray1<'py, bool>>,
}

fn given<'a, 'py>(o: Option<&'a Bound<'py, PyAny>>) -> Option<&'a Bound<'py, PyAny>> {
    o.filter(|x| !x.is_none())
}

impl<'py> Inputs<'py> {
    fn new(
        scores: &Bound<'py, PyAny>,
        topics: &Bound<'py, PyAny>,
        creators: &Bound<'py, PyAny>,
        embeddings: Option<&Bound<'py, PyAny>>,
        categories: Option<&Bound<'py, PyAny>>,
        is_fresh: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Self> {
        Ok(Inputs {
            scores: f32_vector(scores, "scores")?,
            topics: u64_vector(topics, "topics")?,
            creators: u64_vector(creators, "creators")?,
            embeddings: given(embeddings)
                .map(|e| f32_matrix(e, "embeddings"))
                .transpose()?,
            categories: given(categories)
                .map(|c| u64_vector(c, "categories"))
                .transpose()?,
            is_fresh: given(is_fresh)
                .map(|f| bool_vector(f, "is_fresh"))
                .transpose()?,
        })
    }

    fn candidates(&self) -> PyResult<Candidates<'_>> {
        let embeddings = match &self.embeddings {
            Some(e) => Some((e.as_slice()?, e.shape()[1])),
            None => None,
        };
        Ok(Candidates {
            scores: self.scores.as_slice()?,
            topics: self.topics.as_slice()?,
            creators: self.creators.as_slice()?,
            embeddings,
            categories: self.categories.as_ref().map(|c| c.as_slice()).transpose()?,
            is_fresh: self.is_fresh.as_ref().map(|c| c.as_slice()).transpose()?,
        })
    }
}

fn k_arg(k: i64) -> PyResult<usize> {
    usize::try_from(k)
        .ok()
        .filter(|&k| k >= 1)
        .ok_or_else(|| bad(format!("k must be >= 1, got {k}")))
}

fn to_i64(v: Vec<usize>) -> Vec<i64> {
    v.into_iter().map(|i| i as i64).collect()
}

impl PyReranker {
    fn run<'py>(
        &self,
        py: Python<'py>,
        scores: &Bound<'py, PyAny>,
        topics: &Bound<'py, PyAny>,
        creators: &Bound<'py, PyAny>,
        k: i64,
        embeddings: Option<&Bound<'py, PyAny>>,
        categories: Option<&Bound<'py, PyAny>>,
        is_fresh: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<fyp_core::rerank::RerankOutcome> {
        let k = k_arg(k)?;
        let inputs = Inputs::new(scores, topics, creators, embeddings, categories, is_fresh)?;
        let cands = inputs.candidates()?;
        let rr = &self.inner;
        run_detached(py, || rr.rerank(&cands, k))
    }
}

#[pymethods]
impl PyReranker {
    #[new]
    fn new(policy: &Bound<'_, PyAny>) -> PyResult<Self> {
        let p = to_policy(policy)?;
        Ok(Self {
            inner: Arc::new(Reranker::new(p).map_err(to_py)?),
        })
    }

    /// The current policy.
    #[getter]
    fn policy(&self) -> PyRerankPolicy {
        PyRerankPolicy {
            inner: self.inner.policy(),
        }
    }

    /// Validates `policy` and makes it current; requests already running keep the old one.
    fn set_policy(&self, policy: &Bound<'_, PyAny>) -> PyResult<()> {
        let p = to_policy(policy)?;
        self.inner.set_policy(p).map_err(to_py)
    }

    /// Indices into the candidates in feed order (int64, at most k).
    #[pyo3(signature = (scores, topics, creators, k, embeddings=None, categories=None, is_fresh=None))]
    fn rerank<'py>(
        &self,
        py: Python<'py>,
        scores: &Bound<'py, PyAny>,
        topics: &Bound<'py, PyAny>,
        creators: &Bound<'py, PyAny>,
        k: i64,
        embeddings: Option<&Bound<'py, PyAny>>,
        categories: Option<&Bound<'py, PyAny>>,
        is_fresh: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let out = self.run(
            py, scores, topics, creators, k, embeddings, categories, is_fresh,
        )?;
        Ok(to_i64(out.indices).into_pyarray(py))
    }

    /// Like `rerank`, with which rules were relaxed and how often.
    #[pyo3(signature = (scores, topics, creators, k, embeddings=None, categories=None, is_fresh=None))]
    fn rerank_detailed<'py>(
        &self,
        py: Python<'py>,
        scores: &Bound<'py, PyAny>,
        topics: &Bound<'py, PyAny>,
        creators: &Bound<'py, PyAny>,
        k: i64,
        embeddings: Option<&Bound<'py, PyAny>>,
        categories: Option<&Bound<'py, PyAny>>,
        is_fresh: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<PyRerankResult> {
        let out = self.run(
            py, scores, topics, creators, k, embeddings, categories, is_fresh,
        )?;
        Ok(PyRerankResult {
            indices: to_i64(out.indices).into_pyarray(py).unbind(),
            relaxed: out.relaxed,
            shortfall: out.shortfall,
            diversity_fallback: out.diversity_fallback,
        })
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("Reranker({})", self.policy().__repr__(py)?))
    }
}

/// Greedy DPP MAP (Chen, Zhang, Zhou 2018); see docs/rerank.md for the kernel and `eps`.
#[pyfunction]
#[pyo3(name = "dpp_greedy", signature = (scores, embeddings, k, alpha=1.0, eps=1e-10))]
fn py_dpp_greedy<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    embeddings: &Bound<'py, PyAny>,
    k: i64,
    alpha: f64,
    eps: f64,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let k = k_arg(k)?;
    let s = f32_vector(scores, "scores")?;
    let e = f32_matrix(embeddings, "embeddings")?;
    let dim = e.shape()[1];
    let (s, e) = (s.as_slice()?, e.as_slice()?);
    let out = run_detached(py, || dpp_greedy(s, e, dim, k, alpha, eps))?;
    Ok(to_i64(out).into_pyarray(py))
}

/// Maximal marginal relevance selection (cosine similarity of the embeddings).
#[pyfunction]
#[pyo3(name = "mmr_greedy", signature = (scores, embeddings, k, mmr_lambda=0.5))]
fn py_mmr_greedy<'py>(
    py: Python<'py>,
    scores: &Bound<'py, PyAny>,
    embeddings: &Bound<'py, PyAny>,
    k: i64,
    mmr_lambda: f64,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let k = k_arg(k)?;
    let s = f32_vector(scores, "scores")?;
    let e = f32_matrix(embeddings, "embeddings")?;
    let dim = e.shape()[1];
    let (s, e) = (s.as_slice()?, e.as_slice()?);
    let out = run_detached(py, || mmr_greedy(s, e, dim, k, mmr_lambda))?;
    Ok(to_i64(out).into_pyarray(py))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRerankPolicy>()?;
    m.add_class::<PyRerankResult>()?;
    m.add_class::<PyReranker>()?;
    m.add_function(wrap_pyfunction!(py_dpp_greedy, m)?)?;
    m.add_function(wrap_pyfunction!(py_mmr_greedy, m)?)?;
    Ok(())
}
