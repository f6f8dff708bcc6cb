//! The writer thread: replays a previous session's write-ahead file, then drains the queue into
//! per-(table, dt, hour) buffers, reads spilled rows back from the write-ahead file, writes a
//! Parquet file when a buffer reaches its size, and checkpoints (writes every buffer, then
//! deletes the write-ahead segments they cover) on time, on flush and on close.

use super::parquet_io::{read_keys, to_batch, write_atomic};
use super::record::Record;
use super::schema::{Partition, Table};
use super::stats::Stats;
use super::wal::{self, Sealed, WalWriter, FLAG_SPILLED};
use super::writer::Shared;
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one wait of the writer loop collected.
struct Pass {
    items: Vec<Vec<Record>>,
    flush_ticket: Option<u64>,
    stop: bool,
}

#[derive(Default)]
struct Buf {
    rows: Vec<Record>,
    bytes: usize,
}

struct Worker {
    sh: Arc<Shared>,
    bufs: BTreeMap<(Table, Partition), Buf>,
    buffered_rows: usize,
    /// Spill read position: (segment number of this session, byte offset; 0 = before header).
    spill_seg: u64,
    spill_off: u64,
    /// A previous session's segments, deleted at the first successful checkpoint.
    leftovers: Vec<PathBuf>,
    file_seq: u64,
    failing: bool,
    /// Backoff of the spill read-back and of segment creation while they fail.
    spill_retry: Backoff,
    rotate_retry: Backoff,
    extra_meta_features: Vec<(String, String)>,
}

/// Exponential backoff (10 ms doubling to 2 s) for an operation that keeps failing, so a
/// failing disk never turns the writer into a busy loop.
#[derive(Default)]
struct Backoff {
    at: Option<Instant>,
    wait: Duration,
}

impl Backoff {
    fn due(&self) -> bool {
        self.at.is_none_or(|t| Instant::now() >= t)
    }
    fn failed(&mut self) {
        self.wait = (self.wait * 2).clamp(Duration::from_millis(10), Duration::from_secs(2));
        self.at = Some(Instant::now() + self.wait);
    }
    fn ok(&mut self) {
        *self = Backoff::default();
    }
}

pub(crate) fn run(sh: Arc<Shared>, leftovers: Vec<PathBuf>) {
    let features_meta = sh
        .cfg
        .feature_names
        .as_ref()
        .map(|names| {
            let quoted: Vec<String> = names.iter().map(|n| json_str(n)).collect();
            vec![(
                "fyp.feature_names".to_string(),
                format!("[{}]", quoted.join(",")),
            )]
        })
        .unwrap_or_default();
    let mut w = Worker {
        sh: sh.clone(),
        bufs: BTreeMap::new(),
        buffered_rows: 0,
        spill_seg: 0,
        spill_off: 0,
        leftovers: Vec::new(),
        file_seq: 0,
        failing: false,
        spill_retry: Backoff::default(),
        rotate_retry: Backoff::default(),
        extra_meta_features: features_meta,
    };
    w.clean_stale_tmp();
    if !leftovers.is_empty() {
        w.replay(leftovers);
    }
    w.main_loop();
}

/// A JSON string literal (quotes and escapes) for the small JSON values the log writes.
pub(crate) fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

impl Worker {
    /// Waits for work: queued rows, a flush, stop, spilled rows or a broken segment (each
    /// only once its backoff is due), or the next timed checkpoint / retry.
    fn wait_for_work(&self, next_checkpoint: Instant, retry_at: Option<Instant>) -> Pass {
        let sh = &self.sh;
        let mut q = sh.queue.lock();
        loop {
            let pending = !q.items.is_empty()
                || q.stop
                || q.flush_req > q.flush_done
                || (sh.spill_pending.load(Relaxed) > 0 && self.spill_retry.due())
                || (sh.rotate_now.load(Relaxed) && self.rotate_retry.due());
            if pending {
                break;
            }
            let mut wake = next_checkpoint;
            for r in [retry_at, self.spill_retry.at, self.rotate_retry.at]
                .into_iter()
                .flatten()
            {
                wake = wake.min(r);
            }
            if Instant::now() >= wake {
                break;
            }
            sh.work.wait_until(&mut q, wake);
        }
        let items: Vec<Vec<Record>> = q.items.drain(..).collect();
        let n: usize = items.iter().map(|v| v.len()).sum();
        q.rows -= n.min(q.rows);
        let flush_ticket = (q.flush_req > q.flush_done).then_some(q.flush_req);
        Pass {
            items,
            flush_ticket,
            stop: q.stop,
        }
    }

