//! Rayon pools for batch add/search, one per requested thread count, built lazily and cached.
//! We never use rayon's global pool: a pool created before `fork()` has no threads in the
//! child (gunicorn/uvicorn workers fork), so pools are keyed by process id and rebuilt after a
//! fork. `threads == 1` runs on the calling thread, no pool at all; the one-thread pool is the
//! background worker (`spawn`).

use parking_lot::Mutex;
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

type Pools = Mutex<(u32, HashMap<usize, Arc<ThreadPool>>)>;

fn pools() -> &'static Pools {
    static P: OnceLock<Pools> = OnceLock::new();
    P.get_or_init(|| Mutex::new((std::process::id(), HashMap::new())))
}

/// Number of threads for `threads = None`: every core the process may use.
pub fn default_threads() -> usize {
    // available_parallelism reads cgroup files on Linux: look it up once, not per call.
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Validate a caller's thread count (None = all cores).
pub fn resolve(threads: Option<usize>) -> crate::Result<usize> {
    match threads {
        None => Ok(default_threads()),
        Some(0) => Err(crate::invalid!(
            "threads must be >= 1 (or None for all cores), got 0"
        )),
        Some(t) if t > 1024 => Err(crate::invalid!("threads must be <= 1024, got {t}")),
        Some(t) => Ok(t),
    }
}

/// Runs `f` inside a pool of exactly `threads` workers (or inline when `threads == 1`).
pub fn install<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> crate::Result<R> {
    if threads <= 1 {
        return Ok(f());
    }
    Ok(pool(threads)?.install(f))
}

/// Runs `f` later on this process's background worker (one thread, also rebuilt after a fork);
/// `Err` when the thread cannot be started.
pub fn spawn(f: impl FnOnce() + Send + 'static) -> crate::Result<()> {
    pool(1)?.spawn(f);
    Ok(())
}

/// This process's pool of `threads` workers.
fn pool(threads: usize) -> crate::Result<Arc<ThreadPool>> {
    let pool = {
        let mut g = pools().lock();
        let pid = std::process::id();
        if g.0 != pid {
            // Forked child: the parent's worker threads do not exist here. Leak the stale pools
            // (dropping them would try to join threads that are gone).
            for (_, p) in g.1.drain() {
                std::mem::forget(p);
            }
            g.0 = pid;
        }
        match g.1.get(&threads) {
            Some(p) => p.clone(),
            None => {
                let p = ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("fyp-hnsw-{i}"))
                    .build()
                    .map_err(|e| {
                        crate::Error::Io(format!("cannot start {threads} threads: {e}"))
                    })?;
                let p = Arc::new(p);
                g.1.insert(threads, p.clone());
                p
            }
        }
    };
    Ok(pool)
}
