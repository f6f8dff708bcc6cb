"""Backpressure and crash safety of fyp_core.EventLog.

- A deliberately slowed writer under a 10x burst: firehose rows are dropped (and counted), the
  exploration arm spills to the write-ahead file and not one exploration row is lost.
- kill -9 of a logging subprocess mid-write, then a restart on the same directory: no partial
  file is ever visible, the write-ahead file is replayed, and every exploration row whose log
  call returned is present exactly once (dedupe rule: impression_id; see docs/eventlog.md).

FYP_EVENTLOG_CRASH_ROUNDS (default 2) sets how many kill/restart rounds each mode runs.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from fyp_core import EventLog, user_token

TOK = user_token(b"k" * 32, "alice")
ROUNDS = int(os.environ.get("FYP_EVENTLOG_CRASH_ROUNDS", "2"))


def ids_of(root, table, column="impression_id"):
    out = []
    for f in glob.glob(os.path.join(root, table, "*", "*", "*.parquet")):
        out += pq.read_table(f, columns=[column]).column(column).to_pylist()
    return out


def log_request_batch(log, b, slots=20, explore_every=4):
    ids = [f"b{b}:{s}" for s in range(slots)]
    expl = np.arange(slots) % explore_every == 0
    src = np.where(expl, "exploration", "ranked").tolist()
    log.log_impressions(
        ids,
        f"b{b}",
        TOK,
        np.arange(slots),
        np.arange(slots),
        src,
        np.where(expl, 0.01, 1.0),
        "m1",
        0,
        0,
    )
    log.log_ranker_scores(ids, "m1", 0.5, np.zeros((slots, 5)), exploration=expl)
    log.log_exploration([i for i, e in zip(ids, expl) if e], TOK, 1, np.flatnonzero(expl), 0, 0.01)
    log.log_request(f"b{b}", TOK, np.arange(50), np.zeros(50), np.arange(slots))


def test_slowed_writer_10x_burst_loses_no_exploration_row(tmp_path):
    root = str(tmp_path)
    cap = 500
    log = EventLog(root, queue_capacity=cap, _debug_write_delay_ms=50)
    n_batches = 250  # 250 x (20 impressions + 20 scores + 5 events + 1 request) ~ 23x capacity
    t0 = time.perf_counter()
    for b in range(n_batches):
        log_request_batch(log, b)
    submit_s = time.perf_counter() - t0
    s = log.stats()
    assert s["spilled"] > 0, s
    assert s["dropped"]["impressions"] > 0 and s["dropped"]["requests"] > 0, s
    log.flush(timeout=120)
    s = log.stats()
    expl_ids = [f"b{b}:{k}" for b in range(n_batches) for k in range(0, 20, 4)]
    ev = Counter(ids_of(root, "exploration_events"))
    assert ev == Counter(expl_ids), "every exploration event exactly once"
    imp = Counter(ids_of(root, "impressions"))
    assert all(imp[i] == 1 for i in expl_ids), "exploration impressions never dropped"
    scores = Counter(ids_of(root, "ranker_scores"))
    assert all(scores[i] == 1 for i in expl_ids)
    # firehose accounting: each ranked row is written or counted as dropped, never both
    ranked = n_batches * 15
    assert s["written"]["impressions"] + s["dropped"]["impressions"] == n_batches * 20
    assert s["dropped"]["impressions"] <= ranked
    assert s["written"]["requests"] + s["dropped"]["requests"] == n_batches
    assert s["spill_pending"] == 0 and s["queue_depth"] == 0
    log.close()
    # submitting never waited for the 50 ms writer: 1000 calls took far less than 250 x 50 ms
    assert submit_s < 0.5 * n_batches * 0.05, submit_s


CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    from test_eventlog_crash import log_request_batch
    from fyp_core import EventLog
    root, mode = sys.argv[1], sys.argv[2]
    kw = dict(rotate_rows=150, rotate_seconds=0.05)
    if mode == "spill":
        kw.update(queue_capacity=120, _debug_write_delay_ms=3)
    log = EventLog(root, **kw)
    b = int(sys.argv[4])
    while True:
        log_request_batch(log, b)
        print(b, flush=True)   # printed only after every call for batch b returned
        b += 1
    """
)


def visible_files_are_complete(root):
    n = 0
    for f in glob.glob(os.path.join(root, "*", "*", "*", "*.parquet")):
        t = pq.read_table(f)  # raises on a partial file
        assert t.num_rows == pq.ParquetFile(f).metadata.num_rows
        n += 1
    return n


@pytest.mark.parametrize("mode", ["plain", "spill"])
def test_kill9_mid_write_then_restart_replays_exactly_once(tmp_path, mode):
    root = str(tmp_path / "log")
    here = os.path.dirname(os.path.abspath(__file__))
    start_b = 0
    acked_ranges = []
    replayed = 0
    rng = np.random.default_rng(7)
    for _ in range(ROUNDS):
        p = subprocess.Popen(
            [sys.executable, "-c", CHILD, root, mode, here, str(start_b)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        acked = -1
        target = start_b + 60 + int(rng.integers(0, 60))
        deadline = time.time() + 60
        assert p.stdout is not None
        while time.time() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            acked = int(line)
            if acked >= target:
                break
        time.sleep(float(rng.uniform(0, 0.02)))  # land somewhere inside a write
        os.kill(p.pid, signal.SIGKILL)
        rest, err = p.communicate(timeout=30)
        for line in rest.split():
            acked = int(line)
        assert acked >= target, f"child died early: {err[-2000:]}"
        acked_ranges.append(range(start_b, acked + 1))
        # readers never see a partial file, even right after the kill
        visible_files_are_complete(root)
        # the write-ahead directory holds what the files may not
        assert glob.glob(os.path.join(root, "_wal", "w0", "wal-*.log"))
        start_b = acked + 1000  # the next child logs fresh ids
        # restart: replay, flush, close
        log = EventLog(root)
        log.close()
        s = log.stats()
        replayed += s["replayed"]
        assert s["write_errors"] == 0, s
        assert not glob.glob(os.path.join(root, "*", "*", "*", ".part-*.tmp"))
        assert not glob.glob(os.path.join(root, "_wal", "w0", "wal-*.log"))
    assert replayed > 0
    # nothing is duplicated ...
    ev = Counter(ids_of(root, "exploration_events"))
    imp = Counter(ids_of(root, "impressions"))
    sc = Counter(ids_of(root, "ranker_scores"))
    assert max(ev.values()) == max(imp.values()) == max(sc.values()) == 1
    # ... and every exploration row whose log call returned is present
    missing = [
        f"b{b}:{k}"
        for r in acked_ranges
        for b in r
        for k in range(0, 20, 4)
        if not (ev[f"b{b}:{k}"] == imp[f"b{b}:{k}"] == sc[f"b{b}:{k}"] == 1)
    ]
    assert not missing, f"{len(missing)} acked exploration rows lost, e.g. {missing[:5]}"
