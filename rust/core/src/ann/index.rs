//! `HnswIndex`: the public face of candidate generation (DESIGN.md §3). Validates input, maps
//! external ids, runs batches on a rayon pool, and owns the live graph behind an atomically
//! swappable `Arc` so `rebuild()` can build a fresh graph while searches and inserts continue.

use super::distance::Metric;
use super::graph::{Graph, MAX_M};
use super::ids::IdHasher;
use super::pool;
use super::quant::{Pending, Quantize, Ranges};
use crate::cancel::Cancel;
use parking_lot::{Mutex, RwLock};
use rayon::prelude::*;
use std::collections::HashSet;
use std::hash::BuildHasherDefault;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Arc;

/// Largest `k` a search accepts (the feed asks for 1000; rows are padded to `k`).
pub const MAX_K: usize = 1 << 20;
/// Largest `capacity` hint (slots are u32).
pub const MAX_CAPACITY: usize = 1 << 31;

/// Largest squared norm of a row for metrics "l2" and "ip" (`f32::MAX / 8`, norms up to about
/// 6.5e18): a distance between two such rows is at most `(|a| + |b|)^2`, half of `f32::MAX`,
/// so it stays finite in float32 with room for the rounding of the SIMD partial sums. A larger
/// row would give infinite distances, which order nothing. ("cosine" normalises rows in f64.)
pub const MAX_SQ_NORM: f64 = f32::MAX as f64 / 8.0;

/// Id used to pad result rows that have fewer than k reachable items (`2**64 - 1`).
pub const PAD_ID: u64 = u64::MAX;

/// A set of external ids with the index's fast fixed hasher (for `exclude`).
pub type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

/// Construction parameters (names follow the paper and DESIGN.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node on upper levels; level 0 keeps `2 m`.
    pub m: usize,
    pub ef_construction: usize,
    /// Initial capacity hint (the index grows by itself; this sizes the first segment).
    pub capacity: usize,
    /// Seed of the level generator: same seed + same single-threaded inserts = same graph.
    pub seed: u64,
    /// Batch inserts (and rebuilds) give the same graph at any thread count: searches run in
    /// parallel, links are applied in input order. Holds while no other writer runs at once.
    pub deterministic: bool,
    /// Which codes level-0 search traverses before re-ranking with the floats (see
    /// `Quantize` and docs/hnsw.md for the measurements).
    pub quantize: Quantize,
}

/// Live items at which the 8-bit quantiser is fitted.
pub const CALIBRATE_AT: usize = 1000;

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construction: 200,
            capacity: 1024,
            seed: 0,
            deterministic: false,
            quantize: Quantize::default(),
        }
    }
}

/// Ids of excluded items: none, one set for every query, or one set per query.
pub enum Exclude<'a> {
    None,
    All(&'a IdSet),
    PerQuery(&'a [IdSet]),
}

/// Row-major search results: `ids[q * k + j]`, padded with `PAD_ID` / `inf`.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResult {
    pub ids: Vec<u64>,
    pub distances: Vec<f32>,
    pub k: usize,
}

/// Counters for monitoring (tombstones decide when a `rebuild()` pays off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswStats {
    pub live: usize,
    pub slots: usize,
    pub tombstones: usize,
    /// Slots freed by consolidation, reused by the next inserts.
    pub free_slots: usize,
    pub memory_bytes: usize,
    /// One-row inserts whose upper levels are still being linked in the background.
    pub deferred: usize,
    /// Background linking runs that panicked (a bug; 0 expected).
    pub deferred_failed: usize,
}

enum Op {
    Add(u64, Vec<f32>),
    Remove(u64),
}

pub struct HnswIndex {
    dim: usize,
    metric: Metric,
    params: HnswParams,
    graph: RwLock<Arc<Graph>>,
    /// The graph `graph` holds, for writers to check without the lock or a reference count
    /// (it can only change under `graph`'s write lock, by a rebuild's swap).
    live_graph: AtomicPtr<Graph>,
    /// Writes made while a rebuild runs, replayed into the new graph before the swap.
    log: Mutex<Option<Vec<Op>>>,
    /// True while `log` is `Some` (set after it, cleared before it under its lock), so a write
    /// outside a rebuild touches no lock (see `after_write`).
    logging: AtomicBool,
    rebuilding: AtomicBool,
    /// The error of the last background rebuild (cleared when the next rebuild starts).
    rebuild_error: Mutex<Option<String>>,
    /// Held by a rebuild or a consolidation (one maintenance job at a time).
    maint: Mutex<()>,
    /// Writers share it; `save` takes it exclusively for a consistent snapshot.
    gate: RwLock<()>,
}

