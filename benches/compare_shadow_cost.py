"""What a shadow costs per feed request now that it scores every candidate of a logged request
(its candidate values go to the `requests` row for offline replay, docs/ope.md), against the
same shadow scoring only the served rows (its request row sampled out) and no shadow at all.
Three pipelines over one world, requests interleaved round-robin; medians and p99 per contender.

    python benches/compare_shadow_cost.py [--quick] [--items N] [--candidates K] [--requests R]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import numpy as np

from fyp_core import EventLog, FeedPipeline, HnswIndex, MlpRanker, Reranker, TrafficSplit
from fyp_core import features as fs
from fyp_core.catalog import Catalogue, apply_catalogue
from fyp_core.synth import TASKS, demo_ranker_weights, make_world

NOW = 1.8e9


def pipeline(
    cat: Catalogue, index: HnswIndex, k: int, log_dir: str, sample_pct: float, shadow: bool
) -> FeedPipeline:
    def ranker(version: str, seed: int) -> MlpRanker:
        w, b, o = demo_ranker_weights(cat.dim, seed=seed)
        return MlpRanker(w, b, outputs=o, version=version, task_names=list(TASKS))

    log = EventLog(
        log_dir, tasks=list(TASKS), feature_names=fs.feature_names(cat.dim), sample_pct=sample_pct
    )
    pipe = FeedPipeline(
        index,
        ranker("v1", 0),
        Reranker({"window": 20, "max_topic_share": 0.4, "max_per_creator": 2}),
        TrafficSplit(0.05),
        event_log=log,
        config={"candidates": k},
        user_token_key=b"0123456789abcdef",
    )
    apply_catalogue(pipe, cat, index=False)
    if shadow:
        pipe.add_shadow(ranker("v2", 5))
    return pipe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=None)
    a = ap.parse_args()
    items = a.items or (20_000 if a.quick else 200_000)
    n_req = a.requests or (300 if a.quick else 2000)
    k = a.candidates
    world = make_world(n_items=items, n_users=5000, seed=1, now=NOW)
    cat = Catalogue.from_world(world)
    index = HnswIndex(cat.dim, metric="ip", ef_construction=64, capacity=cat.n_items + 1000)
    index.add(cat.item_ids, cat.item_embeddings)
    tmp = tempfile.mkdtemp(prefix="fyp-shadow-cost-")
    contenders = {
        "no shadow": pipeline(cat, index, k, f"{tmp}/a", 100.0, False),
        "shadow, request logged (scores all candidates)": pipeline(
            cat, index, k, f"{tmp}/b", 100.0, True
        ),
        "shadow, request sampled out (served rows only)": pipeline(
            cat, index, k, f"{tmp}/c", 0.001, True
        ),
    }
    times: dict = {k: [] for k in contenders}
    rng = np.random.default_rng(0)
    for i in range(n_req):
        user = world.user_ids[int(rng.integers(len(world.user_ids)))]
        for name, pipe in contenders.items():  # interleaved: same request, same moment
            t0 = time.perf_counter()
            pipe.feed(user, f"r{i}", n=20, now=NOW + i)
            times[name].append(time.perf_counter() - t0)
    for pipe in contenders.values():
        pipe.close()
    shutil.rmtree(tmp, ignore_errors=True)
    warm = {name: np.asarray(ts[n_req // 10 :]) * 1e3 for name, ts in times.items()}  # 10% warm-up
    base = float(np.median(warm["no shadow"]))
    print(f"{items:,} items, K = {k}, {n_req} requests per contender, interleaved")
    for name, t in warm.items():
        print(
            f"{name:<48} p50 {np.median(t):6.2f} ms  p99 {np.percentile(t, 99):6.2f} ms  "
            f"x{np.median(t) / base:.2f} of no shadow"
        )


if __name__ == "__main__":
    main()
