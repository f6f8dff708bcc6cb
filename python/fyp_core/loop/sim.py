"""The loop's simulated world: builds the serving pipeline over the synthetic catalogue (without
any of the world's hidden truth) and serves one simulated day of traffic through it, drawing
outcomes from the world's true engagement model. Role in DESIGN §7: step 1 of each day."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fyp_core import EventLog, FeedPipeline, HnswIndex, MlpRanker, Reranker, TrafficSplit
from fyp_core import features as fs
from fyp_core.catalog import Catalogue, apply_catalogue
from fyp_core.loop.config import LoopConfig
from fyp_core.synth import DAY, TASKS, World, demo_ranker_weights, make_world

__all__ = [
    "POLICY",
    "NO_CAPS_POLICY",
    "DayPlan",
    "Served",
    "build",
    "plan_day",
    "serve_day",
    "serve_until",
    "true_finish",
]

KEY = b"fyp-loop-user-token-key"
POLICY = {
    "window": 12,
    "max_topic_share": 0.34,
    "max_per_creator": 2,
    "diversity": "mmr",
    "mmr_lambda": 0.7,
    "fresh_floor": 1,
}
#: --break diversity: the re-ranker's caps and diversity term off
NO_CAPS_POLICY = {
    "window": 12,
    "max_topic_share": 1.0,
    "max_per_creator": 1000,
    "diversity": "none",
}


@dataclass
class Served:
    """One simulated day: per impression (row-aligned) and per request."""

    request_ids: list[str]
    request_of: np.ndarray  # impression -> request index
    user_rows: np.ndarray  # world user row per impression
    item_rows: np.ndarray  # world item row per impression
    positions: np.ndarray
    sources: np.ndarray  # "ranked" | "exploration" | "fresh"
    topics: np.ndarray
    creators: np.ndarray
    true_p: np.ndarray  # the world's true finish probability of the slot (evaluation only)
    finished: np.ndarray  # the outcome drawn (and fed back through engage)
    uploads: np.ndarray  # item ids uploaded that day
    impression_ids: list[str]


def true_finish(world: World, users: np.ndarray, items: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The world's true probability that a user finishes an item shown at a position (the
    expectation of ``World.engagement``'s ``completed``); for evaluation, never served."""
    aff = np.einsum("ij,ij->i", world.user_taste[users], world.item_emb[items])
    logit = 5.0 * aff + world.item_quality[items] - 1.5
    return (1.0 / (1.0 + 0.05 * pos)) / (1.0 + np.exp(-logit))


def start_time(world_now: float) -> float:
    """Midnight UTC after the world's snapshot, so simulated day d is log partition dt + d."""
    return (np.floor(world_now / DAY) + 1) * DAY


def build(cfg: LoopConfig, logdir: str) -> dict[str, Any]:
    """The world, the catalogue the pipeline starts from (items only: no user vectors, no
    creator authority, both of which the synthetic world derives from its hidden truth) and a
    FeedPipeline serving the hand-made day-0 ranker with the policy re-ranker."""
    world = make_world(
        n_items=cfg.items,
        n_users=cfg.users,
        dim=cfg.dim,
        n_topics=cfg.topics,
        n_creators=cfg.creators,
        seed=cfg.seed,
    )
    cat = Catalogue.from_arrays(
        world.item_ids,
        world.item_emb,
        world.item_topic,
        world.item_creator,
        world.item_upload_ts,
        categories=world.item_category,
        as_of=float(world.now),
    )
    index = HnswIndex(
        cfg.dim, metric="ip", ef_construction=64, capacity=cfg.items * 2, seed=cfg.seed
    )
    index.add(cat.item_ids, cat.item_embeddings)
    w, b, o = demo_ranker_weights(cfg.dim, hidden=tuple(cfg.hidden), seed=cfg.seed)
    live = MlpRanker(
        w, b, activation="relu", outputs=o, version="day0-handmade", task_names=list(TASKS)
    )
    reranker = Reranker(POLICY)
    buckets = int(round(cfg.layer_share * 10_000))
    split = TrafficSplit(
        cfg.explore_rate,
        salt=f"fyp-loop-{cfg.seed}",
        layers={cfg.layer: {"candidate": (0, buckets)}},
    )
    log = EventLog(
        logdir, tasks=list(TASKS), feature_names=fs.feature_names(cfg.dim), rotate_seconds=3600.0
    )
    pipe = FeedPipeline(
        index,
        live,
        reranker,
        split,
        event_log=log,
        config={
            "candidates": cfg.candidates,
            "fresh_max_age_s": 6 * 3600.0,
            "task_weights": list(cfg.task_weights),
            "ef": 2 * cfg.candidates,
        },
        user_token_key=KEY,
        history_len=cfg.history_len,
    )
    apply_catalogue(pipe, cat, index=False)
    tokens = {pipe.user_token(u): i for i, u in enumerate(world.user_ids)}
    return {
        "world": world,
        "catalogue": cat,
        "pipe": pipe,
        "reranker": reranker,
        "log": log,
        "live": live,
        "tokens": tokens,
        "t0": start_time(world.now),
        "split": split,
    }


