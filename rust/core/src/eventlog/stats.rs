//! Counters of the event log, readable at any time without a lock on the request path.

use super::schema::Table;

/// Tables the counters cover.
pub const N_TABLES: usize = Table::ALL.len();
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Stats {
    pub enqueued: [AtomicU64; N_TABLES],
    pub written: [AtomicU64; N_TABLES],
    pub dropped: [AtomicU64; N_TABLES],
    pub sampled_out: [AtomicU64; N_TABLES],
    pub spilled: AtomicU64,
    pub replayed: AtomicU64,
    pub replay_duplicates: AtomicU64,
    pub files_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub write_errors: AtomicU64,
    pub wal_errors: AtomicU64,
    pub wal_bad_tails: AtomicU64,
    pub wal_skipped_bytes: AtomicU64,
    pub not_durable: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub checkpoints: AtomicU64,
    /// Passes of the writer loop (tests check an idle writer stays asleep).
    pub writer_passes: AtomicU64,
}

impl Stats {
    pub fn add(a: &AtomicU64, n: u64) {
        a.fetch_add(n, Relaxed);
    }
    pub fn add_t(arr: &[AtomicU64; N_TABLES], t: Table, n: u64) {
        arr[t.index()].fetch_add(n, Relaxed);
    }
}

/// A point-in-time copy of the counters. Per-table arrays are indexed by [`Table::index`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsSnapshot {
    /// Rows accepted (queued or spilled), per table.
    pub enqueued: [u64; N_TABLES],
    /// Rows in visible Parquet files, per table.
    pub written: [u64; N_TABLES],
    /// Firehose rows dropped because the queue was full, per table.
    pub dropped: [u64; N_TABLES],
    /// Firehose rows not kept by sampling, per table.
    pub sampled_out: [u64; N_TABLES],
    /// Durable rows that found the queue full and went only to the write-ahead file.
    pub spilled: u64,
    /// Rows recovered from a previous session's write-ahead file.
    pub replayed: u64,
    /// Replayed rows skipped because a committed file already held them.
    pub replay_duplicates: u64,
    /// Rows waiting in the in-memory queue.
    pub queue_depth: u64,
    /// Spilled rows not yet read back by the writer.
    pub spill_pending: u64,
    pub files_written: u64,
    pub bytes_written: u64,
    pub write_errors: u64,
    pub wal_errors: u64,
    /// Write-ahead segments whose tail was torn or corrupt (a crash mid-append).
    pub wal_bad_tails: u64,
    /// Bytes of damaged frames the replay skipped to reach later valid frames.
    pub wal_skipped_bytes: u64,
    /// Durable rows acknowledged while their write-ahead append failed (disk full, I/O
    /// error): held in memory only, so a crash before they reach a visible file loses them.
    pub not_durable: u64,
    /// Bytes appended to write-ahead files by this session.
    pub wal_bytes: u64,
    pub checkpoints: u64,
    pub last_error: Option<String>,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let arr = |a: &[AtomicU64; N_TABLES]| std::array::from_fn(|i| a[i].load(Relaxed));
        StatsSnapshot {
            enqueued: arr(&self.enqueued),
            written: arr(&self.written),
            dropped: arr(&self.dropped),
            sampled_out: arr(&self.sampled_out),
            spilled: self.spilled.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            replay_duplicates: self.replay_duplicates.load(Relaxed),
            queue_depth: 0,
            spill_pending: 0,
            files_written: self.files_written.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            write_errors: self.write_errors.load(Relaxed),
            wal_errors: self.wal_errors.load(Relaxed),
            wal_bad_tails: self.wal_bad_tails.load(Relaxed),
            wal_skipped_bytes: self.wal_skipped_bytes.load(Relaxed),
            not_durable: self.not_durable.load(Relaxed),
            wal_bytes: self.wal_bytes.load(Relaxed),
            checkpoints: self.checkpoints.load(Relaxed),
            last_error: None,
        }
    }
}
