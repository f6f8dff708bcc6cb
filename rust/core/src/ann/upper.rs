//! The upper levels of a one-row insert, linked after the call returns.
//!
//! A node's level is drawn with `P(level >= 1) = 1/m`, and a node above level 0 costs its insert
//! a beam search (`ef_construction`) and a commit per extra level: twice the work of a level-0
//! insert, in one call of every 16 at `m = 16`, which is the whole p99 of one-row inserts. An
//! `add` of one row therefore links the node on level 0 only (it is searchable when the call
//! returns: every search ends on level 0) and queues it; `link_deferred`, run on the background
//! worker (`pool::spawn`, fork-safe like every pool of ours) right after, links its upper levels
//! (a greedy descent to its level, then the usual search and commit per level) and makes it the
//! entry when it is the highest node. Until then the node is
//! reached through its level-0 links, as any node below its level; the upper levels only route
//! searches to level 0 faster. Batches (whose p99 is not a call's) and deterministic builds link
//! every level in the call.
//!
//! Ordering: the queue is drained with a pin held per node, so `consolidate`'s grace period waits
//! for a node in flight, and `consolidate` drops queued nodes it is about to free (a removed node
//! is skipped anyway); `save`, `to_bytes` and `cut` drain the queue first (`link_deferred` under
//! the index's write gate), so a file holds every level. A tombstoned entry is never handed to a
//! queued node (`move_entry_off_tombstone` asks for a level-1 link of a node above level 0).

use super::graph::Graph;
use super::pool;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Graph {
    /// Link `s` on level 0 now and queue its upper levels; returns whether it has any.
    pub(crate) fn link_deferring(&self, s: u32) -> bool {
        self.link_levels(s, 0, 0);
        if self.store.level(s) == 0 {
            return false;
        }
        self.deferred.lock().push_back(s);
        true
    }

    /// Link the upper levels of every queued node, oldest first, one node at a time. A node
    /// removed since it was queued is skipped.
    pub(crate) fn link_deferred(&self) {
        let _one = self.linker.lock();
        loop {
            let _pin = self.epochs.pin();
            let Some(s) = self.deferred.lock().pop_front() else {
                return;
            };
            if !self.store.is_deleted(s) {
                self.link_levels(s, self.store.level(s), 1);
            }
        }
    }

    /// `link_deferred` on the background worker. A panic there would abort the process, so it
    /// is caught and counted (`HnswStats::deferred_failed`); the node being linked keeps its
    /// level-0 links (searchable, only not on its upper levels). Without a worker (its thread
    /// refused) the caller links them itself.
    pub(crate) fn link_deferred_in_background(self: Arc<Self>) {
        let g = Arc::clone(&self);
        let task = move || {
            if catch_unwind(AssertUnwindSafe(|| g.link_deferred())).is_err() {
                g.deferred_failed.fetch_add(1, Ordering::Relaxed);
            }
        };
        if pool::spawn(task).is_err() {
            self.link_deferred();
        }
    }

    /// Nodes whose upper levels are still queued.
    pub(crate) fn deferred_len(&self) -> usize {
        self.deferred.lock().len()
    }
}
