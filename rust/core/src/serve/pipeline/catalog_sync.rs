//! Catalogue replication between serving hosts over the shared tier's catalogue stream: every
//! live upload and take-down is published; `sync_catalog` applies the other hosts' entries
//! (idempotently: upserts and removals by item id) and remembers its stream position.

use super::Pipeline;
use crate::serve::idhash::IdMap;
use crate::serve::redis_tier::{check_upload_dim, parse_id, CatalogChange, CatalogEntry};
use crate::serve::store::ItemInfo;
use crate::Result;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::AtomicU64;

/// Catalogue changes kept for republication while the shared tier is unreachable; beyond this
/// the oldest are dropped (counted: those changes then reach the other hosts only through a
/// snapshot).
pub const MAX_PENDING_CHANGES: usize = 100_000;

/// Replication state and counters (on `stats()` and `/metrics`).
pub(super) struct CatalogSync {
    /// The last stream id applied (or skipped as our own), and how many entries this host
    /// consumed since the stream began (to detect entries trimmed before it read them).
    pub(super) position: Mutex<(String, u64)>,
    /// Items this host published changes of that its position has not passed yet, with the
    /// stream id of that change: an older entry read later for the same item is superseded
    /// (this host already holds the newer state), so every host ends with the stream's last
    /// change per item (item id + stream id decide, not arrival order).
    newer: Mutex<IdMap<(u64, u64)>>,
    /// Live changes not published yet (the tier was unreachable), oldest first: published, in
    /// order, before any later change and at the start of every `sync_catalog`.
    pending: Mutex<VecDeque<CatalogChange>>,
    pub republished: AtomicU64,
    pub pending_dropped: AtomicU64,
    pub superseded: AtomicU64,
    pub published: AtomicU64,
    pub publish_failures: AtomicU64,
    pub applied: AtomicU64,
    pub gaps: AtomicU64,
}

impl Default for CatalogSync {
    fn default() -> Self {
        CatalogSync {
            position: Mutex::new(("0-0".to_owned(), 0)),
            newer: Mutex::new(IdMap::default()),
            pending: Mutex::new(VecDeque::new()),
            republished: AtomicU64::new(0),
            pending_dropped: AtomicU64::new(0),
            superseded: AtomicU64::new(0),
            published: AtomicU64::new(0),
            publish_failures: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
        }
    }
}

/// What one `sync_catalog` call did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncReport {
    /// Other hosts' changes applied.
    pub applied: usize,
    /// This host's own entries passed over (already applied when published).
    pub own: usize,
    /// Entries after our position were trimmed from the stream before we read them: changes
    /// were missed and the host must reload a catalogue snapshot (counted, and reported).
    pub gap: bool,
    /// The stream position after the call.
    pub position: String,
    /// A gap was covered by reloading the newest snapshot (then replaying from its position).
    pub reloaded: bool,
    /// Other hosts' entries passed over because this host published a newer change of the
    /// same items.
    pub superseded: usize,
}

impl Pipeline {
    /// Publishes live catalogue changes to the shared tier (when attached), after any still
    /// pending from an outage (stream order = the order they were made here). A failure is
    /// counted (`catalog_publish_failures`) and the changes wait in the pending queue (bounded,
    /// `MAX_PENDING_CHANGES`): applied here at once, published when the tier answers again.
    pub(super) fn publish_changes(&self, changes: Vec<CatalogChange>) {
        if self.shared.is_none() {
            return;
        }
        let mut pending = self.catalog.pending.lock();
        let (n, late) = (changes.len() as u64, pending.len() as u64);
        pending.extend(changes);
        if self.flush_locked(&mut pending).is_ok() {
            Self::count(&self.catalog.republished, late);
        } else {
            Self::count(&self.catalog.publish_failures, n);
            let over = pending.len().saturating_sub(MAX_PENDING_CHANGES);
            if over > 0 {
                pending.drain(..over);
                Self::count(&self.catalog.pending_dropped, over as u64);
            }
        }
    }

    /// Publishes the pending changes (those left from an outage are counted as republished);
    /// an unreachable tier is an error and the changes stay queued.
    pub(super) fn flush_pending(&self) -> Result<()> {
        let mut pending = self.catalog.pending.lock();
        let before = pending.len() as u64;
        self.flush_locked(&mut pending)?;
        Self::count(&self.catalog.republished, before);
        Ok(())
    }

    fn flush_locked(&self, pending: &mut VecDeque<CatalogChange>) -> Result<()> {
        let Some(tier) = &self.shared else {
            return Ok(());
        };
        if pending.is_empty() {
            return Ok(());
        }
        let changes: Vec<CatalogChange> = pending.iter().cloned().collect();
        let ids = tier.publish_catalog(&self.stream, &changes)?;
        pending.clear();
        Self::count(&self.catalog.published, changes.len() as u64);
        self.mark_newer(&changes, &ids);
        Ok(())
    }

