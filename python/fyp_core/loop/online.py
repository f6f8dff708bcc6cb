"""Online fine-tuning inside a simulated day (docs/train.md, "Online fine-tuning"): the day is
served in chunks of ``LoopConfig.online_every_minutes`` simulated minutes through the loop's
``FeedPipeline``; after each chunk its training rows are built from the log
(``features.training_set``: the served vectors, point in time), the online model is fine-tuned
on them (``fyp_core.train.finetune_ranker``, warm-started from the day's daily-trained model,
then from its own previous state) and its parameters are synced into the pipeline's online
shadow (the previous one is replaced; the live model, the candidate's route and the
exploration arm are untouched). Each synced model is judged against the daily model on the
next chunk's impressions, which neither was trained on.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from fyp_core import features as fs
from fyp_core.loop import sim
from fyp_core.loop.config import LoopConfig
from fyp_core.synth import DAY

__all__ = [
    "auc",
    "chunk_metrics",
    "log_loss",
    "serve",
    "serve_day_online",
    "summarise",
    "sync_shadow",
]


def auc(y: np.ndarray, s: np.ndarray) -> Optional[float]:
    """Area under the ROC curve of scores ``s`` for binary labels ``y`` (ties get average
    ranks); None when ``y`` is single-class."""
    y = np.asarray(y, bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return None
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    sv = np.asarray(s)[order]  # average ranks over ties
    starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]])
    ends = np.r_[starts[1:], len(sv)]
    for a, b in zip(starts, ends):
        if b - a > 1:
            ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities ``p`` (clipped to [1e-7, 1 - 1e-7])."""
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y, np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def sync_shadow(pipe: Any, model: Any, previous: Optional[str]) -> str:
    """Parameter sync: ``model`` (a new version) becomes the pipeline's online shadow, then the
    previous online shadow leaves the ranker set, so there is no moment without one. Returns the
    new version. Live model, routes and exploration arm are not touched."""
    pipe.add_shadow(model)
    if previous is not None:
        pipe.remove_shadow(previous)
    return str(model.version)


def _chunk_rows(env: dict[str, Any], cfg: LoopConfig, request_ids: list[str]) -> Any:
    """The chunk's training rows, through the daily trainer's path (``training_set`` over the
    whole log, the batch snapshots the loop loaded, rows of these requests only)."""
    env["log"].flush()
    return fs.training_set(
        env["logdir"],
        env["catalogue"],
        user_token_key=sim.KEY,
        history_len=cfg.history_len,
        request_ids=request_ids,
        batches=env.get("batches"),
    )


