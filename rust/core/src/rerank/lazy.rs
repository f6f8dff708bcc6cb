//! Lazy greedy selection (Minoux 1978) shared by the score, MMR and DPP objectives. Each
//! candidate keeps an upper bound of its objective; because the MMR objective and the DPP
//! marginal gain never increase as items are placed, a candidate is only brought up to date when
//! its bound could still win the slot. The picks equal those of updating every candidate at
//! every step (up to last-bit rounding in near-ties), while the work falls from every candidate
//! to the few that compete.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// An objective whose value per candidate can only decrease as items are selected.
pub(crate) trait Gain {
    /// Whether `bound(i)` is the exact current value.
    fn is_fresh(&self, i: usize) -> bool;
    /// Brings `i` up to date and returns its exact current value.
    fn refresh(&mut self, i: usize) -> f64;
    /// Records `i` as selected. Returns how much every stale bound must rise to remain an upper
    /// bound (MMR's first pick switches the penalty from 0 to a max over a non-empty set).
    fn select(&mut self, i: usize) -> f64;
}

/// The score objective: always fresh, never changes.
pub(crate) struct ScoreGain<'a>(pub &'a [f32]);

impl Gain for ScoreGain<'_> {
    fn is_fresh(&self, _: usize) -> bool {
        true
    }
    fn refresh(&mut self, i: usize) -> f64 {
        self.0[i] as f64
    }
    fn select(&mut self, _: usize) -> f64 {
        0.0
    }
}

/// `f64` to `u64` with the same order (all values here are finite or -inf).
#[inline]
fn ordered(v: f64) -> u64 {
    let b = (v + 0.0).to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | (1 << 63)
    }
}

#[inline]
fn unordered(k: u64) -> f64 {
    f64::from_bits(if k >> 63 == 1 { k & !(1 << 63) } else { !k })
}

/// A queue entry: ascending `(key, index)` is descending value, then ascending index.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct Entry {
    key: u64,
    i: u32,
}

impl Entry {
    fn new(v: f64, i: usize) -> Self {
        Entry {
            key: !ordered(v),
            i: i as u32,
        }
    }
    fn value(self) -> f64 {
        unordered(!self.key)
    }
}

/// Unit tests sort only a prefix of `hint` entries so that the tail paths run; the timing
/// harness turns that off to measure what production runs.
#[cfg(test)]
pub(crate) static FULL_SORT: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

#[cfg(test)]
fn partition_for_tests() -> bool {
    !FULL_SORT.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(not(test))]
fn partition_for_tests() -> bool {
    false
}

/// A dead array slot (its candidate was picked or moved to the heap).
const DEAD: u32 = u32::MAX;

/// The unselected candidates, best first by (bound desc, index asc), in two parts:
/// - `order`: the initial bounds, never moved. `order[head..sorted]` is sorted and every entry of
///   `order[sorted..]` sorts after all of it (the tail is sorted only if a walk reaches it; most
///   picks look at the first few dozen entries). Slots whose candidate left are `DEAD`.
/// - `heap`: candidates whose value was recomputed (a refreshed value only drops, so it is
///   re-queued in O(log n) instead of moving entries of a long array).
#[derive(Default)]
pub(crate) struct Queue {
    order: Vec<Entry>,
    head: usize,
    sorted: usize,
    heap: BinaryHeap<Reverse<Entry>>,
    /// Heap entries taken out during one walk (skipped), put back after it.
    side: Vec<Entry>,
    /// Packed (score, index) sort keys used by `build`.
    keys: Vec<u64>,
}

/// One pick: the candidate and its exact objective value.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Picked {
    pub i: usize,
    pub value: f64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum From {
    Array(usize),
    Heap,
}

