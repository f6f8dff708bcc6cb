"""The DuckDB engine of ``fyp_core.analytics`` (the default): an in-memory connection with the log
tables and the shared views (``queries/views.sql``) created once, parameters as DuckDB variables.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fyp_core.analytics.sqlsource import TABLES, query_body, raw_table_sql, views

__all__ = ["connect_duckdb", "install_views", "outcome_labels", "run_duckdb"]


def _set_params(con: duckdb.DuckDBPyConnection, params: Mapping[str, Any]) -> None:
    for k, v in params.items():
        if v is None:
            continue
        if not k.isidentifier():
            raise ValueError(f"parameter name {k!r} is not an identifier")
        con.execute(f"SET VARIABLE {k} = ?", [v])


def _version_1(e: duckdb.Error, root: str) -> Exception:
    """A clear error for a log (partly) written before schema version 2, else ``e`` itself."""
    if "impression_key" not in str(e):
        return e
    return ValueError(
        f"the log under {root!r} has files written with event-log schema version 1 (no "
        f"impression_key column), which the analytics join on; run `fyp-core compact {root}` "
        f"to add the key to every closed hour partition (docs/eventlog_schema.md). DuckDB: {e}"
    )


def install_views(con: duckdb.DuckDBPyConnection, root: str) -> None:
    """Create (or replace) the table views of ``root`` that have files, then the shared views."""
    from fyp_core.analytics import table_files

    have = [t for t in TABLES if table_files(root, t)]
    for t in have:
        con.execute(f"CREATE OR REPLACE TEMP VIEW {t} AS {raw_table_sql(t)}")
    if {"impressions", "engagements"} <= set(have):
        for name, body in views():
            try:
                con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {body}")
            except duckdb.Error as e:
                raise _version_1(e, root) from None


def connect_duckdb(
    root: str, threads: Optional[int] = None, params: Optional[Mapping[str, Any]] = None
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection over ``root`` with the views and ``params`` set."""
    if not os.path.isdir(root):
        raise ValueError(f"log directory {root!r} does not exist")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    # results are ordered by ORDER BY where it matters; let DuckDB collect rows in parallel
    con.execute("SET preserve_insertion_order = false")
    if threads is not None:
        if int(threads) != threads or threads < 1:
            raise ValueError(f"threads must be a positive whole number, got {threads}")
        con.execute(f"SET threads = {int(threads)}")
    _set_params(con, {"root": os.path.abspath(root), **(params or {})})
    install_views(con, root)
    return con


def _has_views(con: duckdb.DuckDBPyConnection, names: tuple) -> bool:
    got = con.execute(
        "SELECT count(*) FROM duckdb_views() WHERE temporary AND view_name IN "
        f"({', '.join('?' * len(names))})",
        list(names),
    ).fetchall()
    return got[0][0] == len(names)


def run_duckdb(
    con: duckdb.DuckDBPyConnection, name: str, needs: tuple, params: Mapping[str, Any]
) -> pa.Table:
    """Run one query on a connection from ``connect_duckdb`` (views made if a table appeared)."""
    _set_params(con, params)
    if not _has_views(con, needs + tuple(v for v, _ in views())):
        root = con.execute("SELECT getvariable('root')").fetchall()[0]
        if root[0] is None:
            raise ValueError("the DuckDB connection has no root variable; use analytics.connect")
        install_views(con, root[0])
    try:
        return con.sql(query_body(name)).to_arrow_table()
    except duckdb.Error as e:
        root = con.execute("SELECT getvariable('root')").fetchall()[0]
        raise _version_1(e, str(root[0])) from None


#: the label columns of the ``outcomes`` view, in the training set's order
LABEL_COLUMNS = ("completed", "liked", "shared", "followed", "watched_seconds")


def outcome_labels(impressions: pa.Table, root: str, window_hours: float = 24.0) -> pa.Table:
    """The ``outcomes`` view's labels for the given impressions, in their order.

    ``impressions`` needs ``impression_id`` and ``ts`` (the impression's time). The labels come
    from the very SQL of ``queries/views.sql`` (the ``eng`` and ``outcomes`` views) run over these
    rows instead of the ``impressions`` table: one attribution rule for the analytics and for
    callers whose impressions are not that (sampled) table, such as ``features.training_set``,
    which replays every impression. No engagement files under ``root`` means no label is set.
    """
    from fyp_core import eventlog
    from fyp_core.analytics import table_files

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    _set_params(con, {"window_hours": float(window_hours)})
    keys = pa.table(
        {
            "impression_id": impressions.column("impression_id"),
            "impression_key": eventlog.impression_keys(
                impressions.column("impression_id").to_pylist()
            ),
            "ts_us": pc.cast(impressions.column("ts"), pa.int64()),
            "_row": pa.array(np.arange(impressions.num_rows, dtype=np.int64)),
        }
    )
    con.register("imp", keys)
    if table_files(root, "engagements"):
        _set_params(con, {"root": os.path.abspath(root)})
        con.execute(f"CREATE TEMP VIEW engagements AS {raw_table_sql('engagements')}")
    else:
        con.register("engagements", eventlog.schema("engagements").empty_table())
    body = dict(views())
    try:
        con.execute(f"CREATE TEMP VIEW eng AS {body['eng']}")
    except duckdb.Error as e:
        raise _version_1(e, root) from None
    cols = ", ".join(LABEL_COLUMNS[:-1]) + ", CAST(watched_seconds AS FLOAT) AS watched_seconds"
    return con.sql(f"SELECT {cols} FROM ({body['outcomes']}) ORDER BY _row").to_arrow_table()
