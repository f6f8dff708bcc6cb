"""The catalogue on disk: the batch tier's snapshot of items, long-term user embeddings and creator
authority (format version 1, ``docs/catalogue.md``), and how it is fed into a FeedPipeline.

``save_catalogue`` writes a directory atomically, ``load_catalogue`` validates one (embeddings
memory-mapped), ``apply_catalogue`` streams it into a pipeline in bounded chunks. The synthetic
world of the demo exports to the same format (``catalogue_from_world``), so ``fyp-core serve``
has one code path for both.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "Catalogue",
    "FORMAT",
    "VERSION",
    "apply_catalogue",
    "catalogue_from_world",
    "load_catalogue",
    "save_catalogue",
]

FORMAT = "fyp_core.catalogue"
VERSION = 1
MANIFEST = "manifest.json"
ITEMS = "items.parquet"
ITEM_EMB = "item_embeddings.npy"
USERS = "users.parquet"
USER_EMB = "user_embeddings.npy"
CREATORS = "creators.parquet"

# rows scanned at a time when checking embeddings for NaN/Inf (bounds memory on a mmap)
_SCAN_ROWS = 65_536
# np.load parses the .npy header with ast.literal_eval, and CPython 3.11 (< 3.11.9) can raise
# "SystemError: AST constructor recursion depth mismatch" when threads build ASTs at once
# (gh-106905). Loads are rare and the header parse is microseconds: serialise it.
_NPY_LOCK = threading.Lock()
_INT32_MAX = 2**31 - 1
_UINT64_MAX = 2**64 - 1

PathLike = Union[str, "os.PathLike[str]"]


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
        """Writes this catalogue as a version-1 directory (atomically, see ``save_catalogue``)."""
        return _write(self, Path(path), overwrite)


# ---------------------------------------------------------------- public functions


def save_catalogue(
    path: PathLike,
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
    overwrite: bool = False,
    created_by: str = "fyp_core",
) -> Path:
    """Validates the arrays and writes a version-1 catalogue directory at `path`.

    Atomic: everything goes to a temporary directory next to `path`, each file is fsynced, then
    the directory is renamed into place, so a reader sees the old catalogue or the new one, never
    half of one. An existing `path` raises FileExistsError unless ``overwrite=True`` (and even
    then only an empty directory or a catalogue is replaced). Returns the path.
    """
    cat = Catalogue.from_arrays(
        item_ids,
        item_embeddings,
        topics,
        creators,
        upload_ts,
        categories=categories,
        user_ids=user_ids,
        user_embeddings=user_embeddings,
        creator_ids=creator_ids,
        creator_authority=creator_authority,
        as_of=as_of,
        created_by=created_by,
    )
    return _write(cat, Path(path), overwrite)


def catalogue_from_world(
    world: Any, path: PathLike, overwrite: bool = False, creator_authority: bool = True
) -> Path:
    """Exports the synthetic world as a catalogue directory (see ``Catalogue.from_world``)."""
    return Catalogue.from_world(world, creator_authority=creator_authority).save(path, overwrite)


def load_catalogue(path: PathLike, mmap: bool = True, check_finite: bool = True) -> Catalogue:
    """Reads and validates a catalogue directory.

    Embeddings are memory-mapped read-only when ``mmap`` (and already float32, C order), so a
    large catalogue opens without reading the matrix; ``check_finite`` still scans it once for
    NaN/Inf in bounded chunks. Raises FileNotFoundError for a missing directory or file and
    ValueError for anything malformed, with a message that says what to fix.

    A catalogue replaced (``save_catalogue(..., overwrite=True)``) while it is being read is
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


_READ_ATTEMPTS = 8  # back-off totals 0.36 s: replacing a catalogue is a rare, quick event


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


