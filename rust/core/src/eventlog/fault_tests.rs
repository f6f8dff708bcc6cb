//! The writer under a failing disk, driven by the fault-injection layer (`fsio.rs`): short
//! writes, ENOSPC, EIO, fsync, create, rename and read-only failures on the write-ahead and
//! Parquet paths, with and without a crash. A crash is a copy of the log directory taken at
//! that instant (write-ahead files first, then the tables: what kill -9 leaves, since the
//! written pages survive the process) reopened as a fresh log.
//! The promise checked everywhere: every acknowledged row not counted `not_durable` survives a
//! crash; without a crash, a successful flush means every acknowledged row is in a visible file;
//! no row is ever visible twice.

use super::fsio::faults::{Fault, Faults, Rule};
use super::fsio::{FsIo, Op};
use super::record::tests::TOK;
use super::record::*;
use super::tests::{keys, tmp, T0};
use super::wal;
use super::*;
use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const FLUSH: Option<Duration> = Some(Duration::from_secs(30));

fn expl(i: usize) -> Record {
    Record::Exploration(ExplorationEvent {
        impression_id: format!("imp-{i}"),
        ts_us: T0 + i as i64,
        user_token: TOK.into(),
        item_id: i as u64,
        position: 0,
        topic: 1,
        propensity: 0.05,
        policy: "uniform".into(),
    })
}

/// A log under `root` whose file operations consult `faults`; no timed checkpoint.
fn open(
    root: &Path,
    faults: &Arc<Faults>,
    tweak: impl FnOnce(&mut EventLogConfig),
) -> Arc<EventLog> {
    let mut cfg = EventLogConfig::new(root);
    cfg.rotate_seconds = 3600.0;
    cfg.io = FsIo::with_faults(faults.clone());
    tweak(&mut cfg);
    EventLog::open(cfg).unwrap()
}

/// Submits rows `range`, one call each; returns the ids acknowledged.
fn submit(log: &EventLog, range: std::ops::Range<usize>) -> Vec<usize> {
    range
        .filter(|&i| log.submit(expl(i)).is_ok_and(|n| n == 1))
        .collect()
}

/// Copies a directory tree, skipping files that vanish mid-copy.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    let Ok(rd) = fs::read_dir(from) else { return };
    for e in rd.flatten() {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst);
        } else if fs::copy(&src, &dst).is_err() {
            assert!(!src.exists(), "cannot copy {}", src.display());
        }
    }
}

/// What kill -9 would leave of `root` now, reopened on a healthy disk and flushed: the
/// exploration ids present, with multiplicity.
fn crash_and_recover(root: &Path, name: &str) -> HashMap<String, usize> {
    let copy = tmp(name);
    copy_tree(&root.join("_wal"), &copy.join("_wal"));
    for e in fs::read_dir(root).unwrap().flatten() {
        if e.file_name() != "_wal" {
            copy_tree(&e.path(), &copy.join(e.file_name()));
        }
    }
    fs::remove_file(copy.join("_wal").join("w0").join("LOCK")).ok();
    let log = EventLog::open(EventLogConfig::new(&copy)).unwrap();
    log.close().unwrap();
    let got = keys(&copy, Table::ExplorationEvents);
    fs::remove_dir_all(&copy).unwrap();
    got
}

fn id(i: usize) -> String {
    format!("imp-{i}")
}

/// Every id in `want` present exactly once, nothing else present.
fn assert_exactly(got: &HashMap<String, usize>, want: &[usize], what: &str) {
    let dups: Vec<_> = got.iter().filter(|(_, &c)| c > 1).collect();
    assert!(dups.is_empty(), "{what}: duplicated rows {dups:?}");
    let missing: Vec<usize> = want
        .iter()
        .copied()
        .filter(|&i| !got.contains_key(&id(i)))
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: {} rows lost: {missing:?}",
        missing.len()
    );
    assert_eq!(got.len(), want.len(), "{what}: unexpected extra rows");
}

fn segments(log: &EventLog) -> Vec<std::path::PathBuf> {
    wal::list_segments(log.wal_dir()).unwrap()
}

