"""Offline analytics over the counterfactual event log, on DuckDB (default) or Apache Spark.

Each query is written once, in DuckDB's dialect (``queries/<name>.sql`` over the shared views of
``queries/views.sql``, see ``sqlsource``). DuckDB runs it as is; Spark runs it transpiled by
``sqlglot`` (``transpile``), over the same Hive-partitioned Parquet files. ``sql/<name>.sql`` are
generated standalone files for the DuckDB CLI (``SET VARIABLE root = '/path/to/LOGDIR'``). Every
function returns a ``pyarrow.Table``. The schema read is ``docs/eventlog_schema.md`` (version 1).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, TypeVar

import duckdb
import pyarrow as pa

from fyp_core.analytics.sqlsource import QUERIES, SQL_DIR, TABLES

ENGINES = ("duckdb", "spark")
# A file listed by a query and gone when it is opened (a compaction swapped its partition, see
# fyp_core.compact): the query is rerun and lists the partition afresh.
_FILE_VANISHED = re.compile(
    r"No such file|FileNotFound|FILE_NOT_EXIST|PATH_NOT_FOUND|No files found that match"
)
_ATTEMPTS = 4  # the last one under the compaction locks (`_retrying`)
T = TypeVar("T")

__all__ = [
    "ENGINES",
    "QUERIES",
    "SQL_DIR",
    "TABLES",
    "available_queries",
    "cohort_diversity",
    "connect",
    "creator_gini",
    "daily_summary",
    "fresh_items",
    "impression_outcomes",
    "lift_by_topic",
    "position_bias",
    "rollup_user_day_topic",
    "run",
    "shadow_calibration",
    "shadow_vs_live",
    "slot_residuals",
    "read_table",
    "sql_text",
    "table_files",
]


def sql_text(name: str) -> str:
    """The standalone DuckDB text of ``sql/<name>.sql`` (for reading, or running it elsewhere)."""
    if name not in QUERIES:
        raise ValueError(f"unknown query {name!r}; known: {', '.join(sorted(QUERIES))}")
    return (SQL_DIR / f"{name}.sql").read_text()


def table_files(root: str, table: str) -> List[str]:
    """Visible Parquet files of one table (the glob the SQL reads; temp files start with '.')."""
    base = Path(root) / table
    if not base.is_dir():
        return []
    return sorted(str(p) for p in base.glob("*/*/*.parquet") if not p.name.startswith("."))


def read_table(root: str, table: str, columns: Optional[List[str]] = None) -> pa.Table:
    """Read one log table into Arrow (hive partitions dt/hour added; temp files ignored)."""
    import pyarrow.dataset as ds

    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; known: {', '.join(TABLES)}")

    def read() -> pa.Table:
        files = table_files(root, table)
        if not files:
            raise ValueError(f"no files for table {table!r} under {root!r}")
        part = ds.partitioning(
            pa.schema([("dt", pa.string()), ("hour", pa.int32())]), flavor="hive"
        )
        return ds.dataset(
            files, format="parquet", partitioning=part, partition_base_dir=str(Path(root) / table)
        ).to_table(columns=columns)

    return _retrying(read, root)


def _retrying(fn: Callable[[], T], root: str) -> T:
    """``fn()``, rerun when a file it listed vanished before it was read: a compaction swapped
    its partition (``fyp_core.compact``); wait for that pass to end, then list afresh. The last
    attempt holds the compaction locks shared (``compactions_held``), so a query slower than the
    gaps between passes still ends (under load, 8 optimistic attempts in a row lost the race)."""
    for attempt in range(_ATTEMPTS):
        try:
            if attempt + 1 < _ATTEMPTS:
                return fn()
            from fyp_core.compact import compactions_held  # imported only when needed (fcntl)

            with compactions_held(root):
                return fn()
        except ValueError:
            raise
        except Exception as e:  # both engines' and Arrow's I/O errors
            if attempt + 1 == _ATTEMPTS or not _FILE_VANISHED.search(str(e)):
                raise
            from fyp_core.compact import wait_for_compactions

            wait_for_compactions(root)
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


def available_queries(root: str) -> List[str]:
    """Queries whose input tables all have at least one file under ``root``."""
    have = {t for t in TABLES if table_files(root, t)}
    return [q for q, needs in QUERIES.items() if set(needs) <= have]


def connect(
    root: str,
    engine: str = "duckdb",
    threads: Optional[int] = None,
    spark: Any = None,
    **params: Any,
) -> Any:
    """A connection over the log in ``root`` with the shared views created once.

    ``engine="duckdb"`` (default): an in-memory ``duckdb.DuckDBPyConnection``, ``params`` set as
    DuckDB variables. ``engine="spark"``: a ``spark.SparkAnalytics`` on ``spark`` (a SparkSession;
    default the active one, else a local one). Pass the result to ``run(..., con=...)``.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "spark":
        from fyp_core.analytics.spark import SparkAnalytics

        return SparkAnalytics(root, spark=spark, **params)
    from fyp_core.analytics.duck import connect_duckdb

    return connect_duckdb(root, threads=threads, params=params)