    fn main_loop(&mut self) {
        let sh = self.sh.clone();
        let period = Duration::from_secs_f64(sh.cfg.rotate_seconds);
        let mut next_checkpoint = Instant::now() + period;
        let delay = Duration::from_millis(sh.cfg.debug_write_delay_ms);
        let mut retry_at: Option<Instant> = None;
        let result = loop {
            let pass = self.wait_for_work(next_checkpoint, retry_at);
            Stats::add(&sh.stats.writer_passes, 1);
            if !delay.is_zero() && (!pass.items.is_empty() || sh.spill_pending.load(Relaxed) > 0) {
                std::thread::sleep(delay);
            }
            for chunk in pass.items {
                self.add_chunk(chunk);
            }
            if sh.rotate_now.load(Relaxed) && self.rotate_retry.due() {
                self.rotate_wal();
            }
            if sh.spill_pending.load(Relaxed) > 0 && self.spill_retry.due() {
                self.read_spilled();
            }
            self.commit_full_buffers();
            let now = Instant::now();
            let retry_due = retry_at.is_some_and(|r| now >= r);
            let wal_big = self.rotate_retry.due()
                && sh
                    .wal
                    .lock()
                    .as_ref()
                    .is_some_and(|w| w.bytes() > sh.cfg.wal_segment_bytes);
            let due = pass.flush_ticket.is_some() || pass.stop || now >= next_checkpoint;
            if !(due || retry_due || wal_big) {
                continue;
            }
            let result = self.checkpoint();
            next_checkpoint = Instant::now() + period;
            retry_at = result
                .is_err()
                .then(|| Instant::now() + Duration::from_millis(500));
            if let Some(t) = pass.flush_ticket {
                let mut q = sh.queue.lock();
                q.flush_done = q.flush_done.max(t);
                if let Err(e) = &result {
                    q.flush_error = Some(e.clone());
                }
                drop(q);
                sh.done.notify_all();
            }
            if pass.stop {
                break result;
            }
        };
        self.finish(result);
    }

    /// After the final checkpoint. On success every row is in a visible file and no caller can
    /// append any more (they check `stop` under the write-ahead lock), so every segment goes;
    /// on failure they stay for the next session's replay.
    fn finish(&mut self, result: Result<(), String>) {
        let sh = self.sh.clone();
        let wal = sh.wal.lock().take();
        if let Some(w) = wal {
            let mut doomed: Vec<PathBuf> = Vec::new();
            if result.is_ok() {
                doomed.extend(w.sealed().iter().map(|s| s.path.clone()));
                doomed.push(w.path());
            } else if w.is_empty() && !w.is_broken() {
                doomed.push(w.path());
            }
            for p in doomed {
                if let Err(e) = wal::remove_segment(w.io(), &p) {
                    Stats::add(&sh.stats.wal_errors, 1);
                    sh.record_error(e.to_string());
                }
            }
        }
        let mut q = sh.queue.lock();
        if let Err(e) = result {
            q.flush_error = Some(e);
        }
        q.exited = true;
        q.flush_done = q.flush_req;
        drop(q);
        sh.done.notify_all();
    }

    fn add_chunk(&mut self, chunk: Vec<Record>) {
        let cap = self.sh.cfg.queue_capacity;
        // while writes fail, keep memory bounded: firehose rows beyond capacity are dropped
        if self.failing && self.buffered_rows > cap && chunk.iter().all(|r| !r.is_durable()) {
            for r in &chunk {
                Stats::add_t(&self.sh.stats.dropped, r.table(), 1);
            }
            return;
        }
        for r in chunk {
            self.add_row(r);
        }
    }

