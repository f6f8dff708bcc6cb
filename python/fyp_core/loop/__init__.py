"""The learning loop over the synthetic world (DESIGN §7, docs/loop.md)."""

from __future__ import annotations

from fyp_core.loop.config import BREAKS, LoopConfig, PromotionRule

__all__ = ["BREAKS", "LoopConfig", "PromotionRule"]
