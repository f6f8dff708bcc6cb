//! Per-thread search scratch: the visited set (epoch-tagged, never cleared or reallocated per
//! query) and the two heaps. One per thread via `thread_local!`, so rayon workers and Python
//! threads each reuse theirs across queries and across indexes.

use std::cell::RefCell;
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;

/// A (distance, node) pair ordered by distance, then node (total order, NaN-free by construction).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cand {
    pub d: f32,
    pub id: u32,
}

impl Eq for Cand {}
impl PartialOrd for Cand {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Cand {
    fn cmp(&self, o: &Self) -> CmpOrdering {
        self.d.total_cmp(&o.d).then(self.id.cmp(&o.id))
    }
}

/// Min-heap adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Near(pub std::cmp::Reverse<Cand>);

pub struct Visited {
    tags: Vec<u16>,
    epoch: u16,
}

impl Visited {
    /// Start a new query over `n` nodes (grows the tag array when the index grew).
    pub fn reset(&mut self, n: usize) {
        if self.tags.len() < n {
            let cap = (n + n / 4).max(1024);
            self.tags.resize(cap, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.tags.iter_mut().for_each(|t| *t = 0);
            self.epoch = 1;
        }
    }

    /// Marks `i`; returns true if it was already visited in this query.
    #[inline(always)]
    pub fn check_and_mark(&mut self, i: u32) -> bool {
        let i = i as usize;
        if i >= self.tags.len() {
            // A node inserted after this query started: grow (rare).
            self.tags.resize(i + 1024, 0);
        }
        // SAFETY: bounds ensured just above.
        let t = unsafe { self.tags.get_unchecked_mut(i) };
        if *t == self.epoch {
            true
        } else {
            *t = self.epoch;
            false
        }
    }
}

pub struct Scratch {
    pub visited: Visited,
    pub cands: BinaryHeap<Near>,
    pub results: BinaryHeap<Cand>,
}

thread_local! {
    static SCRATCH: RefCell<Option<Scratch>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's scratch (a fresh one if the thread's is already in use, e.g.
/// by a re-entrant call).
pub fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| {
        let taken = cell.try_borrow_mut().ok().and_then(|mut s| s.take());
        let mut s = taken.unwrap_or_else(|| Scratch {
            visited: Visited {
                tags: Vec::new(),
                epoch: 0,
            },
            cands: BinaryHeap::new(),
            results: BinaryHeap::new(),
        });
        let r = f(&mut s);
        if let Ok(mut slot) = cell.try_borrow_mut() {
            *slot = Some(s);
        }
        r
    })
}