impl HnswIndex {
    pub fn new(dim: usize, metric: Metric, params: HnswParams) -> crate::Result<Self> {
        if dim == 0 || dim > 65_536 {
            return Err(crate::invalid!("dim must be in 1..=65536, got {dim}"));
        }
        if params.m < 2 || params.m > MAX_M {
            return Err(crate::invalid!(
                "m must be in 2..={MAX_M}, got {}",
                params.m
            ));
        }
        if params.ef_construction == 0 || params.ef_construction > 100_000 {
            return Err(crate::invalid!(
                "ef_construction must be in 1..=100000, got {}",
                params.ef_construction
            ));
        }
        if !params.quantize.supports(metric) {
            return Err(crate::invalid!(
                "quantize=\"sq4\" needs metric \"ip\" or \"cosine\" (there is no 4-bit l2 \
                 kernel); use \"sq8\" or \"fp16\" with \"l2\""
            ));
        }
        if params.capacity > MAX_CAPACITY {
            return Err(crate::invalid!(
                "capacity must be <= 2**31, got {} (the index grows by itself; the hint only \
                 sizes the first block)",
                params.capacity
            ));
        }
        let g = Graph::new(
            dim,
            metric,
            params.m,
            params.ef_construction,
            params.capacity,
            params.seed,
            params.quantize,
        );
        // Reserve the first block now, so a capacity the machine cannot hold fails here with an
        // error instead of at the first insert.
        g.store.ensure(0)?;
        let mut me = Self::from_graph(g, params.capacity);
        me.params.deterministic = params.deterministic;
        me.params.quantize = params.quantize;
        Ok(me)
    }

    pub(crate) fn from_graph(g: Graph, capacity: usize) -> Self {
        let params = HnswParams {
            m: g.m,
            ef_construction: g.ef_construction,
            capacity,
            seed: g.seed,
            deterministic: false,
            quantize: g.quantize,
        };
        let g = Arc::new(g);
        HnswIndex {
            dim: g.dim,
            metric: g.metric,
            params,
            live_graph: AtomicPtr::new(Arc::as_ptr(&g) as *mut Graph),
            graph: RwLock::new(g),
            log: Mutex::new(None),
            logging: AtomicBool::new(false),
            rebuilding: AtomicBool::new(false),
            rebuild_error: Mutex::new(None),
            maint: Mutex::new(()),
            gate: RwLock::new(()),
        }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn metric(&self) -> Metric {
        self.metric
    }
    pub fn params(&self) -> HnswParams {
        self.params
    }

    pub(crate) fn current(&self) -> Arc<Graph> {
        self.graph.read().clone()
    }

    /// Number of live items.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, id: u64) -> bool {
        self.current().contains(id)
    }

    /// The stored vector of `id` (L2-normalised for "cosine").
    pub fn get_vector(&self, id: u64) -> Option<Vec<f32>> {
        self.current().vector_of(id)
    }

    /// True once searches traverse the codes (fp16: always; sq8 and auto: once fitted).
    pub fn is_quantized(&self) -> bool {
        self.current().codec.get().is_some()
    }

    /// Whether the 8-bit codes in use clip `v` (None: no 8-bit codes).
    #[cfg(test)]
    pub(crate) fn codes_clip(&self, v: &[f32]) -> Option<bool> {
        match self.current().codec.get() {
            Some(super::quant::Codec::Sq(q)) => Some(q.clips(v)),
            _ => None,
        }
    }

