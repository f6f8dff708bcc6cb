"""Churn without decay: a fresh build vs an index after 3 rounds of removing and re-adding 30%
of its items (the normal state of a feed's catalogue). Same data as `compare_hnsw.py`.

    python benches/churn_hnsw.py            # 100k x 64
    python benches/churn_hnsw.py --quick    # 20k x 64, CI

Reports, for both indexes: recall@10 at ef 64 (held-out queries, exact ground truth on the
live items), single-thread QPS at ef 64 (medians of round-robin batches), `stats()` (slots,
tombstones, free slots, memory), and how many live items are not the first hit, and not in the
top 10, for their own vector (ef 64).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from compare_hnsw import ground_truth, make_data, recall

import fyp_core


def churn(ix: fyp_core.HnswIndex, data: np.ndarray, rounds: int, frac: float) -> None:
    rng = np.random.default_rng(1)
    n = len(data)
    for _ in range(rounds):
        out = np.sort(rng.choice(n, size=int(frac * n), replace=False))
        for part in np.array_split(out, 10):  # removals arrive in waves
            ix.remove(part)
        ix.add(out, data[out])


def qps(ixs: dict, q: np.ndarray, ef: int, rounds: int) -> dict:
    times: dict = {name: [] for name in ixs}
    for _ in range(rounds):
        for name, ix in ixs.items():
            t = time.thread_time()
            ix.search(q, 10, ef=ef, threads=1)
            times[name].append(time.thread_time() - t)
    return {name: len(q) / float(np.median(ts)) for name, ts in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None)
    a = ap.parse_args()
    n, dim, nq = (a.n or (20_000 if a.quick else 100_000)), 64, 1000
    data, queries = make_data(n, nq, dim)
    truth = ground_truth(data, queries, 10)
    ixs = {}
    for name in ("fresh", "churned"):
        ix = fyp_core.HnswIndex(dim, m=16, ef_construction=200)
        t = time.perf_counter()
        ix.add(np.arange(n), data)
        if name == "churned":
            churn(ix, data, 3, 0.3)
        print(
            f"# {name}: built{' + churned' if name == 'churned' else ''} in "
            f"{time.perf_counter() - t:.1f}s"
        )
        ixs[name] = ix
    speed = qps(ixs, queries, 64, 3 if a.quick else 7)
    for name, ix in ixs.items():
        rc = recall(ix.search(queries, 10, ef=64)[0].astype(np.int64), truth)
        own = ix.search(data, 10, ef=64)[0].astype(np.int64)
        lost1 = int((own[:, 0] != np.arange(n)).sum())
        lost10 = int((own != np.arange(n)[:, None]).all(axis=1).sum())
        st = ix.stats()
        print(
            f"- {name}: recall@10 {rc:.4f}, {speed[name]:.0f} QPS (ef 64, 1 thread), "
            f"{st['memory_bytes'] / 2**20:.1f} MiB, slots {st['slots']}, tombstones "
            f"{st['tombstones']}, free {st['free_slots']}, own vector not first {lost1}, "
            f"not in its top 10 {lost10}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