def apply_catalogue(
    pipeline: Any,
    catalogue: Catalogue,
    index: bool = True,
    batch: int = 100_000,
    progress: Optional[Callable[[int], None]] = None,
) -> dict[str, int]:
    """Loads the catalogue into a FeedPipeline: items through ``load_items`` in chunks of
    `batch` rows (so a memory-mapped catalogue is paged through, never copied whole), the
    batch tier (long-term user embeddings and creator authority) through ``load_batch``, as
    one snapshot swapped atomically.

    Items are loaded in upload-time order (see the comment below; the catalogue itself is not
    changed). ``index=True`` also adds the items to the pipeline's HNSW index; pass False when
    the index was built beforehand (``fyp_core.demo.build_pipeline`` does, to show progress).
    Returns the counts applied: {"items", "users", "creators"}.
    `progress`, if given, is called with the number of items loaded so far after each chunk.
    """
    if batch <= 0:
        raise ValueError(f"batch must be > 0, got {batch}")
    c = catalogue
    # Items go in upload-time order: the pipeline's fresh-item tier inserts each upload by a scan
    # from its newest end, so time order makes a bulk load O(n) (1M shuffled items: 22 s, in time
    # order: 2.5 s). A catalogue already sorted by upload_ts is streamed as zero-copy slices.
    ts = c.upload_ts
    in_order = c.n_items < 2 or bool(np.all(ts[1:] >= ts[:-1]))
    order = None if in_order else np.argsort(ts, kind="stable")
    for s in range(0, c.n_items, batch):
        e = min(s + batch, c.n_items)
        rows: Any = slice(s, e) if order is None else order[s:e]
        pipeline.load_items(
            c.item_ids[rows],
            np.ascontiguousarray(c.item_embeddings[rows]),
            c.topics[rows],
            c.creators[rows],
            c.categories[rows],
            c.upload_ts[rows],
            index=index,
        )
        if progress is not None:
            progress(e)
    # the batch tier (long-term user embeddings, creator authority) is one snapshot, published
    # atomically: requests see the old one or the new one, never half of it
    has_users = c.user_embeddings is not None and c.n_users > 0
    has_creators = c.creator_ids is not None and c.n_creators > 0
    pipeline.load_batch(
        c.path or "in-memory",
        float(c.as_of),
        user_ids=list(c.user_ids) if has_users else None,
        user_embeddings=np.asarray(c.user_embeddings) if has_users else None,
        creator_ids=c.creator_ids if has_creators else None,
        creator_authority=c.creator_authority if has_creators else None,
    )
    creators = c.n_creators if has_creators else 0
    return {"items": c.n_items, "users": c.n_users, "creators": creators}


# ---------------------------------------------------------------- validation and conversion


def _item_count(item_ids: Any) -> int:
    a = np.asarray(item_ids)
    if a.ndim != 1:
        raise ValueError(f"item_ids must be 1-D, got shape {a.shape}")
    return len(a)


def _as_int(a: Any, name: str, lo: int, hi: int, dtype: type) -> np.ndarray:
    """Integer column to `dtype`, accepting any integer width whose values all fit [lo, hi]."""
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if len(arr) == 0:
        return np.zeros(0, dtype=dtype)
    if arr.dtype == dtype:
        out = arr
    elif arr.dtype.kind in "iu":
        out = None
    else:
        raise ValueError(
            f"{name} must be integers ({np.dtype(dtype).name}), got {arr.dtype}: converting "
            f"would lose information; store it as an integer column"
        )
    lo_v, hi_v = int(arr.min()), int(arr.max())
    if lo_v < lo or hi_v > hi:
        bad = lo_v if lo_v < lo else hi_v
        raise ValueError(
            f"{name} holds {bad}, outside [{lo}, {hi}] ({np.dtype(dtype).name}); fix the values"
        )
    return out if out is not None else arr.astype(dtype)


def _as_uint64(a: Any, name: str) -> np.ndarray:
    return _as_int(a, name, 0, _UINT64_MAX, np.uint64)


def _as_int32(a: Any, name: str) -> np.ndarray:
    return _as_int(a, name, 0, _INT32_MAX, np.int32)


