"""What the loop measures each day (DESIGN §7, steps 3-5): the OPE value of a model from the
exploration arm with its paired lift over live, the simulator's truth for the same target, feed
diversity (topic entropy, creator Gini), fresh-item reach, the A/A read of the experiment layer
and train/serve parity. Vectorised numpy over one day's impressions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from fyp_core import ope

__all__ = [
    "ExploreArm",
    "OpeResult",
    "boltzmann_weights",
    "creator_gini",
    "creator_overflow",
    "explore_arm",
    "fresh_reach",
    "layer_ab",
    "ope_value",
    "paired_lift",
    "retrieval_recall",
    "topic_entropy",
]

Z95 = ope.Z95


@dataclass
class ExploreArm:
    """The day's exploration slots: features, reward (finished), logging propensity, truth."""

    x: np.ndarray
    r: np.ndarray
    p: np.ndarray
    true_p: np.ndarray  # the world's finish probability of each explored slot (evaluation only)

    def __len__(self) -> int:
        return len(self.r)


@dataclass
class OpeResult:
    """A model's OPE value on the exploration arm (SNIPS, with IPS and DR beside it)."""

    snips: ope.Estimate
    ips: ope.Estimate
    dr: ope.Estimate
    weights: np.ndarray  # w_i = pi_i / p_i, mean 1 over the arm
    true_value: float  # the simulator's value of the same target on the same draws

    def record(self) -> dict[str, Any]:
        """JSON-ready summary."""

        def est(e: ope.Estimate) -> dict[str, Any]:
            return {"value": e.value, "ci": list(e.ci), "stderr": e.stderr}

        return {
            "value": self.snips.value,
            "ci": list(self.snips.ci),
            "estimator": "snips",
            "ips": est(self.ips),
            "dr": est(self.dr),
            "ess": self.snips.ess,
            "n": self.snips.n,
        }


def explore_arm(table: Any, explored: Any, served_true: dict[str, float]) -> ExploreArm:
    """Exploration rows of a day's training set, joined with the ``exploration_events`` log
    (impression_id -> propensity) and the simulator's truth keyed by impression id."""
    import pyarrow.compute as pc

    from fyp_core.features import features_matrix

    at = pc.index_in(table.column("impression_id"), value_set=explored.column("impression_id"))
    mask = np.asarray(pc.is_valid(at))
    sub = table.filter(mask)
    prop = explored.column("propensity").take(at.filter(pc.is_valid(at)))
    ids = sub.column("impression_id").to_pylist()
    return ExploreArm(
        x=features_matrix(sub) if sub.num_rows else np.zeros((0, 0), np.float32),
        r=np.asarray(sub.column("completed").to_numpy(zero_copy_only=False), dtype=np.float64),
        p=np.asarray(prop.to_numpy(zero_copy_only=False), dtype=np.float64),
        true_p=np.array([served_true[i] for i in ids], dtype=np.float64),
    )


def boltzmann_weights(score: np.ndarray, temperature: float) -> np.ndarray:
    """w_i proportional to exp(z_i / temperature), mean 1, where z is the *rank* of the score
    among the explored items mapped to a unit-variance logistic quantile: the target re-selects
    explored items by rank (pi_i = p_i * w_i), so two models with differently scaled value
    scores are judged alike and one extreme score cannot take all the weight."""
    _, inv, counts = np.unique(score, return_inverse=True, return_counts=True)
    below = np.cumsum(counts) - counts
    u = (below[inv] + 0.5 * (counts[inv] + 1)) / (len(score) + 1)  # mid-ranks in (0, 1)
    z = np.log(u / (1.0 - u)) * (np.sqrt(3.0) / np.pi)
    e = np.exp((z - z.max()) / temperature)
    return e / e.mean()


def ope_value(
    model: Any, arm: ExploreArm, task_weights: np.ndarray, temperature: float
) -> OpeResult:
    """The model's value (finish rate) as a Boltzmann selector over the explored items."""
    preds = model.predict(arm.x)
    value = model.value(preds, task_weights)
    w = boltzmann_weights(np.asarray(value, np.float64), temperature)
    pi = np.minimum(arm.p * w, 1.0)
    q = np.asarray(preds[:, 0], np.float64)  # the model's own finish head: the DR baseline
    q_target = np.full(len(q), float(np.sum(w * q) / np.sum(w)))
    return OpeResult(
        snips=ope.snips(arm.r, arm.p, pi),
        ips=ope.ips(arm.r, arm.p, pi),
        dr=ope.dr(arm.r, arm.p, pi, q, q_target),
        weights=w,
        true_value=float(np.sum(w * arm.true_p) / np.sum(w)),
    )


def paired_lift(a: OpeResult, b: OpeResult, r: np.ndarray) -> dict[str, Any]:
    """SNIPS value of a minus b on the same explored slots, with a 95% CI from the paired
    influence functions (the two estimates share their noise, so the pair is tighter)."""
    va, vb = a.snips.value, b.snips.value
    psi = a.weights * (r - va) / a.weights.mean() - b.weights * (r - vb) / b.weights.mean()
    se = float(np.sqrt(np.sum(psi**2)) / len(r))
    d = va - vb
    return {"value": d, "ci": [d - Z95 * se, d + Z95 * se], "stderr": se}


