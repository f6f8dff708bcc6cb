"""Compaction of the event log: ``fyp-core compact LOGDIR`` merges the many small files of closed
hour partitions (``<table>/dt=D/hour=H/part-*.parquet``) into one file per partition.

The swap is atomic for readers: the merged partition is built under ``LOGDIR/.compact/`` (outside
every table's glob) and exchanged with the live ``hour=H`` directory in one
``renameat2(RENAME_EXCHANGE)``, so a directory listing (DuckDB's glob, Spark's file index) sees
either all old files or all new ones, never both and never neither. A reader that listed the old
files and opens one after the swap gets "file not found"; ``fyp_core.analytics.run`` then waits
for the compaction pass to end (``wait_for_compactions``: a pass holds its table's lock) and
reruns the query, which lists afresh. Only hours that ended ``min_age_hours`` ago are touched, so
no writer is still renaming files into them. Retention is unaffected: the partition keeps its
path. A run that crashed leaves at most a staging directory, removed by the next run on that
table.

Compaction also upgrades event-log schema version 1 files: a partition with a file that lacks the
integer join key ``impression_key`` (version 2, docs/eventlog_schema.md) is rewritten with the key
added, even when it holds a single file.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import fcntl
import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from fyp_core import eventlog
from fyp_core.analytics.sqlsource import TABLES

__all__ = [
    "CompactResult",
    "compact",
    "compact_partition",
    "compactions_held",
    "exchange_dirs",
    "wait_for_compactions",
]

STAGING = ".compact"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@dataclass
class CompactResult:
    """What one compaction run did (per merged partition: files before -> one file)."""

    merged: List[str] = field(default_factory=list)  # partition directories rewritten
    files_before: int = 0
    rows: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    skipped: List[str] = field(default_factory=list)  # 0 files, or 1 file already version 2


def exchange_dirs(a: str, b: str) -> None:
    """Atomically swap two directories (Linux ``renameat2`` with ``RENAME_EXCHANGE``)."""
    if not sys.platform.startswith("linux"):
        raise OSError("atomic partition swap needs Linux renameat2(RENAME_EXCHANGE)")
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        raise OSError("this C library has no renameat2: cannot swap partitions atomically")
    rc = libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"renameat2(RENAME_EXCHANGE) {a} <-> {b}: {os.strerror(err)}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _visible(part: Path) -> List[Path]:
    return sorted(p for p in part.glob("*.parquet") if not p.name.startswith("."))


def _check_partition(root: str, table: str, dt: str, hour: int) -> Path:
    if table not in TABLES:
        raise ValueError(f"table must be one of {', '.join(TABLES)}, got {table!r}")
    if not re.fullmatch(r"\d{4}-\d\d-\d\d", dt):
        raise ValueError(f"dt must be YYYY-MM-DD, got {dt!r}")
    if int(hour) != hour or not 0 <= hour <= 23:
        raise ValueError(f"hour must be a whole number in 0..23, got {hour}")
    part = Path(root) / table / f"dt={dt}" / f"hour={int(hour):02d}"
    if not part.is_dir():
        raise ValueError(f"partition {str(part)!r} does not exist")
    return part


def _hour_end(dt: str, hour: int) -> _dt.datetime:
    day = _dt.datetime.strptime(dt, "%Y-%m-%d").replace(tzinfo=_dt.timezone.utc)
    return day + _dt.timedelta(hours=int(hour) + 1)


_KEY = pa.field("impression_key", pa.uint64(), nullable=False)


def _lacks_key(schema: pa.Schema) -> bool:
    """A version-1 file of a table that carries impression ids (no integer join key)."""
    return "impression_id" in schema.names and "impression_key" not in schema.names


def _upgraded(schema: pa.Schema) -> pa.Schema:
    if not _lacks_key(schema):
        return schema
    meta = {**(schema.metadata or {}), b"fyp.schema_version": eventlog.SCHEMA_VERSION.encode()}
    return schema.append(_KEY).with_metadata(meta)


def _with_key(t: pa.Table) -> pa.Table:
    if not _lacks_key(t.schema):
        return t
    keys = eventlog.impression_keys(t.column("impression_id").to_pylist())
    return t.append_column(_KEY, pa.array(keys, pa.uint64()))


def _merge_into(files: List[Path], out: Path) -> int:
    """Stream every file's row groups into ``out`` (bounded memory), version-1 rows gaining the
    integer join key; returns the row count."""
    schema = _upgraded(pq.read_schema(files[0]))
    rows = 0
    with pq.ParquetWriter(out, schema, compression="zstd") as w:
        for f in files:
            pf = pq.ParquetFile(f)
            if not _upgraded(pf.schema_arrow).remove_metadata().equals(schema.remove_metadata()):
                raise ValueError(f"{f} has a different schema than {files[0]}; not merged")
            for i in range(pf.num_row_groups):
                t = _with_key(pf.read_row_group(i))
                rows += t.num_rows
                w.write_table(t.replace_schema_metadata(schema.metadata))
    _fsync(out)
    return rows


@contextlib.contextmanager
def _table_lock(root: str, table: str, mode: int = fcntl.LOCK_EX) -> Iterator[Path]:
    """The table's compaction lock: exclusive for a compactor (one per table at a time, held for
    a whole pass), shared for a reader waiting for a pass to end."""
    staging_root = Path(root) / STAGING
    staging_root.mkdir(exist_ok=True)
    with open(staging_root / f"{table}.lock", "a") as lock:
        fcntl.flock(lock, mode)
        yield staging_root


def wait_for_compactions(root: str) -> None:
    """Block until no compaction pass is running on any table of ``root`` (readers call this
    before rerunning a query whose files were swapped away)."""
    with compactions_held(root):
        pass


@contextlib.contextmanager
def compactions_held(root: str) -> Iterator[None]:
    """Hold every table's compaction lock shared until the block ends: no pass swaps a partition
    meanwhile (a reader's last attempt, after its query lost the race to passes running back to
    back, whose gaps were shorter than the query)."""
    with contextlib.ExitStack() as stack:
        for lock in sorted((Path(root) / STAGING).glob("*.lock")):
            stack.enter_context(_table_lock(root, lock.stem, fcntl.LOCK_SH))
        yield


def _closed_partition(
    root: str, table: str, dt: str, hour: int, min_age_hours: float, now: _dt.datetime
) -> Path:
    part = _check_partition(root, table, dt, hour)
    if min_age_hours < 0:
        raise ValueError(f"min_age_hours must be >= 0, got {min_age_hours}")
    if _hour_end(dt, hour) > now - _dt.timedelta(hours=min_age_hours):
        raise ValueError(f"partition {part} ended less than min_age_hours={min_age_hours} ago")
    return part


def compact_partition(
    root: str,
    table: str,
    dt: str,
    hour: int,
    min_age_hours: float = 2.0,
    now: Optional[_dt.datetime] = None,
) -> CompactResult:
    """Merge one hour partition's files into one, swapped in atomically (see the module doc)."""
    res = CompactResult()
    now = now or _dt.datetime.now(_dt.timezone.utc)
    part = _closed_partition(root, table, dt, hour, min_age_hours, now)
    with _table_lock(root, table) as staging_root:
        _compact_locked(part, staging_root, res)
    return res


