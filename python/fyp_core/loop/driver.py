"""The learning loop, one simulated day at a time (DESIGN §7): serve -> log -> build the training
set from the log -> train a candidate -> shadow + OPE on the exploration arm -> promote, keep,
roll back or block by the written rule (``PromotionRule``) -> record the day."""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Callable, Optional

import numpy as np

from fyp_core import analytics
from fyp_core import features as fs
from fyp_core.loop import evaluate as ev
from fyp_core.loop import online, sim
from fyp_core.loop.config import LoopConfig, PromotionRule
from fyp_core.loop.decide import decide, diversity_flags
from fyp_core.loop.learn import (
    break_parity,
    concat_days,
    parity_flags,
    train_candidate,
    user_tower_pass,
)
from fyp_core.loop.retrieval import judge_retrieval, swap_retrieval, train_retrieval

__all__ = ["run"]


def _day_table(env: dict[str, Any], cfg: LoopConfig, served: sim.Served) -> Any:
    """The day's training rows: the whole log replayed through the serving code from the start
    catalogue, following every batch-tier swap the changelog records (`env["batches"]`: each
    snapshot the loop loaded, by version), rows of that day's requests only."""
    env["log"].flush()
    return fs.training_set(
        env["logdir"],
        env["catalogue"],
        user_token_key=sim.KEY,
        history_len=cfg.history_len,
        request_ids=served.request_ids,
        batches=env.get("batches"),
    )


def _apply_break(env: dict[str, Any], cfg: LoopConfig, day: int) -> None:
    if cfg.break_ is None or day != cfg.break_from:
        return
    if cfg.break_ == "diversity":
        env["reranker"].set_policy(sim.NO_CAPS_POLICY)
    elif cfg.break_ == "exploration":
        env["pipe"].update_config({"explore_rate": 0.0})


def _metrics(env: dict[str, Any], served: sim.Served, rule: PromotionRule) -> dict[str, Any]:
    world = env["world"]
    ranked = served.sources != "exploration"
    return {
        "true_value": float(served.true_p[ranked].mean()),
        "observed_value": float(served.finished[ranked].mean()),
        "topic_entropy": ev.topic_entropy(served.request_of, served.topics),
        "creator_gini": ev.creator_gini(served.creators, world.item_creator),
        "creator_overflow": ev.creator_overflow(
            served.request_of,
            served.creators,
            rule.max_creator_slots,
            served.positions,
            rule.creator_window,
        ),
        "fresh_reach": ev.fresh_reach(served.uploads, world.item_ids[served.item_rows]),
        "impressions": int(len(served.item_rows)),
        "exploration_slots": int((~ranked).sum()),
    }


def _in_layer(env: dict[str, Any], cfg: LoopConfig, served: sim.Served) -> np.ndarray:
    split, world, pipe = env["split"], env["world"], env["pipe"]
    toks = [pipe.user_token(world.user_ids[u]) for u in range(cfg.users)]
    member = np.array([split.variant(cfg.layer, t) == "candidate" for t in toks])
    return member[served.user_rows]


def _evaluate(env: dict[str, Any], cfg: LoopConfig, arm: ev.ExploreArm) -> dict[str, Any]:
    """OPE of the candidate and of live on today's exploration arm, their paired lift, the
    shadow head-to-head, and (after a recent promotion) live vs the model it replaced."""
    out: dict[str, Any] = {"estimated": None, "lift": None, "shadow": None, "vs_previous": None}
    cand = env["candidate"]
    tw = np.asarray(cfg.task_weights, np.float32)
    if len(arm) >= 2:
        live = ev.ope_value(env["live"], arm, tw, cfg.ope_temperature)
        out["live_estimate"] = live
        if cand is not None and cand.get("model") is not None:
            c = ev.ope_value(cand["model"], arm, tw, cfg.ope_temperature)
            out["estimated"] = c
            out["lift"] = ev.paired_lift(c, live, arm.r)
        if env["previous"] is not None:
            prev = ev.ope_value(env["previous"], arm, tw, cfg.ope_temperature)
            out["vs_previous"] = ev.paired_lift(live, prev, arm.r)
    if cand is not None and cand.get("model") is not None:
        try:
            t = analytics.shadow_vs_live(env["logdir"])
            rows = [r for r in t.to_pylist() if r["shadow_version"] == cand["version"]]
            out["shadow"] = rows[0] if rows else None
        except ValueError:
            out["shadow"] = None
    return out


