//! Sliding-window constraint tracking for the re-ranker. The feed is built left to right, so a
//! window `[p - w + 1, p]` is complete when slot p is filled: checking "count over the last
//! `w - 1` placed items + 1 <= cap" at each placement checks every window exactly once.

use super::policy::Rule;

/// Maps arbitrary u64 ids (topics, creators) to dense `0..len` ids. Open addressing with
/// generation stamps, so a call neither clears nor allocates once the table is large enough.
#[derive(Default)]
pub(crate) struct Interner {
    keys: Vec<u64>,
    vals: Vec<u32>,
    stamp: Vec<u32>,
    gen: u32,
    bits: u32,
    len: u32,
}

impl Interner {
    /// Prepares for up to `n` distinct ids.
    pub fn reset(&mut self, n: usize) {
        let size = (2 * n).next_power_of_two().max(16);
        if self.keys.len() < size {
            self.keys.resize(size, 0);
            self.vals.resize(size, 0);
            self.stamp.clear();
            self.stamp.resize(size, 0);
            self.gen = 0;
        }
        self.bits = self.keys.len().trailing_zeros();
        self.gen = self.gen.wrapping_add(1);
        if self.gen == 0 {
            self.stamp.fill(0);
            self.gen = 1;
        }
        self.len = 0;
    }

    /// The dense id of `key`, allocating the next one for a new key.
    #[inline]
    pub fn intern(&mut self, key: u64) -> u32 {
        let mask = self.keys.len() - 1;
        let mut h = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.bits)) as usize;
        loop {
            if self.stamp[h] != self.gen {
                self.stamp[h] = self.gen;
                self.keys[h] = key;
                self.vals[h] = self.len;
                self.len += 1;
                return self.len - 1;
            }
            if self.keys[h] == key {
                return self.vals[h];
            }
            h = (h + 1) & mask;
        }
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }
}

/// No category cap applies to the candidate.
pub(crate) const NO_CAP: u32 = u32::MAX;

/// What the window tracker needs to know about one candidate.
#[derive(Clone, Copy, Default)]
pub(crate) struct Item {
    pub topic: u32,
    pub creator: u32,
    /// Index into the policy's category caps, or [`NO_CAP`].
    pub cap: u32,
    pub fresh: bool,
}

/// A violation that makes a candidate inadmissible at any relaxation level.
pub(crate) const SAFETY: u8 = 0x80;

/// Per-window counts of topics, creators and capped categories over the last `w - 1` slots.
#[derive(Default)]
pub(crate) struct Window {
    w: usize,
    topic_cap: u32,
    creator_cap: u32,
    topic: Vec<u32>,
    creator: Vec<u32>,
    cat: Vec<u32>,
    /// Pinned items in the next `w - 1` slots (they will be placed there whatever we pick), so
    /// a candidate is checked against every window it shares with them.
    ahead_topic: Vec<u32>,
    ahead_creator: Vec<u32>,
    ahead_cat: Vec<u32>,
}

impl Window {
    /// `cat_caps` is the number of category caps; `topic_cap` / `creator_cap` are `u32::MAX`
    /// when unset.
    pub fn reset(
        &mut self,
        w: usize,
        topic_cap: u32,
        creator_cap: u32,
        n_topics: usize,
        n_creators: usize,
        cat_caps: usize,
    ) {
        self.w = w;
        self.topic_cap = topic_cap;
        self.creator_cap = creator_cap;
        for (v, len) in [
            (&mut self.topic, n_topics),
            (&mut self.creator, n_creators),
            (&mut self.cat, cat_caps),
            (&mut self.ahead_topic, n_topics),
            (&mut self.ahead_creator, n_creators),
            (&mut self.ahead_cat, cat_caps),
        ] {
            v.clear();
            v.resize(len, 0);
        }
    }

    /// Before filling slot `p`: forget the item that leaves the window (`placed[p - w]`).
    #[inline]
    pub fn slide(&mut self, placed: &[usize], items: &[Item], p: usize) {
        if p >= self.w {
            let it = items[placed[p - self.w]];
            self.topic[it.topic as usize] -= 1;
            self.creator[it.creator as usize] -= 1;
            if it.cap != NO_CAP {
                self.cat[it.cap as usize] -= 1;
            }
        }
    }

    /// The rules that placing `it` in the current slot would break: a mask of [`Rule::bit`]s,
    /// plus [`SAFETY`] for a safety cap. `cat_limit[c]` is (cap count, is safety).
    #[inline]
    pub fn violations(&self, it: Item, cat_limit: &[(u32, bool)]) -> u8 {
        let mut m = 0u8;
        let (t, c) = (it.topic as usize, it.creator as usize);
        if self.topic[t] + self.ahead_topic[t] >= self.topic_cap {
            m |= Rule::MaxTopicShare.bit();
        }
        if self.creator[c] + self.ahead_creator[c] >= self.creator_cap {
            m |= Rule::MaxPerCreator.bit();
        }
        if it.cap != NO_CAP {
            let (limit, safety) = cat_limit[it.cap as usize];
            if self.cat[it.cap as usize] + self.ahead_cat[it.cap as usize] >= limit {
                m |= if safety {
                    SAFETY
                } else {
                    Rule::CategoryCaps.bit()
                };
            }
        }
        m
    }

    /// A pinned item enters (`delta = 1`) or leaves (`-1`, when its slot is reached) the
    /// look-ahead counts.
    pub fn ahead(&mut self, it: Item, enter: bool) {
        let f = |x: &mut u32| {
            if enter {
                *x += 1
            } else {
                *x -= 1
            }
        };
        f(&mut self.ahead_topic[it.topic as usize]);
        f(&mut self.ahead_creator[it.creator as usize]);
        if it.cap != NO_CAP {
            f(&mut self.ahead_cat[it.cap as usize]);
        }
    }

    #[inline]
    pub fn add(&mut self, it: Item) {
        self.topic[it.topic as usize] += 1;
        self.creator[it.creator as usize] += 1;
        if it.cap != NO_CAP {
            self.cat[it.cap as usize] += 1;
        }
    }
}

/// The lowest relaxation level at which a candidate with violation mask `m` is admissible:
/// 0 when it breaks nothing, otherwise one more than the priority of the latest-relaxing rule it
/// breaks (levels relax rules cumulatively in [`Rule::ORDER`]). `None` for a safety violation.
#[inline]
pub(crate) fn level(m: u8) -> Option<usize> {
    if m & SAFETY != 0 {
        None
    } else {
        Some((8 - m.leading_zeros()) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interner_is_dense_and_stable_across_resets() {
        let mut it = Interner::default();
        for round in 0..3 {
            it.reset(5);
            let ids: Vec<u32> = [7u64, 9, 7, u64::MAX, 0, 9]
                .iter()
                .map(|&k| it.intern(k.wrapping_add(round)))
                .collect();
            assert_eq!(ids, vec![0, 1, 0, 2, 3, 1]);
            assert_eq!(it.len(), 4);
        }
        it.reset(1000);
        for k in 0..1000u64 {
            assert_eq!(it.intern(k * 1024), k as u32);
        }
    }

    #[test]
    fn levels_follow_the_relaxation_order() {
        assert_eq!(level(0), Some(0));
        assert_eq!(level(Rule::FreshFloor.bit()), Some(1));
        assert_eq!(
            level(Rule::MaxTopicShare.bit() | Rule::FreshFloor.bit()),
            Some(2)
        );
        assert_eq!(level(Rule::MaxPerCreator.bit()), Some(4));
        assert_eq!(level(SAFETY | 1), None);
    }
}
