"""The reference HTTP host under a fixed-rate (open-loop) load from a separate process.

Starts ``fyp-core serve`` on 127.0.0.1, waits for /healthz, then sends POST /feed at a fixed
rate for a bounded time from a thread pool (latency counted from each request's scheduled
send time, so queueing is not hidden), and stops the server. Loopback only.

    python benches/compare_http.py [--quick] [--rate 100] [--seconds 20] [--items 100000]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rate", type=float, default=None, help="requests/s (100; quick: 50)")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("--port", type=int, default=8765)
    a = ap.parse_args()
    seconds = a.seconds or (5.0 if a.quick else 20.0)
    a.rate = a.rate or (50.0 if a.quick else 100.0)
    items = a.items or (20_000 if a.quick else 100_000)
    cmd = [
        sys.executable,
        "-m",
        "fyp_core.cli",
        "serve",
        "--items",
        str(items),
        "--users",
        str(max(1000, items // 10)),
        "--ef-construction",
        "64",
        "--candidates",
        "1000",
        "--port",
        str(a.port),
        "--no-log",
    ]
    server = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    base = f"http://127.0.0.1:{a.port}"
    try:
        deadline = time.time() + 600
        with httpx.Client(timeout=2.0) as c:
            while True:
                if server.poll() is not None:
                    raise SystemExit(f"server exited with {server.returncode}")
                try:
                    if c.get(f"{base}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline:
                    raise SystemExit("server did not come up in 600 s")
                time.sleep(0.5)
        n = int(seconds * a.rate)
        lat = np.full(n, np.nan)
        status = np.zeros(n, dtype=int)
        client = httpx.Client(timeout=5.0, limits=httpx.Limits(max_connections=32))

        def one(i: int, t_sched: float) -> None:
            try:
                r = client.post(
                    f"{base}/feed",
                    json={"user_id": f"user-{i % 1000}", "request_id": f"load-{i}", "n": 20},
                )
                status[i] = r.status_code
            except httpx.HTTPError:
                status[i] = -1
            lat[i] = (time.perf_counter() - t_sched) * 1e3

        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(max_workers=32) as pool:
            for i in range(n):
                t_sched = t0 + i / a.rate
                delay = t_sched - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(one, i, t_sched)
        client.close()
        ok = status == 200
        print(
            f"POST /feed at {a.rate:.0f} req/s for {seconds:.0f} s over {items:,} items "
            f"(K=1000, n=20, log off), open loop from a separate process"
        )
        n503 = int((status == 503).sum())
        print(f"  200: {ok.sum()}  503: {n503}  other: {(~ok).sum() - n503}")
        if ok.any():
            q = np.percentile(lat[ok], [50, 95, 99, 99.9])
            print("  latency ms  p50 {:.2f}  p95 {:.2f}  p99 {:.2f}  p99.9 {:.2f}".format(*q))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