    fn add_row(&mut self, r: Record) {
        let key = (r.table(), Partition::of_micros(r.ts_us()));
        let b = self.bufs.entry(key).or_default();
        b.bytes += r.approx_bytes();
        b.rows.push(r);
        self.buffered_rows += 1;
    }

    /// Reads spilled frames of this session's segments, from the cursor to the end of the
    /// current segment's complete frames. A read that fails (or finds a damaged frame where
    /// complete ones must be) leaves the cursor there and backs off; the segment is kept.
    fn read_spilled(&mut self) {
        let sh = self.sh.clone();
        let (segs, cur_no) = {
            let g = sh.wal.lock();
            let Some(w) = g.as_ref() else { return };
            if sh.spill_pending.load(Relaxed) == 0 {
                // callers bump spill_pending under this lock, so nothing spilled is unread
                self.spill_seg = w.no();
                self.spill_off = w.bytes();
                return;
            }
            let mut segs: Vec<Sealed> = w
                .sealed()
                .iter()
                .filter(|s| s.no >= self.spill_seg && s.end > wal::HEADER as u64)
                .cloned()
                .collect();
            segs.sort_by_key(|s| s.no);
            segs.push(Sealed {
                no: w.no(),
                path: w.path(),
                end: w.bytes(),
            });
            (segs, w.no())
        };
        for seg in segs {
            if seg.no > self.spill_seg {
                self.spill_seg = seg.no;
                self.spill_off = 0;
            }
            if let Err(e) = self.read_spilled_from(&seg) {
                Stats::add(&sh.stats.wal_errors, 1);
                sh.record_error(format!("reading spilled rows back: {e}"));
                self.spill_retry.failed();
                return;
            }
            if seg.no != cur_no {
                self.spill_seg = seg.no + 1;
                self.spill_off = 0;
            }
        }
        self.spill_retry.ok();
    }

    /// Reads one segment's spilled frames from the cursor to `seg.end`; moves the cursor.
    fn read_spilled_from(&mut self, seg: &Sealed) -> Result<(), String> {
        let out = wal::read_segment(&self.sh.cfg.io, &seg.path, self.spill_off, Some(seg.end))
            .map_err(|e| e.to_string())?;
        let mut n = 0u64;
        for (flag, rec) in out.rows {
            if flag == FLAG_SPILLED {
                self.add_row(rec);
                n += 1;
            }
        }
        let left = self.sh.spill_pending.load(Relaxed);
        self.sh.spill_pending.fetch_sub(n.min(left), Relaxed);
        let end = out.end.max(self.spill_off.max(wal::HEADER as u64));
        self.spill_off = end;
        match out.bad_tail {
            Some(t) if end < seg.end => Err(format!(
                "{} at offset {end} (complete frames end at {}): {t}",
                seg.path.display(),
                seg.end
            )),
            _ => Ok(()),
        }
    }

    /// Seals the current segment (when it holds frames or is broken) and starts the next.
    /// Returns the write-ahead position everything submitted so far lies below.
    fn rotate_wal(&mut self) -> (u64, u64) {
        let sh = self.sh.clone();
        // only this thread rotates, so the next segment can be created outside the lock
        // (file creation can take milliseconds under load; durable submits wait on this lock)
        let params = {
            let g = sh.wal.lock();
            match g.as_ref() {
                Some(w) if !w.is_empty() || w.is_broken() => Ok(w.next_params()),
                Some(w) => Err((w.no(), w.bytes())),
                None => Err((u64::MAX, 0)),
            }
        };
        let (dir, session, no, sync, io) = match params {
            Ok(p) => p,
            Err(at) => {
                sh.rotate_now.store(false, Relaxed);
                return at;
            }
        };
        let created = WalWriter::create(&dir, session, no, sync, &io);
        let mut g = sh.wal.lock();
        let Some(w) = g.as_mut() else {
            return (u64::MAX, 0);
        };
        let at = (w.no(), w.bytes());
        match created {
            Ok(next) => {
                w.switch_to(next);
                sh.rotate_now.store(false, Relaxed);
                self.rotate_retry.ok();
            }
            Err(e) => {
                w.create_failed(no);
                Stats::add(&sh.stats.wal_errors, 1);
                sh.record_error(format!("write-ahead rotate failed: {e}"));
                self.rotate_retry.failed();
            }
        }
        at
    }

