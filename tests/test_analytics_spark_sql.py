"""The DuckDB -> Spark SQL translation (no JVM needed): parameters, rewrites, errors."""

from __future__ import annotations

import pytest

from fyp_core import analytics
from fyp_core.analytics.sqlsource import query_body, views

pytest.importorskip("sqlglot", reason="sqlglot is not installed: pip install 'fyp-core[spark]'")
from fyp_core.analytics.transpile import to_spark  # noqa: E402


def test_parameters_become_literals():
    sql = to_spark(
        "SELECT coalesce(getvariable('w'), 24) * 3600e6 AS d, getvariable('s') AS s, "
        "getvariable('unset') AS u",
        {"w": 0.5, "s": "2026-01-05"},
    )
    assert "GETVARIABLE" not in sql.upper()
    assert "CAST(0.5 AS DOUBLE)" in sql and "'2026-01-05'" in sql and "NULL AS u" in sql


def test_duckdb_only_forms_are_rewritten():
    sql = to_spark(
        "WITH p AS MATERIALIZED (SELECT epoch_us(ts) AS t, quantile_cont(x, 0.9) AS q, "
        "avg(CASE WHEN a THEN 1.0 ELSE 0.0 END) AS r, b ^ 2 AS sq FROM t) "
        "SELECT sum(t) OVER w - t AS d FROM p WINDOW w AS (ORDER BY t)"
    )
    assert "MATERIALIZED" not in sql
    assert "UNIX_MICROS(ts)" in sql and "PERCENTILE(x, 0.9)" in sql
    assert "THEN CAST(1.0 AS DOUBLE)" in sql and "POWER(b, 2)" in sql
    assert "(SUM(t) OVER w) - t" in sql


def test_every_query_and_view_translates():
    for name, body in views():
        assert "SELECT" in to_spark(body, {"window_hours": 24.0}), name
    for name in analytics.QUERIES:
        sql = to_spark(query_body(name), {"dt_from": "2026-01-01", "dt_to": "2026-01-02"})
        assert "getvariable" not in sql.lower() and "epoch_us" not in sql.lower(), name


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="parameter w must be finite"):
        to_spark("SELECT getvariable('w')", {"w": float("nan")})
    with pytest.raises(ValueError, match="parameter w must be a number, a string or None"):
        to_spark("SELECT getvariable('w')", {"w": [1]})
    with pytest.raises(ValueError, match="exactly one statement"):
        to_spark("SELECT 1; SELECT 2")
    with pytest.raises(ValueError, match="con must come from analytics.connect"):
        analytics.run("daily_summary", _any_log(), con=object())


def _any_log() -> str:
    from _analytics_fixtures import sim_log

    return sim_log().root
