//! Binding for `fyp_core.HnswIndex` (core: `fyp_core::ann`): converts numpy arguments, releases
//! the GIL around every call that does real work, and maps errors.

use crate::convert::{f32_matrix, u64_vector};
use crate::errors::{run_detached, run_interruptible, to_py};
use fyp_core::ann::{Exclude, HnswIndex, HnswParams, IdSet, Metric, Quantize};
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList, PyString, PyTuple};
use std::path::PathBuf;
use std::sync::Arc;

/// Batches of up to this many rows are inserted on the calling thread without watching for
/// Ctrl-C meanwhile (a few ms at most; a Ctrl-C raises when they return).
const SMALL_ADD: usize = 32;

/// `(ids uint64[nq, k], distances float32[nq, k])`.
type SearchOut<'py> = (Bound<'py, PyArray2<u64>>, Bound<'py, PyArray2<f32>>);

/// The candidate index: a concurrent online HNSW graph over `dim`-dimensional vectors.
///
/// Inserts, replacements and removals run while other threads search (every method is safe to
/// call from several threads; heavy calls release the GIL). `metric`: "ip" (distance 1 - dot,
/// for normalised embeddings), "cosine" (vectors and queries L2-normalised on the way in) or
/// "l2" (squared Euclidean). `m` links per node, `ef_construction` the build beam; `capacity`
/// is a sizing hint (the index grows by itself, at most 2**31). `deterministic=True`: the same
/// seed and data give the same graph and results at any thread count. `quantize`: the codes
/// level-0 search traverses before re-ranking with the floats: "auto" (the default, also `None`:
/// 8-bit codes if a sample's neighbours survive them once the index holds 1000 items, else
/// half precision; `codes` says which), "fp16" (half precision), "sq8" (8-bit codes, also
/// `True`), "sq4" (4-bit codes: half the bytes of sq8, for high-dimensional embeddings; "ip" and
/// "cosine" only) or "off" (also `False`: float rows).
/// Bad sizes or a metric it does not know raise ValueError; docs/hnsw.md has the details.
#[pyclass(name = "HnswIndex", module = "fyp_core", frozen)]
pub struct PyHnswIndex {
    pub inner: Arc<HnswIndex>,
}

fn nonneg(v: i64, name: &str) -> PyResult<usize> {
    usize::try_from(v).map_err(|_| PyValueError::new_err(format!("{name} must be >= 0, got {v}")))
}

fn threads_arg(t: Option<i64>) -> PyResult<Option<usize>> {
    match t {
        None => Ok(None),
        Some(t) if t >= 1 => Ok(Some(t as usize)),
        Some(t) => Err(PyValueError::new_err(format!(
            "threads must be >= 1 (or None for all cores), got {t}"
        ))),
    }
}

fn ef_arg(ef: Option<i64>) -> PyResult<Option<usize>> {
    match ef {
        None => Ok(None),
        Some(e) if e >= 1 => Ok(Some(e as usize)),
        Some(e) => Err(PyValueError::new_err(format!(
            "ef must be >= 1 (or None), got {e}"
        ))),
    }
}

/// `quantize`: "auto", "fp16", "sq8", "sq4", "off"; `True` is "sq8" (its meaning before fp16
/// existed), `False` is "off", `None` the default.
fn quantize_arg(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Quantize> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(Quantize::default());
    };
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(if b.is_true() {
            Quantize::Sq8
        } else {
            Quantize::Off
        });
    }
    if let Ok(s) = obj.cast::<PyString>() {
        if let Ok(q) = Quantize::parse(&s.to_cow()?) {
            return Ok(q);
        }
    }
    Err(PyValueError::new_err(format!(
        "quantize must be \"auto\", \"fp16\", \"sq8\", \"sq4\", \"off\", True (sq8), False (off) \
         or None (the default, auto), got {}",
        obj.repr()?
    )))
}

fn k_arg(k: i64) -> PyResult<usize> {
    if k < 1 {
        return Err(PyValueError::new_err(format!("k must be >= 1, got {k}")));
    }
    Ok(k as usize)
}