impl Queue {
    /// Fills the queue with `cands`, whose initial bounds `bound(i)` must be non-decreasing in
    /// `scores[i]` (true of the score, MMR and DPP objectives), sorted by packed integer keys.
    /// `hint` (how many candidates a caller expects to look at) sizes the sorted prefix in tests.
    pub fn build(
        &mut self,
        scores: &[f32],
        cands: impl Iterator<Item = usize>,
        bound: impl Fn(usize) -> f64,
        hint: usize,
    ) {
        self.keys.clear();
        self.keys.extend(cands.map(|i| {
            let b = (scores[i] + 0.0).to_bits();
            let asc = if b >> 31 == 1 { !b } else { b | 0x8000_0000 };
            ((!asc as u64) << 32) | i as u64
        }));
        self.heap.clear();
        self.head = 0;
        // Sorting the packed u64 keys of every candidate is cheaper than sorting a partition and
        // later the tail as 16-byte entries (lazy DPP walks past a few hundred candidates).
        // Tests partition aggressively so that the tail paths stay covered.
        let m = if partition_for_tests() {
            hint
        } else {
            usize::MAX
        };
        if m < self.keys.len() {
            self.keys.select_nth_unstable(m);
            self.keys[..m].sort_unstable();
            self.sorted = m;
        } else {
            self.keys.sort_unstable();
            self.sorted = self.keys.len();
        }
        self.order.clear();
        self.order.extend(self.keys.iter().map(|&k| {
            let i = (k & 0xffff_ffff) as usize;
            Entry::new(bound(i), i)
        }));
        // Equal scores give equal bounds, already in index order. A monotone bound can still
        // merge distinct scores (lambda = 0, exp underflow): then sort the entries themselves
        // (also when the tail's best ties the prefix's last bound: an index could be out of order).
        let prefix_inverted = self.order[..self.sorted].windows(2).any(|w| w[0] > w[1]);
        // A tail entry may tie the prefix's last bound with a smaller index.
        let boundary_tie = self.sorted > 0
            && self.sorted < self.order.len()
            && self.order[self.sorted - 1].key >= self.order[self.sorted].key;
        if prefix_inverted || boundary_tie {
            self.order.sort_unstable();
            self.sorted = self.order.len();
        }
    }