def _upload(
    world: World, pipe: FeedPipeline, n: int, t: float, rng: np.random.Generator
) -> np.ndarray:
    new = world.new_items(n, t, rng)
    for k in range(n):
        pipe.upload(
            int(new["ids"][k]),
            new["emb"][k],
            int(new["topic"][k]),
            int(new["creator"][k]),
            int(new["category"][k]),
            ts=t,
        )
    return np.asarray(new["ids"])


@dataclass
class DayPlan:
    """One simulated day's traffic, drawn up front: request times and users, upload times; and
    how far serving has got (``serve_until`` serves it in pieces)."""

    day: int
    times: np.ndarray
    users: np.ndarray
    up_times: np.ndarray
    next_request: int = 0
    next_upload: int = 0


def plan_day(env: dict[str, Any], cfg: LoopConfig, day: int, rng: np.random.Generator) -> DayPlan:
    """Draws the day's ``cfg.requests_per_day`` request times and users (activity Zipf-like)
    and ``cfg.uploads_per_day`` upload times, spread over simulated day ``day``."""
    t_day = env["t0"] + day * DAY
    times = np.sort(rng.uniform(0.0, DAY - 120.0, cfg.requests_per_day)) + t_day
    activity = 1.0 / np.arange(1, cfg.users + 1) ** 0.6
    users = rng.choice(cfg.users, size=cfg.requests_per_day, p=activity / activity.sum())
    up_times = np.sort(rng.uniform(0.0, DAY - 120.0, cfg.uploads_per_day)) + t_day
    return DayPlan(day, times, users, up_times)


def serve_day(env: dict[str, Any], cfg: LoopConfig, day: int, rng: np.random.Generator) -> Served:
    """Serves ``cfg.requests_per_day`` requests spread over simulated day ``day`` (uploads
    interleaved), feeds every outcome back through ``engage``; returns what was served."""
    return serve_until(env, cfg, plan_day(env, cfg, day, rng), np.inf, rng)


def serve_until(
    env: dict[str, Any], cfg: LoopConfig, plan: DayPlan, until: float, rng: np.random.Generator
) -> Served:
    """Serves the planned requests not served yet whose time is before ``until`` (uploads due
    before each interleaved), feeding every outcome back through ``engage``; returns what was
    served. Serving a plan in pieces draws the same traffic as serving it at once."""
    world, pipe = env["world"], env["pipe"]
    uploads, cols, req_ids, imp_ids = [], [], [], []
    day = plan.day
    while plan.next_request < len(plan.times) and plan.times[plan.next_request] < until:
        r = plan.next_request
        t, u = plan.times[r], plan.users[r]
        plan.next_request += 1
        k = int(np.searchsorted(plan.up_times, t)) - plan.next_upload
        if k > 0:
            uploads.append(_upload(world, pipe, k, float(t), rng))
            plan.next_upload += k
        rid = f"d{day}-r{r}"
        resp = pipe.feed(world.user_ids[u], rid, n=cfg.slots, now=float(t))
        rows = np.searchsorted(world.item_ids, resp.item_ids)
        pos = np.arange(len(rows))
        out = world.engagement(np.full(len(rows), u), rows, pos, rng)
        for j, imp in enumerate(resp.impression_ids):
            pipe.engage(
                imp,
                watched_seconds=float(out["watched_seconds"][j]),
                completed=bool(out["completed"][j]),
                liked=bool(out["liked"][j]),
                shared=bool(out["shared"][j]),
                followed=bool(out["followed"][j]),
                now=float(t) + 1.0 + j,
            )
        req_ids.append(rid)
        imp_ids.extend(resp.impression_ids)
        cols.append(
            (
                np.full(len(rows), r),
                np.full(len(rows), u),
                rows,
                pos,
                np.asarray(resp.sources),
                resp.topics,
                resp.creators,
                out["completed"],
            )
        )
    return _collect(world, cols, req_ids, imp_ids, uploads)


def _collect(
    world: World,
    cols: list[tuple],
    req_ids: list[str],
    imp_ids: list[str],
    uploads: list[np.ndarray],
) -> Served:
    if not cols:  # nothing due in this piece of the day
        z = np.zeros(0, np.int64)
        cols = [(z, z, z, z, np.zeros(0, "<U11"), z, np.zeros(0, np.uint64), np.zeros(0, bool))]
    req, users, items, pos, src, top, cre, fin = (np.concatenate(c) for c in zip(*cols))
    return Served(
        request_ids=req_ids,
        request_of=req,
        user_rows=users,
        item_rows=items,
        positions=pos,
        sources=src,
        topics=top,
        creators=cre,
        true_p=true_finish(world, users, items, pos),
        finished=fin,
        uploads=np.concatenate(uploads) if uploads else np.zeros(0, np.uint64),
        impression_ids=imp_ids,
    )
