"""Reading a catalogue directory: manifest, tables and memory-mapped embeddings, each validated,
and a read that is retried when the directory is replaced under it."""

from __future__ import annotations

import json
import math
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any, Optional

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
    PathLike,
)
from fyp_core.catalog._model import Catalogue, _assemble
from fyp_core.catalog._validate import (
    _as_float32_exact,
    _as_float64,
    _as_int32,
    _as_uint64,
    _check_finite,
    _user_list,
)

# np.load parses the .npy header with ast.literal_eval, and CPython 3.11 (< 3.11.9) can raise
# "SystemError: AST constructor recursion depth mismatch" when threads build ASTs at once
# (gh-106905). Loads are rare and the header parse is microseconds: serialise it.
_NPY_LOCK = threading.Lock()
_READ_ATTEMPTS = 8  # back-off totals 0.36 s: replacing a catalogue is a rare, quick event


def load_catalogue(path: PathLike, mmap: bool = True, check_finite: bool = True) -> Catalogue:
    """Reads and validates a catalogue directory.

    Embeddings are memory-mapped read-only when ``mmap`` (and already float32, C order), so a
    large catalogue opens without reading the matrix; ``check_finite`` still scans it once for
    NaN/Inf in bounded chunks. Raises FileNotFoundError for a missing directory or file and
    ValueError for anything malformed, with a message that says what to fix.

    A catalogue replaced (``Catalogue.save(path, overwrite=True)``) while it is being read is
    detected by the directory's identity changing, and read again: the result is always one
    whole catalogue, never files from two.
    """
    root = Path(path)
    for attempt in range(_READ_ATTEMPTS):
        before = _dir_identity(root)
        if before is None:
            what = "is not a directory" if root.exists() else "does not exist"
            err: Exception = FileNotFoundError(f"catalogue directory {str(root)!r} {what}")
            if not _replacing(root):
                raise err
        else:
            try:
                cat = _load_once(root, mmap, check_finite)
            except (ValueError, FileNotFoundError) as e:
                err = e
            else:
                if _dir_identity(root) == before:
                    return cat
                err = ValueError(f"{root} was replaced while being read, {_READ_ATTEMPTS} times")
            if _dir_identity(root) == before and not _replacing(root):  # stable: a real error
                raise err
        time.sleep(0.01 * (attempt + 1))  # a replace in progress: its rename is imminent
    raise err


def _dir_identity(root: Path) -> Optional[tuple[int, int]]:
    try:
        st = os.stat(root)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _replacing(root: Path) -> bool:
    """True while ``_write`` is swapping a catalogue at `root` (its old copy is set aside)."""
    try:
        return any(root.parent.glob(f".{root.name}.old-*"))
    except OSError:
        return False


def _load_once(root: Path, mmap: bool, check_finite: bool) -> Catalogue:
    where = f" in {root}"
    manifest = _read_manifest(root)
    dim = manifest["dim"]
    cols = _read_items(root / ITEMS, manifest["n_items"])
    emb = _read_npy(root / ITEM_EMB, mmap, dim, manifest["n_items"], "item", check_finite)
    users: list[str] = []
    uemb = None
    has_u, has_ue = (root / USERS).exists(), (root / USER_EMB).exists()
    if has_u != has_ue:
        missing, present = (USER_EMB, USERS) if has_u else (USERS, USER_EMB)
        raise FileNotFoundError(
            f"{present} is present but {missing} is missing{where}: user embeddings need both "
            f"files (or neither, with n_users = 0 in the manifest)"
        )
    if has_u:
        users = _read_users(root / USERS, manifest["n_users"])
        uemb = _read_npy(root / USER_EMB, mmap, dim, manifest["n_users"], "user", check_finite)
    elif manifest["n_users"] != 0:
        raise FileNotFoundError(
            f"manifest says n_users = {manifest['n_users']} but {USERS} and {USER_EMB} are "
            f"missing{where}: add them or set n_users to 0"
        )
    cids = auth = None
    if (root / CREATORS).exists():
        cids, auth = _read_creators(root / CREATORS)
    return _assemble(manifest, cols, emb, users, uemb, cids, auth, str(root), where)


def _read_manifest(root: Path) -> dict[str, Any]:
    p = root / MANIFEST
    if not p.is_file():
        raise FileNotFoundError(
            f"{p} is missing: a catalogue directory needs a {MANIFEST} (see docs/catalogue.md)"
        )
    try:
        m = json.loads(p.read_bytes())
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{p} is not valid JSON ({e}); rewrite it") from None
    if not isinstance(m, dict):
        raise ValueError(f"{p} must hold a JSON object, got {type(m).__name__}")
    if m.get("format") != FORMAT:
        raise ValueError(
            f"{p}: 'format' is {m.get('format')!r}, expected {FORMAT!r}: not a fyp_core catalogue"
        )
    v = m.get("version")
    if v != VERSION or isinstance(v, bool):
        raise ValueError(
            f"{p}: unknown catalogue format version {v!r}; this fyp_core reads version {VERSION} "
            f"(upgrade fyp_core, or re-export the catalogue as version {VERSION})"
        )

    def integer(key: str, lo: int) -> int:
        x = m.get(key)
        if isinstance(x, bool) or not isinstance(x, int) or x < lo:
            raise ValueError(f"{p}: {key!r} must be an integer >= {lo}, got {x!r}")
        return x

    integer("dim", 1)
    integer("n_items", 0)
    integer("n_users", 0)
    a = m.get("as_of")
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a):
        raise ValueError(f"{p}: 'as_of' must be finite seconds since epoch, got {a!r}")
    if "created_by" in m and not isinstance(m["created_by"], str):
        raise ValueError(f"{p}: 'created_by' must be a string, got {m['created_by']!r}")
    return m


