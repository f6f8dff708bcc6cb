"""End-to-end ``FeedPipeline.feed`` latency: distribution, stage breakdown, the cost of logging,
Python overhead, and throughput with 2 threads. Same world, one process.

    python benches/compare_feed.py [--quick] [--items N] [--requests R]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time

import numpy as np

from fyp_core.demo import build_pipeline
from fyp_core.synth import make_world


def pct(a, q):
    return float(np.percentile(a, q))


def serve(pipe, world, n_req, seed, prefix):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, len(world.user_ids), size=n_req)
    total, inner, stages = [], [], {}
    for i, u in enumerate(users):
        t = time.perf_counter()
        r = pipe.feed(world.user_ids[u], f"{prefix}-{i}", n=20)
        total.append((time.perf_counter() - t) * 1e3)
        inner.append(sum(r.timings.values()))
        for k, v in r.timings.items():
            stages.setdefault(k, []).append(v)
        pipe.engage(r.impression_ids[0], watched_seconds=5.0)
    return np.array(total), np.array(inner), {k: np.array(v) for k, v in stages.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--candidates", type=int, default=1000)
    a = ap.parse_args()
    items = a.items or (20_000 if a.quick else 100_000)
    n_req = a.requests or (200 if a.quick else 2000)
    t0 = time.perf_counter()
    world = make_world(n_items=items, n_users=max(1000, items // 10), seed=0, now=time.time())
    args = argparse.Namespace(
        ef_construction=100 if not a.quick else 48,
        seed=0,
        explore_rate=0.05,
        candidates=a.candidates,
        ef=a.candidates,
    )
    with tempfile.TemporaryDirectory() as tmp:
        logged = build_pipeline(world, args, tmp)
        setup = time.perf_counter() - t0
        serve(logged, world, min(100, n_req), 9, "warm")
        tot_l, inner_l, st_l = serve(logged, world, n_req, 1, "log")
        unlogged = build_pipeline(world, args, None)
        serve(unlogged, world, min(100, n_req), 9, "warm")
        tot_n, _, _ = serve(unlogged, world, n_req, 1, "nolog")
        # 2 threads, logging on
        done = []

        def worker(t):
            done.append(serve(logged, world, n_req // 2, 100 + t, f"thr{t}")[0])

        t = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        qps2 = n_req / (time.perf_counter() - t)
        logged.close()
    print(
        f"feed(), {items:,} items, K={a.candidates}, n=20, "
        f"ranker 268->512->256->128->6 (dim 64), DPP re-rank, {n_req} requests "
        f"(setup {setup:.0f} s)"
    )
    print(f"{'ms':<26}{'p50':>8}{'p95':>8}{'p99':>8}{'p99.9':>8}")
    for name, arr in [
        ("end to end, log on", tot_l),
        ("end to end, log off", tot_n),
        *[(f"  stage {k}", v) for k, v in st_l.items()],
    ]:
        print(f"{name:<26}" + "".join(f"{pct(arr, q):8.2f}" for q in (50, 95, 99, 99.9)))
    overhead = np.median(tot_l - inner_l) / np.median(tot_l)
    print(f"python + binding overhead  {100 * overhead:.1f}% of the median call")
    print(f"logging cost at p99        {100 * (pct(tot_l, 99) / pct(tot_n, 99) - 1):+.1f}%")
    p99_2 = pct(np.concatenate(done), 99)
    print(f"throughput, 2 threads      {qps2:.0f} requests/s (p99 {p99_2:.1f} ms)")


if __name__ == "__main__":
    main()