def _apply(env: dict[str, Any], decision: str, day: int) -> None:
    """Applies the decision; a judged candidate that is not promoted leaves the ranker set
    (and its experiment route) so tomorrow's candidate takes its place."""
    pipe, cand = env["pipe"], env["candidate"]
    routed = env.pop("routed_version", None)
    if decision == "promote":
        pipe.promote(cand["version"])
        env["previous"], env["live"], env["promoted_day"] = env["live"], cand["model"], day
    elif routed is not None:
        pipe.remove_shadow(routed)
    if decision == "rollback":
        pipe.rollback()
        env["live"], env["previous"] = env["previous"], None


def _record(
    day: int,
    env: dict[str, Any],
    live_version: str,
    m: dict[str, Any],
    e: dict[str, Any],
    verdict: tuple[str, list[str]],
    extra: dict[str, Any],
) -> dict[str, Any]:
    cand = env["candidate"]
    est = e["estimated"]
    return {
        "day": day,
        "live_version": live_version,
        "candidate_version": None if cand is None else cand["version"],
        "true_value": m["true_value"],
        "estimated_value": None if est is None or e["lift"] is None else est.record(),
        "candidate_true_value": None if est is None else est.true_value,
        "lift": e["lift"],
        "topic_entropy": m["topic_entropy"],
        "creator_gini": m["creator_gini"],
        "creator_overflow": m["creator_overflow"],
        "fresh_reach": m["fresh_reach"],
        "decision": verdict[0],
        "reasons": verdict[1],
        **extra,
    }


def _one_day(
    env: dict[str, Any], cfg: LoopConfig, day: int, rng: np.random.Generator
) -> dict[str, Any]:
    _apply_break(env, cfg, day)
    live_version = env["live"].version
    routed = env.get("routed_version") is not None
    batch = env["pipe"].batch_info
    retrieval_version = env["pipe"].retrieval_version
    served, online_rec = online.serve(env, cfg, day, rng)
    table = _day_table(env, cfg, served)
    explored = analytics.read_table(
        env["logdir"], "exploration_events", columns=["impression_id", "propensity"]
    )
    env["explored"] = explored
    arm = ev.explore_arm(table, explored, dict(zip(served.impression_ids, served.true_p)))
    m = _metrics(env, served, cfg.rule)
    if day == cfg.rule.reference_day:
        env["baseline"] = m
    e = _evaluate(
        env,
        cfg,
        arm
        if len(arm) >= cfg.rule.min_exploration_slots
        else ev.ExploreArm(arm.x[:0], arm.r[:0], arm.p[:0], arm.true_p[:0]),
    )
    flags = diversity_flags(m, env["baseline"], cfg.rule)
    verdict = decide(env, cfg, day, e, len(arm))
    verdict = (verdict[0], verdict[1] + flags)
    _apply(env, verdict[0], day)
    recall = ev.retrieval_recall(env["retrieval"], table, env["world"], env["tokens"])
    rj = _retrieval_day(env, cfg, arm)
    extra = {
        "parity_flagged": None
        if env["candidate"] is None
        else env["candidate"].get("parity_flagged"),
        "observed_value": m["observed_value"],
        "impressions": m["impressions"],
        "exploration_slots": len(arm),
        "layer": ev.layer_ab(served, _in_layer(env, cfg, served), routed),
        "shadow_verdict": None if e["shadow"] is None else e["shadow"]["verdict"],
        "batch": {"version": batch["version"], "n_users": batch["n_users"]},
        "retrieval": {"version": retrieval_version, "true_recall_at_100": recall, **rj},
    }
    if online_rec is not None:
        extra["online"] = online_rec
    rec = _record(day, env, live_version, m, e, verdict, extra)
    _next_candidate(env, cfg, day, table)
    return rec


