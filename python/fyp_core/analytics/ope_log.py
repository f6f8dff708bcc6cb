"""Off-policy evaluation of a logged model on the event log's exploration arm: the model's
ranking replayed on each request's logged candidate set (``ope.replay_propensities``), scored
against the uniform exploration draws with IPS, SNIPS and DR (docs/ope.md). This is what the
report's "shadow OPE" card shows; it reads only the log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fyp_core import ope

__all__ = ["LogOpe", "model_candidate_scores", "shadow_ope"]

REQUEST_COLUMNS = ["request_id", "candidate_item_ids", "candidate_scores"]
SHADOW_COLUMNS = ["shadow_versions", "shadow_candidate_scores"]


@dataclass(frozen=True)
class LogOpe:
    """One model's OPE on the exploration arm; ``reward`` rate per slot."""

    version: str
    policy: str
    temperature: float
    reward: str
    ips: ope.Estimate
    snips: ope.Estimate
    dr: ope.Estimate
    n_exploration: int  # exploration slots in the log
    n_used: int  # of those, slots whose request row (with this model's scores) was logged
    support_hits: int  # used slots whose drawn item the target could show (pi > 0)
    explore_rate: float  # the reward rate of the uniform exploration arm on the used slots
    #: per used slot: impression_id, r, p, pi, q_logged, q_target (the estimators' inputs)
    slots: Dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def record(self) -> Dict[str, Any]:
        """JSON-ready summary."""

        def est(e: ope.Estimate) -> Dict[str, Any]:
            return {"value": e.value, "ci": list(e.ci), "stderr": e.stderr, "ess": e.ess}

        return {
            "version": self.version,
            "policy": self.policy,
            "temperature": self.temperature,
            "reward": self.reward,
            "ips": est(self.ips),
            "snips": est(self.snips),
            "dr": est(self.dr),
            "n_exploration": self.n_exploration,
            "n_used": self.n_used,
            "support_hits": self.support_hits,
            "explore_rate": self.explore_rate,
        }


def model_candidate_scores(
    requests: pa.Table, version: Optional[str]
) -> Tuple[pa.Table, np.ndarray]:
    """The requests that logged ``version``'s score of every candidate, and those scores
    (flat, aligned with their flattened ``candidate_item_ids``). ``version=None``: the served
    model's ``candidate_scores``."""
    if version is None:
        flat = requests.column("candidate_scores").combine_chunks().flatten()
        return requests, np.asarray(flat, dtype=np.float64)
    if "shadow_versions" not in requests.column_names:
        return requests.slice(0, 0), np.zeros(0)
    versions = requests.column("shadow_versions").combine_chunks()
    parent = np.asarray(pc.list_parent_indices(versions))
    hit = np.asarray(pc.equal(versions.flatten(), version).fill_null(False))
    v_off = np.asarray(versions.offsets)
    rows, j = parent[hit], np.flatnonzero(hit) - v_off[parent[hit]]
    rows, first = np.unique(rows, return_index=True)
    j = j[first]
    sub = requests.take(pa.array(rows, pa.int64()))
    cands = sub.column("candidate_item_ids").combine_chunks()
    k: np.ndarray = np.diff(np.asarray(cands.offsets, dtype=np.int64)).astype(np.int64)
    sc = sub.column("shadow_candidate_scores").combine_chunks()
    sc_off = np.asarray(sc.offsets, dtype=np.int64)
    req_of = np.repeat(np.arange(len(rows)), k)
    within = np.arange(len(req_of)) - np.repeat(np.cumsum(k) - k, k)
    at = sc_off[:-1][req_of] + j[req_of] * k[req_of] + within
    return sub, np.asarray(sc.flatten(), dtype=np.float64)[at]


def _fit_logistic(x: np.ndarray, y: np.ndarray, iters: int = 25) -> np.ndarray:
    """(a, b) of P(y) = sigmoid(a + b x) by Newton's method with a small ridge."""
    X = np.stack([np.ones_like(x), x], axis=1)
    beta = np.zeros(2)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(X @ beta)))
        g = X.T @ (y - p) - 1e-3 * beta
        h = (X * (p * (1 - p))[:, None]).T @ X + 1e-3 * np.eye(2)
        beta = beta + np.linalg.solve(h, g)
    return beta


