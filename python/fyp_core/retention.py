"""Retention of the counterfactual log: roll raw partitions up, then delete them.

``fyp-core retention LOGDIR --days 30`` keeps raw tables for ``days`` days: every table the event
log writes (``fyp_core._core.EVENTLOG_TABLES``, the Rust schema's own list, so a new table is
covered the day it is added; ``feature_events`` carries user tokens too). Older dt partitions are
first summarised into de-identified rollups (per user_token, day and topic: reweighted impression
and engagement counts; no item, request, creator or impression ids), written atomically under
``LOGDIR/rollups/user_day_topic/dt=YYYY-MM-DD/``, and only then deleted. Rerunning is safe: an
existing rollup is never rewritten (it was computed while the day's late engagements were present).
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fyp_core import analytics
from fyp_core._core import EVENTLOG_TABLES

__all__ = ["ROLLUP_DIR", "ROLLUP_FILE", "RetentionResult", "rollup_path", "run_retention"]

ROLLUP_DIR = os.path.join("rollups", "user_day_topic")
ROLLUP_FILE = "part-rollup.parquet"


@dataclass
class RetentionResult:
    """What ``run_retention`` did (or, with ``dry_run``, would do)."""

    cutoff: str  # partitions with dt < cutoff are expired
    rolled_up: List[str] = field(default_factory=list)  # dt values newly rolled up
    rollup_rows: int = 0
    deleted: List[str] = field(default_factory=list)  # partition directories removed
    bytes_freed: int = 0
    dry_run: bool = False


def _partitions(root: str) -> List[Path]:
    out: List[Path] = []
    for table in EVENTLOG_TABLES:
        base = Path(root) / table
        if base.is_dir():
            out.extend(p for p in base.iterdir() if p.is_dir() and p.name.startswith("dt="))
    return out


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _write_atomic(table: pa.Table, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name("." + final.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    dfd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def rollup_path(root: str, dt: str) -> Path:
    """The rollup file of day ``dt`` (``YYYY-MM-DD``) under the log root ``root``."""
    return Path(root) / ROLLUP_DIR / f"dt={dt}" / ROLLUP_FILE


def run_retention(
    root: str,
    days: int = 30,
    now: Optional[_dt.datetime] = None,
    dry_run: bool = False,
    window_hours: float = 24.0,
) -> RetentionResult:
    """Roll up, then delete, every raw dt partition older than ``days`` days (UTC)."""
    if not os.path.isdir(root):
        raise ValueError(f"log directory {root!r} does not exist")
    if int(days) != days or days < 1:
        raise ValueError(f"days must be a positive whole number, got {days}")
    now = now or _dt.datetime.now(_dt.timezone.utc)
    cutoff = (now.date() - _dt.timedelta(days=int(days))).isoformat()
    res = RetentionResult(cutoff=cutoff, dry_run=dry_run)
    expired = sorted(p for p in _partitions(root) if p.name[3:] < cutoff)
    imp_days = sorted({p.name[3:] for p in expired if p.parent.name == "impressions"})
    todo = [d for d in imp_days if not rollup_path(root, d).exists()]
    if todo and not dry_run:
        t = analytics.rollup_user_day_topic(root, todo[0], todo[-1], window_hours=window_hours)
        md = {
            "fyp.schema_version": "1",
            "fyp.table": "rollup_user_day_topic",
            "fyp.window_hours": str(window_hours),
        }
        dts = t.column("dt")
        for d in todo:  # one file per day
            part = t.filter(pc.equal(dts, d))
            part = part.replace_schema_metadata(md)
            _write_atomic(part, rollup_path(root, d))
            res.rollup_rows += part.num_rows
    res.rolled_up = todo
    for p in expired:
        res.bytes_freed += _size(p)
        res.deleted.append(str(p))
        if not dry_run:
            shutil.rmtree(p)
    return res
