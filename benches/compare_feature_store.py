"""Online feature reads for a 1000-candidate request: in-process store vs the Redis tier.

Two FeedPipelines over the same world in one process, one in-process only, one reading user
histories and item/topic windows from a private ``redis-server`` on loopback (started here).
The request's feature reads are the ``scorer`` stage (the user's history: one LRANGE with Redis)
plus the ``features`` stage (item and topic windows of every candidate: one pipelined round trip
of HMGETs with Redis, then the feature definitions). Both pipelines get the same engagement
history first, so the windows hold data. Seed target: online reads < 5 ms p99.

    python benches/compare_feature_store.py [--quick] [--items N] [--requests R]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import time

import numpy as np

from fyp_core import FeedPipeline, HnswIndex, MlpRanker, Reranker, TrafficSplit
from fyp_core.catalog import Catalogue, apply_catalogue
from fyp_core.synth import TASKS, demo_ranker_weights, make_world

NOW = 1.8e9


def build(world, url):
    cat = Catalogue.from_world(world)
    index = HnswIndex(cat.dim, metric="ip", ef_construction=64, capacity=cat.n_items + 100)
    index.add(cat.item_ids, cat.item_embeddings)
    w, b, o = demo_ranker_weights(cat.dim)
    ranker = MlpRanker(w, b, activation="relu", outputs=o, version="v1", task_names=list(TASKS))
    pipe = FeedPipeline(
        index,
        ranker,
        Reranker({"window": 20, "max_topic_share": 0.4, "diversity": "mmr"}),
        TrafficSplit(0.05),
        config={"candidates": 1000},
        user_token_key=b"bench-key-0123456",
        redis_url=url,
        redis_namespace=f"bench{int(time.time())}",
    )
    apply_catalogue(pipe, cat, index=False)
    return pipe


def run(pipe, world, n_req, seed, t0):
    rng = np.random.default_rng(seed)
    reads, total = [], []
    for i in range(n_req):
        u = world.user_ids[int(rng.integers(0, len(world.user_ids)))]
        t = time.perf_counter()
        r = pipe.feed(u, f"r{seed}-{i}", n=20, now=t0 + i)
        total.append((time.perf_counter() - t) * 1e3)
        reads.append(r.timings["scorer"] + r.timings["features"])
        for iid in r.impression_ids[:3]:
            pipe.engage(iid, watched_seconds=10.0, completed=True, now=t0 + i + 0.5)
    return np.array(reads), np.array(total)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("--requests", type=int, default=None)
    args = ap.parse_args()
    n_items = args.items or (20_000 if args.quick else 100_000)
    n_req = args.requests or (100 if args.quick else 1000)
    exe = shutil.which("redis-server")
    if exe is None:
        print("SKIPPED: redis-server is not installed (apt-get install redis-server)")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        world = make_world(n_items=n_items, n_users=5000, seed=1, now=NOW)
        local = build(world, None)
        shared = build(world, f"redis://127.0.0.1:{port}/")
        # warm-up: the same engagement history into both stores
        for p in (local, shared):
            run(p, world, max(50, n_req // 2), 7, NOW)
        res = {}
        for rep in range(3):  # interleaved repetitions: the machine is shared and noisy
            for name, p in (("in-process", local), ("redis", shared)):
                r, t = run(p, world, n_req // 3, 100 + rep, NOW + 10_000 * (rep + 1))
                res.setdefault(name, ([], []))
                res[name][0].extend(r)
                res[name][1].extend(t)
        st = shared.stats()["redis"]
    finally:
        srv.kill()
        srv.wait()
    print(f"{n_items} items, candidates=1000, {n_req} requests per store (3 interleaved reps)")
    print(f"{'store':<12}{'reads p50':>11}{'reads p99':>11}{'feed p50':>10}{'feed p99':>10}  (ms)")
    for name, (r, t) in res.items():
        r, t = np.array(r), np.array(t)
        print(
            f"{name:<12}{np.percentile(r, 50):>11.2f}{np.percentile(r, 99):>11.2f}"
            f"{np.percentile(t, 50):>10.2f}{np.percentile(t, 99):>10.2f}"
        )
    r_loc, r_red = np.array(res["in-process"][0]), np.array(res["redis"][0])
    ratio = np.percentile(r_red, 99) / np.percentile(r_loc, 99)
    print(f"redis / in-process reads at p99: {ratio:.2f}x")
    print(f"redis fallbacks: {st['fallbacks']}, reads answered: {st['served_from_shared']}")
    if st["fallbacks"]:
        # a Redis reply slower than the 25 ms timeout (the product default) on a loaded
        # machine: served from the in-process store instead, and counted, as in production
        print(f"WARNING: {st['fallbacks']} reads fell back; the redis figures include them")
    assert st["fallbacks"] * 10 < st["served_from_shared"], (
        "the Redis tier fell back on more than a tenth of the reads: the figures are not Redis's"
    )


if __name__ == "__main__":
    main()
