//! `EventLog`: the request-path half. `submit*` validates, samples, journals durable rows to the
//! write-ahead file and hands everything to a bounded in-memory queue; it never waits for the
//! writer and never fails because the writer is slow. The background half is `worker.rs`.

use super::fsio::FsIo;
use super::record::{Record, RequestRecords};
use super::schema::{Table, DEFAULT_TASKS};
use super::stats::{Stats, StatsSnapshot};
use super::wal::{self, WalWriter, FLAG_QUEUED, FLAG_SPILLED};
use super::worker;
use crate::{invalid, Error, Result};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use xxhash_rust::xxh3::xxh3_64;

/// Everything an [`EventLog`] is opened with. `EventLogConfig::new(root)` gives the defaults.
#[derive(Debug, Clone)]
pub struct EventLogConfig {
    /// Log root: `<root>/<table>/dt=YYYY-MM-DD/hour=HH/part-*.parquet`.
    pub root: PathBuf,
    /// Percentage (0, 100] of requests whose firehose rows are kept.
    pub sample_pct: f64,
    /// Rows the in-memory queue holds before firehose rows are dropped and durable rows spill.
    pub queue_capacity: usize,
    /// A partition buffer is written once it holds this many rows ...
    pub rotate_rows: usize,
    /// ... or about this many bytes ...
    pub rotate_bytes: usize,
    /// ... and every buffer is written (and the write-ahead file truncated) this often.
    pub rotate_seconds: f64,
    /// Write-ahead directory; default `<root>/_wal/<writer_id>`.
    pub wal_path: Option<PathBuf>,
    /// Names this writer's files (`part-<writer_id>-...`) and default write-ahead directory.
    /// Each process writing into one root needs its own.
    pub writer_id: String,
    /// Ranker tasks: `ranker_scores` has one `pred_<task>` column each.
    pub tasks: Vec<String>,
    /// Served feature names, stored as `fyp.feature_names` in `served_features` files.
    pub feature_names: Option<Vec<String>>,
    pub zstd_level: i32,
    /// fsync the write-ahead file on every durable submit (power-loss safety; slower).
    /// Without it a kill -9 still loses nothing (the OS holds the written pages).
    pub wal_sync: bool,
    /// A write-ahead segment larger than this triggers a checkpoint.
    pub wal_segment_bytes: u64,
    /// Test hook: the writer sleeps this long on every pass, to provoke backpressure.
    pub debug_write_delay_ms: u64,
    /// File operations of the write-ahead and Parquet paths (tests inject faults here).
    pub(crate) io: FsIo,
}

impl EventLogConfig {
    pub fn new(root: impl Into<PathBuf>) -> EventLogConfig {
        EventLogConfig {
            root: root.into(),
            sample_pct: 100.0,
            queue_capacity: 1_000_000,
            rotate_rows: 500_000,
            rotate_bytes: 128 << 20,
            rotate_seconds: 60.0,
            wal_path: None,
            writer_id: "w0".into(),
            tasks: DEFAULT_TASKS.iter().map(|s| s.to_string()).collect(),
            feature_names: None,
            zstd_level: 1,
            wal_sync: false,
            wal_segment_bytes: 64 << 20,
            debug_write_delay_ms: 0,
            io: FsIo::default(),
        }
    }

    fn validate(&self) -> Result<()> {
        let p = self.sample_pct;
        if !(p.is_finite() && p > 0.0 && p <= 100.0) {
            return Err(invalid!("sample_pct must be in (0, 100], got {p}"));
        }
        if self.queue_capacity == 0 {
            return Err(invalid!("queue_capacity must be >= 1"));
        }
        if self.rotate_rows == 0 || self.rotate_bytes == 0 {
            return Err(invalid!("rotate_rows and rotate_bytes must be >= 1"));
        }
        if !(self.rotate_seconds.is_finite() && self.rotate_seconds > 0.0) {
            return Err(invalid!(
                "rotate_seconds must be > 0, got {}",
                self.rotate_seconds
            ));
        }
        let id_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        };
        if !id_ok(&self.writer_id) {
            return Err(invalid!(
                "writer_id must be 1-64 characters of [A-Za-z0-9_.], got {:?}",
                self.writer_id
            ));
        }
        if self.tasks.is_empty() {
            return Err(invalid!("tasks must name at least one ranker task"));
        }
        for t in &self.tasks {
            if !id_ok(t) {
                return Err(invalid!(
                    "task names must be 1-64 characters of [A-Za-z0-9_.], got {t:?}"
                ));
            }
        }
        let mut seen = self.tasks.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != self.tasks.len() {
            return Err(invalid!("tasks contain a duplicate: {:?}", self.tasks));
        }
        if !(1..=22).contains(&self.zstd_level) {
            return Err(invalid!(
                "zstd_level must be in 1..=22, got {}",
                self.zstd_level
            ));
        }
        Ok(())
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.wal_path
            .clone()
            .unwrap_or_else(|| self.root.join("_wal").join(&self.writer_id))
    }
}

