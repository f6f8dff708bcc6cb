"""Writing a catalogue directory atomically: a temporary directory next to the target, every file
fsynced, then renamed into place (an old catalogue is set aside first and removed after)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fyp_core.catalog._format import (
    CREATORS,
    FORMAT,
    ITEM_EMB,
    ITEMS,
    MANIFEST,
    USER_EMB,
    USERS,
    VERSION,
)

if TYPE_CHECKING:
    from fyp_core.catalog._model import Catalogue


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # not every platform can open a directory (Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_npy(p: Path, a: np.ndarray) -> None:
    with open(p, "wb") as f:
        np.save(f, np.ascontiguousarray(a, dtype=np.float32), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _write_parquet(p: Path, t: pa.Table) -> None:
    with open(p, "wb") as f:
        pq.write_table(t, f, compression="zstd")
        f.flush()
        os.fsync(f.fileno())


def write_catalogue(cat: Catalogue, path: Path, overwrite: bool) -> Path:
    """Writes ``cat`` as a version-1 directory at ``path`` (see ``Catalogue.save``)."""
    path = path.absolute()
    if path.exists():
        if not overwrite:
            raise FileExistsError(
                f"{path} already exists: pass overwrite=True (CLI: --overwrite) to replace it, "
                f"or pick a new path"
            )
        if not path.is_dir() or (any(path.iterdir()) and not (path / MANIFEST).exists()):
            raise FileExistsError(
                f"{path} exists and is not a catalogue (no {MANIFEST}): refusing to replace it"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        items = pa.table(
            {
                "item_id": pa.array(cat.item_ids, pa.uint64()),
                "topic": pa.array(cat.topics, pa.int32()),
                "creator_id": pa.array(cat.creators, pa.uint64()),
                "category": pa.array(cat.categories, pa.int32()),
                "upload_ts": pa.array(cat.upload_ts, pa.float64()),
            }
        )
        _write_parquet(tmp / ITEMS, items)
        _write_npy(tmp / ITEM_EMB, cat.item_embeddings)
        if cat.user_embeddings is not None:
            _write_parquet(tmp / USERS, pa.table({"user_id": pa.array(cat.user_ids, pa.string())}))
            _write_npy(tmp / USER_EMB, cat.user_embeddings)
        if cat.creator_ids is not None and cat.creator_authority is not None:
            creators = pa.table(
                {
                    "creator_id": pa.array(cat.creator_ids, pa.uint64()),
                    "authority": pa.array(cat.creator_authority, pa.float32()),
                }
            )
            _write_parquet(tmp / CREATORS, creators)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "dim": cat.dim,
            "n_items": cat.n_items,
            "n_users": cat.n_users,
            "as_of": float(cat.as_of),
            "created_by": str(cat.manifest.get("created_by", "fyp_core")),
        }
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a catalogue is meant to be shared
        _fsync_dir(tmp)
        old = None
        if path.exists():  # overwrite: move the old one aside, then swap in the new one
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.rename(path, old / "c")
        os.rename(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
