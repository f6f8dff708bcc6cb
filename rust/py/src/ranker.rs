//! Binding for `fyp_core.MlpRanker`, `fyp_core.RankerSet` and `fyp_core.assemble_features`
//! (core: `fyp_core::rank`). Converts arrays, releases the GIL around scoring, maps errors.

use std::sync::Arc;

use crate::convert::{f32_matrix, f32_vector, i64_vector, str_list};
use crate::errors::{run_detached, to_py};
use fyp_core::rank::{
    gemm, model_file, Activation, Assembly, DotFeature, Kernel, LayerSpec, Mlp, MlpConfig,
    OutputTransform, RankerSet, SetScores,
};
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

fn layer_spec(w: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>, what: &str) -> PyResult<LayerSpec> {
    let wa = f32_matrix(w, &format!("{what} weight"))?;
    let ba = f32_vector(b, &format!("{what} bias"))?;
    let shape = wa.shape();
    Ok(LayerSpec {
        weight: wa.as_slice()?.to_vec(),
        in_dim: shape[0],
        out_dim: shape[1],
        bias: ba.as_slice()?.to_vec(),
    })
}

fn seq<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!(
            "{name} must be a sequence, got str"
        )));
    }
    obj.try_iter()
        .map_err(|_| PyTypeError::new_err(format!("{name} must be a sequence")))?
        .collect()
}

fn outputs_arg(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<OutputTransform>>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    str_list(obj, "outputs")?
        .iter()
        .map(|s| OutputTransform::parse(s).map_err(to_py))
        .collect::<PyResult<Vec<_>>>()
        .map(Some)
}

fn kernel_arg(kernel: Option<&str>) -> PyResult<Option<Kernel>> {
    kernel.map(|k| Kernel::parse(k).map_err(to_py)).transpose()
}

fn to_2d<'py>(
    py: Python<'py>,
    v: Vec<f32>,
    n: usize,
    t: usize,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    PyArray1::from_vec(py, v).reshape([n, t])
}

type CrossPair<'py> = (Bound<'py, PyArray2<f32>>, Bound<'py, PyArray1<f32>>);

/// The dense multi-task MLP ranker (see docs/ranker.md).
#[pyclass(name = "MlpRanker", module = "fyp_core", frozen)]
pub struct PyMlpRanker {
    pub inner: Arc<Mlp>,
}

