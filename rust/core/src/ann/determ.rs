//! Deterministic parallel build (`HnswParams::deterministic`): the graph depends only on the
//! seed, the data and its order, never on the thread count or the scheduler. Items go in
//! batches whose size depends only on the graph's size; every item's neighbour search runs in
//! parallel against the graph as it was at the batch start, then the items are linked one
//! after another in input order, each also offered the batch items linked before it.

use super::graph::{Graph, EMPTY};
use super::pool;
use super::scratch::Cand;
use super::store::FLAG_REPAIRED;
use rayon::prelude::*;
use std::sync::atomic::Ordering;

/// Candidates per level, highest level first (the shape `Graph::plan` returns).
type Plan = Vec<(usize, Vec<Cand>)>;

impl Graph {
    /// Insert or replace `items` (label, prepared vector) deterministically. The caller must be
    /// the only writer of this graph while it runs (concurrent searches are fine).
    pub(crate) fn insert_deterministic(
        &self,
        items: &[(u64, &[f32])],
        threads: usize,
    ) -> crate::Result<()> {
        let _pin = self.epochs.pin();
        let mut i = 0;
        while i < items.len() {
            let b = (self.len() / 4).clamp(1, 256).min(items.len() - i);
            let batch = &items[i..i + b];
            let slots = self.alloc_batch(batch)?;
            let e = self.entry_to_link_from();
            let plans: Vec<Plan> = if e == EMPTY {
                vec![Vec::new(); b]
            } else if threads <= 1 {
                slots
                    .iter()
                    .map(|&s| self.plan(s, e, (self.store.level(s), 0)))
                    .collect()
            } else {
                pool::install(threads, || {
                    slots
                        .par_iter()
                        .map(|&s| self.plan(s, e, (self.store.level(s), 0)))
                        .collect()
                })?
            };
            for (j, (&s, mut plan)) in slots.iter().zip(plans).enumerate() {
                self.offer_peers(s, &slots[..j], &mut plan);
                self.finish_insert(batch[j].0, s, &plan);
            }
            i += b;
        }
        Ok(())
    }

    /// Slots for a batch, in order; on failure the slots already taken become unlinked
    /// tombstones (freed by the next consolidation) and nothing is inserted.
    fn alloc_batch(&self, batch: &[(u64, &[f32])]) -> crate::Result<Vec<u32>> {
        let mut slots = Vec::with_capacity(batch.len());
        for (label, v) in batch {
            match self.alloc(*label, v, None) {
                Ok(s) => slots.push(s),
                Err(e) => {
                    for &s in &slots {
                        self.tombstone(s);
                        self.store.set_flag(s, FLAG_REPAIRED);
                    }
                    return Err(e);
                }
            }
        }
        Ok(slots)
    }

    /// Add the already linked batch items `peers` to `s`'s candidates on every level both have.
    fn offer_peers(&self, s: u32, peers: &[u32], plan: &mut Plan) {
        let level = self.store.level(s);
        let top = self.entry().map_or(0, |(_, l)| l).min(level);
        for l in (0..=top).rev() {
            let pos = match plan.iter().position(|(pl, _)| *pl == l) {
                Some(p) => p,
                None => {
                    // A level above the batch-start graph: only peers can be neighbours there.
                    let p = plan
                        .iter()
                        .position(|(pl, _)| *pl < l)
                        .unwrap_or(plan.len());
                    plan.insert(p, (l, Vec::new()));
                    p
                }
            };
            let w = &mut plan[pos].1;
            // A batch item that replaced an id tombstoned a node this plan may hold: never
            // link to a tombstone (`consolidate` relies on it).
            w.retain(|c| !self.store.is_deleted(c.id));
            for &p in peers {
                if self.store.level(p) >= l && !self.store.is_deleted(p) {
                    w.push(Cand {
                        d: self.d(s, p),
                        id: p,
                    });
                }
            }
            w.sort_unstable();
            w.dedup_by_key(|c| c.id);
        }
    }

    /// Publish `s` for `label` with the neighbours in `plan` (as `insert` does after `link`).
    fn finish_insert(&self, label: u64, s: u32, plan: &Plan) {
        let old = self.ids.insert(label, s);
        match old {
            Some(o) => self.tombstone(o),
            None => {
                self.live.fetch_add(1, Ordering::AcqRel);
            }
        }
        let level = self.store.level(s);
        // No entry, or a dead one with no live node to hand it to (`entry_to_link_from`).
        match self.entry().filter(|&(x, _)| !self.store.is_deleted(x)) {
            None => self.set_entry(s, level),
            Some((_, top)) => {
                self.commit(s, plan);
                if level > top {
                    self.set_entry(s, level);
                }
            }
        }
        if let Some(o) = old {
            self.repair(o);
        }
    }
}
