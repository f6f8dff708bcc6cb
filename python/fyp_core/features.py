"""The feature store's offline half: the registry, point-in-time training sets replayed through
the serving feature definitions, the served-feature log, and the parity report.

One code path: ``training_set`` replays the pipeline's feature changelog (the ``feature_events``
table of the event log) through the *same* Rust functions that ``FeedPipeline.feed`` calls
(``rust/core/src/serve/features.rs``), starting from the catalogue the pipeline started from.
Each row is the feature vector of one served item exactly as it was (or would have been) served
at that instant, joined with its engagement labels. See docs/feature_store.md.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fyp_core import _core
from fyp_core.analytics.duck import LABEL_COLUMNS
from fyp_core.parity import ParityReport, ParityThresholds, parity_report

__all__ = [
    "registry",
    "feature_names",
    "feature_set_version",
    "categorical_features",
    "training_set",
    "served_features",
    "features_matrix",
    "parity_report",
    "ParityReport",
    "ParityThresholds",
]

#: the label columns, as the analytics define them (the ``outcomes`` view)
LABELS = LABEL_COLUMNS


def registry() -> list[dict[str, Any]]:
    """Every feature spec: name, tier (request, real_time, near_real_time, batch), version,
    per_dim (a block of embedding width), categorical, doc."""
    return list(_core.feature_registry())


def feature_names(dim: int) -> list[str]:
    """Column names of a served feature vector for embedding dim ``dim`` (user block first)."""
    return [c[0] for c in _core.feature_columns(dim)]


def feature_set_version(dim: int) -> str:
    """The version logged with every served vector (a hash of the registry and ``dim``)."""
    return str(_core.feature_set_version(dim))


def categorical_features(dim: int) -> list[str]:
    """Columns the parity report should compare as categorical (flags)."""
    return [c[0] for c in _core.feature_columns(dim) if c[3]]


def _files(logdir: str | os.PathLike[str], table: str) -> list[str]:
    return sorted(glob.glob(os.path.join(os.fspath(logdir), table, "*", "*", "*.parquet")))


def _catalogue(catalogue: Any) -> Any:
    if isinstance(catalogue, (str, os.PathLike)):
        from fyp_core.catalog import load_catalogue

        return load_catalogue(catalogue)
    return catalogue


_BATCH_KEYS = ("user_ids", "user_embeddings", "creator_ids", "creator_authority")


def _batch_snapshot(version: str, obj: Any) -> dict[str, Any]:
    """A batch snapshot for the replay: a catalogue (directory or object) or a mapping with
    any of ``user_ids``, ``user_embeddings``, ``creator_ids``, ``creator_authority``."""
    src = obj if isinstance(obj, Mapping) else _catalogue(obj)
    get = src.get if isinstance(src, Mapping) else (lambda k: getattr(src, k, None))
    out: dict[str, Any] = {"version": str(version)}
    for k in _BATCH_KEYS:
        v = get(k)
        out[k] = None if v is None or len(v) == 0 else v
    return out


def _replay(
    files: list[str],
    cat: Any,
    user_token_key: bytes,
    *,
    history_len: int,
    counter_windows: tuple[float, float],
    request_ids: Sequence[str] | None,
    batches: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Replay the feature changelog ``files`` from the catalogue ``cat`` in the core; returns its
    columns (``features``, ``position``, ``request_id``, ...) and replay counts."""

    def opt(name: str) -> Any:
        v = getattr(cat, name, None)
        return None if v is None or len(v) == 0 else v

    return _core.replay_features(
        files,
        user_token_key,
        cat.item_ids,
        cat.item_embeddings,
        cat.topics,
        cat.creators,
        categories=getattr(cat, "categories", None),
        upload_ts=getattr(cat, "upload_ts", None),
        user_ids=opt("user_ids"),
        user_embeddings=opt("user_embeddings"),
        creator_ids=opt("creator_ids"),
        creator_authority=opt("creator_authority"),
        history_len=history_len,
        counter_windows=counter_windows,
        request_ids=None if request_ids is None else list(request_ids),
        batches=[_batch_snapshot(v, b) for v, b in (batches or {}).items()],
    )


def _replayed_rows(out: dict[str, Any]) -> pa.Table:
    """The replay's rows as a table: ids, ``ts``, ``position`` and ``features`` (list<float32>)."""
    feats = out["features"]
    n, width = feats.shape
    positions = out["position"].astype(np.int32)
    request_ids = pa.array(out["request_id"], pa.string())
    # the pipeline's impression id, derived in the core (one definition, serve::pipeline)
    impression_ids = pa.array(out["impression_id"], pa.string())
    flat = pa.array(feats.reshape(-1), type=pa.float32())
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.table(
        {
            "request_id": request_ids,
            "ts": pa.array(out["ts_us"], pa.timestamp("us", tz="UTC")),
            "user_token": pa.array(out["user_token"], pa.string()),
            "item_id": pa.array(out["item_id"], pa.uint64()),
            "position": pa.array(positions, pa.int32()),
            "impression_id": impression_ids,
            "features": pa.ListArray.from_arrays(offsets, flat),
        }
    )