def topic_entropy(request_of: np.ndarray, topics: np.ndarray) -> float:
    """Mean over responses of the Shannon entropy (nats) of the topics served in it."""
    if len(topics) == 0:
        return float("nan")
    pairs, counts = np.unique(np.stack([request_of, topics]), axis=1, return_counts=True)
    req = pairs[0]
    totals = np.bincount(request_of)[req]
    p = counts / totals
    h = np.bincount(req, weights=-p * np.log(p))
    return float(h[np.unique(request_of)].mean())


def creator_gini(creators: np.ndarray, all_creators: Optional[np.ndarray] = None) -> float:
    """Gini coefficient of impressions over creators (0 = equal exposure). With
    ``all_creators`` (the catalogue's), creators never shown count with zero impressions."""
    if len(creators) == 0:
        return float("nan")
    shown, counts = np.unique(creators, return_counts=True)
    if all_creators is not None:
        unseen = np.setdiff1d(np.unique(all_creators), shown, assume_unique=True)
        counts = np.concatenate([counts, np.zeros(len(unseen), dtype=counts.dtype)])
    c = np.sort(counts).astype(np.float64)
    n = len(c)
    return float((2.0 * np.sum(np.arange(1, n + 1) * c) / (n * c.sum())) - (n + 1.0) / n)


def creator_overflow(
    request_of: np.ndarray,
    creators: np.ndarray,
    max_slots: int,
    positions: Optional[np.ndarray] = None,
    window: Optional[int] = None,
) -> float:
    """Share of responses in which one creator holds more than ``max_slots`` slots (within
    some ``window`` consecutive positions when both are given and a response is longer): the
    per-feed creator concentration the re-ranker's cap (``max_per_creator`` per window)
    bounds. 0 while the cap holds; unlike a mean over feeds it is not moved by how many feeds
    reach the cap, which varies day to day with the ranker and the batch tier."""
    if len(creators) == 0:
        return float("nan")
    if positions is None or window is None or int(positions.max()) < window:
        masks = [np.ones(len(creators), dtype=bool)]
    else:  # one mask per window offset (a loop over offsets, not impressions)
        masks = [
            (positions >= o) & (positions < o + window)
            for o in range(int(positions.max()) - window + 2)
        ]
    over = []
    for w in masks:
        pair = np.stack([request_of[w], creators[w]])
        pairs, counts = np.unique(pair, axis=1, return_counts=True)
        over.append(pairs[0][counts > max_slots])
    return float(len(np.unique(np.concatenate(over))) / len(np.unique(request_of)))


def fresh_reach(uploads: np.ndarray, served_items: np.ndarray) -> Optional[float]:
    """Share of the day's uploads shown at least once that day (None without uploads)."""
    if len(uploads) == 0:
        return None
    return float(np.isin(uploads, served_items).mean())


def layer_ab(served: Any, in_layer: np.ndarray, routed: bool) -> dict[str, Any]:
    """The experiment layer's read-out: finish-rate difference (layer users - others) on ranked
    slots with a 95% CI. ``routed``: the layer's users were ranked by the candidate
    (``FeedPipeline.set_route``), so this is the candidate's A/B against live; without a
    candidate both sides are served by live and it is an A/A check."""
    ranked = served.sources != "exploration"
    y = served.finished.astype(np.float64)
    y_t = y[ranked & in_layer]
    y_c = y[ranked & ~in_layer]
    if len(y_t) < 2 or len(y_c) < 2:
        return {"routed": routed, "diff": None, "ci": None, "n_layer": int(len(y_t))}
    d = float(y_t.mean() - y_c.mean())
    se = float(np.sqrt(y_t.var(ddof=1) / len(y_t) + y_c.var(ddof=1) / len(y_c)))
    return {
        "routed": routed,
        "diff": d,
        "ci": [d - Z95 * se, d + Z95 * se],
        "n_layer": int(len(y_t)),
    }


def retrieval_recall(
    towers: Optional[dict[str, Any]],
    table: Any,
    world: Any,
    tokens: dict[str, int],
    k: int = 100,
) -> float:
    """Evaluation only (the simulator's truth): recall@k of the retrieval that served the day
    against each user's true top-k by affinity over the whole catalogue, for the users with a
    request that day, queried with their latest served user block (the towers' query, or the
    heuristic blend ``u_emb`` for ``None``) by brute force over the index's vectors."""
    from fyp_core.features import features_matrix
    from fyp_core.train import recall_at_k

    dim = world.dim
    ts = np.asarray(table.column("ts").cast("int64").to_numpy(zero_copy_only=False))
    tok = np.asarray(table.column("user_token").to_pylist()).astype(str)
    newest_first = np.argsort(-ts, kind="stable")
    toks, first = np.unique(tok[newest_first], return_index=True)
    x = features_matrix(table.take(newest_first[first]))
    warm = np.abs(x[:, :dim]).sum(axis=1) > 0
    if not warm.any():
        return float("nan")
    users = np.array([tokens[t] for t in toks[warm]])
    items = world.item_emb.astype(np.float32)
    uw = 2 * dim + 4
    if towers is None:
        q, v = x[warm, :dim], items
    else:
        q = towers["user"].predict(np.ascontiguousarray(x[warm, :uw]))
        v = towers["item"].predict(np.ascontiguousarray(items))
    return recall_at_k(q, v, world.user_taste[users] @ items.T, k)