    fn commit_full_buffers(&mut self) {
        let cfg = &self.sh.cfg;
        let full: Vec<(Table, Partition)> = self
            .bufs
            .iter()
            .filter(|(_, b)| b.rows.len() >= cfg.rotate_rows || b.bytes >= cfg.rotate_bytes)
            .map(|(k, _)| *k)
            .collect();
        for k in full {
            if let Err(e) = self.commit(k) {
                self.note_failure(e);
                return;
            }
        }
    }

    fn note_failure(&mut self, e: String) {
        Stats::add(&self.sh.stats.write_errors, 1);
        self.sh.record_error(e);
        self.failing = true;
    }

    /// Writes one buffer as files of at most `rotate_rows` rows. On failure what is not yet
    /// written stays buffered for the next attempt.
    fn commit(&mut self, key: (Table, Partition)) -> Result<(), String> {
        let sh = self.sh.clone();
        let (table, part) = key;
        let max_rows = sh.cfg.rotate_rows.max(1);
        loop {
            let Some(buf) = self.bufs.get_mut(&key) else {
                return Ok(());
            };
            if buf.rows.is_empty() {
                self.bufs.remove(&key);
                return Ok(());
            }
            let take = buf.rows.len().min(max_rows);
            let batch =
                to_batch(table, &buf.rows[..take], &sh.cfg.tasks).map_err(|e| e.to_string())?;
            let dir = sh.cfg.root.join(table.name()).join(part.dir());
            let name = format!(
                "part-{}-{:x}-{:06}.parquet",
                sh.cfg.writer_id, sh.session, self.file_seq
            );
            let meta: &[(String, String)] = if table == Table::ServedFeatures {
                &self.extra_meta_features
            } else {
                &[]
            };
            let written = write_atomic(
                &sh.cfg.io,
                &dir,
                &name,
                table,
                &batch,
                meta,
                sh.cfg.zstd_level,
            )
            .map_err(|e| e.to_string())?;
            if let Some(e) = written.dir_sync_error {
                // the rows are visible (and survive kill -9): do not write them again
                Stats::add(&sh.stats.write_errors, 1);
                sh.record_error(e);
            }
            let path = written.path;
            self.file_seq += 1;
            let bytes: usize = buf.rows[..take].iter().map(|r| r.approx_bytes()).sum();
            buf.rows.drain(..take);
            buf.bytes -= bytes.min(buf.bytes);
            Stats::add_t(&sh.stats.written, table, take as u64);
            Stats::add(&sh.stats.files_written, 1);
            if let Ok(m) = fs::metadata(&path) {
                Stats::add(&sh.stats.bytes_written, m.len());
            }
            self.buffered_rows -= take.min(self.buffered_rows);
            self.failing = false;
        }
    }

