"""The analytics' join key: the integer ``impression_key`` (schema v2) against the string
``impression_id`` it replaced, on the same simulated log, same DuckDB, same query text except the
key. Interleaved rounds in one process, a fresh connection per run; per variant the median wall
and CPU time (process CPU over DuckDB's threads) and the ratio.

    python benches/compare_join_keys.py [--quick] [--impressions 2000000] [--rounds 3]
        [--root DIR] [--queries shadow_vs_live,shadow_calibration,lift_by_topic]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from typing import Optional, Sequence

import duckdb
import numpy as np

from fyp_core.analytics.sqlsource import QUERIES, query_body, raw_table_sql, views
from fyp_core.analytics.synthetic import generate_log


def _by_string(sql: str) -> str:
    """The same SQL joining and grouping on the string id (the schema v1 form)."""
    return re.sub(r"\bimpression_key\b", "impression_id", sql)


def _connect(root: str, string_key: bool) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    con.execute("SET VARIABLE root = ?", [os.path.abspath(root)])
    for t in ("impressions", "engagements", "ranker_scores"):
        con.execute(f"CREATE TEMP VIEW {t} AS {raw_table_sql(t)}")
    for name, body in views():
        body = _by_string(body) if string_key else body
        if string_key and name == "imp":  # keep both columns visible, as v2's imp does
            body = body.replace("impression_id, impression_id,", "impression_id,")
        con.execute(f"CREATE TEMP VIEW {name} AS {body}")
    return con


def run_once(root: str, query: str, string_key: bool) -> tuple[float, float, int]:
    con = _connect(root, string_key)
    sql = query_body(query)
    sql = _by_string(sql) if string_key else sql
    c0, t0 = time.process_time(), time.perf_counter()
    n = con.sql(sql).to_arrow_table().num_rows
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    con.close()
    return wall, cpu, n


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI size: 100k impressions, 1 round")
    ap.add_argument("--impressions", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--root", default=None, help="reuse (or keep) the simulated log here")
    ap.add_argument("--queries", default="shadow_vs_live,shadow_calibration,lift_by_topic")
    args = ap.parse_args(argv)
    if args.quick:
        args.impressions, args.rounds = 100_000, 1
    queries = [q for q in args.queries.split(",") if q]
    unknown = [q for q in queries if q not in QUERIES]
    if unknown:
        ap.error(f"unknown queries {unknown}; known: {', '.join(QUERIES)}")
    root = args.root or tempfile.mkdtemp(prefix="fyp-joinkeys-")
    if not os.path.isdir(os.path.join(root, "impressions")):
        t = time.perf_counter()
        n_req = args.impressions // 10
        generate_log(root, n_requests=n_req, n_users=max(1000, n_req // 20), n_items=50_000)
        print(f"simulated log: {args.impressions:,} impressions in {time.perf_counter() - t:.0f} s")
    print(f"{'query':22s} {'key':7s} {'wall s':>8s} {'cpu s':>8s}  rows")
    for q in queries:
        res: dict[bool, list[tuple[float, float, int]]] = {False: [], True: []}
        for r in range(args.rounds):
            for string_key in (False, True) if r % 2 == 0 else (True, False):
                res[string_key].append(run_once(root, q, string_key))
        med = {k: np.median(np.array(v)[:, :2], axis=0) for k, v in res.items()}
        if {v[0][2] for v in res.values()} != {res[False][0][2]}:
            raise AssertionError(f"{q}: the two keys gave different row counts")
        for k, name in ((True, "string"), (False, "integer")):
            print(f"{q:22s} {name:7s} {med[k][0]:8.2f} {med[k][1]:8.2f}  {res[k][0][2]}")
        print(
            f"{q:22s} integer key: {med[True][0] / med[False][0]:.2f}x faster wall, "
            f"{med[True][1] / med[False][1]:.2f}x less CPU"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
