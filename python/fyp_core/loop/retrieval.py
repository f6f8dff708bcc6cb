"""The loop's retrieval models (DESIGN §7, the two-tower half of step 2): every
``two_tower_every`` days a candidate pair of towers is trained on the recent log; the next day
it is judged against the live retrieval on that day's exploration arm (items drawn uniformly,
so neither retrieval chose them) and, by the written rule, served through
``FeedPipeline.set_retrieval`` with a new index of its item tower's vectors."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from fyp_core import HnswIndex
from fyp_core.loop.config import LoopConfig, PromotionRule

__all__ = ["auc", "judge_retrieval", "retrieval_scores", "swap_retrieval", "train_retrieval"]


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve of scores ``s`` for binary labels ``y`` (mid-ranks for ties);
    nan without both classes."""
    y = np.asarray(y, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def retrieval_scores(towers: Optional[dict[str, Any]], x: np.ndarray, dim: int) -> np.ndarray:
    """Per served row (features ``x``), the cosine between the retrieval's ANN query and the
    item's index vector: the towers' (``towers["user"]`` over the user block, ``["item"]``
    over the content embedding) or, for ``None``, the heuristic's (the scorer's blend ``u_emb``
    against the content embedding)."""
    uw = 2 * dim + 4
    content = x[:, uw : uw + dim]
    if towers is None:
        return np.einsum("ij,ij->i", _unit(x[:, :dim]), _unit(content))
    q = towers["user"].predict(np.ascontiguousarray(x[:, :uw]))
    v = towers["item"].predict(np.ascontiguousarray(content))
    return np.einsum("ij,ij->i", _unit(q), _unit(v))


def train_retrieval(env: dict[str, Any], cfg: LoopConfig, day: int, table: Any) -> dict[str, Any]:
    """A retrieval candidate trained on ``table`` (the recent days): the pointwise two-tower
    with an item tower over the content embedding alone (what ``set_retrieval`` embeds
    uploads with) and a user tower over the served user block as logged (its long-term slot
    the batch vector that was served), so training equals serving. Both towers are residual:
    they start as the heuristic blend's query over the content index and learn a correction.
    Exploration rows (items drawn uniformly, not chosen by any retrieval) weigh
    ``cfg.retrieval_explore_weight`` times the others. Returns the candidate, or the
    trainer's refusal."""
    import pyarrow.compute as pc

    from fyp_core.train import fit_two_tower

    version = f"rt-s{cfg.seed}-d{day}"
    explored = env["explored"]  # the log's exploration_events, read by the day
    arm = pc.is_in(table.column("impression_id"), value_set=explored.column("impression_id"))
    weights = np.where(np.asarray(arm), cfg.retrieval_explore_weight, 1.0)
    try:
        fit = fit_two_tower(
            table,
            row_weights=weights,
            feature_set_version=env["pipe"].feature_set_version,
            objective="pointwise",
            residual=True,
            item_tower=cfg.retrieval_item_tower,
            item_stats=False,
            long_term="served",
            epochs=cfg.epochs,
            seed=cfg.seed + day,
            version=version,
        )
    except ValueError as e:
        return {"version": version, "user": None, "item": None, "error": str(e)}
    return {
        "version": version,
        "user": fit.user_tower,
        "item": fit.item_tower,
        "error": None,
        "seconds": fit.seconds,
    }


def _paired_auc_ci(
    y: np.ndarray, a: np.ndarray, b: np.ndarray, rounds: int = 200, seed: int = 0
) -> list[float]:
    """95% percentile-bootstrap interval of auc(y, a) - auc(y, b) over rows resampled together."""
    rng = np.random.default_rng(seed)
    d = []
    for _ in range(rounds):
        i = rng.integers(0, len(y), len(y))
        d.append(auc(y[i], a[i]) - auc(y[i], b[i]))
    lo, hi = np.nanpercentile(d, [2.5, 97.5])
    return [float(lo), float(hi)]


def judge_retrieval(
    env: dict[str, Any], rule: PromotionRule, arm_x: np.ndarray, arm_r: np.ndarray, dim: int
) -> dict[str, Any]:
    """The retrieval candidate against live on the exploration arm: AUC of each retrieval's
    cosine for finished vs not finished explored items (users with a query only), the paired
    bootstrap CI of the difference, and the decision: ``swap`` if the CI's lower end exceeds
    ``rule.retrieval_min_gain``, ``blocked`` without a candidate or with fewer than
    ``rule.min_retrieval_positives`` finished explored items, else ``keep``."""
    cand = env.get("retrieval_candidate")
    out: dict[str, Any] = {"candidate": None if cand is None else cand["version"]}
    if cand is None:
        return {**out, "decision": None}
    if cand["error"]:
        return {**out, "decision": "blocked", "reason": f"training refused: {cand['error']}"}
    warm = np.abs(arm_x[:, :dim]).sum(axis=1) > 0 if len(arm_r) else np.zeros(0, bool)
    y = arm_r[warm] > 0
    if int(y.sum()) < rule.min_retrieval_positives or int((~y).sum()) == 0:
        return {
            **out,
            "decision": "blocked",
            "reason": f"not measurable: {int(y.sum())} finished explored items of warm users "
            f"(need {rule.min_retrieval_positives})",
        }
    x = arm_x[warm]
    s_c, s_l = retrieval_scores(cand, x, dim), retrieval_scores(env.get("retrieval"), x, dim)
    ci = _paired_auc_ci(y, s_c, s_l)
    gain = auc(y, s_c) - auc(y, s_l)
    swap = ci[0] > rule.retrieval_min_gain
    return {
        **out,
        "decision": "swap" if swap else "keep",
        "auc_candidate": auc(y, s_c),
        "auc_live": auc(y, s_l),
        "gain": gain,
        "ci": ci,
        "n": int(len(y)),
        "reason": f"AUC gain {gain:+.4f} CI [{ci[0]:+.4f}, {ci[1]:+.4f}] "
        f"{'above' if swap else 'not above'} {rule.retrieval_min_gain:+.4f}",
    }


def swap_retrieval(env: dict[str, Any], cfg: LoopConfig, cand: dict[str, Any]) -> None:
    """Serves the candidate: a new index of its item tower's vectors over the start catalogue,
    swapped in with both towers by ``set_retrieval`` (which embeds and adds the items uploaded
    since, and drops those taken down, under the pipeline's lock)."""
    cat = env["catalogue"]
    vecs = cand["item"].predict(np.ascontiguousarray(cat.item_embeddings, dtype=np.float32))
    index = HnswIndex(
        vecs.shape[1], metric="ip", ef_construction=64, capacity=cfg.items * 2, seed=cfg.seed
    )
    index.add(cat.item_ids, vecs)
    env["pipe"].set_retrieval(
        cand["version"], index, user_tower=cand["user"], item_tower=cand["item"]
    )
    env["retrieval"] = cand
    env["retrieval_index"] = index
