//! Host snapshots of a pipeline (`serve::snapshot` has the files): `save_snapshot` takes a
//! consistent cut of the index, the item table, the batch tier and the catalogue-stream
//! position under a short lock (uploads, removals and stream applies wait for an in-memory copy;
//! requests never wait), then writes the files with no lock held. `load_snapshot` installs the
//! newest snapshot that verifies, falling back to older ones (counted), and sets the stream
//! position so `sync_catalog` replays what came after it.

use super::retrieval::Retrieval;
use super::Pipeline;
use crate::ann::HnswIndex;
use crate::serve::idhash::IdSet;
use crate::serve::snapshot::{self as files, Manifest, BATCH_FILE, INDEX_FILE, ITEMS_FILE};
use crate::serve::store::{BatchTier, ItemInfo};
use crate::{invalid, Error, Result};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Items upserted per write-lock hold when a snapshot is installed.
const INSTALL_CHUNK: usize = 20_000;

/// Snapshot counters (on `stats()` and `/metrics`) and the one-writer-at-a-time lock.
#[derive(Default)]
pub struct SnapshotState {
    write: Mutex<u64>,
    pub written: AtomicU64,
    pub write_failures: AtomicU64,
    pub loads: AtomicU64,
    /// Snapshots refused at load (corrupt, truncated, unreadable): an older one was tried.
    pub fallbacks: AtomicU64,
    /// Reloads after the catalogue stream was trimmed past this host's position.
    pub gap_reloads: AtomicU64,
    /// Gaps no snapshot could cover (none valid, or all older than the trim).
    pub gap_reload_failures: AtomicU64,
    /// Milliseconds writers waited for the last cut (f64 bits).
    pub last_cut_ms: AtomicU64,
    pub last_error: Mutex<String>,
}

/// What `save_snapshot` wrote.
#[derive(Debug, Clone)]
pub struct SnapshotReport {
    pub path: PathBuf,
    pub items: usize,
    pub position: String,
    pub bytes: u64,
    /// How long uploads and stream applies waited for the consistent cut.
    pub cut_ms: f64,
    pub total_ms: f64,
    pub pruned: usize,
}

/// What `load_snapshot` installed.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub path: PathBuf,
    pub items: usize,
    pub position: String,
    pub consumed: u64,
    /// Newer snapshots refused, each with the reason.
    pub skipped: Vec<String>,
    pub load_ms: f64,
}

/// One snapshot decoded and ready to install.
struct Decoded {
    manifest: Manifest,
    path: PathBuf,
    index: HnswIndex,
    infos: Vec<ItemInfo>,
    emb: Vec<f32>,
    batch: BatchTier,
}

fn decode(l: &files::Loaded, dim: usize) -> Result<Decoded> {
    let m = &l.manifest;
    let ctx = |e: Error| match e {
        Error::Corrupt(s) => Error::Corrupt(format!("snapshot {}: {s}", l.path.display())),
        other => other,
    };
    let index = HnswIndex::from_bytes(l.file(INDEX_FILE)?, INDEX_FILE).map_err(ctx)?;
    let (infos, emb) = files::decode_items(l.file(ITEMS_FILE)?, m.dim).map_err(ctx)?;
    let batch = BatchTier::decode(l.file(BATCH_FILE)?).map_err(ctx)?;
    if m.dim != dim || index.dim() != m.dim || infos.len() != m.items {
        return Err(Error::Corrupt(format!(
            "snapshot {} holds {} items of dim {} (index dim {}, manifest {} items); this host \
             serves dim {dim}",
            l.path.display(),
            infos.len(),
            m.dim,
            index.dim(),
            m.items
        )));
    }
    Ok(Decoded {
        manifest: m.clone(),
        path: l.path.clone(),
        index,
        infos,
        emb,
        batch,
    })
}