#[pymethods]
impl PyMlpRanker {
    #[new]
    #[pyo3(signature = (weights, biases, activation="relu", outputs=None, version="v0", *,
        task_names=None, cross_layers=None, input_schema=None, task_weights=None, kernel=None))]
    fn new(
        weights: &Bound<'_, PyAny>,
        biases: &Bound<'_, PyAny>,
        activation: &str,
        outputs: Option<&Bound<'_, PyAny>>,
        version: &str,
        task_names: Option<&Bound<'_, PyAny>>,
        cross_layers: Option<&Bound<'_, PyAny>>,
        input_schema: Option<Vec<(String, usize)>>,
        task_weights: Option<&Bound<'_, PyAny>>,
        kernel: Option<&str>,
    ) -> PyResult<Self> {
        let ws = seq(weights, "weights")?;
        let bs = seq(biases, "biases")?;
        if ws.len() != bs.len() {
            return Err(PyValueError::new_err(format!(
                "weights has {} layers, biases has {}; give one bias per layer",
                ws.len(),
                bs.len()
            )));
        }
        let layers = ws
            .iter()
            .zip(&bs)
            .enumerate()
            .map(|(i, (w, b))| layer_spec(w, b, &format!("layer {i}")))
            .collect::<PyResult<Vec<_>>>()?;
        let mut cross = vec![];
        if let Some(cl) = cross_layers.filter(|c| !c.is_none()) {
            for (i, pair) in seq(cl, "cross_layers")?.iter().enumerate() {
                let p = seq(pair, "cross_layers[i]")?;
                if p.len() != 2 {
                    return Err(PyValueError::new_err(format!(
                        "cross_layers[{i}] must be a pair (weight (d, d), bias (d,))"
                    )));
                }
                cross.push(layer_spec(&p[0], &p[1], &format!("cross layer {i}"))?);
            }
        }
        let task_names = task_names
            .filter(|t| !t.is_none())
            .map(|t| str_list(t, "task_names"))
            .transpose()?;
        let task_weights = task_weights
            .filter(|t| !t.is_none())
            .map(|t| f32_vector(t, "task_weights").and_then(|a| Ok(a.as_slice()?.to_vec())))
            .transpose()?;
        let cfg = MlpConfig {
            layers,
            cross,
            activation: Activation::parse(activation).map_err(to_py)?,
            outputs: outputs_arg(outputs)?,
            task_names,
            version: version.to_string(),
            input_schema,
            task_weights,
            kernel: kernel_arg(kernel)?,
        };
        Ok(Self {
            inner: Arc::new(Mlp::new(cfg).map_err(to_py)?),
        })
    }

    /// Scores rows of `features` (float32 `[n, input_dim]`) -> float32 `[n, n_tasks]`.
    fn predict<'py>(
        &self,
        py: Python<'py>,
        features: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let x = f32_matrix(features, "features")?;
        let (n, d) = (x.shape()[0], x.shape()[1]);
        let m = &self.inner;
        if d != m.input_dim() {
            return Err(PyValueError::new_err(format!(
                "features has {d} columns, the model expects {} (input_schema {:?})",
                m.input_dim(),
                m.input_schema()
            )));
        }
        let xs = x.as_slice()?;
        let out = run_detached(py, || m.predict(xs, n))?;
        to_2d(py, out, n, m.n_tasks())
    }

    /// Scores the candidates of one request: `user_features` (float32 `[du]`) is shared by every
    /// row of `item_features` (float32 `[n, input_dim - du]`); the user part of the first layer is
    /// computed once. Equal to `predict` on the concatenated rows.
    fn predict_request<'py>(
        &self,
        py: Python<'py>,
        user_features: &Bound<'py, PyAny>,
        item_features: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let u = f32_vector(user_features, "user_features")?;
        let x = f32_matrix(item_features, "item_features")?;
        let (n, di) = (x.shape()[0], x.shape()[1]);
        let m = &self.inner;
        let du = u.len();
        if du + di != m.input_dim() {
            return Err(PyValueError::new_err(format!(
                "user_features has {du} values and item_features {di} columns ({} in all), the model expects {}",
                du + di,
                m.input_dim()
            )));
        }
        let (us, xs) = (u.as_slice()?, x.as_slice()?);
        let out = run_detached(py, || m.predict_request(us, xs, n))?;
        to_2d(py, out, n, m.n_tasks())
    }

    /// Value model: `preds @ weights` (float32 `[n]`), with the ranker's current task weights
    /// unless `weights` is given.
    #[pyo3(signature = (preds, weights=None))]
    fn value<'py>(
        &self,
        py: Python<'py>,
        preds: &Bound<'py, PyAny>,
        weights: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let p = f32_matrix(preds, "preds")?;
        let (n, t) = (p.shape()[0], p.shape()[1]);
        let w: Vec<f32> = match weights.filter(|w| !w.is_none()) {
            Some(w) => f32_vector(w, "weights")?.as_slice()?.to_vec(),
            None => self.inner.task_weights().to_vec(),
        };
        if t != w.len() {
            return Err(PyValueError::new_err(format!(
                "preds has {t} columns, there are {} task weights",
                w.len()
            )));
        }
        let mut out = vec![0.0f32; n];
        fyp_core::rank::value_with(p.as_slice()?, n, &w, &mut out).map_err(to_py)?;
        Ok(PyArray1::from_vec(py, out))
    }

    /// The value-model weights (float32 `[n_tasks]`); assign to change them without reloading.
    #[getter]
    fn task_weights<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        PyArray1::from_vec(py, self.inner.task_weights().to_vec())
    }

    #[setter]
    fn set_task_weights(&self, weights: &Bound<'_, PyAny>) -> PyResult<()> {
        let w = f32_vector(weights, "task_weights")?.as_slice()?.to_vec();
        self.inner.set_task_weights(w).map_err(to_py)
    }

    /// The model version (stored in its model file; the pipeline stamps it on every frozen score).
    #[getter]
    fn version(&self) -> &str {
        self.inner.version()
    }
    /// Task names, one per output column (default `task_0`, `task_1`, ...).
    #[getter]
    fn task_names(&self) -> Vec<String> {
        self.inner.task_names().to_vec()
    }
    /// Output transform per task column: "identity", "sigmoid" or "softplus".
    #[getter]
    fn outputs(&self) -> Vec<&'static str> {
        self.inner.outputs().iter().map(|o| o.name()).collect()
    }
    /// Hidden-layer activation: "relu", "gelu" (exact erf) or "silu".
    #[getter]
    fn activation(&self) -> &'static str {
        self.inner.activation().name()
    }
    /// Number of input features (columns of `predict`'s `features`).
    #[getter]
    fn input_dim(&self) -> usize {
        self.inner.input_dim()
    }
    /// Number of tasks (columns of the predictions).
    #[getter]
    fn n_tasks(&self) -> usize {
        self.inner.n_tasks()
    }
    /// Named blocks of the input, `[(name, width)]`, widths summing to `input_dim` (default
    /// `[("features", input_dim)]`).
    #[getter]
    fn input_schema(&self) -> Vec<(String, usize)> {
        self.inner.input_schema().to_vec()
    }
    /// The GEMM kernel this model runs on: "avx512", "avx2" or "scalar".
    #[getter]
    fn kernel(&self) -> &'static str {
        self.inner.kernel().name()
    }
    /// Floating-point operations per candidate on the dense path (2 per multiply-add).
    #[getter]
    fn flops_per_row(&self) -> usize {
        self.inner.flops_per_row()
    }

    /// Copies of the layer weights, each float32 `(in, out)`.
    fn weights<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyArray2<f32>>>> {
        self.inner
            .layers()
            .iter()
            .map(|l| to_2d(py, l.weight().to_vec(), l.in_dim(), l.out_dim()))
            .collect()
    }

    /// Copies of the layer biases, each float32 `(out,)`.
    fn biases<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyArray1<f32>>> {
        self.inner
            .layers()
            .iter()
            .map(|l| PyArray1::from_vec(py, l.bias().to_vec()))
            .collect()
    }

    /// Copies of the DCN-v2 cross layers as `(weight (d, d), bias (d,))` pairs.
    fn cross_layers<'py>(&self, py: Python<'py>) -> PyResult<Vec<CrossPair<'py>>> {
        self.inner
            .cross_layers()
            .iter()
            .map(|l| {
                Ok((
                    to_2d(py, l.weight().to_vec(), l.in_dim(), l.out_dim())?,
                    PyArray1::from_vec(py, l.bias().to_vec()),
                ))
            })
            .collect()
    }

    /// The same model on another kernel ("auto", "avx512", "avx2", "scalar").
    fn with_kernel(&self, kernel: &str) -> PyResult<Self> {
        let k = Kernel::parse(kernel).map_err(to_py)?;
        Ok(Self {
            inner: Arc::new(self.inner.with_kernel(k).map_err(to_py)?),
        })
    }

    /// Writes the model to `path` as a safetensors file (atomically: temp file, fsync, rename).
    ///
    /// Holds the layers, cross layers, version, activation, outputs, task names and input schema
    /// with a CRC-32; task weights are product config and are not stored. Read it back with
    /// `MlpRanker.load(path)`. Raises OSError when the file cannot be written. Releases the GIL.
    fn save(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let m = &self.inner;
        run_detached(py, || model_file::save(m, &path))
    }

    #[staticmethod]
    #[pyo3(signature = (path, kernel=None))]
    fn load(py: Python<'_>, path: std::path::PathBuf, kernel: Option<&str>) -> PyResult<Self> {
        let k = kernel_arg(kernel)?;
        let m = run_detached(py, || model_file::load(&path, k))?;
        Ok(Self { inner: Arc::new(m) })
    }

    /// `{"default": str, "available": [str], "peak_gflops": {kernel: float}}`; the peak (a
    /// register-only FMA loop, about 0.2 s per kernel) only when `measure_peak`.
    #[staticmethod]
    #[pyo3(signature = (measure_peak=false))]
    fn kernel_info<'py>(py: Python<'py>, measure_peak: bool) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("default", Kernel::best().name())?;
        let avail = Kernel::all_available();
        d.set_item(
            "available",
            avail.iter().map(|k| k.name()).collect::<Vec<_>>(),
        )?;
        let peaks = PyDict::new(py);
        if measure_peak {
            for k in avail.into_iter().filter(|k| *k != Kernel::Scalar) {
                let g = py.detach(|| gemm::peak_gflops(k, 0.2));
                peaks.set_item(k.name(), g)?;
            }
        }
        d.set_item("peak_gflops", peaks)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let m = &self.inner;
        let mut dims = vec![m.input_dim()];
        dims.extend(m.layers().iter().map(|l| l.out_dim()));
        format!(
            "MlpRanker(version={:?}, dims={dims:?}, cross_layers={}, activation={:?}, tasks={:?}, kernel={:?})",
            m.version(),
            m.cross_layers().len(),
            m.activation().name(),
            m.task_names(),
            m.kernel().name()
        )
    }
}