pub(crate) struct QueueState {
    pub items: VecDeque<Vec<Record>>,
    pub rows: usize,
    pub flush_req: u64,
    pub flush_done: u64,
    pub flush_error: Option<String>,
    pub stop: bool,
    pub exited: bool,
}

/// State shared by callers and the writer thread.
pub(crate) struct Shared {
    pub cfg: EventLogConfig,
    pub wal_dir: PathBuf,
    pub session: u64,
    pub queue: Mutex<QueueState>,
    pub work: Condvar,
    pub done: Condvar,
    pub wal: Mutex<Option<WalWriter>>,
    pub spill_pending: AtomicU64,
    /// The current write-ahead segment is broken (a torn frame it could not cut off): the
    /// writer thread must start a new one.
    pub rotate_now: AtomicBool,
    pub stats: Stats,
    pub last_error: Mutex<Option<String>>,
}

impl Shared {
    pub fn record_error(&self, msg: String) {
        *self.last_error.lock() = Some(msg);
    }
}

/// The non-blocking counterfactual event log. Share it as `Arc<EventLog>`; every method takes
/// `&self`. Dropping the last reference closes it (everything queued becomes visible).
pub struct EventLog {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    lock: Mutex<Option<File>>,
    pid: u32,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch, the unit of every `ts_us`.
pub fn now_us() -> i64 {
    now_micros()
}

/// Deterministic per-request sampling: a request's firehose rows are kept iff
/// `unit(xxh3_64("fyp.sample\x1f" + request_id)) * 100 < sample_pct`, unit = (h >> 11) / 2^53.
pub fn keep_request(request_id: &str, sample_pct: f64) -> bool {
    if sample_pct >= 100.0 {
        return true;
    }
    let mut key = Vec::with_capacity(11 + request_id.len());
    key.extend_from_slice(b"fyp.sample\x1f");
    key.extend_from_slice(request_id.as_bytes());
    let unit = (xxh3_64(&key) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    unit * 100.0 < sample_pct
}

fn check_writable(dir: &Path, what: &str) -> Result<()> {
    fs::create_dir_all(dir)
        .map_err(|e| Error::Io(format!("cannot create {what} {}: {e}", dir.display())))?;
    let probe = dir.join(format!(".fyp-probe-{}", std::process::id()));
    fs::write(&probe, b"")
        .map_err(|e| Error::Io(format!("{what} {} is not writable: {e}", dir.display())))?;
    fs::remove_file(&probe).map_err(|e| {
        Error::Io(format!(
            "{what} {}: cannot remove a probe file: {e}",
            dir.display()
        ))
    })
}

impl EventLog {
    /// Opens (or reopens) a log: checks the root is writable, takes the write-ahead directory's
    /// lock and starts the writer thread, which first replays what a previous session left in
    /// the write-ahead directory.
    pub fn open(cfg: EventLogConfig) -> Result<Arc<EventLog>> {
        cfg.validate()?;
        check_writable(&cfg.root, "log root")?;
        let wal_dir = cfg.wal_dir();
        check_writable(&wal_dir, "write-ahead directory")?;
        let lock = wal::lock_dir(&wal_dir)?;
        let leftovers = wal::list_segments(&wal_dir)?;
        // A session id that sorts after earlier sessions' segments and never repeats.
        let session = (now_micros() as u64).max(
            leftovers
                .iter()
                .filter_map(|p| {
                    let n = p.file_name()?.to_str()?;
                    u64::from_str_radix(n.get(4..20)?, 16).ok()
                })
                .max()
                .map_or(0, |s| s + 1),
        );
        let writer = WalWriter::create(&wal_dir, session, 0, cfg.wal_sync, &cfg.io)?;
        let shared = Arc::new(Shared {
            cfg,
            wal_dir,
            session,
            queue: Mutex::new(QueueState {
                items: VecDeque::new(),
                rows: 0,
                flush_req: 0,
                flush_done: 0,
                flush_error: None,
                stop: false,
                exited: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            wal: Mutex::new(Some(writer)),
            spill_pending: AtomicU64::new(0),
            rotate_now: AtomicBool::new(false),
            stats: Stats::default(),
            last_error: Mutex::new(None),
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fyp-eventlog".into())
            .spawn(move || worker::run(sh, leftovers))
            .map_err(|e| Error::Io(format!("cannot start the event log writer thread: {e}")))?;
        Ok(Arc::new(EventLog {
            shared,
            thread: Mutex::new(Some(thread)),
            closed: AtomicBool::new(false),
            lock: Mutex::new(Some(lock)),
            pid: std::process::id(),
        }))
    }

    pub fn config(&self) -> &EventLogConfig {
        &self.shared.cfg
    }

    pub fn wal_dir(&self) -> &Path {
        &self.shared.wal_dir
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    /// Hands one row over. Same contract as [`EventLog::submit_batch`].
    pub fn submit(&self, rec: Record) -> Result<usize> {
        self.submit_batch(vec![rec])
    }

    /// Hands over everything one response logs; its firehose rows are kept or dropped together.
    pub fn submit_request(&self, r: RequestRecords) -> Result<usize> {
        self.submit_batch(r.into_records())
    }

    /// Validates, samples and queues `rows`; returns how many were accepted (queued or spilled).
    /// Never waits for the writer. Errors only for invalid rows (nothing of the batch is then
    /// logged) or a closed log; a full queue drops firehose rows (counted) and spills durable ones.
    pub fn submit_batch(&self, mut rows: Vec<Record>) -> Result<usize> {
        if self.closed.load(Relaxed) {
            return Err(invalid!("this EventLog is closed"));
        }
        if std::process::id() != self.pid {
            return Err(invalid!(
                "this EventLog was opened in a parent process; open one per process after fork, each with its own writer_id"
            ));
        }
        let cfg = &self.shared.cfg;
        let n_tasks = cfg.tasks.len();
        for (i, r) in rows.iter().enumerate() {
            r.validate(n_tasks)
                .map_err(|e| invalid!("{} row {i}: {e}", r.table().name()))?;
        }
        let n_firehose = rows.iter().filter(|r| !r.is_durable()).count();
        if n_firehose > cfg.queue_capacity {
            return Err(invalid!(
                "one call carries {n_firehose} firehose rows, more than queue_capacity={}; split the batch or raise queue_capacity",
                cfg.queue_capacity
            ));
        }
        let stats = &self.shared.stats;
        let pct = cfg.sample_pct;
        let mut durable = Vec::new();
        let mut firehose = Vec::with_capacity(rows.len());
        let mut last_key: Option<(String, bool)> = None;
        for mut r in rows.drain(..) {
            if r.is_durable() {
                r.set_sampled_pct(100.0);
                durable.push(r);
                continue;
            }
            // rows of one request arrive together: reuse the previous decision
            let key = r.sample_key();
            let keep = match &last_key {
                Some((k, keep)) if k == key => *keep,
                _ => {
                    let keep = keep_request(key, pct);
                    last_key = Some((key.to_string(), keep));
                    keep
                }
            };
            if keep {
                r.set_sampled_pct(pct);
                firehose.push(r);
            } else {
                Stats::add_t(&stats.sampled_out, r.table(), 1);
            }
        }
        let accepted_durable = durable.len();
        let mut accepted = 0;
        if !firehose.is_empty() {
            let n = firehose.len();
            let mut q = self.shared.queue.lock();
            if q.stop {
                return Err(invalid!("this EventLog is closed"));
            }
            if q.rows + n <= cfg.queue_capacity {
                for r in &firehose {
                    Stats::add_t(&stats.enqueued, r.table(), 1);
                }
                q.rows += n;
                q.items.push_back(firehose);
                accepted += n;
                drop(q);
                self.shared.work.notify_one();
            } else {
                drop(q);
                for r in &firehose {
                    Stats::add_t(&stats.dropped, r.table(), 1);
                }
            }
        }
        if !durable.is_empty() {
            self.submit_durable(durable)?;
            accepted += accepted_durable;
        }
        Ok(accepted)
    }

    /// Journals durable rows, then queues them, or (queue full) leaves them only in the journal.
    /// A failed append leaves nothing of the batch in the journal; the rows are then queued in
    /// memory (even past capacity: durable rows are never dropped) and counted `not_durable`.
    fn submit_durable(&self, rows: Vec<Record>) -> Result<()> {
        let sh = &self.shared;
        let n = rows.len();
        // encode outside every lock, as queued; the rare spill path rewrites the flags
        let mut buf = Vec::with_capacity(n * 128);
        let mut starts = Vec::with_capacity(n);
        for r in &rows {
            starts.push(buf.len());
            wal::frame(&mut buf, FLAG_QUEUED, r);
        }
        let mut wal_guard = sh.wal.lock();
        let room = {
            let mut q = sh.queue.lock();
            // checked under the write-ahead lock: once close() has set it, nothing more is
            // appended, so the final checkpoint sees every journaled row
            if q.stop {
                return Err(invalid!("this EventLog is closed"));
            }
            let room = q.rows + n <= sh.cfg.queue_capacity;
            if room {
                q.rows += n; // reserve now so the decision cannot be invalidated
            }
            room
        };
        for r in &rows {
            Stats::add_t(&sh.stats.enqueued, r.table(), 1);
        }
        if !room {
            for &s in &starts {
                refame_flag(&mut buf, s, FLAG_SPILLED);
            }
        }
        let journaled = match wal_guard.as_mut() {
            Some(w) => match w.append(&buf) {
                Ok(()) => {
                    Stats::add(&sh.stats.wal_bytes, buf.len() as u64);
                    true
                }
                Err(e) => {
                    Stats::add(&sh.stats.wal_errors, 1);
                    sh.record_error(e.to_string());
                    if w.is_broken() {
                        sh.rotate_now.store(true, Relaxed);
                    }
                    false
                }
            },
            None => false,
        };
        if !journaled {
            Stats::add(&sh.stats.not_durable, n as u64);
        }
        if room || !journaled {
            let mut q = sh.queue.lock();
            if !room {
                q.rows += n;
            }
            q.items.push_back(rows);
        } else {
            Stats::add(&sh.stats.spilled, n as u64);
            sh.spill_pending.fetch_add(n as u64, Relaxed);
        }
        drop(wal_guard);
        sh.work.notify_one();
        Ok(())
    }

    /// Blocks until everything submitted before the call is in visible files (spilled rows
    /// included) and the write-ahead file is truncated. `Err(Io)` when a write failed or the
    /// timeout passed; the rows stay buffered (durable ones also in the write-ahead file).
    pub fn flush(&self, timeout: Option<Duration>) -> Result<()> {
        let sh = &self.shared;
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut q = sh.queue.lock();
        if q.exited {
            return Ok(());
        }
        q.flush_req += 1;
        let ticket = q.flush_req;
        sh.work.notify_one();
        while q.flush_done < ticket && !q.exited {
            match deadline {
                Some(d) => {
                    if sh.done.wait_until(&mut q, d).timed_out() {
                        return Err(Error::Io(format!(
                            "EventLog.flush timed out after {:?} ({} rows still queued)",
                            timeout.unwrap_or_default(),
                            q.rows
                        )));
                    }
                }
                None => sh.done.wait(&mut q),
            }
        }
        match q.flush_error.take() {
            Some(e) => Err(Error::Io(format!("EventLog.flush: {e}"))),
            None => Ok(()),
        }
    }

    /// Flushes, stops the writer thread, removes every write-ahead segment (when everything
    /// reached visible files; otherwise they stay for the next session's replay and this
    /// returns the error) and releases the write-ahead lock. Idempotent; later submits fail
    /// with `InvalidArgument`.
    pub fn close(&self) -> Result<()> {
        if self.closed.swap(true, Relaxed) {
            return Ok(());
        }
        let sh = &self.shared;
        {
            let mut q = sh.queue.lock();
            q.stop = true;
        }
        sh.work.notify_all();
        let handle = self.thread.lock().take();
        let joined = match handle {
            Some(h) => h
                .join()
                .map_err(|_| Error::Io("the event log writer thread panicked".into())),
            None => Ok(()),
        };
        let err = sh.queue.lock().flush_error.take();
        drop(self.lock.lock().take());
        joined?;
        match err {
            Some(e) => Err(Error::Io(format!("EventLog.close: {e}"))),
            None => Ok(()),
        }
    }

    pub fn stats(&self) -> StatsSnapshot {
        let sh = &self.shared;
        let mut s = sh.stats.snapshot();
        s.queue_depth = sh.queue.lock().rows as u64;
        s.spill_pending = sh.spill_pending.load(Relaxed);
        s.last_error = sh.last_error.lock().clone();
        s
    }

    /// Passes the writer loop has made (an idle writer makes few).
    #[cfg(test)]
    pub(crate) fn writer_passes(&self) -> u64 {
        self.shared.stats.writer_passes.load(Relaxed)
    }

    /// The table a name refers to, or a clear error listing the valid names.
    pub fn table(name: &str) -> Result<Table> {
        Table::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
            invalid!("unknown table {name:?}; tables are {names:?}")
        })
    }
}

/// Rewrites the flag byte (and checksum) of the frame starting at `start`.
fn refame_flag(buf: &mut [u8], start: usize, flag: u8) {
    let len =
        u32::from_le_bytes([buf[start], buf[start + 1], buf[start + 2], buf[start + 3]]) as usize;
    buf[start + 8] = flag;
    let crc = crc32fast::hash(&buf[start + 8..start + 8 + len]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

impl Drop for EventLog {
    fn drop(&mut self) {
        // nobody is left to return the error to; the write-ahead file keeps the rows
        if let Err(e) = self.close() {
            eprintln!("fyp_core: EventLog dropped: {e} (the write-ahead file keeps its rows for the next session)");
        }
    }
}