    /// The codes searches traverse: `"fp16"`, `"sq8"`, or `None` (floats: quantize off, or
    /// sq8/auto not calibrated yet).
    pub fn codes(&self) -> Option<&'static str> {
        self.current().codec.get().map(|c| c.name())
    }

    pub fn is_rebuilding(&self) -> bool {
        self.rebuilding.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> HnswStats {
        let g = self.current();
        let live = g.len();
        let slots = g.slots();
        let free_slots = g.free.lock().len();
        HnswStats {
            live,
            slots,
            tombstones: slots.saturating_sub(live + free_slots),
            free_slots,
            memory_bytes: g.store.allocated_bytes() + g.ids.heap_bytes(),
            deferred: g.deferred_len(),
            deferred_failed: g.deferred_failed.load(Ordering::Relaxed),
        }
    }

    /// Validate one row (finite; non-zero for cosine) and write its prepared form into `out`
    /// (normalised for cosine, zero-padded to the storage stride).
    fn prepare(&self, row: &[f32], what: &str, i: usize, out: &mut Vec<f32>) -> crate::Result<()> {
        // One pass: in f64 a finite row's squared norm is finite, and NaN/Inf make it non-finite.
        let n2: f64 = row.iter().map(|&x| x as f64 * x as f64).sum();
        if !n2.is_finite() {
            let j = row.iter().position(|x| !x.is_finite()).unwrap_or(0);
            return Err(crate::invalid!(
                "{what} row {i} has a non-finite value ({}) at column {j}; NaN and Inf are not allowed",
                row[j]
            ));
        }
        if self.metric == Metric::Cosine && n2 == 0.0 {
            return Err(crate::invalid!(
                "{what} row {i} has zero norm; metric \"cosine\" needs non-zero vectors"
            ));
        }
        if self.metric != Metric::Cosine && n2 > MAX_SQ_NORM {
            return Err(crate::invalid!(
                "{what} row {i} has squared norm {n2:.3e}, above {MAX_SQ_NORM:.3e}: its {} \
                 distances would overflow float32; scale the vectors down",
                self.metric.name()
            ));
        }
        self.prepare_valid(row, out);
        Ok(())
    }

    /// Row `i` of a batch, prepared into its own vector (it becomes the write log's copy).
    fn row_of(&self, vectors: &[f32], i: usize) -> crate::Result<Vec<f32>> {
        let mut v = Vec::with_capacity(self.dim + 16);
        self.prepare(
            &vectors[i * self.dim..(i + 1) * self.dim],
            "vectors",
            i,
            &mut v,
        )?;
        Ok(v)
    }

    /// `prepare` for a row it accepted: normalised for "cosine", zero-padded to the stride.
    fn prepare_valid(&self, row: &[f32], out: &mut Vec<f32>) {
        out.clear();
        if self.metric == Metric::Cosine {
            let n = row.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            out.extend(row.iter().map(|&x| (x as f64 / n) as f32));
        } else {
            out.extend_from_slice(row);
        }
        let stride = self.dim.div_ceil(16) * 16;
        out.resize(stride, 0.0);
    }

    fn check_rows(&self, data: &[f32], what: &str) -> crate::Result<usize> {
        if !data.len().is_multiple_of(self.dim) {
            return Err(crate::invalid!(
                "{what} has {} values, not a multiple of the index dim {}",
                data.len(),
                self.dim
            ));
        }
        Ok(data.len() / self.dim)
    }

    /// Insert or replace `ids[i]` with row `i` of `vectors` (row-major, `dim` columns), on all
    /// cores. Input is validated in full first: a bad row adds nothing.
    pub fn add(&self, ids: &[u64], vectors: &[f32]) -> crate::Result<()> {
        self.add_with_threads(ids, vectors, None)
    }

    pub fn add_with_threads(
        &self,
        ids: &[u64],
        vectors: &[f32],
        threads: Option<usize>,
    ) -> crate::Result<()> {
        self.add_cancellable(ids, vectors, threads, &Cancel::new())
    }

    /// `add_with_threads` that stops at the next row once `cancel` is set, with
    /// `Error::Interrupted`: the rows inserted before stay (each is whole and searchable), the
    /// rest are not inserted. A `deterministic` index inserts its batch to the end.
    pub fn add_cancellable(
        &self,
        ids: &[u64],
        vectors: &[f32],
        threads: Option<usize>,
        cancel: &Cancel,
    ) -> crate::Result<()> {
        let pending = self.calibration_pending(ids.len());
        let mut ranges = pending.map(|_| Ranges::new(self.dim));
        let rows = self.validate(ids, vectors, ranges.as_mut())?;
        match (pending, ranges) {
            (Some(need), Some(ranges)) if rows.len() > need => {
                // An index about to fit (auto: choose) its codes: insert the rows it needs,
                // fit (seeing the whole batch), then build the rest on the codes.
                let (head, rest) = rows.split_at(need);
                self.add_rows(ids, vectors, head, threads, cancel)?;
                let row = |j: usize, buf: &mut Vec<f32>| {
                    let i = rest[j];
                    self.prepare_valid(&vectors[i * self.dim..(i + 1) * self.dim], buf);
                };
                let p = Pending {
                    ranges,
                    len: rest.len(),
                    row: &row,
                };
                self.calibrate_with(Some(&p))?;
                self.add_rows(ids, vectors, rest, threads, cancel)?;
            }
            _ => self.add_rows(ids, vectors, &rows, threads, cancel)?,
        }
        self.maybe_calibrate()
    }

    /// Rows an `auto` or `sq4` index (both build on their codes) still needs before it fits its
    /// codes, when this batch of `n` would cross that point (`None`: nothing to fit, or the
    /// batch does not reach it).
    fn calibration_pending(&self, n: usize) -> Option<usize> {
        let g = self.current();
        let need = CALIBRATE_AT.saturating_sub(g.len());
        let fitted = g.quantize.calibrated() && g.quantize.builds_on_codes();
        (fitted && g.codec.get().is_none() && need < n).then_some(need)
    }

    /// Fit the quantiser once the index is big enough, with writers held off for the time it
    /// takes to encode the items (searches continue on the float path meanwhile). An error
    /// (the code storage refused) leaves the index on its float rows until a later write.
    fn maybe_calibrate(&self) -> crate::Result<()> {
        self.calibrate_with(None)
    }

    /// `maybe_calibrate` also seeing `pending` rows (not inserted yet).
    fn calibrate_with(&self, pending: Option<&Pending<'_>>) -> crate::Result<()> {
        let g = self.current();
        if g.quantize.calibrated() && g.codec.get().is_none() && g.len() >= CALIBRATE_AT {
            let _x = self.gate.write();
            g.calibrate(pending)?;
        }
        Ok(())
    }

    /// Check a batch in full (a bad row adds nothing): the rows to insert, in order, with
    /// duplicate ids dropped (the last row of an id wins, as if added one after another).
    /// `ranges` is widened over the prepared rows.
    fn validate(
        &self,
        ids: &[u64],
        vectors: &[f32],
        mut ranges: Option<&mut Ranges>,
    ) -> crate::Result<Vec<usize>> {
        let n = self.check_rows(vectors, "vectors")?;
        if n != ids.len() {
            return Err(crate::invalid!(
                "ids has {} entries but vectors has {n} rows",
                ids.len()
            ));
        }
        if let Some(p) = ids.iter().position(|&x| x == PAD_ID) {
            return Err(crate::invalid!(
                "ids[{p}] is 2**64-1, which is reserved for padding in search results"
            ));
        }
        let mut scratch = Vec::new();
        for (i, row) in vectors.chunks_exact(self.dim).enumerate() {
            self.prepare(row, "vectors", i, &mut scratch)?;
            if let Some(r) = ranges.as_deref_mut() {
                r.add(&scratch);
            }
        }
        let mut seen = IdSet::default();
        let mut rows: Vec<usize> = (0..n).rev().filter(|&i| seen.insert(ids[i])).collect();
        rows.reverse();
        Ok(rows)
    }

    /// Insert rows `rows` of a validated batch.
    fn add_rows(
        &self,
        ids: &[u64],
        vectors: &[f32],
        rows: &[usize],
        threads: Option<usize>,
        cancel: &Cancel,
    ) -> crate::Result<()> {
        let threads = pool::resolve(threads)?;
        let n = rows.len();
        let _w = self.gate.read();
        if self.params.deterministic {
            self.add_deterministic(ids, vectors, rows, threads)?;
            self.maybe_consolidate();
            return Ok(());
        }
        // One row: its upper levels (if any) are linked after the call returns (`upper`).
        let defer = n == 1;
        let one = |g: &mut Arc<Graph>, &i: &usize| -> crate::Result<()> {
            cancel.check("HnswIndex.add")?;
            self.add_prepared(g, ids[i], self.row_of(vectors, i)?, defer)
        };
        if threads <= 1 || n <= 1 {
            let mut g = self.current();
            rows.iter().try_for_each(|i| one(&mut g, i))?;
        } else {
            pool::install(threads, || {
                rows.par_iter()
                    .with_min_len(4)
                    .try_for_each_init(|| self.current(), one)
            })??;
        }
        self.maybe_consolidate();
        Ok(())
    }

    /// Free tombstones once they are a tenth of the live items (at least 64), so churn keeps
    /// a fresh build's memory and speed. Skipped while a rebuild or another consolidation runs
    /// (the next write tries again).
    fn maybe_consolidate(&self) {
        let g = self.current();
        let t = g.tombstones.load(Ordering::Acquire);
        if t >= 64.max(g.len() / 10) {
            if let Some(_m) = self.maint.try_lock() {
                g.consolidate();
            }
        }
    }

    /// Unlink every tombstone and free its slot for reuse now (writes trigger this by
    /// themselves once tombstones reach a tenth of the live items). Returns the slots freed.
    pub fn consolidate(&self) -> usize {
        let _w = self.gate.read();
        let _m = self.maint.lock();
        self.current().consolidate()
    }

    fn add_deterministic(
        &self,
        ids: &[u64],
        vectors: &[f32],
        rows: &[usize],
        threads: usize,
    ) -> crate::Result<()> {
        let mut prepared = Vec::with_capacity(rows.len());
        for &i in rows {
            prepared.push((ids[i], self.row_of(vectors, i)?));
        }
        let items: Vec<(u64, &[f32])> =
            prepared.iter().map(|(id, v)| (*id, v.as_slice())).collect();
        let g = self.current();
        g.insert_deterministic(&items, threads)?;
        for (id, v) in prepared {
            self.after_write(&g, Op::Add(id, v))?;
        }
        Ok(())
    }

    /// Insert into `g`, this writer's handle on the live graph (refreshed only when a rebuild
    /// swapped graphs, so an insert clones no `Arc` and takes no lock of the index's own).
    /// With `defer`, upper levels are left to the background worker (`upper`).
    fn add_prepared(
        &self,
        g: &mut Arc<Graph>,
        id: u64,
        v: Vec<f32>,
        defer: bool,
    ) -> crate::Result<()> {
        if !self.is_live(g) {
            *g = self.current();
        }
        if g.insert_linking(id, &v, defer)? {
            Arc::clone(g).link_deferred_in_background();
        }
        self.after_write(g, Op::Add(id, v))
    }

    fn is_live(&self, g: &Arc<Graph>) -> bool {
        std::ptr::eq(self.live_graph.load(Ordering::SeqCst), Arc::as_ptr(g))
    }

    /// Called after a write reached graph `g`: log it for a running rebuild, or re-apply it if
    /// a rebuild swapped graphs in between (so no write is ever lost). Outside a rebuild this
    /// is two atomic loads: a write that reads `logging` false either finished before the
    /// rebuild set it (then the rebuild's snapshot, taken after, holds the write) or reads it
    /// after the swap cleared it (then it sees the new `live_graph` and re-applies itself).
    fn after_write(&self, g: &Arc<Graph>, op: Op) -> crate::Result<()> {
        if !self.logging.load(Ordering::SeqCst) && self.is_live(g) {
            return Ok(());
        }
        let mut log = self.log.lock();
        if let Some(l) = log.as_mut() {
            l.push(op);
            return Ok(());
        }
        let cur = self.current();
        if !Arc::ptr_eq(&cur, g) {
            apply(&cur, &op)?;
        }
        Ok(())
    }

    /// Remove ids (tombstone + link repair). They stop appearing in results at once. Ids not in
    /// the index are ignored; returns how many were removed.
    pub fn remove(&self, ids: &[u64]) -> crate::Result<usize> {
        let _w = self.gate.read();
        let mut removed = 0;
        for &id in ids {
            let g = self.current();
            if g.remove(id) {
                removed += 1;
            }
            self.after_write(&g, Op::Remove(id))?;
        }
        self.maybe_consolidate();
        Ok(removed)
    }

    fn check_k(k: usize) -> crate::Result<()> {
        if k == 0 || k > MAX_K {
            return Err(crate::invalid!("k must be in 1..={MAX_K}, got {k}"));
        }
        Ok(())
    }

    fn resolve_ef(&self, k: usize, ef: Option<usize>) -> usize {
        ef.unwrap_or(64).max(k)
    }

    /// Up to `k` nearest live items to one query, ascending distance (not padded).
    pub fn search_one(
        &self,
        query: &[f32],
        k: usize,
        ef: Option<usize>,
        exclude: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> crate::Result<Vec<(u64, f32)>> {
        if query.len() != self.dim {
            return Err(crate::invalid!(
                "query has {} values, index dim is {}",
                query.len(),
                self.dim
            ));
        }
        Self::check_k(k)?;
        let mut q = Vec::with_capacity(self.dim + 16);
        self.prepare(query, "query", 0, &mut q)?;
        let g = self.current();
        Ok(search_graph(&g, &q, k, self.resolve_ef(k, ef), exclude))
    }

    /// Batch search: `queries` is row-major with `dim` columns; rows run in parallel.
    pub fn search(
        &self,
        queries: &[f32],
        k: usize,
        ef: Option<usize>,
        threads: Option<usize>,
        exclude: &Exclude<'_>,
    ) -> crate::Result<SearchResult> {
        let threads = pool::resolve(threads)?;
        let nq = self.check_rows(queries, "queries")?;
        Self::check_k(k)?;
        if nq.saturating_mul(k) > 1 << 30 {
            return Err(crate::invalid!(
                "{nq} queries x k={k} results is too large (limit 2**30)"
            ));
        }
        if let Exclude::PerQuery(s) = exclude {
            if s.len() != nq {
                return Err(crate::invalid!(
                    "exclude has {} per-query sets but there are {nq} queries",
                    s.len()
                ));
            }
        }
        let mut scratch = Vec::new();
        for (i, row) in queries.chunks_exact(self.dim).enumerate() {
            self.prepare(row, "queries", i, &mut scratch)?;
        }
        let ef = self.resolve_ef(k, ef);
        let g = self.current();
        let mut ids = filled(nq * k, PAD_ID)?;
        let mut distances = filled(nq * k, f32::INFINITY)?;
        let one = |(i, (ri, rd)): (usize, (&mut [u64], &mut [f32]))| {
            let mut q = Vec::with_capacity(self.dim + 16);
            // Validated above; prepare cannot fail here.
            if self
                .prepare(
                    &queries[i * self.dim..(i + 1) * self.dim],
                    "queries",
                    i,
                    &mut q,
                )
                .is_err()
            {
                return;
            }
            let set = match exclude {
                Exclude::None => None,
                Exclude::All(s) => Some(*s),
                Exclude::PerQuery(s) => Some(&s[i]),
            };
            let hits = match set {
                Some(s) if !s.is_empty() => {
                    let f = |id: u64| s.contains(&id);
                    search_graph(&g, &q, k, ef, Some(&f))
                }
                _ => search_graph(&g, &q, k, ef, None),
            };
            for (j, (id, d)) in hits.into_iter().enumerate() {
                ri[j] = id;
                rd[j] = d;
            }
        };
        if threads <= 1 || nq <= 1 {
            ids.chunks_mut(k)
                .zip(distances.chunks_mut(k))
                .enumerate()
                .for_each(one);
        } else {
            pool::install(threads, || {
                ids.par_chunks_mut(k)
                    .zip(distances.par_chunks_mut(k))
                    .enumerate()
                    .for_each(one)
            })?;
        }
        Ok(SearchResult { ids, distances, k })
    }

    /// Recall@k of the graph search at `ef` against exact brute force over the live items, for
    /// the given queries (row-major). Alert on a drop to catch drift in production.
    pub fn recall_probe(
        &self,
        queries: &[f32],
        k: usize,
        ef: Option<usize>,
        threads: Option<usize>,
    ) -> crate::Result<f64> {
        let threads = pool::resolve(threads)?;
        let nq = self.check_rows(queries, "sample")?;
        Self::check_k(k)?;
        if nq == 0 {
            return Err(crate::invalid!("recall_probe needs at least one query"));
        }
        let g = self.current();
        let ef = self.resolve_ef(k, ef);
        let mut preps = Vec::with_capacity(nq);
        for (i, row) in queries.chunks_exact(self.dim).enumerate() {
            let mut q = Vec::new();
            self.prepare(row, "sample", i, &mut q)?;
            preps.push(q);
        }
        let one = |q: &Vec<f32>| -> (usize, usize) {
            let exact = g.brute_force(q, k);
            let approx = search_graph(&g, q, k, ef, None);
            let truth: HashSet<u32> = exact.iter().map(|c| c.id).collect();
            let hit = approx
                .iter()
                .filter(|(id, _)| g.ids.get(*id).is_some_and(|s| truth.contains(&s)))
                .count();
            (hit, exact.len())
        };
        let (hit, tot) = pool::install(threads, || {
            preps
                .par_iter()
                .map(one)
                .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        })?;
        Ok(if tot == 0 {
            1.0
        } else {
            hit as f64 / tot as f64
        })
    }

    /// `n` stored live vectors picked deterministically (for `recall_probe` on the index's own data).
    pub fn sample_vectors(&self, n: usize, seed: u64) -> Vec<f32> {
        let g = self.current();
        let _pin = g.epochs.pin();
        let items = g.ids.items();
        if items.is_empty() || n == 0 {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(n.min(items.len()) * self.dim);
        let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
        for _ in 0..n.min(items.len()) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (_, s) = items[(x % items.len() as u64) as usize];
            out.extend_from_slice(&g.store.vector(s)[..self.dim]);
        }
        out
    }

    /// Build a fresh graph from the live items and swap it in atomically. Searches keep using
    /// the old graph until the swap; inserts and removes made meanwhile are logged and replayed
    /// into the new graph, so none is lost. Tombstones are dropped (memory is reclaimed).
    pub fn rebuild(&self, threads: Option<usize>) -> crate::Result<()> {
        let threads = pool::resolve(threads)?;
        self.begin_rebuild()?;
        let r = self.rebuild_inner(threads);
        self.rebuilding.store(false, Ordering::Release);
        r
    }

    /// Claim the rebuild flag (refused while one runs) and clear the last background error.
    fn begin_rebuild(&self) -> crate::Result<()> {
        if self.rebuilding.swap(true, Ordering::AcqRel) {
            return Err(crate::invalid!(
                "a rebuild is already running on this index; wait until `rebuilding` is false"
            ));
        }
        *self.rebuild_error.lock() = None;
        Ok(())
    }

    /// `rebuild` on a background thread. `is_rebuilding()` is true from before this returns
    /// until the new graph is live or the rebuild failed; a failure is kept in
    /// `rebuild_error()`. A second call while one runs is refused.
    pub fn rebuild_in_background(self: &Arc<Self>, threads: Option<usize>) -> crate::Result<()> {
        let threads = pool::resolve(threads)?;
        self.begin_rebuild()?;
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("fyp-hnsw-rebuild".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    me.rebuild_inner(threads)
                }));
                let err = match r {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("the background rebuild panicked".to_string()),
                };
                *me.rebuild_error.lock() = err;
                me.rebuilding.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            self.rebuilding.store(false, Ordering::Release);
            return Err(crate::Error::Io(format!(
                "cannot start the rebuild thread: {e}"
            )));
        }
        Ok(())
    }

    /// Why the last background rebuild failed (the old graph stayed live), if it did.
    pub fn rebuild_error(&self) -> Option<String> {
        self.rebuild_error.lock().clone()
    }

    /// Build and swap; on any failure the write log is switched off again (the old graph,
    /// which every write reached, stays live).
    fn rebuild_inner(&self, threads: usize) -> crate::Result<()> {
        let r = self.build_and_swap(threads);
        if r.is_err() {
            let mut log = self.log.lock();
            self.logging.store(false, Ordering::SeqCst);
            *log = None;
        }
        r
    }

    fn build_and_swap(&self, threads: usize) -> crate::Result<()> {
        let _m = self.maint.lock();
        *self.log.lock() = Some(Vec::new());
        self.logging.store(true, Ordering::SeqCst);
        let old = self.current();
        let items = old.ids.items();
        let g = Graph::new(
            self.dim,
            self.metric,
            old.m,
            old.ef_construction,
            items.len().max(self.params.capacity),
            old.seed,
            self.params.quantize,
        );
        if self.params.deterministic {
            let rows: Vec<(u64, &[f32])> = items
                .iter()
                .map(|&(id, slot)| (id, old.store.vector(slot)))
                .collect();
            g.insert_deterministic(&rows, threads)?;
        } else if threads <= 1 {
            // On the calling thread: `par_iter` outside a pool would start rayon's global one.
            items
                .iter()
                .try_for_each(|&(id, slot)| g.insert(id, old.store.vector(slot)))?;
        } else {
            pool::install(threads, || {
                items
                    .par_iter()
                    .with_min_len(4)
                    .try_for_each(|&(id, slot)| g.insert(id, old.store.vector(slot)))
            })??;
        }
        if g.len() >= CALIBRATE_AT {
            // Re-fitted on today's items: a rebuild is where drifted ranges are corrected.
            g.calibrate(None)?;
        }
        // Catch up outside the lock until the backlog is small, then finish under it and swap.
        loop {
            let batch = self
                .log
                .lock()
                .as_mut()
                .map(std::mem::take)
                .unwrap_or_default();
            if batch.len() < 64 {
                let mut log = self.log.lock();
                let rest = log.as_mut().map(std::mem::take).unwrap_or_default();
                for op in batch.iter().chain(&rest) {
                    apply(&g, op)?;
                }
                let g = Arc::new(g);
                let mut live = self.graph.write();
                self.live_graph
                    .store(Arc::as_ptr(&g) as *mut Graph, Ordering::SeqCst);
                *live = g;
                drop(live);
                self.logging.store(false, Ordering::SeqCst);
                *log = None;
                return Ok(());
            }
            for op in &batch {
                apply(&g, op)?;
            }
        }
    }

    /// Write the index to `path` atomically (temp file, fsync, rename). Writers wait; searches
    /// continue.
    pub fn save(&self, path: &Path) -> crate::Result<()> {
        let _x = self.gate.write();
        let g = self.current();
        g.link_deferred();
        super::persist::save(&g, path)
    }

    pub fn load(path: &Path) -> crate::Result<Self> {
        let g = super::persist::load(path)?;
        let cap = g.slots().max(1024);
        let me = Self::from_graph(g, cap);
        // A version-1 file holds the mode, not the 8-bit ranges: re-fit them (a version-2 file
        // has its codes set by `persist`; fp16 needs nothing).
        me.maybe_calibrate()?;
        Ok(me)
    }

    /// The index file's bytes (the `save` format), copied in memory: writers wait for the copy
    /// only (not for a disk write); searches continue.
    pub fn to_bytes(&self) -> Vec<u8> {
        let _x = self.gate.write();
        let g = self.current();
        g.link_deferred();
        super::persist::to_bytes(&g)
    }

    /// A point-in-time cut of the index, taken in an instant (writers wait only for the ones
    /// under way): its bytes are then produced while writers continue. The file holds the
    /// nodes that existed at the cut; a node removed or replaced after it may read as removed
    /// (a loader reconciles the index with the item table cut at the same instant).
    pub fn cut(&self) -> IndexCut {
        let _x = self.gate.write();
        let g = self.current();
        g.link_deferred();
        let (slots, entry) = (g.slots(), g.entry());
        g.cuts.fetch_add(1, Ordering::AcqRel);
        IndexCut { g, slots, entry }
    }

    /// Every live id (a copy).
    pub fn ids(&self) -> Vec<u64> {
        self.current()
            .ids
            .items()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// An index from bytes in the `save` format (checksum verified); `name` names them in errors.
    pub fn from_bytes(bytes: &[u8], name: &str) -> crate::Result<Self> {
        let g = super::persist::from_bytes(bytes, name)?;
        let cap = g.slots().max(1024);
        let me = Self::from_graph(g, cap);
        me.maybe_calibrate()?;
        Ok(me)
    }
}

