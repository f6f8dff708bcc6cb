//! Grace periods for slot reuse: every graph operation pins the current epoch; `synchronize`
//! flips the epoch and waits until every operation pinned before the flip has finished. A slot
//! unlinked before a `synchronize` is then unreachable by any reader and may be rewritten (the
//! two-counter scheme of userspace RCU, with the counters per graph, not per thread).

use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

pub struct Epochs {
    epoch: AtomicUsize,
    active: [AtomicUsize; 2],
    sync: Mutex<()>,
}

/// An operation in flight; dropping it ends the operation.
pub struct Pin<'a> {
    count: &'a AtomicUsize,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, SeqCst);
    }
}

impl Default for Epochs {
    fn default() -> Self {
        Epochs {
            epoch: AtomicUsize::new(0),
            active: [AtomicUsize::new(0), AtomicUsize::new(0)],
            sync: Mutex::new(()),
        }
    }
}

impl Epochs {
    /// Enter an operation. Re-checks the epoch after counting itself, so a flip that the
    /// waiter already saw can never miss this operation.
    #[inline]
    pub fn pin(&self) -> Pin<'_> {
        loop {
            let e = self.epoch.load(SeqCst);
            let count = &self.active[e & 1];
            count.fetch_add(1, SeqCst);
            if self.epoch.load(SeqCst) == e {
                return Pin { count };
            }
            count.fetch_sub(1, SeqCst);
        }
    }

    /// Wait until every operation pinned before this call has ended. The caller must not hold
    /// a pin itself (it would wait for itself).
    pub fn synchronize(&self) {
        let _g = self.sync.lock();
        let e = self.epoch.load(SeqCst);
        self.epoch.store(e.wrapping_add(1), SeqCst);
        let old = &self.active[e & 1];
        let mut spins = 0u32;
        while old.load(SeqCst) != 0 {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else if spins < 1024 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn synchronize_waits_for_earlier_pins_only() {
        let ep = Arc::new(Epochs::default());
        let done = Arc::new(AtomicBool::new(false));
        let pinned = Arc::new(AtomicBool::new(false));
        let (e2, d2, p2) = (ep.clone(), done.clone(), pinned.clone());
        let t = std::thread::spawn(move || {
            let _p = e2.pin();
            p2.store(true, SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(50));
            d2.store(true, SeqCst);
        });
        while !pinned.load(SeqCst) {
            std::thread::yield_now();
        }
        ep.synchronize();
        assert!(
            done.load(SeqCst),
            "synchronize returned while an earlier pin was held"
        );
        // A pin taken after the flip does not hold up the next synchronize of the other parity
        // for ever: it is released, and synchronize returns.
        let p = ep.pin();
        drop(p);
        ep.synchronize();
        t.join().unwrap();
    }
}