    /// The candidates still queued (any order).
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.order[self.head..]
            .iter()
            .filter(|e| e.i != DEAD)
            .chain(self.heap.iter().map(|r| &r.0))
            .map(|e| e.i as usize)
    }

    /// Raises every bound by `delta`.
    fn raise(&mut self, delta: f64) {
        // Rebuild in `side` (empty between walks), then swap: no allocation once grown.
        let mut all = std::mem::take(&mut self.side);
        all.extend(
            self.order[self.head..]
                .iter()
                .filter(|e| e.i != DEAD)
                .chain(self.heap.iter().map(|r| &r.0))
                .map(|e| Entry::new(e.value() + delta, e.i as usize)),
        );
        all.sort_unstable();
        std::mem::swap(&mut self.order, &mut all);
        all.clear();
        self.side = all;
        self.heap.clear();
        self.head = 0;
        self.sorted = self.order.len();
    }

    /// The next live array position at or after `p`, sorting the tail when the walk reaches it.
    fn next_live(&mut self, mut p: usize) -> Option<usize> {
        loop {
            if p == self.sorted {
                if self.sorted == self.order.len() {
                    return None;
                }
                self.order[self.sorted..].sort_unstable();
                self.sorted = self.order.len();
            }
            if self.order[p].i != DEAD {
                return Some(p);
            }
            p += 1;
        }
    }

    /// Removes and returns the best candidate: the lowest relaxation level (`level(i)`, `None` =
    /// not admissible), then the highest exact value, then the lowest index.
    pub fn pick<G: Gain>(
        &mut self,
        g: &mut G,
        level: impl Fn(usize) -> Option<usize>,
    ) -> Option<Picked> {
        self.skip_dead_head();
        // (source, level, entry) of the best fresh candidate so far.
        let mut best: Option<(From, usize, Entry)> = None;
        let mut p = self.head;
        while let Some((src, e)) = self.next_candidate(&mut p) {
            if let Some((_, bl, be)) = best {
                // Everything from here on has a bound no better than the best's value.
                if bl == 0 && e >= be {
                    break;
                }
            }
            let i = e.i as usize;
            let lvl = level(i);
            let skip = match (lvl, best) {
                (None, _) => true,
                (Some(l), Some((_, bl, be))) => l > bl || (l == bl && e >= be),
                _ => false,
            };
            if skip {
                self.pass(src, e, &mut p);
                continue;
            }
            if !g.is_fresh(i) {
                // The bound could win: compute the value and re-queue it.
                self.requeue(src, Entry::new(g.refresh(i), i));
                continue;
            }
            self.pass(src, e, &mut p);
            best = Some((src, lvl.unwrap_or(0), e));
        }
        let e = self.end_walk(best.map(|(src, _, e)| (src, e)))?;
        let i = e.i as usize;
        let raise = g.select(i);
        if raise != 0.0 {
            self.raise(raise);
        }
        Some(Picked {
            i,
            value: e.value(),
        })
    }

    /// Advances `head` past dead array slots.
    #[inline]
    fn skip_dead_head(&mut self) {
        while self.head < self.order.len() && self.order[self.head].i == DEAD {
            self.head += 1;
        }
    }

    /// The next candidate of a walk at array position `p` (moved to the next live slot): the
    /// better of the array's next live entry and the heap's top.
    #[inline]
    fn next_candidate(&mut self, p: &mut usize) -> Option<(From, Entry)> {
        let a = self.next_live(*p);
        *p = a.unwrap_or(*p);
        let h = self.heap.peek().map(|r| r.0);
        match (a, h) {
            (None, None) => None,
            (Some(q), None) => Some((From::Array(q), self.order[q])),
            (None, Some(he)) => Some((From::Heap, he)),
            (Some(q), Some(he)) => {
                if self.order[q] < he {
                    Some((From::Array(q), self.order[q]))
                } else {
                    Some((From::Heap, he))
                }
            }
        }
    }

    /// Moves the walk past `e`, which stays queued: the next array slot, or off the heap into
    /// `side` (put back after the walk).
    #[inline]
    fn pass(&mut self, src: From, e: Entry, p: &mut usize) {
        match src {
            From::Array(_) => *p += 1,
            From::Heap => {
                self.heap.pop();
                self.side.push(e);
            }
        }
    }

    /// Re-queues a refreshed entry on the heap (a heap top is replaced in place: one sift-down
    /// instead of a pop and a push; an array slot is killed).
    #[inline]
    fn requeue(&mut self, src: From, fresh: Entry) {
        let fresh = Reverse(fresh);
        match src {
            From::Heap => {
                if let Some(mut top) = self.heap.peek_mut() {
                    *top = fresh;
                }
            }
            From::Array(pos) => {
                self.order[pos].i = DEAD;
                self.heap.push(fresh);
            }
        }
    }

    /// Ends a walk: removes the best entry (if any) from the queue, puts the passed heap
    /// entries back, and returns the best.
    #[inline]
    fn end_walk(&mut self, best: Option<(From, Entry)>) -> Option<Entry> {
        let picked = best.map(|(src, e)| {
            match src {
                From::Array(pos) => self.order[pos].i = DEAD,
                From::Heap => {
                    if let Some(k) = self.side.iter().position(|x| *x == e) {
                        self.side.swap_remove(k);
                    }
                }
            }
            e
        });
        for e in self.side.drain(..) {
            self.heap.push(Reverse(e));
        }
        picked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_keys_round_trip_and_sort() {
        let vals = [f64::NEG_INFINITY, -3.5, -0.0, 0.0, 1e-300, 2.0, 1e300];
        for w in vals.windows(2) {
            assert!(ordered(w[0]) <= ordered(w[1]));
        }
        for &v in &vals {
            assert_eq!(unordered(ordered(v)), v + 0.0);
        }
    }

    /// An objective that decays by a fixed amount per selection for odd items (lazy refreshes).
    struct Decay {
        base: Vec<f64>,
        seen: Vec<usize>,
        picks: usize,
    }

    impl Gain for Decay {
        fn is_fresh(&self, i: usize) -> bool {
            self.seen[i] == self.picks
        }
        fn refresh(&mut self, i: usize) -> f64 {
            self.seen[i] = self.picks;
            self.base[i] - if i % 2 == 1 { self.picks as f64 } else { 0.0 }
        }
        fn select(&mut self, _: usize) -> f64 {
            self.picks += 1;
            0.0
        }
    }

    #[test]
    fn lazy_picks_equal_eager_picks() {
        let base: Vec<f64> = (0..40).map(|i| ((i * 7919) % 23) as f64 / 2.0).collect();
        let mut g = Decay {
            base: base.clone(),
            seen: vec![0; 40],
            picks: 0,
        };
        let mut q = Queue::default();
        let scores: Vec<f32> = base.iter().map(|&v| v as f32).collect();
        q.build(&scores, 0..40, |i| base[i], 1);
        let mut eager: Vec<usize> = Vec::new();
        let mut lazy = Vec::new();
        for t in 0..40 {
            let val = |i: usize| base[i] - if i % 2 == 1 { t as f64 } else { 0.0 };
            let best = (0..40).filter(|i| !eager.contains(i) && i % 5 != 0).fold(
                None,
                |b: Option<usize>, i| match b {
                    Some(j) if val(j) >= val(i) => Some(j),
                    _ => Some(i),
                },
            );
            let got = q.pick(&mut g, |i| if i % 5 == 0 { None } else { Some(0) });
            assert_eq!(got.map(|p| p.i), best);
            if let Some(b) = best {
                assert_eq!(got.unwrap().value, val(b));
                eager.push(b);
                lazy.push(b);
            }
        }
        assert_eq!(lazy.len(), 32);
    }
}
