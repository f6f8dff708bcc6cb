"""Three ``fyp-core serve`` processes sharing one catalogue stream over one Redis (issue #16).

1. Propagation: uploads sent round-robin to hosts A, B, C over HTTP; for each, the time until
   both other hosts have applied it (their ``fyp_catalog_applied_total`` counts it; the item is
   then in their index and item table, i.e. servable). p50/p99/max over all uploads.
2. Feed latency under stream load: closed-loop ``/feed`` on host B, rounds alternating between a
   quiet stream and one carrying ``--upload-rate`` uploads/s sent to A (so B applies them while
   serving); per condition the median over rounds of each round's p50/p99, and the ratio.

Real processes on loopback; Redis from ``FYP_REDIS_URL`` or a private ``redis-server`` on a free
port. The machine is shared and noisy: conditions are interleaved and medians quoted.

    python benches/compare_scaleout.py [--quick] [--items 100000] [--uploads 200]
        [--rounds 4] [--seconds 8] [--upload-rate 50] [--json OUT]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Optional, Sequence

import httpx
import numpy as np

APPLIED = "fyp_catalog_applied_total"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    """``FYP_REDIS_URL`` if set, else a private redis-server on a free loopback port."""

    def __init__(self) -> None:
        self.proc: Optional[subprocess.Popen] = None
        self.url = os.environ.get("FYP_REDIS_URL", "")
        if self.url:
            return
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("no FYP_REDIS_URL and no redis-server on PATH")
        port = _free_port()
        self.proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        self.url = f"redis://127.0.0.1:{port}/"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


class Host:
    """One ``fyp-core serve`` process (log off) on the shared Redis namespace."""

    def __init__(self, name: str, world: Sequence[str], redis_url: str, ns: str) -> None:
        self.name = name
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "fyp_core.cli", "serve", *world, "--port", str(self.port)]
        cmd += ["--no-log", "--redis-url", redis_url, "--redis-namespace", ns]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_ready(self, c: httpx.Client, timeout_s: float = 900.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"host {self.name} exited {self.proc.returncode}: {err}")
            try:
                if c.get(f"{self.base}/healthz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"host {self.name} not ready in {timeout_s} s")

    def applied(self, c: httpx.Client) -> float:
        for line in c.get(f"{self.base}/metrics").text.splitlines():
            if line.startswith(APPLIED + " "):
                return float(line.split()[1])
        raise RuntimeError(f"host {self.name}: /metrics has no {APPLIED}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _upload_body(item_id: int, dim: int, rng: np.random.Generator) -> dict:
    emb = rng.normal(size=dim).astype(np.float32)
    emb /= np.linalg.norm(emb)
    return {"item_id": item_id, "embedding": emb.tolist(), "topic": 1, "creator": 7}


def propagation(hosts: list[Host], n: int, dim: int, timeout_s: float = 10.0) -> np.ndarray:
    """Seconds from each upload's 200 until both other hosts applied it."""
    rng = np.random.default_rng(1)
    lags = []
    with httpx.Client(timeout=10.0) as c:
        for i in range(n):
            origin = hosts[i % len(hosts)]
            others = [h for h in hosts if h is not origin]
            want = [h.applied(c) + 1 for h in others]
            r = c.post(f"{origin.base}/upload", json=_upload_body(7 * 10**9 + i, dim, rng))
            r.raise_for_status()
            t0 = time.perf_counter()
            pending = list(zip(others, want))
            while pending:
                if time.perf_counter() - t0 > timeout_s:
                    raise TimeoutError(f"upload {i} not applied on {pending[0][0].name}")
                pending = [(h, w) for h, w in pending if h.applied(c) < w]
                if pending:
                    time.sleep(0.002)
            lags.append(time.perf_counter() - t0)
    return np.array(lags)


def _uploader(host: Host, rate: float, dim: int, stop: threading.Event, first_id: int) -> int:
    rng = np.random.default_rng(2)
    sent = 0
    with httpx.Client(timeout=10.0) as c:
        t0 = time.perf_counter()
        while not stop.is_set():
            due = t0 + sent / rate
            wait = due - time.perf_counter()
            if wait > 0:
                stop.wait(wait)
                continue
            c.post(f"{host.base}/upload", json=_upload_body(first_id + sent, dim, rng))
            sent += 1
    return sent