fn id_set(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<IdSet> {
    let v = u64_vector(obj, name)?;
    Ok(v.as_slice()?.iter().copied().collect())
}

/// `exclude`: None, one 1-D array/sequence of ids for every query, or a list/tuple with one
/// such sequence per query.
enum ExcludeArg {
    None,
    All(IdSet),
    PerQuery(Vec<IdSet>),
}

fn exclude_arg(obj: Option<&Bound<'_, PyAny>>) -> PyResult<ExcludeArg> {
    let Some(obj) = obj else {
        return Ok(ExcludeArg::None);
    };
    if obj.is_none() {
        return Ok(ExcludeArg::None);
    }
    // Per query when any element is None or a sequence; a flat list of ints is one shared set.
    // Deciding from every element (not the first) accepts the documented `[None, ids, None]`.
    let nested = if obj.cast::<PyList>().is_ok() || obj.cast::<PyTuple>().is_ok() {
        let mut any = false;
        for e in obj.try_iter()? {
            let e = e?;
            if e.is_none() || (!e.is_instance_of::<pyo3::types::PyInt>() && e.hasattr("__len__")?) {
                any = true;
                break;
            }
        }
        any
    } else {
        false
    };
    if nested {
        let mut sets = Vec::new();
        for (i, e) in obj.try_iter()?.enumerate() {
            let e = e?;
            if e.is_none() {
                sets.push(IdSet::default());
            } else {
                sets.push(id_set(&e, &format!("exclude[{i}]"))?);
            }
        }
        return Ok(ExcludeArg::PerQuery(sets));
    }
    Ok(ExcludeArg::All(id_set(obj, "exclude")?))
}

fn check_cols(cols: usize, dim: usize, name: &str) -> PyResult<()> {
    if cols != dim {
        return Err(PyValueError::new_err(format!(
            "{name} has {cols} columns, index dim is {dim}"
        )));
    }
    Ok(())
}

#[pymethods]
impl PyHnswIndex {
    #[new]
    #[pyo3(signature = (dim, metric="ip", m=16, ef_construction=200, capacity=1024, seed=0, deterministic=false, quantize=None))]
    fn new(
        dim: i64,
        metric: &str,
        m: i64,
        ef_construction: i64,
        capacity: i64,
        seed: u64,
        deterministic: bool,
        quantize: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let metric = Metric::parse(metric).map_err(to_py)?;
        let quantize = quantize_arg(quantize)?;
        let params = HnswParams {
            m: nonneg(m, "m")?,
            ef_construction: nonneg(ef_construction, "ef_construction")?,
            capacity: nonneg(capacity, "capacity")?,
            seed,
            deterministic,
            quantize,
        };
        let inner = HnswIndex::new(nonneg(dim, "dim")?, metric, params).map_err(to_py)?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Dimension of the stored vectors.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    /// Distance: "ip", "cosine" or "l2".
    #[getter]
    fn metric(&self) -> &'static str {
        self.inner.metric().name()
    }
    /// Links per node on the upper levels (twice that on level 0).
    #[getter]
    fn m(&self) -> usize {
        self.inner.params().m
    }
    /// Beam width used while linking new items.
    #[getter]
    fn ef_construction(&self) -> usize {
        self.inner.params().ef_construction
    }
    /// Seed of the level draws (with `deterministic`, of the whole build).
    #[getter]
    fn seed(&self) -> u64 {
        self.inner.params().seed
    }
    /// True when builds are reproducible at any thread count (not stored in saved files).
    #[getter]
    fn deterministic(&self) -> bool {
        self.inner.params().deterministic
    }
    /// True once level-0 search runs on codes (fp16: from the start; sq8, sq4, auto: once
    /// fitted).
    #[getter]
    fn quantized(&self) -> bool {
        self.inner.is_quantized()
    }
    /// The codes searches traverse now: "fp16", "sq8", "sq4", or None (float rows: quantize
    /// "off", or "sq8"/"sq4"/"auto" before the index held 1000 items).
    #[getter]
    fn codes(&self) -> Option<&'static str> {
        self.inner.codes()
    }
    /// The mode asked for: "auto", "fp16", "sq8", "sq4" or "off" (see `docs/hnsw.md`).
    #[getter]
    fn quantize(&self) -> &'static str {
        self.inner.params().quantize.name()
    }
    /// Instruction set of the distance kernels on this machine.
    #[getter]
    fn simd(&self) -> &'static str {
        fyp_core::ann::simd_level()
    }
    /// True from `rebuild(wait=False)` until the background rebuild has swapped in (or failed).
    #[getter]
    fn rebuilding(&self) -> bool {
        self.inner.is_rebuilding()
    }

    /// `{"live", "slots", "tombstones", "free_slots", "memory_bytes", "deferred",
    /// "deferred_failed"}`; `deferred`: one-row inserts whose upper levels are still being
    /// linked in the background; `deferred_failed`: such linking runs that panicked (a bug).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let d = PyDict::new(py);
        d.set_item("live", s.live)?;
        d.set_item("slots", s.slots)?;
        d.set_item("tombstones", s.tombstones)?;
        d.set_item("free_slots", s.free_slots)?;
        d.set_item("memory_bytes", s.memory_bytes)?;
        d.set_item("deferred", s.deferred)?;
        d.set_item("deferred_failed", s.deferred_failed)?;
        Ok(d)
    }

    /// Insert items, or replace those whose id exists.
    ///
    /// `ids` uint64 (n,), `vectors` float32 (n, dim) (other numeric dtypes are converted once).
    /// A replaced id's old vector leaves the results before the new one is linked; duplicate
    /// ids in one batch: the last row wins. The batch is validated in full before anything is
    /// inserted: NaN/Inf, a wrong dimension, ids/rows mismatch or the reserved id 2**64-1 raise
    /// ValueError. `threads=None` uses every core, 1 the calling thread. Releases the GIL.
    /// Ctrl-C raises KeyboardInterrupt within milliseconds: the rows inserted before it stay
    /// (whole and searchable; `len` counts them), the rest are not inserted (an index built
    /// with `deterministic=True` finishes its batch first). A batch of up to 32 rows (the
    /// online insert) runs to its end first, without the thread that watches for Ctrl-C.
    /// One row returns as soon as it is searchable: if it drew an upper level (1 in `m`), that
    /// level is linked right after on a pool thread (`stats()["deferred"]`; `save` waits).
    #[pyo3(signature = (ids, vectors, threads=None))]
    fn add(
        &self,
        py: Python<'_>,
        ids: &Bound<'_, PyAny>,
        vectors: &Bound<'_, PyAny>,
        threads: Option<i64>,
    ) -> PyResult<()> {
        let threads = threads_arg(threads)?;
        let ids = u64_vector(ids, "ids")?;
        let v = f32_matrix(vectors, "vectors")?;
        let (rows, cols) = (v.shape()[0], v.shape()[1]);
        if rows > 0 {
            check_cols(cols, self.inner.dim(), "vectors")?;
        }
        if rows != ids.len() {
            return Err(PyValueError::new_err(format!(
                "ids has {} entries but vectors has {rows} rows",
                ids.len()
            )));
        }
        let (ids, v) = (ids.as_slice()?, v.as_slice()?);
        let inner = &self.inner;
        if rows <= SMALL_ADD {
            // The online insert of a serving process: on this thread, no signal-watching
            // thread to start and hand over to (a thread start per call, and two threads to
            // schedule, in every insert's latency).
            return run_detached(py, || inner.add_with_threads(ids, v, threads));
        }
        run_interruptible(py, |cancel| inner.add_cancellable(ids, v, threads, cancel))
    }

    /// The `k` nearest stored items of each query row, as `(ids, distances)`: uint64 ids and float32 distances of
    /// shape (nq, k), ascending. Rows with fewer than k reachable items are padded with id
    /// 2**64-1 and distance inf. `ef` is the search beam (None: max(64, k); raised to k).
    /// `exclude`: one id array for every query, or a list with one array (or None) per query;
    /// excluded items are traversed but never take a result slot. `k` in 1..=2**20; a result
    /// the memory cannot hold raises ValueError. Releases the GIL.
    #[pyo3(signature = (queries, k, ef=None, threads=None, exclude=None))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        k: i64,
        ef: Option<i64>,
        threads: Option<i64>,
        exclude: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<SearchOut<'py>> {
        let k = k_arg(k)?;
        let ef = ef_arg(ef)?;
        let threads = threads_arg(threads)?;
        let q = f32_matrix(queries, "queries")?;
        let (rows, cols) = (q.shape()[0], q.shape()[1]);
        if rows > 0 {
            check_cols(cols, self.inner.dim(), "queries")?;
        }
        let ex = exclude_arg(exclude)?;
        let qs = q.as_slice()?;
        let inner = &self.inner;
        let r = run_detached(py, || {
            let e = match &ex {
                ExcludeArg::None => Exclude::None,
                ExcludeArg::All(s) => Exclude::All(s),
                ExcludeArg::PerQuery(v) => Exclude::PerQuery(v),
            };
            inner.search(qs, k, ef, threads, &e)
        })?;
        let ids = PyArray1::from_vec(py, r.ids).reshape([rows, k])?;
        let d = PyArray1::from_vec(py, r.distances).reshape([rows, k])?;
        Ok((ids, d))
    }

    /// Remove ids (missing ones are ignored); returns how many were removed.
    fn remove(&self, py: Python<'_>, ids: &Bound<'_, PyAny>) -> PyResult<usize> {
        let ids = u64_vector(ids, "ids")?;
        let ids = ids.as_slice()?;
        let inner = &self.inner;
        run_detached(py, || inner.remove(ids))
    }

    /// Recall@k of the index at `ef` against brute force. `sample` is a number of stored items to
    /// use as queries (drawn deterministically) or a 2-D array of query vectors.
    #[pyo3(signature = (sample=None, k=10, ef=None, threads=None))]
    fn recall_probe(
        &self,
        py: Python<'_>,
        sample: Option<&Bound<'_, PyAny>>,
        k: i64,
        ef: Option<i64>,
        threads: Option<i64>,
    ) -> PyResult<f64> {
        let k = k_arg(k)?;
        let ef = ef_arg(ef)?;
        let threads = threads_arg(threads)?;
        let inner = &self.inner;
        let n = match sample {
            None => Some(100),
            Some(s) if s.is_instance_of::<pyo3::types::PyInt>() => Some(s.extract::<i64>()?),
            Some(_) => None,
        };
        if let Some(n) = n {
            let n = nonneg(n, "sample")?;
            return run_detached(py, || {
                let qs = inner.sample_vectors(n, 0x5eed);
                if qs.is_empty() {
                    return Err(fyp_core::invalid!(
                        "recall_probe needs a non-empty index and sample >= 1"
                    ));
                }
                inner.recall_probe(&qs, k, ef, threads)
            });
        }
        let Some(sample) = sample else { return Ok(1.0) };
        let q = f32_matrix(sample, "sample")?;
        if q.shape()[0] > 0 {
            check_cols(q.shape()[1], inner.dim(), "sample")?;
        }
        let qs = q.as_slice()?;
        run_detached(py, || inner.recall_probe(qs, k, ef, threads))
    }

    /// Rebuild the graph from the live items and swap it in atomically. With `wait=False` the
    /// rebuild runs on a background thread and this returns at once (see `rebuilding`).
    #[pyo3(signature = (wait=true, threads=None))]
    fn rebuild(&self, py: Python<'_>, wait: bool, threads: Option<i64>) -> PyResult<()> {
        let threads = threads_arg(threads)?;
        let inner = &self.inner;
        if wait {
            return run_detached(py, || inner.rebuild(threads));
        }
        inner.rebuild_in_background(threads).map_err(to_py)
    }

    /// Why the last background rebuild failed (None when it succeeded or none ran).
    #[getter]
    fn rebuild_error(&self) -> Option<String> {
        self.inner.rebuild_error()
    }

    /// Unlink every tombstone and free its slot for reuse now; returns the slots freed (writes
    /// do this by themselves once tombstones reach a tenth of the live items).
    fn consolidate(&self, py: Python<'_>) -> PyResult<usize> {
        let inner = &self.inner;
        run_detached(py, || Ok(inner.consolidate()))
    }

    /// The stored vector of `id` (normalised for "cosine"); KeyError when absent.
    fn get_vector<'py>(&self, py: Python<'py>, id: u64) -> PyResult<Bound<'py, PyArray1<f32>>> {
        match self.inner.get_vector(id) {
            Some(v) => Ok(PyArray1::from_vec(py, v)),
            None => Err(pyo3::exceptions::PyKeyError::new_err(format!(
                "id {id} is not in the index"
            ))),
        }
    }

    /// Write the index to one file at `path` (the graph, vectors and `quantize` mode; not the
    /// `deterministic` flag). OSError when the file cannot be written. Releases the GIL.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let inner = &self.inner;
        run_detached(py, || inner.save(&path))
    }

    /// Read an index from a file written by `save`. A truncated or corrupt file
    /// raises `fyp_core.CorruptFileError` (a ValueError), never crashes. Releases the GIL.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = run_detached(py, || HnswIndex::load(&path))?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, id: &Bound<'_, PyAny>) -> PyResult<bool> {
        match id.extract::<u64>() {
            Ok(i) => Ok(self.inner.contains(i)),
            Err(_) if id.extract::<i64>().is_ok() => Ok(false),
            Err(_) => Err(PyTypeError::new_err(
                "index membership is tested with an int id",
            )),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "HnswIndex(dim={}, metric={:?}, m={}, ef_construction={}, len={})",
            self.inner.dim(),
            self.inner.metric().name(),
            self.inner.params().m,
            self.inner.params().ef_construction,
            self.inner.len()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyHnswIndex>()
}