#: the query functions below take ``con``: a connection from ``connect`` (any engine), or None


def run(
    name: str, root: str, con: Any = None, engine: Optional[str] = None, **params: Any
) -> pa.Table:
    """Run query ``name`` over the logs in ``root`` and return the result as Arrow.

    ``con`` is a connection from ``connect`` (its engine wins); without one a new connection of
    ``engine`` (default DuckDB) is made for this call.
    """
    if name not in QUERIES:
        raise ValueError(f"unknown query {name!r}; known: {', '.join(sorted(QUERIES))}")
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if not os.path.isdir(root):
        raise ValueError(f"log directory {root!r} does not exist")
    missing = [t for t in QUERIES[name] if not table_files(root, t)]
    if missing:
        raise ValueError(f"query {name!r} needs table(s) {missing} with files under {root!r}")
    if con is None:
        # creating the views binds them to the files, which a compaction swap can move away
        con = _retrying(lambda: connect(root, engine=engine or "duckdb", **params), root)
    if isinstance(con, duckdb.DuckDBPyConnection):
        from fyp_core.analytics.duck import run_duckdb

        return _retrying(lambda: run_duckdb(con, name, QUERIES[name], params), root)
    return _retrying(lambda: _run_other(con, name, params), root)


def _run_other(con: Any, name: str, params: Any) -> pa.Table:
    from fyp_core.analytics.spark import SparkAnalytics

    if not isinstance(con, SparkAnalytics):
        raise ValueError(f"con must come from analytics.connect, got {type(con).__name__}")
    return con.run(name, **params)


def impression_outcomes(root: str, window_hours: float = 24.0, con: Any = None) -> pa.Table:
    """One row per logged impression with its outcome flags within ``window_hours`` and weight w."""
    return run("impression_outcomes", root, con, window_hours=window_hours)


def daily_summary(root: str, window_hours: float = 24.0, con: Any = None) -> pa.Table:
    """Per UTC day: slots, exploration/fresh share, engagement rate per arm, late share."""
    return run("daily_summary", root, con, window_hours=window_hours)


def lift_by_topic(root: str, window_hours: float = 24.0, con: Any = None) -> pa.Table:
    """Causal lift of ranked over exploration slots per topic (topic NULL = all), with a 95% CI."""
    return run("lift_by_topic", root, con, window_hours=window_hours)


def position_bias(root: str, window_hours: float = 24.0, con: Any = None) -> pa.Table:
    """Engagement rate by position per arm ('ranked', 'exploration', 'fresh', 'all')."""
    return run("position_bias", root, con, window_hours=window_hours)


def slot_residuals(root: str, window_hours: float = 24.0, con: Any = None) -> pa.Table:
    """Each impression's outcome relative to the reweighted engagement rate of its position."""
    return run("slot_residuals", root, con, window_hours=window_hours)


def cohort_diversity(root: str, con: Any = None) -> pa.Table:
    """Distinct topics per user-week by first-week cohort and age in weeks."""
    return run("cohort_diversity", root, con)


def creator_gini(root: str, young_days: int = 7, con: Any = None) -> pa.Table:
    """Per day: Gini of impressions over creators, share to creators younger than young_days."""
    return run("creator_gini", root, con, young_days=int(young_days))


def shadow_vs_live(root: str, window_hours: float = 24.0, con: Any = None) -> pa.Table:
    """Per shadow model: paired metrics vs the live model on identical impressions + verdict."""
    return run("shadow_vs_live", root, con, window_hours=window_hours)


def shadow_calibration(root: str, window_hours: float = 24.0, con: Any = None) -> pa.Table:
    """Per model_version and prediction decile: mean prediction vs observed finish rate."""
    return run("shadow_calibration", root, con, window_hours=window_hours)


def fresh_items(root: str, fresh_hours: float = 24.0, con: Any = None) -> pa.Table:
    """Per day: new items, share shown within fresh_hours, freshness lag, fresh slot share."""
    return run("fresh_items", root, con, fresh_hours=float(fresh_hours))


def rollup_user_day_topic(
    root: str, dt_from: str, dt_to: str, window_hours: float = 24.0, con: Any = None
) -> pa.Table:
    """De-identified (user_token, dt, topic) counts for partitions dt_from..dt_to inclusive."""
    return run(
        "rollup_user_day_topic", root, con, dt_from=dt_from, dt_to=dt_to, window_hours=window_hours
    )