    /// Seal the write-ahead segment, take everything queued or spilled before it into the
    /// buffers, write every buffer, then delete the sealed segments: every durable row they
    /// hold is now in a visible file. `Err` when a write failed or spilled rows submitted
    /// before the checkpoint could not be read back (they stay in the write-ahead file).
    fn checkpoint(&mut self) -> Result<(), String> {
        let sh = self.sh.clone();
        let (upto_no, upto_off) = self.rotate_wal();
        // every queued frame below that position was pushed before the rotate (callers push
        // while holding the write-ahead lock), so draining now takes them all
        let items: Vec<Vec<Record>> = {
            let mut q = sh.queue.lock();
            let items: Vec<Vec<Record>> = q.items.drain(..).collect();
            let n: usize = items.iter().map(|v| v.len()).sum();
            q.rows -= n.min(q.rows);
            items
        };
        for chunk in items {
            self.add_chunk(chunk);
        }
        self.read_spilled();
        let keys: Vec<(Table, Partition)> = self.bufs.keys().copied().collect();
        let mut first_err = None;
        for k in keys {
            if let Err(e) = self.commit(k) {
                self.note_failure(e.clone());
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let read_past = (self.spill_seg, self.spill_off) >= (upto_no, upto_off);
        if upto_no != u64::MAX && !read_past {
            return Err(format!(
                "{} spilled rows are not yet read back from the write-ahead file ({})",
                sh.spill_pending.load(Relaxed),
                sh.last_error.lock().clone().unwrap_or_default()
            ));
        }
        let mut doomed: Vec<PathBuf> = std::mem::take(&mut self.leftovers);
        let io = {
            let mut g = sh.wal.lock();
            let Some(w) = g.as_mut() else {
                return Ok(());
            };
            doomed.extend(
                w.take_sealed_below(self.spill_seg)
                    .into_iter()
                    .map(|s| s.path),
            );
            w.io().clone()
        };
        for p in doomed {
            if let Err(e) = wal::remove_segment(&io, &p) {
                Stats::add(&sh.stats.wal_errors, 1);
                sh.record_error(e.to_string());
            }
        }
        Stats::add(&sh.stats.checkpoints, 1);
        Ok(())
    }

    /// Recovers a previous session's durable rows, skipping any a committed file already holds.
    fn replay(&mut self, segments: Vec<PathBuf>) {
        let sh = self.sh.clone();
        let mut rows = Vec::new();
        for seg in &segments {
            match wal::recover_segment(&sh.cfg.io, seg) {
                Ok(out) => {
                    if let Some(t) = out.bad_tail {
                        Stats::add(&sh.stats.wal_bad_tails, 1);
                        sh.record_error(format!("replay {}: {t}", seg.display()));
                    }
                    Stats::add(&sh.stats.wal_skipped_bytes, out.skipped);
                    rows.extend(out.rows.into_iter().map(|(_, r)| r));
                }
                Err(e) => {
                    Stats::add(&sh.stats.wal_errors, 1);
                    sh.record_error(format!("replay {}: {e}", seg.display()));
                    let bad = seg.with_extension("corrupt");
                    if let Err(e) = fs::rename(seg, &bad) {
                        sh.record_error(format!("cannot set {} aside: {e}", seg.display()));
                    }
                }
            }
        }
        let mut seen: BTreeMap<(Table, Partition), HashSet<String>> = BTreeMap::new();
        let mut replayed = 0u64;
        let mut dups = 0u64;
        for r in rows {
            let key = (r.table(), Partition::of_micros(r.ts_us()));
            let set = seen.entry(key).or_insert_with(|| {
                committed_keys(&sh.cfg.root.join(key.0.name()).join(key.1.dir()), key.0)
            });
            if set.insert(r.dedupe_key()) {
                self.add_row(r);
                replayed += 1;
            } else {
                dups += 1;
            }
        }
        Stats::add(&sh.stats.replayed, replayed);
        Stats::add(&sh.stats.replay_duplicates, dups);
        self.leftovers
            .extend(segments.into_iter().filter(|p| p.exists()));
        if let Err(e) = self.checkpoint() {
            sh.record_error(format!("replay checkpoint: {e}"));
        }
    }

    /// Removes this writer's `.part-*.tmp` files left by a crash (readers never see them).
    fn clean_stale_tmp(&self) {
        let prefix = format!(".part-{}-", self.sh.cfg.writer_id);
        for t in Table::ALL {
            let tdir = self.sh.cfg.root.join(t.name());
            for day in read_dirs(&tdir) {
                for hour in read_dirs(&day) {
                    let Ok(rd) = fs::read_dir(&hour) else {
                        continue;
                    };
                    for e in rd.flatten() {
                        let name = e.file_name();
                        let name = name.to_string_lossy();
                        if name.starts_with(&prefix) && name.ends_with(".tmp") {
                            if let Err(err) = fs::remove_file(e.path()) {
                                // hidden from readers; only the disk space is lost
                                self.sh.record_error(format!(
                                    "cannot remove stale {}: {err}",
                                    e.path().display()
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
}

fn read_dirs(p: &Path) -> Vec<PathBuf> {
    fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

fn committed_keys(dir: &Path, table: Table) -> HashSet<String> {
    let mut set = HashSet::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return set;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".parquet") {
            continue;
        }
        if let Ok(keys) = read_keys(&p, table) {
            set.extend(keys);
        }
    }
    set
}
