"""Online fine-tuning against daily training on the synthetic world's ground truth.

Per seed, ``fyp_core.loop.run`` with ``online_every_minutes`` set: each day is served in chunks
through the loop's ``FeedPipeline``; after each chunk the online model (warm-started from the
day's daily-trained candidate, then fine-tuned chunk by chunk on the newest rows with
``fyp_core.train.finetune_ranker``) is synced into the pipeline's online shadow. The synced
model and the daily model are then both judged on the NEXT chunk's impressions (which neither
was trained on): AUC and log-loss of the finish head, and the world's true finish probability
of the served item each would rank first per request (``sim.true_finish`` at position 0).
Reported: per seed and day, and the gain online - daily with a 95% t-interval over seeds.

    python benches/compare_online.py [--quick] [--seeds S] [--every MIN] [--steps K]
                                     [--lr LR] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

from fyp_core.loop import LoopConfig, run

#: two-sided 95% Student t quantiles by degrees of freedom (seeds - 1)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95% t-interval over seeds (nan for one seed)."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, T95.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / len(xs) ** 0.5


def configs(a: Any) -> tuple[LoopConfig, int]:
    """The world and loop settings of a run, and its number of seeds."""
    common = {
        "two_tower_every": 0,  # the ranker alone: no tower passes, no retrieval candidates
        "serve_towers": False,
        "online_every_minutes": a.every,
        "online_steps": a.steps,
        "online_lr": a.lr,
    }
    if a.quick:
        cfg = LoopConfig(
            days=2,
            items=3000,
            users=200,
            dim=16,
            creators=300,
            topics=20,
            requests_per_day=600,
            slots=10,
            candidates=150,
            uploads_per_day=30,
            hidden=(32, 16),
            epochs=8,
            **common,
        )
        return cfg, a.seeds or 1
    cfg = LoopConfig(
        days=a.days,
        items=20_000,
        users=2_000,
        dim=32,
        creators=2_000,
        topics=30,
        requests_per_day=a.requests,
        slots=12,
        candidates=300,
        uploads_per_day=200,
        **common,
    )
    return cfg, a.seeds or 3


def one_seed(cfg: LoopConfig) -> dict[str, Any]:
    """The loop's online records for one seed, per day with an online chain."""
    recs = run(cfg)
    days = []
    for r in recs:
        o = r.get("online") or {}
        if "day" not in o:
            continue
        better = sum(
            1
            for c in o["chunks"]
            if c["auc_online"] is not None
            and c["auc_daily"] is not None
            and c["auc_online"] > c["auc_daily"]
        )
        days.append(
            {
                "day": r["day"],
                "base": o["base"],
                "live": r["live_version"],
                "chunks": len(o["chunks"]),
                "chunks_auc_better": better,
                "errors": len(o["errors"]),
                "seconds_train": o["seconds_train"],
                "seconds_rows": o["seconds_rows"],
                "seconds_day": r["seconds"],
                **o["day"],
            }
        )
    return {"seed": cfg.seed, "days": days}


METRICS = (("auc", "AUC", +1), ("ll", "log-loss", -1), ("top_true", "true value of slot 1", +1))


def report(per_seed: list[dict], cfg: LoopConfig, secs: float) -> dict[str, Any]:
    """Prints the per-day table and the gains over seeds; returns the summary."""
    print(
        f"== online fine-tuning every {cfg.online_every_minutes} simulated min "
        f"({cfg.online_steps} AdamW steps x 128 rows, lr {cfg.online_lr}) vs daily training: "
        f"{cfg.items:,} items, {cfg.users:,} users, {cfg.requests_per_day:,} requests/day x "
        f"{cfg.slots} slots, {cfg.days} days, {len(per_seed)} seeds =="
    )
    print(
        f"{'seed':>4} {'day':>3} {'rows':>6} {'AUC daily':>9} {'AUC online':>10} "
        f"{'LL daily':>8} {'LL online':>9} {'top daily':>9} {'top online':>10} "
        f"{'AUC live':>8} {'chunks +':>8} {'train s':>7} {'rows s':>6}"
    )
    gains: dict[str, list[float]] = {m: [] for m, _, _ in METRICS}
    for s in per_seed:
        for d in s["days"]:
            print(
                f"{s['seed']:>4} {d['day']:>3} {d['n']:>6} {d['auc_daily']:>9.4f} "
                f"{d['auc_online']:>10.4f} {d['ll_daily']:>8.4f} {d['ll_online']:>9.4f} "
                f"{d['top_true_daily']:>9.4f} {d['top_true_online']:>10.4f} "
                f"{d['auc_live']:>8.4f} {d['chunks_auc_better']:>4}/{d['chunks']:<3} "
                f"{d['seconds_train']:>7.1f} {d['seconds_rows']:>6.1f}"
            )
        for m, _, _ in METRICS:
            gains[m].append(statistics.fmean(d[f"{m}_online"] - d[f"{m}_daily"] for d in s["days"]))
    summary = {}
    for m, label, sign in METRICS:
        mean, h = mean_ci(gains[m])
        summary[m] = {"mean": mean, "ci95": h, "per_seed": gains[m]}
        better = "better" if sign * mean > 0 else "worse"
        print(
            f"{label} online - daily: {mean:+.4f} ± {h:.4f} (95% t over {len(gains[m])} seeds; "
            f"per seed {', '.join(f'{g:+.4f}' for g in gains[m])}): online {better} on average"
        )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"load {os.getloadavg()[0]:.2f}; {secs:.1f} s"
    )
    return summary


def main() -> None:
    """Runs the comparison (``--quick``: one seed of a small world, under a minute)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--days", type=int, default=3, help="simulated days (full mode)")
    ap.add_argument("--requests", type=int, default=4500, help="requests per day (full mode)")
    ap.add_argument("--every", type=int, default=60, help="simulated minutes per chunk")
    ap.add_argument("--steps", type=int, default=8, help="AdamW steps per chunk")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    cfg, seeds = configs(a)
    t0 = time.perf_counter()
    per_seed = [one_seed(dataclasses.replace(cfg, seed=s)) for s in range(seeds)]
    summary = report(per_seed, cfg, time.perf_counter() - t0)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"per_seed": per_seed, "summary": summary, "config": str(cfg)}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