/// Scores of one request from one snapshot of a `RankerSet`.
#[pyclass(name = "RankerScores", module = "fyp_core", frozen)]
pub struct PyRankerScores {
    /// The live model's version in the snapshot that scored.
    #[pyo3(get)]
    live_version: String,
    /// Live predictions, float32 `[n, n_tasks]`.
    #[pyo3(get)]
    live: Py<PyArray2<f32>>,
    /// `{shadow_version: float32 [n, its n_tasks]}` from the same snapshot.
    #[pyo3(get)]
    shadows: Py<PyDict>,
    /// Generation of the snapshot that scored (`RankerSet.generation` then).
    #[pyo3(get)]
    generation: u64,
}

#[pymethods]
impl PyRankerScores {
    fn __repr__(&self, py: Python<'_>) -> String {
        let keys: Vec<String> = self
            .shadows
            .bind(py)
            .keys()
            .iter()
            .map(|k| k.to_string())
            .collect();
        format!(
            "RankerScores(live_version={:?}, shadows={keys:?}, generation={})",
            self.live_version, self.generation
        )
    }
}

/// One live ranker and any number of shadows; `promote`/`rollback` switch atomically.
#[pyclass(name = "RankerSet", module = "fyp_core", frozen)]
pub struct PyRankerSet {
    pub inner: Arc<RankerSet>,
}

