"""Input checks and array preparation shared by the trainers (``fyp_core.train``).

Every check runs before any training step, so a bad training set fails fast with a message that
names the argument and says what would be right.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import numpy as np

#: ranker task name -> the engagement label (``features.training_set`` column) that trains it
TASK_LABELS = {
    "finish": "completed",
    "like": "liked",
    "share": "shared",
    "follow": "followed",
    "watch_seconds": "watched_seconds",
}
SCHEMA_TAG = "fs="


def table_feature_set_version(table: Any) -> str:
    """The ``fyp.feature_set_version`` schema metadata of a training set ('' if absent)."""
    meta = table.schema.metadata or {}
    return meta.get(b"fyp.feature_set_version", b"").decode()


def table_feature_names(table: Any) -> list[str]:
    """The feature column names stored in a training set's schema metadata (a JSON list, the
    same encoding as the served log's)."""
    meta = table.schema.metadata or {}
    raw = meta.get(b"fyp.feature_names")
    return [str(n) for n in json.loads(raw)] if raw else []


def check_version(table: Any, feature_set_version: Optional[str], what: str) -> str:
    """Refuses a training set whose feature-set version differs from the serving one."""
    have = table_feature_set_version(table)
    if not have:
        raise ValueError(
            f"{what} has no fyp.feature_set_version metadata: build it with "
            "fyp_core.features.training_set"
        )
    if feature_set_version is not None and have != feature_set_version:
        raise ValueError(
            f"{what} was built with feature set {have!r}, the serving feature set is "
            f"{feature_set_version!r}: rebuild the training set with the serving code"
        )
    return have


def feature_matrix(table: Any, what: str) -> np.ndarray:
    """The ``features`` column as float32 (n, d), refusing empty sets and non-finite values."""
    from fyp_core.features import features_matrix

    if table.num_rows == 0:
        raise ValueError(f"{what} is empty: no served rows to learn from")
    x = features_matrix(table)
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = (int(v[0]) for v in np.nonzero(bad))
        names = table_feature_names(table)
        col = names[c] if c < len(names) else str(c)
        raise ValueError(
            f"{what} features must be finite: row {r}, column {c} ({col}) is {x[r, c]}"
        )
    return x


def labels(
    table: Any, tasks: list[str], what: str, *, allow_single_class: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Label matrix (n, tasks) float32 and a mask of tasks that have a label in the log.

    Binary tasks must have both classes; a task without a label column in the engagement log
    (e.g. "comment") is not trained and outputs a constant prior. ``allow_single_class`` (the
    fine-tuner: a chunk of a few hundred rows may hold no share, and no share is information
    for a model that already has a prior): a single-class binary task is trained, not refused.
    """
    n = table.num_rows
    y = np.zeros((n, len(tasks)), dtype=np.float32)
    has = np.zeros(len(tasks), dtype=bool)
    for j, t in enumerate(tasks):
        col = TASK_LABELS.get(t)
        if col is None:
            continue
        if col not in table.column_names:
            raise ValueError(f"{what} has no label column {col!r} for task {t!r}")
        v = np.asarray(table.column(col).to_numpy(zero_copy_only=False), dtype=np.float32)
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{what} label {col!r} must be finite")
        if col != "watched_seconds":
            pos = int(v.sum())
            if (pos == 0 or pos == n) and not allow_single_class:
                raise ValueError(
                    f"{what} label {col!r} (task {t!r}) is single-class ({pos} of {n} "
                    "positive): collect more traffic before training"
                )
        y[:, j] = v
        has[j] = True
    if not has.any():
        raise ValueError(f"no task in {tasks} has a label; known: {sorted(TASK_LABELS)}")
    return y, has


def time_split(table: Any, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training and hold-out parts: the hold-out is the last ``holdout``
    share of rows by ``ts`` (time-based, so the model is judged on the future)."""
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    ts = np.asarray(table.column("ts").cast("int64").to_numpy(zero_copy_only=False))
    order = np.argsort(ts, kind="stable")
    n_hold = max(1, int(round(holdout * len(order))))
    if n_hold >= len(order):
        raise ValueError(f"{len(order)} rows are too few for a hold-out of {holdout}")
    return np.sort(order[:-n_hold]), np.sort(order[-n_hold:])


def standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and scale (constant columns get scale 1)."""
    mu = x.mean(axis=0, dtype=np.float64)
    sd = x.std(axis=0, dtype=np.float64)
    sd = np.where(sd > 1e-6, sd, 1.0)
    return mu.astype(np.float32), sd.astype(np.float32)


def fold_standardisation(
    w0: np.ndarray, b0: np.ndarray, mu: np.ndarray, sd: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """First layer over raw inputs equal to ``((x - mu) / sd) @ w0 + b0``."""
    w = (w0.astype(np.float64) / sd[:, None]).astype(np.float32)
    b = (b0.astype(np.float64) - (mu / sd).astype(np.float64) @ w0.astype(np.float64)).astype(
        np.float32
    )
    return w, b


def input_schema(names: list[str], feature_set_version: str) -> list[tuple[str, int]]:
    """The model file's input schema: user and item blocks, tagged with the feature set."""
    user_w = sum(1 for n in names if n.startswith("u_"))
    tag = f"{SCHEMA_TAG}{feature_set_version}"
    if 0 < user_w < len(names):
        return [(f"user/{tag}", user_w), (f"item/{tag}", len(names) - user_w)]
    return [(f"input/{tag}", len(names))]


def model_feature_set_version(model: Any) -> Optional[str]:
    """The feature-set version a trained model file was exported for (None if untagged)."""
    for name, _ in model.input_schema:
        if SCHEMA_TAG in name:
            return str(name.split(SCHEMA_TAG, 1)[1])
    return None
