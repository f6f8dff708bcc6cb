//! The fresh pool: items younger than the freshness threshold, kept in upload order so that a
//! new upload reaches candidate sets at once, without waiting for the ANN graph or a rebuild.

use parking_lot::RwLock;
use std::collections::VecDeque;

/// Upload-ordered (ts, item id) pairs; old entries are pruned lazily.
#[derive(Default)]
pub struct FreshPool {
    entries: RwLock<VecDeque<(f64, u64)>>,
    /// Entries older than this (seconds) are dropped on insert; the pool never grows unbounded.
    retain_s: f64,
}

impl FreshPool {
    pub fn new(retain_s: f64) -> Self {
        Self {
            entries: RwLock::new(VecDeque::new()),
            retain_s,
        }
    }

    pub fn insert(&self, ts: f64, id: u64) {
        let mut e = self.entries.write();
        // uploads arrive nearly in time order: find the place from the back
        let pos = e.iter().rposition(|&(t, _)| t <= ts).map_or(0, |p| p + 1);
        e.insert(pos, (ts, id));
        let newest = e.back().map_or(ts, |b| b.0);
        while e.front().is_some_and(|&(t, _)| t < newest - self.retain_s) {
            e.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f(id, ts)` for items uploaded in `[now - max_age, now]`, newest first, at most
    /// `limit` of them.
    pub fn for_each_fresh(
        &self,
        now: f64,
        max_age: f64,
        limit: usize,
        mut f: impl FnMut(u64, f64),
    ) {
        let e = self.entries.read();
        let lo = now - max_age;
        for &(t, id) in e
            .iter()
            .rev()
            .filter(|(t, _)| *t <= now)
            .take_while(|(t, _)| *t >= lo)
            .take(limit)
        {
            f(id, t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_within_age_and_pruned() {
        let p = FreshPool::new(100.0);
        for (t, id) in [(10.0, 1), (30.0, 3), (20.0, 2), (50.0, 5)] {
            p.insert(t, id);
        }
        let mut got = vec![];
        p.for_each_fresh(50.0, 25.0, 10, |id, _| got.push(id));
        assert_eq!(got, vec![5, 3]);
        p.insert(200.0, 9); // prunes everything older than 100
        assert_eq!(p.len(), 1);
    }
}