impl PyRankerSet {
    fn scores(py: Python<'_>, s: SetScores, n: usize) -> PyResult<PyRankerScores> {
        let live = to_2d(py, s.live.preds, n, s.live.tasks)?.unbind();
        let shadows = PyDict::new(py);
        for v in s.shadows {
            shadows.set_item(&v.version, to_2d(py, v.preds, n, v.tasks)?)?;
        }
        Ok(PyRankerScores {
            live_version: s.live.version,
            live,
            shadows: shadows.unbind(),
            generation: s.generation,
        })
    }
}

#[pymethods]
impl PyRankerSet {
    #[new]
    fn new(live: &PyMlpRanker) -> Self {
        Self {
            inner: Arc::new(RankerSet::new(live.inner.clone())),
        }
    }

    /// Adds `ranker` as a shadow: scored with the live model on every call, never served.
    ///
    /// Its version must be new in the set and its `input_dim` equal to the live model's (it may
    /// predict other tasks); otherwise ValueError. Atomic: a new snapshot is published.
    fn add_shadow(&self, ranker: &PyMlpRanker) -> PyResult<()> {
        self.inner.add_shadow(ranker.inner.clone()).map_err(to_py)
    }

    /// Removes shadow `version` and returns it as an MlpRanker.
    ///
    /// KeyError when no shadow has that version (the live model cannot be removed). Atomic.
    fn remove_shadow(&self, version: &str) -> PyResult<PyMlpRanker> {
        let m = self.inner.remove_shadow(version).map_err(to_py)?;
        Ok(PyMlpRanker { inner: m })
    }

    /// Makes shadow `version` live (KeyError if it is not a shadow).
    fn promote(&self, version: &str) -> PyResult<()> {
        self.inner.promote(version).map_err(to_py)
    }

    /// Undoes the last promote; returns the version that is live again.
    fn rollback(&self) -> PyResult<String> {
        self.inner.rollback().map_err(to_py)
    }

    /// Live + every shadow on `features` (float32 `[n, d]`), all from one snapshot.
    fn score(&self, py: Python<'_>, features: &Bound<'_, PyAny>) -> PyResult<PyRankerScores> {
        let x = f32_matrix(features, "features")?;
        let (n, d) = (x.shape()[0], x.shape()[1]);
        let want = self.inner.snapshot().live.input_dim();
        if d != want {
            return Err(PyValueError::new_err(format!(
                "features has {d} columns, the models expect {want}"
            )));
        }
        let xs = x.as_slice()?;
        let inner = &self.inner;
        let s = run_detached(py, || inner.score(xs, n))?;
        Self::scores(py, s, n)
    }