def _q_model(s_drawn: np.ndarray, r: np.ndarray, fold: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Cross-fitted reward model q(s) = sigmoid(a + b s) on the model's own score: fold f's
    coefficients are fitted on the other fold, so DR never uses an outcome to predict itself."""
    mu, sd = float(s_drawn.mean()), float(s_drawn.std()) or 1.0
    z = (s_drawn - mu) / sd
    coef = np.stack([_fit_logistic(z[fold != f], r[fold != f]) for f in (0, 1)])
    return coef, np.array([mu, sd])


def _q(coef: np.ndarray, norm: np.ndarray, s: np.ndarray, fold: np.ndarray) -> np.ndarray:
    z = (s - norm[0]) / norm[1]
    return 1.0 / (1.0 + np.exp(-(coef[fold, 0] + coef[fold, 1] * z)))


def shadow_ope(
    root: str,
    version: Optional[str] = None,
    *,
    policy: str = "softmax",
    temperature: Optional[float] = None,
    epsilon: float = 0.0,
    reward: str = "completed",
    window_hours: float = 24.0,
    con: Any = None,
    outcomes: Optional[pa.Table] = None,
) -> Optional[LogOpe]:
    """OPE of model ``version`` (a shadow, or ``None`` for the served model) replayed on the
    logged candidate sets, on the log's exploration slots. ``temperature`` of the softmax in
    score units; default the pooled within-request standard deviation of the model's candidate
    scores.
    ``outcomes``: the log's ``impression_outcomes`` when already computed (several models).
    Returns None when fewer than 2 exploration slots have the model's candidate scores."""
    from fyp_core import analytics

    out = outcomes
    if out is None:
        out = analytics.impression_outcomes(root, window_hours=window_hours, con=con)
    exp = out.filter(pc.equal(out.column("source"), "exploration"))
    cols = [c for c in REQUEST_COLUMNS + SHADOW_COLUMNS if c in _columns(root)]
    req, scores = model_candidate_scores(analytics.read_table(root, "requests", cols), version)
    if exp.num_rows < 2 or req.num_rows == 0:
        return None
    name = version or str(exp.column("model_version")[0].as_py())
    s_drawn = _drawn_scores(root, exp, name)
    logged = np.asarray(pc.is_in(exp.column("request_id"), value_set=req.column("request_id")))
    use = logged & np.isfinite(s_drawn)
    if use.sum() < 2:
        return None
    exp_u = exp.filter(pa.array(use))
    r = np.asarray(exp_u.column(reward).to_numpy(zero_copy_only=False), dtype=np.float64)
    p = np.asarray(exp_u.column("propensity"), dtype=np.float64)
    temp = float(temperature) if temperature is not None else _within_std(req, scores)
    fold_req, fold_imp = _folds(req.column("request_id"), exp_u.column("request_id"))
    # the drawn item's score: its logged candidate score when it is a candidate (the same
    # numbers the target ranks by), else the model's logged score of the served row
    cands_flat = np.asarray(req.column("candidate_item_ids").combine_chunks().flatten())
    req_of0 = ope._segment_ids(
        np.asarray(req.column("candidate_item_ids").combine_chunks().offsets)
    )
    _, cand_idx = ope._locate(req.column("request_id"), exp_u, cands_flat, req_of0)
    s_use = np.where(cand_idx >= 0, scores[np.maximum(cand_idx, 0)], s_drawn[use])
    coef, norm = _q_model(s_use, r, fold_imp)
    cands = req.column("candidate_item_ids").combine_chunks()
    req_of = np.repeat(np.arange(req.num_rows), np.diff(np.asarray(cands.offsets)))
    # a candidate of a fold-f request is valued by the model fitted on the other fold
    q_cand = _q(coef, norm, scores, 1 - fold_req[req_of])
    pi, q_target = ope._replay(req, exp_u, scores, policy, temp, epsilon, None, q_cand)
    q_logged = _q(coef, norm, s_use, 1 - fold_imp)
    assert q_target is not None
    return LogOpe(
        version=name,
        policy=policy,
        temperature=temp,
        reward=reward,
        ips=ope.ips(r, p, pi),
        snips=ope.snips(r, p, pi) if pi.sum() > 0 else ope.ips(r, p, pi),
        dr=ope.dr(r, p, pi, q_logged, q_target),
        n_exploration=exp.num_rows,
        n_used=int(use.sum()),
        support_hits=int((pi > 0).sum()),
        explore_rate=float(r.mean()),
        slots={
            "impression_id": np.asarray(exp_u.column("impression_id").to_pylist(), dtype=object),
            "r": r,
            "p": p,
            "pi": pi,
            "q_logged": q_logged,
            "q_target": q_target,
        },
    )


def _columns(root: str) -> List[str]:
    from fyp_core import analytics

    files = analytics.table_files(root, "requests")
    if not files:
        return []
    import pyarrow.parquet as pq

    return list(pq.read_schema(files[0]).names)


def _within_std(req: pa.Table, scores: np.ndarray) -> float:
    """The pooled within-request standard deviation of the scores: the default softmax
    temperature, so the target separates a request's candidates by about one standard
    deviation whatever the model's scale (the spread across requests does not count)."""
    offsets = np.asarray(req.column("candidate_item_ids").combine_chunks().offsets, np.int64)
    req_of = ope._segment_ids(offsets)
    k = np.maximum(np.diff(offsets), 1)
    mean = np.bincount(req_of, weights=scores, minlength=len(k)) / k
    var = float(np.mean((scores - mean[req_of]) ** 2)) if len(scores) else 0.0
    return float(np.sqrt(var)) or 1.0


def _folds(req_ids: Any, imp_req_ids: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Cross-fitting folds (0/1) by request: alternate over the sorted logged request ids, so
    folds are even and a request's slots and candidates share one fold."""
    uniq = np.unique(np.asarray(req_ids.to_numpy(zero_copy_only=False), dtype=object))
    imp = np.asarray(imp_req_ids.to_numpy(zero_copy_only=False), dtype=object)
    req = np.asarray(req_ids.to_numpy(zero_copy_only=False), dtype=object)
    return np.searchsorted(uniq, req) & 1, np.searchsorted(uniq, imp) & 1


def _drawn_scores(root: str, exp: pa.Table, version: str) -> np.ndarray:
    """The model's logged value score of each exploration slot's drawn item (NaN if absent)."""
    from fyp_core import analytics

    rs = analytics.read_table(
        root, "ranker_scores", ["impression_id", "model_version", "value_score"]
    )
    rs = rs.filter(pc.equal(rs.column("model_version"), version))
    at = pc.index_in(exp.column("impression_id"), value_set=rs.column("impression_id"))
    v = rs.column("value_score").take(at)
    return np.asarray(v.to_numpy(zero_copy_only=False), dtype=np.float64)
