"""The catalogue in memory: a validated, row-aligned snapshot (``Catalogue``) and the cross-checks
every way of building one goes through."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from fyp_core.catalog._format import FORMAT, VERSION, PathLike
from fyp_core.catalog._validate import (
    _as_float64,
    _as_int32,
    _as_uint64,
    _creators_in_memory,
    _embeddings,
    _item_count,
    _unique,
    _users_in_memory,
)


@dataclass(frozen=True)
class Catalogue:
    """A validated catalogue snapshot; arrays are row-aligned per item / user / creator.

    ``item_embeddings`` (and ``user_embeddings``) may be read-only memory maps of the ``.npy``
    files: slice them, do not write to them.
    """

    dim: int
    as_of: float  # seconds since epoch: when the batch snapshot was taken
    item_ids: np.ndarray  # uint64 (n_items,), unique
    item_embeddings: np.ndarray  # float32 (n_items, dim), finite
    topics: np.ndarray  # int32 (n_items,), >= 0
    creators: np.ndarray  # uint64 (n_items,)
    categories: np.ndarray  # int32 (n_items,), >= 0 (0 = none)
    upload_ts: np.ndarray  # float64 (n_items,), finite seconds since epoch
    user_ids: list[str] = field(default_factory=list)  # unique, non-empty
    user_embeddings: Optional[np.ndarray] = None  # float32 (n_users, dim) or None
    creator_ids: Optional[np.ndarray] = None  # uint64 (n_creators,), unique, or None
    creator_authority: Optional[np.ndarray] = None  # float32 (n_creators,), finite, or None
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Optional[str] = None  # the directory it was loaded from (None if built in memory)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_creators(self) -> int:
        return 0 if self.creator_ids is None else len(self.creator_ids)

    @classmethod
    def from_arrays(
        cls,
        item_ids: Any,
        item_embeddings: Any,
        topics: Any,
        creators: Any,
        upload_ts: Any,
        categories: Any = None,
        user_ids: Optional[Sequence[str]] = None,
        user_embeddings: Any = None,
        creator_ids: Any = None,
        creator_authority: Any = None,
        as_of: Optional[float] = None,
        created_by: str = "fyp_core",
    ) -> Catalogue:
        """Validates and normalises in-memory arrays (the same checks as ``load_catalogue``)."""
        emb = _embeddings(item_embeddings, "item_embeddings", None)
        dim = int(emb.shape[1])
        n = _item_count(item_ids)
        cols = {
            "item_id": _as_uint64(item_ids, "item_ids"),
            "topic": _as_int32(topics, "topics"),
            "creator_id": _as_uint64(creators, "creators"),
            "category": (
                np.zeros(n, dtype=np.int32)
                if categories is None
                else _as_int32(categories, "categories")
            ),
            "upload_ts": _as_float64(upload_ts, "upload_ts"),
        }
        users, uemb = _users_in_memory(user_ids, user_embeddings, dim)
        cids, auth = _creators_in_memory(creator_ids, creator_authority)
        as_of = time.time() if as_of is None else as_of
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "dim": dim,
            "n_items": n,
            "n_users": len(users),
            "as_of": as_of,
            "created_by": created_by,
        }
        return _assemble(manifest, cols, emb, users, uemb, cids, auth, None, where="")

    @classmethod
    def from_world(cls, world: Any, creator_authority: bool = True) -> Catalogue:
        """The synthetic world (``fyp_core.synth.World``) as a catalogue, without copying the
        item arrays. Users without a long-term embedding (cold start) are left out; creator
        authority, if asked for, is a synthetic score: the logistic of the creator's mean item
        quality (the world's ground truth), for creators with at least one item."""
        users = np.flatnonzero(world.user_has_long_term)
        cids = auth = None
        if creator_authority and world.n_items:
            cids, inv = np.unique(world.item_creator, return_inverse=True)
            mean_q = np.bincount(inv, weights=world.item_quality) / np.bincount(inv)
            auth = (1.0 / (1.0 + np.exp(-2.0 * mean_q))).astype(np.float32)
        return cls.from_arrays(
            world.item_ids,
            world.item_emb,
            world.item_topic,
            world.item_creator,
            world.item_upload_ts,
            categories=world.item_category,
            user_ids=[world.user_ids[u] for u in users],
            user_embeddings=world.user_long_term[users],
            creator_ids=cids,
            creator_authority=auth,
            as_of=float(world.now),
            created_by=f"fyp_core.synth seed={world.seed}",
        )

    def save(self, path: PathLike, overwrite: bool = False) -> Path:
        """Writes this catalogue as a version-1 directory at ``path`` and returns the path.

        Atomic: everything goes to a temporary directory next to ``path``, each file is fsynced,
        then the directory is renamed into place, so a reader sees the old catalogue or the new
        one, never half of one. An existing ``path`` raises FileExistsError unless
        ``overwrite=True`` (and even then only an empty directory or a catalogue is replaced).
        """
        from fyp_core.catalog._write import write_catalogue

        return write_catalogue(self, Path(path), overwrite)


def _assemble(
    manifest: dict[str, Any],
    cols: dict[str, np.ndarray],
    emb: np.ndarray,
    users: list[str],
    uemb: Optional[np.ndarray],
    cids: Optional[np.ndarray],
    auth: Optional[np.ndarray],
    path: Optional[str],
    where: str,
) -> Catalogue:
    """Cross-checks (row counts, uniqueness) shared by the in-memory and the on-disk paths."""
    n = len(cols["item_id"])
    for name, a in cols.items():
        if len(a) != n:
            raise ValueError(f"{name} has {len(a)} rows, item_id has {n}{where}: one per item")
    if emb.shape[0] != n:
        raise ValueError(
            f"item embeddings have {emb.shape[0]} rows but there are {n} items{where}: "
            f"row i of the matrix must be item i"
        )
    _unique(cols["item_id"], "item_id", where)
    if uemb is not None:
        if uemb.shape[0] != len(users):
            raise ValueError(
                f"user embeddings have {uemb.shape[0]} rows but there are {len(users)} "
                f"users{where}: row i of the matrix must be user i"
            )
        seen: set[str] = set()
        for u in users:
            if u in seen:
                raise ValueError(f"user_id has duplicates{where}, e.g. {u!r}: ids must be unique")
            seen.add(u)
    if cids is not None and auth is not None:
        if len(cids) != len(auth):
            raise ValueError(
                f"creator_authority has {len(auth)} rows, creator_id has {len(cids)}{where}"
            )
        _unique(cids, "creator_id", where)
    return Catalogue(
        dim=int(manifest["dim"]),
        as_of=float(manifest["as_of"]),
        item_ids=cols["item_id"],
        item_embeddings=emb,
        topics=cols["topic"],
        creators=cols["creator_id"],
        categories=cols["category"],
        upload_ts=cols["upload_ts"],
        user_ids=users,
        user_embeddings=uemb,
        creator_ids=cids,
        creator_authority=auth,
        manifest=dict(manifest),
        path=path,
    )
