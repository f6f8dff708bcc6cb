"""Independent references for the re-ranker tests: a window-by-window audit of a feed, brute-force
greedy DPP (maximise log det at each step, float64 numpy) and a straightforward MMR."""

from __future__ import annotations

import math

import numpy as np

RULES = ("fresh_floor", "max_topic_share", "category_caps", "max_per_creator")


def cap_count(share: float, window: int) -> int:
    return int(math.floor(share * window + 1e-9))


def cap_specs(policy: dict) -> dict[int, tuple[float, bool]]:
    out = {}
    for cat, spec in (policy.get("category_caps") or {}).items():
        if isinstance(spec, dict):
            out[int(cat)] = (float(spec["share"]), bool(spec.get("safety", False)))
        else:
            out[int(cat)] = (float(spec), False)
    return out


def audit(policy: dict, topics, creators, categories, is_fresh, out) -> dict[str, int]:
    """Per-slot breaches of each rule over every window ending at that slot; asserts the safety
    rules and the absence of duplicates. Returns only the rules with a non-zero count."""
    w = int(policy.get("window", 20))
    share = policy.get("max_topic_share")
    per_creator = policy.get("max_per_creator")
    blocked = {int(c) for c in policy.get("blocked_categories") or []}
    caps = cap_specs(policy)
    out = [int(i) for i in out]
    assert len(set(out)) == len(out), f"duplicates in {out}"
    counts = dict.fromkeys(RULES, 0)
    for pos, i in enumerate(out):
        cat = None if categories is None else int(categories[i])
        assert cat not in blocked, f"blocked item {i} (category {cat}) at slot {pos}"
        win = out[max(0, pos - w + 1) : pos + 1]
        if share is not None:
            n = sum(1 for j in win if topics[j] == topics[i])
            if n > cap_count(share, w):
                counts["max_topic_share"] += 1
        if per_creator is not None:
            n = sum(1 for j in win if creators[j] == creators[i])
            if n > per_creator:
                counts["max_per_creator"] += 1
        if cat in caps:
            s, safety = caps[cat]
            n = sum(1 for j in win if int(categories[j]) == cat)
            if n > cap_count(s, w):
                assert not safety, f"safety cap on category {cat} broken at slot {pos}"
                counts["category_caps"] += 1
    floor = int(policy.get("fresh_floor", 0))
    if floor:
        first = min(w, len(out))
        shown = sum(1 for j in out[:first] if is_fresh[j])
        counts["fresh_floor"] = max(0, min(floor, first) - shown)
    return {r: c for r, c in counts.items() if c}


def normalise(emb: np.ndarray) -> np.ndarray:
    e = np.asarray(emb, dtype=np.float64)
    norm = np.linalg.norm(e, axis=1, keepdims=True)
    norm[norm == 0] = 1.0
    return e / norm


def brute_force_dpp(scores, emb, k: int, alpha: float = 1.0, eps: float = 1e-10) -> list[int]:
    """Greedy MAP by definition: at each step add the item maximising log det(L_Y); stop when
    the best gain det(L_Y+i) / det(L_Y) of the kernel scaled to max quality 1 is below eps."""
    e = normalise(emb)
    a = alpha * np.asarray(scores, dtype=np.float64)
    q = np.exp(a - a.max())
    sim = e @ e.T
    np.fill_diagonal(sim, (np.abs(e).sum(axis=1) > 0).astype(np.float64))  # exactly 1 (or 0)
    big_l = q[:, None] * sim * q[None, :]
    chosen: list[int] = []
    prev = 0.0  # log det of the empty matrix
    for _ in range(min(k, len(q))):
        best, best_val = None, -math.inf
        for i in range(len(q)):
            if i in chosen:
                continue
            y = chosen + [i]
            sign, logdet = np.linalg.slogdet(big_l[np.ix_(y, y)])
            if sign > 0 and logdet > best_val:
                best, best_val = i, logdet
        if best is None or math.exp(best_val - prev) < eps:
            break
        chosen.append(best)
        prev = best_val
    return chosen


def reference_mmr(scores, emb, k: int, lam: float) -> list[int]:
    e = normalise(emb)
    sim = e @ e.T
    s = np.asarray(scores, dtype=np.float64)
    chosen: list[int] = []
    for _ in range(min(k, len(s))):
        best, best_val = None, -math.inf
        for i in range(len(s)):
            if i in chosen:
                continue
            pen = max(sim[i, j] for j in chosen) if chosen else 0.0
            v = lam * s[i] - (1 - lam) * pen
            if v > best_val:
                best, best_val = i, v
        chosen.append(best)
    return chosen


def dpp_numpy(scores, emb, k: int, alpha: float = 1.0, eps: float = 1e-10) -> list[int]:
    """Chen, Zhang, Zhou (2018) Algorithm 1 in numpy (eager: every item updated every step)."""
    e = normalise(emb)
    a = alpha * np.asarray(scores, dtype=np.float64)
    q = np.exp(a - a.max())
    n = len(q)
    cis = np.zeros((k, n))
    d2 = q * q * np.einsum("ij,ij->i", e, e)
    chosen: list[int] = []
    j = int(np.argmax(d2))
    while len(chosen) < min(k, n) and d2[j] >= eps:
        chosen.append(j)
        t = len(chosen) - 1
        row = q[j] * q * (e @ e[j])
        eis = (row - cis[:t, j] @ cis[:t, :]) / math.sqrt(d2[j])
        cis[t, :] = eis
        d2 -= eis * eis
        d2[chosen] = -np.inf
        j = int(np.argmax(d2))
    return chosen
