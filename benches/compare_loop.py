"""The learning loop against the day-0 policy on the synthetic world's ground truth.

Per seed: two identical pipelines serve the same traffic with the hand-made day-0 ranker for
``--train-days`` days; one then promotes a ranker trained on its log (``fyp_core.train``), and
both serve the same evaluation day. Reported: the true value (the world's finish probability of
the ranked slots) of learned vs day-0 with a CI over seeds, AUC / log-loss of the trained
ranker vs the hand-made weights on the evaluation day's impressions (served by the hand-made
ranker, so neither model chose them), two-tower recall@100 against the world's true top-100 by
affinity vs the heuristic (the served blend of long-term vector and history mean), the training
time per row, and the OPE calibration of ``fyp-core loop`` (share of days where the simulator's
value of the candidate's OPE target lies in the estimate's 95% CI).

    python benches/compare_loop.py [--quick] [--seeds S] [--json OUT]
                                   [--policy-only | --calibration-only]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

from fyp_core import MlpRanker
from fyp_core import features as fs
from fyp_core.loop import LoopConfig, run, sim
from fyp_core.synth import TASKS, demo_ranker_weights
from fyp_core.train import fit_ranker, fit_two_tower, recall_at_k
from fyp_core.train.two_tower import (
    catalogue_item_inputs,
    l2_rows,
    pooled_history,
    user_tower_inputs,
    user_vectors,
)


def auc(y: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    pos = y.astype(bool)
    n1, n0 = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a normal 95% interval over seeds."""
    m = statistics.fmean(xs)
    h = 1.96 * statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan")
    return m, h


def day_table(env: dict[str, Any], cfg: LoopConfig, served: sim.Served) -> Any:
    env["log"].flush()
    return fs.training_set(
        env["logdir"],
        env["catalogue"],
        user_token_key=sim.KEY,
        history_len=cfg.history_len,
        request_ids=served.request_ids,
    )


def one_seed(cfg: LoopConfig, train_days: int, tmp: str) -> dict[str, Any]:
    """Learned vs day-0 on one seed: true value, next-day AUC/log-loss, recall, train time."""
    envs = []
    for arm in ("learned", "day0"):
        env = sim.build(cfg, os.path.join(tmp, f"{arm}-{cfg.seed}"))
        env["logdir"] = os.path.join(tmp, f"{arm}-{cfg.seed}")
        envs.append(env)
    tables = []
    for d in range(train_days):
        for k, env in enumerate(envs):
            served = sim.serve_day(env, cfg, d, np.random.default_rng(cfg.seed * 100 + d))
            if k == 0:
                tables.append(day_table(env, cfg, served))
    import pyarrow as pa

    train = pa.concat_tables(tables)
    fit = fit_ranker(
        train,
        feature_set_version=envs[0]["pipe"].feature_set_version,
        hidden=cfg.hidden,
        version=f"learned-s{cfg.seed}",
        seed=cfg.seed,
    )
    envs[0]["pipe"].add_shadow(fit.ranker)
    envs[0]["pipe"].promote(fit.ranker.version)
    out: dict[str, Any] = {"rows": train.num_rows, "train_s": fit.seconds}
    evals = []
    for env in envs:
        rng = np.random.default_rng(cfg.seed * 100 + 99)
        served = sim.serve_day(env, cfg, train_days, rng)
        ranked = served.sources != "exploration"
        evals.append((float(served.true_p[ranked].mean()), served))
    out["true_learned"], out["true_day0"] = evals[0][0], evals[1][0]
    nxt = day_table(envs[1], cfg, evals[1][1])
    x = fs.features_matrix(nxt)
    y = np.asarray(nxt.column("completed").to_numpy(zero_copy_only=False), np.float64)
    w, b, o = demo_ranker_weights(cfg.dim, hidden=tuple(cfg.hidden), seed=cfg.seed)
    hand = MlpRanker(w, b, outputs=o, task_names=list(TASKS))
    for name, model in (("trained", fit.ranker), ("hand", hand)):
        p = model.predict(x)[:, 0]
        out[f"auc_{name}"], out[f"ll_{name}"] = auc(y, p), log_loss(y, p)
    out.update(recall(envs[0], train))
    for env in envs:
        env["pipe"].close()
    return out


