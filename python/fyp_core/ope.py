"""Off-policy evaluation: the value a candidate policy would have had, estimated from logged slots.

Input per logged impression i (DESIGN §3): reward r_i, logging propensity p_i, target propensity
pi_i (probability the evaluated policy shows the logged item in that slot), and for the DR family
q_logged_i = q-hat(logged item) and q_target_i = E_{a ~ target}[q-hat(a)]. Weights w_i = pi_i / p_i.
Every estimator is vectorised numpy and returns an `Estimate` with a normal 95% interval from the
estimator's influence function. `replay_propensities` computes pi for a new ranker replayed on the
logged candidate sets of the `requests` table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import numpy as np

__all__ = ["Estimate", "dr", "ips", "replay_propensities", "sndr", "snips", "switch_dr"]

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """A policy value estimate with its uncertainty and weight diagnostics."""

    value: float
    stderr: float
    ci: Tuple[float, float]
    n: int
    ess: float  # effective sample size of the weights used, (sum w)^2 / sum w^2
    max_weight: float  # largest weight used (after clipping)
    clipped_share: float  # share of impressions whose weight was clipped (or switched off)
    estimator: str = ""

    def __str__(self) -> str:
        return (
            f"{self.estimator} {self.value:.5f} ± {Z95 * self.stderr:.5f} "
            f"[{self.ci[0]:.5f}, {self.ci[1]:.5f}] n={self.n} ess={self.ess:.1f} "
            f"max_w={self.max_weight:.2f} clipped={self.clipped_share:.2%}"
        )


def _array(name: str, x: object, n: Optional[int]) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} elements, r has {n}")
    if not np.all(np.isfinite(a)):
        bad = int(np.flatnonzero(~np.isfinite(a))[0])
        raise ValueError(f"{name} must be finite; {name}[{bad}] = {a[bad]}")
    return a


def _inputs(r: object, p: object, pi: object) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    r_ = _array("r", r, None)
    n = r_.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 logged impressions, got {n}")
    p_ = _array("p", p, n)
    pi_ = _array("pi", pi, n)
    if np.any((p_ <= 0) | (p_ > 1)):
        bad = int(np.flatnonzero((p_ <= 0) | (p_ > 1))[0])
        raise ValueError(f"logging propensities must be in (0, 1]; p[{bad}] = {p_[bad]}")
    if np.any((pi_ < 0) | (pi_ > 1)):
        bad = int(np.flatnonzero((pi_ < 0) | (pi_ > 1))[0])
        raise ValueError(f"target propensities must be in [0, 1]; pi[{bad}] = {pi_[bad]}")
    return r_, p_, pi_


def _clip(w: np.ndarray, clip: Optional[float]) -> Tuple[np.ndarray, float]:
    if clip is None:
        return w, 0.0
    if not (np.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a positive finite weight cap, got {clip}")
    over = w > clip
    return np.minimum(w, clip), float(over.mean())


def _finish(name: str, value: float, psi: np.ndarray, w: np.ndarray, clipped: float) -> Estimate:
    """psi: per-impression influence values (mean zero); stderr = sqrt(sum psi^2) / n."""
    n = psi.shape[0]
    se = float(np.sqrt(np.sum(psi * psi) / (n * (n - 1))))
    sw, sw2 = float(w.sum()), float((w * w).sum())
    return Estimate(
        value=float(value),
        stderr=se,
        ci=(value - Z95 * se, value + Z95 * se),
        n=n,
        ess=(sw * sw / sw2) if sw2 > 0 else 0.0,
        max_weight=float(w.max()),
        clipped_share=clipped,
        estimator=name,
    )


def ips(r: object, p: object, pi: object, clip: Optional[float] = None) -> Estimate:
    """Inverse propensity scoring: mean(w * r), w = pi / p, optionally capped at ``clip``."""
    r_, p_, pi_ = _inputs(r, p, pi)
    w, clipped = _clip(pi_ / p_, clip)
    x = w * r_
    v = x.mean()
    return _finish("ips", v, x - v, w, clipped)


def snips(r: object, p: object, pi: object) -> Estimate:
    """Self-normalised IPS: sum(w r) / sum(w); biased but bounded by the reward range."""
    r_, p_, pi_ = _inputs(r, p, pi)
    w = pi_ / p_
    if w.sum() <= 0:
        raise ValueError("all target propensities are zero: the target never shows a logged item")
    v = (w * r_).sum() / w.sum()
    return _finish("snips", v, w * (r_ - v) / w.mean(), w, 0.0)


def _q(q_logged: object, q_target: object, n: int) -> Tuple[np.ndarray, np.ndarray]:
    return _array("q_logged", q_logged, n), _array("q_target", q_target, n)


def dr(
    r: object,
    p: object,
    pi: object,
    q_logged: object,
    q_target: object,
    clip: Optional[float] = None,
) -> Estimate:
    """Doubly robust: mean(q_target + w (r - q_logged)); unbiased if either p or q-hat is right."""
    r_, p_, pi_ = _inputs(r, p, pi)
    ql, qt = _q(q_logged, q_target, r_.shape[0])
    w, clipped = _clip(pi_ / p_, clip)
    x = qt + w * (r_ - ql)
    v = x.mean()
    return _finish("dr", v, x - v, w, clipped)


def sndr(r: object, p: object, pi: object, q_logged: object, q_target: object) -> Estimate:
    """Self-normalised DR: mean(q_target) + sum(w (r - q_logged)) / sum(w)."""
    r_, p_, pi_ = _inputs(r, p, pi)
    ql, qt = _q(q_logged, q_target, r_.shape[0])
    w = pi_ / p_
    if w.sum() <= 0:
        raise ValueError("all target propensities are zero: the target never shows a logged item")
    d = r_ - ql
    c = (w * d).sum() / w.sum()
    v = qt.mean() + c
    return _finish("sndr", v, (qt - qt.mean()) + w * (d - c) / w.mean(), w, 0.0)


def switch_dr(
    r: object, p: object, pi: object, q_logged: object, q_target: object, tau: float = 10.0
) -> Estimate:
    """Switch-DR (Wang, Agarwal, Dudik 2017): the DR correction only where w <= tau; above it the
    model q_target alone. tau = inf is DR; tau -> 0 is the direct method. ``clipped_share`` is the
    share of impressions switched to the model."""
    r_, p_, pi_ = _inputs(r, p, pi)
    ql, qt = _q(q_logged, q_target, r_.shape[0])
    if not (tau > 0):
        raise ValueError(f"tau must be a positive weight threshold, got {tau}")
    w = pi_ / p_
    keep = w <= tau
    wk = np.where(keep, w, 0.0)
    x = qt + wk * (r_ - ql)
    v = x.mean()
    return _finish("switch_dr", v, x - v, wk, float((~keep).mean()))


# ---------------------------------------------------------------------------------------------
# counterfactual replay on logged candidate sets


def _segment_ids(offsets: np.ndarray) -> np.ndarray:
    lengths = np.diff(offsets)
    return np.repeat(np.arange(lengths.shape[0]), lengths)


def replay_propensities(
    requests: object,
    impressions: object,
    scores: Union[np.ndarray, Callable[[np.ndarray, np.ndarray], np.ndarray]],
    policy: str = "greedy",
    temperature: float = 1.0,
    epsilon: float = 0.0,
) -> np.ndarray:
    """Target propensities of a candidate ranker replayed on the logged candidate sets.

    requests: Arrow table (or anything with ``request_id`` and ``candidate_item_ids`` columns,
    e.g. ``pyarrow.dataset`` output) of the `requests` log. impressions: table with ``request_id``,
    ``item_id``, ``position``. scores: the candidate ranker's score for every logged candidate,
    either a flat float array aligned with the flattened ``candidate_item_ids`` or a callable
    ``scores(item_ids, request_row) -> float array`` over the flattened candidates.

    policy "greedy": the target shows its position-th best candidate at each position
    (pi = 1 if that is the logged item, else 0); "softmax": at each position it samples from
    softmax(score / temperature) over the candidates not shown at earlier logged positions
    (pi is that conditional probability). ``epsilon`` mixes in uniform exploration over the
    candidates (pi = (1 - eps) pi + eps / K). Returns float64 pi aligned with ``impressions``;
    NaN where the request was not logged (sampled out) or the item is not among its candidates.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if policy not in ("greedy", "softmax"):
        raise ValueError(f"policy must be 'greedy' or 'softmax', got {policy!r}")
    if not (temperature > 0):
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not (0.0 <= epsilon <= 1.0):
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    req = requests if isinstance(requests, pa.Table) else pa.table(requests)
    imp = impressions if isinstance(impressions, pa.Table) else pa.table(impressions)
    cands = req.column("candidate_item_ids").combine_chunks()
    offsets = np.asarray(cands.offsets, dtype=np.int64)
    flat = np.asarray(cands.flatten(), dtype=np.uint64)
    req_of = _segment_ids(offsets)
    k = np.diff(offsets)
    if callable(scores):
        s = np.asarray(scores(flat, req_of), dtype=np.float64)
    else:
        s = np.asarray(scores, dtype=np.float64)
    if s.shape != flat.shape:
        raise ValueError(f"scores has shape {s.shape}, the logged candidates are {flat.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")

    # locate each impression's (request row, candidate index)
    n_imp = imp.num_rows
    row = np.asarray(
        pc.index_in(imp.column("request_id"), value_set=req.column("request_id")).fill_null(-1),
        dtype=np.int64,
    )
    item = np.asarray(imp.column("item_id"), dtype=np.uint64)
    pos = np.asarray(imp.column("position"), dtype=np.int64)
    uniq, item_rank = np.unique(flat, return_inverse=True)
    n_u = max(len(uniq), 1)
    if req.num_rows * n_u >= 2**62:
        raise ValueError("too many requests x distinct items to index; replay in smaller batches")
    key = req_of * n_u + item_rank.reshape(-1)
    order = np.argsort(key, kind="stable")
    key_sorted = key[order]
    has = row >= 0
    u_at = np.minimum(np.searchsorted(uniq, item), n_u - 1)
    has &= uniq[u_at] == item if len(uniq) else np.zeros_like(has)
    q = row[has] * n_u + u_at[has]
    at = np.minimum(np.searchsorted(key_sorted, q), max(len(key_sorted) - 1, 0))
    hit = key_sorted[at] == q
    j = np.where(hit, order[at], -1)
    cand_idx = np.full(n_imp, -1, dtype=np.int64)
    cand_idx[np.flatnonzero(has)] = j
    has = row >= 0
    found = cand_idx >= 0

    pi = np.full(n_imp, np.nan)
    if policy == "greedy":
        by_score = np.lexsort((-s, req_of))  # within request, best first (stable on ties)
        rank = np.empty_like(by_score)
        rank[by_score] = np.arange(flat.shape[0]) - offsets[req_of[by_score]]
        pi[found] = (rank[cand_idx[found]] == pos[found]).astype(np.float64)
    else:
        z = s / temperature
        nonempty = k > 0
        starts_c = offsets[:-1][nonempty]
        zmax = np.zeros(k.shape[0])
        total = np.zeros(k.shape[0])
        if starts_c.shape[0]:
            zmax[nonempty] = np.maximum.reduceat(z, starts_c)
        e = np.exp(z - zmax[req_of])
        if starts_c.shape[0]:
            total[nonempty] = np.add.reduceat(e, starts_c)
        # mass already used by the items shown at earlier positions of the same request: from the
        # impressions of that request (logged positions; sampled-out positions cannot be removed)
        f_idx = np.flatnonzero(found)
        f_row, f_pos, f_cand = row[f_idx], pos[f_idx], cand_idx[f_idx]
        # an item already shown at an earlier position cannot be drawn again (pi = 0) and its
        # mass leaves the pool once
        by_item = np.lexsort((f_pos, f_cand, f_row))
        repeat = np.zeros(len(f_idx), dtype=bool)
        repeat[by_item[1:]] = (f_row[by_item[1:]] == f_row[by_item[:-1]]) & (
            f_cand[by_item[1:]] == f_cand[by_item[:-1]]
        )
        srt = np.lexsort((f_pos, f_row))
        e_imp = e[f_cand[srt]]
        e_used = np.where(repeat[srt], 0.0, e_imp)
        r_s = f_row[srt]
        cs = np.cumsum(e_used)
        starts = np.r_[0, np.flatnonzero(np.diff(r_s)) + 1] if len(r_s) else np.zeros(0, int)
        seg_start = np.repeat(starts, np.diff(np.r_[starts, len(r_s)]))
        before = cs - e_used - np.where(seg_start > 0, cs[seg_start - 1], 0.0)
        remaining = np.maximum(total[r_s] - before, e_imp)
        out = np.empty(len(f_idx))
        out[srt] = np.where(repeat[srt], 0.0, e_imp / remaining)
        pi[f_idx] = out
    if epsilon > 0:
        kk = np.where(has, k[np.maximum(row, 0)], 1)
        pi[found] = (1 - epsilon) * pi[found] + epsilon / kk[found]
    return pi