def _top_true(env: dict[str, Any], rows: Any, values: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per model: per request, the world's true finish probability, at position 0, of the
    served item the model values most among the request's impressions."""
    world = env["world"]
    req = np.asarray(rows.column("request_id").to_pylist())
    users = np.array([env["tokens"][t] for t in rows.column("user_token").to_pylist()])
    ids = np.asarray(rows.column("item_id").to_numpy(zero_copy_only=False), np.uint64)
    items = np.searchsorted(world.item_ids, ids)
    _, codes = np.unique(req, return_inverse=True)
    out = {}
    for name, v in values.items():
        order = np.lexsort((-v, codes))
        first = order[np.r_[True, codes[order][1:] != codes[order][:-1]]]
        out[name] = sim.true_finish(world, users[first], items[first], np.zeros(len(first)))
    return out


def chunk_metrics(
    env: dict[str, Any], cfg: LoopConfig, rows: Any, models: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Each model's finish-head AUC and log-loss on the rows, and the mean over requests of
    the world's true value of the slot it would rank first (by its value score with the loop's
    task weights) among the request's impressions. Also returns the arrays (labels ``y``,
    finish probabilities ``p_<name>``, per-request true values ``top_<name>``) so chunks can be
    pooled."""
    x = fs.features_matrix(rows)
    y = np.asarray(rows.column("completed").to_numpy(zero_copy_only=False), np.float64)
    tw = np.asarray(cfg.task_weights, np.float32)
    arrays: dict[str, np.ndarray] = {"y": y}
    values = {}
    for name, m in models.items():
        pred = m.predict(x)
        arrays[f"p_{name}"] = pred[:, 0].astype(np.float64)
        values[name] = np.asarray(m.value(pred, tw), np.float64)
    for name, v in _top_true(env, rows, values).items():
        arrays[f"top_{name}"] = v
    return summarise(arrays, list(models)), arrays


def summarise(arrays: dict[str, np.ndarray], names: list[str]) -> dict[str, Any]:
    """``n`` rows, ``n_requests``, and per model ``auc_``, ``ll_`` (finish head) and
    ``top_true_`` (mean true value of its first slot) from ``chunk_metrics`` arrays."""
    y = arrays["y"]
    out: dict[str, Any] = {"n": int(len(y)), "n_requests": int(len(arrays[f"top_{names[0]}"]))}
    for name in names:
        out[f"auc_{name}"] = auc(y, arrays[f"p_{name}"])
        out[f"ll_{name}"] = log_loss(y, arrays[f"p_{name}"])
        out[f"top_true_{name}"] = float(arrays[f"top_{name}"].mean())
    return out


def serve_day_online(
    env: dict[str, Any], cfg: LoopConfig, day: int, rng: np.random.Generator
) -> tuple[sim.Served, dict[str, Any]]:
    """Serves simulated day ``day`` in chunks of ``cfg.online_every_minutes`` minutes (the same
    traffic ``sim.serve_day`` draws), fine-tuning and syncing the online shadow after each
    chunk; returns the day's ``Served`` and the online record: ``base`` (the daily model the
    chain starts from; None before the loop has trained one: nothing is fine-tuned that day),
    ``synced`` (the version synced after each chunk), ``errors``, and ``chunks``: per chunk
    from the second on, the synced online model against the daily model (and live) on that
    chunk's impressions (``chunk_metrics``), and ``day``: the same pooled over those chunks."""
    from fyp_core.train import finetune_ranker

    pipe = env["pipe"]
    cand = env.get("candidate")
    base = None if cand is None else cand.get("model")
    plan = sim.plan_day(env, cfg, day, rng)
    step = 60.0 * cfg.online_every_minutes
    t_day = env["t0"] + day * DAY
    rec: dict[str, Any] = {
        "every_minutes": int(cfg.online_every_minutes),
        "base": None if base is None else base.version,
        "synced": [],
        "errors": [],
        "chunks": [],
        "seconds_train": 0.0,
        "seconds_rows": 0.0,
    }
    parts, fit, shadow = [], None, None
    env["online_models"] = {}  # the day's synced models by version (tests, notebooks)
    pooled: dict[str, list[np.ndarray]] = {}
    for k in range(math.ceil(DAY / step)):
        part = sim.serve_until(env, cfg, plan, t_day + (k + 1) * step, rng)
        parts.append(part)
        if base is None or not part.request_ids:
            continue
        t = _now()
        rows = _chunk_rows(env, cfg, part.request_ids)
        rec["seconds_rows"] += _now() - t
        if fit is not None:  # the synced model on traffic it was not trained on
            models = {"online": fit.ranker, "daily": base, "live": env["live"]}
            m, arrays = chunk_metrics(env, cfg, rows, models)
            rec["chunks"].append({"chunk": k, "version": fit.ranker.version, **m})
            for key, a in arrays.items():
                pooled.setdefault(key, []).append(a)
        t = _now()
        try:
            fit = finetune_ranker(
                fit or base,
                rows,
                feature_set_version=pipe.feature_set_version,
                steps=cfg.online_steps,
                lr=cfg.online_lr,
                version=f"online-s{cfg.seed}-d{day}-c{k}",
                seed=cfg.seed * 1000 + day * 100 + k,
                opt_state=None if fit is None else fit.opt_state,
            )
        except ValueError as e:  # keep serving the previous online shadow
            rec["errors"].append(f"chunk {k}: {e}")
            continue
        finally:
            rec["seconds_train"] += _now() - t
        shadow = sync_shadow(pipe, fit.ranker, shadow)
        env["online_models"][shadow] = fit.ranker
        rec["synced"].append(shadow)
    if shadow is not None:  # tomorrow's chain starts from tomorrow's daily model
        pipe.remove_shadow(shadow)
    if pooled:
        arrays = {k: np.concatenate(v) for k, v in pooled.items()}
        rec["day"] = summarise(arrays, ["online", "daily", "live"])
    return _concat(parts), rec


def serve(
    env: dict[str, Any], cfg: LoopConfig, day: int, rng: np.random.Generator
) -> tuple[sim.Served, Optional[dict[str, Any]]]:
    """The loop's serving step: ``serve_day_online`` when ``cfg.online_every_minutes`` is set,
    else ``sim.serve_day`` (and no online record)."""
    if cfg.online_every_minutes:
        return serve_day_online(env, cfg, day, rng)
    return sim.serve_day(env, cfg, day, rng), None


def _now() -> float:
    import time

    return time.perf_counter()


def _concat(parts: list[sim.Served]) -> sim.Served:
    """The chunks of a day as one ``Served`` (request indices are the day's)."""
    return sim.Served(
        request_ids=[r for p in parts for r in p.request_ids],
        request_of=np.concatenate([p.request_of for p in parts]),
        user_rows=np.concatenate([p.user_rows for p in parts]),
        item_rows=np.concatenate([p.item_rows for p in parts]),
        positions=np.concatenate([p.positions for p in parts]),
        sources=np.concatenate([p.sources for p in parts]),
        topics=np.concatenate([p.topics for p in parts]),
        creators=np.concatenate([p.creators for p in parts]),
        true_p=np.concatenate([p.true_p for p in parts]),
        finished=np.concatenate([p.finished for p in parts]),
        uploads=np.concatenate([p.uploads for p in parts]),
        impression_ids=[i for p in parts for i in p.impression_ids],
    )
