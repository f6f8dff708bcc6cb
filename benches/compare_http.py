"""The reference HTTP host under load, from a separate process, loopback only.

1. Open-loop ramp: starts ``fyp-core serve`` (real pipeline, log off), sends POST /feed at fixed
   rates for a bounded time from a thread pool (latency counted from each request's scheduled
   send time, so queueing is not hidden) and prints, per rate, the status counts and p50/p99 of
   the 200s and of the 503s: where the host starts shedding and what shedding costs a client.
2. HTTP-layer overhead: the FastAPI host (``fyp_core.server``) against the previous
   hand-validated Starlette host, both over the same no-work stub pipeline
   (``benches/_http_hosts.py``), closed loop, one client thread: the difference is what the
   framework, the pydantic models, the body bounds and the metrics cost per request.

    python benches/compare_http.py [--quick] [--rates 50,200,800] [--seconds 10] [--items 100000]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Sequence

import httpx
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(cmd: Sequence[str], base: str, timeout_s: float = 600) -> subprocess.Popen:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + timeout_s
    with httpx.Client(timeout=2.0) as c:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[:4]} exited with {proc.returncode}")
            try:
                if c.get(f"{base}/healthz").status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                _stop(proc)
                raise SystemExit(f"server did not come up in {timeout_s:.0f} s")
            time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def open_loop(base: str, rate: float, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """(status, latency ms from scheduled send) of POST /feed at a fixed rate."""
    n = int(seconds * rate)
    lat, status = np.full(n, np.nan), np.zeros(n, dtype=int)
    client = httpx.Client(timeout=5.0, limits=httpx.Limits(max_connections=64))

    def one(i: int, t_sched: float) -> None:
        try:
            body = {"user_id": f"user-{i % 1000}", "request_id": f"load-{rate}-{i}", "n": 20}
            status[i] = client.post(f"{base}/feed", json=body).status_code
        except httpx.HTTPError:
            status[i] = -1
        lat[i] = (time.perf_counter() - t_sched) * 1e3

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=64) as pool:
        for i in range(n):
            t_sched = t0 + i / rate
            delay = t_sched - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i, t_sched)
    client.close()
    return status, lat


def _q(a: np.ndarray) -> str:
    if not len(a):
        return "      -        -"
    p50, p99 = np.percentile(a, [50, 99])
    return f"{p50:7.1f}  {p99:7.1f}"


def ramp(items: int, rates: list[float], seconds: float) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "fyp_core.cli", "serve", "--items", str(items), "--users",
           str(max(1000, items // 10)), "--ef-construction", "64", "--candidates", "1000",
           "--port", str(port), "--no-log"]  # fmt: skip
    proc = _start(cmd, base)
    try:
        with httpx.Client() as c:
            limit = c.get(f"{base}/healthz").json()["max_inflight"]
        print(f"\nPOST /feed open loop, {items:,} items (K=1000, n=20, log off), {seconds:.0f} s "
              f"per rate, default --max-inflight {limit} on {os.cpu_count()} cores; latency "
              f"from the scheduled send, so client-side lag counts")  # fmt: skip
        print(f"{'req/s':>7} {'200':>6} {'503':>6} {'other':>6}   "
              f"{'200 p50':>7}  {'p99 ms':>7}   {'503 p50':>7}  {'p99 ms':>7}")  # fmt: skip
        for rate in rates:
            status, lat = open_loop(base, rate, seconds)
            ok, shed = status == 200, status == 503
            other = int((~ok & ~shed).sum())
            print(f"{rate:7.0f} {ok.sum():6d} {shed.sum():6d} {other:6d}   "
                  f"{_q(lat[ok])}   {_q(lat[shed])}")  # fmt: skip
    finally:
        _stop(proc)


def _closed_loop(base: str, n: int) -> np.ndarray:
    lat = np.empty(n)
    with httpx.Client(timeout=5.0) as c:
        for i in range(n + 50):
            t = time.perf_counter()
            r = c.post(f"{base}/feed", json={"user_id": "u", "request_id": f"o-{i}", "n": 20})
            if r.status_code != 200:
                raise SystemExit(f"overhead run: status {r.status_code}: {r.text[:200]}")
            if i >= 50:  # warm-up excluded
                lat[i - 50] = (time.perf_counter() - t) * 1e3
    return lat


def overhead(n: int, reps: int) -> None:
    print(f"\nHTTP-layer cost per POST /feed (stub pipeline, 20 slots, closed loop, one client "
          f"thread, {n} requests x {reps} alternating runs, median of runs)")  # fmt: skip
    results: dict[str, list[np.ndarray]] = {"old": [], "new": []}
    for _ in range(reps):
        for kind in ("old", "new"):
            port = _free_port()
            base = f"http://127.0.0.1:{port}"
            proc = _start([sys.executable, os.path.join(HERE, "_http_hosts.py"), kind, str(port)],
                          base, timeout_s=60)  # fmt: skip
            try:
                results[kind].append(_closed_loop(base, n))
            finally:
                _stop(proc)
    med = {}
    for kind, label in (("old", "Starlette, hand validation"), ("new", "FastAPI + pydantic")):
        p50 = float(np.median([np.percentile(a, 50) for a in results[kind]]))
        p99 = float(np.median([np.percentile(a, 99) for a in results[kind]]))
        med[kind] = p50
        print(f"  {kind} host ({label:<27}) p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
    print(
        f"  overhead of the new host: {med['new'] - med['old']:+.2f} ms p50 per request "
        f"({med['new'] / med['old']:.2f}x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rates", default=None, help="req/s list (50,200,800; quick: 50,400)")
    ap.add_argument("--seconds", type=float, default=None, help="per rate (10; quick: 3)")
    ap.add_argument("--items", type=int, default=None, help="catalogue (100000; quick: 20000)")
    ap.add_argument("--overhead-requests", type=int, default=None, help="(2000; quick: 300)")
    a = ap.parse_args()
    rates = [float(r) for r in (a.rates or ("50,400" if a.quick else "50,200,800")).split(",")]
    seconds = a.seconds or (3.0 if a.quick else 10.0)
    items = a.items or (20_000 if a.quick else 100_000)
    ramp(items, rates, seconds)
    overhead(a.overhead_requests or (300 if a.quick else 2000), 1 if a.quick else 3)


if __name__ == "__main__":
    main()
