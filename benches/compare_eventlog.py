"""EventLog write throughput vs writing the same rows with pyarrow from Python.

Same impressions rows (13 columns, DESIGN §4), same process, one table, zstd level 1, fsync of
every file. Prints records/s and ratios; `--quick` for CI.
    python benches/compare_eventlog.py [--quick] [--n N] [--batch B] [--reps R]

- fyp_core submit: caller-side cost of `log_impressions` (returns before anything is encoded).
- fyp_core end-to-end: submit + background encode + write + fsync + rename, until `flush()`.
- pyarrow: build the Arrow table from the same columns, `pq.write_table(compression="zstd")`
  and fsync (what a Python logger would do on its own thread, GIL held for the build).
- per-request hand-off: one 20-slot response (impressions + scores + request row with 1000
  candidates) through three `log_*` calls: p50/p99 microseconds on the caller's thread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fyp_core import EventLog, user_token

TOK = user_token(b"k" * 32, "bench-user")


def columns(n: int, rng):
    req = np.arange(n) // 20
    reqs = [f"req-{r:09d}" for r in req]
    ids = [f"{r}:{i % 20}" for i, r in enumerate(reqs)]
    return dict(
        impression_ids=ids,
        request_ids=reqs,
        user_tokens=[TOK] * n,
        item_ids=rng.integers(0, 2**40, n, dtype=np.uint64),
        positions=(np.arange(n) % 20).astype(np.int32),
        sources=["ranked"] * n,
        propensities=np.ones(n),
        model_versions=["m-2024-06-01"] * n,
        topics=rng.integers(0, 300, n).astype(np.int32),
        creator_ids=rng.integers(0, 10**6, n, dtype=np.uint64),
        ts=np.full(n, 1_717_200_000_000_000, dtype=np.int64) + np.arange(n),
    )


def run_fyp(cols, batch: int, root: str) -> tuple[float, float]:
    log = EventLog(root, queue_capacity=4_000_000, rotate_rows=1_000_000)
    n = len(cols["impression_ids"])
    t0 = time.perf_counter()
    for s in range(0, n, batch):
        e = min(n, s + batch)
        log.log_impressions(
            cols["impression_ids"][s:e],
            cols["request_ids"][s:e],
            TOK,
            cols["item_ids"][s:e],
            cols["positions"][s:e],
            "ranked",
            cols["propensities"][s:e],
            "m-2024-06-01",
            cols["topics"][s:e],
            cols["creator_ids"][s:e],
            ts=cols["ts"][s:e],
        )
    t_submit = time.perf_counter() - t0
    log.flush()
    t_all = time.perf_counter() - t0
    st = log.stats()
    log.close()
    assert st["written"]["impressions"] == n and st["dropped"]["impressions"] == 0, st
    return t_submit, t_all


def run_pyarrow(cols, batch: int, root: str) -> float:
    n = len(cols["impression_ids"])
    os.makedirs(root, exist_ok=True)
    t0 = time.perf_counter()
    tables = []
    for s in range(0, n, batch):
        e = min(n, s + batch)
        tables.append(
            pa.table(
                {
                    "impression_id": pa.array(cols["impression_ids"][s:e], pa.string()),
                    "ts": pa.array(cols["ts"][s:e], pa.timestamp("us", tz="UTC")),
                    "request_id": pa.array(cols["request_ids"][s:e], pa.string()),
                    "user_token": pa.array(cols["user_tokens"][s:e], pa.string()),
                    "item_id": pa.array(cols["item_ids"][s:e]),
                    "position": pa.array(cols["positions"][s:e]),
                    "source": pa.array(cols["sources"][s:e], pa.string()),
                    "propensity": pa.array(cols["propensities"][s:e]),
                    "model_version": pa.array(cols["model_versions"][s:e], pa.string()),
                    "experiments": pa.array(["{}"] * (e - s), pa.string()),
                    "topic": pa.array(cols["topics"][s:e]),
                    "creator_id": pa.array(cols["creator_ids"][s:e]),
                    "sampled_pct": pa.array(np.full(e - s, 100.0)),
                }
            )
        )
    path = os.path.join(root, "part.parquet")
    pq.write_table(pa.concat_tables(tables), path, compression="zstd", compression_level=1)
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - t0


def handoff_latency(reps: int, root: str) -> tuple[float, float]:
    rng = np.random.default_rng(1)
    log = EventLog(root)
    lat = []
    cand = rng.integers(0, 10**6, 1000, dtype=np.uint64)
    scores = rng.random(1000).astype(np.float32)
    preds = rng.random((20, 5)).astype(np.float32)
    for r in range(reps):
        rid = f"q{r}"
        ids = [f"{rid}:{s}" for s in range(20)]
        t0 = time.perf_counter()
        log.log_impressions(ids, rid, TOK, cand[:20], np.arange(20), "ranked", 1.0, "m", 0, 0)
        log.log_ranker_scores(ids, "m", scores[:20], preds, request_ids=rid)
        log.log_request(rid, TOK, cand, scores, cand[:20])
        lat.append(time.perf_counter() - t0)
    log.close()
    a = np.array(lat) * 1e6
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=None)
    a = ap.parse_args()
    n = a.n or (100_000 if a.quick else 1_000_000)
    reps = a.reps or (3 if a.quick else 5)
    cols = columns(n, np.random.default_rng(0))
    tmp = tempfile.mkdtemp(prefix="fyp-bench-eventlog-")
    sub, full, arrow = [], [], []
    try:
        for r in range(reps):
            ts, ta = run_fyp(cols, a.batch, os.path.join(tmp, f"fyp{r}"))
            sub.append(ts)
            full.append(ta)
            arrow.append(run_pyarrow(cols, a.batch, os.path.join(tmp, f"pa{r}")))
        p50, p99 = handoff_latency(500 if a.quick else 5000, os.path.join(tmp, "lat"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    m = statistics.median
    rate = lambda t: n / t / 1e6  # noqa: E731
    print(f"impressions rows, n={n:,}, batch={a.batch:,}, reps={reps} (median)")
    print(f"  fyp_core submit (caller thread)   {rate(m(sub)):7.2f} M rows/s")
    print(f"  fyp_core end-to-end (to visible)  {rate(m(full)):7.2f} M rows/s")
    print(f"  pyarrow build + write_table       {rate(m(arrow)):7.2f} M rows/s")
    print(f"  ratio end-to-end / pyarrow        {m(arrow) / m(full):7.2f}x")
    print(f"  ratio submit / pyarrow            {m(arrow) / m(sub):7.2f}x  (caller-thread cost)")
    print(
        f"per-request hand-off (20 slots + 1000-candidate request row, 3 calls): "
        f"p50 {p50:.1f} us, p99 {p99:.1f} us"
    )


if __name__ == "__main__":
    main()
