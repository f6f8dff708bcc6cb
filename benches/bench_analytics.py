"""Analytics SQL over a simulated log. Two ways to run it:

    pytest benches/bench_analytics.py                       # pytest-benchmark, small log (CI)
    python benches/bench_analytics.py --impressions 10000000 [--root DIR] [--reps 3]

The script mode is the target check (DESIGN: each query over 10M impressions under 5 s on this
machine): it simulates the log once (or reuses --root), then times every query, medians of
--reps runs, each in a fresh DuckDB connection (cold catalogue, warm OS page cache). It prints
wall time and the process CPU time (all DuckDB threads): on a shared, loaded machine CPU time /
threads is the better estimate of the wall time on an idle one.
FYP_BENCH_IMPRESSIONS sets the size of the pytest log (default ~60k impressions).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pytest

from fyp_core import analytics
from fyp_core.analytics.synthetic import generate_log

SLOTS = 10


def run_query(root: str, name: str) -> int:
    kw = {}
    if name == "rollup_user_day_topic":
        first = sorted(p.name[3:] for p in (Path(root) / "impressions").iterdir())[0]
        kw = dict(dt_from=first, dt_to=first)
    return analytics.run(name, root, **kw).num_rows


def simulate(root: str, impressions: int, seed: int = 0) -> None:
    # everything sampled at 100% so the impressions table holds `impressions` rows
    n_req = max(impressions // SLOTS, 1000)
    generate_log(
        root,
        n_requests=n_req,
        n_users=max(2_000, n_req // 10),
        n_items=max(20_000, n_req // 5),
        n_creators=max(1_500, n_req // 50),
        days=14,
        slots=SLOTS,
        n_candidates=20,
        sampled_pct_by_day=(100.0,),
        served_features=False,
        seed=seed,
    )


@pytest.fixture(scope="module")
def log_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bench-log"))
    simulate(root, int(os.environ.get("FYP_BENCH_IMPRESSIONS", "60000")))
    return root


@pytest.mark.parametrize("name", list(analytics.QUERIES))
def test_query(benchmark, log_root, name):
    rows = benchmark(run_query, log_root, name)
    assert rows > 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impressions", type=int, default=10_000_000)
    ap.add_argument("--root", default=None, help="log directory to reuse or create")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="60k impressions, 1 rep")
    a = ap.parse_args()
    n = 60_000 if a.quick else a.impressions
    reps = 1 if a.quick else a.reps
    root = a.root or tempfile.mkdtemp(prefix="fyp-bench-")
    if not analytics.table_files(root, "impressions"):
        t0 = time.perf_counter()
        simulate(root, n)
        print(f"simulated {n:,} impressions into {root} in {time.perf_counter() - t0:.1f} s")
    rows = analytics.run("daily_summary", root)
    print(
        f"log: {sum(rows['rows_logged'].to_pylist()):,} impressions, "
        f"{len(analytics.table_files(root, 'ranker_scores'))} ranker_scores files; "
        f"cpus={os.cpu_count()}; median of {reps}"
    )
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print(f"{'query':24s} {'wall s':>8s} {'cpu s':>8s} {'cpu/2 s':>8s} {'rows out':>12s}")
    for name in analytics.QUERIES:
        walls, cpus = [], []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            out = run_query(root, name)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        flag = "" if wall < 5 else "  (wall over the 5 s target)"
        print(f"{name:24s} {wall:8.2f} {cpu:8.2f} {cpu / 2:8.2f} {out:12,d}{flag}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