def feed_round(host: Host, seconds: float, users: int, tag: str) -> np.ndarray:
    """Closed-loop /feed on one host for `seconds`; latencies in ms (every status must be 200)."""
    lat = []
    with httpx.Client(timeout=10.0) as c:
        end = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < end:
            body = {"user_id": f"user-{i % users}", "request_id": f"{tag}-{i}", "n": 20}
            t = time.perf_counter()
            r = c.post(f"{host.base}/feed", json=body)
            lat.append((time.perf_counter() - t) * 1e3)
            if r.status_code != 200:
                raise RuntimeError(f"/feed on {host.name} answered {r.status_code}: {r.text}")
            i += 1
    return np.array(lat)


def feed_under_load(hosts: list[Host], args: argparse.Namespace) -> dict:
    out: dict[str, list] = {"quiet": [], "loaded": []}
    next_id = 8 * 10**9
    for r in range(args.rounds):
        for cond in ("quiet", "loaded") if r % 2 == 0 else ("loaded", "quiet"):
            stop = threading.Event()
            pool = cf.ThreadPoolExecutor(1) if cond == "loaded" else None
            fut = None
            if pool is not None:
                fut = pool.submit(_uploader, hosts[0], args.upload_rate, args.dim, stop, next_id)
            lat = feed_round(hosts[1], args.seconds, args.users, f"r{r}{cond}")
            stop.set()
            sent = [fut.result() if fut is not None else 0]
            if pool is not None:
                pool.shutdown()
            next_id += sent[0]
            p50, p99 = np.percentile(lat, [50, 99])
            out[cond].append({"p50_ms": p50, "p99_ms": p99, "n": len(lat), "uploads": sent[0]})
            print(
                f"  round {r} {cond:6s}: {len(lat):5d} feeds  p50 {p50:6.2f} ms  "
                f"p99 {p99:6.2f} ms  uploads sent {sent[0]}",
                flush=True,
            )
    summary = {
        c: {k: float(np.median([x[k] for x in v])) for k in ("p50_ms", "p99_ms")}
        for c, v in out.items()
    }
    summary["p99_ratio_loaded_vs_quiet"] = summary["loaded"]["p99_ms"] / summary["quiet"]["p99_ms"]
    return {"rounds": out, "median": summary}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI size: 3k items, 20 uploads, 2 rounds")
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--uploads", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--upload-rate", type=float, default=50.0)
    ap.add_argument("--json", default=None, help="write the figures here")
    args = ap.parse_args(argv)
    if args.quick:
        args.items, args.users, args.uploads, args.rounds, args.seconds = 3000, 300, 20, 2, 1.5
    try:
        redis = Redis()
    except RuntimeError as e:
        print(f"SKIPPED: {e}")
        return 0
    ns = uuid.uuid4().hex[:12]
    world = ["--items", str(args.items), "--users", str(args.users), "--seed", "3"]
    hosts = [Host(n, world, redis.url, ns) for n in "ABC"]
    try:
        t0 = time.perf_counter()
        with httpx.Client(timeout=5.0) as c:
            for h in hosts:
                h.wait_ready(c)
        print(f"3 hosts ready over {args.items:,} items in {time.perf_counter() - t0:.1f} s")
        lags = propagation(hosts, args.uploads, args.dim) * 1e3
        p50, p99 = np.percentile(lags, [50, 99])
        print(
            f"upload on one host -> applied on both others: p50 {p50:.1f} ms  p99 {p99:.1f} ms  "
            f"max {lags.max():.1f} ms  ({len(lags)} uploads)"
        )
        load = feed_under_load(hosts, args)
        m = load["median"]
        print(
            f"feed on B, median over rounds: quiet p50 {m['quiet']['p50_ms']:.2f} / p99 "
            f"{m['quiet']['p99_ms']:.2f} ms; with {args.upload_rate:g} uploads/s on the stream "
            f"p50 {m['loaded']['p50_ms']:.2f} / p99 {m['loaded']['p99_ms']:.2f} ms "
            f"(p99 ratio {m['p99_ratio_loaded_vs_quiet']:.2f})"
        )
        if args.json:
            with open(args.json, "w") as f:
                figures = {"propagation_ms": {"p50": p50, "p99": p99, "max": float(lags.max())}}
                json.dump({"args": vars(args), **figures, "feed": load}, f, indent=2)
    finally:
        for h in hosts:
            h.stop()
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
