"""Creator-concentration measures under ``--break diversity`` against a clean run (issue #14).

Per seed: ``fyp_core.loop.run`` twice on the same world, clean and with ``break_="diversity"``
(caps and diversity term off from day 2), keeping each day's served impressions. Prints, per
measure, the change against the reference day (day 1) on each later day, break / clean: the
day's creator Gini (all catalogue creators, the record's ``creator_gini``), the Gini of ranked
slots only, the Gini over the start catalogue's creators, the mean within-feed Gini (a feed's
creator counts padded with zeros to its slots), the mean largest creator's share of a feed, and
``creator_overflow`` (share of feeds with a creator on more than 2 slots, the guardrail).

    python benches/loop_diversity.py [--seeds 1 2 3] [--days 4] [--large] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from fyp_core.loop import evaluate as ev
from fyp_core.loop import run, sim

#: the CI world of tests/test_loop.py
SMALL = dict(
    items=3000,
    users=200,
    dim=16,
    creators=300,
    topics=20,
    requests_per_day=500,
    slots=10,
    candidates=150,
    uploads_per_day=30,
    epochs=10,
    two_tower_every=1,
)
LARGE = dict(
    SMALL,
    items=10_000,
    users=1_000,
    dim=32,
    creators=1_000,
    topics=30,
    requests_per_day=1_500,
    slots=12,
    candidates=300,
    uploads_per_day=100,
)


def _gini(counts: np.ndarray) -> float:
    c = np.sort(np.asarray(counts, np.float64))
    n = len(c)
    return float(2.0 * np.sum(np.arange(1, n + 1) * c) / (n * c.sum()) - (n + 1.0) / n)


def _per_feed(req: np.ndarray, cre: np.ndarray) -> tuple[float, float]:
    """Mean within-feed Gini (counts padded to the feed's slots), mean largest share."""
    order = np.argsort(req, kind="stable")
    ginis, tops = [], []
    for c in np.split(cre[order], np.flatnonzero(np.diff(req[order])) + 1):
        _, k = np.unique(c, return_counts=True)
        ginis.append(_gini(np.concatenate([k, np.zeros(len(c) - len(k))])))
        tops.append(k.max() / len(c))
    return float(np.mean(ginis)), float(np.mean(tops))


def _measures(served: sim.Served, catalogue: np.ndarray, start: np.ndarray) -> dict[str, float]:
    cre = np.asarray(served.creators).astype(np.int64)
    ranked = np.asarray(served.sources) == "ranked"
    in_start = np.isin(cre, start)
    fg, top = _per_feed(served.request_of, cre)
    return {
        "creator_gini": ev.creator_gini(cre, catalogue),
        "gini_ranked": ev.creator_gini(cre[ranked], catalogue),
        "gini_start_creators": ev.creator_gini(cre[in_start], start),
        "feed_gini": fg,
        "feed_top_share": top,
        "creator_overflow": ev.creator_overflow(served.request_of, cre, 2, served.positions, 12),
    }


def one_run(seed: int, brk: Any, days: int, world: dict) -> list[dict[str, float]]:
    out: list[dict[str, float]] = []
    orig = sim.serve_day

    def serve(env: dict, cfg: Any, day: int, rng: np.random.Generator) -> sim.Served:
        s = orig(env, cfg, day, rng)
        w = env["world"]
        cat = w.item_creator[: w.n_items].astype(np.int64)
        out.append(_measures(s, cat, cat[: cfg.items]))
        return s

    sim.serve_day = serve
    try:
        run(days=days, seed=seed, break_=brk, **world)
    finally:
        sim.serve_day = orig
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--large", action="store_true", help="the 10k-item world instead of CI's")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    world = LARGE if a.large else SMALL
    res = {}
    for s in a.seeds:
        res[s] = {
            "clean": one_run(s, None, a.days, world),
            "break": one_run(s, "diversity", a.days, world),
        }
    for k in res[a.seeds[0]]["clean"][0]:
        print(f"{k}: change vs day 1 on days 2.., break / clean")
        for s in a.seeds:
            b, c = res[s]["break"], res[s]["clean"]
            d = [f"{b[i][k] - b[1][k]:+.3f} / {c[i][k] - c[1][k]:+.3f}" for i in range(2, a.days)]
            print(f"  seed {s}: day 1 {b[1][k]:.3f} / {c[1][k]:.3f};  " + ";  ".join(d))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({str(s): v for s, v in res.items()}, f, indent=1)


if __name__ == "__main__":
    main()