def _replay_metadata(out: dict[str, Any]) -> dict[str, str]:
    """The training set's schema metadata: feature names and set version, replay counts."""
    return {
        # one encoding with the served log (the event log writes a JSON list)
        "fyp.feature_names": json.dumps(list(out["feature_names"])),
        "fyp.feature_set_version": out["feature_set_version"],
        "fyp.missing_items": str(out["missing_items"]),
        "fyp.events": str(out["n_events"]),
    }


def training_set(
    logdir: str | os.PathLike[str],
    catalogue: Any,
    *,
    user_token_key: bytes,
    history_len: int = 50,
    counter_windows: tuple[float, float] = (3600.0, 86400.0),
    request_ids: Sequence[str] | None = None,
    labels: bool = True,
    batches: Mapping[str, Any] | None = None,
    window_hours: float = 24.0,
) -> pa.Table:
    """Point-in-time training rows replayed from the event log at ``logdir``.

    ``catalogue``: the batch state the serving pipeline started from — a catalogue directory
    (``fyp_core.catalog``) or an object with the same attributes (``item_ids``,
    ``item_embeddings``, ``topics``, ``creators``, ``categories``, ``upload_ts``, optional
    ``user_ids``/``user_embeddings``, ``creator_ids``/``creator_authority``). ``user_token_key``
    is the pipeline's HMAC key (the log holds tokens, the catalogue user ids). ``history_len``
    and ``counter_windows`` must be the pipeline's. ``request_ids`` limits the rows emitted (the
    whole log is still replayed, since every event changes the state).
    ``batches`` maps a batch snapshot's version to its data (a catalogue, or a mapping with
    ``user_ids``/``user_embeddings``/``creator_ids``/``creator_authority``): the snapshots the
    pipeline switched to while serving (``FeedPipeline.load_batch``); the changelog names each
    by version and checksum, and the replay refuses a missing or different one.
    ``window_hours``: the label attribution window, the analytics' rule and default (an
    engagement counts when it arrives within this many hours of its impression).

    Returns one row per served item of every logged request: ``request_id``, ``ts``,
    ``user_token``, ``item_id``, ``position``, ``impression_id``, ``features`` (list<float32>,
    names in the schema metadata ``fyp.feature_names``, a JSON list as in the served log) and,
    with ``labels``, the engagement labels ``completed, liked, shared, followed`` (bool) and
    ``watched_seconds``.
    """
    if not (np.isfinite(window_hours) and window_hours > 0):
        raise ValueError(f"window_hours must be a positive number of hours, got {window_hours}")
    files = _files(logdir, "feature_events")
    if not files:
        raise FileNotFoundError(
            f"no feature_events files under {os.fspath(logdir)!r}: attach an EventLog to the "
            "FeedPipeline (it writes the feature changelog) and flush or close it first"
        )
    out = _replay(
        files,
        _catalogue(catalogue),
        user_token_key,
        history_len=history_len,
        counter_windows=counter_windows,
        request_ids=request_ids,
        batches=batches,
    )
    table = _replayed_rows(out)
    if labels:
        table = _join_labels(table, logdir, window_hours)
    return table.replace_schema_metadata(_replay_metadata(out))


def _join_labels(table: pa.Table, logdir: str | os.PathLike[str], window_hours: float) -> pa.Table:
    """Engagement labels with the analytics' attribution rule, computed by the analytics' own SQL
    (the ``eng``/``outcomes`` views of ``analytics/queries/views.sql``, through
    ``analytics.duck.outcome_labels``) over the training set's impressions: a flag counts when
    its first engagement row arrives within ``window_hours`` of the impression,
    ``watched_seconds`` sums the impression's rows when its first row is within the window."""
    from fyp_core.analytics.duck import outcome_labels

    labels = outcome_labels(table, os.fspath(logdir), window_hours)
    for k in LABELS:
        table = table.append_column(k, labels.column(k))
    return table


def served_features(logdir: str | os.PathLike[str]) -> pa.Table:
    """The ``served_features`` log (sampled): request_id, ts, item_id, features, version."""
    files = _files(logdir, "served_features")
    if not files:
        raise FileNotFoundError(f"no served_features files under {os.fspath(logdir)!r}")
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def features_matrix(table: pa.Table, column: str = "features") -> np.ndarray:
    """The ``features`` list column of a training or served table as an (n, width) float32
    matrix (rows must all have the same width)."""
    col = table.column(column).combine_chunks()
    n = len(col)
    if n == 0:
        return np.zeros((0, 0), dtype=np.float32)
    values = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if values.size % n:
        raise ValueError(f"{column} rows have different widths; select one feature_set_version")
    return values.reshape(n, values.size // n)
