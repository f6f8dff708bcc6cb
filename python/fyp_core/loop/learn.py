"""The loop's learning steps: train tomorrow's candidate ranker on recent days of log, check its
training set's parity against the served log, and refresh the batch tier's long-term user
vectors from the user tower's offline pass (never from the simulator's true tastes)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fyp_core import features as fs
from fyp_core.loop.config import LoopConfig
from fyp_core.synth import DAY, TASKS
from fyp_core.train._data import table_feature_names

__all__ = [
    "BROKEN_FEATURE",
    "break_parity",
    "concat_days",
    "parity_flags",
    "train_candidate",
    "user_tower_pass",
]

#: --break parity trains this feature from the short window while serving uses the long one
BROKEN_FEATURE, BROKEN_SOURCE = "i_compl_rate_l", "i_compl_rate_s"


def concat_days(tables: list[Any]) -> Any:
    """Days of training rows as one table (the newest day's schema metadata)."""
    meta = tables[-1].schema.metadata
    return pa.concat_tables([t.replace_schema_metadata(meta) for t in tables])


def break_parity(table: Any) -> Any:
    """The training set with ``BROKEN_FEATURE`` computed from the short window (a training
    pipeline bug: same name, different window than served)."""
    names = table_feature_names(table)
    x = fs.features_matrix(table).copy()
    x[:, names.index(BROKEN_FEATURE)] = x[:, names.index(BROKEN_SOURCE)]
    n, d = x.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    col = pa.ListArray.from_arrays(offsets, pa.array(x.reshape(-1), type=pa.float32()))
    i = table.column_names.index("features")
    return table.set_column(i, "features", col).replace_schema_metadata(table.schema.metadata)


def train_candidate(
    env: dict[str, Any], cfg: LoopConfig, day: int, tables: list[Any]
) -> dict[str, Any]:
    """Tomorrow's candidate, or the reason none could be trained (a ``ValueError`` of the
    trainer: wrong feature set, empty or single-class labels, NaN features)."""
    from fyp_core.train import fit_ranker

    version = f"loop-s{cfg.seed}-d{day}"
    try:
        fit = fit_ranker(
            concat_days(tables),
            feature_set_version=env["pipe"].feature_set_version,
            tasks=TASKS,
            hidden=cfg.hidden,
            epochs=cfg.epochs,
            version=version,
            seed=cfg.seed + day,
        )
    except ValueError as e:
        return {"version": version, "model": None, "error": str(e), "parity_flagged": []}
    return {
        "version": version,
        "model": fit.ranker,
        "error": None,
        "parity_flagged": [],
        "seconds": fit.seconds,
    }


def parity_flags(logdir: str, train: Any, day_table: Any) -> list[str]:
    """Features ``parity_report`` flags between a candidate's newest training rows and what
    was served for the same requests (the ``served_features`` log)."""
    from fyp_core.parity import parity_report, served_features_matrix

    served = fs.served_features(logdir)
    keep = pc.is_in(served.column("request_id"), value_set=day_table.column("request_id"))
    served = served.filter(keep)
    names = table_feature_names(train)
    dim = sum(1 for n in names if n.startswith("i_emb_"))
    rep = parity_report(
        (fs.features_matrix(train), names),
        served_features_matrix(served),
        categorical=fs.categorical_features(dim),
    )
    return list(rep.flagged)


def _long_term(
    env: dict[str, Any], cfg: LoopConfig, table: Any
) -> Optional[tuple[str, list[str], np.ndarray]]:
    """(batch version, user tokens, unit vectors) from the user tower's offline pass, or from
    the pooled logged history (``cfg.long_term``); None if the tower could not be trained."""
    from fyp_core.train.two_tower import fit_two_tower, pooled_history, user_vectors

    tag = f"s{cfg.seed}-d{env['day']}"  # one version per pass: the replay keys snapshots by it
    if cfg.long_term == "history":
        ts = np.asarray(table.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False))
        tok = np.asarray(table.column("user_token").to_pylist()).astype(str)
        newest_first = np.argsort(-ts, kind="stable")
        users, first = np.unique(tok[newest_first], return_index=True)
        vecs = pooled_history(table, point_in_time=False)[newest_first[first]]
        return f"history-{tag}", [str(u) for u in users], vecs
    try:
        fit = fit_two_tower(
            table,
            feature_set_version=env["pipe"].feature_set_version,
            item_tower="content",
            objective="pointwise",
            epochs=cfg.epochs,
            seed=cfg.seed,
            version=f"tt-{tag}",
        )
    except ValueError:
        return None
    env["user_tower"] = fit.user_tower
    return (fit.user_tower.version, *user_vectors(fit, table))


def user_tower_pass(
    env: dict[str, Any],
    cfg: LoopConfig,
    tables: list[Any],
    batch: tuple[list[str], Optional[np.ndarray]],
) -> tuple[list[str], Optional[np.ndarray]]:
    """Writes the batch tier's long-term vectors: the user tower's offline pass (its item side
    fixed to the content embedding, so it queries the serving index) over each recent user's
    latest state and pooled logged history. Users not seen recently keep their previous vector.
    Returns the new (user_ids, embeddings)."""
    out = _long_term(env, cfg, concat_days(tables))
    if out is None:
        return batch
    version, tokens, emb = out
    world = env["world"]
    ids = [world.user_ids[env["tokens"][t]] for t in tokens]
    merged = dict(zip(batch[0], batch[1])) if batch[1] is not None else {}
    merged.update(zip(ids, emb))
    users = sorted(merged)
    vecs = np.stack([merged[u] for u in users]).astype(np.float32)
    as_of = float(env["t0"] + len(env["tables"]) * DAY)
    env["pipe"].load_batch(version, as_of, user_ids=users, user_embeddings=vecs)
    # the changelog records the switch by version and checksum; the replay needs the snapshot
    env.setdefault("batches", {})[version] = {"user_ids": users, "user_embeddings": vecs}
    return users, vecs
