"""Trainers for the models the feed serves, on the feed's own log (optional extra
``fyp-core[train]``: JAX + optax on CPU).

- ``train_ranker`` / ``fit_ranker``: the heavy multi-task ranker (``MlpRanker``) from
  ``fyp_core.features.training_set`` rows.
- ``finetune_ranker``: warm-started fine-tuning of a ranker on the newest rows (a few steps from
  its weights, the same losses), exported as a new version: the loop's online shadow.
- ``train_two_tower`` / ``fit_two_tower``: user and item towers (``MlpRanker`` files with
  identity outputs) with in-batch sampled softmax and the logQ popularity correction.

Both refuse a training set whose feature-set version differs from the serving one. See
docs/train.md.
"""

from __future__ import annotations

from fyp_core.train._data import TASK_LABELS, model_feature_set_version
from fyp_core.train.ranker import (
    RankerFit,
    finetune_ranker,
    fit_ranker,
    ranker_outputs,
    train_ranker,
)
from fyp_core.train.two_tower import TwoTowerFit, fit_two_tower, recall_at_k, train_two_tower

__all__ = [
    "TASK_LABELS",
    "RankerFit",
    "TwoTowerFit",
    "finetune_ranker",
    "fit_ranker",
    "fit_two_tower",
    "model_feature_set_version",
    "ranker_outputs",
    "recall_at_k",
    "train_ranker",
    "train_two_tower",
]
