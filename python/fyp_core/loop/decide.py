"""The loop's written promotion rule (``PromotionRule``, docs/loop.md) applied to one day's
evaluation, and the diversity guardrails that flag a day against the day-0 baseline."""

from __future__ import annotations

from typing import Any, Optional

from fyp_core.loop.config import LoopConfig, PromotionRule

__all__ = ["decide", "diversity_flags"]


def _fmt(ci: list[float]) -> str:
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def _rollback(
    env: dict[str, Any], rule: PromotionRule, day: int, e: dict[str, Any]
) -> Optional[str]:
    vs = e.get("vs_previous")
    promoted = env.get("promoted_day")
    if vs is None or promoted is None or day - promoted > rule.rollback_days:
        return None
    if vs["ci"][1] < 0:
        return (
            f"rollback: live is below the model it replaced on the exploration arm, "
            f"difference {vs['value']:+.4f} CI {_fmt(vs['ci'])}"
        )
    return None


def _gate(
    cand: dict[str, Any], rule: PromotionRule, e: dict[str, Any], n_explore: int
) -> Optional[list[str]]:
    """Reasons the candidate is blocked, or None if it may be judged on its lift."""
    if cand.get("error"):
        return [f"training refused: {cand['error']}"]
    flagged = cand.get("parity_flagged") or []
    if flagged:
        return [f"parity: feature {name} differs between training and serving" for name in flagged]
    if e.get("lift") is None:
        return [
            f"lift not measurable: {n_explore} exploration slots (rule needs "
            f"{rule.min_exploration_slots}); promotion refused"
        ]
    ess = e["estimated"].snips.ess
    if ess < rule.min_ess:
        return [
            f"lift not measurable: OPE effective sample size {ess:.1f} < {rule.min_ess}; "
            "promotion refused"
        ]
    return None


def decide(
    env: dict[str, Any], cfg: LoopConfig, day: int, e: dict[str, Any], n_explore: int
) -> tuple[str, list[str]]:
    """("promote" | "keep" | "rollback" | "blocked", reasons) for today's candidate."""
    rule = cfg.rule
    why = _rollback(env, rule, day, e)
    if why is not None:
        return "rollback", [why]
    cand = env.get("candidate")
    if cand is None:
        return "keep", ["no candidate yet: the first day collects the log"]
    blocked = _gate(cand, rule, e, n_explore)
    if blocked is not None:
        return "blocked", blocked
    lift = e["lift"]
    verdict = None if e.get("shadow") is None else e["shadow"].get("verdict")
    if verdict == "not ready":
        return "keep", [f"shadow head-to-head says 'not ready' (lift CI {_fmt(lift['ci'])})"]
    if lift["ci"][0] > rule.min_lift:
        return "promote", [
            f"lift {lift['value']:+.4f} CI {_fmt(lift['ci'])} clears "
            f"{rule.min_lift}; shadow verdict {verdict!r}"
        ]
    return "keep", [
        f"lift {lift['value']:+.4f} CI {_fmt(lift['ci'])} does not clear {rule.min_lift}"
    ]


def diversity_flags(
    m: dict[str, Any], baseline: Optional[dict[str, Any]], rule: PromotionRule
) -> list[str]:
    """Guardrail reasons: topic entropy fallen, creator Gini risen, or the share of feeds
    with a creator above ``max_creator_slots`` risen, against the reference day
    (``PromotionRule.reference_day``)."""
    if baseline is None or baseline is m:
        return []
    out = []
    h0, h = baseline["topic_entropy"], m["topic_entropy"]
    if h < h0 * (1.0 - rule.entropy_drop):
        out.append(f"diversity: topic entropy fell to {h:.3f} from {h0:.3f} on the reference day")
    g0, g = baseline["creator_gini"], m["creator_gini"]
    if g > g0 + rule.gini_rise:
        out.append(f"diversity: creator Gini rose to {g:.3f} from {g0:.3f} on the reference day")
    o0, o = baseline.get("creator_overflow"), m.get("creator_overflow")
    if o is not None and o0 is not None and o > o0 + rule.overflow_rise:
        out.append(
            f"diversity: creator concentration rose: {o:.1%} of feeds give one creator more "
            f"than {rule.max_creator_slots} slots, {o0:.1%} on the reference day"
        )
    return out
