"""Configuration of the learning loop: the simulated world, the serving policy, the trainers and
the written promotion rule (docs/loop.md). Every field has a documented default."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

__all__ = ["BREAKS", "LoopConfig", "PromotionRule"]

#: the seed's three removals, each a loop option that the loop must detect
BREAKS = ("diversity", "exploration", "parity")


@dataclass(frozen=True)
class PromotionRule:
    """When a candidate is promoted, kept, rolled back or blocked (applied in this order).

    1. blocked: the candidate could not be trained (bad training set), or ``parity_report``
       flagged a feature of its training set against the served log.
    2. blocked: its lift over live is not measurable: fewer than ``min_exploration_slots``
       exploration slots that day, or an effective sample size of the OPE weights below
       ``min_ess`` (promotion without a measurable lift is refused).
    3. rollback: the live model was promoted within ``rollback_days`` days and its OPE value on
       today's exploration arm is significantly below (95% CI of the paired difference under
       zero) the model it replaced.
    4. promote: the lower end of the 95% CI of the candidate's lift over live exceeds
       ``min_lift`` and the shadow head-to-head (``analytics.shadow_vs_live``) is not
       'not ready'.
    5. keep: otherwise.

    Retrieval (the two-tower candidate, judged the day after it was trained): ``swap`` it in
    through ``set_retrieval`` when the 95% bootstrap CI of its AUC gain over the live
    retrieval on the exploration arm (finished vs not finished explored items) lies above
    ``retrieval_min_gain``; ``blocked`` with fewer than ``min_retrieval_positives`` finished
    explored items; ``keep`` otherwise.
    """

    min_exploration_slots: int = 100
    min_ess: float = 30.0
    min_lift: float = 0.0
    rollback_days: int = 1
    #: the guardrails' reference day (day 0 is a cold start: no user has a history yet)
    reference_day: int = 1
    #: topic entropy below (1 - this) x the reference day's is flagged in the reasons
    entropy_drop: float = 0.05
    #: creator Gini above the reference day's + this is flagged in the reasons
    gini_rise: float = 0.05
    #: the most slots one creator may hold within ``creator_window`` consecutive slots of a
    #: response (the policy's ``max_per_creator`` 2 over its 12-slot window)
    max_creator_slots: int = 2
    creator_window: int = 12
    #: a share of responses with a creator above ``max_creator_slots`` (``creator_overflow``)
    #: above the reference day's + this is flagged in the reasons
    overflow_rise: float = 0.03
    retrieval_min_gain: float = 0.0
    min_retrieval_positives: int = 30


@dataclass(frozen=True)
class LoopConfig:
    """The simulated world and the loop's knobs (``fyp_core.loop.run``)."""

    days: int = 5
    seed: int = 0
    items: int = 20_000
    users: int = 2_000
    dim: int = 32
    creators: int = 2_000
    topics: int = 30
    requests_per_day: int = 2_000
    slots: int = 12
    candidates: int = 300
    explore_rate: float = 0.05
    uploads_per_day: int = 200
    history_len: int = 30
    #: days of log each candidate is trained on (the most recent ones)
    train_days: int = 3
    #: re-train the two-tower every k days (0: never; long-term vectors then stay empty and the
    #: pipeline's history mean is the user embedding)
    two_tower_every: int = 2
    #: the batch tier's long-term user vectors: "tower" (the user tower's offline pass) or
    #: "history" (the pooled content embedding of the user's finished items in the log)
    long_term: str = "tower"
    #: train a retrieval candidate (user + item tower) with each two-tower pass and serve it
    #: through ``set_retrieval`` when the rule says so (False: the heuristic blend queries)
    serve_towers: bool = True
    #: the retrieval candidate's item tower: "mlp" (learned over the content embedding; the
    #: swap builds an index of its vectors) or "content" (the identity: the user tower alone
    #: is learned, the new index holds the content embeddings)
    retrieval_item_tower: str = "mlp"
    #: the weight of exploration rows (uniform draws) in the retrieval candidate's loss
    retrieval_explore_weight: float = 10.0
    hidden: tuple = (64, 32)
    epochs: int = 15
    #: OPE target: a Boltzmann selector over the explored items with this temperature, in units
    #: of the standard deviation of the model's value score
    ope_temperature: float = 1.0
    #: the experiment layer the candidate would be routed to, and its share of users
    layer: str = "ranker"
    layer_share: float = 0.01
    break_: Optional[str] = None
    #: the day a --break option takes effect; None: day 1, or for "diversity" the day after the
    #: guardrails' reference day (so the reference is clean)
    break_day: Optional[int] = None
    task_weights: tuple = (1.0, 0.5, 1.0, 1.0, 0.3, 0.02)
    #: online fine-tuning (``loop/online.py``, docs/train.md): every this many simulated
    #: minutes, fine-tune the day's model on the newest chunk of log and sync it into the
    #: online shadow (0: off)
    online_every_minutes: int = 0
    #: the online fine-tune's AdamW steps per chunk (mini-batches of 128 rows) and learning rate
    online_steps: int = 8
    online_lr: float = 5e-4
    rule: PromotionRule = field(default_factory=PromotionRule)

    @property
    def break_from(self) -> int:
        """The day the ``break_`` option takes effect."""
        if self.break_day is not None:
            return int(self.break_day)
        return self.rule.reference_day + 1 if self.break_ == "diversity" else 1

    def __post_init__(self) -> None:
        for name in (
            "days",
            "items",
            "users",
            "dim",
            "creators",
            "topics",
            "requests_per_day",
            "slots",
            "candidates",
            "train_days",
        ):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.break_ is not None and self.break_ not in BREAKS:
            raise ValueError(f"break must be one of {BREAKS} or None, got {self.break_!r}")
        if self.long_term not in ("tower", "history"):
            raise ValueError(f"long_term must be 'tower' or 'history', got {self.long_term!r}")
        if self.retrieval_item_tower not in ("mlp", "content"):
            raise ValueError(
                "retrieval_item_tower must be 'mlp' or 'content', got "
                f"{self.retrieval_item_tower!r}"
            )
        if not self.retrieval_explore_weight > 0:
            raise ValueError(
                f"retrieval_explore_weight must be > 0, got {self.retrieval_explore_weight}"
            )
        if not 0.0 <= self.explore_rate < 1.0:
            raise ValueError(f"explore_rate must be in [0, 1), got {self.explore_rate}")
        if not 0.0 < self.layer_share < 1.0:
            raise ValueError(f"layer_share must be in (0, 1), got {self.layer_share}")
        if not 0 <= int(self.online_every_minutes) <= 24 * 60:
            raise ValueError(
                f"online_every_minutes must be in [0, 1440], got {self.online_every_minutes}"
            )
        if int(self.online_steps) <= 0 or not self.online_lr > 0:
            raise ValueError(
                f"online_steps and online_lr must be > 0, got {self.online_steps} and "
                f"{self.online_lr}"
            )
        if self.ope_temperature <= 0:
            raise ValueError(f"ope_temperature must be > 0, got {self.ope_temperature}")