    /// Live + every shadow for one request (see `MlpRanker.predict_request`).
    fn score_request(
        &self,
        py: Python<'_>,
        user_features: &Bound<'_, PyAny>,
        item_features: &Bound<'_, PyAny>,
    ) -> PyResult<PyRankerScores> {
        let u = f32_vector(user_features, "user_features")?;
        let x = f32_matrix(item_features, "item_features")?;
        let n = x.shape()[0];
        let (us, xs) = (u.as_slice()?, x.as_slice()?);
        let inner = &self.inner;
        let s = run_detached(py, || inner.score_request(us, xs, n))?;
        Self::scores(py, s, n)
    }

    /// The live model (an MlpRanker) of the current snapshot.
    #[getter]
    fn live(&self) -> PyMlpRanker {
        PyMlpRanker {
            inner: self.inner.snapshot().live.clone(),
        }
    }
    /// Version of the live model.
    #[getter]
    fn live_version(&self) -> String {
        self.inner.snapshot().live_version().to_string()
    }
    /// The shadow models (MlpRanker) of the current snapshot.
    #[getter]
    fn shadows(&self) -> Vec<PyMlpRanker> {
        self.inner
            .snapshot()
            .shadows
            .iter()
            .map(|m| PyMlpRanker { inner: m.clone() })
            .collect()
    }
    /// Versions of the shadow models, in the order of `shadows`.
    #[getter]
    fn shadow_versions(&self) -> Vec<String> {
        let s = self.inner.snapshot();
        s.shadow_versions().into_iter().map(str::to_owned).collect()
    }
    /// Versions `rollback` would restore, oldest first.
    #[getter]
    fn history(&self) -> Vec<String> {
        self.inner.history()
    }
    /// Snapshot generation: 0 at construction, +1 on every change (add, remove, promote,
    /// rollback).
    #[getter]
    fn generation(&self) -> u64 {
        self.inner.snapshot().generation
    }

    fn __repr__(&self) -> String {
        let s = self.inner.snapshot();
        format!(
            "RankerSet(live={:?}, shadows={:?})",
            s.live_version(),
            s.shadow_versions()
        )
    }
}

/// Gathers candidate rows of `item_table` (float32 `[n_items, di]`) by `rows` (int64 `[n]`),
/// appends one dot-product cross feature per `(user_offset, item_offset, length)` in `dots`, and
/// optionally prepends `user` (float32 `[du]`) to every row. Returns float32
/// `[n, (du if include_user) + di + len(dots)]`.
#[pyfunction]
#[pyo3(signature = (user, item_table, rows, dots=None, include_user=false))]
pub fn assemble_features<'py>(
    py: Python<'py>,
    user: &Bound<'py, PyAny>,
    item_table: &Bound<'py, PyAny>,
    rows: &Bound<'py, PyAny>,
    dots: Option<Vec<(usize, usize, usize)>>,
    include_user: bool,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let u = f32_vector(user, "user")?;
    let t = f32_matrix(item_table, "item_table")?;
    let r = i64_vector(rows, "rows")?;
    let di = t.shape()[1];
    let idx = r
        .as_slice()?
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            usize::try_from(v)
                .map_err(|_| PyValueError::new_err(format!("rows[{i}] = {v} is negative")))
        })
        .collect::<PyResult<Vec<usize>>>()?;
    let dots: Vec<DotFeature> = dots
        .unwrap_or_default()
        .into_iter()
        .map(|(user_offset, item_offset, len)| DotFeature {
            user_offset,
            item_offset,
            len,
        })
        .collect();
    let (us, ts) = (u.as_slice()?, t.as_slice()?);
    let a = Assembly {
        user: us,
        table: ts,
        item_dim: di,
        dots: &dots,
        include_user,
    };
    let w = a.width();
    let n = idx.len();
    let out = run_detached(py, || a.assemble(&idx))?;
    to_2d(py, out, n, w)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyMlpRanker>()?;
    m.add_class::<PyRankerSet>()?;
    m.add_class::<PyRankerScores>()?;
    m.add_function(wrap_pyfunction!(assemble_features, m)?)?;
    Ok(())
}