def _read_table(p: Path, what: str) -> pa.Table:
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing: {what}")
    try:
        return pq.read_table(p, memory_map=True)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise ValueError(f"{p} is not a readable Parquet file ({e}); rewrite it") from None


def _column(t: pa.Table, p: Path, name: str, required: bool = True) -> Optional[np.ndarray]:
    if name not in t.column_names:
        if not required:
            return None
        raise ValueError(
            f"{p} has no column {name!r} (columns: {t.column_names}); add it, see docs/catalogue.md"
        )
    col = t.column(name)
    if col.null_count:
        raise ValueError(f"{p}: column {name!r} has {col.null_count} null(s); fill them")
    typ = col.type
    if pa.types.is_timestamp(typ):  # pandas datetime64: convert to seconds, exactly
        unit = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[typ.unit]
        return col.cast(pa.int64()).to_numpy() / unit
    if pa.types.is_dictionary(typ):
        col = col.cast(typ.value_type)
        typ = typ.value_type
    if not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
        raise ValueError(f"{p}: column {name!r} is {typ}, expected a number (docs/catalogue.md)")
    return col.to_numpy()


def _prefix(p: Path, e: ValueError) -> ValueError:
    return ValueError(f"{p}: {e}")


def _read_items(p: Path, n_items: int) -> dict[str, np.ndarray]:
    t = _read_table(p, "a catalogue needs its item table")
    if t.num_rows != n_items:
        raise ValueError(
            f"{p} has {t.num_rows} rows but the manifest says n_items = {n_items}: "
            f"fix n_items or the table"
        )
    try:
        cat = _column(t, p, "category", required=False)
        cols = {
            "item_id": _as_uint64(_column(t, p, "item_id"), "item_id"),
            "topic": _as_int32(_column(t, p, "topic"), "topic"),
            "creator_id": _as_uint64(_column(t, p, "creator_id"), "creator_id"),
            "category": (
                np.zeros(n_items, dtype=np.int32) if cat is None else _as_int32(cat, "category")
            ),
            "upload_ts": _as_float64(_column(t, p, "upload_ts"), "upload_ts"),
        }
    except ValueError as e:
        raise _prefix(p, e) from None
    return cols


def _read_users(p: Path, n_users: int) -> list[str]:
    t = _read_table(p, "user embeddings need their user table")
    if t.num_rows != n_users:
        raise ValueError(
            f"{p} has {t.num_rows} rows but the manifest says n_users = {n_users}: "
            f"fix n_users or the table"
        )
    if "user_id" not in t.column_names:
        raise ValueError(f"{p} has no column 'user_id' (columns: {t.column_names}); add it")
    col = t.column("user_id")
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise ValueError(f"{p}: column 'user_id' is {col.type}, expected string")
    if col.null_count:
        raise ValueError(f"{p}: column 'user_id' has {col.null_count} null(s); fill them")
    try:
        return _user_list(col.to_pylist(), "user_id")
    except ValueError as e:
        raise _prefix(p, e) from None


def _read_creators(p: Path) -> tuple[np.ndarray, np.ndarray]:
    t = _read_table(p, "")
    try:
        cids = _as_uint64(_column(t, p, "creator_id"), "creator_id")
        auth = _as_float32_exact(_column(t, p, "authority"), "authority")
        _check_finite(auth, "authority")
    except ValueError as e:
        raise _prefix(p, e) from None
    return cids, auth


def _read_npy(
    p: Path, mmap: bool, dim: int, rows: int, what: str, check_finite: bool
) -> np.ndarray:
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing: the {what} embeddings, float32 ({rows}, {dim})")
    try:
        with _NPY_LOCK:
            a = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError, TypeError) as e:
        raise ValueError(f"{p} is not a readable .npy file ({e}); rewrite it (np.save)") from None
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{p} must hold one array (np.save), not an archive")
    if a.ndim != 2:
        raise ValueError(f"{p} has shape {a.shape}, expected 2-D ({rows}, {dim})")
    if a.shape[1] != dim:
        raise ValueError(
            f"{p} has {a.shape[1]} columns but the manifest says dim = {dim}: they must agree"
        )
    if a.shape[0] != rows:
        table = ITEMS if what == "item" else USERS
        raise ValueError(
            f"{p} has {a.shape[0]} rows but {table} has {rows}: row i of the matrix must be "
            f"row i of the table"
        )
    try:
        a = _as_float32_exact(a, p.name)
    except ValueError as e:
        raise _prefix(p, e) from None
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)
    if check_finite:
        try:
            _check_finite(a, p.name)
        except ValueError as e:
            raise _prefix(p, e) from None
    return a