/// Makes `r.index` hold exactly the snapshot's items: the index was cut at the item table's
/// instant but read while writers went on, so a node removed or replaced after the cut can
/// read as removed; those items are indexed again from the table (embedded by the item tower).
fn reconcile(r: &Retrieval, infos: &[ItemInfo], emb: &[f32], keep: &IdSet) -> Result<()> {
    let dim = emb.len() / infos.len().max(1);
    let (mut ids, mut content) = (Vec::new(), Vec::new());
    for (i, e) in infos.iter().zip(emb.chunks_exact(dim.max(1))) {
        if !r.index.contains(i.id) {
            ids.push(i.id);
            content.extend_from_slice(e);
        }
    }
    if !ids.is_empty() {
        let vecs = r.item_vectors(&content, ids.len())?;
        r.index.add(&ids, &vecs)?;
    }
    let extra: Vec<u64> = r
        .index
        .ids()
        .into_iter()
        .filter(|id| !keep.contains(id))
        .collect();
    if !extra.is_empty() {
        r.index.remove(&extra)?;
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Pipeline {
    /// Writes a snapshot under `dir` (one directory per snapshot; the newest `keep` are kept).
    /// One writer at a time per pipeline; requests are served throughout.
    pub fn save_snapshot(&self, dir: &Path, keep: usize) -> Result<SnapshotReport> {
        if keep == 0 {
            return Err(invalid!("keep must be >= 1, got 0"));
        }
        let st = &self.snapshots;
        let mut last_ms = st.write.lock();
        let t0 = Instant::now();
        let r = self.write_snapshot(dir, keep, &mut last_ms, t0);
        match &r {
            Ok(rep) => {
                Self::count(&st.written, 1);
                st.last_cut_ms
                    .store(rep.cut_ms.to_bits(), Ordering::Relaxed);
            }
            Err(e) => {
                Self::count(&st.write_failures, 1);
                *st.last_error.lock() = format!("write {}: {e}", dir.display());
            }
        }
        r
    }

    fn write_snapshot(
        &self,
        dir: &Path,
        keep: usize,
        last_ms: &mut u64,
        t0: Instant,
    ) -> Result<SnapshotReport> {
        let dim = self.items.dim();
        let (position, consumed, version, index, infos, emb, batch) = {
            let pos = self.catalog.position.lock();
            let _cut = self.cut.write();
            let _r = self.retrieval_update.lock();
            let r = self.retrieval();
            let index = r.index.cut();
            let (infos, emb) = self.live_items();
            let p = pos.clone();
            (p.0, p.1, r.version.clone(), index, infos, emb, self.batch())
        };
        let cut_ms = t0.elapsed().as_secs_f64() * 1e3;
        // the index nodes of the cut, read while uploads go on (install reconciles)
        // the cut ends here (freed slots may be reused again)
        let index = {
            let cut = index;
            cut.to_bytes()
        };
        let items = files::encode_items(&infos, &emb, dim);
        let batch = batch.encode();
        *last_ms = now_ms().max(*last_ms + 1);
        let meta = Manifest {
            created_ms: *last_ms,
            origin: self.stream.clone(),
            position: position.clone(),
            consumed,
            retrieval_version: version,
            dim,
            items: infos.len(),
            files: vec![],
        };
        let parts: [(&str, &[u8]); 3] = [
            (INDEX_FILE, &index),
            (ITEMS_FILE, &items),
            (BATCH_FILE, &batch),
        ];
        let w = files::write(dir, meta, &parts, keep)?;
        Ok(SnapshotReport {
            path: w.path,
            items: infos.len(),
            position,
            bytes: w.bytes,
            cut_ms,
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
            pruned: w.pruned,
        })
    }

    /// The live rows of the item table (a copy, under its read lock).
    fn live_items(&self) -> (Vec<ItemInfo>, Vec<f32>) {
        let t = self.items.read();
        let dim = t.dim();
        let mut infos = Vec::with_capacity(t.n_live());
        let mut emb = Vec::with_capacity(t.n_live() * dim);
        for s in (0..t.slots()).filter(|&s| t.is_live(s)) {
            infos.push(ItemInfo {
                id: t.id(s),
                topic: t.topic(s),
                creator: t.creator(s),
                category: t.category(s),
                upload_ts: t.upload_ts(s),
            });
            emb.extend_from_slice(t.embedding(s));
        }
        (infos, emb)
    }

    /// Installs the newest snapshot under `dir` that verifies; older ones are tried when a
    /// newer one is refused (each refusal counted in `snapshot_fallbacks`). An error when the
    /// directory holds no snapshot, or none that verifies (the message lists each refusal).
    pub fn load_snapshot(&self, dir: &Path) -> Result<LoadReport> {
        self.load_snapshot_where(dir, |_| true)
    }

    /// As `load_snapshot`, among the snapshots whose manifest passes `want` only.
    pub(super) fn load_snapshot_where(
        &self,
        dir: &Path,
        want: impl Fn(&Manifest) -> bool,
    ) -> Result<LoadReport> {
        let t0 = Instant::now();
        let dim = self.items.dim();
        let mut skipped = Vec::new();
        let snaps = files::list(dir)?;
        for p in &snaps {
            let d = files::read_manifest(p)
                .and_then(|m| want(&m).then(|| files::read(p)).transpose())
                .and_then(|l| l.map(|l| decode(&l, dim)).transpose());
            match d {
                Ok(Some(d)) => {
                    self.install(d.manifest.clone(), d.index, &d.infos, &d.emb, d.batch)?;
                    Self::count(&self.snapshots.loads, 1);
                    return Ok(LoadReport {
                        path: d.path,
                        items: d.infos.len(),
                        position: d.manifest.position,
                        consumed: d.manifest.consumed,
                        skipped,
                        load_ms: t0.elapsed().as_secs_f64() * 1e3,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    Self::count(&self.snapshots.fallbacks, 1);
                    *self.snapshots.last_error.lock() = e.to_string();
                    skipped.push(e.to_string());
                }
            }
        }
        Err(if skipped.is_empty() {
            Error::NotFound(format!(
                "no usable snapshot in {} ({} present); write one with save_snapshot",
                dir.display(),
                snaps.len()
            ))
        } else {
            Error::Corrupt(format!(
                "no valid snapshot in {}: {}",
                dir.display(),
                skipped.join("; ")
            ))
        })
    }

    /// Makes the pipeline hold exactly the snapshot's catalogue: items not in it are taken
    /// down here, its items upserted (counters of items already here kept), its index and
    /// batch tier swapped in, the stream position set to the snapshot's.
    fn install(
        &self,
        m: Manifest,
        index: HnswIndex,
        infos: &[ItemInfo],
        emb: &[f32],
        batch: BatchTier,
    ) -> Result<()> {
        let current = self.retrieval();
        if current.version != m.retrieval_version {
            return Err(invalid!(
                "the snapshot's index holds retrieval version {:?}, this host serves {:?}: \
                 load a snapshot of the served version",
                m.retrieval_version,
                current.version
            ));
        }
        let mut pos = self.catalog.position.lock();
        let _cut = self.cut.write();
        let keep: IdSet = infos.iter().map(|i| i.id).collect();
        let gone: Vec<u64> = {
            let t = self.items.read();
            (0..t.slots())
                .filter(|&s| t.is_live(s) && !keep.contains(&t.id(s)))
                .map(|s| t.id(s))
                .collect()
        };
        self.items.remove(&gone);
        // in chunks: requests running meanwhile take the table's read lock between them
        let dim = m.dim.max(1);
        for (i, e) in infos
            .chunks(INSTALL_CHUNK)
            .zip(emb.chunks(INSTALL_CHUNK * dim))
        {
            self.items.upsert(i, e)?;
        }
        let mut by_ts: Vec<(f64, u64)> = infos.iter().map(|i| (i.upload_ts, i.id)).collect();
        by_ts.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
        for (ts, id) in by_ts {
            self.fresh.insert(ts, id);
        }
        {
            let _r = self.retrieval_update.lock();
            let cur = self.retrieval();
            let next = Retrieval {
                version: cur.version.clone(),
                user_tower: cur.user_tower.clone(),
                item_tower: cur.item_tower.clone(),
                index: Arc::new(index),
            };
            reconcile(&next, infos, emb, &keep)?;
            *self.retrieval.write() = Arc::new(next);
        }
        *pos = (m.position, m.consumed);
        drop(_cut);
        drop(pos);
        self.set_batch(batch)
    }

    /// After a gap (entries up to `trimmed` gone before this host read them): installs the
    /// newest valid snapshot that includes them. False (counted) when none does.
    pub(super) fn reload_after_gap(&self, dir: &Path, trimmed: u64) -> bool {
        match self.load_snapshot_where(dir, |m| m.consumed >= trimmed) {
            Ok(_) => {
                Self::count(&self.snapshots.gap_reloads, 1);
                true
            }
            Err(e) => {
                Self::count(&self.snapshots.gap_reload_failures, 1);
                *self.snapshots.last_error.lock() = format!("reload after a stream gap: {e}");
                false
            }
        }
    }

    /// Order-independent digest of the live catalogue (ids, topics, creators) and its size:
    /// two hosts with equal digests serve the same item set.
    pub fn catalog_digest(&self) -> (usize, u64) {
        let t = self.items.read();
        let mut h = 0u64;
        for s in (0..t.slots()).filter(|&s| t.is_live(s)) {
            let mut b = [0u8; 20];
            b[..8].copy_from_slice(&t.id(s).to_le_bytes());
            b[8..12].copy_from_slice(&t.topic(s).to_le_bytes());
            b[12..].copy_from_slice(&t.creator(s).to_le_bytes());
            h = h.wrapping_add(xxhash_rust::xxh3::xxh3_64(&b));
        }
        (t.n_live(), h)
    }

    pub fn snapshot_state(&self) -> &SnapshotState {
        &self.snapshots
    }
}
