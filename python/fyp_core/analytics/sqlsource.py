"""The one source of the analytics SQL: ``queries/views.sql`` (the shared views) and
``queries/<name>.sql`` (one query each, DuckDB dialect). The engines create the views once per
connection or session and run the query bodies; the standalone files ``sql/<name>.sql`` (for the
DuckDB CLI) are generated from the same text: ``python -m fyp_core.analytics.sqlsource`` rewrites
them, ``--check`` fails when one is stale.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = [
    "QUERIES",
    "QUERY_DIR",
    "SQL_DIR",
    "TABLES",
    "main",
    "query_body",
    "raw_table_sql",
    "standalone",
    "views",
]

QUERY_DIR = Path(__file__).parent / "queries"
SQL_DIR = Path(__file__).parent / "sql"
TABLES = (
    "impressions",
    "engagements",
    "exploration_events",
    "ranker_scores",
    "requests",
    "served_features",
)
#: query name -> tables it reads (a missing table makes the query unavailable, not an error)
QUERIES: Dict[str, Tuple[str, ...]] = {
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
_VIEW_MARK = re.compile(r"^-- view: (\w+)\n", re.M)
_GENERATED = (
    "-- Generated from queries/views.sql and queries/{name}.sql by\n"
    "-- `python -m fyp_core.analytics.sqlsource`: edit those, not this file."
)


def _check_name(name: str) -> None:
    if name not in QUERIES:
        raise ValueError(f"unknown query {name!r}; known: {', '.join(sorted(QUERIES))}")


def raw_table_sql(table: str) -> str:
    """DuckDB's read of one log table: the Hive-partitioned glob under the ``root`` variable."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; known: {', '.join(TABLES)}")
    return (
        f"SELECT * FROM read_parquet(getvariable('root') || '/{table}/*/*/*.parquet',\n"
        "                           hive_partitioning = true,\n"
        "                           hive_types = {'dt': VARCHAR, 'hour': INTEGER})"
    )


def _views_text() -> Tuple[str, List[Tuple[str, str]]]:
    text = (QUERY_DIR / "views.sql").read_text()
    parts = _VIEW_MARK.split(text)
    comment, rest = parts[0], parts[1:]
    return comment, [(rest[i], rest[i + 1].strip()) for i in range(0, len(rest), 2)]


def views() -> List[Tuple[str, str]]:
    """The shared views in creation order, as (name, DuckDB SELECT text)."""
    return _views_text()[1]


def _split_header(text: str) -> Tuple[str, str]:
    lines = text.splitlines(keepends=True)
    n = 0
    while n < len(lines) and lines[n].startswith("--"):
        n += 1
    return "".join(lines[:n]), "".join(lines[n:]).strip()


def query_body(name: str) -> str:
    """The SELECT of one query (DuckDB dialect) over the shared views and raw table views."""
    _check_name(name)
    return _split_header((QUERY_DIR / f"{name}.sql").read_text())[1].rstrip(";").rstrip()


def _cte(name: str, body: str) -> str:
    return f"{name} AS (\n" + "".join(f"    {ln}".rstrip() + "\n" for ln in body.splitlines()) + ")"


def standalone(name: str) -> str:
    """The standalone DuckDB file for one query: header, raw reads and views inlined as CTEs."""
    _check_name(name)
    header, body = _split_header((QUERY_DIR / f"{name}.sql").read_text())
    comment, vws = _views_text()
    raws = [t for t in TABLES if t in QUERIES[name]]
    ctes = [_cte(t, raw_table_sql(t)) for t in raws] + [_cte(v, b) for v, b in vws]
    tail = re.sub(r"^WITH\s+", ", ", body, flags=re.I) if re.match(r"WITH\b", body, re.I) else body
    return (
        header
        + _GENERATED.format(name=name)
        + "\nSET TimeZone = 'UTC';\n\n-- <prelude>\n"
        + comment
        + "WITH\n"
        + ",\n".join(ctes)
        + "\n-- </prelude>\n"
        + tail.rstrip(";")
        + ";\n"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Write (or with ``--check`` verify) every generated ``sql/<name>.sql``."""
    p = argparse.ArgumentParser(prog="python -m fyp_core.analytics.sqlsource", description=__doc__)
    p.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    args = p.parse_args(argv)
    stale = []
    for name in QUERIES:
        path, text = SQL_DIR / f"{name}.sql", standalone(name)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path.name)
        if not args.check:
            path.write_text(text)
    if args.check and stale:
        print(f"stale generated SQL: {', '.join(stale)}; run {p.prog}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