/// See [`HnswIndex::cut`]. While it lives, inserts into its graph take fresh slots (beyond the
/// cut) instead of reusing freed ones: a reused slot below `slots` would put a node written
/// after the cut into it (an id live twice, or a row read while it is rewritten).
pub struct IndexCut {
    g: Arc<Graph>,
    slots: usize,
    entry: Option<(u32, usize)>,
}

impl Drop for IndexCut {
    fn drop(&mut self) {
        self.g.cuts.fetch_sub(1, Ordering::AcqRel);
    }
}

impl IndexCut {
    /// The file bytes of the cut (the `save` format).
    pub fn to_bytes(&self) -> Vec<u8> {
        super::persist::to_bytes_upto(&self.g, self.slots, self.entry)
    }
}

/// `n` copies of `x`, or an error when the memory is not there (never an abort).
fn filled<T: Copy>(n: usize, x: T) -> crate::Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| super::store::out_of_memory(n * std::mem::size_of::<T>(), "search results"))?;
    v.resize(n, x);
    Ok(v)
}

fn apply(g: &Graph, op: &Op) -> crate::Result<()> {
    match op {
        Op::Add(id, v) => g.insert(*id, v),
        Op::Remove(id) => {
            g.remove(*id);
            Ok(())
        }
    }
}

fn search_graph(
    g: &Graph,
    q: &[f32],
    k: usize,
    ef: usize,
    exclude: Option<&(dyn Fn(u64) -> bool + Sync)>,
) -> Vec<(u64, f32)> {
    // Held until the labels are read: a slot freed meanwhile must not be reused under us.
    let _pin = g.epochs.pin();
    let st = &g.store;
    let hits = match exclude {
        None if !g.has_tombstones() => g.knn(q, k, ef, |_| true),
        None => g.knn(q, k, ef, |n| !st.is_deleted(n)),
        Some(f) => g.knn(q, k, ef, |n| !st.is_deleted(n) && !f(st.label(n))),
    };
    hits.into_iter().map(|c| (st.label(c.id), c.d)).collect()
}