#: the towers measured: the former in-batch softmax (item tower over content + item stats),
#: and the pointwise objective with the content item tower (the loop's offline pass into the
#: batch tier) and with a learned item tower over the content embedding alone (servable)
TOWERS: dict[str, dict[str, Any]] = {
    "tt_softmax": {"item_tower": "mlp"},
    "tt_pw_content": {"item_tower": "content", "objective": "pointwise"},
    "tt_pw_mlp": {"item_tower": "mlp", "item_stats": False, "objective": "pointwise"},
}


def recall(env: dict[str, Any], train: Any) -> dict[str, float]:
    """recall@100 vs the true top-100 by affinity, for users with a logged request: the served
    heuristic (the blend at their latest request), the pooled logged history, the towers."""
    world = env["world"]
    fsv = env["pipe"].feature_set_version
    names = fs.feature_names(world.dim)
    ts = np.asarray(train.column("ts").cast("int64").to_numpy(zero_copy_only=False))
    tok = np.asarray(train.column("user_token").to_pylist()).astype(str)
    newest_first = np.argsort(-ts, kind="stable")
    toks, first = np.unique(tok[newest_first], return_index=True)
    rows = newest_first[first]
    users = np.array([env["tokens"][t] for t in toks])
    truth = world.user_taste[users] @ world.item_emb.T
    u_in = user_tower_inputs(fs.features_matrix(train)[rows], names)
    res = {
        "recall_heuristic": recall_at_k(l2_rows(u_in[:, : world.dim]), world.item_emb, truth),
        "recall_history": recall_at_k(
            pooled_history(train, point_in_time=False)[rows], world.item_emb, truth
        ),
    }
    items = catalogue_item_inputs(world.item_ids, world.item_emb, train)
    for name, kw in TOWERS.items():
        tt = fit_two_tower(train, feature_set_version=fsv, seed=world.seed, **kw)
        got, uv = user_vectors(tt, train)
        assert list(got) == [str(t) for t in toks]
        iv = l2_rows(tt.item_tower.predict(items[:, : tt.item_tower.input_dim]))
        res[f"recall_{name}"] = recall_at_k(uv, iv, truth)
        res[f"{name}_s"] = tt.seconds
    return res