def _retrieval_day(env: dict[str, Any], cfg: LoopConfig, arm: ev.ExploreArm) -> dict[str, Any]:
    """Judges yesterday's retrieval candidate on today's exploration arm and applies the
    rule (``swap`` serves it from tomorrow's first request); the candidate is then spent."""
    rj = judge_retrieval(env, cfg.rule, arm.x, arm.r, cfg.dim)
    if rj["decision"] == "swap":
        swap_retrieval(env, cfg, env["retrieval_candidate"])
    env["retrieval_candidate"] = None
    return rj


def _next_candidate(env: dict[str, Any], cfg: LoopConfig, day: int, table: Any) -> None:
    """Trains tomorrow's candidate on the last ``train_days`` days, checks its training set's
    parity against the served log, shadows it; every ``two_tower_every`` days re-runs the user
    tower's offline pass into the batch tier and trains tomorrow's retrieval candidate."""
    env["tables"] = (env["tables"] + [table])[-cfg.train_days :]
    env["day"] = day
    broken = cfg.break_ == "parity" and day >= cfg.break_from
    tables = [break_parity(t) if broken else t for t in env["tables"]]
    env["candidate"] = train_candidate(env, cfg, day, tables)
    cand = env["candidate"]
    if cand.get("model") is not None:
        cand["parity_flagged"] = parity_flags(env["logdir"], tables[-1], table)
        if not cand["parity_flagged"]:
            env["pipe"].add_shadow(cand["model"])
            # the candidate ranks the ranked slots of the experiment layer's users (1%);
            # the exploration arm is carved before routing and never moves
            env["pipe"].set_route(cfg.layer, "candidate", cand["version"])
            env["routed_version"] = cand["version"]
    if cfg.two_tower_every and (day + 1) % cfg.two_tower_every == 0:
        env["batch"] = user_tower_pass(env, cfg, env["tables"], env["batch"])
        if cfg.serve_towers:
            env["retrieval_candidate"] = train_retrieval(env, cfg, day, concat_days(env["tables"]))


def run(
    config: Optional[LoopConfig] = None,
    *,
    logdir: Optional[str] = None,
    json_out: Optional[str] = None,
    progress: Optional[Callable[[dict], None]] = None,
    inspect: Optional[Callable[[dict, dict], None]] = None,
    **overrides: Any,
) -> list[dict[str, Any]]:
    """Runs the loop for ``config.days`` simulated days and returns one record per day (also
    written as JSON lines to ``json_out``). ``overrides`` replace ``LoopConfig`` fields, e.g.
    ``run(days=3, break_="exploration")``. ``logdir`` keeps the event log (default: a
    temporary directory removed at the end). ``progress(record)`` is called after each day;
    ``inspect(record, state)`` too, with the loop's live state (``pipe``, ``world``,
    ``retrieval`` and ``retrieval_index`` of the served towers, ``batch``, ...) for notebooks
    and tests (do not keep it: the pipeline closes when the run ends)."""
    import dataclasses

    cfg = dataclasses.replace(config or LoopConfig(), **overrides)
    with tempfile.TemporaryDirectory(prefix="fyp-loop-") as tmp:
        root = logdir or os.path.join(tmp, "log")
        env = sim.build(cfg, root)
        env.update(
            logdir=root,
            tables=[],
            candidate=None,
            previous=None,
            promoted_day=None,
            batch=([], None),
            baseline=None,
            retrieval=None,
            retrieval_candidate=None,
        )
        rng = np.random.default_rng(cfg.seed + 1)
        records = []
        try:
            for day in range(cfg.days):
                t = time.perf_counter()
                rec = _one_day(env, cfg, day, rng)
                rec["seconds"] = round(time.perf_counter() - t, 2)
                records.append(rec)
                if progress is not None:
                    progress(rec)
                if inspect is not None:
                    inspect(rec, env)
        finally:
            env["pipe"].close()
    if json_out:
        with open(json_out, "w") as f:
            for rec in records:
                f.write(json.dumps(rec, default=_json_default) + "\n")
    return records


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
