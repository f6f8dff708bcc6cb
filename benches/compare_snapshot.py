"""A new host's time to its first served feed: ``fyp-core serve --catalogue C`` (the index built
from the catalogue files) against ``fyp-core serve --catalogue C --snapshot-dir D`` (the newest
host snapshot installed), both as real processes on loopback, interleaved, medians. The clock
runs from the process start to the first POST /feed answered 200 (interpreter start, imports and
the pipeline included: what an operator waits for). The first catalogue run is the host that
then writes the snapshot; the runs alternate after it. Also prints what writing the snapshot
cost (the in-memory cut catalogue writers waited for, the whole write, the bytes).

Second part, in one process: feed and upload latency while snapshots are written, against the
same load without them (interleaved windows), over the same pipeline.

    python benches/compare_snapshot.py [--quick] [--items 100000] [--reps 3] [--serving-only]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(args: list[str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "fyp_core.cli", "serve", "--no-log", "--port", str(port), *args]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    return proc, f"http://127.0.0.1:{port}"


def _first_feed(proc: subprocess.Popen, base: str, timeout_s: float) -> float:
    """Seconds from now (just after the spawn) to the first 200 on POST /feed."""
    t0 = time.perf_counter()
    body = {"user_id": "u-first", "request_id": "r-first", "n": 20}
    with httpx.Client(timeout=5.0) as c:
        while time.perf_counter() - t0 < timeout_s:
            if proc.poll() is not None:
                raise SystemExit(f"fyp-core serve exited {proc.returncode}: {proc.stderr.read()}")
            try:
                if c.post(f"{base}/feed", json=body).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    raise SystemExit(f"no feed served within {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen) -> str:
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return err or ""


def _export(items: int, cat: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "fyp_core.cli", "catalogue", "export", cat, "--items", str(items),
         "--users", str(max(1000, items // 10))],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def run(items: int, reps: int, work: str) -> None:
    cat, snaps = os.path.join(work, "cat"), os.path.join(work, "snaps")
    _export(items, cat)
    build_name = "catalogue (index build)"
    times: dict[str, list[float]] = {build_name: [], "snapshot": []}
    # the first catalogue run is the host that writes the snapshot (its directory still empty)
    proc, base = _serve(["--catalogue", cat, "--snapshot-dir", snaps])
    times[build_name].append(_first_feed(proc, base, 7200))
    with httpx.Client(timeout=600.0) as c:
        w = c.post(f"{base}/admin/snapshot").json()
    _stop(proc)
    print(
        f"snapshot of {w['items']:,} items: {w['bytes'] / 2**20:.0f} MiB, cut {w['cut_ms']:.0f} ms "
        f"(uploads waited; feeds did not), written in {w['total_ms'] / 1e3:.2f} s"
    )
    for rep in range(reps):  # interleaved
        if rep > 0:
            proc, base = _serve(["--catalogue", cat])
            times[build_name].append(_first_feed(proc, base, 7200))
            _stop(proc)
        proc, base = _serve(["--catalogue", cat, "--snapshot-dir", snaps])
        times["snapshot"].append(_first_feed(proc, base, 600))
        err = _stop(proc)
        if "started from snapshot" not in err:
            raise SystemExit(f"the host did not start from the snapshot: {err}")
    build, snap = (statistics.median(v) for v in times.values())
    print(f"{items:,} items, first feed served after (median of {reps}, interleaved):")
    for name, v in times.items():
        print(f"  {name:<24} {statistics.median(v):7.2f} s   runs {[round(x, 2) for x in v]}")
    print(f"  ratio build / snapshot  {build / snap:7.1f}x")


def _pct(v: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(v) * 1e3, q)) if v else float("nan")


def serving_during_snapshots(items: int, windows: int, work: str) -> None:
    """Feeds and uploads from two threads; windows alternate between 'a snapshot is being
    written' and 'no snapshot'; latencies are binned by the window they started in."""
    import argparse as ap
    import threading

    from fyp_core.catalog import load_catalogue
    from fyp_core.demo import build_pipeline

    cat = os.path.join(work, "cat")
    args = ap.Namespace(ef_construction=100, seed=0, explore_rate=0.05, candidates=1000, ef=1000)
    pipe = build_pipeline(load_catalogue(cat), args, None)
    state = {"snap": False, "stop": False}
    lat: dict[tuple[str, bool], list[float]] = {}

    def loop(kind: str) -> None:
        k = 0
        rng = np.random.default_rng(1 if kind == "feed" else 2)
        while not state["stop"]:
            during = state["snap"]
            t = time.perf_counter()
            if kind == "feed":
                pipe.feed(f"u{k % 5000}", f"r{k}", n=20)
            else:
                emb = rng.normal(size=64).astype(np.float32)
                pipe.upload(10**12 + k, emb, topic=k % 50, creator=k % 999)
                time.sleep(0.02)  # ~50 uploads/s
            lat.setdefault((kind, during), []).append(time.perf_counter() - t)
            k += 1

    threads = [threading.Thread(target=loop, args=(k,)) for k in ("feed", "upload")]
    for t in threads:
        t.start()
    cuts = []
    for _ in range(windows):
        time.sleep(2.0)  # a window without a snapshot
        state["snap"] = True
        cuts.append(pipe.save_snapshot(os.path.join(work, "serving-snaps"), keep=1)["cut_ms"])
        state["snap"] = False
    time.sleep(2.0)
    state["stop"] = True
    for t in threads:
        t.join()
    print(f"serving while snapshots are written ({items:,} items, {windows} snapshots, "
          f"cut median {statistics.median(cuts):.0f} ms), latency ms:")  # fmt: skip
    for kind in ("feed", "upload"):
        for during in (False, True):
            v = lat.get((kind, during), [])
            label = "during a snapshot" if during else "no snapshot"
            print(f"  {kind:<7} {label:<18} n={len(v):5d}  p50 {_pct(v, 50):7.2f}  "
                  f"p99 {_pct(v, 99):7.2f}  max {_pct(v, 100):7.2f}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="20k items, one run each (CI)")
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--serving-only", action="store_true", help="only the in-process part")
    a = p.parse_args()
    items, reps = (20_000, 1) if a.quick else (a.items, a.reps)
    print(f"load: {os.getloadavg()[0]:.2f} (1 min), cores {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="fyp-snapbench-") as work:
        if a.serving_only:
            _export(items, os.path.join(work, "cat"))
        else:
            run(items, reps, work)
        serving_during_snapshots(items, 2 if a.quick else 5, work)


if __name__ == "__main__":
    main()