#[test]
fn short_write_is_cut_back_and_later_rows_survive_a_crash() {
    let root = tmp("f-short");
    let f = Arc::new(Faults::default());
    let log = open(&root, &f, |_| {});
    let mut acked = submit(&log, 0..50);
    // the disk fills mid-frame: 20 bytes of the next frame land, then ENOSPC
    f.add(Rule::new(Op::Write, "wal-", Fault::Short(20)).times(1));
    acked.extend(submit(&log, 50..51));
    acked.extend(submit(&log, 51..350));
    assert_eq!(acked.len(), 350, "durable rows are acknowledged");
    let s = log.stats();
    assert_eq!((s.not_durable, s.wal_errors), (1, 1), "{s:?}");
    // the torn frame was cut: the segment reads cleanly to its end
    let seg = &segments(&log)[0];
    let out = wal::read_segment(&FsIo::default(), seg, 0, None).unwrap();
    assert!(out.bad_tail.is_none(), "{:?}", out.bad_tail);
    assert_eq!(out.rows.len(), 349);
    // kill -9 now: every journaled row survives (the one counted not durable was in memory)
    let journaled: Vec<usize> = acked.iter().copied().filter(|&i| i != 50).collect();
    assert_exactly(&crash_and_recover(&root, "f-short-c"), &journaled, "crash");
    // no crash: flush delivers all 350
    log.flush(FLUSH).unwrap();
    assert_exactly(&keys(&root, Table::ExplorationEvents), &acked, "flush");
    log.close().unwrap();
    assert!(segments(&log).is_empty());
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn torn_frame_that_cannot_be_cut_seals_the_segment() {
    let root = tmp("f-broken");
    let f = Arc::new(Faults::default());
    let log = open(&root, &f, |_| {});
    let mut acked = submit(&log, 0..40);
    f.add(Rule::new(Op::Write, "wal-", Fault::Short(13)).times(1));
    f.add(Rule::new(Op::Truncate, "wal-", Fault::Eio).times(1));
    acked.extend(submit(&log, 40..41));
    // appends to the torn segment are refused until the writer thread starts a new one
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while segments(&log).len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no new segment");
        std::thread::sleep(Duration::from_millis(5));
    }
    acked.extend(submit(&log, 41..300));
    assert_eq!(acked.len(), 300);
    let s = log.stats();
    assert_eq!(s.not_durable, 1, "{s:?}");
    let journaled: Vec<usize> = acked.iter().copied().filter(|&i| i != 40).collect();
    assert_exactly(&crash_and_recover(&root, "f-broken-c"), &journaled, "crash");
    log.flush(FLUSH).unwrap();
    assert_exactly(&keys(&root, Table::ExplorationEvents), &acked, "flush");
    log.close().unwrap();
    assert!(segments(&log).is_empty());
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn recovery_skips_a_torn_frame_to_the_next_valid_one() {
    // the layout an older writer left: good frames, a torn frame, more good frames
    let root = tmp("f-resync");
    let cfg = EventLogConfig::new(&root);
    let wal_dir = cfg.wal_dir();
    fs::create_dir_all(&wal_dir).unwrap();
    let mut w = wal::WalWriter::create(&wal_dir, 1, 0, false, &FsIo::default()).unwrap();
    let mut buf = Vec::new();
    for i in 0..10 {
        wal::frame(&mut buf, wal::FLAG_QUEUED, &expl(i));
    }
    let mut torn = Vec::new();
    wal::frame(&mut torn, wal::FLAG_QUEUED, &expl(10));
    buf.extend_from_slice(&torn[..torn.len() - 3]);
    for i in 11..300 {
        wal::frame(&mut buf, wal::FLAG_SPILLED, &expl(i));
    }
    w.append(&buf).unwrap();
    let path = w.path();
    drop(w);
    let plain = wal::read_segment(&FsIo::default(), &path, 0, None).unwrap();
    assert_eq!(plain.rows.len(), 10, "a plain read stops at the torn frame");
    let rec = wal::recover_segment(&FsIo::default(), &path).unwrap();
    assert_eq!(rec.rows.len(), 299);
    assert_eq!(rec.skipped, (torn.len() - 3) as u64);
    let log = EventLog::open(cfg).unwrap();
    log.close().unwrap();
    let want: Vec<usize> = (0..300).filter(|&i| i != 10).collect();
    assert_exactly(&keys(&root, Table::ExplorationEvents), &want, "replay");
    let s = log.stats();
    assert_eq!((s.wal_bad_tails, s.wal_skipped_bytes), (1, rec.skipped));
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn spill_after_disk_full_delivers_everything_and_idles() {
    let root = tmp("f-spill");
    let f = Arc::new(Faults::default());
    let log = open(&root, &f, |c| {
        c.queue_capacity = 16;
        c.debug_write_delay_ms = 2;
    });
    let mut acked = submit(&log, 0..100);
    // a disk-full episode in the middle of a spilling burst: 7 short writes, then 13 refusals
    f.add(Rule::new(Op::Write, "wal-", Fault::Short(11)).times(7));
    f.add(Rule::new(Op::Write, "wal-", Fault::Enospc).times(13));
    acked.extend(submit(&log, 100..120));
    f.clear();
    acked.extend(submit(&log, 120..600));
    assert_eq!(acked.len(), 600);
    let s = log.stats();
    assert!(s.spilled > 100, "the burst must spill: {s:?}");
    assert_eq!(s.not_durable, 20, "{s:?}");
    let journaled: Vec<usize> = acked
        .iter()
        .copied()
        .filter(|i| !(100..120).contains(i))
        .collect();
    let got = crash_and_recover(&root, "f-spill-c");
    let dups: Vec<_> = got.iter().filter(|(_, &c)| c > 1).collect();
    assert!(dups.is_empty(), "{dups:?}");
    for &i in &journaled {
        assert!(got.contains_key(&id(i)), "crash lost journaled row {i}");
    }
    log.flush(FLUSH).unwrap();
    assert_exactly(&keys(&root, Table::ExplorationEvents), &acked, "flush");
    let s = log.stats();
    assert_eq!((s.spill_pending, s.queue_depth), (0, 0), "{s:?}");
    // idle: the writer sleeps (a spinning one makes thousands of passes a second)
    let before = log.writer_passes();
    std::thread::sleep(Duration::from_millis(500));
    let passes = log.writer_passes() - before;
    assert!(passes <= 3, "idle writer made {passes} passes in 0.5 s");
    log.close().unwrap();
    assert!(segments(&log).is_empty());
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn flush_raises_while_spilled_rows_cannot_be_read_back() {
    let root = tmp("f-spillread");
    let f = Arc::new(Faults::default());
    let log = open(&root, &f, |c| {
        c.queue_capacity = 8;
        c.debug_write_delay_ms = 5;
    });
    // the write-ahead file cannot be read back (EIO) while a burst spills
    f.add(Rule::new(Op::Open, "wal-", Fault::Eio));
    let acked = submit(&log, 0..300);
    assert!(log.stats().spilled > 0);
    let err = log.flush(FLUSH).unwrap_err().to_string();
    assert!(err.contains("spilled rows are not yet read back"), "{err}");
    let s = log.stats();
    assert!(s.spill_pending > 0 && s.wal_errors > 0, "{s:?}");
    // the failing read backs off instead of spinning
    let before = log.writer_passes();
    std::thread::sleep(Duration::from_millis(600));
    let passes = log.writer_passes() - before;
    assert!(
        passes <= 12,
        "writer made {passes} passes in 0.6 s while reads fail"
    );
    f.clear();
    log.flush(FLUSH).unwrap();
    assert_exactly(&keys(&root, Table::ExplorationEvents), &acked, "flush");
    assert_eq!(log.stats().spill_pending, 0);
    log.close().unwrap();
    assert!(segments(&log).is_empty());
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn failed_segment_create_does_not_stick() {
    let root = tmp("f-create");
    let f = Arc::new(Faults::default());
    let log = open(&root, &f, |_| {});
    let mut acked = submit(&log, 0..30);
    // the next segment is created, its header write fails and so does its removal: an empty
    // wal-...-000001.log is left behind
    f.add(Rule::new(Op::Write, "-000001.log", Fault::Enospc).times(1));
    f.add(Rule::new(Op::Remove, "-000001.log", Fault::Eio).times(1));
    log.flush(FLUSH).unwrap();
    assert_eq!(segments(&log).len(), 2, "segment 0 and the stray 000001");
    acked.extend(submit(&log, 30..60));
    log.flush(FLUSH).unwrap(); // rotates to 000002: no EEXIST
    assert!(log.stats().checkpoints >= 2);
    // rows acknowledged after a successful flush survive kill -9
    acked.extend(submit(&log, 60..90));
    assert_exactly(&crash_and_recover(&root, "f-create-c"), &acked, "crash");
    // repeated create failures (create itself refused) back off and recover
    f.add(Rule::new(Op::Create, "wal-", Fault::Enospc).times(3));
    for k in 0..3 {
        acked.extend(submit(&log, 90 + k * 10..100 + k * 10));
        log.flush(FLUSH).unwrap();
    }
    acked.extend(submit(&log, 120..150));
    assert_exactly(&crash_and_recover(&root, "f-create-c2"), &acked, "crash 2");
    log.close().unwrap();
    assert!(
        segments(&log).is_empty(),
        "close leaves no segment: {:?}",
        segments(&log)
    );
    assert_exactly(&keys(&root, Table::ExplorationEvents), &acked, "close");
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn fsync_failures_on_either_path() {
    let root = tmp("f-fsync");
    let f = Arc::new(Faults::default());
    let log = open(&root, &f, |c| c.wal_sync = true);
    let mut acked = submit(&log, 0..20);
    // a failed fsync of the write-ahead file: the append is undone and the rows counted
    f.add(Rule::new(Op::Fsync, "wal-", Fault::Eio).times(3));
    acked.extend(submit(&log, 20..40));
    assert_eq!(log.stats().not_durable, 3);
    // a failed fsync of the Parquet file: flush raises, nothing becomes visible
    f.add(Rule::new(Op::Fsync, ".part-", Fault::Eio).times(1));
    assert!(log.flush(FLUSH).is_err());
    assert!(keys(&root, Table::ExplorationEvents).is_empty());
    acked.extend(submit(&log, 40..60));
    // a failed directory fsync after the rename: the file is visible, never written twice
    f.add(Rule::new(Op::Fsync, "*hour=22", Fault::Eio).times(1));
    log.flush(FLUSH).unwrap();
    let s = log.stats();
    assert!(s.write_errors >= 2, "{s:?}");
    assert_exactly(&keys(&root, Table::ExplorationEvents), &acked, "flush");
    log.close().unwrap();
    assert!(segments(&log).is_empty());
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn rename_failure_and_eio_are_retried_without_duplicates() {
    let root = tmp("f-rename");
    let f = Arc::new(Faults::default());
    let log = open(&root, &f, |c| c.rotate_rows = 25);
    f.add(Rule::new(Op::Rename, ".parquet", Fault::Eio).times(2));
    f.add(
        Rule::new(Op::Write, ".part-", Fault::Short(100))
            .after(1)
            .times(1),
    );
    let acked = submit(&log, 0..200);
    let mut tries = 0;
    while log.flush(FLUSH).is_err() {
        tries += 1;
        assert!(tries < 10, "flush never succeeded: {:?}", log.stats());
    }
    assert_exactly(&keys(&root, Table::ExplorationEvents), &acked, "flush");
    assert!(f.fired() >= 3, "the faults fired: {}", f.fired());
    log.close().unwrap();
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn read_only_directory_counts_then_recovers() {
    let root = tmp("f-ro");
    let f = Arc::new(Faults::default());
    let log = open(&root, &f, |_| {});
    let mut acked = submit(&log, 0..30);
    for op in [Op::Create, Op::Write, Op::Rename, Op::Truncate] {
        f.add(Rule::new(op, "", Fault::ReadOnly));
    }
    acked.extend(submit(&log, 30..60));
    let s = log.stats();
    assert_eq!(s.not_durable, 30, "every refused append is counted: {s:?}");
    assert!(
        log.flush(FLUSH).is_err(),
        "flush cannot deliver to a read-only disk"
    );
    // a crash now keeps the 30 journaled rows; the 30 counted ones were only in memory
    assert_exactly(&crash_and_recover(&root, "f-ro-c"), &acked[..30], "crash");
    f.clear();
    log.flush(FLUSH).unwrap();
    assert_exactly(&keys(&root, Table::ExplorationEvents), &acked, "flush");
    log.close().unwrap();
    assert!(segments(&log).is_empty());
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn close_on_a_failing_disk_keeps_the_journal_for_the_next_session() {
    let root = tmp("f-close");
    let f = Arc::new(Faults::default());
    let log = open(&root, &f, |_| {});
    let acked = submit(&log, 0..80);
    f.add(Rule::new(Op::Create, ".part-", Fault::Enospc));
    assert!(
        log.close().is_err(),
        "close must report that rows are not in files"
    );
    assert!(!segments(&log).is_empty(), "the journal is kept");
    assert!(log.submit(expl(999)).is_err(), "a closed log refuses rows");
    let again = EventLog::open(EventLogConfig::new(&root)).unwrap();
    again.close().unwrap();
    assert_exactly(
        &keys(&root, Table::ExplorationEvents),
        &acked,
        "next session",
    );
    assert!(segments(&again).is_empty());
    fs::remove_dir_all(&root).unwrap();
}

/// A tiny deterministic generator for the randomised rounds (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The rules one fault class arms, with random parameters.
fn arm(class: &str, rng: &mut Rng, f: &Faults) {
    let times = 1 + rng.below(20);
    let after = rng.below(5);
    let rule = |op, path, fault| Rule::new(op, path, fault).after(after).times(times);
    match class {
        "enospc_mid_frame" => {
            let cut = 1 + rng.below(60) as usize;
            f.add(rule(Op::Write, "wal-", Fault::Short(cut)));
            if rng.below(2) == 0 {
                f.add(rule(Op::Truncate, "wal-", Fault::Enospc));
            }
            f.add(rule(Op::Write, ".part-", Fault::Short(cut * 100)));
        }
        "eio" => {
            f.add(rule(Op::Write, "", Fault::Eio));
            f.add(rule(Op::Open, "wal-", Fault::Eio));
        }
        "fsync" => {
            f.add(rule(Op::Fsync, "wal-", Fault::Eio));
            f.add(rule(Op::Fsync, ".part-", Fault::Eio));
            f.add(rule(Op::Fsync, "*hour=22", Fault::Eio));
        }
        "rename" => f.add(rule(Op::Rename, ".parquet", Fault::Eio)),
        "segment_create" => {
            f.add(rule(Op::Create, "wal-", Fault::Enospc));
            f.add(rule(Op::Write, "wal-", Fault::Enospc).times(1));
            f.add(rule(Op::Remove, "wal-", Fault::Eio));
        }
        "read_only_dir" => {
            for op in [Op::Create, Op::Write, Op::Rename, Op::Truncate, Op::Remove] {
                f.add(Rule::new(op, "", Fault::ReadOnly));
            }
        }
        other => panic!("unknown fault class {other}"),
    }
}

#[derive(Default)]
struct Tally {
    rounds: u64,
    acked: u64,
    not_durable: u64,
    crash_lost: u64,
    crash_dups: u64,
    flush_lost: u64,
    flush_dups: u64,
    segments_left: u64,
}

/// Submits rows `range` one call each, sorting the acknowledged ids into durable and not.
fn submit_tracked(
    log: &EventLog,
    range: std::ops::Range<usize>,
    durable: &mut Vec<usize>,
    mem: &mut Vec<usize>,
) {
    for i in range {
        let before = log.stats().not_durable;
        if log.submit(expl(i)).is_ok_and(|n| n == 1) {
            if log.stats().not_durable > before {
                mem.push(i);
            } else {
                durable.push(i);
            }
        }
    }
}

/// One round: healthy rows, the fault armed, rows (and flush attempts) under it, a crash
/// copy at a random point, then the disk heals and the log must deliver everything.
fn fault_round(class: &str, seed: u64, t: &mut Tally) {
    let mut rng = Rng(seed);
    let root = tmp(&format!("fig-{class}-{seed}"));
    let f = Arc::new(Faults::default());
    let spill = rng.below(2) == 0;
    let log = open(&root, &f, |c| {
        c.wal_sync = class == "fsync";
        c.rotate_rows = 20 + rng.below(200) as usize;
        if spill {
            c.queue_capacity = 4 + rng.below(30) as usize;
        }
    });
    let (mut durable, mut mem) = (Vec::new(), Vec::new());
    let n = 100 + rng.below(300) as usize;
    let (a, b) = (
        rng.below(n as u64 / 2) as usize,
        n / 2 + rng.below(n as u64 / 2) as usize,
    );
    submit_tracked(&log, 0..a, &mut durable, &mut mem);
    arm(class, &mut rng, &f);
    for k in 0..4 {
        submit_tracked(
            &log,
            a + k * (b - a) / 4..a + (k + 1) * (b - a) / 4,
            &mut durable,
            &mut mem,
        );
        if rng.below(2) == 0 {
            log.flush(FLUSH).ok(); // may fail under the fault: that is the point
        }
    }
    submit_tracked(&log, b..n, &mut durable, &mut mem);
    // kill -9 now: every durable acknowledgement must survive
    let got = crash_and_recover(&root, &format!("fig-{class}-{seed}-c"));
    t.crash_dups += got.values().filter(|&&c| c > 1).count() as u64;
    t.crash_lost += durable
        .iter()
        .filter(|&&i| !got.contains_key(&id(i)))
        .count() as u64;
    f.clear();
    let mut tries = 0;
    while log.flush(FLUSH).is_err() && tries < 5 {
        tries += 1;
    }
    let got = keys(&root, Table::ExplorationEvents);
    t.flush_dups += got.values().filter(|&&c| c > 1).count() as u64;
    let all = durable.iter().chain(&mem);
    t.flush_lost += all.filter(|&&i| !got.contains_key(&id(i))).count() as u64;
    log.close().ok();
    t.segments_left += segments(&log).len() as u64;
    t.rounds += 1;
    t.acked += (durable.len() + mem.len()) as u64;
    t.not_durable += mem.len() as u64;
    fs::remove_dir_all(&root).ok();
}

/// Reliability figures: `FYP_FAULT_ROUNDS` rounds per injected fault class, one JSON line per
/// class. Run by `benches/compare_eventlog_faults.py`:
/// `cargo test -p fyp-core --lib fault_figures -- --ignored --nocapture`
#[test]
#[ignore]
fn fault_figures() {
    let rounds: u64 = std::env::var("FYP_FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let classes = [
        "enospc_mid_frame",
        "eio",
        "fsync",
        "rename",
        "segment_create",
        "read_only_dir",
    ];
    for class in classes {
        let mut t = Tally::default();
        for r in 0..rounds {
            fault_round(class, 1000 + r, &mut t);
        }
        println!(
            "FAULTS {{\"class\": \"{class}\", \"rounds\": {}, \"acknowledged\": {}, \"not_durable\": {}, \"crash_lost\": {}, \"crash_duplicates\": {}, \"flush_lost\": {}, \"flush_duplicates\": {}, \"segments_left_after_close\": {}}}",
            t.rounds, t.acked, t.not_durable, t.crash_lost, t.crash_dups, t.flush_lost, t.flush_dups, t.segments_left
        );
        let bad = t.crash_lost + t.crash_dups + t.flush_lost + t.flush_dups + t.segments_left;
        assert_eq!(bad, 0, "{class}: rows lost, duplicated or segments left");
    }
}
