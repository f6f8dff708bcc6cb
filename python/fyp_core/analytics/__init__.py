"""Offline analytics over the counterfactual event log: DuckDB SQL files shipped in this package.

Each ``sql/<name>.sql`` runs standalone in the DuckDB CLI with the log root as a DuckDB variable
(``SET VARIABLE root = '/path/to/LOGDIR'``); these functions set the variables, run the file and
return a ``pyarrow.Table``. The schema read is ``docs/eventlog_schema.md`` (version 1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import duckdb
import pyarrow as pa

SQL_DIR = Path(__file__).parent / "sql"
TABLES = ("impressions", "engagements", "exploration_events", "ranker_scores", "requests",
          "served_features")
#: query name -> tables it reads (a missing table makes the query unavailable, not an error)
QUERIES: Dict[str, tuple] = {
    "impression_outcomes": ("impressions", "engagements"),
    "daily_summary": ("impressions", "engagements"),
    "lift_by_topic": ("impressions", "engagements"),
    "position_bias": ("impressions", "engagements"),
    "slot_residuals": ("impressions", "engagements"),
    "cohort_diversity": ("impressions", "engagements"),
    "creator_gini": ("impressions", "engagements"),
    "shadow_vs_live": ("impressions", "engagements", "ranker_scores"),
    "shadow_calibration": ("impressions", "engagements", "ranker_scores"),
    "fresh_items": ("impressions", "engagements", "requests"),
    "rollup_user_day_topic": ("impressions", "engagements"),
}

__all__ = [
    "QUERIES", "SQL_DIR", "available_queries", "cohort_diversity", "connect", "creator_gini",
    "daily_summary", "fresh_items", "impression_outcomes", "lift_by_topic", "position_bias",
    "rollup_user_day_topic", "run", "shadow_calibration", "shadow_vs_live", "slot_residuals",
    "read_table", "sql_text", "table_files",
]


def sql_text(name: str) -> str:
    """The text of ``sql/<name>.sql`` (for reading, or running it elsewhere)."""
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
    files = table_files(root, table)
    if not files:
        raise ValueError(f"no files for table {table!r} under {root!r}")
    part = ds.partitioning(pa.schema([("dt", pa.string()), ("hour", pa.int32())]), flavor="hive")
    return ds.dataset(files, format="parquet", partitioning=part,
                      partition_base_dir=str(Path(root) / table)).to_table(columns=columns)


def available_queries(root: str) -> List[str]:
    """Queries whose input tables all have at least one file under ``root``."""
    have = {t for t in TABLES if table_files(root, t)}
    return [q for q, needs in QUERIES.items() if set(needs) <= have]


def connect(root: str, threads: Optional[int] = None, **params: Any) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with ``root`` and ``params`` set as DuckDB variables."""
    if not os.path.isdir(root):
        raise ValueError(f"log directory {root!r} does not exist")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    # results are ordered by ORDER BY where it matters; let DuckDB collect rows in parallel
    con.execute("SET preserve_insertion_order = false")
    if threads is not None:
        con.execute(f"SET threads = {int(threads)}")
    for k, v in {"root": os.path.abspath(root), **params}.items():
        if v is None:
            continue
        if not k.isidentifier():
            raise ValueError(f"parameter name {k!r} is not an identifier")
        con.execute(f"SET VARIABLE {k} = ?", [v])
    return con


def run(name: str, root: str, con: Optional[duckdb.DuckDBPyConnection] = None,
        **params: Any) -> pa.Table:
    """Run ``sql/<name>.sql`` over the logs in ``root`` and return the result as Arrow."""
    text = sql_text(name)
    if not os.path.isdir(root):
        raise ValueError(f"log directory {root!r} does not exist")
    missing = [t for t in QUERIES[name] if not table_files(root, t)]
    if missing:
        raise ValueError(f"query {name!r} needs table(s) {missing} with files under {root!r}")
    if con is None:
        con = connect(root, **params)
    else:
        for k, v in params.items():
            if v is not None:
                con.execute(f"SET VARIABLE {k} = ?", [v])
    return con.sql(text).to_arrow_table()


def impression_outcomes(root: str, window_hours: float = 24.0) -> pa.Table:
    """One row per logged impression with its outcome flags within ``window_hours`` and weight w."""
    return run("impression_outcomes", root, window_hours=window_hours)


def daily_summary(root: str, window_hours: float = 24.0) -> pa.Table:
    """Per UTC day: slots, exploration/fresh share, engagement rate per arm, late share."""
    return run("daily_summary", root, window_hours=window_hours)


def lift_by_topic(root: str, window_hours: float = 24.0) -> pa.Table:
    """Causal lift of ranked over exploration slots per topic (topic NULL = all), with a 95% CI."""
    return run("lift_by_topic", root, window_hours=window_hours)


def position_bias(root: str, window_hours: float = 24.0) -> pa.Table:
    """Engagement rate by position per arm ('ranked', 'exploration', 'fresh', 'all')."""
    return run("position_bias", root, window_hours=window_hours)


def slot_residuals(root: str, window_hours: float = 24.0) -> pa.Table:
    """Each impression's outcome relative to the reweighted engagement rate of its position."""
    return run("slot_residuals", root, window_hours=window_hours)


def cohort_diversity(root: str) -> pa.Table:
    """Distinct topics per user-week by first-week cohort and age in weeks."""
    return run("cohort_diversity", root)


def creator_gini(root: str, young_days: int = 7) -> pa.Table:
    """Per day: Gini of impressions over creators, share to creators younger than young_days."""
    return run("creator_gini", root, young_days=int(young_days))


def shadow_vs_live(root: str, window_hours: float = 24.0) -> pa.Table:
    """Per shadow model: paired metrics vs the live model on identical impressions + verdict."""
    return run("shadow_vs_live", root, window_hours=window_hours)


def shadow_calibration(root: str, window_hours: float = 24.0) -> pa.Table:
    """Per model_version and prediction decile: mean prediction vs observed finish rate."""
    return run("shadow_calibration", root, window_hours=window_hours)


def fresh_items(root: str, fresh_hours: float = 24.0) -> pa.Table:
    """Per day: new items, share shown within fresh_hours, freshness lag, fresh slot share."""
    return run("fresh_items", root, fresh_hours=float(fresh_hours))


def rollup_user_day_topic(root: str, dt_from: str, dt_to: str,
                          window_hours: float = 24.0) -> pa.Table:
    """De-identified (user_token, dt, topic) counts for partitions dt_from..dt_to inclusive."""
    return run("rollup_user_day_topic", root, dt_from=dt_from, dt_to=dt_to,
               window_hours=window_hours)