def _compact_locked(part: Path, staging_root: Path, res: CompactResult) -> None:
    table = part.parent.parent.name
    for stale in staging_root.glob(f"{table}-*"):  # a crashed run's leftovers (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    files = _visible(part)
    if any(p.name.endswith(".tmp") for p in part.iterdir()):
        raise ValueError(f"partition {part} has a .tmp file: a writer is still writing it")
    if len(files) == 0 or (len(files) == 1 and not _lacks_key(pq.read_schema(files[0]))):
        res.skipped.append(str(part))
        return
    stage = staging_root / f"{table}-{uuid.uuid4().hex}"
    new_part = stage / part.name
    new_part.mkdir(parents=True)
    try:
        out = new_part / f"part-compacted-{uuid.uuid4().hex[:12]}.parquet"
        rows = _merge_into(files, out)
        want = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        if rows != want:
            raise ValueError(f"merged {rows} rows from {part}, expected {want}; not swapped")
        _fsync(new_part)
        before = sum(f.stat().st_size for f in files)
        exchange_dirs(str(new_part), str(part))  # the commit point
        _fsync(part.parent)
        res.merged.append(str(part))
        res.files_before += len(files)
        res.rows += rows
        res.bytes_before += before
        res.bytes_after += (part / out.name).stat().st_size
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # the old files after a swap, else the attempt


def compact(
    root: str,
    table: Optional[str] = None,
    dt: Optional[str] = None,
    hour: Optional[int] = None,
    older_than_hours: Optional[float] = None,
    now: Optional[_dt.datetime] = None,
) -> CompactResult:
    """Compact one partition (``table``, ``dt``, ``hour``) or every partition of ``table`` (all
    tables if None) whose hour ended more than ``older_than_hours`` ago."""
    if not os.path.isdir(root):
        raise ValueError(f"log directory {root!r} does not exist")
    one = (dt is not None, hour is not None)
    if any(one) and (older_than_hours is not None or not all(one) or table is None):
        raise ValueError("give either table, dt and hour (one partition) or older_than_hours")
    if all(one):
        assert dt is not None and hour is not None and table is not None
        return compact_partition(root, table, dt, hour, now=now)
    if older_than_hours is None or older_than_hours < 0:
        raise ValueError(f"older_than_hours must be >= 0, got {older_than_hours}")
    if table is not None and table not in TABLES:
        raise ValueError(f"table must be one of {', '.join(TABLES)}, got {table!r}")
    res = CompactResult()
    now = now or _dt.datetime.now(_dt.timezone.utc)
    for t in [table] if table else list(TABLES):
        parts = sorted((Path(root) / str(t)).glob("dt=*/hour=*"))
        if not parts:
            continue
        with _table_lock(root, str(t)) as staging_root:  # held for the pass: see _retrying
            for part in parts:
                d, h = part.parent.name[3:], int(part.name[5:])
                if _hour_end(d, h) <= now - _dt.timedelta(hours=older_than_hours):
                    _compact_locked(
                        _closed_partition(root, str(t), d, h, older_than_hours, now),
                        staging_root,
                        res,
                    )
    return res