def _as_float64(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind in "iuf" and arr.dtype.itemsize <= 8:
        out = arr.astype(np.float64, copy=False)
        if arr.dtype.kind in "iu" and len(arr) and np.abs(arr).max() > 2**53:
            raise ValueError(f"{name} holds integers beyond 2**53, not exact as float64 seconds")
    else:
        raise ValueError(f"{name} must be float64 seconds since epoch, got {arr.dtype}")
    if not np.all(np.isfinite(out)):
        row = int(np.flatnonzero(~np.isfinite(out))[0])
        raise ValueError(f"{name}[{row}] = {out[row]} is not finite: every value must be")
    return out


def _as_float32_exact(a: Any, name: str) -> np.ndarray:
    """float32, or a wider float whose values are exactly float32 (a lossy narrowing refused)."""
    arr = np.asarray(a)
    if arr.dtype == np.float32:
        return arr
    if arr.dtype.kind == "f" and arr.dtype.itemsize < 4:
        return arr.astype(np.float32)
    if arr.dtype.kind == "f":
        out = arr.astype(np.float32)
        with np.errstate(invalid="ignore"):
            same = (out.astype(arr.dtype) == arr) | (np.isnan(arr) & np.isnan(out))
        if not np.all(same):
            raise ValueError(
                f"{name} is {arr.dtype} and narrowing it to float32 would round values; "
                f"convert explicitly with .astype(np.float32)"
            )
        return out
    raise ValueError(f"{name} must be float32, got {arr.dtype}")


def _check_finite(a: np.ndarray, name: str) -> None:
    for s in range(0, len(a), _SCAN_ROWS):
        chunk = np.asarray(a[s : s + _SCAN_ROWS])
        ok = np.isfinite(chunk)
        if not ok.all():
            r, c = np.argwhere(~ok)[0] if chunk.ndim == 2 else (np.flatnonzero(~ok)[0], None)
            at = f"row {s + int(r)}" + ("" if c is None else f", column {int(c)}")
            raise ValueError(f"{name} has a NaN or Inf at {at}: every value must be finite")


def _embeddings(a: Any, name: str, dim: Optional[int]) -> np.ndarray:
    arr = _as_float32_exact(a, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x dim), got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has 0 columns: dim must be > 0")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} has {arr.shape[1]} columns, the items' dim is {dim}")
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    _check_finite(arr, name)
    return arr


def _unique(a: np.ndarray, name: str, where: str) -> None:
    if len(a) < 2:
        return
    s = np.sort(a, kind="stable")
    dup = np.flatnonzero(s[1:] == s[:-1])
    if len(dup):
        raise ValueError(
            f"{name} has {len(dup)} duplicate value(s){where}, e.g. {s[dup[0]]!r}: "
            f"ids must be unique"
        )


def _users_in_memory(
    user_ids: Optional[Sequence[str]], user_embeddings: Any, dim: int
) -> tuple[list[str], Optional[np.ndarray]]:
    if user_ids is None and user_embeddings is None:
        return [], None
    if user_ids is None or user_embeddings is None:
        raise ValueError("pass user_ids and user_embeddings together (or neither)")
    users = _user_list(list(user_ids), "user_ids")
    emb = _embeddings(user_embeddings, "user_embeddings", dim)
    return users, emb


def _user_list(users: list[Any], name: str) -> list[str]:
    for i, u in enumerate(users):
        if not isinstance(u, str) or not u:
            raise ValueError(f"{name}[{i}] = {u!r}: user ids must be non-empty strings")
    return users


def _creators_in_memory(
    creator_ids: Any, creator_authority: Any
) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    if creator_ids is None and creator_authority is None:
        return None, None
    if creator_ids is None or creator_authority is None:
        raise ValueError("pass creator_ids and creator_authority together (or neither)")
    cids = _as_uint64(creator_ids, "creator_ids")
    auth = _as_float32_exact(creator_authority, "creator_authority")
    if auth.ndim != 1:
        raise ValueError(f"creator_authority must be 1-D, got shape {auth.shape}")
    _check_finite(auth, "creator_authority")
    return cids, auth


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


# ---------------------------------------------------------------- reading


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


# ---------------------------------------------------------------- writing


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


def _write(cat: Catalogue, path: Path, overwrite: bool) -> Path:
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
