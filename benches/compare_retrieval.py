"""Serving latency with the learned user tower vs the heuristic blend (issue #14: p99 with the
tower within 10% of today's at 100k items). Same process, same world, same requests.

A logged pipeline serves ``--train-requests`` requests with outcomes from the world's
engagement model; the two-tower is trained on that log exactly as the loop trains its
retrieval candidate (pointwise, an item tower over the content embedding, the served user
block). Then two identical unlogged pipelines are built: "heuristic" (the index of content
embeddings, the scorer's blend as the ANN query) and "tower" (``set_retrieval``: an index of
the item tower's vectors, the user tower per request). Each round sends the same requests to
both, alternating which goes first; reported: per-contender p50/p99 per round, their medians
over rounds, and the median of the per-round p99 ratio tower/heuristic.

    python benches/compare_retrieval.py [--quick] [--items N] [--rounds R] [--requests Q]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np

from fyp_core import HnswIndex
from fyp_core import features as fs
from fyp_core.catalog import Catalogue
from fyp_core.demo import build_pipeline
from fyp_core.synth import make_world
from fyp_core.train import fit_two_tower

KEY = b"demo-token-key-not-secret"  # build_pipeline's user-token key


def collect_log(world, args, logdir: str, n_req: int) -> object:
    """Serves ``n_req`` requests through a logged pipeline, outcomes from the world's model;
    returns the training set replayed from that log."""
    pipe = build_pipeline(world, args, logdir)
    rng = np.random.default_rng(1)
    users = rng.integers(0, len(world.user_ids), size=n_req)
    for i, u in enumerate(users):
        r = pipe.feed(world.user_ids[u], f"train-{i}", n=20)
        rows = np.searchsorted(world.item_ids, r.item_ids)
        out = world.engagement(np.full(len(rows), u), rows, np.arange(len(rows)), rng)
        for j, imp in enumerate(r.impression_ids):
            pipe.engage(
                imp,
                watched_seconds=float(out["watched_seconds"][j]),
                completed=bool(out["completed"][j]),
                liked=bool(out["liked"][j]),
            )
    pipe.close()
    return fs.training_set(logdir, Catalogue.from_world(world), user_token_key=KEY)


def timed_round(pipes: dict, world, users: np.ndarray, rnd: int, first: str) -> dict:
    """One round: every request to both contenders (``first`` first), wall ms per request."""
    order = [first] + [k for k in pipes if k != first]
    lat: dict[str, list[float]] = {k: [] for k in pipes}
    for i, u in enumerate(users):
        for k in order:
            t = time.perf_counter()
            r = pipes[k].feed(world.user_ids[u], f"r{rnd}-{i}", n=20)
            lat[k].append((time.perf_counter() - t) * 1e3)
            pipes[k].engage(r.impression_ids[0], watched_seconds=5.0)
    return {k: np.asarray(v) for k, v in lat.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--requests", type=int, default=None, help="requests per round")
    ap.add_argument("--train-requests", type=int, default=None)
    ap.add_argument("--candidates", type=int, default=1000)
    a = ap.parse_args()
    items = a.items or (10_000 if a.quick else 100_000)
    rounds = a.rounds or (3 if a.quick else 7)
    n_req = a.requests or (100 if a.quick else 400)
    n_train = a.train_requests or (300 if a.quick else 1500)
    t0 = time.perf_counter()
    world = make_world(n_items=items, n_users=max(1000, items // 10), seed=0, now=time.time())
    args = argparse.Namespace(
        ef_construction=48 if a.quick else 100,
        seed=0,
        explore_rate=0.05,
        candidates=a.candidates,
        ef=a.candidates,
    )
    with tempfile.TemporaryDirectory() as tmp:
        table = collect_log(world, args, tmp, n_train)
    fit = fit_two_tower(
        table,
        feature_set_version=None,
        objective="pointwise",
        item_tower="mlp",
        item_stats=False,
        long_term="served",
        epochs=3 if a.quick else 8,
    )
    pipes = {
        "heuristic": build_pipeline(world, args, None),
        "tower": build_pipeline(world, args, None),
    }
    vecs = fit.item_tower.predict(np.ascontiguousarray(world.item_emb, dtype=np.float32))
    index = HnswIndex(
        vecs.shape[1],
        metric="ip",
        m=16,
        ef_construction=args.ef_construction,
        seed=0,
        capacity=items + 10_000,
    )
    index.add(world.item_ids, vecs)
    pipes["tower"].set_retrieval(
        "tt-bench", index, user_tower=fit.user_tower, item_tower=fit.item_tower
    )
    setup = time.perf_counter() - t0
    rng = np.random.default_rng(7)
    timed_round(pipes, world, rng.integers(0, len(world.user_ids), 50), -1, "heuristic")  # warm
    per = []
    for rnd in range(rounds):
        users = rng.integers(0, len(world.user_ids), n_req)
        per.append(timed_round(pipes, world, users, rnd, "tower" if rnd % 2 else "heuristic"))
    report(per, items, n_req, rounds, fit, table.num_rows, setup, time.perf_counter() - t0)
    for p in pipes.values():
        p.close()


def report(per, items, n_req, rounds, fit, n_rows, setup, secs) -> None:
    print(
        f"== feed latency, learned user tower vs heuristic blend: {items:,} items, "
        f"{rounds} rounds x {n_req} requests, interleaved =="
    )
    print(f"towers trained on {n_rows:,} logged rows in {fit.seconds:.1f} s; setup {setup:.1f} s")
    print(
        f"{'round':>5} {'p50 heur':>9} {'p50 tower':>10} {'p99 heur':>9} {'p99 tower':>10} "
        f"{'p99 ratio':>10}"
    )
    ratios, p50h, p50t, p99h, p99t = [], [], [], [], []
    for i, r in enumerate(per):
        h50, t50 = np.percentile(r["heuristic"], 50), np.percentile(r["tower"], 50)
        h99, t99 = np.percentile(r["heuristic"], 99), np.percentile(r["tower"], 99)
        ratios.append(t99 / h99)
        p50h.append(h50), p50t.append(t50), p99h.append(h99), p99t.append(t99)
        print(f"{i:>5} {h50:>9.2f} {t50:>10.2f} {h99:>9.2f} {t99:>10.2f} {t99 / h99:>10.3f}")
    med = statistics.median
    print(
        f"median over rounds: p50 {med(p50h):.2f} vs {med(p50t):.2f} ms, p99 {med(p99h):.2f} vs "
        f"{med(p99t):.2f} ms; p99 ratio tower/heuristic {med(ratios):.3f} "
        f"(goal <= 1.10: {'met' if med(ratios) <= 1.10 else 'NOT met'})"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"load {os.getloadavg()[0]:.2f}; {secs:.1f} s"
    )


if __name__ == "__main__":
    main()
