//! Lazy greedy selection (Minoux 1978) shared by the score, MMR and DPP objectives. Each
//! candidate keeps an upper bound of its objective; because the MMR objective and the DPP
//! marginal gain never increase as items are placed, a candidate is only brought up to date when
//! its bound could still win the slot. The picks equal those of updating every candidate at
//! every step (the same floating-point operations per candidate, in the same order), while the
//! work falls from every candidate to the few that compete.

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

/// The unselected candidates ordered by (bound desc, index asc): `order[head..sorted]` is
/// sorted and every entry of `order[sorted..]` sorts after all of it (the tail is sorted only
/// if a walk reaches it; most picks look at the first few dozen entries).
#[derive(Default)]
pub(crate) struct Queue {
    order: Vec<Entry>,
    head: usize,
    sorted: usize,
    /// The smallest tail entry at the last partition: a refreshed entry that sorts after it
    /// moves to the tail.
    tail_min: Option<Entry>,
}

/// One pick: the candidate and its exact objective value.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Picked {
    pub i: usize,
    pub value: f64,
}

impl Queue {
    /// Fills the queue with `(bound, index)` pairs; about `hint` of them are expected to be
    /// looked at.
    pub fn build(&mut self, items: impl Iterator<Item = (f64, usize)>, hint: usize) {
        self.order.clear();
        self.order.extend(items.map(|(v, i)| Entry::new(v, i)));
        self.head = 0;
        // Tests partition aggressively so that the tail paths run.
        let m = if cfg!(test) {
            hint
        } else {
            hint.saturating_mul(4).saturating_add(32)
        };
        if m < self.order.len() {
            self.order.select_nth_unstable(m);
            self.tail_min = Some(self.order[m]);
            self.order[..m].sort_unstable();
            self.sorted = m;
        } else {
            self.sort_all();
        }
    }

    fn sort_all(&mut self) {
        self.order[self.head..].sort_unstable();
        self.sorted = self.order.len();
        self.tail_min = None;
    }

    /// The candidates still queued (any order).
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.order[self.head..].iter().map(|e| e.i as usize)
    }

    /// Raises every bound by `delta`.
    fn raise(&mut self, delta: f64) {
        for e in &mut self.order[self.head..] {
            *e = Entry::new(e.value() + delta, e.i as usize);
        }
        // Rounding may merge values and reorder ties by index: restore the full order.
        self.sort_all();
    }

    /// Moves the entry at `p` (in the sorted part), whose value just dropped to `fresh`, to its
    /// place.
    fn reposition(&mut self, p: usize, fresh: Entry) {
        if self.tail_min.is_some_and(|t| fresh > t) {
            self.order[p..self.sorted].rotate_left(1);
            self.sorted -= 1;
            self.order[self.sorted] = fresh;
            return;
        }
        let tail = &self.order[p + 1..self.sorted];
        let q = p + 1 + tail.partition_point(|x| *x < fresh);
        self.order[p..q].rotate_left(1);
        self.order[q - 1] = fresh;
    }

    /// Removes and returns the best candidate: the lowest relaxation level (`level(i)`, `None` =
    /// not admissible), then the highest exact value, then the lowest index.
    pub fn pick<G: Gain>(
        &mut self,
        g: &mut G,
        level: impl Fn(usize) -> Option<usize>,
    ) -> Option<Picked> {
        // (position, level, entry) of the best fresh candidate so far.
        let mut best: Option<(usize, usize, Entry)> = None;
        let mut p = self.head;
        loop {
            if p == self.sorted {
                if self.sorted == self.order.len() {
                    break;
                }
                if let (Some((_, 0, be)), Some(t)) = (best, self.tail_min) {
                    if t >= be {
                        break;
                    }
                }
                self.order[self.sorted..].sort_unstable();
                self.sorted = self.order.len();
                self.tail_min = None;
            }
            let e = self.order[p];
            if let Some((_, bl, be)) = best {
                // Everything from here on has a bound no better than the best's value.
                if bl == 0 && e >= be {
                    break;
                }
            }
            let Some(l) = level(e.i as usize) else {
                p += 1;
                continue;
            };
            if let Some((_, bl, be)) = best {
                if l > bl || (l == bl && e >= be) {
                    p += 1;
                    continue;
                }
            }
            let i = e.i as usize;
            if !g.is_fresh(i) {
                // The bound could win: compute the value and move the entry down to its place.
                let fresh = Entry::new(g.refresh(i), i);
                self.reposition(p, fresh);
                continue;
            }
            best = Some((p, l, e));
            p += 1;
        }
        let (pos, _, e) = best?;
        // Close the gap from the front: picks are usually near the head.
        self.order[self.head..=pos].rotate_right(1);
        self.head += 1;
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
        q.build(base.iter().enumerate().map(|(i, &v)| (v, i)), 1);
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
