"""The learning loop over the synthetic world (DESIGN §7, docs/loop.md): each simulated day the
feed is served through ``FeedPipeline``, logged, trained on, and a candidate ranker is shadowed,
judged on the exploration arm and promoted, kept, rolled back or blocked by a written rule.

``run(days=5, seed=0, break_=None, ...) -> list[dict]`` (one record per day); the command is
``fyp-core loop --days N``. Needs the ``train`` extra (JAX + optax).
"""

from __future__ import annotations

from fyp_core.loop.config import BREAKS, LoopConfig, PromotionRule
from fyp_core.loop.driver import run

__all__ = ["BREAKS", "LoopConfig", "PromotionRule", "run"]
