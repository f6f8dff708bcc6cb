"""One-thread QPS of fyp_core against hnswlib on the same data, interleaved in one process.

    python benches/ratio_hnsw.py            # 50k x 50, ef 32 and 64, 7 alternating batches
    python benches/ratio_hnsw.py --dim 96 --quantize off,fp16   # several of ours, interleaved

Both indexes are built on the same data (`compare_hnsw.make_data`, ip, M=16, efC=200); then for
each ef one batch of 1000 queries per library in turn, 7 times; medians of thread CPU time.
Prints QPS, recall@10 and the ratio (hnswlib time / ours). Used to A/B a change to the search
loop: run it on the old and the new build alternately.
"""

from __future__ import annotations

import argparse
import time

import hnswlib
import numpy as np
from compare_hnsw import ground_truth, make_data, recall

import fyp_core


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument(
        "--quantize",
        default="default",
        help='comma-separated modes of ours: "default", "fp16", "sq8", "off" (each one index)',
    )
    a = ap.parse_args()
    data, q = make_data(a.n, 1000, a.dim)
    truth = ground_truth(data, q, 10)
    ours = {}
    for mode in a.quantize.split(","):
        ix = fyp_core.HnswIndex(
            a.dim,
            m=16,
            ef_construction=200,
            seed=0,
            deterministic=True,
            quantize=None if mode == "default" else mode,
        )
        ix.add(np.arange(len(data)), data)
        ours[mode] = ix
    peer = hnswlib.Index(space="ip", dim=a.dim)
    peer.init_index(max_elements=len(data), M=16, ef_construction=200, random_seed=0)
    peer.add_items(data, np.arange(len(data)), num_threads=2)
    peer.set_num_threads(1)
    for ef in (32, 64):
        peer.set_ef(ef)
        t_ours: dict = {mode: [] for mode in ours}
        t_peer = []
        for _ in range(a.rounds):
            for mode, ix in ours.items():
                t = time.thread_time()
                ix.search(q, 10, ef=ef, threads=1)
                t_ours[mode].append(time.thread_time() - t)
            t = time.thread_time()
            rp = peer.knn_query(q, 10)
            t_peer.append(time.thread_time() - t)
        mp = float(np.median(t_peer))
        cells = []
        for mode, ix in ours.items():
            mo = float(np.median(t_ours[mode]))
            rc = recall(ix.search(q, 10, ef=ef, threads=1)[0].astype(np.int64), truth)
            cells.append(
                f"fyp_core[{ix.quantize}] {len(q) / mo:.0f} QPS recall {rc:.4f} ratio {mp / mo:.2f}"
            )
        print(
            f"ef {ef}: {' | '.join(cells)} | hnswlib {len(q) / mp:.0f} QPS "
            f"recall {recall(rp[0].astype(np.int64), truth):.4f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