def calibration(cfg: LoopConfig, days: int) -> dict[str, Any]:
    """OPE calibration over the loop's days, with the loop's decisions."""
    recs = run(cfg, days=days)
    hits, n = 0, 0
    for r in recs:
        est, truth = r["estimated_value"], r["candidate_true_value"]
        if est is None or truth is None:
            continue
        n += 1
        hits += est["ci"][0] <= truth <= est["ci"][1]
    return {
        "days": n,
        "covered": hits,
        "decisions": [r["decision"] for r in recs],
        "true_values": [round(r["true_value"], 4) for r in recs],
        "retrieval": [
            {
                k: r["retrieval"].get(k)
                for k in ("version", "true_recall_at_100", "decision", "gain")
            }
            for r in recs
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument(
        "--calibration-only", action="store_true", help="only the loop's OPE calibration"
    )
    ap.add_argument(
        "--policy-only", action="store_true", help="skip the loop's OPE calibration runs"
    )
    a = ap.parse_args()
    if a.quick:
        cfg = LoopConfig(
            items=3000,
            users=200,
            dim=16,
            creators=300,
            topics=20,
            requests_per_day=300,
            slots=10,
            candidates=150,
            uploads_per_day=30,
            epochs=10,
        )
        seeds, train_days, loop_days = a.seeds or 1, 1, 3
    else:
        cfg = LoopConfig(
            items=20_000,
            users=2_000,
            dim=32,
            creators=2_000,
            topics=30,
            requests_per_day=4_500,
            slots=12,
            candidates=300,
            uploads_per_day=200,
        )
        seeds, train_days, loop_days = a.seeds or 3, 2, 6
    t0 = time.perf_counter()
    per_seed = []
    with tempfile.TemporaryDirectory(prefix="fyp-bench-loop-") as tmp:
        for s in range(0 if a.calibration_only else seeds):
            import dataclasses

            per_seed.append(one_seed(dataclasses.replace(cfg, seed=s), train_days, tmp))
    cal = [
        calibration(LoopConfig(**{**cfg.__dict__, "seed": s}), loop_days)
        for s in range(0 if a.policy_only else 1 if a.quick else seeds)
    ]
    report(per_seed, cal, cfg, a, time.perf_counter() - t0)


def report(per_seed: list[dict], cal: list[dict], cfg: LoopConfig, a: Any, secs: float) -> None:
    if per_seed:
        report_policy(per_seed, cfg)
    n = sum(c["days"] for c in cal)
    cov = sum(c["covered"] for c in cal)
    if cal:
        report_calibration(cal, n, cov)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"load {os.getloadavg()[0]:.2f}; {secs:.1f} s"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {"per_seed": per_seed, "calibration": cal, "seconds": secs},
                f,
                indent=1,
                default=lambda o: o.item() if hasattr(o, "item") else str(o),
            )


def report_calibration(cal: list[dict], n: int, cov: int) -> None:
    print(
        f"OPE calibration: truth in the 95% CI on {cov}/{n} candidate-days; loop decisions "
        f"{[c['decisions'] for c in cal]}; live true value by day "
        f"{[c['true_values'] for c in cal]}"
    )
    for c in cal:
        print(
            "retrieval by day (served version, true recall@100, decision on the candidate): "
            + "; ".join(
                f"{r['version']} {r['true_recall_at_100']:.3f} {r['decision']}"
                for r in c["retrieval"]
            )
        )


def report_policy(per_seed: list[dict], cfg: LoopConfig) -> None:
    lift = [r["true_learned"] - r["true_day0"] for r in per_seed]
    m, h = mean_ci(lift)
    print(
        f"== learned vs day-0 policy: {cfg.items:,} items, {cfg.users:,} users, "
        f"{cfg.requests_per_day:,} requests/day x {cfg.slots} slots, {len(per_seed)} seeds =="
    )
    print(
        f"{'seed':>4} {'rows':>7} {'train s':>8} {'true day0':>10} {'true learned':>13} "
        f"{'AUC hand':>9} {'AUC trained':>12} {'LL hand':>8} {'LL trained':>11} "
        f"{'R@100 heur':>10} {'R@100 hist':>10} {'tt-softmax':>10} {'tt-pw-cont':>10} "
        f"{'tt-pw-mlp':>9}"
    )
    for s, r in enumerate(per_seed):
        print(
            f"{s:>4} {r['rows']:>7} {r['train_s']:>8.1f} {r['true_day0']:>10.4f} "
            f"{r['true_learned']:>13.4f} {r['auc_hand']:>9.4f} {r['auc_trained']:>12.4f} "
            f"{r['ll_hand']:>8.4f} {r['ll_trained']:>11.4f} {r['recall_heuristic']:>10.4f} "
            f"{r['recall_history']:>10.4f} "
            f"{r['recall_tt_softmax']:>10.4f} {r['recall_tt_pw_content']:>10.4f} "
            f"{r['recall_tt_pw_mlp']:>9.4f}"
        )
    print(f"true-value lift of the learned policy: {m:+.4f} ± {h:.4f} (95% over seeds)")
    big = [r for r in per_seed if r["rows"] >= 100_000]
    if big:
        print(
            f"ranker training on >= 100k rows: {max(r['train_s'] for r in big):.1f} s at most "
            f"({min(r['rows'] for r in big):,} rows or more, JIT compile included)"
        )
    else:
        print("ranker training on >= 100k rows: not measured at this size (run without --quick)")


if __name__ == "__main__":
    sys.exit(main())
