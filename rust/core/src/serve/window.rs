//! Sliding-window event counts (the near-real-time feature tier).
//!
//! A window of width `w` seconds is approximated from two fixed buckets, the current one and the
//! previous one, the way rate limiters do it: at time `t` inside bucket `b = floor(t / w)`,
//! `count ≈ cur + prev * (1 - (t / w - b))`. Everything stored is an integer count per bucket, so
//! updates commute (any order of the same events gives the same state), a shared store can apply
//! them atomically (Redis `HINCRBY`), and an offline replay reproduces the served value bit for
//! bit. Memory is O(1) per key: no ring of buckets to rotate.

/// Bucket index of time `ts` (seconds) for windows of `width` seconds.
pub fn bucket_of(ts: f64, width: f64) -> i64 {
    (ts / width).floor() as i64
}

/// Counts of `K` event kinds in the current and previous bucket of one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window<const K: usize> {
    /// The bucket `cur` belongs to (`prev` is `bucket - 1`); `i64::MIN` when empty.
    pub bucket: i64,
    pub cur: [u32; K],
    pub prev: [u32; K],
}

impl<const K: usize> Default for Window<K> {
    fn default() -> Self {
        Window {
            bucket: i64::MIN,
            cur: [0; K],
            prev: [0; K],
        }
    }
}

impl<const K: usize> Window<K> {
    /// Moves the window forward so that `bucket` is current (never backwards).
    fn roll_to(&mut self, bucket: i64) {
        if bucket <= self.bucket {
            return;
        }
        self.prev = if self.bucket != i64::MIN && bucket == self.bucket + 1 {
            self.cur
        } else {
            [0; K]
        };
        self.cur = [0; K];
        self.bucket = bucket;
    }

    /// Adds `deltas` for an event at `ts`. An event older than the previous bucket no longer
    /// affects any estimate and is ignored.
    pub fn add(&mut self, ts: f64, width: f64, deltas: [u32; K]) {
        let b = bucket_of(ts, width);
        self.roll_to(b);
        let target = if b == self.bucket {
            &mut self.cur
        } else if b == self.bucket - 1 {
            &mut self.prev
        } else {
            return;
        };
        for (t, d) in target.iter_mut().zip(deltas) {
            *t = t.saturating_add(d);
        }
    }

    /// The window as seen from `now`: the current and previous bucket of `now`'s bucket.
    pub fn at(&self, now: f64, width: f64) -> Window<K> {
        let mut w = *self;
        w.roll_to(bucket_of(now, width));
        w
    }

    /// Estimated events of each kind in the `width` seconds up to `now`.
    pub fn estimate(&self, now: f64, width: f64) -> [f32; K] {
        let b = bucket_of(now, width);
        let frac = (now / width - b as f64).clamp(0.0, 1.0);
        let (cur, prev) = if b == self.bucket {
            (self.cur, self.prev)
        } else if self.bucket != i64::MIN && b == self.bucket + 1 {
            ([0; K], self.cur)
        } else {
            return [0.0; K];
        };
        let mut out = [0.0f32; K];
        for k in 0..K {
            out[k] = (f64::from(cur[k]) + f64::from(prev[k]) * (1.0 - frac)) as f32;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_weights_the_previous_bucket() {
        let mut w = Window::<2>::default();
        assert_eq!(w.estimate(5.0, 10.0), [0.0, 0.0]);
        w.add(1.0, 10.0, [4, 1]);
        w.add(12.0, 10.0, [2, 0]);
        // at t=15: cur (bucket 1) = 2, prev (bucket 0) = 4 weighted by 0.5
        assert_eq!(w.estimate(15.0, 10.0), [4.0, 0.5]);
        // at t=25: bucket 1 is previous, weighted by 0.5
        assert_eq!(w.estimate(25.0, 10.0), [1.0, 0.0]);
        assert_eq!(w.estimate(31.0, 10.0), [0.0, 0.0]);
        // a late event for the previous bucket still counts; an older one is dropped
        w.add(9.0, 10.0, [1, 1]);
        w.add(-1.0, 10.0, [100, 100]);
        assert_eq!(w.prev, [5, 2]);
        assert_eq!(w.at(25.0, 10.0).prev, [2, 0]);
        assert_eq!(w.at(25.0, 10.0).cur, [0, 0]);
    }

    #[test]
    fn updates_commute() {
        let events = [
            (0.5, [1u32]),
            (3.0, [2]),
            (7.2, [1]),
            (7.9, [5]),
            (6.0, [3]),
        ];
        let mut a = Window::<1>::default();
        for (t, d) in events {
            a.add(t, 4.0, d);
        }
        let mut b = Window::<1>::default();
        for (t, d) in events.iter().rev() {
            b.add(*t, 4.0, *d);
        }
        // any order gives the same state: a bucket two behind the newest is gone in both
        assert_eq!(a.at(8.0, 4.0), b.at(8.0, 4.0));
        assert_eq!(a.estimate(9.0, 4.0), b.estimate(9.0, 4.0));
    }
}