    /// Remembers the stream id of this host's latest change per item (see `newer`).
    fn mark_newer(&self, changes: &[CatalogChange], ids: &[String]) {
        let mut newer = self.catalog.newer.lock();
        for (c, id) in changes.iter().zip(ids) {
            let Some(at) = parse_id(id) else { continue };
            let items = match c {
                CatalogChange::Upload { info, .. } => std::slice::from_ref(&info.id),
                CatalogChange::Removal { ids, .. } => ids.as_slice(),
            };
            for &item in items {
                let e = newer.entry(item).or_insert(at);
                *e = (*e).max(at);
            }
        }
    }

    /// Live changes waiting for the shared tier.
    pub fn catalog_pending(&self) -> usize {
        self.catalog.pending.lock().len()
    }

    /// Applies another host's entry; false when this host published a newer change of every
    /// item it touches (superseded, nothing to do).
    fn apply_entry(&self, e: &CatalogEntry) -> Result<bool> {
        let at = parse_id(&e.id);
        match &e.change {
            CatalogChange::Upload { info, embedding } => {
                if self.superseded(info.id, at) {
                    return Ok(false);
                }
                self.upsert(std::slice::from_ref(info), embedding, true, true, false)?;
            }
            CatalogChange::Removal { ids, ts } => {
                let ids: Vec<u64> = ids
                    .iter()
                    .copied()
                    .filter(|&i| !self.superseded(i, at))
                    .collect();
                if ids.is_empty() {
                    return Ok(false);
                }
                self.remove(&ids, *ts, false)?;
            }
        }
        Ok(true)
    }

    /// Whether this host published a change of `item` newer than stream id `at`.
    fn superseded(&self, item: u64, at: Option<(u64, u64)>) -> bool {
        let newer = self.catalog.newer.lock();
        matches!((newer.get(&item), at), (Some(n), Some(at)) if *n > at)
    }

    pub(super) fn upload_changes(
        infos: &[ItemInfo],
        embeddings: &[f32],
        dim: usize,
    ) -> Vec<CatalogChange> {
        infos
            .iter()
            .zip(embeddings.chunks_exact(dim.max(1)))
            .map(|(i, e)| CatalogChange::Upload {
                info: *i,
                embedding: e.to_vec(),
            })
            .collect()
    }

    /// Applies up to `max_entries` catalogue changes other hosts published since the last
    /// call. Without a shared tier there is nothing to sync (an empty report). Calls are
    /// serialised; an unreachable tier is an error (the position does not move). With
    /// `snapshots`, a gap (entries trimmed before this host read them) reloads the newest
    /// snapshot there that includes them, and the entries after it are applied instead.
    pub fn sync_catalog(&self, max_entries: usize, snapshots: Option<&Path>) -> Result<SyncReport> {
        let Some(tier) = &self.shared else {
            return Ok(SyncReport::default());
        };
        // this host's changes from an outage go out first, so the others catch up on them
        self.flush_pending()?;
        let mut reloaded = None;
        loop {
            let mut pos = self.catalog.position.lock();
            let read = tier.read_catalog(&pos.0, max_entries)?;
            // entries trimmed that this host never consumed: it missed changes (reported once)
            let gap = read.trimmed > pos.1;
            if let (true, None, Some(dir)) = (gap, reloaded, snapshots) {
                drop(pos);
                reloaded = Some(self.reload_after_gap(dir, read.trimmed));
                continue;
            }
            pos.1 = pos.1.max(read.trimmed);
            let mut report = SyncReport {
                gap,
                reloaded: reloaded == Some(true),
                ..SyncReport::default()
            };
            if gap {
                Self::count(&self.catalog.gaps, 1);
            }
            self.apply_entries(read.entries, &mut pos, &mut report)?;
            report.position = pos.0.clone();
            return Ok(report);
        }
    }

    fn apply_entries(
        &self,
        entries: Vec<CatalogEntry>,
        pos: &mut (String, u64),
        report: &mut SyncReport,
    ) -> Result<()> {
        let dim = self.items.dim();
        for e in entries {
            if e.origin == self.stream {
                report.own += 1;
            } else {
                check_upload_dim(&e, dim)?;
                if self.apply_entry(&e)? {
                    report.applied += 1;
                    Self::count(&self.catalog.applied, 1);
                } else {
                    report.superseded += 1;
                    Self::count(&self.catalog.superseded, 1);
                }
            }
            pos.0 = e.id;
            pos.1 += 1;
        }
        // entries read from now on are newer than the position: older marks can go
        if let Some(p) = parse_id(&pos.0) {
            self.catalog.newer.lock().retain(|_, n| *n > p);
        }
        Ok(())
    }

    /// This host's name in the catalogue stream and the feature changelog.
    pub fn stream_name(&self) -> &str {
        &self.stream
    }
}
