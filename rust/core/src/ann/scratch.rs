//! Per-thread search scratch: the visited set (a bitset, cleared word by word per query) and the
//! two heaps. One per thread via `thread_local!`, so rayon workers and Python threads each reuse
//! theirs across queries and across indexes.

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

/// The visited set of one search: a bitset (a bit per slot: 25 KB at 200k nodes, 125 KB at 1M,
/// so it stays in L1/L2 while the codes stream through; a `u16` tag per node was 16 times that)
/// plus the list of words this search dirtied, which `reset` zeroes (the whole set only when
/// more than an eighth of it is dirty).
pub struct Visited {
    bits: Vec<u64>,
    dirty: Vec<u32>,
}

impl Visited {
    /// Start a new query over `n` nodes (grows the set when the index grew).
    pub fn reset(&mut self, n: usize) {
        if self.dirty.len() * 8 > self.bits.len() {
            self.bits.iter_mut().for_each(|w| *w = 0);
        } else {
            for &w in &self.dirty {
                self.bits[w as usize] = 0;
            }
        }
        self.dirty.clear();
        let words = n.div_ceil(64);
        if self.bits.len() < words {
            self.bits.resize((words + words / 4).max(16), 0);
        }
        self.dirty.reserve(self.bits.len() + 1);
    }

    /// Marks `i`; returns true if it was not visited before in this query. Branch-free (a
    /// search's visited tests are coin flips to the branch predictor).
    #[inline(always)]
    pub fn mark(&mut self, i: u32) -> bool {
        let w = (i >> 6) as usize;
        if w >= self.bits.len() {
            // A node inserted after this query started: grow (rare).
            self.bits.resize(w + 16, 0);
            self.dirty.reserve(self.bits.len() + 1);
        }
        // SAFETY: bounds ensured just above.
        let x = unsafe { self.bits.get_unchecked_mut(w) };
        let (old, b) = (*x, 1u64 << (i & 63));
        *x = old | b;
        // Record the word as dirty when it was clean: written unconditionally one past the
        // end, kept by the length. SAFETY: at most `bits.len()` words are ever recorded, and
        // the capacity is at least one more.
        let n = self.dirty.len();
        unsafe {
            *self.dirty.as_mut_ptr().add(n) = w as u32;
            self.dirty.set_len(n + (old == 0) as usize);
        }
        old & b == 0
    }

    /// Whether `i` was visited in this query (no mark).
    #[inline(always)]
    pub fn contains(&self, i: u32) -> bool {
        self.bits
            .get((i >> 6) as usize)
            .is_some_and(|x| x & (1u64 << (i & 63)) != 0)
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
                bits: Vec::new(),
                dirty: Vec::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visited_marks_once_per_query_and_resets() {
        let mut v = Visited {
            bits: Vec::new(),
            dirty: Vec::new(),
        };
        for (round, n) in [(0u32, 100usize), (1, 5000), (2, 5000), (3, 70_000)].into_iter() {
            v.reset(n);
            let ids: Vec<u32> = (0..n as u32).filter(|i| (i * 7 + round) % 3 == 0).collect();
            for &i in &ids {
                assert!(v.mark(i), "round {round}: {i} seen before its mark");
            }
            for &i in &ids {
                assert!(!v.mark(i), "round {round}: {i} lost its mark");
            }
            // Beyond the sized range (a node inserted during the search) grows the set.
            assert!(v.mark(n as u32 + 1000));
            assert!(!v.mark(n as u32 + 1000));
        }
        // A reset after a mostly-dirty round clears everything.
        v.reset(70_000);
        assert!((0..70_000u32).all(|i| v.mark(i)));
        v.reset(70_000);
        assert!(v.mark(69_999));
    }
}
