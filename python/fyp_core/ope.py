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
from typing import Any, Callable, Optional, Tuple, Union

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


#: importance weights beyond this are refused: their squares (the variance) would overflow
_MAX_WEIGHT = 1e100


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
    w = pi_ / p_
    if np.any(w > _MAX_WEIGHT):
        bad = int(np.argmax(w))
        raise ValueError(
            f"importance weight pi/p = {w[bad]:.3g} at row {bad} (p = {p_[bad]:.3g}) is beyond "
            f"{_MAX_WEIGHT:.0e}: its square overflows the variance; a logging propensity this "
            f"small is a logging bug (the smallest real one is 1 / the catalogue size)"
        )
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
# counterfactual replay on logged candidate sets (the semantics: docs/ope.md)


def _segment_ids(offsets: np.ndarray) -> np.ndarray:
    lengths = np.diff(offsets)
    return np.repeat(np.arange(lengths.shape[0]), lengths)


def _locate(
    req_ids: Any, imp: Any, flat: np.ndarray, req_of: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """(request row or -1, flat candidate index or -1) of every impression."""
    import pyarrow.compute as pc

    row = np.asarray(
        pc.index_in(imp.column("request_id"), value_set=req_ids).fill_null(-1), dtype=np.int64
    )
    item = np.asarray(imp.column("item_id"), dtype=np.uint64)
    uniq, item_rank = np.unique(flat, return_inverse=True)
    n_u = max(len(uniq), 1)
    if (int(req_of[-1]) + 1 if len(req_of) else 0) * n_u >= 2**62:
        raise ValueError("too many requests x distinct items to index; replay in smaller batches")
    key = req_of * n_u + item_rank.reshape(-1)
    order = np.argsort(key, kind="stable")
    key_sorted = key[order]
    u_at = np.minimum(np.searchsorted(uniq, item), n_u - 1)
    has = (row >= 0) & (uniq[u_at] == item if len(uniq) else np.zeros(len(row), dtype=bool))
    q = row[has] * n_u + u_at[has]
    at = np.minimum(np.searchsorted(key_sorted, q), max(len(key_sorted) - 1, 0))
    hit = key_sorted[at] == q if len(key_sorted) else np.zeros(len(q), dtype=bool)
    cand_idx = np.full(len(row), -1, dtype=np.int64)
    cand_idx[np.flatnonzero(has)] = np.where(hit, order[at] if len(order) else -1, -1)
    return row, cand_idx


def _earlier_draws(
    row: np.ndarray, pos: np.ndarray, cand_idx: np.ndarray, explored: np.ndarray, usable: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Pairs (impression i, candidate c): c was drawn by the exploration arm at an earlier
    position of i's request (each candidate once, at its first draw). These are history at
    i's slot, so removing them from the target's support does not depend on i's own draw."""
    x = np.flatnonzero(explored & (cand_idx >= 0) & usable[np.maximum(cand_idx, 0)])
    if len(x) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    x = x[np.lexsort((pos[x], cand_idx[x]))]
    first = np.r_[True, cand_idx[x][1:] != cand_idx[x][:-1]]
    x = x[first]
    x = x[np.argsort(row[x], kind="stable")]
    xr = row[x]
    imps = np.flatnonzero(row >= 0)
    lo = np.searchsorted(xr, row[imps], side="left")
    hi = np.searchsorted(xr, row[imps], side="right")
    cnt = hi - lo
    pi_i = np.repeat(imps, cnt)
    starts = np.repeat(lo - np.r_[0, np.cumsum(cnt)[:-1]], cnt)
    pj = x[np.arange(len(pi_i)) + starts]
    keep = pos[pj] < pos[pi_i]
    return pi_i[keep], cand_idx[pj[keep]]


@dataclass
class _Slots:
    """The replay's shared arrays: per candidate (flat) and per impression, with the pairs
    (impression, candidate drawn at an earlier exploration slot of its request)."""

    offsets: np.ndarray
    req_of: np.ndarray
    usable: np.ndarray
    rr: np.ndarray  # request row per impression (0 where not logged)
    has: np.ndarray  # request logged
    pos: np.ndarray
    c_i: np.ndarray  # candidate index per impression (0 where none)
    in_support: np.ndarray
    size: np.ndarray  # |S_k| per impression
    pair_i: np.ndarray
    pair_c: np.ndarray

    def per_impression(self, per_cand: np.ndarray) -> np.ndarray:
        """sum over S_k of a per-candidate quantity, for every impression."""
        n_req, n_imp = len(self.offsets) - 1, len(self.rr)
        tot = np.bincount(self.req_of, weights=per_cand * self.usable, minlength=n_req)
        return tot[self.rr] - np.bincount(
            self.pair_i, weights=per_cand[self.pair_c], minlength=n_imp
        )


def _slots(req: Any, imp: Any, flat: np.ndarray, inadmissible: Any) -> _Slots:
    offsets = np.asarray(req.column("candidate_item_ids").combine_chunks().offsets, np.int64)
    req_of = _segment_ids(offsets)
    usable = np.ones(len(flat), dtype=bool)
    if inadmissible is not None:
        usable = ~np.isin(flat, np.asarray(inadmissible, dtype=np.uint64))
    row, cand_idx = _locate(req.column("request_id"), imp, flat, req_of)
    pos = np.asarray(imp.column("position"), dtype=np.int64)
    explored = np.asarray(imp.column("source").to_numpy(zero_copy_only=False)) == "exploration"
    pair_i, pair_c = _earlier_draws(row, pos, cand_idx, explored, usable)
    n_imp = len(row)
    rr = np.maximum(row, 0)
    k_eff = np.bincount(req_of, weights=usable, minlength=len(offsets) - 1).astype(np.int64)
    c_i = np.maximum(cand_idx, 0)
    in_support = (cand_idx >= 0) & usable[c_i]
    in_support[pair_i[pair_c == cand_idx[pair_i]]] = False
    return _Slots(
        offsets=offsets,
        req_of=req_of,
        usable=usable,
        rr=rr,
        has=row >= 0,
        pos=pos,
        c_i=c_i,
        in_support=in_support,
        size=k_eff[rr] - np.bincount(pair_i, minlength=n_imp),
        pair_i=pair_i,
        pair_c=pair_c,
    )


def _softmax(
    t: _Slots, s: np.ndarray, temperature: float, q: Optional[np.ndarray]
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    z = np.where(t.usable, s / temperature, -np.inf)
    zmax = np.full(len(t.offsets) - 1, -np.inf)
    np.maximum.at(zmax, t.req_of, z)
    zmax = np.where(np.isfinite(zmax), zmax, 0.0)
    e = np.where(t.usable, np.exp(np.where(t.usable, z, 0.0) - zmax[t.req_of]), 0.0)
    tot = t.per_impression(e)
    safe = np.where(tot > 0, tot, 1.0)
    pi = np.where(t.in_support, e[t.c_i] / safe, 0.0)
    eq = None if q is None else np.where(tot > 0, t.per_impression(e * q) / safe, 0.0)
    return pi, eq


def _greedy(
    t: _Slots, s: np.ndarray, q: Optional[np.ndarray]
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    n = len(s)
    # rank of every candidate within its request, best first (stable on ties), unusable last
    by = np.lexsort((np.arange(n), -s, ~t.usable, t.req_of))
    rank = np.empty(n, dtype=np.int64)
    rank[by] = np.arange(n) - t.offsets[t.req_of[by]]
    # the k-th best of the support: walk up from rank k past the excluded ranks at or below
    # it (one vectorised round per earlier draw of a request: a handful)
    target = t.pos.copy()
    order = np.lexsort((rank[t.pair_c], t.pair_i))
    p_i, p_rank = t.pair_i[order], rank[t.pair_c][order]
    first = np.r_[0, np.flatnonzero(np.diff(p_i)) + 1] if len(p_i) else np.zeros(0, int)
    nth = np.arange(len(p_i)) - np.repeat(first, np.diff(np.r_[first, len(p_i)]))
    for j in range(int(nth.max()) + 1 if len(nth) else 0):
        sel = nth == j
        target[p_i[sel]] += p_rank[sel] <= target[p_i[sel]]
    ok = t.has & (t.pos < t.size)
    pi = np.where(t.in_support & ok & (rank[t.c_i] == target), 1.0, 0.0)
    eq = None
    if q is not None and n:
        at = t.offsets[t.rr] + np.minimum(target, np.diff(t.offsets)[t.rr] - 1)
        eq = np.where(ok, q[by[np.clip(at, 0, n - 1)]], 0.0)
    elif q is not None:
        eq = np.zeros(len(pi))
    return pi, eq


def _replay(
    requests: Any,
    impressions: Any,
    scores: Union[np.ndarray, Callable[[np.ndarray, np.ndarray], np.ndarray]],
    policy: str,
    temperature: float,
    epsilon: float,
    inadmissible: Any,
    q: Optional[np.ndarray],
) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(pi, E_pi[q]) per impression; see ``replay_propensities``."""
    import pyarrow as pa

    if policy not in ("greedy", "softmax"):
        raise ValueError(f"policy must be 'greedy' or 'softmax', got {policy!r}")
    if not (temperature > 0):
        raise ValueError(f"temperature must be positive, got {temperature}")
    if not (0.0 <= epsilon <= 1.0):
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    req = requests if isinstance(requests, pa.Table) else pa.table(requests)
    imp = impressions if isinstance(impressions, pa.Table) else pa.table(impressions)
    if "source" not in imp.column_names:
        raise ValueError(
            "impressions needs a 'source' column: the exploration draws at earlier positions "
            "of a request leave the target's support (docs/ope.md)"
        )
    cands = req.column("candidate_item_ids").combine_chunks()
    flat = np.asarray(cands.flatten(), dtype=np.uint64)
    req_of = _segment_ids(np.asarray(cands.offsets, dtype=np.int64))
    s = np.asarray(scores(flat, req_of) if callable(scores) else scores, dtype=np.float64)
    if s.shape != flat.shape:
        raise ValueError(f"scores has shape {s.shape}, the logged candidates are {flat.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    if q is not None and q.shape != flat.shape:
        raise ValueError(f"q has shape {q.shape}, the logged candidates are {flat.shape}")
    t = _slots(req, imp, flat, inadmissible)
    pi, eq = _softmax(t, s, temperature, q) if policy == "softmax" else _greedy(t, s, q)
    if epsilon > 0:
        pi = np.where(t.in_support, (1 - epsilon) * pi + epsilon / np.maximum(t.size, 1), 0.0)
        if q is not None and eq is not None:
            eq = (1 - epsilon) * eq + epsilon * t.per_impression(q) / np.maximum(t.size, 1)
    pi = np.where(t.has, pi, np.nan)
    return pi, None if eq is None else np.where(t.has, eq, np.nan)


def replay_propensities(
    requests: object,
    impressions: object,
    scores: Union[np.ndarray, Callable[[np.ndarray, np.ndarray], np.ndarray]],
    policy: str = "greedy",
    temperature: float = 1.0,
    epsilon: float = 0.0,
    inadmissible: Optional[object] = None,
) -> np.ndarray:
    """Target propensities pi of a candidate ranker replayed on the logged candidate sets.

    The semantics (docs/ope.md): the target at slot k of a request is a distribution over its
    support S_k = the request's logged candidates, minus the items the exploration arm drew at
    earlier positions of that request (history at slot k, never slot k's own draw), minus
    ``inadmissible`` items (ids the logging arm can never show, e.g. blocked categories). An
    impression whose item is outside S_k gets pi = 0 (e.g. a catalogue-wide exploration draw
    that is not a candidate); NaN only where the request's row was not logged (sampled out:
    its candidate set is unknown).

    requests: Arrow table with ``request_id`` and ``candidate_item_ids`` (the `requests` log).
    impressions: table with ``request_id``, ``item_id``, ``position`` and ``source``; pass every
    exploration slot of a request (they are never sampled) so the earlier draws are known.
    scores: the target's score of every logged candidate, a flat array aligned with the
    flattened ``candidate_item_ids``, or ``scores(item_ids, request_row) -> array``.
    policy "greedy": slot k shows the k-th best item of S_k (pi in {0, 1}); "softmax": slot k
    draws from softmax(score / temperature) over S_k. ``epsilon`` mixes in uniform over S_k.
    Returns float64 pi aligned with ``impressions``.
    """
    pi, _ = _replay(requests, impressions, scores, policy, temperature, epsilon, inadmissible, None)
    return pi
